//! The application. On the thumb boards it is linked at ACTIVE + image header size; on the
//! `host` board it is a Linux program that simulates the device (see `host/`). The OTA driver
//! (`driver.rs`, over `mqtt.rs`) is the same on every board: it runs `shared::ota::OtaMachine`
//! and makes no protocol decision of its own.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg_attr(not(any(feature = "qemu-an386", feature = "host")), allow(dead_code))]
mod keys {
    include!(concat!(env!("OUT_DIR"), "/keys.rs"));
}

#[cfg_attr(not(feature = "host"), allow(dead_code))]
mod driver;
#[cfg_attr(not(feature = "host"), allow(dead_code))]
mod modem;
#[cfg_attr(not(feature = "host"), allow(dead_code))]
mod mqtt;

#[cfg(feature = "host")]
mod host;

/// The OTA path's state on the MCU boards, allocated statically so its RAM shows in the binary
/// (`cargo xtask size` reports it): the machine, the MQTT buffers, the payload buffer for 4 KiB
/// blocks, the updater and the work buffer. The driver takes it once the board's transport exists (QEMU: issue 6).
#[cfg(target_os = "none")]
pub struct OtaState {
    pub machine: core::mem::MaybeUninit<shared::ota::OtaMachine<'static>>,
    pub mqtt_rx: [u8; 4096 + 512],
    pub mqtt_tx: [u8; 512],
    pub topic: heapless::String<128>,
    pub payload: [u8; 4096 + 512],
    /// The updater's partial-word carry and position.
    pub updater: [u8; 64 + 8],
    /// Verify / rehash / confirm buffer (on the stack in `driver::act`).
    pub work: [u8; 1024],
}

#[cfg(target_os = "none")]
#[used]
#[no_mangle]
pub static mut OTA_STATE: core::mem::MaybeUninit<OtaState> = core::mem::MaybeUninit::uninit();

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
        // The OTA driver runs here on these boards once their transports exist; until then the
        // app only keeps the bootloader's watchdog fed.
        loop {
            feed_watchdog();
            cortex_m::asm::delay(8_000_000);
        }
    }

    /// Feeds the watchdog the bootloader started.
    fn feed_watchdog() {
        // SAFETY: writes to this board's watchdog feed register only.
        unsafe {
            #[cfg(feature = "qemu-an386")]
            {
                const WDOG: usize = 0x4000_8000;
                core::ptr::write_volatile((WDOG + 0xC00) as *mut u32, 0x1ACC_E551); // unlock
                core::ptr::write_volatile((WDOG + 0x00C) as *mut u32, 1); // INTCLR: clear + reload
                core::ptr::write_volatile((WDOG + 0xC00) as *mut u32, 0); // lock
            }
            #[cfg(feature = "nrf52840-dk")]
            core::ptr::write_volatile(0x4001_0600 as *mut u32, 0x6E52_4635); // WDT.RR[0] = reload
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
