//! The application. On the thumb boards it is linked at ACTIVE + image header size; on the
//! `host` board it is a Linux program that simulates the device (see `host/`). The OTA driver
//! (`driver.rs`, over `mqtt.rs`) is the same on every board: it runs `shared::ota::OtaMachine`
//! and makes no protocol decision of its own.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg_attr(not(any(feature = "qemu-an386", feature = "host")), allow(dead_code))]
mod keys {
    include!(concat!(env!("OUT_DIR"), "/keys.rs"));
}

#[cfg_attr(not(any(feature = "host", feature = "qemu-an386")), allow(dead_code))]
mod driver;
#[cfg_attr(not(any(feature = "host", feature = "qemu-an386")), allow(dead_code))]
mod modem;
#[cfg_attr(not(any(feature = "host", feature = "qemu-an386")), allow(dead_code))]
mod mqtt;

#[cfg(feature = "host")]
mod host;

#[cfg(all(target_os = "none", feature = "qemu-an386"))]
mod qemu;

/// nrf52840-dk: only keeps the bootloader's watchdog fed until its board support lands (issue 7).
#[cfg(all(target_os = "none", feature = "nrf52840-dk"))]
mod firmware {
    use core::panic::PanicInfo;
    use cortex_m_rt::{entry, exception, ExceptionFrame};
    use nrf_pac as _; // links the device vector table

    #[entry]
    fn main() -> ! {
        loop {
            feed_watchdog();
            cortex_m::asm::delay(8_000_000);
        }
    }

    /// Feeds the watchdog the bootloader started.
    fn feed_watchdog() {
        // SAFETY: writes to this board's watchdog feed register only.
        unsafe {
            core::ptr::write_volatile(0x4001_0600 as *mut u32, 0x6E52_4635); // WDT.RR[0] = reload
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

#[cfg(all(not(target_os = "none"), feature = "host"))]
fn main() {
    host::main()
}

#[cfg(all(not(target_os = "none"), not(feature = "host")))]
fn main() {
    eprintln!(
        "build the app with `cargo xtask build --board <board>`, or run the host device with `cargo xtask device`"
    );
    std::process::exit(2);
}
