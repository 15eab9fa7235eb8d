//! The application. On the thumb boards it is linked at ACTIVE + image header size; on the
//! `host` board it is a Linux program that simulates the device (see `host/`). The device
//! loop (`driver.rs`, over `mqtt.rs`) is the same on every board: it runs
//! `shared::ota::OtaMachine` and makes no protocol decision of its own; a board hands in flash, a
//! link, a clock and its buffers, and resets when the loop returns.
#![cfg_attr(target_os = "none", no_std, no_main)]

mod keys {
    include!(concat!(env!("OUT_DIR"), "/keys.rs"));
}

/// The Aliyun IoT Root CA (PEM; provenance in certs/README.md): the broker's CA on port 8883,
/// trusted by the host device's rustls and uploaded to the modem for AT+QSSLOPEN.
pub const ALIYUN_IOT_ROOT_CA: &[u8] = include_bytes!("../certs/aliyun-iot-root-ca.pem");

/// GlobalSign Root CA R1 (PEM; provenance in certs/README.md): the broker's CA on 1883 and 443
/// over TLS, and on the legacy `{pk}.iot-as-mqtt.{region}.aliyuncs.com` endpoints.
pub const GLOBALSIGN_ROOT_CA_R1: &[u8] = include_bytes!("../certs/globalsign-root-ca-r1.pem");

/// The CAs (PEM) the modem boards verify download hosts with (SSL context 2): the GlobalSign
/// roots Aliyun's OSS package hosts chain to (R1, R3, R46; provenance in certs/README.md), plus
/// the file named by `APP_DOWNLOAD_CA` at build time (the local console's CA in tests).
pub const DOWNLOAD_CA: &[u8] = concat!(
    include_str!("../certs/globalsign-root-ca-r1.pem"),
    include_str!("../certs/globalsign-root-ca-r3.pem"),
    include_str!("../certs/globalsign-root-r46.pem"),
    include_str!(concat!(env!("OUT_DIR"), "/download-ca.pem")),
)
.as_bytes();

/// The root CA (PEM) a TLS endpoint on `port` is verified with (`shared::alink::RootCa`).
pub fn root_ca(port: u16) -> &'static [u8] {
    match shared::alink::RootCa::for_port(port) {
        shared::alink::RootCa::AliyunIot => ALIYUN_IOT_ROOT_CA,
        shared::alink::RootCa::GlobalSignR1 => GLOBALSIGN_ROOT_CA_R1,
    }
}

#[cfg(all(target_os = "none", feature = "attack"))]
mod attack;
#[cfg(any(target_os = "none", feature = "host"))]
mod cellular;
#[cfg(target_os = "none")]
mod device;
mod driver;
#[cfg(any(target_os = "none", feature = "host"))]
mod http;
mod modem;
mod mqtt;

#[cfg(feature = "host")]
mod host;

#[cfg(all(target_os = "none", feature = "qemu-an386"))]
mod qemu;

#[cfg(all(target_os = "none", feature = "nrf52840-dk"))]
mod nrf;

#[cfg(all(target_os = "none", feature = "b-l475e-iot01a"))]
mod stm32;

#[cfg(all(target_os = "none", any(feature = "nrf52840-dk", feature = "b-l475e-iot01a")))]
mod embassy;

#[cfg(all(not(target_os = "none"), feature = "host"))]
fn main() {
    host::main()
}

#[cfg(all(not(target_os = "none"), not(feature = "host")))]
fn main() {
    eprintln!(
        "build the app with `cargo xtask build --board <board>`, or run the host device with `cargo xtask device`"
    );
    std::process::exit(2);
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_endpoint_s_port_picks_the_root_ca() {
        assert_eq!(super::root_ca(8883), super::ALIYUN_IOT_ROOT_CA);
        assert_eq!(super::root_ca(1883), super::GLOBALSIGN_ROOT_CA_R1);
        assert_eq!(super::root_ca(443), super::GLOBALSIGN_ROOT_CA_R1);
        for pem in [super::ALIYUN_IOT_ROOT_CA, super::GLOBALSIGN_ROOT_CA_R1] {
            assert!(pem.starts_with(b"-----BEGIN CERTIFICATE-----"));
        }
    }
}
