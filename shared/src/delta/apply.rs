//! [`Patcher`]: a patch in, the rebuilt image out, the base read from flash.

use super::crle::Crle;
use super::header::{Compression, Filter, Header, MAX_HEADER};
use super::heatshrink::Heatshrink;
use super::lzma::{Dict, Lzma, LzmaError};
use super::remap::{Map, Shift};
use super::size::SizeReader;
use super::thumb;
use super::{Corruption, DeltaError};
use embedded_storage::nor_flash::{NorFlash, NorFlashError, ReadNorFlash};
use heapless::Vec;

/// Decompressed bytes handled at once.
const CHUNK: usize = 64;
/// Base bytes read at once: a chunk and the filter's margins (2 before, 4 after).
const BASE_READ: usize = CHUNK + 8;
/// Base bytes read at once for the remap: a chunk, aligned, and a word on each side.
const BASE_WINDOW: usize = CHUNK + 12;
/// Steps in a row that rebuild nothing (no diff, no extra bytes) before the patch counts as
/// damaged: bsdiff never makes two, and without a bound a few bytes of CRLE (a long run of
/// zeros) would keep a device busy for minutes, its watchdog resetting it over and over.
const MAX_IDLE_STEPS: u8 = 8;

/// Where the rebuilt image goes (the DFU writer), and where an LZMA patch reads back what was
/// already rebuilt (it copies from it).
pub trait Rebuilt {
    /// Why a write or read failed (the patcher reports where).
    type Error;
    /// Appends `bytes` at image offset `at` (the bytes written so far).
    fn write(&mut self, at: u32, bytes: &[u8]) -> Result<(), Self::Error>;
    /// Reads `out.len()` bytes written before, from image offset `at`.
    fn read(&mut self, at: u32, out: &mut [u8]) -> Result<(), Self::Error>;
}

impl<D: NorFlash, S: NorFlash> Rebuilt for crate::boot::Updater<D, S> {
    type Error = crate::boot::UpdateError;

    fn write(&mut self, at: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        crate::boot::Updater::write(self, at, bytes)
    }

    fn read(&mut self, at: u32, out: &mut [u8]) -> Result<(), Self::Error> {
        const { assert!(D::READ_SIZE == 1, "DFU is read back at byte granularity") };
        self.read_back(at, out)
    }
}

/// An image in memory (host tools and tests): writes must come in order, each byte once.
#[cfg(feature = "std")]
impl Rebuilt for std::vec::Vec<u8> {
    type Error = ();

    fn write(&mut self, at: u32, bytes: &[u8]) -> Result<(), ()> {
        if at as usize != self.len() {
            return Err(());
        }
        self.extend_from_slice(bytes);
        Ok(())
    }

    fn read(&mut self, at: u32, out: &mut [u8]) -> Result<(), ()> {
        let b = self.get(at as usize..at as usize + out.len()).ok_or(())?;
        out.copy_from_slice(b);
        Ok(())
    }
}

/// `b` to the sink at image offset `*pos`, which moves past it.
fn put(sink: &mut impl Rebuilt, pos: &mut u32, b: &[u8]) -> Result<(), DeltaError> {
    if !b.is_empty() {
        sink.write(*pos, b).map_err(|_| DeltaError::Write { at: *pos })?;
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

/// Where a patch is: its header being read, then one of the two kinds being applied. The
/// variants differ in size on purpose: one lives at a time, in the patcher's static RAM.
#[allow(clippy::large_enum_variant)]
enum Stage {
    Head(Vec<u8, MAX_HEADER>),
    Detools(Detools),
    Lzma(LzmaPatch),
}

/// A detools sequential patch being applied.
struct Detools {
    heatshrink: Heatshrink,
    crle: Crle,
    op: Op,
    size: SizeReader,
    /// Position in the base.
    from: u64,
    /// Bytes rebuilt (before the output filter).
    to_pos: u32,
    thumb: thumb::Decoder,
    /// Bytes of the diff of the step being read.
    step_diff: u32,
    /// Steps in a row that rebuilt nothing.
    idle: u8,
}

/// An LZMA patch being applied: its map read first, then the stream.
struct LzmaPatch {
    map: Map,
    /// Shifts still to read, and the bytes of the one being read.
    want: u8,
    part: Vec<u8, 8>,
    dec: Lzma,
}

/// Applies one patch (see [the module docs](super)). Feed it the patch in pieces of any size;
/// it writes the rebuilt image through the sink in order, from offset 0, each byte once.
pub struct Patcher {
    slot: u32,
    /// Bytes of the base: the header's, or (a plain detools patch) the running image's.
    base_len: u32,
    /// What the header says.
    filter: Filter,
    compression: Compression,
    to_size: u32,
    stage: Stage,
    /// Bytes handed to the sink.
    out_pos: u32,
    /// Patch bytes taken so far.
    taken: u32,
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
            slot: 0,
            base_len: 0,
            filter: Filter::None,
            compression: Compression::None,
            to_size: 0,
            stage: Stage::Head(Vec::new()),
            out_pos: 0,
            taken: 0,
            failed: None,
        }
    }

    /// Starts a new patch of an image of at most `slot` bytes. `base_len`: the bytes of the
    /// running image, the base of a patch without our header (ours names its own).
    pub fn reset(&mut self, slot: u32, base_len: u32) {
        self.slot = slot;
        self.base_len = base_len;
        self.stage = Stage::Head(Vec::new());
        self.out_pos = 0;
        self.taken = 0;
        self.failed = None;
    }

    /// Bytes of the image written so far.
    pub fn written(&self) -> u32 {
        self.out_pos
    }

    /// Takes the next bytes of the patch; rebuilt bytes go to the sink. After an error it
    /// takes nothing more and says that error again.
    pub fn feed<B: ReadNorFlash>(
        &mut self,
        data: &[u8],
        base: &mut B,
        sink: &mut impl Rebuilt,
    ) -> Result<(), DeltaError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let r = self.take(data, false, base, sink);
        if let Err(e) = r {
            self.failed = Some(e);
        }
        r
    }

    /// All of the patch was fed: what it still holds is carried out, and it must have rebuilt
    /// the whole image and ended there. Returns the image's size.
    pub fn finish<B: ReadNorFlash>(&mut self, base: &mut B, sink: &mut impl Rebuilt) -> Result<u32, DeltaError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let r = self.take(&[], true, base, sink).and_then(|()| self.complete());
        if let Err(e) = r {
            self.failed = Some(e);
        }
        r
    }

    fn complete(&self) -> Result<u32, DeltaError> {
        let truncated = DeltaError::Corrupt { what: Corruption::Truncated, at: self.taken };
        let trailing = DeltaError::Corrupt { what: Corruption::Trailing, at: self.taken };
        match &self.stage {
            Stage::Head(_) => Err(truncated),
            Stage::Detools(d) => {
                let idle = match self.compression {
                    Compression::Crle => d.crle.idle(),
                    Compression::Heatshrink { .. } => d.heatshrink.idle(),
                    Compression::None | Compression::Lzma { .. } => true,
                };
                if d.op != Op::Done || self.out_pos != self.to_size {
                    Err(truncated)
                } else if !idle {
                    Err(trailing)
                } else {
                    Ok(self.to_size)
                }
            }
            Stage::Lzma(l) if !l.dec.ended() || self.out_pos != self.to_size => Err(truncated),
            Stage::Lzma(_) => Ok(self.to_size),
        }
    }

    fn take<B: ReadNorFlash>(
        &mut self,
        mut data: &[u8],
        last: bool,
        base: &mut B,
        sink: &mut impl Rebuilt,
    ) -> Result<(), DeltaError> {
        const { assert!(B::READ_SIZE == 1, "the base is read at byte granularity") };
        if let Stage::Head(hdr) = &mut self.stage {
            let take = data.len().min(MAX_HEADER - hdr.len());
            let _ = hdr.extend_from_slice(&data[..take]);
            data = &data[take..];
            let Some(h) = Header::parse(hdr, self.slot)? else {
                self.taken += take as u32;
                return Ok(());
            };
            let mut first: Vec<u8, MAX_HEADER> = Vec::new();
            let _ = first.extend_from_slice(&hdr[h.body..]);
            self.taken = h.body as u32;
            if let Some(b) = &h.base {
                self.base_len = b.size;
            }
            (self.filter, self.compression, self.to_size) = (h.filter, h.compression, h.to_size);
            self.stage = match h.filter {
                Filter::Remap { load, shifts } => Stage::Lzma(LzmaPatch {
                    map: Map { load, shifts: Vec::new() },
                    want: shifts,
                    part: Vec::new(),
                    dec: Lzma::new(self.base_len, h.to_size),
                }),
                Filter::None | Filter::Thumb => Stage::Detools(Detools::new()),
            };
            self.body(&first, false, base, sink)?;
        }
        self.body(data, last, base, sink)
    }

    /// Carries out `input`, the patch after its header.
    fn body<B: ReadNorFlash>(
        &mut self,
        input: &[u8],
        last: bool,
        base: &mut B,
        sink: &mut impl Rebuilt,
    ) -> Result<(), DeltaError> {
        let ctx = Ctx { base_len: self.base_len, filter: self.filter, to_size: self.to_size };
        match &mut self.stage {
            Stage::Head(_) => Ok(()),
            Stage::Detools(d) => d.body(input, &ctx, self.compression, &mut self.taken, &mut self.out_pos, base, sink),
            Stage::Lzma(l) => l.body(input, last, &ctx, &mut self.taken, &mut self.out_pos, base, sink),
        }
    }
}

/// What the header fixed.
struct Ctx {
    base_len: u32,
    filter: Filter,
    to_size: u32,
}

impl Detools {
    const fn new() -> Self {
        Detools {
            heatshrink: Heatshrink::new(),
            crle: Crle::new(),
            op: Op::DfSize,
            size: SizeReader::new(),
            from: 0,
            to_pos: 0,
            thumb: thumb::Decoder::new(),
            step_diff: 0,
            idle: 0,
        }
    }

    /// Decompresses and carries out `input`.
    #[allow(clippy::too_many_arguments)]
    fn body<B: ReadNorFlash>(
        &mut self,
        mut input: &[u8],
        ctx: &Ctx,
        compression: Compression,
        taken: &mut u32,
        out_pos: &mut u32,
        base: &mut B,
        sink: &mut impl Rebuilt,
    ) -> Result<(), DeltaError> {
        let mut dec = [0u8; CHUNK];
        loop {
            let before = input.len();
            let at = *taken;
            let corrupt = |what| DeltaError::Corrupt { what, at };
            let n = match compression {
                Compression::None | Compression::Lzma { .. } => {
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
            *taken += (before - input.len()) as u32;
            if n == 0 {
                return Ok(());
            }
            self.run(&dec[..n], ctx, *taken, out_pos, base, sink)?;
        }
    }

    /// Carries out decompressed bytes.
    fn run<B: ReadNorFlash>(
        &mut self,
        mut d: &[u8],
        ctx: &Ctx,
        at: u32,
        out_pos: &mut u32,
        base: &mut B,
        sink: &mut impl Rebuilt,
    ) -> Result<(), DeltaError> {
        let corrupt = |what| DeltaError::Corrupt { what, at };
        let to_size = ctx.to_size;
        while let Some((&b, rest)) = d.split_first() {
            match self.op {
                Op::Diff { left } => {
                    let k = (left as usize).min(d.len());
                    let mut buf = [0u8; CHUNK];
                    self.read_base(base, ctx, at, &mut buf[..k])?;
                    for (o, p) in buf[..k].iter_mut().zip(&d[..k]) {
                        *o = o.wrapping_add(*p);
                    }
                    self.emit(&buf[..k], ctx, &mut *out_pos, sink)?;
                    self.from += k as u64;
                    d = &d[k..];
                    self.op = if left as usize == k { Op::ExtraSize } else { Op::Diff { left: left - k as u32 } };
                }
                Op::Extra { left } => {
                    let k = (left as usize).min(d.len());
                    self.emit(&d[..k], ctx, &mut *out_pos, sink)?;
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
                                let pos = &mut *out_pos;
                                self.thumb.finish(&mut |b: &[u8]| put(sink, pos, b))?;
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
    fn read_base<B: ReadNorFlash>(&self, base: &mut B, ctx: &Ctx, at: u32, out: &mut [u8]) -> Result<(), DeltaError> {
        let n = out.len() as u64;
        if self.from + n > u64::from(ctx.base_len) || self.from + n > base.capacity() as u64 {
            return Err(DeltaError::Corrupt { what: Corruption::BaseRange, at });
        }
        let from = self.from as u32;
        match ctx.filter {
            Filter::Thumb => {
                let start = (from & !1).saturating_sub(2);
                let end = (from + out.len() as u32 + 4).min(ctx.base_len).min(base.capacity() as u32);
                let mut raw = [0u8; BASE_READ];
                let raw = &mut raw[..(end - start) as usize];
                base.read(start, raw).map_err(|e| DeltaError::Base(e.kind()))?;
                thumb::encode_range(raw, start, ctx.base_len);
                let skip = (from - start) as usize;
                out.copy_from_slice(&raw[skip..skip + out.len()]);
                Ok(())
            }
            _ => base.read(from, out).map_err(|e| DeltaError::Base(e.kind())),
        }
    }

    /// Rebuilt bytes (filtered when the patch is) to the sink.
    fn emit(&mut self, bytes: &[u8], ctx: &Ctx, pos: &mut u32, sink: &mut impl Rebuilt) -> Result<(), DeltaError> {
        let mut put = |b: &[u8]| put(sink, pos, b);
        match ctx.filter {
            Filter::Thumb => self.thumb.push(bytes, &mut put),
            _ => put(bytes),
        }
    }
}

impl LzmaPatch {
    /// Reads the map, then decodes the stream.
    #[allow(clippy::too_many_arguments)]
    fn body<B: ReadNorFlash>(
        &mut self,
        mut input: &[u8],
        last: bool,
        ctx: &Ctx,
        taken: &mut u32,
        out_pos: &mut u32,
        base: &mut B,
        sink: &mut impl Rebuilt,
    ) -> Result<(), DeltaError> {
        while self.want > 0 {
            let Some((&b, rest)) = input.split_first() else {
                return if last {
                    Err(DeltaError::Corrupt { what: Corruption::Truncated, at: *taken })
                } else {
                    Ok(())
                };
            };
            input = rest;
            *taken += 1;
            let _ = self.part.push(b);
            if self.part.is_full() {
                let p = &self.part;
                let at = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
                let delta = i32::from_le_bytes([p[4], p[5], p[6], p[7]]);
                self.part.clear();
                if self.map.shifts.last().is_some_and(|s| s.at >= at) {
                    return Err(DeltaError::Corrupt { what: Corruption::Map, at: *taken - 8 });
                }
                let _ = self.map.shifts.push(Shift { at, delta });
                self.want -= 1;
            }
        }
        let mut d = Window {
            base,
            sink,
            map: &self.map,
            base_len: ctx.base_len,
            out_pos: *out_pos,
            pend: [0; CHUNK],
            pend_len: 0,
        };
        let r = self.dec.feed(input, last, &mut d).and_then(|()| d.flush().map_err(LzmaError::Dict));
        *out_pos = d.out_pos;
        *taken += input.len() as u32;
        r.map_err(|e| {
            let at = *taken;
            match e {
                LzmaError::Corrupt => DeltaError::Corrupt { what: Corruption::Lzma, at },
                LzmaError::Truncated => DeltaError::Corrupt { what: Corruption::Truncated, at },
                LzmaError::Trailing => DeltaError::Corrupt { what: Corruption::Trailing, at },
                LzmaError::Dict(e) => e,
            }
        })
    }
}

/// The LZMA dictionary: the remapped base, then the image rebuilt so far (in DFU, and its last
/// bytes still here).
struct Window<'a, B, R> {
    base: &'a mut B,
    sink: &'a mut R,
    map: &'a Map,
    base_len: u32,
    /// Bytes in the sink.
    out_pos: u32,
    pend: [u8; CHUNK],
    pend_len: usize,
}

impl<B: ReadNorFlash, R: Rebuilt> Window<'_, B, R> {
    fn flush(&mut self) -> Result<(), DeltaError> {
        let n = core::mem::take(&mut self.pend_len);
        put(self.sink, &mut self.out_pos, &self.pend[..n])
    }

    /// `out.len()` bytes of the remapped base from `from`, within one chunk.
    fn base(&mut self, from: u32, out: &mut [u8]) -> Result<(), DeltaError> {
        let end = from + out.len() as u32;
        if end > self.base.capacity() as u32 {
            return Err(DeltaError::Corrupt { what: Corruption::BaseRange, at: 0 });
        }
        let s = (from & !3).saturating_sub(4);
        let e = (((end + 3) & !3) + 4).min(self.base_len).min(self.base.capacity() as u32);
        let (mut raw, mut t) = ([0u8; BASE_WINDOW], [0u8; BASE_WINDOW]);
        let n = (e - s) as usize;
        self.base.read(s, &mut raw[..n]).map_err(|e| DeltaError::Base(e.kind()))?;
        self.map.remap(&raw[..n], s, self.base_len, &mut t[..n]);
        let k = (from - s) as usize;
        out.copy_from_slice(&t[k..k + out.len()]);
        Ok(())
    }
}

impl<B: ReadNorFlash, R: Rebuilt> Dict for Window<'_, B, R> {
    type Error = DeltaError;

    fn read(&mut self, dist: u32, out: &mut [u8]) -> Result<(), DeltaError> {
        // Position in base ++ image; the caller checked it exists.
        let written = self.out_pos + self.pend_len as u32;
        let mut p = u64::from(self.base_len) + u64::from(written) - u64::from(dist);
        let mut out = out;
        while !out.is_empty() {
            let n;
            if p < u64::from(self.base_len) {
                n = out.len().min((u64::from(self.base_len) - p) as usize);
                self.base(p as u32, &mut out[..n])?;
            } else {
                let o = (p - u64::from(self.base_len)) as u32;
                if o < self.out_pos {
                    n = out.len().min((self.out_pos - o) as usize);
                    self.sink.read(o, &mut out[..n]).map_err(|_| DeltaError::ReadBack { at: o })?;
                } else {
                    let k = (o - self.out_pos) as usize;
                    n = out.len().min(self.pend_len - k);
                    out[..n].copy_from_slice(&self.pend[k..k + n]);
                }
            }
            out = &mut out[n..];
            p += n as u64;
        }
        Ok(())
    }

    fn put(&mut self, mut bytes: &[u8]) -> Result<(), DeltaError> {
        while !bytes.is_empty() {
            if self.pend_len == CHUNK {
                self.flush()?;
            }
            let n = bytes.len().min(CHUNK - self.pend_len);
            self.pend[self.pend_len..self.pend_len + n].copy_from_slice(&bytes[..n]);
            self.pend_len += n;
            bytes = &bytes[n..];
        }
        Ok(())
    }
}
