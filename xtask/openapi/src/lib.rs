//! Aliyun OpenAPI request signatures, both kinds the IoT Platform (2018-01-20) takes:
//!
//! - [`v3`]: `ACS3-HMAC-SHA256`, what the Tea SDKs (`alibabacloud-iot20180120`) send by default
//!   and what `cargo xtask publish` sends: headers `x-acs-action`, `x-acs-version`, `x-acs-date`,
//!   `x-acs-signature-nonce`, `x-acs-content-sha256`, and `Authorization: ACS3-HMAC-SHA256
//!   Credential=<AccessKeyId>,SignedHeaders=<names>,Signature=<hex>` over a canonical request.
//! - [`v1`]: the RPC "Signature Version 1.0" (`HMAC-SHA1`), the older SDKs'
//!   (`aliyun-python-sdk-iot`): every parameter in the query, `Signature` a base64 HMAC-SHA1 of
//!   `METHOD&%2F&enc(sorted query)` keyed with the secret and `&`.
//!
//! The same functions sign (the client) and check (the local twin, which recomputes the
//! signature from what came on the wire). Sources: Aliyun's "V3 request structure and signature"
//! and the IoT "Signature method" documents, and the darabonba-openapi-util unit tests; the four
//! published test vectors are this crate's tests.

pub mod gateway;

use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

/// RFC 3986: everything but `A-Z a-z 0-9 - _ . ~` is percent-encoded (space as `%20`, `*` as
/// `%2A`), as both signatures require.
const RFC3986: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// `s` percent-encoded the way both signatures encode names and values.
pub fn encode(s: &str) -> String {
    utf8_percent_encode(s, RFC3986).to_string()
}

/// A query string as it came on the wire, decoded into its pairs (`+` is a space, as Python's
/// `urlencode` writes it; a name without `=` has an empty value). `None` when a part is not
/// UTF-8 after decoding.
pub fn parse_query(q: &str) -> Option<Vec<(String, String)>> {
    let dec = |s: &str| percent_decode_str(&s.replace('+', " ")).decode_utf8().ok().map(|c| c.into_owned());
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((dec(k)?, dec(v)?))
        })
        .collect()
}

/// The canonical query: pairs sorted by name (then value), each `enc(name)=enc(value)`, joined
/// with `&`.
pub fn canonical_query<K: AsRef<str>, V: AsRef<str>>(params: &[(K, V)]) -> String {
    let mut enc: Vec<(String, String)> = params.iter().map(|(k, v)| (encode(k.as_ref()), encode(v.as_ref()))).collect();
    enc.sort();
    enc.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

/// Lowercase hex SHA-256 of `bytes` (`x-acs-content-sha256`).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The SHA-256 of an empty body: what every OTA call sends (all parameters are in the query).
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Constant-time equality of two signatures as text (a verifier compares with it).
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub mod v1 {
    //! RPC "Signature Version 1.0", HMAC-SHA1.
    use super::*;

    /// `METHOD&%2F&enc(canonical query)`, over every parameter but `Signature`.
    pub fn string_to_sign<K: AsRef<str>, V: AsRef<str>>(method: &str, params: &[(K, V)]) -> String {
        let kept: Vec<(&str, &str)> =
            params.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).filter(|(k, _)| *k != "Signature").collect();
        format!("{}&%2F&{}", method.to_ascii_uppercase(), encode(&canonical_query(&kept)))
    }

    /// `base64(HMAC-SHA1(secret + "&", string_to_sign))`.
    pub fn signature(secret: &str, string_to_sign: &str) -> String {
        use base64::Engine as _;
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(format!("{secret}&").as_bytes()).expect("any key length");
        mac.update(string_to_sign.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }
}

pub mod v3 {
    //! `ACS3-HMAC-SHA256`.
    use super::*;

    /// The name of the algorithm, first in `Authorization` and in the string to sign.
    pub const ALGORITHM: &str = "ACS3-HMAC-SHA256";

    /// What is signed: the method, the path (`/` for RPC-style APIs), the query's pairs, the
    /// headers (any case; repeated names allowed) and the payload's SHA-256 in hex.
    pub struct Request<'a> {
        pub method: &'a str,
        pub path: &'a str,
        pub query: &'a [(String, String)],
        pub headers: &'a [(String, String)],
        pub payload_sha256: &'a str,
    }

    /// The signed headers' names: lowercase, sorted, deduplicated.
    pub fn signed_names(headers: &[(String, String)]) -> Vec<String> {
        let mut n: Vec<String> = headers.iter().map(|(k, _)| k.to_ascii_lowercase()).collect();
        n.sort();
        n.dedup();
        n
    }

    /// The canonical request over the headers named in `signed` (lowercase): `name:values\n`
    /// per name, sorted, a repeated name's trimmed values sorted and joined with `,`. `None`
    /// when a signed name has no header.
    pub fn canonical_request(r: &Request<'_>, signed: &[String]) -> Option<String> {
        let mut lines = String::new();
        for name in signed {
            let mut values: Vec<&str> =
                r.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()).collect();
            if values.is_empty() {
                return None;
            }
            values.sort();
            lines.push_str(&format!("{name}:{}\n", values.join(",")));
        }
        Some(format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            r.method.to_ascii_uppercase(),
            r.path,
            canonical_query(r.query),
            lines,
            signed.join(";"),
            r.payload_sha256
        ))
    }

    /// `hex(HMAC-SHA256(secret, "ACS3-HMAC-SHA256\n" + hex(SHA256(canonical request))))`.
    pub fn signature(secret: &str, canonical_request: &str) -> String {
        let to_sign = format!("{ALGORITHM}\n{}", sha256_hex(canonical_request.as_bytes()));
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(to_sign.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// The `Authorization` header for `r`, signing all its headers.
    pub fn authorization(access_key_id: &str, secret: &str, r: &Request<'_>) -> String {
        let signed = signed_names(r.headers);
        let canonical = canonical_request(r, &signed).expect("every signed name has a header");
        format!(
            "{ALGORITHM} Credential={access_key_id},SignedHeaders={},Signature={}",
            signed.join(";"),
            signature(secret, &canonical)
        )
    }

    /// The parts of an `Authorization` header: the AccessKey id, the signed names, the
    /// signature. `None` when it is not an ACS3-HMAC-SHA256 one.
    pub fn parse_authorization(h: &str) -> Option<(String, Vec<String>, String)> {
        let rest = h.trim().strip_prefix(ALGORITHM)?.trim_start();
        let (mut id, mut names, mut sig) = (None, None, None);
        for part in rest.split(',') {
            let (k, v) = part.trim().split_once('=')?;
            match k {
                "Credential" => id = Some(v.to_string()),
                "SignedHeaders" => names = Some(v.split(';').map(str::to_string).collect()),
                "Signature" => sig = Some(v.to_string()),
                _ => {}
            }
        }
        Some((id?, names?, sig?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn v1_the_ecs_example_of_the_signature_document() {
        let p = pairs(&[
            ("AccessKeyId", "testid"),
            ("Action", "DescribeRegions"),
            ("Format", "XML"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
            ("SignatureVersion", "1.0"),
            ("Timestamp", "2016-02-23T12:46:24Z"),
            ("Version", "2014-05-26"),
        ]);
        let sts = v1::string_to_sign("GET", &p);
        assert_eq!(
            sts,
            "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML%26SignatureMethod%3DHMAC-SHA1%26\
             SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf%26SignatureVersion%3D1.0%26Timestamp%3D2016-02-23T12%\
             253A46%253A24Z%26Version%3D2014-05-26"
        );
        assert_eq!(v1::signature("testsecret", &sts), "OLeaidS1JvxuMvnyHOwuJ+uX5qY=");
    }

    #[test]
    fn v1_the_sdk_unit_test_with_query_and_body_parameters() {
        let sts = v1::string_to_sign("GET", &pairs(&[("query", "test"), ("body", "test")]));
        assert_eq!(sts, "GET&%2F&body%3Dtest%26query%3Dtest");
        assert_eq!(v1::signature("secret", &sts), "XlUyV4sXjOuX5FnjUz9IF9tm5rU=");
        // A Signature parameter on the wire is not part of what it signs.
        let with = pairs(&[("query", "test"), ("body", "test"), ("Signature", "x")]);
        assert_eq!(v1::string_to_sign("GET", &with), sts);
    }

    #[test]
    fn v3_the_fixed_example_of_the_v3_document() {
        let q =
            pairs(&[("ImageId", "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd"), ("RegionId", "cn-shanghai")]);
        let h = pairs(&[
            ("host", "ecs.cn-shanghai.aliyuncs.com"),
            ("x-acs-action", "RunInstances"),
            ("x-acs-version", "2014-05-26"),
            ("x-acs-date", "2023-10-26T10:22:32Z"),
            ("x-acs-signature-nonce", "3156853299f313e23d1673dc12e1703d"),
            ("x-acs-content-sha256", EMPTY_SHA256),
        ]);
        let r = v3::Request { method: "POST", path: "/", query: &q, headers: &h, payload_sha256: EMPTY_SHA256 };
        let c = v3::canonical_request(&r, &v3::signed_names(&h)).unwrap();
        assert_eq!(sha256_hex(c.as_bytes()), "7ea06492da5221eba5297e897ce16e55f964061054b7695beedaac1145b1e259");
        let a = v3::authorization("YourAccessKeyId", "YourAccessKeySecret", &r);
        assert!(a.ends_with(",Signature=06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"), "{a}");
    }

    #[test]
    fn v3_the_sdk_unit_test_with_a_repeated_header_and_an_empty_value() {
        let q = pairs(&[("test", "ok"), ("empty", "")]);
        let h = pairs(&[("x-acs-test", "http"), ("x-acs-TEST", "https")]);
        let hash = "55e12e91650d2fec56ec74e1d3e4ddbfce2ef3a65890c2a19ecf88a307e76a23";
        let r = v3::Request { method: "GET", path: "/", query: &q, headers: &h, payload_sha256: hash };
        let c = v3::canonical_request(&r, &v3::signed_names(&h)).unwrap();
        assert_eq!(c, format!("GET\n/\nempty=&test=ok\nx-acs-test:http,https\n\nx-acs-test\n{hash}"));
        assert_eq!(
            v3::authorization("acesskey", "secret", &r),
            "ACS3-HMAC-SHA256 Credential=acesskey,SignedHeaders=x-acs-test,\
             Signature=d16b30a7699ae9e43875b13195b2f81bcc3ed10c14a9b5eb780e51619aa50be1"
        );
        let (id, names, sig) = v3::parse_authorization(&v3::authorization("acesskey", "secret", &r)).unwrap();
        assert_eq!((id.as_str(), names, sig.len()), ("acesskey", vec!["x-acs-test".to_string()], 64));
    }

    #[test]
    fn a_python_urlencoded_query_is_decoded_and_signed_as_rfc_3986() {
        // Python's urlencode writes a space as `+` and keeps `~`; the signature encodes the
        // space as %20 and `*` as %2A.
        let q = parse_query("Name=a+b%2A&DestVersion=1.4~x&Empty").unwrap();
        assert_eq!(q, pairs(&[("Name", "a b*"), ("DestVersion", "1.4~x"), ("Empty", "")]));
        assert_eq!(canonical_query(&q), "DestVersion=1.4~x&Empty=&Name=a%20b%2A");
        assert_eq!(encode("中"), "%E4%B8%AD");
        assert!(parse_query("a=%FF").is_none(), "not UTF-8");
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
