//! The `log` facade (the OTA driver and the modem log through it) over defmt, for the boards that
//! log with defmt over RTT (their features are on the `mod defmt_log` line of main.rs).

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
