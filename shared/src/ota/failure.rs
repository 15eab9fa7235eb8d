//! Why an update failed, as the device tells the platform: each [`Failure`] has its Aliyun step
//! (`-1` upgrade, `-2` download, `-3` verification, `-4` flash) and its `desc` (the `Display`,
//! at most 128 bytes). Every `desc` starts with a fixed phrase of its kind, so whoever reads a
//! progress report (the console, the tests, the QEMU campaign) gets the typed kind back with
//! [`FailureKind::of_desc`] instead of matching prose.

use crate::alink::{DigestMethod, STEP_DOWNLOAD_FAILED, STEP_FLASH_FAILED, STEP_UPGRADE_FAILED, STEP_VERIFY_FAILED};
use crate::image::ImageError;
use heapless::String;

/// Longest platform message kept for a desc (`msg` / `message` of an error reply).
pub const MAX_PLATFORM_MSG: usize = 48;

/// Why a task could not be carried out, or an update failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Failure {
    /// `isDiff: 1`: this firmware cannot rebuild an image from a differential package.
    DiffUnsupported,
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
    },
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
}

/// The kind of a [`Failure`], without its details.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[allow(missing_docs)] // one per Failure variant, same names
pub enum FailureKind {
    DiffUnsupported,
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
}

impl FailureKind {
    /// Every kind.
    pub const ALL: [FailureKind; 25] = [
        FailureKind::DiffUnsupported,
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
    ];

    /// The fixed phrase every desc of this kind starts with.
    pub const fn phrase(self) -> &'static str {
        match self {
            FailureKind::DiffUnsupported => "differential packages are not supported",
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
        }
    }

    /// The kind of a progress `desc` written by [`Failure`]'s `Display`, if it is one.
    pub fn of_desc(desc: &str) -> Option<FailureKind> {
        // No phrase is a prefix of another, so at most one matches.
        FailureKind::ALL.into_iter().find(|k| desc.starts_with(k.phrase()))
    }
}

impl Failure {
    /// Its kind.
    pub fn kind(&self) -> FailureKind {
        match self {
            Failure::DiffUnsupported => FailureKind::DiffUnsupported,
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
            | Failure::HttpBroke { .. } => STEP_DOWNLOAD_FAILED,
            Failure::DigestMismatch(_) => STEP_VERIFY_FAILED,
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
        f.write_str(self.kind().phrase())?;
        match self {
            Failure::DiffUnsupported => f.write_str(" by this firmware"),
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
            Failure::HttpBroke { at, retries } => write!(f, "{at} bytes, {retries} retries failed"),
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_of_each() -> [Failure; 25] {
        [
            Failure::DiffUnsupported,
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
            Failure::HttpBroke { at: 100, retries: 3 },
            Failure::DigestMismatch(DigestMethod::Sha256),
            Failure::ImageRefused(ImageError::HashMismatch),
            Failure::FlashWrite { at: 4096 },
            Failure::MarkFailed,
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
    }
}
