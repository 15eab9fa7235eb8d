//! `cargo xtask bench qemu`: the real bootloader under `qemu-system-arm -icount shift=0`, where
//! one guest instruction is one nanosecond of virtual time. The bootloader reports its SysTick
//! count (25 MHz core clock, so one tick is 40 instructions) from `main` to the jump. Measured
//! side by side in one run: a boot with nothing to do (verify ACTIVE), the same with a 256 KiB
//! image, and an update of that image (verify DFU, swap, verify ACTIVE).

use crate::proc;
use anyhow::{bail, Context, Result};
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
    let mut c: Command = crate::qemu::command(flash, None)?;
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
        let line = rx.recv_timeout(Duration::from_secs(120)).context("QEMU printed no jump in 120 s")?;
        if let Some(rest) = line.strip_prefix("boot: jump to ") {
            let ticks = rest.rsplit(", ").next().and_then(|t| t.strip_suffix(" ticks"));
            return ticks.and_then(|t| t.parse().ok()).with_context(|| format!("no tick count in {line:?}"));
        }
        if line.starts_with("boot: ") {
            bail!("the bootloader did not jump: {line}");
        }
    }
}

/// 1234567 -> "1,234,567".
fn group(n: u64) -> String {
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
