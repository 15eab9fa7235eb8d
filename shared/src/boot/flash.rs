//! Flash adapters the boot policy hands to embassy-boot.

use super::ERASED;
use embassy_boot::State;
use embedded_storage::nor_flash::{ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash};

/// The first `len` bytes of a flash: how a swap moves only the pages the images occupy.
pub struct Window<'a, F> {
    flash: &'a mut F,
    len: u32,
}

impl<'a, F: NorFlash> Window<'a, F> {
    /// A view of `flash[0..len]`; `len` must fit (a programmer error otherwise).
    pub fn new(flash: &'a mut F, len: u32) -> Self {
        assert!(len as usize <= flash.capacity(), "window larger than its flash");
        Window { flash, len }
    }
    fn check(&self, off: u32, n: usize) -> Result<(), NorFlashErrorKind> {
        if off as u64 + n as u64 > self.len as u64 {
            Err(NorFlashErrorKind::OutOfBounds)
        } else {
            Ok(())
        }
    }
}

impl<F: NorFlash> ErrorType for Window<'_, F> {
    type Error = NorFlashErrorKind;
}

impl<F: NorFlash> ReadNorFlash for Window<'_, F> {
    const READ_SIZE: usize = F::READ_SIZE;
    fn read(&mut self, off: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        self.check(off, bytes.len())?;
        self.flash.read(off, bytes).map_err(|e| e.kind())
    }
    fn capacity(&self) -> usize {
        self.len as usize
    }
}

impl<F: NorFlash> NorFlash for Window<'_, F> {
    const WRITE_SIZE: usize = F::WRITE_SIZE;
    const ERASE_SIZE: usize = F::ERASE_SIZE;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        self.check(from, to.saturating_sub(from) as usize)?;
        self.flash.erase(from, to).map_err(|e| e.kind())
    }
    fn write(&mut self, off: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        self.check(off, bytes.len())?;
        self.flash.write(off, bytes).map_err(|e| e.kind())
    }
}

/// embassy-boot's STATE partition, made safe to resume on ECC flash.
///
/// | word | meaning (embassy-boot 0.7) |
/// |---|---|
/// | 0 | magic: 0xF0.. swap, 0xC0.. revert, 0xD0.. boot, 0xE0.. DFU detach, else boot |
/// | 1 | progress validity: erased = valid |
/// | 2 .. 2+2N | swap progress, one word per step, written after the step's page copy |
/// | 2+2N .. 2+4N | revert progress, likewise |
/// | last word of the partition | ours: the app's revert request (any bit programmed) |
///
/// The layouts give STATE a margin over the 2 + 4N words embassy-boot uses, so its last word is
/// never one of embassy-boot's; every `mark_updated`, `mark_booted` and revert erases all of STATE,
/// which clears the request with the rest.
///
/// A progress word is written only after its page copy completed, so a progress word with any
/// bit programmed (even torn by a power cut) means "step done". embassy-boot counts a word with
/// an erased byte as not done and re-programs it, which fails on ECC flash and would leave the
/// device stuck mid-swap. This adapter reads such words as done and skips writes to them; it also
/// skips re-writing a validity word that is already programmed (embassy-boot does that when a
/// revert resumes after a cut between its "invalidate progress" write and its erase).
pub struct StateGuard<'a, F> {
    flash: &'a mut F,
}

impl<'a, F: NorFlash> StateGuard<'a, F> {
    /// Wraps the STATE partition (erased to [`ERASED`]).
    pub fn new(flash: &'a mut F) -> Self {
        const { assert!(F::WRITE_SIZE <= 64, "state words up to 64 bytes") };
        StateGuard { flash }
    }

    /// Word `index` or later, read or written alone.
    fn is_word_from(index: u32, off: u32, len: usize) -> bool {
        let w = F::WRITE_SIZE as u32;
        off >= index * w && off.is_multiple_of(w) && len == F::WRITE_SIZE
    }

    /// The magic in word 0.
    pub fn state(&mut self, buf: &mut [u8]) -> Result<State, NorFlashErrorKind> {
        let word = &mut buf[..F::WRITE_SIZE];
        self.flash.read(0, word).map_err(|e| e.kind())?;
        Ok(State::from(&*word))
    }

    /// Offset of the revert-request word (the partition's last write unit).
    fn request_word(&self) -> u32 {
        (self.flash.capacity() - F::WRITE_SIZE) as u32
    }

    /// Whether the app asked for its revert (the request word has any bit programmed, even torn).
    pub fn revert_requested(&mut self, buf: &mut [u8]) -> Result<bool, NorFlashErrorKind> {
        let word = &mut buf[..F::WRITE_SIZE];
        self.flash.read(self.request_word(), word).map_err(|e| e.kind())?;
        Ok(word.iter().any(|&b| b != ERASED))
    }

    /// Programs the revert-request word (once: a programmed word is left as it is).
    pub fn request_revert(&mut self, buf: &mut [u8]) -> Result<(), NorFlashErrorKind> {
        if self.revert_requested(buf)? {
            return Ok(());
        }
        let word = &mut buf[..F::WRITE_SIZE];
        word.fill(!ERASED);
        self.flash.write(self.request_word(), word).map_err(|e| e.kind())
    }

    /// Whether all `steps` first steps of the swap (or revert, from `first`) are done, by
    /// embassy-boot's own rule: progress validity erased, then the first word still erased.
    pub fn steps_done(&mut self, first: u32, steps: u32, buf: &mut [u8]) -> Result<bool, NorFlashErrorKind> {
        let w = F::WRITE_SIZE as u32;
        let word = &mut buf[..F::WRITE_SIZE];
        self.flash.read(w, word).map_err(|e| e.kind())?;
        if word.iter().any(|&b| b != ERASED) {
            return Ok(true); // progress invalid: embassy-boot counts everything as done
        }
        let last = (2 + first + steps - 1) * w;
        self.read(last, word)?;
        Ok(word.iter().all(|&b| b != ERASED))
    }
}

impl<F: NorFlash> ErrorType for StateGuard<'_, F> {
    type Error = NorFlashErrorKind;
}

impl<F: NorFlash> ReadNorFlash for StateGuard<'_, F> {
    const READ_SIZE: usize = F::READ_SIZE;
    fn read(&mut self, off: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        self.flash.read(off, bytes).map_err(|e| e.kind())?;
        if Self::is_word_from(2, off, bytes.len()) && bytes.iter().any(|&b| b != ERASED) {
            bytes.fill(!ERASED);
        }
        Ok(())
    }
    fn capacity(&self) -> usize {
        self.flash.capacity()
    }
}

impl<F: NorFlash> NorFlash for StateGuard<'_, F> {
    const WRITE_SIZE: usize = F::WRITE_SIZE;
    const ERASE_SIZE: usize = F::ERASE_SIZE;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        self.flash.erase(from, to).map_err(|e| e.kind())
    }
    fn write(&mut self, off: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        // Validity and progress words only ever go from erased to programmed: one that is already
        // (partly) programmed has said what it says, and re-programming it may fail (ECC) or trip
        // a strict flash. embassy-boot re-writes the validity word when a revert resumes.
        if Self::is_word_from(1, off, bytes.len()) {
            let mut cur = [0u8; 64];
            let cur = &mut cur[..bytes.len()];
            self.flash.read(off, cur).map_err(|e| e.kind())?;
            if cur.iter().any(|&b| b != ERASED) {
                return Ok(()); // already (partly) programmed: the step is done
            }
            if off == F::WRITE_SIZE as u32 {
                // The "invalidate progress" marker: embassy-boot erases all of STATE right after
                // it. On ECC flash it can fail on a word a torn erase left reading as erased;
                // the erase that follows fixes that word, so the failure must not stop it.
                let _ = self.flash.write(off, bytes);
                return Ok(());
            }
        }
        self.flash.write(off, bytes).map_err(|e| e.kind())
    }
}
