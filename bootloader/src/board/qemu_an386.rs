//! qemu-an386: flash is QEMU's file-backed `mps.ram`; the decision is reported over semihosting
//! (`-semihosting-config enable=on,target=native`) so tests can read it.

use core::sync::atomic::{AtomicU32, Ordering};
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::exception;
use cortex_m_semihosting::{debug, hprintln};
use memory_layouts::{Board, Region};
use shared::boot::{Boot, BootError, Phase};
use shared::flash::RamNor;

pub const BOARD: Board = Board::QemuAn386;

/// The CMSDK APB watchdog of the AN386.
const WDOG: usize = memory_layouts::QEMU_AN386_WATCHDOG;
/// The flash's geometry, from the layout table.
const ERASE: usize = memory_layouts::QEMU_AN386.geometry.erase_size as usize;
const WRITE: usize = memory_layouts::QEMU_AN386.geometry.write_size as usize;
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

/// The address offset 0 of the flash [`init`] returns maps to: BOOT_RECORD (the bootloader's
/// own code and data lie below it, in no slice).
pub const FLASH_BASE: u32 = BOARD.layout().boot_record.origin;

/// Starts the boot timer and the watchdog (the app feeds it), and maps the flash.
pub fn init() -> RamNor<'static, ERASE, WRITE> {
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
    let base = FLASH_BASE;
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

/// PMSAv7 MPU_RASR for `r`: read-only for privileged and unprivileged code (AP = 0b110), normal
/// write-back memory (TEX 0b001, C, B), execute-never if `xn`. A region must be a power of two
/// of at least 32 bytes, aligned to its size (ARMv7-M ARM B3.5.8): checked at compile time.
const fn rasr(r: Region, xn: bool) -> u32 {
    assert!(r.length.is_power_of_two() && r.length >= 32, "an MPU region is a power of two >= 32 bytes");
    assert!(r.origin.is_multiple_of(r.length), "an MPU region is aligned to its size");
    const AP_READ_ONLY: u32 = 0b110 << 24;
    const NORMAL_WRITE_BACK: u32 = (0b001 << 19) | (1 << 17) | (1 << 16); // TEX, C, B
    let size = (r.length.trailing_zeros() - 1) << 1; // SIZE field: length = 2^(SIZE+1)
    ((xn as u32) << 28) | AP_READ_ONLY | NORMAL_WRITE_BACK | size | 1 // ENABLE
}

/// (RBAR, RASR) of the MPU regions 0 and 1: BOOTLOADER (it stays executable: the jump itself
/// runs from it) and BOOT_RECORD (data: execute-never).
const MPU_REGIONS: [(u32, u32); 2] = {
    let l = BOARD.layout();
    [(l.bootloader.origin, rasr(l.bootloader, false)), (l.boot_record.origin, rasr(l.boot_record, true))]
};

/// Makes BOOTLOADER and BOOT_RECORD read-only for the app until the next reset: two MPU regions,
/// PRIVDEFENA (everything else keeps the default memory map). MemManage stays disabled, so a
/// write there escalates to HardFault: the app's handler reports it and resets. `mps.ram` is RAM
/// that RamNor writes with plain stores, so the MPU is all that stops them, and it stops a buggy
/// app only: a privileged app can turn the MPU off again (README, "A bootloader that protects
/// itself"). Not with the `unprotected` feature (the control run of xtask/tests/qemu_protect.rs).
pub fn protect() {
    if cfg!(feature = "unprotected") {
        return;
    }
    const CTRL_ENABLE: u32 = 1 << 0;
    const CTRL_PRIVDEFENA: u32 = 1 << 2;
    // SAFETY: the MPU is the bootloader's until the jump; the regions cover no memory the
    // bootloader writes from here on (its stack and the app's RAM are in SSRAM2).
    unsafe {
        let mpu = &*cortex_m::peripheral::MPU::PTR;
        mpu.ctrl.write(0);
        for (n, (rbar, rasr)) in MPU_REGIONS.into_iter().enumerate() {
            mpu.rnr.write(n as u32);
            mpu.rbar.write(rbar);
            mpu.rasr.write(rasr);
        }
        mpu.ctrl.write(CTRL_ENABLE | CTRL_PRIVDEFENA);
    }
    cortex_m::asm::dsb();
    cortex_m::asm::isb();
}
