//! `cargo xtask bench modem`: the host device downloading through the modem simulator on a line
//! with a rate (its pty: `AT+IPR` at 115,200 or 921,600 baud), with an MCU's flash timings
//! applied to the host flash file (nRF52840: 41 us per 4-byte word, 85 ms per 4 KiB page;
//! STM32L4: 82 us per 8-byte double word, 22 ms per 2 KiB page), and a delay proxy between the
//! module's sockets and the console (100 and 300 ms round trips): an MQTT-stream and a plain
//! HTTP download of one image, each against its limit,
//!
//! `min(line, flash, window x block / RTT)` (MQTT) or `min(line, flash)` (HTTP, one stream),
//!
//! where the line carries 10 bits per byte (8N1) and the flash rate is the time to erase and
//! program a byte. The time is the console's, from the job to the device's progress 100.

use crate::{build::host_device_profile, keys};
use anyhow::{ensure, Context, Result};
use machine::proc::{free_port, xtask};
use ota_console::engine::Protocol;
use ota_console::{self as console, Console, Options};
use std::path::Path;
use std::time::Duration;
use testbed::device::{Device, HostConfig, HostDevice};
use testbed::modem_sim::{ModemSim, SimOptions};
use testbed::proxy::Proxy;

const PK: &str = "a1BenchMdm1";
const SECRET: &str = "bench-secret";

/// An MCU's flash: name, `ALIYUN_OTA_HOST_FLASH_TIMING`, ns per byte (program + erase).
const FLASHES: [(&str, &str, f64); 2] = [
    ("nRF52840", "41/4,85/4096", 41_000.0 / 4.0 + 85e6 / 4096.0),
    ("STM32L4", "82/8,22/2048", 82_000.0 / 8.0 + 22e6 / 2048.0),
];

struct Run<'a> {
    dir: &'a Path,
    device: &'a Path,
    console: &'a Console,
    mqtt_port: u16,
    n: u32,
}

impl Run<'_> {
    /// One download of `release` by a fresh device through a fresh module, at `rate` baud, with
    /// `timing` flash; bytes per second.
    fn download(&mut self, release: &Path, rate: u32, timing: &str, protocol: Protocol) -> Result<f64> {
        self.n += 1;
        let name = format!("m{:03}", self.n);
        let sim = ModemSim::start_tty(SimOptions::default())?;
        let flash = self.dir.join("flash.bin");
        let extra = format!("modem = \"{}\"\nmodem_rate = {rate}\napn = \"CMNET\"\n", sim.uart());
        let c = HostConfig {
            product_key: PK,
            device_name: &name,
            device_secret: SECRET,
            port: self.mqtt_port,
            tls: false,
            flash: &flash,
            extra: &extra,
        };
        let log = self.dir.join(format!("{name}.log"));
        let mut d =
            HostDevice::new(self.device, &c, self.dir.join("device.toml"), log, &self.dir.join("1.3/factory.bin"))?;
        d.log_level = std::env::var("BENCH_DEVICE_LOG").unwrap_or_else(|_| "warn".into());
        d.flash_timing = Some(timing.into());
        d.start().context("starting the host device")?;
        let id = d.id();
        d.runs(self.console, "1.3", Duration::from_secs(60))?;
        let (took, t) = crate::bench_ota::timed_download(self.console, release, protocol, &id)?;
        ensure!(sim.log().rate == rate, "the line ran at {} baud, not {rate}", sim.log().rate);
        let len = std::fs::metadata(release.join(format!("firmware-{}.bin", t.to)))?.len();
        Ok(len as f64 / took.as_secs_f64())
    }
}

pub fn run(image_kib: usize) -> Result<()> {
    let dir = crate::root().join("target/bench-modem");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let key = keys::dev_key();
    let out = |v: &str| dir.join(v).to_str().unwrap().to_string();
    xtask(&["release", "--board", "host", "--version", "1.3", "--out", &out("1.3")])?;
    let body = (image_kib * 1024 - 0x200 - 200).to_string();
    xtask(&["release", "--board", "host", "--version", "1.4", "--body-size", &body, "--out", &out("1.4")])?;
    let device = host_device_profile(&[keys::load_public_key(&key)?], "host-bench")?;
    let release = dir.join("1.4");
    let (block, window) = (shared::ota::DEFAULT_BLOCK as f64, shared::ota::DEFAULT_WINDOW as f64);
    println!(
        "{image_kib} KiB image, host device through the modem simulator's rate-limited line, MCU defaults \
         ({} B blocks, window {}); bytes/s against the limit min(line, flash, window x block / RTT):",
        block, window
    );
    println!(
        "  {:<8} {:>7} {:>9} {:>5} {:>10} {:>10} {:>6}",
        "flash", "baud", "protocol", "RTT", "measured", "limit", "of it"
    );
    for rtt in [100u64, 300] {
        // The console's HTTP server behind its own proxy: download URLs point at the proxy.
        let http_port = free_port()?;
        let http_proxy = Proxy::start(http_port, Duration::from_millis(rtt / 2))?;
        let console = Console::start(Options {
            devices: (1..=64).map(|i| console::device(PK, &format!("m{i:03}"), SECRET)).collect(),
            http_port,
            download_base: Some(format!("http://127.0.0.1:{}", http_proxy.port)),
            quiet: true,
            ..Default::default()
        })?;
        let mqtt_proxy = Proxy::start(console.mqtt_port, Duration::from_millis(rtt / 2))?;
        let mut r = Run {
            dir: &dir,
            device: &device,
            console: &console,
            mqtt_port: mqtt_proxy.port,
            n: (rtt / 100 * 16) as u32,
        };
        for (flash, timing, ns_per_byte) in FLASHES {
            for rate in [115_200u32, 921_600] {
                for protocol in [Protocol::Mqtt, Protocol::Https] {
                    let got = r.download(&release, rate, timing, protocol)?;
                    let line = f64::from(rate) / 10.0;
                    let flash_rate = 1e9 / ns_per_byte;
                    let window_rate = window * block / (rtt as f64 / 1000.0);
                    let limit = match protocol {
                        Protocol::Mqtt => line.min(flash_rate).min(window_rate),
                        _ => line.min(flash_rate),
                    };
                    println!(
                        "  {flash:<8} {rate:>7} {:>9} {rtt:>3}ms {:>8.1} kB/s {:>6.1} kB/s {:>5.0}%",
                        format!("{protocol:?}"),
                        got / 1000.0,
                        limit / 1000.0,
                        100.0 * got / limit
                    );
                }
            }
        }
    }
    Ok(())
}
