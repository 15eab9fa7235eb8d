//! Delta updates: an Aliyun differential package (`isDiff: 1`) rebuilt into DFU from the image in
//! ACTIVE, so ACTIVE is never touched until the ordinary verified swap.
//!
//! The patch is a [detools] *sequential* patch (the format ESP-IDF applies with detools' C
//! library), optionally behind our header, which names the base image and a branch filter:
//!
//! ```text
//! our header (cargo xtask release --delta-from; absent in a plain detools patch)
//!   0   4  magic D3 44 4C 54 ("\xD3DLT": bit 7 of byte 0 set, which a detools header never has)
//!   4   1  version 1
//!   5   1  filter: 0 none, 1 ARM-Thumb (liblzma's BCJ filter, on base and target alike)
//!   6   2  reserved, 0
//!   8   4  base size, LE: the bytes of ACTIVE the patch reads (the base image, header to last TLV)
//!  12  32  base SHA-256: the base image's SHA256 TLV (over header, body and protected TLVs)
//!  44   1  n: length of the base version (1..=64)
//!  45   n  the base's Aliyun version (for the refusal's desc)
//! detools sequential patch
//!   0   1  patch type (bits 6..4; 0 = sequential) | compression (bits 3..0: 0 none, 2 crle,
//!          4 heatshrink; 1 lzma, 3 bz2, 5 zstd, 6 lz4 are refused: no decoder fits a device)
//!   1   v  to size (a detools size, below)
//!   ..     the compressed stream (heatshrink: its first byte is window-4 << 4 | lookahead-3) of:
//!            dfpatch size (0: detools' "data formats" are not applied on devices), then until
//!            `to size` bytes are out: diff size, diff bytes (each added to the next base byte),
//!            extra size, extra bytes (as they are), adjustment (signed: moves the base position)
//! a detools size: byte 0 = more (bit 7) | negative (bit 6) | value bits 5..0, then 7 bits per byte
//! ```
//!
//! [`Patcher`] applies one, streaming and sans-IO: patch bytes in ([`Patcher::feed`]), rebuilt
//! image bytes out to a sink (the DFU writer), the base read through `ReadNorFlash`. Its RAM is a
//! fixed struct (the heatshrink window of at most 2^[`MAX_WINDOW_BITS`] bytes, a header buffer,
//! two 64-byte work buffers). The rebuilt bytes are then verified as any download is (SHA-256,
//! signature, counter); nothing about verification changes.
//!
//! With the ARM-Thumb filter, the patch is computed between `F(base)` and `F(target)`, where `F`
//! rewrites each Thumb-2 `BL` whose target lies within ±4 MiB from PC-relative to absolute (as
//! xz's ARM-Thumb filter does): a function that moved then leaves the calls to the functions
//! around it unchanged, which is most of what a small code change perturbs. The applier reads
//! `F(base)` from ACTIVE on the fly (the filter is local: whether a halfword starts a converted
//! `BL` depends on its 4 bytes only) and writes `F⁻¹` of what the patch rebuilds.
//!
//! [detools]: https://github.com/eerimoq/detools

mod apply;
#[cfg(feature = "std")]
mod create;
mod crle;
mod header;
mod heatshrink;
mod size;
pub mod thumb;

pub use apply::Patcher;
#[cfg(feature = "std")]
pub use create::{create, create_smallest, heatshrink_compress, pack_size, CreateOptions};
pub use header::{Base, Compression, Filter, Header, MAGIC, MAX_HEADER, MAX_VERSION};

use embedded_storage::nor_flash::NorFlashErrorKind;

/// The largest heatshrink window a device decodes (2^11 = 2 KiB of RAM).
pub const MAX_WINDOW_BITS: u8 = 11;

/// Why a patch was refused or failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DeltaError {
    /// Our header is malformed (bad magic, version, filter or lengths).
    Header,
    /// A detools patch type other than sequential (in-place, hdiffpatch).
    PatchType(u8),
    /// A compression this device has no decoder for (detools' number).
    Compression(u8),
    /// A heatshrink window larger than [`MAX_WINDOW_BITS`] (or parameters heatshrink forbids).
    Window {
        /// window bits
        window: u8,
        /// lookahead bits
        lookahead: u8,
    },
    /// A detools data format (`dfpatch`): not applied on devices.
    DataFormat,
    /// The rebuilt image would not fit the slot.
    TooLarge {
        /// bytes the patch rebuilds
        size: u32,
        /// bytes of the slot
        slot: u32,
    },
    /// The patch is inconsistent at this byte of the patch.
    Corrupt {
        /// what is wrong
        what: Corruption,
        /// offset in the patch
        at: u32,
    },
    /// Reading the base (ACTIVE) failed.
    Base(NorFlashErrorKind),
    /// The sink refused the rebuilt bytes at this offset of the image.
    Write {
        /// offset in DFU
        at: u32,
    },
}

/// What is inconsistent in a corrupt patch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Corruption {
    /// A size field runs over 10 bytes or out of range.
    Size,
    /// Diff or extra data would run past the image's size.
    TooLong,
    /// The base position leaves the base.
    BaseRange,
    /// A CRLE segment kind other than scattered (0) or repeated (1).
    Crle,
    /// Bytes after the end of the patch.
    Trailing,
    /// The patch ended before the image was rebuilt.
    Truncated,
    /// A rebuilt image of 0 bytes.
    Empty,
    /// Steps that rebuild nothing, one after the other (a patch that would keep the device busy
    /// for nothing).
    Idle,
}

impl DeltaError {
    /// Whether the device refuses the patch as a whole (a base, format or size it cannot take:
    /// Aliyun step -1), rather than finding it damaged (-3) or failing to write (-4).
    pub fn is_refusal(self) -> bool {
        matches!(
            self,
            DeltaError::Header
                | DeltaError::PatchType(_)
                | DeltaError::Compression(_)
                | DeltaError::Window { .. }
                | DeltaError::DataFormat
                | DeltaError::TooLarge { .. }
        )
    }
}

impl core::fmt::Display for Corruption {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Corruption::Size => "a size field out of range",
            Corruption::TooLong => "data past the image's end",
            Corruption::BaseRange => "a base position outside the base",
            Corruption::Crle => "a bad CRLE segment",
            Corruption::Trailing => "bytes after its end",
            Corruption::Truncated => "it ends early",
            Corruption::Empty => "an empty image",
            Corruption::Idle => "steps that rebuild nothing",
        })
    }
}

impl core::fmt::Display for DeltaError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DeltaError::Header => f.write_str("malformed delta header"),
            DeltaError::PatchType(t) => write!(f, "detools patch type {t}; only sequential (0) is applied"),
            DeltaError::Compression(c) => {
                let name = match c {
                    1 => "lzma",
                    3 => "bz2",
                    5 => "zstd",
                    6 => "lz4",
                    _ => "unknown",
                };
                write!(f, "compression {c} ({name}); this device takes none, crle and heatshrink")
            }
            DeltaError::Window { window, lookahead } => {
                write!(f, "heatshrink window {window}, lookahead {lookahead}; at most window {MAX_WINDOW_BITS}")
            }
            DeltaError::DataFormat => f.write_str("a detools data format, which devices do not apply"),
            DeltaError::TooLarge { size, slot } => write!(f, "it rebuilds {size} bytes, past the {slot}-byte slot"),
            DeltaError::Corrupt { what, at } => write!(f, "at patch byte {at}: {what}"),
            DeltaError::Base(k) => write!(f, "reading the base image failed: {k:?}"),
            DeltaError::Write { at } => write!(f, "writing the rebuilt image failed at {at}"),
        }
    }
}

impl core::error::Error for DeltaError {}
