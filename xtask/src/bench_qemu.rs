//! `cargo xtask bench qemu`: the real bootloader under `qemu-system-arm -icount shift=0`, where
//! one guest instruction is one nanosecond of virtual time. The bootloader reports its SysTick
//! count (25 MHz core clock, so one tick is 40 instructions) from `main` to the jump. Measured
//! side by side in one run: a boot with nothing to do (verify ACTIVE), the same with a 256 KiB
//! image, and an update of that image (verify DFU, swap, verify ACTIVE).
//!
//! `download`: the real app under QEMU (real time, no -icount) downloading a padded image through
//! the modem simulator from the local console, alternately over MQTT stream (5 KiB blocks on the
//! module's MQTT socket) and HTTPS (Range GET on its second socket, TLS in the module), each
//! download timed by the console from the push to the device's progress 100 (downloaded and
//! verified), in one run so the two share the machine's load.

use anyhow::{bail, Context, Result};
use machine::proc;
use memory_layouts::Board;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Instructions per SysTick tick under `-icount shift=0` (1 ns per instruction, 25 MHz clock).
const INSN_PER_TICK: u64 = 40;

pub fn run(image_kib: usize) -> Result<()> {
    let dir = crate::root().join("target/bench-qemu");
    std::fs::create_dir_all(&dir)?;
    let body = (image_kib * 1024).to_string();
    for (v, extra) in [("1.4", vec![]), ("1.5", vec!["--body-size", &body])] {
        let out = dir.join(v);
        let mut args = vec!["release", "--board", "qemu-an386", "--version", v, "--out", out.to_str().context("path")?];
        args.extend(extra);
        proc::xtask(&args)?;
    }
    let size = |v: &str| std::fs::metadata(dir.join(v).join(format!("firmware-{v}.bin"))).map(|m| m.len());
    let (small, big) = (size("1.4")?, size("1.5")?);
    let l = Board::QemuAn386.layout();
    let at = |r: memory_layouts::Region| (r.origin - l.flash.origin) as usize;

    // 1. Nothing to do: the app as built, in ACTIVE.
    let plain = std::fs::read(dir.join("1.4/factory.bin"))?;
    // 2. The same with the padded image.
    let padded = std::fs::read(dir.join("1.5/factory.bin"))?;
    // 3. An update: the small image runs, the padded one waits in DFU with the swap requested.
    let mut update = plain.clone();
    let image = std::fs::read(dir.join("1.5/firmware-1.5.bin"))?;
    update[at(l.dfu)..at(l.dfu) + image.len()].copy_from_slice(&image);
    update[at(l.state)..at(l.state) + 16].fill(0xF0); // embassy-boot's SWAP magic in STATE word 0

    let rows = [
        (format!("boot, nothing to do ({} KiB image)", small / 1024), plain),
        (format!("boot, nothing to do ({} KiB image)", big / 1024), padded),
        (format!("update: verify DFU, swap, verify ({} KiB image)", big / 1024), update),
    ];
    println!("qemu-an386 bootloader under -icount shift=0: instructions from main to the jump to the app");
    let mut results = Vec::new();
    for (name, flash) in &rows {
        let f = dir.join("flash.img");
        std::fs::write(&f, flash)?;
        let ticks = boot_ticks(&f)?;
        results.push(ticks * INSN_PER_TICK);
        println!("  {name:<52} {:>13} instructions", group(ticks * INSN_PER_TICK));
    }
    let per_kib = (results[1] as f64 - results[0] as f64) / ((big - small) as f64 / 1024.0);
    println!("  verify cost: {} instructions per KiB (difference of the first two rows)", group(per_kib as u64));
    Ok(())
}

/// Boots `flash` under -icount shift=0 and returns the ticks the bootloader reports.
fn boot_ticks(flash: &Path) -> Result<u64> {
    let line = run_to_line(flash, "boot: jump to ")?;
    let ticks = line.rsplit(", ").next().and_then(|t| t.strip_suffix(" ticks"));
    ticks.and_then(|t| t.parse().ok()).with_context(|| format!("no tick count in {line:?}"))
}

/// Runs `flash` under -icount shift=0 until the app prints a line starting with `prefix`.
pub fn run_to_line(flash: &Path, prefix: &str) -> Result<String> {
    let mut c: Command = testbed::qemu::command(flash, None)?;
    c.args(["-icount", "shift=0"]).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = proc::Killed(c.spawn().context("starting qemu-system-arm")?);
    let stdout = child.0.stdout.take().context("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    loop {
        let line = rx.recv_timeout(Duration::from_secs(300)).with_context(|| format!("QEMU printed no {prefix:?}"))?;
        if line.starts_with(prefix) {
            return Ok(line);
        }
        if line.starts_with("boot: ") && !line.starts_with("boot: jump to ") {
            bail!("the bootloader did not jump: {line}");
        }
    }
}

/// 1234567 -> "1,234,567".
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `bench qemu-download`: bytes/s over MQTT stream and over HTTPS, `rounds` downloads each.
pub fn download(image_kib: usize, rounds: usize) -> Result<()> {
    use ota_console::engine::{Protocol, TaskState};
    use testbed::{qemu, scenario};
    let dir = crate::root().join("target/bench-qemu-download");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let body = (image_kib * 1024).to_string();
    let padded: &[&str] = &["--body-size", &body];
    qemu::releases(&dir, &[("1.3", &[]), ("1.4", padded), ("1.5", padded)])?;
    // The line at its rate, without the realistic module's injected faults (a pdpdeact, a
    // restart, SEND FAIL): they are the tests' business, the bench measures the path.
    let rig = qemu::Rig::start_with(&dir, &dir.join("1.3"), true, testbed::modem_sim::SimOptions::default())?;
    rig.runs("1.3", Duration::from_secs(120))?;
    let mut seen: Vec<(Protocol, f64)> = Vec::new();
    println!("qemu-an386 app under QEMU, modem simulator, local console: {image_kib} KiB image, push to progress 100");
    for i in 0..2 * rounds {
        let target = ["1.4", "1.5"][i % 2];
        let protocol = [Protocol::Mqtt, Protocol::Https, Protocol::Https, Protocol::Mqtt][i % 4];
        let size = std::fs::metadata(dir.join(target).join(format!("firmware-{target}.bin")))?.len();
        let j = rig.console.add_job(scenario::job(&dir.join(target), protocol, false, Duration::from_secs(600))?)?;
        rig.console.wait(Duration::from_secs(600), "the download to end", |e| {
            e.device(&rig.id()).and_then(|d| d.tasks.get(&j)).is_some_and(|t| t.state.done())
        })?;
        let t = rig.task(j).context("no task")?;
        let (Some(ms), TaskState::Succeeded) = (t.downloaded_ms, t.state) else {
            bail!("download {} of {target} over {protocol:?} ended {:?} step {} {}", i + 1, t.state, t.step, t.desc);
        };
        let rate = size as f64 / (ms as f64 / 1e3);
        println!(
            "  {:>2}. {target} over {:<5} {size:>8} B in {:>6.2} s: {:>7.0} B/s",
            i + 1,
            format!("{protocol:?}"),
            ms as f64 / 1e3,
            rate
        );
        seen.push((protocol, rate));
        rig.runs(target, Duration::from_secs(120))?;
    }
    let median = |p: Protocol| {
        let mut v: Vec<f64> = seen.iter().filter(|s| s.0 == p).map(|s| s.1).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (m, h) = (median(Protocol::Mqtt), median(Protocol::Https));
    println!("  median: MQTT stream {m:.0} B/s, HTTPS {h:.0} B/s: HTTPS/MQTT = {:.2}", h / m);
    Ok(())
}
