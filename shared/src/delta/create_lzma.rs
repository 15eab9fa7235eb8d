//! Making LZMA patches (host, feature `delta-lzma`): the map of how the code moved, the remapped
//! base, and liblzma's raw LZMA1 encoder with that base as its preset dictionary.

use super::header::{Base, Filter, Header};
use super::remap::{Map, Shift, MAX_SHIFTS};
use lzma_sys as xz;
use std::collections::HashMap;
use std::vec::Vec;

/// Bytes compared to pair a target position with a base position.
const KEY: usize = 12;

/// How the code moved: unique `KEY`-byte matches between base and target at even offsets,
/// sorted by base offset; a shift starts wherever the distance changes and holds for
/// `min_run` matches in a row. At most [`MAX_SHIFTS`]: the shifts with the fewest matches go.
pub fn find_map(base: &[u8], target: &[u8], load: u32, min_run: usize) -> Map {
    let mut index: HashMap<&[u8], Option<u32>> = HashMap::new();
    for i in (0..base.len().saturating_sub(KEY)).step_by(2) {
        index.entry(&base[i..i + KEY]).and_modify(|e| *e = None).or_insert(Some(i as u32));
    }
    let mut pairs: Vec<(u32, i64)> = (0..target.len().saturating_sub(KEY))
        .step_by(2)
        .filter_map(|t| index.get(&target[t..t + KEY]).copied().flatten().map(|b| (b, t as i64 - i64::from(b))))
        .collect();
    pairs.sort_unstable();
    // Runs of equal distance: (base offset, delta, matches).
    let mut runs: Vec<(u32, i64, usize)> = Vec::new();
    let mut i = 0;
    while i < pairs.len() {
        let j = i + pairs[i..].iter().take_while(|p| p.1 == pairs[i].1).count();
        if j - i >= min_run {
            match runs.last_mut() {
                Some(r) if r.1 == pairs[i].1 => r.2 += j - i,
                _ => runs.push((pairs[i].0, pairs[i].1, j - i)),
            }
        }
        i = j;
    }
    runs.retain(|r| i32::try_from(r.1).is_ok());
    // A base position can match more than one target position (the target repeats itself): one
    // shift per position, the first.
    runs.dedup_by_key(|r| r.0);
    while runs.len() > MAX_SHIFTS {
        let weakest = (0..runs.len()).min_by_key(|&k| runs[k].2).expect("not empty");
        runs.remove(weakest);
        runs.dedup_by(|b, a| {
            let same = a.1 == b.1;
            if same {
                a.2 += b.2;
            }
            same
        });
    }
    let mut map = Map { load, shifts: heapless::Vec::new() };
    for (at, delta, _) in runs {
        map.shifts.push(Shift { at, delta: delta as i32 }).expect("at most MAX_SHIFTS");
    }
    map
}

/// The LZMA patch that rebuilds `target` from `base` (both images as linked at `load`) with
/// `map`: our header, the map, then liblzma's raw LZMA1 stream (`lc = lp = pb = 0`, preset 9e,
/// with its end marker) whose dictionary starts as the remapped base.
pub fn create_lzma(base: &[u8], target: &[u8], base_id: &Base, map: &Map) -> Vec<u8> {
    let dict_size = dict_size(base.len(), target.len());
    let mut out = lzma_header(base_id, map, target.len() as u32, dict_size);
    out.extend(lzma_raw(&map.remap_all(base), target, dict_size, true).expect("liblzma encodes in memory"));
    out
}

/// Everything of an LZMA patch before its stream: our header, the LZMA fields (properties 0:
/// lc = lp = pb = 0) and the map.
pub fn lzma_header(base_id: &Base, map: &Map, to_len: u32, dict_size: u32) -> Vec<u8> {
    let mut out = Header::emit_ours(base_id, Filter::Remap { load: map.load, shifts: map.shifts.len() as u8 });
    for w in [map.load, to_len, dict_size] {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.push(0); // properties
    out.push(map.shifts.len() as u8);
    for s in &map.shifts {
        out.extend_from_slice(&s.at.to_le_bytes());
        out.extend_from_slice(&s.delta.to_le_bytes());
    }
    out
}

/// The dictionary an LZMA patch names: base and image together, rounded up to 4 KiB.
pub fn dict_size(base: usize, target: usize) -> u32 {
    ((base + target).div_ceil(4096) * 4096) as u32
}

/// liblzma's raw LZMA1 (`lc = lp = pb = 0`) with `dict` as preset dictionary: `encode` makes the
/// stream of `data` (preset 9e, end marker), otherwise decodes `data` (for the interop tests).
#[allow(unsafe_code)] // liblzma's C API; the only unsafe in shared, host only
pub fn lzma_raw(dict: &[u8], data: &[u8], dict_size: u32, encode: bool) -> Result<Vec<u8>, u32> {
    // SAFETY: liblzma's documented use: zeroed options filled by lzma_lzma_preset, a zeroed
    // stream (LZMA_STREAM_INIT), buffers that outlive every lzma_code call, lzma_end at the end.
    unsafe {
        let mut opts: xz::lzma_options_lzma = core::mem::zeroed();
        if xz::lzma_lzma_preset(&mut opts, 9 | xz::LZMA_PRESET_EXTREME) != 0 {
            return Err(u32::MAX);
        }
        (opts.lc, opts.lp, opts.pb, opts.dict_size) = (0, 0, 0, dict_size);
        opts.nice_len = 273;
        if !dict.is_empty() {
            opts.preset_dict = dict.as_ptr();
            opts.preset_dict_size = dict.len() as u32;
        }
        let filters = [
            xz::lzma_filter { id: xz::LZMA_FILTER_LZMA1, options: (&raw mut opts).cast() },
            xz::lzma_filter { id: xz::LZMA_VLI_UNKNOWN, options: core::ptr::null_mut() },
        ];
        let mut s: xz::lzma_stream = core::mem::zeroed();
        let r = if encode {
            xz::lzma_raw_encoder(&mut s, filters.as_ptr())
        } else {
            xz::lzma_raw_decoder(&mut s, filters.as_ptr())
        };
        if r != xz::LZMA_OK {
            return Err(r);
        }
        let mut out = Vec::with_capacity(data.len() * 2 + 4096);
        let mut buf = std::vec![0u8; 1 << 16];
        s.next_in = data.as_ptr();
        s.avail_in = data.len();
        let r = loop {
            s.next_out = buf.as_mut_ptr();
            s.avail_out = buf.len();
            let r = xz::lzma_code(&mut s, xz::LZMA_FINISH);
            out.extend_from_slice(&buf[..buf.len() - s.avail_out]);
            if r != xz::LZMA_OK || (s.avail_out != 0 && s.avail_in == 0 && !encode) {
                break r;
            }
        };
        xz::lzma_end(&mut s);
        match r {
            xz::LZMA_STREAM_END if !encode && s.avail_in != 0 => Err(xz::LZMA_DATA_ERROR),
            xz::LZMA_STREAM_END => Ok(out),
            xz::LZMA_OK => Err(xz::LZMA_BUF_ERROR),
            e => Err(e),
        }
    }
}
