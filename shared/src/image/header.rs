//! The 32-byte image header (MCUboot `struct image_header`, little-endian).

use super::ImageError;

/// `ih_magic` of every MCUboot image.
pub const IMAGE_MAGIC: u32 = 0x96f3_b83d;
/// Bytes in the header proper (the rest up to `hdr_size` is padding).
pub const HEADER_LEN: usize = 32;

/// Header flag bits (MCUboot `IMAGE_F_*`).
pub mod flags {
    /// Position independent code (unused by MCUboot, allowed).
    pub const PIC: u32 = 0x0000_0001;
    /// Body encrypted with AES-128.
    pub const ENCRYPTED_AES128: u32 = 0x0000_0004;
    /// Body encrypted with AES-256.
    pub const ENCRYPTED_AES256: u32 = 0x0000_0008;
    /// Image must never be booted.
    pub const NON_BOOTABLE: u32 = 0x0000_0010;
    /// Image is copied to RAM before it runs.
    pub const RAM_LOAD: u32 = 0x0000_0020;
    /// Image is linked for a fixed flash address.
    pub const ROM_FIXED: u32 = 0x0000_0100;
    /// Body compressed with LZMA1 / LZMA2.
    pub const COMPRESSED: u32 = 0x0000_0600;
    /// Every flag our bootloader can boot.
    pub const SUPPORTED: u32 = PIC | ROM_FIXED;
}

/// Byte ranges of the header fields.
///
/// ```text
///  0      4          8        10           12         16      20  21  22     24        28     32
///  +------+----------+--------+------------+----------+-------+---+---+------+---------+------+
///  |magic |load_addr |hdr_size|protect_tlv |img_size  |flags  |maj|min|rev   |build    |pad   |
///  | u32  |   u32    |  u16   |size u16    |  u32     | u32   |u8 |u8 |u16   |u32      |u32   |
///  +------+----------+--------+------------+----------+-------+---+---+------+---------+------+
/// ```
mod field {
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const LOAD_ADDR: Range<usize> = 4..8;
    pub const HDR_SIZE: Range<usize> = 8..10;
    pub const PROTECT_TLV_SIZE: Range<usize> = 10..12;
    pub const IMG_SIZE: Range<usize> = 12..16;
    pub const FLAGS: Range<usize> = 16..20;
    pub const VER_MAJOR: usize = 20;
    pub const VER_MINOR: usize = 21;
    pub const VER_REVISION: Range<usize> = 22..24;
    pub const VER_BUILD: Range<usize> = 24..28;
    pub const PAD: Range<usize> = 28..32;
}

/// A zero-copy view of a header. Accessors cannot panic once [`Header::new_checked`] succeeded.
#[derive(Debug, Clone, Copy)]
pub struct Header<T: AsRef<[u8]>> {
    buffer: T,
}

macro_rules! le {
    ($buf:expr, u16, $r:expr) => {
        u16::from_le_bytes([$buf[$r.start], $buf[$r.start + 1]])
    };
    ($buf:expr, u32, $r:expr) => {
        u32::from_le_bytes([$buf[$r.start], $buf[$r.start + 1], $buf[$r.start + 2], $buf[$r.start + 3]])
    };
}

impl<T: AsRef<[u8]>> Header<T> {
    /// Wraps a buffer without checking its length.
    pub const fn new_unchecked(buffer: T) -> Self {
        Header { buffer }
    }

    /// Wraps a buffer of at least [`HEADER_LEN`] bytes.
    pub fn new_checked(buffer: T) -> Result<Self, ImageError> {
        let h = Self::new_unchecked(buffer);
        h.check_len()?;
        Ok(h)
    }

    /// Ensures accessors will not panic.
    pub fn check_len(&self) -> Result<(), ImageError> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(ImageError::Truncated)
        } else {
            Ok(())
        }
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// `ih_magic`.
    pub fn magic(&self) -> u32 {
        le!(self.buffer.as_ref(), u32, field::MAGIC)
    }
    /// `ih_load_addr` (RAM-load images only; 0 otherwise).
    pub fn load_addr(&self) -> u32 {
        le!(self.buffer.as_ref(), u32, field::LOAD_ADDR)
    }
    /// `ih_hdr_size`: offset of the body.
    pub fn hdr_size(&self) -> u16 {
        le!(self.buffer.as_ref(), u16, field::HDR_SIZE)
    }
    /// `ih_protect_tlv_size`: bytes of the protected TLV area, its info header included (0: none).
    pub fn protect_tlv_size(&self) -> u16 {
        le!(self.buffer.as_ref(), u16, field::PROTECT_TLV_SIZE)
    }
    /// `ih_img_size`: bytes of the body.
    pub fn img_size(&self) -> u32 {
        le!(self.buffer.as_ref(), u32, field::IMG_SIZE)
    }
    /// `ih_flags`.
    pub fn flags(&self) -> u32 {
        le!(self.buffer.as_ref(), u32, field::FLAGS)
    }
    /// `ih_ver`.
    pub fn version(&self) -> ImageVersion {
        let b = self.buffer.as_ref();
        ImageVersion {
            major: b[field::VER_MAJOR],
            minor: b[field::VER_MINOR],
            revision: le!(b, u16, field::VER_REVISION),
            build: le!(b, u32, field::VER_BUILD),
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    fn put(&mut self, r: core::ops::Range<usize>, v: &[u8]) {
        self.buffer.as_mut()[r].copy_from_slice(v);
    }
    /// Sets `ih_magic`.
    pub fn set_magic(&mut self, v: u32) {
        self.put(field::MAGIC, &v.to_le_bytes())
    }
    /// Sets `ih_load_addr`.
    pub fn set_load_addr(&mut self, v: u32) {
        self.put(field::LOAD_ADDR, &v.to_le_bytes())
    }
    /// Sets `ih_hdr_size`.
    pub fn set_hdr_size(&mut self, v: u16) {
        self.put(field::HDR_SIZE, &v.to_le_bytes())
    }
    /// Sets `ih_protect_tlv_size`.
    pub fn set_protect_tlv_size(&mut self, v: u16) {
        self.put(field::PROTECT_TLV_SIZE, &v.to_le_bytes())
    }
    /// Sets `ih_img_size`.
    pub fn set_img_size(&mut self, v: u32) {
        self.put(field::IMG_SIZE, &v.to_le_bytes())
    }
    /// Sets `ih_flags`.
    pub fn set_flags(&mut self, v: u32) {
        self.put(field::FLAGS, &v.to_le_bytes())
    }
    /// Sets `ih_ver` and clears the padding word.
    pub fn set_version(&mut self, v: ImageVersion) {
        let b = self.buffer.as_mut();
        b[field::VER_MAJOR] = v.major;
        b[field::VER_MINOR] = v.minor;
        self.put(field::VER_REVISION, &v.revision.to_le_bytes());
        self.put(field::VER_BUILD, &v.build.to_le_bytes());
        self.put(field::PAD, &[0; 4]);
    }
}

/// MCUboot's `major.minor.revision+build`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ImageVersion {
    /// major
    pub major: u8,
    /// minor
    pub minor: u8,
    /// revision
    pub revision: u16,
    /// build number
    pub build: u32,
}

impl ImageVersion {
    /// Parses imgtool's syntax `M[.m[.r]][+b]`, with an optional leading `v`/`V`.
    pub fn parse(s: &str) -> Option<ImageVersion> {
        let s = s.strip_prefix(['v', 'V']).unwrap_or(s);
        let (nums, build) = match s.split_once('+') {
            Some((n, b)) => (n, b.parse().ok()?),
            None => (s, 0),
        };
        let mut it = nums.split('.');
        let major = it.next()?.parse().ok()?;
        let minor = it.next().map(str::parse).transpose().ok()?.unwrap_or(0);
        let revision = it.next().map(str::parse).transpose().ok()?.unwrap_or(0);
        if it.next().is_some() {
            return None;
        }
        Some(ImageVersion { major, minor, revision, build })
    }
}

impl core::fmt::Display for ImageVersion {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{}.{}+{}", self.major, self.minor, self.revision, self.build)
    }
}

/// The header as plain values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct HeaderRepr {
    /// `ih_load_addr`
    pub load_addr: u32,
    /// `ih_hdr_size`
    pub hdr_size: u16,
    /// `ih_protect_tlv_size`
    pub protect_tlv_size: u16,
    /// `ih_img_size`
    pub img_size: u32,
    /// `ih_flags`
    pub flags: u32,
    /// `ih_ver`
    pub version: ImageVersion,
}

impl HeaderRepr {
    /// Parses and validates a header: magic, `hdr_size >= 32`, sizes that do not overflow u32.
    pub fn parse<T: AsRef<[u8]>>(h: &Header<T>) -> Result<HeaderRepr, ImageError> {
        h.check_len()?;
        if h.magic() != IMAGE_MAGIC {
            return Err(ImageError::BadMagic);
        }
        let repr = HeaderRepr {
            load_addr: h.load_addr(),
            hdr_size: h.hdr_size(),
            protect_tlv_size: h.protect_tlv_size(),
            img_size: h.img_size(),
            flags: h.flags(),
            version: h.version(),
        };
        if (repr.hdr_size as usize) < HEADER_LEN || repr.tlv_offset().is_none() {
            return Err(ImageError::BadHeader);
        }
        Ok(repr)
    }

    /// Bytes of the header (always [`HEADER_LEN`]).
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into `h` (the first 32 bytes of the image).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut Header<T>) {
        h.set_magic(IMAGE_MAGIC);
        h.set_load_addr(self.load_addr);
        h.set_hdr_size(self.hdr_size);
        h.set_protect_tlv_size(self.protect_tlv_size);
        h.set_img_size(self.img_size);
        h.set_flags(self.flags);
        h.set_version(self.version);
    }

    /// Offset of the protected TLV area (or of the TLV area when there is none).
    pub fn body_end(&self) -> Option<u32> {
        (self.hdr_size as u32).checked_add(self.img_size)
    }

    /// Offset of the unprotected TLV area: everything before it is hashed.
    pub fn tlv_offset(&self) -> Option<u32> {
        self.body_end()?.checked_add(self.protect_tlv_size as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A header as imgtool 2.5 writes it for `--header-size 0x200 --version 1.4.2+7` and a 0x1234-byte
    // body with a 0x18-byte protected TLV area.
    static HEADER_BYTES: [u8; 32] = [
        0x3d, 0xb8, 0xf3, 0x96, // magic
        0x00, 0x00, 0x00, 0x00, // load_addr
        0x00, 0x02, // hdr_size 0x200
        0x18, 0x00, // protect_tlv_size
        0x34, 0x12, 0x00, 0x00, // img_size
        0x00, 0x00, 0x00, 0x00, // flags
        0x01, 0x04, 0x02, 0x00, // 1.4.2
        0x07, 0x00, 0x00, 0x00, // +7
        0x00, 0x00, 0x00, 0x00, // pad
    ];

    fn repr() -> HeaderRepr {
        HeaderRepr {
            load_addr: 0,
            hdr_size: 0x200,
            protect_tlv_size: 0x18,
            img_size: 0x1234,
            flags: 0,
            version: ImageVersion { major: 1, minor: 4, revision: 2, build: 7 },
        }
    }

    #[test]
    fn header_fields_deconstruct() {
        let h = Header::new_checked(&HEADER_BYTES[..]).unwrap();
        assert_eq!(h.magic(), IMAGE_MAGIC);
        assert_eq!(h.hdr_size(), 0x200);
        assert_eq!(h.protect_tlv_size(), 0x18);
        assert_eq!(h.img_size(), 0x1234);
        assert_eq!(h.version().to_string(), "1.4.2+7");
    }

    #[test]
    fn header_fields_construct() {
        let mut buf = [0xAAu8; 32];
        let mut h = Header::new_unchecked(&mut buf[..]);
        repr().emit(&mut h);
        assert_eq!(buf, HEADER_BYTES);
    }

    #[test]
    fn header_parses_into_repr() {
        assert_eq!(HeaderRepr::parse(&Header::new_checked(&HEADER_BYTES[..]).unwrap()), Ok(repr()));
        assert_eq!(repr().tlv_offset(), Some(0x200 + 0x1234 + 0x18));
    }

    #[test]
    fn short_header_is_truncated_not_a_panic() {
        assert_eq!(Header::new_checked(&HEADER_BYTES[..31]).unwrap_err(), ImageError::Truncated);
    }

    #[test]
    fn wrong_magic_is_rejected() {
        let mut b = HEADER_BYTES;
        b[0] ^= 1;
        assert_eq!(HeaderRepr::parse(&Header::new_unchecked(&b[..])), Err(ImageError::BadMagic));
    }

    #[test]
    fn header_size_below_32_is_rejected() {
        let mut b = HEADER_BYTES;
        b[8] = 31;
        b[9] = 0;
        assert_eq!(HeaderRepr::parse(&Header::new_unchecked(&b[..])), Err(ImageError::BadHeader));
    }

    #[test]
    fn sizes_that_overflow_are_rejected() {
        let mut b = HEADER_BYTES;
        b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(HeaderRepr::parse(&Header::new_unchecked(&b[..])), Err(ImageError::BadHeader));
    }

    #[test]
    fn versions_parse_like_imgtool() {
        let v = |s| ImageVersion::parse(s).map(|v| v.to_string());
        assert_eq!(v("1.4").as_deref(), Some("1.4.0+0"));
        assert_eq!(v("V1.3").as_deref(), Some("1.3.0+0"));
        assert_eq!(v("2.0.1+42").as_deref(), Some("2.0.1+42"));
        assert_eq!(v("1.2.3.4"), None);
        assert_eq!(v("256.0"), None);
        assert_eq!(v("beta"), None);
        assert_eq!(v(""), None);
    }
}
