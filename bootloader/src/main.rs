//! The bootloader: `shared::boot` decides (validate DFU, swap only the pages in use, revert,
//! raise the counter), then we jump to ACTIVE + header size. It never jumps to an image that
//! fails `shared::image::verify`. Per-board code (flash driver, watchdog, reporting) is in
//! `board/`.
#![cfg_attr(target_os = "none", no_std, no_main)]

mod keys {
    include!(concat!(env!("OUT_DIR"), "/keys.rs"));
}

#[cfg(target_os = "none")]
#[cfg_attr(feature = "qemu-an386", path = "board/qemu_an386.rs")]
#[cfg_attr(feature = "nrf52840-dk", path = "board/nrf52840_dk.rs")]
#[cfg_attr(feature = "b-l475e-iot01a", path = "board/b_l475e_iot01a.rs")]
mod board;

#[cfg(target_os = "none")]
mod firmware {
    use crate::{board, keys::TRUSTED_KEYS};
    use core::cell::RefCell;
    use cortex_m_rt::{entry, exception, ExceptionFrame};
    use embassy_boot::AlignedBuffer;
    use embassy_embedded_hal::flash::partition::BlockingPartition;
    use embassy_sync::blocking_mutex::{raw::NoopRawMutex, Mutex};
    use memory_layouts::Region;
    use shared::boot::{boot, BootError, Policy, Slots};
    use shared::image::PublicKey;

    // The board's flash erases to the value shared (and embassy-boot's STATE logic) is built for.
    const _: () = assert!(board::BOARD.layout().geometry.erased == shared::boot::ERASED);

    #[entry]
    fn main() -> ! {
        let layout = board::BOARD.layout();
        // Partitions of the board's flash driver (offset 0 at `board::FLASH_BASE`): BOOT_RECORD,
        // STATE and the slots, never the bootloader itself.
        let flash = Mutex::<NoopRawMutex, _>::new(RefCell::new(board::init()));
        let part = |r: Region| BlockingPartition::new(&flash, r.origin - board::FLASH_BASE, r.length);
        let mut slots = Slots {
            active: part(layout.active),
            dfu: part(layout.dfu),
            state: part(layout.state),
            boot_record: part(layout.boot_record),
        };
        let keys = TRUSTED_KEYS.map(PublicKey);
        let policy = Policy { keys: &keys, boot_attempts: layout.boot_attempts };
        let mut buf = AlignedBuffer([0u8; 1024]);
        match boot(&mut slots, &policy, &mut buf.0) {
            Ok(b) => {
                board::report_boot(&b);
                let vt = layout.active.origin + b.image.header.hdr_size as u32;
                board::protect();
                // SAFETY: the image at ACTIVE verified; its vector table is at ACTIVE + hdr_size.
                unsafe {
                    let p = cortex_m::Peripherals::steal();
                    p.SCB.vtor.write(vt);
                    cortex_m::asm::bootload(vt as *const u32)
                }
            }
            // A flash error: start over (the policy resumes from what is in flash).
            Err(BootError::Flash(_)) => cortex_m::peripheral::SCB::sys_reset(),
            Err(e @ BootError::NoBootableImage(_)) => board::halt(e),
        }
    }

    #[exception]
    unsafe fn HardFault(_ef: &ExceptionFrame) -> ! {
        cortex_m::peripheral::SCB::sys_reset()
    }

    #[panic_handler]
    fn panic(_: &core::panic::PanicInfo) -> ! {
        cortex_m::asm::udf()
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the bootloader is firmware: build it with `cargo xtask build --board <board>`");
    std::process::exit(2);
}
