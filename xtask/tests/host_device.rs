//! The host device (the real app for the host board) against mosquitto started here on
//! 127.0.0.1, with a scripted console in the test: upgrades over MQTT stream and over HTTP with
//! Range, `kill -9` during the download (resume from a block boundary) and during the swap (a
//! valid image boots and the device reports the truth).

mod common;
use common::*;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use xtask::mini_console::{is_inform, Console, DN, PK};
use xtask::proc::Killed;

fn free_port() -> u16 {
    xtask::proc::free_port().unwrap()
}

/// Starts mosquitto with `conf` and waits until it listens on `port`.
fn mosquitto_with(dir: &Path, conf: &str, port: u16) -> Killed {
    let path = dir.join("mosquitto.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new(mosquitto())
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto");
    let child = Killed(child);
    xtask::proc::wait_port(port, "mosquitto").unwrap();
    child
}

/// A plain broker for anonymous clients.
fn broker(dir: &Path) -> (Killed, u16) {
    let port = free_port();
    (mosquitto_with(dir, &format!("listener {port} 127.0.0.1\nallow_anonymous true\n"), port), port)
}

struct Releases {
    key: PathBuf,
    device: PathBuf,
    v13: PathBuf,
    v14: Vec<u8>,
}

fn releases() -> &'static Releases {
    static R: OnceLock<Releases> = OnceLock::new();
    R.get_or_init(|| {
        let d = scratch("host_releases");
        let key = d.join("k.pem");
        xtask_ok(&["keygen", "--out", s(&key)]);
        for (v, size) in [("1.3", "8192"), ("1.4", "40000")] {
            xtask_ok(&[
                "release",
                "--board",
                "host",
                "--version",
                v,
                "--key",
                s(&key),
                "--body-size",
                size,
                "--out",
                s(&d.join(v)),
            ]);
        }
        let device =
            PathBuf::from(xtask_ok(&["build", "--board", "host", "--key", s(&key)]).trim().lines().last().unwrap());
        Releases { key, device, v13: d.join("1.3"), v14: std::fs::read(d.join("1.4/firmware-1.4.bin")).unwrap() }
    })
}

struct Dev {
    dir: PathBuf,
    config: PathBuf,
    flash: PathBuf,
}

impl Dev {
    fn new(name: &str, port: u16) -> Dev {
        let dir = scratch(name);
        let flash = dir.join("flash.bin");
        std::fs::copy(releases().v13.join("factory.bin"), &flash).unwrap();
        let config = dir.join("device.toml");
        std::fs::write(
            &config,
            format!(
                "product_key = \"{PK}\"\ndevice_name = \"{DN}\"\ndevice_secret = \"0123456789abcdef0123456789abcdef\"\n\
                 host = \"127.0.0.1\"\nport = {port}\ntls = false\nflash = \"{}\"\nblock_size = 2048\n",
                flash.display()
            ),
        )
        .unwrap();
        Dev { dir, config, flash }
    }

    fn start(&self, env: &[(&str, &str)]) -> Killed {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("device.log")).unwrap();
        let mut c = Command::new(&releases().device);
        c.arg("--config").arg(&self.config).stdout(log.try_clone().unwrap()).stderr(log);
        for (k, v) in env {
            c.env(k, v);
        }
        Killed(c.spawn().expect("starting the host device"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("device.log")).unwrap_or_default()
    }

    /// The Aliyun version of the image in ACTIVE, read from the flash file.
    fn active_version(&self) -> String {
        let f = std::fs::read(&self.flash).unwrap();
        let l = memory_layouts::Board::Host.layout();
        let active = &f[l.active.origin as usize..l.active.end() as usize];
        let key = shared::image::PublicKey(load_pub(&releases().key));
        let opts = shared::image::VerifyOptions { keys: &[key], min_sec_cnt: 0, slot_size: None };
        let info = shared::image::verify(&mut shared::image::SliceFlash(active), &opts, &mut [0; 1024])
            .expect("ACTIVE verifies");
        info.aliyun_version.unwrap().to_string()
    }
}

fn load_pub(key: &Path) -> [u8; 32] {
    let o = run(openssl(), &["pkey", "-in", s(key), "-pubout", "-outform", "DER"]);
    o.stdout[o.stdout.len() - 32..].try_into().unwrap()
}

#[test]
fn host_device_upgrades_over_mqtt_stream() {
    let r = releases();
    let dir = scratch("host_mqtt");
    let (_broker, port) = broker(&dir);
    let dev = Dev::new("host_mqtt_dev", port);
    let mut console = Console::new(port, r.v14.clone());
    let _d = dev.start(&[]);
    console.run_until(Duration::from_secs(30), None, |t, v| is_inform(t, v, "1.3"));
    console.push(None);
    console.run_until(Duration::from_secs(60), None, |t, v| is_inform(t, v, "1.4"));
    let steps = console.steps();
    assert_eq!(steps.first(), Some(&1), "{steps:?}");
    assert_eq!(steps.last(), Some(&100), "{steps:?}");
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
    assert_eq!(dev.active_version(), "1.4");
    let log = dev.log();
    assert!(!log.contains("0123456789abcdef0123456789abcdef"), "the secret is in the log:\n{log}");
    assert!(log.contains("verify: OK") && log.contains("reset") && log.contains("confirm: done"), "{log}");
}

#[test]
fn host_device_upgrades_over_http_with_range() {
    let r = releases();
    let dir = scratch("host_http");
    let (_broker, port) = broker(&dir);
    let dev = Dev::new("host_http_dev", port);
    // An HTTP server with Range, which breaks the body off half way.
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let http_port = server.server_addr().to_ip().unwrap().port();
    let ranges = Arc::new(Mutex::new(Vec::<String>::new()));
    let (image, seen) = (r.v14.clone(), ranges.clone());
    std::thread::spawn(move || {
        for (i, req) in server.incoming_requests().enumerate() {
            let range =
                req.headers().iter().find(|h| h.field.equiv("Range")).map(|h| h.value.to_string()).unwrap_or_default();
            seen.lock().unwrap().push(range.clone());
            let from: usize = range.trim_start_matches("bytes=").trim_end_matches('-').parse().unwrap_or(0);
            let body = image[from..].to_vec();
            let len = body.len();
            // Requests: the head, the tail (security counter), the body, which breaks off half way.
            let send = if i == 2 { body[..len / 2].to_vec() } else { body };
            let status = if from > 0 { 206 } else { 200 };
            let resp = tiny_http::Response::new(
                tiny_http::StatusCode(status),
                vec![],
                std::io::Cursor::new(send),
                Some(len), // announces all, sends half the first time: the connection breaks
                None,
            );
            let _ = req.respond(resp);
        }
    });
    let mut console = Console::new(port, r.v14.clone());
    let _d = dev.start(&[]);
    console.run_until(Duration::from_secs(30), None, |t, v| is_inform(t, v, "1.3"));
    let url = format!("http://127.0.0.1:{http_port}/ota/pkg.bin?Expires=1&Signature=x");
    console.push(Some(&url));
    console.run_until(Duration::from_secs(60), None, |t, v| is_inform(t, v, "1.4"));
    let ranges = ranges.lock().unwrap().clone();
    let from = |r: &String| r.trim_start_matches("bytes=").trim_end_matches('-').parse::<usize>().unwrap();
    assert_eq!(ranges.first().map(String::as_str), Some("bytes=0-"), "{ranges:?}");
    let tail = 0x200 + 40_000; // the protected TLVs of the 1.4 release, read before the body
    assert_eq!(from(&ranges[1]), tail, "{ranges:?}");
    assert!(ranges.len() >= 4 && from(&ranges[3]) > from(&ranges[2]), "resumed after the break with Range: {ranges:?}");
    assert_eq!(dev.active_version(), "1.4");
    assert!(!dev.log().contains("Signature=x"), "pre-signed URL credentials are not logged");
}

#[test]
fn kill_9_during_download_resumes_from_a_block_boundary() {
    let r = releases();
    let dir = scratch("host_kill_download");
    let (_broker, port) = broker(&dir);
    let dev = Dev::new("host_kill_download_dev", port);
    let mut console = Console::new(port, r.v14.clone());
    console.serve_below = 20 * 1024; // then the network stalls
    let d = dev.start(&[]);
    console.run_until(Duration::from_secs(30), None, |t, v| is_inform(t, v, "1.3"));
    console.push(None);
    console.run_until(Duration::from_secs(30), None, |t, v| {
        t.ends_with("/file/download") && v["params"]["fileBlock"]["offset"].as_u64() >= Some(20 * 1024)
    });
    std::thread::sleep(Duration::from_millis(300)); // the last blocks written and their page saved
    drop(d); // kill -9
    console.requests.clear();
    console.serve_below = u32::MAX;
    let _d = dev.start(&[]);
    // After the restart the platform still has the task: it comes back through firmware/get.
    console.run_until(Duration::from_secs(60), Some(None), |t, v| is_inform(t, v, "1.4"));
    let first = console.requests[0];
    assert!(first >= 4096 && first % 4096 == 0, "resumed at {first}, not from zero: {:?}", console.requests);
    assert!(dev.log().contains("resume: re-hashing"), "{}", dev.log());
    assert_eq!(dev.active_version(), "1.4");
}

#[test]
fn kill_9_during_the_swap_boots_a_valid_image_and_reports_the_truth() {
    let r = releases();
    for (i, cut_ms) in [150u64, 400, 900].into_iter().enumerate() {
        let dir = scratch(&format!("host_kill_swap_{i}"));
        let (_broker, port) = broker(&dir);
        let dev = Dev::new(&format!("host_kill_swap_dev_{i}"), port);
        let mut console = Console::new(port, r.v14.clone());
        let d = dev.start(&[("ALIYUN_OTA_HOST_FLASH_DELAY_MS", "20")]);
        console.run_until(Duration::from_secs(30), None, |t, v| is_inform(t, v, "1.3"));
        console.push(None);
        console
            .run_until(Duration::from_secs(120), None, |t, v| t.contains("/progress/") && v["params"]["step"] == "100");
        std::thread::sleep(Duration::from_millis(cut_ms)); // the device resets and swaps: cut it
        drop(d);
        let _d = dev.start(&[]);
        let v = console.run_until(Duration::from_secs(60), None, |t, _| t.contains("/inform/"));
        let reported = v["params"]["version"].as_str().unwrap().to_string();
        assert_eq!(
            reported,
            dev.active_version(),
            "cut after {cut_ms} ms: the device reports what runs\n{}",
            dev.log()
        );
        if reported == "1.3" {
            let steps = console.steps();
            assert_eq!(steps.last(), Some(&-1), "a revert is reported as -1: {steps:?}");
        }
    }
}

#[test]
fn a_wrong_secret_is_refused_and_said_clearly() {
    let dir = scratch("host_wrong_secret");
    // mosquitto with a password file stands in for Aliyun's credential check here.
    let port = free_port();
    let pw = dir.join("passwd");
    std::fs::write(&pw, "").unwrap();
    let o =
        Command::new("mosquitto_passwd").arg("-b").arg(&pw).arg(format!("{DN}&{PK}")).arg("not-the-password").output();
    if o.map(|o| !o.status.success()).unwrap_or(true) {
        // mosquitto_passwd ships with mosquitto; without it, deny everyone by an empty password file.
        std::fs::write(&pw, "").unwrap();
    }
    let conf = format!("listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n", pw.display());
    let _b = mosquitto_with(&dir, &conf, port);
    let dev = Dev::new("host_wrong_secret_dev", port);
    let mut d = dev.start(&[]);
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = d.0.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "the device should stop on a refused login:\n{}", dev.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success());
    let log = dev.log();
    assert!(log.contains("bad username or password"), "{log}");
    let _ = d.0.stdout.take().map(|mut s| s.read_to_end(&mut vec![]));
}

#[test]
fn host_device_connects_over_tls_and_checks_the_certificate() {
    let r = releases();
    let dir = scratch("host_tls");
    let (ca, srv, srv_key) = tls_files(&dir, "good");
    let (other_ca, _, _) = tls_files(&dir, "other");
    let (plain, tls) = (free_port(), free_port());
    let conf = format!(
        "per_listener_settings false\nallow_anonymous true\nlistener {plain} 127.0.0.1\nlistener {tls} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
        ca.display(),
        srv.display(),
        srv_key.display()
    );
    let _b = mosquitto_with(&dir, &conf, plain);
    let mut console = Console::new(plain, r.v14.clone());
    for (name, ca_file, trusted) in [("host_tls_good", &ca, true), ("host_tls_other", &other_ca, false)] {
        let dev = Dev::new(name, tls);
        let cfg = std::fs::read_to_string(&dev.config)
            .unwrap()
            .replace("tls = false", &format!("tls = true\nca = \"{}\"", ca_file.display()));
        std::fs::write(&dev.config, cfg).unwrap();
        let _d = dev.start(&[]);
        if trusted {
            console.run_until(Duration::from_secs(30), None, |t, v| is_inform(t, v, "1.3"));
            assert!(dev.log().contains("(TLS)"), "{}", dev.log());
        } else {
            std::thread::sleep(Duration::from_secs(3));
            let log = dev.log();
            assert!(
                log.contains("TLS to 127.0.0.1") && !log.contains("connected to"),
                "an unknown CA must not connect:\n{log}"
            );
        }
    }
}

#[test]
fn xtask_device_writes_the_factory_image_and_says_what_is_wrong() {
    let r = releases();
    let dir = scratch("xtask_device_cli");
    let flash = dir.join("flash.bin");
    let config = dir.join("device.toml");
    std::fs::write(
        &config,
        format!(
            "product_key = \"{PK}\"\ndevice_name = \"{DN}\"\ndevice_secret = \"x\"\nhost = \"127.0.0.1\"\nport = 9\ntls = false\nflash = \"{}\"\n",
            flash.display()
        ),
    )
    .unwrap();
    // No flash file and no --factory: say how to make one.
    let err = xtask_err(&["device", "--config", s(&config)]);
    assert!(err.contains("--factory"), "{err}");
    // A release for another board is refused, and nothing is written.
    let d = scratch("xtask_device_cli_nrf");
    std::fs::write(d.join("manifest.json"), r#"{"board":"nrf52840-dk"}"#).unwrap();
    let err = xtask_err(&["device", "--config", s(&config), "--factory", s(&d)]);
    assert!(err.contains("not for the host board"), "{err}");
    assert!(!flash.exists());
    // A host release is written into the flash file, then the device starts (and, with no
    // broker on port 9, keeps retrying: stop it).
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["device", "--config", s(&config), "--factory", s(&r.v13), "--key", s(&r.key)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !(flash.exists() && std::fs::metadata(&flash).unwrap().len() == 4 << 20) {
        assert!(t0.elapsed() < Duration::from_secs(120), "the factory image was not written");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(std::fs::read(&flash).unwrap(), std::fs::read(r.v13.join("factory.bin")).unwrap());
}
