//! The no_std core shared by the bootloader, the app and the host tools.
//!
//! | module | what it owns |
//! |---|---|
//! | [`image`] | the MCUboot-compatible image format: zero-copy views, emit, streaming `verify` |
//! | [`alink`] | the Aliyun device protocol: topics, CONNECT credentials, OTA JSON, MQTT download frames |
//! | [`boot`] | the boot policy: validate DFU, swap only the pages in use, revert, counter, BOOT_RECORD |
//! | [`delta`] | differential packages: detools sequential patches applied into DFU from ACTIVE |
//! | [`flash`] | NOR semantics over plain memory (the qemu-an386 flash driver) |
//! | [`ota`] | `OtaMachine`, the sans-IO OTA client: every protocol decision |
//! | [`provision`] | the provisioning page: credentials and broker, written once per device |
//! | [`time`] | `Instant` / `Duration` handed to the sans-IO core |
//! | `sim` | (feature `sim`) strict NOR flash model and power-cut injection for host tests |
//!
//! Features: `std` (image signing, std error impls), `sim` (flash simulator, implies `std`),
//! `defmt` (`defmt::Format` on public types).
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod alink;
pub mod boot;
pub mod delta;
pub mod flash;
pub mod image;
pub mod ota;
pub mod provision;
#[cfg(feature = "sim")]
pub mod sim;
pub mod time;
