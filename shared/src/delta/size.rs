//! The two variable-length integers of detools patches, read a byte at a time.

/// A detools size: byte 0 carries more (bit 7), negative (bit 6) and 6 value bits; each next
/// byte more (bit 7) and 7 value bits, least significant first. At most 10 bytes.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SizeReader {
    value: u64,
    shift: u32,
    negative: bool,
    bytes: u8,
}

impl SizeReader {
    pub(crate) const fn new() -> Self {
        SizeReader { value: 0, shift: 0, negative: false, bytes: 0 }
    }

    /// Takes one byte: `Ok(Some(v))` once complete, `Err(())` when it runs over 10 bytes or
    /// out of `i64`.
    pub(crate) fn push(&mut self, b: u8) -> Result<Option<i64>, ()> {
        if self.bytes == 0 {
            self.negative = b & 0x40 != 0;
            self.value = u64::from(b & 0x3f);
            self.shift = 6;
        } else {
            if self.bytes >= 10 || self.shift > 63 {
                return Err(());
            }
            let bits = u64::from(b & 0x7f);
            if self.shift > 57 && bits >> (64 - self.shift) != 0 {
                return Err(());
            }
            self.value |= bits << self.shift;
            self.shift += 7;
        }
        self.bytes += 1;
        if b & 0x80 != 0 {
            return Ok(None);
        }
        let v = i64::try_from(self.value).map_err(|_| ())?;
        let negative = self.negative;
        *self = SizeReader::default();
        Ok(Some(if negative { -v } else { v }))
    }
}

/// A CRLE size: 7 bits per byte, least significant first, bit 7 = more. At most 5 bytes (u32).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LebReader {
    value: u32,
    shift: u32,
}

impl LebReader {
    pub(crate) const fn new() -> Self {
        LebReader { value: 0, shift: 0 }
    }

    pub(crate) fn push(&mut self, b: u8) -> Result<Option<u32>, ()> {
        if self.shift > 28 || (self.shift == 28 && (b & 0x7f) > 0x0f) {
            return Err(());
        }
        self.value |= u32::from(b & 0x7f) << self.shift;
        self.shift += 7;
        if b & 0x80 != 0 {
            return Ok(None);
        }
        let v = self.value;
        *self = LebReader::default();
        Ok(Some(v))
    }
}
