//! Delta patches made by `shared::delta::create` and applied by `shared::delta::Patcher` from a
//! strict NOR flash: every codec and filter, fed in pieces of every size, and damaged patches
//! (truncated, trailing bytes, flipped bits) never panic and never write past the image.
//! The interop with detools itself is in xtask/tests/interop.rs; the power cuts in
//! power_loss.rs.

use shared::delta::{self, Base, Compression, CreateOptions, DeltaError, Filter, Patcher};
use shared::sim::{Rng, SimFlash};

const SLOT: u32 = 64 * 1024;

/// Thumb-like firmware: functions of random halfwords with `BL`s between them; `variant` 1
/// inserts code early and changes a few instructions, so most later functions move.
fn firmware(variant: u32) -> Vec<u8> {
    let mut rng = Rng::new(7);
    let sizes: Vec<usize> = (0..120).map(|_| 40 + 2 * rng.below(60) as usize).collect();
    let grow = |i: usize| if variant == 1 && i == 3 { 36 } else { 0 };
    let mut starts = Vec::new();
    let mut at = 0x400; // an image header's worth of bytes first
    for (i, s) in sizes.iter().enumerate() {
        starts.push(at);
        at += s + grow(i);
    }
    let mut img = vec![0u8; at];
    let mut rng = Rng::new(11);
    for (i, &s) in sizes.iter().enumerate() {
        let mut p = starts[i];
        let end = p + s + grow(i);
        while p + 4 <= end {
            if rng.below(5) == 0 {
                let target = starts[rng.below(sizes.len() as u64) as usize] as i64;
                let off = ((target - (p as i64 + 4)) >> 1) as u32 & 0x3f_ffff;
                img[p..p + 4].copy_from_slice(&[
                    (off >> 11) as u8,
                    0xF0 | ((off >> 19) & 7) as u8,
                    off as u8,
                    0xF8 | ((off >> 8) & 7) as u8,
                ]);
                p += 4;
            } else {
                let (h, tweak) = (rng.below(0xE800) as u16, rng.below(300) == 0);
                let h = if variant == 1 && tweak { h ^ 0x55 } else { h };
                img[p..p + 2].copy_from_slice(&h.to_le_bytes());
                p += 2;
            }
        }
    }
    img
}

fn base_id(base: &[u8]) -> Base {
    use sha2::Digest;
    Base { size: base.len() as u32, sha256: sha2::Sha256::digest(base).into(), version: "1.3".try_into().unwrap() }
}

fn flash_with(base: &[u8]) -> SimFlash<4096, 4> {
    let mut f = SimFlash::<4096, 4>::new(SLOT as usize, 0xFF);
    f.load(0, base);
    f
}

/// Applies `patch` in `chunk`-byte pieces; the rebuilt image, or the first error.
fn apply(patch: &[u8], base: &[u8], chunk: usize) -> Result<Vec<u8>, DeltaError> {
    let mut flash = flash_with(base);
    let mut p = Box::new(Patcher::new());
    p.reset(SLOT, base.len() as u32);
    let mut out = Vec::new(); // its writes must come in order, each byte once
    for c in patch.chunks(chunk) {
        p.feed(c, &mut flash, &mut out)?;
        assert!(out.len() <= SLOT as usize, "nothing past the slot");
    }
    let n = p.finish(&mut flash, &mut out)?;
    assert_eq!(n as usize, out.len());
    Ok(out)
}

fn codecs() -> [Compression; 4] {
    [
        Compression::None,
        Compression::Crle,
        Compression::Heatshrink { window: 8, lookahead: 7 },
        Compression::Heatshrink { window: 11, lookahead: 4 },
    ]
}

#[test]
fn every_codec_and_filter_rebuilds_the_target_in_any_pieces() {
    let (old, new) = (firmware(0), firmware(1));
    assert_ne!(old, new);
    let mut cases = 0;
    for compression in codecs() {
        for (filter, id) in
            [(Filter::None, None), (Filter::None, Some(base_id(&old))), (Filter::Thumb, Some(base_id(&old)))]
        {
            let patch = delta::create(&old, &new, id.as_ref(), &CreateOptions { filter, compression });
            for chunk in [1, 3, 64, 1000, patch.len()] {
                let got = apply(&patch, &old, chunk).unwrap_or_else(|e| panic!("{compression:?} {filter:?}: {e}"));
                assert!(got == new, "{compression:?} {filter:?} in {chunk}-byte pieces: wrong bytes");
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 4 * 3 * 5);
}

#[test]
fn the_thumb_filter_makes_moved_calls_cheap() {
    let (old, new) = (firmware(0), firmware(1));
    let h = Compression::Heatshrink { window: 11, lookahead: 4 };
    let id = base_id(&old);
    let plain = delta::create(&old, &new, Some(&id), &CreateOptions { filter: Filter::None, compression: h });
    let thumb = delta::create(&old, &new, Some(&id), &CreateOptions { filter: Filter::Thumb, compression: h });
    eprintln!("{} byte image: patch {} bytes plain, {} with the Thumb filter", new.len(), plain.len(), thumb.len());
    assert!(thumb.len() < plain.len());
}

#[test]
fn damaged_patches_fail_cleanly_and_never_write_past_the_image() {
    let (old, new) = (firmware(0), firmware(1));
    let mut rng = Rng::new(2026);
    let mut cases = 0;
    for compression in codecs() {
        let patch =
            delta::create(&old, &new, Some(&base_id(&old)), &CreateOptions { filter: Filter::Thumb, compression });
        // Cut short anywhere: an error (never a whole image).
        for _ in 0..20 {
            let n = rng.below(patch.len() as u64) as usize;
            assert!(apply(&patch[..n], &old, 100).is_err(), "{compression:?} cut at {n} of {}", patch.len());
            cases += 1;
        }
        // Trailing bytes.
        let mut long = patch.clone();
        long.extend_from_slice(&[0xA5; 9]);
        assert!(apply(&long, &old, 100).is_err(), "{compression:?}: trailing bytes accepted");
        // Flipped bits: an error, or some image of the stated size (the signature check is what
        // stands after that); never a panic, never a byte past the image.
        for _ in 0..200 {
            let mut bad = patch.clone();
            let i = rng.below(bad.len() as u64) as usize;
            bad[i] ^= 1 << rng.below(8);
            if let Ok(img) = apply(&bad, &old, 77) {
                assert_eq!(img.len(), new.len());
            }
            cases += 1;
        }
    }
    assert_eq!(cases, 4 * 220);
}

#[test]
fn a_patch_that_would_write_past_the_slot_is_refused_at_its_header() {
    let old = firmware(0);
    let big = vec![0x5Au8; SLOT as usize + 2];
    let patch = delta::create(
        &old,
        &big,
        Some(&base_id(&old)),
        &CreateOptions { filter: Filter::None, compression: Compression::Crle },
    );
    assert_eq!(apply(&patch, &old, 50), Err(DeltaError::TooLarge { size: SLOT + 2, slot: SLOT }));
}

#[test]
fn a_patch_of_steps_that_rebuild_nothing_is_refused_at_once() {
    // Found by fuzzing (fuzz/regressions/delta-idle-steps): CRLE's one repeated segment of 805 M
    // zeros read as empty steps (no diff, no extra, no move) kept the patcher busy for minutes,
    // long past any watchdog.
    let patch = [
        0x02, 0xb8, 0x5d, 0x00, 0x03, 0x00, 0xb8, 0x00, 0x01, 0x8e, 0xff, 0xff, 0xff, 0x02, 0x00, 0x37, 0x00, 0x00,
        0x00, 0x00, 0x00, 0xef, 0x02,
    ];
    let e = apply(&patch, &firmware(0), 7).unwrap_err();
    assert!(matches!(e, DeltaError::Corrupt { what: shared::delta::Corruption::Idle, .. }), "{e:?}");
}

#[test]
fn an_error_sticks_and_a_position_far_past_the_base_is_no_panic() {
    use shared::delta::pack_size;
    // Compression none, 2 bytes: extra 'x', a move by i64::MAX (a sum that would overflow), extra
    // 'y': found by review; the move fails as out of the base, whatever comes after.
    let mut p = vec![0x00];
    p.extend(pack_size(2));
    for v in [0, 0, 1] {
        p.extend(pack_size(v));
    }
    p.push(b'x');
    p.extend(pack_size(i64::MAX));
    p.extend(pack_size(0));
    p.extend(pack_size(0));
    p.extend(pack_size(1));
    let mut flash = flash_with(&firmware(0));
    let mut patcher = Box::new(Patcher::new());
    patcher.reset(SLOT, 100);
    let mut sink = Vec::new();
    let e = patcher.feed(&p, &mut flash, &mut sink).err();
    let e2 = patcher.feed(b"y", &mut flash, &mut sink).err();
    // Whether the move itself or the next read says it, the error is the base range, and it
    // sticks: later pieces and `finish` say it again.
    let want = |e: Option<DeltaError>| {
        matches!(e, Some(DeltaError::Corrupt { what: shared::delta::Corruption::BaseRange, .. }))
    };
    assert!(want(e.or(e2)), "{e:?} {e2:?}");
    assert!(want(patcher.finish(&mut flash, &mut sink).err()));
}

// LZMA patches: the remapped base as liblzma's preset dictionary.

const LOAD: u32 = 0x1_0000;

fn remap() -> CreateOptions {
    CreateOptions { filter: Filter::Remap { load: LOAD, shifts: 0 }, compression: Compression::Lzma { dict_size: 0 } }
}

/// Our header and LZMA fields in front of `stream`, a raw LZMA1 stream over `map`'s remapped base.
fn lzma_patch(base: &[u8], to_len: usize, map: &delta::Map, props: u8, dict_size: u32, stream: &[u8]) -> Vec<u8> {
    let mut p = delta::lzma_header(&base_id(base), map, to_len as u32, dict_size);
    let at = p.len() - 8 * map.shifts.len() - 2;
    p[at] = props;
    p.extend_from_slice(stream);
    p
}

#[test]
fn an_lzma_patch_rebuilds_the_target_in_any_pieces_and_beats_heatshrink() {
    let (old, new) = (firmware(0), firmware(1));
    let patch = delta::create(&old, &new, Some(&base_id(&old)), &remap());
    let mut cases = 0;
    for chunk in [1, 2, 19, 20, 21, 64, 1000, patch.len()] {
        let got = apply(&patch, &old, chunk).unwrap_or_else(|e| panic!("{chunk}-byte pieces: {e}"));
        assert!(got == new, "{chunk}-byte pieces: wrong bytes");
        cases += 1;
    }
    assert_eq!(cases, 8);
    let h = Compression::Heatshrink { window: 11, lookahead: 4 };
    let hs = delta::create(&old, &new, Some(&base_id(&old)), &CreateOptions { filter: Filter::Thumb, compression: h });
    eprintln!(
        "{} byte image: LZMA patch {} bytes, heatshrink with the Thumb filter {}",
        new.len(),
        patch.len(),
        hs.len()
    );
    assert!(patch.len() < hs.len());
}

#[test]
fn lzma_streams_interoperate_with_liblzma_both_ways() {
    let mut rng = Rng::new(99);
    let noise: Vec<u8> = (0..5000).map(|_| rng.below(256) as u8).collect();
    let text: Vec<u8> = b"Aliyun OTA, delta: ".iter().cycle().take(9000).copied().collect();
    let pairs =
        [(firmware(0), firmware(1)), (noise.clone(), text.clone()), (text, noise), (vec![0xFF; 64], firmware(1))];
    let mut cases = 0;
    for (base, target) in &pairs {
        let dict_size = delta::dict_size(base.len(), target.len());
        // liblzma's encoder, our decoder: an empty map leaves the base as it is.
        let none = delta::Map { load: LOAD, shifts: Default::default() };
        assert!(none.remap_all(base) == *base);
        let theirs = delta::lzma_raw(base, target, dict_size, true).expect("liblzma encodes");
        let got = apply(&lzma_patch(base, target.len(), &none, 0, dict_size, &theirs), base, 333).unwrap();
        assert!(got == *target, "liblzma's stream, our decoder");
        // Our patch (a map found between them), liblzma's decoder over the same remapped base.
        let map = delta::find_map(base, target, LOAD, 4);
        let ours = delta::create_lzma(base, target, &base_id(base), &map);
        let body = ours.len() - lzma_stream_len(&ours, &map);
        let back = delta::lzma_raw(&map.remap_all(base), &ours[body..], dict_size, false).expect("liblzma decodes");
        assert!(back == *target, "our patch, liblzma's decoder");
        cases += 2;
    }
    assert_eq!(cases, 8);
}

/// Bytes of the LZMA stream at the end of `patch` (after the header and the map).
fn lzma_stream_len(patch: &[u8], map: &delta::Map) -> usize {
    let h = shared::delta::Header::parse(patch, u32::MAX).unwrap().unwrap();
    patch.len() - h.body - 8 * map.shifts.len()
}

#[test]
fn a_damaged_lzma_patch_fails_exactly_where_liblzma_fails() {
    // Differential: every damaged stream our decoder accepts, liblzma decodes to the same bytes,
    // and every one liblzma decodes to an image of the stated size, ours does too.
    let (old, new) = (firmware(0), firmware(1));
    let map = delta::find_map(&old, &new, LOAD, 4);
    let patch = delta::create_lzma(&old, &new, &base_id(&old), &map);
    let body = patch.len() - lzma_stream_len(&patch, &map);
    let (dict, dict_size) = (map.remap_all(&old), delta::dict_size(old.len(), new.len()));
    let mut rng = Rng::new(4242);
    let (mut cases, mut both_ok, mut both_err) = (0, 0, 0);
    for k in 0..400 {
        let mut bad = patch.clone();
        match k % 4 {
            0 => bad.truncate(body + rng.below((patch.len() - body) as u64) as usize),
            1 => bad.extend_from_slice(&[rng.below(256) as u8; 3]),
            _ => {
                let i = body + rng.below((patch.len() - body) as u64) as usize;
                bad[i] ^= 1 << rng.below(8);
            }
        }
        let ours = apply(&bad, &old, 1 + k % 300);
        let theirs = delta::lzma_raw(&dict, &bad[body..], dict_size, false).ok().filter(|o| o.len() == new.len());
        match (&ours, &theirs) {
            (Ok(a), Some(b)) => {
                assert!(a == b, "case {k}: both decode, to different bytes");
                both_ok += 1;
            }
            (Err(_), None) => both_err += 1,
            _ => panic!("case {k}: ours {:?}, liblzma {}", ours.as_ref().map(|v| v.len()), theirs.is_some()),
        }
        cases += 1;
    }
    eprintln!("{cases} damaged patches: {both_ok} decoded by both, {both_err} refused by both");
    assert_eq!(cases, 400);
    assert!(both_err > 300, "{both_err}");
}

#[test]
fn lzma_patches_a_device_cannot_take_are_refused_at_their_header() {
    let (old, new) = (firmware(0), firmware(1));
    let map = delta::Map { load: LOAD, shifts: Default::default() };
    let dict_size = delta::dict_size(old.len(), new.len());
    let stream = delta::lzma_raw(&old, &new, dict_size, true).unwrap();
    let props = lzma_patch(&old, new.len(), &map, 1, dict_size, &stream);
    assert_eq!(apply(&props, &old, 64), Err(DeltaError::Lzma { props: 1, dict_size }));
    let small = lzma_patch(&old, new.len(), &map, 0, 4096, &stream);
    assert_eq!(apply(&small, &old, 64), Err(DeltaError::Lzma { props: 0, dict_size: 4096 }));
    let big = lzma_patch(&old, SLOT as usize + 1, &map, 0, dict_size + SLOT, &stream);
    assert_eq!(apply(&big, &old, 64), Err(DeltaError::TooLarge { size: SLOT + 1, slot: SLOT }));
    // A map out of order, and more shifts than a device holds.
    let mut shifts = heapless::Vec::new();
    shifts.push(delta::Shift { at: 0x800, delta: 4 }).unwrap();
    shifts.push(delta::Shift { at: 0x400, delta: 8 }).unwrap();
    let unsorted = lzma_patch(&old, new.len(), &delta::Map { load: LOAD, shifts }, 0, dict_size, &stream);
    assert!(matches!(apply(&unsorted, &old, 5), Err(DeltaError::Corrupt { what: delta::Corruption::Map, .. })));
    let mut many = lzma_patch(&old, new.len(), &map, 0, dict_size, &stream);
    let at = shared::delta::Header::parse(&many, SLOT).unwrap().unwrap().body - 1;
    many[at] = delta::MAX_SHIFTS as u8 + 1;
    assert_eq!(apply(&many, &old, 64), Err(DeltaError::Header));
    for e in [DeltaError::Lzma { props: 1, dict_size }, DeltaError::Header] {
        assert!(e.is_refusal());
    }
}
