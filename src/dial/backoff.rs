//! [`Backoff`]: how long to wait before redialing a persistent peer.

use std::time::{Duration, Instant};

use rand_core::RngCore;

use crate::config::P2pConfig;

/// The jitter applied to every delay, in percent either way: ±10 %, as TM2 (which also caps
/// the jitter at 10 s; here it is not capped, so the delay spreads at any size).
pub const JITTER_PERCENT: u32 = 10;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// The parameters of a [`Backoff`]; build them from the config with
/// [`from_config`](Self::from_config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// The delay after a disconnect or before the first retry, doubled for each counted
    /// failure (`redial_backoff_base`, default 1 s). Zero makes every delay zero.
    pub base: Duration,
    /// The cap on the delay before jitter (`redial_backoff_max`, default 10 min). A cap below
    /// `base` makes every delay the cap.
    pub max: Duration,
    /// How long a connection must stay up for the next disconnect to restart the sequence from
    /// `base` (`redial_backoff_reset_after`, default 30 s).
    pub reset_after: Duration,
}

impl BackoffConfig {
    /// The `redial_backoff_*` fields of the config.
    pub fn from_config(config: &P2pConfig) -> Self {
        Self {
            base: config.redial_backoff_base,
            max: config.redial_backoff_max,
            reset_after: config.redial_backoff_reset_after,
        }
    }
}

impl Default for BackoffConfig {
    /// The defaults of [`P2pConfig`]: 1 s doubling to 10 min, reset after 30 s up.
    fn default() -> Self {
        Self::from_config(&P2pConfig::default())
    }
}

/// The redial state of one persistent peer: counted failures and, while connected, since
/// when.
///
/// The delay before the next attempt, after `n` counted failures, is `min(base × 2^n, max)`
/// with ±[`JITTER_PERCENT`] % uniform jitter, the randomness coming from an `RngCore` passed
/// in. Defaults (from [`P2pConfig`]): 1 s doubling to 10 min, as TM2.
///
/// Calling protocol for a driver (the `Redialer` actor), one `Backoff` per persistent peer:
/// 1. when a dial fails: [`record_failure`](Backoff::record_failure), then schedule the redial
///    at [`next_attempt_at`](Backoff::next_attempt_at)`(now, rng)`;
/// 2. when the peer connects: [`connected`](Backoff::connected)`(now)`;
/// 3. when it disconnects: [`disconnected`](Backoff::disconnected)`(now)`, then schedule the
///    redial as in 1. A connection that stayed up for at least `reset_after` restarts the
///    sequence from `base`; a shorter one counts as a failure, so a peer that accepts and drops
///    at once backs off like one that refuses.
///
/// Arithmetic is done in `u128` nanoseconds with an explicit saturation, so any attempt count
/// (up to `u32::MAX`, where [`record_failure`](Backoff::record_failure) saturates) gives the
/// capped delay; TM2's `base << attempts` on `i64` nanoseconds collapses to about zero after
/// ~34 failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    /// Fixed parameters.
    config: BackoffConfig,
    /// Failures counted since the last reset: failed dials and connections shorter than
    /// `reset_after`. Saturates at `u32::MAX`.
    attempts: u32,
    /// When the current connection came up; set by `connected`, cleared by `disconnected`.
    connected_since: Option<Instant>,
}

impl Backoff {
    /// A fresh backoff: no failures counted, not connected.
    pub const fn new(config: BackoffConfig) -> Self {
        Self {
            config,
            attempts: 0,
            connected_since: None,
        }
    }

    /// Counts one more failed attempt (saturating at `u32::MAX`).
    pub fn record_failure(&mut self) {
        self.attempts = self.attempts.saturating_add(1);
    }

    /// Notes that the peer connected at `now`. This does not reset the count (TM2 resets here,
    /// which redials a peer that accepts then drops at full speed forever); the reset happens at
    /// [`disconnected`](Self::disconnected) if the connection lasted long enough.
    pub fn connected(&mut self, now: Instant) {
        self.connected_since = Some(now);
    }

    /// Notes that the peer disconnected at `now`. If it had been connected for at least
    /// `reset_after`, the count restarts from zero and this returns true; otherwise (a shorter
    /// connection, no [`connected`](Self::connected) call, or `now` before the connect time)
    /// the connection counts as a failure and this returns false.
    pub fn disconnected(&mut self, now: Instant) -> bool {
        let uptime = self
            .connected_since
            .take()
            .map(|since| now.saturating_duration_since(since));
        if uptime.is_some_and(|up| up >= self.config.reset_after) {
            self.reset();
            true
        } else {
            self.record_failure();
            false
        }
    }

    /// Restarts the sequence from `base` (e.g. when the operator asks for an immediate
    /// redial).
    pub fn reset(&mut self) {
        self.attempts = 0;
    }

    /// The delay before the next attempt: `min(base × 2^(attempts - 1), max)` (`base` for 0 or
    /// 1 failures) with ±10 % uniform jitter drawn from `rng`: the first redial after a failure
    /// or a disconnection comes after `base`, the next after `2 × base`, and so on. Never
    /// overflows, for any attempt count.
    pub fn next_delay(&self, rng: &mut (impl RngCore + ?Sized)) -> Duration {
        jitter(self.interval(), rng)
    }

    /// When to make the next attempt: `now` plus [`next_delay`](Self::next_delay). `None` when
    /// that instant is not representable (only with an absurd `max`): do not redial.
    pub fn next_attempt_at(
        &self,
        now: Instant,
        rng: &mut (impl RngCore + ?Sized),
    ) -> Option<Instant> {
        now.checked_add(self.next_delay(rng))
    }

    /// The delay before jitter: `min(base × 2^(attempts - 1), max)`, `base` for 0 or 1
    /// failures. (A driver records the failure before it asks for the delay, so counting from
    /// `attempts` itself made the first redial wait `2 × base`.)
    pub fn interval(&self) -> Duration {
        let base = self.config.base.as_nanos();
        let max = self.config.max.as_nanos();
        let shift = self.attempts.saturating_sub(1);
        // `base << shift` keeps every bit only while the shift is below the leading zeros;
        // beyond that the product exceeds u128, so certainly `max` (which fits in a Duration).
        let doubled = if base == 0 {
            0
        } else if shift < base.leading_zeros() {
            base << shift
        } else {
            u128::MAX
        };
        from_nanos_saturating(doubled.min(max))
    }

    /// Failures counted since the last reset.
    pub const fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Whether [`connected`](Self::connected) was called since the last
    /// [`disconnected`](Self::disconnected).
    pub const fn is_connected(&self) -> bool {
        self.connected_since.is_some()
    }

    /// The parameters.
    pub const fn config(&self) -> &BackoffConfig {
        &self.config
    }
}

/// `interval` ± [`JITTER_PERCENT`] %, uniform over whole nanoseconds: the result is in
/// `[interval - spread, interval + spread]` with `spread = interval × 10 / 100` rounded down.
fn jitter(interval: Duration, rng: &mut (impl RngCore + ?Sized)) -> Duration {
    let nanos = interval.as_nanos();
    // nanos < 2^94 (a Duration), so the product cannot overflow.
    let spread = nanos * u128::from(JITTER_PERCENT) / 100;
    // 128 random bits reduced modulo the range: the bias is below range / 2^128, nil for
    // any real range (at most ~2^92 nanoseconds).
    let random = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
    let offset = random % (2 * spread + 1);
    // nanos - spread + offset never underflows (spread <= nanos) and never overflows u128
    // (nanos < 2^94).
    from_nanos_saturating(nanos - spread + offset)
}

/// A `Duration` of `nanos` nanoseconds, or `Duration::MAX` when it does not fit.
fn from_nanos_saturating(nanos: u128) -> Duration {
    let Ok(secs) = u64::try_from(nanos / NANOS_PER_SEC) else {
        return Duration::MAX;
    };
    // The remainder is below 10^9, so it fits in u32.
    let subsec = u32::try_from(nanos % NANOS_PER_SEC).unwrap_or(0);
    Duration::new(secs, subsec)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand_chacha::ChaCha8Rng;
    use rand_chacha::rand_core::SeedableRng;

    use super::*;

    use crate::testing::base;

    const S: Duration = Duration::from_secs(1);
    const TEN_MIN: Duration = Duration::from_secs(600);

    fn rng(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }

    fn with_attempts(config: BackoffConfig, attempts: u32) -> Backoff {
        Backoff {
            attempts,
            ..Backoff::new(config)
        }
    }

    /// `min(2^(n-1) s, 10 min)` (1 s for n = 0) computed independently of the code under test.
    fn expected_interval(n: u32) -> Duration {
        let n = n.saturating_sub(1);
        if n >= 10 {
            TEN_MIN
        } else {
            (S * 2u32.pow(n)).min(TEN_MIN)
        }
    }

    fn assert_within_jitter(delay: Duration, interval: Duration) {
        let low = interval.mul_f64(0.9);
        let high = interval.mul_f64(1.1);
        assert!(
            low <= delay && delay <= high,
            "{delay:?} outside [{low:?}, {high:?}]"
        );
    }

    #[test]
    fn zero_base_gives_zero_delay_for_any_attempt_count() {
        let config = BackoffConfig {
            base: Duration::ZERO,
            ..BackoffConfig::default()
        };
        for attempts in [0, 1, 127, 128, 1000, u32::MAX] {
            let backoff = with_attempts(config, attempts);
            assert_eq!(backoff.interval(), Duration::ZERO);
            assert_eq!(backoff.next_delay(&mut rng(1)), Duration::ZERO);
        }
    }

    #[test]
    fn max_below_base_caps_every_delay() {
        let config = BackoffConfig {
            base: 10 * S,
            max: 3 * S,
            ..BackoffConfig::default()
        };
        assert_eq!(with_attempts(config, 0).interval(), 3 * S);
        assert_eq!(with_attempts(config, u32::MAX).interval(), 3 * S);
    }

    #[test]
    fn huge_base_and_max_neither_overflow_nor_panic() {
        let config = BackoffConfig {
            base: Duration::MAX,
            max: Duration::MAX,
            reset_after: Duration::MAX,
        };
        let mut rng = rng(2);
        for attempts in [0, 1, 2, 64, u32::MAX] {
            let backoff = with_attempts(config, attempts);
            assert_eq!(backoff.interval(), Duration::MAX);
            let delay = backoff.next_delay(&mut rng);
            assert!(delay >= Duration::MAX.mul_f64(0.9));
            assert_eq!(backoff.next_attempt_at(base(), &mut rng), None);
        }
    }

    #[test]
    fn doubling_past_the_width_saturates_instead_of_wrapping_to_zero() {
        // 2^40 ns shifted by 88 or more leaves u128 entirely: a plain shift would give 0.
        let config = BackoffConfig {
            base: Duration::from_nanos(1 << 40),
            max: Duration::MAX,
            reset_after: S,
        };
        for attempts in (55..=200).chain([u32::MAX]) {
            assert_eq!(
                with_attempts(config, attempts).interval(),
                Duration::MAX,
                "attempts {attempts}"
            );
        }
    }

    #[test]
    fn delays_stay_within_ten_percent_of_doubling_capped_at_ten_minutes() {
        for seed in 0..20 {
            let mut rng = rng(seed);
            let mut backoff = Backoff::new(BackoffConfig::default());
            for n in 0..=100 {
                assert_eq!(backoff.attempts(), n);
                assert_eq!(backoff.interval(), expected_interval(n), "attempts {n}");
                assert_within_jitter(backoff.next_delay(&mut rng), expected_interval(n));
                backoff.record_failure();
            }
        }
    }

    #[test]
    fn u32_max_attempts_gives_the_capped_delay_and_saturates() {
        let mut backoff = with_attempts(BackoffConfig::default(), u32::MAX - 1);
        backoff.record_failure();
        backoff.record_failure();
        assert_eq!(backoff.attempts(), u32::MAX);
        assert_eq!(backoff.interval(), TEN_MIN);
        let mut rng = rng(3);
        for _ in 0..100 {
            assert_within_jitter(backoff.next_delay(&mut rng), TEN_MIN);
        }
    }

    #[test]
    fn jitter_spreads_over_the_whole_range() {
        let backoff = Backoff::new(BackoffConfig::default());
        let mut rng = rng(4);
        let delays: Vec<Duration> = (0..1000).map(|_| backoff.next_delay(&mut rng)).collect();
        let min = delays.iter().min().unwrap();
        let max = delays.iter().max().unwrap();
        assert!(*min < S.mul_f64(0.91), "{min:?}");
        assert!(*max > S.mul_f64(1.09), "{max:?}");
    }

    #[test]
    fn same_seed_gives_same_delays() {
        let backoff = with_attempts(BackoffConfig::default(), 5);
        let delays = |seed| {
            let mut rng = rng(seed);
            (0..10)
                .map(|_| backoff.next_delay(&mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(delays(7), delays(7));
        assert_ne!(delays(7), delays(8));
    }

    #[test]
    fn disconnect_without_connect_counts_as_a_failure() {
        let mut backoff = Backoff::new(BackoffConfig::default());
        assert!(!backoff.disconnected(base()));
        assert_eq!(backoff.attempts(), 1);
    }

    #[test]
    fn clock_going_backwards_counts_as_a_short_connection() {
        let t = base();
        let mut backoff = Backoff::new(BackoffConfig::default());
        backoff.connected(t + 60 * S);
        assert!(!backoff.disconnected(t));
        assert_eq!(backoff.attempts(), 1);
    }

    #[test]
    fn connecting_does_not_reset_the_count() {
        let mut backoff = with_attempts(BackoffConfig::default(), 7);
        backoff.connected(base());
        assert!(backoff.is_connected());
        assert_eq!(backoff.attempts(), 7);
    }

    #[test]
    fn short_connection_counts_as_a_failure() {
        let t = base();
        let mut backoff = with_attempts(BackoffConfig::default(), 3);
        backoff.connected(t);
        assert!(!backoff.disconnected(t + 30 * S - Duration::from_nanos(1)));
        assert!(!backoff.is_connected());
        assert_eq!(backoff.attempts(), 4);
        assert_eq!(backoff.interval(), 8 * S);
    }

    #[test]
    fn the_first_redial_after_a_failure_comes_after_base() {
        // The driver's order: record the failure, then ask when to redial.
        let mut backoff = Backoff::new(BackoffConfig::default());
        backoff.record_failure();
        assert_eq!(
            backoff.interval(),
            S,
            "the documented first delay is the base"
        );
        backoff.record_failure();
        assert_eq!(backoff.interval(), 2 * S);
    }

    #[test]
    fn connection_up_for_reset_after_restarts_from_base() {
        let t = base();
        let mut backoff = with_attempts(BackoffConfig::default(), 50);
        backoff.connected(t);
        assert!(backoff.disconnected(t + 30 * S));
        assert_eq!(backoff.attempts(), 0);
        assert_eq!(backoff.interval(), S);
    }

    #[test]
    fn peer_that_accepts_then_drops_backs_off_like_one_that_refuses() {
        let t = base();
        let mut flapping = Backoff::new(BackoffConfig::default());
        let mut refusing = Backoff::new(BackoffConfig::default());
        let mut now = t;
        for _ in 0..20 {
            flapping.connected(now);
            now += S;
            flapping.disconnected(now);
            refusing.record_failure();
        }
        assert_eq!(flapping.attempts(), refusing.attempts());
        assert_eq!(flapping.interval(), TEN_MIN);
    }

    #[test]
    fn next_attempt_at_adds_the_delay_to_now() {
        let t = base();
        let backoff = with_attempts(BackoffConfig::default(), 3);
        let at = backoff.next_attempt_at(t, &mut rng(5)).unwrap();
        assert_within_jitter(at - t, 4 * S);
    }

    #[test]
    fn config_comes_from_the_redial_fields() {
        let config = P2pConfig {
            redial_backoff_base: 2 * S,
            redial_backoff_max: 60 * S,
            redial_backoff_reset_after: 5 * S,
            ..P2pConfig::default()
        };
        let backoff = BackoffConfig::from_config(&config);
        assert_eq!(
            backoff,
            BackoffConfig {
                base: 2 * S,
                max: 60 * S,
                reset_after: 5 * S
            }
        );
        assert_eq!(
            BackoffConfig::default(),
            BackoffConfig {
                base: S,
                max: TEN_MIN,
                reset_after: 30 * S
            }
        );
    }

    proptest! {
        /// For any parameters and attempt count, the delay is within ±10 % of
        /// `min(base × 2^(n-1), max)` (`base` for n = 0) computed with checked arithmetic.
        #[test]
        fn delay_matches_checked_model(
            base_ns in 0u64..=u64::MAX,
            max_ns in 0u64..=u64::MAX,
            attempts in prop_oneof![0u32..200, Just(u32::MAX)],
            seed: u64,
        ) {
            let config = BackoffConfig {
                base: Duration::from_nanos(base_ns),
                max: Duration::from_nanos(max_ns),
                reset_after: S,
            };
            let max = u128::from(max_ns);
            let want = if base_ns == 0 {
                0
            } else {
                2u128
                    .checked_pow(attempts.saturating_sub(1))
                    .and_then(|f| f.checked_mul(u128::from(base_ns)))
                    .map_or(max, |d| d.min(max))
            };
            let backoff = with_attempts(config, attempts);
            prop_assert_eq!(backoff.interval().as_nanos(), want);
            let delay = backoff.next_delay(&mut rng(seed)).as_nanos();
            prop_assert!(
                delay * 10 >= want * 9 && delay * 10 <= want * 11,
                "{} vs {}",
                delay,
                want
            );
        }
    }
}
