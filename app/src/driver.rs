//! The board-independent OTA driver: runs `shared::ota::OtaMachine` over one MQTT session,
//! carries out its actions with the DFU updater and an HTTP client, and makes no protocol
//! decision of its own.

use crate::mqtt::{Mqtt, MqttError};
use embassy_futures::select::{select3, Either3};
use embedded_io_async::{Read, Write};
use embedded_storage::nor_flash::NorFlash;
use shared::alink::Topics;
use shared::boot::{confirm, progress, UpdateError, Updater};
use shared::image::{PublicKey, VerifyOptions};
use shared::ota::{Action, Event, MarkError, OtaMachine};
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
    /// Starts `GET url` with `Range: bytes={from}-`; returns the status and Content-Length.
    async fn get(&mut self, url: &str, from: u32) -> Result<(u16, Option<u32>), ()>;
    /// The next body bytes; `Ok(0)` at the end. Pending forever when no GET is open.
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, ()>;
    /// Drops the connection.
    fn close(&mut self);
}

/// What the driver needs besides the machine.
pub struct Ctx<'a> {
    /// Keys whose signatures the device accepts.
    pub keys: &'a [PublicKey],
    /// The stored security counter.
    pub sec_cnt: u32,
    /// ACTIVE's length.
    pub slot_size: u32,
    /// The result of the running image's self-test.
    pub self_test: bool,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// Erased value of the flash.
    pub erased: u8,
}

/// Why [`run`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// The machine asked for a reset (install, or a failed self-test).
    Reset,
    /// The MQTT session ended; reconnect and call [`run`] again.
    Disconnected(MqttError),
}

/// The downlinks to subscribe to.
pub fn downlinks(t: &Topics<'_>) -> [shared::alink::Topic; 3] {
    [t.upgrade().unwrap(), t.firmware_get_reply().unwrap(), t.file_download_reply().unwrap()]
}

/// What one MQTT session works with.
pub struct Session<'s, 'm, T, const RX: usize, H, C, D, S> {
    /// The connected MQTT session.
    pub mqtt: &'s mut Mqtt<T, RX>,
    /// Downloads over HTTP(S).
    pub http: &'s mut H,
    /// The board's clock.
    pub clock: &'s C,
    /// The OTA client.
    pub m: &'s mut OtaMachine<'m>,
    /// DFU and STATE.
    pub up: &'s mut Updater<D, S>,
    /// Keys, counter, self-test result.
    pub ctx: &'s Ctx<'s>,
    /// Work buffer for flash reads (the final verify reads the whole image through it): a
    /// microcontroller gives 1 KiB, the host board 64 KiB.
    pub work: &'s mut [u8],
}

impl<T: Read + Write, const RX: usize, H: Http, C: Clock, D: NorFlash, S: NorFlash> Session<'_, '_, T, RX, H, C, D, S> {
    /// Runs the session until a reset or a disconnect. `msg` receives payloads (a download block
    /// plus its header).
    pub async fn run(&mut self, msg: &mut [u8]) -> Exit {
        let (clock, ctx) = (self.clock, self.ctx);
        let topics = *self.m.topics();
        self.m.handle(clock.now(), Event::Connected);
        let mut last_len = 0usize;
        let mut next_ping = clock.now() + ctx.keep_alive;
        loop {
            // Carry out everything the last event asked for.
            if let Some(exit) = self.act(&msg[..last_len]).await {
                return exit;
            }
            let Session { mqtt, http, m, .. } = self;
            let wake = m.poll_timeout().map_or(next_ping, |t| t.min(next_ping));
            let mut body = [0u8; 1024];
            match select3(mqtt.next(msg), clock.sleep_until(wake), http.read(&mut body)).await {
                Either3::First(Ok(n)) => {
                    last_len = n;
                    if let Some(topic) = topics.classify(&mqtt.topic) {
                        log::debug!("received {} bytes on {}", n, mqtt.topic.as_str());
                        m.handle(clock.now(), Event::Message { topic, payload: &msg[..n] });
                    }
                }
                Either3::First(Err(e)) => {
                    m.handle(clock.now(), Event::Disconnected);
                    return Exit::Disconnected(e);
                }
                Either3::Second(()) => {
                    let now = clock.now();
                    if now >= next_ping {
                        if let Err(e) = mqtt.ping().await {
                            m.handle(now, Event::Disconnected);
                            return Exit::Disconnected(e);
                        }
                        next_ping = now + ctx.keep_alive;
                    }
                    m.handle_timeout(now);
                    last_len = 0;
                }
                Either3::Third(Ok(0)) => {
                    http.close();
                    m.handle(clock.now(), Event::HttpEnd);
                    last_len = 0;
                }
                Either3::Third(Ok(n)) => {
                    msg[..n].copy_from_slice(&body[..n]);
                    last_len = n;
                    m.handle(clock.now(), Event::HttpBody(&msg[..n]));
                }
                Either3::Third(Err(())) => {
                    http.close();
                    m.handle(clock.now(), Event::HttpFailed);
                    last_len = 0;
                }
            }
        }
    }

    /// Carries out the machine's actions; `payload` is what the last event handed in.
    async fn act(&mut self, payload: &[u8]) -> Option<Exit> {
        let Session { mqtt, http, clock, m, up, ctx, work } = self;
        let (clock, ctx) = (*clock, *ctx);
        let buf = &mut **work;
        loop {
            let Some(a) = m.poll_action() else { return None };
            let ev: Option<Event<'_>> = match a {
                Action::Publish { topic, payload: p } => {
                    log::info!("publish {} {}", topic, core::str::from_utf8(p).unwrap_or("?"));
                    // A lost uplink is not fatal: the session error shows on the next read.
                    let _ = mqtt.publish(topic, p).await;
                    None
                }
                Action::RunSelfTest => {
                    log::info!("self-test: {}", if ctx.self_test { "pass" } else { "FAIL" });
                    Some(Event::SelfTest(ctx.self_test))
                }
                Action::Confirm => {
                    let ok = confirm(up.state(), ctx.erased, buf).is_ok();
                    log::info!("confirm: {}", if ok { "done" } else { "FAILED" });
                    Some(Event::Confirmed(ok))
                }
                Action::BeginDownload { at } => {
                    log::info!("download into DFU from byte {}", at);
                    up.restart(at);
                    None
                }
                Action::Write { offset, range } => match up.write(offset, &payload[range]) {
                    Ok(()) => None,
                    Err(e) => {
                        log::warn!("flash write at {} failed: {}", offset, e);
                        Some(Event::FlashFailed)
                    }
                },
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
                    Some(Event::Rehashed(ok))
                }
                Action::SaveProgress(r) => {
                    let _ = progress::save(up.dfu(), r, ctx.erased);
                    None
                }
                Action::ClearProgress => {
                    let _ = progress::clear(up.dfu());
                    None
                }
                Action::HttpGet { from } => {
                    let url = m.url().map(heapless::String::<{ shared::ota::MAX_URL }>::try_from);
                    match url {
                        Some(Ok(url)) => {
                            log::info!("GET {} from byte {}", redact(&url), from);
                            match http.get(&url, from).await {
                                Ok((status, length)) => Some(Event::HttpResponse { status, length }),
                                Err(()) => Some(Event::HttpFailed),
                            }
                        }
                        _ => Some(Event::HttpFailed),
                    }
                }
                Action::HttpClose => {
                    http.close();
                    None
                }
                Action::VerifyAndMark => {
                    let opts =
                        VerifyOptions { keys: ctx.keys, min_sec_cnt: ctx.sec_cnt, slot_size: Some(ctx.slot_size) };
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
                Action::Reset => {
                    log::info!("reset");
                    return Some(Exit::Reset);
                }
            };
            if let Some(ev) = ev {
                m.handle(clock.now(), ev);
            }
        }
    }
}

/// The URL without its query (pre-signed URLs carry credentials).
fn redact(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}
