//! The device loop every board runs: boot info, then connect / subscribe / run / back off, again
//! and again, until the machine asks for a reset. `shared::ota::OtaMachine` makes every protocol
//! decision; this file carries out its actions with the MQTT session, the DFU updater and an HTTP
//! client. A board hands in its flash regions, a [`Link`] (a socket, or a modem's), an [`Http`]
//! client (or none), a [`Clock`] and its buffers, and resets when [`run`] returns.
//!
//! ```text
//!  boot_info ─▶ OtaMachine::Booted ─▶ self-test (a failing image resets before it connects)
//!  loop: link.open ─▶ CONNECT ─▶ refused 4/5: the machine reverts a new image; else Exit::BadCredentials
//!                    └─▶ SUBSCRIBE ─▶ Connected ─▶ [messages, timers, HTTP body] until it drops
//!        back-off (1 s doubling to 5 min, jittered; reset by a session that lasted a minute),
//!        the machine's timers still running (a new image's confirm deadline)
//! ```

use crate::keys::TRUSTED_KEYS;
use crate::mqtt::{Incoming, Mqtt, MqttError};
use core::fmt::Arguments;
use embassy_futures::select::{select4, Either4};
use embedded_io_async::{Read, Write};
use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};
use memory_layouts::Layout;
use shared::alink::{self, AlinkError, DeviceSecret, SignMethod};
use shared::boot::{boot_info, confirm, request_revert, resume, FirmwareUpdaterConfig, Slots, UpdateError, Updater};
use shared::delta::Patcher;
use shared::image::PublicKey;
use shared::ota::{
    check_keep_alive, Action, Backoff, BootReport, ConfigError, Event, External, HttpError, MarkError, ModuleError,
    ModulePhase, OtaConfig, OtaMachine, Outcome, Verdict, STEADY_SESSION,
};
use shared::time::{Duration, Instant};

/// The board's clock.
pub trait Clock {
    /// Now.
    fn now(&self) -> Instant;
    /// Returns at `t`.
    async fn sleep_until(&self, t: Instant);
}

/// An HTTP(S) client for pre-signed download URLs.
pub trait Http {
    /// Whether this board downloads over HTTPS at all (else the machine refuses HTTPS tasks).
    fn available(&self) -> bool {
        true
    }
    /// Starts `GET url` with `Range: bytes={from}-`; returns the status and Content-Length.
    async fn get(&mut self, url: &str, from: u32) -> Result<(u16, Option<u32>), HttpError>;
    /// The next body bytes; `Ok(0)` at the end. Pending forever when no GET is open.
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, HttpError>;
    /// Drops the connection.
    fn close(&mut self);
}

/// What an external module says about the update of its own firmware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleNews {
    /// Downloading or installing, this far (0..=100).
    Progress(ModulePhase, u8),
    /// Installed (it restarts now), or why not.
    Done(Result<(), ModuleError>),
}

/// A part of the device that updates its own firmware: the cellular module (Quectel
/// `AT+QFOTADL`), reported to Aliyun as a module of its own.
pub trait Module {
    /// Its Aliyun module name (`modem`), or `None`: the board has no such part.
    fn name(&self) -> Option<&str>;
    /// The longest URL it takes.
    fn max_url(&self) -> u16;
    /// Its firmware version as the last link bring-up read it.
    fn version(&self) -> Option<heapless::String<64>>;
    /// Hands it the package URL; `Err` when it refuses.
    async fn update(&mut self, url: &str) -> Result<(), ()>;
    /// What it said and was not handed out yet (without waiting).
    fn poll(&mut self) -> Option<ModuleNews>;
    /// The next thing it says; pending forever when it has nothing to say.
    async fn next(&mut self) -> ModuleNews;
    /// Called between slices of flash work: a cellular module asks for the next bytes its
    /// sockets hold, so that they cross the UART while the CPU programs flash (see
    /// [`crate::modem::Modem::ahead`]). Nothing on a board without one.
    async fn ahead(&mut self) {}
}

/// A board without such a part (the host device without `modem`).
#[cfg_attr(target_os = "none", allow(dead_code))]
pub struct NoModule;

impl Module for NoModule {
    fn name(&self) -> Option<&str> {
        None
    }
    fn max_url(&self) -> u16 {
        0
    }
    fn version(&self) -> Option<heapless::String<64>> {
        None
    }
    async fn update(&mut self, _url: &str) -> Result<(), ()> {
        Err(())
    }
    fn poll(&mut self) -> Option<ModuleNews> {
        None
    }
    async fn next(&mut self) -> ModuleNews {
        core::future::pending().await
    }
}

/// The byte stream to the broker: a TCP/TLS socket, or a modem's socket.
pub trait Link {
    /// The open stream.
    type Io<'a>: Read + Write
    where
        Self: 'a;
    /// Why it could not be opened.
    type Error: core::fmt::Display;
    /// Opens (or reopens) the stream.
    async fn open(&mut self) -> Result<Self::Io<'_>, Self::Error>;
}

// Every board's flash erases to the value shared (and embassy-boot's STATE logic) is built for.
const _: () = {
    let mut i = 0;
    while i < memory_layouts::Board::ALL.len() {
        assert!(memory_layouts::Board::ALL[i].layout().geometry.erased == shared::boot::ERASED);
        i += 1;
    }
};

/// Who the device is and how it talks to the broker (from the PROVISION page or device.toml).
pub struct Settings<'a> {
    /// productKey
    pub product_key: &'a str,
    /// deviceName
    pub device_name: &'a str,
    /// deviceSecret (never logged)
    pub device_secret: &'a str,
    /// The password's HMAC.
    pub sign_method: SignMethod,
    /// TLS to the broker (securemode 2; else 3).
    pub tls: bool,
    /// MQTT keep-alive, s (Aliyun: 30..=1200).
    pub keep_alive: u16,
    /// Bytes per block request.
    pub block_size: u32,
    /// Most block requests in flight.
    pub window: usize,
    /// `firmware/get` every this long.
    pub pull_interval: Duration,
    /// How long a new image may try to reach the broker before it is reverted.
    pub confirm_deadline: Duration,
}

impl<'a> Settings<'a> {
    /// These credentials with the defaults: keep-alive 300 s, `shared::ota`'s block size,
    /// window, pull interval and confirm deadline.
    pub fn new(
        product_key: &'a str,
        device_name: &'a str,
        device_secret: &'a str,
        sign_method: SignMethod,
        tls: bool,
    ) -> Self {
        Settings {
            product_key,
            device_name,
            device_secret,
            sign_method,
            tls,
            keep_alive: 300,
            block_size: shared::ota::DEFAULT_BLOCK,
            window: shared::ota::DEFAULT_WINDOW,
            pull_interval: shared::ota::DEFAULT_PULL,
            confirm_deadline: shared::ota::DEFAULT_CONFIRM,
        }
    }
}

/// What the board provides besides flash.
pub struct BoardIo<'a, L, H, M, C> {
    /// Flash geometry and slot sizes.
    pub layout: &'static Layout,
    /// The broker's byte stream.
    pub link: &'a mut L,
    /// Downloads over HTTP(S).
    pub http: &'a mut H,
    /// The part that updates its own firmware (the cellular module), or [`NoModule`].
    pub module: &'a mut M,
    /// The board's clock.
    pub clock: &'a C,
    /// The result of the running image's self-test (reaching the broker is the rest of it).
    pub self_test: bool,
    /// Prints a line the user must see (semihosting on QEMU, defmt on the nRF, the log on host).
    pub say: fn(Arguments<'_>),
}

/// The board's buffers: one MQTT packet (the largest block reply plus its header and topic, or
/// the largest push with its extData), HTTP body chunks (empty without HTTP), flash work (the
/// final verify reads the whole image through it: 1 KiB on a microcontroller), and the patcher
/// of differential packages (its heatshrink window: about 2.3 KiB).
pub struct Buffers<'a> {
    /// MQTT receive buffer.
    pub mqtt: &'a mut [u8],
    /// HTTP body chunks.
    pub http: &'a mut [u8],
    /// Flash reads.
    pub work: &'a mut [u8],
    /// Applies differential packages.
    pub patcher: &'a mut Patcher,
}

/// Why [`run`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// The machine asked for a reset (install, revert, a failed self-test).
    Reset,
    /// The broker refused the credentials of this confirmed image (CONNACK code). The host
    /// device stops; a microcontroller tries again after [`shared::ota::BACKOFF_CAP`].
    BadCredentials(u8),
}

/// Why the device cannot start at all.
#[derive(Debug)]
pub enum SetupError {
    /// BOOT_RECORD or the running image could not be read.
    BootInfo(UpdateError),
    /// A setting outside its range.
    Config(ConfigError),
    /// The credentials do not make a client id.
    Credentials(AlinkError),
}

impl core::fmt::Display for SetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SetupError::BootInfo(e) => write!(f, "reading the boot info: {e}"),
            SetupError::Config(e) => write!(f, "{e}"),
            SetupError::Credentials(e) => write!(f, "the credentials do not make a client id: {e}"),
        }
    }
}

impl From<ConfigError> for SetupError {
    fn from(e: ConfigError) -> Self {
        SetupError::Config(e)
    }
}

impl From<AlinkError> for SetupError {
    fn from(e: AlinkError) -> Self {
        SetupError::Credentials(e)
    }
}

/// What the driver needs besides the machine.
struct Ctx<'a> {
    keys: &'a [PublicKey],
    slot_size: u32,
    self_test: bool,
    /// Bytes of the running image (the base of a patch that names none).
    image_len: u32,
}

/// Where the bytes of the last event are (`Action::Write` ranges index them).
#[derive(Clone)]
enum Last {
    None,
    /// The PUBLISH payload still in the MQTT buffer.
    Mqtt(core::ops::Range<usize>),
    /// HTTP body bytes in the body buffer.
    Http(usize),
}

impl Last {
    /// The last event's bytes, which `Write` and `Patch` ranges index.
    fn bytes<'b, T: Read + Write>(&self, mqtt: Option<&'b Mqtt<'_, T>>, body: &'b [u8]) -> &'b [u8] {
        match (self, mqtt) {
            (Last::Mqtt(r), Some(s)) => &s.rx()[r.clone()],
            (Last::Http(n), _) => &body[..*n],
            _ => &[],
        }
    }
}

enum End {
    Reset,
    Refused(u8),
    Lost,
}

/// The machine, the updater and what carries out actions.
struct Core<'a, H, M, C, A, D, S> {
    machine: &'a mut OtaMachine,
    updater: Updater<D, S>,
    /// ACTIVE: the base of differential packages.
    active: A,
    patcher: &'a mut Patcher,
    http: &'a mut H,
    module: &'a mut M,
    /// The module version last told to the machine.
    module_version: Option<heapless::String<64>>,
    clock: &'a C,
    ctx: Ctx<'a>,
    work: &'a mut [u8],
    body: &'a mut [u8],
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// What the boot left: the running image, the boot's outcome, an interrupted download.
pub struct Booted {
    info: shared::boot::BootInfo,
    resume: Option<shared::ota::Resume>,
}

/// Reads what the boot left and says which image runs (before anything else can fail).
pub fn boot<A, R, S, D>(
    f: &mut Slots<A, D, S, R>,
    work: &mut [u8],
    say: fn(Arguments<'_>),
) -> Result<Booted, SetupError>
where
    A: ReadNorFlash,
    R: ReadNorFlash,
    S: NorFlash,
    D: NorFlash,
{
    let keys = TRUSTED_KEYS.map(PublicKey);
    let info = boot_info(f, &keys, work).map_err(SetupError::BootInfo)?;
    let saved = resume::load(&mut f.dfu).ok().flatten();
    let r = BootReport::new(&info, saved);
    say(format_args!("app: running {} (module {})", r.version, r.module));
    Ok(Booted { info, resume: saved })
}

/// Runs the device until the machine asks for a reset ([`Exit`]); `Err` when it cannot start.
/// `slot` keeps the machine (a static on a microcontroller; it is never dropped).
pub async fn run<L, H, M, C, A, R, S, D>(
    booted: Booted,
    f: Slots<A, D, S, R>,
    b: BoardIo<'_, L, H, M, C>,
    s: &Settings<'_>,
    slot: &mut core::mem::MaybeUninit<OtaMachine>,
    bufs: Buffers<'_>,
) -> Result<Exit, SetupError>
where
    L: Link,
    H: Http,
    M: Module,
    C: Clock,
    A: ReadNorFlash,
    R: ReadNorFlash,
    S: NorFlash,
    D: NorFlash,
{
    let Buffers { mqtt: rx, http: body, work, patcher } = bufs;
    let (l, clock) = (b.layout, b.clock);
    let keys = TRUSTED_KEYS.map(PublicKey);
    let info = booted.info;
    check_keep_alive(s.keep_alive)?;
    let mut cfg = OtaConfig::new(s.product_key, s.device_name, l.active.length, l.geometry.erase_size)?;
    cfg.block_size = s.block_size;
    cfg.window = s.window;
    cfg.pull_interval = s.pull_interval;
    cfg.confirm_deadline = s.confirm_deadline;
    cfg.https = b.http.available();
    cfg.delta = true;
    if let Some(name) = b.module.name() {
        let _ = cfg.external.push(External::new(name, b.module.max_url())?);
    }
    cfg.check()?;
    let m = slot.write(OtaMachine::new(cfg));
    m.handle(clock.now(), Event::Booted(BootReport::new(&info, booted.resume)));
    let dev = DeviceSecret { product_key: s.product_key, device_name: s.device_name, device_secret: s.device_secret };
    let creds = alink::credentials(&dev, s.sign_method, None, None, alink::securemode(s.tls))?;
    let subs = m.topics().downlinks()?;
    let subs = [subs[0].as_str(), subs[1].as_str(), subs[2].as_str()];
    let mut backoff = Backoff::new(fnv(s.device_name) ^ clock.now().as_millis());
    let mut core = Core {
        machine: m,
        updater: Updater::new(FirmwareUpdaterConfig { dfu: f.dfu, state: f.state }, 0),
        active: f.active,
        patcher,
        http: b.http,
        module: b.module,
        module_version: None,
        clock,
        ctx: Ctx { keys: &keys, slot_size: l.active.length, self_test: b.self_test, image_len: info.running.total_len },
        work,
        body,
    };
    // What booting asked for first: the self-test (a failing image resets before it connects).
    if let Some(exit) = core.act::<L::Io<'_>>(None, &Last::None).await {
        return Ok(exit);
    }
    loop {
        let t0 = clock.now();
        match core.session(b.link, &mut *rx, &creds, &subs, s.keep_alive).await {
            End::Reset => return Ok(Exit::Reset),
            End::Refused(code) => {
                (b.say)(format_args!("app: {}", MqttError::Refused(code)));
                core.machine.handle(clock.now(), Event::ConnectRefused(code));
                // A new image refused for its credentials is reverted (the machine resets).
                if let Some(exit) = core.act::<L::Io<'_>>(None, &Last::None).await {
                    return Ok(exit);
                }
                if alink::credentials_refused(code) {
                    return Ok(Exit::BadCredentials(code));
                }
            }
            End::Lost => {}
        }
        if clock.now().since(t0) >= STEADY_SESSION {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        log::info!("reconnecting in {}.{:03} s", delay.as_millis() / 1000, delay.as_millis() % 1000);
        // The machine's timers run meanwhile: a new image's confirm deadline.
        let until = clock.now() + delay;
        loop {
            let wake = core.machine.poll_timeout().map_or(until, |t| t.min(until));
            clock.sleep_until(wake).await;
            let now = clock.now();
            core.machine.handle_timeout(now);
            if let Some(exit) = core.act::<L::Io<'_>>(None, &Last::None).await {
                return Ok(exit);
            }
            if now >= until {
                break;
            }
        }
    }
}

impl<H: Http, M: Module, C: Clock, A: ReadNorFlash, D: NorFlash, S: NorFlash> Core<'_, H, M, C, A, D, S> {
    /// One MQTT session: open the link, log in, subscribe, then run until it drops or the
    /// machine asks for a reset.
    async fn session<L: Link>(
        &mut self,
        link: &mut L,
        rx: &mut [u8],
        creds: &alink::Credentials,
        subs: &[&str],
        keep_alive: u16,
    ) -> End {
        let io = match link.open().await {
            Ok(io) => io,
            Err(e) => {
                log::warn!("{}", e);
                return End::Lost;
            }
        };
        // What the module said while no session ran (a FOTA that ended as it restarted), then
        // its version as this bring-up read it.
        while let Some(news) = self.module.poll() {
            self.module_news(news);
        }
        if let (Some(name), Some(v)) = (self.module.name(), self.module.version()) {
            if self.module_version.as_ref() != Some(&v) {
                log::info!("module {}: firmware {}", name, v.as_str());
                let name: heapless::String<32> = heapless::String::try_from(name).unwrap_or_default();
                self.machine.handle(self.clock.now(), Event::ModuleVersion { module: &name, version: &v });
                self.module_version = Some(v);
            }
        }
        if let Some(Exit::Reset) = self.act::<L::Io<'_>>(None, &Last::None).await {
            return End::Reset;
        }
        let max = rx.len() as u32;
        let connect = Mqtt::connect(io, rx, &creds.client_id, &creds.username, &creds.password, keep_alive);
        let mut mqtt = match connect.await {
            Ok(s) => s,
            Err(MqttError::Refused(code)) => return End::Refused(code),
            Err(e) => {
                log::warn!("MQTT connect: {}", e);
                return End::Lost;
            }
        };
        if let Err(e) = mqtt.subscribe(subs).await {
            log::warn!("subscribe: {}", e);
            return End::Lost;
        }
        log::info!("connected as {}", creds.client_id.as_str());
        let clock = self.clock;
        self.machine.handle(clock.now(), Event::Connected);
        // The machine's names, copied: the topics are read while the machine is handed events.
        let (pk, dn) = (self.machine.config().product_key.clone(), self.machine.config().device_name.clone());
        let topics = alink::Topics { product_key: &pk, device_name: &dn };
        let ping_every = Duration::from_secs(keep_alive as u64 / 2);
        let mut next_ping = clock.now() + ping_every;
        // What had come from the broker at the last PINGREQ: nothing since then (not even its
        // PINGRESP) by the next one means the link is dead, though no error says so.
        let mut heard_at_ping = None;
        let mut last = Last::None;
        loop {
            if let Some(Exit::Reset) = self.act(Some(&mut mqtt), &last).await {
                return End::Reset;
            }
            // Outside the select below, which drops `mqtt.next()` whenever another branch wins.
            if let Err(e) = mqtt.send_acks().await {
                self.machine.handle(clock.now(), Event::Disconnected);
                log::warn!("MQTT: {}", e);
                return End::Lost;
            }
            let wake = self.machine.poll_timeout().map_or(next_ping, |t| t.min(next_ping));
            let next =
                select4(mqtt.next(), clock.sleep_until(wake), self.http.read(self.body), self.module.next()).await;
            last = Last::None;
            let now = clock.now();
            match next {
                Either4::First(Ok(Incoming::Publish { topic, payload })) => {
                    let rx = mqtt.rx();
                    let name = core::str::from_utf8(&rx[topic]).unwrap_or("");
                    if let Some(downlink) = topics.classify(name) {
                        log::debug!("received {} bytes on {}", payload.len(), name);
                        self.machine.handle(now, Event::Message { topic: downlink, payload: &rx[payload.clone()] });
                        last = Last::Mqtt(payload);
                    }
                }
                Either4::First(Ok(Incoming::Oversized { topic, len })) => {
                    log::warn!("discarded a message of {} bytes on {} (the buffer holds {})", len, topic.as_str(), max);
                    if let Some(downlink) = topics.classify(&topic) {
                        self.machine.handle(now, Event::Oversized { topic: downlink, len, max });
                    }
                }
                Either4::First(Ok(Incoming::Acked(pid))) => self.machine.handle(now, Event::Acked(pid)),
                Either4::First(Err(e)) => {
                    self.machine.handle(now, Event::Disconnected);
                    log::warn!("MQTT: {}", e);
                    return End::Lost;
                }
                Either4::Second(()) => {
                    if now >= next_ping {
                        if heard_at_ping == Some(mqtt.received) {
                            self.machine.handle(now, Event::Disconnected);
                            log::warn!("MQTT: {}", MqttError::Silent);
                            return End::Lost;
                        }
                        heard_at_ping = Some(mqtt.received);
                        if let Err(e) = mqtt.ping().await {
                            self.machine.handle(now, Event::Disconnected);
                            log::warn!("MQTT: {}", e);
                            return End::Lost;
                        }
                        next_ping = now + ping_every;
                    }
                    self.machine.handle_timeout(now);
                }
                Either4::Third(Ok(0)) => {
                    self.http.close();
                    self.machine.handle(now, Event::HttpEnd);
                }
                Either4::Third(Ok(n)) => {
                    self.machine.handle(now, Event::HttpBody(&self.body[..n]));
                    last = Last::Http(n);
                }
                Either4::Third(Err(e)) => {
                    log::warn!("download: {}", e);
                    self.http.close();
                    self.machine.handle(now, Event::HttpFailed(e));
                }
                Either4::Fourth(news) => self.module_news(news),
            }
        }
    }

    /// Hands what the module said to the machine.
    fn module_news(&mut self, news: ModuleNews) {
        let now = self.clock.now();
        match news {
            ModuleNews::Progress(phase, percent) => self.machine.handle(now, Event::ModuleProgress { phase, percent }),
            ModuleNews::Done(r) => {
                log::info!("module update: {:?}", r);
                self.machine.handle(now, Event::ModuleDone(r));
            }
        }
    }

    /// Carries out the machine's actions; `last` says where the last event's bytes are.
    async fn act<T: Read + Write>(&mut self, mut mqtt: Option<&mut Mqtt<'_, T>>, last: &Last) -> Option<Exit> {
        let Core { machine: m, updater: up, active, patcher, http, module: module_dev, clock, ctx, work, body, .. } =
            self;
        let (clock, buf) = (*clock, &mut **work);
        loop {
            let a = m.poll_action()?;
            let ev: Option<Event<'_>> = match a {
                Action::Publish { topic, payload: p, qos1 } => {
                    log::info!("publish {} {}", topic, core::str::from_utf8(p).unwrap_or("?"));
                    match mqtt.as_deref_mut() {
                        // A lost uplink is not fatal: the session error shows on the next read,
                        // and the machine sends its QoS 1 reports again after a reconnect.
                        Some(s) => {
                            let _ = s.publish(topic, p, qos1).await;
                        }
                        None => log::warn!("not connected: {} not sent", topic),
                    }
                    None
                }
                Action::RunSelfTest => {
                    log::info!("self-test: {}", if ctx.self_test { "pass" } else { "FAIL" });
                    Some(Event::SelfTest(if ctx.self_test { Verdict::Pass } else { Verdict::Fail }))
                }
                Action::Confirm => {
                    let ok = confirm(up.state(), buf).is_ok();
                    log::info!("confirm: {}", if ok { "done" } else { "FAILED" });
                    Some(Event::Confirmed(Outcome::of(ok)))
                }
                Action::BeginDownload { at } => {
                    log::info!("download into DFU from byte {}", at);
                    up.restart(at);
                    None
                }
                Action::BeginPatch => {
                    log::info!("patch into DFU from the running image");
                    up.restart(0);
                    patcher.reset(ctx.slot_size, ctx.image_len);
                    None
                }
                Action::Patch { offset: _, range } => {
                    let bytes = last.bytes(mqtt.as_deref(), body).get(range).unwrap_or(&[]);
                    let r = patcher.feed(bytes, active, up);
                    match r {
                        Ok(()) => None,
                        Err(e) => {
                            log::warn!("patch: {}", e);
                            Some(Event::PatchFailed(e))
                        }
                    }
                }
                Action::Write { offset, range } => {
                    let r = match last.bytes(mqtt.as_deref(), body).get(range) {
                        Some(bytes) => Some(write_ahead(up, &mut **module_dev, offset, bytes).await),
                        None => None,
                    };
                    match r {
                        Some(Ok(())) => None,
                        r => {
                            log::warn!("flash write at {} failed: {:?}", offset, r.map(|r| r.err()));
                            Some(Event::FlashFailed { at: offset })
                        }
                    }
                }
                Action::Rehash { len } => {
                    log::info!("resume: re-hashing {} bytes already in DFU", len);
                    let mut ok = true;
                    let mut at = 0;
                    while at < len {
                        let n = (len - at).min(buf.len() as u32) as usize;
                        if up.dfu().read(at, &mut buf[..n]).is_err() {
                            ok = false;
                            break;
                        }
                        m.rehash(&buf[..n]);
                        at += n as u32;
                    }
                    Some(Event::Rehashed(Outcome::of(ok)))
                }
                Action::SaveResume(r) => {
                    let _ = resume::save(up.dfu(), r);
                    None
                }
                Action::ClearResume => {
                    let _ = resume::clear(up.dfu());
                    None
                }
                Action::HttpGet { from } => {
                    let url = m.url().map(heapless::String::<{ shared::ota::MAX_URL }>::try_from);
                    match url {
                        Some(Ok(url)) => {
                            log::info!("GET {} from byte {}", redact(&url), from);
                            match http.get(&url, from).await {
                                Ok((status, length)) => Some(Event::HttpResponse { status, length }),
                                Err(e) => {
                                    log::warn!("GET: {}", e);
                                    Some(Event::HttpFailed(e))
                                }
                            }
                        }
                        _ => Some(Event::HttpFailed(HttpError::Protocol)),
                    }
                }
                Action::HttpClose => {
                    http.close();
                    None
                }
                Action::VerifyAndMark { patched, floor } => {
                    // A patch must have ended with its image before the image is checked.
                    if let Some(Err(e)) = patched.then(|| patcher.finish(active, up)) {
                        log::warn!("patch: {}", e);
                        Some(Event::Marked(Err(MarkError::Patch(e))))
                    } else {
                        let opts = floor.verify_options(ctx.keys, Some(ctx.slot_size));
                        let r = up.finish(&opts, buf);
                        match &r {
                            Ok(i) => log::info!("verify: OK, SHA-256 {:02x?}..., marked for install", &i.digest[..4]),
                            Err(e) => log::warn!("verify: {}", e),
                        }
                        Some(Event::Marked(r.map(|_| ()).map_err(|e| match e {
                            UpdateError::Image(i) => MarkError::Image(i),
                            _ => MarkError::Flash,
                        })))
                    }
                }
                Action::Reset => {
                    log::info!("reset");
                    return Some(Exit::Reset);
                }
                Action::ModuleUpdate { module, url } => {
                    log::info!("module {}: update from {}", module, redact(url));
                    match module_dev.update(url).await {
                        Ok(()) => None,
                        Err(()) => Some(Event::ModuleDone(Err(ModuleError::Refused))),
                    }
                }
                Action::Revert => {
                    // A request torn by a power cut still reads as one; a failed one leaves the
                    // image its remaining boot attempts.
                    let ok = request_revert(up.state(), buf).is_ok();
                    log::warn!("broken image: revert {}, reset", if ok { "asked" } else { "request FAILED" });
                    return Some(Exit::Reset);
                }
            };
            if let Some(ev) = ev {
                m.handle(clock.now(), ev);
            }
        }
    }
}

/// Bytes of flash work between two [`Module::ahead`] calls (on an nRF52840 about 5 ms of
/// programming, 90 ms when it starts a page's erase).
const AHEAD_SLICE: usize = 512;

/// Writes `bytes` at `offset` in slices, letting the module ask for the next bytes before each:
/// the line carries them while the flash is busy.
async fn write_ahead<D: NorFlash, S: NorFlash, M: Module>(
    up: &mut Updater<D, S>,
    module: &mut M,
    offset: u32,
    bytes: &[u8],
) -> Result<(), UpdateError> {
    let mut at = offset;
    for slice in bytes.chunks(AHEAD_SLICE) {
        module.ahead().await;
        up.write(at, slice)?;
        at += slice.len() as u32;
    }
    Ok(())
}

/// The URL without its query (pre-signed URLs carry credentials).
fn redact(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::sim::SimFlash;

    /// A module that counts the calls of `ahead`.
    struct Counting(usize);

    impl Module for Counting {
        fn name(&self) -> Option<&str> {
            None
        }
        fn max_url(&self) -> u16 {
            0
        }
        fn version(&self) -> Option<heapless::String<64>> {
            None
        }
        async fn update(&mut self, _url: &str) -> Result<(), ()> {
            Err(())
        }
        fn poll(&mut self) -> Option<ModuleNews> {
            None
        }
        async fn next(&mut self) -> ModuleNews {
            core::future::pending().await
        }
        async fn ahead(&mut self) {
            self.0 += 1;
        }
    }

    #[test]
    fn a_block_is_written_in_slices_with_the_module_asked_ahead_before_each() {
        let dfu = SimFlash::<4096, 4>::new(3 * 4096, 0xFF);
        let state = SimFlash::<4096, 4>::new(4096, 0xFF);
        let mut up = Updater::new(FirmwareUpdaterConfig { dfu, state }, 0);
        let block: std::vec::Vec<u8> = (0..5121u32).map(|i| (i * 7) as u8).collect();
        let mut m = Counting(0);
        embassy_futures::block_on(write_ahead(&mut up, &mut m, 0, &block)).unwrap();
        assert_eq!(m.0, 5121usize.div_ceil(AHEAD_SLICE), "once before each slice");
        up.flush().unwrap();
        let mut back = std::vec![0u8; 5121];
        up.dfu().read(0, &mut back).unwrap();
        assert_eq!(back, block, "the slices make the block");
        assert_eq!(
            embassy_futures::block_on(write_ahead(&mut up, &mut m, 0, &block)),
            Err(UpdateError::NotSequential { expected: 5121, got: 0 }),
            "a write elsewhere is refused as before"
        );
    }
}
