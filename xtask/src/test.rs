//! `cargo xtask test`: everything, on a fresh machine. Installs what the tests need (thumb target,
//! imgtool, openssl, qemu-system-arm), runs the host tests (unit, property, power-cut sweeps,
//! interop with imgtool and openssl, releases, the real bootloader under QEMU, the host device
//! against mosquitto and the local console), plays the demo's scenarios and a fleet, fuzzes every
//! parser of outside bytes for a bounded time, then builds the firmware for every thumb board.

use crate::build::{firmware, Crate};
use crate::{keys, tools};
use anyhow::{ensure, Context, Result};
use memory_layouts::Board;
use std::process::Command;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Run every case of the slow sweeps (CI runs a sample).
    #[arg(long)]
    full: bool,
}

pub fn run(a: Args) -> Result<()> {
    let t0 = Instant::now();
    let mut steps: Vec<(String, bool)> = Vec::new();
    let imgtool = tools::imgtool()?;
    let detools = tools::detools()?;
    let openssl = tools::openssl()?;
    let qemu = tools::qemu()?;
    let mosquitto = tools::mosquitto()?;

    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(crate::root())
        .args(["test", "--workspace", "--exclude", "app", "--exclude", "bootloader"])
        // Passing tests' output too: the power-cut sweeps print how many cases they ran.
        .args(["--", "--show-output"])
        .env("IMGTOOL", &imgtool)
        .env("DETOOLS", &detools)
        .env("OPENSSL", &openssl)
        .env("QEMU", &qemu)
        .env("MOSQUITTO", &mosquitto);
    if a.full {
        cmd.env("ALIYUN_OTA_FULL", "1");
    }
    let ok = cmd.status().context("running cargo test")?.success();
    steps.push((
        "host tests (unit, property, power-cut sweeps, interop, release, QEMU boot, console, modem)".into(),
        ok,
    ));

    // The demo's scenarios and a fleet, as `cargo xtask demo` plays them (same code, own folders).
    let demo = crate::root().join("target/test-demo");
    let ok = self_run(&["demo", "--dir", demo.to_str().unwrap_or("target/test-demo")]);
    steps.push((
        "demo scenarios (a)-(f): upgrade, tampered -3, self-test rollback -1, power cut resume, wrong secret, delta"
            .into(),
        ok,
    ));
    let n = if a.full { "100" } else { "20" };
    let fleet = crate::root().join("target/test-fleet");
    let ok = self_run(&["demo", "--fleet", n, "--dir", fleet.to_str().unwrap_or("target/test-fleet")]);
    steps.push((format!("demo --fleet {n}: one job, every device upgraded"), ok));

    // The real firmware under QEMU: the demo's scenarios, then the power-cut campaign (a sample
    // in CI, 100 cuts with --full; the seed is printed for a replay).
    let qemu_demo = crate::root().join("target/test-demo-qemu");
    let ok = self_run(&["demo", "--qemu", "--dir", qemu_demo.to_str().unwrap_or("target/test-demo-qemu")]);
    steps.push((
        "demo --qemu: real bootloader + app under QEMU: upgrade, tampered -3 over HTTPS, self-test rollback -1, push over the buffer -1, delta v1.7 -> v1.8, module modem upgraded".into(),
        ok,
    ));
    let cuts = if a.full { "100" } else { "10" };
    let cut_dir = crate::root().join("target/test-qemu-cuts");
    let ok = self_run(&["qemu", "--power-cuts", cuts, "--dir", cut_dir.to_str().unwrap_or("target/test-qemu-cuts")]);
    steps.push((
        format!("qemu --power-cuts {cuts}: kill -9 during download, mark, swap, confirm, revert (MQTT, HTTPS, delta)"),
        ok,
    ));
    let ok = self_run(&["bench", "qemu"]);
    steps.push(("bench qemu: bootloader instructions to the jump under -icount (3 boots)".into(), ok));
    let ok = self_run(&["bench", "qemu-download", "--rounds", "1", "--image-kib", "64"]);
    steps.push((
        "bench qemu-download: the app under QEMU downloads over MQTT stream and HTTPS (1 round, 64 KiB)".into(),
        ok,
    ));

    // The app's own unit tests (MQTT codec, CA choice), on the host board.
    let dev_keys = hex::encode(keys::load_public_key(&keys::dev_key())?.0);
    let ok = Command::new(env!("CARGO"))
        .current_dir(crate::root())
        .args(["test", "-p", "app", "--features", "app/host"])
        .env(memory_layouts::build::PUBKEY_ENV, &dev_keys)
        .env("CARGO_TARGET_DIR", crate::build::target_dir())
        .status()?
        .success();
    steps.push(("app unit tests (host board)".into(), ok));

    // Fuzzing: every target for a bounded time (each must have run: executions > 0, no crash).
    let secs = if a.full { 300 } else { 20 };
    let (ok, what) = match crate::fuzz::campaign(&crate::fuzz::TARGETS, secs, None) {
        Ok(outcomes) => {
            crate::fuzz::print_table(&outcomes);
            let ok = outcomes.iter().all(|o| o.execs > 0 && o.crash.is_none());
            let list: Vec<String> = outcomes
                .iter()
                .map(|o| match &o.crash {
                    Some(c) => format!("{} CRASH {}", o.target, c.display()),
                    None => format!("{} {}", o.target, o.execs),
                })
                .collect();
            (ok, list.join(", "))
        }
        Err(e) => (false, format!("{e:#}")),
    };
    steps.push((format!("fuzz {} targets x {secs} s, executions: {what}", crate::fuzz::TARGETS.len()), ok));

    // Lints: clippy with warnings as errors on the host crates, the host device and both thumb
    // boards; rustfmt.
    let clippy = |args: &[&str], target_dir: Option<std::path::PathBuf>| -> Result<bool> {
        let mut c = Command::new(env!("CARGO"));
        c.current_dir(crate::root()).arg("clippy").args(args).args(["--", "-D", "warnings"]);
        c.env(memory_layouts::build::PUBKEY_ENV, &dev_keys);
        if let Some(d) = target_dir {
            c.env("CARGO_TARGET_DIR", d);
        }
        Ok(c.status().context("running cargo clippy")?.success())
    };
    let ok = clippy(&["--workspace", "--exclude", "app", "--exclude", "bootloader", "--all-targets"], None)?;
    steps.push(("clippy -D warnings: shared, memory-layouts, xtask (all targets)".into(), ok));
    let ok = clippy(&["-p", "app", "--features", "app/host", "--all-targets"], Some(crate::build::target_dir()))?;
    steps.push(("clippy -D warnings: app for the host board".into(), ok));
    tools::ensure_rust_target("thumbv7em-none-eabihf")?;
    for board in Board::ALL.into_iter().filter(|b| b.target().is_some()) {
        let mut ok = true;
        for c in ["app", "bootloader"] {
            let features = format!("{c}/{}", board.name());
            let args = ["-p", c, "--release", "--target", "thumbv7em-none-eabihf", "--features", &features];
            ok &= clippy(&args, Some(crate::build::target_dir()))?;
        }
        steps.push((format!("clippy -D warnings: app and bootloader for {}", board.name()), ok));
    }
    let ok = Command::new(env!("CARGO"))
        .current_dir(crate::root())
        .args(["fmt", "--all", "--check"])
        .status()
        .context("running cargo fmt")?
        .success();
    steps.push(("cargo fmt --check".into(), ok));

    // The API docs: no broken links or stray HTML in any doc comment (shared, memory-layouts,
    // xtask, and the app on the host board).
    let doc = |args: &[&str], target_dir: Option<std::path::PathBuf>| -> Result<bool> {
        let mut c = Command::new(env!("CARGO"));
        c.current_dir(crate::root()).args(["doc", "--no-deps"]).args(args);
        c.env("RUSTDOCFLAGS", "-D warnings").env(memory_layouts::build::PUBKEY_ENV, &dev_keys);
        if let Some(d) = target_dir {
            c.env("CARGO_TARGET_DIR", d);
        }
        Ok(c.status().context("running cargo doc")?.success())
    };
    let ok = doc(&["--workspace", "--exclude", "app", "--exclude", "bootloader"], None)?
        && doc(&["-p", "app", "--features", "app/host"], Some(crate::build::target_dir()))?;
    steps.push(("cargo doc --no-deps, warnings denied: shared, memory-layouts, xtask, app (host)".into(), ok));

    // The firmware verifies signatures with salty: run the image tests with it too.
    let ok = Command::new(env!("CARGO"))
        .current_dir(crate::root())
        .args(["test", "-p", "shared", "--lib", "--features", "ed25519-salty"])
        .status()?
        .success();
    steps.push(("shared unit tests with the firmware's Ed25519 (salty)".into(), ok));

    // shared is no_std: it must build for the thumb target bare and with defmt.
    for features in ["", "defmt"] {
        let ok = Command::new(env!("CARGO"))
            .current_dir(crate::root())
            .args(["build", "-p", "shared", "--no-default-features", "--target", "thumbv7em-none-eabihf"])
            .args(["--features", features])
            .env("CARGO_TARGET_DIR", crate::build::target_dir())
            .status()?
            .success();
        steps.push((format!("shared no_std for thumbv7em (features: {:?})", features), ok));
    }

    let key = keys::load_public_key(&keys::dev_key())?;
    for board in Board::ALL.into_iter().filter(|b| b.target().is_some()) {
        let l = board.layout();
        for c in [Crate::Bootloader, Crate::App] {
            // The bootloader must fit its region (on the nRF: the 24 KiB goal); the app must
            // leave room in ACTIVE to grow (at most half of it), and RAM must hold its statics.
            let (region, limit) = match c {
                Crate::Bootloader if board == Board::Nrf52840Dk => (l.bootloader.length, 24 * 1024),
                Crate::Bootloader => (l.bootloader.length, l.bootloader.length),
                Crate::App => (l.app_max_len(), l.app_max_len() / 2),
            };
            let r = firmware(board, c, &[key]).and_then(|elf| crate::size::sizes(&std::fs::read(elf)?));
            let (ok, what) = match r {
                Ok((flash, data, bss)) => (
                    flash <= limit as u64 && data + bss < l.ram.length as u64,
                    format!("{flash} B flash (limit {limit} of a {} KiB region), {} B RAM", region / 1024, data + bss),
                ),
                Err(e) => (false, format!("{e:#}")),
            };
            steps.push((format!("build {c:?} for {}: {what}", board.name()), ok));
        }
    }

    println!("\n== cargo xtask test ({:.0} s) ==", t0.elapsed().as_secs_f64());
    for (name, ok) in &steps {
        println!("  {} {name}", if *ok { "ok  " } else { "FAIL" });
    }
    let failed = steps.iter().filter(|s| !s.1).count();
    println!("steps: {} passed, {failed} failed", steps.len() - failed);
    ensure!(failed == 0, "{failed} step(s) failed");
    Ok(())
}

/// Runs `cargo xtask ARGS`, output shown; whether it succeeded. Through cargo, not this
/// process's own executable: the host tests above rebuilt (replaced) that file.
fn self_run(args: &[&str]) -> bool {
    Command::new(env!("CARGO"))
        .current_dir(crate::root())
        .args(["run", "--quiet", "--package", "xtask", "--"])
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}
