//! The device's OTA client (`shared::ota::OtaMachine`) against the console's job engine (the
//! strict Aliyun twin), both sans-IO, in memory: two state machines and one simulated clock, a
//! broker that takes `ONE_WAY` ms each way and acknowledges QoS 1, a DFU slot in a `Vec`, real
//! signed images and the real signature check. Network faults (lost, corrupt, late messages) are
//! made here; platform behaviour (refusals, pushes, one request at a time) is the engine's.

use ed25519_dalek::SigningKey;
use ota_console::auth::DeviceId;
use ota_console::engine::{BlockService, Engine, JobSpec, Package, Protocol, Quirk, TaskRecord, TaskState};
use serde_json::Value;
use shared::alink::{Downlink, Topics};
use shared::boot::Floor;
use shared::image::{sign_image, ImageVersion, PublicKey, SignParams, SliceFlash};
use shared::ota::{
    Action, BootOutcome, BootReport, Event, FailureKind, MarkError, OtaConfig, OtaMachine, Outcome, Resume, StateName,
    Verdict,
};
use std::collections::VecDeque;

const PK: &str = "a1B2c3D4e5F";
const DN: &str = "dev-001";
const PAGE: u32 = 4096;
const SLOT: u32 = 256 * 1024;

fn key() -> SigningKey {
    SigningKey::from_bytes(&[3; 32])
}

/// A signed image of `len` body bytes, Aliyun version `version`.
fn image(version: &str, len: usize, sec_cnt: u32) -> Vec<u8> {
    let body: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let p = SignParams {
        header_size: 0x200,
        version: ImageVersion::parse(version).unwrap_or(ImageVersion { major: 1, minor: 4, revision: 0, build: 0 }),
        sec_cnt,
        module: Some("default"),
        aliyun_version: Some(version),
        revoke_keys: 0,
    };
    sign_image(&body, &p, &key())
}

fn package(version: &str, len: usize) -> Package {
    Package::new(&format!("firmware-{version}.bin"), "default", version, image(version, len, 0))
}

fn job(version: &str, len: usize, protocol: Protocol) -> JobSpec {
    JobSpec::new(package(version, len), protocol)
}

/// What travels between the device and the platform.
enum Hop {
    /// An uplink reaching the engine.
    Up(String, Vec<u8>),
    /// A downlink reaching the device.
    Down(String, Vec<u8>),
    /// The broker's PUBACK reaching the device.
    Ack(u16),
    /// HTTP: the response head, a body chunk, the end (for the GET of generation `.0`).
    HttpHead(u32, u16, Option<u32>),
    HttpBody(u32, Vec<u8>),
    HttpEnd(u32),
}

/// A network fault on block replies: the n-th reply's bytes in, what arrives out (`None`: lost).
type Fault = Box<dyn FnMut(usize, Vec<u8>) -> Option<Vec<u8>>>;

struct Sim {
    t: u64,
    base: std::time::Instant,
    m: OtaMachine,
    e: Engine,
    id: DeviceId,
    queue: VecDeque<(u64, Hop)>,
    /// One-way delay of the broker (ms).
    one_way: u64,
    connected: bool,
    conn: u64,
    // The device's side.
    dfu: Vec<u8>,
    dfu_pos: u32,
    saved: Option<Resume>,
    marked: bool,
    self_test: bool,
    /// The MQTT receive buffer: larger PUBLISHes are discarded (`Event::Oversized`).
    max_msg: usize,
    /// The broker acknowledges QoS 1 publishes.
    acks: bool,
    /// Network faults on downlinks: `Some(bytes)` replaces, `None` drops (the n-th block reply,
    /// counting from 0, gets `fault(n, bytes)`).
    fault: Fault,
    block_replies: usize,
    /// The network loses every `firmware/get` reply.
    lose_get_replies: bool,
    /// Pushes take this much longer than other downlinks (a platform that sends them late).
    slow_pushes: u64,
    http_gen: u32,
    /// HTTP bodies break off after this many bytes of a GET that starts below it.
    http_break_at: Option<usize>,
    /// The DFU write that starts at this offset fails (once), as a worn or locked page would.
    fail_write_at: Option<u32>,
    /// What the bootloader tells at boot: the floor, and what the running image raises it to.
    floor: Floor,
    raises: Floor,
    // What happened.
    sent: Vec<(u64, String, Value, Option<u16>)>,
    log: Vec<String>,
    reset: bool,
}

impl Sim {
    fn new() -> Sim {
        let base = std::time::Instant::now();
        let id: DeviceId = (PK.into(), DN.into());
        let mut e = Engine::new([id.clone()], "http://console".into(), base);
        e.door = true;
        let mut cfg = OtaConfig::new(PK, DN, SLOT, PAGE).unwrap();
        cfg.block_size = 1024;
        cfg.progress_interval = shared::time::Duration::from_millis(0);
        cfg.https = true;
        Sim {
            t: 0,
            base,
            m: OtaMachine::new(cfg),
            e,
            id,
            queue: VecDeque::new(),
            one_way: 5,
            connected: false,
            conn: 0,
            dfu: vec![0xFF; SLOT as usize + PAGE as usize],
            dfu_pos: 0,
            saved: None,
            marked: false,
            self_test: true,
            max_msg: 64 * 1024,
            acks: true,
            fault: Box::new(|_, b| Some(b)),
            block_replies: 0,
            lose_get_replies: false,
            slow_pushes: 0,
            http_gen: 0,
            http_break_at: None,
            fail_write_at: None,
            floor: Floor::default(),
            raises: Floor::default(),
            sent: vec![],
            log: vec![],
            reset: false,
        }
    }

    fn with(f: impl FnOnce(&mut OtaConfig)) -> Sim {
        let mut s = Sim::new();
        let mut cfg = s.m.config().clone();
        f(&mut cfg);
        s.m = OtaMachine::new(cfg);
        s
    }

    fn now(&self) -> std::time::Instant {
        self.base + std::time::Duration::from_millis(self.t)
    }

    fn at(&self) -> shared::time::Instant {
        shared::time::Instant::from_millis(self.t)
    }

    fn boot(&mut self, version: &str, outcome: BootOutcome, awaiting_confirm: bool) {
        let r = BootReport {
            version,
            module: "default",
            awaiting_confirm,
            outcome,
            floor: self.floor,
            raises: self.raises,
            resume: self.saved,
            digest: [0; 32],
            image_len: 0,
        };
        let now = self.at();
        self.m.handle(now, Event::Booted(r));
        self.drain(&[]);
    }

    /// A power-on again, after a reset or a cut: a new machine on the same DFU.
    fn reboot(&mut self, version: &str, outcome: BootOutcome, awaiting_confirm: bool) {
        let cfg = self.m.config().clone();
        self.m = OtaMachine::new(cfg);
        self.disconnect();
        self.reset = false;
        self.boot(version, outcome, awaiting_confirm);
    }

    /// CONNACK, SUBSCRIBE, SUBACK (the console re-pushes pending tasks then), `Connected`.
    fn connect(&mut self) {
        self.conn += 1;
        self.connected = true;
        let now = self.now();
        self.e.online(&self.id, true, self.conn);
        self.e.subscribed(&self.id, now);
        self.outbox();
        let at = self.at();
        self.m.handle(at, Event::Connected);
        self.drain(&[]);
    }

    fn disconnect(&mut self) {
        if self.connected {
            self.connected = false;
            self.queue.clear();
            self.e.online(&self.id, false, self.conn);
            let at = self.at();
            self.m.handle(at, Event::Disconnected);
            self.drain(&[]);
        }
    }

    fn schedule(&mut self, at: u64, h: Hop) {
        let i = self.queue.iter().position(|(t, _)| *t > at).unwrap_or(self.queue.len());
        self.queue.insert(i, (at, h));
    }

    /// The engine's downlinks go on the wire (through the network's faults).
    fn outbox(&mut self) {
        for d in self.e.take_outbox() {
            let mut payload = Some(d.payload);
            if d.topic.ends_with("/download_reply") {
                let n = self.block_replies;
                self.block_replies += 1;
                payload = (self.fault)(n, payload.take().unwrap());
            }
            if d.topic.ends_with("/get_reply") && self.lose_get_replies {
                payload = None;
            }
            if let Some(p) = payload {
                let late = if d.topic.contains("/upgrade/") { self.slow_pushes } else { 0 };
                self.schedule(self.t + self.one_way + late, Hop::Down(d.topic, p));
            }
        }
    }

    /// Carries out the machine's actions; `payload` is the last event's bytes.
    fn drain(&mut self, payload: &[u8]) {
        while let Some(a) = self.m.poll_action() {
            match a {
                Action::Publish { topic, payload: p, qos1 } => {
                    let v: Value = serde_json::from_slice(p).expect("the device publishes JSON");
                    let (topic, p) = (topic.to_string(), p.to_vec());
                    self.sent.push((self.t, topic.clone(), v, qos1));
                    assert!(self.connected, "published while offline: {topic}");
                    self.schedule(self.t + self.one_way, Hop::Up(topic, p));
                    if let (Some(pid), true) = (qos1, self.acks) {
                        self.schedule(self.t + 2 * self.one_way, Hop::Ack(pid));
                    }
                }
                // This device takes no differential packages (OtaConfig::delta off): the host
                // device tests and the power-cut sweeps carry patches out.
                Action::BeginPatch | Action::Patch { .. } => panic!("a patch action with delta off"),
                Action::Write { offset, .. } if self.fail_write_at == Some(offset) => {
                    self.fail_write_at = None;
                    self.log.push(format!("write at {offset} failed"));
                    let at = self.at();
                    self.m.handle(at, Event::FlashFailed { at: offset });
                }
                Action::Write { offset, range } => {
                    assert_eq!(offset, self.dfu_pos, "writes are sequential");
                    let data = &payload[range];
                    self.dfu[offset as usize..offset as usize + data.len()].copy_from_slice(data);
                    self.dfu_pos += data.len() as u32;
                }
                Action::BeginDownload { at } => {
                    assert_eq!(at % PAGE, 0);
                    self.dfu_pos = at;
                    self.log.push(format!("begin {at}"));
                }
                Action::Rehash { len } => {
                    self.log.push(format!("rehash {len}"));
                    let bytes = self.dfu[..len as usize].to_vec();
                    self.m.rehash(&bytes);
                    let at = self.at();
                    self.m.handle(at, Event::Rehashed(Outcome::Done));
                }
                Action::SaveResume(r) => self.saved = Some(r),
                Action::ClearResume => self.saved = None,
                Action::HttpGet { from } => {
                    let url = self.m.url().unwrap().to_string();
                    self.log.push(format!("GET from {from}"));
                    self.http_gen += 1;
                    let g = self.http_gen;
                    let (path, query) = url.strip_prefix("http://console").unwrap().split_once('?').unwrap();
                    let now = self.now();
                    let (path, query) = (path.to_string(), query.to_string());
                    let t = self.t + 2 * self.one_way;
                    match self.e.http_get(&path, &query, from as u64, u64::MAX, now) {
                        Ok(bytes) => {
                            let body = bytes[from as usize..].to_vec();
                            self.schedule(
                                t,
                                Hop::HttpHead(g, if from > 0 { 206 } else { 200 }, Some(body.len() as u32)),
                            );
                            let end = match self.http_break_at {
                                Some(b) if (from as usize) < b => b - from as usize,
                                _ => body.len(),
                            };
                            for (i, c) in body[..end].chunks(4096).enumerate() {
                                self.schedule(t + 1 + i as u64, Hop::HttpBody(g, c.to_vec()));
                            }
                            self.schedule(t + 2 + (end / 4096) as u64, Hop::HttpEnd(g));
                        }
                        Err(r) => {
                            let status = if r == ota_console::engine::HttpRefusal::Expired { 403 } else { 404 };
                            self.schedule(t, Hop::HttpHead(g, status, Some(0)));
                            self.schedule(t, Hop::HttpEnd(g));
                        }
                    }
                }
                Action::HttpClose => {
                    self.http_gen += 1;
                    self.log.push("http close".into());
                }
                Action::VerifyAndMark { floor, .. } => {
                    self.log.push("verify+mark".into());
                    let keys = [PublicKey(key().verifying_key().to_bytes())];
                    let opts = floor.verify_options(&keys, Some(SLOT));
                    let r = shared::image::verify(&mut SliceFlash(&self.dfu[..]), &opts, &mut [0u8; 1024]);
                    self.marked = r.is_ok();
                    let at = self.at();
                    self.m.handle(at, Event::Marked(r.map(|_| ()).map_err(MarkError::Image)));
                }
                Action::RunSelfTest => {
                    self.log.push("self-test".into());
                    let (at, pass) = (self.at(), self.self_test);
                    self.m.handle(at, Event::SelfTest(if pass { Verdict::Pass } else { Verdict::Fail }));
                }
                Action::Confirm => {
                    self.log.push("confirm".into());
                    let at = self.at();
                    self.m.handle(at, Event::Confirmed(Outcome::Done));
                }
                Action::Reset => {
                    self.log.push("reset".into());
                    self.reset = true;
                }
                Action::Revert => {
                    self.log.push("revert asked, reset".into());
                    self.reset = true;
                }
                Action::ModuleUpdate { module, .. } => panic!("no external module here, {module} asked for"),
            }
        }
    }

    /// Runs the next thing due (a hop, a timer of the machine, or the console's once-a-second
    /// tick); false when nothing is left.
    fn step(&mut self) -> bool {
        let timer = self.m.poll_timeout().map(|t| t.as_millis());
        let hop = self.queue.front().map(|(t, _)| *t);
        let tick = (self.t / 1000 + 1) * 1000;
        if timer.is_none() && hop.is_none() && self.e.device(&self.id).unwrap().tasks.values().all(|t| t.state.done()) {
            return false;
        }
        if timer.is_none_or(|t| tick < t) && hop.is_none_or(|h| tick < h) {
            self.t = tick;
            let now = self.now();
            self.e.tick(now);
            return true;
        }
        match (timer, hop) {
            (Some(t), h) if h.is_none_or(|h| t < h) => {
                self.t = self.t.max(t);
                let at = self.at();
                self.m.handle_timeout(at);
                self.drain(&[]);
            }
            (_, Some(_)) => {
                let (t, h) = self.queue.pop_front().unwrap();
                self.t = self.t.max(t);
                let now = self.now();
                self.e.tick(now);
                let at = self.at();
                match h {
                    Hop::Up(topic, p) => {
                        self.e.uplink(&topic, &p, now);
                        self.outbox();
                    }
                    Hop::Down(topic, p) => {
                        let topics = Topics { product_key: PK, device_name: DN };
                        let dl = topics.classify(&topic).expect("the console sends only to our downlinks");
                        if p.len() > self.max_msg {
                            let (len, max) = (p.len() as u32, self.max_msg as u32);
                            self.m.handle(at, Event::Oversized { topic: dl, len, max });
                            self.drain(&[]);
                        } else {
                            self.m.handle(at, Event::Message { topic: dl, payload: &p });
                            self.drain(&p);
                        }
                    }
                    Hop::Ack(pid) => {
                        self.m.handle(at, Event::Acked(pid));
                        self.drain(&[]);
                    }
                    Hop::HttpHead(g, status, length) if g == self.http_gen => {
                        self.m.handle(at, Event::HttpResponse { status, length });
                        self.drain(&[]);
                    }
                    Hop::HttpBody(g, b) if g == self.http_gen => {
                        self.m.handle(at, Event::HttpBody(&b));
                        self.drain(&b);
                    }
                    Hop::HttpEnd(g) if g == self.http_gen => {
                        self.m.handle(at, Event::HttpEnd);
                        self.drain(&[]);
                    }
                    _ => {} // HTTP of a closed GET
                }
            }
            _ => return false,
        }
        true
    }

    /// Runs until `done` holds, nothing is left, or `limit_ms` of simulated time passed.
    fn run_until(&mut self, limit_ms: u64, mut done: impl FnMut(&Sim) -> bool) -> bool {
        let end = self.t + limit_ms;
        while !done(self) && !self.reset {
            if self.queue.front().is_none_or(|(t, _)| *t > end)
                && self.m.poll_timeout().is_none_or(|t| t.as_millis() > end)
            {
                return false;
            }
            if !self.step() {
                return done(self);
            }
        }
        true
    }

    /// Runs until nothing is left to do (or an hour of simulated time).
    fn run(&mut self) {
        self.run_until(3_600_000, |s| s.queue.is_empty() && s.m.poll_timeout().is_none());
    }

    fn add_job(&mut self, spec: JobSpec) -> u32 {
        let now = self.now();
        let j = self.e.add_job(spec, now).unwrap();
        self.outbox();
        j
    }

    fn task(&self, job: u32) -> TaskRecord {
        self.e.device(&self.id).unwrap().tasks[&job].clone()
    }

    /// Progress steps the device sent.
    fn steps(&self) -> Vec<i32> {
        self.progress().iter().map(|(s, _)| *s).collect()
    }

    fn progress(&self) -> Vec<(i32, String)> {
        self.sent
            .iter()
            .filter(|s| s.1.contains("/progress/"))
            .map(|s| {
                (
                    s.2["params"]["step"].as_str().unwrap().parse().unwrap(),
                    s.2["params"]["desc"].as_str().unwrap().into(),
                )
            })
            .collect()
    }

    /// Block requests the device sent: (time, offset, size).
    fn requests(&self) -> Vec<(u64, u32, u32)> {
        self.sent
            .iter()
            .filter(|s| s.1.ends_with("/thing/file/download"))
            .map(|s| {
                let b = &s.2["params"]["fileBlock"];
                (s.0, b["offset"].as_u64().unwrap() as u32, b["size"].as_u64().unwrap() as u32)
            })
            .collect()
    }

    fn violations(&self) -> Vec<String> {
        self.e.device(&self.id).unwrap().violations.clone()
    }

    /// The most block requests out at once (answered or not) as the device saw it.
    fn max_window(&self) -> usize {
        self.sent
            .iter()
            .filter(|s| s.1.ends_with("/download"))
            .fold((0, 0, 0u64), |(max, run, t), s| {
                let run = if s.0 == t { run + 1 } else { 1 };
                (max.max(run), run, s.0)
            })
            .0
    }
}

fn online(version: &str) -> Sim {
    let mut s = Sim::new();
    s.boot(version, BootOutcome::Nothing, false);
    s.connect();
    s.run();
    s
}

fn is_done(job: u32) -> impl FnMut(&Sim) -> bool {
    move |s: &Sim| s.e.device(&s.id).unwrap().tasks.get(&job).is_some_and(|t| t.state.done())
}

// ---- boot, confirm, reports ----

#[test]
fn at_boot_it_informs_its_version_at_qos_1_then_pulls() {
    let s = online("1.3");
    assert_eq!(s.sent[0].1, format!("/ota/device/inform/{PK}/{DN}"));
    assert_eq!(s.sent[0].2["params"]["version"], "1.3");
    assert!(s.sent[0].2["params"].get("module").is_none(), "module omitted for the default module");
    assert!(s.sent[0].2["id"].is_string());
    assert!(s.sent[0].3.is_some(), "inform at QoS 1");
    assert_eq!(s.sent[1].1, format!("/sys/{PK}/{DN}/thing/ota/firmware/get"));
    assert_eq!(s.e.device(&s.id).unwrap().version(), Some("1.3"));
    assert_eq!(s.m.state(), StateName::AwaitTask);
}

#[test]
fn a_new_image_confirms_only_once_it_reached_the_broker() {
    let mut s = Sim::new();
    s.boot("1.4", BootOutcome::Nothing, true);
    assert_eq!(s.log, ["self-test"]);
    assert_eq!(s.m.state(), StateName::AwaitSession, "self-test passed, not confirmed yet");
    // The broker is unreachable for a while (within the deadline): nothing counts against it.
    s.t += 120_000;
    let at = s.at();
    s.m.handle_timeout(at);
    s.drain(&[]);
    assert_eq!(s.m.state(), StateName::AwaitSession);
    s.connect();
    s.run();
    assert_eq!(s.log, ["self-test", "confirm"]);
    assert_eq!(s.sent[0].2["params"]["version"], "1.4");
}

#[test]
fn a_new_image_that_never_reaches_the_broker_by_its_deadline_is_reverted() {
    let mut s = Sim::with(|c| c.confirm_deadline = shared::time::Duration::from_secs(600));
    s.boot("1.4", BootOutcome::Nothing, true);
    s.run();
    assert_eq!(s.t, 600_000, "the deadline");
    // Not confirmed: a plain reset, one of its boot attempts used (the network may be out).
    assert_eq!(s.log, ["self-test", "reset"], "not confirmed: the bootloader starts it again or reverts it");
}

#[test]
fn a_new_image_refused_for_its_credentials_is_reverted_other_refusals_are_retried() {
    for (code, reverts) in [(4, true), (5, true), (3, false), (2, false)] {
        let mut s = Sim::new();
        s.boot("1.4", BootOutcome::Nothing, true);
        let at = s.at();
        s.m.handle(at, Event::ConnectRefused(code));
        s.drain(&[]);
        // Refused credentials: the image is broken, so it asks for the revert at once.
        let last = s.log.last().map(String::as_str);
        assert_eq!(last == Some("revert asked, reset"), reverts, "CONNACK {code}: {:?}", s.log);
        assert!(!s.log.contains(&"reset".to_string()), "CONNACK {code}: {:?}", s.log);
        assert!(!s.log.contains(&"confirm".to_string()));
    }
    // A confirmed image refused: nothing to revert (the board stops or waits).
    let mut s = online("1.3");
    let at = s.at();
    s.m.handle(at, Event::ConnectRefused(4));
    s.drain(&[]);
    assert!(!s.reset);
}

#[test]
fn a_failed_self_test_asks_for_the_revert_without_connecting() {
    let mut s = Sim::new();
    s.self_test = false;
    s.boot("1.6", BootOutcome::Nothing, true);
    assert_eq!(s.log, ["self-test", "revert asked, reset"]);
    assert!(s.sent.is_empty());
}

#[test]
fn after_a_revert_the_task_fails_with_its_reason_and_the_old_version_is_informed() {
    // `slow`: the re-push of the reconnect reaches the device after the PUBACK of its -1 (a
    // platform that pushes a while after the subscription): still not taken.
    for slow in [0, 50] {
        let mut s = online("1.3");
        s.slow_pushes = slow;
        let j = s.add_job(job("1.4", 20_000, Protocol::Mqtt));
        s.run_until(60_000, |s| s.reset);
        assert!(s.marked && s.reset);
        assert_eq!(s.task(j).state, TaskState::Installing);
        // 1.4 booted, did not confirm (a hang, a cut): the bootloader put 1.3 back.
        s.reboot("1.3", BootOutcome::Reverted, false);
        let booted = s.sent.len();
        s.connect();
        s.run();
        let t = s.task(j);
        assert_eq!((t.state, t.failure), (TaskState::Failed, Some(FailureKind::Reverted)), "{t:?}");
        let after: Vec<&str> = s.sent[booted..].iter().map(|x| x.1.rsplit('/').nth(2).unwrap()).collect();
        assert_eq!(after[..2], ["progress", "inform"], "the truth about the boot first: {after:?}");
        assert!(!s.sent[booted..].iter().any(|x| x.1.ends_with("/file/download")), "downloaded again: {after:?}");
        assert_eq!(s.e.device(&s.id).unwrap().version(), Some("1.3"));
        assert_eq!(s.m.state(), StateName::AwaitTask, "the re-push that crossed the -1 is not taken");
        assert!(s.violations().is_empty(), "{:?}", s.violations());
    }
}

// ---- downloads over the MQTT stream ----

#[test]
fn a_full_mqtt_download_against_the_console_succeeds_within_aliyun_s_rules() {
    let mut s = online("1.3");
    let img = image("1.4", 60_000, 0);
    let j = s.add_job(JobSpec::new(Package::new("f.bin", "default", "1.4", img.clone()), Protocol::Mqtt));
    assert!(s.run_until(60_000, |s| s.reset));
    assert!(s.dfu[..img.len()] == img[..], "DFU differs from the image");
    assert!(s.log.contains(&"verify+mark".to_string()));
    let steps = s.steps();
    assert_eq!((steps[0], *steps.last().unwrap()), (1, 100), "{steps:?}");
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
    assert!(steps.len() <= 22, "throttled to 5 % steps: {steps:?}");
    assert_eq!(s.task(j).state, TaskState::Installing);
    assert_eq!(s.saved, None, "the resume point is forgotten once marked");
    assert_eq!(s.max_window(), shared::ota::DEFAULT_WINDOW, "the window grew to its maximum");
    assert!(s.violations().is_empty(), "{:?}", s.violations());
    // Aliyun's block rule: 256..131072, only the last block of the file shorter.
    for (_, off, size) in s.requests() {
        assert!(size <= 131_072 && (size >= 256 || off + size == img.len() as u32), "{off}+{size}");
    }
    // The 100 went at QoS 1, and the reset waited for its PUBACK.
    let last = s.sent.last().unwrap();
    assert_eq!((last.2["params"]["step"].as_str(), last.3.is_some()), (Some("100"), true));
    s.reboot("1.4", BootOutcome::Nothing, true);
    s.connect();
    s.run();
    assert_eq!(s.task(j).state, TaskState::Succeeded);
}

#[test]
fn the_window_starts_at_one_and_grows_only_while_requests_are_answered() {
    let mut s = online("1.3");
    s.add_job(job("1.4", 30_000, Protocol::Mqtt));
    s.run_until(60_000, |s| s.reset);
    let r = s.requests();
    // The first request alone (plus the read-ahead of the TLVs after its reply), then 2, 3, ...
    assert_eq!(r.iter().filter(|x| x.0 == r[0].0).count(), 1, "{r:?}");
    assert_eq!(s.max_window(), shared::ota::DEFAULT_WINDOW);
}

#[test]
fn the_read_ahead_asks_for_at_least_256_bytes_or_the_end_of_the_file() {
    // Blocks of 256: the TLV tail is the last block of the file (shorter than 256 is allowed).
    let mut s = Sim::with(|c| c.block_size = 256);
    s.boot("1.3", BootOutcome::Nothing, false);
    s.connect();
    s.run();
    let img = image("1.4", 5_000, 0);
    let len = img.len() as u32;
    s.add_job(JobSpec::new(Package::new("f.bin", "default", "1.4", img), Protocol::Mqtt));
    assert!(s.run_until(60_000, |s| s.reset));
    let peek = s.requests().into_iter().find(|r| r.1 == 0x200 + 5_000).expect("the read-ahead");
    assert_eq!(peek.1 + peek.2, len, "clamped at the end of the file: {peek:?}");
    assert!(s.violations().is_empty(), "{:?}", s.violations());
}

#[test]
fn blocks_smaller_than_asked_are_taken_and_asked_for_from_then_on() {
    let mut s = Sim::with(|c| c.block_size = 4096);
    s.boot("1.3", BootOutcome::Nothing, false);
    s.connect();
    s.run();
    s.e.reply_cap = Some(1000);
    let j = s.add_job(job("1.4", 40_000, Protocol::Mqtt));
    assert!(s.run_until(120_000, |s| s.reset), "{:?}", s.task(j));
    assert!(s.marked);
    let sizes: Vec<u32> = s.requests().iter().map(|r| r.2).collect();
    assert_eq!(sizes[0], 4096);
    assert!(sizes.iter().rev().take(5).all(|&z| z <= 1000), "{sizes:?}");
    assert!(s.t < 20_000, "no timeouts: {} ms", s.t);
}

#[test]
fn an_error_reply_is_asked_again_at_once_then_with_back_off() {
    let mut s = online("1.3");
    s.e.busy_replies = 2;
    let j = s.add_job(job("1.4", 20_000, Protocol::Mqtt));
    assert!(s.run_until(60_000, |s| s.reset), "{:?}", s.task(j));
    let r = s.requests();
    assert_eq!((r[0].1, r[1].1, r[2].1), (0, 0, 0), "{r:?}");
    assert_eq!(r[1].0 - r[0].0, 2 * s.one_way, "the first re-ask at once, on the reply");
    assert!(r[2].0 - r[1].0 >= 1000, "then after a back-off: {r:?}");
    assert!(s.t < 10_000, "never the 10 s timeout: {} ms", s.t);
}

#[test]
fn a_platform_that_keeps_refusing_fails_the_download_with_its_message() {
    let mut s = online("1.3");
    s.e.busy_replies = 100;
    let j = s.add_job(job("1.4", 20_000, Protocol::Mqtt));
    assert!(s.run_until(60_000, is_done(j)));
    let t = s.task(j);
    assert_eq!((t.step, t.failure), (-2, Some(FailureKind::BlockRefused)), "{t:?}");
    assert!(t.desc.contains("system busy") && t.desc.contains("503"), "{}", t.desc);
    assert_eq!(s.requests().len(), 4, "1 + 3 retries");
    assert!(s.t < 10_000, "{} ms", s.t);
}

#[test]
fn a_corrupt_block_is_asked_again_at_once() {
    let mut s = online("1.3");
    s.fault = Box::new(|n, mut b| {
        if n == 1 {
            let k = b.len() - 5;
            b[k] ^= 0xFF; // the CRC fails
        }
        Some(b)
    });
    let j = s.add_job(job("1.4", 20_000, Protocol::Mqtt));
    assert!(s.run_until(60_000, |s| s.reset), "{:?}", s.task(j));
    assert!(s.marked);
    assert!(s.t < 10_000, "no timeout: {} ms", s.t);
}

#[test]
fn lost_replies_are_asked_again_after_the_timeout_then_fail_with_minus_two() {
    let mut s = online("1.3");
    s.fault = Box::new(|_, _| None);
    let j = s.add_job(job("1.4", 20_000, Protocol::Mqtt));
    assert!(s.run_until(120_000, is_done(j)));
    let t = s.task(j);
    assert_eq!((t.step, t.failure), (-2, Some(FailureKind::BlockTimeout)), "{t:?}");
    assert_eq!(t.desc, "no reply for the block at 0 after 4 requests");
    let times: Vec<u64> = s.requests().iter().map(|r| r.0).collect();
    assert!(times.windows(2).all(|w| w[1] - w[0] >= 10_000), "one request per 10 s timeout: {times:?}");
    assert_eq!(s.m.state(), StateName::AwaitTask);
}

#[test]
fn a_lost_reply_in_the_window_is_noticed_by_the_next_one_not_after_a_timeout() {
    let mut s = online("1.3");
    s.fault = Box::new(|n, b| (n != 4).then_some(b));
    let j = s.add_job(job("1.4", 40_000, Protocol::Mqtt));
    assert!(s.run_until(120_000, |s| s.reset), "{:?}", s.task(j));
    assert!(s.t < 10_000, "{} ms", s.t);
}

#[test]
fn a_platform_that_serves_one_request_at_a_time_gets_stop_and_wait_never_minus_two() {
    let mut s = online("1.3");
    s.e.blocks = BlockService::OneAtATime { busy: std::time::Duration::from_millis(1) };
    let j = s.add_job(job("1.4", 100_000, Protocol::Mqtt));
    assert!(s.run_until(600_000, |s| s.reset), "{:?}", s.task(j));
    assert!(s.marked);
    let dropped = s.e.device(&s.id).unwrap().dropped_requests;
    assert!(dropped > 0 && dropped <= 4, "the window learned after {dropped} dropped requests");
    assert_eq!(s.m.window(), None);
    // Stop-and-wait: one round trip per block, no 10 s timeouts.
    let blocks = 100_000 / 1024 + 2;
    assert!(s.t < (blocks as u64 + 20) * 2 * s.one_way + 1000, "{} ms for {blocks} blocks", s.t);
}

#[test]
fn a_reconnect_during_the_download_asks_again_from_what_was_written_with_a_window_of_one() {
    let mut s = online("1.3");
    let j = s.add_job(job("1.4", 60_000, Protocol::Mqtt));
    s.run_until(60_000, |s| s.dfu_pos >= 20_000);
    s.disconnect();
    let written = s.dfu_pos;
    let before = s.requests().len();
    s.t += 1000;
    s.connect();
    assert!(s.run_until(60_000, |s| s.reset), "{:?}", s.task(j));
    let after = &s.requests()[before..];
    assert_eq!(after[0].1, written, "{after:?}");
    assert_eq!(after.iter().filter(|r| r.0 == after[0].0).count(), 1, "window back to 1");
}

#[test]
fn after_a_power_cut_the_download_resumes_from_the_last_page_boundary() {
    let mut s = online("1.3");
    let j = s.add_job(job("1.4", 60_000, Protocol::Mqtt));
    s.run_until(60_000, |s| s.dfu_pos >= 30_000);
    let saved = s.saved.expect("a resume point");
    assert_eq!(saved.written % PAGE, 0);
    s.reboot("1.3", BootOutcome::Nothing, false);
    s.connect();
    let before = s.requests().len();
    assert!(s.run_until(60_000, |s| s.reset), "{:?}", s.task(j));
    assert!(s.log.contains(&format!("rehash {}", saved.written)), "{:?}", s.log);
    assert_eq!(s.requests()[before].1, saved.written);
    assert!(s.marked);
    assert!(s.task(j).starts().iter().skip(1).all(|&o| o > 0), "{:?}", s.task(j));
}

#[test]
fn a_failed_flash_write_leaves_no_resume_point_over_it_and_no_request_behind() {
    let mut s = online("1.3");
    // Blocks of 1 KiB, pages of 4 KiB: the write at 3072 ends the first page (a resume point).
    s.fail_write_at = Some(3 * 1024);
    let j = s.add_job(job("1.4", 20_000, Protocol::Mqtt));
    assert!(s.run_until(60_000, is_done(j)), "{:?}", s.log);
    let t = s.task(j);
    assert_eq!((t.state, t.failure), (TaskState::Failed, Some(FailureKind::FlashWrite)), "{t:?}");
    assert!(
        s.saved.is_none_or(|r| r.written <= s.dfu_pos),
        "a resume point at {:?} over bytes never written (DFU holds {} bytes)",
        s.saved,
        s.dfu_pos
    );
    let failed_at = s.sent.iter().position(|x| x.2["params"]["step"] == "-4").expect("a -4");
    let late: Vec<_> = s.sent[failed_at..].iter().filter(|x| x.1.ends_with("/file/download")).collect();
    assert!(late.is_empty(), "block requests of the failed download went out after its -4: {late:?}");
    // A power cycle, and the same package again (the same task key): it completes.
    s.reboot("1.3", BootOutcome::Nothing, false);
    s.connect();
    let j = s.add_job(job("1.4", 20_000, Protocol::Mqtt));
    assert!(s.run_until(60_000, |s| s.reset), "{:?}", s.task(j));
    assert!(s.marked, "{:?} {:?}", s.task(j), s.log);
}

#[test]
fn minus_four_names_the_offset_of_the_write_that_failed() {
    let mut s = online("1.3");
    s.fail_write_at = Some(5 * 1024);
    let j = s.add_job(job("1.4", 20_000, Protocol::Mqtt));
    assert!(s.run_until(60_000, is_done(j)), "{:?}", s.log);
    let t = s.task(j);
    assert_eq!((t.state, t.step), (TaskState::Failed, -4), "{t:?}");
    assert!(t.desc.ends_with(" 5120"), "the write that failed started at 5120: {t:?}");
}

#[test]
fn a_counter_raised_by_the_confirm_refuses_a_lower_image_before_downloading_it() {
    // 1.5 carries SEC_CNT 5 and was just swapped in (the stored counter is still 1).
    let mut s = Sim::new();
    s.floor = Floor { sec_cnt: 1, revoked: 0 };
    s.raises = Floor { sec_cnt: 5, revoked: 0 };
    s.boot("1.5", BootOutcome::Nothing, true);
    s.connect();
    s.run();
    assert_eq!(s.log, ["self-test", "confirm"]);
    // Counter 5 is in force from the confirm on, before any reboot stores it: an image with
    // SEC_CNT 3 is refused on its protected TLVs, not after the whole download.
    let img = image("1.6", 60_000, 3);
    let j = s.add_job(JobSpec::new(Package::new("f.bin", "default", "1.6", img), Protocol::Mqtt));
    assert!(s.run_until(60_000, is_done(j)), "{:?}", s.log);
    let t = s.task(j);
    assert_eq!((t.state, t.failure), (TaskState::Failed, Some(FailureKind::Downgrade)), "{t:?}");
    assert!(t.desc.ends_with("security counter 3 is below the device's 5"), "{t:?}");
    assert!(t.blocks <= 10, "refused at the start of the download, not after 59 blocks: {}", t.blocks);
    assert!(!s.log.contains(&"verify+mark".to_string()));
    // An image at the raised counter is taken, and checked against it in full.
    let j = s.add_job(JobSpec::new(Package::new("g.bin", "default", "1.7", image("1.7", 20_000, 5)), Protocol::Mqtt));
    assert!(s.run_until(60_000, |s| s.reset), "{:?}", s.task(j));
    assert!(s.marked);
}

// ---- tasks the device cannot carry out ----

#[test]
fn every_task_it_cannot_carry_out_gets_one_minus_one_with_the_reason() {
    let cases: Vec<(Vec<Quirk>, FailureKind)> = vec![
        (vec![Quirk::Diff], FailureKind::DiffUnsupported),
        (vec![Quirk::SignMethod("Crc32".into())], FailureKind::SignMethodUnsupported),
        (vec![Quirk::Files(3)], FailureKind::SeveralFiles),
        (vec![Quirk::Omit("size")], FailureKind::MissingField),
        (vec![Quirk::Omit("sign")], FailureKind::MissingField),
        (vec![Quirk::Omit("streamId")], FailureKind::MissingField),
        (vec![Quirk::Version("1.4 beta".into())], FailureKind::BadVersion),
    ];
    for (quirks, kind) in cases {
        let mut s = online("1.3");
        let mut spec = job("1.4", 10_000, Protocol::Mqtt);
        spec.quirks = quirks.clone();
        let j = s.add_job(spec);
        s.run();
        // A reconnect: the console re-pushes, the device pulls; the task is over already.
        s.disconnect();
        s.connect();
        s.run();
        let t = s.task(j);
        assert_eq!((t.state, t.step, t.failure), (TaskState::Failed, -1, Some(kind)), "{quirks:?}: {t:?}");
        assert_eq!(s.steps(), [-1], "{quirks:?}: exactly one report");
        assert!(s.sent.iter().filter(|x| x.1.contains("/progress/")).all(|x| x.3.is_some()), "at QoS 1");
        assert!(s.requests().is_empty() && s.m.state() == StateName::AwaitTask);
        assert_eq!(t.late_reports, 0);
    }
}

#[test]
fn a_push_and_the_get_reply_that_cross_are_refused_once() {
    let mut s = Sim::new();
    s.boot("1.3", BootOutcome::Nothing, false);
    s.connect();
    s.run();
    let mut spec = job("1.4", 10_000, Protocol::Mqtt);
    spec.quirks = vec![Quirk::Diff];
    // The job exists when the device (re)connects: a push and its own firmware/get both bring it.
    s.e.add_job(spec, s.now()).unwrap();
    let _ = s.e.take_outbox();
    s.disconnect();
    s.connect();
    s.run();
    assert_eq!(s.steps(), [-1]);
    let t = s.task(1);
    assert!(t.pushes + t.get_replies >= 2, "{t:?}");
}

#[test]
fn the_refusal_is_sent_again_after_a_reconnect_until_acknowledged() {
    let mut s = online("1.3");
    s.acks = false; // the broker loses the session before acknowledging
    let mut spec = job("1.4", 10_000, Protocol::Mqtt);
    spec.quirks = vec![Quirk::Diff];
    let j = s.add_job(spec);
    s.run();
    assert_eq!(s.steps(), [-1]);
    s.disconnect();
    s.acks = true;
    s.connect();
    s.run();
    assert_eq!(s.steps(), [-1, -1], "sent again on the new session");
    assert_eq!(s.task(j).failure, Some(FailureKind::DiffUnsupported));
    s.disconnect();
    s.connect();
    s.run();
    assert_eq!(s.steps(), [-1, -1], "acknowledged: not again");
}

#[test]
fn an_image_too_large_for_the_slot_or_an_https_task_on_an_mqtt_only_board_is_refused() {
    let mut s = online("1.3");
    let j =
        s.add_job(JobSpec::new(Package::new("big.bin", "default", "2.0", vec![0; SLOT as usize + 1]), Protocol::Mqtt));
    s.run();
    assert_eq!(s.task(j).failure, Some(FailureKind::TooLarge));
    let mut s = Sim::with(|c| c.https = false);
    s.boot("1.3", BootOutcome::Nothing, false);
    s.connect();
    s.run();
    let j = s.add_job(job("1.4", 10_000, Protocol::Https));
    s.run();
    assert_eq!(s.task(j).failure, Some(FailureKind::HttpsUnsupported));
}

#[test]
fn a_push_of_the_version_already_running_is_answered_with_an_inform() {
    let mut s = online("1.3");
    let informs = |s: &Sim| s.sent.iter().filter(|x| x.1.contains("/inform/")).count();
    let before = informs(&s);
    // The console lost the device's version report: it still thinks 1.2 runs.
    let d = shared::alink::Offer { version: Some(shared::alink::EscapedStr("1.3")), ..Default::default() };
    let mut b = [0u8; 256];
    let n = shared::alink::emit_push(&mut b, 1, &d).unwrap();
    let at = s.at();
    s.m.handle(at, Event::Message { topic: Downlink::Upgrade, payload: &b[..n] });
    s.drain(&b[..n]);
    assert_eq!(informs(&s), before + 1);
    assert!(s.steps().is_empty());
}

#[test]
fn a_task_message_larger_than_the_buffer_is_refused_once_and_fits_a_bigger_one() {
    let udi = "u".repeat(4096);
    let mut spec = job("1.4", 10_000, Protocol::Mqtt);
    spec.ext_data = (0..10).map(|i| (format!("tag{i}"), "v".repeat(1024))).collect();
    spec.ext_data.push(("_package_udi".into(), udi));
    // The microcontroller boards' buffer (8 KiB + 512) does not hold it.
    let mut s = Sim::new();
    s.max_msg = 8192 + 512;
    s.boot("1.3", BootOutcome::Nothing, false);
    s.connect();
    s.run();
    let j = s.add_job(spec.clone());
    s.disconnect();
    s.connect();
    s.run();
    let t = s.task(j);
    assert_eq!(t.failure, Some(FailureKind::MessageTooLarge), "{t:?}");
    assert!(t.desc.contains("8704"), "{}", t.desc);
    assert_eq!(s.steps(), [-1]);
    // The host board's (128 KiB) does.
    let mut s = online("1.3");
    let j = s.add_job(spec);
    assert!(s.run_until(60_000, |s| s.reset), "{:?}", s.task(j));
}

#[test]
fn a_task_for_another_module_or_a_malformed_message_changes_nothing() {
    let mut s = online("1.3");
    let before = s.sent.len();
    for p in [
        &br#"{"code":"1000","data":{"version":"2","module":"wifi","size":1}}"#[..],
        b"\xff{not json",
        b"{\"code\":\"1000\"}",
    ] {
        let at = s.at();
        s.m.handle(at, Event::Message { topic: Downlink::Upgrade, payload: p });
        s.drain(p);
    }
    assert_eq!(s.sent.len(), before);
    assert_eq!(s.m.state(), StateName::AwaitTask);
}

// ---- HTTPS ----

#[test]
fn an_https_download_with_range_resumes_after_a_broken_connection() {
    let mut s = online("1.3");
    s.http_break_at = Some(10_000);
    let j = s.add_job(job("1.4", 30_000, Protocol::Https));
    assert!(s.run_until(60_000, |s| s.reset), "{:?} {:?}", s.task(j), s.log);
    let gets: Vec<&String> = s.log.iter().filter(|l| l.starts_with("GET")).collect();
    assert_eq!(gets[0], "GET from 0");
    assert!(gets.iter().any(|g| g.as_str() == "GET from 10000"), "{gets:?}");
    assert!(s.marked);
}

#[test]
fn an_expired_url_is_refreshed_with_firmware_get() {
    let mut s = online("1.3");
    s.e.url_ttl = std::time::Duration::from_secs(0);
    let j = s.add_job(job("1.4", 30_000, Protocol::Https));
    s.run_until(5_000, |s| s.log.iter().any(|l| l == "http close"));
    s.e.url_ttl = std::time::Duration::from_secs(24 * 3600);
    assert!(s.run_until(60_000, |s| s.reset), "{:?} {:?}", s.task(j), s.log);
    assert_eq!(s.task(j).get_replies, 1, "the fresh URL came in the get_reply: {:?}", s.task(j));
    assert_eq!(s.log.iter().filter(|l| l.as_str() == "GET from 0").count(), 2, "{:?}", s.log);
}

#[test]
fn an_expired_url_with_no_fresh_one_coming_is_minus_two() {
    // The fresh one is expired too: the second 403 ends it.
    let mut s = online("1.3");
    s.e.url_ttl = std::time::Duration::from_secs(0);
    let j = s.add_job(job("1.4", 30_000, Protocol::Https));
    assert!(s.run_until(60_000, is_done(j)));
    let t = s.task(j);
    assert_eq!((t.step, t.failure), (-2, Some(FailureKind::HttpStatus)), "{t:?}");
    assert_eq!(t.desc, "download server answered HTTP 403");
    // No get_reply comes at all: the device gives up after its request timeout.
    let mut s = online("1.3");
    s.e.url_ttl = std::time::Duration::from_secs(0);
    s.lose_get_replies = true;
    let j = s.add_job(job("1.4", 30_000, Protocol::Https));
    assert!(s.run_until(60_000, is_done(j)));
    assert_eq!(s.task(j).failure, Some(FailureKind::UrlExpired), "{:?}", s.task(j));
}

// ---- console rules, as a device meets them ----

#[test]
fn a_job_without_push_reaches_a_device_that_stays_online_by_its_periodic_pull() {
    let mut s = Sim::with(|c| c.pull_interval = shared::time::Duration::from_secs(3600));
    s.boot("1.3", BootOutcome::Nothing, false);
    s.connect();
    s.run_until(1000, |_| false);
    let mut spec = job("1.4", 10_000, Protocol::Mqtt);
    spec.need_push = false;
    let j = s.add_job(spec);
    assert_eq!(s.task_opt(j).map(|t| (t.pushes, t.state)), Some((0, TaskState::Pending)), "not pushed");
    assert!(s.run_until(2 * 3_600_000, |s| s.reset), "the hourly pull found it");
    let t = s.task(j);
    assert_eq!((t.pushes, t.get_replies), (0, 1), "{t:?}");
    assert!(s.t >= 3_600_000);
}

#[test]
fn the_timeout_runs_from_the_first_progress_report() {
    let mut spec = job("1.4", 10_000, Protocol::Mqtt);
    spec.timeout = Some(std::time::Duration::from_secs(60));
    // Created while the device is offline: two minutes later the task still waits for it.
    let mut s = Sim::new();
    s.boot("1.3", BootOutcome::Nothing, false);
    s.connect();
    s.run();
    s.disconnect();
    let j = s.add_job(spec.clone());
    s.t += 120_000;
    s.e.tick(s.now());
    assert_eq!(s.task(j).state, TaskState::Pending);
    s.connect();
    assert!(s.run_until(60_000, |s| s.reset), "{:?}", s.task(j));
    // A download that stalls after its first progress report fails 60 s after that report.
    let mut s = Sim::with(|c| c.request_timeout = shared::time::Duration::from_secs(30));
    s.boot("1.3", BootOutcome::Nothing, false);
    s.connect();
    s.run();
    s.fault = Box::new(|_, _| None);
    let j = s.add_job(spec);
    let t0 = s.t;
    assert!(s.run_until(300_000, is_done(j)));
    let t = s.task(j);
    assert!(t.state == TaskState::Failed && t.desc.contains("timed out"), "{t:?}");
    assert!((60_000..62_000).contains(&(s.t - t0)), "{} ms", s.t - t0);
}

impl Sim {
    fn task_opt(&self, job: u32) -> Option<TaskRecord> {
        self.e.device(&self.id).unwrap().tasks.get(&job).cloned()
    }
}

#[test]
fn progress_0_or_an_inform_of_a_foreign_version_ends_the_task_as_failed() {
    // What Aliyun does with reports our device never sends: the engine as the platform.
    for (topic, payload, says) in [
        ("progress", r#"{"id":"9","params":{"step":"0","desc":""}}"#, "progress 0"),
        ("inform", r#"{"id":"9","params":{"version":"0.9"}}"#, "neither 1.3 nor 1.4"),
    ] {
        let mut s = online("1.3");
        let j = s.add_job(job("1.4", 10_000, Protocol::Mqtt));
        let now = s.now();
        s.e.uplink(&format!("/ota/device/{topic}/{PK}/{DN}"), payload.as_bytes(), now);
        let t = s.task(j);
        assert_eq!(t.state, TaskState::Failed, "{topic}: {t:?}");
        assert!(t.desc.contains(says) || s.violations().iter().any(|v| v.contains(says)), "{t:?} {:?}", s.violations());
    }
}

#[test]
fn pending_tasks_are_pushed_again_on_every_reconnect_and_given_on_firmware_get() {
    let mut s = online("1.3");
    s.disconnect();
    let j = s.add_job(job("1.4", 10_000, Protocol::Mqtt));
    assert_eq!(s.task(j).pushes, 0, "offline: not pushed");
    s.connect();
    s.run_until(1000, |_| false);
    let t = s.task(j);
    assert_eq!((t.pushes, t.get_replies), (1, 1), "the re-push at the subscription, and the pull: {t:?}");
}

#[test]
fn a_task_message_too_large_is_refused_after_an_earlier_failure_too() {
    // Offers after a failure come from pulls: the oversized reply to one is answered.
    let mut s = Sim::new();
    s.max_msg = 8192 + 512;
    s.boot("1.3", BootOutcome::Reverted, false);
    s.connect();
    s.run();
    let mut spec = job("1.4", 10_000, Protocol::Mqtt);
    spec.ext_data = (0..6).map(|i| (format!("t{i}"), "v".repeat(1024))).collect();
    spec.ext_data.push(("_package_udi".into(), "u".repeat(4096)));
    let j = s.add_job(spec);
    assert!(s.run_until(60_000, is_done(j)));
    assert_eq!(s.task(j).failure, Some(FailureKind::MessageTooLarge), "{:?}", s.task(j));
}
