//! qemu-an386: flash is QEMU's file-backed `mps.ram`; the decision is reported over semihosting
//! (`-semihosting-config enable=on,target=native`) so tests can read it.

use core::sync::atomic::{AtomicU32, Ordering};
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::exception;
use cortex_m_semihosting::{debug, hprintln};
use memory_layouts::Board;
use shared::boot::{Boot, BootError, Phase};
use shared::flash::RamNor;

pub const BOARD: Board = Board::QemuAn386;

/// The CMSDK APB watchdog of the AN386 (QEMU models it: a second timeout resets the machine).
const WDOG: usize = 0x4000_8000;
/// Two periods of 4 s at the 25 MHz system clock: a hung app is reset after 8 s.
const WDOG_LOAD: u32 = 100_000_000;

/// SysTick wraps (24-bit counter on the 25 MHz core clock) since `init`.
static WRAPS: AtomicU32 = AtomicU32::new(0);

/// Counts SysTick wraps, so long boots (a 1 MiB verify) are timed too.
#[exception]
fn SysTick() {
    WRAPS.fetch_add(1, Ordering::Relaxed);
}

/// Core clock ticks since `init` (25 MHz; under `-icount shift=0` one instruction is 1 ns,
/// so ticks x 40 = instructions: what `cargo xtask bench qemu` reports).
fn ticks() -> u64 {
    // SAFETY: reads of SysTick's current value only.
    let p = unsafe { cortex_m::Peripherals::steal() };
    loop {
        let w = WRAPS.load(Ordering::Relaxed);
        let v = p.SYST.cvr.read();
        if WRAPS.load(Ordering::Relaxed) == w {
            return w as u64 * (1 << 24) + (0xFF_FFFF - v) as u64;
        }
    }
}

/// Starts the boot timer and the watchdog (the app feeds it), and maps the flash.
pub fn init() -> RamNor<'static, 8192, 16> {
    // SAFETY: SysTick is the bootloader's until the jump (`report_boot` stops it).
    let mut p = unsafe { cortex_m::Peripherals::steal() };
    p.SYST.set_clock_source(SystClkSource::Core);
    p.SYST.set_reload(0xFF_FFFF);
    p.SYST.clear_current();
    p.SYST.enable_interrupt();
    p.SYST.enable_counter();
    // SAFETY: the CMSDK watchdog's registers (LOCK at 0xC00, LOAD, CONTROL) on this board.
    unsafe {
        let reg = |off: usize| (WDOG + off) as *mut u32;
        core::ptr::write_volatile(reg(0xC00), 0x1ACC_E551); // unlock
        core::ptr::write_volatile(reg(0x000), WDOG_LOAD);
        core::ptr::write_volatile(reg(0x008), 0b11); // INTEN | RESEN
        core::ptr::write_volatile(reg(0xC00), 0); // lock
    }
    let l = BOARD.layout();
    let base = l.boot_record.origin;
    let len = (l.flash.end() - base) as usize;
    // SAFETY: BOOT_RECORD..end of mps.ram is plain RAM that nothing else in the bootloader
    // touches; the bootloader's own code and data lie below it.
    let mem = unsafe { core::slice::from_raw_parts_mut(base as *mut u8, len) };
    RamNor::new(mem)
}

pub fn report_boot(b: &Boot) {
    let t = ticks();
    // SAFETY: stops the timer before the app takes SysTick.
    let mut p = unsafe { cortex_m::Peripherals::steal() };
    p.SYST.disable_interrupt();
    p.SYST.disable_counter();
    let v = b.image.aliyun_version.as_deref().unwrap_or("?");
    // An image under test says which of its starts this is.
    let start = match b.record.phase {
        Phase::Testing { boots, .. } => boots,
        _ => 0,
    };
    hprintln!(
        "boot: jump to {} ({}), last {:?}, sec_cnt {}, revoked {:#x}, start {} of {}, {} ticks",
        v,
        b.image.header.version,
        b.record.last,
        b.record.sec_cnt,
        b.record.revoked,
        start,
        BOARD.layout().boot_attempts,
        t
    );
}

pub fn halt(e: BootError) -> ! {
    hprintln!("boot: {}", e);
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}
