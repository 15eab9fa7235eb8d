//! A differential package's patch (`shared::delta::Patcher`: our header, detools' sequential
//! header, the none / crle / heatshrink decoders, the bsdiff steps, the ARM-Thumb filter) against
//! a fixed base in a flash model. The first byte sets the piece size the patch is fed in. Never
//! panics; writes go to the sink in order, each byte once, never past the slot; a patch that
//! finishes rebuilt exactly the size its header states; the same patch fed in other pieces
//! gives the same bytes and the same verdict.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shared::delta::{Header, Patcher};
use shared::sim::SimFlash;

const SLOT: u32 = 16 * 1024;

fn base() -> SimFlash<4096, 4> {
    let mut f = SimFlash::<4096, 4>::new(8192, 0xFF);
    let bytes: Vec<u8> = (0..6000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    f.load(0, &bytes);
    f
}

/// Feeds `patch` in `piece`-byte pieces: the rebuilt bytes and how it ended.
fn apply(patch: &[u8], piece: usize) -> (Vec<u8>, Result<u32, shared::delta::DeltaError>) {
    let mut flash = base();
    let mut p = Box::new(Patcher::new());
    p.reset(SLOT, 6000);
    let mut out = Vec::new();
    for c in patch.chunks(piece) {
        let r = p.feed(c, &mut flash, &mut out);
        assert!(out.len() <= SLOT as usize, "a write past the slot");
        if let Err(e) = r {
            return (out, Err(e));
        }
    }
    let r = p.finish(&mut flash, &mut out);
    assert!(out.len() <= SLOT as usize, "a write past the slot");
    (out, r)
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, patch)) = data.split_first() else { return };
    let (out, r) = apply(patch, 1 + ctl as usize % 97);
    if let Ok(n) = r {
        assert_eq!(n as usize, out.len(), "finished short of the stated size");
        let h = Header::parse(patch, SLOT).expect("a finished patch has a header").expect("complete");
        assert_eq!(h.to_size, n);
    }
    // Fed whole, the same outcome and bytes.
    let (out2, r2) = apply(patch, patch.len().max(1));
    assert_eq!(r.is_ok(), r2.is_ok(), "the verdict depends on how the patch is cut");
    if r.is_ok() {
        assert!(out == out2, "the bytes depend on how the patch is cut");
    }
});
