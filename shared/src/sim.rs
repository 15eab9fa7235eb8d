//! Flash simulation for host tests (feature `sim`), after MCUboot's simflash.
//!
//! [`SimFlash`] is a strict NOR model: erase sets a page to the erased value; a write may only
//! program erased words (programming moves bits away from the erased value); writing a word that
//! is already programmed, or a misaligned write or erase, **panics**, because it is a bug in the
//! code under test. A word left half-programmed by a power cut is *torn*: re-programming it works
//! on plain NOR (bits only move one way) but fails with an error in ECC mode, as on STM32
//! L4/G4/H7/U5. A page left half-erased holds *garbage*, which behaves the same way: programmable
//! on plain NOR (bits only move one way, whatever they were), an error with ECC.
//!
//! [`FaultyFlash`] wraps a flash and cuts the power at mutating operation N: before it, after it,
//! or torn in the middle. From then on every operation fails with [`SimError::PowerLoss`] until
//! [`FaultyFlash::power_cycle`]. Randomness comes from a seeded generator; the seed is in every
//! report, so any failure replays.

use embedded_storage::nor_flash::{ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash};
use std::fmt;

/// A tiny deterministic generator (xorshift64*), so runs replay from their seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeds the generator (0 is mapped to a fixed non-zero state).
    pub fn new(seed: u64) -> Self {
        // splitmix64 of the seed: neighbouring seeds give unrelated streams.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// What a simulated flash operation can fail with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimError {
    /// The power is off (cut by [`FaultyFlash`]).
    PowerLoss,
    /// ECC flash refused to re-program a torn word.
    EccReprogram {
        /// offset of the word
        offset: u32,
    },
    /// Outside the device.
    OutOfBounds,
}

impl NorFlashError for SimError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            SimError::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            _ => NorFlashErrorKind::Other,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Word {
    Erased,
    Programmed,
    /// Half-programmed by a cut write.
    Torn,
    /// Left by a cut erase.
    Garbage,
}

/// Erase and write counts, for wear measurements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wear {
    /// Pages erased.
    pub erases: u64,
    /// Write operations.
    pub writes: u64,
    /// Bytes programmed.
    pub bytes_written: u64,
}

/// A strict NOR flash of `ERASE`-byte pages and `WRITE`-byte words.
#[derive(Clone)]
pub struct SimFlash<const ERASE: usize, const WRITE: usize> {
    data: Vec<u8>,
    words: Vec<Word>,
    erased: u8,
    ecc: bool,
    wear: Wear,
}

impl<const ERASE: usize, const WRITE: usize> fmt::Debug for SimFlash<ERASE, WRITE> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SimFlash<{ERASE}, {WRITE}>({} bytes, erased {:#04x}, ecc {})",
            self.data.len(),
            self.erased,
            self.ecc
        )
    }
}

impl<const ERASE: usize, const WRITE: usize> SimFlash<ERASE, WRITE> {
    /// An erased flash of `size` bytes (whole pages) reading back `erased` (0xFF or 0x00).
    pub fn new(size: usize, erased: u8) -> Self {
        const { assert!(ERASE.is_multiple_of(WRITE) && WRITE.is_power_of_two()) };
        assert!(size.is_multiple_of(ERASE), "size must be whole pages");
        assert!(erased == 0xFF || erased == 0x00);
        SimFlash {
            data: vec![erased; size],
            words: vec![Word::Erased; size / WRITE],
            erased,
            ecc: false,
            wear: Wear::default(),
        }
    }

    /// ECC mode: re-programming a torn word fails.
    pub fn with_ecc(mut self, ecc: bool) -> Self {
        self.ecc = ecc;
        self
    }

    /// The contents.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// Erases and writes so far.
    pub fn wear(&self) -> Wear {
        self.wear
    }

    /// Places `bytes` at `offset` as a programmer would (page-erases first, pads the last word
    /// with the erased value). For setting up tests.
    pub fn load(&mut self, offset: usize, bytes: &[u8]) {
        let first = offset / ERASE * ERASE;
        let end = (offset + bytes.len()).div_ceil(ERASE) * ERASE;
        let keep: Vec<u8> = self.data[first..end].to_vec();
        self.erase_range(first, end);
        let mut page = keep;
        page[offset - first..offset - first + bytes.len()].copy_from_slice(bytes);
        for (w, chunk) in page.chunks(WRITE).enumerate() {
            if chunk.iter().any(|&b| b != self.erased) {
                self.program(first + w * WRITE, chunk);
            }
        }
    }

    fn erase_range(&mut self, from: usize, to: usize) {
        self.data[from..to].fill(self.erased);
        self.words[from / WRITE..to / WRITE].fill(Word::Erased);
    }

    /// Programs one word from the erased state.
    fn program(&mut self, at: usize, word: &[u8]) {
        for (d, &s) in self.data[at..at + WRITE].iter_mut().zip(word) {
            *d = if self.erased == 0xFF { *d & s } else { *d | s };
        }
        self.words[at / WRITE] = Word::Programmed;
    }

    fn check_range(&self, off: u32, len: usize) -> Result<(), SimError> {
        if off as usize + len > self.data.len() {
            Err(SimError::OutOfBounds)
        } else {
            Ok(())
        }
    }

    /// Writes words `[0, n)` of `bytes` fully, word `n` partly (random bits), the rest not at all.
    fn write_torn(&mut self, off: u32, bytes: &[u8], rng: &mut Rng) {
        let words = bytes.len() / WRITE;
        let n = rng.below(words as u64) as usize;
        for w in 0..n {
            let at = off as usize + w * WRITE;
            self.write_word(at, &bytes[w * WRITE..(w + 1) * WRITE]).expect("torn write prefix");
        }
        let at = off as usize + n * WRITE;
        if self.words[at / WRITE] == Word::Erased {
            for i in 0..WRITE {
                let mask = rng.next_u64() as u8;
                let target = bytes[n * WRITE + i];
                // Only some of the bits that should move have moved.
                let d = &mut self.data[at + i];
                *d = if self.erased == 0xFF { *d & (target | !mask) } else { *d | (target & mask) };
            }
            self.words[at / WRITE] = Word::Torn;
        }
    }

    /// Erases pages `[from, to)` up to a random page, which is left holding garbage.
    fn erase_torn(&mut self, from: u32, to: u32, rng: &mut Rng) {
        let pages = ((to - from) as usize) / ERASE;
        let n = rng.below(pages as u64) as usize;
        self.erase_range(from as usize, from as usize + n * ERASE);
        let page = from as usize + n * ERASE;
        self.wear.erases += n as u64 + 1;
        for b in &mut self.data[page..page + ERASE] {
            // Some bytes made it back to erased, others hold noise.
            if rng.below(2) == 0 {
                *b = rng.next_u64() as u8;
            } else {
                *b = self.erased;
            }
        }
        self.words[page / WRITE..(page + ERASE) / WRITE].fill(Word::Garbage);
    }

    fn write_word(&mut self, at: usize, word: &[u8]) -> Result<(), SimError> {
        match self.words[at / WRITE] {
            Word::Erased => self.program(at, word),
            Word::Torn | Word::Garbage if self.ecc => return Err(SimError::EccReprogram { offset: at as u32 }),
            Word::Torn | Word::Garbage => self.program(at, word),
            state => panic!(
                "write to a {state:?} word at {at:#x} ({:02x?}): NOR can only program erased words; erase first",
                &self.data[at..at + WRITE]
            ),
        }
        Ok(())
    }
}

impl<const ERASE: usize, const WRITE: usize> ErrorType for SimFlash<ERASE, WRITE> {
    type Error = SimError;
}

impl<const ERASE: usize, const WRITE: usize> ReadNorFlash for SimFlash<ERASE, WRITE> {
    const READ_SIZE: usize = 1;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), SimError> {
        self.check_range(offset, bytes.len())?;
        bytes.copy_from_slice(&self.data[offset as usize..offset as usize + bytes.len()]);
        Ok(())
    }
    fn capacity(&self) -> usize {
        self.data.len()
    }
}

impl<const ERASE: usize, const WRITE: usize> NorFlash for SimFlash<ERASE, WRITE> {
    const WRITE_SIZE: usize = WRITE;
    const ERASE_SIZE: usize = ERASE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), SimError> {
        assert!(
            from <= to && (from as usize).is_multiple_of(ERASE) && (to as usize).is_multiple_of(ERASE),
            "misaligned erase {from:#x}..{to:#x}"
        );
        self.check_range(from, (to - from) as usize)?;
        self.erase_range(from as usize, to as usize);
        self.wear.erases += ((to - from) as usize / ERASE) as u64;
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), SimError> {
        assert!(
            (offset as usize).is_multiple_of(WRITE) && bytes.len().is_multiple_of(WRITE),
            "misaligned write {offset:#x}+{}",
            bytes.len()
        );
        self.check_range(offset, bytes.len())?;
        self.wear.writes += 1;
        self.wear.bytes_written += bytes.len() as u64;
        for (i, word) in bytes.chunks(WRITE).enumerate() {
            self.write_word(offset as usize + i * WRITE, word)?;
        }
        Ok(())
    }
}

/// Where a power cut falls relative to the operation it hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CutMode {
    /// The operation never started.
    Before,
    /// The operation completed, then the power went.
    After,
    /// The operation was interrupted: part of a write programmed, an erase left garbage.
    Torn,
}

impl CutMode {
    /// All three.
    pub const ALL: [CutMode; 3] = [CutMode::Before, CutMode::After, CutMode::Torn];
}

/// A flash whose power can be cut at the N-th mutating operation (0-based).
#[derive(Clone, Debug)]
pub struct FaultyFlash<const ERASE: usize, const WRITE: usize> {
    inner: SimFlash<ERASE, WRITE>,
    ops: u64,
    cut: Option<(u64, CutMode)>,
    dead: bool,
    cuts: u32,
    rng: Rng,
    seed: u64,
}

impl<const ERASE: usize, const WRITE: usize> FaultyFlash<ERASE, WRITE> {
    /// Wraps `inner`; no cut planned.
    pub fn new(inner: SimFlash<ERASE, WRITE>, seed: u64) -> Self {
        FaultyFlash { inner, ops: 0, cut: None, dead: false, cuts: 0, rng: Rng::new(seed), seed }
    }
    /// Cuts the power at mutating operation `at` (counted from now), in `mode`.
    pub fn cut_at(&mut self, at: u64, mode: CutMode) {
        self.cut = Some((self.ops + at, mode));
    }
    /// Mutating operations performed (or attempted) so far.
    pub fn ops(&self) -> u64 {
        self.ops
    }
    /// Whether the planned cut has happened.
    pub fn is_dead(&self) -> bool {
        self.dead
    }
    /// How many cuts have happened.
    pub fn cuts(&self) -> u32 {
        self.cuts
    }
    /// The seed of this run.
    pub fn seed(&self) -> u64 {
        self.seed
    }
    /// Power comes back: operations work again, no cut is planned.
    pub fn power_cycle(&mut self) {
        self.dead = false;
        self.cut = None;
    }
    /// The flash inside.
    pub fn inner(&self) -> &SimFlash<ERASE, WRITE> {
        &self.inner
    }
    /// The flash inside, mutably (test setup).
    pub fn inner_mut(&mut self) -> &mut SimFlash<ERASE, WRITE> {
        &mut self.inner
    }

    fn mutate(
        &mut self,
        op: impl FnOnce(&mut SimFlash<ERASE, WRITE>) -> Result<(), SimError>,
        torn: impl FnOnce(&mut SimFlash<ERASE, WRITE>, &mut Rng),
    ) -> Result<(), SimError> {
        if self.dead {
            return Err(SimError::PowerLoss);
        }
        let n = self.ops;
        self.ops += 1;
        match self.cut {
            Some((at, mode)) if at == n => {
                self.dead = true;
                self.cuts += 1;
                match mode {
                    CutMode::Before => {}
                    CutMode::After => op(&mut self.inner)?,
                    CutMode::Torn => torn(&mut self.inner, &mut self.rng),
                }
                Err(SimError::PowerLoss)
            }
            _ => op(&mut self.inner),
        }
    }
}

impl<const ERASE: usize, const WRITE: usize> ErrorType for FaultyFlash<ERASE, WRITE> {
    type Error = SimError;
}

impl<const ERASE: usize, const WRITE: usize> ReadNorFlash for FaultyFlash<ERASE, WRITE> {
    const READ_SIZE: usize = 1;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), SimError> {
        if self.dead {
            return Err(SimError::PowerLoss);
        }
        self.inner.read(offset, bytes)
    }
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }
}

impl<const ERASE: usize, const WRITE: usize> NorFlash for FaultyFlash<ERASE, WRITE> {
    const WRITE_SIZE: usize = WRITE;
    const ERASE_SIZE: usize = ERASE;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), SimError> {
        self.mutate(|f| f.erase(from, to), |f, rng| f.erase_torn(from, to, rng))
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), SimError> {
        self.mutate(|f| f.write(offset, bytes), |f, rng| f.write_torn(offset, bytes, rng))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Nrf = SimFlash<4096, 4>;

    #[test]
    fn erase_then_write_then_read_back() {
        let mut f = Nrf::new(8192, 0xFF);
        f.write(4, &[1, 2, 3, 4]).unwrap();
        let mut b = [0; 8];
        f.read(0, &mut b).unwrap();
        assert_eq!(b, [0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4]);
        f.erase(0, 4096).unwrap();
        f.read(0, &mut b).unwrap();
        assert_eq!(b, [0xFF; 8]);
        assert_eq!(f.wear(), Wear { erases: 1, writes: 1, bytes_written: 4 });
    }

    #[test]
    #[should_panic(expected = "NOR can only program erased words")]
    fn writing_a_programmed_word_panics() {
        let mut f = Nrf::new(4096, 0xFF);
        f.write(0, &[0xF0; 4]).unwrap();
        let _ = f.write(0, &[0x00; 4]);
    }

    #[test]
    #[should_panic(expected = "misaligned write")]
    fn misaligned_write_panics() {
        let _ = Nrf::new(4096, 0xFF).write(2, &[0; 4]);
    }

    #[test]
    #[should_panic(expected = "misaligned erase")]
    fn misaligned_erase_panics() {
        let _ = Nrf::new(8192, 0xFF).erase(0, 100);
    }

    #[test]
    fn erased_zero_flash_programs_by_setting_bits() {
        let mut f = SimFlash::<4096, 4>::new(4096, 0x00);
        f.write(0, &[0x12, 0, 0, 0x80]).unwrap();
        let mut b = [9; 4];
        f.read(0, &mut b).unwrap();
        assert_eq!(b, [0x12, 0, 0, 0x80]);
    }

    #[test]
    fn out_of_bounds_is_an_error_not_a_panic() {
        let mut f = Nrf::new(4096, 0xFF);
        assert_eq!(f.read(4095, &mut [0; 2]), Err(SimError::OutOfBounds));
        assert_eq!(f.write(4096, &[0; 4]), Err(SimError::OutOfBounds));
    }

    fn torn_write(ecc: bool) -> (FaultyFlash<4096, 4>, Result<(), SimError>) {
        let mut f = FaultyFlash::new(Nrf::new(4096, 0xFF).with_ecc(ecc), 7);
        f.cut_at(0, CutMode::Torn);
        assert_eq!(f.write(0, &[0; 64]), Err(SimError::PowerLoss));
        assert_eq!(f.read(0, &mut [0; 4]), Err(SimError::PowerLoss), "no power, no reads");
        f.power_cycle();
        // Re-program the same data over the torn prefix.
        let torn_word = f.inner().bytes()[..64].chunks(4).position(|w| w != [0; 4]).unwrap();
        let at = (torn_word * 4) as u32;
        let r = f.write(at, &[0; 4]);
        (f, r)
    }

    #[test]
    fn torn_word_reprograms_on_plain_nor() {
        let (f, r) = torn_write(false);
        assert_eq!(r, Ok(()));
        assert!(f.inner().bytes()[..4].iter().all(|&b| b == 0));
    }

    #[test]
    fn torn_word_refuses_reprogramming_with_ecc() {
        let (_, r) = torn_write(true);
        assert!(matches!(r, Err(SimError::EccReprogram { .. })));
    }

    #[test]
    fn cut_before_leaves_flash_untouched_and_after_completes() {
        for (mode, expect) in [(CutMode::Before, 0xFF), (CutMode::After, 0x00)] {
            let mut f = FaultyFlash::new(Nrf::new(4096, 0xFF), 1);
            f.write(0, &[0; 4]).unwrap();
            f.cut_at(0, mode);
            assert_eq!(f.write(4, &[0; 4]), Err(SimError::PowerLoss));
            assert_eq!(f.inner().bytes()[4], expect, "{mode:?}");
            assert_eq!(f.ops(), 2);
        }
    }

    #[test]
    fn writing_into_a_torn_erase_fails_with_ecc() {
        let mut f = FaultyFlash::new(Nrf::new(4096, 0xFF).with_ecc(true), 3);
        f.cut_at(0, CutMode::Torn);
        let _ = f.erase(0, 4096);
        f.power_cycle();
        assert!(matches!(f.write(0, &[0; 4096]), Err(SimError::EccReprogram { .. })));
        f.erase(0, 4096).unwrap();
        f.write(0, &[0; 4096]).unwrap();
    }

    #[test]
    fn same_seed_same_damage() {
        let run = |seed| {
            let mut f = FaultyFlash::new(Nrf::new(8192, 0xFF), seed);
            f.inner_mut().load(0, &[0x5A; 8192]);
            f.cut_at(0, CutMode::Torn);
            let _ = f.erase(0, 8192);
            f.inner().bytes().to_vec()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }
}
