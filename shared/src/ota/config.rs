//! The settings of one device's OTA client, and the checks a board runs on what a user gave it.

use crate::alink::{Topics, KEEP_ALIVE};
use crate::time::Duration;
use heapless::String;

/// Most block requests in flight at once.
pub const MAX_WINDOW: usize = 8;
/// Aliyun's smallest block request (only the last block of the file may be shorter).
pub const MIN_BLOCK: u32 = 256;
/// Aliyun's largest block request.
pub const MAX_BLOCK: u32 = 131_072;
/// Aliyun's block rule: every request asks for this many bytes (only the last block of the file
/// may be shorter).
pub const BLOCK_SIZES: core::ops::RangeInclusive<u32> = MIN_BLOCK..=MAX_BLOCK;

/// Default bytes per block request: the C LinkSDK's, and it fits a microcontroller's RAM (fewer
/// round trips than 4 KiB at the same MQTT buffer).
pub const DEFAULT_BLOCK: u32 = 5120;
/// Default most block requests in flight.
pub const DEFAULT_WINDOW: usize = 4;
/// Default time between two `firmware/get`.
pub const DEFAULT_PULL: Duration = Duration::from_secs(24 * 3600);
/// Default time a new image has to reach the broker (a modem's bring-up and network
/// registration can take minutes).
pub const DEFAULT_CONFIRM: Duration = Duration::from_secs(600);

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
    /// Bytes per MQTT stream block request ([`BLOCK_SIZES`]; 5120 fits small MCUs).
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
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ConfigError::Name(n) => write!(f, "{n} must be 1-64 bytes"),
            ConfigError::BlockSize(b) => write!(f, "block_size {b} is outside Aliyun's 256..=131072"),
            ConfigError::Window(w) => write!(f, "window {w} is outside 1..={MAX_WINDOW}"),
            ConfigError::KeepAlive(k) => write!(f, "keep_alive {k} s is outside Aliyun's 30..=1200 s"),
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
    /// Defaults for a device: 5 KiB blocks, up to 4 in flight, 10 s timeout, 3 retries, progress
    /// every 5 % and at most once a second, a pull every 24 h, 10 minutes for a new image to reach
    /// the broker, no HTTPS.
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
        Ok(())
    }

    /// The device's topics.
    pub fn topics(&self) -> Topics<'_> {
        Topics { product_key: &self.product_key, device_name: &self.device_name }
    }
}
