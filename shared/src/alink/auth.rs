//! MQTT CONNECT credentials for a device (docs/PROTOCOL.md §1.3, vectors in §1.6).
//!
//! ```text
//! clientId = {prefix}|securemode={m},signmethod={hmacsha256|hmacsha1|hmacmd5},timestamp={ts}|
//! username = {deviceName}&{productKey}
//! password = hex(HMAC(deviceSecret, "clientId{prefix}deviceName{dn}productKey{pk}timestamp{ts}"))
//! ```

use super::AlinkError;
use core::fmt::Write;
use heapless::String;
use hmac::{Hmac, Mac};

/// The HMAC the password is made with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SignMethod {
    /// `hmacsha256` (the default of current SDKs)
    HmacSha256,
    /// `hmacsha1`
    HmacSha1,
    /// `hmacmd5`
    HmacMd5,
}

impl SignMethod {
    /// The name in the clientId.
    pub fn name(self) -> &'static str {
        match self {
            SignMethod::HmacSha256 => "hmacsha256",
            SignMethod::HmacSha1 => "hmacsha1",
            SignMethod::HmacMd5 => "hmacmd5",
        }
    }

    /// Parses `hmacsha256` / `hmacsha1` / `hmacmd5` (any case).
    pub fn from_name(s: &str) -> Option<SignMethod> {
        [SignMethod::HmacSha256, SignMethod::HmacSha1, SignMethod::HmacMd5]
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s))
    }
}

/// The fixed timestamp the C Link SDK sends (2050-01-01): no clock needed before connecting.
pub const LINKSDK_TIMESTAMP: &str = "2524608000000";

/// What a device needs to log in.
#[derive(Clone, Copy, Debug)]
pub struct DeviceSecret<'a> {
    /// productKey
    pub product_key: &'a str,
    /// deviceName
    pub device_name: &'a str,
    /// deviceSecret (never logged)
    pub device_secret: &'a str,
}

/// The three CONNECT fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// MQTT client identifier.
    pub client_id: String<160>,
    /// MQTT user name.
    pub username: String<96>,
    /// MQTT password (lowercase hex).
    pub password: String<64>,
}

type HmacSha256 = Hmac<sha2::Sha256>;
type HmacSha1 = Hmac<sha1::Sha1>;
type HmacMd5 = Hmac<md5::Md5>;

fn hex_into<const N: usize>(out: &mut String<N>, bytes: &[u8]) -> Result<(), AlinkError> {
    for b in bytes {
        write!(out, "{b:02x}").map_err(|_| AlinkError::TooLong)?;
    }
    Ok(())
}

/// Builds the credentials. `client_id` defaults to `{pk}.{dn}`, `timestamp` to
/// [`LINKSDK_TIMESTAMP`]; `securemode` is 2 for TLS (direct TCP is 3, refused by new instances).
pub fn credentials(
    dev: &DeviceSecret<'_>,
    method: SignMethod,
    client_id: Option<&str>,
    timestamp: Option<&str>,
    securemode: u8,
) -> Result<Credentials, AlinkError> {
    let (pk, dn) = (dev.product_key, dev.device_name);
    let ts = timestamp.unwrap_or(LINKSDK_TIMESTAMP);
    let mut prefix: String<96> = String::new();
    match client_id {
        Some(c) => prefix.push_str(c).map_err(|_| AlinkError::TooLong)?,
        None => write!(prefix, "{pk}.{dn}").map_err(|_| AlinkError::TooLong)?,
    }
    let mut c = Credentials { client_id: String::new(), username: String::new(), password: String::new() };
    write!(c.client_id, "{prefix}|securemode={securemode},signmethod={},timestamp={ts}|", method.name())
        .map_err(|_| AlinkError::TooLong)?;
    write!(c.username, "{dn}&{pk}").map_err(|_| AlinkError::TooLong)?;
    let parts = ["clientId", &prefix, "deviceName", dn, "productKey", pk, "timestamp", ts];
    c.password = sign(dev.device_secret, method, &parts)?;
    Ok(c)
}

/// Lowercase hex HMAC of the concatenated `parts` keyed with `secret` (the password's content
/// is `clientId{id}deviceName{dn}productKey{pk}timestamp{ts}`, or a subset of those pairs).
pub fn sign(secret: &str, method: SignMethod, parts: &[&str]) -> Result<String<64>, AlinkError> {
    let key = secret.as_bytes();
    let mut out = String::new();
    macro_rules! mac {
        ($t:ty) => {{
            let mut m = <$t>::new_from_slice(key).expect("HMAC takes any key length");
            for p in parts {
                m.update(p.as_bytes());
            }
            hex_into(&mut out, &m.finalize().into_bytes())?
        }};
    }
    match method {
        SignMethod::HmacSha256 => mac!(HmacSha256),
        SignMethod::HmacSha1 => mac!(HmacSha1),
        SignMethod::HmacMd5 => mac!(HmacMd5),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: DeviceSecret<'static> = DeviceSecret {
        product_key: "a1B2c3D4e5F",
        device_name: "dev-001",
        device_secret: "0123456789abcdef0123456789abcdef",
    };

    #[test]
    fn passwords_match_the_aliyun_md_vectors() {
        for (m, pw) in [
            (SignMethod::HmacSha1, "04c9ef54da98b6e746064b8490c46af4835f83f5"),
            (SignMethod::HmacSha256, "5a9b106a0a5774b97be6428ec6f13834c14f3913e9d9b61566cab193df54c2a5"),
            (SignMethod::HmacMd5, "d73094f533575afe0f4bce89a48a036a"),
        ] {
            let c = credentials(&DEV, m, None, Some("1700000000000"), 2).unwrap();
            assert_eq!(c.password, pw, "{m:?}");
            assert_eq!(c.username, "dev-001&a1B2c3D4e5F");
        }
        let c = credentials(&DEV, SignMethod::HmacSha1, None, Some("1700000000000"), 2).unwrap();
        assert_eq!(c.client_id, "a1B2c3D4e5F.dev-001|securemode=2,signmethod=hmacsha1,timestamp=1700000000000|");
        let c = credentials(&DEV, SignMethod::HmacSha256, None, Some("1700000000000"), 2).unwrap();
        assert_eq!(c.client_id, "a1B2c3D4e5F.dev-001|securemode=2,signmethod=hmacsha256,timestamp=1700000000000|");
    }

    #[test]
    fn linksdk_fixed_timestamp_vector() {
        let c = credentials(&DEV, SignMethod::HmacSha256, None, None, 2).unwrap();
        assert_eq!(c.password.to_ascii_uppercase(), "7ED8E8ED1E58797324CF443DB210AAB129888F364A2A704A280E8DF3F754C353");
    }

    #[test]
    fn sign_method_names_parse_in_any_case() {
        assert_eq!(SignMethod::from_name("HmacSHA256"), Some(SignMethod::HmacSha256));
        assert_eq!(SignMethod::from_name("hmacmd5"), Some(SignMethod::HmacMd5));
        assert_eq!(SignMethod::from_name("sha256"), None);
    }

    #[test]
    fn an_overlong_client_id_is_an_error() {
        let long = "x".repeat(200);
        assert_eq!(credentials(&DEV, SignMethod::HmacSha1, Some(&long), None, 2), Err(AlinkError::TooLong));
    }
}
