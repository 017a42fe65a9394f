//! [`ConnectAttempts`]: the order and time budget in which the addresses a host name resolved to
//! are tried, within one dial timeout.
//!
//! A name may resolve to several addresses (`localhost` to `::1` and `127.0.0.1`, a Kubernetes
//! service to its pods, a dual-stack host) of which only some accept. TM2 dials the first one
//! only. Here every address is tried in turn, in the resolver's order without duplicates, until
//! one connects or the dial timeout is spent. Each attempt gets an equal share of the time left
//! over the addresses left, so an address that never answers (packets dropped) cannot use up
//! the whole budget, and an address that fails at once (refused) leaves its share to the next.
//!
//! Calling protocol: [`next_attempt`](ConnectAttempts::next_attempt) with the current time
//! gives the address to try and the instant that attempt must give up; on failure, ask again;
//! `None` means every address was tried or the deadline passed, and the dial failed with the
//! last error seen. Sans-IO: no sockets, no clock (`now` is passed in).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

/// The addresses of one dial still to try, and its deadline.
#[derive(Debug, Clone)]
pub struct ConnectAttempts {
    /// Addresses not tried yet, in order.
    left: VecDeque<SocketAddr>,
    /// When the whole dial gives up.
    deadline: Instant,
}

/// One connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Where to connect.
    pub addr: SocketAddr,
    /// When this attempt gives up (never after the dial's deadline).
    pub deadline: Instant,
}

impl ConnectAttempts {
    /// Attempts over `addrs` (duplicates after the first dropped) that must all end by
    /// `deadline`.
    pub fn new(addrs: impl IntoIterator<Item = SocketAddr>, deadline: Instant) -> Self {
        let mut left = VecDeque::new();
        for addr in addrs {
            if !left.contains(&addr) {
                left.push_back(addr);
            }
        }
        Self { left, deadline }
    }

    /// The next address to try at `now` and its deadline: an equal share of the time left
    /// over the addresses left. `None` once every address was tried or the deadline passed.
    pub fn next_attempt(&mut self, now: Instant) -> Option<Attempt> {
        let remaining = self.deadline.checked_duration_since(now)?;
        if remaining.is_zero() {
            return None;
        }
        let count = u32::try_from(self.left.len()).unwrap_or(u32::MAX).max(1);
        let addr = self.left.pop_front()?;
        Some(Attempt {
            addr,
            deadline: now + remaining / count,
        })
    }

    /// Addresses not tried yet.
    pub fn remaining(&self) -> usize {
        self.left.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

    use std::time::Duration;

    use super::*;
    use crate::testing::base;

    /// What a fake connector does with an address.
    #[derive(Debug, Clone, Copy)]
    enum Fake {
        /// Refused after this long.
        Refuse(Duration),
        /// Never answers (the attempt runs to its deadline).
        Drop,
        /// Connects after this long.
        Accept(Duration),
    }

    /// Drives `attempts` against a fake connector on a virtual clock starting at `t0`.
    /// Returns the address connected to and when, or `None`, with every address tried.
    fn drive(
        mut attempts: ConnectAttempts,
        t0: Instant,
        fake: impl Fn(SocketAddr) -> Fake,
    ) -> (Option<(SocketAddr, Instant)>, Vec<SocketAddr>) {
        let mut now = t0;
        let mut tried = Vec::new();
        while let Some(a) = attempts.next_attempt(now) {
            tried.push(a.addr);
            match fake(a.addr) {
                Fake::Accept(after) if now + after <= a.deadline => {
                    return (Some((a.addr, now + after)), tried);
                }
                Fake::Refuse(after) if now + after <= a.deadline => now += after,
                Fake::Accept(_) | Fake::Refuse(_) | Fake::Drop => now = a.deadline,
            }
        }
        (None, tried)
    }

    fn v6(port: u16) -> SocketAddr {
        SocketAddr::new("::1".parse().unwrap(), port)
    }

    fn v4(port: u16) -> SocketAddr {
        SocketAddr::new("127.0.0.1".parse().unwrap(), port)
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn localhost_resolving_to_v6_first_still_reaches_a_v4_only_listener() {
        let t0 = base();
        let attempts = ConnectAttempts::new([v6(26656), v4(26656)], t0 + 3000 * MS);
        let (got, tried) = drive(attempts, t0, |a| {
            if a.is_ipv6() {
                Fake::Refuse(MS)
            } else {
                Fake::Accept(2 * MS)
            }
        });
        assert_eq!(got, Some((v4(26656), t0 + 3 * MS)));
        assert_eq!(tried, [v6(26656), v4(26656)]);
    }

    #[test]
    fn a_silent_first_address_gets_only_its_share_of_the_timeout() {
        let t0 = base();
        let budget = 3000 * MS;
        let mut attempts = ConnectAttempts::new([v6(1), v4(1), v4(2)], t0 + budget);
        let first = attempts.next_attempt(t0).unwrap();
        assert_eq!(first.deadline, t0 + 1000 * MS);
        // It never answered: the next two share the 2 s left.
        let second = attempts.next_attempt(first.deadline).unwrap();
        assert_eq!(second.deadline, t0 + 2000 * MS);
        let attempts = ConnectAttempts::new([v6(1), v4(1)], t0 + budget);
        let (got, _) = drive(attempts, t0, |a| {
            if a.is_ipv6() {
                Fake::Drop
            } else {
                Fake::Accept(10 * MS)
            }
        });
        assert_eq!(got, Some((v4(1), t0 + 1510 * MS)));
    }

    #[test]
    fn every_address_failing_ends_the_dial_within_its_deadline() {
        let t0 = base();
        let deadline = t0 + 300 * MS;
        let attempts = ConnectAttempts::new([v6(1), v4(1), v4(1), v6(1)], deadline);
        assert_eq!(attempts.remaining(), 2, "duplicates dropped");
        let (got, tried) = drive(attempts, t0, |_| Fake::Drop);
        assert_eq!(got, None);
        assert_eq!(tried, [v6(1), v4(1)]);
        // Refusals: every address is tried, quickly.
        let attempts = ConnectAttempts::new([v6(1), v4(1)], deadline);
        let (got, tried) = drive(attempts, t0, |_| Fake::Refuse(MS));
        assert_eq!((got, tried.len()), (None, 2));
    }

    #[test]
    fn nothing_is_tried_after_the_deadline_or_without_addresses() {
        let t0 = base();
        let mut late = ConnectAttempts::new([v4(1)], t0);
        assert_eq!(late.next_attempt(t0), None);
        assert_eq!(late.next_attempt(t0 + MS), None);
        let mut none = ConnectAttempts::new([], t0 + MS);
        assert_eq!(none.next_attempt(t0), None);
    }
}
