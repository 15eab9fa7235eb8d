//! Firmware builds: `cargo build --release --target thumbv7em-none-eabihf -p <crate> --features <board>`
//! in a target dir of its own, with the trusted public keys passed to the build scripts.

use crate::{keys, tools, BoardArg};
use anyhow::{bail, ensure, Context, Result};
use memory_layouts::{build::PUBKEY_ENV, Board};
use shared::image::PublicKey;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(clap::Args)]
pub struct Args {
    /// Board to build for.
    #[arg(long, value_enum)]
    board: BoardArg,
    /// Keys whose images the firmware accepts (private or public PEM), in slot order: repeat for
    /// several (`--key k0.pem --key k1.pem`; a later key can revoke earlier ones). Default: the
    /// development key.
    #[arg(long)]
    key: Vec<PathBuf>,
}

/// The firmware crates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crate {
    Bootloader,
    App,
}

impl Crate {
    fn name(self) -> &'static str {
        match self {
            Crate::Bootloader => "bootloader",
            Crate::App => "app",
        }
    }
}

pub fn run(a: Args) -> Result<()> {
    let board = Board::from(a.board);
    let keys = keys::trusted_or_dev(&a.key)?;
    if board == Board::Host {
        println!("{}", host_device(&keys)?.display());
        return Ok(());
    }
    for c in [Crate::Bootloader, Crate::App] {
        let elf = firmware(board, c, &keys)?;
        println!("{}", elf.display());
    }
    Ok(())
}

/// Where firmware builds go (kept apart from host builds so neither invalidates the other).
pub fn target_dir() -> PathBuf {
    crate::root().join("target/firmware")
}

/// Builds the host device (the app for the `host` board, a Linux program) trusting `keys`.
pub fn host_device(keys: &[PublicKey]) -> Result<PathBuf> {
    host_device_profile(keys, "dev")
}

/// The same, in a cargo profile of choice (`dev`, or `host-bench` for measurements).
pub fn host_device_profile(keys: &[PublicKey], profile: &str) -> Result<PathBuf> {
    let hex_keys: Vec<String> = keys.iter().map(|k| hex::encode(k.0)).collect();
    let status = Command::new(env!("CARGO"))
        .current_dir(crate::root())
        .args(["build", "-p", "app", "--features", "app/host", "--profile", profile])
        .env("CARGO_TARGET_DIR", target_dir())
        .env(PUBKEY_ENV, hex_keys.join(","))
        .status()
        .context("running cargo build")?;
    ensure!(status.success(), "building the host device failed");
    Ok(target_dir().join(if profile == "dev" { "debug" } else { profile }).join("app"))
}

/// Builds `c` for `board` trusting `keys`; returns the ELF's path.
pub fn firmware(board: Board, c: Crate, keys: &[PublicKey]) -> Result<PathBuf> {
    firmware_with(board, c, keys, &[], None)
}

/// The same with extra cargo features of the crate (e.g. `self-test-fails`) and, for the app, a
/// CA (PEM file) its download hosts are verified with besides the bundled roots, built in a
/// target dir of their own so that switching back and forth rebuilds nothing.
pub fn firmware_with(
    board: Board,
    c: Crate,
    keys: &[PublicKey],
    features: &[&str],
    download_ca: Option<&Path>,
) -> Result<PathBuf> {
    let Some(target) = board.target() else {
        bail!("the {} board runs no firmware binary: its device is `cargo xtask device`", board.name())
    };
    tools::ensure_rust_target(target)?;
    let hex_keys: Vec<String> = keys.iter().map(|k| hex::encode(k.0)).collect();
    let mut suffix: Vec<&str> = features.to_vec();
    if download_ca.is_some() {
        suffix.push("download-ca");
    }
    let dir = match suffix[..] {
        [] => target_dir(),
        _ => crate::root().join(format!("target/firmware-{}", suffix.join("-"))),
    };
    let ca = match download_ca {
        Some(p) => std::fs::canonicalize(p).with_context(|| format!("the download CA {}", p.display()))?,
        None => PathBuf::new(),
    };
    let status = Command::new(env!("CARGO"))
        .current_dir(crate::root())
        .args(["build", "--release", "--target", target, "-p", c.name(), "--features"])
        .arg(
            std::iter::once(board.name())
                .chain(features.iter().copied())
                .map(|f| format!("{}/{f}", c.name()))
                .collect::<Vec<_>>()
                .join(","),
        )
        .env("CARGO_TARGET_DIR", &dir)
        .env(PUBKEY_ENV, hex_keys.join(","))
        .env("APP_DOWNLOAD_CA", &ca)
        .status()
        .context("running cargo build")?;
    ensure!(status.success(), "building {} for {} failed", c.name(), board.name());
    Ok(dir.join(target).join("release").join(c.name()))
}

/// The loadable segments of a 32-bit ELF as (load address, bytes). `.data` runs from RAM but is
/// stored in flash, so the load (physical) address is the one that counts.
fn load_segments(elf: &[u8]) -> Result<Vec<(u32, &[u8])>> {
    use object::elf::PT_LOAD;
    use object::read::elf::{ElfFile32, ProgramHeader};
    let file = ElfFile32::<object::Endianness>::parse(elf).context("parsing ELF (32-bit expected)")?;
    let endian = file.endian();
    let mut segs = Vec::new();
    for ph in file.elf_program_headers() {
        if ph.p_type(endian) != PT_LOAD || ph.p_filesz(endian) == 0 {
            continue;
        }
        let data = ph.data(endian, elf).map_err(|_| anyhow::anyhow!("ELF segment out of the file"))?;
        segs.push((ph.p_paddr(endian), data));
    }
    ensure!(!segs.is_empty(), "the ELF has no loadable data");
    Ok(segs)
}

/// Flattens an ELF's loadable segments into a raw binary that starts at `origin` (gaps 0xFF).
pub fn elf_to_bin(elf: &[u8], origin: u32) -> Result<Vec<u8>> {
    let mut out: Vec<u8> = Vec::new();
    for (addr, data) in load_segments(elf)? {
        ensure!(addr >= origin, "segment at {addr:#x} lies below the image origin {origin:#x}");
        let off = (addr - origin) as usize;
        if out.len() < off + data.len() {
            out.resize(off + data.len(), 0xFF);
        }
        out[off..off + data.len()].copy_from_slice(data);
    }
    Ok(out)
}

/// Reads an input that may be a raw binary or an ELF (then flattened from its lowest address).
pub fn read_binary(path: &std::path::Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.starts_with(b"\x7fELF") {
        let lowest = load_segments(&bytes)?.iter().map(|s| s.0).min().unwrap_or(0);
        return elf_to_bin(&bytes, lowest);
    }
    Ok(bytes)
}
