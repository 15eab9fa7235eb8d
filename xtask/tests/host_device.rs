//! The host device (the real app for the host board, a Linux process) against the local console
//! (the strict Aliyun twin) and, for interop, against mosquitto with the console's engine on it:
//! upgrades over MQTT stream and HTTP Range, `kill -9` during the download and the swap, the
//! connect policy (a build whose login fails is reverted, an unreachable broker is waited for until
//! the confirm deadline), the periodic pull, the back-off, the settings Aliyun refuses.

mod common;
use common::*;
use machine::proc::Killed;
use ota_console::engine::{BlockService, JobSpec, Package, Protocol, TaskRecord, TaskState};
use ota_console::{self as console, auth::DeviceId, Console, Options};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use testbed::device::{Device as _, HostConfig, HostDevice};
use testbed::proxy::Proxy;

const PK: &str = "a1B2c3D4e5F";
const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn free_port() -> u16 {
    machine::proc::free_port().unwrap()
}

/// Starts mosquitto with `conf` and waits until it listens on `port`. Started as root it would
/// drop to the `mosquitto` user, who cannot read the test's files under a private checkout
/// (`mktemp -d` makes it 0700): `user root` keeps it as it was started (a no-op otherwise).
fn mosquitto_with(dir: &Path, conf: &str, port: u16) -> Killed {
    let path = dir.join("mosquitto.conf");
    std::fs::write(&path, format!("user root\n{conf}")).unwrap();
    let log = dir.join("mosquitto.log");
    let child = Command::new(mosquitto())
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("mosquitto");
    let child = Killed(child);
    if let Err(e) = machine::proc::wait_port(port, "mosquitto") {
        panic!("{e}: {}", std::fs::read_to_string(&log).unwrap_or_default());
    }
    child
}

struct Releases {
    key: PathBuf,
    device: PathBuf,
    dir: PathBuf,
}

impl Releases {
    fn path(&self, v: &str) -> PathBuf {
        self.dir.join(v)
    }
    fn package(&self, v: &str) -> Package {
        Package::load(&self.path(v)).unwrap()
    }
}

/// 1.3 (factory), 1.4, 1.5 (its build sends a wrong password), 1.6 (1 MB), signed with a test key
/// (slot 0); 1.7 signed with the next key (slot 1) revoking slot 0, and 1.8 signed with slot 0
/// again (after its key leaked); 3.5 with security counter 5 and 3.3 (200 KB) with counter 3. The
/// device trusts both slots. Differential packages: 2.0 from 1.4,
/// 2.2 from 2.0, and 2.1 from another build also called 1.4 (`1.4-other`).
fn releases() -> &'static Releases {
    static R: OnceLock<Releases> = OnceLock::new();
    R.get_or_init(|| {
        let d = scratch("host_releases");
        let key = d.join("k.pem");
        let next = d.join("k1.pem");
        xtask_ok(&["keygen", "--out", s(&key)]);
        let made = xtask_ok(&["keygen", "--out", s(&next), "--after", s(&key)]);
        assert!(made.contains("slot:       1"), "keygen names the slot: {made}");
        let releases: [(&str, &str, &[&str]); 7] = [
            ("1.3", "8192", &[]),
            ("1.4", "40000", &[]),
            ("1.5", "40000", &["--failing-login"]),
            ("1.6", "1000000", &[]),
            ("1.8", "8192", &[]),
            ("3.5", "8192", &["--sec-cnt", "5"]),
            ("3.3", "200000", &["--sec-cnt", "3"]),
        ];
        for (v, size, extra) in releases {
            let mut args = vec!["release", "--board", "host", "--version", v, "--key", s(&key), "--body-size", size];
            let out = d.join(v);
            args.extend(["--out", s(&out)]);
            args.extend(extra.iter().copied());
            xtask_ok(&args);
        }
        for (v, size, from) in [
            ("1.4-other", "40001", None),
            ("2.0", "40000", Some("1.4")),
            ("2.1", "40000", Some("1.4-other")),
            ("2.2", "40000", Some("2.0")),
        ] {
            let version = v.trim_end_matches("-other");
            let out = d.join(v);
            let mut args =
                vec!["release", "--board", "host", "--version", version, "--key", s(&key), "--body-size", size];
            let base = from.map(|f| d.join(f));
            if let Some(b) = &base {
                args.extend(["--delta-from", s(b)]);
            }
            args.extend(["--out", s(&out)]);
            let said = xtask_ok(&args);
            assert!(from.is_none() || said.contains("upload as a differential package"), "{said}");
        }
        let (k0, k1) = (s(&key), s(&next));
        let out = d.join("1.7");
        let rotate = ["release", "--board", "host", "--version", "1.7", "--key", k1, "--trust", k0, "--trust", k1];
        let said = xtask_ok(&[&rotate[..], &["--revoke-keys", "0", "--out", s(&out)]].concat());
        assert!(said.contains("key slot 1 of 2") && said.contains("revokes key slot(s) 0"), "{said}");
        let device = xtask_ok(&["build", "--board", "host", "--key", k0, "--key", k1]);
        let device = PathBuf::from(device.trim().lines().last().unwrap());
        Releases { key, device, dir: d }
    })
}

fn console_with(names: &[&str], f: impl FnOnce(&mut Options)) -> Console {
    let mut o = Options {
        devices: names.iter().map(|n| console::device(PK, n, SECRET)).collect(),
        quiet: true,
        ..Default::default()
    };
    f(&mut o);
    Console::start(o).unwrap()
}

/// A host device of these tests: testbed's harness ([`HostDevice`]) on factory 1.3, in its own
/// scratch folder.
struct Dev {
    name: String,
    dev: RefCell<HostDevice>,
}

/// The device powered on; dropping it cuts the power (`kill -9`).
struct Powered<'a>(&'a Dev);

impl Drop for Powered<'_> {
    fn drop(&mut self) {
        self.0.dev.borrow_mut().cut();
    }
}

impl Dev {
    /// A device on factory 1.3 reaching the broker on `port`; `extra` lines go into device.toml.
    fn new(name: &str, port: u16, extra: &str) -> Dev {
        let dir = scratch(name);
        let flash = dir.join("flash.bin");
        let extra = format!("block_size = 2048\n{extra}\n");
        let c = HostConfig {
            product_key: PK,
            device_name: name,
            device_secret: SECRET,
            port,
            tls: false,
            flash: &flash,
            extra: &extra,
        };
        let factory = releases().path("1.3").join("factory.bin");
        let dev =
            HostDevice::new(&releases().device, &c, dir.join("device.toml"), dir.join("device.log"), &factory).unwrap();
        Dev { name: name.into(), dev: RefCell::new(dev) }
    }

    fn id(&self) -> DeviceId {
        (PK.to_string(), self.name.clone())
    }

    /// Its `device.toml`.
    fn config(&self) -> PathBuf {
        self.dev.borrow().config().to_path_buf()
    }

    /// Powers it on; `flash_delay_ms`: slow flash (so a test can cut the power mid-swap).
    fn start(&self, flash_delay_ms: Option<u64>) -> Powered<'_> {
        let mut d = self.dev.borrow_mut();
        d.flash_delay_ms = flash_delay_ms;
        d.start().expect("starting the host device");
        Powered(self)
    }

    /// How its process ended (it must end within `secs`).
    fn exit_status(&self, secs: u64) -> std::process::ExitStatus {
        let s = self.dev.borrow_mut().wait_exit(Duration::from_secs(secs)).unwrap();
        s.unwrap_or_else(|| panic!("still running after {secs} s:\n{}", self.log()))
    }

    /// Cuts the power of the running device (`kill -9`), starts it again, and waits until it is
    /// online on `version` in a new session (the console may not yet have seen the old one close:
    /// only a new CONNECT shows this boot passed the bootloader).
    fn power_cycle<'a>(
        &'a self,
        c: &Console,
        running: Powered<'a>,
        flash_delay_ms: Option<u64>,
        version: &str,
    ) -> Powered<'a> {
        let id = self.id();
        let connects = c.with(|e| e.device(&id).map_or(0, |d| d.connects));
        drop(running);
        let d = self.start(flash_delay_ms);
        c.wait(Duration::from_secs(30), &format!("{} online on {version} again", self.name), |e| {
            e.device(&id).is_some_and(|d| d.connects > connects && d.online && d.version() == Some(version))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.log()));
        d
    }

    /// Waits until the log, from byte `from` on, contains `pat` `n` times; returns the log.
    fn wait_log(&self, from: usize, pat: &str, n: usize, secs: u64) -> String {
        let t0 = Instant::now();
        loop {
            let log = self.log();
            if log.get(from..).is_some_and(|l| l.matches(pat).count() >= n) {
                return log;
            }
            assert!(t0.elapsed() < Duration::from_secs(secs), "{pat:?} not {n} times in {secs} s:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        self.dev.borrow().output()
    }

    /// The Aliyun version of the image in ACTIVE, read from the flash file.
    fn active_version(&self) -> String {
        let f = std::fs::read(self.dev.borrow().flash()).unwrap();
        let l = memory_layouts::Board::Host.layout();
        let active = &f[l.active.origin as usize..l.active.end() as usize];
        let r = releases();
        let keys = [&r.key, &r.dir.join("k1.pem")].map(|k| shared::image::PublicKey(load_pub(k)));
        let opts = shared::image::VerifyOptions { keys: &keys, revoked: 0, min_sec_cnt: 0, slot_size: None };
        let info = shared::image::verify(&mut shared::image::SliceFlash(active), &opts, &mut [0; 1024])
            .expect("ACTIVE verifies");
        info.aliyun_version.unwrap().to_string()
    }

    /// Waits until the console sees the device online on `version`.
    fn runs(&self, c: &Console, version: &str, secs: u64) {
        let id = self.id();
        c.wait(Duration::from_secs(secs), &format!("{} online on {version}", self.name), |e| {
            e.device(&id).is_some_and(|d| d.online && d.version() == Some(version))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.log()));
    }

    /// Waits for the task of `job` to end; returns it.
    fn outcome(&self, c: &Console, job: u32, secs: u64) -> TaskRecord {
        let id = self.id();
        c.wait(Duration::from_secs(secs), "the task to end", |e| {
            e.device(&id).and_then(|d| d.tasks.get(&job)).is_some_and(|t| t.state.done())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.log()));
        c.with(|e| e.device(&id).unwrap().tasks[&job].clone())
    }

    /// Waits until the device reported progress 100 for `job` (downloaded and verified).
    fn downloaded(&self, c: &Console, job: u32, secs: u64) {
        let id = self.id();
        c.wait(Duration::from_secs(secs), "progress 100", |e| {
            e.device(&id).and_then(|d| d.tasks.get(&job)).is_some_and(|t| t.downloaded_ms.is_some())
        })
        .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", c.with(|e| e.device(&id).cloned()), self.log()));
    }

    fn violations(&self, c: &Console) -> Vec<String> {
        c.with(|e| e.device(&self.id()).unwrap().violations.clone())
    }
}

fn load_pub(key: &Path) -> [u8; 32] {
    let o = run(openssl(), &["pkey", "-in", s(key), "-pubout", "-outform", "DER"]);
    o.stdout[o.stdout.len() - 32..].try_into().unwrap()
}

fn job(v: &str, protocol: Protocol) -> JobSpec {
    let mut j = JobSpec::new(releases().package(v), protocol);
    j.from = vec!["1.3".into()];
    j
}

#[test]
fn host_device_upgrades_over_mqtt_stream_through_mosquitto() {
    // Interop: an independent broker, the console's engine a client of it.
    let dir = scratch("host_mosquitto");
    let port = free_port();
    let _b = mosquitto_with(&dir, &format!("listener {port} 127.0.0.1\nallow_anonymous true\n"), port);
    let c = console_with(&["dev-mq"], |o| o.outside_broker = Some(port));
    let dev = Dev::new("dev-mq", port, "");
    let _d = dev.start(None);
    dev.runs(&c, "1.3", 30);
    let j = c.add_job(job("1.4", Protocol::Mqtt)).unwrap();
    let t = dev.outcome(&c, j, 60);
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}\n{}", dev.log());
    assert_eq!(dev.active_version(), "1.4");
    let log = dev.log();
    assert!(!log.contains(SECRET), "the secret is in the log:\n{log}");
    assert!(log.contains("verify: OK") && log.contains("reset") && log.contains("confirm: done"), "{log}");
}

#[test]
fn host_device_upgrades_over_http_with_range_from_a_server_that_breaks_off() {
    // Download URLs point at a server (a CDN) that breaks the body off half way the first time.
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let http_port = server.server_addr().to_ip().unwrap().port();
    let ranges = Arc::new(Mutex::new(Vec::<String>::new()));
    let image = std::fs::read(releases().path("1.4").join("firmware-1.4.bin")).unwrap();
    let seen = ranges.clone();
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
    let c = console_with(&["dev-http"], |o| o.download_base = Some(format!("http://127.0.0.1:{http_port}")));
    let dev = Dev::new("dev-http", c.mqtt_port, "");
    let _d = dev.start(None);
    dev.runs(&c, "1.3", 30);
    let j = c.add_job(job("1.4", Protocol::Https)).unwrap();
    let t = dev.outcome(&c, j, 60);
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}\n{}", dev.log());
    let ranges = ranges.lock().unwrap().clone();
    let from = |r: &String| r.trim_start_matches("bytes=").trim_end_matches('-').parse::<usize>().unwrap();
    assert_eq!(ranges.first().map(String::as_str), Some("bytes=0-"), "{ranges:?}");
    assert_eq!(from(&ranges[1]), 0x200 + 40_000, "the protected TLVs, read before the body: {ranges:?}");
    assert!(ranges.len() >= 4 && from(&ranges[3]) > from(&ranges[2]), "resumed after the break: {ranges:?}");
    assert_eq!(dev.active_version(), "1.4");
    assert!(!dev.log().contains("Expires="), "pre-signed URL credentials are not logged");
    assert!(dev.violations(&c).is_empty(), "{:?}", dev.violations(&c));
}

#[test]
fn kill_9_during_download_resumes_from_a_page_boundary() {
    let c = console_with(&["dev-cut"], |_| {});
    let dev = Dev::new("dev-cut", c.mqtt_port, "");
    // Slow flash, so that the cut lands in the middle of the download.
    let d = dev.start(Some(10));
    dev.runs(&c, "1.3", 30);
    let j = c.add_job(job("1.6", Protocol::Mqtt)).unwrap();
    let id = dev.id();
    c.wait(Duration::from_secs(60), "progress 30", |e| {
        e.device(&id).and_then(|d| d.tasks.get(&j)).is_some_and(|t| t.step >= 30)
    })
    .unwrap();
    drop(d); // kill -9
    let _d = dev.start(None);
    let t = dev.outcome(&c, j, 60);
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}\n{}", dev.log());
    let starts = t.starts();
    assert!(starts.len() >= 2 && starts[1] > 0 && starts[1].is_multiple_of(4096), "resumed, not from zero: {t:?}");
    assert!(dev.log().contains("resume: re-hashing"), "{}", dev.log());
    assert_eq!(dev.active_version(), "1.6");
}

#[test]
fn kill_9_during_the_swap_boots_a_valid_image_and_reports_the_truth() {
    let names = ["dev-swap-0", "dev-swap-1", "dev-swap-2"];
    let c = console_with(&names, |_| {});
    // One job: each device gets its task when it comes online on 1.3 (one task per device).
    let j = c.add_job(job("1.4", Protocol::Mqtt)).unwrap();
    for (name, cut_ms) in names.into_iter().zip([150u64, 400, 900]) {
        let dev = Dev::new(name, c.mqtt_port, "");
        let d = dev.start(Some(20));
        dev.downloaded(&c, j, 120);
        std::thread::sleep(Duration::from_millis(cut_ms)); // the device resets and swaps: cut it
        drop(d);
        let _d = dev.start(None);
        let t = dev.outcome(&c, j, 60);
        let runs = dev.active_version();
        dev.runs(&c, &runs, 30);
        // One cut, wherever it lands, costs a good image one of its boot attempts at most.
        assert_eq!(t.state, TaskState::Succeeded, "cut after {cut_ms} ms: {t:?}\n{}", dev.log());
        assert_eq!(runs, "1.4");
    }
}

#[test]
fn a_leaked_key_is_retired_by_a_release_signed_with_the_next_key() {
    let r = releases();
    // What the release says of itself.
    let shown = xtask_ok(&[
        "verify",
        s(&r.path("1.7").join("firmware-1.7.bin")),
        "--key",
        s(&r.key),
        "--key",
        s(&r.dir.join("k1.pem")),
    ]);
    assert!(shown.contains("signed by key slot 1") && shown.contains("revokes key slot(s) 0"), "{shown}");
    let c = console_with(&["dev-rotate"], |_| {});
    let dev = Dev::new("dev-rotate", c.mqtt_port, "");
    let d = dev.start(None);
    dev.runs(&c, "1.3", 30);
    // Key 0 leaked: 1.7, signed by key 1, revokes it once the device confirms it.
    let j = c.add_job(job("1.7", Protocol::Mqtt)).unwrap();
    assert_eq!(dev.outcome(&c, j, 60).state, TaskState::Succeeded, "{}", dev.log());
    dev.runs(&c, "1.7", 30);
    // An image signed by key 0 (the leaked key) is refused from then on, with the reason.
    let mut spec = JobSpec::new(r.package("1.8"), Protocol::Mqtt);
    spec.from = vec!["1.7".into()];
    let j = c.add_job(spec).unwrap();
    let t = dev.outcome(&c, j, 60);
    assert_eq!((t.state, t.step), (TaskState::Failed, -1), "{t:?}\n{}", dev.log());
    assert!(t.desc.contains("signed with key 0, which this device has revoked"), "{t:?}");
    assert_eq!(t.failure, Some(shared::ota::FailureKind::ImageRefused), "{t:?}");
    dev.runs(&c, "1.7", 30);
    // After a power cycle the revocation is in BOOT_RECORD, not only in the app's memory (the
    // bootloader stores it at the boot after the confirm).
    let _d = dev.power_cycle(&c, d, None, "1.7");
    let f = std::fs::read(dev.dev.borrow().flash()).unwrap();
    let l = memory_layouts::Board::Host.layout();
    let mut region = shared::image::SliceFlash(&f[l.boot_record.origin as usize..l.boot_record.end() as usize]);
    let (_, rec) = shared::boot::BootRecord::load(&mut region).unwrap().expect("a boot record");
    assert_eq!(rec.revoked, 0b1, "{rec:?}");
}

#[test]
fn a_counter_raised_by_a_confirm_refuses_a_lower_image_before_downloading_it() {
    let c = console_with(&["dev-counter"], |_| {});
    let dev = Dev::new("dev-counter", c.mqtt_port, "");
    let _d = dev.start(None);
    dev.runs(&c, "1.3", 30);
    let j = c.add_job(job("3.5", Protocol::Mqtt)).unwrap();
    assert_eq!(dev.outcome(&c, j, 60).state, TaskState::Succeeded, "{}", dev.log());
    dev.runs(&c, "3.5", 30);
    // 3.5 confirmed itself: counter 5 is in force from then on, before any reboot stores it.
    let mut spec = JobSpec::new(releases().package("3.3"), Protocol::Mqtt);
    spec.from = vec!["3.5".into()];
    let j = c.add_job(spec).unwrap();
    let t = dev.outcome(&c, j, 60);
    let downgrade = Some(shared::ota::FailureKind::Downgrade);
    assert_eq!((t.state, t.failure), (TaskState::Failed, downgrade), "{t:?}\n{}", dev.log());
    assert!(t.desc.contains("security counter 3 is below the device's 5"), "{t:?}");
    // (Refused only after the whole download, it took 99 blocks.)
    assert!(t.blocks < 40, "refused early, not after downloading 200 KB: {} blocks", t.blocks);
    dev.runs(&c, "3.5", 30);
}

#[test]
fn a_build_whose_login_fails_is_reverted_and_reported() {
    let c = console_with(&["dev-login"], |_| {});
    let dev = Dev::new("dev-login", c.mqtt_port, "");
    let _d = dev.start(None);
    dev.runs(&c, "1.3", 30);
    let j = c.add_job(job("1.5", Protocol::Mqtt)).unwrap();
    let t = dev.outcome(&c, j, 60);
    assert_eq!((t.state, t.failure), (TaskState::Failed, Some(shared::ota::FailureKind::Reverted)), "{t:?}");
    dev.runs(&c, "1.3", 30);
    assert_eq!(dev.active_version(), "1.3");
    let refused = c.with(|e| e.device(&dev.id()).unwrap().refused);
    assert_eq!(refused, 1, "one CONNECT of the broken build, then it was reverted");
    assert!(dev.log().contains("CONNACK 4"), "{}", dev.log());
}

#[test]
fn an_unreachable_broker_does_not_count_against_a_new_image_until_its_deadline() {
    let c = console_with(&["dev-wait", "dev-late"], |_| {});
    // Within the deadline: the network goes as 1.4 reboots, and comes back 8 s later.
    let proxy = Proxy::start(c.mqtt_port, Duration::from_millis(1)).unwrap();
    let dev = Dev::new("dev-wait", proxy.port, "confirm_deadline_s = 120");
    // Slow flash: the swap takes a while, and the network is gone before the new image starts.
    let slow = Some(20);
    let _d = dev.start(slow);
    dev.runs(&c, "1.3", 30);
    let j = c.add_job(job("1.4", Protocol::Mqtt)).unwrap();
    dev.downloaded(&c, j, 60);
    proxy.set_offline(true);
    // Back when 1.4 has failed to connect three times (however long the swap took).
    let log = dev.wait_log(0, "boot: running 1.4", 1, 60);
    let from = log.find("boot: running 1.4").unwrap();
    let log = dev.wait_log(from, "reconnecting in ", 3, 60);
    proxy.set_offline(false);
    let t = dev.outcome(&c, j, 60);
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}\n{}", dev.log());
    assert_eq!(dev.active_version(), "1.4");
    // It backed off, doubling (with jitter): 1 s, 2 s, 4 s...
    let delays: Vec<f64> = log[from..]
        .lines()
        .filter_map(|l| l.split("reconnecting in ").nth(1))
        .filter_map(|r| r.trim_end_matches(" s").parse().ok())
        .collect();
    assert!(delays.len() >= 3, "{delays:?}\n{log}");
    assert!(delays.windows(2).take(3).all(|w| w[1] > w[0]), "the back-off doubles: {delays:?}\n{log}");

    // Past the deadline of each of its boot attempts: the new image is started again (the reset
    // counts as one), then reverted, and says so when the network is back.
    let proxy = Proxy::start(c.mqtt_port, Duration::from_millis(1)).unwrap();
    let dev = Dev::new("dev-late", proxy.port, "confirm_deadline_s = 3");
    let _d = dev.start(slow); // the job above matches it too
    dev.downloaded(&c, j, 60);
    proxy.set_offline(true);
    dev.wait_log(0, "last boot: Reverted", 1, 90);
    proxy.set_offline(false);
    let t = dev.outcome(&c, j, 60);
    assert_eq!(
        (t.state, t.failure),
        (TaskState::Failed, Some(shared::ota::FailureKind::Reverted)),
        "{t:?}\n{}",
        dev.log()
    );
    dev.runs(&c, "1.3", 30);
    let attempts = memory_layouts::Board::Host.layout().boot_attempts as usize;
    let starts = dev.log().matches("boot: running 1.4").count();
    assert_eq!(starts, attempts, "1.4 started once per boot attempt:\n{}", dev.log());
}

#[test]
fn a_job_without_push_reaches_the_device_by_its_periodic_pull() {
    let c = console_with(&["dev-pull"], |_| {});
    let dev = Dev::new("dev-pull", c.mqtt_port, "pull_interval_s = 2");
    let _d = dev.start(None);
    dev.runs(&c, "1.3", 30);
    let mut spec = job("1.4", Protocol::Mqtt);
    spec.need_push = false;
    let j = c.add_job(spec).unwrap();
    let t = dev.outcome(&c, j, 60);
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    assert_eq!(t.pushes, 0, "never pushed: {t:?}");
    assert!(t.get_replies >= 1);
}

#[test]
fn the_window_falls_back_to_stop_and_wait_on_a_console_that_serves_one_request_at_a_time() {
    let c = console_with(&["dev-one"], |o| o.blocks = BlockService::OneAtATime { busy: Duration::from_millis(20) });
    let proxy = Proxy::start(c.mqtt_port, Duration::from_millis(25)).unwrap();
    let dev = Dev::new("dev-one", proxy.port, "window = 4");
    let _d = dev.start(None);
    dev.runs(&c, "1.3", 30);
    let j = c.add_job(job("1.4", Protocol::Mqtt)).unwrap();
    let t = dev.outcome(&c, j, 120);
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}\n{}", dev.log());
    let dropped = c.with(|e| e.device(&dev.id()).unwrap().dropped_requests);
    assert!((1..=6).contains(&dropped), "{dropped} requests dropped");
}

#[test]
fn settings_aliyun_refuses_are_said_clearly() {
    for (extra, says) in [
        ("keep_alive = 20", "keep_alive 20 s is outside Aliyun's 30..=1200 s"),
        ("keep_alive = 1300", "keep_alive 1300 s is outside"),
        ("window = 9", "window 9 is outside 1..=8"),
    ] {
        let dev = Dev::new("dev-settings", 9, extra);
        let _d = dev.start(None);
        assert!(!dev.exit_status(30).success());
        assert!(dev.log().contains(says), "{extra}: {}", dev.log());
    }
    // The block size line is in the default config: replace it.
    let dev = Dev::new("dev-settings", 9, "");
    let cfg = std::fs::read_to_string(dev.config()).unwrap().replace("block_size = 2048", "block_size = 100");
    std::fs::write(dev.config(), cfg).unwrap();
    let _d = dev.start(None);
    assert!(!dev.exit_status(30).success());
    assert!(dev.log().contains("block_size 100 is outside Aliyun's 256..=131072"), "{}", dev.log());
}

#[test]
fn a_wrong_secret_is_refused_and_said_clearly() {
    let dir = scratch("host_wrong_secret");
    // mosquitto with a password file: an independent broker refusing the login.
    let port = free_port();
    let pw = dir.join("passwd");
    std::fs::write(&pw, "").unwrap();
    let o = Command::new("mosquitto_passwd").arg("-b").arg(&pw).arg(format!("dev-x&{PK}")).arg("not-it").output();
    if o.map(|o| !o.status.success()).unwrap_or(true) {
        std::fs::write(&pw, "").unwrap(); // without mosquitto_passwd: nobody gets in
    }
    let conf = format!("listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n", pw.display());
    let _b = mosquitto_with(&dir, &conf, port);
    let dev = Dev::new("dev-x", port, "");
    let _d = dev.start(None);
    // The device stops on a refused login.
    assert!(!dev.exit_status(30).success());
    let log = dev.log();
    assert!(log.contains("bad username or password"), "{log}");
}

#[test]
fn host_device_connects_over_tls_and_checks_the_certificate() {
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
    let c = console_with(&["dev-tls-good", "dev-tls-other"], |o| o.outside_broker = Some(plain));
    for (name, ca_file, trusted) in [("dev-tls-good", &ca, true), ("dev-tls-other", &other_ca, false)] {
        let dev = Dev::new(name, tls, "");
        let cfg = std::fs::read_to_string(dev.config())
            .unwrap()
            .replace("tls = false", &format!("tls = true\nca = \"{}\"", ca_file.display()));
        std::fs::write(dev.config(), cfg).unwrap();
        let _d = dev.start(None);
        if trusted {
            dev.runs(&c, "1.3", 30);
            assert!(dev.log().contains("securemode=2"), "{}", dev.log());
        } else {
            std::thread::sleep(Duration::from_secs(3));
            let log = dev.log();
            assert!(
                log.contains("TLS to 127.0.0.1") && !log.contains("connected as"),
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
    let c = HostConfig {
        product_key: PK,
        device_name: "d",
        device_secret: "x",
        port: 9,
        tls: false,
        flash: &flash,
        extra: "",
    };
    std::fs::write(&config, c.toml()).unwrap();
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
        .args(["device", "--config", s(&config), "--factory", s(&r.path("1.3")), "--key", s(&r.key)])
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
    assert_eq!(std::fs::read(&flash).unwrap(), std::fs::read(r.path("1.3").join("factory.bin")).unwrap());
}

/// A job of the differential package of release `v` (from `from`), as console.toml's `delta`.
fn delta_job(v: &str, from: &str, protocol: Protocol) -> JobSpec {
    let mut j = JobSpec::new(Package::load_delta(&releases().path(v), from).unwrap(), protocol);
    j.from = vec![from.into()];
    j
}

#[test]
fn a_differential_package_is_patched_from_the_running_image_and_a_foreign_one_refused() {
    let c = console_with(&["dev-delta"], |_| {});
    let dev = Dev::new("dev-delta", c.mqtt_port, "");
    let d = dev.start(None);
    dev.runs(&c, "1.3", 30);
    let j = c.add_job(job("1.4", Protocol::Mqtt)).unwrap();
    assert_eq!(dev.outcome(&c, j, 60).state, TaskState::Succeeded);
    dev.runs(&c, "1.4", 30);

    // The console (as Aliyun) ships a package to the devices on its source version only.
    let mut wrong_from = delta_job("2.0", "1.4", Protocol::Mqtt);
    wrong_from.from = vec!["1.3".into()];
    let e = c.add_job(wrong_from).unwrap_err().to_string();
    assert!(e.contains("upgrades only devices on 1.4"), "{e}");

    // Made from another build called 1.4: refused before a byte is written, with both hashes.
    let j = c.add_job(delta_job("2.1", "1.4", Protocol::Mqtt)).unwrap();
    let t = dev.outcome(&c, j, 60);
    assert_eq!((t.state, t.step), (TaskState::Failed, -1), "{t:?}");
    assert!(t.desc.starts_with("delta for 1.4 (sha256 ") && t.desc.contains("), running 1.4 (sha256 "), "{}", t.desc);
    assert_eq!(dev.active_version(), "1.4");

    // The right one, over the MQTT stream: a fraction of the image, rebuilt into DFU from ACTIVE.
    let pkg = Package::load_delta(&releases().path("2.0"), "1.4").unwrap();
    let full = std::fs::metadata(releases().path("2.0").join("firmware-2.0.bin")).unwrap().len();
    assert!((pkg.bytes.len() as u64) < full / 10, "patch {} of {full} bytes", pkg.bytes.len());
    let j = c.add_job(delta_job("2.0", "1.4", Protocol::Mqtt)).unwrap();
    let t = dev.outcome(&c, j, 60);
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}\n{}", dev.log());
    assert_eq!(dev.active_version(), "2.0");
    assert!(dev.log().contains("patch into DFU from the running image"), "{}", dev.log());
    dev.runs(&c, "2.0", 30);

    // Over HTTP Range, with a power cut while it patches (slow flash): it starts over from byte 0 and
    // succeeds (a patch is never resumed: the patcher's state was in RAM).
    let d = dev.power_cycle(&c, d, Some(15), "2.0");
    let j = c.add_job(delta_job("2.2", "2.0", Protocol::Https)).unwrap();
    let id = dev.id();
    c.wait(Duration::from_secs(60), "the patch to start", |e| {
        e.device(&id).and_then(|d| d.tasks.get(&j)).is_some_and(|t| t.step >= 1)
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(d); // kill -9
    let _d = dev.start(None);
    let t = dev.outcome(&c, j, 60);
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}\n{}", dev.log());
    assert_eq!(dev.active_version(), "2.2");
    assert!(dev.log().matches("patch into DFU from the running image").count() >= 3, "{}", dev.log());
    assert!(dev.violations(&c).is_empty(), "{:?}", dev.violations(&c));
}
