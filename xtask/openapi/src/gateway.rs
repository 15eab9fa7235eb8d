//! The checks Aliyun's API gateway makes before an action runs, for the local twin: the request's
//! signature (V3 `ACS3-HMAC-SHA256` from its `Authorization` header, or RPC V1 `HMAC-SHA1` from
//! its `Signature` parameter) recomputed from what came on the wire, the AccessKey known, the
//! time within 15 minutes, the nonce not seen before in that window. A refusal carries the
//! gateway's HTTP status, `Code` and `Message` (the POP error shape; the exact status of each
//! code on the IoT endpoint is UNCERTAIN, and the official SDKs raise on any 4xx alike).

use crate::{canonical_query, parse_query, same, sha256_hex, v1, v3};
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// How far a request's time may be from the gateway's.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);

/// The gateway's refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

fn refuse(status: u16, code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal { status, code, message: message.into() }
}

/// A request as it came on the wire.
pub struct Incoming<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The raw query string (without `?`).
    pub query: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

impl Incoming<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Which signature a request carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    V3,
    V1,
}

/// What a request that passed is: its action, the AccessKey that signed it, its parameters (the
/// query's; for V1 also a form body's), without the signature's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub style: Style,
    pub action: String,
    pub version: String,
    pub access_key_id: String,
    pub params: Vec<(String, String)>,
}

/// The AccessKey pairs it knows and the nonces it has seen (each until no request with it can
/// be in time any more).
pub struct Gateway {
    keys: HashMap<String, String>,
    nonces: HashMap<String, SystemTime>,
}

/// The V1 parameters that belong to the signature, not to the action.
const V1_COMMON: [&str; 12] = [
    "Format",
    "RegionId",
    "SecurityToken",
    "Signature",
    "SignatureMethod",
    "SignatureVersion",
    "SignatureNonce",
    "SignatureType",
    "Timestamp",
    "AccessKeyId",
    "Action",
    "Version",
];

impl Gateway {
    /// A gateway that knows these `(AccessKeyId, AccessKeySecret)` pairs.
    pub fn new(keys: impl IntoIterator<Item = (String, String)>) -> Self {
        Gateway { keys: keys.into_iter().collect(), nonces: HashMap::new() }
    }

    /// Checks `r` at `now`: the signature, the key, the time and the nonce.
    pub fn check(&mut self, r: &Incoming<'_>, now: SystemTime) -> Result<Accepted, Refusal> {
        let query = parse_query(r.query).ok_or_else(|| refuse(400, "InvalidParameter", "the query is not UTF-8"))?;
        match r.header("authorization") {
            Some(a) => self.check_v3(r, a, query, now),
            None => self.check_v1(r, query, now),
        }
    }

    fn secret(&self, id: &str) -> Result<&str, Refusal> {
        self.keys
            .get(id)
            .map(String::as_str)
            .ok_or_else(|| refuse(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found."))
    }

    /// The time is within [`WINDOW`] and the nonce new; remembers the nonce.
    fn fresh(&mut self, date: Option<&str>, nonce: Option<&str>, now: SystemTime) -> Result<(), Refusal> {
        let date = date.ok_or_else(|| refuse(400, "MissingParameter", "the request's time is missing"))?;
        let t = humantime::parse_rfc3339(date).map_err(|_| {
            refuse(400, "InvalidTimeStamp.Format", format!("Specified time stamp {date} is not valid."))
        })?;
        let off = now.duration_since(t).or_else(|e| Ok::<_, Refusal>(e.duration()))?;
        if off > WINDOW {
            return Err(refuse(
                400,
                "InvalidTimeStamp.Expired",
                format!("Specified time stamp or date value is expired: {date} is more than 15 minutes off."),
            ));
        }
        let nonce = nonce.ok_or_else(|| refuse(400, "MissingParameter", "the signature nonce is missing"))?;
        // A request with this nonce and time is in time until `t + WINDOW` (a client whose clock
        // runs ahead sends a `t` later than now): the nonce is kept that long.
        self.nonces.retain(|_, until| *until >= now);
        if self.nonces.contains_key(nonce) {
            return Err(refuse(400, "SignatureNonceUsed", "Specified signature nonce was used already."));
        }
        self.nonces.insert(nonce.to_string(), t.max(now) + WINDOW);
        Ok(())
    }

    fn check_v3(
        &mut self,
        r: &Incoming<'_>,
        authorization: &str,
        query: Vec<(String, String)>,
        now: SystemTime,
    ) -> Result<Accepted, Refusal> {
        let incomplete =
            || refuse(400, "IncompleteSignature", "The request signature does not conform to Aliyun standards.");
        let (id, signed, sig) = v3::parse_authorization(authorization).ok_or_else(incomplete)?;
        // The gateway requires host and every x-acs- header to be signed.
        let must =
            r.headers.iter().map(|(k, _)| k.to_ascii_lowercase()).filter(|k| k == "host" || k.starts_with("x-acs-"));
        if must.clone().any(|k| !signed.contains(&k)) || !signed.iter().any(|k| k == "host") {
            return Err(incomplete());
        }
        let secret = self.secret(&id)?.to_string();
        let hash = r.header("x-acs-content-sha256").ok_or_else(incomplete)?;
        if !same(&sha256_hex(r.body), hash) {
            return Err(refuse(400, "ContentSHA256NotMatched", "x-acs-content-sha256 is not the body's SHA-256."));
        }
        let req =
            v3::Request { method: r.method, path: r.path, query: &query, headers: r.headers, payload_sha256: hash };
        let canonical = v3::canonical_request(&req, &signed).ok_or_else(incomplete)?;
        if !same(&v3::signature(&secret, &canonical), &sig) {
            return Err(refuse(
                400,
                "SignatureDoesNotMatch",
                format!(
                    "Specified signature is not matched with our calculation. server string to sign is:{canonical}"
                ),
            ));
        }
        self.fresh(r.header("x-acs-date"), r.header("x-acs-signature-nonce"), now)?;
        let action =
            r.header("x-acs-action").ok_or_else(|| refuse(400, "MissingParameter", "x-acs-action is missing"))?;
        let version =
            r.header("x-acs-version").ok_or_else(|| refuse(400, "MissingParameter", "x-acs-version is missing"))?;
        Ok(Accepted {
            style: Style::V3,
            action: action.into(),
            version: version.into(),
            access_key_id: id,
            params: query,
        })
    }

    fn check_v1(
        &mut self,
        r: &Incoming<'_>,
        mut params: Vec<(String, String)>,
        now: SystemTime,
    ) -> Result<Accepted, Refusal> {
        let form = r.header("content-type").is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
        if form && !r.body.is_empty() {
            let body = std::str::from_utf8(r.body).ok().and_then(parse_query);
            params.extend(body.ok_or_else(|| refuse(400, "InvalidParameter", "the form body is not UTF-8"))?);
        }
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let sig = get("Signature")
            .ok_or_else(|| refuse(400, "MissingSignature", "Signature is mandatory for this action."))?;
        if get("SignatureMethod").as_deref() != Some("HMAC-SHA1") || get("SignatureVersion").as_deref() != Some("1.0") {
            return Err(refuse(400, "InvalidSignatureMethod", "Specified signature method is not supported."));
        }
        let id = get("AccessKeyId").ok_or_else(|| refuse(400, "MissingAccessKeyId", "AccessKeyId is mandatory."))?;
        let secret = self.secret(&id)?.to_string();
        let sts = v1::string_to_sign(r.method, &params);
        if !same(&v1::signature(&secret, &sts), &sig) {
            return Err(refuse(
                400,
                "SignatureDoesNotMatch",
                format!("Specified signature is not matched with our calculation. server string to sign is:{sts}"),
            ));
        }
        self.fresh(get("Timestamp").as_deref(), get("SignatureNonce").as_deref(), now)?;
        let action = get("Action").ok_or_else(|| refuse(400, "MissingAction", "Action is mandatory."))?;
        let version = get("Version").ok_or_else(|| refuse(400, "MissingVersion", "Version is mandatory."))?;
        params.retain(|(k, _)| !V1_COMMON.contains(&k.as_str()));
        Ok(Accepted { style: Style::V1, action, version, access_key_id: id, params })
    }
}

/// Signs a V3 request the way the Tea SDKs do, for the client and the tests: the headers
/// `host`, `x-acs-action`, `x-acs-version`, `x-acs-date`, `x-acs-signature-nonce`,
/// `x-acs-content-sha256` (plus `extra`), all signed; returns the headers with `Authorization`.
#[allow(clippy::too_many_arguments)]
pub fn sign_v3(
    (id, secret): (&str, &str),
    host: &str,
    action: &str,
    version: &str,
    query: &[(String, String)],
    body: &[u8],
    at: SystemTime,
    nonce: &str,
) -> Vec<(String, String)> {
    let hash = sha256_hex(body);
    let mut h: Vec<(String, String)> = [
        ("host", host.to_string()),
        ("x-acs-action", action.to_string()),
        ("x-acs-version", version.to_string()),
        ("x-acs-date", humantime::format_rfc3339_seconds(at).to_string()),
        ("x-acs-signature-nonce", nonce.to_string()),
        ("x-acs-content-sha256", hash.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let r = v3::Request { method: "POST", path: "/", query, headers: &h, payload_sha256: &hash };
    let auth = v3::authorization(id, secret, &r);
    h.push(("Authorization".into(), auth));
    h
}

/// The query of a V1 request signed the way the old SDK signs it (POST, everything in the query).
pub fn sign_v1(
    (id, secret): (&str, &str),
    action: &str,
    version: &str,
    params: &[(String, String)],
    at: SystemTime,
    nonce: &str,
) -> String {
    let mut p: Vec<(String, String)> = params.to_vec();
    for (k, v) in [
        ("Action", action.to_string()),
        ("Version", version.to_string()),
        ("Format", "JSON".to_string()),
        ("AccessKeyId", id.to_string()),
        ("SignatureMethod", "HMAC-SHA1".to_string()),
        ("SignatureVersion", "1.0".to_string()),
        ("SignatureNonce", nonce.to_string()),
        ("Timestamp", humantime::format_rfc3339_seconds(at).to_string()),
    ] {
        p.push((k.to_string(), v));
    }
    let sig = v1::signature(secret, &v1::string_to_sign("POST", &p));
    p.push(("Signature".into(), sig));
    canonical_query(&p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: (&str, &str) = ("LTAI-twin", "twin-secret");

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    fn gateway() -> Gateway {
        Gateway::new([(KEY.0.to_string(), KEY.1.to_string())])
    }

    fn q(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_v3_request_signed_as_the_sdk_signs_passes_once_and_every_alteration_is_refused() {
        let now = at("2026-12-07T10:00:00Z");
        let params = q(&[("ProductKey", "a1B2c3D4e5F"), ("FirmwareName", "app 1.4*")]);
        let headers = sign_v3(KEY, "127.0.0.1:9000", "CreateOTAFirmware", "2018-01-20", &params, b"", now, "n1");
        // On the wire the query is Python-urlencoded (space as +).
        let wire = "ProductKey=a1B2c3D4e5F&FirmwareName=app+1.4%2A";
        let r = Incoming { method: "POST", path: "/", query: wire, headers: &headers, body: b"" };
        let mut g = gateway();
        let a = g.check(&r, now).unwrap();
        assert_eq!((a.style, a.action.as_str(), a.access_key_id.as_str()), (Style::V3, "CreateOTAFirmware", KEY.0));
        assert_eq!(a.params, params);
        assert_eq!(g.check(&r, now).unwrap_err().code, "SignatureNonceUsed");

        let altered = Incoming { query: "ProductKey=a1B2c3D4e5G&FirmwareName=app+1.4%2A", ..r };
        assert_eq!(gateway().check(&altered, now).unwrap_err().code, "SignatureDoesNotMatch");
        let late = now + Duration::from_secs(16 * 60);
        assert_eq!(gateway().check(&r, late).unwrap_err().code, "InvalidTimeStamp.Expired");
        assert!(gateway().check(&r, now + Duration::from_secs(14 * 60)).is_ok(), "14 minutes off is in time");
        // A client 10 minutes ahead: its nonce is still remembered 16 minutes later, when its
        // time is 6 minutes off.
        let ahead = sign_v3(KEY, "h", "A", "2018-01-20", &[], b"", now + Duration::from_secs(600), "n9");
        let r3 = Incoming { method: "POST", path: "/", query: "", headers: &ahead, body: b"" };
        let mut g = gateway();
        assert!(g.check(&r3, now).is_ok());
        assert_eq!(g.check(&r3, now + Duration::from_secs(16 * 60)).unwrap_err().code, "SignatureNonceUsed");
        let other = Gateway::new([("LTAI-other".to_string(), "x".to_string())]).check(&r, now).unwrap_err();
        assert_eq!((other.status, other.code), (404, "InvalidAccessKeyId.NotFound"));
        let body = Incoming { body: b"x", ..r };
        assert_eq!(gateway().check(&body, now).unwrap_err().code, "ContentSHA256NotMatched");
        // An x-acs- header the signature leaves out.
        let mut more = headers.clone();
        more.push(("x-acs-extra".into(), "1".into()));
        let r2 = Incoming { headers: &more, ..r };
        assert_eq!(gateway().check(&r2, now).unwrap_err().code, "IncompleteSignature");
    }

    #[test]
    fn a_v1_request_in_the_query_or_a_form_body_passes_and_a_wrong_secret_does_not() {
        let now = at("2026-12-07T10:00:00Z");
        let params = q(&[("ProductKey", "a1B2c3D4e5F"), ("DeviceName", "dev 1")]);
        let query = sign_v1(KEY, "RegisterDevice", "2018-01-20", &params, now, "n2");
        let r = Incoming { method: "POST", path: "/", query: &query, headers: &[], body: b"" };
        let a = gateway().check(&r, now).unwrap();
        assert_eq!((a.style, a.action.as_str(), a.version.as_str()), (Style::V1, "RegisterDevice", "2018-01-20"));
        let mut want = params.clone();
        want.sort();
        assert_eq!(a.params, want, "the signature's own parameters are not the action's");
        let wrong = sign_v1((KEY.0, "not-the-secret"), "RegisterDevice", "2018-01-20", &params, now, "n3");
        let r = Incoming { query: &wrong, ..r };
        assert_eq!(gateway().check(&r, now).unwrap_err().code, "SignatureDoesNotMatch");
        // The same parameters as a form body.
        let form = [("Content-Type".to_string(), "application/x-www-form-urlencoded".to_string())];
        let r = Incoming { method: "POST", path: "/", query: "", headers: &form, body: query.as_bytes() };
        assert!(gateway().check(&r, now).is_ok());
    }
}
