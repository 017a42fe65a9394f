//! [`LogThrottle`]: at most one log line per key and interval, counting what it held back, in
//! bounded memory. Used for what a remote party can make happen often (failed dials of the same
//! address, refused connections from one IP), so an operator sees each once a minute, with how
//! many more there were, instead of a flood or nothing.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// How often one key may log, by default.
pub const DEFAULT_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Keys remembered at most, by default.
pub const DEFAULT_LOG_KEYS: usize = 1024;

/// Lets a message through at most once per `interval` per key (see the module docs).
#[derive(Debug, Clone)]
pub struct LogThrottle<K> {
    interval: Duration,
    capacity: usize,
    /// Per key: when it last logged, and how many were held back since.
    keys: HashMap<K, (Instant, u64)>,
}

impl<K: Hash + Eq + Clone> LogThrottle<K> {
    /// At most one message per key per `interval`, remembering at most `capacity` keys (at
    /// least 1).
    pub fn new(interval: Duration, capacity: usize) -> Self {
        Self {
            interval,
            capacity: capacity.max(1),
            keys: HashMap::new(),
        }
    }

    /// Whether a message about `key` may be logged at `now`: `Some(n)` with the number of
    /// messages held back for it since it last logged, or `None` (counted) when it logged
    /// less than `interval` ago. When `capacity` keys are remembered, the ones whose interval
    /// has passed are forgotten; if none has, a new key is let through without being
    /// remembered (memory stays bounded; the line is not lost).
    pub fn allow(&mut self, key: &K, now: Instant) -> Option<u64> {
        if let Some((at, held)) = self.keys.get_mut(key) {
            if now.saturating_duration_since(*at) < self.interval {
                *held += 1;
                return None;
            }
            let held_back = std::mem::take(held);
            *at = now;
            return Some(held_back);
        }
        if self.keys.len() >= self.capacity {
            let interval = self.interval;
            self.keys
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < interval);
            if self.keys.len() >= self.capacity {
                return Some(0);
            }
        }
        self.keys.insert(key.clone(), (now, 0));
        Some(0)
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl<K: Hash + Eq + Clone> Default for LogThrottle<K> {
    fn default() -> Self {
        Self::new(DEFAULT_LOG_INTERVAL, DEFAULT_LOG_KEYS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::base;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn one_line_per_key_and_interval_with_the_count_held_back() {
        let t = base();
        let mut throttle = LogThrottle::new(10 * S, 8);
        assert_eq!(throttle.allow(&"a", t), Some(0));
        assert_eq!(throttle.allow(&"b", t), Some(0), "keys are independent");
        for i in 1..=5 {
            assert_eq!(throttle.allow(&"a", t + i * S), None);
        }
        assert_eq!(throttle.allow(&"a", t + 10 * S), Some(5));
        assert_eq!(throttle.allow(&"a", t + 11 * S), None);
        assert_eq!(throttle.allow(&"a", t + 20 * S), Some(1));
    }

    #[test]
    fn memory_stays_bounded_and_a_new_key_is_never_silenced_by_a_full_table() {
        let t = base();
        let mut throttle = LogThrottle::new(10 * S, 4);
        for k in 0..4 {
            assert_eq!(throttle.allow(&k, t), Some(0));
        }
        // Full, none expired: let through, not remembered.
        for k in 4..100 {
            assert_eq!(throttle.allow(&k, t + S), Some(0));
        }
        assert_eq!(throttle.len(), 4);
        // Once the old ones expire, new keys take their place.
        assert_eq!(throttle.allow(&100, t + 10 * S), Some(0));
        assert_eq!(throttle.len(), 1);
        assert_eq!(throttle.allow(&100, t + 11 * S), None);
    }
}
