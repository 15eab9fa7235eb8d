//! A streaming heatshrink decoder whose window and lookahead come from the stream (detools puts
//! them in the first byte), with a window buffer of at most 2^[`MAX_WINDOW_BITS`] bytes.
//!
//! Written here rather than taken from a crate: the no_std heatshrink crates fix the window at
//! compile time (`heatshrink-lib`'s const generics) or need an allocator (`embedded-heatshrink`),
//! and a patch names its window at run time. It is checked against heatshrink's C code through
//! Python's `heatshrink2` (detools' interop tests) and fuzzed (`fuzz/fuzz_targets/delta.rs`).
//!
//! The bit stream, most significant bit first: `1` + 8 bits is a literal byte; `0` + `window`
//! bits (distance - 1) + `lookahead` bits (count - 1) copies `count` bytes from `distance` back
//! (the copy may overlap what it writes). The window starts zeroed, as heatshrink's does.

use super::MAX_WINDOW_BITS;

const WINDOW: usize = 1 << MAX_WINDOW_BITS;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    /// The parameter byte.
    Params,
    Tag,
    Literal,
    Index,
    Count {
        index: u16,
    },
    Copy {
        distance: u16,
        left: u16,
    },
}

/// The decoder; see the module docs.
pub(crate) struct Heatshrink {
    window: [u8; WINDOW],
    head: u16,
    w: u8,
    l: u8,
    st: St,
    /// Bits read and not used yet: the low `nbits` of `acc`.
    acc: u32,
    nbits: u8,
}

impl Heatshrink {
    pub(crate) const fn new() -> Self {
        Heatshrink { window: [0; WINDOW], head: 0, w: 0, l: 0, st: St::Params, acc: 0, nbits: 0 }
    }

    /// The next `n` (<= 15) bits, pulling bytes from `input` as needed; `None` when it runs out.
    fn bits(&mut self, input: &mut &[u8], n: u8) -> Option<u16> {
        while self.nbits < n {
            let (&b, rest) = input.split_first()?;
            *input = rest;
            self.acc = (self.acc << 8) | u32::from(b);
            self.nbits += 8;
        }
        self.nbits -= n;
        let v = (self.acc >> self.nbits) & ((1 << n) - 1);
        self.acc &= (1 << self.nbits) - 1;
        Some(v as u16)
    }

    fn put(&mut self, b: u8) {
        let mask = (1u16 << self.w) - 1;
        self.window[(self.head & mask) as usize] = b;
        self.head = self.head.wrapping_add(1);
    }

    /// Decodes into `out` from `input` (advanced past what it used); returns the bytes written,
    /// 0 when it needs input. The parameters were checked by [`super::Header::parse`]; a stream
    /// that asks for more is refused with `Err`.
    pub(crate) fn decode(&mut self, input: &mut &[u8], out: &mut [u8]) -> Result<usize, ()> {
        let mut n = 0;
        while n < out.len() {
            match self.st {
                St::Params => {
                    let Some((&p, rest)) = input.split_first() else { break };
                    *input = rest;
                    let (w, l) = ((p >> 4) + 4, (p & 0x0f) + 3);
                    if w > MAX_WINDOW_BITS || l >= w {
                        return Err(());
                    }
                    (self.w, self.l) = (w, l);
                    self.st = St::Tag;
                }
                St::Tag => match self.bits(input, 1) {
                    None => break,
                    Some(1) => self.st = St::Literal,
                    Some(_) => self.st = St::Index,
                },
                St::Literal => {
                    let Some(b) = self.bits(input, 8) else { break };
                    self.put(b as u8);
                    out[n] = b as u8;
                    n += 1;
                    self.st = St::Tag;
                }
                St::Index => {
                    let Some(i) = self.bits(input, self.w) else { break };
                    self.st = St::Count { index: i };
                }
                St::Count { index } => {
                    let Some(c) = self.bits(input, self.l) else { break };
                    self.st = St::Copy { distance: index + 1, left: c + 1 };
                }
                St::Copy { distance, left } => {
                    let mask = (1u16 << self.w) - 1;
                    let b = self.window[(self.head.wrapping_sub(distance) & mask) as usize];
                    self.put(b);
                    out[n] = b;
                    n += 1;
                    self.st = if left == 1 { St::Tag } else { St::Copy { distance, left: left - 1 } };
                }
            }
        }
        Ok(n)
    }

    /// Whether no copy is half done (bits of the last byte left over are padding).
    pub(crate) fn idle(&self) -> bool {
        !matches!(self.st, St::Copy { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(stream: &[u8], chunk: usize) -> Vec<u8> {
        let mut d = Box::new(Heatshrink::new());
        let mut out = Vec::new();
        for c in stream.chunks(chunk) {
            let mut input = c;
            loop {
                let mut buf = [0u8; 7];
                let n = d.decode(&mut input, &mut buf).unwrap();
                out.extend_from_slice(&buf[..n]);
                if n == 0 && input.is_empty() {
                    break;
                }
            }
        }
        out
    }

    #[test]
    fn literals_and_an_overlapping_copy() {
        // w 8, l 4: 1'a'(9 bits) 1'b' 0 index=1 (distance 2) count=5 (6 bytes): "ab" + "ababab"
        let mut bits = String::new();
        bits += "1";
        bits += &format!("{:08b}", b'a');
        bits += "1";
        bits += &format!("{:08b}", b'b');
        bits += "0";
        bits += &format!("{:08b}", 1);
        bits += &format!("{:04b}", 5);
        while !bits.len().is_multiple_of(8) {
            bits.push('0');
        }
        let mut stream = vec![0x41]; // window 8, lookahead 4
        stream
            .extend(bits.as_bytes().chunks(8).map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 2).unwrap()));
        for chunk in 1..=stream.len() {
            assert_eq!(decode_all(&stream, chunk), b"abababab", "chunk {chunk}");
        }
    }

    #[test]
    fn a_window_over_the_device_limit_is_refused() {
        let mut d = Box::new(Heatshrink::new());
        let mut input: &[u8] = &[0x84, 0xff];
        assert_eq!(d.decode(&mut input, &mut [0u8; 4]), Err(()));
    }
}
