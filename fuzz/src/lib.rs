//! What the fuzz targets share: the app's MQTT session, AT modem and download parsers (URL,
//! HTTP head), compiled here from app/src as they are (the app is a firmware binary with board
//! features; these files only need a byte stream and, for the modem, the driver's `Clock`), and a
//! byte stream and a clock that play a fuzz input.

use core::cell::Cell;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};
use embedded_io_async::{ErrorKind, ErrorType, Read, Write};
use shared::time::Instant;

#[allow(dead_code)]
#[path = "../../app/src/mqtt.rs"]
pub mod mqtt;

#[allow(dead_code)]
#[path = "../../app/src/modem.rs"]
pub mod modem;

#[path = "../../app/src/http.rs"]
pub mod http;


/// What modem.rs takes from app/src/driver.rs: its `Clock` (the same trait).
pub mod driver {
    use shared::time::Instant;

    #[allow(async_fn_in_trait)]
    pub trait Clock {
        /// Now.
        fn now(&self) -> Instant;
        /// Returns at `t`.
        async fn sleep_until(&self, t: Instant);
    }
}

/// A clock whose sleeps return at once, having moved time to their end.
#[derive(Default)]
pub struct FakeClock(Cell<u64>);

impl driver::Clock for FakeClock {
    fn now(&self) -> Instant {
        Instant::from_millis(self.0.get())
    }
    async fn sleep_until(&self, t: Instant) {
        self.0.set(self.0.get().max(t.as_millis()));
    }
}

/// Pending once, then ready: the peer says nothing until whatever races the read wins.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// A byte stream that plays `data` in reads of 1..=64 bytes (sizes drawn from `seed`), then
/// ends (`Ok(0)`). With `silence: Some(b)`, each byte `b` is not data but a pause: that read is
/// pending once, so a timeout racing it fires. Writes are taken and counted.
pub struct Script<'a> {
    data: &'a [u8],
    rng: u32,
    silence: Option<u8>,
    /// Bytes written to the stream.
    pub written: usize,
}

impl<'a> Script<'a> {
    pub fn new(data: &'a [u8], seed: u8, silence: Option<u8>) -> Self {
        Script { data, rng: 0x9E37_79B9 ^ u32::from(seed), silence, written: 0 }
    }

    fn chunk(&mut self) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 17;
        self.rng ^= self.rng << 5;
        1 + (self.rng % 64) as usize
    }
}

impl ErrorType for Script<'_> {
    type Error = ErrorKind;
}

impl Read for Script<'_> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
        while let Some((&b, rest)) = self.data.split_first() {
            if Some(b) != self.silence {
                break;
            }
            self.data = rest;
            YieldOnce(false).await;
        }
        let stop = self.silence.and_then(|s| self.data.iter().position(|&b| b == s)).unwrap_or(self.data.len());
        let n = self.chunk().min(buf.len()).min(stop);
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// A line whose rate the script ignores: what the modem says comes through at any rate.
impl modem::LineRate for Script<'_> {
    fn set_rate(&mut self, _baud: u32) {}
}

impl Write for Script<'_> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
        self.written += buf.len();
        Ok(buf.len())
    }
    async fn flush(&mut self) -> Result<(), ErrorKind> {
        Ok(())
    }
}
