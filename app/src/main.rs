//! The application. On the thumb boards it is linked at ACTIVE + image header size; on the
//! `host` board it is a Linux program that simulates the device (see `host/`). The OTA driver
//! (`driver.rs`, over `mqtt.rs`) is the same on every board: it runs `shared::ota::OtaMachine`
//! and makes no protocol decision of its own.
#![cfg_attr(target_os = "none", no_std, no_main)]

mod keys {
    include!(concat!(env!("OUT_DIR"), "/keys.rs"));
}

/// The Aliyun IoT Root CA (PEM; provenance in certs/README.md): the broker's CA on port 8883,
/// trusted by the host device's rustls and uploaded to the modem for AT+QSSLOPEN.
pub const ALIYUN_IOT_ROOT_CA: &[u8] = include_bytes!("../certs/aliyun-iot-root-ca.pem");

#[cfg(target_os = "none")]
mod device;
mod driver;
mod modem;
mod mqtt;

#[cfg(feature = "host")]
mod host;

#[cfg(all(target_os = "none", feature = "qemu-an386"))]
mod qemu;

#[cfg(all(target_os = "none", feature = "nrf52840-dk"))]
mod nrf;

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
