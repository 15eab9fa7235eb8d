//! The app's half: write the download into DFU, mark it for swap only after our own verify,
//! confirm after a good boot, and learn truthfully what runs and what the last boot did.

use super::{BootRecord, Floor, LastBoot, Phase, Slots, StateGuard, ERASED};
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

/// The partitions an [`Updater`] writes, by role (as embassy-boot names them).
pub struct FirmwareUpdaterConfig<D, S> {
    /// The download slot.
    pub dfu: D,
    /// embassy-boot's state.
    pub state: S,
}

/// Sequential writer into DFU plus the STATE marks. Takes chunks of any length (network reads);
/// whole words go to flash at once, a partial word waits for the next chunk or [`Updater::flush`].
pub struct Updater<D, S> {
    dfu: D,
    state: S,
    pos: u32,
    carry: [u8; 64],
}

impl<D: NorFlash, S: NorFlash> Updater<D, S> {
    /// Starts writing at `resume_at`, which must be a page boundary of DFU (0 for a fresh
    /// download; after a reset, the last page boundary the download reached).
    pub fn new(config: FirmwareUpdaterConfig<D, S>, resume_at: u32) -> Self {
        const { assert!(D::WRITE_SIZE <= 64) };
        assert!((resume_at as usize).is_multiple_of(D::ERASE_SIZE), "resume at a page boundary");
        let FirmwareUpdaterConfig { dfu, state } = config;
        Updater { dfu, state, pos: resume_at, carry: [ERASED; 64] }
    }

    /// Starts over at `at` (a page boundary): a new download, or a resume.
    pub fn restart(&mut self, at: u32) {
        assert!((at as usize).is_multiple_of(D::ERASE_SIZE), "resume at a page boundary");
        self.pos = at;
    }

    /// The DFU partition (to re-hash it, or keep the resume record in its spare page).
    pub fn dfu(&mut self) -> &mut D {
        &mut self.dfu
    }

    /// The STATE partition (to confirm the running image).
    pub fn state(&mut self) -> &mut S {
        &mut self.state
    }

    /// Offset the next write must start at (bytes accepted so far).
    pub fn position(&self) -> u32 {
        self.pos
    }

    /// Programs whole words at `at` (word aligned), erasing each page as the writes enter it.
    fn program(&mut self, mut at: u32, mut bytes: &[u8]) -> Result<(), UpdateError> {
        let page = D::ERASE_SIZE as u32;
        while !bytes.is_empty() {
            if at.is_multiple_of(page) {
                self.dfu.erase(at, at + page)?;
            }
            let n = bytes.len().min((page - at % page) as usize);
            self.dfu.write(at, &bytes[..n])?;
            at += n as u32;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Appends `data` at `offset` (= [`Self::position`]).
    pub fn write(&mut self, offset: u32, mut data: &[u8]) -> Result<(), UpdateError> {
        if offset != self.pos {
            return Err(UpdateError::NotSequential { expected: self.pos, got: offset });
        }
        let w = D::WRITE_SIZE;
        let partial = self.pos as usize % w;
        if partial > 0 {
            let take = (w - partial).min(data.len());
            self.carry[partial..partial + take].copy_from_slice(&data[..take]);
            self.pos += take as u32;
            data = &data[take..];
            if partial + take < w {
                return Ok(());
            }
            let word = self.carry;
            self.program(self.pos - w as u32, &word[..w])?;
        }
        let whole = data.len() / w * w;
        self.program(self.pos, &data[..whole])?;
        self.pos += whole as u32;
        let rest = &data[whole..];
        self.carry[..rest.len()].copy_from_slice(rest);
        self.pos += rest.len() as u32;
        Ok(())
    }

    /// Reads back `out.len()` bytes already accepted, from `at`: from DFU, and the last partial
    /// word from where it waits.
    pub fn read_back(&mut self, at: u32, out: &mut [u8]) -> Result<(), UpdateError> {
        let end = at as u64 + out.len() as u64;
        if end > u64::from(self.pos) {
            return Err(UpdateError::NotSequential { expected: self.pos, got: end as u32 });
        }
        let flushed = self.pos - self.pos % D::WRITE_SIZE as u32;
        let n = (flushed.saturating_sub(at) as usize).min(out.len());
        self.dfu.read(at, &mut out[..n])?;
        for (k, o) in out[n..].iter_mut().enumerate() {
            *o = self.carry[(at as usize + n + k) - flushed as usize];
        }
        Ok(())
    }

    /// Writes a pending partial word, padded with the erased value.
    pub fn flush(&mut self) -> Result<(), UpdateError> {
        let w = D::WRITE_SIZE;
        let partial = self.pos as usize % w;
        if partial > 0 {
            let mut word = self.carry;
            word[partial..w].fill(ERASED);
            self.program(self.pos - partial as u32, &word[..w])?;
        }
        Ok(())
    }

    /// Verifies the whole image in DFU with our own rules (signature, counter, fits ACTIVE),
    /// then marks it for swap. Nothing is marked if it does not verify.
    pub fn finish(&mut self, opts: &VerifyOptions<'_>, buf: &mut [u8]) -> Result<ImageInfo, UpdateError> {
        self.flush()?;
        let info = image::verify(&mut self.dfu, opts, buf).map_err(UpdateError::Image)?;
        let mut guard = StateGuard::new(&mut self.state);
        if guard.state(buf)? == State::Swap {
            return Err(UpdateError::BadState);
        }
        let word = &mut buf[..S::WRITE_SIZE];
        BlockingFirmwareState::new(guard, word)
            .mark_updated()
            .map_err(|_| UpdateError::Flash(NorFlashErrorKind::Other))?;
        Ok(info)
    }
}

/// Confirms the running image after its self-test passed (embassy-boot's `mark_booted`).
pub fn confirm<S: NorFlash>(state: &mut S, buf: &mut [u8]) -> Result<(), UpdateError> {
    let word = &mut buf[..S::WRITE_SIZE];
    BlockingFirmwareState::new(StateGuard::new(state), word)
        .mark_booted()
        .map_err(|_| UpdateError::Flash(NorFlashErrorKind::Other))
}

/// Asks the bootloader to put the previous image back at the next boot, without waiting for the
/// new image's remaining boot attempts: for a new image that knows it is broken (its self-test
/// failed). Reset after it. Does nothing the bootloader acts on unless an image is being tested.
pub fn request_revert<S: NorFlash>(state: &mut S, buf: &mut [u8]) -> Result<(), UpdateError> {
    Ok(StateGuard::new(state).request_revert(buf)?)
}

/// What the app knows about this boot, from the image in ACTIVE and BOOT_RECORD (never from
/// embassy-boot's state alone: a cut inside `mark_booted` can leave any magic behind).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootInfo {
    /// The running image (header, SEC_CNT, Aliyun module and version).
    pub running: ImageInfo,
    /// This image was just swapped in and must run its self-test, then [`confirm`].
    pub awaiting_confirm: bool,
    /// What this boot did (see [`LastBoot`]).
    pub last: LastBoot,
    /// What downloads must meet: the stored floor, raised by the running image once it is
    /// confirmed (the bootloader stores that at the next boot). An image awaiting its confirm
    /// raises it when it confirms ([`Floor::confirmed`] with [`Floor::of`] the running image).
    pub floor: Floor,
    /// Starts of the image under test so far (0 when none is being tested).
    pub boots: u8,
    /// The record's sequence number (changes whenever the bootloader records something).
    pub record_seq: u32,
}

/// Reads [`BootInfo`] from ACTIVE, BOOT_RECORD and STATE (DFU is not read). ACTIVE must hold a
/// verifying image (the bootloader just checked it).
pub fn boot_info<A: ReadNorFlash, D, S: NorFlash, R: ReadNorFlash>(
    slots: &mut Slots<A, D, S, R>,
    keys: &[PublicKey],
    buf: &mut [u8],
) -> Result<BootInfo, UpdateError> {
    let rec = BootRecord::load(&mut slots.boot_record)?.map(|(_, r)| r).unwrap_or_default();
    let opts = VerifyOptions { keys, revoked: 0, min_sec_cnt: 0, slot_size: None };
    let running = image::verify(&mut slots.active, &opts, buf).map_err(UpdateError::Image)?;
    let magic = StateGuard::new(&mut slots.state).state(buf)?;
    let boots = match rec.phase {
        Phase::Testing { boots, .. } if magic == State::Swap => boots,
        _ => 0,
    };
    let awaiting_confirm = boots > 0;
    let floor = if awaiting_confirm { rec.floor() } else { rec.floor().confirmed(Floor::of(&running)) };
    Ok(BootInfo { running, awaiting_confirm, last: rec.last, floor, boots, record_seq: rec.seq })
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::*;
    use crate::sim::SimFlash;

    #[test]
    fn chunks_of_any_length_land_in_order() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        for chunk in [1usize, 3, 15, 16, 17, 1000, 4096, 10_000] {
            let mut dfu = SimFlash::<4096, 16>::new(16384, 0xFF);
            let mut state = SimFlash::<4096, 16>::new(4096, 0xFF);
            let mut u = Updater::new(FirmwareUpdaterConfig { dfu: &mut dfu, state: &mut state }, 0);
            for (i, c) in data.chunks(chunk).enumerate() {
                u.write((i * chunk) as u32, c).unwrap();
            }
            u.flush().unwrap();
            assert_eq!(u.position(), 10_000);
            assert_eq!(&dfu.bytes()[..10_000], &data[..], "chunks of {chunk}");
            assert!(dfu.bytes()[10_000..].iter().all(|&b| b == 0xFF));
        }
    }

    #[test]
    fn a_write_out_of_order_is_refused() {
        let mut dfu = SimFlash::<4096, 4>::new(8192, 0xFF);
        let mut state = SimFlash::<4096, 4>::new(4096, 0xFF);
        let mut u = Updater::new(FirmwareUpdaterConfig { dfu: &mut dfu, state: &mut state }, 0);
        u.write(0, &[1; 10]).unwrap();
        assert_eq!(u.write(20, &[1; 4]), Err(UpdateError::NotSequential { expected: 10, got: 20 }));
    }

    #[test]
    fn a_resume_at_a_page_boundary_erases_that_page_first() {
        let mut dfu = SimFlash::<4096, 4>::new(8192, 0xFF);
        let mut state = SimFlash::<4096, 4>::new(4096, 0xFF);
        dfu.load(4096, &[0x00; 100]); // what an interrupted download left
        let mut u = Updater::new(FirmwareUpdaterConfig { dfu: &mut dfu, state: &mut state }, 4096);
        u.write(4096, &[0x5A; 8]).unwrap();
        u.flush().unwrap();
        assert_eq!(&dfu.bytes()[4096..4104], &[0x5A; 8]);
        assert!(dfu.bytes()[4104..4196].iter().all(|&b| b == 0xFF));
    }
}
