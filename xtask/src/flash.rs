//! `cargo xtask flash`: writes a release's factory image to a board through a debug probe with
//! probe-rs (the nRF52840-DK's on-board J-Link/CMSIS-DAP, USB port J2). `provision` uses the same
//! path for the PROVISION page.

use crate::BoardArg;
use anyhow::{bail, ensure, Context, Result};
use memory_layouts::Board;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(clap::Args)]
pub struct Args {
    /// Board to flash (nrf52840-dk, b-l475e-iot01a; qemu-an386 and host use flash files).
    #[arg(long, value_enum)]
    board: BoardArg,
    /// The release folder whose factory.bin to write (`cargo xtask release --board B --version V`).
    #[arg(long)]
    release: PathBuf,
}

/// The probe-rs chip name of a board.
fn chip(board: Board) -> Result<&'static str> {
    match board {
        Board::Nrf52840Dk => Ok("nRF52840_xxAA"),
        // The IOT01A's on-board ST-LINK/V2-1 (USB port CN7).
        Board::BL475eIot01a => Ok("STM32L475VGTx"),
        b => bail!("{} has no debug probe: its flash is a file (see `cargo xtask qemu` / `device`)", b.name()),
    }
}

/// probe-rs, or a clear error saying how to get it (`PROBE_RS` overrides the path).
fn probe_rs() -> Result<PathBuf> {
    let exe = std::env::var_os("PROBE_RS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("probe-rs"));
    match Command::new(&exe).arg("--version").output() {
        Ok(o) if o.status.success() => Ok(exe),
        _ => bail!(
            "probe-rs is not installed ({} did not run): install it with `cargo install probe-rs-tools --locked` \
             (or see https://probe.rs/docs/getting-started/installation/), then connect the DK's debug USB port (J2)",
            exe.display()
        ),
    }
}

/// Writes `file` at `address` of `board`'s flash, then resets the chip.
pub fn download(board: Board, file: &Path, address: u32) -> Result<()> {
    let chip = chip(board)?;
    let exe = probe_rs()?;
    let out = Command::new(&exe)
        .args(["download", "--chip", chip, "--binary-format", "bin", "--base-address"])
        .arg(format!("{address:#x}"))
        .arg(file)
        .output()
        .context("running probe-rs download")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.to_lowercase().contains("no connected probes") || err.to_lowercase().contains("no probe") {
            bail!("probe-rs found no debug probe: connect the DK's debug USB port (J2), power it on, and check `probe-rs list`\n{err}");
        }
        bail!("probe-rs download failed:\n{err}");
    }
    let ok = Command::new(&exe).args(["reset", "--chip", chip]).status().context("running probe-rs reset")?.success();
    ensure!(ok, "probe-rs reset failed");
    Ok(())
}

pub fn run(a: Args) -> Result<()> {
    let board = Board::from(a.board);
    chip(board)?;
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(a.release.join("manifest.json"))
            .with_context(|| format!("{} is not a release folder (no manifest.json)", a.release.display()))?,
    )?;
    let made_for = manifest["board"].as_str().unwrap_or("?");
    ensure!(made_for == board.name(), "{} is a release for {made_for}, not {}", a.release.display(), board.name());
    let factory = a.release.join("factory.bin");
    download(board, &factory, board.layout().flash.origin)?;
    println!(
        "flashed {} (bootloader + {} {}) and reset; provision the device next: cargo xtask provision --board {} ...",
        factory.display(),
        manifest["module"].as_str().unwrap_or("?"),
        manifest["version"].as_str().unwrap_or("?"),
        board.name()
    );
    Ok(())
}
