//! What the driver tells the machine.

use super::TaskKey;
use crate::alink::Downlink;
use crate::boot::{BootInfo, Floor, LastBoot};
use crate::delta::DeltaError;
use crate::image::ImageError;

/// What a new image's self-test found ([`Event::SelfTest`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Verdict {
    /// It passed: the image may be confirmed.
    Pass,
    /// It failed: the image is reverted.
    Fail,
}

/// Whether a flash action ([`Event::Confirmed`], [`Event::Rehashed`]) was carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Outcome {
    /// Done.
    Done,
    /// The flash failed.
    Failed,
}

impl Outcome {
    /// `Done` when `ok`.
    pub fn of(ok: bool) -> Self {
        if ok {
            Outcome::Done
        } else {
            Outcome::Failed
        }
    }
}

/// Where an interrupted download stopped, as the driver persisted it from
/// [`crate::ota::Action::SaveResume`].
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

impl From<LastBoot> for BootOutcome {
    /// What the platform must hear about a boot: a revert and a refusal are failures of the task
    /// that installed the image; a swap in or a confirm are reported by the version informed.
    fn from(l: LastBoot) -> Self {
        match l {
            LastBoot::Reverted => BootOutcome::Reverted,
            LastBoot::Refused(e) => BootOutcome::Refused(e),
            LastBoot::Nothing | LastBoot::SwappedIn | LastBoot::Confirmed => BootOutcome::Nothing,
        }
    }
}

/// What the device knows at start.
#[derive(Clone, Copy, Debug)]
pub struct BootReport<'a> {
    /// Aliyun version string of the running image.
    pub version: &'a str,
    /// Its module (from the image: this is the module reported and whose tasks are taken).
    pub module: &'a str,
    /// It was just swapped in and must pass its self-test and reach the broker, then confirm.
    pub awaiting_confirm: bool,
    /// What this boot did (reported once: the next quiet boot says Nothing).
    pub outcome: BootOutcome,
    /// What downloads must meet now: the device's security counter and revoked key slots.
    pub floor: Floor,
    /// What the running image raises the floor by once it confirms ([`Floor::of`] it); applied
    /// at [`Event::Confirmed`] when it was awaiting its confirm.
    pub raises: Floor,
    /// An interrupted download, if one was persisted.
    pub resume: Option<Resume>,
    /// The running image's SHA-256 (its SHA256 TLV): what a differential package must name as
    /// its base.
    pub digest: [u8; 32],
    /// The running image's bytes (header to the last TLV).
    pub image_len: u32,
}

impl<'a> BootReport<'a> {
    /// The report of a boot as `boot_info` read it (module `default` when the image names none).
    pub fn new(info: &'a BootInfo, resume: Option<Resume>) -> Self {
        BootReport {
            version: info.running.aliyun_version.as_deref().unwrap_or(""),
            module: info.running.module.as_deref().filter(|m| !m.is_empty()).unwrap_or("default"),
            awaiting_confirm: info.awaiting_confirm,
            outcome: info.last.into(),
            floor: info.floor,
            raises: Floor::of(&info.running),
            resume,
            digest: info.running.digest,
            image_len: info.running.total_len,
        }
    }
}

/// Why verifying or marking the downloaded image failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MarkError {
    /// Our own check of the image refused it.
    Image(ImageError),
    /// Flash failed while reading or marking.
    Flash,
    /// The patch of a differential package did not end where its image does.
    Patch(DeltaError),
}

/// An input to the machine.
#[derive(Clone, Copy, Debug)]
pub enum Event<'a> {
    /// The device started (always the first event).
    Booted(BootReport<'a>),
    /// MQTT is connected (CONNACK accepted) and subscribed to the downlinks.
    Connected,
    /// The broker refused the CONNECT with this CONNACK return code.
    ConnectRefused(u8),
    /// MQTT went away.
    Disconnected,
    /// A message on one of our downlinks.
    Message {
        /// which downlink
        topic: Downlink,
        /// its payload (kept by the driver until the actions it causes are carried out)
        payload: &'a [u8],
    },
    /// A message on one of our downlinks was larger than the MQTT buffer: it was read and
    /// discarded.
    Oversized {
        /// which downlink
        topic: Downlink,
        /// bytes of its payload
        len: u32,
        /// bytes the buffer holds
        max: u32,
    },
    /// The broker acknowledged the QoS 1 publish with this packet id.
    Acked(u16),
    /// The self-test of a new image finished.
    SelfTest(Verdict),
    /// `Confirm` was carried out, or failed.
    Confirmed(Outcome),
    /// A `Write` or the erase before it failed.
    FlashFailed {
        /// the `offset` of the `Write` that failed
        at: u32,
    },
    /// `Rehash` finished, or could not read DFU.
    Rehashed(Outcome),
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
    /// The HTTP request failed, for this reason.
    HttpFailed(HttpError),
    /// `VerifyAndMark` finished.
    Marked(Result<(), MarkError>),
    /// [`crate::ota::Action::Patch`] failed: the patch is refused or damaged, or reading ACTIVE
    /// or writing DFU failed.
    PatchFailed(DeltaError),
    /// The board read an external module's firmware version (at bring-up, and again after the
    /// module restarted). Names that are not in `OtaConfig::external` are ignored; so are
    /// versions that are not Aliyun versions (1-64 of `A-Z a-z 0-9 . _ -`: the board trims the
    /// module's answer to that).
    ModuleVersion {
        /// the module's name, as in `OtaConfig::external`
        module: &'a str,
        /// its firmware version
        version: &'a str,
    },
    /// The module of the running [`crate::ota::Action::ModuleUpdate`] reported progress (a URC).
    ModuleProgress {
        /// downloading or installing
        phase: ModulePhase,
        /// 0..=100 of that phase
        percent: u8,
    },
    /// The module of the running [`crate::ota::Action::ModuleUpdate`] finished: `Ok` once it
    /// installed the package and is restarting (then send [`Event::ModuleVersion`] when it is
    /// back), or why not.
    ModuleDone(Result<(), ModuleError>),
}

/// Why an HTTP request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum HttpError {
    /// No connection to the server (DNS, TCP connect, the modem's socket).
    Connect,
    /// The TLS handshake failed (certificate not covered by the CA, no common cipher).
    Tls,
    /// The response was not HTTP we can read (status line or headers malformed or too long).
    Protocol,
    /// The response has a chunked body (`Transfer-Encoding: chunked`): the download needs a
    /// Content-Length. The download fails at once; retrying does not help.
    Chunked,
    /// The connection closed, or a read timed out, before the body ended.
    Closed,
}

impl core::fmt::Display for HttpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            HttpError::Connect => "could not connect to the server",
            HttpError::Tls => "TLS handshake failed (does the CA cover the host?)",
            HttpError::Protocol => "malformed HTTP response",
            HttpError::Chunked => "chunked body (Content-Length is required)",
            HttpError::Closed => "the connection closed before the body ended",
        })
    }
}

/// What an external module's FOTA is doing, as its progress URCs say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ModulePhase {
    /// The module downloads the package (Quectel `+QIND: "FOTA","HTTPSTART"` / `"DOWNLOADING"`).
    Download,
    /// The module installs it (Quectel `+QIND: "FOTA","START"` / `"UPDATING"`).
    Install,
}

/// Why an external module's FOTA failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ModuleError {
    /// The module answered ERROR to the FOTA command.
    Refused,
    /// The module's download failed with this code (Quectel `+QIND: "FOTA","HTTPEND",<code>`).
    Download(u16),
    /// The module's install failed with this code (Quectel `+QIND: "FOTA","END",<code>`).
    Install(u16),
    /// The module restarted or vanished without a result.
    Lost,
}
