//! `cargo xtask size`: text/data/bss of bootloader and app for each thumb board, against the
//! regions of the layout.

use crate::build::{firmware, Crate};
use crate::keys;
use anyhow::{ensure, Context, Result};
use memory_layouts::Board;
use object::{Object, ObjectSection, SectionKind};

#[derive(clap::Args)]
pub struct Args {}

/// (flash bytes = text + rodata + data image, data, bss) of an ELF.
pub fn sizes(elf: &[u8]) -> Result<(u64, u64, u64)> {
    let file = object::File::parse(elf).context("parsing ELF")?;
    let (mut text, mut data, mut bss) = (0, 0, 0);
    for s in file.sections() {
        match s.kind() {
            SectionKind::Text | SectionKind::ReadOnlyData | SectionKind::ReadOnlyString => text += s.size(),
            SectionKind::Data => data += s.size(),
            SectionKind::UninitializedData => bss += s.size(),
            _ => {}
        }
    }
    Ok((text + data, data, bss))
}

pub fn run(_: Args) -> Result<()> {
    let key = keys::load_public_key(&keys::dev_key())?;
    println!("{:<14} {:<11} {:>9} {:>7} {:>7} {:>10}  region", "board", "binary", "flash", "data", "bss", "of region");
    let mut nrf_bootloader = 0;
    for board in Board::ALL.into_iter().filter(|b| b.target().is_some()) {
        let l = board.layout();
        for (c, region) in [(Crate::Bootloader, l.bootloader.length), (Crate::App, l.app_max_len())] {
            let elf = std::fs::read(firmware(board, c, &[key])?)?;
            let (flash, data, bss) = sizes(&elf)?;
            if (board, c) == (Board::Nrf52840Dk, Crate::Bootloader) {
                nrf_bootloader = flash;
            }
            println!(
                "{:<14} {:<11} {:>9} {:>7} {:>7} {:>9.1}%  {} KiB",
                board.name(),
                format!("{c:?}").to_lowercase(),
                flash,
                data,
                bss,
                100.0 * flash as f64 / region as f64,
                region / 1024
            );
        }
    }
    println!(
        "goal: bootloader <= 24 KiB (24576 bytes) of flash on nrf52840-dk with everything in (signature, boot \
         attempts, key revocation, self-protection): {nrf_bootloader} bytes, {}",
        if nrf_bootloader <= 24 * 1024 { format!("{} to spare", 24 * 1024 - nrf_bootloader) } else { "OVER".into() }
    );
    let elf = std::fs::read(firmware(Board::QemuAn386, Crate::App, &[key])?)?;
    let file = object::File::parse(&*elf).context("parsing ELF")?;
    use object::ObjectSymbol;
    let sym = |name: &str| file.symbols().find(|s| s.name() == Ok(name));
    let ota = sym("OTA_STATE").map(|s| s.size()).context("no OTA_STATE symbol")?;
    // The MQTT session (receive and send buffers) lives in the task; the app exports its size.
    let word = |name: &str| {
        sym(name)
            .and_then(|s| {
                use object::{Object as _, ObjectSection as _};
                let sec = file.section_by_index(s.section_index()?).ok()?;
                let data = sec.data().ok()?;
                let at = (s.address() - sec.address()) as usize;
                Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?) as u64)
            })
            .with_context(|| format!("no {name} symbol"))
    };
    let (session, patcher, head) = (word("OTA_MQTT_SESSION")?, word("OTA_DELTA_PATCHER")?, word("OTA_DELTA_HEAD")?);
    println!(
        "OTA path RAM on qemu-an386: {ota} bytes static (OtaMachine, MQTT receive buffer, modem, delta patcher, work buffer) + {session} bytes MQTT session in the task = {} bytes",
        ota + session
    );
    println!(
        "  of which delta updates: the patcher (shared::delta::Patcher: the LZMA model, {} probabilities, and map of up to {} shifts, or the heatshrink window of 2^{} bytes) {patcher} bytes + the patch's first bytes in OtaMachine {head} = {} bytes",
        shared::delta::LZMA_PROBS,
        shared::delta::MAX_SHIFTS,
        shared::delta::MAX_WINDOW_BITS,
        patcher + head
    );
    ensure!(patcher + head <= 4096, "delta updates take {} bytes of RAM, over the 4 KiB goal", patcher + head);
    Ok(())
}
