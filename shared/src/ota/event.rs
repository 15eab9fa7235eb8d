//! What the driver tells the machine.

use crate::alink::Downlink;
use crate::image::ImageError;

/// Identifies a task across resets: its size and the first bytes of its digest.
pub type TaskKey = [u8; 16];

/// Where an interrupted download stopped, as the driver persisted it from
/// [`crate::ota::Action::SaveProgress`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Resume {
    /// The task it belongs to.
    pub key: TaskKey,
    /// Bytes in DFU that are good (a page boundary).
    pub written: u32,
}

/// What the last boot did (from BOOT_RECORD, see `shared::boot::BootInfo`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum BootOutcome {
    /// Nothing to report.
    Nothing,
    /// The new image did not confirm and the old one was put back.
    Reverted,
    /// The bootloader refused the downloaded image.
    Refused(ImageError),
}

/// What the device knows at start.
#[derive(Clone, Copy, Debug)]
pub struct BootReport<'a> {
    /// Aliyun version string of the running image.
    pub version: &'a str,
    /// Its module.
    pub module: &'a str,
    /// It was just swapped in and must pass its self-test, then confirm.
    pub awaiting_confirm: bool,
    /// What this boot did (reported once: the next quiet boot says Nothing).
    pub outcome: BootOutcome,
    /// The device's security counter.
    pub sec_cnt: u32,
    /// An interrupted download, if one was persisted.
    pub resume: Option<Resume>,
}

/// Why verifying or marking the downloaded image failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MarkError {
    /// Our own check of the image refused it.
    Image(ImageError),
    /// Flash failed while reading or marking.
    Flash,
}

/// An input to the machine.
#[derive(Clone, Copy, Debug)]
pub enum Event<'a> {
    /// The device started (always the first event).
    Booted(BootReport<'a>),
    /// MQTT is connected and subscribed to the downlinks.
    Connected,
    /// MQTT went away.
    Disconnected,
    /// A message on one of our downlinks.
    Message {
        /// which downlink
        topic: Downlink,
        /// its payload (kept by the driver until the actions it causes are carried out)
        payload: &'a [u8],
    },
    /// The self-test of a new image finished.
    SelfTest(bool),
    /// `Confirm` was carried out (true) or failed (false).
    Confirmed(bool),
    /// A `Write` or the erase before it failed.
    FlashFailed,
    /// `Rehash` finished (true) or could not read DFU (false).
    Rehashed(bool),
    /// The HTTP response to `HttpGet` started.
    HttpResponse {
        /// status code
        status: u16,
        /// Content-Length, if sent
        length: Option<u32>,
    },
    /// Body bytes of the HTTP response (kept by the driver like a message payload).
    HttpBody(&'a [u8]),
    /// The HTTP body ended (all of it, or the connection closed).
    HttpEnd,
    /// The HTTP request failed (connect, TLS, read timeout).
    HttpFailed,
    /// `VerifyAndMark` finished.
    Marked(Result<(), MarkError>),
}
