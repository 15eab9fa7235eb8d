//! JSON of the OTA messages (docs/PROTOCOL.md §2).
//!
//! Uplinks send `id` as a string and `step` as a string; `module` is left out for the default
//! module. The downlink task (push, get_reply) is in `offer.rs`.

use super::AlinkError;
use serde::Serialize;

/// Aliyun step: upgrade failed.
pub const STEP_UPGRADE_FAILED: i8 = -1;
/// Aliyun step: download failed.
pub const STEP_DOWNLOAD_FAILED: i8 = -2;
/// Aliyun step: verification failed.
pub const STEP_VERIFY_FAILED: i8 = -3;
/// Aliyun step: flash write failed.
pub const STEP_FLASH_FAILED: i8 = -4;
/// Longest progress `desc` (QuecPython's documented limit).
pub const MAX_DESC: usize = 128;

fn module_field(module: &str) -> Option<&str> {
    (module != "default" && !module.is_empty()).then_some(module)
}

fn to_slice<T: Serialize>(v: &T, out: &mut [u8]) -> Result<usize, AlinkError> {
    Ok(serde_json_core::to_slice(v, out)?)
}

#[derive(Serialize)]
struct Envelope<'a, P> {
    id: &'a str,
    params: P,
}

#[derive(Serialize)]
struct InformParams<'a> {
    version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    module: Option<&'a str>,
}

/// `/ota/device/inform`: `{"id":"1","params":{"version":"1.2.3","module":"MCU"}}`.
pub fn inform(out: &mut [u8], id: &str, version: &str, module: &str) -> Result<usize, AlinkError> {
    to_slice(&Envelope { id, params: InformParams { version, module: module_field(module) } }, out)
}

#[derive(Serialize)]
struct ProgressParams<'a> {
    step: &'a str,
    desc: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    module: Option<&'a str>,
}

/// `/ota/device/progress`: `{"id":"7","params":{"step":"35","desc":"...","module":"MCU"}}`.
/// `step` is 1..=100 or -1..=-4 (never 0); `desc` is cut to [`MAX_DESC`] bytes on a char boundary.
pub fn progress(out: &mut [u8], id: &str, step: i8, desc: &str, module: &str) -> Result<usize, AlinkError> {
    assert!((1..=100).contains(&step) || (-4..=-1).contains(&step), "step {step} is not an Aliyun step");
    let mut cut = desc.len().min(MAX_DESC);
    while !desc.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut s = heapless::String::<4>::new();
    core::fmt::write(&mut s, format_args!("{step}")).map_err(|_| AlinkError::TooLong)?;
    to_slice(
        &Envelope { id, params: ProgressParams { step: &s, desc: &desc[..cut], module: module_field(module) } },
        out,
    )
}

#[derive(Serialize)]
struct GetParams<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    module: Option<&'a str>,
}

#[derive(Serialize)]
struct AlinkRequest<'a, P> {
    id: &'a str,
    version: &'static str,
    params: P,
    method: &'static str,
}

/// `thing/ota/firmware/get`: `{"id":"12","version":"1.0","params":{"module":"MCU"},"method":"thing.ota.firmware.get"}`.
pub fn firmware_get(out: &mut [u8], id: &str, module: &str) -> Result<usize, AlinkError> {
    let r = AlinkRequest {
        id,
        version: "1.0",
        params: GetParams { module: module_field(module) },
        method: "thing.ota.firmware.get",
    };
    to_slice(&r, out)
}

/// How the digest in `sign` was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DigestMethod {
    /// `Md5` (32 hex digits)
    Md5,
    /// `SHA256` (64 hex digits)
    Sha256,
}

impl DigestMethod {
    /// Reads a `signMethod` (`Md5`, `MD5`, `SHA256`, `Sha256`: any case).
    pub fn from_name(s: &str) -> Option<DigestMethod> {
        if s.eq_ignore_ascii_case("md5") {
            Some(DigestMethod::Md5)
        } else if s.eq_ignore_ascii_case("sha256") {
            Some(DigestMethod::Sha256)
        } else {
            None
        }
    }

    /// The name Aliyun's pushes use.
    pub fn name(self) -> &'static str {
        match self {
            DigestMethod::Md5 => "Md5",
            DigestMethod::Sha256 => "SHA256",
        }
    }

    /// Hex digits of a digest.
    pub fn hex_len(self) -> usize {
        match self {
            DigestMethod::Md5 => 32,
            DigestMethod::Sha256 => 64,
        }
    }
}

/// Whether `v` is a version Aliyun sends and takes: 1-64 characters of `A-Z a-z 0-9 . _ -`
/// (CreateOTAFirmware `DestVersion`).
pub fn valid_version(v: &str) -> bool {
    (1..=64).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(b: &[u8], n: usize) -> &str {
        core::str::from_utf8(&b[..n]).unwrap()
    }

    #[test]
    fn inform_leaves_module_out_for_the_default_module() {
        let mut b = [0u8; 128];
        let n = inform(&mut b, "1", "1.2.3", "MCU").unwrap();
        assert_eq!(s(&b, n), r#"{"id":"1","params":{"version":"1.2.3","module":"MCU"}}"#);
        let n = inform(&mut b, "2", "V1.4", "default").unwrap();
        assert_eq!(s(&b, n), r#"{"id":"2","params":{"version":"V1.4"}}"#);
    }

    #[test]
    fn progress_sends_step_as_a_string_and_cuts_desc() {
        let mut b = [0u8; 512];
        let n = progress(&mut b, "7", 35, "downloading", "MCU").unwrap();
        assert_eq!(s(&b, n), r#"{"id":"7","params":{"step":"35","desc":"downloading","module":"MCU"}}"#);
        let long = "é".repeat(100); // 200 bytes
        let n = progress(&mut b, "8", -3, &long, "default").unwrap();
        let v: &str = s(&b, n);
        assert!(v.starts_with(r#"{"id":"8","params":{"step":"-3","desc":""#), "{v}");
        assert_eq!(v.len(), r#"{"id":"8","params":{"step":"-3","desc":""}}"#.len() + 128);
    }

    #[test]
    #[should_panic(expected = "not an Aliyun step")]
    fn progress_never_sends_zero() {
        let _ = progress(&mut [0u8; 128], "1", 0, "", "default");
    }

    #[test]
    fn firmware_get_is_the_full_alink_form() {
        let mut b = [0u8; 128];
        let n = firmware_get(&mut b, "12", "MCU").unwrap();
        assert_eq!(
            s(&b, n),
            r#"{"id":"12","version":"1.0","params":{"module":"MCU"},"method":"thing.ota.firmware.get"}"#
        );
        let n = firmware_get(&mut b, "13", "default").unwrap();
        assert_eq!(s(&b, n), r#"{"id":"13","version":"1.0","params":{},"method":"thing.ota.firmware.get"}"#);
    }

    #[test]
    fn a_too_small_buffer_is_an_error() {
        assert_eq!(inform(&mut [0u8; 10], "1", "1.2.3", "MCU"), Err(AlinkError::TooLong));
    }

    #[test]
    fn versions_follow_aliyun_s_rule() {
        for v in ["1.4", "V1.4", "1.5_rc-2", &"9".repeat(64)] {
            assert!(valid_version(v), "{v}");
        }
        for v in ["", "1.4 beta", "1.4/2", &"9".repeat(65), "v\u{e9}"] {
            assert!(!valid_version(v), "{v}");
        }
    }

    #[test]
    fn sign_methods_are_read_in_any_case() {
        assert_eq!(DigestMethod::from_name("Md5"), Some(DigestMethod::Md5));
        assert_eq!(DigestMethod::from_name("SHA256"), Some(DigestMethod::Sha256));
        assert_eq!(DigestMethod::from_name("Sha256"), Some(DigestMethod::Sha256));
        assert_eq!(DigestMethod::from_name("Crc32"), None);
    }
}
