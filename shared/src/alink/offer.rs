//! The task the platform offers (docs/PROTOCOL.md §2.2, §2.4): the `data` of an upgrade push
//! (`{"code":"1000","data":{..},"id":N,"message":"success"}`) and of a `firmware/get` reply
//! (`{"id":"12","code":200,"data":{..}}`), written and read here, in one place: the console
//! emits what the device parses (`parse(emit(x)) == x`).
//!
//! An [`Offer`] holds what the message says, nothing more: every field the platform may leave out
//! is an `Option`, strings stay JSON-escaped as received ([`EscapedStr`]). Whether the device can
//! carry the task out is decided in `shared::ota`.

use super::json::top_level;
use super::AlinkError;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
pub use serde_json_core::str::EscapedStr;

/// Entries of `extData` kept (Aliyun: up to 10 batch tags plus `_package_udi`); more are skipped.
pub const MAX_EXT: usize = 12;

/// One entry of `files[]` (multi-file HTTPS packages).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OfferFile<'a> {
    /// `fileName`
    #[serde(borrow, skip_serializing_if = "Option::is_none", default)]
    pub file_name: Option<EscapedStr<'a>>,
    /// `fileUrl`
    #[serde(borrow, skip_serializing_if = "Option::is_none", default)]
    pub file_url: Option<EscapedStr<'a>>,
    /// `fileSize`
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub file_size: Option<u32>,
    /// `fileSign`
    #[serde(borrow, skip_serializing_if = "Option::is_none", default)]
    pub file_sign: Option<EscapedStr<'a>>,
    /// `fileMd5`
    #[serde(borrow, skip_serializing_if = "Option::is_none", default)]
    pub file_md5: Option<EscapedStr<'a>>,
}

/// `files[]`: its first entry and how many there are (a device installs one image; the count is
/// what it needs to refuse the others). Emitted as `count` copies of `first`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OfferFiles<'a> {
    /// The first entry.
    pub first: OfferFile<'a>,
    /// Entries in the array.
    pub count: u16,
}

impl Serialize for OfferFiles<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.count as usize))?;
        for _ in 0..self.count {
            seq.serialize_element(&self.first)?;
        }
        seq.end()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for OfferFiles<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OfferFiles<'de>;
            fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str("an array of files")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut files = OfferFiles::default();
                if let Some(first) = a.next_element::<OfferFile<'de>>()? {
                    files.first = first;
                    files.count = 1;
                    while a.next_element::<IgnoredAny>()?.is_some() {
                        files.count = files.count.saturating_add(1);
                    }
                }
                Ok(files)
            }
        }
        d.deserialize_seq(V)
    }
}

/// `extData`: batch tags and `_package_udi` (key, value), as escaped JSON strings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtData<'a>(pub heapless::Vec<(EscapedStr<'a>, EscapedStr<'a>), MAX_EXT>);

impl Serialize for ExtData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for ExtData<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ExtData<'de>;
            fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str("an object of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut ext = ExtData::default();
                // Keys as `&str` (serde-json-core reads map keys only so; escapes stay in).
                while let Some(k) = a.next_key::<&'de str>()?.map(EscapedStr) {
                    // Values are strings on Aliyun (tags and the JSON-encoded udi); past MAX_EXT
                    // entries they are skipped.
                    if ext.0.is_full() {
                        a.next_value::<IgnoredAny>()?;
                    } else {
                        let v = a.next_value::<EscapedStr<'de>>()?;
                        let _ = ext.0.push((k, v));
                    }
                }
                Ok(ext)
            }
        }
        d.deserialize_map(V)
    }
}

impl ExtData<'_> {
    /// The raw (escaped) value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k.0 == key).map(|(_, v)| v.0)
    }
}

/// The `data` of a push or get_reply.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Offer<'a> {
    /// `size`: bytes of the (single) file.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub size: Option<u32>,
    /// `version`: the destination version.
    #[serde(borrow, skip_serializing_if = "Option::is_none", default)]
    pub version: Option<EscapedStr<'a>>,
    /// `isDiff`: 1 for a differential package (absent for full ones).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub is_diff: Option<u8>,
    /// `url`: the pre-signed HTTPS URL (absent for MQTT stream tasks).
    #[serde(borrow, skip_serializing_if = "Option::is_none", default)]
    pub url: Option<EscapedStr<'a>>,
    /// `md5`: present when `signMethod` is MD5.
    #[serde(borrow, skip_serializing_if = "Option::is_none", default)]
    pub md5: Option<EscapedStr<'a>>,
    /// `sign`: hex digest of the file.
    #[serde(borrow, skip_serializing_if = "Option::is_none", default)]
    pub sign: Option<EscapedStr<'a>>,
    /// `signMethod`: `Md5` or `SHA256` (any case).
    #[serde(borrow, skip_serializing_if = "Option::is_none", default)]
    pub sign_method: Option<EscapedStr<'a>>,
    /// `digestsign` (semantics unknown; carried, never used).
    #[serde(borrow, skip_serializing_if = "Option::is_none", default)]
    pub digestsign: Option<EscapedStr<'a>>,
    /// `module`: absent for the default module.
    #[serde(borrow, skip_serializing_if = "Option::is_none", default)]
    pub module: Option<EscapedStr<'a>>,
    /// `dProtocol`: `mqtt` for an MQTT stream download.
    #[serde(borrow, skip_serializing_if = "Option::is_none", default)]
    pub d_protocol: Option<EscapedStr<'a>>,
    /// `streamId`
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stream_id: Option<u64>,
    /// `streamFileId`
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stream_file_id: Option<u32>,
    /// `files[]`
    #[serde(borrow, skip_serializing_if = "Option::is_none", default)]
    pub files: Option<OfferFiles<'a>>,
    /// `extData`
    #[serde(borrow, skip_serializing_if = "Option::is_none", default)]
    pub ext_data: Option<ExtData<'a>>,
}

impl Offer<'_> {
    /// Whether the offer carries a task at all (`"data":{}` means none).
    pub fn is_empty(&self) -> bool {
        self == &Offer::default()
    }
}

#[derive(Serialize)]
struct PushOut<'a, 'b> {
    code: &'static str,
    data: &'b Offer<'a>,
    id: u64,
    message: &'static str,
}

#[derive(Serialize)]
struct ReplyOut<'a, 'b> {
    id: &'b str,
    code: u16,
    data: &'b Offer<'a>,
}

/// Writes an upgrade push (`/ota/device/upgrade`): code `"1000"`, numeric `id`, as current pushes.
pub fn emit_push(out: &mut [u8], id: u64, offer: &Offer<'_>) -> Result<usize, AlinkError> {
    Ok(serde_json_core::to_slice(&PushOut { code: "1000", data: offer, id, message: "success" }, out)?)
}

/// Writes a `firmware/get` reply: code 200, the request's `id` echoed, `"data":{}` for no task.
pub fn emit_get_reply(out: &mut [u8], id: &str, offer: &Offer<'_>) -> Result<usize, AlinkError> {
    Ok(serde_json_core::to_slice(&ReplyOut { id, code: 200, data: offer }, out)?)
}

#[derive(Deserialize)]
struct MessageIn<'a> {
    #[serde(borrow, default)]
    data: Option<Offer<'a>>,
}

/// Reads a push (`code` "1000") or a get_reply (`code` 200); `Ok(None)`: no task (`data`
/// absent or empty). Unknown fields are skipped; `id` and `code` may be strings or numbers.
pub fn parse_offer(json: &[u8]) -> Result<Option<Offer<'_>>, AlinkError> {
    match top_level(json, "code").map(|c| c.text()) {
        Some("1000") | Some("200") => {}
        Some(_) => return Err(AlinkError::BadCode),
        None => return Err(if json.first() == Some(&b'{') { AlinkError::BadCode } else { AlinkError::Json }),
    }
    let (m, _): (MessageIn<'_>, usize) = serde_json_core::from_slice(json)?;
    Ok(m.data.filter(|d| !d.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(s: &str) -> Option<EscapedStr<'_>> {
        Some(EscapedStr(s))
    }

    /// docs/PROTOCOL.md §2.2, the doc-shaped HTTPS push.
    const HTTPS_PUSH: &str = r#"{"code":"1000","message":"success","id":1626969597470,
 "data":{"size":432945,"version":"2.0.0","isDiff":1,
         "url":"https://iotx-ota.oss-cn-shanghai.aliyuncs.com/ota/pkg.bin?Expires=1502955804&OSSAccessKeyId=XXXX&Signature=XXXX",
         "md5":"93230c3bde425a9d7984a594ac55ea1e","sign":"93230c3bde425a9d7984a594ac55ea1e",
         "signMethod":"Md5","digestsign":"A4WOP","module":"MCU",
         "extData":{"key1":"value1","_package_udi":"{\"ota_notice\":\"x\"}"}}}"#;

    /// docs/PROTOCOL.md §2.2, the real captured MQTT push.
    const MQTT_PUSH: &str = r#"{"code":"1000","data":{"size":4252,"streamId":12332,"sign":"2e78f357f54732c90f3bebb2fb6a3865",
 "dProtocol":"mqtt","version":"1.1","signMethod":"Md5","streamFileId":1,
 "md5":"2e78f357f54732c90f3bebb2fb6a3865"},"id":1695281536874,"message":"success"}"#;

    #[test]
    fn the_doc_push_parses_with_its_ext_data() {
        let o = parse_offer(HTTPS_PUSH.as_bytes()).unwrap().unwrap();
        assert_eq!((o.version, o.module, o.size, o.is_diff), (e("2.0.0"), e("MCU"), Some(432945), Some(1)));
        assert!(o.url.unwrap().0.ends_with("Signature=XXXX"));
        let ext = o.ext_data.unwrap();
        assert_eq!(ext.get("key1"), Some("value1"));
        assert_eq!(ext.get("_package_udi"), Some(r#"{\"ota_notice\":\"x\"}"#));
    }

    #[test]
    fn the_captured_mqtt_push_parses() {
        let o = parse_offer(MQTT_PUSH.as_bytes()).unwrap().unwrap();
        assert_eq!((o.stream_id, o.stream_file_id, o.d_protocol), (Some(12332), Some(1), e("mqtt")));
        assert_eq!(o.module, None);
        assert_eq!(o.sign, e("2e78f357f54732c90f3bebb2fb6a3865"));
    }

    #[test]
    fn parse_of_emit_is_the_offer_for_push_and_get_reply() {
        let mut ext = ExtData::default();
        ext.0.push((EscapedStr("_package_udi"), EscapedStr(r#"{\"notes\":\"a\\/b\"}"#))).unwrap();
        ext.0.push((EscapedStr("region"), EscapedStr("east"))).unwrap();
        let file = OfferFile {
            file_name: e("a.bin"),
            file_url: e("https:\\/\\/h\\/a.bin"),
            file_size: Some(7),
            file_sign: e("1ac1ef01e96caf1be0d329331a4fc2a8"),
            file_md5: None,
        };
        let offers = [
            Offer {
                size: Some(4252),
                version: e("1.1"),
                sign: e("2e78f357f54732c90f3bebb2fb6a3865"),
                md5: e("2e78f357f54732c90f3bebb2fb6a3865"),
                sign_method: e("Md5"),
                d_protocol: e("mqtt"),
                stream_id: Some(1_000_001),
                stream_file_id: Some(1),
                ..Default::default()
            },
            Offer {
                size: Some(10),
                version: e("V1.5_rc-2"),
                url: e("https://127.0.0.1:9/ota/1/f.bin?Expires=1&device=d"),
                sign: e("be45cb2605bf36bebde684841a28f0fd43c69850a3dce5fedba69928ee3a8991"),
                sign_method: e("SHA256"),
                module: e("MCU"),
                is_diff: Some(1),
                digestsign: e("A4WOP"),
                files: Some(OfferFiles { first: file, count: 3 }),
                ext_data: Some(ext),
                ..Default::default()
            },
        ];
        let mut buf = [0u8; 2048];
        for o in &offers {
            let n = emit_push(&mut buf, 1695281536874, o).unwrap();
            assert_eq!(
                parse_offer(&buf[..n]).unwrap().as_ref(),
                Some(o),
                "{}",
                core::str::from_utf8(&buf[..n]).unwrap()
            );
            let n = emit_get_reply(&mut buf, "12", o).unwrap();
            assert_eq!(parse_offer(&buf[..n]).unwrap().as_ref(), Some(o));
            // serde_json reads what we write as JSON, with the top-level shapes of the doc.
            let v: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap();
            assert_eq!((v["id"].as_str(), v["code"].as_i64()), (Some("12"), Some(200)));
        }
        let n = emit_push(&mut buf, 7, &offers[0]).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap();
        assert_eq!(
            (v["code"].as_str(), v["id"].as_u64(), v["message"].as_str()),
            (Some("1000"), Some(7), Some("success"))
        );
        assert!(v["data"].get("url").is_none() && v["data"].get("isDiff").is_none(), "absent fields are left out");
    }

    #[test]
    fn no_task_is_none() {
        let mut buf = [0u8; 64];
        let n = emit_get_reply(&mut buf, "12", &Offer::default()).unwrap();
        assert_eq!(core::str::from_utf8(&buf[..n]).unwrap(), r#"{"id":"12","code":200,"data":{}}"#);
        assert_eq!(parse_offer(&buf[..n]), Ok(None));
        assert_eq!(parse_offer(br#"{"id":12,"code":200}"#), Ok(None));
    }

    #[test]
    fn bad_messages_are_typed_errors_and_truncations_never_panic() {
        assert_eq!(parse_offer(br#"{"code":"9999","data":{}}"#), Err(AlinkError::BadCode));
        assert_eq!(parse_offer(b"not json"), Err(AlinkError::Json));
        assert_eq!(parse_offer(br#"{"code":"1000","data":{"size":"12"}}"#), Err(AlinkError::Json));
        for n in 0..HTTPS_PUSH.len() {
            let _ = parse_offer(&HTTPS_PUSH.as_bytes()[..n]);
        }
    }

    #[test]
    fn more_ext_data_than_kept_is_skipped_not_an_error() {
        let mut j = String::from(r#"{"code":"1000","data":{"version":"1","extData":{"#);
        for i in 0..20 {
            j.push_str(&format!(r#""k{i}":"v","#));
        }
        j.push_str(r#""n":1}}}"#);
        let o = parse_offer(j.as_bytes()).unwrap().unwrap();
        assert_eq!(o.ext_data.unwrap().0.len(), MAX_EXT);
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_and_mutated_pushes_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            at in 0usize..400, val in proptest::prelude::any::<u8>(),
        ) {
            let _ = parse_offer(&bytes);
            let mut p = HTTPS_PUSH.as_bytes().to_vec();
            let at = at % p.len();
            p[at] = val;
            if let Ok(Some(o)) = parse_offer(&p) {
                let _ = crate::ota::Task::from_offer(&o);
            };
        }
    }
}
