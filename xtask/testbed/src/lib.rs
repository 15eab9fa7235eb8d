//! The test rigs: what runs devices against the local console (`ota-console`) on this machine,
//! for the demo, the benches, `cargo xtask qemu` and the integration tests.
//!
//! - [`device`]: the device harness, one trait for the host device and the QEMU device (power on,
//!   power cut, log, flash file, running version), and the one writer of `device.toml`;
//! - [`qemu`]: the real firmware under QEMU with the console and the modem simulator ([`qemu::Rig`]);
//! - [`modem_sim`]: a Quectel-style AT modem simulator; [`proxy`]: a delay / offline TCP proxy;
//! - [`provision`]: the PROVISION page the QEMU rig writes into its flash file;
//! - [`scenario`]: the demo's scenarios as data (releases, jobs), shared by the demo and the
//!   power-cut campaign; [`demo`]: the demo's runs; [`power_cut`]: the power-cut campaign.
//!
//! Modules use each other one way: `demo` and `power_cut` use `scenario` and `qemu`, never each
//! other; `qemu` uses `device`, `modem_sim` and `provision`.
//!
//! What it may use: `ota-console` (the console it runs devices against), `machine` (processes,
//! ports, tools), `shared` and `memory-layouts`. Not the CLI (`xtask`), which uses it; the
//! releases it needs are built by running the xtask binary (`machine::proc::xtask`), so the
//! functions that build them run only under `cargo xtask`.

pub mod demo;
pub mod device;
pub mod modem_sim;
pub mod power_cut;
pub mod provision;
pub mod proxy;
pub mod qemu;
pub mod scenario;
