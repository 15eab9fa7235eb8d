//! `cargo xtask demo`: the whole OTA loop on this machine, no account needed (`testbed::demo`):
//! builds the host device and the host releases, then plays the scenarios; `--fleet N` upgrades N
//! devices in one job; `--qemu` plays them with the real firmware under QEMU.

use crate::{build::host_device, keys};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::time::Instant;
use testbed::{demo, scenario};

#[derive(clap::Args)]
pub struct Args {
    /// Upgrade this many host devices in one job instead of playing the scenarios.
    #[arg(long)]
    fleet: Option<usize>,
    /// Work folder (default: target/demo, target/demo-fleet or target/demo-qemu).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Play the scenarios with the real firmware (bootloader + app for qemu-an386) under QEMU,
    /// reaching the console through the AT modem simulator.
    #[arg(long, conflicts_with = "fleet")]
    qemu: bool,
}

pub fn run(a: Args) -> Result<()> {
    let t0 = Instant::now();
    let dir = a.dir.unwrap_or_else(|| {
        crate::root().join(match (a.fleet, a.qemu) {
            (Some(_), _) => "target/demo-fleet",
            (None, true) => "target/demo-qemu",
            (None, false) => "target/demo",
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if a.qemu {
        return demo::qemu_scenarios(&dir, t0);
    }
    eprintln!("building the host device and the releases (dev key) in {} ...", dir.display());
    let key = keys::load_public_key(&keys::dev_key())?;
    let device_bin = host_device(&[key])?;
    scenario::host_releases(&dir)?;
    eprintln!("built in {:.1} s", t0.elapsed().as_secs_f64());
    match a.fleet {
        Some(n) => demo::fleet(&dir, &device_bin, n),
        None => demo::scenarios(&dir, &device_bin, t0),
    }
}
