//! `cargo xtask bench ota`: the real host device downloading a 1 MiB image over MQTT stream
//! through mosquitto on 127.0.0.1, our client against stop-and-wait, plus the broker's raw
//! throughput for the same bytes, in one run.

use crate::mini_console::{is_inform, Console};
use crate::proc::{free_port, xtask, Killed};
use crate::{build::host_device_profile, keys, tools};
use anyhow::{ensure, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Time from the push to progress 100 (every byte received, hashed, written and verified).
fn download(dir: &Path, device: &Path, port: u16, image: &[u8], block: u32, window: usize) -> Result<Duration> {
    let flash = dir.join("flash.bin");
    std::fs::copy(dir.join("1.3/factory.bin"), &flash)?;
    let config = dir.join("device.toml");
    std::fs::write(
        &config,
        format!(
            "product_key = \"{}\"\ndevice_name = \"{}\"\ndevice_secret = \"bench\"\nhost = \"127.0.0.1\"\nport = {port}\n\
             tls = false\nflash = \"{}\"\nblock_size = {block}\nwindow = {window}\n",
            crate::mini_console::PK,
            crate::mini_console::DN,
            flash.display()
        ),
    )?;
    let mut console = Console::new(port, image.to_vec());
    let log = std::fs::File::create(dir.join(format!("device-{block}-{window}.log")))?;
    let _d = Killed(
        Command::new(device)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", std::env::var("BENCH_DEVICE_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the host device")?,
    );
    console.run_until(Duration::from_secs(30), None, |t, v| is_inform(t, v, "1.3"));
    let t0 = Instant::now();
    console.push(None);
    console.run_until(Duration::from_secs(600), None, |t, v| t.contains("/progress/") && v["params"]["step"] == "100");
    Ok(t0.elapsed())
}

/// One PUBLISH of the image from one client to another through the broker.
fn raw(port: u16, image: &[u8]) -> Result<Duration> {
    static RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut o = rumqttc::MqttOptions::new(format!("bench-rx-{run}"), "127.0.0.1", port);
    o.set_max_packet_size(4 << 20, 4 << 20);
    let (rx_client, mut rx_conn) = rumqttc::Client::new(o, 16);
    let topic = format!("bench/raw/{run}");
    rx_client.subscribe(&topic, rumqttc::QoS::AtMostOnce)?;
    let (tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for ev in rx_conn.iter() {
            match ev {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let _ = tx.send((Instant::now(), p.payload.len()));
                    return;
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut o = rumqttc::MqttOptions::new(format!("bench-tx-{run}"), "127.0.0.1", port);
    o.set_max_packet_size(4 << 20, 4 << 20);
    let (tx_client, mut tx_conn) = rumqttc::Client::new(o, 16);
    std::thread::spawn(move || {
        for ev in tx_conn.iter() {
            if ev.is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    tx_client.publish(&topic, rumqttc::QoS::AtMostOnce, false, image.to_vec())?;
    let (t1, len) = done.recv_timeout(Duration::from_secs(60)).context("the raw message never arrived")?;
    let _ = (tx_client.disconnect(), rx_client.disconnect());
    ensure!(len == image.len(), "raw message of {len} bytes");
    Ok(t1 - t0)
}

pub fn run(image_kib: usize) -> Result<()> {
    let dir = crate::root().join("target/bench-ota");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let key = keys::dev_key();
    let body = (image_kib * 1024 - 0x200 - 200).to_string();
    xtask(&["release", "--board", "host", "--version", "1.3", "--out", dir.join("1.3").to_str().unwrap()])?;
    xtask(&[
        "release",
        "--board",
        "host",
        "--version",
        "1.4",
        "--body-size",
        &body,
        "--out",
        dir.join("1.4").to_str().unwrap(),
    ])?;
    let image = std::fs::read(dir.join("1.4/firmware-1.4.bin"))?;
    let device = host_device_profile(&[keys::load_public_key(&key)?], "host-bench")?;
    let port = free_port()?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"))?;
    let _broker = Killed(
        Command::new(tools::mosquitto()?).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?,
    );
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(t0.elapsed() < Duration::from_secs(10), "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    let mb = image.len() as f64 / (1024.0 * 1024.0);
    // Each row is the median of five runs, the rows interleaved so that load on this shared
    // machine hits them alike.
    let configs: [(&str, Option<(u32, usize)>); 4] = [
        ("ours, host defaults: 64 KiB blocks, 4 in flight", Some((65536, 4))),
        ("ours, MCU defaults: 4 KiB blocks, 4 in flight", Some((4096, 4))),
        ("stop-and-wait: 5 KiB blocks (C LinkSDK default)", Some((5120, 1))),
        ("raw broker throughput: one PUBLISH", None),
    ];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); configs.len()];
    for _ in 0..5 {
        for (i, (_, c)) in configs.iter().enumerate() {
            times[i].push(match c {
                Some((block, window)) => download(&dir, &device, port, &image, *block, *window)?,
                None => raw(port, &image)?,
            });
        }
    }
    let rows: Vec<(&str, Duration)> = configs
        .iter()
        .zip(&mut times)
        .map(|((name, _), t)| {
            t.sort();
            (*name, t[2])
        })
        .collect();
    println!(
        "{} KiB image over MQTT through mosquitto on 127.0.0.1, median of 5 interleaved runs (push to \
         progress 100: received, hashed, written to the flash file, signature verified):",
        image.len() / 1024
    );
    for (name, t) in &rows {
        println!("  {name:<48} {:>8.1} ms {:>8.1} MiB/s", t.as_secs_f64() * 1e3, mb / t.as_secs_f64());
    }
    let t = |i: usize| rows[i].1.as_secs_f64();
    let (ours, mcu, saw, raw) = (t(0), t(1), t(2), t(3));
    println!("  ours (host) vs stop-and-wait: {:.1}x faster (goal >= 5x); MCU defaults: {:.1}x", saw / ours, saw / mcu);
    println!("  ours (host) vs raw broker:    {:.0}% of raw throughput (goal >= 50%)", 100.0 * raw / ours);
    Ok(())
}
