//! The smallest runtime the app needs on qemu-an386: one task (`block_on`) that sleeps in WFI
//! until an interrupt, a 1 kHz SysTick clock, the watchdog fed from the task loop, and the
//! interrupt dispatch. One task is all the OTA driver wants: it selects over its own futures.

use crate::driver::Clock;
use core::cell::Cell;
use core::future::Future;
use core::pin::pin;
use core::sync::atomic::{AtomicBool, Ordering};
use core::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};
use cortex_m::interrupt::{free, Mutex};
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::exception;
use shared::time::Instant;

/// The AN386 system clock (SysTick on the processor clock).
const SYSCLK_HZ: u32 = 25_000_000;
/// The bootloader's watchdog resets after two 4 s periods without a feed: the task loop wakes at
/// least this often to feed it, so a task stuck outside an await point still gets reset.
const FEED_EVERY_MS: u64 = 1000;

/// Polls of the wake flag before WFI.
const SPIN: u32 = 2000;

/// Set by interrupts (and wakers): poll the task again.
static WOKEN: AtomicBool = AtomicBool::new(true);
/// Milliseconds since start.
static NOW_MS: Mutex<Cell<u64>> = Mutex::new(Cell::new(0));
/// The earliest time a sleeping future wants to be polled.
static DEADLINE: Mutex<Cell<u64>> = Mutex::new(Cell::new(u64::MAX));

/// Starts the 1 kHz tick.
pub fn init(mut syst: cortex_m::peripheral::SYST) {
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(SYSCLK_HZ / 1000 - 1);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
}

/// Asks for the task to be polled again (from an interrupt handler or a waker).
pub fn wake() {
    WOKEN.store(true, Ordering::Release);
}

fn now_ms() -> u64 {
    free(|cs| NOW_MS.borrow(cs).get())
}

/// Core clock ticks since `init` (25 MHz: under `-icount shift=0` one tick is 40 instructions).
#[cfg(feature = "delta-bench")]
pub fn ticks() -> u64 {
    const PER_MS: u64 = (SYSCLK_HZ / 1000) as u64;
    // SAFETY: a read of SysTick's current value only.
    let syst = unsafe { &*cortex_m::peripheral::SYST::PTR };
    loop {
        let ms = now_ms();
        let v = u64::from(syst.cvr.read());
        if now_ms() == ms {
            return ms * PER_MS + (PER_MS - 1 - v);
        }
    }
}

static VTABLE: RawWakerVTable = RawWakerVTable::new(|p| RawWaker::new(p, &VTABLE), |_| wake(), |_| wake(), |_| ());

/// Runs `fut` to completion on this core, sleeping in WFI while nothing can progress.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    // SAFETY: the vtable's functions ignore the data pointer; waking only sets a flag.
    let waker = unsafe { Waker::from_raw(RawWaker::new(core::ptr::null(), &VTABLE)) };
    let mut cx = Context::from_waker(&waker);
    loop {
        WOKEN.store(false, Ordering::Release);
        let feed_at = now_ms() + FEED_EVERY_MS;
        free(|cs| DEADLINE.borrow(cs).set(feed_at));
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        super::feed_watchdog();
        // While bytes stream in, the next one is due within microseconds: spin a little before
        // sleeping (waking a halted CPU costs QEMU far more than the byte takes to arrive).
        for _ in 0..SPIN {
            if WOKEN.load(Ordering::Acquire) {
                break;
            }
            core::hint::spin_loop();
        }
        // With interrupts masked, a pending interrupt still ends WFI; it runs once they are
        // unmasked. So a wake between the poll and the WFI is never lost.
        free(|_| {
            if !WOKEN.load(Ordering::Acquire) {
                cortex_m::asm::wfi();
            }
        });
    }
}

/// The board clock for the driver and the modem.
pub struct SysTickClock;

impl Clock for SysTickClock {
    fn now(&self) -> Instant {
        Instant::from_millis(now_ms())
    }

    async fn sleep_until(&self, t: Instant) {
        let t = t.as_millis();
        core::future::poll_fn(|_| {
            if now_ms() >= t {
                return Poll::Ready(());
            }
            free(|cs| {
                let d = DEADLINE.borrow(cs);
                d.set(d.get().min(t));
            });
            Poll::Pending
        })
        .await
    }
}

#[exception]
fn SysTick() {
    free(|cs| {
        let now = NOW_MS.borrow(cs).get() + 1;
        NOW_MS.borrow(cs).set(now);
        if now >= DEADLINE.borrow(cs).get() {
            wake();
        }
    });
}

/// External interrupts (no device crate: cortex-m-rt routes them all here with their number).
#[exception]
unsafe fn DefaultHandler(irqn: i16) {
    if irqn == super::uart::RX_IRQ {
        super::uart::on_rx_interrupt()
    }
}
