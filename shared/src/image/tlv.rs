//! TLV areas: an info header followed by type-length-value entries (little-endian).
//!
//! ```text
//! info:   0        2        4
//!         +--------+--------+
//!         | magic  | total  |   total counts the info header itself
//!         +--------+--------+
//! entry:  0        2        4            4+len
//!         +--------+--------+------------+
//!         | type   | len    | value ...  |
//!         +--------+--------+------------+
//! ```
//! imgtool writes standard types as `u8 type, u8 0` and custom ones (0xa0..) as `u16`: both read
//! the same as a little-endian `u16`.

use super::ImageError;

/// Magic of the unprotected TLV area.
pub const TLV_INFO_MAGIC: u16 = 0x6907;
/// Magic of the protected TLV area (covered by the hash and signature).
pub const TLV_PROT_INFO_MAGIC: u16 = 0x6908;
/// Bytes of a TLV info header, and of an entry's type+length.
pub const TLV_INFO_LEN: usize = 4;

mod field {
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..2;
    pub const TOTAL: Range<usize> = 2..4;
    pub const TYPE: Range<usize> = 0..2;
    pub const LEN: Range<usize> = 2..4;
    pub const VALUE: usize = 4;
}

fn u16_at(b: &[u8], r: core::ops::Range<usize>) -> u16 {
    u16::from_le_bytes([b[r.start], b[r.start + 1]])
}

/// The TLV types we know. Anything else is kept as [`TlvKind::Unknown`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TlvKind {
    /// 0x01: SHA-256 of the signing key's DER SubjectPublicKeyInfo.
    KeyHash,
    /// 0x02: the signing key's DER SubjectPublicKeyInfo in full.
    PubKey,
    /// 0x10: SHA-256 of header + body + protected TLVs.
    Sha256,
    /// 0x24: Ed25519 signature of that digest.
    Ed25519,
    /// 0x50 (protected): security counter, u32 LE.
    SecCnt,
    /// 0xa0 (protected, ours): Aliyun OTA module name, UTF-8.
    AliyunModule,
    /// 0xa1 (protected, ours): the version string reported on `/ota/device/inform`, UTF-8.
    AliyunVersion,
    /// 0xa2 (protected, ours): signing keys this image revokes once confirmed, u32 LE, one bit
    /// per trusted key slot; only slots below the signing key's own.
    RevokeKeys,
    /// Any other type.
    Unknown(u16),
}

impl From<u16> for TlvKind {
    fn from(v: u16) -> Self {
        match v {
            0x01 => TlvKind::KeyHash,
            0x02 => TlvKind::PubKey,
            0x10 => TlvKind::Sha256,
            0x24 => TlvKind::Ed25519,
            0x50 => TlvKind::SecCnt,
            0xa0 => TlvKind::AliyunModule,
            0xa1 => TlvKind::AliyunVersion,
            0xa2 => TlvKind::RevokeKeys,
            other => TlvKind::Unknown(other),
        }
    }
}

impl From<TlvKind> for u16 {
    fn from(k: TlvKind) -> u16 {
        match k {
            TlvKind::KeyHash => 0x01,
            TlvKind::PubKey => 0x02,
            TlvKind::Sha256 => 0x10,
            TlvKind::Ed25519 => 0x24,
            TlvKind::SecCnt => 0x50,
            TlvKind::AliyunModule => 0xa0,
            TlvKind::AliyunVersion => 0xa1,
            TlvKind::RevokeKeys => 0xa2,
            TlvKind::Unknown(v) => v,
        }
    }
}

/// A TLV area's info header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TlvInfo {
    /// [`TLV_INFO_MAGIC`] or [`TLV_PROT_INFO_MAGIC`].
    pub magic: u16,
    /// Bytes of the whole area, this header included.
    pub total: u16,
}

impl TlvInfo {
    /// Parses the 4 info bytes; the total must at least cover the info header.
    pub fn parse(b: &[u8]) -> Result<TlvInfo, ImageError> {
        if b.len() < TLV_INFO_LEN {
            return Err(ImageError::Truncated);
        }
        let info = TlvInfo { magic: u16_at(b, field::MAGIC), total: u16_at(b, field::TOTAL) };
        if info.magic != TLV_INFO_MAGIC && info.magic != TLV_PROT_INFO_MAGIC {
            return Err(ImageError::BadTlv);
        }
        if (info.total as usize) < TLV_INFO_LEN {
            return Err(ImageError::BadTlv);
        }
        Ok(info)
    }

    /// Writes the 4 info bytes.
    pub fn emit(&self, b: &mut [u8]) {
        b[field::MAGIC].copy_from_slice(&self.magic.to_le_bytes());
        b[field::TOTAL].copy_from_slice(&self.total.to_le_bytes());
    }
}

/// One entry of a TLV area, borrowed from the area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// Its type.
    pub kind: TlvKind,
    /// Its value.
    pub value: &'a [u8],
}

/// Iterates the entries of one TLV area (`area` starts at its info header). Yields
/// `Err(BadTlv)` once, then stops, when an entry runs past the area.
#[derive(Clone, Debug)]
pub struct TlvIter<'a> {
    rest: &'a [u8],
}

impl<'a> TlvIter<'a> {
    /// Checks the info header against `magic` and the area length, and starts iterating.
    /// Returns the iterator and the area's total length.
    pub fn new(area: &'a [u8], magic: u16) -> Result<(TlvIter<'a>, usize), ImageError> {
        let info = TlvInfo::parse(area)?;
        if info.magic != magic {
            return Err(ImageError::BadTlv);
        }
        let total = info.total as usize;
        let body = area.get(TLV_INFO_LEN..total).ok_or(ImageError::Truncated)?;
        Ok((TlvIter { rest: body }, total))
    }
}

impl<'a> Iterator for TlvIter<'a> {
    type Item = Result<Tlv<'a>, ImageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let r = parse_entry(self.rest);
        match r {
            Ok((tlv, used)) => {
                self.rest = &self.rest[used..];
                Some(Ok(tlv))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

/// Parses one entry's type and length from its first 4 bytes.
pub(crate) fn parse_entry_header(b: &[u8]) -> Result<(TlvKind, usize), ImageError> {
    if b.len() < TLV_INFO_LEN {
        return Err(ImageError::BadTlv);
    }
    Ok((TlvKind::from(u16_at(b, field::TYPE)), u16_at(b, field::LEN) as usize))
}

fn parse_entry(b: &[u8]) -> Result<(Tlv<'_>, usize), ImageError> {
    let (kind, len) = parse_entry_header(b)?;
    let value = b.get(field::VALUE..field::VALUE + len).ok_or(ImageError::BadTlv)?;
    Ok((Tlv { kind, value }, field::VALUE + len))
}

/// Builds a TLV area into a caller buffer.
pub struct TlvAreaWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
    magic: u16,
}

impl<'a> TlvAreaWriter<'a> {
    /// Starts an area with `magic` at the beginning of `buf`.
    pub fn new(buf: &'a mut [u8], magic: u16) -> Self {
        assert!(buf.len() >= TLV_INFO_LEN, "TLV buffer too small");
        TlvAreaWriter { buf, len: TLV_INFO_LEN, magic }
    }

    /// Bytes one entry of `value_len` takes.
    pub const fn entry_len(value_len: usize) -> usize {
        TLV_INFO_LEN + value_len
    }

    /// Appends an entry. Panics if the buffer is too small (a bug in the caller).
    pub fn push(&mut self, kind: TlvKind, value: &[u8]) -> &mut Self {
        let end = self.len + Self::entry_len(value.len());
        let len = u16::try_from(value.len()).expect("TLV value longer than 65535");
        let e = &mut self.buf[self.len..end];
        e[field::TYPE].copy_from_slice(&u16::from(kind).to_le_bytes());
        e[field::LEN].copy_from_slice(&len.to_le_bytes());
        e[field::VALUE..].copy_from_slice(value);
        self.len = end;
        self
    }

    /// Writes the info header and returns the area's length.
    pub fn finish(self) -> usize {
        let total = u16::try_from(self.len).expect("TLV area longer than 65535");
        TlvInfo { magic: self.magic, total }.emit(self.buf);
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Protected area: SEC_CNT=3, AliyunModule "MCU" (imgtool: --custom-tlv 0xa0 MCU).
    static PROTECTED: [u8; 19] = [
        0x08, 0x69, 0x13, 0x00, // info: magic 0x6908, total 19
        0x50, 0x00, 0x04, 0x00, 0x03, 0x00, 0x00, 0x00, // SEC_CNT 3
        0xa0, 0x00, 0x03, 0x00, b'M', b'C', b'U', // module
    ];

    #[test]
    fn tlv_area_deconstructs() {
        let (it, total) = TlvIter::new(&PROTECTED, TLV_PROT_INFO_MAGIC).unwrap();
        assert_eq!(total, 19);
        let all: Vec<_> = it.map(Result::unwrap).collect();
        assert_eq!(all[0], Tlv { kind: TlvKind::SecCnt, value: &[3, 0, 0, 0] });
        assert_eq!(all[1], Tlv { kind: TlvKind::AliyunModule, value: b"MCU" });
    }

    #[test]
    fn tlv_area_constructs() {
        let mut buf = [0u8; 32];
        let mut w = TlvAreaWriter::new(&mut buf, TLV_PROT_INFO_MAGIC);
        w.push(TlvKind::SecCnt, &3u32.to_le_bytes()).push(TlvKind::AliyunModule, b"MCU");
        assert_eq!(w.finish(), 19);
        assert_eq!(buf[..19], PROTECTED);
    }

    #[test]
    fn unknown_types_survive_a_round_trip() {
        for v in [0u16, 0x03, 0x11, 0xa2, 0xfffe] {
            let k = TlvKind::from(v);
            assert_eq!(u16::from(k), v);
        }
        assert_eq!(TlvKind::from(0x77), TlvKind::Unknown(0x77));
    }

    #[test]
    fn entry_running_past_the_area_is_an_error_then_the_end() {
        let mut b = PROTECTED;
        b[14] = 0x10; // module length 16, area has 3 bytes left
        let (mut it, _) = TlvIter::new(&b, TLV_PROT_INFO_MAGIC).unwrap();
        assert!(it.next().unwrap().is_ok());
        assert_eq!(it.next(), Some(Err(ImageError::BadTlv)));
        assert_eq!(it.next(), None);
    }

    #[test]
    fn wrong_area_magic_is_rejected() {
        assert_eq!(TlvIter::new(&PROTECTED, TLV_INFO_MAGIC).unwrap_err(), ImageError::BadTlv);
        assert_eq!(TlvInfo::parse(&[0xff; 4]), Err(ImageError::BadTlv));
    }

    #[test]
    fn total_longer_than_the_buffer_is_truncated() {
        assert_eq!(TlvIter::new(&PROTECTED[..10], TLV_PROT_INFO_MAGIC).unwrap_err(), ImageError::Truncated);
    }
}
