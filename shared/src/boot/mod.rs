//! The boot policy: what the bootloader decides before it jumps (the README, "How a device boots").
//!
//! | STATE magic | BOOT_RECORD phase | what [`boot`] does |
//! |---|---|---|
//! | Swap | Idle | verify DFU (hash, signature by a key not revoked, SEC_CNT, fits ACTIVE). Bad: record `Refused(why)`, cancel the swap. Good: record `Swapping{pages}`, swap those pages, record `Testing{boots: 1}` |
//! | Swap | Swapping | resume the interrupted swap (same pages), record `Testing` |
//! | Swap | Testing{boots} | swap progress in STATE: the new image booted and did not confirm: with `boots` < the board's `boot_attempts` and no revert request (last STATE word), record `boots + 1` and start it again; else record `Reverting`, swap back, record `Reverted` |
//! | Swap | Testing | no swap progress: the app confirmed and marked a new update before a reboot: record `Confirmed` (counter, revocations), then as Idle |
//! | Swap | Reverting | resume the interrupted revert |
//! | not Swap | Testing | the app confirmed: record `Confirmed` |
//! | not Swap | Reverting | a revert finished before its record: record `Reverted` |
//! | any | any | verify ACTIVE; once confirmed (Idle), raise the stored counter to its SEC_CNT and add its REVOKE_KEYS to the revoked keys; jump only if it verifies |
//!
//! `pages` is fixed before the first page moves: the pages both images occupy, not the whole slot.
//! embassy-boot does the page moves and keeps their progress in STATE; it is given partition views
//! of exactly `pages` (ACTIVE) and `pages + 1` (DFU) pages.

mod flash;
pub mod record;
pub mod resume;
pub mod updater;

pub use flash::{StateGuard, Window};
pub use record::{BootRecord, LastBoot, Phase};
pub use updater::{boot_info, confirm, request_revert, BootInfo, FirmwareUpdaterConfig, UpdateError, Updater};

use crate::image::{self, ImageError, ImageInfo, PublicKey, VerifyOptions};
use embassy_boot::{BlockingFirmwareState, BootLoader, BootLoaderConfig, State};
use embedded_storage::nor_flash::{NorFlash, NorFlashErrorKind};

/// The value erased flash reads, fixed when this crate is built: 0xFF, or 0x00 with the
/// `flash-erase-zero` feature, which also builds embassy-boot's STATE logic for 0x00 (its feature
/// of that name): one switch, so the two cannot disagree. Each board's layout must say the same
/// (`memory_layouts::Geometry::erased`; the app and the bootloader check it at compile time).
pub const ERASED: u8 = if cfg!(feature = "flash-erase-zero") { 0x00 } else { 0xFF };

/// The flash partitions, by role: embassy-boot's `BootLoaderConfig` plus BOOT_RECORD. The
/// bootloader [`boot`]s over them; the app reads its [`boot_info`] from them, then hands DFU and
/// STATE to an [`Updater`].
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

/// What a bootloader build decides with.
#[derive(Clone, Copy, Debug)]
pub struct Policy<'k> {
    /// The trusted keys; a key's index is its slot (revocation names slots).
    pub keys: &'k [PublicKey],
    /// Starts an unconfirmed new image gets before it is reverted (the board's
    /// `boot_attempts`, at least 1). Every reset counts: power cut, watchdog, panic.
    pub boot_attempts: u8,
}

/// Runs the boot policy over `slots` and returns the image to jump to.
///
/// `buf` is the copy buffer: its length must divide the page size and be a multiple of every
/// write size (e.g. 256 or 1024 bytes).
pub fn boot<A: NorFlash, D: NorFlash, S: NorFlash, R: NorFlash>(
    slots: &mut Slots<A, D, S, R>,
    policy: &Policy<'_>,
    buf: &mut [u8],
) -> Result<Boot, BootError> {
    let Policy { keys, boot_attempts } = *policy;
    let page = A::ERASE_SIZE.max(D::ERASE_SIZE) as u32;
    let loaded = BootRecord::load(&mut slots.boot_record)?.map(|(_, r)| r).unwrap_or_default();
    let mut rec = loaded;
    // `last` says what THIS boot did, so the app reports an outcome once: a boot that changes
    // nothing records `Nothing` (one write after each outcome, none after that).
    rec.last = LastBoot::Nothing;
    let state = StateGuard::new(&mut slots.state).state(buf)?;
    let slot = slots.active.capacity() as u32;
    let opts = |rec: &BootRecord| rec.floor().verify_options(keys, Some(slot));

    let mut phase_after_swap = None;
    if state == State::Swap {
        if let Phase::Testing { pages, .. } = rec.phase {
            if !StateGuard::new(&mut slots.state).steps_done(0, 2 * pages, buf)? {
                // No swap progress in STATE: the app confirmed the image swapped in (mark_booted
                // erases STATE) and marked a new update before any reboot recorded the confirm.
                // Record the confirm (its counter, its revocations) first, then handle the new
                // update.
                rec.phase = Phase::Idle;
                rec.last = LastBoot::Confirmed;
                if let Ok(running) = image::verify(&mut slots.active, &opts(&rec), buf) {
                    confirmed(&mut rec, &running);
                }
            }
        }
        match rec.phase {
            Phase::Idle => match image::verify(&mut slots.dfu, &opts(&rec), buf) {
                Err(why) => {
                    rec.last = LastBoot::Refused(why);
                    store(&mut rec, &mut slots.boot_record)?;
                    // Back to Boot: the swap is cancelled, nothing moved.
                    let word = &mut buf[..S::WRITE_SIZE];
                    BlockingFirmwareState::new(StateGuard::new(&mut slots.state), word).mark_booted()?;
                }
                Ok(new) => {
                    let old = image::extent(&mut slots.active).unwrap_or(0);
                    let pages = new.total_len.max(old).div_ceil(page);
                    rec.phase = Phase::Swapping { pages };
                    rec.last = LastBoot::Nothing;
                    store(&mut rec, &mut slots.boot_record)?;
                    phase_after_swap = Some(pages);
                }
            },
            Phase::Swapping { pages } => phase_after_swap = Some(pages),
            // The new image was started and did not confirm: start it again while it has
            // attempts left and has not asked for the revert, else put the old one back.
            Phase::Testing { pages, boots } => {
                let asked = StateGuard::new(&mut slots.state).revert_requested(buf)?;
                if asked || boots >= boot_attempts {
                    revert(slots, &mut rec, pages, buf)?;
                } else {
                    rec.phase = Phase::Testing { pages, boots: boots + 1 };
                    rec.last = LastBoot::SwappedIn;
                    store(&mut rec, &mut slots.boot_record)?;
                }
            }
            Phase::Reverting { pages } => revert(slots, &mut rec, pages, buf)?,
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
        if !StateGuard::new(&mut slots.state).steps_done(0, 2 * pages, buf)? {
            prepare(slots, pages, page, buf)?;
        }
        rec.phase = Phase::Testing { pages, boots: 1 };
        rec.last = LastBoot::SwappedIn;
        store(&mut rec, &mut slots.boot_record)?;
    }

    let image = match image::verify(&mut slots.active, &opts(&rec), buf) {
        Ok(i) => i,
        Err(e) => match rec.phase {
            // The image just swapped in does not verify (it did in DFU): put the old one back.
            Phase::Testing { pages, .. } => {
                revert(slots, &mut rec, pages, buf)?;
                image::verify(&mut slots.active, &opts(&rec), buf).map_err(BootError::NoBootableImage)?
            }
            _ => return Err(BootError::NoBootableImage(e)),
        },
    };
    if rec.phase == Phase::Idle {
        confirmed(&mut rec, &image);
    }
    if rec != loaded {
        store(&mut rec, &mut slots.boot_record)?;
    }
    Ok(Boot { image, record: rec })
}

/// What a confirmed image raises: see [`Floor::confirmed`].
fn confirmed(rec: &mut BootRecord, image: &ImageInfo) {
    let f = rec.floor().confirmed(Floor::of(image));
    (rec.sec_cnt, rec.revoked) = (f.sec_cnt, f.revoked);
}

/// What an image must meet to be installed: the security counter it must reach and the key
/// slots that may no longer sign. Kept in BOOT_RECORD by the bootloader, raised by every
/// confirmed image; the app's OTA client holds the same floor for its downloads
/// (`shared::ota::BootReport`), raised at the confirm by this same rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Floor {
    /// Images with a lower SEC_CNT are refused.
    pub sec_cnt: u32,
    /// Bit j: images signed by trusted key j are refused.
    pub revoked: u32,
}

impl Floor {
    /// What confirming `image` would raise a floor to: its SEC_CNT and its REVOKE_KEYS.
    pub fn of(image: &ImageInfo) -> Floor {
        Floor { sec_cnt: image.sec_cnt, revoked: image.revokes }
    }

    /// The floor once an image that raises to `image` (see [`Floor::of`]) is confirmed: the
    /// counter raised to its SEC_CNT, its revocations added. Both only ever grow.
    #[must_use]
    pub fn confirmed(self, image: Floor) -> Floor {
        Floor { sec_cnt: self.sec_cnt.max(image.sec_cnt), revoked: self.revoked | image.revoked }
    }

    /// The options that check an image against this floor.
    pub fn verify_options<'k>(self, keys: &'k [PublicKey], slot_size: Option<u32>) -> VerifyOptions<'k> {
        VerifyOptions { keys, revoked: self.revoked, min_sec_cnt: self.sec_cnt, slot_size }
    }
}

fn store<R: NorFlash>(rec: &mut BootRecord, region: &mut R) -> Result<(), BootError> {
    rec.store(region).map_err(BootError::Flash)
}

fn revert<A: NorFlash, D: NorFlash, S: NorFlash, R: NorFlash>(
    slots: &mut Slots<A, D, S, R>,
    rec: &mut BootRecord,
    pages: u32,
    buf: &mut [u8],
) -> Result<(), BootError> {
    if rec.phase != (Phase::Reverting { pages }) {
        rec.phase = Phase::Reverting { pages };
        store(rec, &mut slots.boot_record)?;
    }
    let page = A::ERASE_SIZE.max(D::ERASE_SIZE) as u32;
    prepare(slots, pages, page, buf)?;
    rec.phase = Phase::Idle;
    rec.last = LastBoot::Reverted;
    store(rec, &mut slots.boot_record)
}

/// embassy-boot's `prepare_boot` over views of `pages` pages: swaps, resumes or reverts.
fn prepare<A: NorFlash, D: NorFlash, S: NorFlash, R: NorFlash>(
    slots: &mut Slots<A, D, S, R>,
    pages: u32,
    page: u32,
    buf: &mut [u8],
) -> Result<State, BootError> {
    let mut bl = BootLoader::new(BootLoaderConfig {
        active: Window::new(&mut slots.active, pages * page),
        dfu: Window::new(&mut slots.dfu, (pages + 1) * page),
        state: StateGuard::new(&mut slots.state),
    });
    Ok(bl.prepare_boot(buf)?)
}
