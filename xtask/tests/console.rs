//! The local console (`cargo xtask console`) as a user runs it: a TOML with devices and a job,
//! TLS listeners with a certificate made by openssl, the host device upgrading over MQTT/TLS and
//! HTTPS Range, the JSON status file and the table; and its front door against a third-party MQTT
//! client (rumqttc): a wrong password gets CONNACK 4, right credentials reach the broker.

mod common;
use common::*;
use machine::proc::{free_port, Killed};
use ota_console::{self as console, Console, Options};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use testbed::device::{Device as _, HostConfig, HostDevice};

const PK: &str = "a1CnsTest01";

#[test]
fn console_cli_upgrades_a_device_over_tls_and_https_and_reports_it() {
    let dir = scratch("console-cli");
    for v in ["1.3", "1.4"] {
        xtask_ok(&["release", "--board", "host", "--version", v, "--body-size", "100000", "--out", s(&dir.join(v))]);
    }
    let device = PathBuf::from(xtask_ok(&["build", "--board", "host"]).trim().lines().last().unwrap());
    let (ca, cert, key) = tls_files(&dir, "console");
    let port = || free_port().unwrap();
    let (mqtt, http, mqtts, https) = (port(), port(), port(), port());
    let conf = dir.join("console.toml");
    std::fs::write(
        &conf,
        format!(
            "mqtt_port = {mqtt}\nhttp_port = {http}\nstatus = \"status.json\"\n\
             [tls]\ncert = \"{}\"\nkey = \"{}\"\nport = {mqtts}\nhttps_port = {https}\n\
             [[device]]\nproduct_key = \"{PK}\"\ndevice_name = \"dev-tls\"\ndevice_secret = \"s1\"\n\
             [[job]]\nrelease = \"1.4\"\nfrom = [\"1.3\"]\nprotocol = \"https\"\ntimeout_min = 10\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let out = std::fs::File::create(dir.join("console.out")).unwrap();
    let _console = Killed(
        Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["console", "--config", s(&conf)])
            .stdout(out)
            .stderr(std::fs::File::create(dir.join("console.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    machine::proc::wait_port(mqtts, "the console").unwrap();

    let ca_line = format!("ca = \"{}\"\n", ca.display());
    let flash = dir.join("dev.flash");
    let c = HostConfig {
        product_key: PK,
        device_name: "dev-tls",
        device_secret: "s1",
        port: mqtts,
        tls: true,
        flash: &flash,
        extra: &ca_line,
    };
    let log = dir.join("device.log");
    let factory = dir.join("1.3/factory.bin");
    let mut dev = HostDevice::new(&device, &c, dir.join("device.toml"), log.clone(), &factory).unwrap();
    dev.start().unwrap(); // powered off when dropped

    let t0 = Instant::now();
    let status = loop {
        let st: serde_json::Value = std::fs::read(dir.join("status.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let d = &st["devices"][0];
        if d["tasks"]["1"]["state"] == "succeeded" && d["versions"]["default"] == "1.4" {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no success in 60 s; status {st:#}\ndevice log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status["jobs"][0]["protocol"], "https");
    assert!(status["counts"]["http_requests"].as_u64().unwrap() >= 2, "{status:#}");
    let dlog = std::fs::read_to_string(&log).unwrap();
    assert!(dlog.contains("securemode=2"), "{dlog}");
    assert!(dlog.contains(&format!("GET https://127.0.0.1:{https}/ota/1/firmware-1.4.bin")), "{dlog}");
    // The live table shows the device on 1.4 (it is printed every second when something changed).
    std::thread::sleep(Duration::from_millis(1500));
    let table = std::fs::read_to_string(dir.join("console.out")).unwrap();
    let row = table.lines().rev().find(|l| l.contains("dev-tls")).unwrap_or_default().to_string();
    assert!(row.contains("1.4") && row.contains("succeeded"), "{table}");
}

fn rumqttc_connect(port: u16, client_id: &str, user: &str, pass: &str) -> Result<rumqttc::Client, String> {
    let mut o = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_credentials(user, pass);
    let (client, mut conn) = rumqttc::Client::new(o, 10);
    for ev in conn.iter() {
        match ev {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                std::thread::spawn(move || for _ in conn.iter() {});
                return Ok(client);
            }
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("connection closed".into())
}

#[test]
fn the_front_door_answers_connack_4_to_a_wrong_password_and_lets_the_right_one_through() {
    let c = Console::start(Options {
        devices: vec![console::device(PK, "dev-1", "0123456789abcdef0123456789abcdef")],
        quiet: true,
        ..Default::default()
    })
    .unwrap();
    // docs/PROTOCOL.md §1.6: a CONNECT as a third-party client sends it (securemode 3: the plain port).
    let cid = "a1CnsTest01.dev-1|securemode=3,signmethod=hmacsha256,timestamp=1700000000000|";
    let user = "dev-1&a1CnsTest01";
    let dev = shared::alink::DeviceSecret {
        product_key: PK,
        device_name: "dev-1",
        device_secret: "0123456789abcdef0123456789abcdef",
    };
    let creds = shared::alink::credentials(
        &dev,
        shared::alink::SignMethod::HmacSha256,
        Some("a1CnsTest01.dev-1"),
        Some("1700000000000"),
        3,
    )
    .unwrap();
    let e = rumqttc_connect(c.mqtt_port, cid, user, "00ff").err().expect("a wrong password connects");
    assert!(e.contains("BadUserNamePassword"), "{e}");
    let e = rumqttc_connect(c.mqtt_port, cid, "dev-9&a1CnsTest01", &creds.password).err().unwrap();
    assert!(e.contains("BadUserNamePassword"), "{e}");
    let e = rumqttc_connect(c.mqtt_port, "no-params", user, &creds.password).err().unwrap();
    assert!(e.contains("BadClientId"), "{e}");
    c.wait(Duration::from_secs(5), "3 refusals counted", |e| e.counts.refused == 3).unwrap();

    // The right credentials reach the broker: the device's inform lands in the engine.
    let client = rumqttc_connect(c.mqtt_port, cid, user, &creds.password).unwrap();
    client
        .publish(
            format!("/ota/device/inform/{PK}/dev-1"),
            rumqttc::QoS::AtMostOnce,
            false,
            r#"{"id":"1","params":{"version":"2.0"}}"#,
        )
        .unwrap();
    let id = (PK.to_string(), "dev-1".to_string());
    c.wait(Duration::from_secs(5), "the inform", |e| {
        e.device(&id).and_then(|d| d.version().map(String::from)) == Some("2.0".into())
    })
    .unwrap();
    assert!(c.with(|e| e.device(&id).unwrap().online));
}

// ---- the front door as strict as Aliyun, met by a third-party client (rumqttc) ----

use ota_console::engine::{JobSpec, Package, Protocol};
use shared::alink::{BlockReply, SignMethod};

const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// A third-party MQTT client logged in as device `dn` (client id `prefix|params|`).
struct Peer {
    client: rumqttc::Client,
    rx: std::sync::mpsc::Receiver<rumqttc::Packet>,
}

fn login(port: u16, dn: &str, params: &str, keep_alive: u64) -> Result<Peer, String> {
    let dev = shared::alink::DeviceSecret { product_key: PK, device_name: dn, device_secret: SECRET };
    let creds = shared::alink::credentials(&dev, SignMethod::HmacSha256, None, Some("1"), 3).unwrap();
    // The same password with the client id's parameters of the test's choosing.
    let client_id = format!("{PK}.{dn}|{params},signmethod=hmacsha256,timestamp=1|");
    let mut o = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_credentials(creds.username.as_str(), creds.password.as_str());
    o.set_keep_alive(Duration::from_secs(keep_alive));
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut conn) = rumqttc::Client::new(o, 10);
    let (tx, rx) = std::sync::mpsc::channel();
    for ev in conn.iter() {
        match ev {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => break,
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(rumqttc::Event::Incoming(p)) => {
                    if tx.send(p).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(rumqttc::Packet::Disconnect);
                    let _ = e;
                    return;
                }
            }
        }
    });
    Ok(Peer { client, rx })
}

impl Peer {
    /// The next PUBLISH (or SUBACK, or the disconnect) within `secs`.
    fn next(&self, secs: u64, want: impl Fn(&rumqttc::Packet) -> bool) -> Option<rumqttc::Packet> {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(secs) {
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(p) if want(&p) => return Some(p),
                Ok(_) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(_) => return None,
            }
        }
        None
    }
    fn publish(&self, topic: String, payload: &[u8]) {
        self.client.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.to_vec()).unwrap();
    }
    fn inform(&self, dn: &str, v: &str) {
        self.publish(
            format!("/ota/device/inform/{PK}/{dn}"),
            format!(r#"{{"id":"1","params":{{"version":"{v}"}}}}"#).as_bytes(),
        );
    }
}

fn is_publish(topic_end: &'static str) -> impl Fn(&rumqttc::Packet) -> bool {
    move |p| matches!(p, rumqttc::Packet::Publish(x) if x.topic.ends_with(topic_end))
}

fn strict(names: &[&str]) -> Console {
    Console::start(Options {
        devices: names.iter().map(|n| console::device(PK, n, SECRET)).collect(),
        quiet: true,
        ..Default::default()
    })
    .unwrap()
}

fn package(v: &str, len: usize) -> Package {
    Package::new(&format!("firmware-{v}.bin"), "default", v, bytes(len, 7))
}

#[test]
fn a_keep_alive_outside_30_to_1200_s_and_a_securemode_for_the_other_listener_are_refused() {
    let c = strict(&["k1"]);
    for (params, keep_alive, want) in [
        ("securemode=3", 20, "ServiceUnavailable"),
        ("securemode=3", 1300, "ServiceUnavailable"),
        ("securemode=2", 60, "BadClientId"),
    ] {
        let e = login(c.mqtt_port, "k1", params, keep_alive)
            .err()
            .unwrap_or_else(|| panic!("{params} {keep_alive} connected"));
        assert!(e.contains(want), "{params} {keep_alive}: {e}");
    }
    assert!(login(c.mqtt_port, "k1", "securemode=3", 30).is_ok());
    assert!(login(c.mqtt_port, "k1", "securemode=3", 1200).is_ok());
    c.wait(Duration::from_secs(5), "3 refusals", |e| e.counts.refused == 3).unwrap();
}

#[test]
fn an_ss_1_client_is_subscribed_by_the_server_and_gets_its_pushes() {
    let c = strict(&["ss1"]);
    let p = login(c.mqtt_port, "ss1", "securemode=3,_ss=1", 60).unwrap();
    p.inform("ss1", "1.3"); // it never subscribes
    c.wait(Duration::from_secs(5), "the inform", |e| e.device(&(PK.into(), "ss1".into())).unwrap().version().is_some())
        .unwrap();
    c.add_job(JobSpec::new(package("1.4", 1000), Protocol::Mqtt)).unwrap();
    let push = p.next(5, is_publish("/ss1")).expect("the push reaches a client that never subscribed");
    let rumqttc::Packet::Publish(push) = push else { unreachable!() };
    assert!(push.topic.starts_with("/ota/device/upgrade/"));
    // A client without `_ss=1` that does not subscribe gets nothing.
    let c = strict(&["ss0"]);
    let p = login(c.mqtt_port, "ss0", "securemode=3", 60).unwrap();
    p.inform("ss0", "1.3");
    std::thread::sleep(Duration::from_millis(300));
    c.add_job(JobSpec::new(package("1.4", 1000), Protocol::Mqtt)).unwrap();
    assert!(p.next(2, is_publish("/ss0")).is_none());
}

#[test]
fn a_device_uses_only_its_own_topics_and_cannot_read_another_s_download_url() {
    let c = strict(&["victim", "thief"]);
    let victim = login(c.mqtt_port, "victim", "securemode=3", 60).unwrap();
    let thief = login(c.mqtt_port, "thief", "securemode=3", 60).unwrap();
    thief.client.subscribe(format!("/ota/device/upgrade/{PK}/victim"), rumqttc::QoS::AtLeastOnce).unwrap();
    thief.client.subscribe("/ota/device/upgrade/+/+", rumqttc::QoS::AtLeastOnce).unwrap();
    thief.client.subscribe("#", rumqttc::QoS::AtLeastOnce).unwrap();
    thief.client.subscribe(format!("/sys/{PK}/thief/#"), rumqttc::QoS::AtLeastOnce).unwrap();
    let mut codes = vec![];
    for _ in 0..4 {
        let Some(rumqttc::Packet::SubAck(a)) = thief.next(5, |p| matches!(p, rumqttc::Packet::SubAck(_))) else {
            panic!("no SUBACK")
        };
        codes.push(format!("{:?}", a.return_codes));
    }
    assert_eq!(codes[..3], ["[Failure]", "[Failure]", "[Failure]"], "foreign filters get 0x80: {codes:?}");
    assert!(codes[3].contains("Success"), "its own tree is granted: {codes:?}");
    // The thief asks for the victim's task: the PUBLISH to a foreign topic is dropped.
    victim
        .client
        .subscribe(format!("/sys/{PK}/victim/thing/ota/firmware/get_reply"), rumqttc::QoS::AtLeastOnce)
        .unwrap();
    victim.inform("victim", "1.3");
    c.add_job(JobSpec::new(package("1.4", 1000), Protocol::Https)).unwrap();
    let gets = c.with(|e| e.counts.firmware_get);
    thief.publish(format!("/sys/{PK}/victim/thing/ota/firmware/get"), br#"{"id":"66","params":{}}"#);
    thief.inform("victim", "0.1");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.with(|e| e.counts.firmware_get), gets, "the foreign firmware/get never reached the platform");
    let v = c.with(|e| e.device(&(PK.into(), "victim".into())).unwrap().version().map(String::from));
    assert_eq!(v.as_deref(), Some("1.3"), "the foreign inform was dropped");
    // The victim's own pull carries its URL; the thief sees none of it.
    victim.publish(format!("/sys/{PK}/victim/thing/ota/firmware/get"), br#"{"id":"7","params":{}}"#);
    let reply = victim.next(5, is_publish("/get_reply")).expect("the victim's reply");
    let rumqttc::Packet::Publish(reply) = reply else { unreachable!() };
    assert!(String::from_utf8_lossy(&reply.payload).contains("Expires="));
    assert!(thief.next(1, |p| matches!(p, rumqttc::Packet::Publish(_))).is_none(), "the thief received a message");
}

#[test]
fn block_requests_outside_aliyun_s_rules_get_an_error_reply_never_silence() {
    let c = strict(&["b1"]);
    let p = login(c.mqtt_port, "b1", "securemode=3", 60).unwrap();
    p.client.subscribe(format!("/sys/{PK}/b1/thing/file/download_reply"), rumqttc::QoS::AtLeastOnce).unwrap();
    p.inform("b1", "1.3");
    std::thread::sleep(Duration::from_millis(300));
    c.add_job(JobSpec::new(package("1.4", 10_000), Protocol::Mqtt)).unwrap();
    let stream = ota_console::engine::stream_id(1);
    let ask = |id: &str, stream: u64, file: u32, offset: u32, size: u32| {
        let mut b = [0u8; 256];
        let n = shared::alink::download_request(&mut b, id, "t", stream, file, offset, size).unwrap();
        p.publish(format!("/sys/{PK}/b1/thing/file/download"), &b[..n]);
        let Some(rumqttc::Packet::Publish(r)) = p.next(5, is_publish("/download_reply")) else {
            panic!("silence for {id}")
        };
        r.payload.to_vec()
    };
    for (id, stream, file, offset, size, code, says) in [
        ("1", stream, 1, 0, 100, 400, "below 256"),
        ("2", stream, 1, 0, 200_000, 400, "outside 256..131072"),
        ("3", stream, 1, 20_000, 1024, 400, "past the end"),
        ("4", 42, 1, 0, 1024, 404, "stream 42 not found"),
        ("5", stream, 2, 0, 1024, 404, "file 2 not found"),
    ] {
        let r = ask(id, stream, file, offset, size);
        match shared::alink::parse_download_reply(&r).unwrap() {
            BlockReply::Refused { id: rid, code: c, msg } => {
                assert_eq!((rid, c), (Some(id), code), "{msg}");
                assert!(msg.contains(says), "{msg}");
            }
            other => panic!("request {id}: {other:?}"),
        }
    }
    // The last block may be shorter than 256; a good request gets its block.
    let r = ask("6", stream, 1, 9_900, 100);
    assert!(matches!(shared::alink::parse_download_reply(&r), Ok(BlockReply::Data(b)) if b.data.len() == 100));
    let d = c.with(|e| e.device(&(PK.into(), "b1".into())).unwrap().clone());
    assert_eq!(d.refused_requests, 5, "{:?}", d.violations);
}

#[test]
fn a_publish_over_256_kb_closes_the_connection_and_a_newer_login_replaces_an_older_one() {
    let c = strict(&["big"]);
    let p = login(c.mqtt_port, "big", "securemode=3", 60).unwrap();
    p.publish(format!("/{PK}/big/user/x"), &vec![0u8; 300 * 1024]);
    assert!(p.next(5, |x| matches!(x, rumqttc::Packet::Disconnect)).is_some(), "still connected");
    let first = login(c.mqtt_port, "big", "securemode=3", 60).unwrap();
    let _second = login(c.mqtt_port, "big", "securemode=3", 60).unwrap();
    assert!(first.next(5, |x| matches!(x, rumqttc::Packet::Disconnect)).is_some(), "the older one stays");
    c.wait(Duration::from_secs(10), "the newer one online", |e| e.device(&(PK.into(), "big".into())).unwrap().online)
        .expect("the newer one is online");
}

#[test]
fn pushes_carry_what_aliyun_s_carry() {
    let c = strict(&["j1"]);
    let p = login(c.mqtt_port, "j1", "securemode=3", 60).unwrap();
    p.client.subscribe(format!("/ota/device/upgrade/{PK}/j1"), rumqttc::QoS::AtLeastOnce).unwrap();
    p.inform("j1", "1.3");
    std::thread::sleep(Duration::from_millis(300));
    let mut spec = JobSpec::new(package("1.4", 1000), Protocol::Https);
    spec.digest = ota_console::engine::DigestKind::Sha256;
    spec.ext_data =
        vec![("_package_udi".into(), r#"{"notes":"a \"quoted\" note"}"#.into()), ("region".into(), "east".into())];
    c.add_job(spec).unwrap();
    let Some(rumqttc::Packet::Publish(push)) = p.next(5, is_publish("/j1")) else { panic!("no push") };
    let v: serde_json::Value = serde_json::from_slice(&push.payload).unwrap();
    let d = &v["data"];
    assert_eq!((v["code"].as_str(), v["message"].as_str()), (Some("1000"), Some("success")));
    assert_eq!(d["signMethod"], "SHA256");
    assert!(d.get("md5").is_none() && d.get("isDiff").is_none() && d.get("module").is_none(), "{d}");
    assert_eq!(d["extData"]["region"], "east");
    assert_eq!(d["extData"]["_package_udi"], r#"{"notes":"a \"quoted\" note"}"#);
    let url = d["url"].as_str().unwrap();
    let expires: u64 = url.split("Expires=").nth(1).unwrap().split('&').next().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!((now + 24 * 3600 - 5..=now + 24 * 3600 + 5).contains(&expires), "valid 24 h: {url}");
    // The Aliyun API refuses jobs it would refuse.
    let mut bad = JobSpec::new(package("1.4 beta", 10), Protocol::Mqtt);
    assert!(c.add_job(bad.clone()).is_err());
    bad.package = package("1.5", 10);
    bad.ext_data = vec![("_package_udi".into(), "u".repeat(4097))];
    assert!(c.add_job(bad.clone()).is_err());
    bad.ext_data = (0..11).map(|i| (format!("t{i}"), "v".into())).collect();
    assert!(c.add_job(bad).is_err());
}
