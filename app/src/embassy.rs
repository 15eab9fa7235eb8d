//! What the two embassy boards (nrf52840-dk, b-l475e-iot01a) share: the driver's clock over
//! embassy-time, the `log` facade (the OTA driver and the modem log through it) over defmt on RTT,
//! and the rest of `main` once a board has its flash and its modem's UART ([`run`]). Their
//! features are on the `mod embassy` line of main.rs.

use crate::device::{self, OtaState};
use crate::driver::{Clock, Exit};
use embedded_storage::nor_flash::NorFlash;
use memory_layouts::{Layout, Region};
use shared::boot::Slots;
use shared::time::{Duration, Instant};

/// Prints a line the user must see (defmt).
pub fn say(args: core::fmt::Arguments<'_>) {
    defmt::println!("{}", defmt::Display2Format(&args));
}

/// Runs the device over the board's flash (`part` cuts a region out of it) and the modem on
/// `uart` until it must reset, waits when the broker refused the credentials or the device cannot
/// start, then resets.
pub async fn run<F, U>(
    state: &'static mut OtaState<U>,
    l: &'static Layout,
    part: impl Fn(Region) -> F,
    uart: U,
    uart_cfg: crate::modem::UartConfig,
) -> !
where
    F: NorFlash,
    U: crate::modem::ModemUart,
{
    let mut provision = [0u8; shared::provision::HEADER + shared::provision::MAX_PAYLOAD];
    let _ = part(l.provision).read(0, &mut provision);
    let flashes =
        Slots { active: part(l.active), boot_record: part(l.boot_record), state: part(l.state), dfu: part(l.dfu) };
    let clock = EmbassyClock;
    let board = device::BoardSetup {
        layout: l,
        clock: &clock,
        provision: &provision,
        uart: uart_cfg,
        self_test: !cfg!(feature = "self-test-fails"),
        say,
    };
    match device::run(state, flashes, uart, board).await {
        Ok(Exit::Reset) => defmt::println!("app: reset"),
        Ok(Exit::BadCredentials(code)) => {
            // Nothing to gain from retrying soon: the credentials may be fixed in the console.
            let wait = shared::ota::BACKOFF_CAP;
            defmt::println!(
                "app: credentials refused (CONNACK {}); trying again in {} s",
                code,
                wait.as_millis() / 1000
            );
            clock.sleep_until(clock.now() + wait).await;
        }
        Err(e) => {
            defmt::println!("app: {}; resetting in 10 s", e);
            clock.sleep_until(clock.now() + Duration::from_secs(10)).await;
        }
    }
    cortex_m::peripheral::SCB::sys_reset()
}

/// The board clock for the driver and the modem: embassy-time's.
pub struct EmbassyClock;

impl Clock for EmbassyClock {
    fn now(&self) -> Instant {
        Instant::from_millis(embassy_time::Instant::now().as_millis())
    }
    async fn sleep_until(&self, t: Instant) {
        embassy_time::Timer::at(embassy_time::Instant::from_millis(t.as_millis())).await
    }
}

/// Forwards `log` records to defmt at the same level (trace and debug both to debug).
pub struct Defmt;

impl log::Log for Defmt {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record<'_>) {
        let a = defmt::Display2Format(r.args());
        match r.level() {
            log::Level::Error => defmt::error!("{}", a),
            log::Level::Warn => defmt::warn!("{}", a),
            log::Level::Info => defmt::info!("{}", a),
            _ => defmt::debug!("{}", a),
        }
    }
    fn flush(&self) {}
}
