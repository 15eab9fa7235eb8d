//! The host device reaching the local console through the AT modem driver (app/src/modem.rs) and
//! the modem simulator (xtask/testbed/src/modem_sim.rs): the bring-up sequence as sent, an upgrade over a
//! modem link that drops mid-download (NO CARRIER, then a fresh bring-up), TLS in the modem
//! (AT+QSSLOPEN toward the console's TLS listener), and a missing SIM said clearly.

mod common;
use common::*;
use ota_console::engine::{JobSpec, Package, Protocol, TaskState};
use ota_console::{self as console, Console, Options, TlsOptions};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use testbed::device::{Device as _, HostConfig, HostDevice};
use testbed::modem_sim::{ModemSim, SimOptions};

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

fn device(dir: &Path, name: &str, uart: &ModemSim, port: u16, tls: bool) -> (HostDevice, PathBuf) {
    device_with(dir, name, uart, port, tls, "")
}

/// A host device on factory 1.3 with its modem on the simulator `uart` (its pty: a line with a
/// rate), powered on (testbed's harness; dropping it cuts the power); and its log.
fn device_with(dir: &Path, name: &str, uart: &ModemSim, port: u16, tls: bool, extra: &str) -> (HostDevice, PathBuf) {
    let (rel, bin) = setup();
    let flash = dir.join(format!("{name}.flash"));
    let extra = format!("modem = \"{}\"\napn = \"CMNET\"\nblock_size = 4096\n{extra}", uart.uart());
    let c =
        HostConfig { product_key: PK, device_name: name, device_secret: "s", port, tls, flash: &flash, extra: &extra };
    let log = dir.join(format!("{name}.log"));
    let factory = rel.join("1.3/factory.bin");
    let mut d = HostDevice::new(bin, &c, dir.join(format!("{name}.toml")), log.clone(), &factory).unwrap();
    // MODEM_TEST_LOG=info,app::modem=trace: every AT line in the device's log.
    d.log_level = std::env::var("MODEM_TEST_LOG").unwrap_or_else(|_| "info".into());
    d.start().unwrap();
    (d, log)
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
    let sim = ModemSim::start_tty(SimOptions {
        register_after_polls: 3,
        drop_socket_after: Some((0, 60_000)),
        // (This one is about a socket cut: the network and the module stay up.)
        pdp_deact_after: None,
        restart_after: None,
        ..SimOptions::realistic()
    })
    .unwrap();
    let (_d, log) = device(&dir, "m1", &sim, c.mqtt_port, false);
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
    assert!(s.sockets_opened >= 3, "a drop, a reopened socket, a socket after the reset: {s:?}");
    assert!(s.urcs.iter().any(|u| u == "+QIURC: \"closed\",0"), "the cut said: {:?}", s.urcs);
    // The first bring-up, as sent.
    let port = c.mqtt_port;
    let want = [
        // The first AT went at 921,600 to a module at its power-on 115,200 (noise to it); found
        // at 115,200, raised, checked.
        "AT".to_string(),
        "AT+IPR=921600".into(),
        "AT".into(),
        "ATE0".into(),
        "AT+IFC=2,2".into(),
        "AT+QICLOSE=0".into(),
        "AT+QSSLCLOSE=0".into(),
        "AT+QICLOSE=1".into(),
        "AT+QSSLCLOSE=1".into(),
        "AT+CPIN?".into(),
        "AT+CEREG?".into(),
        "AT+CREG?".into(),
        "AT+CEREG?".into(),
        "AT+CREG?".into(),
        "AT+QICSGP=1,1,\"CMNET\",\"\",\"\",1".into(),
        "AT+QIACT?".into(),
        // (The context is down: deactivated first, as Quectel requires after a pdpdeact.)
        "AT+QIDEACT=1".into(),
        "AT+QIACT=1".into(),
        "AT+QGMR".into(),
        format!("AT+QIOPEN=1,0,\"TCP\",\"127.0.0.1\",{port},0,0"),
    ];
    assert_eq!(s.commands[..want.len()], want, "{:#?}", s.commands);
    // After the socket closed the device brings the link up again on the same UART: AT
    // answered, the PDP context still up, the socket reopened.
    let second = &s.commands[want.len()..];
    let reopen = second.iter().position(|c| Some(c) == want.last()).expect("a second QIOPEN");
    let between = &second[..reopen];
    assert!(between.iter().any(|c| c == "AT") && between.iter().any(|c| c == "AT+QIACT?"), "{second:#?}");
    assert!(!between.iter().any(|c| c == "AT+QIACT=1"), "the context stayed up: {second:#?}");
    let dlog = std::fs::read_to_string(&log).unwrap();
    assert!(dlog.contains("modem: TCP socket to 127.0.0.1"), "{dlog}");
}

#[test]
fn an_upgrade_through_a_module_that_behaves_as_the_manuals_say() {
    // The simulator's realistic mode: echo and start-up URCs, URCs between a command's echo
    // and its answer, at most 512 bytes per AT+QIRD, every 4th send answered SEND FAIL, the
    // network deactivating the PDP context after 20 KiB, the module restarting after 60 KiB.
    let dir = scratch("modem-realistic");
    let c =
        Console::start(Options { devices: vec![console::device(PK, "r1", "s")], quiet: true, ..Default::default() })
            .unwrap();
    let sim = ModemSim::start_tty(SimOptions::realistic()).unwrap();
    let (_d, log) = device(&dir, "r1", &sim, c.mqtt_port, false);
    online(&c, "r1", "1.3", &log);
    let id = (PK.to_string(), "r1".to_string());
    let modem_version = |e: &console::engine::Engine| e.device(&id).and_then(|d| d.versions.get("modem").cloned());
    c.wait(Duration::from_secs(30), "the module's version informed", |e| modem_version(e).is_some())
        .unwrap_or_else(|e| panic!("{e}\n{:#?}", sim.log()));
    let (rel, _) = setup();
    let job = c.add_job(JobSpec::new(Package::load(&rel.join("1.4")).unwrap(), Protocol::Mqtt)).unwrap();
    let t = outcome(&c, "r1", job, 300, &log, &sim);
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}\n{}", text());
    c.wait(Duration::from_secs(60), "1.4 informed", |e| e.device(&id).is_some_and(|d| d.version() == Some("1.4")))
        .unwrap_or_else(|e| panic!("{e}\n{}", text()));
    let s = sim.log();
    // After the network's pdpdeact the context came back: deactivated by the device, then
    // activated again.
    let t = &s.transcript;
    let lost = t.iter().position(|l| l.contains("+QIURC: \"pdpdeact\"")).expect("a pdpdeact");
    let deact = t[lost..].iter().position(|l| l == "> AT+QIDEACT=1").expect("AT+QIDEACT=1 after it") + lost;
    assert!(t[deact..].iter().any(|l| l == "> AT+QIACT=1"), "{t:#?}");
    assert!(s.urcs.iter().filter(|u| *u == "RDY").count() >= 2, "power-on and the restart: {:?}", s.urcs);
    // The module's version is the AT+QGMR answer, never a URC that came before it.
    assert_eq!(c.with(modem_version).as_deref(), Some("EC200UCNAAR03A01M08"));
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
    let sim = ModemSim::start_tty(SimOptions::realistic()).unwrap();
    let (_d, log) = device_with(&dir, "m2", &sim, tls_port, true, &format!("ca = \"{}\"\n", ca.display()));
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
        "AT+QSSLCFG=\"sni\",1,1".into(),
        "AT+QSSLCFG=\"cacert\",1,\"UFS:ota-ca.pem\"".into(),
        format!("AT+QSSLOPEN=1,1,0,\"127.0.0.1\",{tls_port},0"),
    ];
    let at = cmds.iter().position(|c| c == &want[0]).unwrap_or_else(|| panic!("no upload: {cmds:#?}"));
    assert_eq!(cmds[at..at + want.len()], want, "{cmds:#?}");

    // Without `ca` the module gets the root its endpoint chains to (a TLS port other than 8883:
    // GlobalSign Root CA R1), which did not sign the console's certificate: the TLS handshake
    // fails and the device says so instead of talking to an unverified broker.
    let sim = ModemSim::start_tty(SimOptions::realistic()).unwrap();
    let (_d, log) = device(&dir, "m4", &sim, tls_port, true);
    let text = wait_log(&log, "the socket did not open");
    assert!(text.contains("modem: the socket did not open (error -1)"), "{text}");
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
    let sim = ModemSim::start_tty(SimOptions { no_sim: true, ..SimOptions::realistic() }).unwrap();
    let (_d, log) = device(&dir, "m3", &sim, 1, false);
    let text = wait_log(&log, "SIM missing");
    assert!(text.contains("AT+CPIN? is not READY"), "{text}");
}

/// The console with its HTTPS listener (download URLs `https://127.0.0.1:<port>/...`), and the CA
/// that signed its certificate.
fn https_console(dir: &Path, names: &[&str]) -> (Console, PathBuf) {
    let (ca, cert, key) = tls_files(dir, "console");
    let c = Console::start(Options {
        devices: names.iter().map(|n| console::device(PK, n, "s")).collect(),
        tls: Some(TlsOptions { cert, key, port: 0, https_port: 0 }),
        quiet: std::env::var("MODEM_TEST_CONSOLE_LOG").is_err(),
        ..Default::default()
    })
    .unwrap();
    (c, ca)
}

fn online(c: &Console, name: &str, version: &str, log: &Path) {
    let id = (PK.to_string(), name.to_string());
    c.wait(Duration::from_secs(60), &format!("{name} online on {version}"), |e| {
        e.device(&id).is_some_and(|d| d.online && d.version() == Some(version))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", std::fs::read_to_string(log).unwrap_or_default()));
}

/// Waits for the task of `job` on `name` to end; returns it. (On a timeout: the device's log
/// and the end of what the module saw.)
fn outcome(c: &Console, name: &str, job: u32, secs: u64, log: &Path, sim: &ModemSim) -> console::engine::TaskRecord {
    let id = (PK.to_string(), name.to_string());
    let done =
        |e: &console::engine::Engine| e.device(&id).and_then(|d| d.tasks.get(&job)).is_some_and(|t| t.state.done());
    c.wait(Duration::from_secs(secs), "the task to end", done).unwrap_or_else(|e| {
        let t = sim.log().transcript;
        let tail = t[t.len().saturating_sub(120)..].join("\n");
        panic!("{e}\n{}\nthe module saw (last 120):\n{tail}", std::fs::read_to_string(log).unwrap_or_default())
    });
    c.with(|e| e.device(&id).unwrap().tasks[&job].clone())
}

fn https_job(v: &str) -> JobSpec {
    let (rel, _) = setup();
    let mut j = JobSpec::new(Package::load(&rel.join(v)).unwrap(), Protocol::Https);
    j.from = vec!["1.3".into()];
    j
}

#[test]
fn an_https_batch_downloads_on_a_second_socket_while_the_mqtt_session_stays_up() {
    let dir = scratch("modem-https");
    let (c, ca) = https_console(&dir, &["h1"]);
    let https = c.https_port.unwrap();
    // A slow module (every answer 150 ms late), so that the download outlasts half the
    // keep-alive (30 s): the session's PINGREQ must go out on socket 0 meanwhile.
    // (The network and the module stay up: the session must not drop for the download.)
    let o = SimOptions { slow_ms: 150, pdp_deact_after: None, restart_after: None, ..SimOptions::realistic() };
    let sim = ModemSim::start_tty(o).unwrap();
    let extra = format!("download_ca = \"{}\"\nkeep_alive = 30\n", ca.display());
    let (_d, log) = device_with(&dir, "h1", &sim, c.mqtt_port, false, &extra);
    online(&c, "h1", "1.3", &log);
    let job = c.add_job(https_job("1.4")).unwrap();
    let t = outcome(&c, "h1", job, 240, &log, &sim);
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}\n{}", std::fs::read_to_string(&log).unwrap());
    let id = (PK.to_string(), "h1".to_string());
    c.wait(Duration::from_secs(60), "1.4 informed", |e| e.device(&id).is_some_and(|d| d.version() == Some("1.4")))
        .unwrap();

    let s = sim.log();
    let cmds = &s.commands;
    // The download socket: SSL context 2 verifying with the uploaded bundle, SNI on, id 1.
    for want in [
        "AT+QSSLCFG=\"seclevel\",2,1".to_string(),
        "AT+QSSLCFG=\"sni\",2,1".into(),
        "AT+QSSLCFG=\"cacert\",2,\"UFS:pkg-ca.pem\"".into(),
        format!("AT+QSSLOPEN=1,2,1,\"127.0.0.1\",{https},0"),
    ] {
        assert!(cmds.contains(&want), "no {want}: {cmds:#?}");
    }
    let image = std::fs::metadata(setup().0.join("1.4/firmware-1.4.bin")).unwrap().len();
    assert!(s.rd_bytes.get(&1).copied().unwrap_or(0) >= image, "the image came on socket 1: {:?}", s.rd_bytes);
    // One MQTT socket per power-on (1.3, then 1.4): the session did not drop for the download,
    let mqtt_opens = cmds.iter().filter(|c| c.starts_with("AT+QIOPEN=1,0,")).count();
    assert_eq!(mqtt_opens, 2, "{cmds:#?}");
    // and it kept talking while the body came: a PINGREQ (2 bytes on socket 0) between the
    // download's first and last read.
    let first = cmds.iter().position(|c| c.starts_with("AT+QSSLRECV=1,")).unwrap();
    let last = cmds.iter().rposition(|c| c.starts_with("AT+QSSLRECV=1,")).unwrap();
    let pings = cmds[first..last].iter().filter(|c| *c == "AT+QISEND=0,2").count();
    assert!(pings >= 1, "no PINGREQ during the download ({} commands)", last - first);
    let dlog = std::fs::read_to_string(&log).unwrap();
    assert!(!dlog.contains("Expires="), "pre-signed URL credentials are not logged");
}

#[test]
fn a_download_socket_cut_mid_body_resumes_with_range() {
    let dir = scratch("modem-cut");
    let (c, ca) = https_console(&dir, &["h2"]);
    // The third socket 1 of the module (the head, the tail, then the body) is cut at 80 kB.
    let sim =
        ModemSim::start_tty(SimOptions { drop_socket_after: Some((1, 80_000)), ..SimOptions::realistic() }).unwrap();
    let extra = format!("download_ca = \"{}\"\n", ca.display());
    let (_d, log) = device_with(&dir, "h2", &sim, c.mqtt_port, false, &extra);
    online(&c, "h2", "1.3", &log);
    let job = c.add_job(https_job("1.4")).unwrap();
    let t = outcome(&c, "h2", job, 120, &log, &sim);
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}\n{}", std::fs::read_to_string(&log).unwrap());
    let s = sim.log();
    assert!(s.urcs.iter().any(|u| u == "+QSSLURC: \"closed\",1"), "{:?}", s.urcs);
    let opens = s.commands.iter().filter(|c| c.starts_with("AT+QSSLOPEN=1,2,1,")).count();
    assert!(opens >= 2, "the download reopened its socket: {:#?}", s.commands);
    let dlog = std::fs::read_to_string(&log).unwrap();
    let resumed = dlog.lines().filter(|l| l.contains("GET ") && !l.contains("from byte 0")).count();
    assert!(resumed >= 1, "a GET with Range past 0 after the cut:\n{dlog}");
}

/// A download server that misbehaves as told (plain HTTP on 127.0.0.1), serving `image`.
fn bad_server(image: Vec<u8>, mode: std::sync::Arc<std::sync::Mutex<&'static str>>) -> u16 {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let port = server.server_addr().to_ip().unwrap().port();
    std::thread::spawn(move || {
        for req in server.incoming_requests() {
            let range =
                req.headers().iter().find(|h| h.field.equiv("Range")).map(|h| h.value.to_string()).unwrap_or_default();
            let from: usize = range.trim_start_matches("bytes=").trim_end_matches('-').parse().unwrap_or(0);
            let body = image[from.min(image.len())..].to_vec();
            let status = if from > 0 { 206 } else { 200 };
            let m = *mode.lock().unwrap();
            let resp = match m {
                "404" => {
                    tiny_http::Response::new(404.into(), vec![], std::io::Cursor::new(b"no".to_vec()), Some(2), None)
                }
                "403" => {
                    tiny_http::Response::new(403.into(), vec![], std::io::Cursor::new(b"no".to_vec()), Some(2), None)
                }
                // No length: tiny_http sends it chunked.
                "chunked" => tiny_http::Response::new(status.into(), vec![], std::io::Cursor::new(body), None, None),
                "longer" => {
                    let mut b = body;
                    b.extend_from_slice(&[0x5A; 4096]);
                    let n = b.len();
                    tiny_http::Response::new(status.into(), vec![], std::io::Cursor::new(b), Some(n), None)
                }
                _ => {
                    let n = body.len();
                    tiny_http::Response::new(status.into(), vec![], std::io::Cursor::new(body), Some(n), None)
                }
            };
            // tiny_http sends bodies over 32 KiB chunked unless told otherwise.
            let resp = if m == "chunked" { resp } else { resp.with_chunked_threshold(usize::MAX) };
            let _ = req.respond(resp);
        }
    });
    port
}

#[test]
fn bad_downloads_through_the_modem_fail_with_a_reason_and_the_device_keeps_working() {
    let dir = scratch("modem-bad");
    let (rel, _) = setup();
    let image = std::fs::read(rel.join("1.4/firmware-1.4.bin")).unwrap();
    let mode = std::sync::Arc::new(std::sync::Mutex::new("ok"));
    let port = bad_server(image, mode.clone());
    let c = Console::start(Options {
        devices: vec![console::device(PK, "b1", "s"), console::device(PK, "b2", "s")],
        download_base: Some(format!("http://127.0.0.1:{port}")),
        quiet: true,
        ..Default::default()
    })
    .unwrap();
    let sim = ModemSim::start_tty(SimOptions::realistic()).unwrap();
    let (_d, log) = device(&dir, "b1", &sim, c.mqtt_port, false);
    online(&c, "b1", "1.3", &log);
    for (m, step, phrase) in
        [("404", -2, "HTTP 404"), ("403", -2, "HTTP 403"), ("chunked", -2, "chunked"), ("longer", -2, "the task says")]
    {
        *mode.lock().unwrap() = m;
        let mut j = https_job("1.4");
        j.devices = Some(vec!["b1".into()]);
        let job = c.add_job(j).unwrap();
        let t = outcome(&c, "b1", job, 120, &log, &sim);
        assert_eq!(t.state, TaskState::Failed, "{m}: {t:?}");
        assert_eq!(t.step, step, "{m}: {t:?}");
        assert!(t.desc.contains(phrase), "{m}: {:?} does not say {phrase:?}", t.desc);
    }
    // A URL longer than the device's buffer (`shared::ota::MAX_URL`): refused before a byte moves.
    *mode.lock().unwrap() = "ok";
    let base = c.with(|e| e.http_base.clone());
    c.with_mut(|e| e.http_base = format!("{base}/{}", "u".repeat(shared::ota::MAX_URL)));
    let mut j = https_job("1.4");
    j.devices = Some(vec!["b1".into()]);
    let job = c.add_job(j).unwrap();
    let t = outcome(&c, "b1", job, 120, &log, &sim);
    c.with_mut(|e| e.http_base = base);
    assert_eq!((t.state, t.step), (TaskState::Failed, -1), "{t:?}");
    assert!(t.desc.contains("download URL too long"), "{:?}", t.desc);
    // Still 1.3, still online; a good download then goes through.
    let mut j = https_job("1.4");
    j.devices = Some(vec!["b1".into()]);
    let job = c.add_job(j).unwrap();
    let t = outcome(&c, "b1", job, 120, &log, &sim);
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}\n{}", std::fs::read_to_string(&log).unwrap());

    // A host the download CA does not cover: the module's TLS handshake fails, said as such.
    let (c2, _ca) = https_console(&dir, &["b2"]);
    let sim2 = ModemSim::start_tty(SimOptions::realistic()).unwrap();
    let (_d2, log2) = device(&dir, "b2", &sim2, c2.mqtt_port, false);
    online(&c2, "b2", "1.3", &log2);
    let job = c2.add_job(https_job("1.4")).unwrap();
    let t = outcome(&c2, "b2", job, 120, &log2, &sim2);
    assert_eq!((t.state, t.step), (TaskState::Failed, -2), "{t:?}");
    assert!(t.desc.contains("TLS handshake failed"), "{:?}", t.desc);
    drop(c);
}

/// A job for the module firmware package `version` (the simulator's format).
fn modem_job(version: &str, from: &str, bytes: Vec<u8>) -> JobSpec {
    let p = Package::new(&format!("{version}.bin"), "modem", version, bytes);
    let mut j = JobSpec::new(p, Protocol::Https);
    j.from = vec![from.into()];
    j
}

#[test]
fn the_module_s_own_firmware_is_upgraded_as_module_modem() {
    let dir = scratch("modem-fota");
    let (c, ca) = https_console(&dir, &["f1"]);
    let sim =
        ModemSim::start_tty(SimOptions { qgmr: "EC200UCNAAR03A01M08".into(), ..SimOptions::realistic() }).unwrap();
    let extra = format!("download_ca = \"{}\"\n", ca.display());
    let (_d, log) = device_with(&dir, "f1", &sim, c.mqtt_port, false, &extra);
    online(&c, "f1", "1.3", &log);
    let id = (PK.to_string(), "f1".to_string());
    let modem_version = |e: &console::engine::Engine| e.device(&id).and_then(|d| d.versions.get("modem").cloned());
    c.wait(Duration::from_secs(30), "the module informed", |e| {
        modem_version(e).as_deref() == Some("EC200UCNAAR03A01M08")
    })
    .unwrap();

    // A corrupted package: the module refuses it (END 504) -> -3, nothing restarts.
    let mut bad = testbed::modem_sim::fota_package("EC200UCNAAR03A01M09", &[7u8; 30_000]);
    bad[100] ^= 0xFF;
    let job = c.add_job(modem_job("EC200UCNAAR03A01M09", "EC200UCNAAR03A01M08", bad)).unwrap();
    let t = outcome(&c, "f1", job, 120, &log, &sim);
    assert_eq!((t.state, t.step), (TaskState::Failed, -3), "{t:?}");
    assert!(t.desc.starts_with("modem: ") && t.desc.contains("504"), "{:?}", t.desc);

    // The good package: progress, END 0, the module restarts, the device brings the link up
    // again and informs the new version: the platform's success.
    let good = testbed::modem_sim::fota_package("EC200UCNAAR03A01M09", &[7u8; 30_000]);
    let job = c.add_job(modem_job("EC200UCNAAR03A01M09", "EC200UCNAAR03A01M08", good)).unwrap();
    let t = outcome(&c, "f1", job, 120, &log, &sim);
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}\n{}", std::fs::read_to_string(&log).unwrap());
    c.wait(Duration::from_secs(30), "the new module version", |e| {
        modem_version(e).as_deref() == Some("EC200UCNAAR03A01M09")
    })
    .unwrap();
    let s = sim.log();
    for u in ["+QIND: \"FOTA\",\"END\",0", "RDY"] {
        assert!(s.urcs.iter().any(|x| x == u), "no {u}: {:?}", s.urcs);
    }
    let fota = s.commands.iter().find(|c| c.starts_with("AT+QFOTADL=\"https://127.0.0.1:")).cloned();
    assert!(fota.is_some(), "{:#?}", s.commands);
    // The MCU app, its slots and its bootloader were not touched: still 1.3, never reset.
    assert!(c.with(|e| e.device(&id).is_some_and(|d| d.version() == Some("1.3"))));
    let dlog = std::fs::read_to_string(&log).unwrap();
    assert!(!dlog.contains("--- reset"), "the MCU was reset:\n{dlog}");
}

#[test]
fn a_module_that_refuses_the_fota_command_is_reported_and_the_device_keeps_working() {
    let dir = scratch("modem-fota-refused");
    let (c, ca) = https_console(&dir, &["f2"]);
    let sim = ModemSim::start_tty(SimOptions { fota_refuse: true, ..SimOptions::realistic() }).unwrap();
    let extra = format!("download_ca = \"{}\"\n", ca.display());
    let (_d, log) = device_with(&dir, "f2", &sim, c.mqtt_port, false, &extra);
    online(&c, "f2", "1.3", &log);
    let good = testbed::modem_sim::fota_package("EC200UCNAAR03A01M09", &[7u8; 1000]);
    // A URL longer than AT+QFOTADL takes (255 bytes): refused before the module hears of it.
    let base = c.with(|e| e.http_base.clone());
    c.with_mut(|e| e.http_base = format!("{base}/{}", "u".repeat(256)));
    let job = c.add_job(modem_job("EC200UCNAAR03A01M09", "EC200UCNAAR03A01M08", good.clone())).unwrap();
    let t = outcome(&c, "f2", job, 120, &log, &sim);
    c.with_mut(|e| e.http_base = base);
    assert_eq!((t.state, t.step), (TaskState::Failed, -1), "{t:?}");
    assert!(t.desc.starts_with("modem: URL of ") && t.desc.contains("at most 255"), "{:?}", t.desc);
    assert!(!sim.log().commands.iter().any(|c| c.starts_with("AT+QFOTADL")), "the module was asked");
    // The module answers ERROR to AT+QFOTADL.
    let job = c.add_job(modem_job("EC200UCNAAR03A01M09", "EC200UCNAAR03A01M08", good)).unwrap();
    let t = outcome(&c, "f2", job, 120, &log, &sim);
    assert_eq!((t.state, t.step), (TaskState::Failed, -1), "{t:?}");
    assert!(t.desc.starts_with("modem: "), "{:?}", t.desc);
    // The app still takes its own tasks.
    let job = c.add_job(https_job("1.4")).unwrap();
    let t = outcome(&c, "f2", job, 120, &log, &sim);
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}\n{}", std::fs::read_to_string(&log).unwrap());
}

#[test]
fn the_module_is_found_at_whatever_rate_either_side_was_left_in() {
    // The line has a rate (the simulator's pty): the device starts at 115,200, wants 921,600.
    // The module restarts right after it acknowledged the switch (a reset in the middle of it);
    // whether AT+IPR is stored without AT&W is UNCERTAIN, so both readings. Then the device
    // loses power and comes back at its own power-on rate while the module runs on at 921,600.
    for stored in [false, true] {
        let name = if stored { "n2" } else { "n1" };
        let dir = scratch(&format!("modem-rates-{name}"));
        let c = Console::start(Options {
            devices: vec![console::device(PK, name, "s")],
            quiet: true,
            ..Default::default()
        })
        .unwrap();
        let o = SimOptions { ipr_saved: stored, restart_after_ipr: true, ..SimOptions::realistic() };
        let sim = ModemSim::start_tty(o).unwrap();
        let (d, log) = device(&dir, name, &sim, c.mqtt_port, false);
        online(&c, name, "1.3", &log);
        let s = sim.log();
        assert_eq!(s.rate, 921_600, "{:#?}", s.transcript);
        assert!(s.garbled > 0, "the first probe went at 921,600 to a module at 115,200");
        let asked = s.commands.iter().filter(|c| *c == "AT+IPR=921600").count();
        // Not stored: the module came back at 115,200 and was asked again; stored: it came back
        // at 921,600 and was found there.
        assert_eq!(asked, if stored { 1 } else { 2 }, "{:#?}", s.transcript);
        let id = (PK.to_string(), name.to_string());
        let connects = c.with(|e| e.device(&id).unwrap().connects);
        drop(d);
        let before = sim.log().commands.len();
        let (_d, log) = device(&dir, name, &sim, c.mqtt_port, false);
        c.wait(Duration::from_secs(60), "a new connect", |e| e.device(&id).is_some_and(|d| d.connects > connects))
            .unwrap_or_else(|e| panic!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default()));
        let after = sim.log().commands[before..].to_vec();
        assert_eq!(after.first().map(String::as_str), Some("AT"), "{after:#?}");
        assert!(!after.iter().any(|c| c.starts_with("AT+IPR")), "found at 921,600 at once: {after:#?}");
        assert_eq!(sim.log().rate, 921_600);
    }
}
