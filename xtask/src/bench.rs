//! `cargo xtask bench boot`: flash wear of one update, ours against embassy-boot's whole-slot
//! swap, side by side in one run on the simulator with the qemu-an386 geometry.
//! `cargo xtask bench ota`: downloads over MQTT stream from the local console, side by side: on
//! loopback (our client, stop-and-wait with 5 KiB blocks, the broker's raw throughput) and through
//! a delay proxy with 100 and 300 ms round trips (also against a console that serves one block
//! request at a time).
//! `cargo xtask bench qemu`: instructions from main to the jump of the real bootloader under
//! QEMU's `-icount shift=0`, with nothing to do, with a 256 KiB image, and for an update.
//! `cargo xtask bench qemu-download`: the real app under QEMU downloading through the modem
//! simulator from the local console, over MQTT stream and over HTTPS, alternating, in one run.
//! `cargo xtask bench delta`: differential packages, ours against detools and bsdiff4.
//! `cargo xtask bench modem`: downloads through the modem simulator's rate-limited line at
//! 115,200 and 921,600 baud, with MCU flash timings and 100 / 300 ms round trips, against
//! their limits.

use anyhow::{bail, Result};
use core::cell::RefCell;
use ed25519_dalek::SigningKey;
use embassy_embedded_hal::flash::partition::BlockingPartition;
use embassy_sync::blocking_mutex::{raw::NoopRawMutex, Mutex};
use memory_layouts::{Board, Region};
use shared::boot::{self, confirm, FirmwareUpdaterConfig, Slots, Updater};
use shared::image::{sign_image, ImageVersion, PublicKey, SignParams, VerifyOptions};
use shared::sim::{SimFlash, Wear};

#[derive(clap::Args)]
pub struct Args {
    /// What to measure.
    #[arg(value_parser = ["boot", "ota", "qemu", "qemu-download", "delta", "modem"])]
    what: String,
    /// Image size in KiB (default: 64 for boot, 1024 for ota, 256 for qemu, qemu-download and modem).
    #[arg(long)]
    image_kib: Option<usize>,
    /// qemu-download: downloads per protocol (alternating MQTT and HTTPS).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// delta: our patch's size for every heatshrink window and lookahead, instead of the table.
    #[arg(long)]
    sweep: bool,
    /// modem: only these cases, and other block and window settings.
    #[command(flatten)]
    modem: crate::bench_modem::Cases,
}

/// qemu-an386's flash, simulated with its geometry.
type Flash = SimFlash<
    { memory_layouts::QEMU_AN386.geometry.erase_size as usize },
    { memory_layouts::QEMU_AN386.geometry.write_size as usize },
>;

struct BootArgs {
    image_kib: usize,
}

fn image(len: usize, minor: u8, key: &SigningKey) -> Vec<u8> {
    let body: Vec<u8> = (0..len - 0x400 - 200).map(|i| (i as u8) ^ minor).collect();
    let p = SignParams {
        header_size: 0x400,
        version: ImageVersion { major: 1, minor, revision: 0, build: 0 },
        sec_cnt: 0,
        module: None,
        aliyun_version: None,
        revoke_keys: 0,
    };
    sign_image(&body, &p, key)
}

struct Run {
    download: Wear,
    swap: Wear,
    confirm: Wear,
}

fn diff(a: Wear, b: Wear) -> Wear {
    Wear { erases: b.erases - a.erases, writes: b.writes - a.writes, bytes_written: b.bytes_written - a.bytes_written }
}

/// One update on qemu-an386's layout; `whole_slot` swaps with embassy-boot over the full slots.
fn update(kib: usize, whole_slot: bool) -> Result<Run> {
    let l = Board::QemuAn386.layout();
    let base = l.boot_record.origin;
    let key = SigningKey::from_bytes(&[1; 32]);
    let keys = [PublicKey(key.verifying_key().to_bytes())];
    let (old, new) = (image(kib * 1024, 3, &key), image(kib * 1024, 4, &key));
    let mut sim = Flash::new((l.flash.end() - base) as usize, l.geometry.erased);
    sim.load((l.active.origin - base) as usize, &old);
    let m = Mutex::<NoopRawMutex, _>::new(RefCell::new(sim));
    let part = |r: Region| BlockingPartition::new(&m, r.origin - base, r.length);
    let wear = || m.lock(|f| f.borrow().wear());
    let mut slots =
        Slots { active: part(l.active), dfu: part(l.dfu), state: part(l.state), boot_record: part(l.boot_record) };
    let mut buf = [0u8; 1024];

    let w0 = wear();
    let mut u = Updater::new(FirmwareUpdaterConfig { dfu: &mut slots.dfu, state: &mut slots.state }, 0);
    for (i, c) in new.chunks(4096).enumerate() {
        u.write((i * 4096) as u32, c)?;
    }
    let opts = VerifyOptions { keys: &keys, revoked: 0, min_sec_cnt: 0, slot_size: Some(l.active.length) };
    let policy = boot::Policy { keys: &keys, boot_attempts: l.boot_attempts };
    u.finish(&opts, &mut buf)?;
    let w1 = wear();
    if whole_slot {
        let mut bl = embassy_boot::BootLoader::new(embassy_boot::BootLoaderConfig {
            active: &mut slots.active,
            dfu: &mut slots.dfu,
            state: &mut slots.state,
        });
        bl.prepare_boot(&mut buf).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    } else {
        let b = boot::boot(&mut slots, &policy, &mut buf)?;
        if b.image.digest != shared::image::verify(&mut shared::image::SliceFlash(&new), &opts, &mut buf)?.digest {
            bail!("the swap did not bring the new image in");
        }
    }
    let w2 = wear();
    confirm(&mut slots.state, &mut buf)?;
    if !whole_slot {
        boot::boot(&mut slots, &policy, &mut buf)?;
    }
    let w3 = wear();
    Ok(Run { download: diff(w0, w1), swap: diff(w1, w2), confirm: diff(w2, w3) })
}

pub fn run(a: Args) -> Result<()> {
    match a.what.as_str() {
        "ota" => crate::bench_ota::run(a.image_kib.unwrap_or(1024)),
        "qemu" => crate::bench_qemu::run(a.image_kib.unwrap_or(256)),
        "qemu-download" => crate::bench_qemu::download(a.image_kib.unwrap_or(256), a.rounds),
        "delta" => crate::bench_delta::run(a.sweep),
        "modem" => crate::bench_modem::run(a.image_kib.unwrap_or(256), &a.modem),
        _ => boot(a.image_kib.unwrap_or(64)),
    }
}

fn boot(image_kib: usize) -> Result<()> {
    let a = BootArgs { image_kib };
    let l = Board::QemuAn386.layout();
    let page = l.geometry.erase_size as usize;
    let pages = (a.image_kib * 1024).div_ceil(page);
    println!(
        "flash wear of one {} KiB update on qemu-an386 ({} KiB pages, {}-byte writes, ACTIVE {} KiB = {} pages); image = {pages} pages",
        a.image_kib,
        page / 1024,
        l.geometry.write_size,
        l.active.length / 1024,
        l.active_pages()
    );
    let ours = update(a.image_kib, false)?;
    let theirs = update(a.image_kib, true)?;
    println!("{:<34} {:>8} {:>8} {:>12}", "", "erases", "writes", "bytes");
    for (name, r) in [("ours", &ours), ("embassy-boot whole-slot swap", &theirs)] {
        for (phase, w) in [("download", r.download), ("swap", r.swap), ("confirm", r.confirm)] {
            println!("{:<34} {:>8} {:>8} {:>12}", format!("{name}: {phase}"), w.erases, w.writes, w.bytes_written);
        }
    }
    let e = |r: &Run| r.swap.erases + r.confirm.erases;
    println!(
        "swap + confirm erases: ours {} vs whole-slot {} ({:.1}x fewer); goal <= 2 per image page + 2 = {}: {}",
        e(&ours),
        e(&theirs),
        e(&theirs) as f64 / e(&ours) as f64,
        2 * pages + 2,
        if e(&ours) as usize <= 2 * pages + 2 { "met" } else { "NOT met" }
    );
    Ok(())
}
