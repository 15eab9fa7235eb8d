//! The device harness: one way to power a device on, cut its power, read its log and see what it
//! runs, whether it is the host device (the app built for Linux, a process on a flash file) or the
//! real firmware under QEMU ([`crate::qemu::QemuDevice`]); and [`HostConfig`], the one writer of
//! the host device's `device.toml`.

use anyhow::{bail, Context, Result};
use machine::proc::{spawn_logged, Killed};
use ota_console::auth::DeviceId;
use ota_console::Console;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// What every device under test has: its identity on the console, its flash file (which survives
/// its process), its log, and its process while powered on.
pub struct Unit {
    pub id: DeviceId,
    pub flash: PathBuf,
    pub log: PathBuf,
    proc: Option<Killed>,
}

impl Unit {
    /// Powered off.
    pub fn new(id: DeviceId, flash: PathBuf, log: PathBuf) -> Unit {
        Unit { id, flash, log, proc: None }
    }
}

/// A device under test: a process on a flash file that survives it.
pub trait Device {
    /// Its identity, files and process.
    fn unit(&self) -> &Unit;
    fn unit_mut(&mut self) -> &mut Unit;
    /// The command line that powers it on (its output goes to its log).
    fn command(&self) -> Result<Command>;

    /// Its product key and device name on the console.
    fn id(&self) -> DeviceId {
        self.unit().id.clone()
    }

    /// The flash file (the host device's `flash`, QEMU's `mps.ram`).
    fn flash(&self) -> &Path {
        &self.unit().flash
    }

    /// Where everything it prints goes, every power-on appended.
    fn log(&self) -> &Path {
        &self.unit().log
    }

    /// Powers on.
    fn start(&mut self) -> Result<()> {
        let mut c = self.command()?;
        let u = self.unit_mut();
        u.proc = Some(spawn_logged(&mut c, &u.log)?);
        Ok(())
    }

    /// `kill -9`: a power cut (the flash file keeps exactly what was written).
    fn cut(&mut self) {
        self.unit_mut().proc = None;
    }

    /// The process while powered on.
    fn process(&mut self) -> Option<&mut Child> {
        self.unit_mut().proc.as_mut().map(|p| &mut p.0)
    }

    /// Whether it is powered on and its process still runs.
    fn running(&mut self) -> bool {
        self.process().is_some_and(|p| matches!(p.try_wait(), Ok(None)))
    }

    /// Waits up to `timeout` for its process to exit; its status, or `None` if it still runs.
    fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            match self.process() {
                Some(p) => {
                    if let Some(s) = p.try_wait()? {
                        return Ok(Some(s));
                    }
                }
                None => return Ok(None),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(None)
    }

    /// Everything it printed so far (all power-ons).
    fn output(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Waits until the log, after its first `from` bytes, has a line containing `pat`.
    fn wait_for(&mut self, from: usize, pat: &str, timeout: Duration) -> Result<String> {
        let t0 = Instant::now();
        loop {
            let out = self.output();
            if let Some(l) = out.get(from..).and_then(|s| s.lines().find(|l| l.contains(pat))) {
                return Ok(l.to_string());
            }
            if t0.elapsed() > timeout || !self.running() {
                let tail: Vec<&str> = out.lines().rev().take(15).collect();
                bail!(
                    "the device {} did not print {pat:?} ({}); its last lines:\n{}",
                    self.id().1,
                    if self.running() { "timed out" } else { "it exited" },
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The version it runs as it last informed `console`; "offline" when it is not connected.
    fn version(&self, console: &Console) -> String {
        let id = self.id();
        console
            .with(|e| e.device(&id).filter(|d| d.online).and_then(|d| d.version().map(String::from)))
            .unwrap_or_else(|| "offline".into())
    }

    /// Waits until it is online on `console` running `version`.
    fn runs(&self, console: &Console, version: &str, timeout: Duration) -> Result<()> {
        let id = self.id();
        console.wait(timeout, &format!("{} to inform {version}", id.1), |e| {
            e.device(&id).is_some_and(|d| d.online && d.version() == Some(version))
        })
    }
}

/// What a host device's `device.toml` says: its credentials, a broker on 127.0.0.1, its flash
/// file, and any further settings (README, *the host device*).
#[derive(Clone, Debug)]
pub struct HostConfig<'a> {
    pub product_key: &'a str,
    pub device_name: &'a str,
    pub device_secret: &'a str,
    /// The broker's port on 127.0.0.1.
    pub port: u16,
    /// MQTT over TLS (with a `ca = "..."` line in `extra` for a local broker).
    pub tls: bool,
    pub flash: &'a Path,
    /// More lines (TOML: `block_size`, `window`, `modem`, ...), as they are.
    pub extra: &'a str,
}

impl HostConfig<'_> {
    /// The `device.toml` text.
    pub fn toml(&self) -> String {
        let HostConfig { product_key, device_name, device_secret, port, tls, flash, extra } = self;
        format!(
            "product_key = \"{product_key}\"\ndevice_name = \"{device_name}\"\ndevice_secret = \"{device_secret}\"\n\
             host = \"127.0.0.1\"\nport = {port}\ntls = {tls}\nflash = \"{}\"\n{extra}",
            flash.display()
        )
    }
}

/// The host device: the app built for the `host` board (`cargo xtask build --board host`), a
/// process reading its `device.toml`.
pub struct HostDevice {
    unit: Unit,
    bin: PathBuf,
    config: PathBuf,
    /// Slow flash from the next power-on: this many ms per operation.
    pub flash_delay_ms: Option<u64>,
    /// `RUST_LOG` from the next power-on.
    pub log_level: String,
    /// An MCU's flash speed from the next power-on (`ALIYUN_OTA_HOST_FLASH_TIMING`,
    /// `<us>/<bytes>,<ms>/<bytes>`: program time per word, erase time per page).
    pub flash_timing: Option<String>,
}

impl HostDevice {
    /// The program `bin` configured by `c` (written into `config`), logging into `log`, with the
    /// factory image `factory` written into its flash file. Powered off.
    pub fn new(bin: &Path, c: &HostConfig, config: PathBuf, log: PathBuf, factory: &Path) -> Result<HostDevice> {
        std::fs::copy(factory, c.flash).context("writing the factory image into the flash file")?;
        std::fs::write(&config, c.toml()).with_context(|| format!("writing {}", config.display()))?;
        Ok(HostDevice {
            unit: Unit::new((c.product_key.to_string(), c.device_name.to_string()), c.flash.into(), log),
            bin: bin.into(),
            config,
            flash_delay_ms: None,
            flash_timing: None,
            log_level: "info".into(),
        })
    }

    /// [`HostDevice::new`] with its files in `dir`: `<name>.flash`, `<name>.toml`, `<name>.log`;
    /// reaching the broker on 127.0.0.1:`port` over plain MQTT.
    pub fn in_dir(
        dir: &Path,
        bin: &Path,
        id: (&str, &str),
        secret: &str,
        port: u16,
        factory: &Path,
    ) -> Result<HostDevice> {
        let (pk, name) = id;
        let flash = dir.join(format!("{name}.flash"));
        let c = HostConfig {
            product_key: pk,
            device_name: name,
            device_secret: secret,
            port,
            tls: false,
            flash: &flash,
            extra: "",
        };
        HostDevice::new(bin, &c, dir.join(format!("{name}.toml")), dir.join(format!("{name}.log")), factory)
    }

    /// Its `device.toml`.
    pub fn config(&self) -> &Path {
        &self.config
    }
}

impl Device for HostDevice {
    fn unit(&self) -> &Unit {
        &self.unit
    }

    fn unit_mut(&mut self) -> &mut Unit {
        &mut self.unit
    }

    fn command(&self) -> Result<Command> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config").arg(&self.config).env("RUST_LOG", &self.log_level);
        if let Some(ms) = self.flash_delay_ms {
            cmd.env("ALIYUN_OTA_HOST_FLASH_DELAY_MS", ms.to_string());
        }
        if let Some(t) = &self.flash_timing {
            cmd.env("ALIYUN_OTA_HOST_FLASH_TIMING", t);
        }
        Ok(cmd)
    }
}
