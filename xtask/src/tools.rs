//! What the tests need beyond the toolchain, installed on first use by the project itself:
//! the thumb target (rustup), imgtool (PyPI, in a virtualenv under target/), openssl,
//! qemu-system-arm and mosquitto (apt), a nightly toolchain (rustup) and cargo-fuzz (crates.io).

use anyhow::{bail, ensure, Context, Result};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// imgtool version the interop tests run against.
pub const IMGTOOL_VERSION: &str = "2.5.0";

#[derive(clap::Args)]
pub struct Args {
    /// Tool to install if needed and print the path of.
    #[arg(value_parser = ["imgtool", "openssl", "qemu-system-arm", "mosquitto"])]
    tool: String,
}

pub fn run(a: Args) -> Result<()> {
    let path = match a.tool.as_str() {
        "imgtool" => imgtool()?,
        "openssl" => openssl()?,
        "mosquitto" => mosquitto()?,
        _ => qemu()?,
    };
    println!("{}", path.display());
    Ok(())
}

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
    let venv = crate::root().join("target/tools/venv");
    let bin = venv.join("bin/imgtool");
    let stamp = venv.join(format!("imgtool-{IMGTOOL_VERSION}.ok"));
    if bin.exists() && stamp.exists() {
        return Ok(bin);
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
    eprintln!("installing imgtool {IMGTOOL_VERSION} from PyPI into {}", venv.display());
    let st = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("imgtool=={IMGTOOL_VERSION}"))
        .status()
        .context("running pip")?;
    if !st.success() || !bin.exists() {
        bail!("pip could not install imgtool {IMGTOOL_VERSION} (is PyPI reachable?)");
    }
    std::fs::write(&stamp, b"")?;
    Ok(bin)
}
