//! What the two embassy boards (nrf52840-dk, b-l475e-iot01a) share: the driver's clock over
//! embassy-time, and the `log` facade (the OTA driver and the modem log through it) over defmt
//! on RTT. Their features are on the `mod embassy` line of main.rs.

use crate::driver::Clock;
use embassy_time::Timer;
use shared::time::Instant;

/// The board clock for the driver and the modem: embassy-time's.
pub struct EmbassyClock;

impl Clock for EmbassyClock {
    fn now(&self) -> Instant {
        Instant::from_millis(embassy_time::Instant::now().as_millis())
    }
    async fn sleep_until(&self, t: Instant) {
        Timer::at(embassy_time::Instant::from_millis(t.as_millis())).await
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
