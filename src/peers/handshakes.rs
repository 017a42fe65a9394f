//! [`HandshakeSlots`]: bounds the inbound handshakes in progress, in total and per remote IP.
//!
//! Every accepted TCP connection costs a task, buffers and two public-key operations before
//! we know who it is. TM2 starts a handshake for every accepted socket with no bound, so a
//! flood of half-open connections exhausts memory. Here an accepted socket first takes a slot;
//! without one it is closed at once. A slot is held until the upgrade ends (success, failure
//! or timeout), so at most `max_total` handshakes, and `max_per_ip` from one address, are ever
//! in progress.

use std::collections::HashMap;
use std::net::IpAddr;

/// Why an inbound connection got no handshake slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SlotRefused {
    /// `max_total` handshakes are already in progress.
    #[error("{max} handshakes already in progress")]
    Total {
        /// The limit.
        max: usize,
    },
    /// `max_per_ip` handshakes from this IP are already in progress.
    #[error("{max} handshakes from this IP already in progress")]
    PerIp {
        /// The limit.
        max: usize,
    },
}

/// Counts inbound handshakes in progress. Memory is bounded by `max_total` entries.
#[derive(Debug, Clone)]
pub struct HandshakeSlots {
    /// Largest number of handshakes in progress.
    max_total: usize,
    /// Largest number of handshakes in progress from one IP.
    max_per_ip: usize,
    /// Handshakes in progress.
    total: usize,
    /// Handshakes in progress per remote IP; an IP is removed when its count drops to zero.
    per_ip: HashMap<IpAddr, usize>,
}

impl HandshakeSlots {
    /// Slots for at most `max_total` handshakes, `max_per_ip` from one IP.
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        Self {
            max_total,
            max_per_ip,
            total: 0,
            per_ip: HashMap::new(),
        }
    }

    /// Takes a slot for a connection from `ip`, or says why there is none.
    pub fn try_acquire(&mut self, ip: IpAddr) -> Result<(), SlotRefused> {
        if self.total >= self.max_total {
            return Err(SlotRefused::Total {
                max: self.max_total,
            });
        }
        // Look before inserting, so a refused IP leaves no entry behind.
        if self.per_ip.get(&ip).copied().unwrap_or(0) >= self.max_per_ip {
            return Err(SlotRefused::PerIp {
                max: self.max_per_ip,
            });
        }
        *self.per_ip.entry(ip).or_insert(0) += 1;
        self.total += 1;
        Ok(())
    }

    /// Gives back a slot taken for `ip`. Releasing a slot that was never taken is ignored (and
    /// cannot drive a count below zero).
    pub fn release(&mut self, ip: IpAddr) {
        let Some(count) = self.per_ip.get_mut(&ip) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            self.per_ip.remove(&ip);
        }
        self.total -= 1;
    }

    /// Handshakes in progress.
    pub fn in_progress(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    #[test]
    fn per_ip_limit_refuses_the_extra_connection_from_one_address() {
        let mut s = HandshakeSlots::new(10, 2);
        assert_eq!(s.try_acquire(ip(1)), Ok(()));
        assert_eq!(s.try_acquire(ip(1)), Ok(()));
        assert_eq!(s.try_acquire(ip(1)), Err(SlotRefused::PerIp { max: 2 }));
        assert_eq!(s.try_acquire(ip(2)), Ok(()));
        s.release(ip(1));
        assert_eq!(s.try_acquire(ip(1)), Ok(()));
    }

    #[test]
    fn total_limit_refuses_everyone_when_full() {
        let mut s = HandshakeSlots::new(3, 2);
        for n in 1..=3 {
            assert_eq!(s.try_acquire(ip(n)), Ok(()));
        }
        assert_eq!(s.try_acquire(ip(9)), Err(SlotRefused::Total { max: 3 }));
        assert_eq!(s.in_progress(), 3);
        s.release(ip(2));
        assert_eq!(s.try_acquire(ip(9)), Ok(()));
    }

    #[test]
    fn releasing_an_unknown_ip_changes_nothing() {
        let mut s = HandshakeSlots::new(3, 1);
        s.release(ip(1));
        assert_eq!(s.in_progress(), 0);
        assert_eq!(s.try_acquire(ip(1)), Ok(()));
        s.release(ip(1));
        s.release(ip(1));
        assert_eq!(s.in_progress(), 0);
        assert!(s.per_ip.is_empty(), "no entry left behind");
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_addresses() {
        let mut s = HandshakeSlots::new(64, 8);
        for n in 0..10_000u32 {
            let _ = s.try_acquire(IpAddr::from(n.to_be_bytes()));
        }
        assert_eq!(s.in_progress(), 64);
        assert!(s.per_ip.len() <= 64);
        let mut zero = HandshakeSlots::new(64, 0);
        for n in 0..100u32 {
            let _ = zero.try_acquire(IpAddr::from(n.to_be_bytes()));
        }
        assert!(zero.per_ip.is_empty());
    }
}
