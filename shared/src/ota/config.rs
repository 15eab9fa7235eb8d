//! The settings of one device's OTA client, and the checks a board runs on what a user gave it.

use crate::alink::{valid_version, Topics, KEEP_ALIVE};
use crate::time::Duration;
use heapless::{String, Vec};

/// Most block requests in flight at once.
pub const MAX_WINDOW: usize = 8;
/// Aliyun's smallest block request (only the last block of the file may be shorter).
pub const MIN_BLOCK: u32 = 256;
/// Aliyun's largest block request.
pub const MAX_BLOCK: u32 = 131_072;
/// Aliyun's block rule: every request asks for this many bytes (only the last block of the file
/// may be shorter).
pub const BLOCK_SIZES: core::ops::RangeInclusive<u32> = MIN_BLOCK..=MAX_BLOCK;

/// Default bytes per block request: the C LinkSDK's, kept after `cargo xtask bench modem` (a
/// module's UART at 115,200 and 921,600 baud, nRF52840 and STM32L4 flash, 100 and 300 ms round
/// trips): 4 KiB was 2-5 % faster through the modem line but, against a platform that serves one
/// request at a time (stop-and-wait, more round trips), 24 % slower in `cargo xtask bench ota`;
/// 8 KiB was 8-10 % slower (a block no longer fits whole in the modem's read-ahead).
pub const DEFAULT_BLOCK: u32 = 5120;
/// Default most block requests in flight, chosen with the same bench: 6 kept an STM32L4 at
/// 921,600 baud over a 300 ms round trip as fast as an HTTPS download (4 made it 8 % slower); 8
/// gained nothing more.
pub const DEFAULT_WINDOW: usize = 6;
/// Default time between two `firmware/get`.
pub const DEFAULT_PULL: Duration = Duration::from_secs(24 * 3600);
/// Default time a new image has to reach the broker (a modem's bring-up and network
/// registration can take minutes).
pub const DEFAULT_CONFIRM: Duration = Duration::from_secs(600);

/// Default time an external module's FOTA may go without a progress URC (and a module may take
/// to come back after installing) before it counts as failed.
pub const DEFAULT_MODULE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Most external modules a device has.
pub const MAX_EXTERNAL: usize = 2;
/// Longest external module name.
pub const MAX_MODULE_NAME: usize = 32;
/// Longest URL Quectel's `AT+QFOTADL="<url>"` takes.
pub const QFOTADL_MAX_URL: u16 = 255;

/// A module beside the MCU that updates its own firmware from an HTTPS URL (a cellular module's
/// FOTA): the machine informs its version, takes its tasks and hands the board the URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct External {
    /// Its Aliyun module name (1-32 of `A-Z a-z 0-9 . _ -`, not `default`).
    pub name: String<MAX_MODULE_NAME>,
    /// The longest URL the module takes (longer ones are refused with -1).
    pub max_url: u16,
}

impl External {
    /// A module named `name` that takes URLs up to `max_url` bytes.
    pub fn new(name: &str, max_url: u16) -> Result<Self, ConfigError> {
        let name = String::try_from(name).map_err(|_| ConfigError::External { index: 0, why: "name too long" })?;
        let e = External { name, max_url };
        e.check(0)?;
        Ok(e)
    }

    /// A Quectel cellular module's own firmware: module `modem`, URLs up to 255 bytes
    /// (`AT+QFOTADL`).
    pub fn modem() -> Self {
        External { name: String::try_from("modem").unwrap_or_default(), max_url: QFOTADL_MAX_URL }
    }

    fn check(&self, index: u8) -> Result<(), ConfigError> {
        let why = if !valid_version(&self.name) {
            "name must be 1-32 of A-Z a-z 0-9 . _ -"
        } else if self.name == "default" {
            "name `default` is the app's (offers without a module)"
        } else if self.max_url < 16 {
            "max_url below 16 bytes"
        } else {
            return Ok(());
        };
        Err(ConfigError::External { index, why })
    }
}

/// Settings of one device.
#[derive(Clone, Debug)]
pub struct OtaConfig {
    /// productKey (topics).
    pub product_key: String<64>,
    /// deviceName (topics).
    pub device_name: String<64>,
    /// Largest image the device can take (ACTIVE's length).
    pub slot_size: u32,
    /// DFU erase size: downloads resume from a multiple of it.
    pub page_size: u32,
    /// Bytes per MQTT stream block request ([`BLOCK_SIZES`]; [`DEFAULT_BLOCK`] fits small MCUs).
    pub block_size: u32,
    /// Most block requests in flight (1..=[`MAX_WINDOW`]). The window starts at 1 and grows to
    /// this while every request is answered; a lost one halves the ceiling and falls back to 1.
    pub window: usize,
    /// How long a block request may go unanswered before it is sent again.
    pub request_timeout: Duration,
    /// How many times a block request or an HTTP GET is repeated before the download fails.
    pub retries: u8,
    /// Progress is reported when it moved by at least this many percent...
    pub progress_every: u8,
    /// ...and at least this long after the previous report.
    pub progress_interval: Duration,
    /// `firmware/get` is sent at connect and again this long after the last one (jobs created
    /// with NeedPush=false reach devices that stay online only so).
    pub pull_interval: Duration,
    /// How long a new image may try to reach the broker before it counts as broken and the
    /// bootloader puts the old one back.
    pub confirm_deadline: Duration,
    /// The board downloads over HTTPS too (else HTTPS tasks are refused with a reason).
    pub https: bool,
    /// The board applies differential packages (`isDiff: 1`) with `shared::delta` (else they
    /// are refused with a reason).
    pub delta: bool,
    /// Modules beside the MCU that update themselves (default none). One named like the app's
    /// module (known at boot) is ignored.
    pub external: Vec<External, MAX_EXTERNAL>,
    /// How long an external module's FOTA may go without a progress URC, and a module may take
    /// to report its version after installing, before the update counts as failed.
    pub module_timeout: Duration,
}

/// A setting outside what Aliyun or the device accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ConfigError {
    /// productKey or deviceName empty or longer than 64 bytes.
    Name(&'static str),
    /// Block size outside [`BLOCK_SIZES`].
    BlockSize(u32),
    /// Window outside 1..=[`MAX_WINDOW`].
    Window(usize),
    /// Keep-alive outside [`KEEP_ALIVE`].
    KeepAlive(u16),
    /// An entry of `external` is unusable.
    External {
        /// its index
        index: u8,
        /// what is wrong
        why: &'static str,
    },
    /// `module_timeout` is zero.
    ModuleTimeout,
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ConfigError::Name(n) => write!(f, "{n} must be 1-64 bytes"),
            ConfigError::BlockSize(b) => write!(f, "block_size {b} is outside Aliyun's 256..=131072"),
            ConfigError::Window(w) => write!(f, "window {w} is outside 1..={MAX_WINDOW}"),
            ConfigError::KeepAlive(k) => write!(f, "keep_alive {k} s is outside Aliyun's 30..=1200 s"),
            ConfigError::External { index, why } => write!(f, "external[{index}]: {why}"),
            ConfigError::ModuleTimeout => f.write_str("module_timeout must be above 0"),
        }
    }
}

impl core::error::Error for ConfigError {}

/// Checks an MQTT keep-alive against Aliyun's range.
pub fn check_keep_alive(s: u16) -> Result<(), ConfigError> {
    if KEEP_ALIVE.contains(&s) {
        Ok(())
    } else {
        Err(ConfigError::KeepAlive(s))
    }
}

impl OtaConfig {
    /// Defaults for a device: 5 KiB blocks, up to 6 in flight, 10 s timeout, 3 retries, progress
    /// every 5 % and at most once a second, a pull every 24 h, 10 minutes for a new image to reach
    /// the broker, no HTTPS, no differential packages, no external modules (30 minutes for their
    /// FOTA once there are).
    pub fn new(product_key: &str, device_name: &str, slot_size: u32, page_size: u32) -> Result<Self, ConfigError> {
        let name = |s: &str, what| {
            String::try_from(s).ok().filter(|s: &String<64>| !s.is_empty()).ok_or(ConfigError::Name(what))
        };
        Ok(OtaConfig {
            product_key: name(product_key, "product_key")?,
            device_name: name(device_name, "device_name")?,
            slot_size,
            page_size,
            block_size: DEFAULT_BLOCK,
            window: DEFAULT_WINDOW,
            request_timeout: Duration::from_secs(10),
            retries: 3,
            progress_every: 5,
            progress_interval: Duration::from_secs(1),
            pull_interval: DEFAULT_PULL,
            confirm_deadline: DEFAULT_CONFIRM,
            https: false,
            delta: false,
            external: Vec::new(),
            module_timeout: DEFAULT_MODULE_TIMEOUT,
        })
    }

    /// Checks the settings a user may change.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !BLOCK_SIZES.contains(&self.block_size) {
            return Err(ConfigError::BlockSize(self.block_size));
        }
        if !(1..=MAX_WINDOW).contains(&self.window) {
            return Err(ConfigError::Window(self.window));
        }
        for (i, e) in self.external.iter().enumerate() {
            e.check(i as u8)?;
            if self.external[..i].iter().any(|o| o.name == e.name) {
                return Err(ConfigError::External { index: i as u8, why: "name used twice" });
            }
        }
        if self.module_timeout.as_millis() == 0 {
            return Err(ConfigError::ModuleTimeout);
        }
        Ok(())
    }

    /// The device's topics.
    pub fn topics(&self) -> Topics<'_> {
        Topics { product_key: &self.product_key, device_name: &self.device_name }
    }
}
