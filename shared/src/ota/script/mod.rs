//! The OTA machine under scripts of events, and the contract its actions must keep (host only,
//! `sim` feature): the model behind the `ota_machine` fuzz target and the property test
//! (shared/tests/ota_script.rs).
//!
//! A script ([`op`]) sets the machine up (page, slot, block size, window, retries, HTTPS, the
//! image offered, what the last boot left) and plays events: pushes and get_replies built from
//! the image (right or wrong digests, sizes, versions, modules, MQTT or HTTPS), arbitrary
//! messages, block replies to the requests in flight (good, short, long, corrupt, refused,
//! shifted, cut, duplicated), HTTP responses and bodies, timers, acks, failing flash writes,
//! self-test / confirm / rehash / mark results, power cuts, and the external modules `modem` and
//! `gnss` (their versions, tasks for the modem, its progress URCs and results).
//!
//! Its actions are carried out on a model, as the driver (app/src/driver.rs) carries them out:
//! a DFU `Vec` of the slot plus a spare page, the persisted resume point, the HTTP cursor; a
//! result event (`FlashFailed`, `Rehashed`, `Marked`, ...) is handed in with the rest of the
//! actions still queued. These must hold ([`run`] panics naming the one that did not):
//! - the machine never panics (output queue, buffers, progress steps);
//! - every `Write` lies inside the DFU slot and inside the payload it was handed, at the next
//!   byte after the `BeginDownload` (writes are sequential), and never before a `BeginDownload`;
//! - a saved resume point is on a page boundary and covers only bytes written;
//! - no download action (`Write`, `SaveResume`, `Rehash`, `HttpGet`, `VerifyAndMark`, a block
//!   request) once the download ended: whatever ends one (a failure, a refusal, a task that
//!   replaces it, a revert) leaves nothing of it queued;
//! - `VerifyAndMark` only in AwaitMark with the whole file written, and DFU then holds bytes whose
//!   digest (the task's method) is the digest of an offered task of that size;
//! - every publish is JSON, made while connected; a progress report's step is 1..=100 or
//!   -1..=-4 (never 0) and its desc at most 128 bytes; a report's module is the app's (absent)
//!   or a configured external module's;
//! - `ModuleUpdate` only for the modem, in ModuleUpdating, with a URL of at most its 255 bytes.

pub mod op;

use super::{
    Action, BootOutcome, BootReport, Event, External, HttpError, MarkError, ModuleError, ModulePhase, OtaConfig,
    OtaMachine, Outcome, Resume, StateName, Task, Verdict,
};
use crate::alink::{
    emit_download_error, emit_download_reply, emit_get_reply, emit_push, parse_offer, DigestMethod, Downlink,
    EscapedStr, Offer, OfferFile, OfferFiles,
};
use crate::boot::Floor;
use crate::image::{sign_image, ImageError, ImageVersion, SignParams};
use crate::time::{Duration, Instant};
use md5::Md5;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::VecDeque;
use std::string::{String, ToString};
use std::sync::OnceLock;
use std::vec::Vec;
use std::{format, vec};

const PK: &str = "a1B2c3D4e5F";
const DN: &str = "dev-001";
const RUNNING: &str = "1.3";

/// What a script did: the property test shows with it that its scripts reached the paths it
/// means to test.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ran {
    /// Events played.
    pub events: u32,
    /// Downloads begun (`BeginDownload` at 0).
    pub begun: u32,
    /// Downloads resumed (`Rehash`).
    pub resumed: u32,
    /// Bytes written to DFU.
    pub written: u64,
    /// Writes that failed (the `FLASH_FAILED` op).
    pub failed_writes: u32,
    /// Of those, the ones that ended a page: the machine had queued a resume point behind them,
    /// which it must drop.
    pub failed_at_page_end: u32,
    /// Images verified and marked.
    pub marked: u32,
    /// Downloads that ended without a mark (failed, refused, replaced).
    pub ended: u32,
}

/// Reads a script: bytes past the end read as 0.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn u8(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
}

/// Signed images (body bytes, SEC_CNT): the machine reads their header and protected TLVs.
fn signed(i: usize) -> &'static [u8] {
    static IMAGES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    &IMAGES.get_or_init(|| {
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        [(300, 0), (300, 5), (3000, 0), (3000, 5)]
            .into_iter()
            .map(|(len, sec_cnt)| {
                let body: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
                let version = ImageVersion { major: 1, minor: 4, revision: 0, build: 0 };
                let p = SignParams {
                    header_size: 0x200,
                    version,
                    sec_cnt,
                    module: Some("default"),
                    aliyun_version: Some("1.4"),
                    revoke_keys: 0,
                };
                sign_image(&body, &p, &key)
            })
            .collect()
    })[i]
}

fn setup(b: &mut Bytes<'_>) -> (OtaConfig, u8, Vec<u8>) {
    let s: [u8; 8] = core::array::from_fn(|_| b.u8());
    let img = b.u16();
    let page = [256u32, 1024, 4096][s[0] as usize % 3];
    let slot = page * (1 + u32::from(s[1] % 16));
    let mut cfg = OtaConfig::new(PK, DN, slot, page).unwrap();
    cfg.block_size = [256, 512, 1024, 5120][s[2] as usize % 4];
    cfg.window = 1 + s[3] as usize % 8;
    cfg.retries = s[4] % 4;
    cfg.progress_every = 1 + s[5] % 50;
    cfg.https = s[6] & op::setup::HTTPS != 0;
    let interval = if s[6] & op::setup::PROGRESS_INTERVAL != 0 { 1000 } else { 0 };
    cfg.progress_interval = Duration::from_millis(interval);
    cfg.request_timeout = Duration::from_secs(1 + u64::from(s[7] % 30));
    cfg.pull_interval = Duration::from_secs(3600);
    cfg.confirm_deadline = Duration::from_secs(600);
    cfg.external.push(External::modem()).unwrap();
    cfg.external.push(External::new("gnss", 512).unwrap()).unwrap();
    cfg.module_timeout = Duration::from_secs(60);
    let image = match img {
        0..=3 => signed(img as usize).to_vec(),
        n => {
            let len = (n as usize) % (slot as usize + 512);
            (0..len).map(|i| (i * 7 + 3) as u8).collect()
        }
    };
    (cfg, s[6], image)
}

/// How an offer differs from the right one for the image.
#[derive(Clone, Copy, Debug)]
struct OfferSpec {
    flags: u8,
    flags2: u8,
    size_delta: i8,
    stream: u8,
}

impl OfferSpec {
    fn read(b: &mut Bytes<'_>) -> Self {
        OfferSpec { flags: b.u8(), flags2: b.u8(), size_delta: b.u8() as i8, stream: b.u8() }
    }
}

#[derive(Debug)]
enum Ev<'a> {
    Connect,
    Disconnect,
    ConnectRefused(u8),
    Push(OfferSpec),
    GetReply(u8, OfferSpec),
    Raw(u8, &'a [u8]),
    Block { pick: u8, mode: u8, arg: u16 },
    Oversized(u8, u16),
    Ack(u8),
    Complete(u8),
    SelfTest(bool),
    Confirmed(bool),
    FailNextWrite,
    Rehashed(bool),
    Marked(u8),
    HttpResponse(u8, u8),
    HttpBody(u16, u8),
    HttpEnd,
    HttpFailed(u8),
    Tick(u16),
    Timeout,
    Reboot(u8),
    ModuleVersion(u8, u8),
    ModuleProgress(u8, u8),
    ModuleDone(u8),
}

impl<'a> Ev<'a> {
    fn read(b: &mut Bytes<'a>) -> Self {
        match b.u8() % op::OPS {
            op::CONNECT => Ev::Connect,
            op::DISCONNECT => Ev::Disconnect,
            op::CONNECT_REFUSED => Ev::ConnectRefused(b.u8()),
            op::PUSH => Ev::Push(OfferSpec::read(b)),
            op::GET_REPLY => Ev::GetReply(b.u8(), OfferSpec::read(b)),
            op::RAW => {
                let topic = b.u8();
                let len = b.u8() as usize;
                Ev::Raw(topic, b.take(len))
            }
            op::BLOCK => Ev::Block { pick: b.u8(), mode: b.u8(), arg: b.u16() },
            op::OVERSIZED => Ev::Oversized(b.u8(), b.u16()),
            op::ACK => Ev::Ack(b.u8()),
            op::COMPLETE => Ev::Complete(b.u8()),
            op::SELF_TEST => Ev::SelfTest(b.u8() & 1 == 1),
            op::CONFIRMED => Ev::Confirmed(b.u8() & 1 == 1),
            op::FLASH_FAILED => Ev::FailNextWrite,
            op::REHASHED => Ev::Rehashed(b.u8() & 1 == 1),
            op::MARKED => Ev::Marked(b.u8()),
            op::HTTP_RESPONSE => Ev::HttpResponse(b.u8(), b.u8()),
            op::HTTP_BODY => Ev::HttpBody(b.u16(), b.u8()),
            op::HTTP_END => Ev::HttpEnd,
            op::HTTP_FAILED => Ev::HttpFailed(b.u8()),
            op::TICK => Ev::Tick(b.u16()),
            op::TIMEOUT => Ev::Timeout,
            op::MODULE_VERSION => Ev::ModuleVersion(b.u8(), b.u8()),
            op::MODULE_PROGRESS => Ev::ModuleProgress(b.u8(), b.u8()),
            op::MODULE_DONE => Ev::ModuleDone(b.u8()),
            _ => Ev::Reboot(b.u8()),
        }
    }
}

fn verdict(pass: bool) -> Verdict {
    if pass {
        Verdict::Pass
    } else {
        Verdict::Fail
    }
}

/// Something the machine asked for whose result it waits for.
#[derive(Debug)]
enum Asked {
    SelfTest,
    Confirm,
    Rehash(u32),
    Mark,
}

fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    b.iter().flat_map(|x| [DIGITS[(x >> 4) as usize] as char, DIGITS[(x & 15) as usize] as char]).collect()
}

/// What the checks read of a publish: typed, borrowed where it can (a `serde_json::Value` per
/// publish cost a fifth of the fuzz target's time).
#[derive(serde::Deserialize)]
struct Published<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    params: Params<'a>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Params<'a> {
    #[serde(borrow, default)]
    step: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    desc: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    module: Option<Cow<'a, str>>,
    #[serde(default)]
    file_block: Option<FileBlock>,
}

#[derive(serde::Deserialize)]
struct FileBlock {
    offset: u32,
    size: u32,
}

/// A download action: none may come once the download it belongs to ended.
fn of_a_download(a: &Action<'_>) -> Option<&'static str> {
    match a {
        Action::Write { .. } => Some("Write"),
        Action::Patch { .. } => Some("Patch"),
        Action::SaveResume(_) => Some("SaveResume"),
        Action::Rehash { .. } => Some("Rehash"),
        Action::HttpGet { .. } => Some("HttpGet"),
        Action::VerifyAndMark { .. } => Some("VerifyAndMark"),
        Action::Publish { topic, .. } if topic.ends_with("/thing/file/download") => Some("a block request"),
        _ => None,
    }
}

struct Harness {
    m: OtaMachine,
    cfg: OtaConfig,
    image: Vec<u8>,
    /// The image's MD5 and SHA-256.
    md5: [u8; 16],
    sha256: [u8; 32],
    running: String,
    /// DFU: the slot and its spare page.
    dfu: Vec<u8>,
    /// Where the next write must go (None before a BeginDownload of this boot).
    cursor: Option<u32>,
    saved: Option<Resume>,
    connected: bool,
    now: u64,
    /// Block requests in flight as published: (id, offset, size).
    requests: Vec<(String, u32, u32)>,
    /// Recent QoS 1 packet ids.
    pids: Vec<u16>,
    /// The ids of the last two pulls.
    pulls: [u32; 2],
    /// Every task offered (size, method, digest).
    tasks: Vec<(u32, DigestMethod, [u8; 32])>,
    asked: VecDeque<Asked>,
    /// The HTTP GET in progress: the next body byte.
    http: Option<u32>,
    /// A marked image's version, installed at the next reset.
    marked: Option<String>,
    reset: bool,
    /// The next `Write` fails.
    fail_write: bool,
    /// A download is under way (begun or resumed, not yet ended).
    live: bool,
    /// Where messages are built (reused: one allocation per script).
    out: Vec<u8>,
    ran: Ran,
}

impl Harness {
    fn at(&self) -> Instant {
        Instant::from_millis(self.now)
    }

    fn boot(&mut self, awaiting_confirm: bool, outcome: BootOutcome, sec_cnt: u32) {
        self.m = OtaMachine::new(self.cfg.clone());
        self.connected = false;
        self.cursor = None;
        self.requests.clear();
        self.asked.clear();
        self.http = None;
        self.reset = false;
        self.live = false;
        let running = self.running.clone();
        let r = BootReport {
            version: &running,
            module: "default",
            awaiting_confirm,
            outcome,
            floor: Floor { sec_cnt, revoked: 0 },
            raises: Floor::default(),
            resume: self.saved,
            digest: [0; 32],
            image_len: 0,
        };
        self.handle(Event::Booted(r), None);
    }

    /// The offer for the image, as `spec` bends it; its JSON is written by `emit`.
    fn offer_json(&mut self, spec: OfferSpec, emit: impl Fn(&mut [u8], &Offer<'_>) -> Option<usize>) -> usize {
        let f = spec.flags;
        let sha = f & op::offer::SHA256 != 0;
        let mut digest = [0u8; 32];
        let d = if sha { &mut digest[..] } else { &mut digest[..16] };
        d.copy_from_slice(if sha { &self.sha256[..] } else { &self.md5[..] });
        if f & op::offer::WRONG_DIGEST != 0 {
            d[0] ^= 1;
        }
        let sign = hex(d);
        let size = (self.image.len() as i64 + i64::from(spec.size_delta)).max(0) as u32;
        let version = if f & op::offer::BAD_VERSION != 0 {
            "1.4 beta!"
        } else if f & op::offer::RUNNING_VERSION != 0 {
            RUNNING
        } else if spec.flags2 & op::offer::OTHER_VERSION != 0 {
            "1.5"
        } else {
            "1.4"
        };
        let url = if spec.flags2 & op::offer::LONG_URL != 0 {
            format!("https://oss.example/pkg.bin?Signature={}", "x".repeat(1100))
        } else if spec.flags2 & op::offer::ESCAPED_URL != 0 {
            r"https:\/\/oss.example\/pkg.bin?Expires=1\u0026Signature=a%2Fb".to_string()
        } else {
            "https://oss.example/pkg.bin?Expires=1&Signature=x".to_string()
        };
        let https = f & op::offer::HTTPS != 0;
        let method = if spec.flags2 & op::offer::NO_SIGN_METHOD != 0 {
            None
        } else {
            Some(EscapedStr(if sha { "SHA256" } else { "Md5" }))
        };
        let mut o = Offer {
            size: (spec.flags2 & op::offer::NO_SIZE == 0).then_some(size),
            version: Some(EscapedStr(version)),
            is_diff: (f & op::offer::DIFF != 0).then_some(1),
            url: https.then_some(EscapedStr(&url)),
            md5: (!sha).then_some(EscapedStr(&sign)),
            sign: Some(EscapedStr(&sign)),
            sign_method: method,
            module: if spec.flags2 & op::offer::MODEM != 0 {
                Some(EscapedStr("modem"))
            } else {
                (f & op::offer::OTHER_MODULE != 0).then_some(EscapedStr("MCU"))
            },
            d_protocol: (!https).then_some(EscapedStr("mqtt")),
            stream_id: (!https).then_some(1000 + u64::from(spec.stream)),
            stream_file_id: (!https).then_some(1),
            ..Offer::default()
        };
        if f & op::offer::FILES != 0 {
            let first = OfferFile {
                file_name: Some(EscapedStr("firmware.bin")),
                file_url: https.then_some(EscapedStr(&url)),
                file_size: Some(size),
                file_sign: Some(EscapedStr(&sign)),
                file_md5: None,
            };
            o.files = Some(OfferFiles { first, count: 1 + u16::from(spec.stream % 3) });
        }
        if let Ok(t) = Task::from_offer(&o) {
            self.tasks.push((t.size, t.method, t.digest));
        }
        emit(&mut self.out, &o).expect("an offer fits the buffer")
    }

    /// Hands `ev` in at the current time and carries out what it causes.
    fn handle(&mut self, ev: Event<'_>, payload: Option<&[u8]>) {
        let now = self.at();
        self.m.handle(now, ev);
        self.drain(payload);
    }

    /// The download under way ended: from now on none of its actions may come.
    fn end(&mut self) {
        if self.live {
            self.live = false;
            self.ran.ended += 1;
        }
    }

    /// A message; `raw`: bytes the harness did not build (an offer among them is noted).
    fn message(&mut self, topic: Downlink, payload: &[u8], raw: bool) {
        if raw && topic != Downlink::DownloadReply {
            if let Ok(Some(o)) = parse_offer(payload) {
                if let Ok(t) = Task::from_offer(&o) {
                    self.tasks.push((t.size, t.method, t.digest));
                }
            }
        }
        self.handle(Event::Message { topic, payload }, Some(payload));
    }

    fn drain(&mut self, payload: Option<&[u8]>) {
        let (slot, page) = (self.cfg.slot_size, self.cfg.page_size);
        loop {
            let state = self.m.state();
            if !matches!(state, StateName::Rehashing | StateName::Downloading | StateName::AwaitMark) {
                self.end();
            }
            let Some(a) = self.m.poll_action() else { break };
            if matches!(a, Action::BeginDownload { .. } | Action::BeginPatch | Action::Rehash { .. }) {
                self.live = true;
            }
            if let Some(what) = of_a_download(&a).filter(|_| !self.live) {
                panic!("{what} of a download that ended (state {state:?}): {a:?}");
            }
            match a {
                Action::Publish { topic, payload: p, qos1 } => {
                    assert!(self.connected, "published while offline: {topic}");
                    let topic = topic.to_string();
                    let p = p.to_vec();
                    self.published(&topic, &p, qos1);
                }
                Action::Write { offset, range } => {
                    let p = payload.expect("a write after an event without a payload");
                    assert!(range.start <= range.end && range.end <= p.len(), "write {range:?} outside the payload");
                    let end = offset as u64 + range.len() as u64;
                    assert!(end <= slot as u64, "write at {offset}+{} past the slot of {slot}", range.len());
                    assert_eq!(Some(offset), self.cursor, "writes are sequential after a BeginDownload");
                    if core::mem::take(&mut self.fail_write) {
                        // Handed in at once, with the rest of the actions still queued: the
                        // machine must take back what belonged to this download.
                        self.ran.failed_writes += 1;
                        self.ran.failed_at_page_end += u32::from(end as u32 / page > offset / page);
                        let now = self.at();
                        self.m.handle(now, Event::FlashFailed { at: offset });
                        continue;
                    }
                    self.dfu[offset as usize..end as usize].copy_from_slice(&p[range]);
                    self.cursor = Some(end as u32);
                    self.ran.written += end - offset as u64;
                }
                // The harness's device takes no differential packages (OtaConfig::delta off):
                // isDiff offers must be refused, never patched.
                Action::BeginPatch | Action::Patch { .. } => panic!("a patch action with delta off: {a:?}"),
                Action::BeginDownload { at } => {
                    assert!(at % page == 0 && at < slot.max(1), "BeginDownload at {at}");
                    self.cursor = Some(at);
                    if at == 0 {
                        self.ran.begun += 1;
                    }
                }
                Action::Rehash { len } => {
                    assert!(len % page == 0 && len <= slot, "rehash of {len}");
                    self.asked.push_back(Asked::Rehash(len));
                    self.ran.resumed += 1;
                }
                Action::SaveResume(r) => {
                    assert!(r.written % page == 0, "resume point {} off a page boundary", r.written);
                    let c = self.cursor;
                    assert!(
                        c.is_some_and(|c| r.written <= c),
                        "resume point {} past the bytes written ({c:?})",
                        r.written
                    );
                    self.saved = Some(r);
                }
                Action::ClearResume => self.saved = None,
                Action::HttpGet { from } => {
                    assert!(from <= slot && self.m.url().is_some(), "GET from {from}");
                    self.http = Some(from);
                }
                Action::HttpClose => self.http = None,
                Action::VerifyAndMark { .. } => {
                    assert_eq!(state, StateName::AwaitMark);
                    let (written, size) = self.m.written().expect("a download to mark");
                    assert_eq!(written, size, "marked before the whole file was written");
                    assert_eq!(self.cursor, Some(size), "marked with DFU not written up to the size");
                    let bytes = &self.dfu[..size as usize];
                    let (md5, sha) = (Md5::digest(bytes), Sha256::digest(bytes));
                    let ok = self.tasks.iter().any(|&(s, method, d)| {
                        s == size
                            && match method {
                                DigestMethod::Md5 => md5[..] == d[..16],
                                DigestMethod::Sha256 => sha[..] == d[..],
                            }
                    });
                    assert!(ok, "VerifyAndMark of {size} bytes whose digest no task offered");
                    self.asked.push_back(Asked::Mark);
                }
                Action::RunSelfTest => self.asked.push_back(Asked::SelfTest),
                Action::Confirm => self.asked.push_back(Asked::Confirm),
                Action::Reset | Action::Revert => self.reset = true,
                Action::ModuleUpdate { module, url } => {
                    assert_eq!(module, "modem", "only the modem is offered tasks");
                    assert!(url.len() <= 255 && url.starts_with("https:"), "ModuleUpdate with {url:?}");
                    assert_eq!(self.m.state(), StateName::ModuleUpdating);
                }
            }
        }
    }

    /// Checks a publish and notes what it asked for. Block requests (most publishes) are read
    /// with the alink reader; reports are parsed in full.
    fn published(&mut self, topic: &str, p: &[u8], qos1: Option<u16>) {
        let v: Published<'_> = serde_json::from_slice(p).expect("the device publishes JSON with an id and params");
        if topic.ends_with("/thing/file/download") {
            let b = v.params.file_block.expect("a fileBlock");
            let (off, size) = (b.offset, b.size);
            assert!((256..=131_072).contains(&size) || off + size == self.offered_size(off + size));
            self.requests.push((v.id.into_owned(), off, size));
            if self.requests.len() > 32 {
                self.requests.remove(0);
            }
        } else {
            if topic.starts_with("/ota/device/progress/") {
                let step: i64 = v.params.step.and_then(|s| s.parse().ok()).expect("a step string");
                assert!((1..=100).contains(&step) || (-4..=-1).contains(&step), "progress step {step}");
                let desc = v.params.desc.expect("a desc");
                assert!(desc.len() <= 128, "desc of {} bytes", desc.len());
            }
            let module = v.params.module.as_deref();
            assert!(matches!(module, None | Some("modem" | "gnss")), "a report for module {module:?}");
            if topic.ends_with("/thing/ota/firmware/get") {
                self.pulls = [v.id.parse().expect("a numeric id"), self.pulls[0]];
            }
        }
        if let Some(pid) = qos1 {
            self.pids.push(pid);
            if self.pids.len() > 8 {
                self.pids.remove(0);
            }
        }
    }

    /// The size of an offered task that ends at `end`, if any (the last block may be short).
    fn offered_size(&self, end: u32) -> u32 {
        self.tasks.iter().map(|t| t.0).find(|&s| s == end).unwrap_or(u32::MAX)
    }

    fn block(&mut self, pick: u8, mode: u8, arg: u16) {
        if self.requests.is_empty() {
            return;
        }
        let i = pick as usize % self.requests.len();
        let (id, mut offset, mut size) = self.requests[i].clone();
        if mode & 8 == 0 {
            self.requests.remove(i);
        }
        let mut id = id.as_str();
        let mut out = core::mem::take(&mut self.out);
        match mode & 7 {
            1 => id = "",
            2 => size = u32::from(arg) % size.max(1),
            3 => size += u32::from(arg) % 1024,
            5 => {
                let n = emit_download_error(&mut out, id, 400 + arg % 10, "file \"x\" not found").unwrap();
                self.message(Downlink::DownloadReply, &out[..n], false);
                self.out = out;
                return;
            }
            6 => offset = offset.wrapping_add(u32::from(arg)),
            _ => {}
        }
        let from = (offset as usize).min(self.image.len());
        let data = &self.image[from..(from + size as usize).min(self.image.len())];
        let len = self.image.len() as u32;
        if out.len() < data.len() + 1024 {
            out.resize(data.len() + 1024, 0);
        }
        let mut n = emit_download_reply(&mut out, id, Some("ota"), len, offset, data).unwrap();
        match mode & 7 {
            4 => out[n - 1] ^= 0x55,
            7 => n -= (arg as usize) % n,
            _ => {}
        }
        self.message(Downlink::DownloadReply, &out[..n], false);
        self.out = out;
    }

    fn complete(&mut self, ok: u8) {
        let Some(a) = self.asked.pop_front() else { return };
        let good = ok != 0;
        match a {
            Asked::SelfTest => self.handle(Event::SelfTest(verdict(good)), None),
            Asked::Confirm => self.handle(Event::Confirmed(Outcome::of(good)), None),
            Asked::Rehash(len) => {
                if good {
                    let bytes = self.dfu[..len as usize].to_vec();
                    self.m.rehash(&bytes);
                }
                self.handle(Event::Rehashed(Outcome::of(good)), None);
            }
            Asked::Mark => {
                let r = match ok {
                    0 => Err(MarkError::Image(ImageError::BadSignature)),
                    1 => Err(MarkError::Flash),
                    _ => Ok(()),
                };
                if r.is_ok() {
                    self.marked = self.m.written().map(|_| "1.4".to_string());
                }
                if r.is_ok() && self.m.state() == StateName::AwaitMark {
                    // (A mark asked for by a download since replaced changes nothing.)
                    self.ran.marked += 1;
                    self.live = false;
                }
                self.handle(Event::Marked(r), None);
            }
        }
    }

    fn run(&mut self, ev: Ev<'_>) {
        // MQTT messages and acks come only over a live session; so does HTTP (app/src/driver.rs
        // reads the body inside the session; between sessions only the machine's timers run).
        let online_only = matches!(
            ev,
            Ev::Push(_)
                | Ev::GetReply(..)
                | Ev::Raw(..)
                | Ev::Block { .. }
                | Ev::Oversized(..)
                | Ev::Ack(_)
                | Ev::HttpResponse(..)
                | Ev::HttpBody(..)
                | Ev::HttpEnd
                | Ev::HttpFailed(_)
        );
        if online_only && !self.connected {
            return;
        }
        match ev {
            Ev::Connect => {
                self.connected = true;
                self.handle(Event::Connected, None);
            }
            Ev::Disconnect => {
                self.connected = false;
                self.requests.clear();
                self.handle(Event::Disconnected, None);
            }
            Ev::ConnectRefused(c) => self.handle(Event::ConnectRefused(c), None),
            Ev::Push(spec) => {
                let n = self.offer_json(spec, |out, o| emit_push(out, 1695281536874, o).ok());
                let p = self.out[..n].to_vec();
                self.message(Downlink::Upgrade, &p, false);
            }
            Ev::GetReply(which, spec) => {
                let id = match which {
                    0 | 1 => self.pulls[which as usize],
                    n => u32::from(n),
                };
                let id = id.to_string();
                let n = self.offer_json(spec, |out, o| emit_get_reply(out, &id, o).ok());
                let p = self.out[..n].to_vec();
                self.message(Downlink::FirmwareGetReply, &p, false);
            }
            Ev::Raw(t, bytes) => {
                let topic = [Downlink::Upgrade, Downlink::FirmwareGetReply, Downlink::DownloadReply][t as usize % 3];
                self.message(topic, bytes, true);
            }
            Ev::Block { pick, mode, arg } => self.block(pick, mode, arg),
            Ev::Oversized(t, len) => {
                let topic = [Downlink::Upgrade, Downlink::FirmwareGetReply, Downlink::DownloadReply][t as usize % 3];
                self.handle(Event::Oversized { topic, len: 8704 + u32::from(len), max: 8704 }, None);
            }
            Ev::Ack(i) => {
                let pid = match self.pids.len() {
                    n if n > 0 && i < 128 => self.pids.remove(i as usize % n),
                    _ => 0x8000 | u16::from(i),
                };
                self.handle(Event::Acked(pid), None);
            }
            Ev::Complete(ok) => self.complete(ok),
            Ev::SelfTest(b) => self.handle(Event::SelfTest(verdict(b)), None),
            Ev::Confirmed(b) => self.handle(Event::Confirmed(Outcome::of(b)), None),
            Ev::FailNextWrite => self.fail_write = true,
            Ev::Rehashed(b) => self.handle(Event::Rehashed(Outcome::of(b)), None),
            Ev::Marked(r) => {
                let r = if r & 1 == 0 { Ok(()) } else { Err(MarkError::Flash) };
                self.handle(Event::Marked(r), None);
            }
            Ev::HttpResponse(status, len_mode) => {
                let from = self.http.unwrap_or(0);
                let status = match status % 8 {
                    0 | 1 if from > 0 => 206,
                    0 | 1 => 200,
                    s => [200, 206, 401, 403, 404, 500][s as usize - 2],
                };
                let rest = (self.image.len() as u32).saturating_sub(from);
                let length = match len_mode % 4 {
                    0 => Some(rest),
                    1 => None,
                    2 => Some(rest + 1),
                    _ => Some(0),
                };
                self.handle(Event::HttpResponse { status, length }, None);
            }
            Ev::HttpBody(len, corrupt) => {
                let from = (self.http.unwrap_or(0) as usize).min(self.image.len());
                let to = (from + len as usize).min(self.image.len());
                let mut body = self.image[from..to].to_vec();
                if corrupt & 1 == 1 && !body.is_empty() {
                    body[0] ^= 0x20;
                }
                if let Some(h) = &mut self.http {
                    *h = to as u32;
                }
                self.handle(Event::HttpBody(&body), Some(&body));
            }
            Ev::HttpEnd => self.handle(Event::HttpEnd, None),
            Ev::HttpFailed(why) => {
                let why =
                    [HttpError::Connect, HttpError::Tls, HttpError::Protocol, HttpError::Chunked, HttpError::Closed]
                        [why as usize % 5];
                self.handle(Event::HttpFailed(why), None);
            }
            Ev::ModuleVersion(module, version) => {
                let module = ["modem", "gnss", "wifi", "default"][module as usize % 4];
                let version = [RUNNING, "1.4", "1.5", "1.4 beta!"][version as usize % 4];
                self.handle(Event::ModuleVersion { module, version }, None);
            }
            Ev::ModuleProgress(phase, percent) => {
                let phase = if phase & 1 == 0 { ModulePhase::Download } else { ModulePhase::Install };
                self.handle(Event::ModuleProgress { phase, percent }, None);
            }
            Ev::ModuleDone(r) => {
                let r = match r % 6 {
                    0 => Ok(()),
                    1 => Err(ModuleError::Refused),
                    2 => Err(ModuleError::Download(702)),
                    3 => Err(ModuleError::Install(504)),
                    4 => Err(ModuleError::Install(1)),
                    _ => Err(ModuleError::Lost),
                };
                self.handle(Event::ModuleDone(r), None);
            }
            Ev::Tick(t) => {
                self.now += u64::from(t) * 10;
                if self.m.poll_timeout().is_some_and(|t| t.as_millis() <= self.now) {
                    let now = self.at();
                    self.m.handle_timeout(now);
                    self.drain(None);
                }
            }
            Ev::Timeout => {
                if let Some(t) = self.m.poll_timeout() {
                    self.now = self.now.max(t.as_millis());
                    let now = self.at();
                    self.m.handle_timeout(now);
                    self.drain(None);
                }
            }
            Ev::Reboot(f) => self.reboot(f),
        }
        if self.reset {
            self.reboot(0);
        }
    }

    /// A restart on the same DFU and resume point: the marked image runs, awaiting its self-test.
    fn reboot(&mut self, f: u8) {
        let installed = self.marked.take();
        if let Some(v) = &installed {
            self.running = v.clone();
        }
        let outcome = if f & 2 != 0 { BootOutcome::Reverted } else { BootOutcome::Nothing };
        self.boot(installed.is_some() || f & 1 != 0, outcome, 0);
    }
}

/// Plays a script (see [`op`]) and checks the contract (module docs) at every action; panics
/// naming what broke. Returns what it did.
pub fn run(data: &[u8]) -> Ran {
    let mut b = Bytes(data);
    let (cfg, flags, image) = setup(&mut b);
    let (slot, page) = (cfg.slot_size, cfg.page_size);
    let mut h = Harness {
        m: OtaMachine::new(cfg.clone()),
        cfg,
        md5: Md5::digest(&image).into(),
        sha256: Sha256::digest(&image).into(),
        image,
        running: RUNNING.to_string(),
        dfu: vec![0xFF; (slot + page) as usize],
        cursor: None,
        saved: None,
        connected: false,
        now: 0,
        requests: Vec::new(),
        pids: Vec::new(),
        pulls: [0; 2],
        tasks: Vec::new(),
        asked: VecDeque::new(),
        http: None,
        marked: None,
        reset: false,
        fail_write: false,
        live: false,
        out: vec![0; 16 * 1024],
        ran: Ran::default(),
    };
    if flags & op::setup::RESUME != 0 {
        // What a power cut in the middle of the image's MD5 task left.
        let sign = hex(&h.md5);
        let o = Offer {
            size: Some(h.image.len() as u32),
            version: Some(EscapedStr("1.4")),
            md5: Some(EscapedStr(&sign)),
            d_protocol: Some(EscapedStr("mqtt")),
            stream_id: Some(1000),
            ..Offer::default()
        };
        // (An empty image is no task: then nothing was persisted.)
        if let Ok(t) = Task::from_offer(&o) {
            let written = (h.image.len() as u32 / 2 / page * page).min(slot);
            if flags & op::setup::PREFILLED != 0 {
                let n = (written as usize).min(h.image.len());
                h.dfu[..n].copy_from_slice(&h.image[..n]);
            }
            h.saved = Some(Resume { key: t.key(), written });
        }
    }
    let outcome = if flags & op::setup::REVERTED != 0 {
        BootOutcome::Reverted
    } else if flags & op::setup::REFUSED != 0 {
        BootOutcome::Refused(ImageError::HashMismatch)
    } else {
        BootOutcome::Nothing
    };
    let sec_cnt = u32::from(flags & op::setup::SEC_CNT != 0);
    h.boot(flags & op::setup::AWAITING_CONFIRM != 0, outcome, sec_cnt);
    let trace = std::env::var_os("OTA_TRACE").is_some();
    while !b.0.is_empty() && (h.ran.events as usize) < op::MAX_EVENTS {
        let ev = Ev::read(&mut b);
        if trace {
            std::eprintln!("{:>6} ms {:?} {ev:?}", h.now, h.m.state());
        }
        h.run(ev);
        h.ran.events += 1;
    }
    h.ran
}
