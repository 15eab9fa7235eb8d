//! `cargo xtask tools NAME` (hidden): installs a tool the tests use if needed and prints its path.
//! The installers are `machine::tools`, re-exported here for the other subcommands.

use anyhow::Result;
pub use machine::tools::*;

#[derive(clap::Args)]
pub struct Args {
    /// Tool to install if needed and print the path of.
    #[arg(value_parser = ["imgtool", "detools", "openssl", "qemu-system-arm", "mosquitto"])]
    tool: String,
}

pub fn run(a: Args) -> Result<()> {
    let path = match a.tool.as_str() {
        "imgtool" => imgtool()?,
        "detools" => detools()?,
        "openssl" => openssl()?,
        "mosquitto" => mosquitto()?,
        _ => qemu()?,
    };
    println!("{}", path.display());
    Ok(())
}
