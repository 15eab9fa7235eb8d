//! [`OtaMachine`]: the whole OTA flow, deterministic, time passed in.

use super::config::{OtaConfig, MAX_EXTERNAL, MAX_WINDOW, MIN_BLOCK};
use super::task::{module_of, Source, Task, TaskKey, UrlPiece};
use super::{
    Action, BootOutcome, BootReport, Event, Failure, HttpError, MarkError, ModuleError, ModulePhase, Outcome, Resume,
    Verdict,
};
use crate::alink::{self, AlinkError, BlockReply, DigestMethod, Downlink, EscapedStr, Topic, Topics};
use crate::boot::Floor;
use crate::delta;
use crate::image::{Header, HeaderRepr, TlvIter, TlvKind, TLV_PROT_INFO_MAGIC};
use crate::time::{Duration, Instant};
use core::fmt::Write as _;
use heapless::{Deque, String, Vec};
use md5::Digest as _;

/// Longest pre-signed download URL we keep (OSS URLs with an STS token run to ~1 KB).
pub const MAX_URL: usize = 1024;
const OUT_BUF: usize = 384;
/// How long the machine waits for the broker to acknowledge the last report before a reset.
const ACK_WAIT: Duration = Duration::from_secs(5);
/// QoS 1 reports kept until acknowledged.
const MAX_PENDING: usize = 4;

/// The states, named after what they wait for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum StateName {
    /// The first event, [`Event::Booted`].
    AwaitBoot,
    /// The new image's self-test.
    AwaitSelfTest,
    /// A new image that passed its self-test waits to reach the broker before it confirms.
    AwaitSession,
    /// The confirmation of the new image.
    AwaitConfirm,
    /// A task (push or get_reply).
    AwaitTask,
    /// DFU being re-hashed to resume a download.
    Rehashing,
    /// Blocks or body bytes.
    Downloading,
    /// The verdict of our signature check and the mark.
    AwaitMark,
    /// The reset that hands over to the bootloader.
    AwaitReset,
    /// An external module updates itself ([`Action::ModuleUpdate`]): its progress and result.
    ModuleUpdating,
    /// An external module installed its update and restarts: its version.
    ModuleRestarting,
}

#[derive(Clone)]
enum Hasher {
    Md5(md5::Md5),
    Sha256(sha2::Sha256),
}

impl Hasher {
    fn new(m: DigestMethod) -> Self {
        match m {
            DigestMethod::Md5 => Hasher::Md5(md5::Md5::new()),
            DigestMethod::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
        }
    }
    fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(b),
            Hasher::Sha256(h) => h.update(b),
        }
    }
    /// Compares with `want` (MD5 uses the first 16 bytes).
    fn matches(&self, want: &[u8; 32]) -> bool {
        match self.clone() {
            Hasher::Md5(h) => h.finalize()[..] == want[..16],
            Hasher::Sha256(h) => h.finalize()[..] == want[..],
        }
    }
}

/// One block request in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Request {
    /// The message id it was sent with (replies echo it).
    id: u32,
    offset: u32,
    len: u32,
    deadline: Instant,
}

impl Request {
    /// Whether a reply with this `id` (or, if it has none, this `offset`) answers this request.
    fn answered_by(&self, id: Option<&str>, offset: Option<u32>) -> bool {
        match id.and_then(|i| i.parse::<u32>().ok()) {
            Some(i) => self.id == i,
            None => offset == Some(self.offset),
        }
    }
}

/// Why the block at the head of the download had to be asked for again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loss {
    /// No reply in time, or a later request was answered first.
    Timeout,
    /// The platform answered with an error code.
    Refused,
    /// The reply failed its CRC or framing.
    Corrupt,
}

/// An MQTT stream download. Requests go out in offset order from `next`; replies are taken when
/// they cover `written` (whatever request they answer, so a reply larger or smaller than asked,
/// or one that overlaps, still counts). The window starts at 1, grows by one per reply up to
/// `ceiling`, and falls back to 1 when a request is lost (which also halves `ceiling`): a platform
/// that answers one request at a time ends in stop-and-wait after one or two losses.
#[derive(Clone)]
struct Stream {
    stream_id: u64,
    file_id: u32,
    next: u32,
    in_flight: Vec<Request, MAX_WINDOW>,
    /// The read-ahead of the protected TLVs (not written, outside the window).
    peek: Option<Request>,
    peeked: bool,
    window: u8,
    ceiling: u8,
    /// Bytes per request: the configured block size, lowered to what the platform sends.
    cap: u32,
    /// Times the block at `written` was asked for again.
    head_tries: u8,
    /// A back-off before asking again (after an error reply or a bad CRC).
    retry_at: Option<Instant>,
    /// What the platform said in its last error reply.
    refusal: Option<(i32, String<{ super::MAX_PLATFORM_MSG }>)>,
}

#[derive(Clone)]
struct Https {
    url: String<MAX_URL>,
    tries: u8,
    refreshed: bool,
    from: u32,
    /// When a fresh URL was asked for: the time to give up waiting for it.
    refresh_by: Option<Instant>,
    tail: Tail,
    /// Why the last try failed (named when the retries run out).
    last: Option<HttpError>,
    /// The next GET after a break: at this time (a back-off), or (`None` with `waiting`) once
    /// the MQTT session is up again.
    retry_at: Option<Instant>,
    /// The GET waits for the MQTT session: the link (the same modem, the same network) is down.
    waiting: bool,
}

// One download at a time, kept in place: no allocator to box the URL into.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Via {
    Mqtt(Stream),
    Https(Https),
}

/// The early look at an HTTPS image's protected TLVs (its security counter), read with a Range
/// GET once the header says where they are, before the body.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Tail {
    /// The header has not been seen yet.
    Unknown,
    /// The GET in progress is for `[at, size)`; `buf` collects it.
    Reading { at: u32, buf: Vec<u8, 512> },
    /// Checked (or not checkable): the body goes on.
    Done,
}

#[derive(Clone)]
struct Download {
    version: String<64>,
    size: u32,
    digest: [u8; 32],
    method: DigestMethod,
    key: TaskKey,
    hasher: Hasher,
    written: u32,
    saved: u32,
    via: Via,
    last_pct: u8,
    last_report: Instant,
    /// A differential package: its first bytes until [`delta::Header::parse`] decides (the base
    /// it names is checked against the running image before a byte is written).
    patch: Option<PatchStart>,
}

/// Bytes of [`OtaMachine`] only a differential package uses (its first bytes, kept until its
/// header is read): the delta path's RAM beside `shared::delta::Patcher`.
pub const DELTA_HEAD_RAM: usize = core::mem::size_of::<Option<PatchStart>>();

/// The start of a patch, kept until its header is read.
#[derive(Clone)]
struct PatchStart {
    head: Vec<u8, { delta::MAX_HEADER }>,
    checked: bool,
}

/// Whose message: the app's module, or an external module (its index in `OtaConfig::external`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    App,
    Ext(u8),
}

/// Modules a device reports: the app's and the external ones.
const MODULES: usize = 1 + MAX_EXTERNAL;

impl Who {
    fn idx(self) -> usize {
        match self {
            Who::App => 0,
            Who::Ext(i) => 1 + i as usize,
        }
    }
    fn of_idx(k: usize) -> Who {
        if k == 0 {
            Who::App
        } else {
            Who::Ext(k as u8 - 1)
        }
    }
}

/// The module name `who` reports with.
fn name_of<'a>(cfg: &'a OtaConfig, app: &'a str, who: Who) -> &'a str {
    match who {
        Who::App => app,
        Who::Ext(i) => cfg.external.get(i as usize).map_or(app, |e| e.name.as_str()),
    }
}

/// An external module's update, from the [`Action::ModuleUpdate`] to its version after the
/// restart.
#[derive(Clone)]
struct ModuleJob {
    ext: u8,
    /// The task's version.
    version: String<64>,
    url: String<MAX_URL>,
    /// What its last progress URC said (None before the first).
    phase: Option<ModulePhase>,
    last_step: i8,
    last_report: Instant,
    /// No progress (updating) or no version (restarting) by then: failed.
    deadline: Instant,
}

enum State {
    AwaitBoot,
    AwaitSelfTest,
    AwaitSession {
        by: Instant,
    },
    AwaitConfirm,
    AwaitTask,
    Rehashing(Download),
    Downloading(Download),
    AwaitMark(Download),
    /// `by`: reset then at the latest; `None` once the reset was asked for.
    AwaitReset {
        by: Option<Instant>,
    },
    ModuleUpdating(ModuleJob),
    ModuleRestarting(ModuleJob),
}

/// A queued output; turned into an [`Action`] (JSON built then) by `poll_action`.
#[derive(Clone, Debug)]
enum Out {
    Inform {
        pid: u16,
        who: Who,
    },
    FirmwareGet {
        who: Who,
    },
    /// A progress report on the way (1..99; its desc is made when it is sent).
    Progress {
        step: i8,
        who: Who,
    },
    /// A QoS 1 report of `pending`.
    Report {
        pid: u16,
    },
    BlockRequest {
        id: u32,
        stream_id: u64,
        file_id: u32,
        offset: u32,
        len: u32,
    },
    Plain(Plain),
}

#[derive(Clone, Debug)]
enum Plain {
    RunSelfTest,
    Confirm,
    BeginDownload(u32),
    BeginPatch,
    Write(u32, core::ops::Range<usize>),
    Patch(u32, core::ops::Range<usize>),
    Rehash(u32),
    SaveResume(Resume),
    ClearResume,
    HttpGet(u32),
    HttpClose,
    VerifyAndMark { patched: bool },
    Reset,
    Revert,
    ModuleUpdate,
}

/// After a failure report, offers come only from pulls sent after it. The task the report fails is
/// over on the platform, so an offer that crossed the report (the push of a reconnect, a push
/// sent late, the reply to a pull sent before it) may be stale: taking it would download again
/// what just failed, refusing it would report twice. A push then only makes the device pull (at
/// most once per request timeout), and the reply to a pull sent after the report, which the
/// platform answered knowing the report, is acted on. Taking a task ends the hold; so does a
/// pull that gets no reply in time (pulls go unanswered here: pushes count again).
#[derive(Clone, Copy, Debug)]
struct Hold {
    /// The id of the first pull sent after the report (replies to older ones are stale).
    fresh: Option<u32>,
    /// When the last pull since went out, until its reply came.
    sent: Option<Instant>,
}

/// A terminal progress report (100 or a failure) kept until the broker acknowledged it.
#[derive(Clone, Debug)]
struct Pending {
    pid: u16,
    step: i8,
    desc: String<128>,
    who: Who,
}

/// The OTA client. See the module docs.
pub struct OtaMachine {
    cfg: OtaConfig,
    state: State,
    connected: bool,
    version: String<64>,
    module: String<64>,
    /// What downloads must meet (checked early on the image's protected TLVs, and in full by
    /// `VerifyAndMark`); raised by `raises` when the running image confirms.
    floor: Floor,
    raises: Floor,
    resume: Option<Resume>,
    /// The running image's SHA-256 and length (the base a differential package must name).
    digest: [u8; 32],
    image_len: u32,
    next_id: u32,
    next_pid: u16,
    out: Deque<Out, 32>,
    pending: Vec<Pending, MAX_PENDING>,
    /// Per module (app first): the version report not yet acknowledged, if one was sent.
    inform_pid: [Option<u16>; MODULES],
    /// Per module: a version report owed since the last connect (the version changed when it
    /// could not be sent).
    inform_due: [bool; MODULES],
    /// The external modules' versions, as the board read them.
    ext_versions: [Option<String<64>>; MAX_EXTERNAL],
    /// After a failure report: offers come from pulls sent after it.
    hold: Option<Hold>,
    /// When the last `firmware/get` went out.
    last_pull: Option<Instant>,
    /// The time of the last event (when a pull is queued, its reply is awaited until then + timeout).
    now: Instant,
    pull_at: Option<Instant>,
    topic: Topic,
    buf: [u8; OUT_BUF],
}

/// Bytes of the task's URL with its JSON escapes resolved.
fn url_len(task: &Task<'_>) -> Result<usize, ()> {
    task.url_fragments().try_fold(0, |n, piece| match piece? {
        UrlPiece::Str(s) => Ok(n + s.len()),
        UrlPiece::Char(c) => Ok(n + c.len_utf8()),
    })
}

fn unescape_url(task: &Task<'_>) -> Result<String<MAX_URL>, ()> {
    let mut url = String::new();
    for piece in task.url_fragments() {
        match piece? {
            UrlPiece::Str(s) => url.push_str(s).map_err(|_| ())?,
            UrlPiece::Char(c) => url.push(c).map_err(|_| ())?,
        }
    }
    Ok(url)
}

/// SEC_CNT from bytes that start with the protected TLV area.
fn protected_sec_cnt(area: &[u8]) -> Option<u32> {
    let (it, _) = TlvIter::new(area, TLV_PROT_INFO_MAGIC).ok()?;
    it.filter_map(Result::ok)
        .find(|t| t.kind == TlvKind::SecCnt)
        .and_then(|t| t.value.try_into().ok())
        .map(u32::from_le_bytes)
}

/// Back-off before asking again for a block the platform refused or sent corrupt: at once the
/// first time, then 1 s, 2 s, 4 s...
fn retry_delay(tries: u8) -> Duration {
    match tries {
        0 | 1 => Duration::from_millis(0),
        n => Duration::from_millis(1000u64 << (n - 2).min(6)),
    }
}

fn fmt<const N: usize>(args: core::fmt::Arguments<'_>) -> String<N> {
    let mut s = String::new();
    let _ = s.write_fmt(args); // cut at N bytes
    s
}

impl OtaMachine {
    /// A machine waiting for [`Event::Booted`]. Panics on settings outside their limits: a board
    /// checks what a user gave it with [`OtaConfig::check`] first.
    pub fn new(cfg: OtaConfig) -> Self {
        if let Err(e) = cfg.check() {
            panic!("OtaConfig: {e}");
        }
        assert!(cfg.page_size > 0 && cfg.progress_every > 0);
        OtaMachine {
            cfg,
            state: State::AwaitBoot,
            connected: false,
            version: String::new(),
            module: String::new(),
            floor: Floor::default(),
            raises: Floor::default(),
            resume: None,
            digest: [0; 32],
            image_len: 0,
            next_id: 0,
            next_pid: 0,
            out: Deque::new(),
            pending: Vec::new(),
            inform_pid: [None; MODULES],
            inform_due: [false; MODULES],
            ext_versions: Default::default(),
            hold: None,
            last_pull: None,
            now: Instant::from_millis(0),
            pull_at: None,
            topic: Topic::new(),
            buf: [0; OUT_BUF],
        }
    }

    /// The device's topics.
    pub fn topics(&self) -> Topics<'_> {
        self.cfg.topics()
    }

    /// The settings.
    pub fn config(&self) -> &OtaConfig {
        &self.cfg
    }

    /// What the machine waits for.
    pub fn state(&self) -> StateName {
        match self.state {
            State::AwaitBoot => StateName::AwaitBoot,
            State::AwaitSelfTest => StateName::AwaitSelfTest,
            State::AwaitSession { .. } => StateName::AwaitSession,
            State::AwaitConfirm => StateName::AwaitConfirm,
            State::AwaitTask => StateName::AwaitTask,
            State::Rehashing(_) => StateName::Rehashing,
            State::Downloading(_) => StateName::Downloading,
            State::AwaitMark(_) => StateName::AwaitMark,
            State::AwaitReset { .. } => StateName::AwaitReset,
            State::ModuleUpdating(_) => StateName::ModuleUpdating,
            State::ModuleRestarting(_) => StateName::ModuleRestarting,
        }
    }

    /// The external module being updated and the task's version.
    pub fn module_task(&self) -> Option<(&str, &str)> {
        match &self.state {
            State::ModuleUpdating(j) | State::ModuleRestarting(j) => {
                Some((name_of(&self.cfg, &self.module, Who::Ext(j.ext)), &j.version))
            }
            _ => None,
        }
    }

    /// The version of an external module, as last reported by the board.
    pub fn module_version(&self, module: &str) -> Option<&str> {
        self.ext(module).and_then(|i| self.ext_versions[i as usize].as_deref())
    }

    /// The index of the external module `name` (one named like the app's module is none).
    fn ext(&self, name: &str) -> Option<u8> {
        if name == self.module.as_str() {
            return None;
        }
        self.cfg.external.iter().position(|e| e.name == name).map(|i| i as u8)
    }

    /// The external modules whose version is known (the ones reported and pulled for).
    fn known_exts(&self) -> Vec<u8, MAX_EXTERNAL> {
        (0..self.cfg.external.len() as u8)
            .filter(|&i| self.ext_versions[i as usize].is_some() && self.cfg.external[i as usize].name != self.module)
            .collect()
    }

    /// Bytes of the current download written so far, and its size.
    pub fn written(&self) -> Option<(u32, u32)> {
        match &self.state {
            State::Rehashing(d) | State::Downloading(d) | State::AwaitMark(d) => Some((d.written, d.size)),
            _ => None,
        }
    }

    /// Block requests in flight and the window of the current MQTT stream download.
    pub fn window(&self) -> Option<(usize, usize)> {
        match &self.state {
            State::Downloading(Download { via: Via::Mqtt(s), .. }) => Some((s.in_flight.len(), s.window as usize)),
            _ => None,
        }
    }

    /// The URL of the current HTTPS download.
    pub fn url(&self) -> Option<&str> {
        match &self.state {
            State::Downloading(Download { via: Via::Https(h), .. }) => Some(&h.url),
            _ => None,
        }
    }

    /// Feeds bytes of DFU while a [`Action::Rehash`] is carried out, in order from offset 0.
    pub fn rehash(&mut self, bytes: &[u8]) {
        if let State::Rehashing(d) = &mut self.state {
            d.hasher.update(bytes);
        }
    }

    fn push(&mut self, o: Out) {
        // The queue holds far more than one event ever causes; losing an output would be a bug.
        self.out.push_back(o).expect("OTA output queue overflow");
    }

    fn plain(&mut self, p: Plain) {
        self.push(Out::Plain(p));
    }

    /// The contract of [`Action::Write`] and [`Action::Patch`], checked: their ranges index the
    /// payload last handed in, so a new payload must not come before they were all taken. If one
    /// does, the bytes they named may be gone: they are dropped with what depends on them (the
    /// resume point after them, the verify and mark of a download they ended), and the download
    /// fails as the flash write it did not do (a driver bug, never a hole in an installed image).
    fn unwritten_payload(&mut self) {
        let at = self.out.iter().find_map(|o| match o {
            Out::Plain(Plain::Write(at, _) | Plain::Patch(at, _)) => Some(*at),
            _ => None,
        });
        let Some(at) = at else { return };
        self.drop_queued(|o| {
            matches!(
                o,
                Out::Plain(Plain::Write(..) | Plain::Patch(..) | Plain::SaveResume(_) | Plain::VerifyAndMark { .. })
            )
        });
        if matches!(self.state, State::Downloading(_) | State::AwaitMark(_)) {
            self.fail(Failure::FlashWrite { at });
        }
    }

    /// Drops the queued outputs `stale` picks, keeping the order of the rest.
    fn drop_queued(&mut self, stale: impl Fn(&Out) -> bool) {
        let mut kept = Deque::new();
        while let Some(o) = self.out.pop_front() {
            if !stale(&o) {
                let _ = kept.push_back(o);
            }
        }
        self.out = kept;
    }

    /// A download ended (failed, refused, replaced by another task): whatever it still had queued
    /// goes with it. A write or patch after a failed one would leave a hole; a resume point would
    /// name bytes never written (a retry of the same package would resume over them and end in
    /// -3); a block request or GET would fetch what nobody takes; a mark would install it. The
    /// resume point's clearing, the HTTP close and the reports stay.
    fn end_download(&mut self) {
        self.drop_queued(|o| {
            matches!(
                o,
                Out::BlockRequest { .. }
                    | Out::Plain(
                        Plain::BeginDownload(_)
                            | Plain::BeginPatch
                            | Plain::Write(..)
                            | Plain::Patch(..)
                            | Plain::Rehash(_)
                            | Plain::SaveResume(_)
                            | Plain::HttpGet(_)
                            | Plain::VerifyAndMark { .. }
                    )
            )
        });
    }

    fn new_pid(&mut self) -> u16 {
        // 1..=0x7FFF: the MQTT session's own packet ids (SUBSCRIBE) stay below the reports'.
        self.next_pid = self.next_pid % 0x7FFF + 1;
        0x8000 | self.next_pid
    }

    /// A progress report of the app's task on the way (dropped while offline: a later one says
    /// more).
    fn progress(&mut self, step: i8) {
        self.progress_as(Who::App, step);
    }

    fn progress_as(&mut self, who: Who, step: i8) {
        if self.connected {
            self.push(Out::Progress { step, who });
        }
    }

    /// A terminal report (100, or a failure) of the app's task: QoS 1, kept and sent again after
    /// a reconnect until the broker acknowledges it.
    fn report(&mut self, step: i8, desc: String<128>) {
        self.report_as(Who::App, step, desc);
    }

    /// A terminal report of `who`'s task.
    fn report_as(&mut self, who: Who, step: i8, desc: String<128>) {
        if self.pending.is_full() {
            // Four reports unacknowledged is a broker that does not acknowledge: the oldest goes.
            self.pending.remove(0);
        }
        let pid = self.new_pid();
        let _ = self.pending.push(Pending { pid, step, desc, who });
        if self.connected {
            self.push(Out::Report { pid });
        }
        if step < 0 {
            self.hold = Some(Hold { fresh: None, sent: None });
            self.ask_pull();
        }
    }

    /// A `firmware/get` now, or after the request timeout since the last one (so that a platform
    /// that keeps offering what the device refuses is not answered in a storm).
    fn ask_pull(&mut self) {
        let soon = self.last_pull.map_or(self.now, |t| t + self.cfg.request_timeout);
        if !self.connected {
        } else if soon <= self.now {
            self.pull();
        } else {
            self.pull_at = Some(self.pull_at.map_or(soon, |t| t.min(soon)));
        }
    }

    /// A `firmware/get` for every module (at connect, every `pull_interval`, after a failure
    /// report, when idle again after an update).
    fn pull(&mut self) {
        self.pull_at = Some(self.now + self.cfg.pull_interval);
        self.last_pull = Some(self.now);
        self.push(Out::FirmwareGet { who: Who::App });
        for i in self.known_exts() {
            self.push(Out::FirmwareGet { who: Who::Ext(i) });
        }
    }

    /// A version report of `who` (QoS 1).
    fn inform(&mut self, who: Who) {
        let pid = self.new_pid();
        self.inform_pid[who.idx()] = Some(pid);
        self.inform_due[who.idx()] = false;
        self.push(Out::Inform { pid, who });
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<Action<'_>> {
        let o = self.out.pop_front()?;
        let t = self.cfg.topics();
        let mut id: String<10> = String::new();
        let built: Result<(Topic, usize, Option<u16>), AlinkError> = match &o {
            Out::Inform { pid, who } => {
                let module = name_of(&self.cfg, &self.module, *who);
                let version = match who {
                    Who::App => Some(self.version.as_str()),
                    Who::Ext(i) => self.ext_versions[*i as usize].as_deref(),
                };
                let Some(version) = version else { return self.poll_action() };
                self.next_id = self.next_id.wrapping_add(1).max(1);
                let _ = write!(id, "{}", self.next_id);
                t.inform().and_then(|tp| Ok((tp, alink::inform(&mut self.buf, &id, version, module)?, Some(*pid))))
            }
            Out::FirmwareGet { who } => {
                let module = name_of(&self.cfg, &self.module, *who);
                self.next_id = self.next_id.wrapping_add(1).max(1);
                let _ = write!(id, "{}", self.next_id);
                if let Some(h) = &mut self.hold {
                    h.fresh = h.fresh.or(Some(self.next_id));
                    h.sent = Some(self.now);
                }
                t.firmware_get().and_then(|tp| Ok((tp, alink::firmware_get(&mut self.buf, &id, module)?, None)))
            }
            Out::Progress { step, who } => {
                let module = name_of(&self.cfg, &self.module, *who);
                self.next_id = self.next_id.wrapping_add(1).max(1);
                let _ = write!(id, "{}", self.next_id);
                let desc: String<128> = match (&self.state, who) {
                    (State::Rehashing(d) | State::Downloading(d) | State::AwaitMark(d), Who::App) => {
                        fmt(format_args!("downloading {}", d.version))
                    }
                    (State::ModuleUpdating(j) | State::ModuleRestarting(j), Who::Ext(_)) => {
                        let doing = match j.phase {
                            None => "updating to",
                            Some(ModulePhase::Download) => "downloading",
                            Some(ModulePhase::Install) => "installing",
                        };
                        fmt(format_args!("{module}: {doing} {}", j.version))
                    }
                    (_, Who::App) => fmt(format_args!("downloading")),
                    (_, Who::Ext(_)) => fmt(format_args!("{module}: updating")),
                };
                t.progress().and_then(|tp| Ok((tp, alink::progress(&mut self.buf, &id, *step, &desc, module)?, None)))
            }
            Out::Report { pid } => {
                let Some(p) = self.pending.iter().find(|p| p.pid == *pid) else {
                    return self.poll_action(); // acknowledged meanwhile
                };
                let module = name_of(&self.cfg, &self.module, p.who);
                self.next_id = self.next_id.wrapping_add(1).max(1);
                let _ = write!(id, "{}", self.next_id);
                t.progress()
                    .and_then(|tp| Ok((tp, alink::progress(&mut self.buf, &id, p.step, &p.desc, module)?, Some(*pid))))
            }
            Out::BlockRequest { id: rid, stream_id, file_id, offset, len } => {
                let _ = write!(id, "{rid}");
                t.file_download().and_then(|tp| {
                    let n = alink::download_request(&mut self.buf, &id, "ota", *stream_id, *file_id, *offset, *len)?;
                    Ok((tp, n, None))
                })
            }
            Out::Plain(Plain::ModuleUpdate) => {
                if !matches!(self.state, State::ModuleUpdating(_)) {
                    return self.poll_action(); // over meanwhile
                }
                let State::ModuleUpdating(j) = &self.state else { return None };
                let module = name_of(&self.cfg, &self.module, Who::Ext(j.ext));
                return Some(Action::ModuleUpdate { module, url: &j.url });
            }
            Out::Plain(p) => {
                return Some(match p.clone() {
                    Plain::RunSelfTest => Action::RunSelfTest,
                    Plain::Confirm => Action::Confirm,
                    Plain::BeginDownload(at) => Action::BeginDownload { at },
                    Plain::BeginPatch => Action::BeginPatch,
                    Plain::Write(offset, range) => Action::Write { offset, range },
                    Plain::Patch(offset, range) => Action::Patch { offset, range },
                    Plain::Rehash(len) => Action::Rehash { len },
                    Plain::SaveResume(r) => Action::SaveResume(r),
                    Plain::ClearResume => Action::ClearResume,
                    Plain::HttpGet(from) => Action::HttpGet { from },
                    Plain::HttpClose => Action::HttpClose,
                    Plain::VerifyAndMark { patched } => Action::VerifyAndMark { patched, floor: self.floor },
                    Plain::Reset => Action::Reset,
                    Plain::Revert => Action::Revert,
                    Plain::ModuleUpdate => unreachable!("handled above"),
                })
            }
        };
        // Topics and payloads are sized for the longest legal values: failing here is a bug.
        let (topic, n, qos1) = built.expect("OTA message does not fit its buffer");
        self.topic = topic;
        Some(Action::Publish { topic: &self.topic, payload: &self.buf[..n], qos1 })
    }

    /// When [`Self::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::AwaitSession { by } => Some(*by),
            State::AwaitReset { by } => *by,
            State::AwaitTask => {
                let hold = self.hold.and_then(|h| h.sent).map(|t| t + self.cfg.request_timeout);
                self.pull_at.filter(|_| self.connected).into_iter().chain(hold).min()
            }
            State::Downloading(Download { via: Via::Mqtt(s), .. }) => {
                let deadlines = s.in_flight.iter().chain(s.peek.iter()).map(|r| r.deadline);
                deadlines.chain(s.retry_at).min()
            }
            State::Downloading(Download { via: Via::Https(h), .. }) => h.refresh_by.into_iter().chain(h.retry_at).min(),
            State::ModuleUpdating(j) | State::ModuleRestarting(j) => Some(j.deadline),
            _ => None,
        }
    }

    /// Runs what is due at `now`: block requests again, the pull, the reset, the confirm deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.hold.is_some_and(|h| h.sent.is_some_and(|t| t + self.cfg.request_timeout <= now)) {
            self.hold = None; // the reply to our pull never came: take offers again
        }
        enum Then {
            Nothing,
            Get,
            Reset,
            Pull,
            Expired,
            Lost,
            Fetch,
            ModuleSilent,
            ModuleGone,
        }
        let then = match &mut self.state {
            // A new image that never reached the broker in time counts as broken: the bootloader
            // puts the old one back (reported after that boot).
            State::AwaitSession { by } if *by <= now => Then::Reset,
            State::AwaitReset { by: Some(by) } if *by <= now => Then::Reset,
            State::AwaitTask if self.connected && self.pull_at.is_some_and(|t| t <= now) => Then::Pull,
            State::AwaitTask => Then::Nothing,
            State::Downloading(Download { via: Via::Https(h), .. }) if h.refresh_by.is_some_and(|t| t <= now) => {
                Then::Expired
            }
            State::Downloading(Download { via: Via::Https(h), .. }) if h.retry_at.is_some_and(|t| t <= now) => {
                h.retry_at = None;
                // The session down meanwhile: the link is; the GET waits for it.
                h.waiting = !self.connected;
                if h.waiting {
                    Then::Nothing
                } else {
                    Then::Get
                }
            }
            State::ModuleUpdating(j) if j.deadline <= now => Then::ModuleSilent,
            State::ModuleRestarting(j) if j.deadline <= now => Then::ModuleGone,
            State::Downloading(Download { via: Via::Mqtt(s), .. }) => {
                if s.peek.is_some_and(|p| p.deadline <= now) {
                    s.peek = None; // only an early check: the final verify still runs
                }
                if s.in_flight.iter().any(|r| r.deadline <= now) {
                    Then::Lost
                } else if s.retry_at.is_some_and(|t| t <= now) {
                    Then::Fetch
                } else {
                    Then::Nothing
                }
            }
            _ => Then::Nothing,
        };
        match then {
            Then::Nothing => {}
            Then::Get => self.get_again(),
            Then::Reset => self.reset_now(),
            Then::Pull => self.pull(),
            Then::Expired => self.fail(Failure::UrlExpired),
            Then::Lost => self.lost(now, Loss::Timeout),
            Then::Fetch => self.fetch(now),
            Then::ModuleSilent | Then::ModuleGone => {
                let secs = (self.cfg.module_timeout.as_millis() / 1000).min(u32::MAX as u64) as u32;
                if let Some(j) = self.take_job() {
                    let module = self.cfg.external[j.ext as usize].name.clone();
                    let f = match then {
                        Then::ModuleSilent => Failure::ModuleTimeout { module, secs },
                        _ => Failure::ModuleNoVersion { module, secs },
                    };
                    self.fail_module(j.ext, f);
                }
            }
        }
    }

    /// Takes one event.
    pub fn handle(&mut self, now: Instant, ev: Event<'_>) {
        self.now = self.now.max(now);
        if matches!(ev, Event::Message { .. } | Event::HttpBody(_)) {
            self.unwritten_payload();
        }
        match ev {
            Event::Booted(r) => self.booted(r),
            Event::Connected => self.connected(now),
            Event::ConnectRefused(code) => {
                // A new image the broker refuses for its credentials, where the old one logged in
                // (the credentials did not change), is broken: not confirmed, reverted.
                if matches!(self.state, State::AwaitSession { .. }) && alink::credentials_refused(code) {
                    self.revert_now();
                }
            }
            Event::Disconnected => {
                self.connected = false;
                if let State::Downloading(Download { via: Via::Mqtt(s), written, .. }) = &mut self.state {
                    // Requests and replies in flight are lost with the session.
                    s.in_flight.clear();
                    s.peek = None;
                    s.next = *written;
                }
            }
            Event::Acked(pid) => {
                for p in self.inform_pid.iter_mut().filter(|p| **p == Some(pid)) {
                    *p = None;
                }
                self.pending.retain(|p| p.pid != pid);
                if matches!(self.state, State::AwaitReset { by: Some(_) }) && self.pending.is_empty() {
                    self.reset_now();
                }
            }
            Event::SelfTest(verdict) => {
                if !matches!(self.state, State::AwaitSelfTest) {
                    return;
                }
                if verdict == Verdict::Fail {
                    // Not confirmed, and no use starting it again: the bootloader puts the old
                    // image back at once, reported then.
                    self.revert_now();
                } else if self.connected {
                    self.state = State::AwaitConfirm;
                    self.plain(Plain::Confirm);
                } else {
                    self.state = State::AwaitSession { by: now + self.cfg.confirm_deadline };
                }
            }
            Event::Confirmed(outcome) => {
                if !matches!(self.state, State::AwaitConfirm) {
                    return;
                }
                if outcome == Outcome::Done {
                    // In force from now on; the bootloader stores it at the next boot.
                    self.floor = self.floor.confirmed(self.raises);
                    self.state = State::AwaitTask;
                    self.announce();
                } else {
                    self.reset_now();
                }
            }
            Event::Message { topic: Downlink::DownloadReply, payload } => self.block_reply(now, payload),
            Event::Message { topic, payload } => self.task_message(now, topic, payload),
            Event::Oversized { topic, len, max } => {
                // A task we cannot read (its module unknown): refused for our module, when idle
                // (during a download it may be a re-push of the task in progress). Neither can its
                // id be read: after a failure report a push is only a hint to pull, and a
                // get_reply while the pull sent since is out is taken as that pull's answer.
                let fresh = topic == Downlink::FirmwareGetReply && self.hold.is_some_and(|h| h.sent.is_some());
                if topic == Downlink::DownloadReply || !matches!(self.state, State::AwaitTask) {
                } else if self.hold.is_some() && !fresh {
                    self.ask_pull();
                } else {
                    self.hold = None;
                    self.refuse(Failure::MessageTooLarge { len, max });
                }
            }
            Event::Rehashed(outcome) => self.rehashed(now, outcome == Outcome::Done),
            Event::FlashFailed { at } => {
                if self.written().is_some() {
                    self.fail(Failure::FlashWrite { at });
                }
            }
            Event::HttpResponse { status, length } => self.http_response(now, status, length),
            Event::HttpBody(data) => self.http_body(now, data),
            Event::HttpEnd => self.http_end(now, HttpError::Closed),
            Event::HttpFailed(HttpError::Chunked) => {
                // No retry brings a Content-Length.
                if matches!(self.state, State::Downloading(Download { via: Via::Https(_), .. })) {
                    self.fail(Failure::HttpChunked);
                }
            }
            Event::HttpFailed(e) => self.http_end(now, e),
            Event::Marked(r) => self.marked(now, r),
            Event::PatchFailed(e) => {
                if matches!(self.state, State::Downloading(Download { patch: Some(_), .. })) {
                    self.plain(Plain::ClearResume);
                    self.fail(Failure::of_delta(e));
                }
            }
            Event::ModuleVersion { module, version } => self.module_version_read(module, version),
            Event::ModuleProgress { phase, percent } => self.module_progress(now, phase, percent),
            Event::ModuleDone(r) => self.module_done(now, r),
        }
    }

    fn reset_now(&mut self) {
        self.state = State::AwaitReset { by: None };
        self.plain(Plain::Reset);
    }

    fn revert_now(&mut self) {
        self.state = State::AwaitReset { by: None };
        self.plain(Plain::Revert);
    }

    fn booted(&mut self, r: BootReport<'_>) {
        if !matches!(self.state, State::AwaitBoot) {
            return;
        }
        self.version = String::try_from(r.version).unwrap_or_default();
        self.module = String::try_from(r.module).unwrap_or_default();
        (self.floor, self.raises) = (r.floor, r.raises);
        self.resume = r.resume;
        self.digest = r.digest;
        self.image_len = r.image_len;
        // The truth about the last boot goes first, as soon as the broker is reached.
        match r.outcome {
            BootOutcome::Reverted => self.report(Failure::Reverted.step(), Failure::Reverted.desc()),
            BootOutcome::Refused(e) => {
                let f = Failure::BootRefused(e);
                self.report(f.step(), f.desc())
            }
            BootOutcome::Nothing => {}
        }
        if r.awaiting_confirm {
            self.state = State::AwaitSelfTest;
            self.plain(Plain::RunSelfTest);
        } else {
            self.state = State::AwaitTask;
            self.announce();
        }
    }

    fn connected(&mut self, now: Instant) {
        self.connected = true;
        if let Some(h) = &mut self.hold {
            *h = Hold { fresh: None, sent: None }; // the pull of this connect is the fresh one
        }
        // Reports not yet acknowledged first (the broker of the last session may have lost them).
        for i in 0..self.pending.len() {
            let pid = self.pending[i].pid;
            self.push(Out::Report { pid });
        }
        match self.state {
            State::AwaitSession { .. } => {
                // The new image reached the broker: that and its self-test make it good.
                self.state = State::AwaitConfirm;
                self.plain(Plain::Confirm);
            }
            State::AwaitTask => self.announce(),
            _ => {
                for k in 0..MODULES {
                    if self.inform_pid[k].is_some() || self.inform_due[k] {
                        self.inform(Who::of_idx(k));
                    }
                }
                if let State::Downloading(Download { via: Via::Mqtt(s), .. }) = &mut self.state {
                    s.window = 1;
                    self.fetch(now);
                }
                if let State::Downloading(Download { via: Via::Https(h), .. }) = &mut self.state {
                    if core::mem::take(&mut h.waiting) {
                        self.get_again();
                    }
                }
            }
        }
    }

    /// Once connected and settled: the versions (the app's, then every external module's that
    /// is known), then a pull for each (the platform also re-pushes pending tasks on a
    /// reconnect). The pulls are repeated every `pull_interval`.
    fn announce(&mut self) {
        if !self.connected || !matches!(self.state, State::AwaitTask) {
            return;
        }
        self.inform(Who::App);
        for i in self.known_exts() {
            self.inform(Who::Ext(i));
        }
        self.pull();
    }

    /// Tells the platform we will not carry out an offer.
    fn refuse(&mut self, f: Failure) {
        self.report(f.step(), f.desc());
    }

    /// Tells the platform we will not carry out an offer for `who`.
    fn refuse_as(&mut self, who: Who, f: Failure) {
        self.report_as(who, f.step(), f.desc());
    }

    /// An offer for the external module `i` (whose version is known). Taken only when idle: one
    /// update at a time. When busy it is ignored, not refused (the platform re-pushes it at a
    /// reconnect, and the machine pulls for every module when it is idle again).
    fn module_offer(&mut self, now: Instant, i: u8, offer: &alink::Offer<'_>) {
        if !matches!(self.state, State::AwaitTask) {
            return;
        }
        let who = Who::Ext(i);
        let ext = &self.cfg.external[i as usize];
        let (module, max) = (ext.name.clone(), ext.max_url);
        if offer.version.map(|v| v.0).is_some_and(|v| Some(v) == self.ext_versions[i as usize].as_deref()) {
            // Already running it: the platform did not get the version report. Repeat it.
            if self.inform_pid[who.idx()].is_none() {
                self.inform(who);
            }
            return;
        }
        let task = match Task::from_module_offer(offer) {
            Ok(t) => t,
            Err(f) => return self.refuse_as(who, f),
        };
        if let Source::Mqtt { .. } = task.source {
            return self.refuse_as(who, Failure::ModuleHttpsOnly { module });
        }
        let len = match url_len(&task) {
            Ok(n) => n,
            Err(()) => return self.refuse_as(who, Failure::BadField("url")),
        };
        if len > max as usize {
            return self.refuse_as(who, Failure::ModuleUrlTooLong { module, len: len as u32, max });
        }
        let Ok(url) = unescape_url(&task) else { return self.refuse_as(who, Failure::UrlTooLong) };
        self.hold = None;
        self.state = State::ModuleUpdating(ModuleJob {
            ext: i,
            version: String::try_from(task.version).unwrap_or_default(),
            url,
            phase: None,
            last_step: 1,
            last_report: now,
            deadline: now + self.cfg.module_timeout,
        });
        self.progress_as(who, 1);
        self.plain(Plain::ModuleUpdate);
    }

    /// Ends the external module's update in progress, if there is one: AwaitTask.
    fn take_job(&mut self) -> Option<ModuleJob> {
        match core::mem::replace(&mut self.state, State::AwaitTask) {
            State::ModuleUpdating(j) | State::ModuleRestarting(j) => Some(j),
            other => {
                self.state = other;
                None
            }
        }
    }

    /// Reports the failure of the external module `i`'s update and waits for a task again.
    fn fail_module(&mut self, i: u8, f: Failure) {
        self.state = State::AwaitTask;
        self.report_as(Who::Ext(i), f.step(), f.desc());
    }

    fn module_version_read(&mut self, module: &str, version: &str) {
        let Some(i) = self.ext(module) else { return };
        if !alink::valid_version(version) {
            return;
        }
        let Ok(v) = String::<64>::try_from(version) else { return };
        let who = Who::Ext(i);
        let changed = self.ext_versions[i as usize].as_ref() != Some(&v);
        self.ext_versions[i as usize] = Some(v);
        let (job, restarting) = match &self.state {
            State::ModuleUpdating(j) => (Some(j), false),
            State::ModuleRestarting(j) => (Some(j), true),
            _ => (None, false),
        };
        match job.filter(|j| j.ext == i).map(|j| j.version == version) {
            Some(true) => {
                // Back with the task's version: the version report is the success the platform
                // needs (now, or at the next connect), then pulls for every module.
                self.take_job();
                if self.connected {
                    self.inform(who);
                    self.pull();
                }
            }
            Some(false) if restarting => {
                let Some(j) = self.take_job() else { return };
                let module = self.cfg.external[i as usize].name.clone();
                self.fail_module(i, Failure::module_wrong_version(module, version, &j.version));
                self.inform_now_or_later(who);
            }
            _ if changed => {
                self.inform_now_or_later(who);
                if self.connected && matches!(self.state, State::AwaitTask) {
                    self.last_pull = Some(self.now);
                    self.push(Out::FirmwareGet { who });
                }
            }
            _ => {}
        }
    }

    /// A version report of `who` at once if connected (and not on the way to a reset), else at
    /// the next connect.
    fn inform_now_or_later(&mut self, who: Who) {
        let settled = !matches!(self.state, State::AwaitBoot | State::AwaitReset { .. });
        if self.connected && settled {
            self.inform(who);
        } else {
            self.inform_due[who.idx()] = true;
        }
    }

    fn module_progress(&mut self, now: Instant, phase: ModulePhase, percent: u8) {
        let (every, interval, timeout) = (self.cfg.progress_every, self.cfg.progress_interval, self.cfg.module_timeout);
        let State::ModuleUpdating(j) = &mut self.state else { return };
        j.deadline = now + timeout;
        // One rising scale: the download is 1..=50, the install 50..=99.
        let p = percent.min(100);
        let step = match phase {
            ModulePhase::Download => (p / 2).max(1),
            ModulePhase::Install => (50 + p / 2).min(99),
        } as i8;
        let moved = step as i16 >= j.last_step as i16 + every as i16 || (j.phase != Some(phase) && step > j.last_step);
        j.phase = Some(phase);
        if moved && now.since(j.last_report) >= interval {
            j.last_step = step;
            j.last_report = now;
            let ext = j.ext;
            self.progress_as(Who::Ext(ext), step);
        }
    }

    fn module_done(&mut self, now: Instant, r: Result<(), ModuleError>) {
        let State::ModuleUpdating(j) = &mut self.state else { return };
        let i = j.ext;
        let module = self.cfg.external[i as usize].name.clone();
        match r {
            Ok(()) => {
                j.deadline = now + self.cfg.module_timeout;
                let desc = fmt(format_args!("{module}: installed {}, restarting", j.version));
                if let Some(j) = self.take_job() {
                    self.state = State::ModuleRestarting(j);
                }
                self.report_as(Who::Ext(i), 100, desc);
            }
            Err(e) => {
                let f = match e {
                    ModuleError::Refused => Failure::ModuleRefused { module },
                    ModuleError::Download(code) => Failure::ModuleDownload { module, code },
                    ModuleError::Install(code) => Failure::ModuleInstall { module, code },
                    ModuleError::Lost => Failure::ModuleLost { module },
                };
                self.fail_module(i, f);
            }
        }
    }

    fn task_message(&mut self, now: Instant, topic: Downlink, payload: &[u8]) {
        if let Some(h) = &mut self.hold {
            if !matches!(self.state, State::AwaitTask) {
            } else if topic == Downlink::Upgrade {
                return self.ask_pull();
            } else {
                // Only replies to pulls sent after the failure report count.
                let id = alink::json::top_level(payload, "id").and_then(|i| i.text().parse::<u32>().ok());
                if h.fresh.is_none() || id < h.fresh {
                    return;
                }
                h.sent = None;
            }
        }
        // No task, or one we cannot read at all (its module unknown, so it may not be ours).
        let Ok(Some(offer)) = alink::parse_offer(payload) else { return };
        let module = module_of(&offer);
        if module != self.module.as_str() {
            // An external module's, if we know its version (else the board has not reached it).
            if let Some(i) = self.ext(module).filter(|&i| self.ext_versions[i as usize].is_some()) {
                self.module_offer(now, i, &offer);
            }
            return;
        }
        let task = Task::from_offer_with(&offer, self.cfg.delta);
        match &mut self.state {
            State::AwaitTask => {}
            State::Downloading(d) | State::Rehashing(d) => {
                let Ok(t) = &task else { return }; // busy: never refuse what may be a re-push of ours
                if t.key() == d.key {
                    // The same task again. An HTTPS download waiting for a fresh URL takes it.
                    let mut get = None;
                    if let (Via::Https(h), Source::Https { .. }) = (&mut d.via, t.source) {
                        if h.refreshed && h.refresh_by.is_some() {
                            if let Ok(fresh) = unescape_url(t) {
                                h.url = fresh;
                                h.refresh_by = None;
                                h.from = d.written;
                                get = Some(d.written);
                            }
                        }
                    }
                    if let Some(w) = get {
                        self.plain(Plain::HttpGet(w));
                    }
                    return;
                }
                // Another task for our module: the platform has one task per device, so the one
                // we were downloading is gone (cancelled or replaced). Take the new one.
                let https = matches!(d.via, Via::Https(_));
                self.end_download();
                if https {
                    self.plain(Plain::HttpClose);
                }
                self.state = State::AwaitTask;
            }
            // Self-test, confirm, mark, reset: busy.
            _ => return,
        }
        if offer.version.map(|v| v.0) == Some(self.version.as_str()) {
            // Already running it: the platform did not get our version report. Repeat it.
            if self.inform_pid[Who::App.idx()].is_none() {
                self.inform(Who::App);
            }
            return;
        }
        let task = match task {
            Ok(t) => t,
            Err(f) => return self.refuse(f),
        };
        if task.size > self.cfg.slot_size {
            return self.refuse(Failure::TooLarge { size: task.size, slot: self.cfg.slot_size });
        }
        let via = match task.source {
            Source::Mqtt { stream_id, file_id } => Via::Mqtt(Stream {
                stream_id,
                file_id,
                next: 0,
                in_flight: Vec::new(),
                peek: None,
                // A patch's last bytes are no image's TLVs: no early look.
                peeked: task.diff,
                window: 1,
                ceiling: self.cfg.window as u8,
                cap: self.cfg.block_size,
                head_tries: 0,
                retry_at: None,
                refusal: None,
            }),
            Source::Https { .. } if !self.cfg.https => return self.refuse(Failure::HttpsUnsupported),
            Source::Https { .. } => match unescape_url(&task) {
                Ok(url) => Via::Https(Https {
                    url,
                    tries: 0,
                    refreshed: false,
                    from: 0,
                    refresh_by: None,
                    tail: if task.diff { Tail::Done } else { Tail::Unknown },
                    last: None,
                    retry_at: None,
                    waiting: false,
                }),
                Err(()) => return self.refuse(Failure::UrlTooLong),
            },
        };
        let key = task.key();
        let mut d = Download {
            version: String::try_from(task.version).unwrap_or_default(),
            size: task.size,
            digest: task.digest,
            method: task.method,
            key,
            hasher: Hasher::new(task.method),
            written: 0,
            saved: 0,
            via,
            last_pct: 1,
            last_report: now,
            patch: task.diff.then(|| PatchStart { head: Vec::new(), checked: false }),
        };
        self.hold = None;
        self.progress(1);
        if d.patch.is_some() {
            // A patch starts over after a reset: what the patcher had in RAM is gone, and the
            // patch is a fraction of the image.
            self.resume = None;
            self.plain(Plain::ClearResume);
            self.plain(Plain::BeginPatch);
            self.state = State::Downloading(d);
            self.fetch(now);
            return;
        }
        match self.resume.take().filter(|r| r.key == key && r.written > 0 && r.written < d.size) {
            Some(r) => {
                d.written = r.written;
                d.saved = r.written;
                self.state = State::Rehashing(d);
                self.plain(Plain::Rehash(r.written));
            }
            None => {
                // The first request goes out before the flash work: its round trip runs while
                // the resume page erases (its reply is taken only after these actions).
                self.plain(Plain::BeginDownload(0));
                self.state = State::Downloading(d);
                self.fetch(now);
                self.plain(Plain::ClearResume);
            }
        }
    }

    fn rehashed(&mut self, now: Instant, ok: bool) {
        let state = core::mem::replace(&mut self.state, State::AwaitTask);
        let State::Rehashing(mut d) = state else {
            self.state = state;
            return;
        };
        if !ok {
            d.written = 0;
            d.saved = 0;
            d.hasher = Hasher::new(d.method);
            self.plain(Plain::ClearResume);
        }
        if let Via::Mqtt(s) = &mut d.via {
            s.next = d.written;
        }
        let at = d.written;
        self.plain(Plain::BeginDownload(at));
        self.state = State::Downloading(d);
        self.fetch(now);
    }

    /// Asks for what is missing: block requests up to the window, or the HTTP body.
    fn fetch(&mut self, now: Instant) {
        let timeout = self.cfg.request_timeout;
        let connected = self.connected;
        let OtaMachine { state, out, next_id, .. } = self;
        let State::Downloading(d) = state else { return };
        match &mut d.via {
            Via::Mqtt(s) => {
                if !connected || s.retry_at.is_some_and(|t| t > now) {
                    return;
                }
                s.retry_at = None;
                while s.in_flight.len() < s.window as usize && s.next < d.size && !s.in_flight.is_full() {
                    let len = s.cap.min(d.size - s.next);
                    *next_id = next_id.wrapping_add(1).max(1);
                    let r = Request { id: *next_id, offset: s.next, len, deadline: now + timeout };
                    let _ = s.in_flight.push(r);
                    let (stream_id, file_id) = (s.stream_id, s.file_id);
                    let o = Out::BlockRequest { id: r.id, stream_id, file_id, offset: r.offset, len };
                    out.push_back(o).expect("OTA output queue overflow");
                    s.next += len;
                }
            }
            Via::Https(h) => {
                h.from = d.written;
                out.push_back(Out::Plain(Plain::HttpGet(d.written))).expect("OTA output queue overflow");
            }
        }
    }

    /// The block at `written` has to be asked for again: go back to it with a window of 1 and
    /// half the ceiling, after a back-off for error replies; give up after `retries`.
    fn lost(&mut self, now: Instant, why: Loss) {
        let retries = self.cfg.retries;
        let State::Downloading(Download { via: Via::Mqtt(s), written, .. }) = &mut self.state else { return };
        s.head_tries = s.head_tries.saturating_add(1);
        if s.head_tries > retries {
            let (offset, tries) = (*written, s.head_tries);
            let f = match (why, s.refusal.take()) {
                (Loss::Refused, Some((code, msg))) => Failure::BlockRefused { offset, code, msg },
                (Loss::Corrupt, _) => Failure::BlockCorrupt { offset, tries },
                _ => Failure::BlockTimeout { offset, tries },
            };
            return self.fail(f);
        }
        s.ceiling = (s.window / 2).max(1).min(s.ceiling);
        s.window = 1;
        s.in_flight.clear();
        s.next = *written;
        s.retry_at = match why {
            Loss::Timeout => None,
            Loss::Refused | Loss::Corrupt => Some(now + retry_delay(s.head_tries)),
        };
        self.fetch(now);
    }

    fn block_reply(&mut self, now: Instant, payload: &[u8]) {
        // Not even a header: whatever it was, the request's timeout takes care of it.
        let Ok(reply) = alink::parse_download_reply(payload) else { return };
        let (sec_cnt, timeout) = (self.floor.sec_cnt, self.cfg.request_timeout);
        let State::Downloading(d) = &mut self.state else { return };
        let Via::Mqtt(s) = &mut d.via else { return };
        let (id, offset) = match reply {
            BlockReply::Data(b) => (b.id, Some(b.offset)),
            BlockReply::Refused { id, .. } => (id, None),
            BlockReply::Corrupt { id, offset, .. } => (id, offset),
        };
        // The read-ahead is only an early look: any trouble with it just ends it.
        if let Some(p) = s.peek.filter(|p| p.answered_by(id, offset)) {
            s.peek = None;
            let written = d.written;
            let head_lost =
                s.in_flight.iter().any(|r| r.offset <= written && written < r.offset + r.len && r.id < p.id);
            if let BlockReply::Data(b) = reply {
                if let Some(image) = protected_sec_cnt(b.data).filter(|&i| i < sec_cnt) {
                    return self.fail(Failure::Downgrade { image, device: sec_cnt });
                }
            }
            if head_lost {
                self.lost(now, Loss::Timeout);
            }
            return;
        }
        let matched = s.in_flight.iter().position(|r| r.answered_by(id, offset));
        let b = match reply {
            BlockReply::Data(b) => b,
            BlockReply::Refused { code, msg, .. } => {
                // Ours (or unnamed): ask again at once, with a back-off after that.
                if matched.is_some() || id.is_none() {
                    let mut m: String<{ super::MAX_PLATFORM_MSG }> = String::new();
                    for f in EscapedStr(msg).fragments() {
                        let Ok(f) = f else { break };
                        let ok = match f {
                            serde_json_core::str::EscapedStringFragment::NotEscaped(t) => m.push_str(t).is_ok(),
                            serde_json_core::str::EscapedStringFragment::Escaped(c) => m.push(c).is_ok(),
                        };
                        if !ok {
                            break;
                        }
                    }
                    s.refusal = Some((code, m));
                    self.lost(now, Loss::Refused);
                }
                return;
            }
            BlockReply::Corrupt { .. } => {
                if matched.is_some() || (id.is_none() && offset.is_none()) {
                    self.lost(now, Loss::Corrupt);
                }
                return;
            }
        };
        let end = b.offset as u64 + b.data.len() as u64;
        let written = d.written;
        if !(b.offset <= written && (written as u64) < end) {
            // Not the next bytes. A later request answered while the one for `written` is
            // still out means that one is lost (replies come in order): ask again now rather
            // than after its timeout. Anything else is stale (asked before a go-back).
            if let Some(i) = matched {
                let head = s.in_flight.iter().find(|r| r.offset <= written && written < r.offset + r.len);
                if head.is_none_or(|h| h.id < s.in_flight[i].id) {
                    self.lost(now, Loss::Timeout);
                }
            }
            return;
        }
        let skip = (written - b.offset) as usize;
        let take = (b.data.len() - skip).min((d.size - written) as usize);
        let new_written = written + take as u32;
        let mut short = false;
        if let Some(i) = matched {
            let asked = s.in_flight[i].len;
            // LinkSDK takes a block of another size than asked; so do we, and ask for that much
            // from now on (never less than Aliyun's 256).
            if (b.data.len() as u32) < asked && end < d.size as u64 {
                s.cap = (b.data.len() as u32).max(MIN_BLOCK);
                short = true;
            }
            s.in_flight.remove(i);
        }
        s.in_flight.retain(|r| r.offset + r.len > new_written);
        let covered = s.in_flight.iter().any(|r| r.offset <= new_written && new_written < r.offset + r.len);
        if short || (new_written < d.size && !covered && s.next > new_written) {
            // A hole after a short reply: the requests behind it were cut for the old size.
            s.in_flight.clear();
            s.next = new_written;
        }
        s.head_tries = 0;
        s.refusal = None;
        s.window = (s.window + 1).min(s.ceiling);
        // First block: the header says where the protected TLVs are; ask for them now.
        let peek = if !s.peeked && b.offset == 0 {
            s.peeked = true;
            Header::new_checked(b.data).and_then(|h| HeaderRepr::parse(&h)).ok().and_then(|h| {
                let (at, end) = (h.body_end()?, h.tlv_offset()?);
                // At least 256 bytes (Aliyun's block rule), clamped at the end of the file.
                let len = end.saturating_sub(at).max(MIN_BLOCK).min(d.size.saturating_sub(at));
                (end > at && end <= d.size && at > new_written).then_some((at, len))
            })
        } else {
            None
        };
        let data = &b.data[skip..skip + take];
        let start = data.as_ptr() as usize - payload.as_ptr() as usize;
        self.accept(now, written, data, start..start + take);
        // The read-ahead goes after the window's requests: its reply coming before theirs then
        // tells that they were lost (a platform that serves one request at a time).
        if let (Some((at, len)), State::Downloading(Download { via: Via::Mqtt(s), .. })) = (peek, &mut self.state) {
            self.next_id = self.next_id.wrapping_add(1).max(1);
            let r = Request { id: self.next_id, offset: at, len, deadline: now + timeout };
            s.peek = Some(r);
            let (stream_id, file_id) = (s.stream_id, s.file_id);
            self.push(Out::BlockRequest { id: r.id, stream_id, file_id, offset: at, len });
        }
    }

    /// Takes bytes at the end of what was written: hash, write, progress, persist, continue.
    fn accept(&mut self, now: Instant, offset: u32, data: &[u8], range: core::ops::Range<usize>) {
        let (page, every, interval) = (self.cfg.page_size, self.cfg.progress_every, self.cfg.progress_interval);
        if let Err(f) = self.check_patch(data) {
            self.plain(Plain::ClearResume);
            return self.fail(f);
        }
        let State::Downloading(d) = &mut self.state else { return };
        d.hasher.update(data);
        d.written += data.len() as u32;
        let (written, size, key) = (d.written, d.size, d.key);
        let boundary = written / page * page;
        // A patch is never resumed (see `task_message`): no resume points.
        let save = boundary > d.saved && written < size && d.patch.is_none();
        if save {
            d.saved = boundary;
        }
        let mqtt = matches!(d.via, Via::Mqtt(_));
        let patch = d.patch.is_some();
        let pct = ((written as u64 * 100 / size as u64) as u8).clamp(1, 99);
        let report = pct >= d.last_pct.saturating_add(every) && now.since(d.last_report) >= interval;
        if report {
            d.last_pct = pct;
            d.last_report = now;
        }
        self.plain(if patch { Plain::Patch(offset, range) } else { Plain::Write(offset, range) });
        if save {
            self.plain(Plain::SaveResume(Resume { key, written: boundary }));
        }
        if report {
            self.progress(pct as i8);
        }
        if written >= size {
            self.finish();
        } else if mqtt {
            self.fetch(now); // HTTPS: the body keeps coming on the GET in progress
        }
    }

    /// The first bytes of a patch: once its header is read, the base it names must be the
    /// running image, and the rest something this device applies, before a byte is written.
    fn check_patch(&mut self, data: &[u8]) -> Result<(), Failure> {
        let (slot, digest, image_len) = (self.cfg.slot_size, self.digest, self.image_len);
        let State::Downloading(d) = &mut self.state else { return Ok(()) };
        let Some(p) = d.patch.as_mut().filter(|p| !p.checked) else { return Ok(()) };
        let room = p.head.capacity() - p.head.len();
        let _ = p.head.extend_from_slice(&data[..data.len().min(room)]);
        let ended = d.written as usize + data.len() >= d.size as usize;
        let h = match delta::Header::parse(&p.head, slot) {
            Ok(Some(h)) => h,
            Ok(None) if ended => {
                let at = p.head.len() as u32;
                return Err(Failure::of_delta(delta::DeltaError::Corrupt { what: delta::Corruption::Truncated, at }));
            }
            Ok(None) => return Ok(()),
            Err(e) => return Err(Failure::of_delta(e)),
        };
        p.checked = true;
        p.head.clear();
        match h.base {
            Some(b) if b.sha256 != digest || b.size != image_len => {
                Err(Failure::delta_base(&b.version, &b.sha256, &self.version, &digest))
            }
            // Ours naming this image, or a plain detools patch (no base named: the rebuilt
            // image's signature check is what stands).
            _ => Ok(()),
        }
    }

    fn finish(&mut self) {
        let state = core::mem::replace(&mut self.state, State::AwaitTask);
        let State::Downloading(d) = state else {
            self.state = state;
            return;
        };
        if matches!(d.via, Via::Https(_)) {
            self.plain(Plain::HttpClose);
        }
        if !d.hasher.matches(&d.digest) {
            self.end_download();
            self.plain(Plain::ClearResume);
            let f = Failure::DigestMismatch(d.method);
            self.report(f.step(), f.desc());
            return;
        }
        let patched = d.patch.is_some();
        self.state = State::AwaitMark(d);
        self.plain(Plain::VerifyAndMark { patched });
    }

    fn marked(&mut self, now: Instant, r: Result<(), MarkError>) {
        let State::AwaitMark(d) = &self.state else { return };
        let v = d.version.clone();
        match r {
            Ok(()) => {
                self.plain(Plain::ClearResume);
                self.state = State::AwaitReset { by: Some(now + ACK_WAIT) };
                self.report(100, fmt(format_args!("{v} verified; rebooting to install")));
                if !self.connected {
                    self.reset_now();
                }
            }
            Err(MarkError::Flash) => self.fail(Failure::MarkFailed),
            Err(MarkError::Image(e)) => {
                self.plain(Plain::ClearResume);
                self.fail(Failure::ImageRefused(e));
            }
            Err(MarkError::Patch(e)) => {
                self.plain(Plain::ClearResume);
                self.fail(Failure::of_delta(e));
            }
        }
    }

    fn http_response(&mut self, now: Instant, status: u16, length: Option<u32>) {
        let wait = self.cfg.request_timeout;
        let State::Downloading(d) = &mut self.state else { return };
        let Via::Https(h) = &mut d.via else { return };
        match status {
            206 => {}
            200 if h.from == 0 => {}
            200 => {
                // The server ignored our Range: start over from byte 0 (and skip the early look).
                h.tail = Tail::Done;
                d.written = 0;
                d.saved = 0;
                h.from = 0;
                d.hasher = Hasher::new(d.method);
                let patch = d.patch.as_mut().map(|p| *p = PatchStart { head: Vec::new(), checked: false }).is_some();
                self.plain(Plain::ClearResume);
                self.plain(if patch { Plain::BeginPatch } else { Plain::BeginDownload(0) });
            }
            401 | 403 if !h.refreshed => {
                // The pre-signed URL expired: ask for the task again, with a fresh URL.
                h.refreshed = true;
                h.refresh_by = Some(now + wait);
                self.plain(Plain::HttpClose);
                self.push(Out::FirmwareGet { who: Who::App });
                return;
            }
            s => return self.fail(Failure::HttpStatus(s)),
        }
        let State::Downloading(d) = &self.state else { return };
        let Via::Https(h) = &d.via else { return };
        if let Some(len) = length {
            if h.from.checked_add(len) != Some(d.size) {
                let (from, size) = (h.from, d.size);
                self.fail(Failure::HttpLength { from, len, size });
            }
        }
    }

    fn http_body(&mut self, now: Instant, data: &[u8]) {
        let sec_cnt = self.floor.sec_cnt;
        let State::Downloading(d) = &mut self.state else { return };
        let size = d.size;
        let Via::Https(h) = &mut d.via else { return };
        if let Tail::Reading { at, buf } = &mut h.tail {
            // The body of the early look at the protected TLVs: kept, not written.
            let want = (size - *at) as usize;
            let take = data.len().min(want - buf.len());
            let _ = buf.extend_from_slice(&data[..take]);
            if buf.len() < want {
                return;
            }
            let image = protected_sec_cnt(buf);
            h.tail = Tail::Done;
            h.from = d.written;
            let w = d.written;
            if let Some(image) = image.filter(|&i| i < sec_cnt) {
                return self.fail(Failure::Downgrade { image, device: sec_cnt });
            }
            self.plain(Plain::HttpClose);
            self.plain(Plain::HttpGet(w));
            return;
        }
        if d.written as u64 + data.len() as u64 > d.size as u64 {
            let size = d.size;
            return self.fail(Failure::HttpTooMuch { size });
        }
        let offset = d.written;
        self.accept(now, offset, data, 0..data.len());
        self.look_at_tail(offset, data);
    }

    /// After the first bytes of an HTTPS image: if its header says where the protected TLVs
    /// are, read them now (Range GET) to refuse a downgrade before the body.
    fn look_at_tail(&mut self, offset: u32, data: &[u8]) {
        let State::Downloading(d) = &mut self.state else { return };
        let (size, written) = (d.size, d.written);
        let Via::Https(h) = &mut d.via else { return };
        if !matches!(h.tail, Tail::Unknown) {
            return;
        }
        h.tail = Tail::Done;
        if offset != 0 {
            return;
        }
        let Ok(hd) = Header::new_checked(data).and_then(|h| HeaderRepr::parse(&h)) else { return };
        let (Some(at), Some(end)) = (hd.body_end(), hd.tlv_offset()) else { return };
        if at <= written || end <= at || end > size || size - at > 512 {
            return;
        }
        h.tail = Tail::Reading { at, buf: Vec::new() };
        h.from = at;
        self.plain(Plain::HttpClose);
        self.plain(Plain::HttpGet(at));
    }

    /// The GET in progress ended: the body is complete, or it broke off (`why`). A break is
    /// tried again after a back-off (at once, 1 s, 2 s, ...), or once the MQTT session is up
    /// again when it is down (the link is: the same modem and network); `retries` breaks in a
    /// row without a byte of progress fail the download.
    fn http_end(&mut self, now: Instant, why: HttpError) {
        let retries = self.cfg.retries;
        let connected = self.connected;
        let State::Downloading(d) = &mut self.state else { return };
        let Via::Https(h) = &mut d.via else { return };
        if d.written < d.size {
            h.last = Some(why);
        }
        if matches!(h.tail, Tail::Reading { .. }) {
            // The early look broke off: go on with the body; the final verify still checks.
            h.tail = Tail::Done;
            h.from = d.written;
            let w = d.written;
            self.plain(Plain::HttpGet(w));
            return;
        }
        if h.refreshed && h.refresh_by.is_some() {
            return; // waiting for the fresh URL
        }
        if d.written >= d.size {
            return;
        }
        if d.written > h.from {
            h.tries = 0; // the last GET got somewhere: a new run of tries
        }
        h.from = d.written;
        if !connected {
            h.waiting = true;
            return;
        }
        if h.tries >= retries {
            let (at, last) = (d.written, h.last.unwrap_or(why));
            return self.fail(Failure::HttpBroke { at, retries, last });
        }
        h.tries += 1;
        let wait = retry_delay(h.tries);
        if wait.as_millis() == 0 {
            self.get_again();
        } else {
            h.retry_at = Some(now + wait);
        }
    }

    /// The GET of an HTTPS download again, from what was written.
    fn get_again(&mut self) {
        let State::Downloading(d) = &mut self.state else { return };
        let Via::Https(h) = &mut d.via else { return };
        h.from = d.written;
        let w = d.written;
        self.plain(Plain::HttpGet(w));
    }

    /// Reports a failure and goes back to waiting for a task (the old image keeps running).
    fn fail(&mut self, f: Failure) {
        self.end_download();
        if let State::Downloading(Download { via: Via::Https(_), .. }) = self.state {
            self.plain(Plain::HttpClose);
        }
        self.state = State::AwaitTask;
        self.report(f.step(), f.desc());
    }
}

#[cfg(test)]
mod tests;
