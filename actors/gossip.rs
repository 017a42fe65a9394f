//! [`Gossip`]: spreads messages to every node by flooding with de-duplication, as a mempool
//! spreads transactions; and the worked example of how to write a reactor.
//!
//! # What it does
//!
//! A message [`Publish`]ed on this node, or received from a peer for the first time, is
//! delivered once to the local subscribers ([`SubscribeDelivered`]) and forwarded to every
//! connected peer that speaks gossip, except the one it came from. A message seen before is
//! dropped and counted as a duplicate. Every node forwards each message once, so a message
//! reaches every node of a connected network, and crosses each connection at most once in each
//! direction.
//!
//! Messages are raw bytes on channel [`GOSSIP_CHANNEL`] (`0x30`), with no envelope. A message
//! is named by its content: its [`MessageId`] is the SHA-256 of the whole payload (at most
//! [`max_message_size`](GossipConfig::max_message_size) bytes, so hashing all of it is cheap and
//! two messages that share a prefix stay distinct). Two nodes that publish the same bytes thus
//! publish one message, as two nodes submitting the same transaction do.
//!
//! # Writing a reactor
//!
//! A reactor is an actor that the Switch knows by its channels. Register it as the node is
//! built, so that every connection, including the first ones (persistent peers and seeds are
//! dialed at once), advertises its channels:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use actix::Actor;
//! use bytes::Bytes;
//! use tm2_p2p::actors::gossip::{Gossip, GossipConfig, Publish, SubscribeDelivered, gossip_channel};
//! use tm2_p2p::{NodeKey, P2pConfig, RegisterReactor, SwitchBuilder};
//!
//! let log = slog::Logger::root(slog::Discard, slog::o!());
//! let gossip = Gossip::new(GossipConfig::default(), log).start();
//! let node = SwitchBuilder::new(P2pConfig::default(), NodeKey::generate()?)
//!     .network("my-chain")
//!     .reactor(RegisterReactor::batched("gossip", vec![gossip_channel()], &gossip))
//!     .spawn()
//!     .await?;
//! let mut delivered = gossip.send(SubscribeDelivered { capacity: 1024 }).await?;
//! let id = gossip.send(Publish(Bytes::from_static(b"hello"))).await??;
//! while let Some(d) = delivered.recv().await {
//!     println!("{} from {:?}: {} bytes", d.id, d.from, d.payload.len());
//! }
//! # Ok(()) }
//! ```
//!
//! A reactor can also join a running node with
//! `node.switch().send(RegisterReactor::new(..))` (or [`Gossip::register`]); peers connected
//! before that were told this node lacks the channel, and never send on it.
//!
//! From then on the Switch sends the reactor three messages:
//!
//! - [`PeerAdded`] when a peer connects (and, to a reactor registered late, once for each peer
//!   already connected). Its [`PeerInfo`] carries a [`PeerHandle`] that sends to that peer
//!   directly, without a hop through the Switch: keep it. Whether the peer has the channel is
//!   `peer.handle.has_channel(ch)` (a send on a channel it lacks is refused, never sent). Gossip keeps such peers (a seed, a node running
//!   other reactors) out of its table.
//! - [`Receive`] for each whole message a peer sent on the reactor's channels, in the order that
//!   peer sent them, never before its `PeerAdded` (registered with `RegisterReactor::batched`,
//!   as above, [`ReceiveBatch`]es of them: one mailbox message per socket read). The bytes are hostile: the connection has
//!   already refused a message above the channel's `recv_message_capacity` (a peer fault that
//!   ends the connection), but the content is whatever the peer chose. Decode with limits,
//!   never panic, and stop a peer that breaks the protocol with
//!   [`StopPeerForError`](crate::actors::switch::StopPeerForError) or
//!   [`PeerHandle::stop_for_error`] (or register a typed channel, which decodes for you:
//!   `RegisterReactor::typed`). Gossip has nothing to decode: any bytes are a message, relayed
//!   unchanged (so it stays a raw channel). Handle `Receive` quickly: a reactor that falls behind makes reads
//!   from that peer wait, so a slow reactor slows its peers down rather than buffering without
//!   bound.
//! - [`PeerRemoved`] exactly once per `PeerAdded`, after that peer's last `Receive`. Drop
//!   everything kept for the peer (here: its handle, its backlog and the task draining it).
//!
//! # Backpressure
//!
//! A handler never waits, and nothing grows without bound. A copy for a peer goes straight
//! into its connection's send queue with [`PeerHandle::try_send`] (the channel queues
//! [`SEND_QUEUE_CAPACITY`] messages). If that queue is full, the copy goes into the peer's
//! *backlog*, a bounded queue of [`backlog_per_peer`](GossipConfig::backlog_per_peer) messages
//! that one task per peer drains with [`PeerHandle::send`] (which waits for room up to the
//! node's `send_timeout`). While the backlog holds anything, new copies queue behind it, so a
//! peer gets messages in the order this node forwarded them. A copy is dropped, and counted in
//! [`GossipStats::dropped`], when even the backlog is full or the peer made no room within the
//! send timeout. The peer may still get that message from another neighbour: flooding is
//! redundant. Copies waiting in the backlog of a peer that disconnects are discarded without
//! being counted (the peer is gone, not slow).
//!
//! Payloads are [`Bytes`]: the copies for all peers share one buffer, so a backlog holds
//! references, and the memory a node spends on backlogs is at most `backlog_per_peer ×
//! max_message_size` bytes per peer, in practice far less.
//!
//! A subscriber gets deliveries through a bounded queue of its chosen capacity; a subscriber
//! that falls that far behind misses deliveries, counted in [`GossipStats::subscriber_drops`].
//!
//! # De-duplication
//!
//! The ids of the last [`seen_capacity`](GossipConfig::seen_capacity) messages are kept in a
//! [`SeenSet`]; when it is full the oldest id is forgotten (first in, first out). A message
//! that arrives again after its id was forgotten is taken as new: delivered and forwarded once
//! more. Copies of a message stop arriving within a few network round trips of its first
//! arrival, so this only happens when more than `seen_capacity` other messages arrived in that
//! time. The default, [`DEFAULT_SEEN_CAPACITY`], is far above what a testnet publishes (the
//! local testnet raises it to its message count if that is larger), so no message is ever
//! delivered twice there.
//!
//! # Reconnections
//!
//! Copies in flight on a connection that ends are lost with it: in its send queue, in the
//! sockets, or sent on the losing connection of a simultaneous dial (both nodes dial each
//! other, each starts its own connection first, and the tie-break keeps one: the other end
//! closes the loser without reading it). Flooding covers most such losses through other peers,
//! but not all: a node whose every connection was replaced at once (the local testnet on one IP
//! did this, about one run in ten) missed a message for good. So a node remembers the messages
//! it accepted in the last [`RESEND_WINDOW`] (at most [`RECENT_MAX_MESSAGES`] and
//! [`RECENT_MAX_BYTES`]) and the gossip peers that left in that window; when such a peer comes
//! back within the window, it is sent again everything accepted from `RESEND_WINDOW` before
//! its old connection ended. The peer drops what it already had as duplicates. A peer seen for
//! the first time gets only what is accepted from then on.
//!
//! # Messages
//!
//! | receives | from | answer |
//! | --- | --- | --- |
//! | [`Publish`] | host | `Result<MessageId, PublishError>` |
//! | [`SubscribeDelivered`] | host | [`Deliveries`], a bounded stream of [`Delivered`] |
//! | [`GetGossipStats`] | host | [`GossipStats`] |
//! | [`PeerAdded`], [`Receive`], [`PeerRemoved`] | Switch, peer connections | `()` |

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use ring::digest;
use slog::{Logger, debug, trace};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::actors::clock;
use crate::actors::peer_conn::PeerHandle;
use crate::actors::reactor::{PeerAdded, PeerInfo, PeerRemoved, Receive, ReceiveBatch};
use crate::actors::switch::{RegisterReactor, Switch, SwitchError};
use crate::mconn::ChannelDescriptor;
use crate::types::PeerId;

/// The gossip channel. TM2's mempool uses `0x30`; this reactor plays the same part.
pub const GOSSIP_CHANNEL: u8 = 0x30;

/// The default largest message: 64 KiB, room for a large transaction. A larger
/// [`Publish`] is refused with [`PublishError::TooLarge`]; a peer sending more is disconnected
/// by its connection (the channel's `recv_message_capacity`).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024;

/// The default number of message ids remembered: 65,536 ids take about 6 MiB at most, and are
/// far more than arrive while copies of one message are still in flight (see the module docs,
/// "De-duplication").
pub const DEFAULT_SEEN_CAPACITY: usize = 65_536;

/// How far back a peer that reconnects is sent messages again: the messages accepted in this
/// window before its connection ended, and every one since (module docs, "Reconnections"). A
/// peer that comes back later than this is a new peer.
/// The copies lost with a replaced connection were sent milliseconds before it ended; two
/// seconds also cover a peer that restarts quickly.
pub const RESEND_WINDOW: Duration = Duration::from_secs(2);

/// At most this many recent messages are kept for [`RESEND_WINDOW`] (and
/// [`RECENT_MAX_BYTES`] of payload), so a reconnecting peer is sent at most this many again.
/// Small on purpose: this is a safety net under flooding, and a local testnet runs up to 1,000
/// nodes in one process (256 messages of 256 bytes: about 80 KiB a node).
pub const RECENT_MAX_MESSAGES: usize = 256;

/// At most this many payload bytes of recent messages are kept for re-sending.
pub const RECENT_MAX_BYTES: usize = 1024 * 1024;

/// The default per-peer backlog, in messages: absorbs a burst of a thousand messages to a peer
/// whose send queue is full (see the module docs, "Backpressure").
pub const DEFAULT_BACKLOG_PER_PEER: usize = 1024;

/// Messages the gossip channel's send queue holds per connection, in front of the backlog.
/// TM2's mempool queue holds 100 transactions; a larger queue lets bursts go straight out.
pub const SEND_QUEUE_CAPACITY: usize = 256;

/// The gossip channel's share of the send bandwidth (TM2's mempool priority).
pub const GOSSIP_PRIORITY: u32 = 5;

/// The default capacity of a [`SubscribeDelivered`] stream in `tm2p2p node`, and a sensible
/// choice for host programs that consume deliveries as they come.
pub const DEFAULT_SUBSCRIBER_CAPACITY: usize = 1024;

/// The gossip channel's descriptor with the default [`GossipConfig`]: priority
/// [`GOSSIP_PRIORITY`], a send queue of [`SEND_QUEUE_CAPACITY`] messages, messages of at most
/// [`DEFAULT_MAX_MESSAGE_SIZE`] bytes.
pub fn gossip_channel() -> ChannelDescriptor {
    GossipConfig::default().channel()
}

/// The gossip reactor's settings. Every node of a network must use the same
/// `max_message_size`: a node receiving a message above its own limit disconnects the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GossipConfig {
    /// The largest message, in bytes: a larger [`Publish`] is refused, and a peer sending a
    /// larger one is disconnected by its connection. Default [`DEFAULT_MAX_MESSAGE_SIZE`].
    pub max_message_size: usize,
    /// How many message ids are remembered for de-duplication (at least 1 is used); the oldest
    /// is forgotten first. Default [`DEFAULT_SEEN_CAPACITY`].
    pub seen_capacity: usize,
    /// How many messages may wait per peer when its send queue is full; beyond that copies are
    /// dropped and counted. 0: no backlog, a full queue drops at once. Default
    /// [`DEFAULT_BACKLOG_PER_PEER`].
    pub backlog_per_peer: usize,
}

impl GossipConfig {
    /// The channel descriptor for these settings: [`GOSSIP_CHANNEL`] with priority
    /// [`GOSSIP_PRIORITY`], a send queue of [`SEND_QUEUE_CAPACITY`] messages, and received
    /// messages capped at `max_message_size`.
    pub fn channel(&self) -> ChannelDescriptor {
        ChannelDescriptor::new(GOSSIP_CHANNEL)
            .with_priority(GOSSIP_PRIORITY)
            .with_send_queue_capacity(SEND_QUEUE_CAPACITY)
            .with_recv_buffer_capacity(self.max_message_size.clamp(1, 4096))
            .with_recv_message_capacity(self.max_message_size)
    }
}

impl Default for GossipConfig {
    fn default() -> Self {
        Self {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            seen_capacity: DEFAULT_SEEN_CAPACITY,
            backlog_per_peer: DEFAULT_BACKLOG_PER_PEER,
        }
    }
}

/// A message's name: the SHA-256 of its payload. Displayed as the first 6 bytes in hex
/// (12 characters, enough to tell messages apart in a log); `{:?}` shows all 32.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId([u8; 32]);

impl MessageId {
    /// The id of `payload`.
    pub fn of(payload: &[u8]) -> Self {
        let mut id = [0; 32];
        id.copy_from_slice(digest::digest(&digest::SHA256, payload).as_ref());
        Self(id)
    }

    /// An id from its 32 bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The id's 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0[..6].iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MessageId(")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))?;
        f.write_str(")")
    }
}

/// The messages a node accepted lately and the gossip peers that left lately, bounded: what a
/// peer that comes back within [`RESEND_WINDOW`] is sent again (module docs, "Reconnections").
#[derive(Debug, Default)]
struct Recent {
    /// Copies of the messages accepted in the last [`RESEND_WINDOW`], oldest first, with when;
    /// at most [`RECENT_MAX_MESSAGES`] and [`RECENT_MAX_BYTES`].
    messages: VecDeque<(Instant, Bytes)>,
    /// Payload bytes in `messages`.
    bytes: usize,
    /// Peers that left in the last [`RESEND_WINDOW`], with when; at most
    /// [`RECENT_MAX_MESSAGES`].
    left: HashMap<PeerId, Instant>,
}

impl Recent {
    /// Keeps a copy of `payload`, accepted at `now`; forgets what is older than
    /// [`RESEND_WINDOW`] or over the bounds. A copy, because a received payload is a slice of
    /// its connection's 4 KiB read buffer: kept for seconds, each small message would hold a
    /// whole buffer (the bound counts payload bytes).
    fn remember(&mut self, now: Instant, payload: &Bytes) {
        self.messages
            .push_back((now, Bytes::copy_from_slice(payload)));
        self.bytes += payload.len();
        while let Some((at, oldest)) = self.messages.front()
            && (self.messages.len() > RECENT_MAX_MESSAGES
                || self.bytes > RECENT_MAX_BYTES
                || now.saturating_duration_since(*at) > RESEND_WINDOW)
        {
            self.bytes -= oldest.len();
            self.messages.pop_front();
        }
    }

    /// `peer`'s connection ended at `now`.
    fn left(&mut self, peer: PeerId, now: Instant) {
        if self.left.len() >= RECENT_MAX_MESSAGES {
            self.left
                .retain(|_, at| now.saturating_duration_since(*at) <= RESEND_WINDOW);
        }
        if self.left.len() < RECENT_MAX_MESSAGES {
            self.left.insert(peer, now);
        }
    }

    /// `peer` is back at `now`: what to send it again. If it left within [`RESEND_WINDOW`],
    /// the messages accepted from `RESEND_WINDOW` before it left on; else none.
    fn back(&mut self, peer: PeerId, now: Instant) -> impl Iterator<Item = &Bytes> {
        let since = self
            .left
            .remove(&peer)
            .filter(|left_at| now.saturating_duration_since(*left_at) <= RESEND_WINDOW)
            .map(|left_at| left_at.checked_sub(RESEND_WINDOW).unwrap_or(left_at));
        self.messages
            .iter()
            .filter(move |(at, _)| since.is_some_and(|since| *at >= since))
            .map(|(_, payload)| payload)
    }
}

/// The ids of the most recent messages, at most `capacity` of them; when full, inserting
/// forgets the oldest (first in, first out).
#[derive(Debug, Clone)]
pub struct SeenSet {
    /// The most ids kept (at least 1).
    capacity: usize,
    /// The ids, for lookups.
    ids: HashSet<MessageId>,
    /// The same ids, oldest first, for eviction.
    order: VecDeque<MessageId>,
}

impl SeenSet {
    /// An empty set keeping at most `capacity` ids (0 is taken as 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            ids: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Records `id`: true if it was not in the set (a new message), false for a duplicate.
    /// Inserting a new id into a full set forgets the oldest one.
    pub fn insert(&mut self, id: MessageId) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        true
    }

    /// Whether `id` is remembered.
    pub fn contains(&self, id: &MessageId) -> bool {
        self.ids.contains(id)
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The most ids kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Why a [`Publish`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The message is larger than [`GossipConfig::max_message_size`]: peers would disconnect
    /// this node for sending it.
    #[error("message of {len} bytes is larger than the {max}-byte limit")]
    TooLarge {
        /// The message's size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The same bytes were published or received recently: the message is already spreading,
    /// and was not delivered or sent again (counted in [`GossipStats::duplicates`]).
    #[error("message {0} was already seen")]
    AlreadySeen(MessageId),
}

/// A message handed to local subscribers, once per message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The message's id.
    pub id: MessageId,
    /// The peer it first arrived from; `None` when it was published on this node.
    pub from: Option<PeerId>,
    /// The message.
    pub payload: Bytes,
}

/// Publishes a message: delivered to local subscribers and sent to every gossip peer. Answers
/// its id, or why it was refused (too large, already seen).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<MessageId, PublishError>")]
pub struct Publish(pub Bytes);

/// Subscribes to deliveries: every message published here or received for the first time from
/// then on, through a queue of `capacity` messages (at least 1). A subscriber that lets the
/// queue fill misses deliveries (counted in [`GossipStats::subscriber_drops`]); dropping the
/// [`Deliveries`] ends the subscription.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "Deliveries")]
pub struct SubscribeDelivered {
    /// The queue's capacity, in messages.
    pub capacity: usize,
}

/// One subscriber's bounded stream of [`Delivered`] messages.
#[derive(Debug, MessageResponse)]
pub struct Deliveries {
    /// The subscriber's end of the queue.
    rx: mpsc::Receiver<Delivered>,
}

impl Deliveries {
    /// The next delivery, or `None` once the reactor has stopped.
    pub async fn recv(&mut self) -> Option<Delivered> {
        self.rx.recv().await
    }

    /// The next delivery already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Delivered> {
        self.rx.try_recv().ok()
    }

    /// This subscription as a `futures::Stream`.
    pub fn into_stream(self) -> impl futures::Stream<Item = Delivered> {
        futures::stream::unfold(self, |mut s| async move { s.recv().await.map(|d| (d, s)) })
    }
}

/// Asks for the reactor's counters.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "GossipStats")]
pub struct GetGossipStats;

/// What a gossip reactor has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, MessageResponse)]
pub struct GossipStats {
    /// Messages published on this node (refused ones not counted).
    pub published: u64,
    /// Messages received from peers for the first time, and so delivered to local subscribers
    /// (published messages are delivered too but counted in `published`).
    pub delivered: u64,
    /// Messages that arrived, or were published, again and were dropped.
    pub duplicates: u64,
    /// Copies handed to peers' connections (directly or from a backlog).
    pub forwarded: u64,
    /// Copies for a peer dropped because its queue and backlog were full, or it made no room
    /// within the send timeout.
    pub dropped: u64,
    /// Copies that found the peer's send queue full (or its backlog busy) and waited in its
    /// backlog; they count in `forwarded` once sent, or in `dropped`.
    pub backlogged: u64,
    /// Payload bytes of the `forwarded` copies (without packet and encryption overhead).
    pub payload_bytes_sent: u64,
    /// Deliveries a full subscriber queue missed.
    pub subscriber_drops: u64,
    /// Gossip peers connected now.
    pub peers: usize,
}

/// The gossip reactor; see the module docs.
pub struct Gossip {
    /// Limits and capacities.
    config: GossipConfig,
    /// Connected peers that advertised [`GOSSIP_CHANNEL`]: added on `PeerAdded`, removed on
    /// `PeerRemoved`.
    peers: HashMap<PeerId, GossipPeer>,
    /// Ids of recent messages.
    seen: SeenSet,
    /// Subscribers' queues; a closed one is removed on the next delivery.
    subscribers: Vec<mpsc::Sender<Delivered>>,
    /// Counters also updated by the backlog tasks.
    sends: Arc<SendCounters>,
    /// [`GossipStats::published`].
    published: u64,
    /// [`GossipStats::delivered`].
    delivered: u64,
    /// [`GossipStats::duplicates`].
    duplicates: u64,
    /// [`GossipStats::subscriber_drops`].
    subscriber_drops: u64,
    /// What a peer that comes back is sent again (module docs, "Reconnections").
    recent: Recent,
    /// The node's log.
    log: Logger,
}

impl Gossip {
    /// A reactor with `config`, logging to `log`. Start it, then register it with the Switch
    /// for `config.channel()` (or use [`register`](Self::register)).
    pub fn new(config: GossipConfig, log: Logger) -> Self {
        Self {
            config,
            peers: HashMap::new(),
            seen: SeenSet::new(config.seen_capacity),
            subscribers: Vec::new(),
            sends: Arc::default(),
            published: 0,
            delivered: 0,
            duplicates: 0,
            subscriber_drops: 0,
            recent: Recent::default(),
            log,
        }
    }

    /// Starts the reactor on the current arbiter and registers it with a running node's
    /// `switch` for its channel; shorthand for `start()` then
    /// `switch.send(RegisterReactor::batched("gossip", vec![config.channel()], &addr))`. Prefer
    /// [`SwitchBuilder::reactor`](crate::actors::node::SwitchBuilder::reactor) (module docs):
    /// peers connected before this call never send gossip to this node.
    pub async fn register(self, switch: &Addr<Switch>) -> Result<Addr<Self>, SwitchError> {
        let channel = self.config.channel();
        let addr = self.start();
        switch
            .send(RegisterReactor::batched("gossip", vec![channel], &addr))
            .await
            .map_err(|_| SwitchError::ShuttingDown)??;
        Ok(addr)
    }

    /// Accepts `payload` if new: delivers it locally and forwards it to every peer but `from`.
    /// False for a duplicate.
    fn accept(&mut self, id: MessageId, payload: Bytes, from: Option<PeerId>) -> bool {
        if !self.seen.insert(id) {
            self.duplicates += 1;
            return false;
        }
        for (peer_id, peer) in &self.peers {
            if Some(*peer_id) != from {
                peer.forward(&payload, &self.sends);
            }
        }
        self.recent.remember(clock::now(), &payload);
        let drops = &mut self.subscriber_drops;
        let delivered = Delivered { id, from, payload };
        self.subscribers
            .retain(|tx| match tx.try_send(delivered.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    *drops += 1;
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        true
    }
}

impl Actor for Gossip {
    type Context = Context<Self>;
}

impl Handler<PeerAdded> for Gossip {
    type Result = ();

    fn handle(&mut self, msg: PeerAdded, _: &mut Self::Context) {
        let PeerAdded { peer } = msg;
        if !peer.node_info.channels.contains(&GOSSIP_CHANNEL) {
            // Sending on a channel the peer does not have would end the connection.
            debug!(self.log, "peer does not gossip"; "peer" => %peer.id);
            return;
        }
        let gossip_peer = GossipPeer::new(&peer, self.config.backlog_per_peer, &self.sends);
        self.peers.insert(peer.id, gossip_peer);
        let mut resent = 0;
        if let Some(gossip_peer) = self.peers.get(&peer.id) {
            for payload in self.recent.back(peer.id, clock::now()) {
                gossip_peer.forward(payload, &self.sends);
                resent += 1;
            }
        }
        if resent > 0 {
            debug!(self.log, "gossip peer back: recent messages sent again"; "peer" => %peer.id, "messages" => resent);
        }
    }
}

impl Handler<PeerRemoved> for Gossip {
    type Result = ();

    fn handle(&mut self, msg: PeerRemoved, _: &mut Self::Context) {
        // Dropping the peer aborts its backlog task.
        if self.peers.remove(&msg.peer).is_some() {
            self.recent.left(msg.peer, clock::now());
        }
    }
}

impl Handler<Receive> for Gossip {
    type Result = ();

    fn handle(&mut self, msg: Receive, _: &mut Self::Context) {
        self.on_message(msg.channel, msg.peer, msg.payload);
    }
}

/// Registered with [`RegisterReactor::batched`] (as the binary and the testnet do), Gossip gets
/// a peer's messages a batch at a time (what arrived until the socket had nothing more): one
/// mailbox message per batch.
impl Handler<ReceiveBatch> for Gossip {
    type Result = ();

    fn handle(&mut self, msg: ReceiveBatch, _: &mut Self::Context) {
        for payload in msg.payloads {
            self.on_message(msg.channel, msg.peer, payload);
        }
    }
}

impl Gossip {
    /// A message from `peer`: checked, then accepted if new.
    fn on_message(&mut self, channel: u8, peer: PeerId, payload: Bytes) {
        if channel != GOSSIP_CHANNEL || payload.len() > self.config.max_message_size {
            // The connection enforces the channel's limits; this only happens if the reactor
            // was registered with another descriptor than `config.channel()`.
            debug!(self.log, "gossip message ignored"; "peer" => %peer, "channel" => channel, "size" => payload.len());
            return;
        }
        let id = MessageId::of(&payload);
        if self.accept(id, payload, Some(peer)) {
            self.delivered += 1;
            trace!(self.log, "gossip received"; "id" => %id, "from" => %peer);
        }
    }
}

impl Handler<Publish> for Gossip {
    type Result = Result<MessageId, PublishError>;

    fn handle(&mut self, Publish(payload): Publish, _: &mut Self::Context) -> Self::Result {
        let max = self.config.max_message_size;
        if payload.len() > max {
            return Err(PublishError::TooLarge {
                len: payload.len(),
                max,
            });
        }
        let id = MessageId::of(&payload);
        if !self.accept(id, payload, None) {
            return Err(PublishError::AlreadySeen(id));
        }
        self.published += 1;
        trace!(self.log, "gossip published"; "id" => %id);
        Ok(id)
    }
}

impl Handler<SubscribeDelivered> for Gossip {
    type Result = Deliveries;

    fn handle(&mut self, msg: SubscribeDelivered, _: &mut Self::Context) -> Deliveries {
        let (tx, rx) = mpsc::channel(msg.capacity.max(1));
        self.subscribers.push(tx);
        Deliveries { rx }
    }
}

impl Handler<GetGossipStats> for Gossip {
    type Result = GossipStats;

    fn handle(&mut self, _: GetGossipStats, _: &mut Self::Context) -> GossipStats {
        GossipStats {
            published: self.published,
            delivered: self.delivered,
            duplicates: self.duplicates,
            forwarded: self.sends.forwarded.load(Ordering::Relaxed),
            dropped: self.sends.dropped.load(Ordering::Relaxed),
            backlogged: self.sends.backlogged.load(Ordering::Relaxed),
            payload_bytes_sent: self.sends.bytes.load(Ordering::Relaxed),
            subscriber_drops: self.subscriber_drops,
            peers: self.peers.len(),
        }
    }
}

/// Counters updated by the reactor and by the backlog tasks.
#[derive(Debug, Default)]
struct SendCounters {
    /// [`GossipStats::forwarded`].
    forwarded: AtomicU64,
    /// [`GossipStats::dropped`].
    dropped: AtomicU64,
    /// [`GossipStats::backlogged`].
    backlogged: AtomicU64,
    /// [`GossipStats::payload_bytes_sent`].
    bytes: AtomicU64,
}

impl SendCounters {
    /// A copy of `len` bytes was queued on a connection.
    fn sent(&self, len: usize) {
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(len as u64, Ordering::Relaxed);
    }

    /// A copy was dropped.
    fn drop_one(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// A connected gossip peer.
struct GossipPeer {
    /// Sends to the peer's connection.
    handle: PeerHandle,
    /// Copies waiting for room in the peer's send queue; `None` when `backlog_per_peer` is 0.
    backlog: Option<Backlog>,
}

impl GossipPeer {
    /// The peer `info`, with a backlog of `capacity` messages drained by a task started here.
    fn new(info: &PeerInfo, capacity: usize, counters: &Arc<SendCounters>) -> Self {
        let backlog = (capacity > 0).then(|| {
            let (tx, rx) = mpsc::channel(capacity);
            let pending = Arc::new(AtomicUsize::new(0));
            let task = actix::spawn(drain_backlog(
                info.handle.clone(),
                rx,
                Arc::clone(&pending),
                Arc::clone(counters),
            ));
            Backlog { tx, pending, task }
        });
        Self {
            handle: info.handle.clone(),
            backlog,
        }
    }

    /// Sends a copy of `payload`: straight into the connection's queue when nothing waits in
    /// the backlog and the queue has room, else behind the backlog, else dropped (counted).
    fn forward(&self, payload: &Bytes, counters: &SendCounters) {
        if self.handle.is_closed() {
            // PeerRemoved is on its way.
            return;
        }
        let idle = self
            .backlog
            .as_ref()
            .is_none_or(|b| b.pending.load(Ordering::Acquire) == 0);
        if idle && self.handle.try_send(GOSSIP_CHANNEL, payload.clone()) {
            counters.sent(payload.len());
            return;
        }
        let Some(backlog) = &self.backlog else {
            counters.drop_one();
            return;
        };
        // Counted before it is queued, so the task never sees the count go below zero.
        backlog.pending.fetch_add(1, Ordering::AcqRel);
        if backlog.tx.try_send(payload.clone()).is_ok() {
            counters.backlogged.fetch_add(1, Ordering::Relaxed);
        } else {
            backlog.pending.fetch_sub(1, Ordering::AcqRel);
            counters.drop_one();
        }
    }
}

/// One peer's backlog; dropping it stops its task.
struct Backlog {
    /// Where copies wait (bounded).
    tx: mpsc::Sender<Bytes>,
    /// Copies queued in `tx` or being sent by the task; 0 means the backlog is idle and a copy
    /// may bypass it without overtaking an older one.
    pending: Arc<AtomicUsize>,
    /// The task draining `tx`.
    task: JoinHandle<()>,
}

impl Drop for Backlog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends the backlog's copies one by one, waiting for room in the peer's queue (up to the
/// send timeout each).
async fn drain_backlog(
    handle: PeerHandle,
    mut rx: mpsc::Receiver<Bytes>,
    pending: Arc<AtomicUsize>,
    counters: Arc<SendCounters>,
) {
    while let Some(payload) = rx.recv().await {
        let len = payload.len();
        if handle.send(GOSSIP_CHANNEL, payload).await {
            counters.sent(len);
        } else if handle.is_closed() {
            // The peer is gone; the reactor drops this backlog when PeerRemoved arrives.
            return;
        } else {
            counters.drop_one();
        }
        pending.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::base;
    use crate::types::PEER_ID_LEN;

    fn id(n: u32) -> MessageId {
        MessageId::of(&n.to_le_bytes())
    }

    const PEER: PeerId = PeerId::from_bytes([1; PEER_ID_LEN]);

    fn back(recent: &mut Recent, peer: PeerId, now: Instant) -> Vec<Bytes> {
        recent.back(peer, now).cloned().collect()
    }

    #[test]
    fn a_peer_back_in_the_window_gets_the_messages_from_a_window_before_it_left() {
        let t0 = base();
        let mut recent = Recent::default();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        recent.remember(at(0), &Bytes::from_static(b"too old"));
        recent.remember(at(1_000), &Bytes::from_static(b"in flight"));
        recent.left(PEER, at(2_500));
        recent.remember(at(3_000), &Bytes::from_static(b"while away"));
        // Left at 2.5 s: from 0.5 s on. The message of 0 s is also forgotten by now (older
        // than the window when the last one came).
        assert_eq!(
            back(&mut recent, PEER, at(4_000)),
            [&b"in flight"[..], b"while away"]
        );
        // Once only; a peer never seen gets nothing.
        assert!(back(&mut recent, PEER, at(4_000)).is_empty());
        let other = PeerId::from_bytes([2; PEER_ID_LEN]);
        assert!(back(&mut recent, other, at(4_000)).is_empty());
        // Back later than the window: a new peer.
        recent.left(PEER, at(5_000));
        assert!(back(&mut recent, PEER, at(7_001)).is_empty());
    }

    #[test]
    fn recent_messages_and_peers_that_left_stay_within_their_bounds() {
        let now = base();
        let mut recent = Recent::default();
        for n in 0..2 * RECENT_MAX_MESSAGES as u32 {
            recent.remember(now, &Bytes::copy_from_slice(&n.to_le_bytes()));
        }
        assert_eq!(recent.messages.len(), RECENT_MAX_MESSAGES);
        assert_eq!(recent.bytes, 4 * RECENT_MAX_MESSAGES);
        // The newest are kept.
        let last = 2 * RECENT_MAX_MESSAGES as u32 - 1;
        assert_eq!(recent.messages.back().unwrap().1, &last.to_le_bytes()[..]);
        // Bytes: a few large messages.
        let big = Bytes::from(vec![0; RECENT_MAX_BYTES / 3 + 1]);
        for _ in 0..5 {
            recent.remember(now, &big);
        }
        assert!(recent.bytes <= RECENT_MAX_BYTES, "{}", recent.bytes);
        assert_eq!(recent.messages.len(), 2);
        // Peers that left: at most RECENT_MAX_MESSAGES, the stale ones dropped for new ones.
        for n in 0..2 * RECENT_MAX_MESSAGES {
            let mut peer = [0; PEER_ID_LEN];
            peer[..8].copy_from_slice(&(n as u64).to_le_bytes());
            recent.left(PeerId::from_bytes(peer), now);
        }
        assert_eq!(recent.left.len(), RECENT_MAX_MESSAGES);
        recent.left(PEER, now + RESEND_WINDOW + Duration::from_millis(1));
        assert_eq!(recent.left.len(), 1, "the stale ones went for the new one");
    }

    #[test]
    fn a_remembered_message_is_a_copy_not_a_slice_of_the_read_buffer() {
        let read = Bytes::from(vec![7u8; 4096]);
        let mut recent = Recent::default();
        recent.remember(base(), &read.slice(10..20));
        let kept = &recent.messages[0].1;
        assert_eq!(&kept[..], &read[10..20]);
        let inside = read.as_ptr_range().contains(&kept.as_ptr());
        assert!(!inside, "a kept message pins the read buffer");
    }

    #[test]
    fn a_new_id_is_accepted_once() {
        let mut seen = SeenSet::new(4);
        assert!(seen.is_empty());
        assert!(seen.insert(id(1)));
        assert!(!seen.insert(id(1)));
        assert!(seen.contains(&id(1)));
        assert_eq!(seen.len(), 1);
    }

    #[test]
    fn a_full_set_forgets_the_oldest_first() {
        let mut seen = SeenSet::new(3);
        for n in 0..3 {
            assert!(seen.insert(id(n)));
        }
        assert!(seen.insert(id(3)));
        assert_eq!(seen.len(), 3);
        assert!(!seen.contains(&id(0)), "the oldest is forgotten");
        assert!((1..4).all(|n| seen.contains(&id(n))));
        // A duplicate does not refresh or evict anything.
        assert!(!seen.insert(id(1)));
        assert!(seen.insert(id(4)));
        assert!(!seen.contains(&id(1)));
        assert!(seen.contains(&id(2)));
    }

    #[test]
    fn a_forgotten_id_counts_as_new_again() {
        let mut seen = SeenSet::new(1);
        assert!(seen.insert(id(1)));
        assert!(seen.insert(id(2)));
        assert!(
            seen.insert(id(1)),
            "re-delivered after eviction, as documented"
        );
    }

    #[test]
    fn zero_capacity_is_taken_as_one() {
        let mut seen = SeenSet::new(0);
        assert_eq!(seen.capacity(), 1);
        assert!(seen.insert(id(1)));
        assert!(!seen.insert(id(1)));
    }

    #[test]
    fn the_set_never_grows_past_its_capacity() {
        let mut seen = SeenSet::new(100);
        for n in 0..10_000 {
            seen.insert(id(n % 250));
            assert!(seen.len() <= 100);
        }
    }

    #[test]
    fn ids_are_sha256_and_display_short() {
        let id = MessageId::of(b"abc");
        // SHA-256("abc") from FIPS 180-2.
        assert_eq!(id.to_string(), "ba7816bf8f01");
        assert!(format!("{id:?}").ends_with("f20015ad)"));
        assert_eq!(MessageId::from_bytes(*id.as_bytes()), id);
    }

    #[test]
    fn the_channel_caps_messages_at_the_configured_size() {
        let c = gossip_channel();
        assert_eq!(c.id, GOSSIP_CHANNEL);
        assert_eq!(c.recv_message_capacity, DEFAULT_MAX_MESSAGE_SIZE);
        assert_eq!(c.send_queue_capacity, SEND_QUEUE_CAPACITY);
        c.validate().unwrap();
        let small = GossipConfig {
            max_message_size: 100,
            ..GossipConfig::default()
        }
        .channel();
        assert_eq!(small.recv_message_capacity, 100);
        assert_eq!(small.recv_buffer_capacity, 100);
    }
}
