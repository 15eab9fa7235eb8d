//! JSON of the OTA messages (ALIYUN.md §2).
//!
//! Uplinks send `id` as a string and `step` as a string; `module` is left out for the default
//! module. Downlinks accept `id` and `code` as either type, `signMethod` in any case, unknown
//! fields (`extData`, `digestsign`, ...) and `files[]`.

use super::json::top_level;
use super::AlinkError;
use serde::{Deserialize, Serialize};
use serde_json_core::str::EscapedStr;

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

/// Where to get the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source<'a> {
    /// MQTT stream download (`dProtocol: mqtt`).
    Mqtt {
        /// `streamId`
        stream_id: u64,
        /// `streamFileId`
        file_id: u32,
    },
    /// HTTPS download from a pre-signed URL (JSON escapes still in it; see [`Task::url_fragments`]).
    Https {
        /// the URL as received
        url: &'a str,
    },
}

/// An upgrade task, from a push or a get_reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Task<'a> {
    /// Destination version.
    pub version: &'a str,
    /// Module; "default" when the message has none.
    pub module: &'a str,
    /// Bytes of the file.
    pub size: u32,
    /// Hex digest of the file (case as received).
    pub digest: &'a str,
    /// How `digest` was made.
    pub method: DigestMethod,
    /// Where the file is.
    pub source: Source<'a>,
}

impl<'a> Task<'a> {
    /// The digest as bytes (32 for MD5 are in the first 16).
    pub fn digest_bytes(&self) -> Result<[u8; 32], AlinkError> {
        let want = match self.method {
            DigestMethod::Md5 => 32,
            DigestMethod::Sha256 => 64,
        };
        let hex = self.digest.as_bytes();
        if hex.len() != want {
            return Err(AlinkError::MissingField("sign"));
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.chunks(2).enumerate() {
            let d = |c: u8| (c as char).to_digit(16).ok_or(AlinkError::MissingField("sign"));
            out[i] = (d(pair[0])? << 4 | d(pair[1])?) as u8;
        }
        Ok(out)
    }

    /// The HTTPS URL with its JSON escapes (`\/`, `\u0026`, ...) resolved, in pieces.
    pub fn url_fragments(&self) -> impl Iterator<Item = Result<UrlPiece<'a>, AlinkError>> {
        let raw = match self.source {
            Source::Https { url } => url,
            Source::Mqtt { .. } => "",
        };
        EscapedStr(raw).fragments().map(|f| match f {
            Ok(serde_json_core::str::EscapedStringFragment::NotEscaped(s)) => Ok(UrlPiece::Str(s)),
            Ok(serde_json_core::str::EscapedStringFragment::Escaped(c)) => Ok(UrlPiece::Char(c)),
            Err(_) => Err(AlinkError::Json),
        })
    }
}

/// A piece of an unescaped URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UrlPiece<'a> {
    /// Text as it was.
    Str(&'a str),
    /// An escaped character.
    Char(char),
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    data: Option<Data<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Data<'a> {
    size: Option<u32>,
    version: Option<&'a str>,
    url: Option<&'a str>,
    md5: Option<&'a str>,
    sign: Option<&'a str>,
    sign_method: Option<&'a str>,
    module: Option<&'a str>,
    d_protocol: Option<&'a str>,
    stream_id: Option<u64>,
    stream_file_id: Option<u32>,
    is_diff: Option<u8>,
    #[serde(borrow)]
    files: Option<heapless::Vec<File<'a>, 4>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct File<'a> {
    file_url: Option<&'a str>,
    file_size: Option<u32>,
    file_sign: Option<&'a str>,
    file_md5: Option<&'a str>,
}

/// Reads a push (`code` "1000") or a get_reply (`code` 200). `Ok(None)`: no task (`data` empty).
pub fn parse_task(json: &[u8]) -> Result<Option<Task<'_>>, AlinkError> {
    match top_level(json, "code").map(|c| c.text()) {
        Some("1000") | Some("200") => {}
        Some(_) => return Err(AlinkError::BadCode),
        None => return Err(if json.first() == Some(&b'{') { AlinkError::BadCode } else { AlinkError::Json }),
    }
    let (m, _): (Message<'_>, usize) = serde_json_core::from_slice(json)?;
    let Some(d) = m.data else { return Ok(None) };
    if d.version.is_none() && d.url.is_none() && d.stream_id.is_none() && d.files.is_none() {
        return Ok(None);
    }
    if d.is_diff == Some(1) {
        return Err(AlinkError::Unsupported("differential package"));
    }
    let version = d.version.filter(|v| !v.is_empty()).ok_or(AlinkError::MissingField("version"))?;
    let method = match d.sign_method {
        Some(m) if m.eq_ignore_ascii_case("md5") => DigestMethod::Md5,
        Some(m) if m.eq_ignore_ascii_case("sha256") => DigestMethod::Sha256,
        Some(_) => return Err(AlinkError::Unsupported("signMethod")),
        None if d.md5.is_some() => DigestMethod::Md5,
        None => return Err(AlinkError::MissingField("signMethod")),
    };
    let (mut size, mut digest, mut url) = (d.size, d.sign.or(d.md5), d.url);
    if let Some(files) = &d.files {
        match files.as_slice() {
            [] => {}
            [f] => {
                size = size.or(f.file_size);
                digest = f.file_sign.or(f.file_md5).or(digest);
                url = f.file_url.or(url);
            }
            _ => return Err(AlinkError::Unsupported("several files")),
        }
    }
    let source = if d.d_protocol.is_some_and(|p| p.eq_ignore_ascii_case("mqtt")) {
        Source::Mqtt {
            stream_id: d.stream_id.ok_or(AlinkError::MissingField("streamId"))?,
            file_id: d.stream_file_id.unwrap_or(1),
        }
    } else {
        Source::Https { url: url.filter(|u| !u.is_empty()).ok_or(AlinkError::MissingField("url"))? }
    };
    let task = Task {
        version,
        module: d.module.filter(|m| !m.is_empty()).unwrap_or("default"),
        size: size.ok_or(AlinkError::MissingField("size"))?,
        digest: digest.ok_or(AlinkError::MissingField("sign"))?,
        method,
        source,
    };
    task.digest_bytes()?;
    Ok(Some(task))
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

    /// ALIYUN.md §2.2, the doc-shaped HTTPS push.
    const HTTPS_PUSH: &str = r#"{"code":"1000","message":"success","id":1626969597470,
 "data":{"size":432945,"version":"2.0.0",
         "url":"https://iotx-ota.oss-cn-shanghai.aliyuncs.com/ota/pkg.bin?Expires=1502955804&OSSAccessKeyId=XXXX&Signature=XXXX",
         "md5":"93230c3bde425a9d7984a594ac55ea1e","sign":"93230c3bde425a9d7984a594ac55ea1e",
         "signMethod":"Md5","digestsign":"A4WOP","module":"MCU",
         "extData":{"key1":"value1","_package_udi":"{\"ota_notice\":\"x\"}"}}}"#;

    /// ALIYUN.md §2.2, the real captured MQTT push.
    const MQTT_PUSH: &str = r#"{"code":"1000","data":{"size":4252,"streamId":12332,"sign":"2e78f357f54732c90f3bebb2fb6a3865",
 "dProtocol":"mqtt","version":"1.1","signMethod":"Md5","streamFileId":1,
 "md5":"2e78f357f54732c90f3bebb2fb6a3865"},"id":1695281536874,"message":"success"}"#;

    #[test]
    fn the_https_push_parses() {
        let t = parse_task(HTTPS_PUSH.as_bytes()).unwrap().unwrap();
        assert_eq!((t.version, t.module, t.size, t.method), ("2.0.0", "MCU", 432945, DigestMethod::Md5));
        assert_eq!(t.digest, "93230c3bde425a9d7984a594ac55ea1e");
        assert!(matches!(t.source, Source::Https { url } if url.ends_with("Signature=XXXX")));
    }

    #[test]
    fn the_captured_mqtt_push_parses() {
        let t = parse_task(MQTT_PUSH.as_bytes()).unwrap().unwrap();
        assert_eq!((t.version, t.module, t.size), ("1.1", "default", 4252));
        assert_eq!(t.source, Source::Mqtt { stream_id: 12332, file_id: 1 });
        assert_eq!(t.digest_bytes().unwrap()[..2], [0x2e, 0x78]);
    }

    #[test]
    fn a_get_reply_with_numeric_code_and_string_id_parses() {
        let j = br#"{"id":"12","code":200,"data":{"size":10,"version":"1.5","url":"https:\/\/h\/f.bin","sign":"BE45CB2605BF36BEBDE684841A28F0FD43C69850A3DCE5FEDBA69928EE3A8991","signMethod":"SHA256"}}"#;
        let t = parse_task(j).unwrap().unwrap();
        assert_eq!(t.method, DigestMethod::Sha256);
        let url: std::string::String = t
            .url_fragments()
            .map(|p| match p.unwrap() {
                UrlPiece::Str(s) => s.into(),
                UrlPiece::Char(c) => c.to_string(),
            })
            .collect();
        assert_eq!(url, "https://h/f.bin");
    }

    #[test]
    fn an_empty_get_reply_is_no_task() {
        assert_eq!(parse_task(br#"{"id":"12","code":200,"data":{}}"#), Ok(None));
        assert_eq!(parse_task(br#"{"id":12,"code":200}"#), Ok(None));
    }

    #[test]
    fn a_single_entry_files_array_is_the_file() {
        let j = br#"{"code":"1000","id":"5","data":{"version":"3","signMethod":"md5","files":[{"fileName":"a.bin","fileUrl":"https://x/a","fileSize":7,"fileMd5":"1ac1ef01e96caf1be0d329331a4fc2a8"}]}}"#;
        let t = parse_task(j).unwrap().unwrap();
        assert_eq!((t.size, t.digest), (7, "1ac1ef01e96caf1be0d329331a4fc2a8"));
        assert_eq!(t.source, Source::Https { url: "https://x/a" });
    }

    #[test]
    fn bad_tasks_get_typed_errors() {
        let cases: &[(&[u8], AlinkError)] = &[
            (br#"{"code":"9999","data":{}}"#, AlinkError::BadCode),
            (br#"not json"#, AlinkError::Json),
            (br#"{"code":"1000","data":{"version":"1","size":1,"url":"u","sign":"00","signMethod":"Md5"}}"#, AlinkError::MissingField("sign")),
            (br#"{"code":"1000","data":{"version":"1","size":1,"url":"u","sign":"1ac1ef01e96caf1be0d329331a4fc2a8","signMethod":"Crc"}}"#, AlinkError::Unsupported("signMethod")),
            (br#"{"code":"1000","data":{"version":"1","size":1,"sign":"1ac1ef01e96caf1be0d329331a4fc2a8","signMethod":"Md5"}}"#, AlinkError::MissingField("url")),
            (br#"{"code":"1000","data":{"version":"1","size":1,"dProtocol":"mqtt","sign":"1ac1ef01e96caf1be0d329331a4fc2a8","signMethod":"Md5"}}"#, AlinkError::MissingField("streamId")),
            (br#"{"code":"1000","data":{"version":"1","size":1,"url":"u","isDiff":1,"sign":"1ac1ef01e96caf1be0d329331a4fc2a8","signMethod":"Md5"}}"#, AlinkError::Unsupported("differential package")),
            (br#"{"code":"1000","data":{"version":"1","url":"u","sign":"1ac1ef01e96caf1be0d329331a4fc2a8","signMethod":"Md5"}}"#, AlinkError::MissingField("size")),
            (br#"{"code":"1000","data":{"version":"1","size":"12","url":"u"}}"#, AlinkError::Json),
            (br#"{"code":"1000","data":{"version":"1","signMethod":"md5","files":[{"fileUrl":"a"},{"fileUrl":"b"}]}}"#, AlinkError::Unsupported("several files")),
            (br#"{"code":"1000","data":{"version":"1","size":1,"url":"u","sign":"1ac1ef01e96caf1be0d329331a4fc2a8","signMethod":"Md5""#, AlinkError::Json),
        ];
        for (j, e) in cases {
            assert_eq!(parse_task(j), Err(*e), "{}", core::str::from_utf8(j).unwrap());
        }
    }

    #[test]
    fn truncations_of_a_push_never_panic() {
        for n in 0..MQTT_PUSH.len() {
            let _ = parse_task(&MQTT_PUSH.as_bytes()[..n]);
        }
    }
}
