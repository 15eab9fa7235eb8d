//! The `b-l475e-iot01a` board: ST's B-L475E-IOT01A (STM32L475VG) wired to a Quectel
//! EC200/EC800/BG95-class module. Built and sized here; no board has run it yet.
//!
//! Internal flash through embassy-stm32's blocking driver (2 KiB pages, 8-byte double words with
//! ECC: a torn double word cannot be programmed again, which the flash simulator models), the
//! modem on UART4 with hardware flow control (embassy-stm32's BufferedUart: an embedded-io-async
//! stream, as the AT driver wants), embassy's executor with the TIM2 time driver, defmt over RTT.
//!
//! The watchdog: the bootloader started the IWDG (8 s) and it cannot be stopped. This app only
//! reloads it (writes the reload key to IWDG_KR, from a task of its own every 2 s); it never
//! programs another prescaler or reload value (embassy-stm32's `IndependentWatchdog::new` would),
//! so the timeout is the bootloader's alone. A task stuck without awaiting starves it and the chip
//! resets (then the bootloader reverts an image that never confirmed).
//!
//! Flow control is not optional here: writing or erasing a page of bank 1 (STATE, BOOT_RECORD,
//! ACTIVE's first 225 pages) stalls the CPU, which runs from bank 1, for up to some 25 ms a
//! page, and the L4's USART has no receive FIFO; with RTS the module holds its bytes instead of
//! overrunning. DFU is all in bank 2: the download's writes do not stall (read-while-write).
//!
//! Wiring (the module's UART is 1.8 V on most of these modules: put a level shifter between it
//! and the board's 3.3 V I/O). D0/D1 are the Arduino header's UART4; the other pins are the
//! MCU's (check their connector positions in UM2153, the board's user manual):
//!
//! | MCU pin | board | module |
//! |---|---|---|
//! | PA0 (UART4_TX, AF8)  | Arduino D1 | RXD |
//! | PA1 (UART4_RX, AF8)  | Arduino D0 | TXD |
//! | PA15 (UART4_RTS, AF8) | | CTS |
//! | PB7 (UART4_CTS, AF8) | | RTS |
//! | PD14 | Arduino D2 | PWRKEY, through an NPN (high here = PWRKEY pulled low) |
//! | PB0  | Arduino D3 | STATUS (high while the module is on) |
//! | GND  | GND | GND |

use crate::device;
use core::cell::RefCell;
use embassy_embedded_hal::flash::partition::BlockingPartition;
use embassy_executor::Spawner;
use embassy_stm32::flash::{Blocking, Flash};
use embassy_stm32::gpio::{Input, Level, Output, Pull, Speed};
use embassy_stm32::rcc::{Pll, PllMul, PllPreDiv, PllRDiv, PllSource, Sysclk};
use embassy_stm32::usart::{self, BufferedUart};
use embassy_stm32::{bind_interrupts, peripherals};
use embassy_sync::blocking_mutex::{raw::NoopRawMutex, Mutex};
use embassy_time::Timer;
use memory_layouts::{Board, Region};
use {defmt_rtt as _, panic_probe as _};

const BOARD: Board = Board::BL475eIot01a;

bind_interrupts!(struct Irqs {
    UART4 => usart::BufferedInterruptHandler<peripherals::UART4>;
});

/// The UART the module hangs on.
type ModemUart = BufferedUart<'static>;

device::ota_statics!(ModemUart);

/// UART buffers: a whole download block can arrive while the driver writes flash.
static mut RX_BUF: [u8; 8192] = [0; 8192];
static mut TX_BUF: [u8; 512] = [0; 512];

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

/// Reloads the IWDG the bootloader started (RM0351: 0xAAAA in IWDG_KR), nothing else.
#[embassy_executor::task]
async fn feed_watchdog() {
    use embassy_stm32::pac::{iwdg::vals::Key, IWDG};
    loop {
        IWDG.kr().write(|w| w.set_key(Key::RESET));
        Timer::after_secs(2).await;
    }
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    // 80 MHz from HSI16 through the PLL (16 / 1 x 10 / 2), as in the bootloader.
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
    log::set_logger(&crate::embassy::Defmt).ok();
    log::set_max_level(log::LevelFilter::Info);
    spawner.spawn(feed_watchdog().unwrap());

    // The module: power it on unless STATUS says it is on.
    let status = Input::new(p.PB0, Pull::Down);
    let mut pwrkey = Output::new(p.PD14, Level::Low, Speed::Low);
    if status.is_low() {
        defmt::info!("modem: off, pulsing PWRKEY");
        pwrkey.set_high();
        Timer::after_millis(600).await;
        pwrkey.set_low();
        Timer::after_secs(3).await;
    }
    let mut config = usart::Config::default();
    config.baudrate = 115_200;
    // SAFETY: main runs once; the buffers are handed to the UART here and nowhere else.
    let (rx, tx) = unsafe { (&mut *core::ptr::addr_of_mut!(RX_BUF), &mut *core::ptr::addr_of_mut!(TX_BUF)) };
    let uart = match BufferedUart::new_with_rtscts(p.UART4, p.PA1, p.PA0, p.PA15, p.PB7, Irqs, tx, rx, config) {
        Ok(u) => u,
        Err(_) => {
            defmt::println!("app: UART4 refused its configuration; resetting");
            cortex_m::peripheral::SCB::sys_reset()
        }
    };

    let l = BOARD.layout();
    // embassy-stm32's offsets count from the start of the flash (0x0800_0000).
    let flash = Mutex::<NoopRawMutex, _>::new(RefCell::new(Flash::<Blocking>::new_blocking(p.FLASH)));
    let part = |r: Region| BlockingPartition::new(&flash, r.origin - l.flash.origin, r.length);
    // BOOTLOADER is under WRP (an attempt there fails with a WRPERR), BOOT_RECORD is not: see
    // bootloader/src/board/b_l475e_iot01a.rs.
    #[cfg(feature = "attack")]
    crate::attack::run(l, &part, crate::embassy::say);
    // SAFETY: main runs once; nothing else takes OTA_STATE.
    let state = unsafe { &mut *core::ptr::addr_of_mut!(OTA_STATE) };
    crate::embassy::run(state, l, part, uart, MODEM_UART).await
}

/// The module's line: 921,600 baud with RTS/CTS (PA15/PB7); UART4 at 80 MHz divides it exactly
/// enough (0.06 %).
const MODEM_UART: crate::modem::UartConfig = crate::modem::UartConfig { rate: 921_600, rtscts: true };

impl crate::modem::LineRate for BufferedUart<'_> {
    fn set_rate(&mut self, baud: u32) {
        if self.set_baudrate(baud).is_err() {
            defmt::warn!("UART4: {} baud is out of reach", baud);
        }
    }
}
