//! [`HandshakeSlots`]: bounds the inbound handshakes in progress, in total, per remote IP and
//! per subnet, and picks which unauthenticated connection gives way when they are all taken.
//!
//! Every accepted TCP connection costs a task, buffers and two public-key operations before
//! we know who it is. TM2 starts a handshake for every accepted socket with no bound, so a
//! flood of half-open connections exhausts memory. Here an accepted socket first takes a slot.
//! A slot is held until the upgrade ends (success, failure or timeout), so at most `max_total`
//! handshakes, `max_per_ip` from one address and `max_per_subnet` from one subnet
//! ([`Subnet`]: a /24 of IPv4, a /64 of IPv6) are ever in progress.
//!
//! Refusing the newest connection when every slot is taken would let a handful of hosts that
//! open silent sockets lock out every honest newcomer for as long as the handshake timeout, over
//! and over. So when the total is reached, the newcomer takes the slot of the oldest
//! *unauthenticated* connection of the subnet holding the most of them (the newcomer counted
//! in its own subnet): an honest peer from a subnet with few handshakes in flight is never the
//! one evicted while a flooding subnet holds more, however fast the flood reconnects. A
//! connection that has been authenticated (it only waits for the Switch to take it) is never
//! evicted; when every slot holds one, the newcomer is refused.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// Why an inbound connection got no handshake slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SlotRefused {
    /// `max_total` handshakes are already in progress and none of them can give way (every one
    /// is authenticated and waiting for the Switch).
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
    /// `max_per_subnet` handshakes from this IP's subnet (/24, /64) are already in progress.
    #[error("{max} handshakes from this subnet already in progress")]
    PerSubnet {
        /// The limit.
        max: usize,
    },
}

/// A network group whose connections share the per-subnet bound: the /24 of an IPv4 address
/// (an IPv4-mapped IPv6 address counts as its IPv4 address), the /64 of an IPv6 address.
///
/// Loopback is no exception: 127.0.0.0/8 splits into /24s like any IPv4 range, so tests on one
/// machine exercise the rule by connecting from 127.0.x.y addresses in different /24s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subnet {
    /// The first three octets of an IPv4 address.
    V4([u8; 3]),
    /// The first eight bytes of an IPv6 address.
    V6([u8; 8]),
}

impl Subnet {
    /// The subnet of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, c, _] = v4.octets();
                Self::V4([a, b, c])
            }
            IpAddr::V6(v6) => {
                let o = v6.octets();
                Self::V6([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]])
            }
        }
    }
}

/// A slot held by one connection; give it back with [`HandshakeSlots::release`]. Tickets are
/// handed out in increasing order, so an older connection has a smaller ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotTicket(u64);

/// A slot granted by [`HandshakeSlots::try_acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acquired {
    /// The newcomer's slot.
    pub ticket: SlotTicket,
    /// The unauthenticated connection that gave its slot to the newcomer: the caller must
    /// close it (its slot is already released).
    pub evicted: Option<SlotTicket>,
}

/// One handshake in progress.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Its remote IP.
    ip: IpAddr,
    /// Its subnet.
    subnet: Subnet,
    /// Set by [`HandshakeSlots::authenticated`]: it can no longer be evicted.
    authenticated: bool,
}

/// Counts inbound handshakes in progress. Memory is bounded by `max_total` entries.
#[derive(Debug, Clone)]
pub struct HandshakeSlots {
    /// Largest number of handshakes in progress.
    max_total: usize,
    /// Largest number of handshakes in progress from one IP.
    max_per_ip: usize,
    /// Largest number of handshakes in progress from one subnet.
    max_per_subnet: usize,
    /// The ticket of the next slot.
    next: u64,
    /// Handshakes in progress by ticket, so oldest first.
    active: BTreeMap<SlotTicket, Entry>,
    /// Handshakes in progress per remote IP; an IP is removed when its count drops to zero.
    per_ip: HashMap<IpAddr, usize>,
    /// Handshakes in progress per subnet; removed at zero likewise.
    per_subnet: HashMap<Subnet, usize>,
}

impl HandshakeSlots {
    /// Slots for at most `max_total` handshakes, `max_per_ip` from one IP and
    /// `max_per_subnet` from one subnet.
    pub fn new(max_total: usize, max_per_ip: usize, max_per_subnet: usize) -> Self {
        Self {
            max_total,
            max_per_ip,
            max_per_subnet,
            next: 0,
            active: BTreeMap::new(),
            per_ip: HashMap::new(),
            per_subnet: HashMap::new(),
        }
    }

    /// Takes a slot for a connection from `ip`, evicting an unauthenticated connection if every
    /// slot is taken (see the module docs), or says why there is none.
    pub fn try_acquire(&mut self, ip: IpAddr) -> Result<Acquired, SlotRefused> {
        let subnet = Subnet::of(ip);
        // Look before inserting, so a refused IP leaves no entry behind.
        if self.per_ip.get(&ip).copied().unwrap_or(0) >= self.max_per_ip {
            return Err(SlotRefused::PerIp {
                max: self.max_per_ip,
            });
        }
        if self.per_subnet.get(&subnet).copied().unwrap_or(0) >= self.max_per_subnet {
            return Err(SlotRefused::PerSubnet {
                max: self.max_per_subnet,
            });
        }
        let evicted = if self.active.len() >= self.max_total {
            let Some(victim) = self.victim(subnet) else {
                return Err(SlotRefused::Total {
                    max: self.max_total,
                });
            };
            self.release(victim);
            Some(victim)
        } else {
            None
        };
        let ticket = SlotTicket(self.next);
        self.next += 1;
        self.active.insert(
            ticket,
            Entry {
                ip,
                subnet,
                authenticated: false,
            },
        );
        *self.per_ip.entry(ip).or_insert(0) += 1;
        *self.per_subnet.entry(subnet).or_insert(0) += 1;
        Ok(Acquired { ticket, evicted })
    }

    /// Marks the connection holding `ticket` as authenticated: it keeps its slot until
    /// released and is never evicted.
    pub fn authenticated(&mut self, ticket: SlotTicket) {
        if let Some(entry) = self.active.get_mut(&ticket) {
            entry.authenticated = true;
        }
    }

    /// Gives back the slot of `ticket`. Releasing a slot that is not held (never taken, already
    /// released or evicted) is ignored.
    pub fn release(&mut self, ticket: SlotTicket) {
        let Some(entry) = self.active.remove(&ticket) else {
            return;
        };
        decrement(&mut self.per_ip, entry.ip);
        decrement(&mut self.per_subnet, entry.subnet);
    }

    /// Handshakes in progress.
    pub fn in_progress(&self) -> usize {
        self.active.len()
    }

    /// The connection to evict for a newcomer from `newcomer`: the oldest unauthenticated one
    /// of the subnet with the most unauthenticated connections, the newcomer counted in its
    /// own; on a tie, the subnet whose oldest one is older. `None` when every slot holds an
    /// authenticated connection. O(`max_total`).
    fn victim(&self, newcomer: Subnet) -> Option<SlotTicket> {
        // Per subnet: (count, oldest ticket); `active` iterates oldest first.
        let mut groups: HashMap<Subnet, (usize, SlotTicket)> = HashMap::new();
        for (&ticket, entry) in self.active.iter().filter(|(_, e)| !e.authenticated) {
            groups.entry(entry.subnet).or_insert((0, ticket)).0 += 1;
        }
        if let Some((count, _)) = groups.get_mut(&newcomer) {
            *count += 1;
        }
        groups
            .into_values()
            // Largest count first, then the oldest ticket.
            .max_by(|(c1, t1), (c2, t2)| c1.cmp(c2).then(t2.cmp(t1)))
            .map(|(_, oldest)| oldest)
    }
}

/// Decrements `key`'s count, removing it at zero.
fn decrement<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: K) {
    if let Some(count) = counts.get_mut(&key) {
        *count -= 1;
        if *count == 0 {
            counts.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    /// An address in subnet 127.0.`net`.0/24.
    fn net_ip(net: u8, n: u8) -> IpAddr {
        IpAddr::from([127, 0, net, n])
    }

    #[test]
    fn per_ip_limit_refuses_the_extra_connection_from_one_address() {
        let mut s = HandshakeSlots::new(10, 2, 10);
        let first = s.try_acquire(ip(1)).unwrap().ticket;
        s.try_acquire(ip(1)).unwrap();
        assert_eq!(s.try_acquire(ip(1)), Err(SlotRefused::PerIp { max: 2 }));
        s.try_acquire(ip(2)).unwrap();
        s.release(first);
        assert!(s.try_acquire(ip(1)).is_ok());
    }

    #[test]
    fn per_subnet_limit_refuses_the_extra_connection_from_one_subnet() {
        let mut s = HandshakeSlots::new(10, 2, 3);
        for n in 1..=3 {
            s.try_acquire(ip(n)).unwrap();
        }
        assert_eq!(s.try_acquire(ip(4)), Err(SlotRefused::PerSubnet { max: 3 }));
        assert!(s.try_acquire(net_ip(1, 4)).is_ok(), "another /24");
        // IPv6: one /64.
        let v6 = |last: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, last]);
        for n in 1..=3 {
            s.try_acquire(v6(n)).unwrap();
        }
        assert_eq!(s.try_acquire(v6(9)), Err(SlotRefused::PerSubnet { max: 3 }));
        let other64 = IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]);
        assert!(s.try_acquire(other64).is_ok());
    }

    #[test]
    fn subnets_are_slash_24_and_slash_64_and_mapped_v4_is_v4() {
        assert_eq!(Subnet::of(ip(1)), Subnet::of(ip(200)));
        assert_ne!(Subnet::of(ip(1)), Subnet::of(net_ip(1, 1)));
        let mapped: IpAddr = "::ffff:127.0.0.9".parse().unwrap();
        assert_eq!(Subnet::of(mapped), Subnet::of(ip(1)));
        let a: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::9".parse().unwrap();
        assert_eq!(Subnet::of(a), Subnet::of(b));
        assert_ne!(Subnet::of(a), Subnet::of(c));
    }

    #[test]
    fn a_newcomer_evicts_the_oldest_of_the_largest_subnet_when_full() {
        let mut s = HandshakeSlots::new(6, 8, 8);
        // Subnet 1 holds 4, subnet 2 holds 2 (older).
        let t2a = s.try_acquire(net_ip(2, 1)).unwrap().ticket;
        s.try_acquire(net_ip(2, 2)).unwrap();
        let t1: Vec<_> = (1..=4)
            .map(|n| s.try_acquire(net_ip(1, n)).unwrap().ticket)
            .collect();
        // A newcomer from a fresh subnet: subnet 1's oldest goes, not subnet 2's older one.
        let got = s.try_acquire(net_ip(9, 1)).unwrap();
        assert_eq!(got.evicted, Some(t1[0]));
        assert_eq!(s.in_progress(), 6);
        // Releasing the evicted ticket again changes nothing.
        s.release(t1[0]);
        assert_eq!(s.in_progress(), 6);
        // Subnets 1 and 2 now hold 3 and 2; the newcomer's own subnet (9) would hold 2.
        assert_eq!(s.try_acquire(net_ip(9, 2)).unwrap().evicted, Some(t1[1]));
        // Now 2, 2 (subnet 9, 2), 2 (subnet 1): a tie goes to the subnet with the oldest
        // connection, subnet 2.
        assert_eq!(s.try_acquire(net_ip(7, 1)).unwrap().evicted, Some(t2a));
    }

    #[test]
    fn a_newcomer_of_the_largest_subnet_evicts_its_own_oldest() {
        let mut s = HandshakeSlots::new(3, 8, 8);
        let a = s.try_acquire(net_ip(1, 1)).unwrap().ticket;
        s.try_acquire(net_ip(2, 1)).unwrap();
        let c = s.try_acquire(net_ip(3, 1)).unwrap().ticket;
        // Every subnet holds one; the newcomer's (3) counts two.
        assert_eq!(s.try_acquire(net_ip(3, 2)).unwrap().evicted, Some(c));
        assert!(s.active.contains_key(&a));
    }

    #[test]
    fn an_honest_newcomer_always_gets_in_and_stays_while_a_flood_churns() {
        // 8 flooding subnets x 8 sockets fill 64 slots; each flood socket, once evicted,
        // reconnects at once. An honest connection from a fresh subnet is never evicted.
        let mut s = HandshakeSlots::new(64, 8, 16);
        for net in 1..=8 {
            for n in 1..=8 {
                s.try_acquire(net_ip(net, n)).unwrap();
            }
        }
        let honest = s.try_acquire(net_ip(100, 1)).unwrap();
        assert!(honest.evicted.is_some());
        for round in 0..10_000u32 {
            let net = 1 + (round % 8) as u8;
            let n = 1 + (round / 8 % 8) as u8;
            if let Ok(got) = s.try_acquire(net_ip(net, n)) {
                assert_ne!(got.evicted, Some(honest.ticket), "round {round}");
            }
        }
        assert!(s.active.contains_key(&honest.ticket));
        assert_eq!(s.in_progress(), 64);
    }

    #[test]
    fn authenticated_connections_are_never_evicted() {
        let mut s = HandshakeSlots::new(2, 8, 8);
        let a = s.try_acquire(ip(1)).unwrap().ticket;
        let b = s.try_acquire(ip(2)).unwrap().ticket;
        s.authenticated(a);
        assert_eq!(s.try_acquire(net_ip(5, 1)).unwrap().evicted, Some(b));
        let c = s.try_acquire(net_ip(6, 1)).unwrap();
        assert_ne!(c.evicted, Some(a));
        s.authenticated(c.ticket);
        // Every slot holds an authenticated connection: the newcomer is refused.
        assert_eq!(s.try_acquire(ip(9)), Err(SlotRefused::Total { max: 2 }));
        s.release(a);
        assert_eq!(s.try_acquire(ip(9)).unwrap().evicted, None);
    }

    #[test]
    fn releasing_an_unknown_ticket_changes_nothing() {
        let mut s = HandshakeSlots::new(3, 1, 3);
        s.release(SlotTicket(7));
        assert_eq!(s.in_progress(), 0);
        let t = s.try_acquire(ip(1)).unwrap().ticket;
        s.release(t);
        s.release(t);
        assert_eq!(s.in_progress(), 0);
        assert!(s.per_ip.is_empty(), "no entry left behind");
        assert!(s.per_subnet.is_empty(), "no entry left behind");
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_addresses() {
        let mut s = HandshakeSlots::new(64, 8, 16);
        for n in 0..10_000u32 {
            let _ = s.try_acquire(IpAddr::from(n.to_be_bytes()));
        }
        assert_eq!(s.in_progress(), 64);
        assert!(s.per_ip.len() <= 64);
        assert!(s.per_subnet.len() <= 64);
        let mut zero = HandshakeSlots::new(64, 0, 16);
        for n in 0..100u32 {
            let _ = zero.try_acquire(IpAddr::from(n.to_be_bytes()));
        }
        assert!(zero.per_ip.is_empty());
        assert!(zero.active.is_empty());
    }
}
