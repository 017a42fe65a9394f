//! The set of connected peers and the decisions about who may join it.
//!
//! - [`PeerSet`]: the connected peers by id, with direction, persistent and private flags,
//!   addresses and a payload `T` the owner chooses (the `Switch` actor keeps its per-peer
//!   handle there); inbound and outbound counts; duplicates refused; removal returns the entry
//!   exactly once, which is what makes `StopPeerForError` idempotent.
//! - Admission ([`PeerSet::admit`], [`PeerSet::can_dial`]): pure decisions with a typed
//!   [`RejectReason`]: not ourselves, not a duplicate, within the limits ([`PeerLimits`]).
//! - [`resolve_duplicate`]: the simultaneous-dial tie-break both sides compute alike.
//! - [`HandshakeSlots`]: the bound on inbound handshakes in progress, in total, per IP and per
//!   [`Subnet`], that the Transport checks before it starts any handshake, and the choice of
//!   the unauthenticated connection that gives its slot to a newcomer when all are taken.
//!
//! Sans-IO: no sockets, no clock (the connect time is passed in), no actors.
//!
//! ## Decisions, compared with TM2 (`tm2/pkg/p2p/switch.go`, `set.go`)
//!
//! - **Persistent peers are exempt from the limits and not counted against them.** TM2's
//!   config says `max_num_outbound_peers` excludes persistent peers, but its code counts and
//!   refuses them. Here the limits bound the peers the node picks up on its own (peer exchange,
//!   strangers dialing in); persistent peers are the ones the operator listed by hand, so they
//!   always get in and never take a slot from the others. Memory stays bounded: at most
//!   `max_inbound + max_outbound` other peers plus the operator's own list.
//!   [`PeerCounts`] still reports them, so totals include them.
//! - **Self-connections are refused** ([`RejectReason::SelfConnection`]); TM2 only filters
//!   its own address in `DialPeers`.
//! - **Simultaneous dials keep one connection, the same on both sides**: the one dialed by
//!   the node with the lower `PeerId` ([`resolve_duplicate`]). TM2 has no tie-break, so both
//!   connections may die.
//! - **The outbound limit is checked at dial time**, counting dials in flight
//!   ([`PeerSet::can_dial`]), and again at admission; TM2 checks it only when queueing.

mod admission;
mod handshakes;
mod peer_set;

pub use admission::{Admission, Keep, PeerLimits, RejectReason, resolve_duplicate};
pub use handshakes::{Acquired, HandshakeSlots, SlotRefused, SlotTicket, Subnet};
pub use peer_set::{DuplicatePeer, PeerCounts, PeerEntry, PeerSet};
