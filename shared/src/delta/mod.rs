//! Delta updates: an Aliyun differential package (`isDiff: 1`) rebuilt into DFU from the image in
//! ACTIVE, so ACTIVE is never touched until the ordinary verified swap.
//!
//! Two kinds of patch, both behind our header, which names the base image:
//!
//! - an **LZMA patch** (what `cargo xtask release --delta-from` makes for our boards, being the
//!   smallest): liblzma's raw LZMA1 stream of the new image whose dictionary starts as the base
//!   *remapped* ([`remap`]: calls and addresses moved the way the code moved, by a map of at most
//!   [`MAX_SHIFTS`] shifts carried in the patch). The decoder keeps no dictionary in RAM: copies
//!   read the remapped base from ACTIVE and the rebuilt image back from DFU. liblzma makes the
//!   stream (`delta-lzma` feature) and decodes ours in the interop tests; Python's lzma module
//!   makes streams our device applies.
//! - a [detools] *sequential* patch (the format ESP-IDF applies with detools' C library), with
//!   compression none, crle or heatshrink, optionally of ARM-Thumb-filtered images; a plain
//!   detools patch (no header of ours) is taken too. detools makes and applies ours and we apply
//!   its (the interop tests).
//!
//! ```text
//! our header (absent in a plain detools patch)
//!   0   4  magic D3 44 4C 54 ("\xD3DLT": bit 7 of byte 0 set, which a detools header never has)
//!   4   1  version 1
//!   5   1  kind: 0 detools, 1 detools of ARM-Thumb-filtered images (liblzma's BCJ filter, on
//!          base and target alike), 2 LZMA over the remapped base
//!   6   2  reserved, 0
//!   8   4  base size, LE: the bytes of ACTIVE the patch reads (the base image, header to last TLV)
//!  12  32  base SHA-256: the base image's SHA256 TLV (over header, body and protected TLVs)
//!  44   1  n: length of the base version (1..=64)
//!  45   n  the base's Aliyun version (for the refusal's desc)
//! kind 2, LZMA (all LE)
//!   0   4  load: the address of the image's first byte (the start of ACTIVE)
//!   4   4  to size: bytes the patch rebuilds
//!   8   4  LZMA dictionary size: at least base size + to size
//!  12   1  LZMA properties (pb * 5 + lp) * 9 + lc: 0, the only ones a device takes
//!  13   1  s: shifts in the map (at most 16)
//!  14  8s  the map: (base offset u32, delta i32), offsets increasing
//!   ..     liblzma's raw LZMA1 stream, ending with its end marker; its dictionary is the
//!          remapped base, as if the base had been decoded just before the image
//! kinds 0 and 1: a detools sequential patch
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
//! [`Patcher`] applies either, streaming and sans-IO: patch bytes in ([`Patcher::feed`]), rebuilt
//! image bytes out to a [`Rebuilt`] sink (the DFU writer, which also reads back), the base read
//! through `ReadNorFlash`. Its RAM is a fixed struct, the larger of the two decoders' states (the
//! LZMA model's 1,774 probabilities and the map; the heatshrink window of at most
//! 2^[`MAX_WINDOW_BITS`] bytes). The rebuilt bytes are then verified as any download is (SHA-256,
//! signature, counter); nothing about verification changes.
//!
//! With the ARM-Thumb filter, the detools patch is computed between `F(base)` and `F(target)`,
//! where `F` rewrites each Thumb-2 `BL` whose target lies within ±4 MiB from PC-relative to
//! absolute (as xz's ARM-Thumb filter does). The applier reads `F(base)` from ACTIVE on the fly
//! (the filter is local: whether a halfword starts a converted `BL` depends on its 4 bytes only)
//! and writes `F⁻¹` of what the patch rebuilds.
//!
//! [detools]: https://github.com/eerimoq/detools

mod apply;
#[cfg(feature = "std")]
mod create;
#[cfg(feature = "delta-lzma")]
mod create_lzma;
mod crle;
mod header;
mod heatshrink;
mod lzma;
pub mod remap;
mod size;
pub mod thumb;

pub use apply::Patcher;
pub use apply::Rebuilt;
#[cfg(feature = "std")]
pub use create::{create, create_smallest, heatshrink_compress, pack_size, CreateOptions};
#[cfg(feature = "delta-lzma")]
pub use create_lzma::{create_lzma, dict_size, find_map, lzma_header, lzma_raw};
pub use header::{Base, Compression, Filter, Header, MAGIC, MAX_HEADER, MAX_VERSION};
pub use lzma::PROBS as LZMA_PROBS;
pub use remap::{Map, Shift, MAX_SHIFTS};

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
    /// LZMA properties other than `lc = lp = pb = 0`, or a dictionary smaller than base and
    /// image together.
    Lzma {
        /// the properties byte
        props: u8,
        /// the dictionary size
        dict_size: u32,
    },
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
    /// Reading back rebuilt bytes (an LZMA patch copies from them) failed at this offset.
    ReadBack {
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
    /// An LZMA stream that is inconsistent (a copy from before the base or past the image's
    /// size, a bad first byte, an end marker in the wrong place).
    Lzma,
    /// A map whose shifts are not in increasing order.
    Map,
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
                | DeltaError::Lzma { .. }
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
            Corruption::Lzma => "an inconsistent LZMA stream",
            Corruption::Map => "shifts out of order",
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
                write!(f, "compression {c} ({name}); this device takes detools patches in none, crle and heatshrink")
            }
            DeltaError::Window { window, lookahead } => {
                write!(f, "heatshrink window {window}, lookahead {lookahead}; at most window {MAX_WINDOW_BITS}")
            }
            DeltaError::DataFormat => f.write_str("a detools data format, which devices do not apply"),
            DeltaError::Lzma { props, dict_size } => write!(
                f,
                "LZMA properties {props}, dictionary {dict_size}; this device takes properties 0 and base + image"
            ),
            DeltaError::TooLarge { size, slot } => write!(f, "it rebuilds {size} bytes, past the {slot}-byte slot"),
            DeltaError::Corrupt { what, at } => write!(f, "at patch byte {at}: {what}"),
            DeltaError::Base(k) => write!(f, "reading the base image failed: {k:?}"),
            DeltaError::Write { at } => write!(f, "writing the rebuilt image failed at {at}"),
            DeltaError::ReadBack { at } => write!(f, "reading back the rebuilt image failed at {at}"),
        }
    }
}

impl core::error::Error for DeltaError {}
