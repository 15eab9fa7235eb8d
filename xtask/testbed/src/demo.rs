//! `cargo xtask demo`: the whole OTA loop on this machine, no account needed. With the host device
//! and the host releases built ([`crate::scenario`]), [`scenarios`] starts the local console and a
//! device on factory v1.3, and plays:
//!
//! - (a) v1.3 -> v1.4 over MQTT stream succeeds;
//! - (b) a tampered v1.5 (one flipped byte, digests recomputed by the console) over HTTP Range is
//!   refused with -3 and the device keeps running v1.4;
//! - (c) v1.6 fails its self-test and is rolled back to v1.4, reported as -1;
//! - (d) a power cut (`kill -9`) in the middle of a download of v1.7 resumes after the restart;
//! - (e) a device with a wrong secret is refused by the console and says so;
//! - (f) v1.7 -> v1.8 as a differential package over MQTT stream, rebuilt into DFU from the
//!   running image.
//!
//! It ends with a table (scenario, expected, observed) and fails if any row differs.
//! [`fleet`] (`--fleet N`) instead upgrades N devices in one job; [`qemu_scenarios`] (`--qemu`)
//! plays them with the real firmware under QEMU.

use crate::device::{Device, HostDevice};
use crate::qemu;
use crate::scenario::{delta_job, job, qemu_releases};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use machine::proc;
use ota_console::auth::DeviceId;
use ota_console::engine::{Engine, JobSpec, Package, Protocol, TaskRecord, TaskState};
use ota_console::{self as console, Console, Options};
use std::path::Path;
use std::time::{Duration, Instant};

const PK: &str = "a1DemoPk001";
const SECRET: &str = "demo-secret-0123456789abcdef";
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

fn bar(label: &str) -> ProgressBar {
    let b = ProgressBar::new(100);
    b.set_style(
        ProgressStyle::with_template("{prefix:<44} [{bar:30}] {pos:>3}% {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b.set_prefix(label.to_string());
    b
}

/// Follows a device's task on a progress bar until it is done; returns it.
fn follow(
    c: &Console,
    id: &DeviceId,
    job: u32,
    b: &ProgressBar,
    mut cut: impl FnMut(&TaskRecord) -> bool,
) -> Result<TaskRecord> {
    let t0 = Instant::now();
    loop {
        let task = c.with(|e| e.device(id).and_then(|d| d.tasks.get(&job)).cloned());
        if let Some(t) = &task {
            b.set_position(t.step.clamp(0, 100) as u64);
            b.set_message(format!("{:?} {}", t.state, t.desc).to_lowercase());
            if t.state.done() {
                b.finish();
                return Ok(t.clone());
            }
            if cut(t) {
                return Ok(t.clone());
            }
        }
        if t0.elapsed() > STEP_TIMEOUT {
            b.abandon_with_message("timed out");
            bail!("job {job}: no outcome after {} s (device log: see target/demo)", STEP_TIMEOUT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn outcome(t: &TaskRecord) -> String {
    match t.state {
        TaskState::Succeeded => "success".into(),
        TaskState::Failed => format!("step {}", t.step),
        s => format!("{s:?}"),
    }
}

/// The host scenarios (a)-(f) with the host device `bin` and the releases of
/// [`crate::scenario::host_releases`] in `dir`.
pub fn scenarios(dir: &Path, bin: &Path, t0: Instant) -> Result<()> {
    let console = Console::start(Options {
        devices: vec![console::device(PK, "demo-01", SECRET), console::device(PK, "demo-02", SECRET)],
        status_file: Some(dir.join("status.json")),
        quiet: true,
        ..Default::default()
    })?;
    let port = console.mqtt_port;
    let factory = dir.join("1.3/factory.bin");
    let mut dev = HostDevice::in_dir(dir, bin, (PK, "demo-01"), SECRET, port, &factory)?;
    let id = dev.id();
    dev.start()?;
    dev.runs(&console, "1.3", STEP_TIMEOUT)?;
    eprintln!("device demo-01 runs factory v1.3 (log: {})", dev.log().display());
    let connects = |c: &Console| c.with(|e| e.device(&id).map_or(0, |d| d.connects));
    let mut rows: Vec<(&str, String, String, String)> = Vec::new();

    // (a)
    let j = console.add_job(job(&dir.join("1.4"), Protocol::Mqtt, false, STEP_TIMEOUT)?)?;
    let t = follow(&console, &id, j, &bar("(a) v1.3 -> v1.4 over MQTT stream"), |_| false)?;
    let _ = dev.runs(&console, "1.4", STEP_TIMEOUT);
    let detail = format!("{} blocks in {:.2} s", t.blocks, t.elapsed_ms as f64 / 1e3);
    rows.push((
        "(a) v1.3 -> v1.4, MQTT stream",
        "success, runs 1.4".into(),
        format!("{}, runs {}", outcome(&t), dev.version(&console)),
        detail,
    ));

    // (b)
    let before = connects(&console);
    let j = console.add_job(job(&dir.join("1.5"), Protocol::Https, true, STEP_TIMEOUT)?)?;
    let t = follow(&console, &id, j, &bar("(b) tampered v1.5 over HTTP Range"), |_| false)?;
    // The device stays up on its image: no reset (no new connection), still online on 1.4.
    std::thread::sleep(Duration::from_millis(300));
    let stayed = if connects(&console) == before { "" } else { " after a reset" };
    let observed = format!("{}, runs {}{stayed}", outcome(&t), dev.version(&console));
    rows.push(("(b) tampered v1.5, HTTP Range", "step -3, runs 1.4".into(), observed, t.desc.clone()));

    // (c)
    let j = console.add_job(job(&dir.join("1.6"), Protocol::Mqtt, false, STEP_TIMEOUT)?)?;
    let t = follow(&console, &id, j, &bar("(c) v1.6, fails its self-test"), |_| false)?;
    let _ = dev.runs(&console, "1.4", STEP_TIMEOUT);
    rows.push((
        "(c) v1.6 fails its self-test",
        "step -1, runs 1.4".into(),
        format!("{}, runs {}", outcome(&t), dev.version(&console)),
        t.desc.clone(),
    ));

    // (d) Slow flash (10 ms per operation) so that the cut lands mid-download.
    dev.cut();
    dev.flash_delay_ms = Some(10);
    dev.start()?;
    dev.runs(&console, "1.4", STEP_TIMEOUT)?;
    let j = console.add_job(job(&dir.join("1.7"), Protocol::Mqtt, false, STEP_TIMEOUT)?)?;
    let b = bar("(d) v1.7, power cut mid-download");
    let at = follow(&console, &id, j, &b, |t| t.step >= 30)?;
    dev.cut();
    b.set_message(format!("power cut at step {}", at.step));
    std::thread::sleep(Duration::from_millis(500));
    dev.flash_delay_ms = None;
    dev.start()?;
    let t = follow(&console, &id, j, &b, |_| false)?;
    let _ = dev.runs(&console, "1.7", STEP_TIMEOUT);
    let starts = t.starts();
    let resumed = starts.len() >= 2 && starts[1..].iter().all(|&o| o > 0);
    let observed = format!(
        "{}, {}, runs {}",
        if resumed { "resumed above 0" } else { "restarted from 0" },
        outcome(&t),
        dev.version(&console)
    );
    let detail = format!(
        "cut at step {}; download starts at {:?} KiB",
        at.step,
        starts.iter().map(|o| o / 1024).collect::<Vec<_>>()
    );
    rows.push(("(d) power cut mid-download of v1.7", "resumed above 0, success, runs 1.7".into(), observed, detail));

    // (e)
    let mut bad = HostDevice::in_dir(dir, bin, (PK, "demo-02"), "not-the-secret", port, &factory)?;
    bad.start()?;
    let status = bad.wait_exit(Duration::from_secs(30))?;
    let log = bad.output();
    let said = log.lines().rev().find(|l| l.contains("refused")).unwrap_or("").to_string();
    let refused_by_console = console.with(|e| e.device(&bad.id()).is_some_and(|d| d.refused > 0 && !d.online));
    let observed = match (status, said.contains("bad username or password"), refused_by_console) {
        (Some(s), true, true) if !s.success() => "refused, device says why".to_string(),
        (s, says, c) => format!("exit {s:?}, device says why: {says}, console refused: {c}"),
    };
    let detail = said.split("]").last().unwrap_or("").trim().chars().take(90).collect();
    rows.push(("(e) wrong device secret", "refused, device says why".into(), observed, detail));

    // (f)
    let spec = delta_job(&dir.join("1.8"), "1.7", Protocol::Mqtt, STEP_TIMEOUT)?;
    let (patch, full) = (spec.package.bytes.len(), std::fs::metadata(dir.join("1.8/firmware-1.8.bin"))?.len());
    let j = console.add_job(spec)?;
    let t = follow(&console, &id, j, &bar("(f) v1.7 -> v1.8, delta over MQTT"), |_| false)?;
    let _ = dev.runs(&console, "1.8", STEP_TIMEOUT);
    rows.push((
        "(f) v1.7 -> v1.8, delta, MQTT stream",
        "success, runs 1.8".into(),
        format!("{}, runs {}", outcome(&t), dev.version(&console)),
        format!("patch {patch} of {full} bytes ({:.1} %), {} blocks", patch as f64 * 100.0 / full as f64, t.blocks),
    ));

    verdict(&rows, &console, dir, t0)
}

/// `demo --qemu`: (a)-(c) with the real bootloader and app under QEMU ((b) over HTTPS), (d) a
/// push larger than the board's MQTT buffer, and (f) the cellular module's own firmware upgraded
/// as module `modem`.
pub fn qemu_scenarios(dir: &Path, t0: Instant) -> Result<()> {
    eprintln!("building the qemu-an386 bootloader, app and releases (dev key) in {} ...", dir.display());
    qemu_releases(dir)?;
    eprintln!("built in {:.1} s", t0.elapsed().as_secs_f64());
    let rig = qemu::Rig::start(dir, &dir.join("1.3"), true)?;
    let id = rig.id();
    rig.runs("1.3", STEP_TIMEOUT)
        .with_context(|| format!("the QEMU device did not come online (log: {})", rig.dev.log().display()))?;
    eprintln!("QEMU device {} runs factory v1.3 (log: {})", id.1, rig.dev.log().display());
    let connects = |r: &qemu::Rig| r.console.with(|e| e.device(&id).map_or(0, |d| d.connects));
    let mut rows: Vec<(&str, String, String, String)> = Vec::new();

    // (a)
    let j = rig.console.add_job(job(&dir.join("1.4"), Protocol::Mqtt, false, STEP_TIMEOUT)?)?;
    let t = follow(&rig.console, &id, j, &bar("(a) v1.3 -> v1.4 over MQTT stream"), |_| false)?;
    let _ = rig.runs("1.4", STEP_TIMEOUT);
    rows.push((
        "(a) v1.3 -> v1.4, MQTT stream",
        "success, runs 1.4".into(),
        format!("{}, runs {}", outcome(&t), rig.version()),
        format!("{} blocks in {:.2} s", t.blocks, t.elapsed_ms as f64 / 1e3),
    ));

    // (b) Over HTTPS as Aliyun's console offers by default: a second socket of the module, TLS
    // done by the module with the CA the firmware uploaded, while the MQTT session stays up.
    let before = connects(&rig);
    let j = rig.console.add_job(job(&dir.join("1.5"), Protocol::Https, true, STEP_TIMEOUT)?)?;
    let t = follow(&rig.console, &id, j, &bar("(b) tampered v1.5 over HTTPS Range"), |_| false)?;
    std::thread::sleep(Duration::from_millis(500));
    let stayed = if connects(&rig) == before { "" } else { " after a reset" };
    rows.push((
        "(b) tampered v1.5, HTTPS Range",
        "step -3, runs 1.4".into(),
        format!("{}, runs {}{stayed}", outcome(&t), rig.version()),
        t.desc.clone(),
    ));

    // (c)
    let j = rig.console.add_job(job(&dir.join("1.6"), Protocol::Mqtt, false, STEP_TIMEOUT)?)?;
    let t = follow(&rig.console, &id, j, &bar("(c) v1.6, fails its self-test"), |_| false)?;
    let _ = rig.runs("1.4", STEP_TIMEOUT);
    rows.push((
        "(c) v1.6 fails its self-test",
        "step -1, runs 1.4".into(),
        format!("{}, runs {}", outcome(&t), rig.version()),
        t.desc.clone(),
    ));

    // (d) A push larger than the board's MQTT buffer (8 KiB + 512): batch tags and a udi as long
    // as Aliyun allows. Read, discarded, refused with a reason; no reconnect loop.
    let before = connects(&rig);
    let mut spec = job(&dir.join("1.5"), Protocol::Mqtt, false, STEP_TIMEOUT)?;
    spec.ext_data = (0..10).map(|i| (format!("tag{i}"), "v".repeat(1024))).collect();
    spec.ext_data.push(("_package_udi".into(), "u".repeat(4096)));
    let j = rig.console.add_job(spec)?;
    let t = follow(&rig.console, &id, j, &bar("(d) v1.5 with 14 KB of extData"), |_| false)?;
    std::thread::sleep(Duration::from_millis(500));
    let stayed = if connects(&rig) == before { "" } else { " after a reconnect" };
    let why = match t.failure {
        Some(shared::ota::FailureKind::MessageTooLarge) => "too large",
        _ => "other",
    };
    rows.push((
        "(d) push over the MQTT buffer",
        "step -1 too large, runs 1.4".into(),
        format!("{} {why}, runs {}{stayed}", outcome(&t), rig.version()),
        t.desc.clone(),
    ));

    // (f) v1.7 (the whole image), then v1.8 as a differential package from it: the app rebuilds
    // the image into DFU from the one it runs, as it receives the patch.
    let j = rig.console.add_job(job(&dir.join("1.7"), Protocol::Mqtt, false, STEP_TIMEOUT)?)?;
    follow(&rig.console, &id, j, &bar("(f) v1.4 -> v1.7 over MQTT stream"), |_| false)?;
    rig.runs("1.7", STEP_TIMEOUT)?;
    let spec = delta_job(&dir.join("1.8"), "1.7", Protocol::Mqtt, STEP_TIMEOUT)?;
    let (patch, full) = (spec.package.bytes.len(), std::fs::metadata(dir.join("1.8/firmware-1.8.bin"))?.len());
    let j = rig.console.add_job(spec)?;
    let t = follow(&rig.console, &id, j, &bar("(f) v1.7 -> v1.8, delta over MQTT"), |_| false)?;
    let _ = rig.runs("1.8", STEP_TIMEOUT);
    rows.push((
        "(f) v1.7 -> v1.8, delta, MQTT stream",
        "success, runs 1.8".into(),
        format!("{}, runs {}", outcome(&t), rig.version()),
        format!(
            "patch {patch} of {full} bytes ({:.1} %), {:.2} s",
            patch as f64 * 100.0 / full as f64,
            t.elapsed_ms as f64 / 1e3
        ),
    ));

    // (g) The cellular module's own firmware, as Aliyun module `modem`: the module downloads the
    // package itself (AT+QFOTADL), restarts on the new version; the MCU app is not touched.
    let modem_version =
        |r: &qemu::Rig| r.console.with(|e| e.device(&id).and_then(|d| d.versions.get("modem").cloned()));
    let (from, to) = (crate::modem_sim::SimOptions::default().qgmr, "EC200UCNAAR03A01M09");
    let mut spec = JobSpec::new(
        Package::new(&format!("{to}.bin"), "modem", to, crate::modem_sim::fota_package(to, &[0x5A; 200 * 1024])),
        Protocol::Https,
    );
    spec.from = vec![from.clone()];
    spec.timeout = Some(STEP_TIMEOUT);
    let resets = rig.dev.output().matches("boot: ").count();
    let j = rig.console.add_job(spec)?;
    let t = follow(&rig.console, &id, j, &bar("(g) the module's firmware as module modem"), |_| false)?;
    let _ = rig.console.wait(STEP_TIMEOUT, "the module to inform its new version", |e| {
        e.device(&id).and_then(|d| d.versions.get("modem")).is_some_and(|v| v == to)
    });
    let mcu = if rig.dev.output().matches("boot: ").count() == resets { "app not reset" } else { "app reset" };
    rows.push((
        "(g) module firmware, module modem",
        format!("success, modem {to}, app not reset"),
        format!("{}, modem {}, {mcu}", outcome(&t), modem_version(&rig).unwrap_or_else(|| "?".into())),
        format!("{from} -> {to}, {} s", t.elapsed_ms / 1000),
    ));

    // What the bootloader said on each power-on.
    let boots: Vec<String> =
        rig.dev.output().lines().filter(|l| l.starts_with("boot: ")).map(|l| l[6..].to_string()).collect();
    eprintln!("bootloader, every power-on:\n  {}", boots.join("\n  "));
    verdict(&rows, &rig.console, dir, t0)
}

/// Prints the table; fails if a row differs from what was expected.
fn verdict(rows: &[(&str, String, String, String)], console: &Console, dir: &Path, t0: Instant) -> Result<()> {
    let w = |col: fn(&(&str, String, String, String)) -> usize, head: &str| {
        rows.iter().map(col).chain([head.len()]).max().unwrap_or(0)
    };
    let (wn, we, wo) = (w(|r| r.0.len(), "scenario"), w(|r| r.1.len(), "expected"), w(|r| r.2.len(), "observed"));
    println!("\n{:<wn$} {:<we$} {:<wo$} detail", "scenario", "expected", "observed");
    let mut failed = 0;
    for (name, expected, observed, detail) in rows {
        let mark = if expected == observed { "" } else { "  <-- MISMATCH" };
        failed += usize::from(expected != observed);
        println!("{name:<wn$} {expected:<we$} {observed:<wo$} {detail}{mark}");
    }
    print!("\n{}", console::table(&console.status()));
    println!(
        "demo: {} of {} scenarios as expected in {:.1} s (logs and status.json in {})",
        rows.len() - failed,
        rows.len(),
        t0.elapsed().as_secs_f64(),
        dir.display()
    );
    if failed > 0 {
        bail!("{failed} scenario(s) differ from what was expected");
    }
    Ok(())
}

/// `--fleet N`: N devices on v1.3, one job to v1.4 (the host device `bin`, the releases of
/// [`crate::scenario::host_releases`] in `dir`).
pub fn fleet(dir: &Path, bin: &Path, n: usize) -> Result<()> {
    anyhow::ensure!(n > 0, "--fleet needs at least one device");
    let limit = proc::raise_fd_limit()?;
    anyhow::ensure!(limit as usize > 3 * n + 100, "the open-file limit ({limit}) is too low for {n} devices");
    let names: Vec<String> = (1..=n).map(|i| format!("fleet-{i:04}")).collect();
    let console = Console::start(Options {
        devices: names.iter().map(|d| console::device(PK, d, SECRET)).collect(),
        status_file: Some(dir.join("status.json")),
        quiet: true,
        ..Default::default()
    })?;
    let factory = dir.join("1.3/factory.bin");
    let t0 = Instant::now();
    let mut devices = Vec::new();
    let b = bar(&format!("starting {n} devices on v1.3"));
    for name in &names {
        let mut d = HostDevice::in_dir(dir, bin, (PK, name), SECRET, console.mqtt_port, &factory)?;
        d.log_level = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
        d.start()?;
        devices.push(d);
        b.set_position((devices.len() * 100 / n) as u64);
    }
    b.finish();
    let ids: Vec<DeviceId> = devices.iter().map(|d| d.id()).collect();
    let online = |e: &Engine| {
        ids.iter().filter(|id| e.device(id).is_some_and(|d| d.online && d.version() == Some("1.3"))).count()
    };
    let boot_timeout = Duration::from_secs(60 + n as u64 / 5);
    console.wait(boot_timeout, &format!("{n} devices to come online on v1.3"), |e| online(e) == n)?;
    let booted = t0.elapsed();
    eprintln!("{n} devices online on v1.3 after {:.1} s", booted.as_secs_f64());

    let mut spec = job(&dir.join("1.4"), Protocol::Mqtt, false, STEP_TIMEOUT)?;
    spec.timeout = Some(Duration::from_secs(120 + n as u64 / 2));
    let t1 = Instant::now();
    let j = console.add_job(spec.clone())?;
    let b = bar(&format!("fleet of {n}: v1.3 -> v1.4"));
    let done = |e: &Engine| {
        ids.iter().filter(|id| e.device(id).and_then(|d| d.tasks.get(&j)).is_some_and(|t| t.state.done())).count()
    };
    loop {
        let k = console.with(done);
        b.set_position((k * 100 / n) as u64);
        b.set_message(format!("{k}/{n} done"));
        if k == n {
            break;
        }
        if t1.elapsed() > spec.timeout.unwrap_or_default() + Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    b.finish();
    let wall = t1.elapsed();
    let status = console.status();
    let mut times = Vec::new();
    let mut lines = Vec::new();
    let mut failed = 0;
    for d in status.devices.iter() {
        let t = d.tasks.get(&j);
        let ok = t.is_some_and(|t| t.state == TaskState::Succeeded) && d.version() == Some("1.4");
        failed += usize::from(!ok);
        if let Some(t) = t.filter(|_| ok) {
            times.push(t.elapsed_ms);
        }
        lines.push(format!(
            "{:<12} {:<8} {:<10} {:>8} ms  {}",
            d.device_name,
            if ok { "upgraded" } else { "FAILED" },
            d.version().unwrap_or("?"),
            t.map_or(0, |t| t.elapsed_ms),
            t.map_or(String::new(), |t| format!("{:?} step {} {}", t.state, t.step, t.desc)),
        ));
    }
    std::fs::write(dir.join("fleet.txt"), lines.join("\n") + "\n")?;
    if n <= 20 {
        println!("\n{}", lines.join("\n"));
    } else {
        println!("\nper-device outcomes: {}", dir.join("fleet.txt").display());
        for l in lines.iter().filter(|l| l.contains("FAILED")).take(10) {
            println!("{l}");
        }
    }
    times.sort();
    let pct = |p: usize| times.get((times.len().saturating_sub(1)) * p / 100).copied().unwrap_or(0) as f64 / 1e3;
    let c = &status.counts;
    println!(
        "\nfleet of {n}: {} upgraded, {failed} failed; boot to all online {:.1} s; job wall time {:.1} s; per device push -> v1.4 informed: min {:.1} s, median {:.1} s, p95 {:.1} s, max {:.1} s",
        n - failed,
        booted.as_secs_f64(),
        wall.as_secs_f64(),
        pct(0),
        pct(50),
        pct(95),
        pct(100)
    );
    println!(
        "broker messages: {} connects, {} inform, {} progress, {} pushes, {} firmware/get (+{} replies), {} block requests, {} block replies ({:.1} MiB)",
        c.connects,
        c.inform,
        c.progress,
        c.pushes,
        c.firmware_get,
        c.get_replies,
        c.download_requests,
        c.download_replies,
        c.download_bytes as f64 / (1024.0 * 1024.0)
    );
    drop(devices);
    if failed > 0 {
        bail!("{failed} of {n} devices were not upgraded (see {})", dir.join("fleet.txt").display());
    }
    Ok(())
}
