//! The app's half: write the download into DFU, mark it for swap only after our own verify,
//! confirm after a good boot, and learn truthfully what runs and what the last boot did.

use super::{BootRecord, LastBoot, Phase, StateGuard};
use crate::image::{self, ImageError, ImageInfo, PublicKey, VerifyOptions};
use embassy_boot::{BlockingFirmwareState, State};
use embedded_storage::nor_flash::{NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash};

/// What went wrong while updating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum UpdateError {
    /// A flash operation failed (Aliyun step -4).
    Flash(NorFlashErrorKind),
    /// Writes must go forward from offset 0 in write-size multiples (a bug in the caller).
    NotSequential {
        /// offset expected next
        expected: u32,
        /// offset given
        got: u32,
    },
    /// The downloaded image does not verify (Aliyun step -3).
    Image(ImageError),
    /// An update is already marked or being tested: reboot first.
    BadState,
}

impl<E: NorFlashError> From<E> for UpdateError {
    fn from(e: E) -> Self {
        UpdateError::Flash(e.kind())
    }
}

impl core::fmt::Display for UpdateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            UpdateError::Flash(k) => write!(f, "flash error: {k:?}"),
            UpdateError::NotSequential { expected, got } => write!(f, "write at {got}, expected {expected}"),
            UpdateError::Image(e) => write!(f, "downloaded image refused: {e}"),
            UpdateError::BadState => f.write_str("an update is already pending: reboot first"),
        }
    }
}

impl core::error::Error for UpdateError {}

/// Sequential writer into DFU plus the STATE marks.
pub struct Updater<D, S> {
    dfu: D,
    state: S,
    erased: u8,
    next: u32,
}

impl<D: NorFlash, S: NorFlash> Updater<D, S> {
    /// Starts writing at `resume_at`, which must be a page boundary of DFU (0 for a fresh
    /// download; after a reset, the last page boundary the download reached).
    pub fn new(dfu: D, state: S, erased: u8, resume_at: u32) -> Self {
        assert!(resume_at as usize % D::ERASE_SIZE == 0, "resume at a page boundary");
        Updater { dfu, state, erased, next: resume_at }
    }

    /// Offset the next write must start at.
    pub fn position(&self) -> u32 {
        self.next
    }

    /// Writes `data` at `offset` (= [`Self::position`]). Each page is erased when the write
    /// enters it at its start. A final chunk that is not a multiple of the write size is padded.
    pub fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), UpdateError> {
        if offset != self.next || offset as usize % D::WRITE_SIZE != 0 {
            return Err(UpdateError::NotSequential { expected: self.next, got: offset });
        }
        let page = D::ERASE_SIZE as u32;
        let mut at = offset;
        let mut rest = data;
        while !rest.is_empty() {
            if at % page == 0 {
                self.dfu.erase(at, at + page)?;
            }
            let n = rest.len().min((page - at % page) as usize);
            let whole = n / D::WRITE_SIZE * D::WRITE_SIZE;
            if whole > 0 {
                self.dfu.write(at, &rest[..whole])?;
            }
            if whole < n {
                let mut last = [self.erased; 64];
                let last = &mut last[..D::WRITE_SIZE];
                last[..n - whole].copy_from_slice(&rest[whole..n]);
                self.dfu.write(at + whole as u32, last)?;
                self.next = at + whole as u32 + D::WRITE_SIZE as u32;
                return if n == rest.len() {
                    Ok(())
                } else {
                    Err(UpdateError::NotSequential { expected: self.next, got: at })
                };
            }
            at += n as u32;
            rest = &rest[n..];
        }
        self.next = at;
        Ok(())
    }

    /// Verifies the whole image in DFU with our own rules (signature, counter, fits ACTIVE),
    /// then marks it for swap. Nothing is marked if it does not verify.
    pub fn finish(&mut self, opts: &VerifyOptions<'_>, buf: &mut [u8]) -> Result<ImageInfo, UpdateError> {
        let info = image::verify(&mut self.dfu, opts, buf).map_err(UpdateError::Image)?;
        let mut guard = StateGuard::new(&mut self.state, self.erased);
        match guard.state(buf)? {
            State::Swap => return Err(UpdateError::BadState),
            _ => {}
        }
        let word = &mut buf[..S::WRITE_SIZE];
        BlockingFirmwareState::new(guard, word)
            .mark_updated()
            .map_err(|_| UpdateError::Flash(NorFlashErrorKind::Other))?;
        Ok(info)
    }
}

/// Confirms the running image after its self-test passed (embassy-boot's `mark_booted`).
pub fn confirm<S: NorFlash>(state: &mut S, erased: u8, buf: &mut [u8]) -> Result<(), UpdateError> {
    let word = &mut buf[..S::WRITE_SIZE];
    BlockingFirmwareState::new(StateGuard::new(state, erased), word)
        .mark_booted()
        .map_err(|_| UpdateError::Flash(NorFlashErrorKind::Other))
}

/// What the app knows about this boot, from the image in ACTIVE and BOOT_RECORD (never from
/// embassy-boot's state alone: a cut inside `mark_booted` can leave any magic behind).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootInfo {
    /// The running image (header, SEC_CNT, Aliyun module and version).
    pub running: ImageInfo,
    /// This image was just swapped in and must run its self-test, then [`confirm`].
    pub awaiting_confirm: bool,
    /// What the last update-related boot did.
    pub last: LastBoot,
    /// The stored security counter.
    pub sec_cnt: u32,
    /// The record's sequence number (changes whenever the bootloader records something).
    pub record_seq: u32,
}

/// Reads [`BootInfo`]. `active` must hold a verifying image (the bootloader just checked it).
pub fn boot_info<A: ReadNorFlash, R: ReadNorFlash, S: NorFlash>(
    active: &mut A,
    boot_record: &mut R,
    state: &mut S,
    keys: &[PublicKey],
    erased: u8,
    buf: &mut [u8],
) -> Result<BootInfo, UpdateError> {
    let rec = BootRecord::load(boot_record)?.map(|(_, r)| r).unwrap_or_default();
    let opts = VerifyOptions { keys, min_sec_cnt: 0, slot_size: None };
    let running = image::verify(active, &opts, buf).map_err(UpdateError::Image)?;
    let magic = StateGuard::new(state, erased).state(buf)?;
    let awaiting_confirm = matches!(rec.phase, Phase::Testing { .. }) && magic == State::Swap;
    Ok(BootInfo { running, awaiting_confirm, last: rec.last, sec_cnt: rec.sec_cnt, record_seq: rec.seq })
}
