//! `cargo xtask`: the project's host CLI. One module per subcommand; this file only dispatches.

mod bench;
mod bench_ota;
mod build;
mod device;
mod keys;
mod mini_console;
mod package;
mod sign;
mod size;
mod test;
mod tools;

use clap::{Parser, Subcommand, ValueEnum};
use memory_layouts::Board;
use std::path::PathBuf;

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
    /// Benchmarks: `boot` = flash wear of one update, ours vs embassy-boot's whole-slot swap;
    /// `ota` = 1 MiB over MQTT stream, ours vs stop-and-wait vs the raw broker.
    Bench(bench::Args),
    /// Code size of bootloader and app per board (text/data/bss, release profile).
    Size(size::Args),
    /// Run every test: host unit tests, interop with imgtool/openssl, firmware builds.
    Test(test::Args),
    /// Install (if needed) and print the path of a tool the tests use.
    #[command(hide = true)]
    Tools(tools::Args),
}

/// A board on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BoardArg {
    /// The device simulated on Linux.
    Host,
    /// Cortex-M4 under qemu-system-arm -M mps2-an386.
    #[value(name = "qemu-an386")]
    QemuAn386,
    /// nRF52840-DK with a Quectel modem.
    #[value(name = "nrf52840-dk")]
    Nrf52840Dk,
}

impl From<BoardArg> for Board {
    fn from(b: BoardArg) -> Board {
        match b {
            BoardArg::Host => Board::Host,
            BoardArg::QemuAn386 => Board::QemuAn386,
            BoardArg::Nrf52840Dk => Board::Nrf52840Dk,
        }
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Parses `123` or `0x7b`.
pub fn parse_u32(s: &str) -> Result<u32, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("{s:?} is not a number (decimal, or hex with 0x)"))
}

fn try_main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Build(a) => build::run(a),
        Cmd::Keygen(a) => keys::keygen(a),
        Cmd::Sign(a) => sign::sign(a),
        Cmd::Verify(a) => sign::verify(a),
        Cmd::Release(a) => package::run(a),
        Cmd::Device(a) => device::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Size(a) => size::run(a),
        Cmd::Test(a) => test::run(a),
        Cmd::Tools(a) => tools::run(a),
    }
}

fn main() {
    if let Err(e) = try_main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
