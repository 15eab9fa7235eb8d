//! The headers in front of the compressed stream: ours (optional) and detools'.

use super::size::SizeReader;
use super::{DeltaError, MAX_WINDOW_BITS};
use heapless::String;

/// The first bytes of our header.
pub const MAGIC: [u8; 4] = [0xD3, b'D', b'L', b'T'];
/// Longest base version (an Aliyun version: 1..=64 characters).
pub const MAX_VERSION: usize = 64;
/// Bytes that always decide [`Header::parse`]: our header with the longest version, then the
/// longer of detools' header (a byte, a 10-byte size, heatshrink's parameter byte) and an LZMA
/// patch's 14 bytes.
pub const MAX_HEADER: usize = FIXED + MAX_VERSION + LZMA_FIELDS;

/// An LZMA patch's fields after the base version: load, to size, dictionary size, properties,
/// shifts.
const LZMA_FIELDS: usize = 4 + 4 + 4 + 1 + 1;
const _: () = assert!(LZMA_FIELDS > 1 + 10);

const VERSION: u8 = 1;
const FIXED: usize = 45;

/// The branch filter applied to base and target before diffing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Filter {
    /// The bytes as they are.
    None,
    /// liblzma's ARM-Thumb BCJ filter ([`super::thumb`]).
    Thumb,
    /// An LZMA patch over the remapped base ([`super::remap`]): the image is linked at `load`,
    /// and a map of `shifts` entries follows the header.
    Remap {
        /// Address of the image's first byte.
        load: u32,
        /// Entries of the map (at most [`super::MAX_SHIFTS`]).
        shifts: u8,
    },
}

/// The compressed stream's codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Compression {
    /// detools `none` (0).
    None,
    /// detools `crle` (2): conditional run-length encoding.
    Crle,
    /// detools `heatshrink` (4): LZSS with a window of 2^`window` and matches of up to
    /// 2^`lookahead` bytes.
    Heatshrink {
        /// window bits (4..=15 in the format; a device takes up to [`MAX_WINDOW_BITS`])
        window: u8,
        /// lookahead bits (3..window)
        lookahead: u8,
    },
    /// Ours, not a detools codec: liblzma's raw LZMA1 (`lc = lp = pb = 0`, with its end marker)
    /// whose dictionary starts as the remapped base ([`Filter::Remap`]).
    Lzma {
        /// The dictionary's size: at least base and image together.
        dict_size: u32,
    },
}

impl Compression {
    /// detools' number for it (LZMA patches are not detools patches: 1, detools' lzma, is the
    /// nearest name).
    pub fn number(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Crle => 2,
            Compression::Heatshrink { .. } => 4,
            Compression::Lzma { .. } => 1,
        }
    }
}

/// The image a patch applies to, as our header names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Base {
    /// Bytes of the base image (header to the last TLV).
    pub size: u32,
    /// Its SHA256 TLV.
    pub sha256: [u8; 32],
    /// Its Aliyun version.
    pub version: String<MAX_VERSION>,
}

/// What the start of a patch says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The base, when our header is there (a plain detools patch names none).
    pub base: Option<Base>,
    /// The branch filter.
    pub filter: Filter,
    /// The codec.
    pub compression: Compression,
    /// Bytes the patch rebuilds.
    pub to_size: u32,
    /// Where the compressed stream starts (heatshrink's parameter byte is its first byte; an
    /// LZMA patch's map comes first).
    pub body: usize,
}

impl Header {
    /// Parses the start of a patch: `Ok(None)` when more bytes are needed (never with
    /// [`MAX_HEADER`] bytes or more), `Err` for what a device cannot apply. `slot`: the most
    /// bytes it may rebuild.
    pub fn parse(b: &[u8], slot: u32) -> Result<Option<Header>, DeltaError> {
        let (base, filter, at) = match b.first() {
            None => return Ok(None),
            Some(&first) if first & 0x80 == 0 => (None, Filter::None, 0),
            Some(_) => {
                let n = b.len().min(MAGIC.len());
                if b[..n] != MAGIC[..n] {
                    return Err(DeltaError::Header);
                }
                if b.len() < FIXED {
                    return Ok(None);
                }
                if b[4] != VERSION || b[6] != 0 || b[7] != 0 {
                    return Err(DeltaError::Header);
                }
                let filter = match b[5] {
                    0 => Filter::None,
                    1 => Filter::Thumb,
                    2 => Filter::Remap { load: 0, shifts: 0 },
                    _ => return Err(DeltaError::Header),
                };
                let size = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
                let mut sha256 = [0; 32];
                sha256.copy_from_slice(&b[12..44]);
                let n = b[44] as usize;
                if !(1..=MAX_VERSION).contains(&n) || size == 0 {
                    return Err(DeltaError::Header);
                }
                let Some(v) = b.get(FIXED..FIXED + n) else { return Ok(None) };
                let version = core::str::from_utf8(v)
                    .ok()
                    .filter(|v| crate::alink::valid_version(v))
                    .and_then(|v| String::try_from(v).ok())
                    .ok_or(DeltaError::Header)?;
                let base = Base { size, sha256, version };
                if let Filter::Remap { .. } = filter {
                    return Self::lzma(b, FIXED + n, base, slot);
                }
                (Some(base), filter, FIXED + n)
            }
        };
        let Some(&kind) = b.get(at) else { return Ok(None) };
        let (patch_type, number) = ((kind >> 4) & 0x7, kind & 0x0f);
        if kind & 0x80 != 0 || patch_type != 0 {
            return Err(DeltaError::PatchType(patch_type));
        }
        let mut r = SizeReader::default();
        let mut i = at + 1;
        let to_size = loop {
            let Some(&x) = b.get(i) else { return Ok(None) };
            i += 1;
            let bad = |_| DeltaError::Corrupt { what: super::Corruption::Size, at: i as u32 - 1 };
            if let Some(v) = r.push(x).map_err(bad)? {
                break u32::try_from(v).map_err(|_| bad(()))?;
            }
        };
        if to_size == 0 {
            return Err(DeltaError::Corrupt { what: super::Corruption::Empty, at: at as u32 });
        }
        if to_size > slot {
            return Err(DeltaError::TooLarge { size: to_size, slot });
        }
        let compression = match number {
            0 => Compression::None,
            2 => Compression::Crle,
            4 => {
                let Some(&p) = b.get(i) else { return Ok(None) };
                let (window, lookahead) = ((p >> 4) + 4, (p & 0x0f) + 3);
                if window > MAX_WINDOW_BITS || lookahead >= window {
                    return Err(DeltaError::Window { window, lookahead });
                }
                Compression::Heatshrink { window, lookahead }
            }
            n => return Err(DeltaError::Compression(n)),
        };
        Ok(Some(Header { base, filter, compression, to_size, body: i }))
    }

    /// The fields of an LZMA patch after our header's first `at` bytes.
    fn lzma(b: &[u8], at: usize, base: Base, slot: u32) -> Result<Option<Header>, DeltaError> {
        let Some(f) = b.get(at..at + LZMA_FIELDS) else { return Ok(None) };
        let word = |i: usize| u32::from_le_bytes([f[i], f[i + 1], f[i + 2], f[i + 3]]);
        let (load, to_size, dict_size, props, shifts) = (word(0), word(4), word(8), f[12], f[13]);
        if props != 0 {
            return Err(DeltaError::Lzma { props, dict_size });
        }
        if to_size == 0 {
            return Err(DeltaError::Corrupt { what: super::Corruption::Empty, at: at as u32 + 4 });
        }
        if to_size > slot {
            return Err(DeltaError::TooLarge { size: to_size, slot });
        }
        if u64::from(dict_size) < u64::from(base.size) + u64::from(to_size) {
            return Err(DeltaError::Lzma { props, dict_size });
        }
        if shifts as usize > super::MAX_SHIFTS {
            return Err(DeltaError::Header);
        }
        Ok(Some(Header {
            base: Some(base),
            filter: Filter::Remap { load, shifts },
            compression: Compression::Lzma { dict_size },
            to_size,
            body: at + LZMA_FIELDS,
        }))
    }

    /// Our header for `base` (std: the producer).
    #[cfg(feature = "std")]
    pub fn emit_ours(base: &Base, filter: Filter) -> std::vec::Vec<u8> {
        let mut v = std::vec::Vec::with_capacity(FIXED + base.version.len());
        v.extend_from_slice(&MAGIC);
        let kind = match filter {
            Filter::None => 0,
            Filter::Thumb => 1,
            Filter::Remap { .. } => 2,
        };
        v.extend_from_slice(&[VERSION, kind, 0, 0]);
        v.extend_from_slice(&base.size.to_le_bytes());
        v.extend_from_slice(&base.sha256);
        v.push(base.version.len() as u8);
        v.extend_from_slice(base.version.as_bytes());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Base {
        Base { size: 1000, sha256: [0xAB; 32], version: String::try_from("1.3").unwrap() }
    }

    #[test]
    fn ours_then_detools_parse_byte_by_byte() {
        let mut p = Header::emit_ours(&base(), Filter::Thumb);
        p.extend_from_slice(&[0x04, 0x80 | 0x20, 0x0f, 0x73]); // heatshrink, 0x3e0 + .. , w 11 l 6
        for n in 0..p.len() {
            assert_eq!(Header::parse(&p[..n], 1 << 20), Ok(None), "{n} bytes");
        }
        let h = Header::parse(&p, 1 << 20).unwrap().unwrap();
        assert_eq!(h.base, Some(base()));
        assert_eq!(h.filter, Filter::Thumb);
        assert_eq!(h.to_size, 0x20 | (0x0f << 6));
        assert_eq!(h.compression, Compression::Heatshrink { window: 11, lookahead: 6 });
        assert_eq!(h.body, p.len() - 1);
        assert!(p.len() <= MAX_HEADER);
    }

    #[test]
    fn a_plain_detools_patch_has_no_base() {
        // detools create_patch --compression crle of a 5-byte target: header 0x02, size 5.
        let h = Header::parse(&[0x02, 0x05, 0x01], 100).unwrap().unwrap();
        assert_eq!((h.base, h.filter, h.compression, h.to_size, h.body), (None, Filter::None, Compression::Crle, 5, 2));
    }

    #[test]
    fn what_a_device_cannot_apply_is_refused() {
        assert_eq!(Header::parse(&[0x01, 0x05], 100), Err(DeltaError::Compression(1)));
        assert_eq!(Header::parse(&[0x06, 0x05], 100), Err(DeltaError::Compression(6)));
        assert_eq!(Header::parse(&[0x10, 0x05], 100), Err(DeltaError::PatchType(1)));
        assert_eq!(Header::parse(&[0x00, 0x80 | 0x3f, 0x01], 100), Err(DeltaError::TooLarge { size: 127, slot: 100 }));
        assert_eq!(Header::parse(&[0x04, 0x05, 0x84], 100), Err(DeltaError::Window { window: 12, lookahead: 7 }));
        let detools_default = Header::parse(&[0x04, 0x05, 0x44], 100).unwrap().unwrap();
        assert_eq!(detools_default.compression, Compression::Heatshrink { window: 8, lookahead: 7 });
        assert!(matches!(Header::parse(&[0x00, 0x00], 100), Err(DeltaError::Corrupt { .. })));
        assert_eq!(Header::parse(&[0xD3, b'D', b'X'], 100), Err(DeltaError::Header));
        let mut p = Header::emit_ours(&base(), Filter::None);
        p[5] = 7;
        assert_eq!(Header::parse(&p, 100), Err(DeltaError::Header));
    }
}
