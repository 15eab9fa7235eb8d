//! The OTA machine's contract (`shared::ota::script`, the `ota_machine` fuzz target's model)
//! over random event scripts: every path that ends a download (a failed write, a refusal, a task
//! that replaces it, a revert) leaves no queued flash action of it behind, writes stay
//! sequential and inside the slot, resume points cover only written bytes, a mark only after
//! the whole file. Seeded, so a failure names a script that can be replayed
//! (`OTA_TRACE=1 cargo xtask fuzz` or `shared::ota::script::run`).

use shared::ota::script::{op, run, Ran};

/// xorshift64*: the scripts are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    fn below(&mut self, n: u32) -> u32 {
        (self.next() % u64::from(n)) as u32
    }
}

/// A script that mostly does what a device meets: a session, offers of the image (now and then
/// bent), block replies (mostly good), HTTP bodies, completions, failing writes, timers,
/// reconnects and power cuts.
fn script(r: &mut Rng) -> Vec<u8> {
    let mut s: Vec<u8> = (0..8).map(|_| r.byte()).collect();
    // Flags: no reverted/refused boot most of the time (they only add a report).
    s[6] &= if r.below(4) == 0 { 0xFF } else { !(op::setup::REVERTED | op::setup::REFUSED) };
    let image: u16 = match r.below(3) {
        0 => r.below(4) as u16,
        _ => 4 + r.below(20_000) as u16,
    };
    s.extend_from_slice(&image.to_le_bytes());
    s.push(op::CONNECT);
    let offer = |r: &mut Rng| {
        // Mostly the right offer; a wrong digest, HTTPS, SHA-256 now and then.
        let flags = match r.below(6) {
            0 => r.byte(),
            1 => op::offer::HTTPS,
            2 => op::offer::SHA256,
            _ => 0,
        };
        let flags2 = if r.below(8) == 0 { r.byte() } else { 0 };
        let delta = if r.below(10) == 0 { r.byte() } else { 0 };
        [flags, flags2, delta, r.below(3) as u8]
    };
    for _ in 0..40 + r.below(300) {
        match r.below(100) {
            0..=39 => {
                let mode = if r.below(8) == 0 { r.byte() } else { 0 };
                s.extend_from_slice(&[op::BLOCK, r.below(3) as u8, mode, r.byte(), r.byte()]);
            }
            40..=45 => {
                s.push(op::PUSH);
                s.extend_from_slice(&offer(r));
            }
            46..=48 => {
                s.extend_from_slice(&[op::GET_REPLY, r.below(3) as u8]);
                s.extend_from_slice(&offer(r));
            }
            49..=54 => s.push(op::FLASH_FAILED),
            55..=62 => s.extend_from_slice(&[op::COMPLETE, r.below(3) as u8 + (r.below(2) as u8) * 2]),
            63..=66 => s.extend_from_slice(&[op::TICK, r.byte(), r.below(8) as u8]),
            67..=70 => s.push(op::TIMEOUT),
            71..=72 => s.push(op::DISCONNECT),
            73..=75 => s.push(op::CONNECT),
            76 => s.extend_from_slice(&[op::REBOOT, r.below(4) as u8]),
            77..=80 => s.extend_from_slice(&[op::HTTP_RESPONSE, r.below(3) as u8, 0]),
            81..=87 => s.extend_from_slice(&[op::HTTP_BODY, r.byte(), r.below(8) as u8, u8::from(r.below(16) == 0)]),
            88..=89 => s.push(op::HTTP_END),
            90..=93 => s.extend_from_slice(&[op::ACK, r.below(4) as u8]),
            _ => {
                // Anything, with its arguments.
                s.push(r.byte());
                s.extend((0..6).map(|_| r.byte()));
            }
        }
    }
    s
}

fn total(runs: impl Iterator<Item = Ran>) -> Ran {
    runs.fold(Ran::default(), |a, b| Ran {
        events: a.events + b.events,
        begun: a.begun + b.begun,
        resumed: a.resumed + b.resumed,
        written: a.written + b.written,
        failed_writes: a.failed_writes + b.failed_writes,
        failed_at_page_end: a.failed_at_page_end + b.failed_at_page_end,
        marked: a.marked + b.marked,
        ended: a.ended + b.ended,
    })
}

/// Scripts per test: 3,000 (CI), 30,000 with `cargo xtask test --full`.
fn scripts() -> u32 {
    if std::env::var_os("ALIYUN_OTA_FULL").is_some() {
        30_000
    } else {
        3_000
    }
}

fn play(seed: u64, scripts: u32, make: impl Fn(&mut Rng) -> Vec<u8>) -> Ran {
    let mut r = Rng(seed);
    total((0..scripts).map(|i| {
        let s = make(&mut r);
        std::panic::catch_unwind(|| run(&s))
            .unwrap_or_else(|_| panic!("script {i} of seed {seed:#x} broke the contract: {s:?}"))
    }))
}

#[test]
fn no_download_leaves_a_flash_action_behind_over_random_scripts() {
    let t = play(0x005E_ED0A, scripts(), script);
    println!("{t:?}");
    // The scripts reached what this test is about (and the rest of a download's life).
    assert!(t.begun >= 1000 && t.marked >= 100 && t.resumed >= 50, "{t:?}");
    assert!(t.failed_writes >= 500 && t.failed_at_page_end >= 100, "{t:?}");
    assert!(t.ended >= 500 && t.written >= 1_000_000, "{t:?}");
}

#[test]
fn raw_random_scripts_keep_the_contract_too() {
    let t = play(0xB17E5, scripts(), |r| (0..r.below(1500)).map(|_| r.byte()).collect());
    println!("{t:?}");
    assert!(t.events >= 100_000, "{t:?}");
}

#[test]
fn a_failed_write_at_a_page_end_drops_the_resume_point_behind_it() {
    // page 256, 16 pages, 256-byte blocks, window 1: every block ends a page; the third write
    // fails with its resume point queued behind it (the machine must drop it: the model checks
    // that a resume point never covers bytes not written).
    let mut s = vec![0, 15, 0, 0, 3, 4, 0, 9];
    s.extend_from_slice(&2000u16.to_le_bytes());
    s.extend_from_slice(&[op::CONNECT, op::PUSH, 0, 0, 0, 0]);
    s.extend([op::BLOCK, 0, 0, 0, 0].repeat(2));
    s.extend_from_slice(&[op::FLASH_FAILED, op::BLOCK, 0, 0, 0, 0]);
    // The same package again: its download starts over (no resume point) and completes.
    s.extend_from_slice(&[op::TIMEOUT, op::GET_REPLY, 0, 0, 0, 0, 0]);
    s.extend([op::BLOCK, 0, 0, 0, 0].repeat(8));
    let ran = run(&s);
    assert_eq!((ran.failed_writes, ran.failed_at_page_end, ran.ended), (1, 1, 1), "{ran:?}");
    assert_eq!(ran.begun, 2, "{ran:?}");
}
