//! Test certificates made by openssl: a CA and a server certificate for 127.0.0.1 signed by it,
//! for the console's TLS listeners (MQTT over TLS, HTTPS downloads) and the devices that verify
//! them. `dev()` is the one the QEMU rig's firmware is built to trust (`release --download-ca`).

use anyhow::{Context, Result};
use machine::tools;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA's certificate, and a server certificate + key for 127.0.0.1 signed by it (PEM files).
#[derive(Clone, Debug)]
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes `<name>-ca.pem`, `<name>-srv.pem` and `<name>-srv.key` in `dir`, valid for `days`.
pub fn make(dir: &Path, name: &str, days: u32) -> Result<Pki> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let f = |s: &str| dir.join(format!("{name}-{s}"));
    let (ca, ca_key, srv, srv_key, csr, ext) =
        (f("ca.pem"), f("ca.key"), f("srv.pem"), f("srv.key"), f("srv.csr"), f("srv.ext"));
    let openssl = tools::openssl()?;
    let days = days.to_string();
    let run = |args: &[&std::ffi::OsStr]| machine::proc::run_ok(Command::new(&openssl).args(args));
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    let subj = format!("/CN={name} test CA");
    run(&[
        os("req"),
        os("-x509"),
        os("-newkey"),
        os("rsa:2048"),
        os("-nodes"),
        os("-keyout"),
        ca_key.as_os_str(),
        os("-out"),
        ca.as_os_str(),
        os("-days"),
        days.as_ref(),
        os("-subj"),
        subj.as_ref(),
    ])?;
    run(&[
        os("req"),
        os("-newkey"),
        os("rsa:2048"),
        os("-nodes"),
        os("-keyout"),
        srv_key.as_os_str(),
        os("-out"),
        csr.as_os_str(),
        os("-subj"),
        os("/CN=127.0.0.1"),
    ])?;
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")?;
    run(&[
        os("x509"),
        os("-req"),
        os("-in"),
        csr.as_os_str(),
        os("-CA"),
        ca.as_os_str(),
        os("-CAkey"),
        ca_key.as_os_str(),
        os("-CAcreateserial"),
        os("-out"),
        srv.as_os_str(),
        os("-days"),
        days.as_ref(),
        os("-extfile"),
        ext.as_os_str(),
    ])?;
    // mosquitto started as root reads its files as the `mosquitto` user.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&srv_key, std::fs::Permissions::from_mode(0o644))?;
    Ok(Pki { ca, cert: srv, key: srv_key })
}

/// The checkout's development PKI in `target/dev-tls` (made once, valid ten years): the local
/// console's HTTPS certificate in the QEMU rig, and the CA its firmware is built to trust.
pub fn dev() -> Result<Pki> {
    let dir = machine::root().join("target/dev-tls");
    let f = |s: &str| dir.join(format!("console-{s}"));
    let pki = Pki { ca: f("ca.pem"), cert: f("srv.pem"), key: f("srv.key") };
    if pki.ca.exists() && pki.cert.exists() && pki.key.exists() {
        return Ok(pki);
    }
    make(&dir, "console", 3650)
}
