//! A Quectel-style AT modem below the MQTT client (EC200/EC800/BG95 class): bring-up, a TCP or
//! TLS socket in transparent mode, then the UART is the byte stream. Board-independent: any
//! embedded-io-async byte stream (a UART; on the host board, a TCP connection to the modem
//! simulator) and the board's [`Clock`].
//!
//! ```text
//! AT          OK              (retried: the modem may still be booting, or in data mode)
//! ATE0        OK
//! AT+CPIN?    +CPIN: READY
//! AT+CEREG?   +CEREG: 0,1|5   (LTE; else AT+CREG? for 2G/3G), polled until registered
//! AT+QICSGP=1,1,"apn","","",1 OK
//! AT+QIACT?   +QIACT: 1,...   (else AT+QIACT=1, up to 150 s)
//! AT+QIOPEN=1,0,"TCP","host",port,0,2     CONNECT   (AT+QSSLOPEN=1,1,4,"host",port,2 for TLS)
//! ```
//!
//! For TLS with a CA: `AT+QFUPL="UFS:ota-ca.pem",<len>,10` (CONNECT, the PEM, `+QFUPL: <len>,..`),
//! then `AT+QSSLCFG` sslversion / ciphersuite / seclevel 1 / cacert on context 1, then QSSLOPEN.
//!
//! Recovery: a new [`Modem::open`] after the MQTT session failed leaves data mode if the modem
//! does not answer `AT` (1 s guard, `+++`, 1 s guard), closes the old socket and brings the link
//! up from the top; after `NO CARRIER` (the link dropped) the modem already answers `AT`.

use crate::driver::Clock;
use embassy_futures::select::{select, Either};
use embedded_io_async::{Error as _, ErrorType, Read, Write};
use shared::time::{Duration, Instant};

/// Where to connect, and how long to wait.
pub struct ModemConfig<'a> {
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

/// The module file the CA is uploaded to.
const CA_FILE: &str = "UFS:ota-ca.pem";

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
}

impl core::fmt::Display for ModemError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ModemError::Io => f.write_str("modem UART error"),
            ModemError::Timeout(c) => write!(f, "modem: no answer to {c}"),
            ModemError::Refused(c) => write!(f, "modem: {c} failed"),
            ModemError::NoSim => f.write_str("modem: SIM missing or locked (AT+CPIN? is not READY)"),
            ModemError::NotRegistered => f.write_str("modem: not registered on the network"),
        }
    }
}

/// The modem on its UART. After [`Modem::open`] it is the socket's byte stream (Read + Write).
pub struct Modem<U> {
    uart: U,
    /// Bytes read but not consumed (lines, or socket data that came with CONNECT).
    buf: [u8; 256],
    len: usize,
    /// The CA is in the module's file system (this power-on).
    ca_uploaded: bool,
}

enum Line {
    /// A complete line (without CR LF), as a range of `buf`.
    Text(usize),
    Timeout,
}

impl<U: Read + Write> Modem<U> {
    pub fn new(uart: U) -> Self {
        Modem { uart, buf: [0; 256], len: 0, ca_uploaded: false }
    }

    /// Brings the modem up and opens the socket; afterwards `self` is the socket's byte stream.
    pub async fn open<C: Clock>(&mut self, clock: &C, cfg: &ModemConfig<'_>) -> Result<(), ModemError> {
        self.len = 0;
        // A modem still in data mode (the link of a previous session is up) does not answer AT:
        // leave data mode then. Either way close the old socket (harmless when there is none).
        if self.command(clock, "AT", 500).await.is_err() {
            self.escape(clock).await?;
            let mut alive = false;
            for _ in 0..10 {
                if self.command(clock, "AT", 1000).await.is_ok() {
                    alive = true;
                    break;
                }
            }
            if !alive {
                return Err(ModemError::Timeout("AT"));
            }
        }
        let _ = self.command(clock, "AT+QICLOSE=0", 10_000).await;
        self.command(clock, "ATE0", 1000).await?;
        self.expect_info(clock, "AT+CPIN?", "+CPIN: READY", 5000).await.map_err(|e| match e {
            ModemError::Io => ModemError::Io,
            _ => ModemError::NoSim,
        })?;
        self.register(clock, cfg.register_timeout).await?;
        let mut cmd: heapless::String<160> = heapless::String::new();
        write(&mut cmd, format_args!("AT+QICSGP=1,1,\"{}\",\"\",\"\",1", cfg.apn))?;
        self.command(clock, &cmd, 5000).await.map_err(|_| ModemError::Refused("AT+QICSGP"))?;
        if self.expect_info(clock, "AT+QIACT?", "+QIACT: 1,", 5000).await.is_err() {
            self.command(clock, "AT+QIACT=1", 150_000).await.map_err(|_| ModemError::Refused("AT+QIACT=1"))?;
        }
        if cfg.tls {
            if let Some(ca) = cfg.ca {
                self.trust(clock, ca).await?;
            }
        }
        cmd.clear();
        let what = if cfg.tls {
            write(&mut cmd, format_args!("AT+QSSLOPEN=1,1,4,\"{}\",{},2", cfg.host, cfg.port))?;
            "AT+QSSLOPEN"
        } else {
            write(&mut cmd, format_args!("AT+QIOPEN=1,0,\"TCP\",\"{}\",{},0,2", cfg.host, cfg.port))?;
            "AT+QIOPEN"
        };
        self.send(&cmd).await?;
        self.connect(clock, what, Duration::from_secs(150)).await
    }

    /// Uploads `ca` (once per power-on) and has SSL context 1 verify the server with it.
    async fn trust<C: Clock>(&mut self, clock: &C, ca: &[u8]) -> Result<(), ModemError> {
        if !self.ca_uploaded {
            let mut cmd: heapless::String<64> = heapless::String::new();
            let _ = self.command(clock, "AT+QFDEL=\"UFS:ota-ca.pem\"", 5000).await;
            write(&mut cmd, format_args!("AT+QFUPL=\"{}\",{},10", CA_FILE, ca.len()))?;
            self.send(&cmd).await?;
            self.connect(clock, "AT+QFUPL", Duration::from_secs(5)).await?;
            self.uart.write_all(ca).await.map_err(|_| ModemError::Io)?;
            self.uart.flush().await.map_err(|_| ModemError::Io)?;
            // "+QFUPL: <size>,<checksum>" then OK.
            let deadline = clock.now() + Duration::from_secs(10);
            let mut stored = false;
            loop {
                match self.line(clock, deadline).await? {
                    Line::Timeout => return Err(ModemError::Timeout("AT+QFUPL")),
                    Line::Text(n) => {
                        let l = core::str::from_utf8(&self.buf[..n]).unwrap_or("");
                        let size = l.strip_prefix("+QFUPL: ").and_then(|r| r.split(',').next());
                        stored |= size.and_then(|s| s.trim().parse::<usize>().ok()) == Some(ca.len());
                        let (ok, failed) = (l == "OK", l == "ERROR" || l.starts_with("+CME ERROR"));
                        self.consume(n);
                        if failed || (ok && !stored) {
                            return Err(ModemError::Refused("AT+QFUPL"));
                        }
                        if ok {
                            break;
                        }
                    }
                }
            }
            self.ca_uploaded = true;
        }
        for c in [
            "AT+QSSLCFG=\"sslversion\",1,4",
            "AT+QSSLCFG=\"ciphersuite\",1,0XFFFF",
            "AT+QSSLCFG=\"seclevel\",1,1",
            "AT+QSSLCFG=\"cacert\",1,\"UFS:ota-ca.pem\"",
        ] {
            self.command(clock, c, 5000).await?;
        }
        Ok(())
    }

    /// Waits for the `CONNECT` that answers `what` (a socket or a file upload).
    async fn connect<C: Clock>(&mut self, clock: &C, what: &'static str, within: Duration) -> Result<(), ModemError> {
        let deadline = clock.now() + within;
        loop {
            match self.line(clock, deadline).await? {
                Line::Timeout => return Err(ModemError::Timeout(what)),
                Line::Text(n) => {
                    let l = &self.buf[..n];
                    if l == b"CONNECT" {
                        // "\r\nCONNECT\r\n": over a UART the LF may not be here yet, and it is
                        // not socket data (a stray LF first would corrupt the MQTT stream).
                        let lf_pending = self.len == n + 1 && self.buf[n] == b'\r';
                        self.consume(n);
                        if lf_pending {
                            self.drop_lf(clock).await?;
                        }
                        return Ok(());
                    }
                    let failed = l == b"ERROR" || l == b"NO CARRIER" || l.starts_with(b"+CME ERROR");
                    self.consume(n);
                    if failed {
                        return Err(ModemError::Refused(what));
                    }
                }
            }
        }
    }

    /// Waits briefly for the LF that ends a line whose CR came alone, and drops it (anything
    /// else is kept: it is socket data).
    async fn drop_lf<C: Clock>(&mut self, clock: &C) -> Result<(), ModemError> {
        let until = clock.now() + Duration::from_millis(500);
        let mut b = [0u8; 1];
        match select(self.uart.read(&mut b), clock.sleep_until(until)).await {
            Either::First(Ok(1)) if b[0] != b'\n' => {
                self.buf[0] = b[0];
                self.len = 1;
            }
            Either::First(Ok(0)) | Either::First(Err(_)) => return Err(ModemError::Io),
            _ => {}
        }
        Ok(())
    }

    /// Leaves transparent mode: 1 s of silence, `+++`, 1 s of silence (Quectel's guard times).
    async fn escape<C: Clock>(&mut self, clock: &C) -> Result<(), ModemError> {
        self.drain(clock, Duration::from_millis(1000)).await?;
        self.uart.write_all(b"+++").await.map_err(|_| ModemError::Io)?;
        self.uart.flush().await.map_err(|_| ModemError::Io)?;
        self.drain(clock, Duration::from_millis(1000)).await
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
                    return Ok(());
                }
            }
        }
    }

    async fn register<C: Clock>(&mut self, clock: &C, timeout: Duration) -> Result<(), ModemError> {
        let deadline = clock.now() + timeout;
        loop {
            for (cmd, prefix) in [("AT+CEREG?", "+CEREG: "), ("AT+CREG?", "+CREG: ")] {
                if let Ok(stat) = self.query(clock, cmd, prefix, 2000).await {
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

    /// Sends `cmd` and waits for OK.
    async fn command<C: Clock>(&mut self, clock: &C, cmd: &str, ms: u64) -> Result<(), ModemError> {
        self.query(clock, cmd, "", ms).await.map(|_| ())
    }

    /// Sends `cmd`, waits for a line starting with `want` and then OK.
    async fn expect_info<C: Clock>(
        &mut self,
        clock: &C,
        cmd: &'static str,
        want: &str,
        ms: u64,
    ) -> Result<(), ModemError> {
        self.query(clock, cmd, want, ms).await.map(|_| ())
    }

    /// Sends `cmd`, returns the rest of the first line that starts with `prefix` (empty prefix:
    /// none needed) once OK arrives.
    async fn query<C: Clock>(
        &mut self,
        clock: &C,
        cmd: &str,
        prefix: &str,
        ms: u64,
    ) -> Result<heapless::String<64>, ModemError> {
        let name = static_name(cmd);
        self.send(cmd).await?;
        let deadline = clock.now() + Duration::from_millis(ms);
        let mut found: Option<heapless::String<64>> =
            if prefix.is_empty() { Some(heapless::String::new()) } else { None };
        loop {
            match self.line(clock, deadline).await? {
                Line::Timeout => return Err(ModemError::Timeout(name)),
                Line::Text(n) => {
                    let l = core::str::from_utf8(&self.buf[..n]).unwrap_or("");
                    let mut done = None;
                    if l == "OK" {
                        done = Some(found.take().ok_or(ModemError::Refused(name)));
                    } else if l == "ERROR" || l.starts_with("+CME ERROR") {
                        done = Some(Err(ModemError::Refused(name)));
                    } else if found.is_none() {
                        if let Some(rest) = l.strip_prefix(prefix) {
                            found = Some(head(rest));
                        }
                    }
                    self.consume(n);
                    if let Some(r) = done {
                        return r;
                    }
                }
            }
        }
    }

    async fn send(&mut self, cmd: &str) -> Result<(), ModemError> {
        self.uart.write_all(cmd.as_bytes()).await.map_err(|_| ModemError::Io)?;
        // V.25ter: a command ends with S3 (CR) alone; a LF after it would be socket data once a
        // QIOPEN answers CONNECT.
        self.uart.write_all(b"\r").await.map_err(|_| ModemError::Io)?;
        self.uart.flush().await.map_err(|_| ModemError::Io)
    }

    /// The next non-empty line (empty lines skipped), or a timeout.
    async fn line<C: Clock>(&mut self, clock: &C, deadline: Instant) -> Result<Line, ModemError> {
        loop {
            // Skip leading CR/LF.
            let skip = self.buf[..self.len].iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
            self.consume_raw(skip);
            if let Some(end) = self.buf[..self.len].iter().position(|&b| b == b'\r' || b == b'\n') {
                return Ok(Line::Text(end));
            }
            // CONNECT may be followed by data without a line end of its own in our buffer yet.
            if self.len == self.buf.len() {
                self.len = 0; // a line longer than the buffer: noise, dropped
            }
            let len = self.len;
            match select(self.uart.read(&mut self.buf[len..]), clock.sleep_until(deadline)).await {
                Either::First(Ok(0)) | Either::First(Err(_)) => return Err(ModemError::Io),
                Either::First(Ok(n)) => self.len += n,
                Either::Second(()) => return Ok(Line::Timeout),
            }
        }
    }

    /// Drops a line of `n` bytes and its line end.
    fn consume(&mut self, n: usize) {
        let mut k = n;
        while k < self.len && (self.buf[k] == b'\r' || self.buf[k] == b'\n') && k < n + 2 {
            k += 1;
        }
        self.consume_raw(k);
    }

    fn consume_raw(&mut self, n: usize) {
        self.buf.copy_within(n..self.len, 0);
        self.len -= n;
    }
}

/// The first 64 bytes of `s` at most, cut on a character boundary.
fn head(s: &str) -> heapless::String<64> {
    let mut cut = s.len().min(64);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = heapless::String::new();
    let _ = out.push_str(&s[..cut]);
    out
}

fn write<const N: usize>(s: &mut heapless::String<N>, args: core::fmt::Arguments<'_>) -> Result<(), ModemError> {
    core::fmt::Write::write_fmt(s, args).map_err(|_| ModemError::Refused("AT command too long"))
}

/// The command's name for errors (`AT+QIOPEN=...` -> `AT+QIOPEN`).
fn static_name(cmd: &str) -> &'static str {
    const NAMES: [&str; 12] = [
        "AT+QICSGP",
        "AT+QIACT?",
        "AT+QIACT=1",
        "AT+QICLOSE",
        "AT+QSSLCFG",
        "AT+QFDEL",
        "AT+QFUPL",
        "AT+CEREG?",
        "AT+CREG?",
        "AT+CPIN?",
        "ATE0",
        "AT",
    ];
    NAMES.into_iter().find(|n| cmd.starts_with(n)).unwrap_or("AT command")
}

/// The socket's stream errors: the UART's, or the modem saying the link dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkError {
    Uart(embedded_io_async::ErrorKind),
    /// `NO CARRIER`: the modem closed the socket and is back in command mode.
    Dropped,
}

impl core::fmt::Display for LinkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LinkError::Uart(k) => write!(f, "modem UART: {k:?}"),
            LinkError::Dropped => f.write_str("modem: NO CARRIER (the link dropped)"),
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

impl<U: ErrorType> ErrorType for Modem<U> {
    type Error = LinkError;
}

/// What the modem prints when the link drops in transparent mode (no DCD line to watch here).
const NO_CARRIER: &[u8] = b"\r\nNO CARRIER\r\n";

impl<U: Read + Write> Read for Modem<U> {
    async fn read(&mut self, out: &mut [u8]) -> Result<usize, Self::Error> {
        if self.len > 0 {
            // Socket data that arrived together with CONNECT.
            let n = self.len.min(out.len());
            out[..n].copy_from_slice(&self.buf[..n]);
            self.consume_raw(n);
            return Ok(n);
        }
        let n = self.uart.read(out).await.map_err(|e| LinkError::Uart(e.kind()))?;
        // The drop notice ends what the modem sends; data bytes that happen to spell it are
        // followed by more data, and a session misled by them only reconnects.
        if out[..n].ends_with(NO_CARRIER) {
            return Err(LinkError::Dropped);
        }
        Ok(n)
    }
}

impl<U: Read + Write> Write for Modem<U> {
    async fn write(&mut self, data: &[u8]) -> Result<usize, Self::Error> {
        self.uart.write(data).await.map_err(|e| LinkError::Uart(e.kind()))
    }
    async fn flush(&mut self) -> Result<(), Self::Error> {
        self.uart.flush().await.map_err(|e| LinkError::Uart(e.kind()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
