//! [`PeerSet`]: the connected peers by id, their counts by direction, and the admission
//! decisions that depend on them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use super::admission::{Admission, Keep, PeerLimits, RejectReason, resolve_duplicate};
use crate::types::{Direction, NetAddress, PeerId};

/// One connected peer: what the set needs to count and decide, plus the owner's `data`.
///
/// Fields are public to build an entry; once in a [`PeerSet`], only `data` can be changed
/// ([`PeerSet::data_mut`]) and the persistent flag ([`PeerSet::set_persistent`]), so the counts
/// stay right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEntry<T> {
    /// Where the peer can be dialed, and its id ([`id`](Self::id)): for an outbound peer the
    /// address we dialed; for an inbound peer the listen address it advertises in its
    /// `NodeInfo` (whose id the transport checked against the authenticated key), never the
    /// ephemeral port of its socket. See [`dial_address`](Self::dial_address).
    pub listen_addr: NetAddress,
    /// Who opened the connection.
    pub direction: Direction,
    /// Whether the operator listed this peer (`persistent_peers` or at runtime): exempt from
    /// the limits, redialed when it goes.
    pub persistent: bool,
    /// Whether the peer's id is in `private_peer_ids`: its address is never shared by peer
    /// exchange.
    pub private: bool,
    /// The remote end of the TCP connection (for an inbound peer, an ephemeral port).
    pub socket_addr: SocketAddr,
    /// When the connection was admitted (for uptime, and the redial backoff reset).
    pub connected_at: Instant,
    /// The owner's per-peer state (e.g. the handle of the peer's connection actor).
    pub data: T,
}

impl<T> PeerEntry<T> {
    /// The peer's id (the id of [`listen_addr`](Self::listen_addr)).
    pub const fn id(&self) -> PeerId {
        self.listen_addr.id()
    }

    /// The address to redial this peer at: [`listen_addr`](Self::listen_addr), except that an
    /// unspecified IP (`0.0.0.0` or `::`, which TM2 nodes advertise before they know their
    /// address) is replaced by the IP the connection came from, keeping the advertised port.
    pub fn dial_address(&self) -> NetAddress {
        self.listen_addr.or_seen_ip(self.socket_addr.ip())
    }
}

/// Peer counts by direction, persistent peers included and also counted apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerCounts {
    /// Connected peers that dialed us.
    pub inbound: usize,
    /// Connected peers we dialed.
    pub outbound: usize,
    /// Of `inbound`, the persistent ones.
    pub persistent_inbound: usize,
    /// Of `outbound`, the persistent ones.
    pub persistent_outbound: usize,
}

impl PeerCounts {
    /// All connected peers.
    pub const fn total(&self) -> usize {
        self.inbound + self.outbound
    }

    /// Connected peers in one direction.
    pub const fn of(&self, direction: Direction) -> usize {
        match direction {
            Direction::Inbound => self.inbound,
            Direction::Outbound => self.outbound,
        }
    }

    /// Non-persistent peers in one direction: what the limit applies to.
    pub const fn limited(&self, direction: Direction) -> usize {
        match direction {
            Direction::Inbound => self.inbound.saturating_sub(self.persistent_inbound),
            Direction::Outbound => self.outbound.saturating_sub(self.persistent_outbound),
        }
    }

    /// Counts one peer in (`add`) or out.
    fn update(&mut self, direction: Direction, persistent: bool, add: bool) {
        let (all, kept) = match direction {
            Direction::Inbound => (&mut self.inbound, &mut self.persistent_inbound),
            Direction::Outbound => (&mut self.outbound, &mut self.persistent_outbound),
        };
        // Removal only follows an addition of the same (direction, persistent), so the
        // counters never go below zero; saturating keeps a bug from panicking.
        let step = |n: &mut usize| *n = if add { *n + 1 } else { n.saturating_sub(1) };
        step(all);
        if persistent {
            step(kept);
        }
    }
}

/// [`PeerSet::add`] refused an entry because a peer with its id is already in the set. The
/// entry is handed back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicatePeer<T>(pub PeerEntry<T>);

impl<T> fmt::Display for DuplicatePeer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer {} is already in the peer set", self.0.id())
    }
}

impl<T: fmt::Debug> std::error::Error for DuplicatePeer<T> {}

/// The connected peers by id, with counts by direction. Iteration is in id order.
///
/// Calling protocol for the owner (the `Switch` actor), for each verified connection:
/// 1. [`admit`](PeerSet::admit)`(id, direction, persistent)`;
/// 2. on `Err(reason)`: close the new connection and report the reason;
///    on [`Admission::New`]: [`add`](PeerSet::add) the entry;
///    on [`Admission::ReplaceExisting`]: [`remove`](PeerSet::remove) the old entry (stop it),
///    then [`add`](PeerSet::add) the new one.
///
/// When a peer stops, [`remove`](PeerSet::remove) returns its entry the first time only, so a
/// second stop request for the same peer finds nothing and does nothing.
#[derive(Debug, Clone)]
pub struct PeerSet<T = ()> {
    /// This node's id, refused as a peer.
    local: PeerId,
    /// The limits on non-persistent peers.
    limits: PeerLimits,
    /// The peers; an entry is added by `add` and removed by `remove`, nothing else.
    peers: BTreeMap<PeerId, PeerEntry<T>>,
    /// Counts of `peers`, kept in step by `add`, `remove` and `set_persistent`.
    counts: PeerCounts,
}

impl<T> PeerSet<T> {
    /// An empty set for the node `local`, with `limits` on non-persistent peers.
    pub const fn new(local: PeerId, limits: PeerLimits) -> Self {
        Self {
            local,
            limits,
            peers: BTreeMap::new(),
            counts: PeerCounts {
                inbound: 0,
                outbound: 0,
                persistent_inbound: 0,
                persistent_outbound: 0,
            },
        }
    }

    /// Decides whether a verified connection to `id` in `direction` joins the set. Checks, in
    /// order:
    /// 1. `id` is not this node ([`RejectReason::SelfConnection`]);
    /// 2. if the peer is already connected, [`resolve_duplicate`] decides: keep the existing
    ///    one ([`RejectReason::Duplicate`]) or replace it ([`Admission::ReplaceExisting`],
    ///    without a limit check);
    /// 3. unless `persistent`, the direction's limit on non-persistent peers
    ///    ([`RejectReason::MaxInbound`], [`RejectReason::MaxOutbound`]).
    pub fn admit(
        &self,
        id: PeerId,
        direction: Direction,
        persistent: bool,
    ) -> Result<Admission, RejectReason> {
        if id == self.local {
            return Err(RejectReason::SelfConnection);
        }
        if let Some(existing) = self.peers.get(&id) {
            return match resolve_duplicate(self.local, id, existing.direction, direction) {
                Keep::Existing => Err(RejectReason::Duplicate),
                Keep::New => Ok(Admission::ReplaceExisting {
                    existing: existing.direction,
                }),
            };
        }
        if !persistent && self.room(direction) == 0 {
            let max = self.limits.max(direction);
            return Err(match direction {
                Direction::Inbound => RejectReason::MaxInbound { max },
                Direction::Outbound => RejectReason::MaxOutbound { max },
            });
        }
        Ok(Admission::New)
    }

    /// Decides at dial time whether dialing `id` makes sense: not this node, not connected,
    /// and (unless `persistent`) an outbound slot free once the `dials_in_flight` other
    /// non-persistent dials already started are counted as if they had succeeded.
    /// [`admit`](Self::admit) checks again when the connection is verified.
    pub fn can_dial(
        &self,
        id: PeerId,
        persistent: bool,
        dials_in_flight: usize,
    ) -> Result<(), RejectReason> {
        if id == self.local {
            return Err(RejectReason::SelfConnection);
        }
        if self.peers.contains_key(&id) {
            return Err(RejectReason::Duplicate);
        }
        if !persistent && self.room(Direction::Outbound) <= dials_in_flight {
            return Err(RejectReason::MaxOutbound {
                max: self.limits.max_outbound,
            });
        }
        Ok(())
    }

    /// Adds a peer, refusing (and handing back) an entry whose id is already in the set. It
    /// does not check the limits or the local id: call [`admit`](Self::admit) first.
    pub fn add(&mut self, entry: PeerEntry<T>) -> Result<(), DuplicatePeer<T>> {
        if self.peers.contains_key(&entry.id()) {
            return Err(DuplicatePeer(entry));
        }
        self.counts.update(entry.direction, entry.persistent, true);
        self.peers.insert(entry.id(), entry);
        Ok(())
    }

    /// Removes a peer and returns its entry; `None` if it is not in the set, so only the first
    /// of several removals of one peer gets the entry (and reports the disconnect).
    pub fn remove(&mut self, id: &PeerId) -> Option<PeerEntry<T>> {
        let entry = self.peers.remove(id)?;
        self.counts.update(entry.direction, entry.persistent, false);
        Some(entry)
    }

    /// Sets a connected peer's persistent flag (an operator added or removed it at runtime),
    /// keeping the counts right. Returns false if the peer is not connected.
    pub fn set_persistent(&mut self, id: &PeerId, persistent: bool) -> bool {
        let Some(entry) = self.peers.get_mut(id) else {
            return false;
        };
        if entry.persistent != persistent {
            self.counts.update(entry.direction, entry.persistent, false);
            entry.persistent = persistent;
            self.counts.update(entry.direction, persistent, true);
        }
        true
    }

    /// Whether the peer is connected.
    pub fn contains(&self, id: &PeerId) -> bool {
        self.peers.contains_key(id)
    }

    /// The peer's entry, if connected.
    pub fn get(&self, id: &PeerId) -> Option<&PeerEntry<T>> {
        self.peers.get(id)
    }

    /// The owner's data for a connected peer, mutably.
    pub fn data_mut(&mut self, id: &PeerId) -> Option<&mut T> {
        self.peers.get_mut(id).map(|entry| &mut entry.data)
    }

    /// The connected peers, in id order.
    pub fn iter(&self) -> impl Iterator<Item = &PeerEntry<T>> + '_ {
        self.peers.values()
    }

    /// The connected peers' ids, in order.
    pub fn ids(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.peers.keys().copied()
    }

    /// The number of connected peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer is connected.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The counts by direction.
    pub const fn counts(&self) -> PeerCounts {
        self.counts
    }

    /// Connected inbound peers, persistent ones included.
    pub const fn num_inbound(&self) -> usize {
        self.counts.inbound
    }

    /// Connected outbound peers, persistent ones included.
    pub const fn num_outbound(&self) -> usize {
        self.counts.outbound
    }

    /// How many more non-persistent peers the limit allows in `direction` (0 when full).
    pub fn room(&self, direction: Direction) -> usize {
        self.limits
            .max(direction)
            .saturating_sub(self.counts.limited(direction))
    }

    /// This node's id.
    pub const fn local(&self) -> PeerId {
        self.local
    }

    /// The limits on non-persistent peers.
    pub const fn limits(&self) -> PeerLimits {
        self.limits
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use crate::types::Host;

    use proptest::prelude::*;

    use super::*;

    use crate::testing::base;

    const LOCAL: u8 = 100;

    fn id(n: u8) -> PeerId {
        PeerId::from_bytes([n; 20])
    }

    fn entry(n: u8, direction: Direction, persistent: bool) -> PeerEntry<u8> {
        PeerEntry {
            listen_addr: NetAddress::new(id(n), Host::Ip(Ipv4Addr::new(10, 0, 0, n).into()), 26656)
                .unwrap(),
            direction,
            persistent,
            private: false,
            socket_addr: SocketAddr::from((Ipv4Addr::new(10, 0, 0, n), 40000)),
            connected_at: base(),
            data: n,
        }
    }

    fn set(max_inbound: usize, max_outbound: usize) -> PeerSet<u8> {
        PeerSet::new(
            id(LOCAL),
            PeerLimits {
                max_inbound,
                max_outbound,
            },
        )
    }

    use Direction::{Inbound, Outbound};

    #[test]
    fn self_connection_is_refused_in_both_directions_even_when_persistent() {
        let peers = set(10, 10);
        for dir in [Inbound, Outbound] {
            for persistent in [false, true] {
                assert_eq!(
                    peers.admit(id(LOCAL), dir, persistent),
                    Err(RejectReason::SelfConnection)
                );
            }
        }
        assert_eq!(
            peers.can_dial(id(LOCAL), true, 0),
            Err(RejectReason::SelfConnection)
        );
    }

    #[test]
    fn add_refuses_a_duplicate_and_hands_it_back_without_changing_counts() {
        let mut peers = set(10, 10);
        peers.add(entry(1, Inbound, false)).unwrap();
        let second = entry(1, Outbound, true);
        let DuplicatePeer(back) = peers.add(second.clone()).unwrap_err();
        assert_eq!(back, second);
        assert_eq!(peers.len(), 1);
        assert_eq!(peers.get(&id(1)).unwrap().direction, Inbound);
        assert_eq!(
            peers.counts(),
            PeerCounts {
                inbound: 1,
                ..PeerCounts::default()
            }
        );
        assert_eq!(
            DuplicatePeer(back).to_string(),
            format!("peer {} is already in the peer set", id(1))
        );
    }

    #[test]
    fn same_direction_duplicate_is_refused() {
        let mut peers = set(10, 10);
        peers.add(entry(1, Inbound, false)).unwrap();
        peers.add(entry(2, Outbound, false)).unwrap();
        assert_eq!(
            peers.admit(id(1), Inbound, false),
            Err(RejectReason::Duplicate)
        );
        assert_eq!(
            peers.admit(id(2), Outbound, true),
            Err(RejectReason::Duplicate)
        );
    }

    #[test]
    fn other_direction_duplicate_follows_the_lower_id_rule() {
        // Local id is 100: with peer 1 the remote dials the kept connection; with peer 200 we do.
        let mut peers = set(10, 10);
        peers.add(entry(1, Outbound, false)).unwrap();
        peers.add(entry(200, Inbound, false)).unwrap();
        assert_eq!(
            peers.admit(id(1), Inbound, false),
            Ok(Admission::ReplaceExisting { existing: Outbound })
        );
        assert_eq!(
            peers.admit(id(200), Outbound, false),
            Ok(Admission::ReplaceExisting { existing: Inbound })
        );

        let mut peers = set(10, 10);
        peers.add(entry(1, Inbound, false)).unwrap();
        peers.add(entry(200, Outbound, false)).unwrap();
        assert_eq!(
            peers.admit(id(1), Outbound, false),
            Err(RejectReason::Duplicate)
        );
        assert_eq!(
            peers.admit(id(200), Inbound, false),
            Err(RejectReason::Duplicate)
        );
    }

    #[test]
    fn replacement_is_allowed_when_the_new_direction_is_full() {
        let mut peers = set(10, 0);
        peers.add(entry(200, Inbound, false)).unwrap();
        assert_eq!(
            peers.admit(id(200), Outbound, false),
            Ok(Admission::ReplaceExisting { existing: Inbound })
        );
    }

    #[test]
    fn inbound_beyond_the_limit_is_refused() {
        let mut peers = set(2, 10);
        peers.add(entry(1, Inbound, false)).unwrap();
        assert_eq!(peers.admit(id(2), Inbound, false), Ok(Admission::New));
        peers.add(entry(2, Inbound, false)).unwrap();
        assert_eq!(
            peers.admit(id(3), Inbound, false),
            Err(RejectReason::MaxInbound { max: 2 })
        );
        assert_eq!(peers.admit(id(3), Outbound, false), Ok(Admission::New));
        assert_eq!(peers.room(Inbound), 0);
    }

    #[test]
    fn outbound_beyond_the_limit_is_refused() {
        let mut peers = set(10, 1);
        peers.add(entry(1, Outbound, false)).unwrap();
        assert_eq!(
            peers.admit(id(2), Outbound, false),
            Err(RejectReason::MaxOutbound { max: 1 })
        );
        assert_eq!(peers.admit(id(2), Inbound, false), Ok(Admission::New));
    }

    #[test]
    fn zero_limits_refuse_all_but_persistent_peers() {
        let peers = set(0, 0);
        assert_eq!(
            peers.admit(id(1), Inbound, false),
            Err(RejectReason::MaxInbound { max: 0 })
        );
        assert_eq!(
            peers.can_dial(id(1), false, 0),
            Err(RejectReason::MaxOutbound { max: 0 })
        );
        assert_eq!(peers.admit(id(1), Inbound, true), Ok(Admission::New));
        assert_eq!(peers.can_dial(id(1), true, 0), Ok(()));
    }

    #[test]
    fn persistent_peers_are_exempt_from_limits_and_take_no_slot() {
        let mut peers = set(1, 1);
        peers.add(entry(1, Outbound, true)).unwrap();
        peers.add(entry(2, Outbound, true)).unwrap();
        peers.add(entry(3, Inbound, true)).unwrap();
        assert_eq!(peers.room(Outbound), 1);
        assert_eq!(peers.room(Inbound), 1);
        assert_eq!(peers.admit(id(4), Outbound, false), Ok(Admission::New));
        peers.add(entry(4, Outbound, false)).unwrap();
        assert_eq!(
            peers.admit(id(5), Outbound, false),
            Err(RejectReason::MaxOutbound { max: 1 })
        );
        assert_eq!(peers.admit(id(5), Outbound, true), Ok(Admission::New));
        // The totals still count them.
        assert_eq!(peers.num_outbound(), 3);
        assert_eq!(peers.num_inbound(), 1);
        assert_eq!(
            peers.counts(),
            PeerCounts {
                inbound: 1,
                outbound: 3,
                persistent_inbound: 1,
                persistent_outbound: 2
            }
        );
        assert_eq!(peers.counts().total(), 4);
    }

    #[test]
    fn can_dial_refuses_connected_peers_and_counts_dials_in_flight() {
        let mut peers = set(10, 3);
        peers.add(entry(1, Inbound, false)).unwrap();
        peers.add(entry(2, Outbound, false)).unwrap();
        assert_eq!(
            peers.can_dial(id(1), false, 0),
            Err(RejectReason::Duplicate)
        );
        assert_eq!(peers.can_dial(id(1), true, 0), Err(RejectReason::Duplicate));
        assert_eq!(peers.can_dial(id(3), false, 0), Ok(()));
        assert_eq!(peers.can_dial(id(3), false, 1), Ok(()));
        assert_eq!(
            peers.can_dial(id(3), false, 2),
            Err(RejectReason::MaxOutbound { max: 3 })
        );
        assert_eq!(peers.can_dial(id(3), true, 50), Ok(()));
    }

    #[test]
    fn remove_returns_the_entry_only_once() {
        let mut peers = set(10, 10);
        let added = entry(1, Outbound, true);
        peers.add(added.clone()).unwrap();
        assert_eq!(peers.remove(&id(1)), Some(added));
        assert_eq!(peers.remove(&id(1)), None);
        assert_eq!(peers.remove(&id(2)), None);
        assert!(peers.is_empty());
        assert_eq!(peers.counts(), PeerCounts::default());
    }

    #[test]
    fn set_persistent_moves_a_peer_out_of_the_limited_count() {
        let mut peers = set(10, 1);
        assert!(!peers.set_persistent(&id(1), true));
        peers.add(entry(1, Outbound, false)).unwrap();
        assert_eq!(peers.room(Outbound), 0);
        assert!(peers.set_persistent(&id(1), true));
        assert!(peers.get(&id(1)).unwrap().persistent);
        assert_eq!(peers.room(Outbound), 1);
        assert!(peers.set_persistent(&id(1), true));
        assert_eq!(peers.counts().persistent_outbound, 1);
        assert!(peers.set_persistent(&id(1), false));
        assert_eq!(peers.room(Outbound), 0);
        peers.remove(&id(1));
        assert_eq!(peers.counts(), PeerCounts::default());
    }

    #[test]
    fn lookups_and_iteration_in_id_order() {
        let mut peers = set(10, 10);
        for n in [5, 1, 3] {
            peers.add(entry(n, Inbound, false)).unwrap();
        }
        assert!(peers.contains(&id(3)));
        assert!(!peers.contains(&id(4)));
        assert_eq!(peers.get(&id(4)), None);
        assert_eq!(peers.ids().collect::<Vec<_>>(), [id(1), id(3), id(5)]);
        assert_eq!(peers.iter().map(|e| e.data).collect::<Vec<_>>(), [1, 3, 5]);
        *peers.data_mut(&id(3)).unwrap() = 33;
        assert_eq!(peers.get(&id(3)).unwrap().data, 33);
        assert_eq!(peers.data_mut(&id(4)), None);
        assert_eq!(peers.local(), id(LOCAL));
        assert_eq!(peers.limits().max_outbound, 10);
    }

    #[test]
    fn dial_address_replaces_an_unspecified_ip_with_the_socket_ip() {
        let mut e = entry(1, Inbound, false);
        assert_eq!(e.dial_address(), e.listen_addr);
        e.listen_addr =
            NetAddress::from_socket_addr(id(1), SocketAddr::from((Ipv4Addr::UNSPECIFIED, 26656)))
                .unwrap();
        let want =
            NetAddress::new(id(1), Host::Ip(Ipv4Addr::new(10, 0, 0, 1).into()), 26656).unwrap();
        assert_eq!(e.dial_address(), want);
    }

    /// One operation of the model test.
    #[derive(Debug, Clone)]
    enum Op {
        Connect {
            peer: u8,
            outbound: bool,
            persistent: bool,
        },
        Remove {
            peer: u8,
        },
        SetPersistent {
            peer: u8,
            persistent: bool,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (90u8..110, any::<bool>(), prop::bool::weighted(0.2))
                .prop_map(|(peer, outbound, persistent)| {
                    Op::Connect { peer, outbound, persistent }
                }),
            2 => (90u8..110).prop_map(|peer| Op::Remove { peer }),
            1 => (90u8..110, any::<bool>())
                .prop_map(|(peer, persistent)| Op::SetPersistent { peer, persistent }),
        ]
    }

    proptest! {
        /// Driving the set the way the Switch does (admit, then add or replace) keeps the counts
        /// equal to a recount of the entries, and keeps non-persistent peers in each direction
        /// within the limit plus the overshoot that only swaps (simultaneous dials) and runtime
        /// "no longer persistent" changes can make.
        #[test]
        fn counts_match_entries_and_limits_hold(
            ops in proptest::collection::vec(op(), 0..300),
            max_in in 0usize..5,
            max_out in 0usize..5,
        ) {
            let mut peers = set(max_in, max_out);
            let mut swaps_in = 0;
            let mut swaps_out = 0;
            let mut unpersisted = 0;
            for op in ops {
                match op {
                    Op::Connect { peer, outbound, persistent } => {
                        let dir = if outbound { Outbound } else { Inbound };
                        match peers.admit(id(peer), dir, persistent) {
                            Ok(Admission::New) => {
                                prop_assert!(!peers.contains(&id(peer)));
                                peers.add(entry(peer, dir, persistent)).unwrap();
                            }
                            Ok(Admission::ReplaceExisting { existing }) => {
                                prop_assert_ne!(existing, dir);
                                let old = peers.remove(&id(peer)).unwrap();
                                prop_assert_eq!(old.direction, existing);
                                peers.add(entry(peer, dir, persistent)).unwrap();
                                if outbound { swaps_out += 1 } else { swaps_in += 1 }
                            }
                            Err(RejectReason::SelfConnection) => prop_assert_eq!(peer, LOCAL),
                            Err(RejectReason::Duplicate) => prop_assert!(peers.contains(&id(peer))),
                            Err(RejectReason::MaxInbound { max }) => {
                                prop_assert_eq!(max, max_in);
                                prop_assert!(!persistent && !outbound);
                            }
                            Err(RejectReason::MaxOutbound { max }) => {
                                prop_assert_eq!(max, max_out);
                                prop_assert!(!persistent && outbound);
                            }
                        }
                    }
                    Op::Remove { peer } => {
                        let had = peers.contains(&id(peer));
                        prop_assert_eq!(peers.remove(&id(peer)).is_some(), had);
                        prop_assert!(peers.remove(&id(peer)).is_none());
                    }
                    Op::SetPersistent { peer, persistent } => {
                        let was = peers.get(&id(peer)).map(|e| e.persistent);
                        if was == Some(true) && !persistent {
                            unpersisted += 1;
                        }
                        prop_assert_eq!(peers.set_persistent(&id(peer), persistent), was.is_some());
                    }
                }
                let mut recount = PeerCounts::default();
                for e in peers.iter() {
                    recount.update(e.direction, e.persistent, true);
                }
                prop_assert_eq!(peers.counts(), recount);
                prop_assert_eq!(peers.len(), recount.total());
                prop_assert!(!peers.contains(&id(LOCAL)));
                prop_assert!(recount.limited(Inbound) <= max_in + swaps_in + unpersisted);
                prop_assert!(recount.limited(Outbound) <= max_out + swaps_out + unpersisted);
            }
        }

        /// Without runtime flag changes, the only way past a limit is a simultaneous-dial swap.
        #[test]
        fn limits_hold_without_swaps(
            conns in proptest::collection::vec((0u8..40, any::<bool>()), 0..200),
            max_in in 0usize..5,
            max_out in 0usize..5,
        ) {
            let mut peers = set(max_in, max_out);
            for (peer, outbound) in conns {
                let dir = if outbound { Outbound } else { Inbound };
                if let Ok(Admission::New) = peers.admit(id(peer), dir, false) {
                    peers.add(entry(peer, dir, false)).unwrap();
                }
                prop_assert!(peers.num_inbound() <= max_in);
                prop_assert!(peers.num_outbound() <= max_out);
            }
        }
    }
}
