//! Helpers shared by the xtask integration tests: run the real `cargo xtask` binary and the
//! third-party tools it must interoperate with.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask")).args(args).output().expect("running xtask")
}

/// Runs xtask and asserts it succeeded; returns stdout.
pub fn xtask_ok(args: &[&str]) -> String {
    let o = xtask(args);
    assert!(o.status.success(), "xtask {args:?} failed:\n{}{}", text(&o.stdout), text(&o.stderr));
    text(&o.stdout)
}

/// Runs xtask and asserts it failed; returns stderr.
pub fn xtask_err(args: &[&str]) -> String {
    let o = xtask(args);
    assert!(!o.status.success(), "xtask {args:?} should have failed:\n{}", text(&o.stdout));
    text(&o.stderr)
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A tool from `$ENV` (set by `cargo xtask test`), else installed and located by
/// `cargo xtask tools NAME` (imgtool from PyPI, the rest from apt).
fn tool(cell: &'static OnceLock<PathBuf>, env: &str, name: &str) -> &'static Path {
    cell.get_or_init(|| match std::env::var_os(env) {
        Some(p) => p.into(),
        None => PathBuf::from(xtask_ok(&["tools", name]).trim()),
    })
}

pub fn imgtool() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    tool(&P, "IMGTOOL", "imgtool")
}

/// detools (PyPI) in the project's virtualenv; its python is beside it.
pub fn detools() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    tool(&P, "DETOOLS", "detools")
}

pub fn openssl() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    tool(&P, "OPENSSL", "openssl")
}

pub fn qemu() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    tool(&P, "QEMU", "qemu-system-arm")
}

pub fn mosquitto() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    tool(&P, "MOSQUITTO", "mosquitto")
}

pub fn run(cmd: &Path, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("running {}: {e}", cmd.display()))
}

/// A fresh, empty folder for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Deterministic pseudo-random bytes.
pub fn bytes(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A CA and a server certificate for 127.0.0.1, made by openssl: (CA, certificate, key).
pub fn tls_files(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let p = ota_console::tls::make(dir, name, 2).unwrap();
    (p.ca, p.cert, p.key)
}
