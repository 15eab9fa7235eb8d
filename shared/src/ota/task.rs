//! What a device does with an [`Offer`]: whether it is ours, and whether we can carry it out.
//! Every offer for our module ends as a [`Task`] or a [`Failure`] the platform is told about.

use super::Failure;
use crate::alink::{valid_version, DigestMethod, EscapedStr, Offer};

/// Identifies a task across resets: its size and the first bytes of its digest.
pub type TaskKey = [u8; 16];

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

/// An upgrade task the device can carry out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Task<'a> {
    /// Destination version.
    pub version: &'a str,
    /// Bytes of the file.
    pub size: u32,
    /// The file's digest (MD5 in the first 16 bytes).
    pub digest: [u8; 32],
    /// How `digest` was made.
    pub method: DigestMethod,
    /// Where the file is.
    pub source: Source<'a>,
    /// `isDiff: 1`: a differential package (a patch against the running image).
    pub diff: bool,
}

/// The module an offer is for (`default` when it names none).
pub fn module_of<'a>(o: &Offer<'a>) -> &'a str {
    o.module.map(|m| m.0).filter(|m| !m.is_empty()).unwrap_or("default")
}

fn text<'a>(v: Option<EscapedStr<'a>>) -> Option<&'a str> {
    v.map(|s| s.0).filter(|s| !s.is_empty())
}

fn hex_digest(hex: &str, method: DigestMethod) -> Result<[u8; 32], Failure> {
    let hex = hex.as_bytes();
    if hex.len() != method.hex_len() {
        return Err(Failure::BadField("sign"));
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        let d = |c: u8| (c as char).to_digit(16).ok_or(Failure::BadField("sign"));
        out[i] = (d(pair[0])? << 4 | d(pair[1])?) as u8;
    }
    Ok(out)
}

impl<'a> Task<'a> {
    /// Reads the task of an offer for our module, or says why it cannot be carried out. The
    /// checks run in the order a person reading the refusal would want: what kind of package, then
    /// what is missing, then what does not fit.
    pub fn from_offer(o: &Offer<'a>) -> Result<Task<'a>, Failure> {
        Task::read(o, false)
    }

    /// [`Task::from_offer`] on a device that applies differential packages when `delta`.
    pub fn from_offer_with(o: &Offer<'a>, delta: bool) -> Result<Task<'a>, Failure> {
        Task::read(o, delta)
    }

    /// [`Task::from_offer`] for an external module, which applies differential packages itself
    /// (Quectel DFOTA packages are deltas): `isDiff: 1` is accepted.
    pub fn from_module_offer(o: &Offer<'a>) -> Result<Task<'a>, Failure> {
        Task::read(o, true)
    }

    fn read(o: &Offer<'a>, diff: bool) -> Result<Task<'a>, Failure> {
        if o.is_diff == Some(1) && !diff {
            return Err(Failure::DiffUnsupported);
        }
        let files = o.files.unwrap_or_default();
        if files.count > 1 {
            return Err(Failure::SeveralFiles { files: files.count.min(255) as u8 });
        }
        let version = text(o.version).ok_or(Failure::MissingField("version"))?;
        if !valid_version(version) {
            return Err(Failure::BadVersion);
        }
        let first = (files.count == 1).then_some(files.first);
        let method = match text(o.sign_method) {
            Some(m) => DigestMethod::from_name(m).ok_or(Failure::SignMethodUnsupported)?,
            None if o.md5.is_some() || first.is_some_and(|f| f.file_md5.is_some()) => DigestMethod::Md5,
            None => return Err(Failure::MissingField("signMethod")),
        };
        let size = o.size.or(first.and_then(|f| f.file_size)).ok_or(Failure::MissingField("size"))?;
        // No image is empty (and a download's progress is a share of its size).
        if size == 0 {
            return Err(Failure::BadField("size"));
        }
        let sign = text(first.and_then(|f| f.file_sign.or(f.file_md5)))
            .or(text(o.sign))
            .or(text(o.md5).filter(|_| method == DigestMethod::Md5))
            .ok_or(Failure::MissingField("sign"))?;
        let digest = hex_digest(sign, method)?;
        let source = if text(o.d_protocol).is_some_and(|p| p.eq_ignore_ascii_case("mqtt")) {
            Source::Mqtt {
                stream_id: o.stream_id.ok_or(Failure::MissingField("streamId"))?,
                file_id: o.stream_file_id.unwrap_or(1),
            }
        } else {
            let url = text(first.and_then(|f| f.file_url)).or(text(o.url)).ok_or(Failure::MissingField("url"))?;
            Source::Https { url }
        };
        Ok(Task { version, size, digest, method, source, diff: o.is_diff == Some(1) })
    }

    /// The key that names this task across resets.
    pub fn key(&self) -> TaskKey {
        let mut k = [0u8; 16];
        k[..4].copy_from_slice(&self.size.to_le_bytes());
        k[4..].copy_from_slice(&self.digest[..12]);
        k
    }

    /// The HTTPS URL with its JSON escapes (`\/`, `\u0026`, ...) resolved, in pieces.
    pub fn url_fragments(&self) -> impl Iterator<Item = Result<UrlPiece<'a>, ()>> {
        let raw = match self.source {
            Source::Https { url } => url,
            Source::Mqtt { .. } => "",
        };
        EscapedStr(raw).fragments().map(|f| match f {
            Ok(serde_json_core::str::EscapedStringFragment::NotEscaped(s)) => Ok(UrlPiece::Str(s)),
            Ok(serde_json_core::str::EscapedStringFragment::Escaped(c)) => Ok(UrlPiece::Char(c)),
            Err(_) => Err(()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alink::{parse_offer, OfferFile, OfferFiles};

    const MD5: &str = "1ac1ef01e96caf1be0d329331a4fc2a8";

    fn e(s: &str) -> Option<EscapedStr<'_>> {
        Some(EscapedStr(s))
    }

    fn good() -> Offer<'static> {
        Offer {
            size: Some(16),
            version: e("1.4"),
            sign: e(MD5),
            md5: e(MD5),
            sign_method: e("Md5"),
            d_protocol: e("mqtt"),
            stream_id: Some(9),
            stream_file_id: Some(1),
            ..Default::default()
        }
    }

    #[test]
    fn a_good_offer_is_a_task() {
        let t = Task::from_offer(&good()).unwrap();
        assert_eq!((t.version, t.size, t.method), ("1.4", 16, DigestMethod::Md5));
        assert_eq!(t.source, Source::Mqtt { stream_id: 9, file_id: 1 });
        assert_eq!(t.digest[..2], [0x1a, 0xc1]);
    }

    #[test]
    fn every_offer_we_cannot_carry_out_says_why() {
        type Break = fn(&mut Offer<'static>);
        let cases: [(Break, Failure); 11] = [
            (|o| o.is_diff = Some(1), Failure::DiffUnsupported),
            (|o| o.sign_method = e("Crc32"), Failure::SignMethodUnsupported),
            (
                |o| o.files = Some(OfferFiles { first: OfferFile::default(), count: 3 }),
                Failure::SeveralFiles { files: 3 },
            ),
            (|o| o.version = None, Failure::MissingField("version")),
            (|o| o.version = e("1.4 beta"), Failure::BadVersion),
            (|o| o.size = None, Failure::MissingField("size")),
            // Found by fuzzing (fuzz/regressions/ota_machine-size-zero): a task of 0 bytes was
            // taken, and the first (empty) block divided by its size.
            (|o| o.size = Some(0), Failure::BadField("size")),
            (
                |o| {
                    o.sign = None;
                    o.md5 = None
                },
                Failure::MissingField("sign"),
            ),
            (|o| o.sign = e("00"), Failure::BadField("sign")),
            (|o| o.stream_id = None, Failure::MissingField("streamId")),
            (|o| o.d_protocol = None, Failure::MissingField("url")),
        ];
        for (break_it, why) in cases {
            let mut o = good();
            break_it(&mut o);
            assert_eq!(Task::from_offer(&o), Err(why.clone()), "{why}");
        }
    }

    #[test]
    fn an_external_module_takes_a_diff_package_the_app_does_not() {
        let mut o = good();
        o.is_diff = Some(1);
        assert_eq!(Task::from_offer(&o), Err(Failure::DiffUnsupported));
        assert_eq!(Task::from_module_offer(&o).map(|t| t.version), Ok("1.4"));
        // An app that applies patches takes it, knowing it is one.
        assert_eq!(Task::from_offer_with(&o, true).map(|t| t.diff), Ok(true));
        assert_eq!(Task::from_offer_with(&good(), true).map(|t| t.diff), Ok(false));
        // The other checks still apply.
        o.version = None;
        assert_eq!(Task::from_module_offer(&o), Err(Failure::MissingField("version")));
    }

    #[test]
    fn a_single_file_array_is_the_file_and_sha256_needs_no_md5() {
        let j = br#"{"code":"1000","id":"5","data":{"version":"3","signMethod":"SHA256","files":[{"fileName":"a.bin","fileUrl":"https:\/\/x\/a","fileSize":7,"fileSign":"BE45CB2605BF36BEBDE684841A28F0FD43C69850A3DCE5FEDBA69928EE3A8991"}]}}"#;
        let o = parse_offer(j).unwrap().unwrap();
        let t = Task::from_offer(&o).unwrap();
        assert_eq!((t.size, t.method, t.digest[0]), (7, DigestMethod::Sha256, 0xBE));
        let url: std::string::String = t
            .url_fragments()
            .map(|p| match p.unwrap() {
                UrlPiece::Str(s) => s.into(),
                UrlPiece::Char(c) => c.to_string(),
            })
            .collect();
        assert_eq!(url, "https://x/a");
    }

    #[test]
    fn an_offer_without_a_module_is_for_the_default_module() {
        assert_eq!(module_of(&good()), "default");
        let mut o = good();
        o.module = e("MCU");
        assert_eq!(module_of(&o), "MCU");
    }
}
