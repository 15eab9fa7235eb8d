//! Aliyun CONNECT credentials, checked the way the IoT Platform does (docs/PROTOCOL.md §1): the client id
//! `{id}|securemode=S,signmethod=M,timestamp=T|`, the user name `{deviceName}&{productKey}`, and the
//! password HMAC recomputed from the registered device secret.

use serde::Deserialize;
use shared::alink::{sign, SignMethod};
use std::collections::BTreeMap;

/// A registered device (`[[device]]` in the console's TOML).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceEntry {
    pub product_key: String,
    pub device_name: String,
    pub device_secret: String,
}

/// Product key and device name: how the console names a device.
pub type DeviceId = (String, String);

/// A CONNECT whose credentials are right.
#[derive(Debug, PartialEq, Eq)]
pub struct Login {
    /// The device.
    pub id: DeviceId,
    /// `securemode` of the client id (2 TLS, 3 plain TCP, ...).
    pub securemode: i8,
    /// `_ss=1`: an Aliyun SDK that expects the server to subscribe it to its topics.
    pub server_subscribes: bool,
}

/// Why a CONNECT was refused; the text is what the console shows.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed client id or user name (CONNACK 2, identifier rejected).
    Malformed(String),
    /// No such device, or the password does not match its secret (CONNACK 4).
    BadCredentials(String),
    /// A CONNECT the platform does not serve, e.g. a keep-alive outside 30..=1200 s (CONNACK 3).
    Unavailable(String),
}

impl Refusal {
    /// The MQTT 3.1.1 CONNACK return code Aliyun answers with.
    pub fn connack_code(&self) -> u8 {
        match self {
            Refusal::Malformed(_) => 2,
            Refusal::BadCredentials(_) => 4,
            Refusal::Unavailable(_) => 3,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Malformed(s) | Refusal::BadCredentials(s) | Refusal::Unavailable(s) => f.write_str(s),
        }
    }
}

/// The registered devices.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    secrets: BTreeMap<DeviceId, String>,
}

impl Registry {
    pub fn new(devices: &[DeviceEntry]) -> Registry {
        let secrets =
            devices.iter().map(|d| ((d.product_key.clone(), d.device_name.clone()), d.device_secret.clone())).collect();
        Registry { secrets }
    }

    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Checks one CONNECT; returns the device it authenticates.
    pub fn check(&self, client_id: &str, username: &str, password: &[u8]) -> Result<Login, Refusal> {
        let bad = |s: &str| Refusal::Malformed(format!("{s} (client id {client_id:?}, user {username:?})"));
        let (dn, pk) = username.split_once('&').ok_or_else(|| bad("user name is not deviceName&productKey"))?;
        let (prefix, rest) = client_id.split_once('|').ok_or_else(|| bad("client id has no |params| part"))?;
        let params = rest.strip_suffix('|').ok_or_else(|| bad("client id does not end with |"))?;
        let mut method = None;
        let mut timestamp = None;
        let mut securemode = None;
        let mut ss = false;
        for kv in params.split(',') {
            match kv.split_once('=') {
                Some(("signmethod", m)) => method = SignMethod::from_name(m),
                Some(("timestamp", t)) => timestamp = Some(t),
                Some(("securemode", s)) => securemode = s.parse::<i8>().ok(),
                Some(("_ss", s)) => ss = s == "1",
                _ => {}
            }
        }
        let method = method.ok_or_else(|| bad("client id has no known signmethod (hmacsha256, hmacsha1, hmacmd5)"))?;
        let securemode = securemode.ok_or_else(|| bad("client id has no securemode"))?;
        let id = (pk.to_string(), dn.to_string());
        let Some(secret) = self.secrets.get(&id) else {
            return Err(Refusal::BadCredentials(format!("no device {dn} in product {pk} is registered")));
        };
        // The signed content: every pair the client id carries, in Aliyun's order; without a
        // timestamp the doc also allows the minimal `deviceName..productKey..` (docs/PROTOCOL.md §1.6).
        let mut contents = vec![match timestamp {
            Some(ts) => vec!["clientId", prefix, "deviceName", dn, "productKey", pk, "timestamp", ts],
            None => vec!["clientId", prefix, "deviceName", dn, "productKey", pk],
        }];
        if timestamp.is_none() {
            contents.push(vec!["deviceName", dn, "productKey", pk]);
        }
        let given = std::str::from_utf8(password).unwrap_or("");
        let ok = contents
            .iter()
            .any(|parts| sign(secret, method, parts).is_ok_and(|expect| given.eq_ignore_ascii_case(&expect)));
        if !ok {
            return Err(Refusal::BadCredentials(format!(
                "{pk}/{dn}: the password is not the {} of the registered device secret",
                method.name()
            )));
        }
        Ok(Login { id, securemode, server_subscribes: ss })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::alink::{credentials, DeviceSecret};

    fn reg() -> Registry {
        Registry::new(&[DeviceEntry {
            product_key: "a1B2c3D4e5F".into(),
            device_name: "dev-001".into(),
            device_secret: "s3cr3t".into(),
        }])
    }

    fn creds(secret: &str, method: SignMethod) -> shared::alink::Credentials {
        let d = DeviceSecret { product_key: "a1B2c3D4e5F", device_name: "dev-001", device_secret: secret };
        credentials(&d, method, None, Some("1700000000000"), 3).unwrap()
    }

    #[test]
    fn the_device_s_own_credentials_pass_with_every_sign_method() {
        for m in [SignMethod::HmacSha256, SignMethod::HmacSha1, SignMethod::HmacMd5] {
            let c = creds("s3cr3t", m);
            let login = reg().check(&c.client_id, &c.username, c.password.as_bytes()).unwrap();
            assert_eq!(login.id, ("a1B2c3D4e5F".to_string(), "dev-001".to_string()));
            assert_eq!((login.securemode, login.server_subscribes), (3, false));
        }
    }

    #[test]
    fn a_wrong_secret_an_unknown_device_and_garbage_are_refused() {
        let c = creds("wrong", SignMethod::HmacSha256);
        let e = reg().check(&c.client_id, &c.username, c.password.as_bytes()).unwrap_err();
        assert_eq!(e.connack_code(), 4, "{e}");
        let e = reg().check(&c.client_id, "dev-002&a1B2c3D4e5F", c.password.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("no device dev-002"), "{e}");
        for (cid, user) in [
            ("x", "dev-001&a1B2c3D4e5F"),
            ("x|signmethod=hmacsha256,timestamp=1|", "dev-001&a1B2c3D4e5F"),
            ("x|securemode=3,signmethod=rot13,timestamp=1|", "dev-001&a1B2c3D4e5F"),
            (&c.client_id, "dev-001"),
        ] {
            let e = reg().check(cid, user, b"00").unwrap_err();
            assert_eq!(e.connack_code(), 2, "{cid} {user}: {e}");
        }
    }

    #[test]
    fn the_aliyun_md_vectors_pass_literally() {
        // docs/PROTOCOL.md §1.6: the CONNECTs a device sends, as text, lowercase and uppercase hex.
        let r = Registry::new(&[DeviceEntry {
            product_key: "a1B2c3D4e5F".into(),
            device_name: "dev-001".into(),
            device_secret: "0123456789abcdef0123456789abcdef".into(),
        }]);
        let user = "dev-001&a1B2c3D4e5F";
        let sha1 = "a1B2c3D4e5F.dev-001|securemode=2,signmethod=hmacsha1,timestamp=1700000000000|";
        let sha256 = "a1B2c3D4e5F.dev-001|securemode=2,signmethod=hmacsha256,timestamp=1700000000000|";
        assert!(r.check(sha1, user, b"04c9ef54da98b6e746064b8490c46af4835f83f5").is_ok());
        assert!(r.check(sha256, user, b"5a9b106a0a5774b97be6428ec6f13834c14f3913e9d9b61566cab193df54c2a5").is_ok());
        assert!(r.check(sha256, user, b"5A9B106A0A5774B97BE6428EC6F13834C14F3913E9D9B61566CAB193DF54C2A5").is_ok());
        let linksdk = "a1B2c3D4e5F.dev-001|securemode=2,signmethod=hmacsha256,timestamp=2524608000000|";
        assert!(r.check(linksdk, user, b"7ED8E8ED1E58797324CF443DB210AAB129888F364A2A704A280E8DF3F754C353").is_ok());
        // One flipped hex digit.
        assert!(r.check(sha1, user, b"04c9ef54da98b6e746064b8490c46af4835f83f6").is_err());
        // The minimal form: no timestamp in the client id, content deviceName..productKey.. only.
        let minimal = "a1B2c3D4e5F.dev-001|securemode=2,signmethod=hmacsha1|";
        assert!(r.check(minimal, user, b"3ffe285a685605f0bd2accae5e1dcb9c7a5fca57").is_ok());
        assert!(r.check(minimal, user, b"04c9ef54da98b6e746064b8490c46af4835f83f5").is_err());
    }
}
