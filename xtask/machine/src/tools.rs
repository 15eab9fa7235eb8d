//! What the tests need beyond the toolchain, installed on first use by the project itself:
//! the thumb target (rustup), imgtool, detools and bsdiff4 (PyPI, in a virtualenv under target/), openssl,
//! qemu-system-arm and mosquitto (apt), a nightly toolchain (rustup) and cargo-fuzz (crates.io).

use anyhow::{bail, ensure, Context, Result};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// imgtool version the interop tests run against.
pub const IMGTOOL_VERSION: &str = "2.5.0";
/// detools version the delta interop tests and bench run against.
pub const DETOOLS_VERSION: &str = "0.53.0";
/// bsdiff4 version the delta bench compares with.
pub const BSDIFF4_VERSION: &str = "1.3.2";

fn found(cmd: &str) -> bool {
    Command::new(cmd).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
        || Command::new(cmd).arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// `apt-get install` of Debian packages, when root; otherwise says what to install.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    ensure!(
        is_root(),
        "missing {}: install with `sudo apt-get install -y {}`",
        packages.join(", "),
        packages.join(" ")
    );
    eprintln!("installing {} with apt-get", packages.join(" "));
    let update = Command::new("apt-get").args(["update", "-qq"]).status().context("running apt-get")?;
    ensure!(update.success(), "apt-get update failed");
    let st = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    ensure!(st.success(), "apt-get install {} failed", packages.join(" "));
    Ok(())
}

/// Adds a rustup target if it is missing.
pub fn ensure_rust_target(target: &str) -> Result<()> {
    let out = Command::new("rustup")
        .current_dir(crate::root())
        .args(["target", "list", "--installed"])
        .output()
        .context("running rustup (the toolchain must come from rustup)")?;
    if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == target) {
        return Ok(());
    }
    let st = Command::new("rustup").current_dir(crate::root()).args(["target", "add", target]).status()?;
    ensure!(st.success(), "`rustup target add {target}` failed");
    Ok(())
}

/// A nightly toolchain (rustup, minimal profile) and cargo-fuzz (crates.io), for `fuzz/`.
pub fn cargo_fuzz() -> Result<()> {
    let out = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("running rustup (the toolchain must come from rustup)")?;
    if !String::from_utf8_lossy(&out.stdout).lines().any(|l| l.starts_with("nightly")) {
        eprintln!("installing the nightly toolchain with rustup (cargo-fuzz needs it)");
        let st = Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]).status()?;
        ensure!(st.success(), "`rustup toolchain install nightly --profile minimal` failed");
    }
    let has = |cmd: &mut Command| cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if !has(Command::new("cargo").current_dir(crate::root()).args(["+nightly", "fuzz", "--version"])) {
        eprintln!("installing cargo-fuzz from crates.io");
        let st = Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]).status()?;
        ensure!(st.success(), "`cargo install cargo-fuzz --locked` failed");
    }
    Ok(())
}

/// `openssl`, from apt when missing.
pub fn openssl() -> Result<PathBuf> {
    if !found("openssl") {
        apt_install(&["openssl"])?;
    }
    Ok(PathBuf::from("openssl"))
}

/// `qemu-system-arm` (Debian's, 7.2 on bookworm), from apt when missing.
pub fn qemu() -> Result<PathBuf> {
    if !found("qemu-system-arm") {
        apt_install(&["qemu-system-arm"])?;
    }
    Ok(PathBuf::from("qemu-system-arm"))
}

/// The mosquitto broker (the tests start their own on 127.0.0.1), from apt when missing.
pub fn mosquitto() -> Result<PathBuf> {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if std::path::Path::new(p).exists() {
            return Ok(PathBuf::from(p));
        }
    }
    apt_install(&["mosquitto"])?;
    Ok(PathBuf::from("/usr/sbin/mosquitto"))
}

/// imgtool from PyPI in `target/tools/venv`, created on first use.
pub fn imgtool() -> Result<PathBuf> {
    pip_tool(&format!("imgtool=={IMGTOOL_VERSION}"), "imgtool")
}

/// detools from PyPI (the delta patch format's reference implementation: `detools
/// create_patch` / `apply_patch`, heatshrink through heatshrink2) in `target/tools/venv`.
pub fn detools() -> Result<PathBuf> {
    pip_tool(&format!("detools=={DETOOLS_VERSION}"), "detools")
}

/// The virtualenv's python with bsdiff4 from PyPI (the classic bsdiff, for the delta bench).
pub fn bsdiff4_python() -> Result<PathBuf> {
    pip_tool(&format!("bsdiff4=={BSDIFF4_VERSION}"), "python3")
}

/// `package` (a pip requirement) installed in `target/tools/venv`; the path of its `bin`.
fn pip_tool(package: &str, bin: &str) -> Result<PathBuf> {
    let venv = crate::root().join("target/tools/venv");
    let path = venv.join("bin").join(bin);
    let stamp = venv.join(format!("{}.ok", package.replace("==", "-")));
    if path.exists() && stamp.exists() {
        return Ok(path);
    }
    if !found("python3") {
        apt_install(&["python3", "python3-venv"])?;
    }
    if !venv.join("bin/pip").exists() {
        let st = Command::new("python3").arg("-m").arg("venv").arg(&venv).status().context("running python3")?;
        if !st.success() {
            apt_install(&["python3-venv"])?;
            let st = Command::new("python3").arg("-m").arg("venv").arg(&venv).status()?;
            ensure!(st.success(), "python3 -m venv {} failed", venv.display());
        }
    }
    eprintln!("installing {package} from PyPI into {}", venv.display());
    let st = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", package])
        .status()
        .context("running pip")?;
    if !st.success() || !path.exists() {
        bail!("pip could not install {package} (is PyPI reachable?)");
    }
    std::fs::write(&stamp, b"")?;
    Ok(path)
}
