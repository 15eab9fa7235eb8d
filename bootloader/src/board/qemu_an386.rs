//! qemu-an386: flash is QEMU's file-backed `mps.ram`; the decision is reported over semihosting
//! (`-semihosting-config enable=on,target=native`) so tests can read it.

use cortex_m_semihosting::{debug, hprintln};
use memory_layouts::Board;
use shared::boot::{Boot, BootError};
use shared::flash::RamNor;

pub const BOARD: Board = Board::QemuAn386;

/// No watchdog is modelled by QEMU's mps2-an386 that resets the machine; the flash needs no init.
pub fn init() -> RamNor<'static, 8192, 16> {
    let l = BOARD.layout();
    let base = l.boot_record.origin;
    let len = (l.flash.end() - base) as usize;
    // SAFETY: BOOT_RECORD..end of mps.ram is plain RAM that nothing else in the bootloader
    // touches; the bootloader's own code and data lie below it.
    let mem = unsafe { core::slice::from_raw_parts_mut(base as *mut u8, len) };
    RamNor::new(mem)
}

pub fn report_boot(b: &Boot) {
    let v = b.image.aliyun_version.as_deref().unwrap_or("?");
    hprintln!(
        "boot: jump to {} ({}), last {:?}, sec_cnt {}",
        v,
        b.image.header.version,
        b.record.last,
        b.record.sec_cnt
    );
}

pub fn halt(e: BootError) -> ! {
    hprintln!("boot: {}", e);
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}
