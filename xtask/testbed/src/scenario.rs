//! The demo's scenarios as data, and what the demo, the power-cut campaign, `cargo xtask qemu`
//! and the benches share: the releases they build and the console jobs they make of them.
//!
//! The releases are built by running `cargo xtask release` (the current executable, see
//! `machine::proc::xtask`): only `cargo xtask` calls those functions.

use crate::qemu;
use anyhow::{Context, Result};
use machine::proc;
use ota_console::engine::{DigestKind, JobSpec, Package, Protocol};
use std::path::Path;
use std::time::Duration;

/// The host releases the demo ships: version, simulated body size, extra `release` flags; 1.8 is
/// also released as a differential package from 1.7 ([`host_releases`]).
pub const HOST_RELEASES: &[(&str, u32, &[&str])] = &[
    ("1.3", 64 * 1024, &[]),
    ("1.4", 256 * 1024, &[]),
    ("1.5", 256 * 1024, &[]),
    ("1.6", 256 * 1024, &["--failing-self-test"]),
    ("1.7", 1024 * 1024, &[]),
];

/// Builds [`HOST_RELEASES`] into `dir/<version>` (development key), and 1.8 with its
/// differential package from 1.7.
pub fn host_releases(dir: &Path) -> Result<()> {
    for (v, body, extra) in HOST_RELEASES {
        let out = dir.join(v);
        let body = body.to_string();
        let mut args = vec!["release", "--board", "host", "--version", v, "--body-size", &body, "--out"];
        args.push(out.to_str().context("non-UTF-8 path")?);
        args.extend_from_slice(extra);
        proc::xtask(&args)?;
    }
    // 1.8 also as a differential package from 1.7.
    let (from, out) = (dir.join("1.7"), dir.join("1.8"));
    let (from, out) = (from.to_str().context("non-UTF-8 path")?, out.to_str().context("non-UTF-8 path")?);
    proc::xtask(&[
        "release",
        "--board",
        "host",
        "--version",
        "1.8",
        "--body-size",
        "1048576",
        "--delta-from",
        from,
        "--out",
        out,
    ])
}

/// The releases of `demo --qemu`: the real app, signed as each version; 1.6 is built with the
/// `self-test-fails` feature. 1.8 is also released as a differential package from 1.7
/// ([`qemu_releases`]).
pub const QEMU_RELEASES: &[(&str, &[&str])] =
    &[("1.3", &[]), ("1.4", &[]), ("1.5", &[]), ("1.6", &["--failing-self-test"]), ("1.7", &[])];

/// Builds [`QEMU_RELEASES`] into `dir`, and 1.8 with its differential package from 1.7.
pub fn qemu_releases(dir: &Path) -> Result<()> {
    qemu::releases(dir, QEMU_RELEASES)?;
    qemu::delta_release(dir, "1.8", "1.8", "1.7")
}

/// A job of the release folder `release` to every device (tampered: one byte flipped mid-body,
/// the console's digests recomputed, so only the image signature can catch it).
pub fn job(release: &Path, protocol: Protocol, tamper: bool, timeout: Duration) -> Result<JobSpec> {
    let mut package = Package::load(release)?;
    if tamper {
        // A byte in the middle of the body: header, TLVs and size stay valid.
        package = package.tampered(package.bytes.len() / 2);
    }
    Ok(job_of(package, protocol, timeout))
}

/// A job of `package` to every device: SHA-256 over HTTPS, MD5 over MQTT, with a timeout.
fn job_of(package: Package, protocol: Protocol, timeout: Duration) -> JobSpec {
    JobSpec {
        digest: if protocol == Protocol::Https { DigestKind::Sha256 } else { DigestKind::Md5 },
        timeout: Some(timeout),
        ..JobSpec::new(package, protocol)
    }
}

/// A job of the differential package from `from` of the release folder `release`, to the
/// devices on `from` (as Aliyun targets a differential package).
pub fn delta_job(release: &Path, from: &str, protocol: Protocol, timeout: Duration) -> Result<JobSpec> {
    let package = Package::load_delta(release, from)?;
    Ok(JobSpec { from: vec![from.to_string()], ..job_of(package, protocol, timeout) })
}
