//! The image format: MCUboot-compatible, so `imgtool verify` / `imgtool dumpinfo` read our images
//! and images signed by `imgtool sign` boot on our bootloader.
//!
//! ```text
//! offset 0             +-------------------------------+
//!                      | header (32 bytes, see Header) |
//!                      | 0xFF padding up to hdr_size   |
//! hdr_size             +-------------------------------+
//!                      | body: the app binary, linked  |
//!                      | at ACTIVE + hdr_size          |
//! hdr_size + img_size  +-------------------------------+
//!                      | protected TLV area (0x6908)   |  SEC_CNT, Aliyun module, Aliyun version
//!   + protect_tlv_size +-------------------------------+
//!                      | TLV area (0x6907)             |  SHA256, KEYHASH, ED25519
//!                      +-------------------------------+
//! ```
//!
//! SHA256 covers everything before the unprotected TLV area; ED25519 signs that 32-byte digest
//! (imgtool's default, non-"pure" mode); KEYHASH is the SHA-256 of the key's DER
//! SubjectPublicKeyInfo, as imgtool writes it.
//!
//! [`verify`] streams an image from any `ReadNorFlash` with a caller buffer and never panics on
//! bad input; [`Header`] and [`TlvIter`] are zero-copy views over bytes already in memory.

mod header;
/// Simulated firmware bodies of the host board (a test double: feature `sim` only).
#[cfg(feature = "sim")]
mod host;
#[cfg(any(test, feature = "std"))]
mod sign;
mod tlv;
mod verify;

pub use header::{flags, Header, HeaderRepr, ImageVersion, HEADER_LEN, IMAGE_MAGIC};
#[cfg(feature = "sim")]
pub use host::{host_behaviour, host_body, HostBehaviour, HOST_MAGIC};
#[cfg(any(test, feature = "std"))]
pub use sign::{sign_image, SignParams};
pub use tlv::{Tlv, TlvAreaWriter, TlvInfo, TlvIter, TlvKind, TLV_INFO_LEN, TLV_INFO_MAGIC, TLV_PROT_INFO_MAGIC};
pub use verify::{extent, verify, ImageInfo, PublicKey, SliceFlash, VerifyOptions, ED25519_SPKI_PREFIX};

use embedded_storage::nor_flash::{NorFlashError, NorFlashErrorKind};

/// Longest Aliyun module name or version string an image may carry (Aliyun allows 1-64 chars).
pub const MAX_ALIYUN_STR: usize = 64;

/// Trusted keys a firmware build can hold: revocation keeps one bit per key slot in a `u32`.
pub const MAX_KEYS: usize = 32;

/// What was wrong with an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ImageError {
    /// The first word is not the MCUboot magic 0x96f3b83d (no image, or not ours).
    BadMagic,
    /// A header field is impossible (hdr_size below 32, sizes that overflow).
    BadHeader,
    /// Header flags we cannot boot (encrypted, compressed, non-bootable, RAM-load).
    UnsupportedFlags(u32),
    /// The image ends before its TLV areas do (download incomplete or file cut short).
    Truncated,
    /// The image needs `need` bytes but the slot holds `slot`.
    TooLargeForSlot {
        /// bytes the image occupies
        need: u32,
        /// bytes available
        slot: u32,
    },
    /// A TLV area has a bad magic, or a TLV runs past its area, or has an impossible length.
    BadTlv,
    /// There is no SHA256 TLV.
    MissingHash,
    /// The SHA-256 of header, body and protected TLVs differs from the SHA256 TLV.
    HashMismatch,
    /// There is no ED25519 signature TLV (an unsigned image never boots).
    Unsigned,
    /// The image names a key (KEYHASH / PUBKEY) that is not one of ours, or names none.
    UnknownKey,
    /// The Ed25519 signature does not verify with the named key.
    BadSignature,
    /// The only valid signature is by a trusted key the device has revoked.
    KeyRevoked {
        /// slot of the signing key in the trusted list
        key: u8,
    },
    /// The image would revoke its own signing key or a later one (REVOKE_KEYS may only name
    /// slots below the signing key's).
    BadRevocation {
        /// slot of the signing key
        key: u8,
        /// the REVOKE_KEYS mask
        revokes: u32,
    },
    /// The image's security counter is below the one the device has stored (a downgrade).
    CounterTooLow {
        /// SEC_CNT of the image
        image: u32,
        /// counter stored on the device
        stored: u32,
    },
    /// Reading the flash failed.
    Flash(NorFlashErrorKind),
}

impl<E: NorFlashError> From<E> for ImageError {
    fn from(e: E) -> Self {
        ImageError::Flash(e.kind())
    }
}

impl core::fmt::Display for ImageError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ImageError::BadMagic => f.write_str("bad magic: not an MCUboot image"),
            ImageError::BadHeader => f.write_str("impossible header fields"),
            ImageError::UnsupportedFlags(x) => write!(f, "unsupported header flags 0x{x:x}"),
            ImageError::Truncated => f.write_str("image truncated: it ends before its TLV areas"),
            ImageError::TooLargeForSlot { need, slot } => {
                write!(f, "image of {need} bytes does not fit the {slot}-byte slot")
            }
            ImageError::BadTlv => f.write_str("malformed TLV area"),
            ImageError::MissingHash => f.write_str("no SHA256 TLV"),
            ImageError::HashMismatch => f.write_str("SHA-256 mismatch: image corrupted"),
            ImageError::Unsigned => f.write_str("image is not signed (no ED25519 TLV)"),
            ImageError::UnknownKey => f.write_str("signed with an unknown key"),
            ImageError::BadSignature => f.write_str("bad Ed25519 signature"),
            ImageError::KeyRevoked { key } => write!(f, "signed with key {key}, which this device has revoked"),
            ImageError::BadRevocation { key, revokes } => {
                write!(f, "signed with key {key} but revokes keys {revokes:#x}: only keys below its own may be revoked")
            }
            ImageError::CounterTooLow { image, stored } => {
                write!(f, "security counter {image} below the device's {stored} (downgrade)")
            }
            ImageError::Flash(k) => write!(f, "flash read failed: {k:?}"),
        }
    }
}

impl core::error::Error for ImageError {}
