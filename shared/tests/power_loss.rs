//! Boot scenarios and power-cut sweeps on the strict NOR simulator (MCUboot sim style).
//!
//! Each scenario runs the real code of both halves over one simulated flash: the app's
//! `Updater` writes the download and marks it, `shared::boot::boot` (embassy-boot underneath)
//! swaps, reverts and keeps BOOT_RECORD, the app confirms or does not. A sweep counts the
//! mutating flash operations of a clean run, then for every operation and every cut mode
//! (before, after, torn) cuts the power there, powers up again and lets the device carry on
//! (bootloader, then app), checking after every boot that:
//! - the bootloader found a verifying image, and ACTIVE holds exactly the old or the new image;
//! - the image it verified is the one in ACTIVE;
//! - what the app reads about the boot is true.
//!
//! Every operation is cut in all three modes; `SIM_TRACE=1` prints each boot of a run. `ALIYUN_OTA_FULL=1` (`cargo xtask test --full`)
//! raises the random multi-cut runs from 1,000 to 10,000.

use core::cell::RefCell;
use ed25519_dalek::SigningKey;
use embassy_boot::BlockingFirmwareState;
use embassy_embedded_hal::flash::partition::BlockingPartition;
use embassy_sync::blocking_mutex::{raw::NoopRawMutex, Mutex};
use embedded_storage::nor_flash::NorFlashErrorKind;
use shared::boot::{self, boot_info, confirm, BootInfo, LastBoot, Slots, UpdateError, Updater};
use shared::image::ImageError;
use shared::image::{sign_image, ImageVersion, PublicKey, SignParams, VerifyOptions};
use shared::sim::{CutMode, FaultyFlash, Rng, SimFlash};

/// Test layout in pages: BOOT_RECORD 2, STATE 1, ACTIVE 16, DFU 17.
const ACTIVE_PAGES: usize = 16;
const REGIONS: [usize; 4] = [2, 1, ACTIVE_PAGES, ACTIVE_PAGES + 1];

fn full() -> bool {
    std::env::var_os("ALIYUN_OTA_FULL").is_some()
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

fn keys() -> [PublicKey; 1] {
    [PublicKey(key().verifying_key().to_bytes())]
}

/// A signed image of exactly `total` bytes (header 0x200, TLVs included), version `v`.
fn image(total: usize, v: u8, sec_cnt: u32) -> Vec<u8> {
    let tlvs = 4 + 8 + 4 + 7 + 4 + 3 + 4 + 36 + 36 + 68; // SEC_CNT, module "default", version "1.x"
    let body: Vec<u8> = (0..total - 0x200 - tlvs).map(|i| (i as u8).wrapping_mul(31).wrapping_add(v)).collect();
    let vs = format!("1.{v}");
    let p = SignParams {
        header_size: 0x200,
        version: ImageVersion { major: 1, minor: v, revision: 0, build: 0 },
        sec_cnt,
        module: Some("default"),
        aliyun_version: Some(&vs),
    };
    let img = sign_image(&body, &p, &key());
    assert_eq!(img.len(), total);
    img
}

/// The simulated device: one flash, partitioned like a board.
#[derive(Clone)]
struct Device<const E: usize, const W: usize> {
    flash: FaultyFlash<E, W>,
}

struct Parts<'a, const E: usize, const W: usize> {
    boot_record: BlockingPartition<'a, NoopRawMutex, FaultyFlash<E, W>>,
    state: BlockingPartition<'a, NoopRawMutex, FaultyFlash<E, W>>,
    active: BlockingPartition<'a, NoopRawMutex, FaultyFlash<E, W>>,
    dfu: BlockingPartition<'a, NoopRawMutex, FaultyFlash<E, W>>,
}

fn parts<const E: usize, const W: usize>(m: &Mutex<NoopRawMutex, RefCell<FaultyFlash<E, W>>>) -> Parts<'_, E, W> {
    let mut off = 0u32;
    let mut next = |pages: usize| {
        let p = BlockingPartition::new(m, off, (pages * E) as u32);
        off += (pages * E) as u32;
        p
    };
    Parts { boot_record: next(REGIONS[0]), state: next(REGIONS[1]), active: next(REGIONS[2]), dfu: next(REGIONS[3]) }
}

#[derive(Debug)]
#[allow(dead_code)]
enum Fail {
    Power,
    Boot(boot::BootError),
    Update(UpdateError),
}

fn is_power(e: &Fail) -> bool {
    matches!(e, Fail::Power | Fail::Boot(boot::BootError::Flash(_)) | Fail::Update(UpdateError::Flash(_)))
}

impl<const E: usize, const W: usize> Device<E, W> {
    fn new(factory: &[u8], ecc: bool, seed: u64) -> Self {
        let pages: usize = REGIONS.iter().sum();
        let mut sim = SimFlash::<E, W>::new(pages * E, 0xFF).with_ecc(ecc);
        sim.load((REGIONS[0] + REGIONS[1]) * E, factory);
        Device { flash: FaultyFlash::new(sim, seed) }
    }

    fn with<T>(&mut self, f: impl FnOnce(&mut Parts<'_, E, W>) -> T) -> T {
        let flash = std::mem::replace(&mut self.flash, FaultyFlash::new(SimFlash::new(E, 0xFF), 0));
        let m = Mutex::<NoopRawMutex, _>::new(RefCell::new(flash));
        let r = f(&mut parts(&m));
        self.flash = m.into_inner().into_inner();
        r
    }

    /// Runs `f` on the partitions; a power cut during it is reported as such, whatever error
    /// the code under test made of it.
    fn op<T, X>(
        &mut self,
        f: impl FnOnce(&mut Parts<'_, E, W>) -> Result<T, X>,
        fail: fn(X) -> Fail,
    ) -> Result<T, Fail> {
        let r = self.with(f);
        if self.flash.is_dead() {
            return Err(Fail::Power);
        }
        r.map_err(fail)
    }

    /// Bootloader: the policy, returning the verified ACTIVE image.
    fn boot(&mut self) -> Result<boot::Boot, Fail> {
        self.op(
            |p| {
                let mut slots = Slots {
                    active: &mut p.active,
                    dfu: &mut p.dfu,
                    state: &mut p.state,
                    boot_record: &mut p.boot_record,
                };
                boot::boot(&mut slots, &keys(), 0xFF, &mut [0u8; 1024])
            },
            Fail::Boot,
        )
    }

    /// App: download `img` into DFU in 1 KiB blocks and mark it (after our verify when
    /// `checked`; an app with a bug marks it without).
    fn download_as(&mut self, img: &[u8], checked: bool) -> Result<(), Fail> {
        self.op(
            |p| {
                let mut u = Updater::new(&mut p.dfu, &mut p.state, 0xFF, 0);
                for (i, chunk) in img.chunks(1024).enumerate() {
                    u.write((i * 1024) as u32, chunk)?;
                }
                if checked {
                    let opts =
                        VerifyOptions { keys: &keys(), min_sec_cnt: 0, slot_size: Some((ACTIVE_PAGES * E) as u32) };
                    return u.finish(&opts, &mut [0u8; 512]).map(|_| ());
                }
                u.flush()?;
                let mut word = [0u8; W];
                BlockingFirmwareState::new(&mut p.state, &mut word)
                    .mark_updated()
                    .map_err(|_| UpdateError::Flash(NorFlashErrorKind::Other))
            },
            Fail::Update,
        )
    }

    fn download(&mut self, img: &[u8]) -> Result<(), Fail> {
        self.download_as(img, true)
    }

    fn download_unchecked(&mut self, img: &[u8]) -> Result<(), Fail> {
        self.download_as(img, false)
    }

    fn info(&mut self) -> Result<BootInfo, Fail> {
        self.op(
            |p| boot_info(&mut p.active, &mut p.boot_record, &mut p.state, &keys(), 0xFF, &mut [0u8; 512]),
            Fail::Update,
        )
    }

    fn confirm(&mut self) -> Result<(), Fail> {
        self.op(|p| confirm(&mut p.state, 0xFF, &mut [0u8; 64]), Fail::Update)
    }

    fn active(&self) -> &[u8] {
        let at = (REGIONS[0] + REGIONS[1]) * E;
        &self.flash.inner().bytes()[at..at + ACTIVE_PAGES * E]
    }
}

/// What the app does with a new image once it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SelfTest {
    Passes,
    Fails,
}

/// The outcome a scenario must reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// The new image runs, confirmed.
    New,
    /// The old image runs; the boot record says why.
    Old(LastBoot),
}

struct Scenario<'a> {
    old: &'a [u8],
    new: &'a [u8],
    test: SelfTest,
    expect: Expect,
    /// false: the app marks the download without verifying it (a bug, or DFU corrupted after
    /// the check), so the bootloader's own check is what stands.
    app_verifies: bool,
}

/// Plans further random cuts after each power-up (multi-cut runs).
struct MoreCuts {
    rng: Rng,
    left: u32,
}

/// Runs the device (boot, app, boot, ...) until the scenario settles, checking every boot.
/// Returns Err(what) on an invariant broken; Ok(()) once settled. Power cuts inside are
/// recovered by power-cycling and carrying on.
fn drive<const E: usize, const W: usize>(d: &mut Device<E, W>, s: &Scenario<'_>) -> Result<(), String> {
    drive_cuts(d, s, None)
}

fn drive_cuts<const E: usize, const W: usize>(
    d: &mut Device<E, W>,
    s: &Scenario<'_>,
    mut more: Option<MoreCuts>,
) -> Result<(), String> {
    let start_seq = d.info().map(|i| i.record_seq).unwrap_or(0);
    let mut power_up = |d: &mut Device<E, W>| {
        d.flash.power_cycle();
        if let Some(m) = more.as_mut().filter(|m| m.left > 0) {
            m.left -= 1;
            let mode = CutMode::ALL[m.rng.below(3) as usize];
            d.flash.cut_at(m.rng.below(400), mode);
        }
    };
    for _round in 0..24 {
        let booted = match d.boot() {
            Ok(b) => b,
            Err(e) if is_power(&e) => {
                power_up(d);
                continue;
            }
            Err(e) => return Err(format!("bootloader failed: {e:?}")),
        };
        // ACTIVE holds exactly one of the two images, and that is the one verified.
        let act = d.active();
        let running_new = act.get(..s.new.len()).is_some_and(|a| a == s.new);
        let running_old = act.get(..s.old.len()).is_some_and(|a| a == s.old);
        if !running_new && !running_old {
            return Err("ACTIVE holds neither the old nor the new image".into());
        }
        let expect_digest = if running_new { &s.new } else { &s.old };
        if booted.image.total_len as usize != expect_digest.len() {
            return Err("the verified image is not the one in ACTIVE".into());
        }
        let info = match d.info() {
            Ok(i) => i,
            Err(e) if is_power(&e) => {
                power_up(d);
                continue;
            }
            Err(e) => return Err(format!("app cannot read its boot info: {e:?}")),
        };
        if info.running.digest != booted.image.digest {
            return Err("the app reads another image than the one booted".into());
        }
        if info.awaiting_confirm && !running_new {
            return Err("the app is asked to confirm the old image".into());
        }
        if running_old && info.last == LastBoot::SwappedIn {
            return Err("the record says swapped in while the old image runs".into());
        }
        let this_cycle = info.record_seq > start_seq;
        if std::env::var_os("SIM_TRACE").is_some() {
            eprintln!(
                "boot: new {running_new} info {:?} {:?} seq {} sec {}",
                info.awaiting_confirm, info.last, info.record_seq, info.sec_cnt
            );
        }
        // Settled?
        match s.expect {
            Expect::New if running_new && !info.awaiting_confirm => {
                if info.sec_cnt < booted.image.sec_cnt {
                    // Raised at the next boot at the latest.
                    continue;
                }
                return Ok(());
            }
            // A cut between the swap and the confirm means the new image booted without
            // confirming: reverting it is right, and reported.
            Expect::New if running_old && this_cycle && info.last == LastBoot::Reverted && d.flash.cuts() > 0 => {
                return Ok(())
            }
            Expect::Old(last) if running_old && this_cycle && info.last == last => return Ok(()),
            _ => {}
        }
        // The app's turn.
        let r = if info.awaiting_confirm {
            match s.test {
                SelfTest::Passes => d.confirm(),
                SelfTest::Fails => Ok(()), // it hangs or resets: the watchdog reboots it
            }
        } else if running_old && !(this_cycle && matches!(info.last, LastBoot::Reverted | LastBoot::Refused(_))) {
            let r = if s.app_verifies { d.download(s.new) } else { d.download_unchecked(s.new) };
            match r {
                Err(Fail::Update(UpdateError::Image(e))) => {
                    // The app's own verify refused it: nothing marked, the old image stays.
                    if let Expect::Old(LastBoot::Refused(want)) = s.expect {
                        if e == want {
                            return Ok(());
                        }
                    }
                    return Err(format!("the app refused the download: {e:?}"));
                }
                r => r,
            }
        } else {
            Ok(())
        };
        match r {
            Ok(()) => {}
            Err(e) if is_power(&e) => power_up(d),
            Err(e) => return Err(format!("app step failed: {e:?}")),
        }
    }
    Err("did not settle in 24 boots".into())
}

/// Sweeps every cut of a scenario; returns the number of cases run.
fn sweep<const E: usize, const W: usize>(name: &str, s: &Scenario<'_>, ecc: bool) -> u64 {
    let fresh = || Device::<E, W>::new(s.old, ecc, 1);
    // Count the operations of a clean run.
    let mut clean = fresh();
    drive(&mut clean, s).unwrap_or_else(|e| panic!("{name}: clean run: {e}"));
    let total = clean.flash.ops();
    let mut cases = 0;
    for n in 0..total {
        for mode in CutMode::ALL {
            let seed = n * 3 + mode as u64;
            let mut d = Device::<E, W>::new(s.old, ecc, seed);
            d.flash.cut_at(n, mode);
            if let Err(e) = drive(&mut d, s) {
                panic!("{name} ({E}/{W}, ecc {ecc}): cut {mode:?} at op {n} of {total}, seed {seed}: {e}");
            }
            cases += 1;
        }
    }
    eprintln!("{name} ({E}/{W}, ecc {ecc}): {total} operations, {cases} cut cases");
    cases
}

macro_rules! for_each_geometry {
    ($f:ident($($arg:expr),*)) => {{
        let mut n = 0;
        for ecc in [false, true] {
            n += $f::<4096, 4>($($arg,)* ecc);
            n += $f::<8192, 16>($($arg,)* ecc);
        }
        n
    }};
}

fn update_confirm<const E: usize, const W: usize>(pages_old: usize, pages_new: usize, ecc: bool) -> u64 {
    let old = image(pages_old * E - 100, 3, 1);
    let new = image(pages_new * E - 7, 4, 2);
    let s = Scenario { old: &old, new: &new, test: SelfTest::Passes, expect: Expect::New, app_verifies: true };
    sweep::<E, W>(&format!("update->confirm {pages_old}->{pages_new} pages"), &s, ecc)
}

fn update_revert<const E: usize, const W: usize>(pages_old: usize, pages_new: usize, ecc: bool) -> u64 {
    let old = image(pages_old * E - 100, 3, 1);
    let new = image(pages_new * E - 7, 4, 2);
    let s = Scenario {
        old: &old,
        new: &new,
        test: SelfTest::Fails,
        expect: Expect::Old(LastBoot::Reverted),
        app_verifies: true,
    };
    sweep::<E, W>(&format!("update->no confirm->revert {pages_old}->{pages_new} pages"), &s, ecc)
}

#[test]
fn power_cuts_during_update_and_confirm() {
    let mut n = for_each_geometry!(update_confirm(2, 5));
    n += for_each_geometry!(update_confirm(ACTIVE_PAGES, 1));
    eprintln!("update->confirm sweeps: {n} cases");
}

#[test]
fn power_cuts_during_update_and_revert() {
    let mut n = for_each_geometry!(update_revert(3, 2));
    n += for_each_geometry!(update_revert(1, ACTIVE_PAGES));
    eprintln!("update->revert sweeps: {n} cases");
}

/// The bootloader refuses `new` before any page moves; the old image keeps running.
fn refused<const E: usize, const W: usize>(new: &[u8], old_sec: u32, why: ImageError, ecc: bool) -> u64 {
    let old = image(3 * E - 100, 3, old_sec);
    let s = Scenario {
        old: &old,
        new,
        test: SelfTest::Passes,
        expect: Expect::Old(LastBoot::Refused(why)),
        app_verifies: false,
    };
    let n = sweep::<E, W>(&format!("refused ({why})"), &s, ecc);
    // The app's own verify refuses it too, before anything is marked.
    let s = Scenario { app_verifies: true, ..s };
    drive(&mut Device::<E, W>::new(&old, ecc, 9), &s).unwrap_or_else(|e| panic!("app-side refusal of {why}: {e}"));
    n
}

fn refusals<const E: usize, const W: usize>(ecc: bool) -> u64 {
    let good = image(4 * E, 4, 2);
    let mut bad_sig = good.clone();
    *bad_sig.last_mut().unwrap() ^= 1;
    let other_key = {
        let p = SignParams {
            header_size: 0x200,
            version: ImageVersion { major: 1, minor: 4, revision: 0, build: 0 },
            sec_cnt: 2,
            module: Some("default"),
            aliyun_version: Some("1.4"),
        };
        sign_image(&good[0x200..good.len() - 200], &p, &SigningKey::from_bytes(&[7; 32]))
    };
    let truncated = good[..good.len() - 150].to_vec();
    let too_large = image(ACTIVE_PAGES * E + 16, 4, 2);
    let low = image(2 * E, 4, 1);
    let slot = (ACTIVE_PAGES * E) as u32;
    let mut n = refused::<E, W>(&bad_sig, 1, ImageError::BadSignature, ecc);
    n += refused::<E, W>(&other_key, 1, ImageError::UnknownKey, ecc);
    n += refused::<E, W>(&truncated, 1, ImageError::Truncated, ecc);
    n += refused::<E, W>(&too_large, 1, ImageError::TooLargeForSlot { need: too_large.len() as u32, slot }, ecc);
    n += refused::<E, W>(&low, 5, ImageError::CounterTooLow { image: 1, stored: 5 }, ecc);
    n
}

#[test]
fn invalid_updates_are_refused_before_any_page_moves() {
    let n = for_each_geometry!(refusals());
    eprintln!("refusal sweeps: {n} cases");
}

#[test]
fn a_second_update_after_a_revert_succeeds() {
    for ecc in [false, true] {
        let v3 = image(2 * 4096 + 11, 3, 1);
        let v4 = image(5 * 4096, 4, 1);
        let v5 = image(4 * 4096 - 3, 5, 2);
        let mut d = Device::<4096, 4>::new(&v3, ecc, 5);
        let revert = Scenario {
            old: &v3,
            new: &v4,
            test: SelfTest::Fails,
            expect: Expect::Old(LastBoot::Reverted),
            app_verifies: true,
        };
        drive(&mut d, &revert).unwrap();
        d.boot().unwrap();
        assert_eq!(d.info().unwrap().last, LastBoot::Nothing, "an outcome is reported by the boot that made it, once");
        let update = Scenario { old: &v3, new: &v5, test: SelfTest::Passes, expect: Expect::New, app_verifies: true };
        drive(&mut d, &update).unwrap();
        let info = d.info().unwrap();
        assert_eq!(info.running.aliyun_version.as_deref(), Some("1.5"));
        assert_eq!((info.last, info.sec_cnt), (LastBoot::Confirmed, 2));
    }
}

/// A device keeps running after it confirms, so the next update can be marked before any
/// reboot: the bootloader then finds a Swap request while its record still says `Testing` from
/// the update before. (Found by `cargo xtask demo`: it was taken for an unconfirmed image and
/// "reverted".) Swept with a cut at every operation from the second download on.
fn update_after_confirm_without_reboot<const E: usize, const W: usize>(ecc: bool) -> u64 {
    let v3 = image(2 * E + 11, 3, 1);
    let v4 = image(3 * E, 4, 2);
    let v5 = image(4 * E - 3, 5, 3);
    let confirmed_v4 = |seed: u64| {
        let mut d = Device::<E, W>::new(&v3, ecc, seed);
        d.boot().unwrap();
        d.download(&v4).unwrap();
        d.boot().unwrap();
        assert!(d.info().unwrap().awaiting_confirm);
        d.confirm().unwrap();
        d
    };
    let s = Scenario { old: &v4, new: &v5, test: SelfTest::Passes, expect: Expect::New, app_verifies: true };
    let rest = |d: &mut Device<E, W>| -> Result<(), String> {
        match d.download(&v5) {
            Ok(()) => {}
            Err(e) if is_power(&e) => d.flash.power_cycle(),
            Err(e) => return Err(format!("download: {e:?}")),
        }
        drive(d, &s)?;
        let info = d.info().map_err(|e| format!("{e:?}"))?;
        match info.running.aliyun_version.as_deref() {
            Some("1.5") => Ok(()),
            // A cut between the swap and the confirm reverts v5: v4 runs, reported.
            Some("1.4") if info.last == LastBoot::Reverted && d.flash.cuts() > 0 => Ok(()),
            v => Err(format!("runs {v:?}, last boot {:?}", info.last)),
        }
    };
    let mut clean = confirmed_v4(1);
    let start = clean.flash.ops();
    rest(&mut clean).unwrap_or_else(|e| panic!("clean run: {e}"));
    let total = clean.flash.ops() - start;
    let mut cases = 0;
    for n in 0..total {
        for mode in CutMode::ALL {
            let seed = n * 3 + mode as u64;
            let mut d = confirmed_v4(seed);
            d.flash.cut_at(n, mode);
            rest(&mut d).unwrap_or_else(|e| panic!("({E}/{W}, ecc {ecc}) cut {mode:?} at op {n} of {total}: {e}"));
            cases += 1;
        }
    }
    eprintln!("update after a confirm without reboot ({E}/{W}, ecc {ecc}): {total} operations, {cases} cut cases");
    cases
}

#[test]
fn an_update_marked_before_any_reboot_after_a_confirm_installs() {
    let n = for_each_geometry!(update_after_confirm_without_reboot());
    eprintln!("update after confirm without reboot: {n} cases");
}

#[test]
fn image_sizes_from_one_page_to_the_whole_slot_update_and_revert() {
    for pages in [1, 2, 7, ACTIVE_PAGES] {
        for (test, expect) in [(SelfTest::Passes, Expect::New), (SelfTest::Fails, Expect::Old(LastBoot::Reverted))] {
            let old = image(ACTIVE_PAGES * 4096 - 5000, 3, 0);
            let new = image(pages * 4096, 4, 0);
            let s = Scenario { old: &old, new: &new, test, expect, app_verifies: true };
            let mut d = Device::<4096, 4>::new(&old, false, 1);
            drive(&mut d, &s).unwrap_or_else(|e| panic!("{pages} pages, {test:?}: {e}"));
        }
    }
}

#[test]
fn random_multi_cut_runs() {
    let runs = if full() { 10_000 } else { 1_000 };
    for seed in 0..runs {
        match seed % 2 {
            0 => multi_cut::<4096, 4>(seed),
            _ => multi_cut::<8192, 16>(seed),
        }
    }
    eprintln!("random multi-cut runs: {runs} (1 to 4 cuts each, both geometries, ECC on and off)");
}

fn multi_cut<const E: usize, const W: usize>(seed: u64) {
    let old = image(3 * E + 500, 3, 1);
    let new = image(6 * E - 40, 4, 2);
    let mut rng = Rng::new(seed);
    let test = if rng.below(2) == 0 { SelfTest::Passes } else { SelfTest::Fails };
    let expect = match test {
        SelfTest::Passes => Expect::New,
        SelfTest::Fails => Expect::Old(LastBoot::Reverted),
    };
    let s = Scenario { old: &old, new: &new, test, expect, app_verifies: true };
    let ecc = rng.below(2) == 0;
    let cuts = 1 + rng.below(4) as u32;
    let mut d = Device::<E, W>::new(&old, ecc, seed);
    let mode = CutMode::ALL[rng.below(3) as usize];
    d.flash.cut_at(rng.below(250), mode);
    let more = MoreCuts { rng: Rng::new(seed ^ 0xC0FFEE), left: cuts - 1 };
    if let Err(e) = drive_cuts(&mut d, &s, Some(more)) {
        panic!("multi-cut run seed {seed} ({E}/{W}, ecc {ecc}, {cuts} cuts, {test:?}): {e}");
    }
}
