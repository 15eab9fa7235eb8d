//! `cargo xtask qemu`: the real firmware under QEMU against the local console through the modem
//! simulator (`testbed::qemu::Rig`): one device on a factory image and, with `--upgrade DIR`,
//! those releases pushed to it one after the other; or, with `--power-cuts N`, the power-cut
//! campaign (`testbed::power_cut`).

use anyhow::{bail, Result};
use ota_console::engine::Protocol;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use testbed::device::Device;
use testbed::qemu::{releases, Rig, DN};
use testbed::scenario;

#[derive(clap::Args)]
pub struct Args {
    /// The factory image: a qemu-an386 release folder (default: builds v1.3 with the dev key).
    #[arg(long)]
    factory: Option<PathBuf>,
    /// Push these qemu-an386 release folders to the device over MQTT, one after the other.
    #[arg(long)]
    upgrade: Vec<PathBuf>,
    /// Work folder (flash file, logs, status.json).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep running (console, modem, QEMU) after the upgrades, until Ctrl-C.
    #[arg(long)]
    stay: bool,
    /// Instead: the power-cut campaign, `kill -9` at this many seeded random moments of updates
    /// (download, mark, swap, confirm, revert), each followed by a restart and the checks.
    #[arg(long, conflicts_with_all = ["factory", "upgrade", "stay"])]
    power_cuts: Option<usize>,
    /// Seed of the campaign (default: from the clock; printed, to replay a run).
    #[arg(long)]
    seed: Option<u64>,
}

pub fn run(a: Args) -> Result<()> {
    let dir = a.dir.unwrap_or_else(|| crate::root().join("target/qemu"));
    std::fs::create_dir_all(&dir)?;
    if let Some(cuts) = a.power_cuts {
        let seed = a.seed.unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs())
        });
        return testbed::power_cut::campaign(&dir, cuts, seed);
    }
    let factory = match a.factory {
        Some(f) => f,
        None => {
            eprintln!("building the qemu-an386 factory release v1.3 (dev key) ...");
            releases(&dir, &[("1.3", &[])])?;
            dir.join("1.3")
        }
    };
    let rig = Rig::start(&dir, &factory, false)?;
    eprintln!(
        "QEMU device {DN} on {} (log: {}), modem simulator on {}, console MQTT on 127.0.0.1:{}",
        rig.dev.flash().display(),
        rig.dev.log().display(),
        rig.modem.uart(),
        rig.console.mqtt_port
    );
    let mut printed = 0;
    let mut rig = rig;
    let mut echo = |rig: &Rig| {
        let out = rig.dev.output();
        for l in out.get(printed..).unwrap_or("").lines() {
            println!("  | {l}");
        }
        printed = out.len();
    };
    let boot = Instant::now();
    while rig.console.with(|e| e.device(&rig.id()).is_none_or(|d| !d.online)) {
        echo(&rig);
        if !rig.dev.running() || boot.elapsed() > Duration::from_secs(120) {
            echo(&rig);
            bail!("the device did not come online (see {})", rig.dev.log().display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for up in &a.upgrade {
        let j = rig.console.add_job(scenario::job(up, Protocol::Mqtt, false, Duration::from_secs(600))?)?;
        loop {
            echo(&rig);
            if rig.task(j).is_some_and(|t| t.state.done()) {
                break;
            }
            if !rig.dev.running() {
                bail!("QEMU exited (see {})", rig.dev.log().display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let t = rig.task(j).unwrap();
        eprintln!("job {j} ({}): {:?} step {} {}", up.display(), t.state, t.step, t.desc);
        std::thread::sleep(Duration::from_secs(2));
    }
    echo(&rig);
    if a.stay || a.upgrade.is_empty() {
        eprintln!("running; Ctrl-C to stop");
        loop {
            echo(&rig);
            if !rig.dev.running() {
                bail!("QEMU exited (see {})", rig.dev.log().display());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    print!("{}", ota_console::table(&rig.console.status()));
    rig.dev.cut();
    Ok(())
}
