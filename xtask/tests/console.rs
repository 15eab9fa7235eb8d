//! The local console (`cargo xtask console`) as a user runs it: a TOML with devices and a job,
//! TLS listeners with a certificate made by openssl, the host device upgrading over MQTT/TLS and
//! HTTPS Range, the JSON status file and the table; and its front door against a third-party MQTT
//! client (rumqttc): a wrong password gets CONNACK 4, right credentials reach the broker.

mod common;
use common::*;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use xtask::console::{self, Console, Options};
use xtask::proc::{free_port, Killed};

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
             [[job]]\nrelease = \"1.4\"\nfrom = [\"1.3\"]\nprotocol = \"https\"\ntimeout_s = 60\n",
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
    xtask::proc::wait_port(mqtts, "the console").unwrap();

    std::fs::copy(dir.join("1.3/factory.bin"), dir.join("dev.flash")).unwrap();
    let dconf = dir.join("device.toml");
    std::fs::write(
        &dconf,
        format!(
            "product_key = \"{PK}\"\ndevice_name = \"dev-tls\"\ndevice_secret = \"s1\"\nhost = \"127.0.0.1\"\nport = {mqtts}\n\
             tls = true\nca = \"{}\"\nflash = \"{}\"\n",
            ca.display(),
            dir.join("dev.flash").display()
        ),
    )
    .unwrap();
    let log = dir.join("device.log");
    let _dev = Killed(
        Command::new(&device)
            .args(["--config", s(&dconf)])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );

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
    assert!(dlog.contains("(TLS)"), "{dlog}");
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
    // ALIYUN.md §1.6: a CONNECT as a third-party client sends it.
    let cid = "a1CnsTest01.dev-1|securemode=2,signmethod=hmacsha256,timestamp=1700000000000|";
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
        2,
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
