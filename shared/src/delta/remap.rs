//! The remap filter of LZMA patches: the base as the target would have it, had the code merely
//! moved.
//!
//! Between two builds of a firmware most bytes that differ are addresses: a `BL` whose callee
//! moved, a literal-pool word or a table entry pointing at code or constants that moved. A
//! [`Map`] says how far the code at each base offset moved (a few dozen [`Shift`]s, found by the
//! producer from the matches between the two images), and `T(base)` rewrites, in the base:
//!
//! - every 4-aligned word whose value is an address inside the base image (`load ..
//!   load + base size`): `v + delta(v - load)`;
//! - every candidate Thumb-2 `BL` at an even offset `i` (the ARM-Thumb BCJ's test: bytes
//!   `i+1` and `i+3` are `F0..F7` and `F8..FF`) that shares no word with such an address: its
//!   offset so that it reaches where its callee went from where it went,
//!   `((q + delta(q)) - (i + delta(i)) - 4) / 2` with `q` its old target.
//!
//! `delta(x)` is the delta of the last shift at or before `x` (0 before the first). Every
//! rewrite depends only on the word(s) it touches, so any range of `T(base)` is computed from the
//! base bytes around it ([`Map::remap`] with a margin of one word on each side): the device reads
//! it from ACTIVE on the fly, and the producer computes the whole of it with the same function.
//! A wrong guess costs patch bytes, never correctness: `T(base)` is only the dictionary an LZMA
//! patch copies from, and the rebuilt image is verified as always.

use super::thumb::{field, is_bl, set_field};
use heapless::Vec;

/// Most shifts a patch's map holds (8 bytes of RAM each).
pub const MAX_SHIFTS: usize = 16;

/// From base offset `at` on, the code sits `delta` bytes further in the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Shift {
    /// Base offset where this shift starts.
    pub at: u32,
    /// Bytes the code from here moved (target offset minus base offset).
    pub delta: i32,
}

/// How the code moved between base and target, and where the base is mapped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Map {
    /// Address of the image's first byte on the device (the start of ACTIVE).
    pub load: u32,
    /// Shifts by increasing `at`.
    pub shifts: Vec<Shift, MAX_SHIFTS>,
}

impl Map {
    /// How far the code at base offset `x` moved.
    pub fn delta(&self, x: i64) -> i64 {
        let Ok(x) = u32::try_from(x) else { return 0 };
        let i = self.shifts.partition_point(|s| s.at <= x);
        if i == 0 {
            0
        } else {
            i64::from(self.shifts[i - 1].delta)
        }
    }

    /// The remapped value of the aligned word at `w` of `orig` (base offset `start + w`), if it
    /// is an address inside the base.
    fn address(&self, orig: &[u8], w: usize, base_len: u32) -> Option<u32> {
        let v = u32::from_le_bytes(orig[w..w + 4].try_into().ok()?);
        let off = v.wrapping_sub(self.load);
        (off < base_len).then(|| v.wrapping_add(self.delta(i64::from(off)) as u32))
    }

    /// `out[k] = T(base)[start + k]` where `orig` is `base[start..start + orig.len()]` of a base
    /// of `base_len` bytes (`start` a multiple of 4). Exact for every byte whose words lie in
    /// `orig` or past the base's end: callers read one word more on each side than they need.
    pub fn remap(&self, orig: &[u8], start: u32, base_len: u32, out: &mut [u8]) {
        debug_assert!(start.is_multiple_of(4) && out.len() == orig.len());
        out.copy_from_slice(orig);
        let n = orig.len();
        // Words wholly in `orig` and in the base: None = not an address; words past either
        // end count as not an address only past the base's end.
        let inside = |w: usize| w + 4 <= n && start as usize + w + 4 <= base_len as usize;
        let beyond = |w: usize| start as usize + w + 4 > base_len as usize;
        let mut w = 0;
        while w + 4 <= n {
            if inside(w) {
                if let Some(v) = self.address(orig, w, base_len) {
                    out[w..w + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
            w += 4;
        }
        let mut i = 0;
        while i + 4 <= n {
            let pos = start as usize + i;
            if pos + 4 <= base_len as usize && is_bl(orig, i) {
                // The words this BL touches: one when aligned, else the two around it.
                let words: &[usize] = if i % 4 == 0 { &[i] } else { &[i - 2, i + 2] };
                let free =
                    words.iter().all(
                        |&w| {
                            if inside(w) {
                                self.address(orig, w, base_len).is_none()
                            } else {
                                beyond(w)
                            }
                        },
                    );
                if free {
                    let off = i64::from(((field(orig, i) << 10) as i32) >> 10); // sign-extend 22 bits
                    let (p, q) = (pos as i64, pos as i64 + 4 + 2 * off);
                    set_field(out, i, (((q + self.delta(q)) - (p + self.delta(p)) - 4) >> 1) as u32);
                }
            }
            i += 2;
        }
    }

    /// `T(base)` of a whole base (std: the producer).
    #[cfg(feature = "std")]
    pub fn remap_all(&self, base: &[u8]) -> std::vec::Vec<u8> {
        let mut out = std::vec![0; base.len()];
        self.remap(base, 0, base.len() as u32, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bl(at: usize, target: usize) -> [u8; 4] {
        let off = ((target as i64 - (at as i64 + 4)) >> 1) as u32 & 0x3f_ffff;
        [(off >> 11) as u8, 0xF0 | ((off >> 19) & 7) as u8, off as u8, 0xF8 | ((off >> 8) & 7) as u8]
    }

    fn map() -> Map {
        let mut shifts = Vec::new();
        shifts.push(Shift { at: 0x100, delta: 8 }).unwrap();
        shifts.push(Shift { at: 0x200, delta: -4 }).unwrap();
        Map { load: 0x1000, shifts }
    }

    #[test]
    fn calls_and_addresses_follow_what_moved() {
        let mut base = std::vec![0x11u8; 0x300];
        base[0x40..0x44].copy_from_slice(&bl(0x40, 0x180)); // caller did not move, callee +8
        base[0x182..0x186].copy_from_slice(&bl(0x182, 0x10)); // caller +8, callee did not move
        base[0x80..0x84].copy_from_slice(&(0x1000u32 + 0x181).to_le_bytes()); // a pointer to +8
        base[0x84..0x88].copy_from_slice(&(0x1000u32 + 0x300).to_le_bytes()); // past the base
        let t = map().remap_all(&base);
        assert_eq!(t[0x40..0x44], bl(0x40, 0x188));
        assert_eq!(t[0x182..0x186], bl(0x18a, 0x10));
        assert_eq!(t[0x80..0x84], (0x1000u32 + 0x189).to_le_bytes());
        assert_eq!(t[0x84..0x88], base[0x84..0x88]);
        let changed = base.iter().zip(&t).filter(|(a, b)| a != b).count();
        assert!(changed <= 12, "{changed} bytes changed");
    }

    #[test]
    fn any_window_with_a_word_of_margin_agrees_with_the_whole() {
        let mut rng = crate::sim::Rng::new(5);
        let mut base = std::vec![0u8; 600];
        for (k, b) in base.iter_mut().enumerate() {
            // Dense in candidates: F0..F7 / F8..FF bytes and addresses into the base.
            *b = match rng.below(4) {
                0 => 0xF0 | rng.below(16) as u8,
                1 => (k as u8) ^ 0x10,
                _ => rng.below(256) as u8,
            };
        }
        for w in (0..600).step_by(24) {
            base[w..w + 4].copy_from_slice(&(0x1000u32 + rng.below(700) as u32).to_le_bytes());
        }
        let m = map();
        let whole = m.remap_all(&base);
        let mut checked = 0;
        for p in 0..600usize {
            for n in [1usize, 3, 17, 64] {
                let e = (p + n).min(600);
                let s = (p & !3).saturating_sub(4);
                let end = (((e + 3) & !3) + 4).min(600);
                let mut out = std::vec![0; end - s];
                m.remap(&base[s..end], s as u32, 600, &mut out);
                assert_eq!(out[p - s..e - s], whole[p..e], "window at {p}, {n} bytes");
                checked += 1;
            }
        }
        assert_eq!(checked, 2400);
        assert!(whole != base);
    }
}
