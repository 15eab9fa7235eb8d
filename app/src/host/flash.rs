//! The host board's flash: a file with strict NOR semantics (erase to 0xFF, program only erased
//! words, alignment checked), laid out like `memory_layouts::HOST`. A `kill -9` of the process is
//! a power cut between two flash operations.

use embedded_storage::nor_flash::{ErrorType, NorFlash, NorFlashErrorKind, ReadNorFlash};
use std::fs::File;
use std::os::unix::fs::FileExt;

pub const ERASE: usize = memory_layouts::HOST.geometry.erase_size as usize;
pub const WRITE: usize = memory_layouts::HOST.geometry.write_size as usize;
const ERASED: u8 = memory_layouts::HOST.geometry.erased;

pub struct FileFlash {
    file: File,
    len: usize,
    /// `ALIYUN_OTA_HOST_FLASH_DELAY_MS`: slow flash, so tests can cut the power mid-swap.
    delay: Option<std::time::Duration>,
}

impl FileFlash {
    pub fn open(path: &std::path::Path, len: usize) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
        let have = file.metadata()?.len() as usize;
        if have != len {
            return Err(std::io::Error::other(format!(
                "{} is {have} bytes, the host board's flash is {len}: write a factory image with `cargo xtask device --factory DIR`",
                path.display()
            )));
        }
        let delay = std::env::var("ALIYUN_OTA_HOST_FLASH_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_millis);
        Ok(FileFlash { file, len, delay })
    }

    fn slow(&self) {
        if let Some(d) = self.delay {
            std::thread::sleep(d);
        }
    }

    fn check(&self, off: u32, n: usize) -> Result<(), NorFlashErrorKind> {
        if off as usize + n > self.len {
            Err(NorFlashErrorKind::OutOfBounds)
        } else {
            Ok(())
        }
    }
}

impl ErrorType for FileFlash {
    type Error = NorFlashErrorKind;
}

impl ReadNorFlash for FileFlash {
    const READ_SIZE: usize = 1;
    fn read(&mut self, off: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        self.check(off, bytes.len())?;
        self.file.read_exact_at(bytes, off as u64).map_err(|_| NorFlashErrorKind::Other)
    }
    fn capacity(&self) -> usize {
        self.len
    }
}

impl NorFlash for FileFlash {
    const WRITE_SIZE: usize = WRITE;
    const ERASE_SIZE: usize = ERASE;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        if from > to || !(from as usize).is_multiple_of(ERASE) || !(to as usize).is_multiple_of(ERASE) {
            return Err(NorFlashErrorKind::NotAligned);
        }
        self.check(from, (to - from) as usize)?;
        self.slow();
        let page = [ERASED; ERASE];
        for at in (from..to).step_by(ERASE) {
            self.file.write_all_at(&page, at as u64).map_err(|_| NorFlashErrorKind::Other)?;
        }
        Ok(())
    }
    fn write(&mut self, off: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        if !(off as usize).is_multiple_of(WRITE) || !bytes.len().is_multiple_of(WRITE) {
            return Err(NorFlashErrorKind::NotAligned);
        }
        self.check(off, bytes.len())?;
        self.slow();
        let mut cur = vec![0u8; bytes.len()];
        self.read(off, &mut cur)?;
        if cur.iter().any(|&b| b != ERASED) {
            // Programming a word that is not erased: a bug on NOR, refused here.
            return Err(NorFlashErrorKind::Other);
        }
        self.file.write_all_at(bytes, off as u64).map_err(|_| NorFlashErrorKind::Other)
    }
}
