//! nRF52840-DK: internal flash through the NVMC, behind embassy-boot-nrf's watchdog-feeding
//! wrapper, so a hung app is reset (and then reverted, since it never confirmed).

use embassy_boot_nrf::WatchdogFlash;
use embassy_nrf::{nvmc::Nvmc, wdt};
use memory_layouts::Board;
use shared::boot::{Boot, BootError};

pub const BOARD: Board = Board::Nrf52840Dk;

/// A window of the NVMC from BOOT_RECORD to the end of flash.
pub type Flash = Offset<WatchdogFlash<Nvmc<'static>>>;

pub fn init() -> Flash {
    let p = embassy_nrf::init(Default::default());
    let mut config = wdt::Config::default();
    config.timeout_ticks = 32768 * 8; // 8 s: the app must feed it or confirm quickly
    config.action_during_sleep = wdt::SleepConfig::Run;
    config.action_during_debug_halt = wdt::HaltConfig::Pause;
    let flash = WatchdogFlash::start(Nvmc::new(p.NVMC), p.WDT, config);
    Offset { inner: flash, base: BOARD.layout().boot_record.origin }
}

pub fn report_boot(_: &Boot) {}

pub fn halt(_: BootError) -> ! {
    // Nothing verifies: never jump. The watchdog resets us and we check again.
    loop {
        cortex_m::asm::wfi();
    }
}

/// The flash seen from `base` on, so partition offsets match the other boards' drivers.
pub struct Offset<F> {
    inner: F,
    base: u32,
}

use embedded_storage::nor_flash::{ErrorType, NorFlash, ReadNorFlash};

impl<F: ErrorType> ErrorType for Offset<F> {
    type Error = F::Error;
}

impl<F: ReadNorFlash> ReadNorFlash for Offset<F> {
    const READ_SIZE: usize = F::READ_SIZE;
    fn read(&mut self, off: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        self.inner.read(self.base + off, bytes)
    }
    fn capacity(&self) -> usize {
        self.inner.capacity() - self.base as usize
    }
}

impl<F: NorFlash> NorFlash for Offset<F> {
    const WRITE_SIZE: usize = F::WRITE_SIZE;
    const ERASE_SIZE: usize = F::ERASE_SIZE;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        self.inner.erase(self.base + from, self.base + to)
    }
    fn write(&mut self, off: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        self.inner.write(self.base + off, bytes)
    }
}
