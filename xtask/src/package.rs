//! `release`: build the app for a board, sign it, and write a release folder.
//!
//! ```text
//! <out>/
//!   firmware-<version>.bin   the signed image: upload this to the Aliyun console as the package
//!   delta-<from>-<version>.bin  with --delta-from: the differential package from <from> (upload
//!                            it as a differential package with source version <from>)
//!   manifest.json            board, module, version, size, md5, sha256, sec_cnt, key hash, delta
//!   factory.bin              bootloader + signed app + erased state, flashed once (host: the
//!                            flash file for `cargo xtask device --factory`)
//! ```

use crate::build::{elf_to_bin, firmware_with, Crate};
use crate::sign::{check_aliyun_string, make_image};
use crate::{keys, BoardArg};
use anyhow::{ensure, Context, Result};
use md5::Md5;
use memory_layouts::{Board, Layout};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shared::image::{HostBehaviour, ImageVersion, PublicKey, SignParams};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// Board to release for.
    #[arg(long, value_enum)]
    board: BoardArg,
    /// The version string devices report to Aliyun (1-64 of A-Z a-z 0-9 . _ -), e.g. 1.4 or V1.4.
    #[arg(long)]
    version: String,
    /// Aliyun OTA module.
    #[arg(long, default_value = "default")]
    module: String,
    /// Security counter: once a device confirms this image it refuses images with a lower one.
    #[arg(long, default_value_t = 0)]
    sec_cnt: u32,
    /// Signing key (default: the public development key, with a warning).
    #[arg(long)]
    key: Option<PathBuf>,
    /// MCUboot header version when --version does not read as one (MAJOR[.MINOR[.REVISION]][+BUILD]).
    #[arg(long)]
    image_version: Option<String>,
    /// Output folder (default: target/releases/BOARD/MODULE-VERSION).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The firmware fails its self-test, so devices roll it back (to show and test a rollback):
    /// the host board's simulated firmware says so, the thumb boards' app is built with the
    /// `self-test-fails` feature.
    #[arg(long)]
    failing_self_test: bool,
    /// Thumb boards: the app is built with the `attack` feature: once running it tries to erase and
    /// write BOOTLOADER and BOOT_RECORD, which the bootloader write-protects (each attempt faults
    /// and resets the device). To show and test the protection; never ship it.
    #[arg(long)]
    attack: bool,
    /// qemu-an386: the app, built with `delta-bench`, applies the patch `cargo xtask bench delta`
    /// placed in DFU, prints how long it took and exits. For the bench only.
    #[arg(long, hide = true)]
    delta_bench: bool,
    /// Thumb boards: the factory image's bootloader is built with `unprotected` (no write
    /// protection before the jump), the control for `--attack`. Never ship it.
    #[arg(long)]
    unprotected_bootloader: bool,
    /// Host board: the simulated firmware logs in with a wrong password (a broken build whose
    /// credentials the broker refuses), so devices revert it.
    #[arg(long)]
    failing_login: bool,
    /// Thumb boards: the app also trusts this CA (PEM) for download hosts, besides the bundled
    /// roots of Aliyun's package hosts (for a console of your own; the local one's is
    /// `target/dev-tls/console-ca.pem`).
    #[arg(long)]
    download_ca: Option<PathBuf>,
    /// Pad the firmware body to at least this many bytes (host: the simulated firmware's size).
    #[arg(long, value_parser = crate::parse_u32, default_value = "4096")]
    body_size: u32,
    /// Also write a differential package from this base: a release folder (its manifest names
    /// the image) or a signed image, which must verify with the trusted keys. Upload
    /// `delta-<from>-<version>.bin` as a differential package whose source version is the base's.
    #[arg(long)]
    delta_from: Option<PathBuf>,
    #[command(flatten)]
    rotation: crate::sign::Rotation,
}

/// What `manifest.json` says of the differential package.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct DeltaManifest {
    /// The patch file.
    pub file: String,
    /// The base's Aliyun version (the package's source version).
    pub from: String,
    /// The base image's SHA-256 (its SHA256 TLV, over header, body and protected TLVs) and bytes.
    pub from_sha256: String,
    pub from_size: u32,
    pub size: u64,
    pub md5: String,
    pub sha256: String,
    /// `remap N shifts` (an LZMA patch over the remapped base), `thumb` (ARM-Thumb branch
    /// filter) or `none`: whichever made the smallest patch.
    pub filter: String,
    /// `lzma dict N`, or the detools compression and its parameters (window/lookahead bits),
    /// e.g. `heatshrink 11/8`.
    pub compression: String,
}

/// What our header says of a base image that verifies with `keys`: its length, SHA256 TLV and
/// Aliyun version; and its Aliyun module.
pub fn base_id(image: &[u8], keys: &[PublicKey]) -> Result<(shared::delta::Base, String)> {
    let opts = shared::image::VerifyOptions { keys, revoked: 0, min_sec_cnt: 0, slot_size: None };
    let info = shared::image::verify(&mut shared::image::SliceFlash(image), &opts, &mut [0u8; 1024])
        .map_err(|e| anyhow::anyhow!("the base image does not verify with the trusted keys: {e}"))?;
    let version = info.aliyun_version.map(|v| v.to_string()).context("the base image has no Aliyun version")?;
    let module = info.module.map(|m| m.to_string()).unwrap_or_else(|| "default".into());
    let version =
        version.as_str().try_into().map_err(|_| anyhow::anyhow!("base version {version:?} is over 64 bytes"))?;
    Ok((shared::delta::Base { size: info.total_len, sha256: info.digest, version }, module))
}

/// The smallest patch that rebuilds `target` from `base` (signed images for `board`): an LZMA
/// patch over the remapped base (images linked at the start of ACTIVE), or a detools patch over
/// the heatshrink windows and lookaheads a device decodes, on the Thumb boards with and without
/// the ARM-Thumb filter; applied back with the device's patcher before it is returned.
pub fn make_delta(
    base: &[u8],
    base_id: &shared::delta::Base,
    target: &[u8],
    board: Board,
) -> Result<(Vec<u8>, shared::delta::CreateOptions)> {
    use shared::delta::Filter;
    let remap = Filter::Remap { load: board.layout().active.origin, shifts: 0 };
    let filters: &[Filter] =
        if board.target().is_some() { &[Filter::None, Filter::Thumb, remap] } else { &[Filter::None, remap] };
    let (patch, opts) = shared::delta::create_smallest(base, target, base_id, filters);
    let rebuilt = apply_delta(&patch, base, target.len() as u32)?;
    ensure!(rebuilt == target, "the patch does not rebuild the image (a bug in shared::delta)");
    Ok((patch, opts))
}

/// Applies `patch` to `base` with the device's patcher (`slot`: the most it may rebuild).
pub fn apply_delta(patch: &[u8], base: &[u8], slot: u32) -> Result<Vec<u8>> {
    let mut flash = shared::image::SliceFlash(base);
    let mut p = Box::new(shared::delta::Patcher::new());
    p.reset(slot, base.len() as u32);
    let mut out = Vec::new();
    for c in patch.chunks(1024) {
        p.feed(c, &mut flash, &mut out).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    p.finish(&mut flash, &mut out).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(out)
}

/// The base image of `--delta-from` for `board`: a release folder's image, or an image file.
fn read_base(p: &Path, board: Board) -> Result<Vec<u8>> {
    let image = if p.is_dir() {
        let m = std::fs::read(p.join("manifest.json"))
            .with_context(|| format!("--delta-from {}: not a release folder (no manifest.json)", p.display()))?;
        let m: Manifest = serde_json::from_slice(&m).with_context(|| format!("{}/manifest.json", p.display()))?;
        ensure!(
            m.board == board.name(),
            "--delta-from {}: a release for {}, not {}: a patch applies to the image the device runs",
            p.display(),
            m.board,
            board.name()
        );
        read(&p.join(m.file))?
    } else {
        read(p).with_context(|| format!("--delta-from {}", p.display()))?
    };
    let hdr = shared::image::Header::new_checked(&image[..]).map(|h| h.hdr_size()).ok();
    ensure!(
        hdr == Some(board.layout().image_header_size as u16),
        "--delta-from {}: not an image for {} (its header size is {hdr:?}, the board's {:#x})",
        p.display(),
        board.name(),
        board.layout().image_header_size
    );
    Ok(image)
}

/// `manifest.json`.
#[derive(Serialize, Deserialize, Debug)]
pub struct Manifest {
    pub board: String,
    pub module: String,
    pub version: String,
    pub image_version: String,
    pub file: String,
    pub size: u64,
    pub md5: String,
    pub sha256: String,
    pub sec_cnt: u32,
    pub key_hash: String,
    /// Slot of the signing key in the trusted list.
    #[serde(default)]
    pub key_slot: u8,
    /// Key slots this release revokes once confirmed.
    #[serde(default)]
    pub revokes_keys: Vec<u8>,
    pub factory: Option<String>,
    /// The differential package, with `--delta-from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<DeltaManifest>,
}

pub fn run(a: Args) -> Result<()> {
    let board = Board::from(a.board);
    check_aliyun_string("version", &a.version)?;
    check_aliyun_string("module", &a.module)?;
    let iv = a.image_version.as_deref().unwrap_or(&a.version);
    let image_version = ImageVersion::parse(iv).with_context(|| {
        format!("version {iv:?} does not read as MAJOR[.MINOR[.REVISION]][+BUILD]; pass --image-version, e.g. 1.4.0")
    })?;
    let (key, key_path) = keys::signing_key_or_dev(a.key.as_deref())?;
    let public = PublicKey(key.verifying_key().to_bytes());
    let (trusted, key_slot, revoke_keys) = a.rotation.resolve(&public)?;
    let layout = board.layout();
    let out = a.out.unwrap_or_else(|| {
        crate::root().join("target/releases").join(board.name()).join(format!("{}-{}", a.module, a.version))
    });

    let body = match board {
        // A host image cannot execute: its body describes the simulated firmware.
        Board::Host => {
            ensure!(
                !a.attack && !a.unprotected_bootloader,
                "--attack and --unprotected-bootloader are for the thumb boards (the host board has no bootloader binary)"
            );
            ensure!(
                a.download_ca.is_none(),
                "--download-ca is for the thumb boards: the host device reads `download_ca` from its device.toml"
            );
            let b = HostBehaviour { self_test: !a.failing_self_test, login: !a.failing_login };
            shared::image::host_body(b, a.body_size as usize)
        }
        _ => {
            ensure!(!a.failing_login, "--failing-login simulates a broken build on the host board only");
            ensure!(!a.delta_bench || board == Board::QemuAn386, "--delta-bench is for qemu-an386");
            let features: Vec<&str> =
                [(a.failing_self_test, "self-test-fails"), (a.attack, "attack"), (a.delta_bench, "delta-bench")]
                    .into_iter()
                    .filter_map(|(on, f)| on.then_some(f))
                    .collect();
            let mut body = elf_to_bin(
                &read(&firmware_with(board, Crate::App, &trusted, &features, a.download_ca.as_deref())?)?,
                layout.app_origin(),
            )?;
            if body.len() < a.body_size as usize {
                body.resize(a.body_size as usize, 0xFF);
            }
            body
        }
    };
    ensure!(
        body.len() as u32 <= layout.app_max_len(),
        "the app is {} bytes; {} has room for {} in ACTIVE",
        body.len(),
        board.name(),
        layout.app_max_len()
    );
    let params = SignParams {
        header_size: layout.image_header_size as u16,
        version: image_version,
        sec_cnt: a.sec_cnt,
        module: Some(&a.module),
        aliyun_version: Some(&a.version),
        revoke_keys,
    };
    let image = make_image(&body, &params, &key, &trusted, Some(layout.active.length))?;

    // The differential package first: a base it cannot patch leaves no folder half written.
    let delta = match &a.delta_from {
        None => None,
        Some(from) => {
            let base = read_base(from, board)?;
            let (id, module) = base_id(&base, &trusted).with_context(|| format!("--delta-from {}", from.display()))?;
            ensure!(
                module == a.module,
                "--delta-from {}: the base is module {module:?}, this release module {:?}: a differential package \
                 upgrades one module",
                from.display(),
                a.module
            );
            ensure!(
                id.version.as_str() != a.version,
                "--delta-from {}: the base is version {} too: a differential package goes from one version to another",
                from.display(),
                a.version
            );
            let (patch, opts) = make_delta(&base, &id, &image, board)?;
            let file = format!("delta-{}-{}.bin", id.version, a.version);
            let (size, md5, sha256) =
                (patch.len() as u64, hex::encode(Md5::digest(&patch)), hex::encode(Sha256::digest(&patch)));
            Some((
                patch,
                DeltaManifest {
                    file,
                    from: id.version.to_string(),
                    from_sha256: hex::encode(id.sha256),
                    from_size: id.size,
                    size,
                    md5,
                    sha256,
                    filter: match opts.filter {
                        shared::delta::Filter::None => "none".into(),
                        shared::delta::Filter::Thumb => "thumb".into(),
                        shared::delta::Filter::Remap { shifts, .. } => format!("remap {shifts} shifts"),
                    },
                    compression: match opts.compression {
                        shared::delta::Compression::Heatshrink { window, lookahead } => {
                            format!("heatshrink {window}/{lookahead}")
                        }
                        shared::delta::Compression::Lzma { dict_size } => format!("lzma dict {dict_size}"),
                        c => format!("{c:?}").to_lowercase(),
                    },
                },
            ))
        }
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let delta = match delta {
        Some((patch, m)) => {
            write(&out.join(&m.file), &patch)?;
            Some(m)
        }
        None => None,
    };
    let file = format!("firmware-{}.bin", a.version);
    write(&out.join(&file), &image)?;
    // The bootloader of the host board is the host device's own boot logic: its factory image
    // is the flash file with the signed app in ACTIVE.
    let bl_features: &[&str] = if a.unprotected_bootloader { &["unprotected"] } else { &[] };
    let bl = match board.target() {
        Some(_) => elf_to_bin(
            &read(&firmware_with(board, Crate::Bootloader, &trusted, bl_features, None)?)?,
            layout.bootloader.origin,
        )?,
        None => Vec::new(),
    };
    write(&out.join("factory.bin"), &factory_image(layout, &bl, &image)?)?;
    let factory = Some("factory.bin".to_string());
    let manifest = Manifest {
        board: board.name().into(),
        module: a.module.clone(),
        version: a.version.clone(),
        image_version: image_version.to_string(),
        file: file.clone(),
        size: image.len() as u64,
        md5: hex::encode(Md5::digest(&image)),
        sha256: hex::encode(Sha256::digest(&image)),
        sec_cnt: a.sec_cnt,
        key_hash: hex::encode(public.key_hash()),
        key_slot,
        revokes_keys: a.rotation.revoke_keys.clone(),
        factory,
        delta,
    };
    write(&out.join("manifest.json"), serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    println!("release {} {} {} -> {}", board.name(), a.module, a.version, out.display());
    println!(
        "  {file}: {} bytes, md5 {}, signed with {} (key slot {key_slot} of {})",
        image.len(),
        manifest.md5,
        key_path.display(),
        trusted.len()
    );
    if revoke_keys != 0 {
        println!(
            "  revokes key slot(s) {} once a device confirms it: images signed by them are refused from then on",
            crate::sign::slots(revoke_keys)
        );
    }
    if let Some(f) = &manifest.factory {
        println!("  {f}: flash once at {:#010x}", layout.flash.origin);
    }
    if let Some(d) = &manifest.delta {
        println!(
            "  {}: {} bytes ({:.1} % of the image), md5 {}: upload as a differential package, source version {}",
            d.file,
            d.size,
            d.size as f64 * 100.0 / image.len() as f64,
            d.md5,
            d.from
        );
    }
    Ok(())
}

/// Bootloader + signed app + erased BOOT_RECORD/STATE, from the flash origin. On qemu-an386 it is
/// the whole 16 MiB `mps.ram` backing file and on host the whole flash file; on nrf52840-dk it
/// ends with the image.
pub fn factory_image(layout: &Layout, bootloader: &[u8], image: &[u8]) -> Result<Vec<u8>> {
    ensure!(
        bootloader.len() as u32 <= layout.bootloader.length,
        "the bootloader is {} bytes but its region holds {}",
        bootloader.len(),
        layout.bootloader.length
    );
    let base = layout.flash.origin;
    let active = (layout.active.origin - base) as usize;
    let len = match layout.board {
        // Files QEMU and the host device use as their flash: the whole device.
        Board::QemuAn386 | Board::Host => layout.flash.length as usize,
        _ => active + image.len(),
    };
    let mut f = vec![layout.geometry.erased; len];
    let bl = (layout.bootloader.origin - base) as usize;
    f[bl..bl + bootloader.len()].copy_from_slice(bootloader);
    f[active..active + image.len()].copy_from_slice(image);
    Ok(f)
}

fn read(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
}

fn write(p: &Path, b: &[u8]) -> Result<()> {
    std::fs::write(p, b).with_context(|| format!("writing {}", p.display()))
}
