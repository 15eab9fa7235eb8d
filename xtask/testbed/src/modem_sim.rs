//! A Quectel-style cellular modem simulator: speaks the AT subset of `app/src/modem.rs` on a TCP
//! port on 127.0.0.1 or a pseudo-terminal (the device's UART). Commands end with `\r`; every line the simulator sends
//! is framed `\r\n<line>\r\n`; it echoes commands until `ATE0` (echo is on at power-on and after
//! every restart, Quectel AT Commands Manual, `ATE`), the echo always first, before any URC and
//! the answer. It models Quectel's manuals (AT Commands Manual; TCP/IP and SSL Application Notes
//! of the EC200U/EC800/BG95 series), not any host firmware: see "A real module's ways" below for
//! the behaviours a host must cope with, each switched on alone by a [`SimOptions`] field (all
//! off by default) or together by [`SimOptions::realistic`].
//!
//! **Transparent mode** (as `app/src/modem.rs` uses it): `AT+QIOPEN=1,0,"TCP","host",port,0,2` or
//! `AT+QSSLOPEN=1,1,4,"host",port,2` answer `CONNECT` and bridge the byte stream to the target
//! (the local console's broker), TLS verified with the CA the device uploaded (`AT+QFUPL`) and set
//! on SSL context 1 (`AT+QSSLCFG` seclevel 1, cacert; the name verified is 127.0.0.1). `NO CARRIER`
//! when the link drops; `+++` framed by 1 s of silence leaves data mode.
//!
//! **Buffer access mode** (access mode 0), up to 12 sockets (ids 0..11, one pool for TCP and SSL)
//! beside the command channel:
//!
//! ```text
//! AT+QIOPEN=1,<id>,"TCP","<host>",<port>,0,0   -> OK, later +QIOPEN: <id>,<err>
//! AT+QSSLOPEN=1,<ctx>,<id>,"<host>",<port>,0   -> OK, later +QSSLOPEN: <id>,<err>
//!   err: 0 open; 563 the id is in use; 566 the TCP connect failed; -1 the TLS handshake failed
//!   (server not covered by the context's CA, name mismatch, context without seclevel >= 1 or
//!   without a CA file). A host other than 127.0.0.1/localhost, a bad id (not 0..11), a bad ctx
//!   (not 0..5), another access mode or no PDP context (AT+QIACT=1) answer ERROR at once.
//! +QIURC: "recv",<id> / +QSSLURC: "recv",<id>      data arrived in an empty buffer (once, until
//!                                                 a read leaves the buffer empty)
//! +QIURC: "closed",<id> / +QSSLURC: "closed",<id>  the far end closed (once); buffered data can
//!                                                 still be read; the id stays used until closed
//! AT+QIRD=<id>,<len> / AT+QSSLRECV=<id>,<len>      (len 1..1500)
//!   -> \r\n+QIRD: <n>\r\n<n bytes>\r\n\r\nOK\r\n   (n > 0)
//!   -> \r\n+QIRD: 0\r\n\r\nOK\r\n                  (empty buffer)
//!   -> \r\nERROR\r\n                               (not open, or a socket of the other kind)
//!   (+QSSLRECV: <n> for SSL)
//! AT+QISEND=<id>,<len> / AT+QSSLSEND=<id>,<len>    (len 1..1460)
//!   -> \r\n> , then exactly len raw bytes from the device (they start right after the `\r`
//!      ending the command, once the prompt is seen), then \r\nSEND OK\r\n, or \r\nSEND FAIL\r\n
//!      when the far end has closed (or does not take the data within 10 s);
//!      \r\nERROR\r\n (no prompt) when not open
//! AT+QICLOSE=<id> / AT+QSSLCLOSE=<id>              -> OK (either closes a socket of either kind;
//!                                                 closing a closed or unknown id is OK too)
//! AT+QIACT=1 / AT+QIACT?                           -> OK (context 1 up) / +QIACT: 1,1,1,"10.0.0.2"
//!                                                 and OK while it is up, just OK while down
//! AT+QIDEACT=1                                     -> OK: context 1 down, every socket closed
//! ```
//!
//! SSL contexts 0..5 each have `AT+QSSLCFG="seclevel",<ctx>,<0|1|2>`, `"cacert",<ctx>,"<file>"`,
//! `"sni",<ctx>,<0|1>` (default 0); other settings (`sslversion`, `ciphersuite`, ...) answer OK
//! and are ignored. The server is always verified (seclevel >= 1 required) against the context's
//! CA file and the `<host>` of the command; SNI is sent only when the context's sni is 1 (and
//! never for an IP host such as 127.0.0.1, as TLS requires).
//! Data from the far end is buffered per socket up to 64 KiB; while full the far end is not read.
//! URCs are only written between responses.
//!
//! **Module firmware**: `AT+QGMR` -> `\r\n<version>\r\n\r\nOK\r\n` (initially
//! [`SimOptions::qgmr`]); `ATI` -> `Quectel`, `EC200U`, `Revision: <version>`, `OK`.
//! `AT+QFOTADL="<url>"` (http:// or https://, at most 255 characters, no FOTA running, not
//! [`SimOptions::fota_refuse`]; else ERROR) -> OK, then
//!
//! ```text
//! +QIND: "FOTA","HTTPSTART"
//! +QIND: "FOTA","DOWNLOADING",<p>      p = 10, 20, ... 100 (every 10 % crossed)
//! +QIND: "FOTA","HTTPEND",<err>        0 downloaded; 701 malformed/unsupported response (no
//!                                      Content-Length, chunked, truncated body, bad status line)
//!                                      or TLS failure; 702 timeout (10 s connect, 30 s per read);
//!                                      704 non-2xx HTTP status; 711 the host is not
//!                                      127.0.0.1/localhost (a DNS failure); 716 TCP connect failed
//! (only when downloaded:)
//! +QIND: "FOTA","START"
//! +QIND: "FOTA","UPDATING",<p>         p = 10, 20, ... 100 (only for a good package)
//! +QIND: "FOTA","END",<err>            0 upgraded; 504 bad package (magic, MD5, version line);
//!                                      510 the package's from=<version> is not the current one
//! (after END 0, ~300 ms later:)
//! RDY
//! ```
//!
//! The download is an HTTP/1.1 GET to `127.0.0.1:<port of the URL>` (`Host`, `Connection: close`);
//! https:// is verified with **SSL context 2** (the context the firmware configures for its own
//! downloads) and the URL's host as the name. The package ("module firmware", see
//! [`fota_package`]): `QSIMFOTA1\n<new version>\n[from=<required version>\n]<payload>` followed by
//! the MD5 of all that. After END 0 the module restarts: all buffer sockets are gone (no URCs for
//! them), the PDP context is down, echo is on, SSL contexts are reset (files stay), input during
//! the restart is discarded, `RDY` is sent, and `AT+QGMR` answers the new version (for every later
//! UART connection too). After HTTPEND != 0 or END != 0 nothing restarts. Commands and sockets keep
//! working during the FOTA.
//!
//! **A real module's ways** (each off by default; [`SimOptions::realistic`] turns all on):
//!
//! - *Echo at power-on* (always): `ATE1` is the default of a module that starts (AT Commands
//!   Manual, `ATE`); the echo of a command comes before anything else the command brings.
//! - [`SimOptions::urc_noise`]: a module reports events whenever they happen, not as answers to
//!   commands (AT Commands Manual: URCs; `RDY`, `+CPIN: READY`, `+QIND: SMS DONE` / `PB DONE`
//!   at start-up, `+CMTI` for a new SMS). After power-on (a new UART
//!   connection) and after a restart the start-up URCs [`BOOT_URCS`] come unprompted: `RDY`
//!   first, before the module answers anything (a module that answered and then says `RDY` has
//!   restarted), the others 100 ms apart among the host's first commands (only `RDY` without a
//!   SIM); and between the
//!   echo and the answer of [`NOISY_COMMANDS`] (`AT+QGMR`, `ATI`, `AT+CPIN?`, `AT+CEREG?`,
//!   `AT+CREG?`, `AT+QIACT?`) comes one of [`NOISE_URCS`] in turn (`+QIND: PB DONE`,
//!   `+QIND: SMS DONE`, `+CMTI: "SM",9`).
//! - Recv URCs (always): TCP/IP Application Note, `+QIURC: "recv"` (SSL Application Note,
//!   `+QSSLURC: "recv"`): "if the buffer is not empty, and the module receives data again, it does
//!   not report a new URC until all the received data has been retrieved" — one URC when a
//!   socket's buffer goes from empty to non-empty, none while data remains.
//! - [`SimOptions::partial_reads`]: `AT+QIRD=<id>,<read_length>` answers
//!   `+QIRD: <read_actual_length>`, which the TCP/IP Application Note (`AT+QIRD`) only bounds by
//!   `<read_length>` (likewise `AT+QSSLRECV`, SSL Application Note): at most [`PARTIAL_READ`]
//!   (512) bytes per read, the rest stays buffered. With the URC rule above, a host that reads
//!   once per URC leaves data stranded.
//! - [`SimOptions::send_fail_every`]: TCP/IP Application Note, `AT+QISEND` ("SEND FAIL indicates
//!   the sending buffer is full. In this case, data can be resent"; SSL Application Note,
//!   `AT+QSSLSEND`): every Nth data transfer (after `> `, counted over the simulator's life, TCP
//!   and SSL together) is answered `SEND FAIL` and its bytes do not reach the far end.
//! - [`SimOptions::pdp_deact_after`]: TCP/IP Application Note, `+QIURC: "pdpdeact",<contextID>`
//!   (the network deactivated the context; the host must send `AT+QIDEACT` to deactivate it and
//!   reset all connections before `AT+QIACT` can work again) with `AT+QIACT` / `AT+QIDEACT`. Once
//!   the device has read N bytes in total (`AT+QIRD` / `AT+QSSLRECV`), right after that read's
//!   answer: `+QIURC: "pdpdeact",1`; every socket's far end is dropped (no `closed` URCs; what a
//!   socket buffered stays readable until `AT+QICLOSE` / `AT+QIDEACT`; `AT+QISEND` answers
//!   `ERROR`, no prompt, as for a connection "abnormally closed"; a socket still connecting fails with `+QIOPEN: <id>,570`, PDP context broken down);
//!   `AT+QIACT?` answers just OK, `AT+QIACT=1` and every open ERROR, until `AT+QIDEACT=1` (OK:
//!   context down, sockets closed); then `AT+QIACT=1` works again. Once per simulator.
//! - [`SimOptions::restart_after`]: a module restarts by itself (AT Commands Manual, `RDY`: the
//!   module is ready after it started). Once the device has read N bytes in total, right after
//!   that read's answer, the module restarts as after its FOTA (above) on the same firmware:
//!   sockets gone without URCs, context down, echo on, SSL contexts reset, input during the
//!   restart discarded, `RDY` (then the other start-up URCs with `urc_noise`). Once per simulator.
//!
//! **The UART line** ([`ModemSim::start_tty`]; AT Commands Manual, `AT+IPR`, `AT+IFC`, `AT&W`): a
//! pseudo-terminal the device opens as a serial port, whose rate the simulator reads from the
//! device's termios; bytes cross at the module's rate and arrive as garbage (never a character)
//! while the two disagree (see `line`). The module runs at 115,200 at power-on and after a
//! restart unless a rate was stored; `AT+IPR?` -> `+IPR: <rate>`; `AT+IPR=<rate>` (4,800 ..
//! 921,600) -> OK at the old rate, then the new one; stored by `AT&W` (or at once with
//! [`SimOptions::ipr_saved`], the other reading of the manuals); `AT+IFC=2,2` / `AT+IFC=0,0` ->
//! OK (the pty's buffer is the flow control). What precedes `AT` on a command line (garbage) is
//! not part of the command; a line without `AT` is noise, not answered. Over a pty the module keeps
//! running while the device restarts (one module for the simulator's life); over TCP a new
//! connection is a module powering on.
//!
//! Faults for tests: no SIM, slow network registration, a transparent link that drops after N
//! bytes, a buffer socket cut after N bytes, a slow module, a module refusing FOTA, a restart
//! right after `AT+IPR`.

use anyhow::{Context, Result};
use md5::{Digest, Md5};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod line;
pub use line::{agree, POWER_ON_RATE, RATES};
use line::{Rate, Uart, Wire};
use tokio::sync::{mpsc, oneshot, Notify};

/// How the simulated modem behaves.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// `AT+CPIN?` answers `+CME ERROR: 10` (SIM not inserted).
    pub no_sim: bool,
    /// Registration polls answered "searching" before "registered".
    pub register_after_polls: u32,
    /// The first transparent data session drops after this many bytes toward the device
    /// (`NO CARRIER`).
    pub drop_first_link_after: Option<u64>,
    /// The first buffer-mode socket opened with this id (per simulator) has its far end cut once
    /// this many bytes from the far end were put in its buffer: the simulator closes the far-end
    /// connection and reports `closed` (the bytes before the cut stay readable).
    pub drop_socket_after: Option<(u8, u64)>,
    /// Every command's response is delayed by this many ms (a slow module). URCs are not delayed.
    pub slow_ms: u64,
    /// `AT+QFOTADL` answers ERROR.
    pub fota_refuse: bool,
    /// The module firmware version `AT+QGMR` answers until a FOTA replaces it.
    pub qgmr: String,
    /// Once this many bytes in total went to the device over `AT+QIRD` / `AT+QSSLRECV`, the
    /// network deactivates the PDP context (once per simulator): `+QIURC: "pdpdeact",1`, every
    /// socket loses its far end (what it buffered stays readable until closed), and
    /// `AT+QIACT=1` answers ERROR until the host sends `AT+QIDEACT=1`.
    pub pdp_deact_after: Option<u64>,
    /// `AT+QIRD` / `AT+QSSLRECV` hand out at most [`PARTIAL_READ`] bytes per read, however many
    /// were asked for and are buffered (the rest stays buffered, with no new recv URC).
    pub partial_reads: bool,
    /// Every Nth data transfer of `AT+QISEND` / `AT+QSSLSEND` (counted per simulator) is answered
    /// `SEND FAIL` and its bytes are dropped (the module's send buffer was full).
    pub send_fail_every: Option<u32>,
    /// Unsolicited lines where a host least wants them: the start-up URCs (`RDY`, `+CPIN: READY`,
    /// `+QIND: SMS DONE`, `+QIND: PB DONE`) after power-on and restarts, and one of
    /// [`NOISE_URCS`] between the echo and the answer of [`NOISY_COMMANDS`].
    pub urc_noise: bool,
    /// Once this many bytes in total went to the device over `AT+QIRD` / `AT+QSSLRECV`, the
    /// module restarts unprompted (once per simulator), as after its FOTA but on the same
    /// firmware: sockets gone, context down, echo on, input discarded, `RDY`.
    pub restart_after: Option<u64>,
    /// `AT+IPR=<rate>` is stored at once (the module powers on at that rate), as some manuals
    /// say; without it only `AT&W` stores it (the reading of others). UNCERTAIN for the
    /// EC200U: a device must find the module either way.
    pub ipr_saved: bool,
    /// The module restarts (once per simulator) right after it acknowledged the first
    /// `AT+IPR=<rate>`, before the host could follow: it comes back at its stored rate.
    pub restart_after_ipr: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            no_sim: false,
            register_after_polls: 0,
            drop_first_link_after: None,
            drop_socket_after: None,
            slow_ms: 0,
            fota_refuse: false,
            qgmr: "EC200UCNAAR03A01M08".to_string(),
            pdp_deact_after: None,
            partial_reads: false,
            send_fail_every: None,
            urc_noise: false,
            restart_after: None,
            ipr_saved: false,
            restart_after_ipr: false,
        }
    }
}

impl SimOptions {
    /// Every behaviour of a real module on: the context deactivated by the network after 20 KiB
    /// read, then a module restart after 60 KiB, every 4th send refused, partial reads, URC noise.
    pub fn realistic() -> Self {
        SimOptions {
            pdp_deact_after: Some(20 * 1024),
            partial_reads: true,
            send_fail_every: Some(4),
            urc_noise: true,
            restart_after: Some(60 * 1024),
            ..Default::default()
        }
    }
}

/// The longest command line the module keeps (longer ones, or noise without an end, dropped).
const LINE_MAX: usize = 4096;

/// Most bytes one `AT+QIRD` / `AT+QSSLRECV` hands out with [`SimOptions::partial_reads`].
pub const PARTIAL_READ: usize = 512;

/// The URCs a module sends as it starts ([`SimOptions::urc_noise`]; `RDY` also without it after
/// a restart), 100 ms apart.
pub const BOOT_URCS: [&str; 4] = ["RDY", "+CPIN: READY", "+QIND: SMS DONE", "+QIND: PB DONE"];

/// The unsolicited lines [`SimOptions::urc_noise`] puts before answers, in turn.
pub const NOISE_URCS: [&str; 3] = ["+QIND: PB DONE", "+QIND: SMS DONE", "+CMTI: \"SM\",9"];

/// The commands whose answers [`SimOptions::urc_noise`] precedes with a URC.
pub const NOISY_COMMANDS: [&str; 6] = ["AT+QGMR", "ATI", "AT+CPIN?", "AT+CEREG?", "AT+CREG?", "AT+QIACT?"];

/// What the simulator saw.
#[derive(Clone, Debug, Default)]
pub struct SimLog {
    /// Every command line, in order.
    pub commands: Vec<String>,
    /// Data sessions opened (CONNECT sent).
    pub links: u32,
    /// Links dropped by the simulator (fault) or by the far end.
    pub drops: u32,
    /// Buffer-mode sockets opened successfully (`+QIOPEN: <id>,0` / `+QSSLOPEN: <id>,0`).
    pub sockets_opened: u32,
    /// Bytes the device read (AT+QIRD / AT+QSSLRECV) per socket id.
    pub rd_bytes: HashMap<u8, u64>,
    /// Bytes the device sent (AT+QISEND / AT+QSSLSEND, SEND OK) per socket id.
    pub sent_bytes: HashMap<u8, u64>,
    /// Every URC sent, in order (without the framing), `RDY` included.
    pub urcs: Vec<String>,
    /// Commands (`> `), answers and URCs (`< `) as they went, interleaved (data as byte counts).
    pub transcript: Vec<String>,
    /// Bytes that crossed the UART while the device's rate and the module's disagreed (only a
    /// pty line has a rate: [`ModemSim::start_tty`]).
    pub garbled: u64,
    /// The module's UART rate now.
    pub rate: u32,
}

pub struct ModemSim {
    /// The TCP port of the UART ([`ModemSim::start`]; 0 with a pty).
    pub port: u16,
    /// The serial port the device opens ([`ModemSim::start_tty`]).
    pub tty: Option<std::path::PathBuf>,
    pub log: Arc<Mutex<SimLog>>,
    module: Arc<Module>,
    garbled: Arc<AtomicU64>,
    _rt: tokio::runtime::Runtime,
}

/// The module state that outlives a UART connection.
#[derive(Default)]
struct Module {
    version: Mutex<String>,
    /// `drop_socket_after` was applied.
    drop_used: AtomicBool,
    /// Bytes handed to the device by AT+QIRD / AT+QSSLRECV.
    delivered: AtomicU64,
    /// `pdp_deact_after` / `restart_after` fired.
    deact_used: AtomicBool,
    restart_used: AtomicBool,
    ipr_restart_used: AtomicBool,
    /// AT+QISEND / AT+QSSLSEND data transfers (`send_fail_every`).
    sends: AtomicU64,
    /// The module's UART rate (AT+IPR).
    rate: Arc<Rate>,
}

impl ModemSim {
    pub fn start(o: SimOptions) -> Result<ModemSim> {
        Self::start_on(0, o)
    }

    pub fn start_on(port: u16, o: SimOptions) -> Result<ModemSim> {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let listener = rt.block_on(TcpListener::bind(("127.0.0.1", port))).context("binding the UART port")?;
        let port = listener.local_addr()?.port();
        let mut sim = ModemSim::new(rt, o.qgmr.clone());
        sim.port = port;
        let (l, o, m, g) = (sim.log.clone(), Arc::new(o), sim.module.clone(), sim.garbled.clone());
        sim._rt.spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let _ = s.set_nodelay(true);
                // A new connection is a module that powers on: at its stored rate.
                m.rate.now.store(m.rate.saved.load(Ordering::SeqCst), Ordering::SeqCst);
                let uart = Uart { io: Box::new(s), wire: None, rate: m.rate.clone(), garbled: g.clone() };
                tokio::spawn(Session::new(uart, l.clone(), o.clone(), m.clone()).run());
            }
        });
        Ok(sim)
    }

    /// The simulator on a pseudo-terminal: the device opens [`ModemSim::tty`] as a serial port
    /// and the line has a rate (see `line`). One module for the simulator's life: it keeps
    /// running while the device restarts, as a module beside an MCU does.
    pub fn start_tty(o: SimOptions) -> Result<ModemSim> {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let (master, slave) = {
            let _g = rt.enter();
            tokio_serial::SerialStream::pair().context("opening a pseudo-terminal")?
        };
        let path = tokio_serial::SerialPort::name(&slave).context("the pty has no name")?;
        let mut sim = ModemSim::new(rt, o.qgmr.clone());
        sim.tty = Some(path.into());
        let uart = Uart {
            io: Box::new(master),
            wire: Some(Wire::new(slave)),
            rate: sim.module.rate.clone(),
            garbled: sim.garbled.clone(),
        };
        let session = Session::new(uart, sim.log.clone(), Arc::new(o), sim.module.clone());
        sim._rt.spawn(session.run());
        Ok(sim)
    }

    fn new(rt: tokio::runtime::Runtime, qgmr: String) -> ModemSim {
        let module = Arc::new(Module { version: Mutex::new(qgmr), ..Default::default() });
        let log = Arc::new(Mutex::new(SimLog::default()));
        ModemSim { port: 0, tty: None, log, module, garbled: Arc::default(), _rt: rt }
    }

    /// What a device's configuration names as the modem UART: the pty's path, or
    /// `127.0.0.1:<port>`.
    pub fn uart(&self) -> String {
        match &self.tty {
            Some(p) => p.display().to_string(),
            None => format!("127.0.0.1:{}", self.port),
        }
    }

    pub fn log(&self) -> SimLog {
        let mut l = self.log.lock().unwrap().clone();
        l.garbled = self.garbled.load(Ordering::Relaxed);
        l.rate = self.module.rate.now.load(Ordering::SeqCst);
        l
    }
}

/// The magic line of a simulated module firmware package.
const FOTA_MAGIC: &[u8] = b"QSIMFOTA1\n";

/// A simulated module firmware package: `QSIMFOTA1\n<version>\n<payload>` and the MD5 of all that.
/// (A payload starting with `from=` would be read as the from line; use [`fota_package_from`].)
pub fn fota_package(version: &str, payload: &[u8]) -> Vec<u8> {
    let mut p = FOTA_MAGIC.to_vec();
    p.extend_from_slice(version.as_bytes());
    p.push(b'\n');
    p.extend_from_slice(payload);
    let sum = Md5::digest(&p);
    p.extend_from_slice(&sum);
    p
}

/// The same, installable only over module firmware `from` (else END 510).
pub fn fota_package_from(version: &str, from: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = format!("from={from}\n").into_bytes();
    body.extend_from_slice(payload);
    fota_package(version, &body)
}

/// Checks a package against the current version: the new version, or the END error.
fn check_package(p: &[u8], current: &str) -> Result<String, i32> {
    if p.len() < FOTA_MAGIC.len() + 16 {
        return Err(504);
    }
    let (data, sum) = p.split_at(p.len() - 16);
    if Md5::digest(data).as_slice() != sum {
        return Err(504);
    }
    let rest = data.strip_prefix(FOTA_MAGIC).ok_or(504)?;
    let nl = rest.iter().position(|&b| b == b'\n').ok_or(504)?;
    let version = std::str::from_utf8(&rest[..nl]).map_err(|_| 504)?.to_string();
    if version.is_empty() {
        return Err(504);
    }
    if let Some(r) = rest[nl + 1..].strip_prefix(b"from=") {
        let nl = r.iter().position(|&b| b == b'\n').ok_or(504)?;
        if &r[..nl] != current.as_bytes() {
            return Err(510);
        }
    }
    Ok(version)
}

#[derive(Clone, Debug, Default)]
struct SslCtx {
    seclevel: u8,
    cacert: Option<String>,
    sni: bool,
}

/// Per socket buffer cap (the far end is not read while full).
const SOCK_CAP: usize = 64 * 1024;

#[derive(Default)]
struct SockState {
    buf: VecDeque<u8>,
    /// A recv URC was asked for and no read has emptied the buffer since.
    urc_outstanding: bool,
    /// The far end closed and everything it sent is in `buf`.
    closed: bool,
}

#[derive(Default)]
struct SockShared {
    st: Mutex<SockState>,
    /// The session read from the buffer (room again).
    space: Notify,
}

type WriteReq = (Vec<u8>, oneshot::Sender<bool>);

/// A buffer-mode socket as the session sees it. Dropping it ends its task (and the connection).
struct Sock {
    tls: bool,
    gen: u64,
    /// `+QIOPEN: <id>,0` was sent.
    opened: bool,
    closed_reported: bool,
    shared: Arc<SockShared>,
    wtx: mpsc::Sender<WriteReq>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the socket and FOTA tasks ask the session to report.
enum Ev {
    /// A URC, as is.
    Line(String),
    Open {
        id: u8,
        gen: u64,
        err: i32,
    },
    Recv {
        id: u8,
        gen: u64,
    },
    Closed {
        id: u8,
        gen: u64,
    },
    /// The FOTA ended; with the new version when the module is to restart.
    FotaEnd(Option<String>),
}

struct Session {
    uart: Uart,
    echo: bool,
    polls: u32,
    /// The PDP context is active.
    active: bool,
    /// The network deactivated the context (`pdpdeact`): AT+QIACT=1 fails until AT+QIDEACT=1.
    pdp_lost: bool,
    /// The next of [`NOISE_URCS`].
    noise: usize,
    /// The module's file system (AT+QFUPL / AT+QFDEL).
    files: HashMap<String, Vec<u8>>,
    /// SSL contexts 0..5 (AT+QSSLCFG).
    ctx: [SslCtx; 6],
    /// The command line being received.
    line: Vec<u8>,
    socks: HashMap<u8, Sock>,
    next_gen: u64,
    ev_tx: mpsc::UnboundedSender<Ev>,
    ev_rx: mpsc::UnboundedReceiver<Ev>,
    fota: bool,
    module: Arc<Module>,
    log: Arc<Mutex<SimLog>>,
    o: Arc<SimOptions>,
}

trait Link: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Link for T {}

enum Input {
    Byte(usize, u8),
    Event(Ev),
}

impl Session {
    fn new(uart: Uart, log: Arc<Mutex<SimLog>>, o: Arc<SimOptions>, module: Arc<Module>) -> Session {
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        Session {
            uart,
            echo: true,
            polls: 0,
            active: false,
            pdp_lost: false,
            noise: 0,
            files: HashMap::new(),
            ctx: Default::default(),
            line: Vec::new(),
            socks: HashMap::new(),
            next_gen: 0,
            ev_tx,
            ev_rx,
            fota: false,
            module,
            log,
            o,
        }
    }

    async fn run(mut self) -> Result<()> {
        if self.o.urc_noise {
            // A module says RDY once it is up, before it answers anything (a module that answered
            // and then says RDY restarted); the other start-up URCs follow among the host's first
            // commands.
            self.urc("RDY").await?;
            self.boot_urcs();
        }
        loop {
            let mut b = [0u8; 1];
            // URCs go out only here: between commands, never inside a response.
            let input = tokio::select! {
                r = self.uart.read(&mut b) => Input::Byte(r?, b[0]),
                Some(ev) = self.ev_rx.recv() => Input::Event(ev),
            };
            let b = match input {
                Input::Event(ev) => {
                    self.event(ev).await?;
                    continue;
                }
                Input::Byte(0, _) => return Ok(()),
                Input::Byte(_, b) => b,
            };
            if b != b'\r' && b != b'\n' {
                if self.line.len() >= LINE_MAX {
                    self.line.clear(); // noise without an end: dropped
                }
                self.line.push(b);
                continue;
            }
            if self.line.is_empty() {
                continue;
            }
            // A command starts with AT: what came before (bytes at a wrong rate) is not one.
            let at = self.line.windows(2).position(|w| w.eq_ignore_ascii_case(b"AT"));
            let cmd = match at {
                Some(i) => String::from_utf8_lossy(&self.line[i..]).trim().to_string(),
                None if self.line.trim_ascii() == b"+++" => "+++".to_string(),
                None => {
                    self.log.lock().unwrap().transcript.push(format!("> ({} bytes of noise)", self.line.len()));
                    self.line.clear();
                    continue;
                }
            };
            self.line.clear();
            if cmd == "+++" {
                continue; // an escape while already in command mode
            }
            if self.echo {
                self.uart.write_all(format!("{cmd}\r\n").as_bytes()).await?;
            }
            {
                let mut log = self.log.lock().unwrap();
                log.commands.push(cmd.clone());
                log.transcript.push(format!("> {cmd}"));
            }
            if self.o.slow_ms > 0 {
                tokio::time::sleep(Duration::from_millis(self.o.slow_ms)).await;
            }
            if let Some(link) = self.command(&cmd).await? {
                self.data_mode(link).await?;
            }
        }
    }

    async fn reply(&mut self, lines: &[&str]) -> Result<()> {
        self.log.lock().unwrap().transcript.push(format!("< {}", lines.join(" | ")));
        let mut out = String::new();
        for l in lines {
            out.push_str("\r\n");
            out.push_str(l);
            out.push_str("\r\n");
        }
        self.uart.write_all(out.as_bytes()).await?;
        Ok(())
    }

    async fn urc(&mut self, line: &str) -> Result<()> {
        self.log.lock().unwrap().urcs.push(line.to_string());
        self.reply(&[line]).await
    }

    /// Reports what a task asked for (between responses).
    async fn event(&mut self, ev: Ev) -> Result<()> {
        match ev {
            Ev::Line(l) => self.urc(&l).await,
            Ev::Open { id, gen, err } => {
                let Some(s) = self.socks.get_mut(&id).filter(|s| s.gen == gen) else {
                    return Ok(());
                };
                let tls = s.tls;
                if err == 0 {
                    s.opened = true;
                    self.log.lock().unwrap().sockets_opened += 1;
                } else {
                    self.socks.remove(&id);
                }
                self.urc(&format!("{}: {id},{err}", if tls { "+QSSLOPEN" } else { "+QIOPEN" })).await
            }
            Ev::Recv { id, gen } => {
                let Some(s) = self.socks.get(&id).filter(|s| s.gen == gen) else {
                    return Ok(());
                };
                let tag = if s.tls { "+QSSLURC" } else { "+QIURC" };
                self.urc(&format!("{tag}: \"recv\",{id}")).await
            }
            Ev::Closed { id, gen } => {
                let Some(s) = self.socks.get_mut(&id).filter(|s| s.gen == gen && !s.closed_reported) else {
                    return Ok(());
                };
                s.closed_reported = true;
                let tag = if s.tls { "+QSSLURC" } else { "+QIURC" };
                self.urc(&format!("{tag}: \"closed\",{id}")).await
            }
            Ev::FotaEnd(v) => {
                self.fota = false;
                match v {
                    Some(v) => self.restart(Some(v)).await,
                    None => Ok(()),
                }
            }
        }
    }

    /// The module restarts: on its new firmware after a FOTA, or unprompted on the same one
    /// (`restart_after`).
    async fn restart(&mut self, version: Option<String>) -> Result<()> {
        if let Some(v) = version {
            *self.module.version.lock().unwrap() = v;
        }
        self.socks.clear();
        self.active = false;
        self.pdp_lost = false;
        self.echo = true;
        self.polls = 0;
        self.ctx = Default::default();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // What the device sent while the module was down is lost; it comes back at its stored rate.
        self.uart.discard(Duration::from_millis(10)).await;
        let r = &self.module.rate;
        r.now.store(r.saved.load(Ordering::SeqCst), Ordering::SeqCst);
        self.line.clear();
        self.urc("RDY").await?;
        if self.o.urc_noise {
            self.boot_urcs();
        }
        Ok(())
    }

    /// The start-up URCs after `RDY` ([`BOOT_URCS`]), 100 ms apart, as events (so they go out
    /// between responses, among the host's first commands). Without a SIM: none.
    fn boot_urcs(&self) {
        let lines = if self.o.no_sim { &[][..] } else { &BOOT_URCS[1..] };
        let ev = self.ev_tx.clone();
        tokio::spawn(async move {
            for l in lines {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if ev.send(Ev::Line(l.to_string())).is_err() {
                    return;
                }
            }
        });
    }

    /// The network deactivates the PDP context (`pdp_deact_after`): the sockets lose their far
    /// ends (no closed URCs: `pdpdeact` stands for them; what they buffered stays readable until
    /// closed), sockets still connecting fail with 570 (PDP context broken down).
    async fn pdp_deact(&mut self) -> Result<()> {
        self.active = false;
        self.pdp_lost = true;
        let connecting: Vec<(u8, bool)> =
            self.socks.iter().filter(|(_, s)| !s.opened).map(|(&id, s)| (id, s.tls)).collect();
        self.socks.retain(|_, s| s.opened);
        for s in self.socks.values_mut() {
            s.task.abort(); // the far-end connection goes with the task
            s.shared.st.lock().unwrap().closed = true;
            s.closed_reported = true;
        }
        self.urc("+QIURC: \"pdpdeact\",1").await?;
        for (id, tls) in connecting {
            self.urc(&format!("{}: {id},570", if tls { "+QSSLOPEN" } else { "+QIOPEN" })).await?;
        }
        Ok(())
    }

    /// Counts `n` more bytes handed to the device; fires `pdp_deact_after` / `restart_after`
    /// (each once per simulator) when the total reaches them.
    async fn delivered(&mut self, n: usize) -> Result<()> {
        let m = self.module.clone();
        let total = m.delivered.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
        let due = |after: Option<u64>, used: &AtomicBool| {
            after.is_some_and(|a| total >= a) && !used.swap(true, Ordering::SeqCst)
        };
        if due(self.o.pdp_deact_after, &m.deact_used) {
            self.pdp_deact().await?;
        }
        if due(self.o.restart_after, &m.restart_used) {
            self.restart(None).await?;
        }
        Ok(())
    }

    /// With `urc_noise`, the next of [`NOISE_URCS`] (before the answer of [`NOISY_COMMANDS`]).
    async fn noise(&mut self) -> Result<()> {
        let l = NOISE_URCS[self.noise % NOISE_URCS.len()];
        self.noise += 1;
        self.urc(l).await
    }

    /// Answers one command; returns the link when it opened one.
    async fn command(&mut self, cmd: &str) -> Result<Option<Box<dyn Link>>> {
        if self.o.urc_noise && NOISY_COMMANDS.contains(&cmd) {
            self.noise().await?;
        }
        match cmd {
            "AT" => self.reply(&["OK"]).await?,
            "AT+IPR?" => {
                let r = self.module.rate.now.load(Ordering::SeqCst);
                self.reply(&[&format!("+IPR: {r}"), "OK"]).await?
            }
            c if c.starts_with("AT+IPR=") => match c["AT+IPR=".len()..].parse::<u32>() {
                Ok(r) if RATES.contains(&r) => {
                    // The OK goes out at the old rate; the new one holds from then on.
                    self.reply(&["OK"]).await?;
                    self.module.rate.now.store(r, Ordering::SeqCst);
                    if self.o.ipr_saved {
                        self.module.rate.saved.store(r, Ordering::SeqCst);
                    }
                    if self.o.restart_after_ipr && !self.module.ipr_restart_used.swap(true, Ordering::SeqCst) {
                        self.restart(None).await?;
                    }
                }
                _ => self.reply(&["ERROR"]).await?,
            },
            "AT&W" => {
                let r = &self.module.rate;
                r.saved.store(r.now.load(Ordering::SeqCst), Ordering::SeqCst);
                self.reply(&["OK"]).await?
            }
            // Hardware flow control (RTS/CTS) both ways; the pty's buffer is the flow control.
            "AT+IFC=2,2" | "AT+IFC=0,0" => self.reply(&["OK"]).await?,
            "ATE0" => {
                self.echo = false;
                self.reply(&["OK"]).await?
            }
            "AT+QGMR" => {
                let v = self.module.version.lock().unwrap().clone();
                self.reply(&[&v, "OK"]).await?
            }
            "ATI" => {
                let v = self.module.version.lock().unwrap().clone();
                self.reply(&["Quectel", "EC200U", &format!("Revision: {v}"), "OK"]).await?
            }
            "AT+CPIN?" if self.o.no_sim => self.reply(&["+CME ERROR: 10"]).await?,
            "AT+CPIN?" => self.reply(&["+CPIN: READY", "OK"]).await?,
            "AT+CEREG?" | "AT+CREG?" => {
                self.polls += 1;
                let stat = if self.polls > self.o.register_after_polls { 1 } else { 2 };
                let name = &cmd[2..cmd.len() - 1];
                self.reply(&[&format!("{name}: 0,{stat}"), "OK"]).await?
            }
            "AT+QIACT?" if self.active => self.reply(&["+QIACT: 1,1,1,\"10.0.0.2\"", "OK"]).await?,
            "AT+QIACT?" => self.reply(&["OK"]).await?,
            "AT+QIACT=1" if self.pdp_lost => self.reply(&["ERROR"]).await?,
            "AT+QIACT=1" => {
                self.active = true;
                self.reply(&["OK"]).await?
            }
            "AT+QIDEACT=1" => {
                self.socks.clear();
                self.active = false;
                self.pdp_lost = false;
                self.reply(&["OK"]).await?
            }
            c if c.starts_with("AT+QICSGP=1,1,\"") => self.reply(&["OK"]).await?,
            c if c.starts_with("AT+QICLOSE=") || c.starts_with("AT+QSSLCLOSE=") => {
                let arg = c.split_once('=').map(|x| x.1).unwrap_or("");
                if let Ok(id) = arg.split(',').next().unwrap_or("").trim().parse::<u8>() {
                    self.socks.remove(&id);
                }
                self.reply(&["OK"]).await?
            }
            c if c.starts_with("AT+QFDEL=") => {
                let name = c["AT+QFDEL=".len()..].trim_matches('"');
                let found = self.files.remove(name).is_some();
                self.reply(&[if found { "OK" } else { "+CME ERROR: 405" }]).await?
            }
            c if c.starts_with("AT+QFUPL=") => {
                // "name",size[,timeout]: CONNECT, exactly size bytes, +QFUPL: size,checksum.
                let args: Vec<&str> = c["AT+QFUPL=".len()..].split(',').collect();
                let name = args[0].trim_matches('"').to_string();
                let Some(size) = args.get(1).and_then(|s| s.parse::<usize>().ok()) else {
                    return self.reply(&["ERROR"]).await.map(|_| None);
                };
                self.uart.write_all(b"\r\nCONNECT\r\n").await?;
                let mut data = vec![0u8; size];
                self.uart.read_exact(&mut data).await?;
                // Quectel's checksum: XOR of the big-endian 16-bit words.
                let sum = data.chunks(2).fold(0u16, |x, w| x ^ u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
                self.files.insert(name, data);
                self.reply(&[&format!("+QFUPL: {size},{sum:x}"), "OK"]).await?
            }
            c if c.starts_with("AT+QSSLCFG=") => {
                let args: Vec<&str> = c["AT+QSSLCFG=".len()..].split(',').collect();
                let ctx = args.get(1).and_then(|c| c.parse::<usize>().ok()).filter(|&c| c < 6);
                match (args[0], ctx, args.get(2).map(|a| a.trim_matches('"'))) {
                    ("\"seclevel\"", Some(c), Some(l)) => self.ctx[c].seclevel = l.parse().unwrap_or(0),
                    ("\"cacert\"", Some(c), Some(f)) => self.ctx[c].cacert = Some(f.to_string()),
                    ("\"sni\"", Some(c), Some(v)) => self.ctx[c].sni = v == "1",
                    _ => {}
                }
                self.reply(&["OK"]).await?
            }
            c if (c.starts_with("AT+QIOPEN=1,0,\"TCP\",") || c.starts_with("AT+QSSLOPEN=1,1,4,"))
                && c.ends_with(",2") =>
            {
                let tls = c.starts_with("AT+QSSLOPEN");
                match self.open(c, tls).await {
                    Ok(link) => {
                        self.log.lock().unwrap().links += 1;
                        self.uart.write_all(b"\r\nCONNECT\r\n").await?;
                        return Ok(Some(link));
                    }
                    Err(_) => self.reply(&["ERROR"]).await?,
                }
            }
            c if c.starts_with("AT+QIOPEN=") || c.starts_with("AT+QSSLOPEN=") => {
                let r = self.open_buffered(c);
                self.reply(&[if r.is_ok() { "OK" } else { "ERROR" }]).await?
            }
            c if c.starts_with("AT+QIRD=") || c.starts_with("AT+QSSLRECV=") => self.read_cmd(c).await?,
            c if c.starts_with("AT+QISEND=") || c.starts_with("AT+QSSLSEND=") => self.send_cmd(c).await?,
            c if c.starts_with("AT+QFOTADL=") => {
                let r = self.fota_start(&c["AT+QFOTADL=".len()..]);
                self.reply(&[if r.is_ok() { "OK" } else { "ERROR" }]).await?
            }
            _ => self.reply(&["ERROR"]).await?,
        }
        Ok(None)
    }

    /// The client configuration of an SSL context: the server verified with its CA file.
    fn tls_config(&self, ctx: usize) -> Result<Arc<rustls::ClientConfig>> {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        let c = &self.ctx[ctx];
        // (A real module at seclevel 0 would not verify at all; that is not simulated.)
        anyhow::ensure!(c.seclevel >= 1, "SSL context {ctx} does not verify the server (seclevel 0)");
        let ca = c
            .cacert
            .as_ref()
            .and_then(|f| self.files.get(f))
            .with_context(|| format!("no CA file set on SSL context {ctx}"))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca) {
            roots.add(c?)?;
        }
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.enable_sni = c.sni;
        Ok(Arc::new(config))
    }

    /// Opens the socket a QIOPEN/QSSLOPEN asks for (127.0.0.1 only).
    async fn open(&mut self, cmd: &str, tls: bool) -> Result<Box<dyn Link>> {
        anyhow::ensure!(self.active, "no PDP context");
        // ...,"host",port,<mode>
        let fields: Vec<&str> = cmd.split(',').collect();
        let n = fields.len();
        anyhow::ensure!(n >= 4 && fields[n - 1] == "2", "transparent mode only");
        let (host, port) = if tls { (fields[n - 3], fields[n - 2]) } else { (fields[n - 4], fields[n - 3]) };
        let host = host.trim_matches('"');
        anyhow::ensure!(host == "127.0.0.1" || host == "localhost", "the simulator connects to 127.0.0.1 only");
        let port: u16 = port.parse()?;
        let config = if tls { Some(self.tls_config(1)?) } else { None };
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.set_nodelay(true)?;
        let Some(config) = config else {
            return Ok(Box::new(tcp));
        };
        // Context 1 as the device configured it: the server verified with the uploaded CA.
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1".to_string())?;
        let s = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.context("TLS")?;
        Ok(Box::new(s))
    }

    /// AT+QIOPEN / AT+QSSLOPEN in buffer access mode: checks, then a task connects and reports.
    fn open_buffered(&mut self, cmd: &str) -> Result<()> {
        anyhow::ensure!(self.active, "no PDP context");
        let tls = cmd.starts_with("AT+QSSLOPEN=");
        let args: Vec<&str> = cmd.split_once('=').context("no =")?.1.split(',').map(str::trim).collect();
        let (id, host, port, ctx) = if tls {
            // 1,<ctx>,<id>,"<host>",<port>,0
            anyhow::ensure!(args.len() == 6 && args[0] == "1" && args[5] == "0", "SSL buffer mode only");
            let ctx: usize = args[1].parse()?;
            anyhow::ensure!(ctx < 6, "no SSL context {ctx}");
            (args[2], args[3], args[4], ctx)
        } else {
            // 1,<id>,"TCP","<host>",<port>[,<local port>[,0]]
            anyhow::ensure!((5..=7).contains(&args.len()) && args[0] == "1", "bad QIOPEN");
            anyhow::ensure!(args[2] == "\"TCP\"", "TCP only");
            anyhow::ensure!(args.get(6).is_none_or(|m| *m == "0"), "buffer mode only");
            (args[1], args[3], args[4], 0)
        };
        let id: u8 = id.parse()?;
        anyhow::ensure!(id < 12, "socket ids are 0..11");
        let host = host.trim_matches('"').to_string();
        anyhow::ensure!(host == "127.0.0.1" || host == "localhost", "the simulator connects to 127.0.0.1 only");
        let port: u16 = port.parse()?;
        let urc = if tls { "+QSSLOPEN" } else { "+QIOPEN" };
        if self.socks.contains_key(&id) {
            let _ = self.ev_tx.send(Ev::Line(format!("{urc}: {id},563")));
            return Ok(());
        }
        let tls = if tls { Some((self.tls_config(ctx).ok(), host)) } else { None };
        let budget = match self.o.drop_socket_after {
            Some((i, n)) if i == id && !self.module.drop_used.swap(true, Ordering::SeqCst) => Some(n),
            _ => None,
        };
        self.next_gen += 1;
        let gen = self.next_gen;
        let shared = Arc::new(SockShared::default());
        let (wtx, wrx) = mpsc::channel(4);
        let is_tls = tls.is_some();
        let task = tokio::spawn(sock_task(id, gen, port, tls, shared.clone(), wrx, self.ev_tx.clone(), budget));
        self.socks.insert(id, Sock { tls: is_tls, gen, opened: false, closed_reported: false, shared, wtx, task });
        Ok(())
    }

    /// The open socket of that kind named by the first argument, and the length argument.
    fn sock_arg(&self, cmd: &str, max: usize) -> Option<(u8, usize)> {
        let tls = cmd.starts_with("AT+QSSL");
        let (id, len) = cmd.split_once('=')?.1.split_once(',')?;
        let (id, len) = (id.trim().parse::<u8>().ok()?, len.trim().parse::<usize>().ok()?);
        let s = self.socks.get(&id)?;
        (s.opened && s.tls == tls && (1..=max).contains(&len)).then_some((id, len))
    }

    /// AT+QIRD / AT+QSSLRECV.
    async fn read_cmd(&mut self, cmd: &str) -> Result<()> {
        let Some((id, len)) = self.sock_arg(cmd, 1500) else {
            return self.reply(&["ERROR"]).await;
        };
        let s = &self.socks[&id];
        let most = if self.o.partial_reads { PARTIAL_READ } else { len };
        let data: Vec<u8> = {
            let mut st = s.shared.st.lock().unwrap();
            let n = len.min(most).min(st.buf.len());
            let d = st.buf.drain(..n).collect();
            if st.buf.is_empty() {
                st.urc_outstanding = false;
            }
            d
        };
        s.shared.space.notify_one();
        let tag = if s.tls { "+QSSLRECV" } else { "+QIRD" };
        {
            let mut log = self.log.lock().unwrap();
            *log.rd_bytes.entry(id).or_default() += data.len() as u64;
            log.transcript.push(format!("< {tag}: {} (data) | OK", data.len()));
        }
        let mut out = format!("\r\n{tag}: {}\r\n", data.len()).into_bytes();
        if !data.is_empty() {
            out.extend_from_slice(&data);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\nOK\r\n");
        self.uart.write_all(&out).await?;
        self.delivered(data.len()).await
    }

    /// AT+QISEND / AT+QSSLSEND.
    async fn send_cmd(&mut self, cmd: &str) -> Result<()> {
        // After `pdpdeact` every socket left is one whose connection broke.
        let Some((id, len)) = self.sock_arg(cmd, 1460).filter(|_| !self.pdp_lost) else {
            return self.reply(&["ERROR"]).await;
        };
        self.uart.write_all(b"\r\n> ").await?;
        let mut data = vec![0u8; len];
        self.uart.read_exact(&mut data).await?;
        let s = &self.socks[&id];
        let closed = s.shared.st.lock().unwrap().closed;
        let nth = self.module.sends.fetch_add(1, Ordering::SeqCst) + 1;
        // (nth >= 1 is a multiple of 0 never: Some(0) fails nothing.)
        let full = self.o.send_fail_every.is_some_and(|k| nth.is_multiple_of(u64::from(k)));
        let mut ok = false;
        if !closed && !full {
            let (otx, orx) = oneshot::channel();
            if s.wtx.send((data, otx)).await.is_ok() {
                ok = matches!(tokio::time::timeout(Duration::from_secs(10), orx).await, Ok(Ok(true)));
            }
        }
        if ok {
            *self.log.lock().unwrap().sent_bytes.entry(id).or_default() += len as u64;
        }
        self.reply(&[if ok { "SEND OK" } else { "SEND FAIL" }]).await
    }

    /// AT+QFOTADL="<url>": checks, then a task downloads and "installs".
    fn fota_start(&mut self, arg: &str) -> Result<()> {
        let url = arg.strip_prefix('"').and_then(|u| u.strip_suffix('"')).context("the URL is quoted")?;
        anyhow::ensure!(url.len() <= 255, "URL longer than 255");
        anyhow::ensure!(url.starts_with("http://") || url.starts_with("https://"), "http(s) only");
        anyhow::ensure!(!self.fota && !self.o.fota_refuse, "FOTA refused");
        let tls = url.starts_with("https://").then(|| self.tls_config(2).ok());
        let current = self.module.version.lock().unwrap().clone();
        self.fota = true;
        tokio::spawn(fota_task(url.to_string(), tls, current, self.ev_tx.clone()));
        Ok(())
    }

    /// Transparent mode: bytes both ways until the far end closes (`NO CARRIER`), the fault
    /// drops the link, or the device sends `+++` framed by silence.
    async fn data_mode(&mut self, link: Box<dyn Link>) -> Result<()> {
        let (mut lr, mut lw) = tokio::io::split(link);
        let first = self.log.lock().unwrap().links == 1;
        let mut budget = if first { self.o.drop_first_link_after } else { None };
        let mut down = [0u8; 16 * 1024];
        let mut up = [0u8; 16 * 1024];
        let mut last_up = tokio::time::Instant::now();
        let mut plus = 0usize;
        loop {
            tokio::select! {
                r = lr.read(&mut down) => {
                    let n = r.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    let n = match budget {
                        Some(b) => n.min(b as usize),
                        None => n,
                    };
                    self.uart.write_all(&down[..n]).await?;
                    if let Some(b) = budget.as_mut() {
                        *b -= n as u64;
                        if *b == 0 {
                            break;
                        }
                    }
                }
                r = self.uart.read(&mut up) => {
                    let n = r?;
                    if n == 0 {
                        return Ok(());
                    }
                    let quiet = last_up.elapsed() >= Duration::from_millis(900);
                    last_up = tokio::time::Instant::now();
                    // `+++` after a second of silence, in one write or byte by byte (a UART
                    // delivers one byte at a time), is held back as an escape candidate.
                    let data = &up[..n];
                    if (quiet || plus > 0) && plus + n <= 3 && data.iter().all(|&b| b == b'+') {
                        plus += n;
                        if plus < 3 {
                            continue;
                        }
                        // Escape if a second of silence follows too.
                        let mut more = [0u8; 1];
                        match tokio::time::timeout(Duration::from_millis(900), self.uart.read(&mut more)).await {
                            Err(_) => {
                                self.reply(&["OK"]).await?;
                                return Ok(());
                            }
                            Ok(r) => {
                                let k = r?;
                                lw.write_all(b"+++").await?;
                                lw.write_all(&more[..k]).await?;
                                plus = 0;
                                last_up = tokio::time::Instant::now();
                                continue;
                            }
                        }
                    }
                    if plus > 0 {
                        lw.write_all(&b"+++"[..plus]).await?;
                        plus = 0;
                    }
                    lw.write_all(&up[..n]).await?;
                }
            }
        }
        self.log.lock().unwrap().drops += 1;
        self.reply(&["NO CARRIER"]).await
    }
}

/// A buffer-mode socket: connects (TLS with the context's config and the command's host as the
/// name), reports the result, then fills the buffer from the far end and forwards the device's
/// sends, until the far end closes, the fault cuts it, or the session drops the socket.
#[allow(clippy::too_many_arguments)]
async fn sock_task(
    id: u8,
    gen: u64,
    port: u16,
    tls: Option<(Option<Arc<rustls::ClientConfig>>, String)>,
    shared: Arc<SockShared>,
    mut wrx: mpsc::Receiver<WriteReq>,
    ev: mpsc::UnboundedSender<Ev>,
    mut budget: Option<u64>,
) {
    let link: Result<Box<dyn Link>, i32> = async {
        let tcp = match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(("127.0.0.1", port))).await {
            Ok(Ok(t)) => t,
            _ => return Err(566),
        };
        let _ = tcp.set_nodelay(true);
        let Some((config, host)) = tls else {
            return Ok(Box::new(tcp) as Box<dyn Link>);
        };
        let config = config.ok_or(-1)?;
        let name = rustls::pki_types::ServerName::try_from(host).map_err(|_| -1)?;
        let hs = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
        match tokio::time::timeout(Duration::from_secs(10), hs).await {
            Ok(Ok(s)) => Ok(Box::new(s) as Box<dyn Link>),
            _ => Err(-1),
        }
    }
    .await;
    let link = match link {
        Ok(l) => l,
        Err(err) => {
            let _ = ev.send(Ev::Open { id, gen, err });
            return;
        }
    };
    let _ = ev.send(Ev::Open { id, gen, err: 0 });
    let (mut rd, mut wr) = tokio::io::split(link);
    let mut tmp = vec![0u8; 16 * 1024];
    loop {
        if budget == Some(0) {
            break; // the fault: cut here
        }
        let space = SOCK_CAP.saturating_sub(shared.st.lock().unwrap().buf.len());
        let want = space.min(tmp.len()).min(budget.unwrap_or(u64::MAX).min(usize::MAX as u64) as usize);
        tokio::select! {
            r = rd.read(&mut tmp[..want]), if want > 0 => {
                let n = match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if let Some(b) = budget.as_mut() {
                    *b -= n as u64;
                }
                let urc = {
                    let mut st = shared.st.lock().unwrap();
                    st.buf.extend(&tmp[..n]);
                    !std::mem::replace(&mut st.urc_outstanding, true)
                };
                if urc {
                    let _ = ev.send(Ev::Recv { id, gen });
                }
            }
            _ = shared.space.notified(), if want == 0 => {}
            w = wrx.recv() => {
                let Some((data, reply)) = w else { return };
                let ok = wr.write_all(&data).await.is_ok() && wr.flush().await.is_ok();
                let _ = reply.send(ok);
            }
        }
    }
    shared.st.lock().unwrap().closed = true;
    let _ = ev.send(Ev::Closed { id, gen });
}

/// The module's FOTA: download, check, "install"; every step as a URC.
async fn fota_task(
    url: String,
    tls: Option<Option<Arc<rustls::ClientConfig>>>,
    current: String,
    ev: mpsc::UnboundedSender<Ev>,
) {
    let say = |l: String| {
        let _ = ev.send(Ev::Line(format!("+QIND: \"FOTA\",{l}")));
    };
    say("\"HTTPSTART\"".into());
    let body = match http_get(&url, tls, &ev).await {
        Ok(b) => b,
        Err(e) => {
            say(format!("\"HTTPEND\",{e}"));
            let _ = ev.send(Ev::FotaEnd(None));
            return;
        }
    };
    say("\"HTTPEND\",0".into());
    tokio::time::sleep(Duration::from_millis(50)).await;
    say("\"START\"".into());
    match check_package(&body, &current) {
        Err(e) => {
            say(format!("\"END\",{e}"));
            let _ = ev.send(Ev::FotaEnd(None));
        }
        Ok(version) => {
            for p in (10..=100).step_by(10) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                say(format!("\"UPDATING\",{p}"));
            }
            say("\"END\",0".into());
            let _ = ev.send(Ev::FotaEnd(Some(version)));
        }
    }
}

/// A tiny HTTP/1.1 GET toward 127.0.0.1 (see the module docs for the error codes). `tls`: for
/// https://, the client configuration of context 2 (None: the context cannot verify).
async fn http_get(
    url: &str,
    tls: Option<Option<Arc<rustls::ClientConfig>>>,
    ev: &mpsc::UnboundedSender<Ev>,
) -> Result<Vec<u8>, i32> {
    const READ: Duration = Duration::from_secs(30);
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")).ok_or(701)?;
    let (auth, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match auth.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| 711)?),
        None => (auth, if tls.is_some() { 443 } else { 80 }),
    };
    if host != "127.0.0.1" && host != "localhost" {
        return Err(711);
    }
    let tcp = match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(("127.0.0.1", port))).await {
        Err(_) => return Err(702),
        Ok(Err(_)) => return Err(716),
        Ok(Ok(t)) => t,
    };
    let mut link: Box<dyn Link> = match tls {
        None => Box::new(tcp),
        Some(config) => {
            let config = config.ok_or(701)?;
            let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|_| 711)?;
            let hs = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
            match tokio::time::timeout(Duration::from_secs(10), hs).await {
                Err(_) => return Err(702),
                Ok(Err(_)) => return Err(701),
                Ok(Ok(s)) => Box::new(s),
            }
        }
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {auth}\r\nConnection: close\r\n\r\n");
    link.write_all(req.as_bytes()).await.map_err(|_| 701)?;
    link.flush().await.map_err(|_| 701)?;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 16 * 1024 {
            return Err(701);
        }
        let n = tokio::time::timeout(READ, link.read(&mut chunk)).await.map_err(|_| 702)?.map_err(|_| 701)?;
        if n == 0 {
            return Err(701);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| 701)?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    if !status_line.starts_with("HTTP/1.") {
        return Err(701);
    }
    let status: u16 = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or(701)?;
    if !(200..300).contains(&status) {
        return Err(704);
    }
    let mut len = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else { continue };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked") {
            return Err(701);
        }
        if k.eq_ignore_ascii_case("content-length") {
            len = Some(v.parse::<usize>().map_err(|_| 701)?);
        }
    }
    let len = len.ok_or(701)?;
    if len > 64 * 1024 * 1024 {
        return Err(701);
    }
    let mut body = buf[head_end + 4..].to_vec();
    body.truncate(len);
    let mut decade = 0;
    loop {
        let pct = (body.len() * 100).checked_div(len).unwrap_or(100);
        while decade < pct / 10 {
            decade += 1;
            let _ = ev.send(Ev::Line(format!("+QIND: \"FOTA\",\"DOWNLOADING\",{}", decade * 10)));
        }
        if body.len() >= len {
            return Ok(body);
        }
        let want = (len - body.len()).min(chunk.len());
        let n = tokio::time::timeout(READ, link.read(&mut chunk[..want])).await.map_err(|_| 702)?.map_err(|_| 701)?;
        if n == 0 {
            return Err(701);
        }
        body.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener as StdListener;
    use std::path::PathBuf;
    use std::sync::mpsc as smpsc;
    use std::sync::OnceLock;

    // ---- certificates (openssl, once per test run) ----

    struct Certs {
        dir: PathBuf,
    }

    impl Certs {
        fn path(&self, f: &str) -> PathBuf {
            self.dir.join(f)
        }
        fn read(&self, f: &str) -> Vec<u8> {
            std::fs::read(self.path(f)).unwrap()
        }
    }

    fn openssl(dir: &std::path::Path, args: &[&str]) {
        let out = std::process::Command::new("openssl").current_dir(dir).args(args).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// ca1 + srv1 (localhost, 127.0.0.1, signed by ca1); ca2 + srv2 (the same names, by ca2).
    fn certs() -> &'static Certs {
        static C: OnceLock<Certs> = OnceLock::new();
        C.get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("modem-sim-certs-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("ext.cnf"),
                "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
            )
            .unwrap();
            for n in ["1", "2"] {
                let (ca, cakey, key, csr, srv) = (
                    format!("ca{n}.pem"),
                    format!("ca{n}.key"),
                    format!("srv{n}.key"),
                    format!("srv{n}.csr"),
                    format!("srv{n}.pem"),
                );
                let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
                let subj = format!("/CN=Sim Test CA {n}");
                let mut a = vec!["req", "-x509"];
                a.extend(ec);
                a.extend(["-keyout", &cakey, "-out", &ca, "-days", "30", "-subj", &subj]);
                a.extend([
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ]);
                openssl(&dir, &a);
                let mut a = vec!["req"];
                a.extend(ec);
                a.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"]);
                openssl(&dir, &a);
                openssl(
                    &dir,
                    &[
                        "x509",
                        "-req",
                        "-in",
                        &csr,
                        "-CA",
                        &ca,
                        "-CAkey",
                        &cakey,
                        "-CAcreateserial",
                        "-out",
                        &srv,
                        "-days",
                        "30",
                        "-extfile",
                        "ext.cnf",
                    ],
                );
            }
            Certs { dir }
        })
    }

    fn server_config(n: &str) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
        let c = certs();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(c.path(&format!("srv{n}.pem"))).unwrap().map(|c| c.unwrap()).collect();
        let key = PrivateKeyDer::from_pem_file(c.path(&format!("srv{n}.key"))).unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        Arc::new(cfg)
    }

    // ---- far-end servers (std threads) ----

    trait Rw: Read + Write + Send {}
    impl<T: Read + Write + Send> Rw for T {}

    /// Accepts connections; each (after the TLS handshake, when `tls`) goes to `f` with the SNI
    /// the client sent.
    fn serve(
        tls: Option<Arc<rustls::ServerConfig>>,
        f: impl Fn(Box<dyn Rw>, Option<String>) + Send + Sync + 'static,
    ) -> u16 {
        let l = StdListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let f = Arc::new(f);
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let (tls, f) = (tls.clone(), f.clone());
                std::thread::spawn(move || match tls {
                    None => f(Box::new(s), None),
                    Some(cfg) => {
                        let mut conn = rustls::ServerConnection::new(cfg).unwrap();
                        while conn.is_handshaking() {
                            if conn.complete_io(&mut s).is_err() {
                                return;
                            }
                        }
                        let sni = conn.server_name().map(str::to_string);
                        f(Box::new(rustls::StreamOwned::new(conn, s)), sni)
                    }
                });
            }
        });
        port
    }

    fn echo(mut s: Box<dyn Rw>) {
        let mut b = [0u8; 4096];
        while let Ok(n) = s.read(&mut b) {
            if n == 0 || s.write_all(&b[..n]).and_then(|_| s.flush()).is_err() {
                return;
            }
        }
    }

    /// An HTTP server answering every GET with `status` and `body` (after `delay_ms`).
    fn http(
        tls: Option<Arc<rustls::ServerConfig>>,
        status: u16,
        body: Vec<u8>,
        delay_ms: u64,
    ) -> (u16, smpsc::Receiver<String>) {
        let (tx, rx) = smpsc::channel();
        let tx = Mutex::new(tx);
        let port = serve(tls, move |mut s, _| {
            let mut req = Vec::new();
            let mut b = [0u8; 1];
            while !req.ends_with(b"\r\n\r\n") {
                if s.read(&mut b).unwrap_or(0) == 0 {
                    return;
                }
                req.push(b[0]);
            }
            let _ = tx.lock().unwrap().send(String::from_utf8_lossy(&req).to_string());
            std::thread::sleep(Duration::from_millis(delay_ms));
            let head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
            let _ = s.flush();
        });
        (port, rx)
    }

    // ---- the device side ----

    fn is_urc(l: &str) -> bool {
        ["+QIURC:", "+QSSLURC:", "+QIOPEN:", "+QSSLOPEN:", "+QIND:", "+CMTI:"].iter().any(|p| l.starts_with(p))
            || l == "RDY"
    }

    trait Port: Read + Write + Send {}
    impl<T: Read + Write + Send + ?Sized> Port for T {}

    struct Dev {
        s: Box<dyn Port>,
        /// With a pty: the serial port, to set its rate.
        tty: Option<Box<dyn tokio_serial::SerialPort>>,
        buf: Vec<u8>,
        urcs: Vec<String>,
    }

    impl Dev {
        /// Connected (the module powers on), nothing sent.
        fn connect(sim: &ModemSim) -> Dev {
            let s = std::net::TcpStream::connect(("127.0.0.1", sim.port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            Dev { s: Box::new(s), tty: None, buf: Vec::new(), urcs: Vec::new() }
        }

        /// The pty of [`ModemSim::start_tty`] opened at `rate`, nothing sent.
        fn open(sim: &ModemSim, rate: u32) -> Dev {
            let path = sim.tty.as_ref().unwrap().display().to_string();
            let s = tokio_serial::new(path, rate).timeout(Duration::from_millis(500)).open().unwrap();
            let tty = Some(s.try_clone().unwrap());
            Dev { s: Box::new(s), tty, buf: Vec::new(), urcs: Vec::new() }
        }

        fn set_rate(&mut self, rate: u32) {
            self.tty.as_mut().unwrap().set_baud_rate(rate).unwrap();
        }

        /// Whatever comes within the port's timeout.
        fn pending(&mut self) -> Vec<u8> {
            let mut b = [0u8; 4096];
            while let Ok(n) = self.s.read(&mut b) {
                if n == 0 {
                    break;
                }
                self.buf.extend_from_slice(&b[..n]);
            }
            std::mem::take(&mut self.buf)
        }

        fn new(sim: &ModemSim) -> Dev {
            let mut d = Dev::connect(sim);
            assert_eq!(d.cmd("ATE0"), ["ATE0", "OK"]);
            assert_eq!(d.cmd("AT+QIACT=1"), ["OK"]);
            d
        }

        fn fill(&mut self) {
            let mut b = [0u8; 4096];
            let n = self.s.read(&mut b).expect("nothing from the sim in 20 s");
            assert!(n > 0, "the sim closed the UART");
            self.buf.extend_from_slice(&b[..n]);
        }

        fn raw(&mut self, n: usize) -> Vec<u8> {
            while self.buf.len() < n {
                self.fill();
            }
            self.buf.drain(..n).collect()
        }

        /// The next line (leading CR/LF skipped), or "> " for the send prompt.
        fn line(&mut self) -> String {
            loop {
                let skip = self.buf.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
                self.buf.drain(..skip);
                if self.buf.starts_with(b"> ") {
                    self.buf.drain(..2);
                    return "> ".into();
                }
                if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    let l = String::from_utf8_lossy(&self.buf[..i]).to_string();
                    self.buf.drain(..i + 2);
                    return l;
                }
                self.fill();
            }
        }

        fn write(&mut self, b: &[u8]) {
            self.s.write_all(b).unwrap();
        }

        /// A command and its response lines up to the final result (URCs set aside).
        fn cmd(&mut self, c: &str) -> Vec<String> {
            self.write(format!("{c}\r").as_bytes());
            let mut out = Vec::new();
            loop {
                let l = self.line();
                if is_urc(&l) {
                    self.urcs.push(l);
                    continue;
                }
                let fin = l == "OK" || l == "ERROR" || l.starts_with("+CME ERROR");
                out.push(l);
                if fin {
                    return out;
                }
            }
        }

        /// Waits for a URC starting with `want` (URCs before it stay aside).
        fn urc(&mut self, want: &str) -> String {
            loop {
                if let Some(i) = self.urcs.iter().position(|u| u.starts_with(want)) {
                    return self.urcs.remove(i);
                }
                let l = self.line();
                assert!(is_urc(&l), "unexpected {l:?} while waiting for {want:?}");
                self.urcs.push(l);
            }
        }

        /// Lets URCs already sent arrive (an AT round trip).
        fn sync(&mut self) {
            assert_eq!(self.cmd("AT"), ["OK"]);
        }

        fn upload(&mut self, name: &str, data: &[u8]) {
            self.write(format!("AT+QFUPL=\"{name}\",{}\r", data.len()).as_bytes());
            assert_eq!(self.line(), "CONNECT");
            self.write(data);
            let r = self.cmd("");
            assert!(r[0].starts_with("+QFUPL: ") && r[1] == "OK", "{r:?}");
        }

        /// AT+QIRD / AT+QSSLRECV, checking the framing byte for byte.
        fn read(&mut self, tls: bool, id: u8, len: usize) -> Option<Vec<u8>> {
            let (c, r) = if tls { ("AT+QSSLRECV", "+QSSLRECV: ") } else { ("AT+QIRD", "+QIRD: ") };
            self.write(format!("{c}={id},{len}\r").as_bytes());
            let l = self.answer();
            if l == "ERROR" {
                return None;
            }
            let n: usize = l.strip_prefix(r).unwrap_or_else(|| panic!("{l:?}")).parse().unwrap();
            let data = self.raw(n);
            let tail: &[u8] = if n == 0 { b"\r\nOK\r\n" } else { b"\r\n\r\nOK\r\n" };
            assert_eq!(self.raw(tail.len()), tail, "the end of {c}");
            Some(data)
        }

        /// The next line that is not a URC (URCs met on the way are kept).
        fn answer(&mut self) -> String {
            loop {
                let l = self.line();
                if !is_urc(&l) {
                    return l;
                }
                self.urcs.push(l);
            }
        }

        /// Everything buffered, by reads of `chunk`.
        fn read_all(&mut self, tls: bool, id: u8) -> Vec<u8> {
            let mut all = Vec::new();
            loop {
                let d = self.read(tls, id, 1500).expect("socket open");
                if d.is_empty() {
                    return all;
                }
                all.extend(d);
            }
        }

        /// AT+QISEND / AT+QSSLSEND: the result line right after the data.
        fn send(&mut self, tls: bool, id: u8, data: &[u8]) -> String {
            let c = if tls { "AT+QSSLSEND" } else { "AT+QISEND" };
            self.write(format!("{c}={id},{}\r", data.len()).as_bytes());
            let l = self.answer();
            if l == "ERROR" {
                return l;
            }
            assert_eq!(l, "> ");
            self.write(data);
            let l = self.line();
            assert!(l == "SEND OK" || l == "SEND FAIL", "{l:?} right after the data");
            l
        }

        /// Reads `id` until `want` bytes came, waiting for recv URCs.
        fn read_n(&mut self, tls: bool, id: u8, want: usize) -> Vec<u8> {
            let tag = if tls { "+QSSLURC: \"recv\"" } else { "+QIURC: \"recv\"" };
            let mut all = Vec::new();
            while all.len() < want {
                let d = self.read_all(tls, id);
                if d.is_empty() {
                    self.urc(&format!("{tag},{id}"));
                }
                all.extend(d);
            }
            all
        }

        fn ssl_ctx(&mut self, ctx: u8, ca: &[u8], sni: bool) {
            let name = format!("UFS:ca{ctx}.pem");
            self.upload(&name, ca);
            assert_eq!(self.cmd(&format!("AT+QSSLCFG=\"seclevel\",{ctx},1")), ["OK"]);
            assert_eq!(self.cmd(&format!("AT+QSSLCFG=\"cacert\",{ctx},\"{name}\"")), ["OK"]);
            assert_eq!(self.cmd(&format!("AT+QSSLCFG=\"sni\",{ctx},{}", sni as u8)), ["OK"]);
            assert_eq!(self.cmd(&format!("AT+QSSLCFG=\"sslversion\",{ctx},4")), ["OK"]);
        }
    }

    fn sim(o: SimOptions) -> ModemSim {
        ModemSim::start(o).unwrap()
    }

    #[test]
    fn tcp_and_ssl_sockets_at_once() {
        let tcp = serve(None, |s, _| echo(s));
        let ssl = serve(Some(server_config("1")), |s, _| echo(s));
        let m = sim(SimOptions::default());
        let mut d = Dev::new(&m);
        d.ssl_ctx(1, &certs().read("ca1.pem"), true);
        assert_eq!(d.cmd(&format!("AT+QIOPEN=1,0,\"TCP\",\"127.0.0.1\",{tcp},0,0")), ["OK"]);
        assert_eq!(d.cmd(&format!("AT+QSSLOPEN=1,1,1,\"localhost\",{ssl},0")), ["OK"]);
        assert_eq!(d.urc("+QIOPEN: 0,"), "+QIOPEN: 0,0");
        assert_eq!(d.urc("+QSSLOPEN: 1,"), "+QSSLOPEN: 1,0");
        let tricky = b"a\r\nOK\r\n\r\n+QIRD: 5\r\nERROR\r\nz".to_vec();
        for round in 0..5u8 {
            let t: Vec<u8> = [tricky.clone(), vec![round; 1000]].concat();
            let s: Vec<u8> = [b"ssl ".to_vec(), vec![b'0' + round; 1400], tricky.clone()].concat();
            assert_eq!(d.send(false, 0, &t), "SEND OK");
            assert_eq!(d.send(true, 1, &s), "SEND OK");
            assert_eq!(d.read_n(true, 1, s.len()), s);
            assert_eq!(d.read_n(false, 0, t.len()), t);
        }
        // Kinds do not mix: QIRD of the SSL socket, QSSLSEND of the TCP one.
        assert_eq!(d.read(false, 1, 10), None);
        assert_eq!(d.send(true, 0, b"x"), "ERROR");
        assert_eq!(d.cmd("AT+QSSLCLOSE=1"), ["OK"]);
        assert_eq!(d.cmd("AT+QICLOSE=0"), ["OK"]);
        assert_eq!(d.read(false, 0, 10), None);
        let log = m.log();
        assert_eq!(log.sockets_opened, 2);
        assert_eq!(log.rd_bytes[&0], 5 * (tricky.len() as u64 + 1000));
        assert_eq!(log.rd_bytes[&1], 5 * (tricky.len() as u64 + 1404));
        assert!(log.urcs.iter().any(|u| u == "+QSSLURC: \"recv\",1"), "{:?}", log.urcs);
    }

    #[test]
    fn recv_urc_once_until_drained() {
        let tcp = serve(None, |s, _| echo(s));
        let m = sim(SimOptions::default());
        let mut d = Dev::new(&m);
        assert_eq!(d.cmd(&format!("AT+QIOPEN=1,3,\"TCP\",\"localhost\",{tcp},0,0")), ["OK"]);
        assert_eq!(d.urc("+QIOPEN: 3,"), "+QIOPEN: 3,0");
        assert_eq!(d.read(false, 3, 100), Some(vec![]));
        assert_eq!(d.send(false, 3, b"0123456789"), "SEND OK");
        d.urc("+QIURC: \"recv\",3");
        assert_eq!(d.send(false, 3, b"abcdefghij"), "SEND OK");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(d.read(false, 3, 5), Some(b"01234".to_vec()));
        d.sync();
        std::thread::sleep(Duration::from_millis(200));
        d.sync();
        assert!(d.urcs.is_empty(), "a second recv URC before the buffer was drained: {:?}", d.urcs);
        assert_eq!(d.read(false, 3, 1500), Some(b"56789abcdefghij".to_vec()));
        assert_eq!(d.read(false, 3, 1500), Some(vec![]));
        assert_eq!(d.send(false, 3, b"again"), "SEND OK");
        assert_eq!(d.urc("+QIURC: \"recv\""), "+QIURC: \"recv\",3");
        assert_eq!(d.read(false, 3, 1500), Some(b"again".to_vec()));
        // Bad lengths and ids.
        assert_eq!(d.read(false, 3, 0), None);
        assert_eq!(d.read(false, 3, 1501), None);
        assert_eq!(d.send(false, 3, &[0u8; 1461]), "ERROR");
        assert_eq!(d.cmd("AT+QIOPEN=1,12,\"TCP\",\"127.0.0.1\",1,0,0"), ["ERROR"]);
        let recvs = m.log().urcs.iter().filter(|u| u.starts_with("+QIURC: \"recv\"")).count();
        assert_eq!(recvs, 2);
    }

    #[test]
    fn closed_urc_then_remaining_data_and_errors() {
        let bye = serve(None, |mut s, _| {
            let _ = s.write_all(b"last words\r\nOK\r\n");
        });
        let m = sim(SimOptions::default());
        let mut d = Dev::new(&m);
        assert_eq!(d.cmd(&format!("AT+QIOPEN=1,5,\"TCP\",\"127.0.0.1\",{bye},0,0")), ["OK"]);
        assert_eq!(d.urc("+QIOPEN: 5,"), "+QIOPEN: 5,0");
        d.urc("+QIURC: \"recv\",5");
        assert_eq!(d.urc("+QIURC: \"closed\""), "+QIURC: \"closed\",5");
        assert_eq!(d.read(false, 5, 4), Some(b"last".to_vec()));
        assert_eq!(d.read(false, 5, 1500), Some(b" words\r\nOK\r\n".to_vec()));
        assert_eq!(d.read(false, 5, 1500), Some(vec![]));
        assert_eq!(d.send(false, 5, b"hello?"), "SEND FAIL");
        // Still in use until closed.
        assert_eq!(d.cmd(&format!("AT+QSSLOPEN=1,1,5,\"127.0.0.1\",{bye},0")), ["OK"]);
        assert_eq!(d.urc("+QSSLOPEN: 5,"), "+QSSLOPEN: 5,563");
        assert_eq!(d.cmd("AT+QICLOSE=5"), ["OK"]);
        assert_eq!(d.cmd("AT+QICLOSE=5"), ["OK"]);
        assert_eq!(d.cmd("AT+QSSLCLOSE=9"), ["OK"]);
        assert_eq!(d.read(false, 5, 10), None);
        assert_eq!(d.send(false, 5, b"x"), "ERROR");
        // Reusable; one closed URC per socket.
        assert_eq!(d.cmd(&format!("AT+QIOPEN=1,5,\"TCP\",\"127.0.0.1\",{bye},0,0")), ["OK"]);
        assert_eq!(d.urc("+QIOPEN: 5,"), "+QIOPEN: 5,0");
        d.urc("+QIURC: \"closed\",5");
        assert_eq!(d.read_all(false, 5), b"last words\r\nOK\r\n");
        d.sync();
        assert_eq!(m.log().urcs.iter().filter(|u| u.contains("closed")).count(), 2);
        // Nobody listening: 566; not 127.0.0.1: ERROR; without a PDP context: ERROR.
        let dead = StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert_eq!(d.cmd(&format!("AT+QIOPEN=1,2,\"TCP\",\"127.0.0.1\",{dead},0,0")), ["OK"]);
        assert_eq!(d.urc("+QIOPEN: 2,"), "+QIOPEN: 2,566");
        assert_eq!(d.read(false, 2, 10), None);
        assert_eq!(d.cmd("AT+QIOPEN=1,2,\"TCP\",\"10.1.2.3\",80,0,0"), ["ERROR"]);
        let mut d2 = Dev::connect(&m);
        assert_eq!(d2.cmd("ATE0"), ["ATE0", "OK"]);
        assert_eq!(d2.cmd(&format!("AT+QIOPEN=1,2,\"TCP\",\"127.0.0.1\",{bye},0,0")), ["ERROR"]);
    }

    #[test]
    fn ssl_server_not_covered_by_the_ca() {
        let other = serve(Some(server_config("2")), |s, _| echo(s));
        let good = serve(Some(server_config("1")), |s, _| echo(s));
        let m = sim(SimOptions::default());
        let mut d = Dev::new(&m);
        // Context 3 has no CA yet, then ca1 (which does not cover srv2).
        assert_eq!(d.cmd(&format!("AT+QSSLOPEN=1,3,0,\"localhost\",{good},0")), ["OK"]);
        assert_eq!(d.urc("+QSSLOPEN: 0,"), "+QSSLOPEN: 0,-1");
        d.ssl_ctx(3, &certs().read("ca1.pem"), false);
        assert_eq!(d.cmd(&format!("AT+QSSLOPEN=1,3,0,\"localhost\",{other},0")), ["OK"]);
        assert_eq!(d.urc("+QSSLOPEN: 0,"), "+QSSLOPEN: 0,-1");
        assert_eq!(d.read(true, 0, 10), None);
        // The id is free again after a failed open; the right server works on the same context.
        assert_eq!(d.cmd(&format!("AT+QSSLOPEN=1,3,0,\"127.0.0.1\",{good},0")), ["OK"]);
        assert_eq!(d.urc("+QSSLOPEN: 0,"), "+QSSLOPEN: 0,0");
        assert_eq!(d.send(true, 0, b"ping"), "SEND OK");
        assert_eq!(d.read_n(true, 0, 4), b"ping");
        assert_eq!(m.log().sockets_opened, 1);
    }

    #[test]
    fn ssl_sni_per_context() {
        let (tx, rx) = smpsc::channel();
        let tx = Mutex::new(tx);
        let srv = serve(Some(server_config("1")), move |s, sni| {
            let _ = tx.lock().unwrap().send(sni);
            echo(s)
        });
        let m = sim(SimOptions::default());
        let mut d = Dev::new(&m);
        let ca = certs().read("ca1.pem");
        d.ssl_ctx(1, &ca, true);
        d.ssl_ctx(4, &ca, false);
        assert_eq!(d.cmd(&format!("AT+QSSLOPEN=1,1,0,\"localhost\",{srv},0")), ["OK"]);
        assert_eq!(d.urc("+QSSLOPEN: 0,"), "+QSSLOPEN: 0,0");
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap().as_deref(), Some("localhost"));
        assert_eq!(d.cmd(&format!("AT+QSSLOPEN=1,4,1,\"localhost\",{srv},0")), ["OK"]);
        assert_eq!(d.urc("+QSSLOPEN: 1,"), "+QSSLOPEN: 1,0");
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), None);
        assert_eq!(d.send(true, 1, b"no sni"), "SEND OK");
        assert_eq!(d.read_n(true, 1, 6), b"no sni");
    }

    #[test]
    fn qgmr_ati_and_slow_module() {
        let m = sim(SimOptions::default());
        let mut d = Dev::new(&m);
        assert_eq!(d.cmd("AT+QGMR"), ["EC200UCNAAR03A01M08", "OK"]);
        assert_eq!(d.cmd("ATI"), ["Quectel", "EC200U", "Revision: EC200UCNAAR03A01M08", "OK"]);
        let m = sim(SimOptions { qgmr: "BG95M3LAR02A03".into(), slow_ms: 150, ..Default::default() });
        let mut d = Dev::new(&m);
        let t0 = std::time::Instant::now();
        assert_eq!(d.cmd("AT+QGMR"), ["BG95M3LAR02A03", "OK"]);
        assert!(t0.elapsed() >= Duration::from_millis(150), "{:?}", t0.elapsed());
    }

    fn fota_urcs_until_end(d: &mut Dev) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let u = d.urc("+QIND: \"FOTA\"");
            let end = u.contains("\"END\"") || (u.contains("HTTPEND") && !u.ends_with(",0"));
            seen.push(u);
            if end {
                return seen;
            }
        }
    }

    #[test]
    fn fota_success_over_https_restarts_the_module() {
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
        let (web, reqs) = http(Some(server_config("1")), 200, fota_package("NEWVER", &payload), 0);
        let tcp = serve(None, |s, _| echo(s));
        let m = sim(SimOptions::default());
        let mut d = Dev::new(&m);
        d.ssl_ctx(2, &certs().read("ca1.pem"), true);
        assert_eq!(d.cmd(&format!("AT+QIOPEN=1,0,\"TCP\",\"127.0.0.1\",{tcp},0,0")), ["OK"]);
        assert_eq!(d.urc("+QIOPEN: 0,"), "+QIOPEN: 0,0");
        assert_eq!(d.cmd(&format!("AT+QFOTADL=\"https://localhost:{web}/fw/module.bin\"")), ["OK"]);
        // A second one while it runs.
        assert_eq!(d.cmd(&format!("AT+QFOTADL=\"https://localhost:{web}/fw/module.bin\"")), ["ERROR"]);
        let seen = fota_urcs_until_end(&mut d);
        let mut want = vec!["+QIND: \"FOTA\",\"HTTPSTART\"".to_string()];
        want.extend((1..=10).map(|p| format!("+QIND: \"FOTA\",\"DOWNLOADING\",{}", p * 10)));
        want.push("+QIND: \"FOTA\",\"HTTPEND\",0".into());
        want.push("+QIND: \"FOTA\",\"START\"".into());
        want.extend((1..=10).map(|p| format!("+QIND: \"FOTA\",\"UPDATING\",{}", p * 10)));
        want.push("+QIND: \"FOTA\",\"END\",0".into());
        assert_eq!(seen, want);
        let req = reqs.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(req.starts_with("GET /fw/module.bin HTTP/1.1\r\n"), "{req}");
        assert!(
            req.contains(&format!("\r\nHost: localhost:{web}\r\n")) && req.contains("\r\nConnection: close\r\n"),
            "{req}"
        );
        assert_eq!(d.urc("RDY"), "RDY");
        // Restarted: echo on, no PDP context, no sockets, the new version.
        assert_eq!(d.cmd("AT"), ["AT", "OK"]);
        assert_eq!(d.cmd("AT+QIACT?"), ["AT+QIACT?", "OK"]);
        assert_eq!(d.cmd("AT+QGMR"), ["AT+QGMR", "NEWVER", "OK"]);
        assert_eq!(d.cmd("ATE0"), ["ATE0", "OK"]);
        assert_eq!(d.read(false, 0, 10), None);
        assert_eq!(d.cmd("AT+QIACT=1"), ["OK"]);
        assert_eq!(d.cmd(&format!("AT+QIOPEN=1,0,\"TCP\",\"127.0.0.1\",{tcp},0,0")), ["OK"]);
        assert_eq!(d.urc("+QIOPEN: 0,"), "+QIOPEN: 0,0");
        // The version outlives the UART connection.
        let mut d2 = Dev::new(&m);
        assert_eq!(d2.cmd("AT+QGMR"), ["NEWVER", "OK"]);
    }

    #[test]
    fn fota_corrupted_package_keeps_the_module_running() {
        let mut bad = fota_package("NEWVER", &[1u8; 5000]);
        bad[100] ^= 1;
        let (web, _r) = http(None, 200, bad, 0);
        let tcp = serve(None, |s, _| echo(s));
        let m = sim(SimOptions::default());
        let mut d = Dev::new(&m);
        assert_eq!(d.cmd(&format!("AT+QIOPEN=1,0,\"TCP\",\"127.0.0.1\",{tcp},0,0")), ["OK"]);
        assert_eq!(d.urc("+QIOPEN: 0,"), "+QIOPEN: 0,0");
        assert_eq!(d.cmd(&format!("AT+QFOTADL=\"http://127.0.0.1:{web}/m.bin\"")), ["OK"]);
        // The socket keeps working during the FOTA.
        assert_eq!(d.send(false, 0, b"progress 1"), "SEND OK");
        let seen = fota_urcs_until_end(&mut d);
        assert_eq!(seen.last().unwrap(), "+QIND: \"FOTA\",\"END\",504");
        assert!(
            seen.contains(&"+QIND: \"FOTA\",\"HTTPEND\",0".to_string()) && !seen.iter().any(|u| u.contains("UPDATING"))
        );
        assert_eq!(d.read_n(false, 0, 10), b"progress 1");
        std::thread::sleep(Duration::from_millis(500));
        d.sync();
        assert!(!d.urcs.contains(&"RDY".to_string()), "{:?}", d.urcs);
        assert_eq!(d.cmd("AT+QGMR"), ["EC200UCNAAR03A01M08", "OK"]);
        assert_eq!(d.send(false, 0, b"still up"), "SEND OK");
        assert_eq!(d.read_n(false, 0, 8), b"still up");
        // A package for another current version: 510.
        let (web, _r) = http(None, 200, fota_package_from("NEWVER", "EC200UCNAAR03A01M07", b"x"), 0);
        assert_eq!(d.cmd(&format!("AT+QFOTADL=\"http://127.0.0.1:{web}/m.bin\"")), ["OK"]);
        assert_eq!(fota_urcs_until_end(&mut d).last().unwrap(), "+QIND: \"FOTA\",\"END\",510");
        assert_eq!(d.cmd("AT+QGMR"), ["EC200UCNAAR03A01M08", "OK"]);
    }

    #[test]
    fn fota_refusals_and_http_errors() {
        let (nf, _r) = http(None, 404, b"not here".to_vec(), 300);
        let m = sim(SimOptions::default());
        let mut d = Dev::new(&m);
        let long = format!("http://127.0.0.1:{nf}/{}", "a".repeat(255));
        assert_eq!(d.cmd(&format!("AT+QFOTADL=\"{long}\"")), ["ERROR"]);
        assert_eq!(d.cmd("AT+QFOTADL=\"ftp://127.0.0.1/x\""), ["ERROR"]);
        assert_eq!(d.cmd(&format!("AT+QFOTADL=\"http://127.0.0.1:{nf}/x\"")), ["OK"]);
        assert_eq!(d.cmd(&format!("AT+QFOTADL=\"http://127.0.0.1:{nf}/x\"")), ["ERROR"]);
        assert_eq!(fota_urcs_until_end(&mut d), ["+QIND: \"FOTA\",\"HTTPSTART\"", "+QIND: \"FOTA\",\"HTTPEND\",704"]);
        let dead = StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert_eq!(d.cmd(&format!("AT+QFOTADL=\"http://127.0.0.1:{dead}/x\"")), ["OK"]);
        assert_eq!(fota_urcs_until_end(&mut d).last().unwrap(), "+QIND: \"FOTA\",\"HTTPEND\",716");
        assert_eq!(d.cmd("AT+QFOTADL=\"http://example.com/x\""), ["OK"]);
        assert_eq!(fota_urcs_until_end(&mut d).last().unwrap(), "+QIND: \"FOTA\",\"HTTPEND\",711");
        // https with context 2 not configured.
        let (web, _r) = http(Some(server_config("1")), 200, fota_package("V", b""), 0);
        assert_eq!(d.cmd(&format!("AT+QFOTADL=\"https://127.0.0.1:{web}/x\"")), ["OK"]);
        assert_eq!(fota_urcs_until_end(&mut d).last().unwrap(), "+QIND: \"FOTA\",\"HTTPEND\",701");
        assert_eq!(d.cmd("AT+QGMR"), ["EC200UCNAAR03A01M08", "OK"]);
        let m = sim(SimOptions { fota_refuse: true, ..Default::default() });
        let mut d = Dev::new(&m);
        assert_eq!(d.cmd(&format!("AT+QFOTADL=\"http://127.0.0.1:{nf}/x\"")), ["ERROR"]);
    }

    #[test]
    fn drop_socket_after_cuts_the_far_end() {
        let big = serve(None, |mut s, _| {
            let _ = s.write_all(&[7u8; 5000]);
            std::thread::sleep(Duration::from_secs(5));
        });
        let m = sim(SimOptions { drop_socket_after: Some((1, 1000)), ..Default::default() });
        let mut d = Dev::new(&m);
        assert_eq!(d.cmd(&format!("AT+QIOPEN=1,1,\"TCP\",\"127.0.0.1\",{big},0,0")), ["OK"]);
        assert_eq!(d.urc("+QIOPEN: 1,"), "+QIOPEN: 1,0");
        d.urc("+QIURC: \"closed\",1");
        assert_eq!(d.read_all(false, 1), vec![7u8; 1000]);
        assert_eq!(d.send(false, 1, b"x"), "SEND FAIL");
        assert_eq!(d.cmd("AT+QICLOSE=1"), ["OK"]);
        // Once per simulator: the next socket 1 gets everything.
        assert_eq!(d.cmd(&format!("AT+QIOPEN=1,1,\"TCP\",\"127.0.0.1\",{big},0,0")), ["OK"]);
        assert_eq!(d.urc("+QIOPEN: 1,"), "+QIOPEN: 1,0");
        assert_eq!(d.read_n(false, 1, 5000), vec![7u8; 5000]);
        assert_eq!(m.log().rd_bytes[&1], 6000);
    }

    #[test]
    fn backpressure_stops_reading_the_far_end() {
        const TOTAL: usize = 64 * 1024 * 1024;
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let s2 = sent.clone();
        let flood = serve(None, move |mut s, _| {
            let chunk = [3u8; 4096];
            while s2.load(Ordering::SeqCst) < TOTAL {
                if s.write_all(&chunk).is_err() {
                    return;
                }
                s2.fetch_add(chunk.len(), Ordering::SeqCst);
            }
        });
        let m = sim(SimOptions::default());
        let mut d = Dev::new(&m);
        assert_eq!(d.cmd(&format!("AT+QIOPEN=1,0,\"TCP\",\"127.0.0.1\",{flood},0,0")), ["OK"]);
        assert_eq!(d.urc("+QIOPEN: 0,"), "+QIOPEN: 0,0");
        d.urc("+QIURC: \"recv\",0");
        std::thread::sleep(Duration::from_millis(700));
        // The sim holds 64 KiB, the kernel's buffers some MB: the far end stalls.
        let s1 = sent.load(Ordering::SeqCst);
        assert!(s1 < TOTAL, "the far end was read without limit");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(sent.load(Ordering::SeqCst), s1, "the far end did not stall");
        // Reading makes room, and the far end moves again.
        let got = d.read_n(false, 0, 200 * 1024);
        assert!(got.iter().all(|&b| b == 3));
        std::thread::sleep(Duration::from_millis(300));
        assert!(sent.load(Ordering::SeqCst) > s1);
    }

    #[test]
    fn over_a_pty_the_rates_must_agree_and_at_ipr_moves_the_module() {
        let sim = ModemSim::start_tty(SimOptions::default()).unwrap();
        // The device at 921,600, the module at its power-on 115,200: nothing understood.
        let mut d = Dev::open(&sim, 921_600);
        d.write(b"AT\r");
        assert_eq!(d.pending(), b"", "a command at the wrong rate is no command");
        assert!(sim.log().commands.is_empty());
        // At the module's rate the next AT is read whole, the noise before it dropped.
        d.set_rate(115_200);
        assert_eq!(d.cmd("AT"), ["AT", "OK"]);
        assert_eq!(d.cmd("ATE0"), ["ATE0", "OK"]);
        assert_eq!(d.cmd("AT+IPR?"), ["+IPR: 115200", "OK"]);
        assert_eq!(d.cmd("AT+IPR=12345"), ["ERROR"]);
        // The OK comes at the old rate, then the module runs at the new one.
        assert_eq!(d.cmd("AT+IPR=921600"), ["OK"]);
        d.write(b"AT\r");
        let g = d.pending();
        assert!(g.iter().all(|&b| b >= 0x80), "garbage, never a character: {g:?}");
        d.set_rate(921_600);
        assert_eq!(d.cmd("AT"), ["OK"]);
        assert_eq!(d.cmd("AT+IFC=2,2"), ["OK"]);
        assert_eq!(d.cmd("AT+IPR?"), ["+IPR: 921600", "OK"]);
        let log = sim.log();
        assert_eq!(log.rate, 921_600);
        assert!(log.garbled >= 3, "{} bytes garbled", log.garbled);
        // The device restarts (closes and opens its port at its own power-on rate); the module
        // keeps running at 921,600.
        drop(d);
        let mut d = Dev::open(&sim, 115_200);
        d.write(b"AT\r");
        assert!(d.pending().iter().all(|&b| b >= 0x80));
        d.set_rate(921_600);
        assert_eq!(d.cmd("AT"), ["OK"]);
    }

    #[test]
    fn the_line_carries_no_more_than_its_rate() {
        let sim = ModemSim::start_tty(SimOptions::default()).unwrap();
        let mut d = Dev::open(&sim, 115_200);
        assert_eq!(d.cmd("ATE0"), ["ATE0", "OK"]);
        assert_eq!(d.cmd("AT+IPR=9600"), ["OK"]);
        d.set_rate(9600);
        // 100 commands of 3 bytes and their 6-byte answers: 900 bytes, 0.94 s at 960 bytes/s
        // (a lower bound: the model never carries more than the rate, however fast the host).
        let t = std::time::Instant::now();
        for _ in 0..100 {
            assert_eq!(d.cmd("AT"), ["OK"]);
        }
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(900), "900 bytes at 9600 baud in {took:?}");
    }

    #[test]
    fn realistic_turns_every_behaviour_on() {
        let r = SimOptions::realistic();
        assert!(r.partial_reads && r.urc_noise);
        assert!(r.pdp_deact_after.is_some() && r.restart_after.is_some() && r.send_fail_every.is_some());
        let d = SimOptions::default();
        assert!(!d.partial_reads && !d.urc_noise);
        assert!(d.pdp_deact_after.is_none() && d.restart_after.is_none() && d.send_fail_every.is_none());
        assert_eq!((r.qgmr, r.no_sim, r.slow_ms), (d.qgmr, d.no_sim, d.slow_ms));
    }

    #[test]
    fn pdp_deact_after_needs_qideact_before_qiact() {
        let big = serve(None, |mut s, _| {
            let _ = s.write_all(&[5u8; 4000]);
            std::thread::sleep(Duration::from_secs(20));
        });
        let (tx, rx) = smpsc::channel();
        let tx = Mutex::new(tx);
        let quiet = serve(None, move |mut s, _| {
            let mut b = [0u8; 64];
            while s.read(&mut b).unwrap_or(0) > 0 {}
            let _ = tx.lock().unwrap().send(());
        });
        let m = sim(SimOptions { pdp_deact_after: Some(2000), ..Default::default() });
        let mut d = Dev::new(&m);
        assert_eq!(d.cmd(&format!("AT+QIOPEN=1,0,\"TCP\",\"127.0.0.1\",{big},0,0")), ["OK"]);
        assert_eq!(d.cmd(&format!("AT+QIOPEN=1,1,\"TCP\",\"127.0.0.1\",{quiet},0,0")), ["OK"]);
        assert_eq!(d.urc("+QIOPEN: 0,"), "+QIOPEN: 0,0");
        assert_eq!(d.urc("+QIOPEN: 1,"), "+QIOPEN: 1,0");
        d.urc("+QIURC: \"recv\",0");
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(d.read(false, 0, 1500), Some(vec![5u8; 1500]));
        d.sync();
        assert!(!d.urcs.iter().any(|u| u.contains("pdpdeact")), "{:?}", d.urcs);
        // 3000 bytes read: the network takes the context down.
        assert_eq!(d.read(false, 0, 1500), Some(vec![5u8; 1500]));
        assert_eq!(d.urc("+QIURC: \"pdpdeact\""), "+QIURC: \"pdpdeact\",1");
        rx.recv_timeout(Duration::from_secs(10)).expect("socket 1's far end dropped");
        // What socket 0 buffered is still there; nothing goes out.
        assert_eq!(d.read_all(false, 0), vec![5u8; 1000]);
        assert_eq!(d.send(false, 1, b"x"), "ERROR");
        // Down, and refused until deactivated.
        assert_eq!(d.cmd("AT+QIACT?"), ["OK"]);
        assert_eq!(d.cmd("AT+QIACT=1"), ["ERROR"]);
        assert_eq!(d.cmd(&format!("AT+QIOPEN=1,2,\"TCP\",\"127.0.0.1\",{big},0,0")), ["ERROR"]);
        assert_eq!(d.cmd("AT+QIACT=1"), ["ERROR"]);
        assert_eq!(d.cmd("AT+QIDEACT=1"), ["OK"]);
        assert_eq!(d.read(false, 0, 10), None);
        assert_eq!(d.cmd("AT+QIACT?"), ["OK"]);
        assert_eq!(d.cmd("AT+QIACT=1"), ["OK"]);
        assert_eq!(d.cmd("AT+QIACT?"), ["+QIACT: 1,1,1,\"10.0.0.2\"", "OK"]);
        // Once per simulator.
        assert_eq!(d.cmd(&format!("AT+QIOPEN=1,0,\"TCP\",\"127.0.0.1\",{big},0,0")), ["OK"]);
        assert_eq!(d.urc("+QIOPEN: 0,"), "+QIOPEN: 0,0");
        assert_eq!(d.read_n(false, 0, 4000), vec![5u8; 4000]);
        d.sync();
        let urcs = m.log().urcs;
        assert_eq!(urcs.iter().filter(|u| u.contains("pdpdeact")).count(), 1, "{urcs:?}");
        assert!(!urcs.iter().any(|u| u.contains("closed")), "{urcs:?}");
    }

    #[test]
    fn partial_reads_hand_out_512_bytes_and_one_urc() {
        let data: Vec<u8> = (0..2000u32).map(|i| (i * 13) as u8).collect();
        let d2 = data.clone();
        let srv = serve(None, move |mut s, _| {
            let _ = s.write_all(&d2);
            std::thread::sleep(Duration::from_secs(20));
        });
        let m = sim(SimOptions { partial_reads: true, ..Default::default() });
        let mut d = Dev::new(&m);
        assert_eq!(d.cmd(&format!("AT+QIOPEN=1,2,\"TCP\",\"127.0.0.1\",{srv},0,0")), ["OK"]);
        assert_eq!(d.urc("+QIOPEN: 2,"), "+QIOPEN: 2,0");
        d.urc("+QIURC: \"recv\",2");
        std::thread::sleep(Duration::from_millis(500));
        let mut got = d.read(false, 2, 1500).unwrap();
        assert_eq!(got.len(), 512);
        // A host that reads once per URC waits in vain: no URC while data remains.
        d.sync();
        std::thread::sleep(Duration::from_millis(300));
        d.sync();
        assert!(d.urcs.is_empty(), "{:?}", d.urcs);
        let mut sizes = vec![got.len()];
        loop {
            let r = d.read(false, 2, 1500).unwrap();
            if r.is_empty() {
                break;
            }
            sizes.push(r.len());
            got.extend(r);
        }
        assert_eq!(sizes, [512, 512, 512, 464]);
        assert_eq!(got, data);
        assert_eq!(d.read(false, 2, 100), Some(vec![]));
        let recvs = m.log().urcs.iter().filter(|u| u.starts_with("+QIURC: \"recv\"")).count();
        assert_eq!(recvs, 1);
    }

    #[test]
    fn send_fail_every_nth_transfer() {
        let tcp = serve(None, |s, _| echo(s));
        let m = sim(SimOptions { send_fail_every: Some(2), ..Default::default() });
        let mut d = Dev::new(&m);
        assert_eq!(d.cmd(&format!("AT+QIOPEN=1,0,\"TCP\",\"127.0.0.1\",{tcp},0,0")), ["OK"]);
        assert_eq!(d.urc("+QIOPEN: 0,"), "+QIOPEN: 0,0");
        assert_eq!(d.send(false, 0, b"one"), "SEND OK");
        assert_eq!(d.send(false, 0, b"two"), "SEND FAIL");
        assert_eq!(d.send(false, 0, b"three"), "SEND OK");
        assert_eq!(d.send(false, 0, b"four"), "SEND FAIL");
        // Only what was answered SEND OK reached the far end (and came back).
        assert_eq!(d.read_n(false, 0, 8), b"onethree");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(d.read_all(false, 0), b"");
        assert_eq!(m.log().sent_bytes[&0], 8);
    }

    #[test]
    fn urc_noise_at_start_up_and_before_answers() {
        let m = sim(SimOptions { urc_noise: true, ..Default::default() });
        let mut d = Dev::connect(&m);
        // Unprompted, right after power-on.
        for u in BOOT_URCS {
            assert_eq!(d.line(), u);
        }
        fn said(d: &mut Dev, c: &str, n: usize) -> Vec<String> {
            d.write(format!("{c}\r").as_bytes());
            (0..n).map(|_| d.line()).collect()
        }
        // Echo on: the echo, then the URC, then the answer.
        assert_eq!(said(&mut d, "AT+QGMR", 4), ["AT+QGMR", "+QIND: PB DONE", "EC200UCNAAR03A01M08", "OK"]);
        assert_eq!(said(&mut d, "ATE0", 2), ["ATE0", "OK"]);
        assert_eq!(said(&mut d, "AT+CPIN?", 3), ["+QIND: SMS DONE", "+CPIN: READY", "OK"]);
        assert_eq!(said(&mut d, "AT+QIACT?", 2), ["+CMTI: \"SM\",9", "OK"]);
        assert_eq!(said(&mut d, "AT", 1), ["OK"]);
        assert_eq!(said(&mut d, "AT+QGMR", 3), ["+QIND: PB DONE", "EC200UCNAAR03A01M08", "OK"]);
        let urcs = m.log().urcs;
        assert_eq!(urcs.len(), BOOT_URCS.len() + 4, "{urcs:?}");
    }

    #[test]
    fn restart_after_bytes_read() {
        let big = serve(None, |mut s, _| {
            let _ = s.write_all(&[1u8; 3000]);
            std::thread::sleep(Duration::from_secs(20));
        });
        let m = sim(SimOptions { restart_after: Some(1000), ..Default::default() });
        let mut d = Dev::new(&m);
        assert_eq!(d.cmd(&format!("AT+QIOPEN=1,0,\"TCP\",\"127.0.0.1\",{big},0,0")), ["OK"]);
        assert_eq!(d.urc("+QIOPEN: 0,"), "+QIOPEN: 0,0");
        d.urc("+QIURC: \"recv\",0");
        std::thread::sleep(Duration::from_millis(500));
        // A command right behind the read that crosses 1000 bytes is lost in the restart.
        d.write(b"AT+QIRD=0,1500\rAT+QGMR\r");
        assert_eq!(d.answer(), "+QIRD: 1500");
        assert_eq!(d.raw(1500), vec![1u8; 1500]);
        assert_eq!(d.raw(8), b"\r\n\r\nOK\r\n");
        assert_eq!(d.urc("RDY"), "RDY");
        // Restarted: echo on, no PDP context, no sockets, the same firmware.
        assert_eq!(d.cmd("AT"), ["AT", "OK"]);
        assert_eq!(d.cmd("AT+QIACT?"), ["AT+QIACT?", "OK"]);
        assert_eq!(d.cmd("ATE0"), ["ATE0", "OK"]);
        assert_eq!(d.read(false, 0, 10), None);
        assert_eq!(d.cmd("AT+QGMR"), ["EC200UCNAAR03A01M08", "OK"]);
        // Once per simulator.
        assert_eq!(d.cmd("AT+QIACT=1"), ["OK"]);
        assert_eq!(d.cmd(&format!("AT+QIOPEN=1,0,\"TCP\",\"127.0.0.1\",{big},0,0")), ["OK"]);
        assert_eq!(d.urc("+QIOPEN: 0,"), "+QIOPEN: 0,0");
        assert_eq!(d.read_n(false, 0, 3000), vec![1u8; 3000]);
        d.sync();
        assert_eq!(m.log().urcs.iter().filter(|u| *u == "RDY").count(), 1);
    }
}
