//! `cargo xtask console --config console.toml`: the local Aliyun-compatible OTA console
//! (`ota_console::serve`).

use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Console settings: devices, jobs, ports, TLS, status file (see README).
    #[arg(long)]
    config: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    ota_console::serve(&a.config)
}
