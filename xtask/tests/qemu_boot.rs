//! The bootloader's own code under QEMU (mps2-an386): it boots a signed image, refuses an
//! unsigned or tampered one, swaps in an update and reverts it when it does not confirm. The
//! flash is the release's factory image as QEMU's file-backed `mps.ram`.

mod common;
use common::*;
use memory_layouts::{Board, Region};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

struct Releases {
    key: PathBuf,
    factory: Vec<u8>,
    v14: Vec<u8>,
    v15: Vec<u8>,
}

fn releases() -> &'static Releases {
    static R: OnceLock<Releases> = OnceLock::new();
    R.get_or_init(|| {
        let d = scratch("qemu_releases");
        let key = d.join("k.pem");
        xtask_ok(&["keygen", "--out", s(&key)]);
        for v in ["1.4", "1.5"] {
            let out = d.join(v);
            xtask_ok(&[
                "release",
                "--board",
                "qemu-an386",
                "--version",
                v,
                "--sec-cnt",
                "1",
                "--key",
                s(&key),
                "--out",
                s(&out),
            ]);
        }
        let read = |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        Releases {
            factory: read(d.join("1.4/factory.bin")),
            v14: read(d.join("1.4/firmware-1.4.bin")),
            v15: read(d.join("1.5/firmware-1.5.bin")),
            key,
        }
    })
}

fn at(r: Region) -> usize {
    (r.origin - Board::QemuAn386.layout().flash.origin) as usize
}

/// Puts `image` into DFU and requests a swap (embassy-boot's SWAP magic in STATE word 0).
fn request_swap(flash: &mut [u8], image: &[u8]) {
    let l = Board::QemuAn386.layout();
    flash[at(l.dfu)..at(l.dfu) + image.len()].copy_from_slice(image);
    flash[at(l.state)..at(l.state) + 16].fill(0xF0);
}

/// Boots QEMU on `flash` until a line contains `until` (then stops it) or QEMU exits.
/// Returns the semihosting output and QEMU's exit code (None when stopped).
fn boot(flash: &Path, until: &str) -> (String, Option<i32>) {
    let mut child = Command::new(qemu())
        .args(["-M", "mps2-an386", "-nographic", "-monitor", "none", "-serial", "null"])
        .args(["-semihosting-config", "enable=on,target=native"])
        .arg("-object")
        .arg(format!("memory-backend-file,id=flash,size=16M,mem-path={},share=on", flash.display()))
        .args(["-M", "memory-backend=flash", "-global", "armv7m.init-nsvtor=0x21000000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting qemu-system-arm");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut out = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                out.push_str(&line);
                out.push('\n');
                if line.contains(until) {
                    let _ = child.kill();
                    let _ = child.wait();
                    return (out, None);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let code = child.wait().unwrap().code();
                return (out, code);
            }
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("QEMU did not print {until:?} in 120 s; it printed:\n{out}");
            }
            Err(_) => {}
        }
    }
}

fn flash_file(name: &str, bytes: &[u8]) -> PathBuf {
    let f = scratch(name).join("flash.img");
    std::fs::write(&f, bytes).unwrap();
    f
}

#[test]
fn bootloader_boots_a_signed_image() {
    let f = flash_file("qemu_signed", &releases().factory);
    // The factory image carries no credentials: the app says how to provision it.
    let (out, code) = boot(&f, "cargo xtask provision");
    assert_eq!(code, None, "{out}");
    assert!(out.contains("boot: jump to 1.4 (1.4.0+0), last Nothing, sec_cnt 1"), "{out}");
    assert!(out.contains("app: running 1.4"), "{out}");
    assert!(out.contains("app: not provisioned (the page is erased)"), "{out}");
}

#[test]
fn bootloader_refuses_an_unsigned_image() {
    let r = releases();
    let d = scratch("qemu_unsigned");
    let l = Board::QemuAn386.layout();
    let hdr = l.image_header_size as usize;
    let img_size = u32::from_le_bytes(r.v14[12..16].try_into().unwrap()) as usize;
    std::fs::write(d.join("app.bin"), &r.v14[hdr..hdr + img_size]).unwrap();
    // imgtool without a key makes an unsigned image: SHA256 only.
    let o = run(
        imgtool(),
        &[
            "sign",
            "--header-size",
            "0x400",
            "--pad-header",
            "-v",
            "1.4.0",
            "-S",
            "0x100000",
            s(&d.join("app.bin")),
            s(&d.join("unsigned.bin")),
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let unsigned = std::fs::read(d.join("unsigned.bin")).unwrap();
    let mut flash = r.factory.clone();
    flash[at(l.active)..at(l.active) + l.active.length as usize].fill(0xFF);
    flash[at(l.active)..at(l.active) + unsigned.len()].copy_from_slice(&unsigned);
    let f = flash_file("qemu_unsigned_run", &flash);
    let (out, code) = boot(&f, "app: running");
    assert!(out.contains("no bootable image in ACTIVE: image is not signed"), "{out}");
    assert_eq!(code, Some(1), "semihosting exit code: {out}");
    assert!(!out.contains("app: running"), "{out}");
}

#[test]
fn bootloader_swaps_in_an_update_and_reverts_it_without_confirm() {
    let r = releases();
    let mut flash = r.factory.clone();
    request_swap(&mut flash, &r.v15);
    let f = flash_file("qemu_swap", &flash);
    // The app does not confirm (this unprovisioned app never does): it is started as many times
    // as the board allows, then the next boot puts 1.4 back.
    let attempts = Board::QemuAn386.layout().boot_attempts;
    for start in 1..=attempts {
        let (out, _) = boot(&f, "app: running");
        assert!(out.contains("boot: jump to 1.5 (1.5.0+0), last SwappedIn"), "{out}");
        assert!(out.contains(&format!("start {start} of {attempts}")), "start {start}: {out}");
        assert!(out.contains("app: running 1.5"), "{out}");
    }
    let (out, _) = boot(&f, "app: running");
    assert!(out.contains("boot: jump to 1.4 (1.4.0+0), last Reverted"), "{out}");
    assert!(out.contains("app: running 1.4"), "{out}");
    let l = Board::QemuAn386.layout();
    let now = std::fs::read(&f).unwrap();
    assert_eq!(&now[at(l.active)..at(l.active) + r.v14.len()], &r.v14[..], "ACTIVE holds 1.4 again, byte for byte");
    let _ = &r.key;
}

#[test]
fn bootloader_refuses_a_tampered_update_and_keeps_the_old_image() {
    let r = releases();
    let mut bad = r.v15.clone();
    bad[0x400 + 100] ^= 0x01;
    let mut flash = r.factory.clone();
    request_swap(&mut flash, &bad);
    let f = flash_file("qemu_tampered", &flash);
    let (out, _) = boot(&f, "app: running");
    assert!(out.contains("boot: jump to 1.4 (1.4.0+0), last Refused(HashMismatch)"), "{out}");
    assert!(out.contains("app: running 1.4"), "{out}");
}

/// A signed image whose code hangs (`b .`) and never feeds the watchdog.
fn hung_image(version: &str) -> Vec<u8> {
    let r = releases();
    let d = scratch(&format!("qemu_hung_{version}"));
    let l = Board::QemuAn386.layout();
    let code = l.app_origin() + 64;
    let mut body = Vec::new();
    body.extend_from_slice(&l.ram.end().to_le_bytes()); // initial SP
    for _ in 1..16 {
        body.extend_from_slice(&(code | 1).to_le_bytes()); // reset and every exception: the loop
    }
    body.extend_from_slice(&[0xFE, 0xE7, 0x00, 0xBF]); // b . ; nop
    std::fs::write(d.join("hung.bin"), &body).unwrap();
    let out = d.join("hung-signed.bin");
    xtask_ok(&[
        "sign",
        s(&d.join("hung.bin")),
        s(&out),
        "--key",
        s(&r.key),
        "--version",
        version,
        "--sec-cnt",
        "1",
        "--board",
        "qemu-an386",
    ]);
    std::fs::read(out).unwrap()
}

#[test]
fn the_watchdog_resets_a_hung_update_and_the_bootloader_reverts_it() {
    let r = releases();
    let mut flash = r.factory.clone();
    request_swap(&mut flash, &hung_image("1.5"));
    let f = flash_file("qemu_hung_swap", &flash);
    // Swapped in, hangs, reset by the watchdog (8 s) once per start, swapped back after the last
    // start: one QEMU run.
    let (out, _) = boot(&f, "last Reverted");
    let attempts = Board::QemuAn386.layout().boot_attempts;
    let starts = out.lines().filter(|l| l.contains("boot: jump to 1.5 (1.5.0+0), last SwappedIn")).count();
    assert_eq!(starts, attempts as usize, "the hung image is started {attempts} times: {out}");
    assert!(out.contains(&format!("start {attempts} of {attempts}")), "{out}");
    assert!(out.contains("boot: jump to 1.4 (1.4.0+0), last Reverted"), "{out}");
}
