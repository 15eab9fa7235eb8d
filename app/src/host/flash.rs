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
    /// `ALIYUN_OTA_HOST_FLASH_TIMING`: an MCU's program and erase times (see [`Timing`]).
    timing: Option<Timing>,
}

/// An MCU flash's speed, `ALIYUN_OTA_HOST_FLASH_TIMING=<us>/<bytes>,<ms>/<bytes>`: programming
/// takes `<us>` per word of `<bytes>`, erasing `<ms>` per page of `<bytes>` (nRF52840:
/// `41/4,85/4096`; STM32L4: `82/8,22/2048`), applied to every write and erase (`cargo xtask
/// bench modem`).
#[derive(Clone, Copy, Debug)]
struct Timing {
    write_ns_per_byte: u64,
    erase_ns_per_byte: u64,
}

impl Timing {
    fn parse(v: &str) -> Option<Timing> {
        let rate = |s: &str, unit: u64| -> Option<u64> {
            let (t, n) = s.split_once('/')?;
            Some(t.trim().parse::<u64>().ok()? * unit / n.trim().parse::<u64>().ok()?.max(1))
        };
        let (w, e) = v.split_once(',')?;
        Some(Timing { write_ns_per_byte: rate(w, 1_000)?, erase_ns_per_byte: rate(e, 1_000_000)? })
    }
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
        let timing = match std::env::var("ALIYUN_OTA_HOST_FLASH_TIMING") {
            Ok(v) => Some(Timing::parse(&v).ok_or_else(|| {
                std::io::Error::other(format!("ALIYUN_OTA_HOST_FLASH_TIMING={v}: want <us>/<bytes>,<ms>/<bytes>"))
            })?),
            Err(_) => None,
        };
        Ok(FileFlash { file, len, delay, timing })
    }

    fn slow(&self) {
        if let Some(d) = self.delay {
            std::thread::sleep(d);
        }
    }

    /// Takes as long as the MCU's flash would for `n` bytes (`erase`: of erasing, else of
    /// programming).
    fn take_time(&self, n: usize, erase: bool) {
        if let Some(t) = self.timing {
            let per = if erase { t.erase_ns_per_byte } else { t.write_ns_per_byte };
            std::thread::sleep(std::time::Duration::from_nanos(per * n as u64));
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
        self.take_time((to - from) as usize, true);
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
        self.take_time(bytes.len(), false);
        let mut cur = vec![0u8; bytes.len()];
        self.read(off, &mut cur)?;
        if cur.iter().any(|&b| b != ERASED) {
            // Programming a word that is not erased: a bug on NOR, refused here.
            return Err(NorFlashErrorKind::Other);
        }
        self.file.write_all_at(bytes, off as u64).map_err(|_| NorFlashErrorKind::Other)
    }
}
