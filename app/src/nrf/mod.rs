//! The `nrf52840-dk` board: an nRF52840-DK wired to a Quectel EC200/EC800/BG95-class module.
//!
//! Internal flash through the embassy-nrf NVMC driver, the modem on UARTE0 with hardware flow
//! control (embassy-nrf's BufferedUarte: an embedded-io-async stream, as the AT driver wants),
//! embassy's executor with the RTC1 time driver, defmt over RTT. The watchdog the bootloader
//! started keeps being fed from a task of its own: a task stuck without awaiting starves it and
//! the chip resets (then the bootloader reverts an image that never confirmed).
//!
//! Wiring (Arduino header of the DK; the module's UART is 1.8 V on most of these modules: put a
//! level shifter between it and the DK's 3.0 V I/O):
//!
//! | DK pin | Arduino | module |
//! |---|---|---|
//! | P1.02 | D1 | RXD (the DK's TXD) |
//! | P1.01 | D0 | TXD (the DK's RXD) |
//! | P1.03 | D2 | RTS (the DK's CTS) |
//! | P1.04 | D3 | CTS (the DK's RTS) |
//! | P1.05 | D4 | PWRKEY, through an NPN (high here = PWRKEY pulled low) |
//! | P1.07 | D6 | STATUS (high while the module is on) |
//! | GND   | GND | GND |

use crate::device;
use core::cell::RefCell;
use embassy_embedded_hal::flash::partition::BlockingPartition;
use embassy_executor::Spawner;
use embassy_nrf::buffered_uarte::{self, BufferedUarte};
use embassy_nrf::gpio::{Input, Level, Output, OutputDrive, Pull};
use embassy_nrf::nvmc::Nvmc;
use embassy_nrf::wdt::WatchdogHandle;
use embassy_nrf::{bind_interrupts, peripherals, uarte};
use embassy_sync::blocking_mutex::{raw::NoopRawMutex, Mutex};
use embassy_time::Timer;
use memory_layouts::{Board, Region};
use {defmt_rtt as _, panic_probe as _};

const BOARD: Board = Board::Nrf52840Dk;

bind_interrupts!(struct Irqs {
    UARTE0 => buffered_uarte::InterruptHandler<peripherals::UARTE0>;
});

/// The UART the module hangs on.
type ModemUart = BufferedUarte<'static>;

device::ota_statics!(ModemUart);

/// UARTE buffers: a whole download block can arrive while the driver writes flash.
static mut RX_BUF: [u8; 8192] = [0; 8192];
static mut TX_BUF: [u8; 512] = [0; 512];

#[embassy_executor::task]
async fn feed_watchdog(mut handle: WatchdogHandle) {
    loop {
        handle.pet();
        Timer::after_secs(2).await;
    }
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let p = embassy_nrf::init(Default::default());
    log::set_logger(&crate::embassy::Defmt).ok();
    log::set_max_level(log::LevelFilter::Info);
    // SAFETY: the bootloader started the watchdog with one reload register (RR[0]).
    let handle = unsafe { WatchdogHandle::steal::<peripherals::WDT>(0) };
    spawner.spawn(feed_watchdog(handle).unwrap());

    // The module: power it on unless STATUS says it is on.
    let status = Input::new(p.P1_07, Pull::Down);
    let mut pwrkey = Output::new(p.P1_05, Level::Low, OutputDrive::Standard);
    if status.is_low() {
        defmt::info!("modem: off, pulsing PWRKEY");
        pwrkey.set_high();
        Timer::after_millis(600).await;
        pwrkey.set_low();
        Timer::after_secs(3).await;
    }
    let mut config = uarte::Config::default();
    config.baudrate = uarte::Baudrate::Baud115200;
    // SAFETY: main runs once; the buffers are handed to the UARTE here and nowhere else.
    let (rx, tx) = unsafe { (&mut *core::ptr::addr_of_mut!(RX_BUF), &mut *core::ptr::addr_of_mut!(TX_BUF)) };
    let uart = BufferedUarte::new_with_rtscts(
        p.UARTE0,
        p.TIMER0,
        p.PPI_CH0,
        p.PPI_CH1,
        p.PPI_GROUP0,
        p.P1_01,
        p.P1_02,
        p.P1_03,
        p.P1_04,
        Irqs,
        config,
        rx,
        tx,
    );

    let l = BOARD.layout();
    let nvmc = Mutex::<NoopRawMutex, _>::new(RefCell::new(Nvmc::new(p.NVMC)));
    let part = |r: Region| BlockingPartition::new(&nvmc, r.origin - l.flash.origin, r.length);
    // With the bootloader's ACL in place each attempt ends in a BusFault (then the watchdog).
    #[cfg(feature = "attack")]
    crate::attack::run(l, &part, crate::embassy::say);
    // SAFETY: main runs once; nothing else takes OTA_STATE.
    let state = unsafe { &mut *core::ptr::addr_of_mut!(OTA_STATE) };
    crate::embassy::run(state, l, part, uart, MODEM_UART).await
}

/// The module's line: 921,600 baud with RTS/CTS (P1.03/P1.04); the UARTE runs up to 1 Mbaud.
const MODEM_UART: crate::modem::UartConfig = crate::modem::UartConfig { rate: 921_600, rtscts: true };

impl crate::modem::LineRate for BufferedUarte<'_> {
    fn set_rate(&mut self, baud: u32) {
        use uarte::Baudrate as B;
        let b = match baud {
            9600 => B::Baud9600,
            19_200 => B::Baud19200,
            38_400 => B::Baud38400,
            57_600 => B::Baud57600,
            230_400 => B::Baud230400,
            460_800 => B::Baud460800,
            921_600 => B::Baud921600,
            1_000_000 => B::Baud1m,
            _ => B::Baud115200,
        };
        self.set_baudrate(b);
    }
}
