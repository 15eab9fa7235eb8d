//! `cargo xtask`: the project's host CLI. One module per subcommand; this file only dispatches.

use clap::{Parser, Subcommand};
use xtask::*;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, sign, release and test Aliyun OTA firmware",
    version
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the bootloader and/or the app for a board (release profile).
    Build(build::Args),
    /// Make an Ed25519 signing key (PKCS#8 PEM, readable by openssl and imgtool).
    Keygen(keys::KeygenArgs),
    /// Sign a raw binary (or ELF) into an MCUboot-compatible image.
    Sign(sign::SignArgs),
    /// Check an image and print its header and TLVs.
    Verify(sign::VerifyArgs),
    /// Build, sign and package a release: the .bin for the Aliyun console, manifest, factory image.
    Release(package::Args),
    /// Run the host device (the app on Linux) with a device.toml, optionally from a factory image.
    Device(device::Args),
    /// A local Aliyun-compatible OTA console: broker with credential checks, OTA jobs, file
    /// download over MQTT and HTTP Range, live status table.
    Console(console::Args),
    /// A Quectel-style AT modem simulator: the device's UART on a TCP port, sockets bridged to
    /// 127.0.0.1 (plain, or TLS for AT+QSSLOPEN).
    ModemSim(modem_sim::Args),
    /// Write a release's factory image to a board through its debug probe (probe-rs).
    Flash(flash::Args),
    /// Write a device's credentials and broker into its provisioning page.
    Provision(provision::Args),
    /// The real firmware under QEMU (mps2-an386) against the local console, through the modem
    /// simulator; `--upgrade DIR` pushes releases to it.
    Qemu(qemu::Args),
    /// The whole OTA loop on this machine: console + host device, five scenarios, a verdict table.
    Demo(demo::Args),
    /// Benchmarks: `boot` = flash wear of one update, ours vs embassy-boot's whole-slot swap;
    /// `ota` = MQTT stream downloads from the console, ours vs stop-and-wait vs the raw broker, on
    /// loopback and through 100/300 ms round trips; `qemu` = the real
    /// bootloader's instructions from main to the jump under QEMU -icount.
    Bench(bench::Args),
    /// Code size of bootloader and app per board (text/data/bss, release profile).
    Size(size::Args),
    /// Run every test: host unit tests, interop with imgtool/openssl, firmware builds.
    Test(test::Args),
    /// Fuzz the parsers of bytes from outside (cargo-fuzz targets in fuzz/), S seconds each.
    Fuzz(fuzz::Args),
    /// Install (if needed) and print the path of a tool the tests use.
    #[command(hide = true)]
    Tools(tools::Args),
}

fn try_main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Build(a) => build::run(a),
        Cmd::Keygen(a) => keys::keygen(a),
        Cmd::Sign(a) => sign::sign(a),
        Cmd::Verify(a) => sign::verify(a),
        Cmd::Release(a) => package::run(a),
        Cmd::Device(a) => device::run(a),
        Cmd::Console(a) => console::run(a),
        Cmd::Demo(a) => demo::run(a),
        Cmd::Provision(a) => provision::run(a),
        Cmd::Flash(a) => flash::run(a),
        Cmd::Qemu(a) => qemu::run(a),
        Cmd::ModemSim(a) => modem_sim::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Size(a) => size::run(a),
        Cmd::Test(a) => test::run(a),
        Cmd::Fuzz(a) => fuzz::run(a),
        Cmd::Tools(a) => tools::run(a),
    }
}

fn main() {
    if let Err(e) = try_main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
