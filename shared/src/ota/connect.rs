//! How a device reconnects: exponential back-off with jitter, capped, reset only by a session
//! that lasted. The decisions about refused CONNECTs are in [`crate::alink::credentials_refused`]
//! and in `OtaMachine` (a new image refused for its credentials is reverted).

use crate::time::Duration;

/// The first delay.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// The longest delay.
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// A session that stayed up this long resets the back-off (one that drops at once does not, or a
/// broker that accepts and kicks would be hammered).
pub const STEADY_SESSION: Duration = Duration::from_secs(60);

/// The delays between connection attempts: attempt `n` waits between half and all of
/// `min(cap, base * 2^n)` (equal jitter, so a fleet that lost its broker does not come back in
/// step).
#[derive(Clone, Debug)]
pub struct Backoff {
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// A back-off whose jitter comes from `seed` (anything that differs between devices: the
    /// device name's hash, a clock reading).
    pub fn new(seed: u64) -> Self {
        Backoff { attempt: 0, rng: seed | 1 }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let full = BACKOFF_BASE.as_millis().saturating_mul(1 << self.attempt.min(20)).min(BACKOFF_CAP.as_millis());
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = full / 2;
        Duration::from_millis(half + self.rng % (full - half + 1))
    }

    /// After a session that lasted [`STEADY_SESSION`]: start from the first delay again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_with_jitter_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(42);
        let d: std::vec::Vec<u64> = (0..12).map(|_| b.next_delay().as_millis()).collect();
        for (n, ms) in d.iter().enumerate() {
            let full = (1000u64 << n).min(300_000);
            assert!((full / 2..=full).contains(ms), "attempt {n}: {ms} ms");
        }
        assert!(d[11] >= 150_000, "capped at 5 min: {d:?}");
        b.reset();
        assert!(b.next_delay().as_millis() <= 1000);
        // Two devices do not wait in step.
        let (mut x, mut y) = (Backoff::new(1), Backoff::new(2));
        let same = (0..8).filter(|_| x.next_delay() == y.next_delay()).count();
        assert!(same < 8);
    }
}
