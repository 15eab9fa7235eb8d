//! The real firmware (bootloader + app for qemu-an386) under `qemu-system-arm -M mps2-an386`,
//! reaching the local console through the modem simulator: UART0 is a QEMU socket chardev to the
//! simulator's port, flash is a file-backed `mps.ram` (survives reset and `kill -9`), the log is
//! semihosting on QEMU's stdout.
//!
//! `cargo xtask qemu` runs one such device on a factory image against the console and, with
//! `--upgrade DIR`, pushes those releases to it one after the other.

use crate::console::engine::{Protocol, Task};
use crate::console::{self, Console, Options, TlsOptions};
use crate::modem_sim::{ModemSim, SimOptions};
use crate::proc::{spawn_logged, Killed};
use crate::provision::{self, Fields};
use crate::{proc, tls, tools};
use anyhow::{bail, Context, Result};
use memory_layouts::Board;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const PK: &str = "a1QemuPk001";
pub const DN: &str = "qemu-01";
pub const SECRET: &str = "qemu-secret-0123456789abcdef";

/// The QEMU command line for a device on `flash` whose modem UART is 127.0.0.1:`uart`.
pub fn command(flash: &Path, uart: Option<u16>) -> Result<Command> {
    let mut c = Command::new(tools::qemu()?);
    c.args(["-M", "mps2-an386", "-nographic", "-monitor", "none"])
        .args(["-semihosting-config", "enable=on,target=native"])
        .arg("-object")
        .arg(format!("memory-backend-file,id=flash,size=16M,mem-path={},share=on", flash.display()))
        .args(["-M", "memory-backend=flash", "-global", "armv7m.init-nsvtor=0x21000000"]);
    match uart {
        // Without nodelay every small write (an MQTT request) waits ~40 ms for Nagle.
        Some(p) => c
            .arg("-chardev")
            .arg(format!("socket,id=modem,host=127.0.0.1,port={p},nodelay=on"))
            .args(["-serial", "chardev:modem"]),
        None => c.args(["-serial", "null"]),
    };
    Ok(c)
}

/// One QEMU device: its flash file, its log (QEMU's stdout: the semihosting output).
pub struct QemuDevice {
    pub flash: PathBuf,
    pub log: PathBuf,
    uart: u16,
    proc: Option<Killed>,
}

impl QemuDevice {
    pub fn new(flash: PathBuf, log: PathBuf, uart: u16) -> QemuDevice {
        QemuDevice { flash, log, uart, proc: None }
    }

    /// Powers on.
    pub fn start(&mut self) -> Result<()> {
        let mut c = command(&self.flash, Some(self.uart))?;
        // `timeout`-like guard: the Killed guard ends it with the rig.
        self.proc = Some(spawn_logged(&mut c, &self.log)?);
        Ok(())
    }

    /// `kill -9`: a power cut (the flash file keeps exactly what was written).
    pub fn cut(&mut self) {
        self.proc = None;
    }

    /// Whether QEMU still runs (it exits only on a semihosting exit or an error).
    pub fn running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| matches!(p.0.try_wait(), Ok(None)))
    }

    /// Everything the device printed so far (all power-ons).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log, after its first `from` bytes, has a line containing `pat`.
    pub fn wait_for(&mut self, from: usize, pat: &str, timeout: Duration) -> Result<String> {
        let t0 = Instant::now();
        loop {
            let out = self.output();
            if let Some(l) = out.get(from..).and_then(|s| s.lines().find(|l| l.contains(pat))) {
                return Ok(l.to_string());
            }
            if t0.elapsed() > timeout || !self.running() {
                let tail: Vec<&str> = out.lines().rev().take(15).collect();
                bail!(
                    "the QEMU device did not print {pat:?} ({}); its last lines:\n{}",
                    if self.running() { "timed out" } else { "QEMU exited" },
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Console + modem simulator + one QEMU device, all on 127.0.0.1.
pub struct Rig {
    pub console: Console,
    pub modem: ModemSim,
    pub dev: QemuDevice,
    dir: PathBuf,
}

impl Drop for Rig {
    /// Leaves what the modem simulator saw beside the device's log (`modem.log`).
    fn drop(&mut self) {
        let t = self.modem.log().transcript.join("\n");
        let _ = std::fs::write(self.dir.join("modem.log"), t + "\n");
    }
}

impl Rig {
    /// Writes `factory` (a qemu-an386 release folder's factory.bin) into `dir/qemu-01.flash`,
    /// provisions it for the console, and powers the device on.
    pub fn start(dir: &Path, factory: &Path, quiet: bool) -> Result<Rig> {
        let pki = tls::dev()?;
        let console = Console::start(Options {
            devices: vec![console::device(PK, DN, SECRET)],
            status_file: Some(dir.join("status.json")),
            quiet,
            // HTTPS downloads: the firmware of `releases` trusts this CA.
            tls: Some(TlsOptions { cert: pki.cert, key: pki.key, port: 0, https_port: 0 }),
            ..Default::default()
        })?;
        let modem = ModemSim::start(SimOptions::default())?;
        let flash = dir.join(format!("{DN}.flash"));
        std::fs::copy(factory.join("factory.bin"), &flash)
            .with_context(|| format!("{} is not a release folder (no factory.bin)", factory.display()))?;
        provision::into_flash_file(Board::QemuAn386, &fields(console.mqtt_port), &flash)?;
        let log = dir.join(format!("{DN}.log"));
        let _ = std::fs::remove_file(&log);
        let mut dev = QemuDevice::new(flash, log, modem.port);
        dev.start()?;
        Ok(Rig { console, modem, dev, dir: dir.to_path_buf() })
    }

    pub fn id(&self) -> console::auth::DeviceId {
        (PK.to_string(), DN.to_string())
    }

    /// Waits until the device is online on `version`.
    pub fn runs(&self, version: &str, timeout: Duration) -> Result<()> {
        let id = self.id();
        self.console.wait(timeout, &format!("{DN} to inform {version}"), |e| {
            e.device(&id).is_some_and(|d| d.online && d.version() == Some(version))
        })
    }

    /// The device's task of `job`, if any.
    pub fn task(&self, job: u32) -> Option<Task> {
        let id = self.id();
        self.console.with(|e| e.device(&id).and_then(|d| d.tasks.get(&job)).cloned())
    }

    /// The version the device last informed, if online.
    pub fn version(&self) -> String {
        let id = self.id();
        self.console
            .with(|e| e.device(&id).filter(|d| d.online).and_then(|d| d.version().map(String::from)))
            .unwrap_or_else(|| "offline".into())
    }
}

/// The provisioning record of the rig's device: the console through the modem simulator (plain
/// MQTT; the simulator only opens sockets to 127.0.0.1).
pub fn fields(mqtt_port: u16) -> Fields {
    Fields {
        product_key: PK.into(),
        device_name: DN.into(),
        device_secret: SECRET.into(),
        host: "127.0.0.1".into(),
        port: Some(mqtt_port),
        plain: true,
        apn: "CMNET".into(),
        sign_method: "hmacsha256".into(),
    }
}

/// Builds qemu-an386 releases `(version, extra release flags)` into `dir/<version>`, trusting
/// the development CA of the console's HTTPS listener for downloads.
pub fn releases(dir: &Path, list: &[(&str, &[&str])]) -> Result<()> {
    for (v, extra) in list {
        release(dir, v, v, extra)?;
    }
    Ok(())
}

/// Releases qemu-an386 `version` into `dir/<out>` with its differential package from the
/// release in `dir/<from>` (`release --delta-from`), trusting the console's development CA.
pub fn delta_release(dir: &Path, version: &str, out: &str, from: &str) -> Result<()> {
    let from = dir.join(from);
    release(dir, version, out, &["--delta-from", from.to_str().context("non-UTF-8 path")?])
}

/// `cargo xtask release` of qemu-an386 `version` into `dir/<out>` with `extra` flags, trusting the
/// console's development CA for downloads.
fn release(dir: &Path, version: &str, out: &str, extra: &[&str]) -> Result<()> {
    let (ca, out) = (tls::dev()?.ca, dir.join(out));
    let (Some(ca), Some(out)) = (ca.to_str(), out.to_str()) else { bail!("non-UTF-8 path") };
    let mut args = vec!["release", "--board", "qemu-an386", "--version", version, "--download-ca", ca, "--out", out];
    args.extend_from_slice(extra);
    proc::xtask(&args)
}

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
        return crate::power_cut::campaign(&dir, cuts, seed);
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
        "QEMU device {DN} on {} (log: {}), modem simulator on 127.0.0.1:{}, console MQTT on 127.0.0.1:{}",
        rig.dev.flash.display(),
        rig.dev.log.display(),
        rig.modem.port,
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
            bail!("the device did not come online (see {})", rig.dev.log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for up in &a.upgrade {
        let j = rig.console.add_job(crate::demo::job(up, Protocol::Mqtt, false, Duration::from_secs(600))?)?;
        loop {
            echo(&rig);
            if rig.task(j).is_some_and(|t| t.state.done()) {
                break;
            }
            if !rig.dev.running() {
                bail!("QEMU exited (see {})", rig.dev.log.display());
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
                bail!("QEMU exited (see {})", rig.dev.log.display());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    print!("{}", console::table(&rig.console.status()));
    rig.dev.cut();
    Ok(())
}
