//! The `qemu-an386` board: the real firmware under `qemu-system-arm -M mps2-an386`.
//!
//! Flash is QEMU's file-backed `mps.ram` through [`shared::flash::RamNor`] (NOR rules: erase to
//! 0xFF, writes AND, 8 KiB pages, 16-byte words); the modem hangs on UART0 (QEMU's
//! `-serial chardev:modem`, a socket to the modem simulator); the log goes out by semihosting.
//! Credentials come from the PROVISION page. The OTA driver is the one every board runs.

mod rt;
mod uart;

use crate::device;
use crate::driver::{Clock, Exit};
use cortex_m_rt::{entry, exception, ExceptionFrame};
use cortex_m_semihosting::hprintln;
use memory_layouts::{Board, Region};
use shared::boot::Slots;
use shared::flash::RamNor;
use shared::image::SliceFlash;
use shared::time::Duration;
use uart::Uart;

const BOARD: Board = Board::QemuAn386;

type Flash = RamNor<
    'static,
    { memory_layouts::QEMU_AN386.geometry.erase_size as usize },
    { memory_layouts::QEMU_AN386.geometry.write_size as usize },
>;

device::ota_statics!(Uart);

/// A region of `mps.ram` as a byte slice.
///
/// # Safety
/// The region must be used through one slice at a time (the app's regions never overlap).
unsafe fn region(r: Region) -> &'static mut [u8] {
    core::slice::from_raw_parts_mut(r.origin as *mut u8, r.length as usize)
}

#[entry]
fn main() -> ! {
    let mut p = cortex_m::Peripherals::take().unwrap();
    log::set_logger(&Semihosting).ok();
    log::set_max_level(log::LevelFilter::Info);
    rt::init(p.SYST);
    let l = BOARD.layout();
    #[cfg(feature = "delta-bench")]
    delta_bench(l);
    let uart = Uart::init(&mut p.NVIC);
    // SAFETY: the attack writes where it must not (that is the point); its views are dropped
    // before the ones below are made.
    #[cfg(feature = "attack")]
    crate::attack::run(l, |r| Flash::new(unsafe { region(r) }), |args| hprintln!("{}", args));
    // SAFETY: main runs once; nothing else takes OTA_STATE. ACTIVE (this image), BOOT_RECORD and
    // PROVISION are only read; STATE and DFU are each taken once, here.
    let (state, flashes, provision) = unsafe {
        (
            &mut *core::ptr::addr_of_mut!(OTA_STATE),
            Slots {
                active: SliceFlash(&*region(l.active)),
                boot_record: SliceFlash(&*region(l.boot_record)),
                state: Flash::new(region(l.state)),
                dfu: Flash::new(region(l.dfu)),
            },
            &*region(l.provision),
        )
    };
    let clock = rt::SysTickClock;
    let board = device::BoardSetup {
        layout: l,
        clock: &clock,
        provision,
        uart: uart::MODEM_UART,
        // A build with `self-test-fails` fails it, to show the rollback.
        self_test: !cfg!(feature = "self-test-fails"),
        say: |args| hprintln!("{}", args),
    };
    match rt::block_on(device::run(state, flashes, uart, board)) {
        Ok(Exit::Reset) => hprintln!("app: reset"),
        Ok(Exit::BadCredentials(code)) => {
            // Nothing to gain from retrying soon: the credentials may be fixed in the console.
            let wait = shared::ota::BACKOFF_CAP;
            hprintln!("app: credentials refused (CONNACK {}); trying again in {} s", code, wait.as_millis() / 1000);
            rt::block_on(clock.sleep_until(clock.now() + wait));
        }
        Err(e) => {
            hprintln!("app: {}; resetting in 10 s", e);
            rt::block_on(clock.sleep_until(clock.now() + Duration::from_secs(10)));
        }
    }
    cortex_m::peripheral::SCB::sys_reset()
}

/// `cargo xtask bench delta`'s apply cost: DFU holds the output (its first 512 KiB), the base
/// (its length, u32 LE, then its bytes, at 512 KiB) and the patch (likewise at 768 KiB). The
/// patch is fed in 1 KiB pieces as a download would, the rebuilt image written through the
/// updater; the time in SysTick ticks (40 instructions each under `-icount shift=0`) is printed,
/// then QEMU exits.
#[cfg(feature = "delta-bench")]
fn delta_bench(l: &'static memory_layouts::Layout) {
    use cortex_m_semihosting::debug;
    const OUT: usize = 512 * 1024;
    const PATCH: usize = 768 * 1024;
    // SAFETY: nothing else runs; DFU and STATE are taken once, here.
    let (dfu, state) = unsafe { (region(l.dfu), region(l.state)) };
    let (out, rest) = dfu.split_at_mut(OUT);
    let len = |at: usize| u32::from_le_bytes([rest[at], rest[at + 1], rest[at + 2], rest[at + 3]]) as usize;
    let (base_len, patch_len) = (len(0), len(PATCH - OUT));
    let (base, patch) = rest.split_at(PATCH - OUT);
    let (base, patch) = (&base[4..4 + base_len], &patch[4..4 + patch_len]);
    let mut base = SliceFlash(base);
    let mut up = shared::boot::Updater::new(
        shared::boot::FirmwareUpdaterConfig { dfu: Flash::new(out), state: Flash::new(state) },
        0,
    );
    let mut patcher = shared::delta::Patcher::new();
    patcher.reset(OUT as u32, base_len as u32);
    let t0 = rt::ticks();
    let mut r = Ok(0);
    for c in patch.chunks(1024) {
        feed_watchdog();
        if let Err(e) = patcher.feed(c, &mut base, &mut up) {
            r = Err(e);
            break;
        }
    }
    let r = r.and_then(|_| patcher.finish(&mut base, &mut up));
    let _ = up.flush();
    let ticks = rt::ticks() - t0;
    match r {
        Ok(n) => hprintln!("delta-bench: {} bytes rebuilt from a {}-byte patch in {} ticks", n, patch_len, ticks),
        Err(e) => hprintln!("delta-bench: failed: {}", e),
    }
    debug::exit(debug::EXIT_SUCCESS);
}

/// The `log` facade over semihosting (QEMU prints it on its stdout).
struct Semihosting;

impl log::Log for Semihosting {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record<'_>) {
        hprintln!("{} {}", r.level(), r.args());
    }
    fn flush(&self) {}
}

/// Feeds the watchdog the bootloader started.
pub fn feed_watchdog() {
    const WDOG: usize = memory_layouts::QEMU_AN386_WATCHDOG;
    // SAFETY: the CMSDK watchdog's LOCK and INTCLR registers.
    unsafe {
        core::ptr::write_volatile((WDOG + 0xC00) as *mut u32, 0x1ACC_E551); // unlock
        core::ptr::write_volatile((WDOG + 0x00C) as *mut u32, 1); // INTCLR: clear + reload
        core::ptr::write_volatile((WDOG + 0xC00) as *mut u32, 0); // lock
    }
}

/// Says what faulted, then resets. A write into BOOTLOADER or BOOT_RECORD, which the bootloader
/// made read-only with the MPU, lands here (MemManage is not enabled, so it escalates): CFSR's
/// MMARVALID then says MMFAR holds the address.
#[exception]
unsafe fn HardFault(ef: &ExceptionFrame) -> ! {
    let scb = &*cortex_m::peripheral::SCB::PTR;
    let (cfsr, hfsr) = (scb.cfsr.read(), scb.hfsr.read());
    if cfsr & (1 << 7) != 0 {
        let kind = if cfsr & (1 << 1) != 0 { "data access violation" } else { "access violation" };
        hprintln!(
            "app: fault: MemManage {} at {:#010x} (pc {:#010x}, CFSR {:#x}); resetting",
            kind,
            scb.mmfar.read(),
            ef.pc(),
            cfsr
        );
    } else {
        hprintln!("app: fault: HardFault (pc {:#010x}, CFSR {:#x}, HFSR {:#x}); resetting", ef.pc(), cfsr, hfsr);
    }
    cortex_m::peripheral::SCB::sys_reset()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    hprintln!("app: panic: {}", info);
    cortex_m::peripheral::SCB::sys_reset()
}
