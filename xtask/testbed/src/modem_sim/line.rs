//! The UART line between the device and the simulated module.
//!
//! Over TCP ([`ModemSim::start`](super::ModemSim::start)) the line has no rate: bytes cross as
//! fast as the socket takes them, whatever `AT+IPR` says. Over a pseudo-terminal
//! ([`ModemSim::start_tty`](super::ModemSim::start_tty)) the device opens the pty's slave as the
//! serial port it is (`termios`: the host board with `tokio-serial`, QEMU with `-chardev serial`,
//! which passes the rate the firmware writes to its UART's divisor), and the line is modelled
//! as a wire:
//!
//! - **Rate.** Both directions run at the module's rate (10 bits per byte: 8N1): bytes toward
//!   the device leave no faster, bytes from the device are taken no faster (the pty's buffer
//!   then holds the device's writes back, as RTS/CTS would).
//! - **A wrong rate is garbage.** When the rate the device set on its end differs from the
//!   module's by more than [`TOLERANCE`], every byte crossing (either way) arrives as a framing
//!   error: a byte with the high bit set, never a character of an AT command or of a line end.
//!   The module ignores what comes before `AT` on a line (a command starts with `AT`), so the
//!   first command after the rates agree again is read whole.

use super::Link;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_serial::SerialPort;

/// How far two rates may differ and still understand each other (a UART samples the middle of
/// each bit: some 3 % over a 10-bit frame).
pub const TOLERANCE: f64 = 0.03;

/// The rates `AT+IPR` accepts (Quectel EC200U series, AT Commands Manual, `AT+IPR`).
pub const RATES: [u32; 9] = [4800, 9600, 19_200, 38_400, 57_600, 115_200, 230_400, 460_800, 921_600];

/// A module's rate at power-on, until `AT+IPR` sets another and it is saved.
pub const POWER_ON_RATE: u32 = 115_200;

/// The module's side of its UART: the rate now and the one it powers on at.
#[derive(Debug)]
pub struct Rate {
    pub now: AtomicU32,
    pub saved: AtomicU32,
}

impl Default for Rate {
    fn default() -> Self {
        Rate { now: AtomicU32::new(POWER_ON_RATE), saved: AtomicU32::new(POWER_ON_RATE) }
    }
}

/// Whether a device at `a` and a module at `b` understand each other.
pub fn agree(a: u32, b: u32) -> bool {
    (f64::from(a) - f64::from(b)).abs() <= f64::from(b) * TOLERANCE
}

/// A byte as a receiver at the wrong rate sees it: never ASCII.
fn garble(b: u8) -> u8 {
    0x80 | (b ^ 0x2A)
}

/// The pty's far end, seen from the module.
pub struct Wire {
    /// The simulator's own handle on the device's end (the slave): its termios is the rate the
    /// device set, and holding it keeps the line up while the device is off.
    pub tty: tokio_serial::SerialStream,
    /// When the line is next free in each direction.
    rx_free: Instant,
    tx_free: Instant,
}

impl Wire {
    pub fn new(tty: tokio_serial::SerialStream) -> Wire {
        let now = Instant::now();
        Wire { tty, rx_free: now, tx_free: now }
    }

    /// The rate the device's end is set to.
    fn device_rate(&self) -> u32 {
        self.tty.baud_rate().unwrap_or(0)
    }
}

/// The module's UART: the bytes, and with a pty the wire's rate.
pub struct Uart {
    pub io: Box<dyn Link>,
    pub wire: Option<Wire>,
    pub rate: Arc<Rate>,
    /// Bytes that crossed at disagreeing rates (both ways).
    pub garbled: Arc<AtomicU64>,
}

/// Books `n` bytes at `rate` on a line free from `free` on.
fn book(free: &mut Instant, n: usize, rate: u32) {
    let start = (*free).max(Instant::now());
    *free = start + std::time::Duration::from_nanos(n as u64 * 10 * 1_000_000_000 / u64::from(rate.max(1)));
}

/// Waits until the line is free (only for what a timer can tell apart: the debt carries over).
async fn until(free: Instant) {
    if free > Instant::now() + std::time::Duration::from_millis(2) {
        tokio::time::sleep_until(free).await;
    }
}

impl Uart {
    /// Bytes from the device (at a wrong rate: garbage), no faster than the line. Cancel-safe:
    /// the wait for the line comes before the read, the booking after it.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(w) = &self.wire {
            until(w.rx_free).await;
        }
        let n = self.io.read(buf).await?;
        if let Some(w) = self.wire.as_mut() {
            let module = self.rate.now.load(Ordering::SeqCst);
            book(&mut w.rx_free, n, module);
            if !agree(w.device_rate(), module) {
                buf[..n].iter_mut().for_each(|b| *b = garble(*b));
                self.garbled.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        Ok(n)
    }

    pub async fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let mut got = 0;
        while got < buf.len() {
            let n = self.read(&mut buf[got..]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            got += n;
        }
        Ok(())
    }

    /// Bytes to the device once the line carried them (at a wrong rate: garbage).
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        let Some(w) = self.wire.as_mut() else {
            return self.io.write_all(data).await;
        };
        let module = self.rate.now.load(Ordering::SeqCst);
        book(&mut w.tx_free, data.len(), module);
        until(w.tx_free).await;
        if agree(w.device_rate(), module) {
            self.io.write_all(data).await
        } else {
            self.garbled.fetch_add(data.len() as u64, Ordering::Relaxed);
            let g: Vec<u8> = data.iter().map(|&b| garble(b)).collect();
            self.io.write_all(&g).await
        }
    }

    /// Drops what the device sent within `quiet` of silence (a module that was restarting).
    pub async fn discard(&mut self, quiet: std::time::Duration) {
        let mut junk = [0u8; 1024];
        while let Ok(Ok(n)) = tokio::time::timeout(quiet, self.io.read(&mut junk)).await {
            if n == 0 {
                break;
            }
        }
    }
}
