//! Why an update failed, as the device tells the platform: each [`Failure`] has its Aliyun step
//! (`-1` upgrade, `-2` download, `-3` verification, `-4` flash) and its `desc` (the `Display`,
//! at most 128 bytes). Every `desc` starts with a fixed phrase of its kind, so whoever reads a
//! progress report (the console, the tests, the QEMU campaign) gets the typed kind back with
//! [`FailureKind::of_desc`] instead of matching prose. The failures of an external module's
//! update (`Module*`) start with its name and `: ` (`modem: download failed ...`), then the
//! phrase.

use super::config::MAX_MODULE_NAME;
use super::HttpError;
use crate::alink::{DigestMethod, STEP_DOWNLOAD_FAILED, STEP_FLASH_FAILED, STEP_UPGRADE_FAILED, STEP_VERIFY_FAILED};
use crate::delta::DeltaError;
use crate::image::ImageError;
use heapless::String;

/// An external module's name, as it goes into its reports.
pub type ModuleName = String<MAX_MODULE_NAME>;

/// Longest platform message kept for a desc (`msg` / `message` of an error reply).
pub const MAX_PLATFORM_MSG: usize = 48;

/// Why a task could not be carried out, or an update failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Failure {
    /// `isDiff: 1`: this firmware cannot rebuild an image from a differential package.
    DiffUnsupported,
    /// A differential package made for another image than the one running.
    DeltaBase {
        /// the base version the patch names (cut to 36 bytes)
        delta: String<36, u8>,
        /// the first bytes of the base's SHA-256 the patch names
        delta_sha: [u8; 4],
        /// the running version (cut likewise)
        running: String<36, u8>,
        /// the first bytes of the running image's SHA-256
        running_sha: [u8; 4],
    },
    /// A differential package this device cannot apply (compression, window, data format, a
    /// rebuilt image larger than the slot, a malformed header).
    DeltaRefused(DeltaError),
    /// A differential package whose patch is damaged.
    DeltaCorrupt(DeltaError),
    /// A flash read failed while applying a patch: the base image in ACTIVE, or (`read_back`)
    /// bytes already rebuilt into DFU, which an LZMA patch copies from.
    DeltaRead {
        /// the read was of DFU, not ACTIVE
        read_back: bool,
    },
    /// `signMethod` is neither MD5 nor SHA256.
    SignMethodUnsupported,
    /// The package has several files (`files[]`); we install one image.
    SeveralFiles {
        /// entries in `files`
        files: u8,
    },
    /// A field the task needs is missing or empty.
    MissingField(&'static str),
    /// A field has the wrong form (a `sign` that is not hex of its method's length, ...).
    BadField(&'static str),
    /// The destination version is not what Aliyun sends (1-64 of `A-Z a-z 0-9 . _ -`).
    BadVersion,
    /// The image does not fit the slot.
    TooLarge {
        /// bytes of the file
        size: u32,
        /// bytes of the slot
        slot: u32,
    },
    /// An HTTPS task on a board that downloads over MQTT only.
    HttpsUnsupported,
    /// The pre-signed URL is longer than we keep.
    UrlTooLong,
    /// A task message did not fit the MQTT buffer (it was read and discarded).
    MessageTooLarge {
        /// bytes of the PUBLISH payload
        len: u32,
        /// bytes the buffer holds
        max: u32,
    },
    /// The image's security counter is below the device's: a downgrade.
    Downgrade {
        /// SEC_CNT of the image
        image: u32,
        /// the device's counter
        device: u32,
    },
    /// The new image did not confirm itself and the bootloader put the old one back.
    Reverted,
    /// The bootloader refused the downloaded image before installing it.
    BootRefused(ImageError),
    /// A block request went unanswered.
    BlockTimeout {
        /// offset of the block
        offset: u32,
        /// requests sent for it
        tries: u8,
    },
    /// The platform answered block requests with an error code.
    BlockRefused {
        /// offset of the block
        offset: u32,
        /// the reply's `code`
        code: i32,
        /// the reply's `msg` or `message` (cut)
        msg: String<MAX_PLATFORM_MSG>,
    },
    /// Block replies kept failing their CRC or framing.
    BlockCorrupt {
        /// offset of the block
        offset: u32,
        /// requests sent for it
        tries: u8,
    },
    /// An HTTPS URL expired and `firmware/get` brought no fresh one.
    UrlExpired,
    /// The download server answered with this HTTP status.
    HttpStatus(u16),
    /// The download server's Content-Length disagrees with the task's size.
    HttpLength {
        /// first byte asked for
        from: u32,
        /// Content-Length
        len: u32,
        /// the task's size
        size: u32,
    },
    /// The download server sent more bytes than the task's size.
    HttpTooMuch {
        /// the task's size
        size: u32,
    },
    /// The HTTP download broke off and the retries did too.
    HttpBroke {
        /// bytes written
        at: u32,
        /// retries made
        retries: u8,
        /// why the last try failed
        last: HttpError,
    },
    /// The download server sent a chunked body: the download needs its Content-Length.
    HttpChunked,
    /// The MD5 / SHA-256 of the download differs from the task's `sign`.
    DigestMismatch(DigestMethod),
    /// Our own check of the downloaded image refused it (signature, hash, counter, size).
    ImageRefused(ImageError),
    /// Writing DFU failed.
    FlashWrite {
        /// offset in DFU
        at: u32,
    },
    /// Marking the image for install (STATE) failed.
    MarkFailed,
    /// An MQTT stream task for an external module: the module fetches an HTTPS URL itself.
    ModuleHttpsOnly {
        /// the module
        module: ModuleName,
    },
    /// The task's URL is longer than the external module takes.
    ModuleUrlTooLong {
        /// the module
        module: ModuleName,
        /// bytes of the URL (JSON escapes resolved)
        len: u32,
        /// bytes the module takes
        max: u16,
    },
    /// The external module answered ERROR to the FOTA command.
    ModuleRefused {
        /// the module
        module: ModuleName,
    },
    /// The external module's download failed.
    ModuleDownload {
        /// the module
        module: ModuleName,
        /// its error code (Quectel: the `HTTPEND` code)
        code: u16,
    },
    /// The external module's install failed (504, 505 and 510, Quectel's package errors, are
    /// reported as a verification failure, -3).
    ModuleInstall {
        /// the module
        module: ModuleName,
        /// its error code (Quectel: the `END` code)
        code: u16,
    },
    /// The external module restarted or vanished during its FOTA without a result.
    ModuleLost {
        /// the module
        module: ModuleName,
    },
    /// The external module's FOTA went `module_timeout` without progress.
    ModuleTimeout {
        /// the module
        module: ModuleName,
        /// the timeout, in seconds
        secs: u32,
    },
    /// The external module installed but did not report a version within `module_timeout`.
    ModuleNoVersion {
        /// the module
        module: ModuleName,
        /// the timeout, in seconds
        secs: u32,
    },
    /// The external module came back after its FOTA with another version than the task's.
    ModuleWrongVersion {
        /// the module
        module: ModuleName,
        /// the version it reports (cut to 36 bytes: the desc holds two, and a Failure stays small)
        running: String<36, u8>,
        /// the task's version (cut likewise)
        wanted: String<36, u8>,
    },
}

/// `v` cut to 36 bytes (on a character boundary).
fn cut(v: &str) -> String<36, u8> {
    let mut s = String::new();
    for c in v.chars() {
        if s.push(c).is_err() {
            break;
        }
    }
    s
}

impl Failure {
    /// [`Failure::ModuleWrongVersion`], the versions cut to what it keeps.
    pub fn module_wrong_version(module: ModuleName, running: &str, wanted: &str) -> Failure {
        Failure::ModuleWrongVersion { module, running: cut(running), wanted: cut(wanted) }
    }

    /// [`Failure::DeltaBase`]: the base a patch names against the running image.
    pub fn delta_base(delta: &str, delta_sha: &[u8; 32], running: &str, running_sha: &[u8; 32]) -> Failure {
        let four = |d: &[u8; 32]| [d[0], d[1], d[2], d[3]];
        Failure::DeltaBase {
            delta: cut(delta),
            delta_sha: four(delta_sha),
            running: cut(running),
            running_sha: four(running_sha),
        }
    }

    /// What a patcher's error is reported as.
    pub fn of_delta(e: DeltaError) -> Failure {
        match e {
            DeltaError::Write { at } => Failure::FlashWrite { at },
            DeltaError::Base(_) => Failure::DeltaRead { read_back: false },
            DeltaError::ReadBack { .. } => Failure::DeltaRead { read_back: true },
            e if e.is_refusal() => Failure::DeltaRefused(e),
            e => Failure::DeltaCorrupt(e),
        }
    }
}

/// `30 min`, `90 s`.
struct Span(u32);

impl core::fmt::Display for Span {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.0.is_multiple_of(60) && self.0 > 0 {
            write!(f, "{} min", self.0 / 60)
        } else {
            write!(f, "{} s", self.0)
        }
    }
}

/// The kind of a [`Failure`], without its details.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[allow(missing_docs)] // one per Failure variant, same names
pub enum FailureKind {
    DiffUnsupported,
    DeltaBase,
    DeltaRefused,
    DeltaCorrupt,
    DeltaRead,
    SignMethodUnsupported,
    SeveralFiles,
    MissingField,
    BadField,
    BadVersion,
    TooLarge,
    HttpsUnsupported,
    UrlTooLong,
    MessageTooLarge,
    Downgrade,
    Reverted,
    BootRefused,
    BlockTimeout,
    BlockRefused,
    BlockCorrupt,
    UrlExpired,
    HttpStatus,
    HttpLength,
    HttpTooMuch,
    HttpBroke,
    DigestMismatch,
    ImageRefused,
    FlashWrite,
    MarkFailed,
    HttpChunked,
    ModuleHttpsOnly,
    ModuleUrlTooLong,
    ModuleRefused,
    ModuleDownload,
    ModuleInstall,
    ModuleLost,
    ModuleTimeout,
    ModuleNoVersion,
    ModuleWrongVersion,
}

impl FailureKind {
    /// Every kind.
    pub const ALL: [FailureKind; 39] = [
        FailureKind::DiffUnsupported,
        FailureKind::DeltaBase,
        FailureKind::DeltaRefused,
        FailureKind::DeltaCorrupt,
        FailureKind::DeltaRead,
        FailureKind::SignMethodUnsupported,
        FailureKind::SeveralFiles,
        FailureKind::MissingField,
        FailureKind::BadField,
        FailureKind::BadVersion,
        FailureKind::TooLarge,
        FailureKind::HttpsUnsupported,
        FailureKind::UrlTooLong,
        FailureKind::MessageTooLarge,
        FailureKind::Downgrade,
        FailureKind::Reverted,
        FailureKind::BootRefused,
        FailureKind::BlockTimeout,
        FailureKind::BlockRefused,
        FailureKind::BlockCorrupt,
        FailureKind::UrlExpired,
        FailureKind::HttpStatus,
        FailureKind::HttpLength,
        FailureKind::HttpTooMuch,
        FailureKind::HttpBroke,
        FailureKind::DigestMismatch,
        FailureKind::ImageRefused,
        FailureKind::FlashWrite,
        FailureKind::MarkFailed,
        FailureKind::HttpChunked,
        FailureKind::ModuleHttpsOnly,
        FailureKind::ModuleUrlTooLong,
        FailureKind::ModuleRefused,
        FailureKind::ModuleDownload,
        FailureKind::ModuleInstall,
        FailureKind::ModuleLost,
        FailureKind::ModuleTimeout,
        FailureKind::ModuleNoVersion,
        FailureKind::ModuleWrongVersion,
    ];

    /// The fixed phrase every desc of this kind starts with.
    pub const fn phrase(self) -> &'static str {
        match self {
            FailureKind::DiffUnsupported => "differential packages are not supported",
            FailureKind::DeltaBase => "delta for ",
            FailureKind::DeltaRefused => "delta patch refused: ",
            FailureKind::DeltaCorrupt => "delta patch corrupt ",
            FailureKind::DeltaRead => "a flash read failed while patching",
            FailureKind::SignMethodUnsupported => "unsupported signMethod",
            FailureKind::SeveralFiles => "multi-file packages are not supported",
            FailureKind::MissingField => "the task has no ",
            FailureKind::BadField => "malformed task field ",
            FailureKind::BadVersion => "not an Aliyun version",
            FailureKind::TooLarge => "too large for the slot",
            FailureKind::HttpsUnsupported => "HTTPS downloads are not supported on this board",
            FailureKind::UrlTooLong => "download URL too long",
            FailureKind::MessageTooLarge => "task message too large",
            FailureKind::Downgrade => "downgrade refused",
            FailureKind::Reverted => "new image did not confirm itself",
            FailureKind::BootRefused => "bootloader refused the image",
            FailureKind::BlockTimeout => "no reply for the block at ",
            FailureKind::BlockRefused => "the platform refused the block at ",
            FailureKind::BlockCorrupt => "bad CRC or framing for the block at ",
            FailureKind::UrlExpired => "the download URL expired",
            FailureKind::HttpStatus => "download server answered HTTP ",
            FailureKind::HttpLength => "download server sends ",
            FailureKind::HttpTooMuch => "download server sent more than ",
            FailureKind::HttpBroke => "download broke off at ",
            FailureKind::DigestMismatch => "digest mismatch",
            FailureKind::ImageRefused => "image refused",
            FailureKind::FlashWrite => "flash write failed at ",
            FailureKind::MarkFailed => "marking the image for install failed",
            FailureKind::HttpChunked => "the server sent a chunked body",
            FailureKind::ModuleHttpsOnly => "downloads over HTTPS only",
            FailureKind::ModuleUrlTooLong => "URL of ",
            FailureKind::ModuleRefused => "the module refused the FOTA command",
            FailureKind::ModuleDownload => "download failed",
            FailureKind::ModuleInstall => "install failed",
            FailureKind::ModuleLost => "the module restarted or vanished",
            FailureKind::ModuleTimeout => "no FOTA result in ",
            FailureKind::ModuleNoVersion => "no version from the module ",
            FailureKind::ModuleWrongVersion => "restarted with ",
        }
    }

    /// Whether it is the failure of an external module's update (its desc starts with the
    /// module's name).
    pub const fn is_module(self) -> bool {
        matches!(
            self,
            FailureKind::ModuleHttpsOnly
                | FailureKind::ModuleUrlTooLong
                | FailureKind::ModuleRefused
                | FailureKind::ModuleDownload
                | FailureKind::ModuleInstall
                | FailureKind::ModuleLost
                | FailureKind::ModuleTimeout
                | FailureKind::ModuleNoVersion
                | FailureKind::ModuleWrongVersion
        )
    }

    /// The kind of a progress `desc` written by [`Failure`]'s `Display`, if it is one.
    pub fn of_desc(desc: &str) -> Option<FailureKind> {
        // No phrase is a prefix of another, so at most one matches.
        let plain = FailureKind::ALL.into_iter().find(|k| !k.is_module() && desc.starts_with(k.phrase()));
        // An external module's: `<module>: <phrase>...`.
        let module = || {
            let (name, rest) = desc.split_once(": ")?;
            if !crate::alink::valid_version(name) {
                return None;
            }
            FailureKind::ALL.into_iter().find(|k| k.is_module() && rest.starts_with(k.phrase()))
        };
        plain.or_else(module)
    }
}

impl Failure {
    /// Its kind.
    pub fn kind(&self) -> FailureKind {
        match self {
            Failure::DiffUnsupported => FailureKind::DiffUnsupported,
            Failure::DeltaBase { .. } => FailureKind::DeltaBase,
            Failure::DeltaRefused(_) => FailureKind::DeltaRefused,
            Failure::DeltaCorrupt(_) => FailureKind::DeltaCorrupt,
            Failure::DeltaRead { .. } => FailureKind::DeltaRead,
            Failure::SignMethodUnsupported => FailureKind::SignMethodUnsupported,
            Failure::SeveralFiles { .. } => FailureKind::SeveralFiles,
            Failure::MissingField(_) => FailureKind::MissingField,
            Failure::BadField(_) => FailureKind::BadField,
            Failure::BadVersion => FailureKind::BadVersion,
            Failure::TooLarge { .. } => FailureKind::TooLarge,
            Failure::HttpsUnsupported => FailureKind::HttpsUnsupported,
            Failure::UrlTooLong => FailureKind::UrlTooLong,
            Failure::MessageTooLarge { .. } => FailureKind::MessageTooLarge,
            Failure::Downgrade { .. } => FailureKind::Downgrade,
            Failure::Reverted => FailureKind::Reverted,
            Failure::BootRefused(_) => FailureKind::BootRefused,
            Failure::BlockTimeout { .. } => FailureKind::BlockTimeout,
            Failure::BlockRefused { .. } => FailureKind::BlockRefused,
            Failure::BlockCorrupt { .. } => FailureKind::BlockCorrupt,
            Failure::UrlExpired => FailureKind::UrlExpired,
            Failure::HttpStatus(_) => FailureKind::HttpStatus,
            Failure::HttpLength { .. } => FailureKind::HttpLength,
            Failure::HttpTooMuch { .. } => FailureKind::HttpTooMuch,
            Failure::HttpBroke { .. } => FailureKind::HttpBroke,
            Failure::DigestMismatch(_) => FailureKind::DigestMismatch,
            Failure::ImageRefused(_) => FailureKind::ImageRefused,
            Failure::FlashWrite { .. } => FailureKind::FlashWrite,
            Failure::MarkFailed => FailureKind::MarkFailed,
            Failure::HttpChunked => FailureKind::HttpChunked,
            Failure::ModuleHttpsOnly { .. } => FailureKind::ModuleHttpsOnly,
            Failure::ModuleUrlTooLong { .. } => FailureKind::ModuleUrlTooLong,
            Failure::ModuleRefused { .. } => FailureKind::ModuleRefused,
            Failure::ModuleDownload { .. } => FailureKind::ModuleDownload,
            Failure::ModuleInstall { .. } => FailureKind::ModuleInstall,
            Failure::ModuleLost { .. } => FailureKind::ModuleLost,
            Failure::ModuleTimeout { .. } => FailureKind::ModuleTimeout,
            Failure::ModuleNoVersion { .. } => FailureKind::ModuleNoVersion,
            Failure::ModuleWrongVersion { .. } => FailureKind::ModuleWrongVersion,
        }
    }

    /// The external module this failure is of, if it is one's.
    pub fn module(&self) -> Option<&str> {
        match self {
            Failure::ModuleHttpsOnly { module }
            | Failure::ModuleUrlTooLong { module, .. }
            | Failure::ModuleRefused { module }
            | Failure::ModuleDownload { module, .. }
            | Failure::ModuleInstall { module, .. }
            | Failure::ModuleLost { module }
            | Failure::ModuleTimeout { module, .. }
            | Failure::ModuleNoVersion { module, .. }
            | Failure::ModuleWrongVersion { module, .. } => Some(module),
            _ => None,
        }
    }

    /// The Aliyun step this failure is reported with.
    pub fn step(&self) -> i8 {
        match self {
            Failure::BlockTimeout { .. }
            | Failure::BlockRefused { .. }
            | Failure::BlockCorrupt { .. }
            | Failure::UrlExpired
            | Failure::HttpStatus(_)
            | Failure::HttpLength { .. }
            | Failure::HttpTooMuch { .. }
            | Failure::HttpBroke { .. }
            | Failure::HttpChunked
            | Failure::ModuleDownload { .. } => STEP_DOWNLOAD_FAILED,
            // Quectel's "package error" codes: the module refused the package itself.
            Failure::ModuleInstall { code: 504 | 505 | 510, .. } => STEP_VERIFY_FAILED,
            Failure::DigestMismatch(_) | Failure::DeltaCorrupt(_) => STEP_VERIFY_FAILED,
            Failure::DeltaRead { .. } => STEP_FLASH_FAILED,
            Failure::ImageRefused(e) => match e {
                // Authentic images the device's policy refuses: not a verification failure.
                ImageError::CounterTooLow { .. }
                | ImageError::TooLargeForSlot { .. }
                | ImageError::KeyRevoked { .. }
                | ImageError::BadRevocation { .. } => STEP_UPGRADE_FAILED,
                ImageError::Flash(_) => STEP_FLASH_FAILED,
                _ => STEP_VERIFY_FAILED,
            },
            Failure::FlashWrite { .. } | Failure::MarkFailed => STEP_FLASH_FAILED,
            _ => STEP_UPGRADE_FAILED,
        }
    }

    /// The desc, cut to 128 bytes.
    pub fn desc(&self) -> String<128> {
        let mut s = String::new();
        let _ = core::fmt::write(&mut s, format_args!("{self}")); // cut at 128 bytes
        s
    }
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if let Some(m) = self.module() {
            write!(f, "{m}: ")?;
        }
        f.write_str(self.kind().phrase())?;
        match self {
            Failure::DiffUnsupported => f.write_str(" by this firmware"),
            Failure::DeltaBase { delta, delta_sha, running, running_sha } => {
                let h = |d: &[u8; 4]| u32::from_be_bytes(*d);
                write!(
                    f,
                    "{delta} (sha256 {:08x}...), running {running} (sha256 {:08x}...)",
                    h(delta_sha),
                    h(running_sha)
                )
            }
            Failure::DeltaRefused(e) => write!(f, "{e}"),
            Failure::DeltaCorrupt(e) => write!(f, "{e}"),
            Failure::DeltaRead { read_back: false } => f.write_str(": the running image"),
            Failure::DeltaRead { read_back: true } => f.write_str(": the rebuilt image in DFU"),
            Failure::SignMethodUnsupported => f.write_str(": only Md5 and SHA256"),
            Failure::SeveralFiles { files } => write!(f, ": this one has {files} files"),
            Failure::MissingField(n) => f.write_str(n),
            Failure::BadField(n) => f.write_str(n),
            Failure::BadVersion => f.write_str(" (1-64 characters of A-Z a-z 0-9 . _ -)"),
            Failure::TooLarge { size, slot } => write!(f, ": {size} bytes, the slot holds {slot}"),
            Failure::HttpsUnsupported => f.write_str(": use an MQTT stream batch"),
            Failure::UrlTooLong => write!(f, ": more than {} bytes", super::MAX_URL),
            Failure::MessageTooLarge { len, max } => write!(f, ": {len} bytes, the device's buffer holds {max}"),
            Failure::Downgrade { image, device } => {
                write!(f, ": security counter {image} is below the device's {device}")
            }
            Failure::Reverted => f.write_str("; the old image was put back"),
            Failure::BootRefused(e) => write!(f, ": {e}"),
            Failure::BlockTimeout { offset, tries } => write!(f, "{offset} after {tries} requests"),
            Failure::BlockRefused { offset, code, msg } => write!(f, "{offset}: {msg} (code {code})"),
            Failure::BlockCorrupt { offset, tries } => write!(f, "{offset} after {tries} requests"),
            Failure::UrlExpired => f.write_str(" and no fresh one came"),
            Failure::HttpStatus(s) => write!(f, "{s}"),
            Failure::HttpLength { from, len, size } => {
                write!(f, "{len} bytes from {from}, the task says {size} in all")
            }
            Failure::HttpTooMuch { size } => write!(f, "the task's {size} bytes"),
            Failure::HttpBroke { at, retries, last } => write!(f, "{at} bytes after {retries} retries: {last}"),
            Failure::HttpChunked => f.write_str("; Content-Length is required"),
            Failure::DigestMismatch(m) => write!(
                f,
                ": the {} of the download differs from the task's sign",
                match m {
                    DigestMethod::Md5 => "MD5",
                    DigestMethod::Sha256 => "SHA-256",
                }
            ),
            Failure::ImageRefused(e) => write!(f, ": {e}"),
            Failure::FlashWrite { at } => write!(f, "{at}"),
            Failure::MarkFailed => Ok(()),
            Failure::ModuleHttpsOnly { .. } => f.write_str(" (the module fetches the URL itself)"),
            Failure::ModuleUrlTooLong { len, max, .. } => write!(f, "{len} bytes; the module takes at most {max}"),
            Failure::ModuleRefused { .. } => f.write_str(" (ERROR)"),
            Failure::ModuleDownload { code, .. } => write!(f, " (module HTTP error {code})"),
            Failure::ModuleInstall { code: code @ (504 | 505 | 510), .. } => {
                write!(f, ": the module refused the package (error {code})")
            }
            Failure::ModuleInstall { code, .. } => write!(f, " (module error {code})"),
            Failure::ModuleLost { .. } => f.write_str(" without a FOTA result"),
            Failure::ModuleTimeout { secs, .. } => write!(f, "{}", Span(*secs)),
            Failure::ModuleNoVersion { secs, .. } => write!(f, "in {} after it installed", Span(*secs)),
            Failure::ModuleWrongVersion { running, wanted, .. } => write!(f, "{running}, not {wanted}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m() -> ModuleName {
        "modem".try_into().unwrap()
    }

    fn one_of_each() -> [Failure; 42] {
        [
            Failure::DiffUnsupported,
            Failure::delta_base(
                "1.3-a-version-name-longer-than-thirty-six-bytes",
                &[0xab; 32],
                "1.3-a-version-name-longer-than-thirty-six-bytes",
                &[0xcd; 32],
            ),
            Failure::DeltaRefused(DeltaError::Compression(1)),
            Failure::DeltaRefused(DeltaError::Lzma { props: 93, dict_size: u32::MAX }),
            Failure::DeltaCorrupt(DeltaError::Corrupt { what: crate::delta::Corruption::TooLong, at: 4000 }),
            Failure::DeltaCorrupt(DeltaError::Corrupt { what: crate::delta::Corruption::Lzma, at: u32::MAX }),
            Failure::DeltaRead { read_back: false },
            Failure::DeltaRead { read_back: true },
            Failure::SignMethodUnsupported,
            Failure::SeveralFiles { files: 3 },
            Failure::MissingField("size"),
            Failure::BadField("sign"),
            Failure::BadVersion,
            Failure::TooLarge { size: 2_000_000, slot: 1_048_576 },
            Failure::HttpsUnsupported,
            Failure::UrlTooLong,
            Failure::MessageTooLarge { len: 16_000, max: 4608 },
            Failure::Downgrade { image: 1, device: 2 },
            Failure::Reverted,
            Failure::BootRefused(ImageError::BadSignature),
            Failure::BlockTimeout { offset: 4096, tries: 4 },
            Failure::BlockRefused {
                offset: 0,
                code: 400,
                msg: "file size has exceeded the limit 16 MB".try_into().unwrap(),
            },
            Failure::BlockCorrupt { offset: 8192, tries: 4 },
            Failure::UrlExpired,
            Failure::HttpStatus(404),
            Failure::HttpLength { from: 0, len: 10, size: 20 },
            Failure::HttpTooMuch { size: 20 },
            Failure::HttpBroke { at: 100, retries: 3, last: HttpError::Tls },
            Failure::DigestMismatch(DigestMethod::Sha256),
            Failure::ImageRefused(ImageError::HashMismatch),
            Failure::FlashWrite { at: 4096 },
            Failure::MarkFailed,
            Failure::HttpChunked,
            Failure::ModuleHttpsOnly { module: m() },
            Failure::ModuleUrlTooLong { module: m(), len: 300, max: 255 },
            Failure::ModuleRefused { module: m() },
            Failure::ModuleDownload { module: m(), code: 702 },
            Failure::ModuleInstall { module: m(), code: 504 },
            Failure::ModuleLost { module: m() },
            Failure::ModuleTimeout { module: m(), secs: 1800 },
            Failure::ModuleNoVersion { module: m(), secs: 90 },
            Failure::module_wrong_version(
                "a-module-name-of-32-characters-x".try_into().unwrap(),
                "EC200UCNAAR03A03M08_01.200.01.200",
                "EC200UCNAAR03A04M08_01.200.01.200-and-more-than-36",
            ),
        ]
    }

    #[test]
    fn every_desc_gives_its_kind_back_and_fits_aliyun_s_128_bytes() {
        let all = one_of_each();
        for f in &all {
            let d = f.desc();
            assert!(d.len() < 128, "{d}: {} bytes", d.len());
            assert_eq!(FailureKind::of_desc(&d), Some(f.kind()), "{d}");
        }
        // One example per kind, and no phrase is a prefix of another.
        let kinds: std::collections::HashSet<_> = all.iter().map(Failure::kind).collect();
        assert_eq!(kinds.len(), FailureKind::ALL.len());
        for a in FailureKind::ALL {
            for b in FailureKind::ALL {
                assert!(a == b || !a.phrase().starts_with(b.phrase()), "{a:?} / {b:?}");
            }
        }
        assert_eq!(FailureKind::of_desc("downloading 1.4"), None);
    }

    #[test]
    fn steps_follow_aliyun_s_codes() {
        assert_eq!(Failure::DiffUnsupported.step(), -1);
        assert_eq!(Failure::BlockTimeout { offset: 0, tries: 1 }.step(), -2);
        assert_eq!(Failure::DigestMismatch(DigestMethod::Md5).step(), -3);
        assert_eq!(Failure::ImageRefused(ImageError::BadSignature).step(), -3);
        assert_eq!(Failure::ImageRefused(ImageError::CounterTooLow { image: 1, stored: 2 }).step(), -1);
        assert_eq!(Failure::ImageRefused(ImageError::KeyRevoked { key: 0 }).step(), -1);
        assert_eq!(Failure::FlashWrite { at: 0 }.step(), -4);
        assert_eq!(Failure::Reverted.step(), -1);
        assert_eq!(Failure::HttpChunked.step(), -2);
        assert_eq!(Failure::ModuleDownload { module: m(), code: 702 }.step(), -2);
        for code in [504, 505, 510] {
            assert_eq!(Failure::ModuleInstall { module: m(), code }.step(), -3);
        }
        assert_eq!(Failure::ModuleInstall { module: m(), code: 1 }.step(), -1);
        assert_eq!(Failure::ModuleRefused { module: m() }.step(), -1);
        assert_eq!(Failure::ModuleLost { module: m() }.step(), -1);
    }

    #[test]
    fn module_descs_name_the_module_and_say_what_happened() {
        let d = |f: Failure| f.desc();
        assert_eq!(
            d(Failure::ModuleHttpsOnly { module: m() }),
            "modem: downloads over HTTPS only (the module fetches the URL itself)"
        );
        assert_eq!(
            d(Failure::ModuleUrlTooLong { module: m(), len: 300, max: 255 }),
            "modem: URL of 300 bytes; the module takes at most 255"
        );
        assert_eq!(
            d(Failure::ModuleDownload { module: m(), code: 702 }),
            "modem: download failed (module HTTP error 702)"
        );
        assert_eq!(
            d(Failure::ModuleInstall { module: m(), code: 505 }),
            "modem: install failed: the module refused the package (error 505)"
        );
        assert_eq!(d(Failure::ModuleTimeout { module: m(), secs: 1800 }), "modem: no FOTA result in 30 min");
        assert_eq!(
            d(Failure::HttpBroke { at: 7, retries: 3, last: HttpError::Tls }),
            "download broke off at 7 bytes after 3 retries: TLS handshake failed (does the CA cover the host?)"
        );
        assert_eq!(d(Failure::HttpChunked), "the server sent a chunked body; Content-Length is required");
        // A desc that merely starts like a module's is not one.
        assert_eq!(FailureKind::of_desc("modem: downloading 1.4"), None);
        assert_eq!(
            d(Failure::delta_base("1.3", &[0xab; 32], "1.3", &[0xcd; 32])),
            "delta for 1.3 (sha256 abababab...), running 1.3 (sha256 cdcdcdcd...)"
        );
        assert_eq!(
            d(Failure::of_delta(DeltaError::Compression(1))),
            "delta patch refused: compression 1 (lzma); this device takes detools patches in none, crle and heatshrink"
        );
        assert_eq!(Failure::of_delta(DeltaError::Compression(1)).step(), -1);
        assert_eq!(Failure::of_delta(DeltaError::TooLarge { size: 9, slot: 8 }).step(), -1);
        let corrupt = DeltaError::Corrupt { what: crate::delta::Corruption::Trailing, at: 77 };
        assert_eq!(d(Failure::of_delta(corrupt)), "delta patch corrupt at patch byte 77: bytes after its end");
        assert_eq!(Failure::of_delta(corrupt).step(), -3);
        assert_eq!(Failure::of_delta(DeltaError::Write { at: 8 }), Failure::FlashWrite { at: 8 });
        assert_eq!(FailureKind::of_desc("two words: download failed"), None);
    }
}
