//! [`SwitchEvent`]s and the bounded subscriptions that carry them to host programs.
//!
//! Every subscription has its own buffer of at most [`EVENT_BUFFER`] events, holding only the
//! events its filter accepts: the filter runs when an event is published (as TM2's event bus
//! filters on publish), so a subscriber interested in one kind of event is never crowded out
//! by a flood of another kind. Publishing never blocks and never grows memory past the bound.
//! A subscriber whose own buffer overflows loses its oldest events, and instead of losing them
//! silently (TM2 drops events for a full subscriber without a word) it receives
//! [`SwitchEvent::Lagged`] with how many it missed, then continues with the oldest event still
//! buffered.
//!
//! The bus is closed when the node shuts down (or its Switch stops): every subscription then
//! returns what it still holds, then `None`, even while clones of the
//! [`Node`](crate::Node) live on.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::Notify;

use crate::actors::reactor::DisconnectReason;
use crate::actors::transport::{InboundRejectReason, TransportError};
use crate::peers::RejectReason;
use crate::types::{Direction, Incompatible, NetAddress, PeerId};

/// Events kept for each slow subscriber (of those its filter accepts) before its oldest are
/// dropped and reported as [`SwitchEvent::Lagged`]. TM2 keeps 100 per subscriber.
pub const EVENT_BUFFER: usize = 1024;

/// Something that happened to the node's peers.
#[derive(Debug, Clone)]
#[non_exhaustive]
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
#[non_exhaustive]
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

impl DialError {
    /// The transport's error, when the connection or its upgrade failed.
    pub fn transport(&self) -> Option<&TransportError> {
        match self {
            Self::Transport(e) => Some(e),
            _ => None,
        }
    }

    /// Why the peer is incompatible with us (another network, a missing or different
    /// version, no common channel), when that is why the dial failed.
    pub fn incompatibility(&self) -> Option<&Incompatible> {
        self.transport().and_then(TransportError::incompatibility)
    }

    /// True when the peer closed or reset the connection during the upgrade: how a TM2 node
    /// refuses us (our network or version set does not suit it, it is full, it does not want
    /// us).
    pub fn is_refused_by_peer(&self) -> bool {
        self.transport()
            .is_some_and(TransportError::is_closed_by_peer)
    }

    /// True when nothing accepted the TCP connection (refused, unreachable).
    pub fn is_unreachable(&self) -> bool {
        self.transport().is_some_and(TransportError::is_unreachable)
    }

    /// True when a stage of the dial (connect, handshake, NodeInfo exchange) timed out.
    pub fn is_timeout(&self) -> bool {
        self.transport().is_some_and(TransportError::is_timeout)
    }

    /// Why this node did not dial, or did not keep the connection (ourselves, already
    /// connected, no outbound room).
    pub fn refused_here(&self) -> Option<&RejectReason> {
        match self {
            Self::Refused(r) | Self::Rejected(r) => Some(r),
            _ => None,
        }
    }

    /// True when the peer broke the protocol or lied about its id.
    pub fn is_peer_fault(&self) -> bool {
        self.transport().is_some_and(TransportError::is_peer_fault)
    }
}

/// Why an inbound connection did not become a peer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum InboundRejection {
    /// The transport refused it (no handshake slot, failed upgrade).
    #[error(transparent)]
    Transport(InboundRejectReason),
    /// The peer set refused it (limit, duplicate, ourselves).
    #[error(transparent)]
    PeerSet(RejectReason),
}

impl InboundRejection {
    /// The transport's error, when the upgrade failed.
    pub fn transport(&self) -> Option<&TransportError> {
        match self {
            Self::Transport(InboundRejectReason::Upgrade(e)) => Some(e),
            _ => None,
        }
    }

    /// Why the peer is incompatible with us, when that is why it was refused.
    pub fn incompatibility(&self) -> Option<&Incompatible> {
        self.transport().and_then(TransportError::incompatibility)
    }

    /// True when a stage of the upgrade timed out.
    pub fn is_timeout(&self) -> bool {
        self.transport().is_some_and(TransportError::is_timeout)
    }

    /// True when the peer broke the protocol or lied about its id.
    pub fn is_peer_fault(&self) -> bool {
        self.transport().is_some_and(TransportError::is_peer_fault)
    }
}

/// Publishes events to every subscriber; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct EventBus {
    /// The subscriptions, shared by every clone.
    shared: Arc<Mutex<BusState>>,
}

/// The subscriptions of a bus, and whether it is closed.
#[derive(Debug, Default)]
struct BusState {
    /// Live subscriptions; a dropped one is removed on the next publish.
    subscribers: Vec<Weak<Subscription>>,
    /// Set by [`EventBus::close`]: nothing more is published.
    closed: bool,
}

/// What publishers and one subscriber share.
struct Subscription {
    /// Which events this subscriber wants (run on publish).
    filter: Box<dyn Fn(&SwitchEvent) -> bool + Send + Sync>,
    /// Its own bounded buffer.
    queue: Mutex<Queue>,
    /// Wakes the subscriber when an event arrives or the bus closes (one waiter: the stream
    /// is `&mut`, so a stored permit is never lost).
    ready: Notify,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

/// A subscriber's buffer.
#[derive(Debug, Default)]
struct Queue {
    /// Accepted events not yet read, oldest first; at most [`EVENT_BUFFER`].
    events: VecDeque<SwitchEvent>,
    /// Events dropped from the front since the subscriber last read; reported as
    /// [`SwitchEvent::Lagged`] before the next event.
    missed: u64,
    /// The bus closed: once `events` is empty, the stream ends.
    closed: bool,
}

/// Locks `m`, ignoring poisoning: every critical section here leaves the state consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EventBus {
    /// A bus with no subscriber; each subscription will keep up to [`EVENT_BUFFER`] events.
    pub fn new() -> Self {
        Self::default()
    }

    /// Publishes `event` to every subscriber whose filter accepts it; never blocks. With no
    /// such subscriber, or once the bus is closed, the event is dropped.
    pub fn publish(&self, event: SwitchEvent) {
        let mut state = lock(&self.shared);
        if state.closed {
            return;
        }
        state.subscribers.retain(|weak| {
            let Some(sub) = weak.upgrade() else {
                return false;
            };
            if (sub.filter)(&event) {
                let mut queue = lock(&sub.queue);
                if queue.events.len() == EVENT_BUFFER {
                    queue.events.pop_front();
                    queue.missed += 1;
                }
                queue.events.push_back(event.clone());
                drop(queue);
                sub.ready.notify_one();
            }
            true
        });
    }

    /// A subscription to the events `filter` accepts (plus [`SwitchEvent::Lagged`] when its own
    /// buffer overflowed), from now on. On a closed bus the stream ends at once.
    pub fn subscribe(
        &self,
        filter: impl Fn(&SwitchEvent) -> bool + Send + Sync + 'static,
    ) -> EventStream {
        let mut state = lock(&self.shared);
        let sub = Arc::new(Subscription {
            filter: Box::new(filter),
            queue: Mutex::new(Queue {
                closed: state.closed,
                ..Queue::default()
            }),
            ready: Notify::new(),
        });
        if !state.closed {
            state.subscribers.push(Arc::downgrade(&sub));
        }
        EventStream { sub }
    }

    /// Closes the bus: nothing more is published, and every subscription ends once it has
    /// returned the events it holds. Idempotent.
    pub fn close(&self) {
        let mut state = lock(&self.shared);
        state.closed = true;
        for sub in state
            .subscribers
            .drain(..)
            .filter_map(|weak| weak.upgrade())
        {
            lock(&sub.queue).closed = true;
            sub.ready.notify_one();
        }
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        lock(&self.shared).closed
    }
}

/// One subscriber's bounded view of the events.
pub struct EventStream {
    /// Shared with the bus, which pushes into it.
    sub: Arc<Subscription>,
}

impl EventStream {
    /// The next accepted event, or `None` once the node has shut down and every buffered event
    /// was returned. After this subscriber's buffer overflowed, the next call returns
    /// [`SwitchEvent::Lagged`].
    pub async fn recv(&mut self) -> Option<SwitchEvent> {
        loop {
            let notified = self.sub.ready.notified();
            match self.poll_queue() {
                Polled::Event(event) => return Some(event),
                Polled::Closed => return None,
                Polled::Empty => notified.await,
            }
        }
    }

    /// The next accepted event already published, without waiting (`None` when there is
    /// none yet, or the bus is closed and drained).
    pub fn try_recv(&mut self) -> Option<SwitchEvent> {
        match self.poll_queue() {
            Polled::Event(event) => Some(event),
            Polled::Closed | Polled::Empty => None,
        }
    }

    /// Events buffered for this subscriber and not read yet.
    pub fn len(&self) -> usize {
        lock(&self.sub.queue).events.len()
    }

    /// Whether no event is buffered for this subscriber.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn poll_queue(&self) -> Polled {
        let mut queue = lock(&self.sub.queue);
        if queue.missed > 0 {
            let missed = std::mem::take(&mut queue.missed);
            return Polled::Event(SwitchEvent::Lagged { missed });
        }
        match queue.events.pop_front() {
            Some(event) => Polled::Event(event),
            None if queue.closed => Polled::Closed,
            None => Polled::Empty,
        }
    }

    /// This subscription as a `futures::Stream`.
    pub fn into_stream(self) -> impl futures::Stream<Item = SwitchEvent> {
        futures::stream::unfold(self, |mut s| async move { s.recv().await.map(|e| (e, s)) })
    }
}

/// What a look at the queue found.
enum Polled {
    Event(SwitchEvent),
    Empty,
    Closed,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("pending", &self.len())
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

    fn disconnected(n: u8) -> SwitchEvent {
        SwitchEvent::PeerDisconnected {
            peer: PeerId::from_bytes([n; 20]),
            reason: DisconnectReason::Shutdown,
        }
    }

    #[test]
    fn a_flood_of_other_events_does_not_push_out_a_filtered_subscribers_event() {
        // The shape of the bug: one PeerDisconnected among 1,300 events of another kind, read
        // late. With one shared ring, the subscriber got only `Lagged`.
        let bus = EventBus::new();
        let mut picky = bus.subscribe(|e| matches!(e, SwitchEvent::PeerDisconnected { .. }));
        let mut everything = bus.subscribe(|_| true);
        bus.publish(disconnected(7));
        for n in 0..1300 {
            bus.publish(connected((n % 256) as u8));
        }
        assert!(matches!(
            picky.try_recv(),
            Some(SwitchEvent::PeerDisconnected { peer, .. }) if peer == PeerId::from_bytes([7; 20])
        ));
        assert!(picky.try_recv().is_none());
        // The subscriber that takes everything did overflow its own buffer, and is told.
        assert!(matches!(
            everything.try_recv(),
            Some(SwitchEvent::Lagged { missed: 277 })
        ));
        assert_eq!(everything.len(), EVENT_BUFFER);
    }

    #[test]
    fn lagged_counts_only_the_subscribers_own_events() {
        let bus = EventBus::new();
        let mut picky = bus.subscribe(|e| matches!(e, SwitchEvent::PeerDisconnected { .. }));
        for n in 0..EVENT_BUFFER + 5 {
            bus.publish(disconnected((n % 256) as u8));
            bus.publish(connected(1));
        }
        assert!(matches!(
            picky.try_recv(),
            Some(SwitchEvent::Lagged { missed: 5 })
        ));
    }

    #[test]
    fn a_closed_bus_ends_every_stream_after_what_it_holds() {
        let bus = EventBus::new();
        let mut sub = bus.subscribe(|_| true);
        let keep = bus.clone(); // A clone alive (like a `Node` clone) does not keep it open.
        bus.publish(connected(1));
        bus.close();
        assert!(keep.is_closed());
        bus.publish(connected(2)); // Dropped: closed.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(matches!(
                sub.recv().await,
                Some(SwitchEvent::PeerConnected { .. })
            ));
            assert!(sub.recv().await.is_none());
            // Subscribing after the close gives a stream that has already ended.
            assert!(keep.subscribe(|_| true).recv().await.is_none());
        });
    }

    #[test]
    fn a_waiting_subscriber_wakes_for_an_event_and_for_the_close() {
        let bus = EventBus::new();
        let mut sub = bus.subscribe(|_| true);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let publisher = bus.clone();
            let task = tokio::spawn(async move {
                tokio::task::yield_now().await;
                publisher.publish(connected(3));
                tokio::task::yield_now().await;
                publisher.close();
            });
            assert!(matches!(
                sub.recv().await,
                Some(SwitchEvent::PeerConnected { .. })
            ));
            assert!(sub.recv().await.is_none());
            task.await.unwrap();
        });
    }

    #[test]
    fn a_dropped_subscription_is_forgotten() {
        let bus = EventBus::new();
        drop(bus.subscribe(|_| true));
        bus.publish(connected(1));
        assert!(lock(&bus.shared).subscribers.is_empty());
    }
}
