//! `cargo xtask qemu --power-cuts N`: the real firmware under QEMU, `kill -9`ed at seeded random
//! moments of an update: during the download, around the mark (last block, final verify, STATE
//! written), during the bootloader's swap, around the confirm, and during a revert. Cycles take
//! turns at how the update comes: HTTPS (Range over the module's second socket), MQTT stream, and
//! a differential package over MQTT stream (a patch from the running 1.4 or 1.5, rebuilt into DFU
//! from ACTIVE); the mark phase never over HTTPS (its anchor is the last block request), the
//! failing release never as a patch. QEMU's flash is a shared file mapping, so a `kill -9` keeps
//! exactly what was written: a power cut.
//!
//! After each cut QEMU starts again on the same flash and the cycle runs to its end. Then:
//! - QEMU never stopped by itself (the bootloader halts QEMU when no image is bootable), and every
//!   power-on jumped to an image (`boot: jump to ...`);
//! - the device ends on the right version: the target of a good release (also when the cut fell
//!   after its swap and before its confirm: an unconfirmed image gets the board's boot attempts,
//!   and one cut uses only one), the version it ran before for the release that fails its
//!   self-test (it asks for the revert at once);
//! - what it reported is true: success for the good release, a revert (`FailureKind::Reverted`,
//!   step -1) for the failing one, and
//!   the version it informs is the one the bootloader last jumped to.

use crate::device::Device;
use crate::qemu::{self, Rig};
use crate::scenario::{delta_job, job, QEMU_RELEASES};
use anyhow::{bail, ensure, Result};
use ota_console::engine::{Protocol, TaskState};
use shared::ota::FailureKind;
use shared::sim::Rng;
use std::path::Path;
use std::time::{Duration, Instant};

/// Where in an update a power cut lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CutPoint {
    Download,
    Mark,
    Swap,
    Confirm,
    Revert,
}

const CUT_POINTS: [CutPoint; 5] =
    [CutPoint::Download, CutPoint::Mark, CutPoint::Swap, CutPoint::Confirm, CutPoint::Revert];

/// How the update of cycle `i` comes (cycle `i` cuts at `CUT_POINTS[i % 5]`): every way in every
/// phase it can take within 15 cycles, and the patch in download, mark, swap and confirm within
/// the first 10 (CI's sample). The mark phase never over HTTPS (its anchor is the last block
/// request), the revert phase's release never as a patch (a patch is of a good release).
const VIAS: [Via; 15] = [
    Via::Https, // download
    Via::Delta, // mark
    Via::Mqtt,  // swap
    Via::Delta, // confirm
    Via::Https, // revert
    Via::Delta, // download
    Via::Mqtt,  // mark
    Via::Delta, // swap
    Via::Https, // confirm
    Via::Mqtt,  // revert
    Via::Mqtt,  // download
    Via::Mqtt,  // mark
    Via::Https, // swap
    Via::Mqtt,  // confirm
    Via::Https, // revert
];

/// How long one cycle may take before the campaign gives up (slow QEMU included).
const CYCLE_TIMEOUT: Duration = Duration::from_secs(300);

/// How a cycle's update comes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Https,
    Mqtt,
    /// A differential package over MQTT stream.
    Delta,
}

struct Cycle {
    point: CutPoint,
    via: Via,
    target: &'static str,
    delay_ms: u64,
    /// The device's last line before the cut.
    cut_after: String,
    outcome: String,
    took: Duration,
}

/// Runs `cuts` cycles from `seed` in `dir` (the releases of `demo --qemu` are built there).
pub fn campaign(dir: &Path, cuts: usize, seed: u64) -> Result<()> {
    let t0 = Instant::now();
    eprintln!("power-cut campaign: {cuts} cuts, seed {seed} (replay with --seed {seed})");
    qemu::releases(dir, QEMU_RELEASES)?;
    // The good releases as patches from each other (the images are the same as in 1.4 and 1.5).
    qemu::delta_release(dir, "1.5", "1.5-from-1.4", "1.4")?;
    qemu::delta_release(dir, "1.4", "1.4-from-1.5", "1.5")?;
    let rig = Rig::start(dir, &dir.join("1.3"), true)?;
    rig.runs("1.3", Duration::from_secs(120))?;
    let mut rig = rig;
    let mut rng = Rng::new(seed);
    let mut current = "1.3";
    let mut done = Vec::new();
    for i in 0..cuts {
        let point = CUT_POINTS[i % CUT_POINTS.len()];
        let good = if current == "1.4" { "1.5" } else { "1.4" };
        let via = match VIAS[i % VIAS.len()] {
            Via::Delta if !matches!(current, "1.4" | "1.5") => Via::Mqtt,
            v => v,
        };
        // The revert phase needs the release that fails its self-test; the download and mark
        // phases take it now and then too (never as a patch: that is a good release).
        let failing = point == CutPoint::Revert
            || (via != Via::Delta && matches!(point, CutPoint::Download | CutPoint::Mark) && rng.below(4) == 0);
        let target = if failing { "1.6" } else { good };
        let spec = match via {
            Via::Https => job(&dir.join(target), Protocol::Https, false, CYCLE_TIMEOUT)?,
            Via::Mqtt => job(&dir.join(target), Protocol::Mqtt, false, CYCLE_TIMEOUT)?,
            Via::Delta => {
                let release = dir.join(format!("{target}-from-{current}"));
                delta_job(&release, current, Protocol::Mqtt, CYCLE_TIMEOUT)?
            }
        };
        let size = spec.package.bytes.len() as u64;
        let block = shared::ota::DEFAULT_BLOCK as u64;
        let last_block = (size - 1) / block * block;
        let (anchor, max_ms) = match point {
            // A patch of a version bump is a few hundred bytes: the image is rebuilt within a
            // second or two of its start.
            CutPoint::Download if via == Via::Delta => ("patch into DFU".to_string(), 1500),
            CutPoint::Download => ("download into DFU".to_string(), 9000),
            CutPoint::Mark => (format!("\"offset\":{last_block}}}"), 600),
            // The swap takes tens of ms; the new image's start, modem bring-up, self-test and
            // confirm follow within a few seconds.
            CutPoint::Swap => ("app: reset".to_string(), 60),
            CutPoint::Confirm => (format!("boot: jump to {target} "), 3000),
            CutPoint::Revert => ("self-test: FAIL".to_string(), 150),
        };
        let delay_ms = rng.below(max_ms + 1);
        let from = rig.dev.output().len();
        let started = Instant::now();
        let j = rig.console.add_job(spec)?;
        rig.dev.wait_for(from, &anchor, Duration::from_secs(120))?;
        std::thread::sleep(Duration::from_millis(delay_ms));
        rig.dev.cut();
        let out = rig.dev.output();
        let cut_after = out.lines().last().unwrap_or("").to_string();
        let cut_at = out.len();
        std::thread::sleep(Duration::from_millis(100));
        rig.dev.start()?;
        let (runs, outcome) = settle(&mut rig, j, current, target, !failing, from, cut_at)?;
        let c = Cycle { point, via, target, delay_ms, cut_after, outcome, took: started.elapsed() };
        eprintln!(
            "cut {:>3}/{cuts} {:<8?} {:<5?} -> {:<3} +{:>4} ms after {:?}: {} ({:.1} s)",
            i + 1,
            c.point,
            c.via,
            c.target,
            c.delay_ms,
            anchor,
            c.outcome,
            c.took.as_secs_f64()
        );
        done.push(c);
        current = runs;
    }
    println!("\npower cuts under QEMU (seed {seed}): where each cut landed (the device's last line before it)");
    for (i, c) in done.iter().enumerate() {
        let line: String = c.cut_after.chars().take(70).collect();
        println!(
            "{:>3} {:<8?} {:<5?} {:<3} +{:>4} ms  {:<70}  {}",
            i + 1,
            c.point,
            c.via,
            c.target,
            c.delay_ms,
            line,
            c.outcome
        );
    }
    for p in CUT_POINTS {
        let n = |via| done.iter().filter(|c| c.point == p && c.via == via).count();
        println!(
            "  {p:?}: {} cuts over MQTT, {} over HTTPS, {} of a differential package",
            n(Via::Mqtt),
            n(Via::Https),
            n(Via::Delta)
        );
    }
    println!(
        "power-cut campaign: {} cuts, every one recovered: valid image booted, right version, true report ({:.0} s)",
        done.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Waits for the job's outcome after the restart and checks it against what the device did;
/// returns the version it runs and a short description.
fn settle(
    rig: &mut Rig,
    job: u32,
    before: &'static str,
    target: &'static str,
    good: bool,
    from: usize,
    cut_at: usize,
) -> Result<(&'static str, String)> {
    let t0 = Instant::now();
    let task = loop {
        if !rig.dev.running() {
            bail!("QEMU stopped by itself (no bootable image?); its output:\n{}", tail(&rig.dev.output()[from..]));
        }
        if let Some(t) = rig.task(job).filter(|t| t.state.done()) {
            break t;
        }
        if t0.elapsed() > CYCLE_TIMEOUT {
            bail!(
                "job {job}: no outcome in {} s; device output:\n{}",
                CYCLE_TIMEOUT.as_secs(),
                tail(&rig.dev.output()[from..])
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = rig.dev.output();
    // Where the cut fell, for the report: a good release swapped in but not yet confirmed then
    // is started again (a second of its boot attempts) and confirms.
    let unconfirmed_at_cut = {
        let pre = &out[from..cut_at];
        pre.rfind("marked for install").is_some_and(|at| !pre[at..].contains("confirm: done"))
    };
    // The device's reason, read back from its report: never prose or log lines.
    let reverted = task.state == TaskState::Failed && task.failure == Some(FailureKind::Reverted);
    let (runs, reported) = match (good, task.state, reverted) {
        (true, TaskState::Succeeded, _) if unconfirmed_at_cut => (target, "success (cut before its confirm)"),
        (true, TaskState::Succeeded, _) => (target, "success"),
        (false, TaskState::Failed, true) => (before, "reverted"),
        _ => bail!(
            "job {job} ({target}) ended {:?} step {} ({}); device output:\n{}",
            task.state,
            task.step,
            task.desc,
            tail(&out[from..])
        ),
    };
    rig.runs(runs, Duration::from_secs(120))?;
    let out = rig.dev.output();
    let jumps: Vec<&str> = out[from..].lines().filter_map(|l| l.strip_prefix("boot: ")).collect();
    if !good {
        // The revert boot, then maybe more boots of the old image (a cut that fell after it).
        let at = jumps.iter().rposition(|l| l.contains("last Reverted"));
        ensure!(
            at.is_some_and(|i| jumps[i..].iter().all(|l| l.contains(&format!("jump to {before} ")))),
            "-1 reported but no revert: {jumps:?}"
        );
    }
    ensure!(jumps.iter().all(|l| l.starts_with("jump to ")), "a power-on did not boot an image: {jumps:?}");
    let last = jumps.last().and_then(|l| l.strip_prefix("jump to ")).and_then(|l| l.split(' ').next());
    ensure!(last == Some(runs), "the bootloader last jumped to {last:?}, but the device informs {runs}");
    Ok((runs, format!("{reported}, runs {runs}, {} boots", jumps.len())))
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}
