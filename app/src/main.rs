//! The application. Linked at ACTIVE + image header size; the OTA driver arrives with the OTA
//! client (see DESIGN.md "OTA flow").
#![cfg_attr(target_os = "none", no_std, no_main)]

#[allow(dead_code)]
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
        loop {
            cortex_m::asm::wfi();
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
