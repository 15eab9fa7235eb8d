//! The host device reaching the local console through the AT modem driver (app/src/modem.rs) and
//! the modem simulator (xtask/src/modem_sim.rs): the bring-up sequence as sent, an upgrade over a
//! modem link that drops mid-download (NO CARRIER, then a fresh bring-up), TLS in the modem
//! (AT+QSSLOPEN toward the console's TLS listener), and a missing SIM said clearly.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use xtask::console::engine::{JobSpec, Package, Protocol, TaskState};
use xtask::console::{self, Console, Options, TlsOptions};
use xtask::modem_sim::{ModemSim, SimOptions};
use xtask::proc::Killed;

const PK: &str = "a1ModemTst1";

/// Releases 1.3 and 1.4 and the host device, built once.
fn setup() -> &'static (PathBuf, PathBuf) {
    static S: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    S.get_or_init(|| {
        let dir = scratch("modem-releases");
        for v in ["1.3", "1.4"] {
            xtask_ok(&[
                "release",
                "--board",
                "host",
                "--version",
                v,
                "--body-size",
                "200000",
                "--out",
                s(&dir.join(v)),
            ]);
        }
        let device = PathBuf::from(xtask_ok(&["build", "--board", "host"]).trim().lines().last().unwrap());
        (dir, device)
    })
}

fn device(dir: &Path, name: &str, uart: u16, port: u16, tls: bool) -> (Killed, PathBuf) {
    device_with(dir, name, uart, port, tls, "")
}

/// The same with extra device.toml lines.
fn device_with(dir: &Path, name: &str, uart: u16, port: u16, tls: bool, extra: &str) -> (Killed, PathBuf) {
    let (rel, bin) = setup();
    let flash = dir.join(format!("{name}.flash"));
    std::fs::copy(rel.join("1.3/factory.bin"), &flash).unwrap();
    let conf = dir.join(format!("{name}.toml"));
    std::fs::write(
        &conf,
        format!(
            "product_key = \"{PK}\"\ndevice_name = \"{name}\"\ndevice_secret = \"s\"\nhost = \"127.0.0.1\"\nport = {port}\n\
             tls = {tls}\nflash = \"{}\"\nmodem = \"127.0.0.1:{uart}\"\napn = \"CMNET\"\nblock_size = 4096\n{extra}",
            flash.display()
        ),
    )
    .unwrap();
    let log = dir.join(format!("{name}.log"));
    let child = Command::new(bin)
        .args(["--config", s(&conf)])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (Killed(child), log)
}

fn wait_log(log: &Path, what: &str) -> String {
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(what) {
            return text;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no {what:?} in 60 s:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_upgrade_through_the_modem_survives_a_link_drop() {
    let dir = scratch("modem-drop");
    let c =
        Console::start(Options { devices: vec![console::device(PK, "m1", "s")], quiet: true, ..Default::default() })
            .unwrap();
    let sim = ModemSim::start(SimOptions {
        register_after_polls: 3,
        drop_first_link_after: Some(60_000),
        ..Default::default()
    })
    .unwrap();
    let (_d, log) = device(&dir, "m1", sim.port, c.mqtt_port, false);
    let id = (PK.to_string(), "m1".to_string());
    c.wait(Duration::from_secs(60), "m1 online on 1.3", |e| {
        e.device(&id).is_some_and(|d| d.online && d.version() == Some("1.3"))
    })
    .unwrap();
    let (rel, _) = setup();
    let job = c.add_job(JobSpec::new(Package::load(&rel.join("1.4")).unwrap(), Protocol::Mqtt)).unwrap();
    let done =
        |e: &console::engine::Engine| e.device(&id).and_then(|d| d.tasks.get(&job)).is_some_and(|t| t.state.done());
    c.wait(Duration::from_secs(120), "the task to end", done)
        .unwrap_or_else(|e| panic!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default()));
    let t = c.with(|e| e.device(&id).unwrap().tasks[&job].clone());
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    c.wait(Duration::from_secs(30), "1.4 informed", |e| e.device(&id).is_some_and(|d| d.version() == Some("1.4")))
        .unwrap();

    let s = sim.log();
    assert!(s.drops >= 1 && s.links >= 3, "a drop, a reopened link, a link after the reset: {s:?}");
    // The first bring-up, as sent.
    let port = c.mqtt_port;
    let want = [
        "AT".to_string(),
        "AT+QICLOSE=0".into(),
        "ATE0".into(),
        "AT+CPIN?".into(),
        "AT+CEREG?".into(),
        "AT+CREG?".into(),
        "AT+CEREG?".into(),
        "AT+CREG?".into(),
        "AT+QICSGP=1,1,\"CMNET\",\"\",\"\",1".into(),
        "AT+QIACT?".into(),
        "AT+QIACT=1".into(),
        format!("AT+QIOPEN=1,0,\"TCP\",\"127.0.0.1\",{port},0,2"),
    ];
    assert_eq!(s.commands[..want.len()], want, "{:#?}", s.commands);
    // After NO CARRIER the device brings the link up again on the same UART (block requests it
    // sent before it saw NO CARRIER reach the modem in command mode as a garbage line, ERROR):
    // AT answered, the PDP context still up, the socket reopened.
    let second = &s.commands[want.len()..];
    let reopen = second.iter().position(|c| c == &want[11]).expect("a second QIOPEN");
    let between = &second[..reopen];
    assert!(between.iter().any(|c| c == "AT") && between.iter().any(|c| c == "AT+QIACT?"), "{second:#?}");
    assert!(!between.iter().any(|c| c == "AT+QIACT=1"), "the context stayed up: {second:#?}");
    let dlog = std::fs::read_to_string(&log).unwrap();
    assert!(dlog.contains("modem: TCP socket to 127.0.0.1"), "{dlog}");
}

#[test]
fn tls_in_the_modem_verifies_the_broker_with_the_uploaded_ca() {
    let dir = scratch("modem-tls");
    let (ca, cert, key) = tls_files(&dir, "modem");
    let c = Console::start(Options {
        devices: vec![console::device(PK, "m2", "s"), console::device(PK, "m4", "s")],
        tls: Some(TlsOptions { cert, key, port: 0, https_port: 0 }),
        quiet: true,
        ..Default::default()
    })
    .unwrap();
    let tls_port = c.tls_port.unwrap();

    // The console's CA uploaded to the module: the broker verifies, the device comes online.
    let sim = ModemSim::start(SimOptions::default()).unwrap();
    let (_d, log) = device_with(&dir, "m2", sim.port, tls_port, true, &format!("ca = \"{}\"\n", ca.display()));
    let id = (PK.to_string(), "m2".to_string());
    c.wait(Duration::from_secs(60), "m2 online on 1.3", |e| {
        e.device(&id).is_some_and(|d| d.online && d.version() == Some("1.3"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default()));
    let cmds = sim.log().commands;
    let pem = std::fs::read(&ca).unwrap();
    let want = [
        format!("AT+QFUPL=\"UFS:ota-ca.pem\",{},10", pem.len()),
        "AT+QSSLCFG=\"sslversion\",1,4".into(),
        "AT+QSSLCFG=\"ciphersuite\",1,0XFFFF".into(),
        "AT+QSSLCFG=\"seclevel\",1,1".into(),
        "AT+QSSLCFG=\"cacert\",1,\"UFS:ota-ca.pem\"".into(),
        format!("AT+QSSLOPEN=1,1,4,\"127.0.0.1\",{tls_port},2"),
    ];
    let at = cmds.iter().position(|c| c == &want[0]).unwrap_or_else(|| panic!("no upload: {cmds:#?}"));
    assert_eq!(cmds[at..at + want.len()], want, "{cmds:#?}");

    // Without `ca` the module gets the root its endpoint chains to (a TLS port other than 8883:
    // GlobalSign Root CA R1), which did not sign the console's certificate: the TLS handshake
    // fails and the device says so instead of talking to an unverified broker.
    let sim = ModemSim::start(SimOptions::default()).unwrap();
    let (_d, log) = device(&dir, "m4", sim.port, tls_port, true);
    let text = wait_log(&log, "AT+QSSLOPEN failed");
    assert!(text.contains("modem: AT+QSSLOPEN failed"), "{text}");
    assert!(!c.with(|e| e.device(&(PK.to_string(), "m4".to_string())).is_some_and(|d| d.online)));
    let pem_len = crate_ca_len("globalsign-root-ca-r1.pem");
    assert_ne!(pem_len, crate_ca_len("aliyun-iot-root-ca.pem"));
    let cmds = sim.log().commands;
    assert!(cmds.iter().any(|c| c == &format!("AT+QFUPL=\"UFS:ota-ca.pem\",{pem_len},10")), "{cmds:#?}");
}

/// The size of a built-in root CA (what the module gets without `ca`).
fn crate_ca_len(file: &str) -> usize {
    std::fs::read(xtask::root().join("app/certs").join(file)).unwrap().len()
}

#[test]
fn a_missing_sim_is_said_clearly() {
    let dir = scratch("modem-nosim");
    let sim = ModemSim::start(SimOptions { no_sim: true, ..Default::default() }).unwrap();
    let (_d, log) = device(&dir, "m3", sim.port, 1, false);
    let text = wait_log(&log, "SIM missing");
    assert!(text.contains("AT+CPIN? is not READY"), "{text}");
}
