//! The boot policy: what the bootloader decides before it jumps (DESIGN.md "Boot flow").
//!
//! | STATE magic | BOOT_RECORD phase | what [`boot`] does |
//! |---|---|---|
//! | Swap | Idle | verify DFU (hash, signature, SEC_CNT, fits ACTIVE). Bad: record `Refused(why)`, cancel the swap. Good: record `Swapping{pages}`, swap those pages, record `Testing` |
//! | Swap | Swapping | resume the interrupted swap (same pages), record `Testing` |
//! | Swap | Testing | swap progress in STATE: the new image booted and did not confirm: record `Reverting`, swap back, record `Reverted` |
//! | Swap | Testing | no swap progress: the app confirmed and marked a new update before a reboot: record `Confirmed` (and the counter), then as Idle |
//! | Swap | Reverting | resume the interrupted revert |
//! | not Swap | Testing | the app confirmed: record `Confirmed` |
//! | not Swap | Reverting | a revert finished before its record: record `Reverted` |
//! | any | any | verify ACTIVE; raise the stored counter to its SEC_CNT once confirmed; jump only if it verifies |
//!
//! `pages` is fixed before the first page moves: the pages both images occupy, not the whole slot.
//! embassy-boot does the page moves and keeps their progress in STATE; it is given partition views
//! of exactly `pages` (ACTIVE) and `pages + 1` (DFU) pages.

mod flash;
pub mod progress;
pub mod record;
pub mod updater;

pub use flash::{StateGuard, Window};
pub use record::{BootRecord, LastBoot, Phase};
pub use updater::{boot_info, confirm, BootInfo, UpdateError, Updater};

use crate::image::{self, ImageError, ImageInfo, PublicKey, VerifyOptions};
use embassy_boot::{BlockingFirmwareState, BootLoader, BootLoaderConfig, State};
use embedded_storage::nor_flash::{NorFlash, NorFlashErrorKind};

/// The flash partitions the bootloader owns, by role.
pub struct Slots<A, D, S, R> {
    /// The slot that runs.
    pub active: A,
    /// The download slot (ACTIVE + at least one page).
    pub dfu: D,
    /// embassy-boot's state.
    pub state: S,
    /// Our record (two halves).
    pub boot_record: R,
}

/// Why the bootloader cannot jump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum BootError {
    /// A flash operation failed (the bootloader retries from the top after a reset).
    Flash(NorFlashErrorKind),
    /// ACTIVE holds no image that verifies.
    NoBootableImage(ImageError),
}

impl From<NorFlashErrorKind> for BootError {
    fn from(k: NorFlashErrorKind) -> Self {
        BootError::Flash(k)
    }
}

impl From<embassy_boot::BootError> for BootError {
    fn from(e: embassy_boot::BootError) -> Self {
        match e {
            embassy_boot::BootError::Flash(k) => BootError::Flash(k),
            embassy_boot::BootError::BadMagic => BootError::Flash(NorFlashErrorKind::Other),
        }
    }
}

impl From<embassy_boot::FirmwareUpdaterError> for BootError {
    fn from(e: embassy_boot::FirmwareUpdaterError) -> Self {
        match e {
            embassy_boot::FirmwareUpdaterError::Flash(k) => BootError::Flash(k),
            _ => BootError::Flash(NorFlashErrorKind::Other),
        }
    }
}

impl core::fmt::Display for BootError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BootError::Flash(k) => write!(f, "flash error: {k:?}"),
            BootError::NoBootableImage(e) => write!(f, "no bootable image in ACTIVE: {e}"),
        }
    }
}

impl core::error::Error for BootError {}

/// What the bootloader jumps to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Boot {
    /// The verified image in ACTIVE (its vector table is at `header.hdr_size`).
    pub image: ImageInfo,
    /// The record as this boot left it.
    pub record: BootRecord,
}

/// Runs the boot policy over `slots` and returns the image to jump to.
///
/// `buf` is the copy buffer: its length must divide the page size and be a multiple of every
/// write size (e.g. 256 or 1024 bytes). `erased` is the flash's erased value.
pub fn boot<A: NorFlash, D: NorFlash, S: NorFlash, R: NorFlash>(
    slots: &mut Slots<A, D, S, R>,
    keys: &[PublicKey],
    erased: u8,
    buf: &mut [u8],
) -> Result<Boot, BootError> {
    let page = A::ERASE_SIZE.max(D::ERASE_SIZE) as u32;
    let loaded = BootRecord::load(&mut slots.boot_record)?.map(|(_, r)| r).unwrap_or_default();
    let mut rec = loaded;
    // `last` says what THIS boot did, so the app reports an outcome once: a boot that changes
    // nothing records `Nothing` (one write after each outcome, none after that).
    rec.last = LastBoot::Nothing;
    let state = StateGuard::new(&mut slots.state, erased).state(buf)?;
    let slot = slots.active.capacity() as u32;

    let mut phase_after_swap = None;
    if state == State::Swap {
        if let Phase::Testing { pages } = rec.phase {
            if !StateGuard::new(&mut slots.state, erased).steps_done(0, 2 * pages, buf)? {
                // No swap progress in STATE: the app confirmed the image swapped in (mark_booted
                // erases STATE) and marked a new update before any reboot recorded the confirm.
                // Record the confirm (and its counter) first, then handle the new update.
                rec.phase = Phase::Idle;
                rec.last = LastBoot::Confirmed;
                let opts = VerifyOptions { keys, min_sec_cnt: rec.sec_cnt, slot_size: Some(slot) };
                if let Ok(running) = image::verify(&mut slots.active, &opts, buf) {
                    rec.sec_cnt = rec.sec_cnt.max(running.sec_cnt);
                }
            }
        }
        match rec.phase {
            Phase::Idle => {
                let opts = VerifyOptions { keys, min_sec_cnt: rec.sec_cnt, slot_size: Some(slot) };
                match image::verify(&mut slots.dfu, &opts, buf) {
                    Err(why) => {
                        rec.last = LastBoot::Refused(why);
                        store(&mut rec, &mut slots.boot_record, erased)?;
                        // Back to Boot: the swap is cancelled, nothing moved.
                        let word = &mut buf[..S::WRITE_SIZE];
                        BlockingFirmwareState::new(StateGuard::new(&mut slots.state, erased), word).mark_booted()?;
                    }
                    Ok(new) => {
                        let old = image::extent(&mut slots.active).unwrap_or(0);
                        let pages = new.total_len.max(old).div_ceil(page);
                        rec.phase = Phase::Swapping { pages };
                        rec.last = LastBoot::Nothing;
                        store(&mut rec, &mut slots.boot_record, erased)?;
                        phase_after_swap = Some(pages);
                    }
                }
            }
            Phase::Swapping { pages } => phase_after_swap = Some(pages),
            Phase::Testing { pages } | Phase::Reverting { pages } => {
                revert(slots, &mut rec, pages, erased, buf)?;
            }
        }
    } else {
        match rec.phase {
            Phase::Testing { .. } => {
                rec.phase = Phase::Idle;
                rec.last = LastBoot::Confirmed;
            }
            Phase::Reverting { .. } => {
                rec.phase = Phase::Idle;
                rec.last = LastBoot::Reverted;
            }
            // A swap cannot lose its magic before it completes; nothing to resume.
            Phase::Swapping { .. } => rec.phase = Phase::Idle,
            Phase::Idle => {}
        }
    }

    if let Some(pages) = phase_after_swap {
        // embassy-boot would revert a swap that already completed: only resume an unfinished one.
        if !StateGuard::new(&mut slots.state, erased).steps_done(0, 2 * pages, buf)? {
            prepare(slots, pages, page, erased, buf)?;
        }
        rec.phase = Phase::Testing { pages };
        rec.last = LastBoot::SwappedIn;
        store(&mut rec, &mut slots.boot_record, erased)?;
    }

    let opts = VerifyOptions { keys, min_sec_cnt: rec.sec_cnt, slot_size: Some(slot) };
    let image = match image::verify(&mut slots.active, &opts, buf) {
        Ok(i) => i,
        Err(e) => match rec.phase {
            // The image just swapped in does not verify (it did in DFU): put the old one back.
            Phase::Testing { pages } => {
                revert(slots, &mut rec, pages, erased, buf)?;
                image::verify(&mut slots.active, &opts, buf).map_err(BootError::NoBootableImage)?
            }
            _ => return Err(BootError::NoBootableImage(e)),
        },
    };
    if rec.phase == Phase::Idle && image.sec_cnt > rec.sec_cnt {
        rec.sec_cnt = image.sec_cnt;
    }
    if rec != loaded {
        store(&mut rec, &mut slots.boot_record, erased)?;
    }
    Ok(Boot { image, record: rec })
}

fn store<R: NorFlash>(rec: &mut BootRecord, region: &mut R, erased: u8) -> Result<(), BootError> {
    rec.store(region, erased).map_err(BootError::Flash)
}

fn revert<A: NorFlash, D: NorFlash, S: NorFlash, R: NorFlash>(
    slots: &mut Slots<A, D, S, R>,
    rec: &mut BootRecord,
    pages: u32,
    erased: u8,
    buf: &mut [u8],
) -> Result<(), BootError> {
    if rec.phase != (Phase::Reverting { pages }) {
        rec.phase = Phase::Reverting { pages };
        store(rec, &mut slots.boot_record, erased)?;
    }
    let page = A::ERASE_SIZE.max(D::ERASE_SIZE) as u32;
    prepare(slots, pages, page, erased, buf)?;
    rec.phase = Phase::Idle;
    rec.last = LastBoot::Reverted;
    store(rec, &mut slots.boot_record, erased)
}

/// embassy-boot's `prepare_boot` over views of `pages` pages: swaps, resumes or reverts.
fn prepare<A: NorFlash, D: NorFlash, S: NorFlash, R: NorFlash>(
    slots: &mut Slots<A, D, S, R>,
    pages: u32,
    page: u32,
    erased: u8,
    buf: &mut [u8],
) -> Result<State, BootError> {
    let mut bl = BootLoader::new(BootLoaderConfig {
        active: Window::new(&mut slots.active, pages * page),
        dfu: Window::new(&mut slots.dfu, (pages + 1) * page),
        state: StateGuard::new(&mut slots.state, erased),
    });
    Ok(bl.prepare_boot(buf)?)
}
