//! One source of truth for memory: a `const` table per board.
//!
//! Every board has the same regions, in flash order:
//!
//! ```text
//!  flash origin
//!  +--------------+ BOOTLOADER   the bootloader, flashed once
//!  +--------------+ BOOT_RECORD  bootloader-owned: security counter, swap size, last refusal
//!  +--------------+ STATE        embassy-boot's state (magic + swap/revert progress words)
//!  +--------------+ ACTIVE       the running image: header (hdr_size) | app | TLVs
//!  +--------------+ DFU          the download slot, ACTIVE + at least one page
//!  +--------------+ ...unused...
//!  +--------------+ PROVISION    device credentials, written by `cargo xtask provision`
//! ```
//!
//! The bootloader links into BOOTLOADER; the app links at `ACTIVE.origin + image_header_size`.
//! Both linker scripts are rendered from the table by `render_memory_x` (feature `render`), called
//! from the firmware build scripts; `xtask` and the flash simulator read the same table for
//! packaging offsets and geometry. Const asserts below enforce embassy-boot's rules at compile time.
#![cfg_attr(not(feature = "render"), no_std)]
#![warn(missing_docs)]

/// A contiguous address range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First address.
    pub origin: u32,
    /// Length in bytes.
    pub length: u32,
}

impl Region {
    /// One past the last address.
    pub const fn end(&self) -> u32 {
        self.origin + self.length
    }
    /// This region as an offset range inside a flash device that starts at `base`.
    pub const fn offset_in(&self, base: u32) -> core::ops::Range<u32> {
        (self.origin - base)..(self.end() - base)
    }
}

/// How the flash device behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Smallest erasable unit, and embassy-boot's swap page.
    pub erase_size: u32,
    /// Smallest programmable unit; writes are aligned to it.
    pub write_size: u32,
    /// Value read back from erased flash.
    pub erased: u8,
}

/// The boards this project runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Board {
    /// The device simulated on Linux (flash is a file with strict NOR semantics).
    Host,
    /// Cortex-M4 under `qemu-system-arm -M mps2-an386`, flash in `mps.ram`.
    QemuAn386,
    /// Nordic nRF52840-DK with a Quectel modem.
    Nrf52840Dk,
    /// ST B-L475E-IOT01A (STM32L475VG) with a Quectel modem: built and sized, not run here.
    BL475eIot01a,
}

impl Board {
    /// Every board, in a fixed order.
    pub const ALL: [Board; 4] = [Board::Host, Board::QemuAn386, Board::Nrf52840Dk, Board::BL475eIot01a];

    /// The name used on the command line and in release folders.
    pub const fn name(self) -> &'static str {
        match self {
            Board::Host => "host",
            Board::QemuAn386 => "qemu-an386",
            Board::Nrf52840Dk => "nrf52840-dk",
            Board::BL475eIot01a => "b-l475e-iot01a",
        }
    }

    /// Looks a board up by [`Board::name`].
    pub fn from_name(name: &str) -> Option<Board> {
        Board::ALL.into_iter().find(|b| b.name() == name)
    }

    /// This board's table.
    pub const fn layout(self) -> &'static Layout {
        match self {
            Board::Host => &HOST,
            Board::QemuAn386 => &QEMU_AN386,
            Board::Nrf52840Dk => &NRF52840_DK,
            Board::BL475eIot01a => &B_L475E_IOT01A,
        }
    }

    /// The Rust target the firmware is built for, if this board runs firmware.
    pub const fn target(self) -> Option<&'static str> {
        match self {
            Board::Host => None,
            Board::QemuAn386 | Board::Nrf52840Dk | Board::BL475eIot01a => Some("thumbv7em-none-eabihf"),
        }
    }
}

/// A board's memory table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Which board this is.
    pub board: Board,
    /// The whole flash device (partition offsets are relative to its origin).
    pub flash: Region,
    /// Erase / write sizes and erased value of the flash device.
    pub geometry: Geometry,
    /// The bootloader's code.
    pub bootloader: Region,
    /// Bootloader-owned record (two alternating copies, one per half).
    pub boot_record: Region,
    /// embassy-boot's state partition.
    pub state: Region,
    /// The slot the device boots from.
    pub active: Region,
    /// The slot updates are downloaded into.
    pub dfu: Region,
    /// Device credentials (product key, device name, secret), outside both slots.
    pub provision: Region,
    /// RAM available to the bootloader and to the app (they never run at once). Empty on `host`.
    pub ram: Region,
    /// Bytes reserved before the app's vector table in an image (MCUboot `hdr_size`).
    pub image_header_size: u32,
    /// Starts an unconfirmed new image gets before the bootloader reverts it (every reset counts:
    /// power cut, watchdog, panic). An app whose self-test fails asks for the revert at once.
    pub boot_attempts: u8,
}

/// Bytes reserved after the app in ACTIVE for the TLV areas (hashes, keys, signature, version).
pub const TLV_RESERVE: u32 = 1024;

impl Layout {
    /// The flash regions in address order, with their names.
    pub const fn flash_regions(&self) -> [(&'static str, Region); 6] {
        [
            ("BOOTLOADER", self.bootloader),
            ("BOOT_RECORD", self.boot_record),
            ("STATE", self.state),
            ("ACTIVE", self.active),
            ("DFU", self.dfu),
            ("PROVISION", self.provision),
        ]
    }

    /// The flash the bootloader makes unwritable for the app before it jumps (until the next
    /// reset): BOOTLOADER and BOOT_RECORD, which [`Layout::check`] requires to be adjacent. STATE,
    /// the app's half of the swap protocol, starts right after it and stays writable.
    pub const fn bootloader_owned(&self) -> Region {
        Region { origin: self.bootloader.origin, length: self.boot_record.end() - self.bootloader.origin }
    }

    /// Number of swap pages in ACTIVE.
    pub const fn active_pages(&self) -> u32 {
        self.active.length / self.geometry.erase_size
    }

    /// State words embassy-boot needs for this ACTIVE: magic, progress validity, then two words
    /// per page for the swap and two per page for the revert.
    pub const fn state_words_needed(&self) -> u32 {
        2 + 4 * self.active_pages()
    }

    /// Where the app's code starts (its vector table).
    pub const fn app_origin(&self) -> u32 {
        self.active.origin + self.image_header_size
    }

    /// The largest app binary that still leaves room for the header and TLVs in ACTIVE.
    pub const fn app_max_len(&self) -> u32 {
        self.active.length - self.image_header_size - TLV_RESERVE
    }

    /// Checks the table; panics (at compile time, from the `const _` items below) with the broken
    /// rule.
    pub const fn check(&self) {
        let g = self.geometry;
        assert!(g.erase_size.is_power_of_two() && g.write_size.is_power_of_two());
        assert!(g.erase_size.is_multiple_of(g.write_size), "erase size must be a multiple of write size");
        // embassy-boot 0.7 fixes STATE's erased value at build time (its `flash-erase-zero` feature);
        // this project builds it for 0xFF and sweeps only that, so 0x00 flash is refused here.
        assert!(g.erased == 0xFF, "erased value must be 0xFF (embassy-boot is built without flash-erase-zero)");
        assert!(self.boot_attempts >= 1, "boot_attempts must be at least 1");
        let regions = self.flash_regions();
        let mut i = 0;
        while i < regions.len() {
            let r = regions[i].1;
            assert!(r.length > 0, "every flash region must be non-empty");
            assert!((r.origin - self.flash.origin).is_multiple_of(g.erase_size), "regions must be page aligned");
            assert!(r.length.is_multiple_of(g.erase_size), "region lengths must be whole pages");
            assert!(r.origin >= self.flash.origin && r.end() <= self.flash.end(), "region outside flash");
            if i > 0 {
                assert!(regions[i - 1].1.end() <= r.origin, "regions must be in order and not overlap");
            }
            i += 1;
        }
        // embassy-boot: DFU must be at least ACTIVE + one page (the swap scratch page).
        assert!(self.dfu.length >= self.active.length + g.erase_size, "DFU must be >= ACTIVE + 1 page");
        // embassy-boot: STATE holds 2 + 4*N words; never sized to the exact minimum (25% margin).
        // Every mark_updated / mark_booted erases all of STATE, so it is not made larger.
        assert!(
            4 * (self.state.length / g.write_size) >= 5 * self.state_words_needed(),
            "STATE must hold 2 + 4*N words with a 25% margin"
        );
        // The bootloader write-protects BOOTLOADER + BOOT_RECORD as one range (nRF52840 ACL).
        assert!(self.bootloader.end() == self.boot_record.origin, "BOOT_RECORD must follow BOOTLOADER");
        // BOOT_RECORD: two copies, each on its own page(s).
        assert!(self.boot_record.length >= 2 * g.erase_size, "BOOT_RECORD needs two pages");
        assert!((self.boot_record.length / g.erase_size).is_multiple_of(2), "BOOT_RECORD halves must be whole pages");
        // The vector table must be aligned (VTOR needs 128-byte alignment at least, 512 for 112 IRQs).
        assert!(
            self.image_header_size >= 32 && self.image_header_size.is_multiple_of(512),
            "header size must be n*0x200"
        );
        assert!(self.app_max_len() > 0);
    }
}

/// The host-simulated device: a 4 MiB flash file with an nRF52840's geometry (4 KiB pages, 4-byte
/// writes) and slots large enough for the 1 MiB images of the benchmarks.
pub const HOST: Layout = Layout {
    board: Board::Host,
    flash: Region { origin: 0, length: 0x40_0000 },
    geometry: Geometry { erase_size: 4096, write_size: 4, erased: 0xFF },
    bootloader: Region { origin: 0x0_0000, length: 0xC000 },
    boot_record: Region { origin: 0x0_C000, length: 0x2000 },
    state: Region { origin: 0x0_E000, length: 0x2000 },
    active: Region { origin: 0x1_0000, length: 0x18_0000 },
    dfu: Region { origin: 0x19_0000, length: 0x18_1000 },
    provision: Region { origin: 0x3F_F000, length: 0x1000 },
    ram: Region { origin: 0, length: 0 },
    image_header_size: 0x200,
    boot_attempts: 3,
};

/// qemu-an386: flash is the 16 MiB `mps.ram` at 0x2100_0000, booted with
/// `-global armv7m.init-nsvtor=0x21000000`. The firmware's NOR driver uses 8 KiB pages and 16-byte
/// writes (an ECC-flash-like geometry, unlike the nRF52840's), RAM is SSRAM2 at 0x2000_0000.
pub const QEMU_AN386: Layout = Layout {
    board: Board::QemuAn386,
    flash: Region { origin: 0x2100_0000, length: 0x100_0000 },
    geometry: Geometry { erase_size: 8192, write_size: 16, erased: 0xFF },
    bootloader: Region { origin: 0x2100_0000, length: 0x1_0000 },
    boot_record: Region { origin: 0x2101_0000, length: 0x4000 },
    state: Region { origin: 0x2101_4000, length: 0x4000 },
    active: Region { origin: 0x2101_8000, length: 0x10_0000 },
    dfu: Region { origin: 0x2111_8000, length: 0x10_2000 },
    provision: Region { origin: 0x21FF_E000, length: 0x2000 },
    ram: Region { origin: 0x2000_0000, length: 0x4_0000 },
    // No device crate: cortex-m-rt's full 240-IRQ vector table needs 1 KiB alignment.
    image_header_size: 0x400,
    boot_attempts: 3,
};

/// qemu-an386's CMSDK APB watchdog (the bootloader starts it, the app feeds it; QEMU models it:
/// a second timeout resets the machine).
pub const QEMU_AN386_WATCHDOG: usize = 0x4000_8000;

/// nRF52840-DK: 1 MiB internal NOR (4 KiB pages, 4-byte writes), 256 KiB RAM. The bootloader gets
/// 48 KiB like MCUboot's nRF default, so it can grow without moving the slots of fielded devices.
pub const NRF52840_DK: Layout = Layout {
    board: Board::Nrf52840Dk,
    flash: Region { origin: 0, length: 0x10_0000 },
    geometry: Geometry { erase_size: 4096, write_size: 4, erased: 0xFF },
    bootloader: Region { origin: 0x0_0000, length: 0xC000 },
    boot_record: Region { origin: 0x0_C000, length: 0x2000 },
    state: Region { origin: 0x0_E000, length: 0x1000 },
    active: Region { origin: 0x0_F000, length: 0x7_7000 },
    dfu: Region { origin: 0x8_6000, length: 0x7_8000 },
    provision: Region { origin: 0xF_F000, length: 0x1000 },
    ram: Region { origin: 0x2000_0000, length: 0x4_0000 },
    image_header_size: 0x200,
    boot_attempts: 3,
};

/// B-L475E-IOT01A (STM32L475VG): 1 MiB of flash at 0x0800_0000 in two 512 KiB banks of 2 KiB
/// pages, programmed a double word (8 bytes, with ECC) at a time, erased to 0xFF; 96 KiB SRAM1
/// (SRAM2's 32 KiB at 0x1000_0000 is left unused). The bootloader gets 48 KiB as on the nRF;
/// STATE holds 2 + 4 x 239 words of 8 bytes with the margin (1,280 words); the last 2 KiB page
/// before PROVISION is unused. ACTIVE runs across the bank boundary (0x0808_0000) and DFU lies in
/// bank 2, which embassy-stm32's driver handles (BKER for pages of bank 2).
pub const B_L475E_IOT01A: Layout = Layout {
    board: Board::BL475eIot01a,
    flash: Region { origin: 0x0800_0000, length: 0x10_0000 },
    geometry: Geometry { erase_size: 2048, write_size: 8, erased: 0xFF },
    bootloader: Region { origin: 0x0800_0000, length: 0xC000 },
    boot_record: Region { origin: 0x0800_C000, length: 0x1000 },
    state: Region { origin: 0x0800_D000, length: 0x2800 },
    active: Region { origin: 0x0800_F800, length: 0x7_7800 },
    dfu: Region { origin: 0x0808_7000, length: 0x7_8000 },
    provision: Region { origin: 0x080F_F800, length: 0x800 },
    ram: Region { origin: 0x2000_0000, length: 0x1_8000 },
    // 98 vector table entries (16 + 82 interrupts) need 512-byte alignment.
    image_header_size: 0x200,
    boot_attempts: 3,
};

const _: () = HOST.check();
const _: () = QEMU_AN386.check();
const _: () = NRF52840_DK.check();
const _: () = B_L475E_IOT01A.check();

#[cfg(feature = "render")]
pub mod build;
#[cfg(feature = "render")]
mod render;
#[cfg(feature = "render")]
pub use render::{render_memory_x, Role};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_board_finds_itself_by_name() {
        for b in Board::ALL {
            assert_eq!(Board::from_name(b.name()), Some(b));
            assert_eq!(b.layout().board, b);
        }
        assert_eq!(Board::from_name("stm32"), None);
    }

    #[test]
    fn nrf52840_state_holds_its_words_with_a_margin() {
        let l = &NRF52840_DK;
        assert_eq!(l.active_pages(), 119);
        assert_eq!(l.state_words_needed(), 2 + 4 * 119);
        assert!(l.state.length / 4 >= l.state_words_needed() * 5 / 4);
    }

    #[test]
    fn stm32l475_state_holds_its_8_byte_words_with_a_margin() {
        let l = &B_L475E_IOT01A;
        assert_eq!(l.active_pages(), 239);
        assert_eq!(l.state_words_needed(), 2 + 4 * 239);
        assert_eq!(l.state.length / l.geometry.write_size, 1280);
        assert!(l.state.length / l.geometry.write_size >= l.state_words_needed() * 5 / 4);
        // One page fewer in STATE and the words no longer fit with the margin.
        let mut small = *l;
        small.state.length -= l.geometry.erase_size;
        assert!(4 * (small.state.length / 8) < 5 * small.state_words_needed());
    }

    #[test]
    fn stm32l475_regions_fill_the_flash_and_the_slots_span_both_banks() {
        let l = &B_L475E_IOT01A;
        assert_eq!(l.flash.end(), 0x0810_0000);
        assert_eq!(l.provision.end(), l.flash.end(), "PROVISION is the last page");
        assert_eq!(l.dfu.length, l.active.length + l.geometry.erase_size);
        assert_eq!(l.dfu.end() + l.geometry.erase_size, l.provision.origin, "one page unused");
        let bank2 = 0x0808_0000;
        assert!(l.active.origin < bank2 && l.active.end() > bank2, "ACTIVE ends in bank 2");
        assert!(l.dfu.origin >= bank2, "DFU is all in bank 2");
        assert!(l.bootloader_owned().end() <= bank2, "BOOTLOADER + BOOT_RECORD in bank 1");
        assert_eq!(l.app_origin() % 512, 0, "the vector table is 512-byte aligned");
        assert_eq!(l.ram, Region { origin: 0x2000_0000, length: 96 * 1024 });
    }

    #[test]
    fn the_bootloader_owned_range_is_bootloader_and_boot_record_exactly() {
        for b in Board::ALL {
            let l = b.layout();
            let r = l.bootloader_owned();
            assert_eq!(r.origin, l.bootloader.origin, "{b:?}");
            assert_eq!(r.length, l.bootloader.length + l.boot_record.length, "{b:?}");
            assert_eq!(r.end(), l.state.origin, "{b:?}: STATE (the app writes it) starts right after");
            assert_eq!((r.origin - l.flash.origin) % l.geometry.erase_size, 0, "{b:?}");
            assert_eq!(r.length % l.geometry.erase_size, 0, "{b:?}");
        }
        // The nRF52840 ACL region: [0x0, 0xE000), 14 of its 4 KiB pages.
        assert_eq!(NRF52840_DK.bootloader_owned(), Region { origin: 0, length: 0xE000 });
    }

    #[test]
    #[should_panic(expected = "BOOT_RECORD must follow BOOTLOADER")]
    fn a_gap_between_bootloader_and_boot_record_is_refused() {
        let mut l = NRF52840_DK;
        l.bootloader.length -= 0x1000;
        l.check();
    }

    #[test]
    #[should_panic(expected = "DFU must be >= ACTIVE + 1 page")]
    fn a_dfu_as_small_as_active_is_refused() {
        let mut l = NRF52840_DK;
        l.dfu.length = l.active.length;
        l.check();
    }

    #[test]
    #[should_panic(expected = "STATE must hold")]
    fn a_state_sized_to_the_minimum_is_refused() {
        let mut l = QEMU_AN386;
        l.state.length = 0x2000; // holds 512 words, needs 514
        l.check();
    }

    #[test]
    #[should_panic(expected = "erased value must be 0xFF")]
    fn flash_that_erases_to_zero_is_refused() {
        let mut l = NRF52840_DK;
        l.geometry.erased = 0x00;
        l.check();
    }

    #[test]
    #[should_panic(expected = "regions must be in order and not overlap")]
    fn overlapping_slots_are_refused() {
        let mut l = HOST;
        l.dfu.origin -= 0x1000;
        l.check();
    }
}
