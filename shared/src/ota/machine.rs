//! [`OtaMachine`]: the whole OTA flow, deterministic, time passed in.

use super::{Action, BootOutcome, BootReport, Event, MarkError, Resume, TaskKey};
use crate::alink::{self, AlinkError, DigestMethod, Downlink, Source, Task, Topics, UrlPiece};
use crate::image::{Header, HeaderRepr, ImageError, TlvIter, TlvKind, TLV_PROT_INFO_MAGIC};
use crate::time::{Duration, Instant};
use core::fmt::Write as _;
use heapless::{Deque, String, Vec};
use md5::Digest as _;

/// Longest pre-signed download URL we keep (OSS URLs with an STS token run to ~1 KB).
pub const MAX_URL: usize = 1024;
const MAX_IN_FLIGHT: usize = 8;
const OUT_BUF: usize = 384;

/// Settings of one device.
#[derive(Clone, Copy, Debug)]
pub struct OtaConfig<'a> {
    /// Topics of this device.
    pub topics: Topics<'a>,
    /// The OTA module this firmware is ("default" for the default module).
    pub module: &'a str,
    /// Largest image the device can take (ACTIVE's length).
    pub slot_size: u32,
    /// DFU erase size: downloads resume from a multiple of it.
    pub page_size: u32,
    /// Bytes per MQTT stream block request (256..=131072; 4096 fits small MCUs).
    pub block_size: u32,
    /// Block requests in flight at once (1 = stop-and-wait like the C Link SDK).
    pub window: usize,
    /// How long a block request may go unanswered before it is sent again.
    pub request_timeout: Duration,
    /// How many times a block request or an HTTP GET is repeated before the download fails.
    pub retries: u8,
    /// Progress is reported when it moved by at least this many percent...
    pub progress_every: u8,
    /// ...and at least this long after the previous report.
    pub progress_interval: Duration,
}

impl<'a> OtaConfig<'a> {
    /// Defaults for a device: 4 KiB blocks, 4 in flight, 10 s timeout, 3 retries, progress
    /// every 5 % and at most once a second.
    pub fn new(topics: Topics<'a>, module: &'a str, slot_size: u32, page_size: u32) -> Self {
        OtaConfig {
            topics,
            module,
            slot_size,
            page_size,
            block_size: 4096,
            window: 4,
            request_timeout: Duration::from_secs(10),
            retries: 3,
            progress_every: 5,
            progress_interval: Duration::from_secs(1),
        }
    }
}

/// The states, named after what they wait for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum StateName {
    /// The first event, [`Event::Booted`].
    AwaitBoot,
    /// The new image's self-test.
    AwaitSelfTest,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Request {
    offset: u32,
    len: u32,
    deadline: Instant,
    tries: u8,
    /// The tail of the image, read early for its security counter; not written.
    peek: bool,
    /// Its reply came before its turn and was dropped: ask again as soon as it is its turn.
    early: bool,
}

#[derive(Clone)]
enum Via {
    Mqtt {
        stream_id: u64,
        file_id: u32,
        next: u32,
        in_flight: Vec<Request, MAX_IN_FLIGHT>,
        peeked: bool,
    },
    /// `refresh_by`: when a fresh URL was asked for, the time to give up waiting for it.
    Https {
        url: String<MAX_URL>,
        tries: u8,
        refreshed: bool,
        from: u32,
        refresh_by: Option<Instant>,
        tail: Tail,
    },
}

/// The early look at an HTTPS image's protected TLVs (its security counter), read with a Range
/// GET once the header says where they are, before the body.
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
}

#[derive(Clone)]
enum State {
    AwaitBoot,
    AwaitSelfTest,
    AwaitConfirm,
    AwaitTask,
    Rehashing(Download),
    Downloading(Download),
    AwaitMark(Download),
    AwaitReset,
}

/// A queued output; turned into an [`Action`] (JSON built then) by `poll_action`.
#[derive(Clone, Debug)]
enum Out {
    Inform,
    FirmwareGet,
    Progress { step: i8, desc: String<128> },
    BlockRequest { stream_id: u64, file_id: u32, offset: u32, len: u32 },
    Plain(Plain),
}

#[derive(Clone, Debug)]
enum Plain {
    RunSelfTest,
    Confirm,
    BeginDownload(u32),
    Write(u32, core::ops::Range<usize>),
    Rehash(u32),
    SaveProgress(Resume),
    ClearProgress,
    HttpGet(u32),
    HttpClose,
    VerifyAndMark,
    Reset,
}

/// The OTA client. See the module docs.
pub struct OtaMachine<'a> {
    cfg: OtaConfig<'a>,
    state: State,
    connected: bool,
    version: String<64>,
    running_module: String<64>,
    sec_cnt: u32,
    resume: Option<Resume>,
    outcome: Option<BootOutcome>,
    announced: bool,
    next_id: u32,
    out: Deque<Out, 16>,
    topic: alink::Topic,
    buf: [u8; OUT_BUF],
}

fn desc(args: core::fmt::Arguments<'_>) -> String<128> {
    let mut s = String::new();
    let _ = s.write_fmt(args); // cut at 128 bytes
    s
}

fn task_key(t: &Task<'_>, digest: &[u8; 32]) -> TaskKey {
    let mut k = [0u8; 16];
    k[..4].copy_from_slice(&t.size.to_le_bytes());
    k[4..].copy_from_slice(&digest[..12]);
    k
}

impl<'a> OtaMachine<'a> {
    /// A machine waiting for [`Event::Booted`].
    pub fn new(cfg: OtaConfig<'a>) -> Self {
        assert!(cfg.window >= 1 && cfg.window <= MAX_IN_FLIGHT, "window must be 1..=8");
        assert!(cfg.block_size >= 256 && cfg.block_size <= 131_072, "Aliyun blocks are 256..=131072 bytes");
        assert!(cfg.page_size > 0 && cfg.progress_every > 0);
        OtaMachine {
            cfg,
            state: State::AwaitBoot,
            connected: false,
            version: String::new(),
            running_module: String::new(),
            sec_cnt: 0,
            resume: None,
            outcome: None,
            announced: false,
            next_id: 0,
            out: Deque::new(),
            topic: alink::Topic::new(),
            buf: [0; OUT_BUF],
        }
    }

    /// The device's topics.
    pub fn topics(&self) -> &Topics<'a> {
        &self.cfg.topics
    }

    /// What the machine waits for.
    pub fn state(&self) -> StateName {
        match self.state {
            State::AwaitBoot => StateName::AwaitBoot,
            State::AwaitSelfTest => StateName::AwaitSelfTest,
            State::AwaitConfirm => StateName::AwaitConfirm,
            State::AwaitTask => StateName::AwaitTask,
            State::Rehashing(_) => StateName::Rehashing,
            State::Downloading(_) => StateName::Downloading,
            State::AwaitMark(_) => StateName::AwaitMark,
            State::AwaitReset => StateName::AwaitReset,
        }
    }

    /// Bytes of the current download written so far.
    pub fn written(&self) -> Option<(u32, u32)> {
        match &self.state {
            State::Rehashing(d) | State::Downloading(d) | State::AwaitMark(d) => Some((d.written, d.size)),
            _ => None,
        }
    }

    /// The URL of the current HTTPS download.
    pub fn url(&self) -> Option<&str> {
        match &self.state {
            State::Downloading(Download { via: Via::Https { url, .. }, .. }) => Some(url),
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

    fn progress(&mut self, step: i8, d: String<128>) {
        if self.connected {
            self.push(Out::Progress { step, desc: d });
        }
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<Action<'_>> {
        let o = self.out.pop_front()?;
        let t = &self.cfg.topics;
        self.next_id = self.next_id.wrapping_add(1);
        let mut id: String<10> = String::new();
        let _ = write!(id, "{}", self.next_id);
        let module = self.running_module.as_str();
        let built: Result<(alink::Topic, usize), AlinkError> = match &o {
            Out::Inform => {
                t.inform().and_then(|tp| Ok((tp, alink::inform(&mut self.buf, &id, &self.version, module)?)))
            }
            Out::FirmwareGet => {
                t.firmware_get().and_then(|tp| Ok((tp, alink::firmware_get(&mut self.buf, &id, self.cfg.module)?)))
            }
            Out::Progress { step, desc } => {
                t.progress().and_then(|tp| Ok((tp, alink::progress(&mut self.buf, &id, *step, desc, self.cfg.module)?)))
            }
            Out::BlockRequest { stream_id, file_id, offset, len } => t.file_download().and_then(|tp| {
                Ok((tp, alink::download_request(&mut self.buf, &id, "ota", *stream_id, *file_id, *offset, *len)?))
            }),
            Out::Plain(p) => {
                return Some(match p.clone() {
                    Plain::RunSelfTest => Action::RunSelfTest,
                    Plain::Confirm => Action::Confirm,
                    Plain::BeginDownload(at) => Action::BeginDownload { at },
                    Plain::Write(offset, range) => Action::Write { offset, range },
                    Plain::Rehash(len) => Action::Rehash { len },
                    Plain::SaveProgress(r) => Action::SaveProgress(r),
                    Plain::ClearProgress => Action::ClearProgress,
                    Plain::HttpGet(from) => Action::HttpGet { from },
                    Plain::HttpClose => Action::HttpClose,
                    Plain::VerifyAndMark => Action::VerifyAndMark,
                    Plain::Reset => Action::Reset,
                })
            }
        };
        // Topics and payloads are sized for the longest legal values: failing here is a bug.
        let (topic, n) = built.expect("OTA message does not fit its buffer");
        self.topic = topic;
        Some(Action::Publish { topic: &self.topic, payload: &self.buf[..n] })
    }

    /// When [`Self::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Downloading(Download { via: Via::Mqtt { in_flight, .. }, .. }) => {
                in_flight.iter().map(|r| r.deadline).min()
            }
            State::Downloading(Download { via: Via::Https { refresh_by, .. }, .. }) => *refresh_by,
            _ => None,
        }
    }

    /// Re-sends block requests whose time is up; fails the download when one ran out of tries.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let State::Downloading(Download { via: Via::Https { refresh_by: Some(t), .. }, .. }) = &self.state {
            if *t <= now {
                self.fail(
                    alink::STEP_DOWNLOAD_FAILED,
                    desc(format_args!("the download URL expired and no fresh one came")),
                );
            }
            return;
        }
        let State::Downloading(d) = &mut self.state else { return };
        let Via::Mqtt { stream_id, file_id, in_flight, .. } = &mut d.via else { return };
        let (stream_id, file_id) = (*stream_id, *file_id);
        let mut resend: Vec<(u32, u32), MAX_IN_FLIGHT> = Vec::new();
        let mut failed = None;
        in_flight.retain_mut(|r| {
            if r.deadline > now {
                return true;
            }
            if r.tries >= self.cfg.retries {
                if r.peek {
                    return false; // only an early check: the final verify still runs
                }
                failed = Some(failed.map_or(r.offset, |f: u32| f.min(r.offset)));
                return true;
            }
            r.tries += 1;
            r.deadline = now + self.cfg.request_timeout;
            let _ = resend.push((r.offset, r.len));
            true
        });
        if let Some(offset) = failed {
            let tries = self.cfg.retries as u32 + 1;
            self.fail(
                alink::STEP_DOWNLOAD_FAILED,
                desc(format_args!("no reply for the block at {offset} after {tries} requests")),
            );
            return;
        }
        if self.connected {
            resend.sort_unstable();
            for (offset, len) in resend {
                self.push(Out::BlockRequest { stream_id, file_id, offset, len });
            }
        }
    }

    /// Takes one event.
    pub fn handle(&mut self, now: Instant, ev: Event<'_>) {
        match ev {
            Event::Booted(r) => self.booted(r),
            Event::Connected => {
                self.connected = true;
                self.announce();
                self.reissue(now);
            }
            Event::Disconnected => {
                self.connected = false;
                if let State::Downloading(Download { via: Via::Mqtt { in_flight, next, .. }, written, .. }) =
                    &mut self.state
                {
                    // Requests and replies in flight are lost with the session.
                    in_flight.clear();
                    *next = *written;
                }
            }
            Event::SelfTest(pass) => {
                if !matches!(self.state, State::AwaitSelfTest) {
                    return;
                }
                if pass {
                    self.state = State::AwaitConfirm;
                    self.plain(Plain::Confirm);
                } else {
                    // Not confirmed: the bootloader puts the old image back, we report it then.
                    self.state = State::AwaitReset;
                    self.plain(Plain::Reset);
                }
            }
            Event::Confirmed(ok) => {
                if !matches!(self.state, State::AwaitConfirm) {
                    return;
                }
                if ok {
                    self.state = State::AwaitTask;
                    self.announce();
                } else {
                    self.state = State::AwaitReset;
                    self.plain(Plain::Reset);
                }
            }
            Event::Message { topic: Downlink::DownloadReply, payload } => self.block(now, payload),
            Event::Message { topic: _, payload } => self.task_message(now, payload),
            Event::Rehashed(ok) => self.rehashed(now, ok),
            Event::FlashFailed => {
                if let Some((w, _)) = self.written() {
                    self.fail(alink::STEP_FLASH_FAILED, desc(format_args!("flash write failed at {w}")));
                }
            }
            Event::HttpResponse { status, length } => self.http_response(now, status, length),
            Event::HttpBody(data) => self.http_body(now, data),
            Event::HttpEnd | Event::HttpFailed => self.http_end(),
            Event::Marked(r) => self.marked(r),
        }
    }

    fn booted(&mut self, r: BootReport<'_>) {
        if !matches!(self.state, State::AwaitBoot) {
            return;
        }
        self.version = String::try_from(r.version).unwrap_or_default();
        self.running_module = String::try_from(r.module).unwrap_or_default();
        self.sec_cnt = r.sec_cnt;
        self.resume = r.resume;
        self.outcome = Some(r.outcome);
        if r.awaiting_confirm {
            self.state = State::AwaitSelfTest;
            self.plain(Plain::RunSelfTest);
        } else {
            self.state = State::AwaitTask;
            self.announce();
        }
    }

    /// Once connected and settled: the truth about the last boot, the version, then a pull. After
    /// a reconnect: the version and a pull again (the platform also re-pushes pending tasks).
    fn announce(&mut self) {
        if !self.connected || !matches!(self.state, State::AwaitTask) {
            return;
        }
        if !self.announced {
            self.announced = true;
            match self.outcome.take() {
                Some(BootOutcome::Reverted) => self.progress(
                    alink::STEP_UPGRADE_FAILED,
                    desc(format_args!("new image did not confirm itself; reverted to {}", self.version)),
                ),
                Some(BootOutcome::Refused(e)) => {
                    self.progress(alink::STEP_UPGRADE_FAILED, desc(format_args!("bootloader refused the image: {e}")))
                }
                _ => {}
            }
        }
        self.push(Out::Inform);
        self.push(Out::FirmwareGet);
    }

    fn task_message(&mut self, now: Instant, payload: &[u8]) {
        let task = match alink::parse_task(payload) {
            Ok(Some(t)) => t,
            // No task, or one we cannot read (its module is unknown, so it may not be ours).
            _ => return,
        };
        if task.module != self.cfg.module {
            return;
        }
        let Ok(digest) = task.digest_bytes() else { return };
        let key = task_key(&task, &digest);
        match &mut self.state {
            State::AwaitTask => {}
            State::Downloading(d) if d.key == key => {
                // The same task again. An HTTPS download waiting for a fresh URL takes it.
                if let (Via::Https { url, refreshed: true, from, refresh_by, .. }, Source::Https { .. }) =
                    (&mut d.via, task.source)
                {
                    if let Ok(fresh) = unescape_url(&task) {
                        *url = fresh;
                        *refresh_by = None;
                        *from = d.written;
                        let w = d.written;
                        self.plain(Plain::HttpGet(w));
                    }
                }
                return;
            }
            // Busy (or a duplicate of the task in progress): one task at a time.
            _ => return,
        }
        if task.version == self.version.as_str() {
            return; // already running it; the inform at boot told the platform
        }
        if task.size > self.cfg.slot_size {
            let (size, slot) = (task.size, self.cfg.slot_size);
            self.progress(
                alink::STEP_UPGRADE_FAILED,
                desc(format_args!("image of {size} bytes does not fit the {slot}-byte slot")),
            );
            return;
        }
        let via = match task.source {
            Source::Mqtt { stream_id, file_id } => {
                Via::Mqtt { stream_id, file_id, next: 0, in_flight: Vec::new(), peeked: false }
            }
            Source::Https { .. } => match unescape_url(&task) {
                Ok(url) => {
                    Via::Https { url, tries: 0, refreshed: false, from: 0, refresh_by: None, tail: Tail::Unknown }
                }
                Err(_) => {
                    self.progress(
                        alink::STEP_DOWNLOAD_FAILED,
                        desc(format_args!("download URL longer than {MAX_URL} bytes")),
                    );
                    return;
                }
            },
        };
        let mut d = Download {
            version: String::try_from(task.version).unwrap_or_default(),
            size: task.size,
            digest,
            method: task.method,
            key,
            hasher: Hasher::new(task.method),
            written: 0,
            saved: 0,
            via,
            last_pct: 1,
            last_report: now,
        };
        self.progress(1, desc(format_args!("downloading {}", d.version)));
        match self.resume.take().filter(|r| r.key == key && r.written > 0 && r.written < d.size) {
            Some(r) => {
                d.written = r.written;
                d.saved = r.written;
                self.state = State::Rehashing(d);
                self.plain(Plain::Rehash(r.written));
            }
            None => {
                self.plain(Plain::ClearProgress);
                self.plain(Plain::BeginDownload(0));
                self.state = State::Downloading(d);
                self.fetch(now);
            }
        }
    }

    fn rehashed(&mut self, now: Instant, ok: bool) {
        let State::Rehashing(d) = &mut self.state else { return };
        let mut d = d.clone();
        if !ok {
            d.written = 0;
            d.saved = 0;
            d.hasher = Hasher::new(d.method);
            self.plain(Plain::ClearProgress);
        }
        if let Via::Mqtt { next, .. } = &mut d.via {
            *next = d.written;
        }
        let at = d.written;
        self.plain(Plain::BeginDownload(at));
        self.state = State::Downloading(d);
        self.fetch(now);
    }

    /// Asks for what is missing: block requests up to the window, or the HTTP body.
    fn fetch(&mut self, now: Instant) {
        let (window, block, timeout) = (self.cfg.window, self.cfg.block_size, self.cfg.request_timeout);
        let connected = self.connected;
        let State::Downloading(d) = &mut self.state else { return };
        let size = d.size;
        let mut reqs: Vec<Out, MAX_IN_FLIGHT> = Vec::new();
        match &mut d.via {
            Via::Mqtt { stream_id, file_id, next, in_flight, .. } => {
                if !connected {
                    return;
                }
                if let Some(r) = in_flight.iter_mut().find(|r| r.early && r.offset == d.written) {
                    r.early = false;
                    r.deadline = now + timeout;
                    let _ = reqs.push(Out::BlockRequest {
                        stream_id: *stream_id,
                        file_id: *file_id,
                        offset: r.offset,
                        len: r.len,
                    });
                }
                while in_flight.iter().filter(|r| !r.peek).count() < window && *next < size && !in_flight.is_full() {
                    let len = block.min(size - *next);
                    let _ = in_flight.push(Request {
                        offset: *next,
                        len,
                        deadline: now + timeout,
                        tries: 0,
                        peek: false,
                        early: false,
                    });
                    let _ =
                        reqs.push(Out::BlockRequest { stream_id: *stream_id, file_id: *file_id, offset: *next, len });
                    *next += len;
                }
            }
            Via::Https { from, .. } => {
                *from = d.written;
                let w = d.written;
                self.plain(Plain::HttpGet(w));
                return;
            }
        }
        for r in reqs {
            self.push(r);
        }
    }

    /// After a reconnect, asks again for everything outstanding.
    fn reissue(&mut self, now: Instant) {
        if matches!(self.state, State::Downloading(Download { via: Via::Mqtt { .. }, .. })) {
            self.fetch(now);
        }
    }

    fn block(&mut self, now: Instant, payload: &[u8]) {
        let Ok(b) = alink::parse_download_reply(payload) else { return }; // bad CRC etc.: retried on timeout
        let sec_cnt = self.sec_cnt;
        let State::Downloading(d) = &mut self.state else { return };
        let Via::Mqtt { in_flight, stream_id, file_id, peeked, .. } = &mut d.via else { return };
        let (stream_id, file_id) = (*stream_id, *file_id);
        let Some(i) = in_flight.iter().position(|r| r.offset == b.offset && r.len as usize == b.data.len()) else {
            return; // stale, duplicate or unasked-for
        };
        if in_flight[i].peek {
            in_flight.remove(i);
            // The protected TLVs, read ahead: refuse a downgrade before downloading the body.
            if let Some(image) = protected_sec_cnt(b.data) {
                if image < sec_cnt {
                    self.fail(
                        alink::STEP_UPGRADE_FAILED,
                        desc(format_args!("security counter {image} below the device's {sec_cnt}: downgrade refused")),
                    );
                }
            }
            return;
        }
        if b.offset != d.written {
            in_flight[i].early = true; // no room to keep it: asked again when its turn comes
            return;
        }
        in_flight.remove(i);
        // First block: the header says where the protected TLVs are; ask for them now.
        if b.offset == 0 && !*peeked {
            *peeked = true;
            if let Ok(h) = Header::new_checked(b.data).and_then(|h| HeaderRepr::parse(&h)) {
                if let (Some(at), Some(end)) = (h.body_end(), h.tlv_offset()) {
                    if end > at && end <= d.size && at >= self.cfg.block_size && !in_flight.is_full() {
                        let r = Request {
                            offset: at,
                            len: end - at,
                            deadline: now + self.cfg.request_timeout,
                            tries: 0,
                            peek: true,
                            early: false,
                        };
                        let _ = in_flight.push(r);
                        self.out
                            .push_back(Out::BlockRequest { stream_id, file_id, offset: at, len: end - at })
                            .expect("OTA output queue overflow");
                    }
                }
            }
        }
        let start = b.data.as_ptr() as usize - payload.as_ptr() as usize;
        self.accept(now, b.offset, b.data, start..start + b.data.len());
    }

    /// Takes bytes at the end of what was written: hash, write, progress, persist, continue.
    fn accept(&mut self, now: Instant, offset: u32, data: &[u8], range: core::ops::Range<usize>) {
        let (page, every, interval) = (self.cfg.page_size, self.cfg.progress_every, self.cfg.progress_interval);
        let State::Downloading(d) = &mut self.state else { return };
        d.hasher.update(data);
        d.written += data.len() as u32;
        let (written, size, key) = (d.written, d.size, d.key);
        self.plain(Plain::Write(offset, range));
        let boundary = written / page * page;
        let State::Downloading(d) = &mut self.state else { return };
        if boundary > d.saved && written < size {
            d.saved = boundary;
            self.plain(Plain::SaveProgress(Resume { key, written: boundary }));
        }
        let State::Downloading(d) = &mut self.state else { return };
        let mqtt = matches!(d.via, Via::Mqtt { .. });
        let pct = ((written as u64 * 100 / size as u64) as u8).clamp(1, 99);
        if pct >= d.last_pct.saturating_add(every) && now.since(d.last_report) >= interval {
            d.last_pct = pct;
            d.last_report = now;
            let v = d.version.clone();
            self.progress(pct as i8, desc(format_args!("downloading {v}")));
        }
        if written >= size {
            self.finish();
        } else if mqtt {
            self.fetch(now); // HTTPS: the body keeps coming on the GET in progress
        }
    }

    fn finish(&mut self) {
        let State::Downloading(d) = &self.state else { return };
        let d = d.clone();
        if matches!(d.via, Via::Https { .. }) {
            self.plain(Plain::HttpClose);
        }
        if !d.hasher.matches(&d.digest) {
            let m = match d.method {
                DigestMethod::Md5 => "MD5",
                DigestMethod::Sha256 => "SHA-256",
            };
            self.plain(Plain::ClearProgress);
            self.fail(alink::STEP_VERIFY_FAILED, desc(format_args!("{m} of the download differs from the task's")));
            return;
        }
        self.state = State::AwaitMark(d);
        self.plain(Plain::VerifyAndMark);
    }

    fn marked(&mut self, r: Result<(), MarkError>) {
        let State::AwaitMark(d) = &self.state else { return };
        let v = d.version.clone();
        match r {
            Ok(()) => {
                self.plain(Plain::ClearProgress);
                self.progress(100, desc(format_args!("{v} verified; rebooting to install")));
                self.state = State::AwaitReset;
                self.plain(Plain::Reset);
            }
            Err(MarkError::Flash) => {
                self.fail(alink::STEP_FLASH_FAILED, desc(format_args!("marking {v} for install failed")))
            }
            Err(MarkError::Image(e)) => {
                self.plain(Plain::ClearProgress);
                let step = match e {
                    ImageError::CounterTooLow { .. } | ImageError::TooLargeForSlot { .. } => alink::STEP_UPGRADE_FAILED,
                    ImageError::Flash(_) => alink::STEP_FLASH_FAILED,
                    _ => alink::STEP_VERIFY_FAILED,
                };
                self.fail(step, desc(format_args!("{v} refused: {e}")));
            }
        }
    }

    fn http_response(&mut self, now: Instant, status: u16, length: Option<u32>) {
        let wait = self.cfg.request_timeout;
        let State::Downloading(d) = &mut self.state else { return };
        let Via::Https { refreshed, from, refresh_by, tail, .. } = &mut d.via else { return };
        match status {
            206 => {}
            200 if *from == 0 => {}
            200 => {
                // The server ignored our Range: start over from byte 0 (and skip the early look).
                *tail = Tail::Done;
                d.written = 0;
                d.saved = 0;
                *from = 0;
                d.hasher = Hasher::new(d.method);
                self.plain(Plain::ClearProgress);
                self.plain(Plain::BeginDownload(0));
            }
            401 | 403 if !*refreshed => {
                // The pre-signed URL expired: ask for the task again, with a fresh URL.
                *refreshed = true;
                *refresh_by = Some(now + wait);
                self.plain(Plain::HttpClose);
                self.push(Out::FirmwareGet);
                return;
            }
            s => {
                self.fail(alink::STEP_DOWNLOAD_FAILED, desc(format_args!("HTTP {s} from the download server")));
                return;
            }
        }
        let State::Downloading(d) = &self.state else { return };
        let Via::Https { from, .. } = &d.via else { return };
        if let Some(len) = length {
            if from.checked_add(len) != Some(d.size) {
                let (w, s) = (*from, d.size);
                self.fail(
                    alink::STEP_DOWNLOAD_FAILED,
                    desc(format_args!("server sends {len} bytes from {w}, task says {s} in all")),
                );
            }
        }
    }

    fn http_body(&mut self, now: Instant, data: &[u8]) {
        let sec_cnt = self.sec_cnt;
        let State::Downloading(d) = &mut self.state else { return };
        let size = d.size;
        let Via::Https { tail, from, .. } = &mut d.via else { return };
        if let Tail::Reading { at, buf } = tail {
            // The body of the early look at the protected TLVs: kept, not written.
            let want = (size - *at) as usize;
            let take = data.len().min(want - buf.len());
            let _ = buf.extend_from_slice(&data[..take]);
            if buf.len() < want {
                return;
            }
            let image = protected_sec_cnt(buf);
            *tail = Tail::Done;
            *from = d.written;
            let w = d.written;
            if let Some(image) = image.filter(|&i| i < sec_cnt) {
                self.fail(
                    alink::STEP_UPGRADE_FAILED,
                    desc(format_args!("security counter {image} below the device's {sec_cnt}: downgrade refused")),
                );
                return;
            }
            self.plain(Plain::HttpClose);
            self.plain(Plain::HttpGet(w));
            return;
        }
        let State::Downloading(d) = &self.state else { return };
        if d.written as u64 + data.len() as u64 > d.size as u64 {
            let s = d.size;
            self.fail(
                alink::STEP_DOWNLOAD_FAILED,
                desc(format_args!("the server sent more than the task's {s} bytes")),
            );
            return;
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
        let Via::Https { tail, from, .. } = &mut d.via else { return };
        if !matches!(tail, Tail::Unknown) {
            return;
        }
        *tail = Tail::Done;
        if offset != 0 {
            return;
        }
        let Ok(h) = Header::new_checked(data).and_then(|h| HeaderRepr::parse(&h)) else { return };
        let (Some(at), Some(end)) = (h.body_end(), h.tlv_offset()) else { return };
        if at <= written || end <= at || end > size || size - at > 512 {
            return;
        }
        *tail = Tail::Reading { at, buf: Vec::new() };
        *from = at;
        self.plain(Plain::HttpClose);
        self.plain(Plain::HttpGet(at));
    }

    fn http_end(&mut self) {
        let retries = self.cfg.retries;
        let State::Downloading(d) = &mut self.state else { return };
        let Via::Https { tries, refreshed, tail, from, .. } = &mut d.via else { return };
        if matches!(tail, Tail::Reading { .. }) {
            // The early look broke off: go on with the body; the final verify still checks.
            *tail = Tail::Done;
            *from = d.written;
            let w = d.written;
            self.plain(Plain::HttpGet(w));
            return;
        }
        if *refreshed && d.written == 0 && *tries == 0 {
            return; // waiting for the fresh URL
        }
        if d.written >= d.size {
            return;
        }
        if *tries >= retries {
            let w = d.written;
            self.fail(
                alink::STEP_DOWNLOAD_FAILED,
                desc(format_args!("download broke off at {w} bytes, {retries} retries failed")),
            );
            return;
        }
        *tries += 1;
        *from = d.written;
        let w = d.written;
        self.plain(Plain::HttpGet(w));
    }

    /// Reports a failure and goes back to waiting for a task (the old image keeps running).
    fn fail(&mut self, step: i8, d: String<128>) {
        if let State::Downloading(Download { via: Via::Https { .. }, .. }) = self.state {
            self.plain(Plain::HttpClose);
        }
        self.progress(step, d);
        self.state = State::AwaitTask;
    }
}

fn unescape_url(task: &Task<'_>) -> Result<String<MAX_URL>, ()> {
    let mut url = String::new();
    for piece in task.url_fragments() {
        match piece.map_err(|_| ())? {
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
