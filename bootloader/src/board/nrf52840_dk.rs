//! nRF52840-DK: internal flash through the NVMC, behind embassy-boot-nrf's watchdog-feeding
//! wrapper, so a hung app is reset (and then reverted, since it never confirmed).

use embassy_boot_nrf::WatchdogFlash;
use embassy_nrf::{nvmc::Nvmc, wdt};
use memory_layouts::{Board, Region};
use shared::boot::{Boot, BootError};

pub const BOARD: Board = Board::Nrf52840Dk;

/// The NVMC, all of it, fed to the watchdog on every operation.
pub type Flash = WatchdogFlash<Nvmc<'static>>;

/// The address offset 0 of [`Flash`] maps to: the partitions are embassy-embedded-hal's
/// `BlockingPartition`s at `region.origin - FLASH_BASE`.
pub const FLASH_BASE: u32 = BOARD.layout().flash.origin;

pub fn init() -> Flash {
    let p = embassy_nrf::init(Default::default());
    let mut config = wdt::Config::default();
    config.timeout_ticks = 32768 * 8; // 8 s: the app must feed it or confirm quickly
    config.action_during_sleep = wdt::SleepConfig::Run;
    config.action_during_debug_halt = wdt::HaltConfig::Pause;
    WatchdogFlash::start(Nvmc::new(p.NVMC), p.WDT, config)
}

pub fn report_boot(_: &Boot) {}

pub fn halt(_: BootError) -> ! {
    // Nothing verifies: never jump. The watchdog resets us and we check again.
    loop {
        cortex_m::asm::wfi();
    }
}

/// ACL region 0 (nRF52840 Product Specification v1.x, "ACL - Access control lists": ACL at
/// 0x4001_E000, `ACL[n].ADDR` / `SIZE` / `PERM` at 0x800 + 16 n, + 4, + 8; PERM bit 1 WRITE = Disable
/// blocks write and erase, bit 2 READ stays Enable): BOOTLOADER and BOOT_RECORD, one range.
/// ADDR must be a page boundary, SIZE a non-zero multiple of the page size and at most half the
/// flash; checked at compile time.
const ACL_REGION: Region = {
    let l = BOARD.layout();
    let r = l.bootloader_owned();
    let page = l.geometry.erase_size;
    assert!(r.origin.is_multiple_of(page) && r.length.is_multiple_of(page) && r.length > 0);
    assert!(r.length <= l.flash.length / 2, "an ACL region is at most half the flash");
    r
};

/// Write-protects BOOTLOADER and BOOT_RECORD with the ACL: once ADDR, SIZE and PERM are written
/// the region cannot be changed until the next reset, by the app or anything else, and a write or
/// erase there is blocked with a BusFault. STATE (0xE000), the slots and PROVISION stay writable.
/// Not with the `unprotected` feature.
pub fn protect() {
    if cfg!(feature = "unprotected") {
        return;
    }
    use embassy_nrf::pac::acl::vals::Write;
    let acl = embassy_nrf::pac::ACL.acl(0);
    acl.addr().write_value(ACL_REGION.origin);
    acl.size().write_value(ACL_REGION.length);
    acl.perm().write(|w| w.set_write(Write::Disable));
}
