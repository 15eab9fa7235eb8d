//! `cargo xtask provision`: writes a device's credentials and broker into its PROVISION page
//! (format: `shared::provision`). One image serves the whole fleet; each device gets its page.
//! qemu-an386: into the flash file QEMU uses as `mps.ram`; nrf52840-dk: through the debug probe
//! with probe-rs (the page only: the image stays as flashed).

use crate::BoardArg;
use anyhow::{bail, Context, Result};
use memory_layouts::Board;
use std::path::PathBuf;
pub use testbed::provision::{into_flash_file, Fields};

#[derive(clap::Args)]
pub struct Args {
    /// Board of the device.
    #[arg(long, value_enum)]
    board: BoardArg,
    /// qemu-an386: the flash file (a release's factory.bin copy) to write the page into
    /// (nrf52840-dk: written through the debug probe).
    #[arg(long)]
    flash: Option<PathBuf>,
    #[command(flatten)]
    p: Fields,
}

pub fn run(a: Args) -> Result<()> {
    let board = Board::from(a.board);
    match board {
        Board::QemuAn386 => {
            let Some(flash) = a.flash else {
                bail!("qemu-an386: pass --flash FILE (a copy of a release's factory.bin)")
            };
            into_flash_file(board, &a.p, &flash)?;
            println!("provisioned {} / {} into {}", a.p.product_key, a.p.device_name, flash.display());
            Ok(())
        }
        Board::Host => bail!("the host device reads its credentials from device.toml (see README)"),
        Board::Nrf52840Dk | Board::BL475eIot01a => {
            let l = board.layout();
            let page = crate::root().join("target/provision-page.bin");
            std::fs::write(&page, a.p.page(l)?).with_context(|| format!("writing {}", page.display()))?;
            crate::flash::download(board, &page, l.provision.origin)?;
            println!(
                "provisioned {} / {} at {:#x} through the debug probe",
                a.p.product_key, a.p.device_name, l.provision.origin
            );
            Ok(())
        }
    }
}
