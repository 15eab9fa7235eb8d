//! A device's PROVISION page (format: `shared::provision`): the record's fields (also the
//! command line of `cargo xtask provision`) and how the page goes into a flash image of the whole
//! device, as the QEMU rig writes it into QEMU's flash file.

use anyhow::{ensure, Context, Result};
use memory_layouts::{Board, Layout};
use shared::alink::SignMethod;
use shared::provision::Provision;

/// The record's fields on the command line.
#[derive(clap::Args, Clone, Debug)]
pub struct Fields {
    /// Aliyun product key.
    #[arg(long)]
    pub product_key: String,
    /// Aliyun device name.
    #[arg(long)]
    pub device_name: String,
    /// Aliyun device secret.
    #[arg(long)]
    pub device_secret: String,
    /// MQTT host: `{instance}.mqtt.iothub.aliyuncs.com`, or `{pk}.iot-as-mqtt.{region}.aliyuncs.com`.
    #[arg(long)]
    pub host: String,
    /// MQTT port (default: 8883 with TLS, 1883 with --plain).
    #[arg(long)]
    pub port: Option<u16>,
    /// Plain TCP instead of TLS (Aliyun refuses it for devices created since August 2022; for a
    /// local broker). TLS is done by the modem (AT+QSSLOPEN), verified with the endpoint's root.
    #[arg(long)]
    pub plain: bool,
    /// The SIM's APN.
    #[arg(long, default_value = "CMNET")]
    pub apn: String,
    /// hmacsha256, hmacsha1 or hmacmd5.
    #[arg(long, default_value = "hmacsha256")]
    pub sign_method: String,
}

impl Fields {
    /// The port the device connects to.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(if self.plain { 1883 } else { 8883 })
    }

    /// The page as it goes into flash: the record, then erased bytes.
    pub fn page(&self, layout: &Layout) -> Result<Vec<u8>> {
        ensure!(
            SignMethod::from_name(&self.sign_method).is_some(),
            "--sign-method {:?}: use hmacsha256, hmacsha1 or hmacmd5",
            self.sign_method
        );
        let p = Provision {
            product_key: &self.product_key,
            device_name: &self.device_name,
            device_secret: &self.device_secret,
            sign_method: &self.sign_method,
            host: &self.host,
            port: self.port(),
            tls: !self.plain,
            apn: &self.apn,
        };
        let mut page = vec![layout.geometry.erased; layout.provision.length as usize];
        p.encode(&mut page).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(page)
    }
}

/// Writes the page into a flash image of the whole device (QEMU's `mps.ram` file).
pub fn into_flash_file(board: Board, fields: &Fields, flash: &std::path::Path) -> Result<()> {
    let l = board.layout();
    let page = fields.page(l)?;
    let mut f = std::fs::read(flash).with_context(|| format!("reading {}", flash.display()))?;
    ensure!(
        f.len() == l.flash.length as usize,
        "{} is {} bytes; a {} flash image is {} (copy a release's factory.bin)",
        flash.display(),
        f.len(),
        board.name(),
        l.flash.length
    );
    let at = (l.provision.origin - l.flash.origin) as usize;
    f[at..at + page.len()].copy_from_slice(&page);
    std::fs::write(flash, f).with_context(|| format!("writing {}", flash.display()))
}
