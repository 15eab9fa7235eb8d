//! A Quectel-style AT modem below the MQTT client and the HTTP(S) downloads (EC200/EC800/BG95
//! class): bring-up, then sockets in *buffer access mode*, several at once beside the command
//! channel, so the MQTT session keeps its keep-alive while a download runs on a second socket,
//! and the module's own firmware update (`AT+QFOTADL`) reports its URCs while MQTT goes on.
//! Board-independent: any embedded-io-async byte stream (a UART; on the host board, a TCP
//! connection to the modem simulator) and the board's [`Clock`].
//!
//! ```text
//! AT          OK              (retried: the modem may still be booting, or in data mode)
//! ATE0        OK
//! AT+CPIN?    +CPIN: READY
//! AT+CEREG?   +CEREG: 0,1|5   (LTE; else AT+CREG? for 2G/3G), polled until registered
//! AT+QICSGP=1,1,"apn","","",1 OK
//! AT+QIACT?   +QIACT: 1,...   (else AT+QIDEACT=1, then AT+QIACT=1, up to 150 s)
//! AT+QGMR     <module firmware version>   (URCs and an echo before it skipped by shape)
//! AT+QIOPEN=1,0,"TCP","host",port,0,0     OK, then +QIOPEN: 0,0   (AT+QSSLOPEN=1,1,0,... for TLS)
//! ```
//!
//! Sockets (ids: [`MQTT`] = 0, [`DOWNLOAD`] = 1): the module buffers what arrives and says
//! `+QIURC: "recv",<id>` (`+QSSLURC` for TLS) once until that buffer is read empty; the driver
//! reads with `AT+QIRD=<id>,<n>` (`+QIRD: <n>`, n raw bytes, `OK`; `AT+QSSLRECV`) and sends with
//! `AT+QISEND=<id>,<n>`, the `> ` prompt, n bytes, `SEND OK` (`AT+QSSLSEND`). `"closed"` URCs end
//! a socket (what it buffered can still be read); `RDY` is a module that restarted.
//!
//! A real module's manners (Quectel TCP/IP Application Note; each has a test against the
//! simulator's `--realistic` mode): a socket is read until `+QIRD: 0` (a read may return less
//! than the module holds, and `recv` comes again only after the buffer was read empty); `SEND
//! FAIL` (the module did not take the data) sends the same bytes again after 300 ms, three times
//! at most, then the socket is given up and the session rebuilt; after `+QIURC: "pdpdeact"` the
//! context is deactivated (`AT+QIDEACT=1`) before it is activated again; `RDY` fails the command
//! on the way at once (the module never got it) and the link is brought up again.
//!
//! Concurrency: [`Modem`] is a state machine whose every field survives a cancelled future.
//! [`Modem::step`] does one thing (write some queued bytes, or start the read a `recv` URC asked
//! for, or read the UART and parse what came); whoever holds the modem steps it, and what it
//! parses lands where it belongs (the other socket's buffer, the FOTA URC queue). The driver
//! shares the modem through an async mutex ([`Shared`]) between the MQTT socket, the download
//! and the module-update watcher, each taking the lock for one step at a time.
//!
//! For TLS with a CA: `AT+QFUPL="UFS:<file>",<len>,10` (CONNECT, the PEM, `+QFUPL: <len>,..`),
//! then `AT+QSSLCFG` sslversion / ciphersuite / seclevel 1 / cacert / sni on the SSL context:
//! context 1 for the broker, context 2 for downloads (each verified with its own CA).
//!
//! Recovery: a new [`Modem::open`] after the MQTT session failed leaves data mode if the modem
//! does not answer `AT` (a firmware of before buffer mode may have left it there: 1 s guard,
//! `+++`, 1 s guard), closes the old sockets and brings the link up from the top.

use crate::driver::Clock;
use embassy_futures::select::{select, Either};
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_sync::mutex::Mutex;
use embedded_io_async::{ErrorType, Read, Write};
use heapless::{Deque, String, Vec};
use shared::time::{Duration, Instant};

/// The socket id of the MQTT session.
pub const MQTT: usize = 0;
/// The socket id of HTTP(S) downloads.
pub const DOWNLOAD: usize = 1;
/// Bytes buffered per socket on our side (one `AT+QIRD` fills at most this).
pub const SOCK_BUF: usize = 6144;
/// Most bytes per `AT+QISEND` (Quectel's limit).
pub const SEND_MAX: usize = 1460;
/// Sends of the same bytes after `SEND FAIL`, and the wait before each.
const SEND_RETRIES: u32 = 3;
const SEND_RETRY_WAIT: Duration = Duration::from_millis(300);
/// `want` of a command whose answer has no prefix (`AT+QGMR`): see [`bare_answer`].
const BARE: &str = "";
/// The longest the module may leave a read, a send or an internal close unanswered before it
/// is given up (a live module answers them in well under a second).
const STALL: Duration = Duration::from_secs(10);
/// Silence that ends what a cut-short transaction still had on the way.
const QUIET: Duration = Duration::from_millis(300);
/// How long a probe waits for `AT`'s OK (a module at another rate never answers).
const PROBE_MS: u64 = 300;
/// Most bytes asked for per `AT+QIRD` (Quectel's limit).
const READ_MAX: usize = 1500;
/// Most things [`Modem::ahead`] does at once.
const AHEAD_STEPS: usize = 16;
/// A line from the module (URC, answer): longer ones are noise, dropped.
const RX: usize = 256;
/// One command line (the longest: `AT+QFOTADL="<255-byte URL>"`).
const CMD: usize = 300;

/// The longest a user of the shared modem holds it while waiting for the UART.
pub const SLICE: Duration = Duration::from_millis(50);

/// The modem shared by the MQTT socket, the download and the module-update watcher.
pub type Shared<U> = Mutex<NoopRawMutex, Modem<U>>;

/// A module's UART rate at power-on until `AT+IPR` changed it (Quectel's default).
pub const POWER_ON_RATE: u32 = 115_200;

/// A UART whose line rate the modem driver sets (to find the module, then to raise the rate).
pub trait LineRate {
    /// Runs the line at `baud` from now on (bytes in flight may arrive as garbage).
    fn set_rate(&mut self, baud: u32);
}

/// What the modem driver needs of the module's UART: bytes both ways and a settable rate.
pub trait ModemUart: Read + Write + LineRate {}
impl<T: Read + Write + LineRate> ModemUart for T {}

/// The board's side of the module's UART.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UartConfig {
    /// The rate to run the module at (`AT+IPR`), the fastest both sides support.
    pub rate: u32,
    /// The board wires RTS/CTS to the module: ask the module for hardware flow control
    /// (`AT+IFC=2,2`), without which a fast line overruns a busy receiver.
    pub rtscts: bool,
}

/// Where to connect, and how long to wait.
pub struct ModemConfig<'a> {
    /// The module's UART (rate, flow control).
    pub uart: UartConfig,
    pub apn: &'a str,
    pub host: &'a str,
    pub port: u16,
    pub tls: bool,
    /// How long to wait for network registration.
    pub register_timeout: Duration,
    /// With `tls`: the CA (PEM) the module must verify the broker with. Uploaded once per
    /// power-on (`AT+QFUPL`, as `UFS:ota-ca.pem`) and set on SSL context 1 with security level 1
    /// (verify the server). `None` leaves context 1 as the module has it (by default it does not
    /// verify the server).
    pub ca: Option<&'a [u8]>,
}

/// The module file the broker's CA is uploaded to.
const CA_FILE: &str = "UFS:ota-ca.pem";
/// The module file the download hosts' CA is uploaded to.
const PKG_CA_FILE: &str = "UFS:pkg-ca.pem";

/// Why the link could not be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModemError {
    /// The UART failed.
    Io,
    /// No answer to `cmd` in time.
    Timeout(&'static str),
    /// `cmd` answered ERROR (or a failure result).
    Refused(&'static str),
    /// The SIM is missing or locked.
    NoSim,
    /// Not registered on the network in time.
    NotRegistered,
    /// The module restarted (`RDY`) while a command was out: it never got it.
    Restarted,
    /// The module could not open the socket (`+QIOPEN` / `+QSSLOPEN` error code: for TLS, a
    /// handshake the CA does not cover is one).
    Socket(i32),
}

impl core::fmt::Display for ModemError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ModemError::Io => f.write_str("modem UART error"),
            ModemError::Timeout(c) => write!(f, "modem: no answer to {c}"),
            ModemError::Refused(c) => write!(f, "modem: {c} failed"),
            ModemError::NoSim => f.write_str("modem: SIM missing or locked (AT+CPIN? is not READY)"),
            ModemError::NotRegistered => f.write_str("modem: not registered on the network"),
            ModemError::Socket(e) => write!(f, "modem: the socket did not open (error {e})"),
            ModemError::Restarted => f.write_str("modem: the module restarted (RDY)"),
        }
    }
}

/// What the module says about an update of its own firmware (`+QIND: "FOTA",...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FotaUrc {
    /// `"HTTPSTART"`: the download began.
    HttpStart,
    /// `"DOWNLOADING",<percent>`
    Downloading(u8),
    /// `"HTTPEND",<err>`: the download ended (0: complete).
    HttpEnd(u16),
    /// `"START"`: the install began.
    Start,
    /// `"UPDATING",<percent>`
    Updating(u8),
    /// `"END",<err>`: the install ended (0: done, the module restarts).
    End(u16),
    /// `RDY`: the module (re)started.
    Ready,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SendStage {
    /// The command is out; waiting for `> `.
    Prompt,
    /// Writing the data.
    Body,
    /// Waiting for `SEND OK`.
    Result,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Txn {
    Idle,
    /// A command; `want`: the prefix of the answer line to keep (`Some("")`: the first line).
    Cmd {
        want: Option<&'static str>,
        got: bool,
        internal: bool,
    },
    /// `AT+QIRD` / `AT+QSSLRECV` of `asked` bytes; `left`: raw bytes still to come.
    Read {
        s: usize,
        asked: usize,
        left: Option<usize>,
    },
    Send {
        s: usize,
        stage: SendStage,
    },
}

/// One socket as we see it.
struct Sock {
    /// Open (or opening) on the module: its id is in use until closed.
    used: bool,
    ssl: bool,
    /// A `recv` URC came and the module's buffer has not been read empty since.
    pending: bool,
    /// The far end closed (or the module restarted): what is buffered is the rest.
    closed: bool,
    /// The `+QIOPEN` / `+QSSLOPEN` result.
    opened: Option<i32>,
    /// To be closed when the command channel is free (data that still comes is dropped).
    close: bool,
    /// Its `AT+QICLOSE` is out: the id stays taken until the module answers, and URCs that
    /// still come for it (a `"closed"` sent before the module read the command) are the old
    /// connection's, never the next one's.
    closing: bool,
    buf: [u8; SOCK_BUF],
    at: usize,
    len: usize,
}

impl Sock {
    const fn new() -> Self {
        Sock {
            used: false,
            ssl: false,
            pending: false,
            closed: false,
            opened: None,
            close: false,
            closing: false,
            buf: [0; SOCK_BUF],
            at: 0,
            len: 0,
        }
    }
    fn reset(&mut self) {
        self.used = false;
        self.ssl = false;
        self.pending = false;
        self.closed = false;
        self.opened = None;
        self.close = false;
        self.closing = false;
        self.at = 0;
        self.len = 0;
    }
}

/// The modem on its UART: the bring-up, two sockets in buffer access mode, the module's FOTA.
pub struct Modem<U> {
    uart: U,
    /// Bytes read and not yet parsed.
    rx: [u8; RX],
    len: usize,
    /// The command being written, and how much of it is out.
    tx: Vec<u8, CMD>,
    tx_at: usize,
    /// The data of the send in progress.
    send: Vec<u8, SEND_MAX>,
    send_at: usize,
    txn: Txn,
    /// When a step first saw the transaction in progress (`None`: not seen yet).
    txn_since: Option<Instant>,
    /// The outcome of the last command / send (kept until the next one starts).
    outcome: Option<bool>,
    sent: Option<bool>,
    /// The last send's failure was `SEND FAIL` (the module did not take the data), not `ERROR`.
    send_fail: bool,
    /// The module restarted (`RDY`) while the last command was out.
    restarted: bool,
    /// The kept answer line of the last command.
    info: String<64>,
    /// `CONNECT` came (a file upload waits for it).
    connect: bool,
    socks: [Sock; 2],
    fota: Deque<FotaUrc, 8>,
    /// The CAs are in the module's file system (since its last start).
    ca_uploaded: bool,
    pkg_ca_uploaded: bool,
    /// The module's firmware version (`AT+QGMR`), read at each bring-up.
    version: String<64>,
    /// The rate the UART runs at (0: not set by the driver yet).
    rate: u32,
}

impl<U: ModemUart> Modem<U> {
    pub fn new(uart: U) -> Self {
        Modem {
            uart,
            rx: [0; RX],
            len: 0,
            tx: Vec::new(),
            tx_at: 0,
            send: Vec::new(),
            send_at: 0,
            txn: Txn::Idle,
            txn_since: None,
            outcome: None,
            sent: None,
            send_fail: false,
            restarted: false,
            info: String::new(),
            connect: false,
            socks: [Sock::new(), Sock::new()],
            fota: Deque::new(),
            ca_uploaded: false,
            pkg_ca_uploaded: false,
            version: String::new(),
            rate: 0,
        }
    }

    /// The UART's rate now (0 before the first bring-up).
    #[cfg(test)]
    fn rate(&self) -> u32 {
        self.rate
    }

    fn set_rate(&mut self, baud: u32) {
        if self.rate != baud {
            log::info!("modem: UART at {} baud", baud);
            self.uart.set_rate(baud);
            self.rate = baud;
        }
        // What came at the old rate is noise.
        self.len = 0;
    }

    /// Whether the module answers `AT` at the UART's rate now (two tries).
    async fn answers<C: Clock>(&mut self, clock: &C) -> bool {
        for _ in 0..2 {
            if self.command(clock, "AT", None, PROBE_MS).await.is_ok() {
                return true;
            }
        }
        false
    }

    /// Finds the module and brings the line to `cfg.rate`: however either side was reset, the
    /// module runs at the rate it last ran at (it did not restart), at the rate it stored, or at
    /// its power-on default; the device at whatever it was last set to. So it probes the rate
    /// now, then `cfg.rate`, then [`POWER_ON_RATE`] (and a module left in data mode by an old
    /// firmware, after `+++`). Found at another rate than `cfg.rate`, it asks the module for it
    /// (`AT+IPR`; the OK comes at the old rate), follows, and checks with `AT`; a module that
    /// did not follow (it restarted in between, or refused the rate) is looked for again, three
    /// rounds at most, and a rate the module refuses (`ERROR`) is given up for the one that
    /// works. Never `AT&W`: a module that powers on at its default stays reachable by any
    /// firmware (one that stores `AT+IPR` by itself is found by the probe of `cfg.rate`).
    async fn find<C: Clock>(&mut self, clock: &C, cfg: &UartConfig) -> Result<(), ModemError> {
        for _round in 0..3 {
            let now = if self.rate == 0 { cfg.rate } else { self.rate };
            let mut found = None;
            for (i, &r) in [now, cfg.rate, POWER_ON_RATE].iter().enumerate() {
                if [now, cfg.rate][..i].contains(&r) {
                    continue;
                }
                self.set_rate(r);
                if self.answers(clock).await {
                    found = Some(r);
                    break;
                }
            }
            if found != Some(now) {
                // Not where it was: it restarted (its contexts and files with it) or was reset.
                self.gone();
            }
            if found.is_none() {
                // A module still in data mode (a transparent link of an older firmware).
                for r in [cfg.rate, POWER_ON_RATE] {
                    self.set_rate(r);
                    self.escape(clock).await?;
                    if self.answers(clock).await {
                        found = Some(r);
                        break;
                    }
                }
            }
            let Some(at) = found else {
                continue;
            };
            if at == cfg.rate {
                return Ok(());
            }
            let mut cmd: String<24> = String::new();
            write(&mut cmd, format_args!("AT+IPR={}", cfg.rate))?;
            match self.command(clock, &cmd, None, 1000).await {
                Ok(_) => {
                    self.set_rate(cfg.rate);
                    // The module switches after its OK; give it a moment.
                    clock.sleep_until(clock.now() + Duration::from_millis(50)).await;
                    if self.answers(clock).await {
                        return Ok(());
                    }
                }
                Err(ModemError::Refused(_)) => {
                    log::warn!("modem: the module refuses {} baud; staying at {}", cfg.rate, at);
                    return Ok(());
                }
                Err(_) => {}
            }
        }
        Err(ModemError::Timeout("AT"))
    }

    /// The module's firmware version as the last bring-up read it (empty if it did not answer).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Activates PDP context 1 unless it is active. A context the network deactivated
    /// (`+QIURC: "pdpdeact"`) must be deactivated by the host before `AT+QIACT` can succeed
    /// again (Quectel TCP/IP Application Note, "pdpdeact"); on a context that is simply down,
    /// `AT+QIDEACT=1` is a harmless OK. So it always comes first.
    async fn activate<C: Clock>(&mut self, clock: &C) -> Result<(), ModemError> {
        if self.command(clock, "AT+QIACT?", Some("+QIACT: 1,"), 5000).await.is_ok() {
            return Ok(());
        }
        let _ = self.command(clock, "AT+QIDEACT=1", None, 40_000).await;
        self.command(clock, "AT+QIACT=1", None, 150_000).await.map_err(|_| ModemError::Refused("AT+QIACT=1"))?;
        Ok(())
    }

    /// Reads the module's firmware version: `AT+QGMR`'s answer has no prefix, so URCs and an
    /// echo before it are skipped by their shape (see [`bare_answer`]); none: unknown (empty).
    async fn read_version<C: Clock>(&mut self, clock: &C) {
        self.version = self.command(clock, "AT+QGMR", Some(BARE), 5000).await.unwrap_or_default();
    }

    /// Brings the modem up and opens the MQTT socket ([`MQTT`]).
    pub async fn open<C: Clock>(&mut self, clock: &C, cfg: &ModemConfig<'_>) -> Result<(), ModemError> {
        if self.txn != Txn::Idle {
            // A read or command was cut short (the session failed in the middle of it): the
            // rest of its answer is still on the way, and an `OK` of it taken for the next
            // command's would put every answer after it one command late.
            self.settle(clock).await?;
        }
        self.len = 0;
        self.tx.clear();
        self.tx_at = 0;
        self.txn = Txn::Idle;
        for s in self.socks.iter_mut() {
            s.reset();
        }
        self.find(clock, &cfg.uart).await?;
        self.command(clock, "ATE0", None, 1000).await?;
        if cfg.uart.rtscts {
            // Some modules have no such setting: flow control is then the module's default.
            let _ = self.command(clock, "AT+IFC=2,2", None, 1000).await;
        }
        // The sockets of a previous session (harmless when there are none).
        for c in ["AT+QICLOSE=0", "AT+QSSLCLOSE=0", "AT+QICLOSE=1", "AT+QSSLCLOSE=1"] {
            let _ = self.command(clock, c, None, 10_000).await;
        }
        self.command(clock, "AT+CPIN?", Some("+CPIN: READY"), 5000).await.map_err(|e| match e {
            ModemError::Io => ModemError::Io,
            _ => ModemError::NoSim,
        })?;
        self.register(clock, cfg.register_timeout).await?;
        let mut cmd: String<CMD> = String::new();
        write(&mut cmd, format_args!("AT+QICSGP=1,1,\"{}\",\"\",\"\",1", cfg.apn))?;
        self.command(clock, &cmd, None, 5000).await.map_err(|_| ModemError::Refused("AT+QICSGP"))?;
        self.activate(clock).await?;
        self.read_version(clock).await;
        if cfg.tls {
            if let Some(ca) = cfg.ca {
                if !self.ca_uploaded {
                    self.upload(clock, CA_FILE, ca).await?;
                    self.ca_uploaded = true;
                }
                self.context(clock, 1, CA_FILE).await?;
            }
        }
        let ssl = cfg.tls.then_some(1);
        self.open_socket(clock, MQTT, ssl, cfg.host, cfg.port, Duration::from_secs(150)).await
    }

    /// Has SSL context `ctx` verify the server with the CA in `file`, and send SNI.
    async fn context<C: Clock>(&mut self, clock: &C, ctx: u8, file: &str) -> Result<(), ModemError> {
        let mut cmd: String<CMD> = String::new();
        for (opt, val) in [("sslversion", "4"), ("ciphersuite", "0XFFFF"), ("seclevel", "1"), ("sni", "1")] {
            cmd.clear();
            write(&mut cmd, format_args!("AT+QSSLCFG=\"{opt}\",{ctx},{val}"))?;
            self.command(clock, &cmd, None, 5000).await?;
        }
        cmd.clear();
        write(&mut cmd, format_args!("AT+QSSLCFG=\"cacert\",{ctx},\"{file}\""))?;
        self.command(clock, &cmd, None, 5000).await.map(|_| ())
    }

    /// Sets up SSL context 2 for downloads, verified with `ca` (uploaded once per module start).
    pub async fn download_context<C: Clock>(&mut self, clock: &C, ca: &[u8]) -> Result<(), ModemError> {
        if !self.pkg_ca_uploaded {
            self.upload(clock, PKG_CA_FILE, ca).await?;
            self.pkg_ca_uploaded = true;
            self.context(clock, 2, PKG_CA_FILE).await?;
        }
        Ok(())
    }

    /// Writes `bytes` to the module file `name` (`AT+QFUPL`).
    async fn upload<C: Clock>(&mut self, clock: &C, name: &str, bytes: &[u8]) -> Result<(), ModemError> {
        let mut cmd: String<CMD> = String::new();
        write(&mut cmd, format_args!("AT+QFDEL=\"{name}\""))?;
        let _ = self.command(clock, &cmd, None, 5000).await;
        cmd.clear();
        write(&mut cmd, format_args!("AT+QFUPL=\"{}\",{},10", name, bytes.len()))?;
        let deadline = clock.now() + Duration::from_secs(10);
        self.idle(clock, deadline, "AT+QFUPL").await?;
        self.begin(&cmd, Some("+QFUPL: "), false);
        while !self.connect {
            if self.txn == Txn::Idle {
                return Err(ModemError::Refused("AT+QFUPL"));
            }
            self.step(clock, Some(deadline)).await.map_err(|e| e.named("AT+QFUPL"))?;
        }
        self.uart.write_all(bytes).await.map_err(|_| ModemError::Io)?;
        self.uart.flush().await.map_err(|_| ModemError::Io)?;
        // "+QFUPL: <size>,<checksum>" then OK.
        self.finish(clock, deadline, "AT+QFUPL").await?;
        let size = self.info.split(',').next().and_then(|s| s.trim().parse::<usize>().ok());
        if size != Some(bytes.len()) {
            return Err(ModemError::Refused("AT+QFUPL"));
        }
        Ok(())
    }

    /// Opens socket `s` to `host:port` (TLS on SSL context `ssl`), buffer access mode.
    pub async fn open_socket<C: Clock>(
        &mut self,
        clock: &C,
        s: usize,
        ssl: Option<u8>,
        host: &str,
        port: u16,
        within: Duration,
    ) -> Result<(), ModemError> {
        let deadline = clock.now() + within;
        let what = if ssl.is_some() { "AT+QSSLOPEN" } else { "AT+QIOPEN" };
        // The id is busy until the module closed it.
        while self.socks[s].used {
            self.socks[s].close |= !self.socks[s].closing;
            self.step(clock, Some(deadline)).await.map_err(|e| e.named(what))?;
        }
        let mut cmd: String<CMD> = String::new();
        match ssl {
            Some(ctx) => write(&mut cmd, format_args!("AT+QSSLOPEN=1,{ctx},{s},\"{host}\",{port},0"))?,
            None => write(&mut cmd, format_args!("AT+QIOPEN=1,{s},\"TCP\",\"{host}\",{port},0,0"))?,
        }
        self.socks[s].reset();
        self.socks[s].used = true;
        self.socks[s].ssl = ssl.is_some();
        if let Err(e) = self.command(clock, &cmd, None, 10_000).await {
            self.socks[s].used = false;
            return Err(e);
        }
        loop {
            if let Some(code) = self.socks[s].opened {
                if code != 0 {
                    // Failed: the id is free again.
                    self.socks[s].reset();
                    return Err(ModemError::Socket(code));
                }
                return Ok(());
            }
            if let Err(e) = self.step(clock, Some(deadline)).await {
                self.socks[s].close = true;
                return Err(e.named(what));
            }
        }
    }

    /// Asks socket `s` to close (done as soon as the command channel is free).
    pub fn close_socket(&mut self, s: usize) {
        if self.socks[s].used {
            self.socks[s].close = true;
        }
    }

    /// Hands the module an URL to update its own firmware from (`AT+QFOTADL`); its progress
    /// comes as [`FotaUrc`]s ([`Modem::next_fota`]).
    pub async fn start_fota<C: Clock>(&mut self, clock: &C, url: &str) -> Result<(), ModemError> {
        let mut cmd: String<CMD> = String::new();
        write(&mut cmd, format_args!("AT+QFOTADL=\"{url}\""))?;
        self.fota.clear();
        self.command(clock, &cmd, None, 10_000).await.map(|_| ())
    }

    /// The next FOTA URC parsed, if any.
    pub fn next_fota(&mut self) -> Option<FotaUrc> {
        self.fota.pop_front()
    }

    /// Bytes buffered for socket `s`: `Some(Ok(n))` copied into `out`, `Some(Err)` when it
    /// ended (closed and drained, or never open), `None` when more has to be read first.
    pub fn take(&mut self, s: usize, out: &mut [u8]) -> Option<Result<usize, LinkError>> {
        let k = &mut self.socks[s];
        if k.len > 0 {
            let n = k.len.min(out.len());
            out[..n].copy_from_slice(&k.buf[k.at..k.at + n]);
            k.at += n;
            k.len -= n;
            if k.len == 0 {
                k.at = 0;
            }
            return Some(Ok(n));
        }
        // Read empty after the far end closed: the end, unless the last read's data is still on
        // its way over the UART (its `+QIRD: <n>` line came, its bytes not yet).
        let reading = matches!(self.txn, Txn::Read { s: r, .. } if r == s);
        if !k.used || k.close || k.closing || (k.closed && !k.pending && !reading) {
            return Some(Err(LinkError::Dropped));
        }
        None
    }

    /// Starts sending (part of) `data` on socket `s` if the command channel is free; returns
    /// the bytes taken.
    fn start_send(&mut self, s: usize, data: &[u8]) -> Option<usize> {
        if self.txn != Txn::Idle || self.tx_at < self.tx.len() {
            return None;
        }
        let n = data.len().min(SEND_MAX);
        self.send.clear();
        let _ = self.send.extend_from_slice(&data[..n]);
        self.send_at = 0;
        self.sent = None;
        let mut cmd: String<48> = String::new();
        let verb = if self.socks[s].ssl { "AT+QSSLSEND" } else { "AT+QISEND" };
        let _ = core::fmt::Write::write_fmt(&mut cmd, format_args!("{verb}={s},{n}"));
        self.queue(&cmd);
        self.txn = Txn::Send { s, stage: SendStage::Prompt };
        Some(n)
    }

    /// Sends `data` on socket `s` (at most [`SEND_MAX`] bytes of it: the count is returned).
    /// A send that fails ends the socket: the bytes may be half out (a hole in the stream), or
    /// the module no longer answers (it restarted, at its power-on rate the device cannot hear):
    /// either way the session is rebuilt, and the bring-up finds the module again.
    pub async fn send_on<C: Clock>(&mut self, clock: &C, s: usize, data: &[u8]) -> Result<usize, LinkError> {
        let r = self.send_tries(clock, s, data).await;
        if r.is_err() {
            self.socks[s].closed = true;
        }
        r
    }

    async fn send_tries<C: Clock>(&mut self, clock: &C, s: usize, data: &[u8]) -> Result<usize, LinkError> {
        let deadline = clock.now() + Duration::from_secs(20);
        for attempt in 0..=SEND_RETRIES {
            let k = &self.socks[s];
            if k.closed || !k.used || k.close || k.closing {
                return Err(LinkError::Dropped);
            }
            let n = loop {
                if let Some(n) = self.start_send(s, data) {
                    break n;
                }
                self.step(clock, Some(deadline)).await.map_err(LinkError::from)?;
            };
            while self.sent.is_none() {
                self.step(clock, Some(deadline)).await.map_err(LinkError::from)?;
            }
            if self.sent == Some(true) {
                return Ok(n);
            }
            if !self.send_fail || attempt == SEND_RETRIES {
                break;
            }
            // `SEND FAIL`: the module did not take the data (its send buffer is full). The same
            // bytes again after a short wait: never a hole in the stream. (In buffer access mode
            // the module sends nothing but short URCs unasked: the UART can wait that long.)
            log::warn!("modem: SEND FAIL on socket {}, sending again", s);
            clock.sleep_until(clock.now() + SEND_RETRY_WAIT).await;
        }
        // Refused again and again, or an error: the socket is no use; the session is rebuilt.
        Err(LinkError::Dropped)
    }

    /// Sends `cmd`, waits for OK (or ERROR); returns the answer line that starts with `want`
    /// (without that prefix), which must come when `want` is given.
    async fn command<C: Clock>(
        &mut self,
        clock: &C,
        cmd: &str,
        want: Option<&'static str>,
        ms: u64,
    ) -> Result<String<64>, ModemError> {
        let name = static_name(cmd);
        let deadline = clock.now() + Duration::from_millis(ms);
        self.idle(clock, deadline, name).await?;
        self.begin(cmd, want, false);
        self.finish(clock, deadline, name).await?;
        Ok(self.info.clone())
    }

    /// Queues command `cmd` (the channel is idle).
    fn begin(&mut self, cmd: &str, want: Option<&'static str>, internal: bool) {
        self.outcome = None;
        self.restarted = false;
        self.info.clear();
        self.connect = false;
        self.queue(cmd);
        self.txn = Txn::Cmd { want, got: false, internal };
        self.txn_since = None;
    }

    /// The module restarted (or may have: it stopped answering): its sockets, SSL contexts and
    /// (we assume) files are gone. Every socket ends, so the session is rebuilt; the CAs are
    /// uploaded and the contexts set again.
    fn gone(&mut self) {
        self.socks.iter_mut().for_each(|k| k.closed = true);
        self.ca_uploaded = false;
        self.pkg_ca_uploaded = false;
    }

    /// Whether the transaction in progress is one [`Modem::stalled`] gives up.
    fn stallable(&self) -> bool {
        !matches!(self.txn, Txn::Idle | Txn::Cmd { internal: false, .. })
    }

    /// Gives up a read, send or internal close the module has not answered for [`STALL`]: it
    /// restarted at a rate the device does not hear, or lost the command. A read or send ends
    /// its socket (the session is rebuilt, the bring-up finds the module). (A caller's command
    /// has its own deadline.)
    fn stalled(&mut self, now: Instant) {
        if !self.stallable() {
            self.txn_since = None;
            return;
        }
        let since = *self.txn_since.get_or_insert(now);
        if now < since + STALL {
            return;
        }
        log::warn!("modem: no answer in {} s; giving the command up", STALL.as_millis() / 1000);
        match self.txn {
            Txn::Read { s, .. } | Txn::Send { s, .. } => {
                let k = &mut self.socks[s];
                (k.closed, k.pending) = (true, false);
                self.sent = Some(false);
            }
            // A close: the id is free again (a module that hears again has no such socket, or
            // answers the next open of the id with 563, in use, and the session is rebuilt).
            _ => self.socks.iter_mut().filter(|k| k.closing).for_each(Sock::reset),
        }
        self.txn = Txn::Idle;
        self.txn_since = None;
        self.tx.clear();
        self.tx_at = 0;
        self.len = 0;
    }

    /// Steps until the command channel is free.
    async fn idle<C: Clock>(&mut self, clock: &C, deadline: Instant, name: &'static str) -> Result<(), ModemError> {
        while self.txn != Txn::Idle || self.tx_at < self.tx.len() {
            self.step(clock, Some(deadline)).await.map_err(|e| e.named(name))?;
        }
        Ok(())
    }

    /// Steps until the command queued by `begin` ended; Ok if it answered OK (with its line).
    async fn finish<C: Clock>(&mut self, clock: &C, deadline: Instant, name: &'static str) -> Result<(), ModemError> {
        while self.outcome.is_none() {
            if let Err(e) = self.step(clock, Some(deadline)).await {
                // Forget the command: a late answer is taken for a URC or noise.
                self.txn = Txn::Idle;
                if let ModemError::Timeout(_) = e {
                    // Not even an ERROR: the module is gone, or restarted at a rate the device
                    // does not hear. The session is rebuilt and the bring-up finds the module.
                    self.gone();
                }
                return Err(e.named(name));
            }
        }
        match self.outcome {
            Some(true) => Ok(()),
            _ if self.restarted => Err(ModemError::Restarted),
            _ => Err(ModemError::Refused(name)),
        }
    }

    fn queue(&mut self, cmd: &str) {
        log::trace!("AT> {}", cmd);
        self.tx.clear();
        self.tx_at = 0;
        // V.25ter: a command ends with S3 (CR) alone.
        let _ = self.tx.extend_from_slice(cmd.as_bytes());
        let _ = self.tx.push(b'\r');
    }

    /// Does one thing: parses what was read, writes queued bytes, starts a pending close or
    /// read, or reads the UART (until `deadline`, if given). Every field it changes is kept, so
    /// a future dropped in here loses nothing.
    pub async fn step<C: Clock>(&mut self, clock: &C, deadline: Option<Instant>) -> Result<(), ModemError> {
        self.parse();
        self.stalled(clock.now());
        if self.start().await? {
            return Ok(());
        }
        if self.len == RX {
            self.len = 0; // a line longer than any answer: noise
        }
        let len = self.len;
        // Wait for the caller's deadline, or until a read, send or close in progress stalls
        // (then it is given up and the caller goes on).
        let stall = self.txn_since.filter(|_| self.stallable()).map(|t| t + STALL);
        let until = match (deadline, stall) {
            (Some(d), Some(s)) if s < d => Some((s, true)),
            (Some(d), _) => Some((d, false)),
            (None, s) => s.map(|s| (s, true)),
        };
        let n = match until {
            None => self.uart.read(&mut self.rx[len..]).await.map_err(|_| ModemError::Io)?,
            Some((t, stalls)) => match select(self.uart.read(&mut self.rx[len..]), clock.sleep_until(t)).await {
                Either::First(r) => r.map_err(|_| ModemError::Io)?,
                Either::Second(()) if stalls => {
                    self.stalled(clock.now());
                    return Ok(());
                }
                Either::Second(()) => return Err(ModemError::Timeout("AT")),
            },
        };
        if n == 0 {
            return Err(ModemError::Io);
        }
        self.len += n;
        self.parse();
        Ok(())
    }

    /// Moves on what needs no waiting, without waiting for the module: writes what is queued,
    /// asks for the bytes a socket holds (when its buffer has room), takes what the UART already
    /// received. Called between slices of flash work, so that the module's answer crosses the
    /// line into the UART's receive buffer while the CPU programs flash (an nRF52840's CPU
    /// stalls while its flash erases or programs; the UART's DMA does not).
    /// A UART error here ends the sockets, as it ends the session when a step meets it (a UART
    /// may report an overrun once only, and bytes lost inside a read's data would go unnoticed).
    pub async fn ahead<C: Clock>(&mut self, clock: &C) -> Result<(), ModemError> {
        let r = self.ahead_steps(clock).await;
        if r.is_err() {
            self.socks.iter_mut().for_each(|k| (k.closed, k.pending) = (true, false));
        }
        r
    }

    async fn ahead_steps<C: Clock>(&mut self, clock: &C) -> Result<(), ModemError> {
        for _ in 0..AHEAD_STEPS {
            self.parse();
            self.stalled(clock.now());
            if self.start().await? {
                continue;
            }
            if self.len == RX {
                self.len = 0;
            }
            let len = self.len;
            // What is there now; `yield_now` ends the wait (and lets a host runtime look at
            // its sockets first).
            match select(self.uart.read(&mut self.rx[len..]), embassy_futures::yield_now()).await {
                Either::First(Ok(0)) | Either::First(Err(_)) => return Err(ModemError::Io),
                Either::First(Ok(n)) => {
                    self.len += n;
                    self.parse();
                }
                Either::Second(()) => break,
            }
        }
        Ok(())
    }

    /// Does what needs no answer from the module, one thing: writes queued bytes (a command, a
    /// send's data), or starts a pending close or read. `Ok(false)`: nothing to do.
    async fn start(&mut self) -> Result<bool, ModemError> {
        if self.tx_at < self.tx.len() {
            let n = self.uart.write(&self.tx[self.tx_at..]).await.map_err(|_| ModemError::Io)?;
            self.tx_at += n;
            if self.tx_at == self.tx.len() {
                self.uart.flush().await.map_err(|_| ModemError::Io)?;
            }
            return Ok(true);
        }
        if let Txn::Send { stage: SendStage::Body, s } = self.txn {
            let n = self.uart.write(&self.send[self.send_at..]).await.map_err(|_| ModemError::Io)?;
            self.send_at += n;
            if self.send_at == self.send.len() {
                self.uart.flush().await.map_err(|_| ModemError::Io)?;
                self.txn = Txn::Send { s, stage: SendStage::Result };
            }
            return Ok(true);
        }
        if self.txn == Txn::Idle {
            if let Some(s) = (0..self.socks.len()).find(|&s| self.socks[s].close) {
                let verb = if self.socks[s].ssl { "AT+QSSLCLOSE" } else { "AT+QICLOSE" };
                let mut cmd: String<24> = String::new();
                let _ = core::fmt::Write::write_fmt(&mut cmd, format_args!("{verb}={s}"));
                let k = &mut self.socks[s];
                (k.close, k.closing, k.pending, k.at, k.len) = (false, true, false, 0, 0);
                self.begin(&cmd, None, true);
                return Ok(true);
            }
            let room = |k: &Sock| SOCK_BUF - k.len;
            if let Some(s) = (0..self.socks.len()).find(|&s| self.socks[s].pending && room(&self.socks[s]) >= 64) {
                let k = &mut self.socks[s];
                k.buf.copy_within(k.at..k.at + k.len, 0);
                k.at = 0;
                let asked = room(k).min(READ_MAX);
                let verb = if k.ssl { "AT+QSSLRECV" } else { "AT+QIRD" };
                let mut cmd: String<32> = String::new();
                let _ = core::fmt::Write::write_fmt(&mut cmd, format_args!("{verb}={s},{asked}"));
                self.queue(&cmd);
                self.txn = Txn::Read { s, asked, left: None };
                self.txn_since = None;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Parses what was read: raw socket data of a read, the send prompt, lines.
    fn parse(&mut self) {
        loop {
            if let Txn::Read { s, asked, left: Some(n) } = self.txn {
                if n > 0 {
                    let k = n.min(self.len);
                    let sock = &mut self.socks[s];
                    let end = sock.at + sock.len;
                    let fit = k.min(SOCK_BUF - end);
                    sock.buf[end..end + fit].copy_from_slice(&self.rx[..fit]);
                    sock.len += fit;
                    self.txn = Txn::Read { s, asked, left: Some(n - k) };
                    self.consume_raw(k);
                    if n > k {
                        return;
                    }
                    continue;
                }
            }
            let skip = self.rx[..self.len].iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
            self.consume_raw(skip);
            if self.len == 0 {
                return;
            }
            if let Txn::Send { s, stage: SendStage::Prompt } = self.txn {
                if self.rx[0] == b'>' {
                    let k = if self.len > 1 && self.rx[1] == b' ' { 2 } else { 1 };
                    self.consume_raw(k);
                    self.txn = Txn::Send { s, stage: SendStage::Body };
                    continue;
                }
            }
            // A line ends with LF (the module sends CR LF; an echo may add a CR): the raw data
            // of a `+QIRD: <n>` starts right after it.
            let Some(end) = self.rx[..self.len].iter().position(|&b| b == b'\n') else { return };
            let mut line = [0u8; RX];
            let text = self.rx[..end].iter().rposition(|&b| b != b'\r').map_or(0, |i| i + 1);
            line[..text].copy_from_slice(&self.rx[..text]);
            self.consume_raw(end + 1);
            self.line(&line[..text]);
        }
    }

    fn sock(&mut self, id: &str) -> Option<&mut Sock> {
        let id: usize = id.trim().parse().ok()?;
        self.socks.get_mut(id)
    }

    /// One line from the module.
    fn line(&mut self, l: &[u8]) {
        let Ok(l) = core::str::from_utf8(l) else { return };
        log::trace!("AT< {}", l);
        if let Some(r) = l.strip_prefix("+QIURC: ").or_else(|| l.strip_prefix("+QSSLURC: ")) {
            let mut f = r.split(',');
            match (f.next(), f.next()) {
                (Some("\"recv\""), Some(id)) => {
                    if let Some(k) = self.sock(id) {
                        k.pending = k.used && !k.closing;
                    }
                }
                (Some("\"closed\""), Some(id)) => {
                    if let Some(k) = self.sock(id) {
                        k.closed |= !k.closing;
                    }
                }
                (Some("\"pdpdeact\""), _) => self.socks.iter_mut().for_each(|k| k.closed = true),
                _ => {}
            }
            return;
        }
        if let Some(r) = l.strip_prefix("+QIOPEN: ").or_else(|| l.strip_prefix("+QSSLOPEN: ")) {
            let mut f = r.split(',');
            if let (Some(id), Some(err)) = (f.next(), f.next()) {
                let err = err.trim().parse::<i32>().unwrap_or(-1);
                if let Some(k) = self.sock(id) {
                    k.opened = Some(err);
                }
            }
            return;
        }
        if let Some(r) = l.strip_prefix("+QIND: \"FOTA\",") {
            let mut f = r.split(',');
            let (what, n) = (f.next().unwrap_or(""), f.next().and_then(|n| n.trim().parse::<u16>().ok()));
            let urc = match (what, n) {
                ("\"HTTPSTART\"", _) => Some(FotaUrc::HttpStart),
                ("\"DOWNLOADING\"", Some(p)) => Some(FotaUrc::Downloading(p.min(100) as u8)),
                ("\"HTTPEND\"", Some(e)) => Some(FotaUrc::HttpEnd(e)),
                ("\"START\"", _) => Some(FotaUrc::Start),
                ("\"UPDATING\"", Some(p)) => Some(FotaUrc::Updating(p.min(100) as u8)),
                ("\"END\"", Some(e)) => Some(FotaUrc::End(e)),
                _ => None,
            };
            if urc == Some(FotaUrc::End(0)) {
                // The module restarts on its new firmware now, at its stored rate, which may
                // not be the line's: its RDY may never be heard. Its sockets are gone either
                // way: the session is rebuilt, and the bring-up finds the module.
                self.gone();
            }
            if let Some(u) = urc {
                self.note(u);
            }
            return;
        }
        if l == "RDY" {
            // The module restarted: its sockets, PDP context and files are gone, and a command
            // on the way was never taken: it fails now rather than at its deadline.
            match self.txn {
                Txn::Cmd { internal: false, .. } => self.outcome = Some(false),
                Txn::Send { .. } => self.sent = Some(false),
                _ => {}
            }
            if self.txn != Txn::Idle {
                self.restarted = true;
                self.txn = Txn::Idle;
            }
            self.gone();
            self.note(FotaUrc::Ready);
            return;
        }
        let failed = l == "ERROR" || l.starts_with("+CME ERROR") || l == "SEND FAIL";
        match &mut self.txn {
            Txn::Read { s, asked, left: None } => {
                let n = l.strip_prefix("+QIRD: ").or_else(|| l.strip_prefix("+QSSLRECV: "));
                if let Some(n) = n.and_then(|n| n.split(',').next()).and_then(|n| n.trim().parse::<usize>().ok()) {
                    let (s, asked) = (*s, *asked);
                    // Read empty only when the module says so: a module may hand out less than it
                    // holds, and `recv` comes again only after the buffer was read empty.
                    if n == 0 {
                        self.socks[s].pending = false;
                    }
                    self.txn = Txn::Read { s, asked, left: Some(n.min(asked)) };
                } else if failed {
                    let s = *s;
                    self.socks[s].pending = false;
                    self.socks[s].closed = true;
                    self.txn = Txn::Idle;
                }
            }
            Txn::Read { .. } if l == "OK" => self.txn = Txn::Idle,
            Txn::Send { .. } if l == "SEND OK" || failed => {
                self.sent = Some(!failed);
                self.send_fail = l == "SEND FAIL";
                self.txn = Txn::Idle;
            }
            Txn::Cmd { internal, .. } if l == "OK" || failed => {
                if *internal {
                    // The only internal command is a socket's close: its id is free now.
                    self.socks.iter_mut().filter(|k| k.closing).for_each(Sock::reset);
                } else {
                    self.outcome = Some(!failed && self.info_ok());
                }
                self.txn = Txn::Idle;
            }
            Txn::Cmd { .. } if l == "CONNECT" => self.connect = true,
            Txn::Cmd { want: Some(p), got, .. } if !*got => {
                let rest = if p.is_empty() { bare_answer(l) } else { l.strip_prefix(*p) };
                if let Some(rest) = rest {
                    *got = true;
                    self.info = head(rest);
                }
            }
            _ => {}
        }
    }

    fn info_ok(&self) -> bool {
        match self.txn {
            Txn::Cmd { want: Some(_), got, .. } => got,
            _ => true,
        }
    }

    /// Keeps a FOTA URC (the oldest progress goes when the queue is full).
    fn note(&mut self, u: FotaUrc) {
        if self.fota.is_full() {
            self.fota.pop_front();
        }
        let _ = self.fota.push_back(u);
    }

    /// Leaves transparent mode: 1 s of silence, `+++`, 1 s of silence (Quectel's guard times).
    async fn escape<C: Clock>(&mut self, clock: &C) -> Result<(), ModemError> {
        self.drain(clock, Duration::from_millis(1000)).await?;
        self.uart.write_all(b"+++").await.map_err(|_| ModemError::Io)?;
        self.uart.flush().await.map_err(|_| ModemError::Io)?;
        self.drain(clock, Duration::from_millis(1000)).await
    }

    /// Reads and drops what arrives until the line has been quiet for [`QUIET`] (3 s at most).
    async fn settle<C: Clock>(&mut self, clock: &C) -> Result<(), ModemError> {
        let give_up = clock.now() + Duration::from_secs(3);
        let mut scratch = [0u8; 64];
        loop {
            let quiet = (clock.now() + QUIET).min(give_up);
            match select(self.uart.read(&mut scratch), clock.sleep_until(quiet)).await {
                Either::First(Ok(0)) | Either::First(Err(_)) => return Err(ModemError::Io),
                Either::First(Ok(_)) if clock.now() < give_up => {}
                _ => return Ok(()),
            }
        }
    }

    /// Reads and drops whatever arrives for `d`.
    async fn drain<C: Clock>(&mut self, clock: &C, d: Duration) -> Result<(), ModemError> {
        let until = clock.now() + d;
        let mut scratch = [0u8; 64];
        loop {
            match select(self.uart.read(&mut scratch), clock.sleep_until(until)).await {
                Either::First(Ok(0)) | Either::First(Err(_)) => return Err(ModemError::Io),
                Either::First(Ok(_)) => {}
                Either::Second(()) => {
                    self.len = 0;
                    self.txn = Txn::Idle;
                    self.tx.clear();
                    self.tx_at = 0;
                    return Ok(());
                }
            }
        }
    }

    async fn register<C: Clock>(&mut self, clock: &C, timeout: Duration) -> Result<(), ModemError> {
        let deadline = clock.now() + timeout;
        loop {
            for (cmd, prefix) in [("AT+CEREG?", "+CEREG: "), ("AT+CREG?", "+CREG: ")] {
                if let Ok(stat) = self.command(clock, cmd, Some(prefix), 2000).await {
                    // "<n>,<stat>[,...]": 1 = home, 5 = roaming.
                    if matches!(stat.split(',').nth(1).map(str::trim), Some("1") | Some("5")) {
                        return Ok(());
                    }
                }
            }
            if clock.now() >= deadline {
                return Err(ModemError::NotRegistered);
            }
            clock.sleep_until(clock.now() + Duration::from_millis(1000)).await;
        }
    }

    fn consume_raw(&mut self, n: usize) {
        self.rx.copy_within(n..self.len, 0);
        self.len -= n;
    }
}

impl ModemError {
    /// A timeout of a step is a timeout of the command it served.
    fn named(self, name: &'static str) -> ModemError {
        match self {
            ModemError::Timeout(_) => ModemError::Timeout(name),
            e => e,
        }
    }
}

/// A line that can be the answer of a command without a prefix (`AT+QGMR`): a version's
/// characters only (letters, digits, `.`, `_`, `-`), so that neither a URC (`+QIND: PB DONE`,
/// `+CMTI: "SM",9`, `RDY`) nor the echo of the command (`AT+QGMR`) is taken for it.
fn bare_answer(l: &str) -> Option<&str> {
    let plain = l.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    (plain && !l.is_empty() && l != "RDY" && !l.starts_with("AT")).then_some(l)
}

/// The first 64 bytes of `s` at most, cut on a character boundary.
fn head(s: &str) -> String<64> {
    let mut cut = s.len().min(64);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = String::new();
    let _ = out.push_str(&s[..cut]);
    out
}

fn write<const N: usize>(s: &mut String<N>, args: core::fmt::Arguments<'_>) -> Result<(), ModemError> {
    core::fmt::Write::write_fmt(s, args).map_err(|_| ModemError::Refused("AT command too long"))
}

/// The command's name for errors (`AT+QIOPEN=...` -> `AT+QIOPEN`).
fn static_name(cmd: &str) -> &'static str {
    const NAMES: [&str; 22] = [
        "AT+IPR",
        "AT+IFC",
        "AT+QICSGP",
        "AT+QIACT?",
        "AT+QIACT=1",
        "AT+QIDEACT=1",
        "AT+QICLOSE",
        "AT+QSSLCLOSE",
        "AT+QSSLCFG",
        "AT+QSSLOPEN",
        "AT+QIOPEN",
        "AT+QFDEL",
        "AT+QFUPL",
        "AT+QFOTADL",
        "AT+QGMR",
        "AT+CEREG?",
        "AT+CREG?",
        "AT+CPIN?",
        "ATE0",
        "AT+QIRD",
        "AT+QSSLRECV",
        "AT",
    ];
    NAMES.into_iter().find(|n| cmd.starts_with(n)).unwrap_or("AT command")
}

/// A socket's stream errors: the UART's, or the module saying the socket ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkError {
    Uart(embedded_io_async::ErrorKind),
    /// The socket closed (the far end, the network, a module restart) or did not answer.
    Dropped,
}

impl From<ModemError> for LinkError {
    fn from(e: ModemError) -> Self {
        match e {
            ModemError::Io => LinkError::Uart(embedded_io_async::ErrorKind::Other),
            _ => LinkError::Dropped,
        }
    }
}

impl core::fmt::Display for LinkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LinkError::Uart(k) => write!(f, "modem UART: {k:?}"),
            LinkError::Dropped => f.write_str("modem: the socket closed"),
        }
    }
}

impl core::error::Error for LinkError {}

impl embedded_io_async::Error for LinkError {
    fn kind(&self) -> embedded_io_async::ErrorKind {
        match self {
            LinkError::Uart(k) => *k,
            LinkError::Dropped => embedded_io_async::ErrorKind::ConnectionReset,
        }
    }
}

/// One socket of the shared modem as a byte stream (the MQTT session's).
pub struct Socket<'a, U, C> {
    pub modem: &'a Shared<U>,
    pub clock: &'a C,
    pub id: usize,
}

impl<U, C> ErrorType for Socket<'_, U, C> {
    type Error = LinkError;
}

impl<U: ModemUart, C: Clock> Socket<'_, U, C> {
    /// Reads what socket `id` has (`Ok(0)`: `Err(Dropped)` is the end), stepping the modem one
    /// step per lock so the other users of the modem get their turn.
    pub async fn read_until(&mut self, out: &mut [u8], deadline: Option<Instant>) -> Result<usize, LinkError> {
        loop {
            {
                let mut m = self.modem.lock().await;
                if let Some(r) = m.take(self.id, out) {
                    return r;
                }
                // A step that waits on the UART holds the modem: it waits a slice at most, so
                // that another user whose bytes are already here is not kept waiting.
                let now = self.clock.now();
                let slice = now + SLICE;
                match m.step(self.clock, Some(deadline.map_or(slice, |d| d.min(slice)))).await {
                    Ok(()) => {}
                    Err(ModemError::Timeout(_)) if deadline.is_none_or(|d| self.clock.now() < d) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            embassy_futures::yield_now().await;
        }
    }
}

impl<U: ModemUart, C: Clock> Read for Socket<'_, U, C> {
    async fn read(&mut self, out: &mut [u8]) -> Result<usize, LinkError> {
        self.read_until(out, None).await
    }
}

impl<U: ModemUart, C: Clock> Write for Socket<'_, U, C> {
    async fn write(&mut self, data: &[u8]) -> Result<usize, LinkError> {
        if data.is_empty() {
            return Ok(0);
        }
        self.modem.lock().await.send_on(self.clock, self.id, data).await
    }
    async fn flush(&mut self) -> Result<(), LinkError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::Cell;

    /// A module that says `said`, one line per read, and keeps what it was told.
    struct Said<'a> {
        said: &'a [u8],
        told: std::vec::Vec<u8>,
    }

    impl ErrorType for Said<'_> {
        type Error = embedded_io_async::ErrorKind;
    }

    impl Read for Said<'_> {
        async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
            let n = self.said.iter().position(|&b| b == b'\n').map_or(self.said.len(), |i| i + 1).min(buf.len());
            if n == 0 {
                return core::future::pending().await;
            }
            buf[..n].copy_from_slice(&self.said[..n]);
            self.said = &self.said[n..];
            Ok(n)
        }
    }

    impl Write for Said<'_> {
        async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
            self.told.extend_from_slice(buf);
            Ok(buf.len())
        }
        async fn flush(&mut self) -> Result<(), Self::Error> {
            Ok(())
        }
    }

    impl LineRate for Said<'_> {
        fn set_rate(&mut self, _baud: u32) {}
    }

    /// A module on a line with a rate: it understands (and is understood) only while both ends
    /// run at the same rate; `AT+IPR=<r>` answers OK at the old rate, then takes `r` (unless it
    /// refuses `r`); with `restart`, it restarts right after that OK, back at 115,200.
    struct Line {
        device: u32,
        module: u32,
        refuse: Option<u32>,
        restart: bool,
        cmd: std::vec::Vec<u8>,
        out: std::collections::VecDeque<u8>,
        /// Commands the module understood, with the rate they came at.
        heard: std::vec::Vec<(u32, std::string::String)>,
    }

    impl Line {
        fn at(module: u32) -> Line {
            Line {
                device: 0,
                module,
                refuse: None,
                restart: false,
                cmd: std::vec::Vec::new(),
                out: Default::default(),
                heard: std::vec::Vec::new(),
            }
        }
        fn say(&mut self, l: &str) {
            let b = format!("\r\n{l}\r\n");
            if self.device == self.module {
                self.out.extend(b.bytes());
            } else {
                self.out.extend(b.bytes().map(|b| 0x80 | b));
            }
        }
    }

    impl ErrorType for Line {
        type Error = embedded_io_async::ErrorKind;
    }

    impl Read for Line {
        async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
            let mut n = 0;
            while n < buf.len() {
                let Some(b) = self.out.pop_front() else { break };
                buf[n] = b;
                n += 1;
            }
            if n == 0 {
                return core::future::pending().await;
            }
            Ok(n)
        }
    }

    impl Write for Line {
        async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
            for &b in buf {
                if self.device != self.module {
                    continue; // garbage to the module: never a command
                }
                if b != b'\r' {
                    self.cmd.push(b);
                    continue;
                }
                let c = std::string::String::from_utf8(core::mem::take(&mut self.cmd)).unwrap();
                self.heard.push((self.module, c.clone()));
                match c.strip_prefix("AT+IPR=").map(|r| r.parse::<u32>().unwrap()) {
                    Some(r) if Some(r) == self.refuse => self.say("ERROR"),
                    Some(r) => {
                        self.say("OK");
                        self.module = r;
                        if core::mem::take(&mut self.restart) {
                            self.module = POWER_ON_RATE;
                            self.say("RDY");
                        }
                    }
                    None => self.say("OK"),
                }
            }
            Ok(buf.len())
        }
        async fn flush(&mut self) -> Result<(), Self::Error> {
            Ok(())
        }
    }

    impl LineRate for Line {
        fn set_rate(&mut self, baud: u32) {
            self.device = baud;
        }
    }

    const FAST: UartConfig = UartConfig { rate: 921_600, rtscts: true };

    fn heard(m: &Modem<Line>) -> std::vec::Vec<std::string::String> {
        m.uart.heard.iter().map(|(r, c)| format!("{r} {c}")).collect()
    }

    #[test]
    fn a_module_left_at_the_fast_rate_is_found_there_at_once() {
        // The device restarted (its UART back at its own default), the module kept running.
        let mut m = Modem::new(Line::at(921_600));
        let clock = Clock::default();
        assert_eq!(embassy_futures::block_on(m.find(&clock, &FAST)), Ok(()));
        assert_eq!(heard(&m), ["921600 AT"]);
        assert_eq!(m.rate(), 921_600);
    }

    #[test]
    fn a_module_at_its_power_on_rate_is_found_and_raised() {
        let mut m = Modem::new(Line::at(115_200));
        let clock = Clock::default();
        assert_eq!(embassy_futures::block_on(m.find(&clock, &FAST)), Ok(()));
        assert_eq!(heard(&m), ["115200 AT", "115200 AT+IPR=921600", "921600 AT"]);
        assert_eq!((m.rate(), m.uart.module), (921_600, 921_600));
        // A second bring-up (a new MQTT session) costs one AT.
        assert_eq!(embassy_futures::block_on(m.find(&clock, &FAST)), Ok(()));
        assert_eq!(heard(&m).len(), 4);
    }

    #[test]
    fn a_module_that_restarts_in_the_middle_of_the_switch_is_found_again() {
        // The OK of AT+IPR came, then the module restarted (back at its power-on rate) before
        // the device followed: the device at 921,600 hears nothing, looks again, raises again.
        let mut line = Line::at(115_200);
        line.restart = true;
        let mut m = Modem::new(line);
        let clock = Clock::default();
        assert_eq!(embassy_futures::block_on(m.find(&clock, &FAST)), Ok(()));
        assert_eq!(heard(&m), ["115200 AT", "115200 AT+IPR=921600", "115200 AT", "115200 AT+IPR=921600", "921600 AT"]);
        assert_eq!((m.rate(), m.uart.module), (921_600, 921_600));
    }

    #[test]
    fn a_rate_the_module_refuses_leaves_the_line_at_the_one_that_works() {
        let mut line = Line::at(115_200);
        line.refuse = Some(921_600);
        let mut m = Modem::new(line);
        let clock = Clock::default();
        assert_eq!(embassy_futures::block_on(m.find(&clock, &FAST)), Ok(()));
        assert_eq!(heard(&m), ["115200 AT", "115200 AT+IPR=921600"]);
        assert_eq!((m.rate(), m.uart.module), (115_200, 115_200));
    }

    #[test]
    fn a_module_at_no_rate_tried_is_a_timeout_not_a_hang() {
        let mut m = Modem::new(Line::at(9600));
        let clock = Clock::default();
        assert_eq!(embassy_futures::block_on(m.find(&clock, &FAST)), Err(ModemError::Timeout("AT")));
        assert!(m.uart.heard.is_empty());
    }

    /// Time that passes only when somebody sleeps.
    #[derive(Default)]
    struct Clock(Cell<u64>);

    impl crate::driver::Clock for Clock {
        fn now(&self) -> Instant {
            Instant::from_millis(self.0.get())
        }
        async fn sleep_until(&self, t: Instant) {
            self.0.set(self.0.get().max(t.as_millis()));
        }
    }

    #[test]
    fn a_closed_urc_of_the_old_connection_does_not_end_the_next_one() {
        // Found by the QEMU power-cut campaign: a small HTTPS reply closed by the server sent
        // `"closed"` for the download socket while its AT+QSSLCLOSE was on the way; that URC was
        // taken for the socket opened next on the same id, which then "closed" before a byte came.
        let said = b"+QSSLURC: \"closed\",1\r\nOK\r\nOK\r\n+QSSLOPEN: 1,0\r\n";
        let mut m = Modem::new(Said { said, told: std::vec::Vec::new() });
        let k = &mut m.socks[DOWNLOAD];
        (k.used, k.ssl) = (true, true);
        m.close_socket(DOWNLOAD);
        let clock = Clock::default();
        let opened = embassy_futures::block_on(m.open_socket(
            &clock,
            DOWNLOAD,
            Some(2),
            "127.0.0.1",
            443,
            Duration::from_secs(5),
        ));
        assert_eq!(opened, Ok(()));
        let told = std::string::String::from_utf8(m.uart.told.clone()).unwrap();
        assert_eq!(told, "AT+QSSLCLOSE=1\rAT+QSSLOPEN=1,2,1,\"127.0.0.1\",443,0\r");
        // Open, nothing read yet: more is to come, not the end.
        assert!(m.take(DOWNLOAD, &mut [0u8; 8]).is_none());
    }

    #[test]
    fn the_last_bytes_after_a_closed_urc_are_read_before_the_end() {
        // Found under QEMU (a slow UART): the far end closed, `+QSSLRECV: 5` came in one UART
        // read and its 5 bytes in the next; in between the socket looked read empty and closed.
        let said = b"+QSSLRECV: 5\r\nhello\r\n\r\nOK\r\n+QSSLRECV: 0\r\n\r\nOK\r\n";
        let mut m = Modem::new(Said { said, told: std::vec::Vec::new() });
        let k = &mut m.socks[DOWNLOAD];
        (k.used, k.ssl, k.pending, k.closed) = (true, true, true, true);
        let shared: Shared<_> = Mutex::new(m);
        let clock = Clock::default();
        let mut sock = Socket { modem: &shared, clock: &clock, id: DOWNLOAD };
        let mut buf = [0u8; 16];
        let n = embassy_futures::block_on(sock.read_until(&mut buf, None));
        assert_eq!(n.map(|n| &buf[..n]), Ok(&b"hello"[..]));
        assert_eq!(embassy_futures::block_on(sock.read_until(&mut buf, None)), Err(LinkError::Dropped));
    }

    fn modem(said: &[u8]) -> Modem<Said<'_>> {
        Modem::new(Said { said, told: std::vec::Vec::new() })
    }

    fn told(m: &Modem<Said<'_>>) -> std::string::String {
        std::string::String::from_utf8(m.uart.told.clone()).unwrap()
    }

    #[test]
    fn the_module_version_is_its_answer_not_an_urc_or_the_echo_before_it() {
        // A real module puts URCs between a command's echo and its answer (Quectel's start-up
        // `+QIND: PB DONE` here, held back during AT+QIACT), and echoes while ATE0 is not in force.
        let said = b"AT+QGMR\r\r\n+QIND: PB DONE\r\n+CMTI: \"SM\",9\r\n\r\nEC200UCNAAR03A01M08\r\n\r\nOK\r\n";
        let mut m = modem(said);
        let clock = Clock::default();
        embassy_futures::block_on(m.read_version(&clock));
        assert_eq!(m.version(), "EC200UCNAAR03A01M08");
        // An answer that is no version at all leaves it unknown rather than wrong.
        let mut m = modem(b"+QIND: SMS DONE\r\nOK\r\n");
        embassy_futures::block_on(m.read_version(&clock));
        assert_eq!(m.version(), "");
    }

    #[test]
    fn a_socket_buffer_is_read_until_the_module_says_it_is_empty() {
        // Quectel: `recv` is reported when the buffer goes from empty to non-empty; the host reads
        // until `+QIRD: 0`. A module may hand out less than it holds (and less than asked).
        let said = b"+QIRD: 5\r\nhello\r\n\r\nOK\r\n+QIRD: 3\r\nabc\r\n\r\nOK\r\n+QIRD: 0\r\n\r\nOK\r\n";
        let mut m = modem(said);
        let k = &mut m.socks[MQTT];
        (k.used, k.pending) = (true, true);
        let shared: Shared<_> = Mutex::new(m);
        let clock = Clock::default();
        let mut sock = Socket { modem: &shared, clock: &clock, id: MQTT };
        let mut buf = [0u8; 16];
        let by = Some(Instant::from_millis(10_000)); // (the module says nothing more)
        let n = embassy_futures::block_on(sock.read_until(&mut buf, by));
        assert_eq!(n.map(|n| &buf[..n]), Ok(&b"hello"[..]));
        let n = embassy_futures::block_on(sock.read_until(&mut buf, by));
        assert_eq!(n.map(|n| &buf[..n]), Ok(&b"abc"[..]), "the rest of the module's buffer is read too");
        assert!(embassy_futures::block_on(sock.read_until(&mut buf, by)).is_err(), "nothing more came");
        let m = shared.try_lock().unwrap();
        let reads = told(&m).matches("AT+QIRD=0,").count();
        assert!(!m.socks[MQTT].pending, "read empty after +QIRD: 0");
        assert_eq!(reads, 3, "{}", told(&m));
    }

    #[test]
    fn ahead_asks_for_what_the_module_holds_and_takes_what_came_without_waiting() {
        // Between slices of flash work: the next `AT+QIRD` goes out, what the UART already has
        // is parsed into the socket's buffer and the next read asked for, and nothing waits for
        // the module (a silent module ends the call, here `block_on` would hang otherwise).
        let said = b"+QIRD: 5\r\nhello\r\n\r\nOK\r\n+QIRD: 3\r\nabc\r\n\r\nOK\r\n";
        let mut m = modem(said);
        let k = &mut m.socks[MQTT];
        (k.used, k.pending) = (true, true);
        let clock = Clock::default();
        embassy_futures::block_on(m.ahead(&clock)).unwrap();
        assert_eq!(told(&m), "AT+QIRD=0,1500\rAT+QIRD=0,1500\rAT+QIRD=0,1500\r", "a third read is out");
        assert!(matches!(m.txn, Txn::Read { s: MQTT, .. }));
        let mut buf = [0u8; 16];
        assert_eq!(m.take(MQTT, &mut buf), Some(Ok(8)));
        assert_eq!(&buf[..8], b"helloabc");
        // A full buffer asks for nothing more.
        let mut m = modem(b"");
        let k = &mut m.socks[MQTT];
        (k.used, k.pending, k.len) = (true, true, SOCK_BUF - 10);
        embassy_futures::block_on(m.ahead(&clock)).unwrap();
        assert_eq!(told(&m), "");
    }

    #[test]
    fn a_uart_error_met_ahead_ends_the_sockets() {
        // Nobody reads the result of `ahead` (the flash work goes on): the sockets end, so the
        // session's next read sees it and the session is rebuilt.
        struct Broken;
        impl ErrorType for Broken {
            type Error = embedded_io_async::ErrorKind;
        }
        impl Read for Broken {
            async fn read(&mut self, _: &mut [u8]) -> Result<usize, Self::Error> {
                Err(embedded_io_async::ErrorKind::Other)
            }
        }
        impl Write for Broken {
            async fn write(&mut self, b: &[u8]) -> Result<usize, Self::Error> {
                Ok(b.len())
            }
            async fn flush(&mut self) -> Result<(), Self::Error> {
                Ok(())
            }
        }
        impl LineRate for Broken {
            fn set_rate(&mut self, _baud: u32) {}
        }
        let mut m = Modem::new(Broken);
        m.socks[MQTT].used = true;
        assert!(embassy_futures::block_on(m.ahead(&Clock::default())).is_err());
        assert!(m.take(MQTT, &mut [0u8; 8]).is_some_and(|r| r.is_err()), "the reader sees the end");
    }

    #[test]
    fn send_fail_sends_the_same_bytes_again() {
        // `SEND FAIL`: the module did not take the data (its send buffer is full). The bytes are
        // sent again after a short wait: never a hole in the MQTT stream.
        let said = b"> \nSEND FAIL\r\n> \nSEND OK\r\n";
        let mut m = modem(said);
        m.socks[MQTT].used = true;
        let clock = Clock::default();
        let r = embassy_futures::block_on(m.send_on(&clock, MQTT, b"hello"));
        assert_eq!(r, Ok(5));
        assert_eq!(told(&m), "AT+QISEND=0,5\rhelloAT+QISEND=0,5\rhello");
    }

    #[test]
    fn a_send_the_module_never_answers_ends_the_socket() {
        // A module that restarted comes back at its power-on rate: the device hears garbage, no
        // prompt. The socket ends (the session is rebuilt and the bring-up finds the module)
        // rather than each later send waiting its 20 s while the session looks alive.
        let mut m = modem(b"\xC7\xD2\xE5");
        m.socks[MQTT].used = true;
        let clock = Clock::default();
        let r = embassy_futures::block_on(m.send_on(&clock, MQTT, b"hello"));
        assert_eq!(r, Err(LinkError::Dropped));
        assert!(m.socks[MQTT].closed);
        assert!(m.take(MQTT, &mut [0u8; 8]).is_some_and(|r| r.is_err()), "the reader sees the end");
    }

    #[test]
    fn a_read_the_module_never_answers_ends_the_socket() {
        // Found with the simulator's rate model: the module restarted at its power-on rate while
        // an AT+QIRD was out; the read waited for ever and the session looked alive until the
        // MQTT keep-alive ran out (minutes).
        let mut m = modem(b"\xC7\xD2\xE5");
        let k = &mut m.socks[MQTT];
        (k.used, k.pending) = (true, true);
        let shared: Shared<_> = Mutex::new(m);
        let clock = Clock::default();
        let mut sock = Socket { modem: &shared, clock: &clock, id: MQTT };
        let r = embassy_futures::block_on(sock.read_until(&mut [0u8; 16], None));
        assert_eq!(r, Err(LinkError::Dropped));
        assert!(clock.0.get() >= STALL.as_millis(), "given up after {} ms", clock.0.get());
    }

    #[test]
    fn a_close_the_module_never_answers_frees_the_socket_id_after_the_stall_not_the_deadline() {
        // Found with the simulator's rate model: a socket's AT+QSSLCLOSE went to a module that had
        // restarted at another rate; opening the socket again waited for that close until its
        // own 60 s deadline, while the MQTT session looked alive.
        let mut m = modem(b"\xC7\xD2\xE5");
        let k = &mut m.socks[DOWNLOAD];
        (k.used, k.ssl) = (true, true);
        m.close_socket(DOWNLOAD);
        let clock = Clock::default();
        let r = embassy_futures::block_on(m.open_socket(
            &clock,
            DOWNLOAD,
            Some(2),
            "127.0.0.1",
            443,
            Duration::from_secs(60),
        ));
        assert!(r.is_err());
        let told = told(&m);
        assert!(told.starts_with("AT+QSSLCLOSE=1\rAT+QSSLOPEN=1,2,1,"), "{told}");
        assert!(m.socks[MQTT].closed, "no answer at all: every socket ends");
        assert!(clock.0.get() < 60_000, "the open was tried after the close stalled ({} ms)", clock.0.get());
    }

    #[test]
    fn the_rest_of_a_read_cut_short_is_not_taken_for_the_next_answer() {
        // Found with the realistic simulator: the session failed while an AT+QSSLRECV's data
        // was on the way; its OK was then taken for the bring-up's AT, and every answer after
        // it for the command before (AT+CPIN? got ATE0's OK: "SIM missing", for ever).
        let said = b"hello\r\n\r\nOK\r\n\r\nOK\r\n\r\n+CPIN: READY\r\n\r\nOK\r\n";
        let mut m = modem(said);
        m.txn = Txn::Read { s: DOWNLOAD, asked: 1500, left: Some(5) };
        let clock = Clock::default();
        embassy_futures::block_on(m.settle(&clock)).unwrap();
        assert_eq!(m.uart.said, b"", "the rest of the read dropped");
        // (What the module says after the quiet belongs to what is asked after it.)
        let mut m = modem(b"\r\n+CPIN: READY\r\n\r\nOK\r\n");
        let r = embassy_futures::block_on(m.command(&clock, "AT+CPIN?", Some("+CPIN: READY"), 5000));
        assert!(r.is_ok());
    }

    #[test]
    fn a_module_that_restarts_fails_the_command_at_once() {
        // `RDY`: the module restarted and never got the command on the way; waiting for its answer
        // until the deadline (60 s and more) would stall the device for nothing.
        let mut m = modem(b"RDY\r\n");
        let clock = Clock::default();
        let r = embassy_futures::block_on(m.command(&clock, "AT+CPIN?", Some("+CPIN: "), 60_000));
        assert_eq!(r, Err(ModemError::Restarted));
        assert!(clock.0.get() < 60_000, "failed at once, not at its deadline");
    }

    #[test]
    fn a_deactivated_context_is_deactivated_before_it_is_activated_again() {
        // Quectel TCP/IP AN: after `+QIURC: "pdpdeact"` the host must send AT+QIDEACT before
        // AT+QIACT can succeed; on a context that is simply down AT+QIDEACT is a harmless OK.
        let mut m = modem(b"OK\r\nOK\r\nOK\r\n");
        let clock = Clock::default();
        assert_eq!(embassy_futures::block_on(m.activate(&clock)), Ok(()));
        assert_eq!(told(&m), "AT+QIACT?\rAT+QIDEACT=1\rAT+QIACT=1\r");
        // Active already: nothing else.
        let mut m = modem(b"+QIACT: 1,1,1,\"10.0.0.2\"\r\nOK\r\n");
        assert_eq!(embassy_futures::block_on(m.activate(&clock)), Ok(()));
        assert_eq!(told(&m), "AT+QIACT?\r");
    }

    #[test]
    fn a_long_answer_is_cut_on_a_character_boundary() {
        // Found by fuzzing (fuzz target `modem`, fuzz/regressions/modem-line-cut-in-a-char): an
        // answer whose 64th byte fell inside a character panicked the slice.
        let line = format!("{}\u{2df}+", "1".repeat(63));
        assert_eq!(head(&line).as_str(), "1".repeat(63));
        assert_eq!(head("0,1").as_str(), "0,1");
        assert_eq!(head(&"5".repeat(70)).len(), 64);
    }
}
