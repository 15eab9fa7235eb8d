//! Making patches (host side, `std`): filter, bsdiff, detools' sequential stream, compression.

use super::header::{Base, Compression, Filter, Header};
use super::thumb;
use std::vec::Vec;

/// How to make a patch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreateOptions {
    /// Branch filter (with our header only).
    pub filter: Filter,
    /// Codec of the stream.
    pub compression: Compression,
}

/// A detools size (see the module docs of [`super`]).
pub fn pack_size(v: i64) -> Vec<u8> {
    let mut out = Vec::new();
    let (neg, mut m) = (v < 0, v.unsigned_abs());
    let mut first = (m & 0x3f) as u8;
    if neg {
        first |= 0x40;
    }
    m >>= 6;
    out.push(first);
    while m > 0 {
        *out.last_mut().expect("one byte") |= 0x80;
        out.push((m & 0x7f) as u8);
        m >>= 7;
    }
    out
}

/// The patch that rebuilds `target` from `base`: our header naming `base_id` (and the filter),
/// or with `base_id` None a plain detools sequential patch (`opts.filter` must then be None).
///
/// With [`Filter::Remap`] (feature `delta-lzma`), an LZMA patch (the compression is then LZMA's,
/// whatever `opts` says) with the map [`super::find_map`] finds.
pub fn create(base: &[u8], target: &[u8], base_id: Option<&Base>, opts: &CreateOptions) -> Vec<u8> {
    assert!(base_id.is_some() || opts.filter == Filter::None, "a filter needs our header to say so");
    if let (Filter::Remap { load, .. }, Some(id)) = (opts.filter, base_id) {
        return lzma(base, target, id, load, 4).0;
    }
    let s = stream(base, target, opts.filter);
    assemble(base_id, opts, target.len(), &s)
}

/// The smallest patch over `filters` and every heatshrink window and lookahead a device decodes
/// (windows of 2^8..=2^[`super::MAX_WINDOW_BITS`] bytes; long copies suit the zero runs of a
/// patch between near-identical images, short ones new code), and the options chosen.
///
/// [`Filter::Remap`] in `filters` (feature `delta-lzma`) adds LZMA patches, with maps of
/// shifts that hold for at least 2, 4, 8 and 16 matches.
pub fn create_smallest(base: &[u8], target: &[u8], base_id: &Base, filters: &[Filter]) -> (Vec<u8>, CreateOptions) {
    let mut best: Option<(Vec<u8>, CreateOptions)> = None;
    for &filter in filters {
        if let Filter::Remap { load, .. } = filter {
            for min_run in [2, 4, 8, 16] {
                let (p, opts) = lzma(base, target, base_id, load, min_run);
                if best.as_ref().is_none_or(|b| p.len() < b.0.len()) {
                    best = Some((p, opts));
                }
            }
            continue;
        }
        let s = stream(base, target, filter);
        let table = matches(&s, 1 << (super::MAX_WINDOW_BITS - 1));
        for window in WINDOWS {
            for lookahead in 4..window {
                let opts = CreateOptions { filter, compression: Compression::Heatshrink { window, lookahead } };
                let mut p = headers(Some(base_id), &opts, target.len());
                p.extend(heatshrink_with(&s, &table, window, lookahead));
                if best.as_ref().is_none_or(|b| p.len() < b.0.len()) {
                    best = Some((p, opts));
                }
            }
        }
    }
    best.expect("at least one filter")
}

/// An LZMA patch and what it is.
#[cfg(feature = "delta-lzma")]
fn lzma(base: &[u8], target: &[u8], base_id: &Base, load: u32, min_run: usize) -> (Vec<u8>, CreateOptions) {
    let map = super::find_map(base, target, load, min_run);
    let opts = CreateOptions {
        filter: Filter::Remap { load, shifts: map.shifts.len() as u8 },
        compression: Compression::Lzma { dict_size: super::create_lzma::dict_size(base.len(), target.len()) },
    };
    (super::create_lzma(base, target, base_id, &map), opts)
}

#[cfg(not(feature = "delta-lzma"))]
fn lzma(_: &[u8], _: &[u8], _: &Base, _: u32, _: usize) -> (Vec<u8>, CreateOptions) {
    panic!("LZMA patches are made with shared's feature delta-lzma")
}

/// detools' uncompressed sequential stream from `base` to `target`: no data format, then bsdiff's
/// (diff, extra, adjustment) steps.
fn stream(base: &[u8], target: &[u8], filter: Filter) -> Vec<u8> {
    let (mut b, mut t) = (base.to_vec(), target.to_vec());
    if filter == Filter::Thumb {
        thumb::filter(&mut b, true);
        thumb::filter(&mut t, true);
    }
    let mut controls = Vec::new();
    bsdiff::diff(&b, &t, &mut controls).expect("diffing in memory");
    // bsdiff's stream: (add, copy, seek) as 8-byte LE words (seek sign-magnitude), then the add
    // bytes, then the copy bytes: detools' diff, extra and adjustment, one for one.
    let mut stream = pack_size(0); // no data format
    let mut c = controls.as_slice();
    let word = |c: &[u8]| u64::from_le_bytes(c[..8].try_into().expect("8 bytes"));
    while !c.is_empty() {
        let (add, copy, seek) = (word(c) as usize, word(&c[8..]) as usize, word(&c[16..]));
        let seek = if seek >> 63 == 1 { -((seek & !(1 << 63)) as i64) } else { seek as i64 };
        c = &c[24..];
        stream.extend(pack_size(add as i64));
        stream.extend_from_slice(&c[..add]);
        stream.extend(pack_size(copy as i64));
        stream.extend_from_slice(&c[add..add + copy]);
        stream.extend(pack_size(seek));
        c = &c[add + copy..];
    }
    stream
}

/// The headers, then `stream` compressed.
fn assemble(base_id: Option<&Base>, opts: &CreateOptions, to_len: usize, stream: &[u8]) -> Vec<u8> {
    let mut out = headers(base_id, opts, to_len);
    match opts.compression {
        Compression::None => out.extend_from_slice(stream),
        Compression::Crle => out.extend(crle_compress(stream)),
        Compression::Heatshrink { window, lookahead } => out.extend(heatshrink_compress(stream, window, lookahead)),
        Compression::Lzma { .. } => unreachable!("LZMA patches are made by create_lzma"),
    }
    out
}

/// Our header (when the base is named) and detools' (the codec, the size rebuilt).
fn headers(base_id: Option<&Base>, opts: &CreateOptions, to_len: usize) -> Vec<u8> {
    let mut out = base_id.map_or_else(Vec::new, |id| Header::emit_ours(id, opts.filter));
    out.push(opts.compression.number());
    out.extend(pack_size(to_len as i64));
    out
}

/// detools' CRLE: runs of 6 or more equal bytes as repeated segments, the rest scattered.
fn crle_compress(data: &[u8]) -> Vec<u8> {
    fn leb(mut v: usize, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            out.push(if v > 0 { b | 0x80 } else { b });
            if v == 0 {
                break;
            }
        }
    }
    let mut out = Vec::new();
    let mut lit = 0; // start of the pending scattered bytes
    let mut i = 0;
    while i < data.len() {
        let run = data[i..].iter().take_while(|&&x| x == data[i]).count();
        if run >= 6 {
            if lit < i {
                out.push(0);
                leb(i - lit, &mut out);
                out.extend_from_slice(&data[lit..i]);
            }
            out.push(1);
            leb(run, &mut out);
            out.push(data[i]);
            i += run;
            lit = i;
        } else {
            i += run;
        }
    }
    if lit < data.len() || data.is_empty() {
        out.push(0);
        leb(data.len() - lit, &mut out);
        out.extend_from_slice(&data[lit..]);
    }
    out
}

/// The windows (bits) the producer tries: detools' default (8) up to what a device decodes.
const WINDOWS: core::ops::RangeInclusive<u8> = 8..=super::MAX_WINDOW_BITS;

/// For each position of `data` and each window of [`WINDOWS`]: the longest earlier match within
/// that window (length, distance), lengths up to `max_len`. One walk of a hash chain of 2-byte
/// prefixes, nearest first, fills every window at once.
fn matches(data: &[u8], max_len: usize) -> Vec<[(u16, u16); 4]> {
    const { assert!(*WINDOWS.end() - *WINDOWS.start() == 3) };
    let n = data.len();
    let widest = 1usize << WINDOWS.end();
    let mut best = vec![[(0u16, 0u16); 4]; n];
    let mut head = vec![usize::MAX; 1 << 16];
    let mut prev = vec![usize::MAX; n];
    for i in 0..n.saturating_sub(1) {
        let h = usize::from(u16::from_le_bytes([data[i], data[i + 1]]));
        let mut j = head[h];
        let limit = max_len.min(n - i);
        let mut found = [(0u16, 0u16); 4];
        let mut longest = 0;
        // The previous position's match, one byte on, is a match here too (a run costs O(1) a
        // byte instead of `max_len`): start from it.
        if let Some(&[.., (pl, pd)]) = i.checked_sub(1).map(|p| &best[p]) {
            let d = usize::from(pd);
            if pl > 1 && d <= i {
                let mut l = (usize::from(pl) - 1).min(limit);
                while l < limit && data[i + l] == data[i + l - d] {
                    l += 1;
                }
                longest = l;
                for (k, w) in WINDOWS.enumerate() {
                    if d <= 1 << w {
                        found[k] = (l as u16, d as u16);
                    }
                }
                if l == limit && d <= 1 << WINDOWS.start() {
                    j = usize::MAX; // the longest possible, in every window: no need to look
                }
            }
        }
        while j != usize::MAX && i - j <= widest {
            // Only a match longer than the longest so far counts: its last byte must agree.
            if longest >= limit || data[j + longest] != data[i + longest] {
                j = prev[j];
                continue;
            }
            let l = data[i..i + limit].iter().zip(&data[j..]).take_while(|(a, b)| a == b).count();
            if l > longest {
                longest = l;
                // Nearest first: a match found now is the longest so far for every window that
                // reaches it.
                for (k, w) in WINDOWS.enumerate() {
                    if i - j <= 1 << w && l > usize::from(found[k].0) {
                        found[k] = (l as u16, (i - j) as u16);
                    }
                }
                if l == limit {
                    break;
                }
            }
            j = prev[j];
        }
        // A window that saw no longer match takes the best of a narrower one.
        for k in 1..4 {
            if found[k].0 < found[k - 1].0 {
                found[k] = found[k - 1];
            }
        }
        best[i] = found;
        prev[i] = head[h];
        head[h] = i;
    }
    best
}

/// heatshrink with a window of 2^`window` and matches of up to 2^`lookahead` bytes, parsed
/// optimally (fewest bits: a literal is 9, a copy 1 + window + lookahead, whatever its length),
/// detools' parameter byte first. Copies never reach before the start (the decoder's window
/// starts zeroed, but not every encoder relies on that).
pub fn heatshrink_compress(data: &[u8], window: u8, lookahead: u8) -> Vec<u8> {
    assert!(WINDOWS.contains(&window) && (3..window).contains(&lookahead), "heatshrink {window}/{lookahead}");
    heatshrink_with(data, &matches(data, 1 << lookahead), window, lookahead)
}

/// [`heatshrink_compress`] from a match table made by [`matches`] (with lengths of at least
/// 2^`lookahead`).
fn heatshrink_with(data: &[u8], table: &[[(u16, u16); 4]], window: u8, lookahead: u8) -> Vec<u8> {
    let n = data.len();
    let k = usize::from(window - WINDOWS.start());
    let max_len = 1u16 << lookahead;
    let copy_bits = 1 + u32::from(window) + u32::from(lookahead);
    // Cheapest parse, from the end. A copy costs the same whatever its length: the lengths worth
    // trying are the longest and the short ones (a long run of zeros would otherwise cost a
    // thousand tries per byte with a 1 KiB lookahead).
    let mut cost = vec![u32::MAX; n + 1];
    let mut choice = vec![0u16; n + 1]; // 0: literal, else copy length
    cost[n] = 0;
    for i in (0..n).rev() {
        cost[i] = 9 + cost[i + 1];
        choice[i] = 0;
        let len = usize::from(table[i][k].0.min(max_len));
        for l in (2..=len.min(64)).chain((len > 64).then_some(len)) {
            let c = copy_bits + cost[i + l];
            if c < cost[i] {
                cost[i] = c;
                choice[i] = l as u16;
            }
        }
    }
    let mut w = BitWriter::default();
    let mut i = 0;
    while i < n {
        match choice[i] {
            0 => {
                w.put(1, 1);
                w.put(u32::from(data[i]), 8);
                i += 1;
            }
            l => {
                let dist = u32::from(table[i][k].1);
                w.put(0, 1);
                w.put(dist - 1, window);
                w.put(u32::from(l) - 1, lookahead);
                i += usize::from(l);
            }
        }
    }
    let mut out = vec![((window - 4) << 4) | (lookahead - 3)];
    out.extend(w.finish());
    out
}

#[derive(Default)]
struct BitWriter {
    out: Vec<u8>,
    acc: u32,
    n: u8,
}

impl BitWriter {
    fn put(&mut self, v: u32, bits: u8) {
        for k in (0..bits).rev() {
            self.acc = (self.acc << 1) | ((v >> k) & 1);
            self.n += 1;
            if self.n == 8 {
                self.out.push(self.acc as u8);
                (self.acc, self.n) = (0, 0);
            }
        }
    }
    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push((self.acc << (8 - self.n)) as u8);
        }
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_pack_as_detools_does() {
        // detools.common.pack_size
        assert_eq!(pack_size(0), [0x00]);
        assert_eq!(pack_size(5), [0x05]);
        assert_eq!(pack_size(63), [0x3f]);
        assert_eq!(pack_size(64), [0x80, 0x01]);
        assert_eq!(pack_size(-1), [0x41]);
        assert_eq!(pack_size(-100), [0xe4, 0x01]);
        let mut r = super::super::size::SizeReader::new();
        for v in [0i64, 1, -1, 63, 64, -64, 1 << 20, -(1 << 40), i64::MAX / 2] {
            let p = pack_size(v);
            let got = p.iter().map(|&b| r.push(b).unwrap()).last().unwrap();
            assert_eq!(got, Some(v));
        }
    }
}
