//! The bootloader protects itself (qemu-an386, under QEMU): before it jumps it makes BOOTLOADER
//! and BOOT_RECORD read-only with the MPU. An app built with `attack` (`cargo xtask release
//! --attack`) then tries to erase and write both regions through its flash driver and with plain
//! stores: every attempt faults, the device resets, the bytes of both regions in the flash file
//! stay what they were and the next boot is the same. The control: the same app behind a
//! bootloader built with `unprotected` changes both regions with every attempt (and bricks the
//! device), so the protected run would fail without the protection.
//!
//! No network: the modem UART is `-serial null`; the log is semihosting on QEMU's stdout.

mod common;
use common::*;
use memory_layouts::{Board, Layout, Region};
use shared::boot::BootRecord;
use shared::flash::RamNor;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

const BOOT_LINE: &str = "boot: jump to 1.4 (1.4.0+0), last Nothing, sec_cnt 1";
const ATTEMPTS: usize = 6;

fn layout() -> &'static Layout {
    Board::QemuAn386.layout()
}

fn range(r: Region) -> std::ops::Range<usize> {
    let o = (r.origin - layout().flash.origin) as usize;
    o..o + r.length as usize
}

/// Factory images (bootloader + the `attack` app v1.4, SEC_CNT 1, dev key) whose BOOT_RECORD
/// holds a record (sec_cnt 1), so that an erase or write of it shows and the bootloader has no
/// reason to write it: (protected, unprotected bootloader).
fn factories() -> &'static (Vec<u8>, Vec<u8>) {
    static F: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    F.get_or_init(|| {
        let d = scratch("qemu_protect_releases");
        let build = |name: &str, extra: &[&str]| {
            let out = d.join(name);
            let mut args =
                vec!["release", "--board", "qemu-an386", "--version", "1.4", "--sec-cnt", "1", "--attack", "--out"];
            args.push(s(&out));
            args.extend_from_slice(extra);
            xtask_ok(&args);
            seeded(std::fs::read(out.join("factory.bin")).unwrap())
        };
        (build("protected", &[]), build("unprotected", &["--unprotected-bootloader"]))
    })
}

fn seeded(mut flash: Vec<u8>) -> Vec<u8> {
    let l = layout();
    assert_eq!((l.geometry.erase_size, l.geometry.write_size), (8192, 16), "RamNor's geometry below");
    let region = &mut flash[range(l.boot_record)];
    assert!(region.iter().all(|&b| b == 0xFF), "a factory image's BOOT_RECORD is erased");
    let mut rec = BootRecord { sec_cnt: 1, ..Default::default() };
    rec.store(&mut RamNor::<8192, 16>::new(region)).unwrap();
    assert!(region.iter().any(|&b| b != 0xFF));
    flash
}

/// Runs QEMU on `flash` until a line contains `until` (then stops it), QEMU exits, or
/// `timeout`. Returns stdout and stderr lines, in arrival order, and whether `until` was seen.
fn run_qemu(flash: &Path, until: &str, timeout: Duration) -> (String, bool) {
    // The project's QEMU command line, the modem UART on `-serial null`.
    let mut child = testbed::qemu::command(flash, None)
        .unwrap()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting qemu-system-arm");
    let (tx, rx) = mpsc::channel();
    fn pump(r: impl Read + Send + 'static, tx: mpsc::Sender<String>) {
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    pump(child.stdout.take().unwrap(), tx.clone());
    pump(child.stderr.take().unwrap(), tx);
    let mut out = String::new();
    let deadline = Instant::now() + timeout;
    let seen = loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                out.push_str(&line);
                out.push('\n');
                if line.contains(until) {
                    break true;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break false,
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() > deadline => break false,
            Err(_) => {}
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    (out, seen)
}

fn flash_file(name: &str, bytes: &[u8]) -> PathBuf {
    let f = scratch(name).join("flash.img");
    std::fs::write(&f, bytes).unwrap();
    f
}

/// The protected bytes: (BOOTLOADER, BOOT_RECORD).
fn protected(flash: &[u8]) -> (Vec<u8>, Vec<u8>) {
    (flash[range(layout().bootloader)].to_vec(), flash[range(layout().boot_record)].to_vec())
}

/// Runs `factory` in a flash file of its own until the attack app is done and asserts its
/// summary: `changed` of the attempts changed protected flash, the others faulted. Returns the
/// protected bytes before, the output and the flash file.
fn attack(name: &str, factory: &[u8], changed: usize) -> ((Vec<u8>, Vec<u8>), String, PathBuf) {
    let before = protected(factory);
    let f = flash_file(name, factory);
    let (out, seen) = run_qemu(&f, "attack: done", Duration::from_secs(120));
    assert!(seen, "the attack app did not finish:\n{out}");
    let faulted = ATTEMPTS - changed;
    let summary = format!("attack: done: {changed} of {ATTEMPTS} attempts changed protected flash, {faulted} faulted");
    assert!(out.contains(&summary), "{out}");
    (before, out, f)
}

#[test]
fn the_bootloader_write_protects_itself_and_boot_record_from_the_app() {
    let (before, out, f) = attack("qemu_protect_on", &factories().0, 0);
    assert!(!out.contains("not stopped"), "{out}");
    // Every attempt faulted at exactly the address it aimed at, inside the region it named, and
    // the device reset into the bootloader, which booted the same image with the same record.
    let lines: Vec<&str> = out.lines().collect();
    let l = layout();
    let mut attempts = 0;
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.strip_prefix("attack: ").filter(|r| r.contains(&format!("/{ATTEMPTS}: "))) else {
            continue;
        };
        attempts += 1;
        let addr = rest.rsplit(" at ").next().unwrap();
        let a = u32::from_str_radix(addr.trim_start_matches("0x"), 16).unwrap();
        let region = if rest.contains(" in BOOTLOADER ") { l.bootloader } else { l.boot_record };
        assert!(rest.contains(" in BOOT"), "{line}");
        assert!((region.origin..region.end()).contains(&a), "{line}");
        let fault = lines.get(i + 1).copied().unwrap_or("");
        assert!(
            fault.starts_with(&format!("app: fault: MemManage data access violation at {addr} ")),
            "attempt {line:?} was followed by {fault:?}:\n{out}"
        );
        assert!(fault.ends_with("; resetting"), "{fault}");
        assert_eq!(lines.get(i + 2).copied().map(|b| b.starts_with(BOOT_LINE)), Some(true), "{out}");
    }
    assert_eq!(attempts, ATTEMPTS, "{out}");
    assert_eq!(lines.iter().filter(|l| l.starts_with(BOOT_LINE)).count(), ATTEMPTS + 1, "{out}");

    // QEMU stopped: the flash file's BOOTLOADER and BOOT_RECORD are what they were, byte for byte.
    let after = std::fs::read(&f).unwrap();
    let (bl, br) = protected(&after);
    assert!(bl == before.0, "BOOTLOADER changed");
    assert!(br == before.1, "BOOT_RECORD changed");

    // The next power-on boots the same way, and leaves both regions alone too.
    let (out, seen) = run_qemu(&f, "boot: ", Duration::from_secs(60));
    assert!(seen && out.lines().any(|l| l.starts_with(BOOT_LINE)), "{out}");
    assert!(protected(&std::fs::read(&f).unwrap()) == before, "the next boot changed BOOTLOADER or BOOT_RECORD");
}

#[test]
fn without_the_protection_the_same_attack_changes_both_regions_and_bricks_the_device() {
    let (before, out, f) = attack("qemu_protect_off", &factories().1, ATTEMPTS);
    assert!(!out.contains("app: fault"), "{out}");
    let after = std::fs::read(&f).unwrap();
    let (bl, br) = protected(&after);
    // Each attempt landed where it aimed: the first page erased, 16 bytes and a word zeroed.
    let page = layout().geometry.erase_size as usize;
    for (name, old, new) in [("BOOTLOADER", &before.0, &bl), ("BOOT_RECORD", &before.1, &br)] {
        assert!(old[..page].iter().any(|&b| b != 0xFF), "{name}'s first page held data");
        assert!(new[..page].iter().all(|&b| b == 0xFF), "{name}'s first page was not erased");
        let n = new.len();
        assert!(new[n - 16..].iter().all(|&b| b == 0) && old[n - 16..] != new[n - 16..], "{name}: write");
        assert!(
            new[n - 32..n - 28].iter().all(|&b| b == 0) && old[n - 32..n - 28] != new[n - 32..n - 28],
            "{name}: store"
        );
    }
    // With its vector table erased the bootloader never runs again.
    let (out, seen) = run_qemu(&f, "boot: ", Duration::from_secs(10));
    assert!(!seen, "a device whose bootloader was erased booted:\n{out}");
}
