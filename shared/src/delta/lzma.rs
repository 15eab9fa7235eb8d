//! An LZMA1 decoder whose dictionary is not in RAM: liblzma's raw LZMA1 stream (`lc = lp = pb =
//! 0`, ending with its end marker), decoded one symbol at a time; every copy is read through
//! [`Dict`], which the patcher serves from the remapped base in ACTIVE and from the image already
//! rebuilt in DFU. RAM: the 1,774 probabilities (3,548 bytes), the range coder, the four
//! distances and a small input buffer.
//!
//! Follows the LZMA specification's reference decoder (`LzmaSpec.cpp`, Igor Pavlov, public
//! domain): the same probability model, state machine and distance coding. The interop tests
//! decode what liblzma's encoder made, with and without a preset dictionary.

/// Input a symbol may need at most (liblzma's `LZMA_IN_REQUIRED`): a symbol is decoded only
/// once this much is buffered, or the stream has ended.
const REQUIRED: usize = 20;
/// Input buffered between calls.
const INBUF: usize = 2 * REQUIRED;

const STATES: usize = 12;
const IS_MATCH: usize = 0;
const IS_REP: usize = IS_MATCH + STATES;
const IS_REP_G0: usize = IS_REP + STATES;
const IS_REP_G1: usize = IS_REP_G0 + STATES;
const IS_REP_G2: usize = IS_REP_G1 + STATES;
const IS_REP0_LONG: usize = IS_REP_G2 + STATES;
/// 4 length states x 64 slots.
const POS_SLOT: usize = IS_REP0_LONG + STATES;
/// Distances 4..127: 114 (LzmaSpec has 115; index 0 of a reverse tree is never used, so the last
/// cell, shared with ALIGN[0], is read by slot 13 alone).
const SPEC_POS: usize = POS_SLOT + 4 * 64;
const ALIGN: usize = SPEC_POS + 114;
const LEN: usize = ALIGN + 16; // choice, choice 2, low 8, mid 8, high 256
const LEN_SIZE: usize = 2 + 8 + 8 + 256;
const REP_LEN: usize = LEN + LEN_SIZE;
const LITERAL: usize = REP_LEN + LEN_SIZE; // 0x300 with lc = lp = 0
/// Probabilities of the model.
pub const PROBS: usize = LITERAL + 0x300;

const MATCH_MIN: u32 = 2;
/// The end marker's distance.
const END: u32 = 0xFFFF_FFFF;

/// Where copies come from: the bytes `dist` back from the current position (1 = the last).
pub(crate) trait Dict {
    /// Error of a read.
    type Error;
    /// Copies `out.len()` bytes starting `dist` bytes back (`dist >= out.len()`).
    fn read(&mut self, dist: u32, out: &mut [u8]) -> Result<(), Self::Error>;
    /// Appends decoded bytes.
    fn put(&mut self, bytes: &[u8]) -> Result<(), Self::Error>;
}

/// What went wrong decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LzmaError<E> {
    /// The stream is inconsistent (a distance past what exists, a bad first byte, data past the
    /// size, a nonzero code after the end marker).
    Corrupt,
    /// The stream ended before its end marker.
    Truncated,
    /// Bytes after the end marker.
    Trailing,
    /// The dictionary failed.
    Dict(E),
}

/// One symbol's outcome.
enum Out {
    Literal(u8),
    /// `len` bytes from `dist` back.
    Copy {
        dist: u32,
        len: u32,
    },
    End,
}

/// The decoder: the model, the range coder's state and the input not decoded yet.
#[derive(Clone, Debug)]
pub(crate) struct Lzma {
    model: Model,
    range: u32,
    code: u32,
    inbuf: [u8; INBUF],
    in_len: u8,
    /// Range coder bytes read at the start (5 before the first symbol).
    init: u8,
    ended: bool,
}

/// What decoding a symbol reads and changes besides the range coder.
#[derive(Clone, Debug)]
struct Model {
    probs: [u16; PROBS],
    state: u8,
    reps: [u32; 4],
    /// Bytes decoded so far, and the bytes before them a copy may reach (the base).
    pos: u32,
    avail_before: u32,
    size: u32,
}

/// The range decoder over a slice, with the position it reached.
struct Rc<'a> {
    range: u32,
    code: u32,
    inp: &'a [u8],
    at: usize,
    short: bool,
}

impl Rc<'_> {
    fn byte(&mut self) -> u8 {
        match self.inp.get(self.at) {
            Some(&b) => {
                self.at += 1;
                b
            }
            None => {
                self.short = true;
                0
            }
        }
    }

    fn normalize(&mut self) {
        if self.range < 1 << 24 {
            self.range <<= 8;
            self.code = (self.code << 8) | u32::from(self.byte());
        }
    }

    fn bit(&mut self, p: &mut u16) -> u32 {
        let bound = (self.range >> 11) * u32::from(*p);
        let b = if self.code < bound {
            self.range = bound;
            *p += (2048 - *p) >> 5;
            0
        } else {
            self.range -= bound;
            self.code -= bound;
            *p -= *p >> 5;
            1
        };
        self.normalize();
        b
    }

    fn direct(&mut self, n: u32) -> u32 {
        let mut r = 0u32;
        for _ in 0..n {
            self.range >>= 1;
            self.code = self.code.wrapping_sub(self.range);
            let t = 0u32.wrapping_sub(self.code >> 31);
            self.code = self.code.wrapping_add(self.range & t);
            r = (r << 1).wrapping_add(t.wrapping_add(1));
            self.normalize();
        }
        r
    }

    fn tree(&mut self, probs: &mut [u16], bits: u32) -> u32 {
        let mut m = 1usize;
        for _ in 0..bits {
            m = (m << 1) + self.bit(&mut probs[m]) as usize;
        }
        m as u32 - (1 << bits)
    }

    fn reverse(&mut self, probs: &mut [u16], bits: u32) -> u32 {
        let (mut m, mut sym) = (1usize, 0u32);
        for i in 0..bits {
            let b = self.bit(&mut probs[m]);
            m = (m << 1) + b as usize;
            sym |= b << i;
        }
        sym
    }

    fn len(&mut self, p: &mut [u16]) -> u32 {
        if self.bit(&mut p[0]) == 0 {
            return self.tree(&mut p[2..10], 3);
        }
        if self.bit(&mut p[1]) == 0 {
            return 8 + self.tree(&mut p[10..18], 3);
        }
        16 + self.tree(&mut p[18..], 8)
    }
}

impl Lzma {
    /// A decoder for `size` bytes after `avail_before` bytes of preset dictionary.
    pub(crate) const fn new(avail_before: u32, size: u32) -> Self {
        Lzma {
            model: Model { probs: [1024; PROBS], state: 0, reps: [0; 4], pos: 0, avail_before, size },
            range: 0xFFFF_FFFF,
            code: 0,
            inbuf: [0; INBUF],
            in_len: 0,
            init: 0,
            ended: false,
        }
    }

    /// Whether the end marker was read (and the stream ended right there).
    pub(crate) fn ended(&self) -> bool {
        self.ended
    }

    /// Takes stream bytes; decodes every symbol that is surely complete. `last`: no more input
    /// will come, decode what is buffered to the end.
    pub(crate) fn feed<D: Dict>(&mut self, mut data: &[u8], last: bool, d: &mut D) -> Result<(), LzmaError<D::Error>> {
        loop {
            if self.ended {
                return if data.is_empty() && self.in_len == 0 { Ok(()) } else { Err(LzmaError::Trailing) };
            }
            let have = self.in_len as usize;
            let take = data.len().min(INBUF - have);
            self.inbuf[have..have + take].copy_from_slice(&data[..take]);
            data = &data[take..];
            let n = have + take;
            self.in_len = n as u8;
            let mut used = 0;
            while self.init < 5 {
                let Some(&b) = self.inbuf[..n].get(used) else { break };
                if self.init == 0 && b != 0 {
                    return Err(LzmaError::Corrupt);
                }
                self.code = (self.code << 8) | u32::from(b);
                self.init += 1;
                used += 1;
                if self.init == 5 && self.code == self.range {
                    return Err(LzmaError::Corrupt);
                }
            }
            let final_part = last && data.is_empty();
            while self.init == 5 && !self.ended && (n - used >= REQUIRED || (final_part && n > used)) {
                let mut rc = Rc { range: self.range, code: self.code, inp: &self.inbuf[used..n], at: 0, short: false };
                let step = self.model.symbol(&mut rc, d);
                if rc.short {
                    return Err(LzmaError::Truncated);
                }
                let (range, code, at) = (rc.range, rc.code, rc.at);
                let out = step?;
                self.range = range;
                self.code = code;
                used += at;
                match out {
                    Out::Literal(b) => {
                        d.put(&[b]).map_err(LzmaError::Dict)?;
                        self.model.pos += 1;
                    }
                    Out::Copy { dist, len } => {
                        copy_match(d, dist, len)?;
                        self.model.pos += len;
                    }
                    Out::End if self.code != 0 => return Err(LzmaError::Corrupt),
                    Out::End => self.ended = true,
                }
            }
            self.inbuf.copy_within(used..n, 0);
            self.in_len = (n - used) as u8;
            if data.is_empty() {
                if final_part && !self.ended {
                    return Err(LzmaError::Truncated);
                }
                if self.ended && self.in_len > 0 {
                    return Err(LzmaError::Trailing);
                }
                return Ok(());
            }
        }
    }
}

impl Model {
    /// Decodes one symbol (a literal, a copy or the end) for the caller to carry out.
    fn symbol<D: Dict>(&mut self, rc: &mut Rc<'_>, d: &mut D) -> Result<Out, LzmaError<D::Error>> {
        let (s, pos, size) = (self.state as usize, self.pos, self.size);
        let avail = u64::from(self.avail_before) + u64::from(pos);
        let Model { probs, state, reps, .. } = self;
        if rc.bit(&mut probs[IS_MATCH + s]) == 0 {
            if pos >= size {
                return Err(LzmaError::Corrupt);
            }
            let lit = &mut probs[LITERAL..];
            let mut sym = 1usize;
            if s >= 7 {
                if u64::from(reps[0]) >= avail {
                    return Err(LzmaError::Corrupt);
                }
                let mut m = [0u8];
                d.read(reps[0] + 1, &mut m).map_err(LzmaError::Dict)?;
                let mut mb = u32::from(m[0]);
                while sym < 0x100 {
                    let match_bit = ((mb >> 7) & 1) as usize;
                    mb <<= 1;
                    let b = rc.bit(&mut lit[((1 + match_bit) << 8) + sym]) as usize;
                    sym = (sym << 1) | b;
                    if match_bit != b {
                        break;
                    }
                }
            }
            while sym < 0x100 {
                sym = (sym << 1) | rc.bit(&mut lit[sym]) as usize;
            }
            *state = match *state {
                0..=3 => 0,
                4..=9 => *state - 3,
                _ => *state - 6,
            };
            return Ok(Out::Literal(sym as u8));
        }
        let len;
        if rc.bit(&mut probs[IS_REP + s]) == 0 {
            len = rc.len(&mut probs[LEN..LEN + LEN_SIZE]);
            *state = if s < 7 { 7 } else { 10 };
            let slot = rc.tree(&mut probs[POS_SLOT + 64 * (len.min(3) as usize)..][..64], 6);
            let dist = if slot < 4 {
                slot
            } else {
                let direct = (slot >> 1) - 1;
                let mut dist = (2 | (slot & 1)) << direct;
                if slot < 14 {
                    dist += rc.reverse(&mut probs[SPEC_POS + dist as usize - slot as usize..], direct);
                } else {
                    dist = dist.wrapping_add(rc.direct(direct - 4) << 4);
                    dist = dist.wrapping_add(rc.reverse(&mut probs[ALIGN..ALIGN + 16], 4));
                }
                dist
            };
            if dist == END {
                return if pos == size { Ok(Out::End) } else { Err(LzmaError::Corrupt) };
            }
            reps.copy_within(0..3, 1);
            reps[0] = dist;
        } else {
            if rc.bit(&mut probs[IS_REP_G0 + s]) == 0 {
                if rc.bit(&mut probs[IS_REP0_LONG + s]) == 0 {
                    *state = if s < 7 { 9 } else { 11 };
                    return Self::checked(reps[0], 1, avail, pos, size);
                }
            } else {
                let dist;
                if rc.bit(&mut probs[IS_REP_G1 + s]) == 0 {
                    dist = reps[1];
                } else {
                    if rc.bit(&mut probs[IS_REP_G2 + s]) == 0 {
                        dist = reps[2];
                    } else {
                        dist = reps[3];
                        reps[3] = reps[2];
                    }
                    reps[2] = reps[1];
                }
                reps[1] = reps[0];
                reps[0] = dist;
            }
            len = rc.len(&mut probs[REP_LEN..REP_LEN + LEN_SIZE]);
            *state = if s < 7 { 8 } else { 11 };
        }
        Self::checked(reps[0], len + MATCH_MIN, avail, pos, size)
    }

    /// A copy of `len` bytes from `rep + 1` back, if it stays inside what exists and the size.
    fn checked<E>(rep: u32, len: u32, avail: u64, pos: u32, size: u32) -> Result<Out, LzmaError<E>> {
        if u64::from(rep) >= avail || u64::from(pos) + u64::from(len) > u64::from(size) {
            return Err(LzmaError::Corrupt);
        }
        Ok(Out::Copy { dist: rep + 1, len })
    }
}

/// Copies `len` bytes from `dist` back, in pieces that never overlap what they write.
fn copy_match<D: Dict>(d: &mut D, dist: u32, mut len: u32) -> Result<(), LzmaError<D::Error>> {
    let mut buf = [0u8; 64];
    while len > 0 {
        let n = len.min(dist).min(buf.len() as u32) as usize;
        d.read(dist, &mut buf[..n]).map_err(LzmaError::Dict)?;
        d.put(&buf[..n]).map_err(LzmaError::Dict)?;
        len -= n as u32;
    }
    Ok(())
}
