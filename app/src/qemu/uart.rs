//! The CMSDK APB UART0 of the AN386 (0x4000_4000), where the modem is wired: receive is
//! interrupt driven (RX IRQ 0) into a ring, transmit waits on TX-full. `embedded-io-async`, so
//! the AT modem driver takes it as it takes any byte stream.
//!
//! The UART holds one received byte; QEMU hands it the next only once that one is read. When the
//! ring is full the RX interrupt is masked and the byte stays in the UART, so the host side
//! waits: nothing is dropped.

use core::cell::RefCell;
use core::convert::Infallible;
use core::task::Poll;
use cortex_m::interrupt::{free, CriticalSection, Mutex};
use embedded_io_async::{ErrorType, Read, Write};
use heapless::Deque;

const BASE: usize = 0x4000_4000;
const DATA: usize = 0x00;
const STATE: usize = 0x04;
const CTRL: usize = 0x08;
const INTSTATUS: usize = 0x0C;
const BAUDDIV: usize = 0x10;

const STATE_TX_FULL: u32 = 1 << 0;
const STATE_RX_FULL: u32 = 1 << 1;
const CTRL_TX_EN: u32 = 1 << 0;
const CTRL_RX_EN: u32 = 1 << 1;
const CTRL_RX_INTEN: u32 = 1 << 3;
const INT_RX: u32 = 1 << 1;

/// UART0's receive interrupt.
pub const RX_IRQ: i16 = 0;

/// Received bytes not yet read: one MQTT download block and then some.
const RING: usize = 8192;
static RX: Mutex<RefCell<Deque<u8, RING>>> = Mutex::new(RefCell::new(Deque::new()));

fn reg(off: usize) -> *mut u32 {
    (BASE + off) as *mut u32
}

fn read_reg(off: usize) -> u32 {
    // SAFETY: a register of UART0; reads have no side effects except DATA, read only in `drain`.
    unsafe { core::ptr::read_volatile(reg(off)) }
}

fn write_reg(off: usize, v: u32) {
    // SAFETY: a register of UART0, owned by this driver.
    unsafe { core::ptr::write_volatile(reg(off), v) }
}

#[derive(Clone, Copy)]
struct Irq;
// SAFETY: IRQ 0 is a valid interrupt number of the AN386.
unsafe impl cortex_m::interrupt::InterruptNumber for Irq {
    fn number(self) -> u16 {
        RX_IRQ as u16
    }
}

/// Moves received bytes from the UART into the ring (interrupts masked).
fn drain(cs: &CriticalSection) {
    let mut rx = RX.borrow(cs).borrow_mut();
    // Clear first: a byte arriving after the loop's last look raises the interrupt again.
    write_reg(INTSTATUS, INT_RX);
    while read_reg(STATE) & STATE_RX_FULL != 0 {
        if rx.is_full() {
            // Leave it in the UART: the sender waits until the reader makes room.
            write_reg(CTRL, read_reg(CTRL) & !CTRL_RX_INTEN);
            return;
        }
        let _ = rx.push_back(read_reg(DATA) as u8);
        kick_qemu();
    }
}

/// QEMU's model of this UART does not tell its character backend when DATA has been read, so
/// the next byte waits until QEMU's main loop wakes for some other reason (~1 ms). Re-arming a
/// timer to expire at once wakes it: TIMER0 (CMSDK APB timer, free-running, no interrupt) is
/// set to 1 tick. On silicon this is a harmless timer write.
fn kick_qemu() {
    const TIMER0: usize = 0x4000_0000;
    // SAFETY: TIMER0's VALUE register; the timer is this driver's (started in `Uart::init`).
    unsafe { core::ptr::write_volatile((TIMER0 + 0x4) as *mut u32, 1) }
}

fn pop(cs: &CriticalSection, buf: &mut [u8]) -> usize {
    let mut rx = RX.borrow(cs).borrow_mut();
    let mut n = 0;
    while n < buf.len() {
        match rx.pop_front() {
            Some(b) => buf[n] = b,
            None => break,
        }
        n += 1;
    }
    n
}

pub(super) fn on_rx_interrupt() {
    free(drain);
    super::rt::wake();
}

/// The module's line: 921,600 baud; the CMSDK UART has no RTS/CTS.
pub const MODEM_UART: crate::modem::UartConfig = crate::modem::UartConfig { rate: 921_600, rtscts: false };

/// The UART's clock (PCLK of the AN386).
const PCLK: u32 = 25_000_000;

/// The divisor for `baud`, rounded up so the line never runs faster than asked (QEMU hands the
/// rate it gives on to a serial backend: `-chardev serial` sets the host tty to it).
fn divisor(baud: u32) -> u32 {
    PCLK.div_ceil(baud.max(1)).max(16)
}

/// UART0.
pub struct Uart(());

impl Uart {
    /// Enables UART0 with its receive interrupt. Call once.
    pub fn init(nvic: &mut cortex_m::peripheral::NVIC) -> Uart {
        write_reg(BAUDDIV, divisor(crate::modem::POWER_ON_RATE));
        // SAFETY: TIMER0's RELOAD and CTRL (enable, no interrupt): see `kick_qemu`.
        unsafe {
            core::ptr::write_volatile(0x4000_0008 as *mut u32, u32::MAX);
            core::ptr::write_volatile(0x4000_0000 as *mut u32, 1);
        }
        // SAFETY: the handler (`rt::DefaultHandler`) only touches the ring, under a critical section.
        unsafe {
            nvic.set_priority(Irq, 0x40);
            cortex_m::peripheral::NVIC::unmask(Irq);
        }
        write_reg(CTRL, CTRL_TX_EN | CTRL_RX_EN | CTRL_RX_INTEN);
        // A byte that arrived before the interrupt was enabled raises none: take it now.
        free(drain);
        Uart(())
    }
}

impl crate::modem::LineRate for Uart {
    fn set_rate(&mut self, baud: u32) {
        // Let the last byte leave at the old rate first.
        while read_reg(STATE) & STATE_TX_FULL != 0 {}
        write_reg(BAUDDIV, divisor(baud));
    }
}

impl ErrorType for Uart {
    type Error = Infallible;
}

impl Read for Uart {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        if buf.is_empty() {
            return Ok(0);
        }
        core::future::poll_fn(|_| {
            free(|cs| {
                let mut n = pop(cs, buf);
                // Room again: let the UART deliver (a masked or missed interrupt left bytes there).
                write_reg(CTRL, read_reg(CTRL) | CTRL_RX_INTEN);
                drain(cs);
                if n == 0 {
                    n = pop(cs, buf);
                }
                if n > 0 {
                    Poll::Ready(Ok(n))
                } else {
                    Poll::Pending
                }
            })
        })
        .await
    }
}

impl Write for Uart {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        for &b in buf {
            while read_reg(STATE) & STATE_TX_FULL != 0 {}
            write_reg(DATA, b as u32);
        }
        Ok(buf.len())
    }

    async fn flush(&mut self) -> Result<(), Infallible> {
        while read_reg(STATE) & STATE_TX_FULL != 0 {}
        Ok(())
    }
}
