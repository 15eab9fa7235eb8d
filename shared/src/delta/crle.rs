//! detools' CRLE (conditional run-length encoding), streaming: segments of a kind byte (0
//! scattered, 1 repeated) and a size (7 bits per byte, least significant first); a scattered
//! segment's bytes follow it, a repeated one has one byte, repeated `size` times.

use super::size::LebReader;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    Kind,
    ScatteredSize,
    Scattered { left: u32 },
    RepeatedSize,
    RepeatedByte { count: u32 },
    Repeat { byte: u8, left: u32 },
}

/// The decoder.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Crle {
    st: St,
    size: LebReader,
}

impl Crle {
    pub(crate) const fn new() -> Self {
        Crle { st: St::Kind, size: LebReader::new() }
    }

    /// Decodes into `out` from `input` (advanced past what it used); 0 when it needs input.
    /// `Err` for a segment kind other than 0 and 1, or a size over 32 bits.
    pub(crate) fn decode(&mut self, input: &mut &[u8], out: &mut [u8]) -> Result<usize, ()> {
        let mut n = 0;
        while n < out.len() {
            match self.st {
                St::Scattered { left } => {
                    let k = (left as usize).min(out.len() - n).min(input.len());
                    if k == 0 {
                        break;
                    }
                    out[n..n + k].copy_from_slice(&input[..k]);
                    *input = &input[k..];
                    n += k;
                    let left = left - k as u32;
                    self.st = if left == 0 { St::Kind } else { St::Scattered { left } };
                }
                St::Repeat { byte, left } => {
                    let k = (left as usize).min(out.len() - n);
                    out[n..n + k].fill(byte);
                    n += k;
                    let left = left - k as u32;
                    self.st = if left == 0 { St::Kind } else { St::Repeat { byte, left } };
                }
                st => {
                    let Some((&b, rest)) = input.split_first() else { break };
                    *input = rest;
                    self.st = match st {
                        St::Kind => match b {
                            0 => St::ScatteredSize,
                            1 => St::RepeatedSize,
                            _ => return Err(()),
                        },
                        St::ScatteredSize => match self.size.push(b)? {
                            None => St::ScatteredSize,
                            Some(0) => St::Kind,
                            Some(left) => St::Scattered { left },
                        },
                        St::RepeatedSize => match self.size.push(b)? {
                            None => St::RepeatedSize,
                            Some(count) => St::RepeatedByte { count },
                        },
                        St::RepeatedByte { count: 0 } => St::Kind,
                        St::RepeatedByte { count } => St::Repeat { byte: b, left: count },
                        St::Scattered { .. } | St::Repeat { .. } => unreachable!(),
                    };
                }
            }
        }
        Ok(n)
    }

    /// Whether it sits between segments.
    pub(crate) fn idle(&self) -> bool {
        self.st == St::Kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scattered_and_repeated_segments_in_any_chunking() {
        // scattered "abc", repeated 200 x 'z' (size 200 = c8 01), scattered "!"
        let stream = [0, 3, b'a', b'b', b'c', 1, 0xc8, 0x01, b'z', 0, 1, b'!'];
        let mut want = b"abc".to_vec();
        want.extend([b'z'; 200]);
        want.push(b'!');
        for chunk in 1..=stream.len() {
            let mut d = Crle::new();
            let mut out = Vec::new();
            for c in stream.chunks(chunk) {
                let mut input = c;
                loop {
                    let mut buf = [0u8; 5];
                    let n = d.decode(&mut input, &mut buf).unwrap();
                    out.extend_from_slice(&buf[..n]);
                    if n == 0 {
                        break;
                    }
                }
            }
            assert_eq!(out, want, "chunk {chunk}");
            assert!(d.idle());
        }
    }

    #[test]
    fn an_unknown_kind_is_an_error() {
        let mut input: &[u8] = &[2, 1, 0];
        assert_eq!(Crle::new().decode(&mut input, &mut [0; 4]), Err(()));
    }
}
