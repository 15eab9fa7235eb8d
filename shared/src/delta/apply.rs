//! [`Patcher`]: a patch in, the rebuilt image out, the base read from flash.

use super::crle::Crle;
use super::header::{Compression, Filter, Header, MAX_HEADER};
use super::heatshrink::Heatshrink;
use super::size::SizeReader;
use super::thumb;
use super::{Corruption, DeltaError};
use embedded_storage::nor_flash::{NorFlashError, ReadNorFlash};
use heapless::Vec;

/// Decompressed bytes handled at once.
const CHUNK: usize = 64;
/// Base bytes read at once: a chunk and the filter's margins (2 before, 4 after).
const BASE_READ: usize = CHUNK + 8;
/// Steps in a row that rebuild nothing (no diff, no extra bytes) before the patch counts as
/// damaged: bsdiff never makes two, and without a bound a few bytes of CRLE (a long run of
/// zeros) would keep a device busy for minutes, its watchdog resetting it over and over.
const MAX_IDLE_STEPS: u8 = 8;

/// `b` to the sink at image offset `*pos`, which moves past it.
fn put(sink: &mut impl FnMut(u32, &[u8]) -> Result<(), ()>, pos: &mut u32, b: &[u8]) -> Result<(), DeltaError> {
    if !b.is_empty() {
        sink(*pos, b).map_err(|()| DeltaError::Write { at: *pos })?;
        *pos += b.len() as u32;
    }
    Ok(())
}

/// What the interpreter of the decompressed stream expects next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    DfSize,
    DiffSize,
    Diff { left: u32 },
    ExtraSize,
    Extra { left: u32 },
    Adjust,
    Done,
}

/// Applies one patch (see [the module docs](super)). Feed it the patch in pieces of any size;
/// it writes the rebuilt image through the sink in order, from offset 0, each byte once.
pub struct Patcher {
    hdr: Vec<u8, MAX_HEADER>,
    header: Option<Header>,
    slot: u32,
    /// Bytes of the base: the header's, or (a plain detools patch) the running image's.
    base_len: u32,
    heatshrink: Heatshrink,
    crle: Crle,
    op: Op,
    size: SizeReader,
    /// Position in the base.
    from: u64,
    /// Bytes rebuilt (before the output filter).
    to_pos: u32,
    /// Bytes handed to the sink.
    out_pos: u32,
    thumb: thumb::Decoder,
    /// Patch bytes taken so far.
    taken: u32,
    /// Bytes of the diff of the step being read.
    step_diff: u32,
    /// Steps in a row that rebuilt nothing.
    idle: u8,
    /// The first error: every later `feed` and `finish` says it again (the last piece of a
    /// download may fail after the machine already asked for the verify).
    failed: Option<DeltaError>,
}

impl Default for Patcher {
    fn default() -> Self {
        Self::new()
    }
}

impl Patcher {
    /// A patcher; [`Patcher::reset`] starts each patch.
    pub const fn new() -> Self {
        Patcher {
            hdr: Vec::new(),
            header: None,
            slot: 0,
            base_len: 0,
            heatshrink: Heatshrink::new(),
            crle: Crle::new(),
            op: Op::DfSize,
            size: SizeReader::new(),
            from: 0,
            to_pos: 0,
            out_pos: 0,
            thumb: thumb::Decoder::new(),
            taken: 0,
            step_diff: 0,
            idle: 0,
            failed: None,
        }
    }

    /// Starts a new patch of an image of at most `slot` bytes. `base_len`: the bytes of the
    /// running image, the base of a patch without our header (ours names its own).
    pub fn reset(&mut self, slot: u32, base_len: u32) {
        self.hdr.clear();
        self.header = None;
        self.slot = slot;
        self.base_len = base_len;
        self.heatshrink.reset();
        self.crle = Crle::new();
        self.op = Op::DfSize;
        self.size = SizeReader::new();
        self.from = 0;
        self.to_pos = 0;
        self.out_pos = 0;
        self.thumb = thumb::Decoder::new();
        self.taken = 0;
        self.step_diff = 0;
        self.idle = 0;
        self.failed = None;
    }

    /// The header, once read.
    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    /// Bytes of the image written so far.
    pub fn written(&self) -> u32 {
        self.out_pos
    }

    /// Takes the next bytes of the patch; rebuilt bytes go to `sink(offset, bytes)`. After an
    /// error it takes nothing more and says that error again.
    pub fn feed<B: ReadNorFlash>(
        &mut self,
        data: &[u8],
        base: &mut B,
        sink: &mut impl FnMut(u32, &[u8]) -> Result<(), ()>,
    ) -> Result<(), DeltaError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let r = self.take(data, base, sink);
        if let Err(e) = r {
            self.failed = Some(e);
        }
        r
    }

    fn take<B: ReadNorFlash>(
        &mut self,
        mut data: &[u8],
        base: &mut B,
        sink: &mut impl FnMut(u32, &[u8]) -> Result<(), ()>,
    ) -> Result<(), DeltaError> {
        if self.header.is_none() {
            let take = data.len().min(MAX_HEADER - self.hdr.len());
            let _ = self.hdr.extend_from_slice(&data[..take]);
            data = &data[take..];
            let Some(h) = Header::parse(&self.hdr, self.slot)? else {
                self.taken += take as u32;
                return Ok(());
            };
            let mut first: Vec<u8, MAX_HEADER> = Vec::new();
            let _ = first.extend_from_slice(&self.hdr[h.body..]);
            self.taken = h.body as u32;
            if let Some(b) = &h.base {
                self.base_len = b.size;
            }
            self.header = Some(h);
            self.body(&first, base, sink)?;
        }
        self.body(data, base, sink)
    }

    /// Decompresses and carries out `input`.
    fn body<B: ReadNorFlash>(
        &mut self,
        mut input: &[u8],
        base: &mut B,
        sink: &mut impl FnMut(u32, &[u8]) -> Result<(), ()>,
    ) -> Result<(), DeltaError> {
        let Some(h) = &self.header else { return Ok(()) };
        let compression = h.compression;
        let mut dec = [0u8; CHUNK];
        loop {
            let before = input.len();
            let at = self.taken;
            let corrupt = |what| DeltaError::Corrupt { what, at };
            let n = match compression {
                Compression::None => {
                    let n = input.len().min(CHUNK);
                    dec[..n].copy_from_slice(&input[..n]);
                    input = &input[n..];
                    n
                }
                Compression::Crle => self.crle.decode(&mut input, &mut dec).map_err(|_| corrupt(Corruption::Crle))?,
                Compression::Heatshrink { window, lookahead } => self
                    .heatshrink
                    .decode(&mut input, &mut dec)
                    .map_err(|_| DeltaError::Window { window, lookahead })?,
            };
            self.taken += (before - input.len()) as u32;
            if n == 0 {
                return Ok(());
            }
            self.run(&dec[..n], base, sink)?;
        }
    }

    /// Carries out decompressed bytes.
    fn run<B: ReadNorFlash>(
        &mut self,
        mut d: &[u8],
        base: &mut B,
        sink: &mut impl FnMut(u32, &[u8]) -> Result<(), ()>,
    ) -> Result<(), DeltaError> {
        let at = self.taken;
        let corrupt = |what| DeltaError::Corrupt { what, at };
        let to_size = self.header.as_ref().map_or(0, |h| h.to_size);
        while let Some((&b, rest)) = d.split_first() {
            match self.op {
                Op::Diff { left } => {
                    let k = (left as usize).min(d.len());
                    let mut buf = [0u8; CHUNK];
                    self.read_base(base, &mut buf[..k])?;
                    for (o, p) in buf[..k].iter_mut().zip(&d[..k]) {
                        *o = o.wrapping_add(*p);
                    }
                    self.emit(&buf[..k], sink)?;
                    self.from += k as u64;
                    d = &d[k..];
                    self.op = if left as usize == k { Op::ExtraSize } else { Op::Diff { left: left - k as u32 } };
                }
                Op::Extra { left } => {
                    let k = (left as usize).min(d.len());
                    self.emit(&d[..k], sink)?;
                    d = &d[k..];
                    self.op = if left as usize == k { Op::Adjust } else { Op::Extra { left: left - k as u32 } };
                }
                Op::Done => return Err(corrupt(Corruption::Trailing)),
                op => {
                    d = rest;
                    let Some(v) = self.size.push(b).map_err(|_| corrupt(Corruption::Size))? else { continue };
                    self.op = match op {
                        Op::DfSize if v == 0 => Op::DiffSize,
                        Op::DfSize => return Err(DeltaError::DataFormat),
                        Op::DiffSize | Op::ExtraSize => {
                            let n = u32::try_from(v).map_err(|_| corrupt(Corruption::Size))?;
                            if u64::from(self.to_pos) + u64::from(n) > u64::from(to_size) {
                                return Err(corrupt(Corruption::TooLong));
                            }
                            self.to_pos += n;
                            if op == Op::DiffSize {
                                self.step_diff = n;
                            } else if n == 0 && self.step_diff == 0 {
                                self.idle += 1;
                                if self.idle > MAX_IDLE_STEPS {
                                    return Err(corrupt(Corruption::Idle));
                                }
                            } else {
                                self.idle = 0;
                            }
                            match (op, n) {
                                (Op::DiffSize, 0) => Op::ExtraSize,
                                (Op::DiffSize, _) => Op::Diff { left: n },
                                (_, 0) => Op::Adjust,
                                _ => Op::Extra { left: n },
                            }
                        }
                        Op::Adjust => {
                            // Checked: a position past the base fails at its next read.
                            let from = i64::try_from(self.from).ok().and_then(|f| f.checked_add(v));
                            self.from =
                                from.and_then(|f| u64::try_from(f).ok()).ok_or(corrupt(Corruption::BaseRange))?;
                            if self.to_pos == to_size {
                                self.end(sink)?;
                                Op::Done
                            } else {
                                Op::DiffSize
                            }
                        }
                        Op::Diff { .. } | Op::Extra { .. } | Op::Done => unreachable!(),
                    };
                }
            }
        }
        Ok(())
    }

    /// `out.len()` bytes of the (filtered) base from `self.from`.
    fn read_base<B: ReadNorFlash>(&self, base: &mut B, out: &mut [u8]) -> Result<(), DeltaError> {
        const { assert!(B::READ_SIZE == 1, "the base is read at byte granularity") };
        let at = self.taken;
        let n = out.len() as u64;
        if self.from + n > u64::from(self.base_len) || self.from + n > base.capacity() as u64 {
            return Err(DeltaError::Corrupt { what: Corruption::BaseRange, at });
        }
        let from = self.from as u32;
        let filter = self.header.as_ref().map_or(Filter::None, |h| h.filter);
        match filter {
            Filter::None => base.read(from, out).map_err(|e| DeltaError::Base(e.kind())),
            Filter::Thumb => {
                let start = (from & !1).saturating_sub(2);
                let end = (from + out.len() as u32 + 4).min(self.base_len).min(base.capacity() as u32);
                let mut raw = [0u8; BASE_READ];
                let raw = &mut raw[..(end - start) as usize];
                base.read(start, raw).map_err(|e| DeltaError::Base(e.kind()))?;
                thumb::encode_range(raw, start, self.base_len);
                let skip = (from - start) as usize;
                out.copy_from_slice(&raw[skip..skip + out.len()]);
                Ok(())
            }
        }
    }

    /// Rebuilt bytes (filtered when the patch is) to the sink.
    fn emit(&mut self, bytes: &[u8], sink: &mut impl FnMut(u32, &[u8]) -> Result<(), ()>) -> Result<(), DeltaError> {
        let filter = self.header.as_ref().map_or(Filter::None, |h| h.filter);
        let pos = &mut self.out_pos;
        let mut put = |b: &[u8]| put(sink, pos, b);
        match filter {
            Filter::None => put(bytes),
            Filter::Thumb => self.thumb.push(bytes, &mut put),
        }
    }

    /// The image is complete: what the filter held back goes out.
    fn end(&mut self, sink: &mut impl FnMut(u32, &[u8]) -> Result<(), ()>) -> Result<(), DeltaError> {
        let pos = &mut self.out_pos;
        self.thumb.finish(&mut |b: &[u8]| put(sink, pos, b))
    }

    /// All of the patch was fed: it must have rebuilt the whole image and ended there. Returns
    /// the image's size.
    pub fn finish(&self) -> Result<u32, DeltaError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let truncated = DeltaError::Corrupt { what: Corruption::Truncated, at: self.taken };
        let Some(h) = &self.header else { return Err(truncated) };
        let idle = match h.compression {
            Compression::None => true,
            Compression::Crle => self.crle.idle(),
            Compression::Heatshrink { .. } => self.heatshrink.idle(),
        };
        if self.op != Op::Done || self.out_pos != h.to_size {
            return Err(truncated);
        }
        if !idle {
            return Err(DeltaError::Corrupt { what: Corruption::Trailing, at: self.taken });
        }
        Ok(h.to_size)
    }
}
