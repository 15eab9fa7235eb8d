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

/// Which cases `bench modem` runs (all by default), and the block and window the device uses.
#[derive(clap::Args, Debug, Default)]
pub struct Cases {
    /// modem: only this line rate (115200 or 921600).
    #[arg(long)]
    baud: Option<u32>,
    /// modem: only this round trip, ms (100 or 300).
    #[arg(long)]
    rtt: Option<u64>,
    /// modem: only this flash (nRF52840 or STM32L4).
    #[arg(long)]
    flash: Option<String>,
    /// modem: only this protocol (mqtt or https).
    #[arg(long)]
    protocol: Option<String>,
    /// modem: bytes per block request instead of the MCU default.
    #[arg(long)]
    block: Option<u32>,
    /// modem: block requests in flight instead of the MCU default.
    #[arg(long)]
    window: Option<usize>,
}

impl Cases {
    fn wants(&self, flash: &str, rate: u32, rtt: u64, protocol: Protocol) -> bool {
        let p = format!("{protocol:?}");
        self.baud.is_none_or(|b| b == rate)
            && self.rtt.is_none_or(|r| r == rtt)
            && self.flash.as_deref().is_none_or(|f| f.eq_ignore_ascii_case(flash))
            && self.protocol.as_deref().is_none_or(|q| q.eq_ignore_ascii_case(&p))
    }
}

struct Run<'a> {
    dir: &'a Path,
    device: &'a Path,
    console: &'a Console,
    mqtt_port: u16,
    n: u32,
    /// device.toml's block_size and window.
    settings: String,
}

impl Run<'_> {
    /// One download of `release` by a fresh device through a fresh module, at `rate` baud, with
    /// `timing` flash; bytes per second.
    /// Bytes per second from the job, and from the device's first request (the download
    /// itself: without the push and the device's taking of the task).
    fn download(&mut self, release: &Path, rate: u32, timing: &str, protocol: Protocol) -> Result<(f64, f64)> {
        self.n += 1;
        let name = format!("m{:03}", self.n);
        let sim = ModemSim::start_tty(SimOptions::default())?;
        let flash = self.dir.join("flash.bin");
        let extra = format!("modem = \"{}\"\nmodem_rate = {rate}\napn = \"CMNET\"\n{}", sim.uart(), self.settings);
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
        let first = Duration::from_millis(t.first_request_ms.context("no request was recorded")?);
        let len = len as f64;
        Ok((len / took.as_secs_f64(), len / (took.saturating_sub(first)).as_secs_f64()))
    }
}

pub fn run(image_kib: usize, cases: &Cases) -> Result<()> {
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
    let block = cases.block.unwrap_or(shared::ota::DEFAULT_BLOCK);
    let window = cases.window.unwrap_or(shared::ota::DEFAULT_WINDOW);
    let settings = format!("block_size = {block}\nwindow = {window}\n");
    let defaults = (block, window) == (shared::ota::DEFAULT_BLOCK, shared::ota::DEFAULT_WINDOW);
    println!(
        "{image_kib} KiB image, host device through the modem simulator's rate-limited line, {} \
         ({block} B blocks, window {window}); bytes/s against the limit min(line, flash, window x block / RTT):",
        if defaults { "MCU defaults" } else { "not the MCU defaults" }
    );
    let (block, window) = (f64::from(block), window as f64);
    println!(
        "  {:<8} {:>7} {:>9} {:>5} {:>17} {:>22} {:>11}",
        "flash", "baud", "protocol", "RTT", "from the job", "from the first request", "limit"
    );
    for rtt in [100u64, 300] {
        if cases.rtt.is_some_and(|r| r != rtt) {
            continue;
        }
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
            settings: settings.clone(),
        };
        for (flash, timing, ns_per_byte) in FLASHES {
            for rate in [115_200u32, 921_600] {
                for protocol in [Protocol::Mqtt, Protocol::Https] {
                    if !cases.wants(flash, rate, rtt, protocol) {
                        continue;
                    }
                    let (got, from_request) = r.download(&release, rate, timing, protocol)?;
                    let line = f64::from(rate) / 10.0;
                    let flash_rate = 1e9 / ns_per_byte;
                    let window_rate = window * block / (rtt as f64 / 1000.0);
                    let limit = match protocol {
                        Protocol::Mqtt => line.min(flash_rate).min(window_rate),
                        _ => line.min(flash_rate),
                    };
                    println!(
                        "  {flash:<8} {rate:>7} {:>9} {rtt:>3}ms {:>6.1} kB/s {:>5.0}% {:>9.1} kB/s {:>5.0}% {:>6.1} kB/s",
                        format!("{protocol:?}"),
                        got / 1000.0,
                        100.0 * got / limit,
                        from_request / 1000.0,
                        100.0 * from_request / limit,
                        limit / 1000.0,
                    );
                }
            }
        }
    }
    Ok(())
}
