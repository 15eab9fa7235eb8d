//! `cargo xtask bench delta`: the size of a differential package against the full image, for
//! our patch as `release --delta-from` makes it (the smallest of an LZMA patch over the remapped
//! base and detools patches: ARM-Thumb filter, bsdiff, heatshrink parsed optimally),
//! detools' own `create_patch` (heatshrink at its defaults; lzma for reference) and bsdiff4 (the
//! classic bsdiff with bzip2), side by side on the same pairs of signed images:
//!
//! - (i) a version bump only: the qemu-an386 app released as 1.7 and as 1.8;
//! - (ii) the qemu-an386 app without and with one feature (`self-test-fails`);
//! - (iii) the nrf52840-dk and qemu-an386 apps built from two commits of this repository's
//!   history (checked out as git worktrees under target/bench-delta, built once, cached).
//!
//! Every patch of ours is applied back (`shared::delta::Patcher` over a flash model) and must
//! rebuild the target byte for byte. Then the apply cost on the device: the qemu-an386 app built
//! with `delta-bench` applies each patch (base and patch placed in DFU) under QEMU
//! `-icount shift=0`, where one SysTick tick (25 MHz) is 40 instructions: instructions per KiB of
//! rebuilt image.

use crate::{package, tools};
use anyhow::{bail, ensure, Context, Result};
use machine::proc;
use memory_layouts::Board;
use shared::delta::{self, Compression};
use std::path::{Path, PathBuf};
use std::process::Command;
use testbed::qemu;

/// Two commits of this repository a week apart (the pair the issue that asked for deltas
/// measured: 117,946 -> 120,970 bytes for the nrf52840-dk app).
pub const HISTORY: (&str, &str) = ("d8f026e", "b8f9cd6");

/// A pair of signed images.
pub struct Pair {
    pub name: String,
    pub board: Board,
    pub base: Vec<u8>,
    pub target: Vec<u8>,
}

/// Our patch from `base` to `target` (images signed with the development key), as `release
/// --delta-from` makes it, and its options.
fn ours(p: &Pair) -> Result<(Vec<u8>, delta::CreateOptions)> {
    let dev = crate::keys::load_public_key(&crate::keys::dev_key())?;
    let (id, _) = package::base_id(&p.base, &[dev])?;
    package::make_delta(&p.base, &id, &p.target, p.board)
}

pub fn run(sweep: bool) -> Result<()> {
    let dir = crate::root().join("target/bench-delta");
    std::fs::create_dir_all(&dir)?;
    let pairs = pairs(&dir)?;
    if sweep {
        return self::sweep(&pairs);
    }
    let detools = tools::detools()?;
    let python = tools::bsdiff4_python()?;
    println!(
        "{:<46} {:>7} {:>15} {:>15} {:>15} {:>15}  ours: kind",
        "pair (signed images)", "full", "ours", "detools hs", "detools lzma", "bsdiff4"
    );
    let mut worst: f64 = 0.0;
    for p in &pairs {
        let (mine, opts) = ours(p)?;
        let (a, b) = (dir.join("base.bin"), dir.join("target.bin"));
        std::fs::write(&a, &p.base)?;
        std::fs::write(&b, &p.target)?;
        let det = |compression: &str| -> Result<usize> {
            let out = dir.join(format!("detools-{compression}.patch"));
            proc::run_ok(
                Command::new(&detools).args(["create_patch", "--compression", compression]).arg(&a).arg(&b).arg(&out),
            )?;
            Ok(std::fs::metadata(&out)?.len() as usize)
        };
        let (hs, lzma) = (det("heatshrink")?, det("lzma")?);
        let bs = dir.join("bsdiff4.patch");
        let script = "import sys, bsdiff4; bsdiff4.file_diff(*sys.argv[1:])";
        proc::run_ok(Command::new(&python).args(["-c", script]).arg(&a).arg(&b).arg(&bs))?;
        let bs = std::fs::metadata(&bs)?.len() as usize;
        let full = p.target.len();
        let pct = |n: usize| format!("{n} ({:.1} %)", n as f64 * 100.0 / full as f64);
        let how = kind(&opts);
        println!(
            "{:<46} {:>7} {:>15} {:>15} {:>15} {:>15}  {how}",
            p.name,
            full,
            pct(mine.len()),
            pct(hs),
            pct(lzma),
            pct(bs)
        );
        worst = worst.max(mine.len() as f64 / hs as f64);
    }
    println!("ours / detools heatshrink: at most {worst:.2} over {} pairs", pairs.len());
    ensure!(worst < 1.0, "a patch of ours is not smaller than detools heatshrink's");
    apply_cost(&dir, &pairs)
}

/// What kind of patch of ours it is.
fn kind(opts: &delta::CreateOptions) -> String {
    match (opts.filter, opts.compression) {
        (_, Compression::Heatshrink { window, lookahead }) => format!("{:?}, {window}/{lookahead}", opts.filter),
        (delta::Filter::Remap { shifts, .. }, _) => format!("LZMA, remap of {shifts} shifts"),
        (f, c) => format!("{f:?}, {c:?}"),
    }
}

/// Each pair's patch applied by the qemu-an386 app under `-icount shift=0`.
fn apply_cost(dir: &Path, pairs: &[Pair]) -> Result<()> {
    let app = dir.join("bench-app");
    let out = app.to_str().context("non-UTF-8 path")?;
    proc::xtask(&["release", "--board", "qemu-an386", "--version", "1.0", "--delta-bench", "--out", out])?;
    let factory = std::fs::read(app.join("factory.bin"))?;
    let l = memory_layouts::Board::QemuAn386.layout();
    let dfu = (l.dfu.origin - l.flash.origin) as usize;
    println!("\napplying our patches on qemu-an386 under -icount shift=0 (1 instruction = 1 guest ns; DFU written through the updater)");
    for p in pairs {
        let (patch, opts) = ours(p)?;
        ensure!(
            p.base.len() <= 250 * 1024 && patch.len() <= 250 * 1024,
            "{}: too large for the bench's DFU layout",
            p.name
        );
        let mut flash = factory.clone();
        for (at, bytes) in [(512 * 1024, &p.base), (768 * 1024, &patch)] {
            let at = dfu + at;
            flash[at..at + 4].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
            flash[at + 4..at + 4 + bytes.len()].copy_from_slice(bytes);
        }
        let f = dir.join("bench-flash.img");
        std::fs::write(&f, &flash)?;
        let line = crate::bench_qemu::run_to_line(&f, "delta-bench: ")?;
        let (n, ticks) = parse_bench(&line).with_context(|| format!("{}: {line}", p.name))?;
        ensure!(n == p.target.len(), "{}: the device rebuilt {n} bytes, not {}", p.name, p.target.len());
        let insn = ticks * 40; // 25 MHz SysTick, 1 ns per instruction
        let per_kib = insn as f64 / (n as f64 / 1024.0);
        println!(
            "{:<46} {:>7} B from a {:>6} B patch ({}): {:>11} instructions, {:>9} per KiB rebuilt",
            p.name,
            n,
            patch.len(),
            kind(&opts),
            crate::bench_qemu::group(insn),
            crate::bench_qemu::group(per_kib as u64)
        );
    }
    Ok(())
}

/// "delta-bench: N bytes rebuilt from a P-byte patch in T ticks" -> (N, T).
fn parse_bench(line: &str) -> Option<(usize, u64)> {
    let rest = line.strip_prefix("delta-bench: ")?;
    let n = rest.split(' ').next()?.parse().ok()?;
    let ticks = rest.rsplit(" in ").next()?.strip_suffix(" ticks")?.parse().ok()?;
    Some((n, ticks))
}

/// Our patch's size for each filter and each heatshrink window and lookahead a device takes,
/// summed over the pairs.
fn sweep(pairs: &[Pair]) -> Result<()> {
    use delta::{CreateOptions, Filter};
    let dev = crate::keys::load_public_key(&crate::keys::dev_key())?;
    println!("sum over {} pairs of our patch's bytes (heatshrink window bits x lookahead bits)", pairs.len());
    for filter in [Filter::None, Filter::Thumb] {
        for window in 8..=delta::MAX_WINDOW_BITS {
            let mut row = format!("filter {filter:<5?} window {window:>2}:");
            for lookahead in 4..window {
                let opts = CreateOptions { filter, compression: Compression::Heatshrink { window, lookahead } };
                let mut n = 0;
                for p in pairs {
                    let (id, _) = package::base_id(&p.base, &[dev])?;
                    n += delta::create(&p.base, &p.target, Some(&id), &opts).len();
                }
                row += &format!("  l{lookahead} {n:>7}");
            }
            println!("{row}");
        }
    }
    Ok(())
}

/// The pairs, building what is not cached.
pub fn pairs(dir: &Path) -> Result<Vec<Pair>> {
    let rel = dir.join("releases");
    let read = |v: &str| std::fs::read(rel.join(v).join(format!("firmware-{v}.bin")));
    let mut out = Vec::new();
    qemu::releases(&rel, &[("1.7", &[]), ("1.8", &[])])?;
    let failing = rel.join("1.8-failing");
    proc::xtask(&[
        "release",
        "--board",
        "qemu-an386",
        "--version",
        "1.8",
        "--failing-self-test",
        "--download-ca",
        ota_console::tls::dev()?.ca.to_str().context("path")?,
        "--out",
        failing.to_str().context("path")?,
    ])?;
    out.push(Pair {
        name: "(i) qemu-an386 1.7 -> 1.8, version only".into(),
        board: Board::QemuAn386,
        base: read("1.7")?,
        target: read("1.8")?,
    });
    out.push(Pair {
        name: "(ii) qemu-an386 1.8 -> 1.8 + self-test-fails".into(),
        board: Board::QemuAn386,
        base: read("1.8")?,
        target: std::fs::read(failing.join("firmware-1.8.bin"))?,
    });
    let (from, to) = HISTORY;
    for board in [Board::Nrf52840Dk, Board::QemuAn386] {
        let name = board.name();
        match (historic(dir, from, name), historic(dir, to, name)) {
            (Ok(base), Ok(target)) => {
                out.push(Pair { name: format!("(iii) {name} {from} -> {to}"), board, base, target })
            }
            (Err(e), _) | (_, Err(e)) => eprintln!("(iii) {name}: skipped: {e:#}"),
        }
    }
    Ok(out)
}

/// The signed app image of `board` built at `commit` (release 1.0, development key), cached.
fn historic(dir: &Path, commit: &str, board: &str) -> Result<Vec<u8>> {
    let cached = dir.join("history").join(commit).join(board).join("firmware-1.0.bin");
    if let Ok(b) = std::fs::read(&cached) {
        return Ok(b);
    }
    let wt: PathBuf = dir.join("worktrees").join(commit);
    if !wt.join("Cargo.toml").exists() {
        let st = Command::new("git")
            .current_dir(crate::root())
            .args(["worktree", "add", "--force", "--detach"])
            .arg(&wt)
            .arg(commit)
            .status()
            .context("running git")?;
        if !st.success() {
            bail!("git worktree add {commit} failed (a shallow clone has no history: git fetch --unshallow)");
        }
    }
    eprintln!("building the {board} app at {commit} (cached in {})", cached.display());
    let out = cached.parent().context("path")?;
    let st = Command::new(env!("CARGO"))
        .current_dir(&wt)
        .args(["xtask", "release", "--board", board, "--version", "1.0", "--out"])
        .arg(out)
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .context("running cargo xtask at the old commit")?;
    ensure!(st.success(), "cargo xtask release at {commit} failed");
    Ok(std::fs::read(&cached)?)
}
