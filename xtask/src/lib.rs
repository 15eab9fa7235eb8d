//! `cargo xtask` as a library: the CLI, one module per subcommand (the binary in main.rs only
//! parses the command line), shared with the integration tests and between subcommands.
//!
//! What the verbs start lives in crates of its own: the Aliyun twin in `ota-console`
//! (xtask/console), the test rigs (device harness, QEMU rig, modem simulator, proxy, demo,
//! power-cut campaign) in `testbed` (xtask/testbed), and this machine's root, processes and tools
//! in `machine` (xtask/machine). xtask may use all three; none of them uses xtask.

pub mod bench;
pub mod bench_delta;
pub mod bench_modem;
pub mod bench_ota;
pub mod bench_qemu;
pub mod build;
pub mod console;
pub mod demo;
pub mod device;
pub mod flash;
pub mod fuzz;
pub mod keys;
pub mod modem_sim;
pub mod package;
pub mod provision;
pub mod qemu;
pub mod sign;
pub mod size;
pub mod test;
pub mod tools;

use clap::ValueEnum;
use memory_layouts::Board;

/// A board on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BoardArg {
    /// The device simulated on Linux.
    Host,
    /// Cortex-M4 under qemu-system-arm -M mps2-an386.
    #[value(name = "qemu-an386")]
    QemuAn386,
    /// nRF52840-DK with a Quectel modem.
    #[value(name = "nrf52840-dk")]
    Nrf52840Dk,
    /// ST B-L475E-IOT01A (STM32L475VG) with a Quectel modem.
    #[value(name = "b-l475e-iot01a")]
    BL475eIot01a,
}

impl From<BoardArg> for Board {
    fn from(b: BoardArg) -> Board {
        match b {
            BoardArg::Host => Board::Host,
            BoardArg::QemuAn386 => Board::QemuAn386,
            BoardArg::Nrf52840Dk => Board::Nrf52840Dk,
            BoardArg::BL475eIot01a => Board::BL475eIot01a,
        }
    }
}

pub use machine::root;

/// Parses `123` or `0x7b`.
pub fn parse_u32(s: &str) -> Result<u32, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("{s:?} is not a number (decimal, or hex with 0x)"))
}
