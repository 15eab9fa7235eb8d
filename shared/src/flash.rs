//! A NOR flash emulated over plain memory: what the qemu-an386 firmware uses on QEMU's `mps.ram`
//! (file-backed, so it survives reset and `kill -9`), with real NOR rules so code tested here
//! meets the same constraints as on a chip.
//!
//! | operation | effect |
//! |---|---|
//! | erase `from..to` (page aligned) | every byte becomes 0xFF |
//! | write (word aligned, whole words) | each byte becomes `old & new`: bits only go 1 -> 0 |
//! | read | any offset and length |

use embedded_storage::nor_flash::{ErrorType, NorFlash, NorFlashErrorKind, ReadNorFlash};

/// NOR semantics over `mem`, with `ERASE`-byte pages and `WRITE`-byte words.
pub struct RamNor<'a, const ERASE: usize, const WRITE: usize> {
    mem: &'a mut [u8],
}

impl<'a, const ERASE: usize, const WRITE: usize> RamNor<'a, ERASE, WRITE> {
    /// Wraps `mem` (its length must be whole pages).
    pub fn new(mem: &'a mut [u8]) -> Self {
        assert!(mem.len().is_multiple_of(ERASE) && ERASE.is_multiple_of(WRITE), "RamNor geometry");
        RamNor { mem }
    }

    fn range(&self, off: u32, len: usize) -> Result<core::ops::Range<usize>, NorFlashErrorKind> {
        let start = off as usize;
        let end = start.checked_add(len).filter(|&e| e <= self.mem.len()).ok_or(NorFlashErrorKind::OutOfBounds)?;
        Ok(start..end)
    }
}

impl<const ERASE: usize, const WRITE: usize> ErrorType for RamNor<'_, ERASE, WRITE> {
    type Error = NorFlashErrorKind;
}

impl<const ERASE: usize, const WRITE: usize> ReadNorFlash for RamNor<'_, ERASE, WRITE> {
    const READ_SIZE: usize = 1;
    fn read(&mut self, off: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        let r = self.range(off, bytes.len())?;
        bytes.copy_from_slice(&self.mem[r]);
        Ok(())
    }
    fn capacity(&self) -> usize {
        self.mem.len()
    }
}

impl<const ERASE: usize, const WRITE: usize> NorFlash for RamNor<'_, ERASE, WRITE> {
    const WRITE_SIZE: usize = WRITE;
    const ERASE_SIZE: usize = ERASE;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        if from > to || !(from as usize).is_multiple_of(ERASE) || !(to as usize).is_multiple_of(ERASE) {
            return Err(NorFlashErrorKind::NotAligned);
        }
        let r = self.range(from, (to - from) as usize)?;
        self.mem[r].fill(0xFF);
        Ok(())
    }
    fn write(&mut self, off: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        if !(off as usize).is_multiple_of(WRITE) || !bytes.len().is_multiple_of(WRITE) {
            return Err(NorFlashErrorKind::NotAligned);
        }
        let r = self.range(off, bytes.len())?;
        for (d, s) in self.mem[r].iter_mut().zip(bytes) {
            *d &= *s;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_only_clears_bits_and_erase_restores() {
        let mut mem = [0xFFu8; 64];
        let mut f = RamNor::<32, 16>::new(&mut mem);
        f.write(16, &[0xF0; 16]).unwrap();
        f.write(16, &[0x3C; 16]).unwrap();
        let mut b = [0; 1];
        f.read(16, &mut b).unwrap();
        assert_eq!(b, [0x30]);
        f.erase(0, 32).unwrap();
        f.read(16, &mut b).unwrap();
        assert_eq!(b, [0xFF]);
    }

    #[test]
    fn misaligned_and_out_of_range_are_errors() {
        let mut mem = [0xFFu8; 64];
        let mut f = RamNor::<32, 16>::new(&mut mem);
        assert_eq!(f.write(8, &[0; 16]), Err(NorFlashErrorKind::NotAligned));
        assert_eq!(f.write(0, &[0; 8]), Err(NorFlashErrorKind::NotAligned));
        assert_eq!(f.erase(0, 16), Err(NorFlashErrorKind::NotAligned));
        assert_eq!(f.write(64, &[0; 16]), Err(NorFlashErrorKind::OutOfBounds));
        assert_eq!(f.read(60, &mut [0; 8]), Err(NorFlashErrorKind::OutOfBounds));
    }
}
