//! Admission policy: the limits, why a connection or a dial is refused, and the
//! simultaneous-dial tie-break. The decisions that need the current peers are methods of
//! [`PeerSet`](super::PeerSet) ([`admit`](super::PeerSet::admit),
//! [`can_dial`](super::PeerSet::can_dial)); this file holds the parts that do not.

use crate::config::P2pConfig;
use crate::types::{Direction, PeerId};

/// How many non-persistent peers may be connected in each direction (persistent peers are
/// exempt: see the [module docs](super)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLimits {
    /// The most non-persistent peers that dialed us (`max_num_inbound_peers`, default 40).
    pub max_inbound: usize,
    /// The most non-persistent peers we dialed (`max_num_outbound_peers`, default 10).
    pub max_outbound: usize,
}

impl PeerLimits {
    /// The `max_num_*_peers` fields of the config.
    pub fn from_config(config: &P2pConfig) -> Self {
        Self {
            max_inbound: config.max_num_inbound_peers,
            max_outbound: config.max_num_outbound_peers,
        }
    }

    /// The limit for one direction.
    pub const fn max(&self, direction: Direction) -> usize {
        match direction {
            Direction::Inbound => self.max_inbound,
            Direction::Outbound => self.max_outbound,
        }
    }
}

impl Default for PeerLimits {
    /// TM2's defaults: 40 inbound, 10 outbound.
    fn default() -> Self {
        Self::from_config(&P2pConfig::default())
    }
}

/// Why a verified connection is not admitted to the peer set, or why a dial should not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum RejectReason {
    /// The remote is this node: we dialed our own address (found through peer exchange or
    /// misconfigured), so both ends are us. Not a fault of any peer; never worth redialing.
    #[error("connection to ourselves")]
    SelfConnection,
    /// A connection to this peer already exists and is the one kept (for a new connection in
    /// the other direction, by [`resolve_duplicate`]); at dial time: already connected. Not a
    /// fault (simultaneous dials are normal); no redial while connected.
    #[error("already connected to this peer")]
    Duplicate,
    /// `max_inbound` non-persistent inbound peers are connected. Not a fault of the peer.
    #[error("inbound peer limit reached ({max})")]
    MaxInbound {
        /// The limit.
        max: usize,
    },
    /// `max_outbound` non-persistent outbound peers are connected (or, at dial time,
    /// connected plus being dialed). Not a fault of the peer; a later dial may succeed.
    #[error("outbound peer limit reached ({max})")]
    MaxOutbound {
        /// The limit.
        max: usize,
    },
}

impl RejectReason {
    /// Always false: every reason is this node's policy or state, not misbehaviour, so the
    /// peer's address must not be marked bad for it.
    pub const fn is_peer_fault(&self) -> bool {
        // Spelled out so that a new variant has to decide.
        match self {
            Self::SelfConnection
            | Self::Duplicate
            | Self::MaxInbound { .. }
            | Self::MaxOutbound { .. } => false,
        }
    }

    /// Whether dialing the same peer later may succeed: true for the limits (a slot may free
    /// up), false for a self-connection (never) and a duplicate (the redial belongs after the
    /// existing connection ends).
    pub const fn should_redial(&self) -> bool {
        match self {
            Self::SelfConnection | Self::Duplicate => false,
            Self::MaxInbound { .. } | Self::MaxOutbound { .. } => true,
        }
    }
}

/// What [`PeerSet::admit`](super::PeerSet::admit) allows for a verified connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// No connection to this peer exists: [`add`](super::PeerSet::add) it.
    New,
    /// A connection to this peer exists in the other direction and the tie-break keeps the new
    /// one: [`remove`](super::PeerSet::remove) the existing entry (stop that connection, tell
    /// reactors it was removed), then [`add`](super::PeerSet::add) the new one. The limits are
    /// not checked: the swap leaves the number of peers unchanged, and refusing on one side
    /// only would make the two sides keep different connections.
    ReplaceExisting {
        /// The direction of the connection being replaced.
        existing: Direction,
    },
}

/// Which of two connections to the same peer survives ([`resolve_duplicate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The connection already in the peer set.
    Existing,
    /// The connection just verified.
    New,
}

/// The simultaneous-dial tie-break: with a connection to `remote` already in the set
/// (`existing`) and a second verified connection to it (`new`), which one to keep.
///
/// When the directions differ (both nodes dialed each other), the connection **dialed by the
/// node with the lower [`PeerId`]** survives: on our side that is our outbound connection if
/// `local < remote`, the inbound one otherwise. The remote computes the same rule with the
/// roles swapped and keeps the same TCP connection, whichever of the two each side verified
/// first. The loser is closed by both sides.
///
/// When the directions are equal (the same node dialed twice, which the `Dialer` avoids by
/// never dialing a connected or queued peer), there is no property both sides can compare, so
/// the existing connection is kept. If the two sides verified the two connections in a
/// different order they may keep different ones, both close, and the redial (for persistent
/// peers) starts over.
///
/// Callers refuse `local == remote` first ([`RejectReason::SelfConnection`]); the answer is
/// unspecified then.
pub fn resolve_duplicate(
    local: PeerId,
    remote: PeerId,
    existing: Direction,
    new: Direction,
) -> Keep {
    if existing == new {
        return Keep::Existing;
    }
    // The connection dialed by the lower id is our outbound one exactly when we are lower.
    let kept = if local < remote {
        Direction::Outbound
    } else {
        Direction::Inbound
    };
    if new == kept {
        Keep::New
    } else {
        Keep::Existing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> PeerId {
        PeerId::from_bytes([n; 20])
    }

    /// The two connections of a simultaneous dial between `a` and `b`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Conn {
        DialedByA,
        DialedByB,
    }

    /// The direction of `conn` as seen by the node `a_side` says.
    fn direction(conn: Conn, a_side: bool) -> Direction {
        match (conn, a_side) {
            (Conn::DialedByA, true) | (Conn::DialedByB, false) => Direction::Outbound,
            _ => Direction::Inbound,
        }
    }

    /// The connection a node keeps when `first` was verified before `second`.
    fn survivor(local: PeerId, remote: PeerId, a_side: bool, first: Conn, second: Conn) -> Conn {
        match resolve_duplicate(
            local,
            remote,
            direction(first, a_side),
            direction(second, a_side),
        ) {
            Keep::Existing => first,
            Keep::New => second,
        }
    }

    #[test]
    fn same_direction_keeps_the_existing_connection() {
        for dir in [Direction::Inbound, Direction::Outbound] {
            assert_eq!(resolve_duplicate(id(1), id(2), dir, dir), Keep::Existing);
            assert_eq!(resolve_duplicate(id(2), id(1), dir, dir), Keep::Existing);
        }
    }

    #[test]
    fn lower_id_keeps_its_outbound_connection() {
        use Direction::{Inbound, Outbound};
        assert_eq!(
            resolve_duplicate(id(1), id(2), Inbound, Outbound),
            Keep::New
        );
        assert_eq!(
            resolve_duplicate(id(1), id(2), Outbound, Inbound),
            Keep::Existing
        );
        assert_eq!(
            resolve_duplicate(id(2), id(1), Inbound, Outbound),
            Keep::Existing
        );
        assert_eq!(
            resolve_duplicate(id(2), id(1), Outbound, Inbound),
            Keep::New
        );
    }

    #[test]
    fn both_sides_keep_the_connection_dialed_by_the_lower_id_in_any_arrival_order() {
        for (a, b) in [(id(1), id(2)), (id(2), id(1)), (id(0), id(255))] {
            let want = if a < b {
                Conn::DialedByA
            } else {
                Conn::DialedByB
            };
            let orders = [
                (Conn::DialedByA, Conn::DialedByB),
                (Conn::DialedByB, Conn::DialedByA),
            ];
            // Each side may have verified either connection first: all 4 combinations.
            for (a_first, a_second) in orders {
                for (b_first, b_second) in orders {
                    let at_a = survivor(a, b, true, a_first, a_second);
                    let at_b = survivor(b, a, false, b_first, b_second);
                    assert_eq!(at_a, want, "A saw {a_first:?} first");
                    assert_eq!(at_b, want, "B saw {b_first:?} first");
                }
            }
        }
    }

    #[test]
    fn no_reason_is_a_peer_fault() {
        for reason in [
            RejectReason::SelfConnection,
            RejectReason::Duplicate,
            RejectReason::MaxInbound { max: 1 },
            RejectReason::MaxOutbound { max: 1 },
        ] {
            assert!(!reason.is_peer_fault(), "{reason:?}");
        }
    }

    #[test]
    fn only_limits_are_worth_a_redial() {
        assert!(!RejectReason::SelfConnection.should_redial());
        assert!(!RejectReason::Duplicate.should_redial());
        assert!(RejectReason::MaxInbound { max: 1 }.should_redial());
        assert!(RejectReason::MaxOutbound { max: 1 }.should_redial());
    }

    #[test]
    fn reasons_name_the_limit() {
        assert_eq!(
            RejectReason::MaxInbound { max: 40 }.to_string(),
            "inbound peer limit reached (40)"
        );
        assert_eq!(
            RejectReason::MaxOutbound { max: 10 }.to_string(),
            "outbound peer limit reached (10)"
        );
    }

    #[test]
    fn limits_come_from_the_config() {
        let config = P2pConfig {
            max_num_inbound_peers: 3,
            max_num_outbound_peers: 7,
            ..P2pConfig::default()
        };
        let limits = PeerLimits::from_config(&config);
        assert_eq!(limits.max(Direction::Inbound), 3);
        assert_eq!(limits.max(Direction::Outbound), 7);
        assert_eq!(
            PeerLimits::default(),
            PeerLimits {
                max_inbound: 40,
                max_outbound: 10
            }
        );
    }
}
