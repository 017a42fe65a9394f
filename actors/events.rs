//! [`SwitchEvent`]s and the bounded subscriptions that carry them to host programs.
//!
//! Events are published into one ring buffer of [`EVENT_BUFFER`] events
//! (`tokio::sync::broadcast`): publishing never blocks and never grows memory. A subscriber
//! that falls more than the buffer behind loses the oldest events, and instead of losing them
//! silently (TM2 drops events for a full subscriber without a word) it receives
//! [`SwitchEvent::Lagged`] with how many it missed, then continues with the oldest event still
//! buffered.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::actors::reactor::DisconnectReason;
use crate::actors::transport::{InboundRejectReason, TransportError};
use crate::peers::RejectReason;
use crate::types::{Direction, NetAddress, PeerId};

/// Events kept for slow subscribers before the oldest are dropped (and reported as
/// [`SwitchEvent::Lagged`]). TM2 keeps 100 per subscriber.
pub const EVENT_BUFFER: usize = 1024;

/// Something that happened to the node's peers.
#[derive(Debug, Clone)]
pub enum SwitchEvent {
    /// A peer passed every check and was added: its reactors have been told.
    PeerConnected {
        /// The peer.
        peer: PeerId,
        /// Who dialed.
        direction: Direction,
        /// The peer's socket address.
        remote: SocketAddr,
    },
    /// A connected peer was removed (after every reactor got `PeerRemoved`).
    PeerDisconnected {
        /// The peer.
        peer: PeerId,
        /// Why the connection ended.
        reason: DisconnectReason,
    },
    /// A dial did not produce a peer (TM2 reports nothing).
    DialFailed {
        /// The address dialed.
        address: NetAddress,
        /// Why.
        error: DialError,
    },
    /// An inbound connection did not become a peer (TM2 reports nothing).
    InboundRejected {
        /// The remote socket address.
        remote: SocketAddr,
        /// Why.
        reason: InboundRejection,
    },
    /// This subscriber fell behind and `missed` events were dropped for it.
    Lagged {
        /// How many events it missed.
        missed: u64,
    },
}

/// Why a dial failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DialError {
    /// The peer set refused it before dialing (ourselves, already connected, no outbound
    /// room).
    #[error("not dialed: {0}")]
    Refused(RejectReason),
    /// The connection or its upgrade failed.
    #[error(transparent)]
    Transport(Arc<TransportError>),
    /// The connection was made and verified but the peer set refused it on arrival.
    #[error("refused on arrival: {0}")]
    Rejected(RejectReason),
    /// The node is shutting down.
    #[error("node shutting down")]
    Shutdown,
    /// The dial queue was full (its bound is [`DEFAULT_DIAL_QUEUE_CAPACITY`]); nothing was
    /// queued.
    ///
    /// [`DEFAULT_DIAL_QUEUE_CAPACITY`]: crate::dial::DEFAULT_DIAL_QUEUE_CAPACITY
    #[error("dial queue full ({capacity} addresses)")]
    QueueFull {
        /// The queue's bound.
        capacity: usize,
    },
}

/// Why an inbound connection did not become a peer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InboundRejection {
    /// The transport refused it (no handshake slot, failed upgrade).
    #[error(transparent)]
    Transport(InboundRejectReason),
    /// The peer set refused it (limit, duplicate, ourselves).
    #[error(transparent)]
    PeerSet(RejectReason),
}

/// Publishes events to every subscriber; cheap to clone.
#[derive(Debug, Clone)]
pub struct EventBus {
    /// The shared ring buffer.
    tx: broadcast::Sender<SwitchEvent>,
}

impl EventBus {
    /// A bus keeping [`EVENT_BUFFER`] events for slow subscribers.
    pub fn new() -> Self {
        Self {
            tx: broadcast::channel(EVENT_BUFFER).0,
        }
    }

    /// Publishes `event`; never blocks. With no subscriber the event is dropped.
    pub fn publish(&self, event: SwitchEvent) {
        let _ = self.tx.send(event);
    }

    /// A subscription to the events `filter` accepts (plus [`SwitchEvent::Lagged`], always),
    /// from now on.
    pub fn subscribe(
        &self,
        filter: impl Fn(&SwitchEvent) -> bool + Send + Sync + 'static,
    ) -> EventStream {
        EventStream {
            rx: self.tx.subscribe(),
            filter: Box::new(filter),
        }
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

/// One subscriber's bounded view of the events.
pub struct EventStream {
    /// This subscriber's cursor into the ring buffer.
    rx: broadcast::Receiver<SwitchEvent>,
    /// Which events this subscriber wants.
    filter: Box<dyn Fn(&SwitchEvent) -> bool + Send + Sync>,
}

impl EventStream {
    /// The next accepted event, or `None` once the node is gone. After falling behind, the next
    /// call returns [`SwitchEvent::Lagged`].
    pub async fn recv(&mut self) -> Option<SwitchEvent> {
        loop {
            match self.rx.recv().await {
                Ok(event) if (self.filter)(&event) => return Some(event),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    return Some(SwitchEvent::Lagged { missed });
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next accepted event already published, without waiting.
    pub fn try_recv(&mut self) -> Option<SwitchEvent> {
        loop {
            match self.rx.try_recv() {
                Ok(event) if (self.filter)(&event) => return Some(event),
                Ok(_) => {}
                Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                    return Some(SwitchEvent::Lagged { missed });
                }
                Err(_) => return None,
            }
        }
    }

    /// This subscription as a `futures::Stream`.
    pub fn into_stream(self) -> impl futures::Stream<Item = SwitchEvent> {
        futures::stream::unfold(self, |mut s| async move { s.recv().await.map(|e| (e, s)) })
    }
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("pending", &self.rx.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connected(n: u8) -> SwitchEvent {
        SwitchEvent::PeerConnected {
            peer: PeerId::from_bytes([n; 20]),
            direction: Direction::Inbound,
            remote: SocketAddr::from(([127, 0, 0, 1], 1)),
        }
    }

    #[test]
    fn subscribers_get_filtered_events_in_order() {
        let bus = EventBus::new();
        let mut all = bus.subscribe(|_| true);
        let mut none = bus.subscribe(|_| false);
        for n in 0..3 {
            bus.publish(connected(n));
        }
        for n in 0..3 {
            let Some(SwitchEvent::PeerConnected { peer, .. }) = all.try_recv() else {
                panic!("expected event {n}");
            };
            assert_eq!(peer, PeerId::from_bytes([n; 20]));
        }
        assert!(all.try_recv().is_none());
        assert!(none.try_recv().is_none());
    }

    #[test]
    fn a_slow_subscriber_is_told_how_many_it_missed() {
        let bus = EventBus::new();
        let mut slow = bus.subscribe(|_| true);
        let extra = 10;
        for n in 0..EVENT_BUFFER + extra {
            bus.publish(connected((n % 256) as u8));
        }
        match slow.try_recv() {
            Some(SwitchEvent::Lagged { missed }) => assert_eq!(missed, extra as u64),
            other => panic!("expected Lagged, got {other:?}"),
        }
        let mut rest = 0;
        while slow.try_recv().is_some() {
            rest += 1;
        }
        assert_eq!(rest, EVENT_BUFFER);
    }

    #[test]
    fn lagged_passes_any_filter() {
        let bus = EventBus::new();
        let mut picky = bus.subscribe(|e| matches!(e, SwitchEvent::DialFailed { .. }));
        for _ in 0..EVENT_BUFFER + 1 {
            bus.publish(connected(1));
        }
        assert!(matches!(
            picky.try_recv(),
            Some(SwitchEvent::Lagged { missed: 1 })
        ));
        assert!(picky.try_recv().is_none());
    }
}
