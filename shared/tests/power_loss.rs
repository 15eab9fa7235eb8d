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
use shared::boot::{self, boot_info, confirm, request_revert, BootInfo, BootRecord, LastBoot, Phase, Policy, Slots};
use shared::boot::{FirmwareUpdaterConfig, UpdateError, Updater};
use shared::image::{self, sign_image, ImageError, ImageVersion, PublicKey, SignParams, SliceFlash, VerifyOptions};
use shared::sim::{CutMode, FaultyFlash, Rng, SimFlash};

/// Test layout in pages: BOOT_RECORD 2, STATE 1, ACTIVE 16, DFU 17.
const ACTIVE_PAGES: usize = 16;
/// Starts an unconfirmed image gets (the boards' default).
const ATTEMPTS: u8 = 3;
/// Cases the sweeps must at least run (a little under what they do run: a sweep that shrinks
/// by much has stopped testing what it did).
const MIN_CONFIRM: u64 = 5_000;
const MIN_REVERT: u64 = 19_000;
const MIN_REFUSAL: u64 = 3_200;
const MIN_ROTATION: u64 = 3_100;
const MIN_AFTER_CONFIRM: u64 = 1_250;
const MIN_DELTA: u64 = 37_000;
const REGIONS: [usize; 4] = [2, 1, ACTIVE_PAGES, ACTIVE_PAGES + 1];

fn full() -> bool {
    std::env::var_os("ALIYUN_OTA_FULL").is_some()
}

/// Trusted key `slot` (the device trusts slots 0 and 1).
fn key_in(slot: u8) -> SigningKey {
    SigningKey::from_bytes(&[42 + slot; 32])
}

fn keys() -> [PublicKey; 2] {
    [0, 1].map(|s| PublicKey(key_in(s).verifying_key().to_bytes()))
}

/// A signed image of exactly `total` bytes (header 0x200, TLVs included), version `v`.
fn image(total: usize, v: u8, sec_cnt: u32) -> Vec<u8> {
    image_by(total, v, sec_cnt, 0, 0)
}

/// The same, signed by trusted key `slot`, revoking the key slots in `revoke` once confirmed.
fn image_by(total: usize, v: u8, sec_cnt: u32, slot: u8, revoke: u32) -> Vec<u8> {
    // SEC_CNT, module "default", version "1.x", REVOKE_KEYS when there is one
    let tlvs = 4 + 8 + 4 + 7 + 4 + 3 + 4 + 36 + 36 + 68 + if revoke != 0 { 8 } else { 0 };
    let body: Vec<u8> = (0..total - 0x200 - tlvs).map(|i| (i as u8).wrapping_mul(31).wrapping_add(v)).collect();
    let vs = format!("1.{v}");
    let p = SignParams {
        header_size: 0x200,
        version: ImageVersion { major: 1, minor: v, revision: 0, build: 0 },
        sec_cnt,
        module: Some("default"),
        aliyun_version: Some(&vs),
        revoke_keys: revoke,
    };
    let img = sign_image(&body, &p, &key_in(slot));
    assert_eq!(img.len(), total);
    img
}

/// The simulated device: one flash, partitioned like a board.
#[derive(Clone)]
struct Device<const E: usize, const W: usize> {
    flash: FaultyFlash<E, W>,
}

type Part<'a, const E: usize, const W: usize> = BlockingPartition<'a, NoopRawMutex, FaultyFlash<E, W>>;
type Parts<'a, const E: usize, const W: usize> = Slots<Part<'a, E, W>, Part<'a, E, W>, Part<'a, E, W>, Part<'a, E, W>>;

fn parts<const E: usize, const W: usize>(m: &Mutex<NoopRawMutex, RefCell<FaultyFlash<E, W>>>) -> Parts<'_, E, W> {
    let mut off = 0u32;
    let mut next = |pages: usize| {
        let p = BlockingPartition::new(m, off, (pages * E) as u32);
        off += (pages * E) as u32;
        p
    };
    // In flash order: BOOT_RECORD, STATE, ACTIVE, DFU.
    let (boot_record, state) = (next(REGIONS[0]), next(REGIONS[1]));
    let (active, dfu) = (next(REGIONS[2]), next(REGIONS[3]));
    Slots { active, dfu, state, boot_record }
}

#[derive(Debug)]
#[allow(dead_code)]
enum Fail {
    Power,
    Boot(boot::BootError),
    Update(UpdateError),
    Delta(shared::delta::DeltaError),
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

    /// A device whose BOOT_RECORD already holds `revoked` (what an earlier update left).
    fn with_revoked(mut self, revoked: u32) -> Self {
        self.with(|p| BootRecord { revoked, ..BootRecord::default() }.store(&mut p.boot_record)).unwrap();
        self
    }

    /// The record as flash holds it now (what the next boot starts from).
    fn record(&mut self) -> BootRecord {
        self.with(|p| BootRecord::load(&mut p.boot_record)).ok().flatten().map(|(_, r)| r).unwrap_or_default()
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
                let policy = Policy { keys: &keys(), boot_attempts: ATTEMPTS };
                boot::boot(p, &policy, &mut [0u8; 1024])
            },
            Fail::Boot,
        )
    }

    /// App: download `img` into DFU in 1 KiB blocks and mark it (after our verify when
    /// `checked`; an app with a bug marks it without).
    fn download_as(&mut self, img: &[u8], checked: bool, info: &BootInfo) -> Result<(), Fail> {
        let (revoked, min_sec_cnt) = (info.floor.revoked, info.floor.sec_cnt);
        self.op(
            |p| {
                let mut u = Updater::new(FirmwareUpdaterConfig { dfu: &mut p.dfu, state: &mut p.state }, 0);
                for (i, chunk) in img.chunks(1024).enumerate() {
                    u.write((i * 1024) as u32, chunk)?;
                }
                if checked {
                    let slot_size = Some((ACTIVE_PAGES * E) as u32);
                    let opts = VerifyOptions { keys: &keys(), revoked, min_sec_cnt, slot_size };
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

    /// App: apply the differential package `patch` from ACTIVE into DFU in 1 KiB pieces (as the
    /// download brings them), from its first byte, then verify and mark the rebuilt image.
    fn patch_as(&mut self, patch: &[u8], info: &BootInfo) -> Result<(), Fail> {
        let (revoked, min_sec_cnt, base_len) = (info.floor.revoked, info.floor.sec_cnt, info.running.total_len);
        let slot = (ACTIVE_PAGES * E) as u32;
        let applied = self.op(
            |p| {
                let mut u = Updater::new(FirmwareUpdaterConfig { dfu: &mut p.dfu, state: &mut p.state }, 0);
                let mut patcher = Box::new(shared::delta::Patcher::new());
                patcher.reset(slot, base_len);
                for chunk in patch.chunks(1024) {
                    patcher.feed(chunk, &mut p.active, &mut u)?;
                }
                patcher.finish(&mut p.active, &mut u)?;
                let opts = VerifyOptions { keys: &keys(), revoked, min_sec_cnt, slot_size: Some(slot) };
                Ok(u.finish(&opts, &mut [0u8; 512]).map(|_| ()))
            },
            Fail::Delta,
        )?;
        applied.map_err(Fail::Update)
    }

    fn download(&mut self, img: &[u8]) -> Result<(), Fail> {
        let info = self.info()?;
        self.download_as(img, true, &info)
    }

    fn info(&mut self) -> Result<BootInfo, Fail> {
        self.op(|p| boot_info(p, &keys(), &mut [0u8; 512]), Fail::Update)
    }

    fn confirm(&mut self) -> Result<(), Fail> {
        self.op(|p| confirm(&mut p.state, &mut [0u8; 64]), Fail::Update)
    }

    /// App: its self-test failed; it asks for the revert (then resets).
    fn request_revert(&mut self) -> Result<(), Fail> {
        self.op(|p| request_revert(&mut p.state, &mut [0u8; 64]), Fail::Update)
    }

    fn active(&self) -> &[u8] {
        let at = (REGIONS[0] + REGIONS[1]) * E;
        &self.flash.inner().bytes()[at..at + ACTIVE_PAGES * E]
    }
}

/// What the app does with a new image once it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SelfTest {
    /// It confirms.
    Passes,
    /// Its self-test fails: it asks for the revert at once and resets.
    Fails,
    /// It hangs or crashes before confirming: the watchdog resets it, again and again.
    Hangs,
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
    /// The update comes as this differential package from `old` (rebuilt into DFU from ACTIVE,
    /// started over from its first byte after every power cut, as the device does).
    delta: Option<&'a [u8]>,
}

/// SHA-256 of an image's header, body and protected TLVs: what `ImageInfo::digest` must say.
fn digest_of(img: &[u8]) -> [u8; 32] {
    let opts = VerifyOptions { keys: &keys(), revoked: 0, min_sec_cnt: 0, slot_size: None };
    image::verify(&mut SliceFlash(img), &opts, &mut [0u8; 512]).map(|i| i.digest).unwrap_or([0; 32])
}

/// Plans further random cuts after each power-up (multi-cut runs).
struct MoreCuts {
    rng: Rng,
    left: u32,
}

/// What a settled run saw.
#[derive(Debug, Default)]
struct Seen {
    /// Boots that started the new image unconfirmed (its self-test ran).
    new_started: u32,
    /// Bootloader runs that began with the record in `Testing` (cut ones included): each is one
    /// more start of the image under test, or its revert.
    testing_boots: u32,
}

/// Runs the device (boot, app, boot, ...) until the scenario settles, checking every boot.
/// Returns Err(what) on an invariant broken; Ok(what it saw) once settled. Power cuts inside
/// are recovered by power-cycling and carrying on.
fn drive<const E: usize, const W: usize>(d: &mut Device<E, W>, s: &Scenario<'_>) -> Result<Seen, String> {
    drive_cuts(d, s, None)
}

fn drive_cuts<const E: usize, const W: usize>(
    d: &mut Device<E, W>,
    s: &Scenario<'_>,
    mut more: Option<MoreCuts>,
) -> Result<Seen, String> {
    let multi_cut = more.is_some();
    let start = d.record();
    let (new_digest, old_digest) = (digest_of(s.new), digest_of(s.old));
    let mut seen = Seen::default();
    let mut power_up = |d: &mut Device<E, W>| {
        d.flash.power_cycle();
        if let Some(m) = more.as_mut().filter(|m| m.left > 0) {
            m.left -= 1;
            let mode = CutMode::ALL[m.rng.below(3) as usize];
            d.flash.cut_at(m.rng.below(150), mode);
        }
    };
    for _round in 0..32 {
        if matches!(d.record().phase, Phase::Testing { .. }) {
            seen.testing_boots += 1;
        }
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
        let expect_digest = if running_new { new_digest } else { old_digest };
        if booted.image.digest != expect_digest {
            return Err("the verified image is not the one in ACTIVE".into());
        }
        // Revocations are stored only once an image is confirmed; starts are bounded.
        if let Phase::Testing { boots, .. } = booted.record.phase {
            if booted.record.revoked != start.revoked {
                return Err(format!("keys revoked while an image is under test (start {boots})"));
            }
            if boots > ATTEMPTS {
                return Err(format!("the image under test was started {boots} times (at most {ATTEMPTS})"));
            }
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
        let this_cycle = info.record_seq > start.seq;
        if std::env::var_os("SIM_TRACE").is_some() {
            eprintln!(
                "boot: new {running_new} info {:?} {:?} seq {} sec {} rec {:?}",
                info.awaiting_confirm, info.last, info.record_seq, info.floor.sec_cnt, booted.record.phase
            );
        }
        // Settled?
        match s.expect {
            Expect::New if running_new && !info.awaiting_confirm => {
                let r = booted.record;
                if r.sec_cnt < booted.image.sec_cnt || r.revoked & booted.image.revokes != booted.image.revokes {
                    // Stored at the next boot at the latest.
                    continue;
                }
                return Ok(seen);
            }
            // A good image is reverted only when its starts ran out: power cuts between the swap
            // and the confirm, one per start (multi-cut runs only: one cut cannot use them up).
            Expect::New if running_old && this_cycle && info.last == LastBoot::Reverted => {
                if multi_cut && seen.testing_boots > ATTEMPTS as u32 {
                    return Ok(seen);
                }
                return Err(format!(
                    "a good image was reverted after {} bootloader runs in testing ({ATTEMPTS} starts allowed)",
                    seen.testing_boots
                ));
            }
            Expect::Old(last) if running_old && this_cycle && info.last == last => return Ok(seen),
            _ => {}
        }
        // The app's turn.
        let r = if info.awaiting_confirm {
            seen.new_started += 1;
            match s.test {
                SelfTest::Passes => d.confirm(),
                SelfTest::Fails => d.request_revert(),
                SelfTest::Hangs => Ok(()), // the watchdog reboots it
            }
        } else if running_old && !(this_cycle && matches!(info.last, LastBoot::Reverted | LastBoot::Refused(_))) {
            let r = match s.delta {
                Some(patch) => d.patch_as(patch, &info),
                None => d.download_as(s.new, s.app_verifies, &info),
            };
            match r {
                Err(Fail::Update(UpdateError::Image(e))) => {
                    // The app's own verify refused it: nothing marked, the old image stays.
                    if let Expect::Old(LastBoot::Refused(want)) = s.expect {
                        if e == want {
                            return Ok(seen);
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
    Err("did not settle in 32 boots".into())
}

/// Sweeps every cut of a scenario on a device `fresh` makes; returns the number of cases run
/// (asserted: every operation of the clean run, in each of the three modes, each cut made).
fn sweep_from<const E: usize, const W: usize>(
    name: &str,
    s: &Scenario<'_>,
    fresh: impl Fn(u64) -> Device<E, W>,
    ecc: bool,
) -> u64 {
    // Count the operations of a clean run.
    let mut clean = fresh(1);
    let before = clean.flash.ops();
    drive(&mut clean, s).unwrap_or_else(|e| panic!("{name}: clean run: {e}"));
    let total = clean.flash.ops() - before;
    assert!(total > 0, "{name}: the clean run did no flash operation");
    let mut cases = 0;
    for n in 0..total {
        for mode in CutMode::ALL {
            let seed = n * 3 + mode as u64;
            let mut d = fresh(seed);
            d.flash.cut_at(n, mode);
            if let Err(e) = drive(&mut d, s) {
                panic!("{name} ({E}/{W}, ecc {ecc}): cut {mode:?} at op {n} of {total}, seed {seed}: {e}");
            }
            assert_eq!(d.flash.cuts(), 1, "{name}: cut {mode:?} at op {n} of {total} never happened");
            cases += 1;
        }
    }
    assert_eq!(cases, 3 * total);
    eprintln!("{name} ({E}/{W}, ecc {ecc}): {total} operations, {cases} cut cases");
    cases
}

fn sweep<const E: usize, const W: usize>(name: &str, s: &Scenario<'_>, ecc: bool) -> u64 {
    sweep_from::<E, W>(name, s, |seed| Device::<E, W>::new(s.old, ecc, seed), ecc)
}

/// Every board's geometry: the nRF52840 and host (4 KiB / 4 B) and qemu-an386 (8 KiB / 16 B), each
/// with ECC off and on, and the STM32L475 of b-l475e-iot01a (2 KiB / 8 B) with ECC only, as the
/// part has it (a torn double word cannot be programmed again).
macro_rules! for_each_geometry {
    ($f:ident($($arg:expr),*)) => {{
        let mut n = 0;
        for ecc in [false, true] {
            n += $f::<4096, 4>($($arg,)* ecc);
            n += $f::<8192, 16>($($arg,)* ecc);
        }
        n += $f::<2048, 8>($($arg,)* true);
        n
    }};
}

fn update_confirm<const E: usize, const W: usize>(pages_old: usize, pages_new: usize, ecc: bool) -> u64 {
    let old = image(pages_old * E - 100, 3, 1);
    let new = image(pages_new * E - 7, 4, 2);
    let s =
        Scenario { delta: None, old: &old, new: &new, test: SelfTest::Passes, expect: Expect::New, app_verifies: true };
    sweep::<E, W>(&format!("update->confirm {pages_old}->{pages_new} pages"), &s, ecc)
}

fn update_revert<const E: usize, const W: usize>(pages_old: usize, pages_new: usize, ecc: bool) -> u64 {
    let old = image(pages_old * E - 100, 3, 1);
    let new = image(pages_new * E - 7, 4, 2);
    let mut n = 0;
    for (test, what) in [(SelfTest::Fails, "self-test fails->revert asked"), (SelfTest::Hangs, "hangs->starts used up")]
    {
        let s = Scenario {
            delta: None,
            old: &old,
            new: &new,
            test,
            expect: Expect::Old(LastBoot::Reverted),
            app_verifies: true,
        };
        n += sweep::<E, W>(&format!("update->{what}->revert {pages_old}->{pages_new} pages"), &s, ecc);
    }
    n
}

/// The update as a differential package from the running image: every flash operation of
/// patching (DFU erased and written page by page while ACTIVE is read, and, for an LZMA patch,
/// DFU read back), marking, swapping and confirming is cut; after each cut the app starts the
/// patch over from its first byte. Both kinds of patch: detools (heatshrink, Thumb filter) and
/// LZMA over the remapped base.
fn delta_update<const E: usize, const W: usize>(pages_old: usize, pages_new: usize, ecc: bool) -> u64 {
    use shared::delta::{Base, Compression, CreateOptions, Filter};
    let old = image(pages_old * E - 100, 3, 1);
    let new = image(pages_new * E - 7, 4, 2);
    let id = Base { size: old.len() as u32, sha256: digest_of(&old), version: "1.3".try_into().unwrap() };
    let kinds = [
        ("detools", Filter::Thumb, Compression::Heatshrink { window: 11, lookahead: 7 }),
        ("LZMA", Filter::Remap { load: 0x1_0000, shifts: 0 }, Compression::Lzma { dict_size: 0 }),
    ];
    let mut n = 0;
    for (kind, filter, compression) in kinds {
        let patch = shared::delta::create(&old, &new, Some(&id), &CreateOptions { filter, compression });
        assert!(patch.len() < new.len() / 4, "a patch of {} bytes for a {}-byte image", patch.len(), new.len());
        let s = Scenario {
            old: &old,
            new: &new,
            test: SelfTest::Passes,
            expect: Expect::New,
            app_verifies: true,
            delta: Some(&patch),
        };
        n += sweep::<E, W>(&format!("{kind} delta update->confirm {pages_old}->{pages_new} pages"), &s, ecc);
    }
    n
}

#[test]
fn power_cuts_during_a_delta_update() {
    let n = for_each_geometry!(delta_update(2, 3));
    eprintln!("delta update sweeps (detools and LZMA patches): {n} cases");
    assert!(n >= MIN_DELTA, "delta update sweeps ran only {n} cases");
}

#[test]
fn power_cuts_during_update_and_confirm() {
    let mut n = for_each_geometry!(update_confirm(2, 5));
    n += for_each_geometry!(update_confirm(ACTIVE_PAGES, 1));
    eprintln!("update->confirm sweeps: {n} cases");
    assert!(n >= MIN_CONFIRM, "update->confirm sweeps ran only {n} cases");
}

#[test]
fn power_cuts_during_update_and_revert() {
    let mut n = for_each_geometry!(update_revert(3, 2));
    n += for_each_geometry!(update_revert(1, ACTIVE_PAGES));
    eprintln!("update->revert sweeps: {n} cases");
    assert!(n >= MIN_REVERT, "update->revert sweeps ran only {n} cases");
}

/// The bootloader refuses `new` before any page moves; the old image keeps running.
fn refused<const E: usize, const W: usize>(new: &[u8], old_sec: u32, why: ImageError, ecc: bool) -> u64 {
    let old = image(3 * E - 100, 3, old_sec);
    let s = Scenario {
        delta: None,
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
            revoke_keys: 0,
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
    assert!(n >= MIN_REFUSAL, "refusal sweeps ran only {n} cases");
}

#[test]
fn an_unconfirmed_image_gets_its_boot_attempts_and_a_broken_one_asks_for_the_revert() {
    for ecc in [false, true] {
        let old = image(3 * 4096 + 5, 3, 1);
        let new = image(4 * 4096 - 9, 4, 2);
        let run = |test, expect| {
            let s = Scenario { delta: None, old: &old, new: &new, test, expect, app_verifies: true };
            let mut d = Device::<4096, 4>::new(&old, ecc, 3);
            drive(&mut d, &s).unwrap_or_else(|e| panic!("{test:?}: {e}"))
        };
        // A hung image (watchdog resets) is started exactly ATTEMPTS times, then reverted.
        let seen = run(SelfTest::Hangs, Expect::Old(LastBoot::Reverted));
        assert_eq!(seen.new_started, ATTEMPTS as u32, "a hung image's starts");
        assert_eq!(seen.testing_boots, ATTEMPTS as u32, "bootloader runs in testing: starts 2..N and the revert");
        // A failed self-test asks for the revert: the next boot reverts, no more starts.
        let seen = run(SelfTest::Fails, Expect::Old(LastBoot::Reverted));
        assert_eq!((seen.new_started, seen.testing_boots), (1, 1), "a failed self-test reverts at the next boot");
        // A good image started, then reset before its confirm (power lost), is started again.
        let s = Scenario {
            delta: None,
            old: &old,
            new: &new,
            test: SelfTest::Passes,
            expect: Expect::New,
            app_verifies: true,
        };
        let mut d = Device::<4096, 4>::new(&old, ecc, 4);
        d.boot().unwrap();
        d.download(&new).unwrap();
        for start in 1..ATTEMPTS {
            let b = d.boot().unwrap();
            assert_eq!(b.record.phase, Phase::Testing { pages: 4, boots: start });
            assert!(d.info().unwrap().awaiting_confirm);
            d.flash.power_cycle(); // lost before the confirm
        }
        let seen = drive(&mut d, &s).unwrap();
        assert_eq!(seen.new_started, 1, "the last start confirms");
        assert_eq!(d.info().unwrap().running.aliyun_version.as_deref(), Some("1.4"));
    }
}

/// Key 0 leaked: release 1.5, signed by key 1, revokes it. Until 1.5 is confirmed nothing is
/// revoked (a revert keeps key 0); after, images signed by key 0 are refused by the app's check
/// and by the bootloader's. Swept at every operation.
fn key_rotation<const E: usize, const W: usize>(ecc: bool) -> u64 {
    let v3 = image_by(2 * E + 7, 3, 1, 0, 0);
    let v5 = image_by(3 * E - 50, 5, 1, 1, 0b1);
    let mut n = 0;
    for (test, expect) in [(SelfTest::Passes, Expect::New), (SelfTest::Fails, Expect::Old(LastBoot::Reverted))] {
        let s = Scenario { delta: None, old: &v3, new: &v5, test, expect, app_verifies: true };
        n += sweep::<E, W>(&format!("revoking update, {test:?}"), &s, ecc);
        // Settled: revoked exactly when 1.5 runs confirmed, stored at the latest by the next boot.
        let mut d = Device::<E, W>::new(&v3, ecc, 2);
        drive(&mut d, &s).unwrap();
        d.boot().unwrap();
        let want = if test == SelfTest::Passes { 0b1 } else { 0 };
        assert_eq!(d.record().revoked, want, "{test:?}");
    }
    // Revoked: an image signed by key 0 is refused, before any page moves.
    let v6 = image_by(4 * E, 6, 2, 0, 0);
    let refusal = Scenario {
        delta: None,
        old: &v5,
        new: &v6,
        test: SelfTest::Passes,
        expect: Expect::Old(LastBoot::Refused(ImageError::KeyRevoked { key: 0 })),
        app_verifies: false,
    };
    let revoked = |seed| Device::<E, W>::new(&v5, ecc, seed).with_revoked(1);
    n += sweep_from::<E, W>("signed by a revoked key", &refusal, revoked, ecc);
    let app_checks = Scenario { app_verifies: true, ..refusal };
    drive(&mut revoked(9), &app_checks).expect("the app refuses it too");
    n
}

#[test]
fn a_leaked_key_is_revoked_by_a_confirmed_image_signed_with_the_next_one() {
    let n = for_each_geometry!(key_rotation());
    eprintln!("key rotation sweeps: {n} cases");
    assert!(n >= MIN_ROTATION, "key rotation sweeps ran only {n} cases");
}

#[test]
fn a_second_update_after_a_revert_succeeds() {
    for ecc in [false, true] {
        let v3 = image(2 * 4096 + 11, 3, 1);
        let v4 = image(5 * 4096, 4, 1);
        let v5 = image(4 * 4096 - 3, 5, 2);
        let mut d = Device::<4096, 4>::new(&v3, ecc, 5);
        let revert = Scenario {
            delta: None,
            old: &v3,
            new: &v4,
            test: SelfTest::Fails,
            expect: Expect::Old(LastBoot::Reverted),
            app_verifies: true,
        };
        drive(&mut d, &revert).unwrap();
        d.boot().unwrap();
        assert_eq!(d.info().unwrap().last, LastBoot::Nothing, "an outcome is reported by the boot that made it, once");
        let update = Scenario {
            delta: None,
            old: &v3,
            new: &v5,
            test: SelfTest::Passes,
            expect: Expect::New,
            app_verifies: true,
        };
        drive(&mut d, &update).unwrap();
        let info = d.info().unwrap();
        assert_eq!(info.running.aliyun_version.as_deref(), Some("1.5"));
        assert_eq!((info.last, info.floor.sec_cnt), (LastBoot::Confirmed, 2));
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
    let s =
        Scenario { delta: None, old: &v4, new: &v5, test: SelfTest::Passes, expect: Expect::New, app_verifies: true };
    let rest = |d: &mut Device<E, W>| -> Result<(), String> {
        match d.download(&v5) {
            Ok(()) => {}
            Err(e) if is_power(&e) => d.flash.power_cycle(),
            Err(e) => return Err(format!("download: {e:?}")),
        }
        drive(d, &s).map(|_| ())?;
        let info = d.info().map_err(|e| format!("{e:?}"))?;
        // One cut cannot use up v5's starts: it always ends confirmed.
        match info.running.aliyun_version.as_deref() {
            Some("1.5") => Ok(()),
            v => Err(format!("runs {v:?}, last boot {:?}", info.last)),
        }
    };
    let mut clean = confirmed_v4(1);
    let start = clean.flash.ops();
    rest(&mut clean).unwrap_or_else(|e| panic!("clean run: {e}"));
    let total = clean.flash.ops() - start;
    assert!(total > 0);
    let mut cases = 0;
    for n in 0..total {
        for mode in CutMode::ALL {
            let seed = n * 3 + mode as u64;
            let mut d = confirmed_v4(seed);
            d.flash.cut_at(n, mode);
            rest(&mut d).unwrap_or_else(|e| panic!("({E}/{W}, ecc {ecc}) cut {mode:?} at op {n} of {total}: {e}"));
            assert_eq!(d.flash.cuts(), 1, "cut {mode:?} at op {n} of {total} never happened");
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
    assert!(n >= MIN_AFTER_CONFIRM, "update after confirm sweeps ran only {n} cases");
}

#[test]
fn image_sizes_from_one_page_to_the_whole_slot_update_and_revert() {
    for pages in [1, 2, 7, ACTIVE_PAGES] {
        for (test, expect) in [(SelfTest::Passes, Expect::New), (SelfTest::Fails, Expect::Old(LastBoot::Reverted))] {
            let old = image(ACTIVE_PAGES * 4096 - 5000, 3, 0);
            let new = image(pages * 4096, 4, 0);
            let s = Scenario { delta: None, old: &old, new: &new, test, expect, app_verifies: true };
            let mut d = Device::<4096, 4>::new(&old, false, 1);
            drive(&mut d, &s).unwrap_or_else(|e| panic!("{pages} pages, {test:?}: {e}"));
        }
    }
}

#[test]
fn random_multi_cut_runs() {
    let runs = if full() { 10_000 } else { 1_000 };
    let mut cuts = 0;
    for seed in 0..runs {
        cuts += match seed % 3 {
            0 => multi_cut::<4096, 4>(seed),
            1 => multi_cut::<8192, 16>(seed),
            _ => multi_cut::<2048, 8>(seed),
        };
    }
    eprintln!(
        "random multi-cut runs: {runs}, {cuts} cuts made (1 to 4 planned each, three geometries, ECC on and off)"
    );
    // Planned cuts past the end of a run do not happen; most must.
    assert!(cuts >= runs as u32, "only {cuts} cuts happened in {runs} runs");
}

fn multi_cut<const E: usize, const W: usize>(seed: u64) -> u32 {
    let old = image(3 * E + 500, 3, 1);
    let new = image(6 * E - 40, 4, 2);
    let mut rng = Rng::new(seed);
    let test = [SelfTest::Passes, SelfTest::Fails, SelfTest::Hangs][rng.below(3) as usize];
    let expect = match test {
        SelfTest::Passes => Expect::New,
        SelfTest::Fails | SelfTest::Hangs => Expect::Old(LastBoot::Reverted),
    };
    let s = Scenario { delta: None, old: &old, new: &new, test, expect, app_verifies: true };
    let ecc = rng.below(2) == 0;
    let cuts = 1 + rng.below(4) as u32;
    let mut d = Device::<E, W>::new(&old, ecc, seed);
    let mode = CutMode::ALL[rng.below(3) as usize];
    d.flash.cut_at(rng.below(250), mode);
    let more = MoreCuts { rng: Rng::new(seed ^ 0xC0FFEE), left: cuts - 1 };
    if let Err(e) = drive_cuts(&mut d, &s, Some(more)) {
        panic!("multi-cut run seed {seed} ({E}/{W}, ecc {ecc}, {cuts} cuts, {test:?}): {e}");
    }
    d.flash.cuts()
}
