//! The ARM-Thumb branch filter of liblzma (xz's `BCJ` ARM-Thumb): every halfword-aligned
//! Thumb-2 `BL` whose offset fits 22 bits (target within ±4 MiB: both J bits set) gets its
//! PC-relative offset replaced by the absolute target (encode), or back (decode). Calls to a
//! function then read the same wherever the caller moved, which is what makes two builds of the
//! same firmware diff small.
//!
//! Positions are offsets from the start of the image (xz's `start_offset` 0), so a base and a
//! target at the same address convert alike. Whether a halfword at even offset `i` starts a
//! converted `BL` depends only on bytes `i+1` and `i+3` (`F0..F7`, then `F8..FF`), which the
//! conversion keeps, and two candidates 2 bytes apart can never both match: the filter is local,
//! so any range of `F(base)` can be computed from the base bytes around it ([`encode_range`]),
//! and the rebuilt target is decoded as it streams out ([`Decoder`]). The result is byte for
//! byte what `lzma.FILTER_ARMTHUMB` gives (checked by the interop tests).

/// Whether `b[i..i + 4]` is a candidate `BL` (the caller checks `i + 4 <= b.len()`).
pub(crate) fn is_bl(b: &[u8], i: usize) -> bool {
    b[i + 1] & 0xF8 == 0xF0 && b[i + 3] & 0xF8 == 0xF8
}

/// The 22-bit field of the candidate `BL` at `b[i..i + 4]` (its offset in halfwords).
pub(crate) fn field(b: &[u8], i: usize) -> u32 {
    (u32::from(b[i + 1] & 7) << 19) | (u32::from(b[i]) << 11) | (u32::from(b[i + 3] & 7) << 8) | u32::from(b[i + 2])
}

/// Stores the low 22 bits of `v` as the field of the `BL` at `b[i..i + 4]`.
pub(crate) fn set_field(b: &mut [u8], i: usize, v: u32) {
    b[i + 1] = 0xF0 | ((v >> 19) & 7) as u8;
    b[i] = (v >> 11) as u8;
    b[i + 3] = 0xF8 | ((v >> 8) & 7) as u8;
    b[i + 2] = v as u8;
}

/// Converts the `BL` at `b[i..i + 4]`, at image offset `pos`.
fn convert(b: &mut [u8], i: usize, pos: u32, encode: bool) {
    let src = field(b, i) << 1;
    let dest = if encode { pos.wrapping_add(4).wrapping_add(src) } else { src.wrapping_sub(pos.wrapping_add(4)) } >> 1;
    set_field(b, i, dest);
}

/// Filters a whole image in place (`encode`: relative to absolute).
pub fn filter(b: &mut [u8], encode: bool) {
    let mut i = 0;
    while i + 4 <= b.len() {
        if is_bl(b, i) {
            convert(b, i, i as u32, encode);
            i += 4;
        } else {
            i += 2;
        }
    }
}

/// Encodes `raw`, the bytes of an image of `size` bytes from offset `start` (even), in place:
/// afterwards `raw[k]` is `F(image)[start + k]` for every `k` whose halfword's candidates lie
/// in `raw` (all but the last 3 bytes of `raw`, unless `raw` reaches the image's end, and
/// the first 2 unless `start` is 0). Callers read a margin of 2 bytes before and 4 after what
/// they need.
pub fn encode_range(raw: &mut [u8], start: u32, size: u32) {
    debug_assert!(start.is_multiple_of(2));
    let mut i = 0;
    while i + 4 <= raw.len() {
        if start as usize + i + 4 <= size as usize && is_bl(raw, i) {
            convert(raw, i, start + i as u32, true);
            i += 4;
        } else {
            i += 2;
        }
    }
}

/// Decodes a filtered image as it streams out: bytes go in with [`Decoder::push`], come out
/// final (at most 3 held back until the bytes after them are known), and [`Decoder::finish`]
/// lets the last ones go once the image's end is reached.
#[derive(Clone, Copy, Debug)]
pub struct Decoder {
    buf: [u8; 8],
    len: usize,
    /// Image offset of `buf[0]`.
    pos: u32,
    /// Offset of the next candidate (even) not decided yet.
    next: u32,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// At image offset 0.
    pub const fn new() -> Self {
        Decoder { buf: [0; 8], len: 0, pos: 0, next: 0 }
    }

    /// Takes `data`; calls `out` with the bytes that are final (in order, possibly several
    /// times).
    pub fn push<E>(&mut self, mut data: &[u8], out: &mut impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        while !data.is_empty() {
            let k = data.len().min(self.buf.len() - self.len);
            self.buf[self.len..self.len + k].copy_from_slice(&data[..k]);
            self.len += k;
            data = &data[k..];
            // Decide the candidates whose 4 bytes are here.
            while (self.next - self.pos) as usize + 4 <= self.len {
                let i = (self.next - self.pos) as usize;
                if is_bl(&self.buf, i) {
                    convert(&mut self.buf, i, self.next, false);
                    self.next += 4;
                } else {
                    self.next += 2;
                }
            }
            // Bytes before the next undecided candidate are final.
            let done = (self.next - self.pos) as usize;
            out(&self.buf[..done])?;
            self.buf.copy_within(done..self.len, 0);
            self.len -= done;
            self.pos = self.next;
        }
        Ok(())
    }

    /// The image ends here: what is held back is final (a `BL` cut by the end is no `BL`).
    pub fn finish<E>(&mut self, out: &mut impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        out(&self.buf[..self.len])?;
        self.pos += self.len as u32;
        self.next = self.pos;
        self.len = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Thumb-ish bytes: many BLs, some cut by chunk edges, some overlapping candidates.
    fn sample() -> Vec<u8> {
        let mut v = Vec::new();
        let mut x = 0x1234_5678u32;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            match x % 4 {
                0 => v.extend_from_slice(&[
                    x as u8,
                    0xF0 | (x >> 8) as u8 & 7,
                    (x >> 16) as u8,
                    0xF8 | (x >> 24) as u8 & 7,
                ]),
                1 => v.extend_from_slice(&[(x >> 3) as u8, 0xF4]),
                _ => v.extend_from_slice(&(x as u16).to_le_bytes()),
            }
        }
        v
    }

    #[test]
    fn decode_undoes_encode_streaming_in_any_chunks() {
        let raw = sample();
        let mut enc = raw.clone();
        filter(&mut enc, true);
        assert_ne!(enc, raw);
        for chunk in [1, 2, 3, 5, 8, 13, 64] {
            let mut d = Decoder::new();
            let mut out = Vec::new();
            for c in enc.chunks(chunk) {
                d.push(c, &mut |b: &[u8]| -> Result<(), ()> {
                    out.extend_from_slice(b);
                    Ok(())
                })
                .unwrap();
            }
            d.finish(&mut |b: &[u8]| -> Result<(), ()> {
                out.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
            assert_eq!(out, raw, "chunk {chunk}");
        }
    }

    #[test]
    fn any_range_encodes_as_the_whole_does() {
        let raw = sample();
        let mut whole = raw.clone();
        filter(&mut whole, true);
        let size = raw.len() as u32;
        for (at, n) in [(0usize, 10usize), (1, 1), (2, 7), (3, 64), (1001, 33), (raw.len() - 5, 5), (raw.len() - 1, 1)]
        {
            let start = (at & !1).saturating_sub(2);
            let end = (at + n + 4).min(raw.len());
            let mut w = raw[start..end].to_vec();
            encode_range(&mut w, start as u32, size);
            assert_eq!(&w[at - start..at - start + n], &whole[at..at + n], "at {at} n {n}");
        }
    }
}
