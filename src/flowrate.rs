//! A token bucket in bytes per second, with time passed in.
//!
//! [`TokenBucket`] holds up to `burst` bytes of *tokens*; tokens refill continuously at `rate`
//! bytes per second. Sending (or receiving) `n` bytes takes `n` tokens. [`TokenBucket::consume`]
//! may take more than the bucket holds: the bucket then goes into *debt*, so one packet larger
//! than the remaining budget still goes out, and the next one waits until the debt is repaid.
//! Over any long interval the bytes consumed are at most `burst + rate × interval` (plus the one
//! overshooting consumption), which is what makes the long-run rate exact.
//!
//! A rate of 0 means unlimited: every query answers "go ahead" and nothing is counted.
//!
//! ## How this differs from TM2's `flowrate.Monitor`
//!
//! TM2 (`tm2/pkg/flow`) samples transferred bytes in 100 ms windows and
//! `Limit()` *sleeps the calling goroutine* (at least 5 ms) when the current window's budget is
//! spent; bytes are counted after the fact, so a batch may overshoot a window. This bucket never
//! sleeps and never reads a clock: every method takes `now`, and [`TokenBucket::ready_at`] /
//! [`TokenBucket::available_at`] tell the caller *when* to come back, so a driver arms one timer
//! (or a `tokio::time::sleep_until`) instead of blocking a thread. Accounting is exact integer
//! arithmetic (nanosecond resolution), with no window edges and no rounding drift.
//!
//! Time must not go backwards for one bucket; if it does (a caller mixing clocks), the older
//! instant is treated as "no time passed" rather than panicking.

use std::time::{Duration, Instant};

/// Internal token unit: one byte is `UNITS_PER_BYTE` units, so that refilling `rate` bytes/s
/// for `ns` nanoseconds adds exactly `rate × ns` units (no division, no rounding).
const UNITS_PER_BYTE: i128 = 1_000_000_000;

/// A token-bucket rate limiter in bytes per second (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Refill rate in bytes per second; 0 = unlimited.
    rate: u64,
    /// Most tokens the bucket holds, in bytes (the largest burst after idling).
    burst: u64,
    /// Tokens at `updated`, in units of 1/`UNITS_PER_BYTE` bytes; negative = debt.
    level: i128,
    /// The latest `now` this bucket was updated at.
    updated: Instant,
}

impl TokenBucket {
    /// A bucket refilling at `rate` bytes/s (0 = unlimited) holding at most `burst` bytes,
    /// starting full at `now`.
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        Self {
            rate,
            burst,
            level: i128::from(burst) * UNITS_PER_BYTE,
            updated: now,
        }
    }

    /// A bucket that never limits.
    pub fn unlimited(now: Instant) -> Self {
        Self::new(0, 0, now)
    }

    /// The refill rate in bytes per second (0 = unlimited).
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// The most bytes the bucket holds.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Whether this bucket never limits (rate 0).
    pub fn is_unlimited(&self) -> bool {
        self.rate == 0
    }

    /// Whole bytes that may be taken at `now` without going into debt (`u64::MAX` when
    /// unlimited; 0 while in debt).
    pub fn available(&self, now: Instant) -> u64 {
        if self.is_unlimited() {
            return u64::MAX;
        }
        let bytes = self.level_at(now).max(0) / UNITS_PER_BYTE;
        u64::try_from(bytes).unwrap_or(u64::MAX)
    }

    /// Takes `n` tokens at `now` if the bucket holds them, without ever going into debt.
    /// Always true when unlimited; never true for `n > burst`.
    pub fn try_consume(&mut self, now: Instant, n: u64) -> bool {
        if self.is_unlimited() {
            return true;
        }
        self.refill(now);
        let cost = i128::from(n) * UNITS_PER_BYTE;
        if self.level < cost {
            return false;
        }
        self.level -= cost;
        true
    }

    /// Takes `n` tokens at `now`, going into debt if the bucket holds fewer: the bytes have
    /// been (or are about to be) transferred anyway, and [`ready_at`](Self::ready_at) makes
    /// the caller wait until the debt is repaid. No-op when unlimited.
    pub fn consume(&mut self, now: Instant, n: u64) {
        if self.is_unlimited() {
            return;
        }
        self.refill(now);
        self.level = self
            .level
            .saturating_sub(i128::from(n).saturating_mul(UNITS_PER_BYTE));
    }

    /// When transfers may resume: `None` if the bucket is not in debt at `now` (go ahead),
    /// otherwise the instant at which the debt is repaid. Always `None` when unlimited.
    pub fn ready_at(&self, now: Instant) -> Option<Instant> {
        self.instant_when(now, 0)
    }

    /// When at least `n` bytes (capped at `burst`, which is all the bucket can ever hold) may be
    /// taken without debt: `None` if already at `now`, otherwise that instant. Always `None`
    /// when unlimited.
    pub fn available_at(&self, now: Instant, n: u64) -> Option<Instant> {
        self.instant_when(now, i128::from(n.min(self.burst)) * UNITS_PER_BYTE)
    }

    fn instant_when(&self, now: Instant, target: i128) -> Option<Instant> {
        if self.is_unlimited() {
            return None;
        }
        let level = self.level_at(now);
        if level >= target {
            return None;
        }
        let missing = target - level;
        let rate = i128::from(self.rate);
        // Round up so that at the returned instant the level has really reached `target`.
        let nanos = (missing + rate - 1) / rate;
        let wait = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        Some(now.max(self.updated) + wait)
    }

    /// The level at `now` without updating (instants before `updated` count as `updated`).
    fn level_at(&self, now: Instant) -> i128 {
        let nanos = now.saturating_duration_since(self.updated).as_nanos();
        let refill = nanos.saturating_mul(u128::from(self.rate));
        let refill = i128::try_from(refill).unwrap_or(i128::MAX);
        let cap = i128::from(self.burst) * UNITS_PER_BYTE;
        self.level.saturating_add(refill).min(cap)
    }

    fn refill(&mut self, now: Instant) {
        self.level = self.level_at(now);
        self.updated = self.updated.max(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::testing::base;

    const MS: Duration = Duration::from_millis(1);

    /// Sends `packet`-byte chunks as fast as the bucket allows for `span` of virtual time,
    /// jumping the clock to each `ready_at`; returns the bytes sent.
    fn saturate(bucket: &mut TokenBucket, t0: Instant, span: Duration, packet: u64) -> u64 {
        let mut now = t0;
        let mut sent = 0;
        while now < t0 + span {
            if let Some(at) = bucket.ready_at(now) {
                now = at;
                continue;
            }
            bucket.consume(now, packet);
            sent += packet;
        }
        sent
    }

    #[test]
    fn time_going_backwards_counts_as_no_time() {
        let t0 = base() + Duration::from_secs(10);
        let mut b = TokenBucket::new(1000, 1000, t0);
        b.consume(t0, 1000);
        assert_eq!(b.available(t0 - Duration::from_secs(5)), 0);
        b.consume(t0 - Duration::from_secs(5), 10);
        assert_eq!(b.ready_at(t0), Some(t0 + 10 * MS));
    }

    #[test]
    fn one_megabyte_per_second_holds_within_one_percent_over_three_seconds() {
        let t0 = base();
        let mut b = TokenBucket::new(1_000_000, 10_000, t0);
        let sent = saturate(&mut b, t0, Duration::from_secs(3), 1_500);
        let err = (sent as f64 - 3_000_000.0).abs() / 3_000_000.0;
        assert!(err < 0.01, "sent {sent} bytes in 3 s");
    }

    #[test]
    fn unlimited_never_waits_or_counts() {
        let t0 = base();
        let mut b = TokenBucket::new(0, 0, t0);
        assert!(b.is_unlimited());
        b.consume(t0, u64::MAX);
        assert!(b.try_consume(t0, u64::MAX));
        assert_eq!(b.available(t0), u64::MAX);
        assert_eq!(b.ready_at(t0), None);
        assert_eq!(b.available_at(t0, 1 << 40), None);
        assert_eq!(TokenBucket::unlimited(t0).ready_at(t0), None);
    }

    #[test]
    fn burst_is_available_at_once_after_idling_and_never_more() {
        let t0 = base();
        let mut b = TokenBucket::new(1000, 5000, t0);
        assert_eq!(b.available(t0), 5000);
        assert!(!b.try_consume(t0, 5001), "more than the burst never fits");
        assert!(b.try_consume(t0, 5000));
        assert!(!b.try_consume(t0, 1));
        // An hour of idling refills only up to the burst.
        assert_eq!(b.available(t0 + Duration::from_secs(3600)), 5000);
    }

    #[test]
    fn refill_is_proportional_to_elapsed_time() {
        let t0 = base();
        let mut b = TokenBucket::new(1000, 5000, t0);
        b.consume(t0, 5000);
        assert_eq!(b.available(t0 + 1500 * MS), 1500);
        assert_eq!(b.available_at(t0, 200), Some(t0 + 200 * MS));
        assert_eq!(b.available_at(t0 + 200 * MS, 200), None);
        // Asking for more than the burst waits only for the burst.
        assert_eq!(b.available_at(t0, 1 << 30), Some(t0 + 5000 * MS));
    }

    #[test]
    fn debt_lets_one_large_packet_go_then_waits_until_repaid() {
        let t0 = base();
        let mut b = TokenBucket::new(1000, 100, t0);
        assert_eq!(b.ready_at(t0), None);
        b.consume(t0, 1100); // 1000 bytes of debt
        assert_eq!(b.available(t0), 0);
        assert_eq!(b.ready_at(t0), Some(t0 + Duration::from_secs(1)));
        assert_eq!(b.ready_at(t0 + 999 * MS), Some(t0 + Duration::from_secs(1)));
        assert_eq!(b.ready_at(t0 + Duration::from_secs(1)), None);
        assert!(!b.try_consume(t0 + Duration::from_secs(1), 1));
    }

    #[test]
    fn wake_up_instant_rounds_up_to_a_full_byte() {
        let t0 = base();
        // 3 bytes/s: one byte takes 333.33.. ms; the instant must not be early.
        let mut b = TokenBucket::new(3, 3, t0);
        b.consume(t0, 4);
        let at = b.ready_at(t0).unwrap();
        assert_eq!(b.ready_at(at), None);
        assert!(b.ready_at(at - Duration::from_nanos(1)).is_some());
    }

    proptest! {
        #[test]
        fn long_run_rate_never_exceeds_rate_plus_burst(
            packet in 1u64..70_000,
            packets_per_second in 1u64..4000,
            burst_packets in 0u64..10,
        ) {
            // Rates and bursts in whole packets keep the loop short (< 2100 iterations).
            let rate = packet * packets_per_second;
            let burst = packet * burst_packets;
            let t0 = base();
            let mut b = TokenBucket::new(rate, burst, t0);
            let span = Duration::from_millis(500);
            let sent = saturate(&mut b, t0, span, packet);
            let allowed = burst + rate / 2 + packet;
            prop_assert!(sent <= allowed, "sent {} > {}", sent, allowed);
        }
    }
}
