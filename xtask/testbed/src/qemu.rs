//! The real firmware (bootloader + app for qemu-an386) under `qemu-system-arm -M mps2-an386`,
//! reaching the local console through the modem simulator: UART0 is a QEMU serial chardev on the
//! simulator's pseudo-terminal (the rate the firmware sets reaches the simulator's line), flash is a file-backed `mps.ram` (survives reset and `kill -9`), the log is
//! semihosting on QEMU's stdout.
//!
//! [`Rig`] is one such device with its console and modem simulator (`cargo xtask qemu`, `demo
//! --qemu`, the power-cut campaign, `bench qemu-download`); [`releases`] builds the releases it
//! runs.

use crate::device::{Device, Unit};
use crate::modem_sim::{ModemSim, SimOptions};
use crate::provision::{self, Fields};
use anyhow::{bail, Context, Result};
use machine::proc;
use machine::tools;
use memory_layouts::Board;
use ota_console::auth::DeviceId;
use ota_console::engine::TaskRecord;
use ota_console::{tls, Console, Options, TlsOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const PK: &str = "a1QemuPk001";
pub const DN: &str = "qemu-01";
pub const SECRET: &str = "qemu-secret-0123456789abcdef";

/// The QEMU command line for a device on `flash` whose modem UART is `uart` (the modem
/// simulator's [`ModemSim::uart`]: a pty path, opened as a serial port, so that the rate the
/// firmware writes to the UART's divisor reaches the line; or `127.0.0.1:<port>`).
pub fn command(flash: &Path, uart: Option<&str>) -> Result<Command> {
    let mut c = Command::new(tools::qemu()?);
    c.args(["-M", "mps2-an386", "-nographic", "-monitor", "none"])
        .args(["-semihosting-config", "enable=on,target=native"])
        .arg("-object")
        .arg(format!("memory-backend-file,id=flash,size=16M,mem-path={},share=on", flash.display()))
        .args(["-M", "memory-backend=flash", "-global", "armv7m.init-nsvtor=0x21000000"]);
    match uart {
        Some(tty) if tty.starts_with('/') => {
            c.arg("-chardev").arg(format!("serial,id=modem,path={tty}")).args(["-serial", "chardev:modem"])
        }
        // Without nodelay every small write (an MQTT request) waits ~40 ms for Nagle.
        Some(addr) => {
            let p = addr.rsplit(':').next().unwrap_or(addr);
            c.arg("-chardev")
                .arg(format!("socket,id=modem,host=127.0.0.1,port={p},nodelay=on"))
                .args(["-serial", "chardev:modem"])
        }
        None => c.args(["-serial", "null"]),
    };
    Ok(c)
}

/// One QEMU device: its flash file, its log (QEMU's stdout: the semihosting output). QEMU exits
/// only on a semihosting exit or an error.
pub struct QemuDevice {
    unit: Unit,
    uart: String,
}

impl QemuDevice {
    /// The device `id` on `flash`, its modem UART `uart` (see [`command`]). Powered off.
    pub fn new(id: DeviceId, flash: PathBuf, log: PathBuf, uart: String) -> QemuDevice {
        QemuDevice { unit: Unit::new(id, flash, log), uart }
    }
}

impl Device for QemuDevice {
    fn unit(&self) -> &Unit {
        &self.unit
    }

    fn unit_mut(&mut self) -> &mut Unit {
        &mut self.unit
    }

    fn command(&self) -> Result<Command> {
        command(&self.unit.flash, Some(&self.uart))
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
        // A module with a real one's manners, on a line with a rate.
        Rig::start_with(dir, factory, quiet, SimOptions::realistic())
    }

    /// [`Rig::start`] with the modem simulator's behaviour given (the line has its rate either
    /// way): a bench measures the line with a module that has no faults to inject.
    pub fn start_with(dir: &Path, factory: &Path, quiet: bool, sim: SimOptions) -> Result<Rig> {
        let pki = tls::dev()?;
        let console = Console::start(Options {
            devices: vec![ota_console::device(PK, DN, SECRET)],
            status_file: Some(dir.join("status.json")),
            quiet,
            // HTTPS downloads: the firmware of `releases` trusts this CA.
            tls: Some(TlsOptions { cert: pki.cert, key: pki.key, port: 0, https_port: 0 }),
            ..Default::default()
        })?;
        let modem = ModemSim::start_tty(sim)?;
        let flash = dir.join(format!("{DN}.flash"));
        std::fs::copy(factory.join("factory.bin"), &flash)
            .with_context(|| format!("{} is not a release folder (no factory.bin)", factory.display()))?;
        provision::into_flash_file(Board::QemuAn386, &fields(console.mqtt_port), &flash)?;
        let log = dir.join(format!("{DN}.log"));
        let _ = std::fs::remove_file(&log);
        let mut dev = QemuDevice::new((PK.to_string(), DN.to_string()), flash, log, modem.uart());
        dev.start()?;
        Ok(Rig { console, modem, dev, dir: dir.to_path_buf() })
    }

    pub fn id(&self) -> DeviceId {
        self.dev.id()
    }

    /// Waits until the device is online on `version`.
    pub fn runs(&self, version: &str, timeout: Duration) -> Result<()> {
        self.dev.runs(&self.console, version, timeout)
    }

    /// The device's task of `job`, if any.
    pub fn task(&self, job: u32) -> Option<TaskRecord> {
        let id = self.id();
        self.console.with(|e| e.device(&id).and_then(|d| d.tasks.get(&job)).cloned())
    }

    /// The version the device last informed, if online ("offline" otherwise).
    pub fn version(&self) -> String {
        self.dev.version(&self.console)
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
