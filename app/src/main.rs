//! The application. Linked at ACTIVE + image header size; the OTA driver arrives with the OTA
//! client (see DESIGN.md "OTA flow").
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg_attr(not(feature = "qemu-an386"), allow(dead_code))]
mod keys {
    include!(concat!(env!("OUT_DIR"), "/keys.rs"));
}

#[cfg(target_os = "none")]
mod firmware {
    use core::panic::PanicInfo;
    use cortex_m_rt::{entry, exception, ExceptionFrame};
    #[cfg(feature = "nrf52840-dk")]
    use nrf_pac as _; // links the device vector table

    #[entry]
    fn main() -> ! {
        #[cfg(feature = "qemu-an386")]
        announce();
        loop {
            cortex_m::asm::wfi();
        }
    }

    /// Says which image runs, read from its own header and TLVs in ACTIVE (semihosting).
    #[cfg(feature = "qemu-an386")]
    fn announce() {
        use shared::image::{verify, PublicKey, SliceFlash, VerifyOptions};
        let active = memory_layouts::Board::QemuAn386.layout().active;
        // SAFETY: ACTIVE is mapped memory holding this very image; it is only read.
        let image = unsafe { core::slice::from_raw_parts(active.origin as *const u8, active.length as usize) };
        let keys = crate::keys::TRUSTED_KEYS.map(PublicKey);
        let opts = VerifyOptions { keys: &keys, min_sec_cnt: 0, slot_size: None };
        match verify(&mut SliceFlash(image), &opts, &mut [0u8; 256]) {
            Ok(i) => cortex_m_semihosting::hprintln!("app: running {}", i.aliyun_version.as_deref().unwrap_or("?")),
            Err(e) => cortex_m_semihosting::hprintln!("app: own image does not verify: {}", e),
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
    eprintln!("the app is firmware here: build it with `cargo xtask build --board <board>`");
    std::process::exit(2);
}
