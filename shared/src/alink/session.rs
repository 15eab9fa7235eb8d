//! Facts of the MQTT session with Aliyun that every board follows (docs/PROTOCOL.md §1): the
//! keep-alive range, `securemode`, which CONNACK codes mean bad credentials, and which root CA
//! an endpoint's TLS certificate chains to.

/// Keep-alive seconds Aliyun accepts (outside the range a CONNECT is refused).
pub const KEEP_ALIVE: core::ops::RangeInclusive<u16> = 30..=1200;

/// `securemode` for a direct connection: 2 over TLS, 3 over plain TCP (refused for devices
/// created since August 2022).
pub fn securemode(tls: bool) -> u8 {
    if tls {
        2
    } else {
        3
    }
}

/// Whether a CONNACK return code says the credentials are wrong.
///
/// Standard MQTT 3.1.1 numbering has 4 = bad user name or password and 5 = not authorized; the
/// C LinkSDK labels 3 "bad username/password" and 4 "not authorized" (docs/PROTOCOL.md §1.5, which
/// numbering the broker uses is not settled). 4 and 5 mean credentials in both; 3 is "server
/// unavailable" in the standard one, so it is retried: stopping on it could wedge a device
/// behind a broker that is only down, retrying it costs a capped back-off.
pub fn credentials_refused(code: u8) -> bool {
    matches!(code, 4 | 5)
}

/// The root CA an Aliyun MQTT endpoint's certificate chains to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RootCa {
    /// The Alibaba Cloud IoT root CA (self-signed, valid to 2053): instance endpoints on 8883.
    AliyunIot,
    /// GlobalSign Root CA R1 (expires 2028-01-28): TLS on 1883 and 443, the legacy
    /// `{pk}.iot-as-mqtt.{region}.aliyuncs.com` endpoints.
    GlobalSignR1,
}

impl RootCa {
    /// The CA a TLS connection to `port` is verified with (DOC-MQTT-TLS: 8883 presents the
    /// Aliyun IoT root's chain, 1883 and 443 GlobalSign R1's).
    pub fn for_port(port: u16) -> RootCa {
        if port == 8883 {
            RootCa::AliyunIot
        } else {
            RootCa::GlobalSignR1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_decides_the_ca() {
        assert_eq!(RootCa::for_port(8883), RootCa::AliyunIot);
        assert_eq!(RootCa::for_port(1883), RootCa::GlobalSignR1);
        assert_eq!(RootCa::for_port(443), RootCa::GlobalSignR1);
    }

    #[test]
    fn only_4_and_5_stop_a_device() {
        let stops: std::vec::Vec<u8> = (1..=5).filter(|&c| credentials_refused(c)).collect();
        assert_eq!(stops, [4, 5]);
        assert_eq!((securemode(true), securemode(false)), (2, 3));
        assert!(KEEP_ALIVE.contains(&30) && KEEP_ALIVE.contains(&1200) && !KEEP_ALIVE.contains(&29));
    }
}
