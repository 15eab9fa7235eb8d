//! The modem as the device loop sees it, on the boards that reach the network through one (and
//! on the host device with `modem = ...`): [`ModemLink`], the MQTT socket; [`ModemHttp`],
//! HTTP/1.1 `GET` with `Range` on the download socket; [`ModemModule`], the module's own firmware
//! as an Aliyun module. All three share one [`Shared`] modem.
//!
//! HTTP: TLS is done by the module on SSL context 2 (SNI = the URL's host, the server verified
//! with the download CA bundle). The URL and the response head are parsed in [`crate::http`]; the body must have a
//! `Content-Length` (a chunked reply is refused, as Aliyun's LinkSDK does). The machine's HTTPS
//! logic (Range resume, 403 -> a fresh URL, the early look at the image's tail) is the same as
//! over any other client: this file only carries bytes.

use crate::driver::{Clock, Http, Link, Module, ModuleNews};
use crate::http::{head, split_url, Head};
use crate::modem::{FotaUrc, Modem, ModemConfig, ModemError, Shared, Socket, DOWNLOAD, MQTT, SEND_MAX};
use core::fmt::Write as _;
use embedded_io_async::Write;
use heapless::String;
use shared::ota::HttpError;
use shared::ota::{ModuleError, ModulePhase};
use shared::time::{Duration, Instant};

/// The response head we keep (OSS sends some 15 headers, under 1 KiB).
const HEAD: usize = 1536;
/// No byte for this long ends the response.
const STALL: Duration = Duration::from_secs(30);

/// An HTTP(S) client on the modem's download socket.
pub struct ModemHttp<'a, U, C> {
    modem: &'a Shared<U>,
    clock: &'a C,
    /// The CA bundle (PEM) the module verifies download hosts with.
    ca: &'a [u8],
    open: bool,
    head: [u8; HEAD],
    /// Body bytes that came with the head: `head[at..at + len]`.
    at: usize,
    len: usize,
    /// Body bytes still to come (from the Content-Length; `None`: until the server closes).
    left: Option<u32>,
    last: Instant,
}

impl<'a, U: crate::modem::ModemUart, C: Clock> ModemHttp<'a, U, C> {
    pub fn new(modem: &'a Shared<U>, clock: &'a C, ca: &'a [u8]) -> Self {
        ModemHttp { modem, clock, ca, open: false, head: [0; HEAD], at: 0, len: 0, left: None, last: clock.now() }
    }

    fn socket(&self) -> Socket<'a, U, C> {
        Socket { modem: self.modem, clock: self.clock, id: DOWNLOAD }
    }
}

fn connect_error(e: ModemError, tls: bool) -> HttpError {
    match e {
        // +QSSLOPEN with an error: the handshake (the CA or the name) failed.
        ModemError::Socket(_) if tls => HttpError::Tls,
        _ => HttpError::Connect,
    }
}

impl<U: crate::modem::ModemUart, C: Clock> Http for ModemHttp<'_, U, C> {
    async fn get(&mut self, url: &str, from: u32) -> Result<(u16, Option<u32>), HttpError> {
        self.close();
        let (tls, host, port, path) = split_url(url).ok_or(HttpError::Protocol)?;
        {
            let mut m = self.modem.lock().await;
            if tls {
                m.download_context(self.clock, self.ca).await.map_err(|_| HttpError::Connect)?;
            }
            let ssl = tls.then_some(2);
            m.open_socket(self.clock, DOWNLOAD, ssl, host, port, Duration::from_secs(60))
                .await
                .map_err(|e| connect_error(e, tls))?;
        }
        self.open = true;
        let mut req: String<{ shared::ota::MAX_URL + 256 }> = String::new();
        write!(
            req,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nRange: bytes={from}-\r\nUser-Agent: aliyun-ota\r\nConnection: close\r\n\r\n"
        )
        .map_err(|_| HttpError::Protocol)?;
        let mut sock = self.socket();
        let mut out = req.as_bytes();
        while !out.is_empty() {
            let n = sock.write(&out[..out.len().min(SEND_MAX)]).await.map_err(|_| HttpError::Closed)?;
            out = &out[n..];
        }
        // The head, up to the blank line.
        let mut got = 0;
        let Head { end, status, length } = loop {
            if let Some(h) = head(&self.head[..got])? {
                break h;
            }
            if got == HEAD {
                return Err(HttpError::Protocol);
            }
            let deadline = self.clock.now() + STALL;
            let n = sock.read_until(&mut self.head[got..], Some(deadline)).await.map_err(|_| HttpError::Closed)?;
            got += n;
        };
        self.at = end;
        self.len = got - end;
        self.left = length;
        self.last = self.clock.now();
        Ok((status, length))
    }

    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, HttpError> {
        if !self.open {
            return core::future::pending().await;
        }
        if self.left == Some(0) || buf.is_empty() {
            return Ok(0);
        }
        let cap = self.left.map_or(buf.len(), |l| buf.len().min(l as usize));
        let n = if self.len > 0 {
            let n = self.len.min(cap);
            buf[..n].copy_from_slice(&self.head[self.at..self.at + n]);
            self.at += n;
            self.len -= n;
            n
        } else {
            let mut sock = self.socket();
            match sock.read_until(&mut buf[..cap], Some(self.last + STALL)).await {
                Ok(n) => n,
                // The end without a Content-Length is the end of the body; with one, a break.
                Err(_) if self.left.is_none() => return Ok(0),
                Err(_) => return Err(HttpError::Closed),
            }
        };
        self.last = self.clock.now();
        if let Some(l) = &mut self.left {
            *l -= n as u32;
        }
        Ok(n)
    }

    fn close(&mut self) {
        if self.open {
            self.open = false;
            self.len = 0;
            // Outside the session's select nobody holds the modem; else the next get closes it.
            if let Ok(mut m) = self.modem.try_lock() {
                m.close_socket(DOWNLOAD);
            }
        }
    }
}

/// The modem's MQTT socket as the device loop's link: each open brings the modem up (again).
pub struct ModemLink<'a, U, C> {
    pub modem: &'a Shared<U>,
    pub clock: &'a C,
    pub cfg: ModemConfig<'a>,
}

impl<U: crate::modem::ModemUart, C: Clock> Link for ModemLink<'_, U, C> {
    type Io<'b>
        = Socket<'b, U, C>
    where
        Self: 'b;
    type Error = ModemError;

    async fn open(&mut self) -> Result<Socket<'_, U, C>, ModemError> {
        self.modem.lock().await.open(self.clock, &self.cfg).await?;
        let what = if self.cfg.tls { "TLS" } else { "TCP" };
        log::info!("modem: {} socket to {}:{} open", what, self.cfg.host, self.cfg.port);
        Ok(Socket { modem: self.modem, clock: self.clock, id: MQTT })
    }
}

/// The longest URL `AT+QFOTADL` takes (Quectel DFOTA guides: 255 bytes).
pub const FOTA_MAX_URL: u16 = 255;

/// The cellular module's own firmware, as Aliyun module `name`: `AT+QGMR` is its version,
/// `AT+QFOTADL` its update, `+QIND: "FOTA",...` its progress.
pub struct ModemModule<'a, U, C> {
    modem: &'a Shared<U>,
    clock: &'a C,
    name: &'a str,
    /// The download CA bundle (the module's FOTA client fetches over SSL context 2 too).
    ca: &'a [u8],
    /// An update was handed over and has not ended.
    updating: bool,
}

impl<'a, U: crate::modem::ModemUart, C: Clock> ModemModule<'a, U, C> {
    pub fn new(modem: &'a Shared<U>, clock: &'a C, name: &'a str, ca: &'a [u8]) -> Self {
        ModemModule { modem, clock, name, ca, updating: false }
    }

    /// What a URC means for the update (`None`: nothing to tell).
    fn news(&mut self, u: FotaUrc) -> Option<ModuleNews> {
        let (phase, done) = (ModuleNews::Progress, ModuleNews::Done);
        Some(match u {
            FotaUrc::HttpStart => phase(ModulePhase::Download, 0),
            FotaUrc::Downloading(p) => phase(ModulePhase::Download, p),
            FotaUrc::HttpEnd(0) => phase(ModulePhase::Download, 100),
            FotaUrc::Start => phase(ModulePhase::Install, 0),
            FotaUrc::Updating(p) => phase(ModulePhase::Install, p),
            FotaUrc::HttpEnd(e) => {
                self.updating = false;
                done(Err(ModuleError::Download(e)))
            }
            FotaUrc::End(0) => {
                self.updating = false;
                done(Ok(()))
            }
            FotaUrc::End(e) => {
                self.updating = false;
                done(Err(ModuleError::Install(e)))
            }
            // A restart in the middle of an update, without its end.
            FotaUrc::Ready if self.updating => {
                self.updating = false;
                done(Err(ModuleError::Lost))
            }
            FotaUrc::Ready => return None,
        })
    }
}

impl<U: crate::modem::ModemUart, C: Clock> Module for ModemModule<'_, U, C> {
    fn name(&self) -> Option<&str> {
        Some(self.name)
    }
    fn max_url(&self) -> u16 {
        FOTA_MAX_URL
    }
    fn version(&self) -> Option<heapless::String<64>> {
        let m = self.modem.try_lock().ok()?;
        aliyun_version(m.version())
    }
    async fn update(&mut self, url: &str) -> Result<(), ()> {
        let mut m = self.modem.lock().await;
        let ready = if url.starts_with("https") { m.download_context(self.clock, self.ca).await } else { Ok(()) };
        let started = match ready {
            Ok(()) => m.start_fota(self.clock, url).await,
            Err(e) => Err(e),
        };
        match started {
            Ok(()) => {
                self.updating = true;
                Ok(())
            }
            Err(e) => {
                log::warn!("AT+QFOTADL: {}", e);
                Err(())
            }
        }
    }
    async fn ahead(&mut self) {
        // Whoever holds the modem steps it anyway.
        if let Ok(mut m) = self.modem.try_lock() {
            // An error ends the sockets: the session's next read sees it.
            let _ = m.ahead(self.clock).await;
        }
    }
    fn poll(&mut self) -> Option<ModuleNews> {
        loop {
            let u = self.modem.try_lock().ok()?.next_fota()?;
            if let Some(n) = self.news(u) {
                return Some(n);
            }
        }
    }
    async fn next(&mut self) -> ModuleNews {
        loop {
            {
                let mut m = self.modem.lock().await;
                if let Some(u) = m.next_fota() {
                    drop(m);
                    match self.news(u) {
                        Some(n) => return n,
                        None => continue,
                    }
                }
                if !self.updating {
                    drop(m);
                    return core::future::pending().await;
                }
                // Errors of the UART show in the MQTT session; here they only end a step.
                let slice = self.clock.now() + crate::modem::SLICE;
                match m.step(self.clock, Some(slice)).await {
                    Ok(()) | Err(ModemError::Timeout(_)) => {}
                    Err(_) => {
                        drop(m);
                        return core::future::pending().await;
                    }
                }
            }
            embassy_futures::yield_now().await;
        }
    }
}

/// The module's version as Aliyun takes it (1-64 of `A-Z a-z 0-9 . _ -`): other characters of
/// the `AT+QGMR` answer become `_`; an empty answer is no version.
pub fn aliyun_version(v: &str) -> Option<heapless::String<64>> {
    let mut out = heapless::String::new();
    for c in v.trim().chars() {
        let ok = c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        out.push(if ok { c } else { '_' }).ok()?;
    }
    (!out.is_empty()).then_some(out)
}

/// Makes the shared modem on `uart`.
pub fn shared<U: crate::modem::ModemUart>(uart: U) -> Shared<U> {
    Shared::new(Modem::new(uart))
}
