//! `cargo xtask device`: runs the host device (the app built for the `host` board) against an
//! MQTT broker, real Aliyun or the local console.

use crate::{build::host_device, keys};
use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Device settings: product_key, device_name, device_secret, host or region, port, tls, ca,
    /// module, sign_method, flash (see README).
    #[arg(long)]
    config: PathBuf,
    /// First write the factory image of this host release folder into the flash file.
    #[arg(long)]
    factory: Option<PathBuf>,
    /// Keys whose images the device accepts, in slot order (repeat for several; default: the
    /// development key).
    #[arg(long)]
    key: Vec<PathBuf>,
}

#[derive(Deserialize)]
struct FlashOnly {
    flash: PathBuf,
}

#[derive(Deserialize)]
struct ManifestBoard {
    board: String,
}

pub fn run(a: Args) -> Result<()> {
    let text = std::fs::read_to_string(&a.config).with_context(|| format!("reading {}", a.config.display()))?;
    let cfg: FlashOnly =
        toml::from_str(&text).with_context(|| format!("{}: no `flash = \"...\"` path", a.config.display()))?;
    if let Some(dir) = &a.factory {
        let manifest = std::fs::read(dir.join("manifest.json"))
            .with_context(|| format!("{} is not a release folder (no manifest.json)", dir.display()))?;
        let m: ManifestBoard = serde_json::from_slice(&manifest)?;
        ensure!(m.board == "host", "{} is a release for {}, not for the host board", dir.display(), m.board);
        std::fs::copy(dir.join("factory.bin"), &cfg.flash)
            .with_context(|| format!("writing the factory image into {}", cfg.flash.display()))?;
        eprintln!("wrote the factory image of {} into {}", dir.display(), cfg.flash.display());
    } else if !cfg.flash.exists() {
        bail!(
            "{} does not exist: pass --factory DIR with a host release (`cargo xtask release --board host --version V`)",
            cfg.flash.display()
        );
    }
    let bin = host_device(&keys::trusted_or_dev(&a.key)?)?;
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(&bin).arg("--config").arg(&a.config).exec();
    bail!("starting {}: {err}", bin.display())
}
