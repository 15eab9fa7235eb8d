//! B-L475E-IOT01A (STM32L475VG): internal flash through embassy-stm32's blocking driver (2 KiB
//! pages, 8-byte double-word programming with ECC), behind a wrapper that reloads the independent
//! watchdog (IWDG) on every operation, so a hung app is reset (and then reverted, since it never
//! confirmed). embassy-boot-stm32 has no watchdog wrapper like embassy-boot-nrf's; `WatchdogFlash`
//! below is the same idea.
//!
//! Write protection, honestly: the STM32L4 cannot lock a page range until the next reset (the
//! nRF52840's ACL can). What it has is WRP, a page range in the option bytes that refuses program
//! and erase by anyone while it is set, kept across resets and power cycles. So:
//! - BOOTLOADER (pages 0..=23 of bank 1) is WRP-protected: [`init`] sets WRP area A of bank 1 to
//!   exactly those pages the first time it finds it different (then reloads the option bytes, which
//!   resets the chip once, before any boot decision, so no boot attempt is spent).
//! - BOOT_RECORD is NOT protected: the bootloader itself writes it at every boot that changes it,
//!   and WRP would stop that too. An app that runs arbitrary code can erase it (losing the security
//!   counter and the key revocations, so an older signed image would be accepted again).
//! - WRP is not a lock against the app: the option-byte keys are public, so code running on the
//!   chip can clear WRP1A and reload the option bytes (a reset), then overwrite the bootloader. It
//!   stops stray and buggy writes (and `cargo xtask release --attack`-style attempts through the
//!   flash driver), not a compromised app. Only RDP level 2 freezes the option bytes, and it is
//!   irreversible (no debug ever again): not done.
//! - An MPU region would not help: the app is privileged (it can reprogram the MPU) and a page
//!   erase goes through FLASH_CR, not through a store to the page.
//!
//! [`protect`] therefore does nothing before the jump. Re-flashing the factory image over the
//! debug probe needs WRP1A cleared first (STM32CubeProgrammer, option bytes: WRP1A_STRT above
//! WRP1A_END). With the `unprotected` feature WRP is never set (one already set stays).

use embassy_stm32::flash::{Blocking, Flash as StmFlash};
use embassy_stm32::peripherals::IWDG;
use embassy_stm32::rcc::{Pll, PllMul, PllPreDiv, PllRDiv, PllSource, Sysclk};
use embassy_stm32::wdg::IndependentWatchdog;
use embedded_storage::nor_flash::{ErrorType, NorFlash, ReadNorFlash};
use memory_layouts::Board;
use shared::boot::{Boot, BootError};

pub const BOARD: Board = Board::BL475eIot01a;

/// The address offset 0 of [`Flash`] maps to: embassy-stm32's flash offsets count from the start
/// of the flash, 0x0800_0000.
pub const FLASH_BASE: u32 = BOARD.layout().flash.origin;

/// The whole internal flash, the watchdog reloaded on every operation.
pub type Flash = WatchdogFlash<StmFlash<'static, Blocking>>;

/// 8 s: the app must reload the IWDG (it does every 2 s) or confirm quickly.
const WATCHDOG_US: u32 = 8_000_000;

const _: () = {
    let g = BOARD.layout().geometry;
    assert!(FLASH_BASE as usize == embassy_stm32::flash::FLASH_BASE);
    assert!(BOARD.layout().flash.length as usize == embassy_stm32::flash::FLASH_SIZE);
    assert!(g.erase_size as usize == <StmFlash<'static, Blocking> as NorFlash>::ERASE_SIZE);
    assert!(g.write_size as usize == <StmFlash<'static, Blocking> as NorFlash>::WRITE_SIZE);
};

/// WRP area A of bank 1 (RM0351, FLASH_WRP1AR: WRP1A_STRT bits 7:0, WRP1A_END bits 23:16, page
/// numbers in bank 1, END included): BOOTLOADER's pages, checked at compile time to lie in bank 1.
const WRP_PAGES: (u8, u8) = {
    let l = BOARD.layout();
    let page = l.geometry.erase_size;
    let bank = l.flash.length / 2;
    assert!(l.bootloader.origin >= l.flash.origin && l.bootloader.end() <= l.flash.origin + bank);
    let first = (l.bootloader.origin - l.flash.origin) / page;
    let last = (l.bootloader.end() - l.flash.origin) / page - 1;
    assert!(last < 256);
    (first as u8, last as u8)
};

/// 80 MHz from HSI16 through the PLL (16 / 1 x 10 / 2), so the verify of a full slot is quick; the
/// app's `embassy_stm32::init` switches back to MSI before it sets its own clocks.
pub fn init() -> Flash {
    let mut config = embassy_stm32::Config::default();
    config.rcc.hsi = true;
    config.rcc.pll = Some(Pll {
        source: PllSource::HSI,
        prediv: PllPreDiv::DIV1,
        mul: PllMul::MUL10,
        divp: None,
        divq: None,
        divr: Some(PllRDiv::DIV2),
    });
    config.rcc.sys = Sysclk::PLL1_R;
    let p = embassy_stm32::init(config);
    if !cfg!(feature = "unprotected") {
        write_protect_bootloader();
    }
    let mut wdg = IndependentWatchdog::new(p.IWDG, WATCHDOG_US);
    wdg.unleash();
    WatchdogFlash { flash: StmFlash::new_blocking(p.FLASH), wdg }
}

/// Sets WRP1A to [`WRP_PAGES`] unless it already is, and reloads the option bytes (a reset).
/// An option-byte load that did not take (the reset says OBL, WRP1A still differs) is not retried:
/// the device boots unprotected rather than resetting forever.
fn write_protect_bootloader() {
    use embassy_stm32::pac::{FLASH, RCC};
    let (first, last) = WRP_PAGES;
    let now = FLASH.wrp1ar().read();
    // OBLRSTF stays set until cleared: read it, then clear the reset flags, so it means "this
    // reset was an option-byte load" at the next boot too (after WRP1A was cleared over the probe,
    // say), not "one was, since power-on".
    let after_load = RCC.csr().read().oblrstf();
    RCC.csr().modify(|w| w.set_rmvf(true));
    if (now.wrp1a_strt(), now.wrp1a_end()) == (first, last) || after_load {
        return;
    }
    while FLASH.sr().read().bsy() {}
    // Clear the error flags (write 1 to clear) a previous operation may have left: they block OPTSTRT.
    FLASH.sr().write_value(FLASH.sr().read());
    // RM0351 3.3.5 / 3.4.2: unlock FLASH_CR, then the option bytes.
    FLASH.keyr().write_value(0x4567_0123);
    FLASH.keyr().write_value(0xCDEF_89AB);
    FLASH.optkeyr().write_value(0x0819_2A3B);
    FLASH.optkeyr().write_value(0x4C5D_6E7F);
    FLASH.wrp1ar().modify(|w| {
        w.set_wrp1a_strt(first);
        w.set_wrp1a_end(last);
    });
    FLASH.cr().modify(|w| w.set_optstrt(true));
    while FLASH.sr().read().bsy() {}
    // Reloads the option bytes into the option registers: resets the chip.
    FLASH.cr().modify(|w| w.set_obl_launch(true));
    loop {
        cortex_m::asm::nop();
    }
}

/// A read of a double word that a power cut left half programmed has two ECC errors, and the
/// STM32L4 raises the NMI for it (RM0351, "Error code correction (ECC)": FLASH_ECCR.ECCD). Without
/// a handler the core would spin here until the watchdog, at every boot that reads the torn word
/// (BOOT_RECORD and the resume log are scanned on every boot): a reset loop. Clearing ECCD and
/// returning lets the read finish with the stored bytes, which fail their CRC and are skipped,
/// as the flash simulator models it. Any other NMI resets.
///
/// # Safety
/// Touches only FLASH_ECCR, nothing a critical section guards.
#[cortex_m_rt::exception]
unsafe fn NonMaskableInt() {
    use embassy_stm32::pac::FLASH;
    if FLASH.eccr().read().eccd() {
        FLASH.eccr().modify(|w| w.set_eccd(true)); // write 1 to clear
    } else {
        cortex_m::peripheral::SCB::sys_reset();
    }
}

pub fn report_boot(_: &Boot) {}

pub fn halt(_: BootError) -> ! {
    // Nothing verifies: never jump. The watchdog resets us and we check again.
    loop {
        cortex_m::asm::wfi();
    }
}

/// Nothing to do before the jump: BOOTLOADER is under WRP since [`init`], and the part has no way
/// to lock BOOT_RECORD until the next reset (see the module doc for what is and is not protected).
pub fn protect() {}

/// A NOR flash whose every operation first reloads the IWDG (a verify of a full slot reads it in
/// many short calls; a swap erases and writes page by page).
pub struct WatchdogFlash<F> {
    flash: F,
    wdg: IndependentWatchdog<'static, IWDG>,
}

impl<F: ErrorType> ErrorType for WatchdogFlash<F> {
    type Error = F::Error;
}

impl<F: ReadNorFlash> ReadNorFlash for WatchdogFlash<F> {
    const READ_SIZE: usize = F::READ_SIZE;
    fn read(&mut self, off: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        self.wdg.pet();
        self.flash.read(off, bytes)
    }
    fn capacity(&self) -> usize {
        self.flash.capacity()
    }
}

impl<F: NorFlash> NorFlash for WatchdogFlash<F> {
    const WRITE_SIZE: usize = F::WRITE_SIZE;
    const ERASE_SIZE: usize = F::ERASE_SIZE;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        self.wdg.pet();
        self.flash.erase(from, to)
    }
    fn write(&mut self, off: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        self.wdg.pet();
        self.flash.write(off, bytes)
    }
}
