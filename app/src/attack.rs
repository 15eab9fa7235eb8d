//! The `attack` feature: an app that, once running, tries to overwrite what the bootloader
//! protects before it jumps (BOOTLOADER and BOOT_RECORD): an erase and a write through the
//! board's own flash driver and a raw store, into each region, saying what it attempts.
//!
//! On a protected device every attempt faults and the device resets, so each attempt runs in a
//! boot of its own; its progress lives in RAM that neither the bootloader nor the app's startup
//! touches (`.uninit`, checked by a magic: a cold start begins at the first attempt). After the
//! last attempt the app says how many changed protected flash and carries on as a normal app.
//! `xtask/tests/qemu_protect.rs` runs it behind the real bootloader under QEMU, and behind one
//! built with `unprotected` (where every attempt lands) as the control.

use core::mem::MaybeUninit;
use embedded_storage::nor_flash::{NorFlash, NorFlashError};
use memory_layouts::{Layout, Region};

/// How an attempt writes.
#[derive(Clone, Copy)]
enum How {
    /// Erase the region's first page through the flash driver.
    Erase,
    /// Program 16 zero bytes at the region's last 16 through the flash driver.
    Write,
    /// A plain 32-bit store of 0 at 32 bytes before the region's end.
    Store,
}

/// The attempts, in order: (how, region name).
const ATTEMPTS: [(How, &str); 6] = [
    (How::Erase, "BOOTLOADER"),
    (How::Write, "BOOTLOADER"),
    (How::Store, "BOOTLOADER"),
    (How::Erase, "BOOT_RECORD"),
    (How::Write, "BOOT_RECORD"),
    (How::Store, "BOOT_RECORD"),
];

const MAGIC: u32 = 0xA77A_C4ED;

/// [magic, next attempt, attempts that returned, attempts that changed flash].
#[link_section = ".uninit.ATTACK"]
static mut PROGRESS: MaybeUninit<[u32; 4]> = MaybeUninit::uninit();

fn load() -> [u32; 4] {
    // SAFETY: one thread; the words are plain RAM (garbage on a cold start, caught by MAGIC).
    let p = unsafe { core::ptr::addr_of!(PROGRESS).cast::<[u32; 4]>().read_volatile() };
    if p[0] == MAGIC && p[1] as usize <= ATTEMPTS.len() {
        p
    } else {
        [MAGIC, 0, 0, 0]
    }
}

fn save(p: [u32; 4]) {
    // SAFETY: as in `load`.
    unsafe { core::ptr::addr_of_mut!(PROGRESS).cast::<[u32; 4]>().write_volatile(p) }
}

/// Reads flash through its memory map (both boards map it; reads stay allowed).
fn read(at: u32, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        // SAFETY: `at..at + buf.len()` lies in a flash region of the layout.
        *b = unsafe { core::ptr::read_volatile((at as usize + i) as *const u8) };
    }
}

/// Runs the attempts not yet made (each one first records that it started, so a fault that
/// resets the device moves on to the next), then reports. `flash` is the board's flash driver
/// over a region (offsets from its origin); `say` logs a line.
pub fn run<N: NorFlash>(l: &Layout, mut flash: impl FnMut(Region) -> N, say: impl Fn(core::fmt::Arguments<'_>)) {
    let page = l.geometry.erase_size;
    let mut p = load();
    while (p[1] as usize) < ATTEMPTS.len() {
        let n = p[1] as usize;
        let (how, name) = ATTEMPTS[n];
        let r = if name == "BOOTLOADER" { l.bootloader } else { l.boot_record };
        let (off, len, what) = match how {
            How::Erase => (0, page, "erase a page through the flash driver"),
            How::Write => (r.length - 16, 16, "write 16 zero bytes through the flash driver"),
            How::Store => (r.length - 32, 4, "store a zero word with a plain store"),
        };
        let at = r.origin + off;
        say(format_args!("attack: {}/{}: {} in {} at {:#010x}", n + 1, ATTEMPTS.len(), what, name, at));
        p[1] += 1;
        save(p);
        let mut before = [0u8; 32];
        let mut after = [0u8; 32];
        let n_read = len.min(32) as usize;
        read(at, &mut before[..n_read]);
        let res = match how {
            How::Erase => flash(r).erase(0, page).map_err(|e| e.kind()),
            How::Write => flash(r).write(off, &[0; 16]).map_err(|e| e.kind()),
            How::Store => {
                // SAFETY: deliberately none: this is the attack.
                unsafe { core::ptr::write_volatile(at as *mut u32, 0) };
                Ok(())
            }
        };
        read(at, &mut after[..n_read]);
        let changed = before != after;
        p[2] += 1;
        p[3] += changed as u32;
        save(p);
        say(format_args!(
            "attack: {}/{}: not stopped ({:?}): {} {}",
            n + 1,
            ATTEMPTS.len(),
            res,
            name,
            if changed { "changed" } else { "unchanged" }
        ));
    }
    say(format_args!(
        "attack: done: {} of {} attempts changed protected flash, {} faulted",
        p[3],
        ATTEMPTS.len(),
        ATTEMPTS.len() as u32 - p[2]
    ));
}
