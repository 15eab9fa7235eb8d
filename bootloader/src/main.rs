//! The bootloader: verify the image in ACTIVE with the trusted keys, then jump to it.
//!
//! Swap and rollback come with `shared::boot` (see DESIGN.md "Boot flow"); what is here already
//! never jumps to an image that fails `shared::image::verify`.
#![cfg_attr(target_os = "none", no_std, no_main)]

mod keys {
    include!(concat!(env!("OUT_DIR"), "/keys.rs"));
}

#[cfg(target_os = "none")]
mod firmware {
    use crate::keys::TRUSTED_KEYS;
    use core::panic::PanicInfo;
    use cortex_m_rt::{entry, exception, ExceptionFrame};
    use embedded_storage::nor_flash::{ErrorType, NorFlashErrorKind, ReadNorFlash};
    use memory_layouts::Board;
    #[cfg(feature = "nrf52840-dk")]
    use nrf_pac as _; // links the device vector table
    use shared::image::{verify, PublicKey, VerifyOptions};

    #[cfg(feature = "qemu-an386")]
    const BOARD: Board = Board::QemuAn386;
    #[cfg(feature = "nrf52840-dk")]
    const BOARD: Board = Board::Nrf52840Dk;

    /// A memory-mapped flash region, read with volatile loads.
    struct Mapped {
        origin: u32,
        len: u32,
    }
    impl ErrorType for Mapped {
        type Error = NorFlashErrorKind;
    }
    impl ReadNorFlash for Mapped {
        const READ_SIZE: usize = 1;
        fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
            if offset as usize + bytes.len() > self.len as usize {
                return Err(NorFlashErrorKind::OutOfBounds);
            }
            for (i, b) in bytes.iter_mut().enumerate() {
                // SAFETY: inside the ACTIVE region of this board's memory map, always readable.
                *b = unsafe { core::ptr::read_volatile((self.origin + offset + i as u32) as *const u8) };
            }
            Ok(())
        }
        fn capacity(&self) -> usize {
            self.len as usize
        }
    }

    #[entry]
    fn main() -> ! {
        let layout = BOARD.layout();
        let keys = TRUSTED_KEYS.map(PublicKey);
        let opts = VerifyOptions { keys: &keys, min_sec_cnt: 0, slot_size: Some(layout.active.length) };
        let mut active = Mapped { origin: layout.active.origin, len: layout.active.length };
        let mut buf = [0u8; 256];
        match verify(&mut active, &opts, &mut buf) {
            Ok(info) => {
                let vt = layout.active.origin + info.header.hdr_size as u32;
                // SAFETY: the image verified, its vector table is at ACTIVE + hdr_size.
                unsafe {
                    (*cortex_m::peripheral::SCB::PTR).vtor.write(vt);
                    cortex_m::asm::bootload(vt as *const u32)
                }
            }
            Err(_) => loop {
                cortex_m::asm::wfi();
            },
        }
    }

    #[exception]
    unsafe fn HardFault(_ef: &ExceptionFrame) -> ! {
        cortex_m::peripheral::SCB::sys_reset()
    }

    #[panic_handler]
    fn panic(_: &PanicInfo) -> ! {
        cortex_m::asm::udf()
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the bootloader is firmware: build it with `cargo xtask build --board <board>`");
    std::process::exit(2);
}
