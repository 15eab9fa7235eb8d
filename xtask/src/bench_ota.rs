//! `cargo xtask bench ota`: the real host device downloading over MQTT stream from the local
//! console (its broker behind the front door, the strict Aliyun twin), in one run, side by side:
//!
//! - on loopback, a 1 MiB image: host defaults (64 KiB blocks, window 4), MCU defaults
//!   ([`shared::ota::DEFAULT_BLOCK`], [`shared::ota::DEFAULT_WINDOW`]), stop-and-wait with 5 KiB
//!   blocks (the C LinkSDK default), and the raw broker (the
//!   same bytes in 128 KiB PUBLISHes through the front door and rumqttd, and back);
//! - through a delay proxy with a 100 ms and a 300 ms round trip, a 256 KiB image: MCU defaults
//!   against stop-and-wait, and both against a console that serves one block request at a time
//!   (where the window must fall back to stop-and-wait, never fail).
//!
//! The time is the console's, from the job's creation to the device's progress 100 (every byte
//! received, CRC-checked, hashed, written to the flash file, its signature verified).

use crate::{build::host_device_profile, keys};
use anyhow::{bail, ensure, Context, Result};
use machine::proc::xtask;
use ota_console::engine::{BlockService, JobSpec, Package, Protocol};
use ota_console::{self as console, Console, Options};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use testbed::device::{Device, HostConfig, HostDevice};
use testbed::proxy::Proxy;

const PK: &str = "a1BenchPk01";
const SECRET: &str = "bench-secret";
const DEVICES: usize = 200;

struct Bench {
    dir: PathBuf,
    device: PathBuf,
    console: Console,
    next: AtomicU32,
}

#[derive(Clone, Copy)]
struct Config {
    block: u32,
    window: usize,
}

impl Bench {
    /// One download of `release` by a fresh device (a registered name of its own) reaching the
    /// console on `port`; the console's time from the job to the device's progress 100.
    fn download(&self, release: &Path, port: u16, c: Config, one_at_a_time: bool) -> Result<Duration> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let name = format!("bench-{n:03}");
        let flash = self.dir.join("flash.bin");
        let extra = format!("block_size = {}\nwindow = {}\n", c.block, c.window);
        let config = HostConfig {
            product_key: PK,
            device_name: &name,
            device_secret: SECRET,
            port,
            tls: false,
            flash: &flash,
            extra: &extra,
        };
        let (toml, log) = (self.dir.join("device.toml"), self.dir.join(format!("{name}.log")));
        let _ = std::fs::remove_file(&log);
        let mut d = HostDevice::new(&self.device, &config, toml, log, &self.dir.join("1.3/factory.bin"))?;
        d.log_level = std::env::var("BENCH_DEVICE_LOG").unwrap_or_else(|_| "warn".into());
        d.start().context("starting the host device")?;
        let id = d.id();
        d.runs(&self.console, "1.3", Duration::from_secs(30))?;
        self.console.with_mut(|e| {
            e.blocks = if one_at_a_time {
                BlockService::OneAtATime { busy: Duration::from_millis(20) }
            } else {
                BlockService::All
            }
        });
        Ok(timed_download(&self.console, release, Protocol::Mqtt, &id)?.0)
    }

    /// `bytes` from a device to its own topic and back through the front door, in PUBLISHes of
    /// 128 KiB (Aliyun's largest block; a PUBLISH is at most 256 KB), sent back to back.
    fn raw(&self, bytes: &[u8]) -> Result<Duration> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let name = format!("bench-{n:03}");
        let dev = shared::alink::DeviceSecret { product_key: PK, device_name: &name, device_secret: SECRET };
        let creds = shared::alink::credentials(&dev, shared::alink::SignMethod::HmacSha256, None, None, 3)?;
        let mut o = rumqttc::MqttOptions::new(creds.client_id.as_str(), "127.0.0.1", self.console.mqtt_port);
        o.set_credentials(creds.username.as_str(), creds.password.as_str());
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut conn) = rumqttc::Client::new(o, 64);
        let topic = format!("/{PK}/{name}/user/raw");
        client.subscribe(&topic, rumqttc::QoS::AtMostOnce)?;
        let (tx, done) = std::sync::mpsc::channel();
        let total = bytes.len();
        std::thread::spawn(move || {
            let mut got = 0;
            for ev in conn.iter() {
                match ev {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        let _ = tx.send(None);
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        got += p.payload.len();
                        if got >= total {
                            let _ = tx.send(Some((Instant::now(), got)));
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        ensure!(matches!(done.recv_timeout(Duration::from_secs(10)), Ok(None)), "no SUBACK");
        let t0 = Instant::now();
        for c in bytes.chunks(128 * 1024) {
            client.publish(&topic, rumqttc::QoS::AtMostOnce, false, c.to_vec())?;
        }
        let (t1, len) = done.recv_timeout(Duration::from_secs(60))?.context("no messages")?;
        let _ = client.disconnect();
        ensure!(len == bytes.len(), "raw messages of {len} bytes");
        Ok(t1 - t0)
    }
}

/// A job of `release` over `protocol` for the device `id` alone (from 1.3), and the console's
/// time from the job to its progress 100, with the task as it ended or went on.
pub(crate) fn timed_download(
    console: &Console,
    release: &Path,
    protocol: Protocol,
    id: &(String, String),
) -> Result<(Duration, ota_console::engine::TaskRecord)> {
    let mut spec = JobSpec::new(Package::load(release)?, protocol);
    spec.from = vec!["1.3".into()];
    spec.devices = Some(vec![id.1.clone()]);
    let j = console.add_job(spec)?;
    let mut took = None;
    console.wait(Duration::from_secs(900), "progress 100", |e| {
        let t = e.device(id).and_then(|d| d.tasks.get(&j));
        took = t.and_then(|t| t.downloaded_ms);
        took.is_some() || t.is_some_and(|t| t.state.done())
    })?;
    let t = console.with(|e| e.device(id).unwrap().tasks[&j].clone());
    let Some(ms) = took else {
        bail!("{}: the download ended {:?} step {} ({})", id.1, t.state, t.step, t.desc);
    };
    Ok((Duration::from_millis(ms), t))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn run(image_kib: usize) -> Result<()> {
    let dir = crate::root().join("target/bench-ota");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let key = keys::dev_key();
    let body = |kib: usize| (kib * 1024 - 0x200 - 200).to_string();
    let out = |v: &str| dir.join(v).to_str().unwrap().to_string();
    xtask(&["release", "--board", "host", "--version", "1.3", "--out", &out("1.3")])?;
    let big = body(image_kib);
    xtask(&["release", "--board", "host", "--version", "1.4", "--body-size", &big, "--out", &out("1.4")])?;
    let small = body(256.min(image_kib));
    xtask(&["release", "--board", "host", "--version", "1.5", "--body-size", &small, "--out", &out("1.5")])?;
    let device = host_device_profile(&[keys::load_public_key(&key)?], "host-bench")?;
    let console = Console::start(Options {
        devices: (0..DEVICES).map(|i| console::device(PK, &format!("bench-{i:03}"), SECRET)).collect(),
        quiet: true,
        ..Default::default()
    })?;
    let b = Bench { dir: dir.clone(), device, console, next: AtomicU32::new(0) };
    let (host, mcu, saw) = (
        Config { block: 65536, window: 4 },
        Config { block: shared::ota::DEFAULT_BLOCK, window: shared::ota::DEFAULT_WINDOW },
        Config { block: 5120, window: 1 },
    );
    let port = b.console.mqtt_port;
    let (v14, v15) = (dir.join("1.4"), dir.join("1.5"));
    let image = std::fs::read(v14.join("firmware-1.4.bin"))?;
    let small_len = std::fs::metadata(v15.join("firmware-1.5.bin"))?.len();

    // Loopback: median of 5 interleaved runs (load on this shared machine hits all rows alike).
    let mut t: [Vec<Duration>; 4] = Default::default();
    for _ in 0..5 {
        t[0].push(b.download(&v14, port, host, false)?);
        t[1].push(b.download(&v14, port, mcu, false)?);
        t[2].push(b.download(&v14, port, saw, false)?);
        t[3].push(b.raw(&image)?);
    }
    let [ours, mcu_l, saw_l, raw] = t.map(median);
    let mib = |bytes: u64, d: Duration| bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64();
    let len = image.len() as u64;
    println!(
        "{} KiB image over MQTT stream from the console on 127.0.0.1 (median of 5 interleaved runs; job to \
         progress 100: received, CRC-checked, hashed, written, signature verified):",
        len / 1024
    );
    let mcu_name = format!(
        "MCU defaults: {} KiB blocks, window up to {}",
        shared::ota::DEFAULT_BLOCK / 1024,
        shared::ota::DEFAULT_WINDOW
    );
    for (name, d) in [
        ("host defaults: 64 KiB blocks, window up to 4", ours),
        (mcu_name.as_str(), mcu_l),
        ("stop-and-wait: 5 KiB blocks (C LinkSDK default)", saw_l),
        ("raw broker: 128 KiB PUBLISHes, front door and back", raw),
    ] {
        println!("  {name:<50} {:>9.1} ms {:>8.1} MiB/s", d.as_secs_f64() * 1e3, mib(len, d));
    }
    println!(
        "  host defaults vs stop-and-wait: {:.1}x; vs raw: {:.0}% of raw throughput",
        saw_l.as_secs_f64() / ours.as_secs_f64(),
        100.0 * raw.as_secs_f64() / ours.as_secs_f64()
    );

    // A round trip of 100 and 300 ms through the delay proxy: median of 3.
    for rtt in [100u64, 300] {
        let proxy = Proxy::start(port, Duration::from_millis(rtt / 2))?;
        let mut t: [Vec<Duration>; 4] = Default::default();
        for _ in 0..3 {
            t[0].push(b.download(&v15, proxy.port, mcu, false)?);
            t[1].push(b.download(&v15, proxy.port, saw, false)?);
            t[2].push(b.download(&v15, proxy.port, mcu, true)?);
            t[3].push(b.download(&v15, proxy.port, saw, true)?);
        }
        let [mcu_d, saw_d, mcu_one, saw_one] = t.map(median);
        println!("{} KiB image through a {rtt} ms round trip (median of 3):", small_len / 1024);
        for (name, d) in [
            (mcu_name.as_str(), mcu_d),
            ("stop-and-wait: 5 KiB blocks", saw_d),
            ("MCU defaults, one-at-a-time console", mcu_one),
            ("stop-and-wait, one-at-a-time console", saw_one),
        ] {
            println!(
                "  {name:<50} {:>9.1} s {:>8.1} KiB/s",
                d.as_secs_f64(),
                small_len as f64 / 1024.0 / d.as_secs_f64()
            );
        }
        println!(
            "  MCU defaults vs stop-and-wait: {:.1}x faster (goal at 300 ms: >= 3x); on the one-at-a-time \
             console: {:+.0}% of stop-and-wait's time (goal: within 10%)",
            saw_d.as_secs_f64() / mcu_d.as_secs_f64(),
            100.0 * (mcu_one.as_secs_f64() / saw_one.as_secs_f64() - 1.0)
        );
    }
    Ok(())
}
