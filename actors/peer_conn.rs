//! [`PeerConn`]: one verified connection to a peer, driving the sans-IO
//! [`MConnection`] core over a [`SecretStream`].
//!
//! Protocol rules (scheduling, packets, limits, keep-alive) live in [`crate::mconn`]; this file
//! only moves bytes and wakes tasks, following the driver protocol in the `mconn` module docs.
//!
//! ## Threads and ownership
//!
//! No packet goes through an actor mailbox. Two tokio tasks do the I/O, on the runtime given
//! to [`PeerConn::start`] (a multi-thread runtime lets sealing and opening of many peers use
//! all cores; by default, the caller's runtime):
//!
//! - the **writer task** owns the write half. The [`MConnSender`] (queues, scheduler, timers)
//!   sits behind a `std::sync::Mutex` shared with every [`PeerHandle`]; the lock is held for
//!   one `try_send` or one `poll_transmit` into the writer's own buffer, never across an
//!   `await`. A [`Notify`] wakes the writer when a message is queued; it otherwise sleeps
//!   until the core's `poll_timeout`. Another `Notify` wakes senders waiting for room.
//! - the **reader task** owns the read half and the [`MConnReceiver`]; it relays pings and
//!   pongs to the sender under the same lock and delivers whole messages to the channel's
//!   reactor as [`Receive`] (or, for a batched reactor, as [`ReceiveBatch`]es: what it
//!   decoded until the socket had nothing more, at most [`MAX_BATCH`] messages or messages
//!   holding [`ACK_EVERY_BYTES`] bytes each). Single-packet messages are slices of the read's
//!   buffer. Delivery is bounded per channel: messages are pushed into the reactor's mailbox
//!   and every [`ACK_EVERY_MESSAGES`] messages (or messages holding [`ACK_EVERY_BYTES`] bytes)
//!   one push is sent with an answer; with [`MAX_ACKS`] answers outstanding the reader waits
//!   for the oldest, so a slow reactor makes reads from this peer wait.
//!
//! The actor itself owns nothing hot: the shared state, the tasks' abort handles and the
//! supervisor's recipient.
//!
//! The writer never waits on the socket without a deadline: a write or flush that the peer's
//! full socket blocks wakes at the core's `deadline()` (pong timeout, `write_timeout`) or the
//! drain's end, so a peer that stops reading ends as [`DisconnectReason::SlowReader`].
//!
//! ## Metrics
//!
//! With [`PeerConnConfig::metrics`] set, the connection counts payload bytes per channel into
//! that registry: queued messages under the send lock (the counter sits next to the channel's
//! queue), delivered messages in the reader (the counter sits in the channel's reactor link);
//! each is one relaxed atomic add plus one for the node-wide total. Messages not queued are
//! counted by reason. Scrapes read the send queues through a weak reference. The connection's
//! per-peer series are removed just before it reports [`PeerStopped`].
//!
//! ## Adding a channel to a live connection
//!
//! [`PeerHandle::add_channel`] (or [`AddChannel`]) gives the connection a new channel and its
//! reactor, for a reactor registered after the peer connected. Under the send lock it adds the
//! channel to the [`MConnSender`] (which checks it: valid, unique id, at most
//! [`MAX_CHANNELS`](crate::mconn::MAX_CHANNELS)), appends it to a pending list in the same
//! locked state and sets an `AtomicBool`. The reader task owns the [`MConnReceiver`] and the
//! reactor map, so it applies the pending list itself: after each `read` returns and before
//! the chunk goes to `handle_bytes`, it loads the flag (one atomic load per chunk, no lock,
//! nothing per packet) and, if set, takes the list under the lock and adds each channel to the
//! receiver and the map.
//!
//! **Guarantee:** once `add_channel` returned `Ok`, messages may be sent on the channel, and
//! every packet on it that is completed by a chunk the reader reads after that is accepted and
//! delivered to the new reactor: that chunk's flag check comes after the `Ok`. This includes a
//! packet whose first bytes were read and buffered earlier, since the receiver matches a
//! packet to its channel only once it is complete. A packet on the channel completed by a
//! chunk read before the `Ok` is `UnknownChannel` and ends the connection, as before. So the
//! remote may use the channel as soon as this side's `add_channel` returned, and this side as
//! soon as the remote's did: whoever adds channels on both ends (the Switch, from the peers'
//! NodeInfo) must not send on a channel before the other end has it.
//!
//! ## Messages
//!
//! | receives | from | answer |
//! | --- | --- | --- |
//! | [`SendMessage`] | Switch, reactors | `true` once queued, `false` after `send_timeout` |
//! | [`TrySendMessage`] | Switch, reactors | `true` if queued now |
//! | [`AddChannel`] | Switch | `Ok` once added; see [`PeerHandle::add_channel`] |
//! | [`Stop`] | Switch | — (a graceful reason drains first, up to `drain_timeout`) |
//!
//! It sends [`Receive`] to reactors and, exactly once when it ends, [`PeerStopped`] to its
//! supervisor, after both tasks have ended (so no `Receive` from this connection follows it).

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use actix::dev::RecipientRequest;
use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use futures::future::Either;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinHandle};

use super::clock;
use super::metrics::{ConnMetrics, DropReason, Metrics, QueueProbe};
use super::reactor::{
    Delivery, DeliveryKind, DisconnectReason, Handled, MAX_BATCH, Receive, ReceiveBatch,
};
use super::secret_stream::SecretStream;
use crate::config::P2pConfig;
use crate::mconn::{
    ChannelDescriptor, Event, Gather, MConnConfig, MConnConfigError, MConnReceiver, MConnSender,
    MConnection, TrySendError,
};
use crate::types::PeerId;

/// A delivery with an answer is requested after this many messages to one channel's reactor.
pub const ACK_EVERY_MESSAGES: usize = 64;

/// A delivery with an answer is requested after messages to one channel's reactor that hold
/// this many bytes (whichever of this and [`ACK_EVERY_MESSAGES`] comes first). What a message
/// holds is its own allocation (its length) or, for a slice of a read's buffer, that buffer
/// (4 KiB), counted once per buffer: a peer whose small messages each arrive in a
/// read of their own cannot make a few bytes of payload pin a whole buffer each, uncounted.
pub const ACK_EVERY_BYTES: usize = 256 * 1024;

/// Answered deliveries outstanding per channel before the reader waits for the oldest. A
/// reactor's mailbox thus holds at most about `(MAX_ACKS + 1) ×` [`ACK_EVERY_MESSAGES`]
/// messages (`(MAX_ACKS + 1) ×` [`MAX_BATCH`] for a batched reactor), and
/// `(MAX_ACKS + 1) × (`[`ACK_EVERY_BYTES`]` + recv_message_capacity)` bytes held, per peer
/// and channel. Two let the reactor work on one group while the next is delivered.
pub const MAX_ACKS: usize = 2;

/// Bytes the reader asks for per `read` (the secret stream fills it with every whole frame it
/// has buffered). The buffer is released while a read waits, so an idle connection holds none.
/// Chunks that grew to 16 KiB while reads filled them cost about 4 % less CPU per byte on a
/// 1 MiB stream but raised the 256-node testnet's p99 by 3-9 % and its peak RSS by 5-8 %
/// (docs/PERFORMANCE.md); 64 KiB ones were no better than 4 KiB.
const READ_CHUNK: usize = 4096;

/// Bytes a reader reads in a row (the socket never running dry) before it yields to the
/// runtime once. A tokio worker that finds a task ready while polling the I/O driver keeps it
/// in its own unstealable LIFO slot, so a connection's reader and the writer feeding it can
/// end up taking turns on one worker while the other idles: on 2 cores a 1 MiB stream then
/// used 1.3-1.5 cores in about half the runs instead of 1.8-1.9. A yield puts the reader in
/// the worker's stealable queue and wakes an idle worker to take it. Once per MiB costs
/// nothing measurable; once per 256 KiB cost 4 % CPU per byte (docs/PERFORMANCE.md).
const YIELD_EVERY: usize = 1024 * 1024;

/// The most the writer task's packet buffer keeps while nothing is queued; a larger one (grown
/// to a 64 KiB batch by a burst) is released, so a connection that was busy once holds no
/// batch-sized buffer while it is quiet.
const IDLE_WRITE_BUFFER: usize = 4096;

/// What a [`PeerConn`] needs besides the stream and channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConnConfig {
    /// The multiplexed connection's settings (payload size, keep-alive, flush, rates).
    pub mconn: MConnConfig,
    /// How long [`PeerHandle::send`] and [`SendMessage`] wait for room in a full channel
    /// queue before answering false. Default 10 s (TM2's `defaultSendTimeout`).
    pub send_timeout: Duration,
    /// Where the connection counts its bytes (per channel), drops and send queues; its
    /// per-peer series are removed when it ends. Default `None`: counted, not registered.
    pub metrics: Option<Metrics>,
    /// On a graceful [`Stop`] ([`DisconnectReason::Stopped`] or
    /// [`DisconnectReason::Shutdown`]), how long the writer may keep writing what is already
    /// queued before the connection closes; zero closes at once. Default 500 ms (the node's
    /// `drain_timeout`).
    pub drain_timeout: Duration,
    /// The channels the peer advertised (its NodeInfo): sends on any other channel are
    /// refused ([`PeerHandle::try_send`] answers false), since the peer would drop the
    /// connection. `None` (the default): every channel of this connection.
    pub peer_channels: Option<Vec<u8>>,
}

impl Default for PeerConnConfig {
    fn default() -> Self {
        Self {
            mconn: MConnConfig::default(),
            send_timeout: Duration::from_secs(10),
            metrics: None,
            drain_timeout: Duration::from_millis(500),
            peer_channels: None,
        }
    }
}

impl From<&P2pConfig> for PeerConnConfig {
    fn from(c: &P2pConfig) -> Self {
        Self {
            mconn: MConnConfig::from(c),
            send_timeout: c.send_timeout,
            metrics: None,
            drain_timeout: c.drain_timeout,
            peer_channels: None,
        }
    }
}

/// The actor of one peer connection. Created with [`PeerConn::start`]; see the module docs.
pub struct PeerConn {
    /// The state shared with the tasks and every [`PeerHandle`]; also answers the send
    /// messages.
    handle: PeerHandle,
    /// Told once, in `stopping`, why the connection ended.
    supervisor: Recipient<PeerStopped>,
    /// The reader and writer tasks; aborted on [`Stop`] and when the actor goes away.
    tasks: [AbortOnDrop; 2],
    /// Set by the watcher future once both tasks have ended; only then is the end reported.
    tasks_done: bool,
    /// Set when [`PeerStopped`] has been sent, so it is sent once.
    reported: bool,
}

impl PeerConn {
    /// Starts the connection over an upgraded stream: its peer id is the authenticated one.
    /// With `io`, the socket's readiness registration moves to that runtime too
    /// ([`SecretStream::register_with`]), unless the stream is already on an I/O runtime
    /// ([`SecretStream::is_on_io_runtime`]). See [`start_split`](Self::start_split).
    pub fn start(
        mut stream: SecretStream,
        config: PeerConnConfig,
        channels: Vec<(ChannelDescriptor, Delivery)>,
        supervisor: Recipient<PeerStopped>,
        io: Option<Handle>,
    ) -> Result<(Addr<Self>, PeerHandle), MConnConfigError> {
        let peer = stream.remote_id();
        if let Some(io) = &io
            && !stream.is_on_io_runtime()
        {
            // On error the socket stays registered where it was: correct, only slower.
            let _ = stream.register_with(io);
        }
        let (reader, writer) = stream.into_split();
        Self::start_split(reader, writer, peer, config, channels, supervisor, io)
    }

    /// Starts the connection over any pair of stream halves (the secret stream's, after the
    /// NodeInfo exchange). `channels` pairs each channel with the reactor its messages go to;
    /// the descriptor order is the scheduler's tie-break. The reader and writer tasks run on
    /// `io`, or on the current runtime when `None`. The halves' socket stays registered with
    /// the runtime it was made on; for a [`SecretStream`] made elsewhere than `io`, call
    /// [`SecretStream::register_with`] first, as [`start`](Self::start) does.
    ///
    /// Fails, before any task starts, when the config or the channel set is invalid.
    ///
    /// # Panics
    ///
    /// Outside an actix system (like any actor creation).
    pub fn start_split<R, W>(
        reader: R,
        writer: W,
        peer: PeerId,
        config: PeerConnConfig,
        channels: Vec<(ChannelDescriptor, Delivery)>,
        supervisor: Recipient<PeerStopped>,
        io: Option<Handle>,
    ) -> Result<(Addr<Self>, PeerHandle), MConnConfigError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let descriptors: Vec<ChannelDescriptor> = channels.iter().map(|(d, _)| *d).collect();
        let (mut sender, receiver) =
            MConnection::new(&config.mconn, &descriptors, clock::now())?.into_split();
        if let Some(peer_channels) = &config.peer_channels {
            sender.set_peer_channels(peer_channels);
        }
        let metrics = ConnMetrics::new(config.metrics, peer);
        let sent = descriptors
            .iter()
            .map(|d| (d.id, metrics.sent(d.id)))
            .collect();
        let links = channels
            .into_iter()
            .map(|(d, reactor)| ReactorLink::new(&d, reactor, &metrics))
            .collect();
        let shared = Arc::new(Shared {
            peer,
            send_timeout: config.send_timeout,
            drain_timeout: config.drain_timeout,
            conn: std::sync::OnceLock::new(),
            state: Mutex::new(SendState {
                sender,
                reason: None,
                draining: None,
                added: Vec::new(),
                sent,
            }),
            closed: AtomicBool::new(false),
            channels_added: AtomicBool::new(false),
            writer_wake: Notify::new(),
            room: Notify::new(),
            room_waiters: AtomicUsize::new(0),
            metrics,
        });
        let probe: Weak<dyn QueueProbe> = Arc::downgrade(&shared) as Weak<Shared>;
        shared.metrics.watch_queues(probe);
        let io = io.unwrap_or_else(Handle::current);
        // The halves and the receiver are boxed: an async fn keeps its arguments and the
        // locals they move into in separate slots of the task, so big ones would count twice.
        let reader_task = io.spawn(read_loop(
            shared.clone(),
            Box::new(reader),
            Box::new(receiver),
            links,
        ));
        let writer_task = io.spawn(write_loop(shared.clone(), Box::new(writer)));
        let handle = PeerHandle { shared };
        let addr = Self::create(|ctx| {
            let _ = handle.shared.conn.set(ctx.address().downgrade());
            let tasks = [
                AbortOnDrop(reader_task.abort_handle()),
                AbortOnDrop(writer_task.abort_handle()),
            ];
            let watcher = watch_tasks(handle.shared.clone(), reader_task, writer_task);
            ctx.spawn(
                actix::fut::wrap_future::<_, Self>(watcher).map(|(), act, ctx| {
                    act.tasks_done = true;
                    ctx.stop();
                }),
            );
            Self {
                handle: handle.clone(),
                supervisor,
                tasks,
                tasks_done: false,
                reported: false,
            }
        });
        Ok((addr, handle))
    }

    /// Closes the connection with `reason` (unless it already ended; a drain in progress
    /// keeps its own reason) and aborts both tasks; the watcher then stops the actor.
    fn close(&self, reason: DisconnectReason) {
        self.handle.shared.close(reason);
        for task in &self.tasks {
            task.0.abort();
        }
    }
}

impl Actor for PeerConn {
    type Context = Context<Self>;

    fn stopping(&mut self, _ctx: &mut Self::Context) -> Running {
        if !self.tasks_done {
            // Stopped from outside before the tasks ended: end them, and report only once
            // they have (the watcher stops the actor again), so no `Receive` follows the report.
            self.close(DisconnectReason::Shutdown);
            return Running::Continue;
        }
        if !self.reported {
            self.reported = true;
            let shared = &self.handle.shared;
            // Before the report, so a replacing connection to the same peer (started after
            // it) never has its series removed.
            let channels: Vec<u8> = shared.lock().sent.iter().map(|(id, _)| *id).collect();
            shared.metrics.remove(channels);
            let reason = shared.reason().unwrap_or(DisconnectReason::Shutdown);
            // A control message sent once per connection: it must not be lost to a full
            // mailbox (a supervisor that misses it would keep a dead peer), so do_send.
            #[allow(clippy::disallowed_methods)]
            self.supervisor.do_send(PeerStopped {
                peer: self.handle.shared.peer,
                reason,
            });
        }
        Running::Stop
    }
}

impl fmt::Debug for PeerConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerConn")
            .field("peer", &self.handle.shared.peer)
            .field("tasks_done", &self.tasks_done)
            .finish_non_exhaustive()
    }
}

/// Sent once to the supervisor when a [`PeerConn`] has ended, after its tasks ended.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct PeerStopped {
    /// The peer whose connection ended.
    pub peer: PeerId,
    /// Why: the first cause (an error of either task, or a [`Stop`]).
    pub reason: DisconnectReason,
}

/// Queue `payload` on `channel`, waiting up to `send_timeout` for room. Answers false on
/// timeout, for an unknown channel, or once the connection ended.
#[derive(Debug, Clone, Message)]
#[rtype(result = "bool")]
pub struct SendMessage {
    /// The channel id.
    pub channel: u8,
    /// The message.
    pub payload: Bytes,
}

impl Handler<SendMessage> for PeerConn {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, msg: SendMessage, _ctx: &mut Self::Context) -> Self::Result {
        let handle = self.handle.clone();
        Box::pin(async move { handle.send(msg.channel, msg.payload).await })
    }
}

/// Queue `payload` on `channel` if there is room now. Answers false when the queue is full,
/// for an unknown channel, or once the connection ended.
#[derive(Debug, Clone, Message)]
#[rtype(result = "bool")]
pub struct TrySendMessage {
    /// The channel id.
    pub channel: u8,
    /// The message.
    pub payload: Bytes,
}

impl Handler<TrySendMessage> for PeerConn {
    type Result = bool;

    fn handle(&mut self, msg: TrySendMessage, _ctx: &mut Self::Context) -> bool {
        self.handle.try_send(msg.channel, msg.payload)
    }
}

/// Add a channel and its reactor to the live connection; see [`PeerHandle::add_channel`].
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), AddChannelError>")]
pub struct AddChannel {
    /// The new channel.
    pub desc: ChannelDescriptor,
    /// Where messages arriving on it go (`recipient.into()` for a raw reactor).
    pub reactor: Delivery,
}

impl Handler<AddChannel> for PeerConn {
    type Result = Result<(), AddChannelError>;

    fn handle(&mut self, msg: AddChannel, _ctx: &mut Self::Context) -> Self::Result {
        self.handle.add_channel(msg.desc, msg.reactor)
    }
}

/// Why [`PeerHandle::add_channel`] refused a channel. The connection is unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddChannelError {
    /// The descriptor is invalid, its id is in use on this connection, or the connection has
    /// [`MAX_CHANNELS`](crate::mconn::MAX_CHANNELS) channels already.
    #[error("channel refused: {0}")]
    Config(#[from] MConnConfigError),
    /// The connection has ended.
    #[error("the connection has ended")]
    Closed,
}

/// End the connection with `reason` (ignored if it already ended or is draining for another
/// reason); the supervisor gets [`PeerStopped`] once the tasks ended.
///
/// A graceful stop, [`DisconnectReason::Stopped`] or [`DisconnectReason::Shutdown`], drains
/// first (CometBFT's `FlushStop`, bounded): new sends are refused at once, the messages
/// already queued are written and flushed for up to `drain_timeout`, the write half is shut
/// down (the peer reads an orderly end after the last message), and the connection closes
/// when the peer closes its side or the time is up, whichever comes first. Anything still
/// queued then is dropped. Every other reason (an error, [`DisconnectReason::Misbehaved`]),
/// and a zero `drain_timeout`, close at once and drop what is queued.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Stop {
    /// Reported in [`PeerStopped`]: typically [`DisconnectReason::Misbehaved`],
    /// [`DisconnectReason::Stopped`] or [`DisconnectReason::Shutdown`].
    pub reason: DisconnectReason,
}

impl Handler<Stop> for PeerConn {
    type Result = ();

    fn handle(&mut self, msg: Stop, _ctx: &mut Self::Context) {
        let graceful = matches!(
            msg.reason,
            DisconnectReason::Stopped(_) | DisconnectReason::Shutdown
        );
        if graceful && self.handle.shared.start_drain(&msg.reason) {
            return;
        }
        self.close(msg.reason);
    }
}

/// Sends to one peer without going through its actor: cheap to clone, usable from any thread.
/// Reactors and the Switch's broadcast call it directly, so sending never blocks on, or
/// queues in, the peer's mailbox.
#[derive(Clone)]
pub struct PeerHandle {
    /// Shared with the connection's tasks.
    shared: Arc<Shared>,
}

impl PeerHandle {
    /// The peer's id.
    pub fn id(&self) -> PeerId {
        self.shared.peer
    }

    /// Disconnects the peer for a reason of this node's (an operator command, a reactor that
    /// is done with it), as [`DisconnectPeer`](crate::DisconnectPeer) does: what is queued
    /// drains for up to `drain_timeout`, then the connection closes; every reactor gets
    /// `PeerRemoved` with [`DisconnectReason::Stopped`]. No Switch address needed.
    /// Idempotent; nothing happens once the connection has ended.
    pub fn disconnect(&self, reason: impl Into<String>) {
        self.stop(DisconnectReason::Stopped(reason.into()));
    }

    /// Stops the peer for misbehaving (a message a reactor judged bad), as
    /// [`StopPeerForError`](crate::StopPeerForError) does: at once, nothing drained; reported
    /// as [`DisconnectReason::Misbehaved`], the peer's fault (peer exchange bans its address
    /// for a while).
    pub fn stop_for_error(&self, reason: impl Into<String>) {
        self.stop(DisconnectReason::Misbehaved(reason.into()));
    }

    fn stop(&self, reason: DisconnectReason) {
        if let Some(conn) = self.shared.conn.get().and_then(actix::WeakAddr::upgrade) {
            // A control message, at most one per call; the actor handles repeats.
            #[allow(clippy::disallowed_methods)]
            conn.do_send(Stop { reason });
        }
    }

    /// The channels this handle can send on: the connection's channels that the peer
    /// advertised (its NodeInfo), in the scheduler's tie-break order.
    pub fn channels(&self) -> Vec<u8> {
        self.shared.lock().sender.channels()
    }

    /// Whether this handle can send on `channel`: the connection has it and the peer
    /// advertised it. Sending on any other channel answers false and leaves the connection
    /// alone (the peer would drop it on a packet for a channel it lacks).
    pub fn has_channel(&self, channel: u8) -> bool {
        self.shared.lock().sender.has_channel(channel)
    }

    /// The largest message accepted on `channel`: its `recv_message_capacity`, the limit the
    /// peer enforces with the same descriptor. `None` for a channel the connection lacks.
    pub fn max_message_size(&self, channel: u8) -> Option<usize> {
        self.shared.lock().sender.max_message_size(channel)
    }

    /// Payload bytes waiting in this connection's send queues (including the unsent rest of
    /// messages being split into packets); see the per-peer memory bound in
    /// `docs/ARCHITECTURE.md`.
    pub fn queued_bytes(&self) -> usize {
        self.shared.lock().sender.queued_bytes()
    }

    /// Queues `payload` on `channel` if its queue has room now. Never blocks. False, with
    /// nothing queued and the connection left alone, when: the queue is full; the channel is
    /// not one the peer advertised (see [`has_channel`](Self::has_channel)); the message is
    /// longer than the channel's `recv_message_capacity` (see
    /// [`max_message_size`](Self::max_message_size); the peer would drop the connection on
    /// it); or the connection ended or is draining. Each refusal is counted in
    /// `tm2p2p_messages_dropped_total` with its own reason.
    pub fn try_send(&self, channel: u8, payload: Bytes) -> bool {
        self.shared
            .offer_or_count(channel, payload, DropReason::SendQueueFull)
    }

    /// [`try_send`](Self::try_send) for the Switch's `Broadcast`: a full queue is counted as
    /// a broadcast drop.
    pub(crate) fn try_broadcast(&self, channel: u8, payload: Bytes) -> bool {
        self.shared
            .offer_or_count(channel, payload, DropReason::BroadcastQueueFull)
    }

    /// [`send`](Self::send) of `message` encoded for a typed channel (see
    /// [`try_send_typed`](Self::try_send_typed)).
    pub async fn send_typed<T: serde::Serialize + ?Sized>(
        &self,
        channel: u8,
        message: &T,
    ) -> Result<bool, crate::codec::EncodeError> {
        Ok(self
            .send(channel, crate::codec::encode(message)?.into())
            .await)
    }

    /// [`try_send`](Self::try_send) of `message` encoded for a typed channel
    /// ([`RegisterReactor::typed`](crate::RegisterReactor::typed)): bincode, standard
    /// configuration, as the peer's connection decodes it.
    pub fn try_send_typed<T: serde::Serialize + ?Sized>(
        &self,
        channel: u8,
        message: &T,
    ) -> Result<bool, crate::codec::EncodeError> {
        Ok(self.try_send(channel, crate::codec::encode(message)?.into()))
    }

    /// Queues `payload` on `channel`, waiting up to the configured `send_timeout` for room.
    /// False on timeout, and at once for whatever [`try_send`](Self::try_send) refuses
    /// besides a full queue (a channel the peer lacks, a message over the channel's limit, a
    /// connection that ended or is draining).
    pub async fn send(&self, channel: u8, payload: Bytes) -> bool {
        self.send_timeout(channel, payload, self.shared.send_timeout)
            .await
    }

    /// Like [`send`](Self::send) with an explicit timeout.
    pub async fn send_timeout(&self, channel: u8, payload: Bytes, timeout: Duration) -> bool {
        // The common case, a queue with room, costs one offer: no clock read, no waiter. The
        // wait is boxed: inline, its state (a `Notified`, a timer) made this future a few
        // hundred bytes that a sender's loop copied on every call; boxed, a wait costs one
        // allocation, and only a full queue waits.
        match self.shared.offer_unless_full(channel, payload) {
            Ok(queued) => queued,
            Err(back) => Box::pin(self.wait_for_room(channel, back, timeout)).await,
        }
    }

    /// The rest of [`send_timeout`](Self::send_timeout) once the queue was full.
    async fn wait_for_room(&self, channel: u8, mut payload: Bytes, timeout: Duration) -> bool {
        let deadline = clock::now()
            .checked_add(timeout)
            .map(tokio::time::Instant::from_std);
        // Counted while this sender may wait, so the writer signals room only when someone
        // waits for it.
        let _waiting = RoomWaiter::new(&self.shared);
        loop {
            // Registered before trying, so room made in between is not missed.
            let room = self.shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.shared.offer_unless_full(channel, payload) {
                Ok(queued) => return queued,
                Err(back) => payload = back,
            }
            match deadline {
                Some(at) => {
                    if tokio::time::timeout_at(at, room).await.is_err() {
                        self.shared.metrics.dropped(DropReason::SendQueueFull);
                        return false;
                    }
                }
                None => room.await,
            }
        }
    }

    /// Adds channel `desc` to the live connection, delivering what arrives on it to `reactor`.
    /// Same checks as at start (a valid descriptor, an id not in use, at most
    /// [`MAX_CHANNELS`](crate::mconn::MAX_CHANNELS)); the channel goes last in the scheduler's
    /// tie-break order; messages in flight on other channels are untouched. Never blocks on
    /// I/O: it takes the send lock briefly.
    ///
    /// Once it returns `Ok`, sends on the channel are accepted, and every packet on it that
    /// the reader reads from then on is delivered to `reactor` (the exact guarantee is in the
    /// [module docs](self#adding-a-channel-to-a-live-connection)). The remote must add the
    /// channel too before this side sends on it.
    pub fn add_channel(
        &self,
        desc: ChannelDescriptor,
        reactor: impl Into<Delivery>,
    ) -> Result<(), AddChannelError> {
        let reactor = reactor.into();
        let mut state = self.shared.lock();
        if state.reason.is_some() {
            return Err(AddChannelError::Closed);
        }
        state.sender.add_channel(desc)?;
        state
            .sent
            .push((desc.id, self.shared.metrics.sent(desc.id)));
        // Under the lock, so the reader sees the additions in the sender's order, and the
        // flag is never cleared with an addition left in the list.
        state.added.push((desc, reactor));
        self.shared.channels_added.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether the connection has ended (every send answers false from then on).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}

impl fmt::Debug for PeerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerHandle")
            .field("peer", &self.shared.peer)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// State shared by the actor, the tasks and the handles of one connection.
struct Shared {
    /// The peer's authenticated id.
    peer: PeerId,
    /// Default wait of [`PeerHandle::send`].
    send_timeout: Duration,
    /// How long a graceful [`Stop`] may drain the queues.
    drain_timeout: Duration,
    /// The connection's actor, for [`PeerHandle::disconnect`] and
    /// [`PeerHandle::stop_for_error`]; weak, as the actor holds this state.
    conn: std::sync::OnceLock<actix::WeakAddr<PeerConn>>,
    /// The send half and the end reason, under one short-held lock.
    state: Mutex<SendState>,
    /// Mirrors `state.reason.is_some()` for lock-free checks.
    closed: AtomicBool,
    /// Set when `state.added` is not empty; the reader checks it once per read chunk.
    channels_added: AtomicBool,
    /// Wakes the writer: a message was queued, a pong requested, or the connection closed.
    writer_wake: Notify,
    /// Wakes senders waiting for room: the writer took messages out of the queues, or the
    /// connection closed.
    room: Notify,
    /// Senders that may be waiting on `room` ([`RoomWaiter`]): the writer signals room only
    /// when this is not zero (`Notify::notify_waiters` takes a lock even with no waiter).
    room_waiters: AtomicUsize,
    /// Byte and drop counters; the per-peer series are removed when the actor reports.
    metrics: ConnMetrics,
}

/// The part of [`Shared`] behind the lock.
struct SendState {
    /// Queues, scheduler, keep-alive and send rate.
    sender: MConnSender,
    /// Why the connection ended: set once, by whoever ends it first.
    reason: Option<DisconnectReason>,
    /// Set by a graceful [`Stop`]: its reason (which the connection ends with, whoever ends
    /// it) and the instant the drain must end. While set, sends are refused and the writer
    /// ends once the queues are written. Boxed: set at most once, and unboxed it would add 48
    /// bytes to every connection's shared state.
    draining: Option<Box<(DisconnectReason, Instant)>>,
    /// Channels added to `sender` that the reader has not yet added to its receiver and
    /// reactor map, in the order they were added.
    added: Vec<(ChannelDescriptor, Delivery)>,
    /// Every channel of `sender` with its counter of payload bytes queued (at most 16, so a
    /// linear search).
    sent: Vec<(u8, Counter)>,
}

impl SendState {
    /// Whether the writer may go on at `now`: not if the connection ended, the drain's time
    /// is up, or the core's timers fail (pong timeout, no write progress).
    fn check(&mut self, now: Instant) -> Result<(), DisconnectReason> {
        if let Some(reason) = &self.reason {
            return Err(reason.clone());
        }
        if let Some((reason, until)) = self.draining.as_deref()
            && now >= *until
        {
            return Err(reason.clone());
        }
        self.sender.handle_timeout(now)?;
        Ok(())
    }

    /// When a blocked write or flush must wake to [`check`](Self::check): the core's
    /// deadline or the drain's end.
    fn deadline(&self) -> Option<Instant> {
        let drain = self.draining.as_deref().map(|(_, until)| *until);
        match (self.sender.deadline(), drain) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Counts a sender in [`Shared::room_waiters`] while it lives.
struct RoomWaiter<'a>(&'a Shared);

impl<'a> RoomWaiter<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.room_waiters.fetch_add(1, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for RoomWaiter<'_> {
    fn drop(&mut self) {
        self.0.room_waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What [`Shared::offer`] did with a message.
enum Offer {
    /// Queued; the writer was woken.
    Queued,
    /// The channel's queue is full; the message is handed back.
    Full(Bytes),
    /// The connection does not have this channel, or the peer did not advertise it.
    UnknownChannel,
    /// The message is over the channel's `recv_message_capacity`.
    TooLarge,
    /// The connection has ended or is draining.
    Closed,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, SendState> {
        // A panic while holding the lock is a bug that also ends the task; the watcher then
        // closes the connection, so the possibly inconsistent state is only read to refuse.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn offer(&self, channel: u8, payload: Bytes) -> Offer {
        let len = payload.len() as u64;
        let result = {
            let mut state = self.lock();
            if state.reason.is_some() || state.draining.is_some() {
                return Offer::Closed;
            }
            let result = state.sender.try_send(channel, payload);
            if result.is_ok()
                && let Some((_, sent)) = state.sent.iter().find(|(id, _)| *id == channel)
            {
                sent.inc_by(len);
            }
            result
        };
        match result {
            Ok(()) => {
                self.metrics.sent_total.inc_by(len);
                self.writer_wake.notify_one();
                Offer::Queued
            }
            Err(TrySendError::Full { payload, .. }) => Offer::Full(payload),
            Err(TrySendError::UnknownChannel { .. }) => Offer::UnknownChannel,
            Err(TrySendError::TooLarge { .. }) => Offer::TooLarge,
        }
    }

    /// Offers `payload`: `Ok(true)` queued, `Ok(false)` refused for good (counted as dropped),
    /// `Err(payload)` handed back because the queue is full (not counted: the caller may wait).
    fn offer_unless_full(&self, channel: u8, payload: Bytes) -> Result<bool, Bytes> {
        match self.offer(channel, payload) {
            Offer::Queued => Ok(true),
            Offer::Full(back) => Err(back),
            refused => {
                self.count_refusal(&refused, DropReason::SendQueueFull);
                Ok(false)
            }
        }
    }

    /// Offers without waiting; a message not queued is counted, a full queue as `full`.
    fn offer_or_count(&self, channel: u8, payload: Bytes, full: DropReason) -> bool {
        let offer = self.offer(channel, payload);
        self.count_refusal(&offer, full);
        matches!(offer, Offer::Queued)
    }

    /// Counts `offer` as a dropped message unless it was queued.
    fn count_refusal(&self, offer: &Offer, full: DropReason) {
        let reason = match offer {
            Offer::Queued => return,
            Offer::Full(_) => full,
            Offer::UnknownChannel => DropReason::UnknownChannel,
            Offer::TooLarge => DropReason::MessageTooLarge,
            Offer::Closed => DropReason::ConnectionClosed,
        };
        self.metrics.dropped(reason);
    }

    /// Ends the connection with `reason` unless it already ended (a drain's reason wins over
    /// `reason`); wakes everyone waiting.
    fn close(&self, reason: DisconnectReason) {
        {
            let mut state = self.lock();
            if state.reason.is_some() {
                return;
            }
            let reason = match state.draining.take() {
                Some(drain) => drain.0,
                None => reason,
            };
            state.reason = Some(reason);
        }
        self.closed.store(true, Ordering::Release);
        self.room.notify_waiters();
        self.writer_wake.notify_one();
    }

    fn reason(&self) -> Option<DisconnectReason> {
        self.lock().reason.clone()
    }

    /// Starts a graceful drain ending in `reason`, unless `drain_timeout` is zero. True when
    /// the stop is taken care of: a drain started, one was already running, or the connection
    /// already ended; false when the caller must close at once.
    fn start_drain(&self, reason: &DisconnectReason) -> bool {
        if self.drain_timeout.is_zero() {
            return false;
        }
        {
            let mut state = self.lock();
            if state.reason.is_some() || state.draining.is_some() {
                return true;
            }
            let Some(until) = clock::now().checked_add(self.drain_timeout) else {
                return false;
            };
            state.draining = Some(Box::new((reason.clone(), until)));
        }
        // Senders waiting for room give up (they would be refused), and the writer, idle or
        // blocked, sees the drain and its deadline.
        self.room.notify_waiters();
        self.writer_wake.notify_one();
        true
    }
}

impl QueueProbe for Shared {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn queue_depths(&self) -> Vec<(u8, usize)> {
        let state = self.lock();
        state
            .sent
            .iter()
            .map(|(id, _)| (*id, state.sender.queued(*id).unwrap_or(0)))
            .collect()
    }
}

/// Aborts a task when dropped (the actor going away, even without `stopping`, ends its I/O).
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Waits for both tasks: when the first ends (its reason is already recorded, unless it
/// panicked), the other is aborted and awaited.
async fn watch_tasks(shared: Arc<Shared>, reader: JoinHandle<()>, writer: JoinHandle<()>) {
    let (first, rest) = match futures::future::select(reader, writer).await {
        Either::Left((r, w)) => (r, w),
        Either::Right((w, r)) => (w, r),
    };
    if let Err(e) = first
        && e.is_panic()
    {
        shared.close(DisconnectReason::Internal(
            "a connection task panicked".into(),
        ));
    }
    // Normally a no-op: the task that ended recorded why.
    shared.close(DisconnectReason::Internal(
        "a connection task ended without a reason".into(),
    ));
    rest.abort();
    let _ = rest.await;
}

/// The writer task: drives the send half and writes to the socket (module docs of `mconn`,
/// "Writer task"), and drains the queues on a graceful [`Stop`].
async fn write_loop<W: AsyncWrite + Unpin>(shared: Arc<Shared>, mut io: Box<W>) {
    let Err(reason) = write_until_end(&shared, &mut *io).await;
    shared.close(reason);
}

/// The writer's loop; returns why it ended (ignored by `close` when the connection had already
/// ended for another reason).
async fn write_until_end<W: AsyncWrite + Unpin>(
    shared: &Shared,
    io: &mut W,
) -> Result<std::convert::Infallible, DisconnectReason> {
    // Grows to one batch (`BATCH_BYTES`, 64 KiB, plus a packet) under load; released when the
    // queues run dry (`IDLE_WRITE_BUFFER`). Pieces of messages of `GATHER_MIN` bytes or more
    // are not copied into it: the secret stream copies them straight from the queued message
    // into the frame they are sealed in. Boxed: inline, the gather's three fields grew the
    // task past its tokio cell (below: 592 bytes with the gather and its write path inline).
    let mut buf = Box::new(Gather::new());
    loop {
        let now = clock::now();
        // While draining: the drain's end, and its reason once the queues are written. Two
        // values, so the reason is held only when needed: this keeps the writer task's future
        // at 520 bytes (`size_of_val`; 536 is the most that fits a 640-byte tokio task cell,
        // 768 above it).
        let (transmit, next, idle, drain_until, drained) = {
            let mut state = shared.lock();
            state.check(now)?;
            let t = state.sender.poll_transmit_gather(now, &mut buf);
            let next = (t.bytes == 0)
                .then(|| state.sender.poll_timeout())
                .flatten();
            let drain_until = state.draining.as_deref().map(|(_, until)| *until);
            let drained = state
                .draining
                .as_deref()
                .filter(|_| t.bytes == 0 && !state.sender.has_messages())
                .map(|(reason, _)| reason.clone());
            let idle = t.bytes == 0 && !state.sender.has_pending();
            (t, next, idle, drain_until, drained)
        };
        if idle && buf.capacity() > IDLE_WRITE_BUFFER {
            // Nothing queued: a burst is over. Waiting on the rate limit is not idle (the next
            // turn needs the buffer again).
            *buf = Gather::new();
        }
        if transmit.bytes > 0 {
            // Messages left the queues: senders waiting for room may retry. A sender counts
            // itself before it offers (under the lock this transmit took after it), so one
            // that found the queue full is counted here.
            if shared.room_waiters.load(Ordering::SeqCst) > 0 {
                shared.room.notify_waiters();
            }
            match buf.as_contiguous() {
                Some(bytes) => write_guarded(shared, io, bytes).await?,
                // Boxed: inline, this path's state grew the task past its tokio cell.
                None => Box::pin(write_gather_guarded(shared, io, &buf)).await?,
            }
            buf.clear();
        }
        if transmit.flush {
            flush_guarded(shared, io).await?;
        }
        if let (Some(reason), Some(until)) = (drained, drain_until) {
            return Err(finish_drain(shared, io, reason, until).await);
        }
        if transmit.bytes > 0 {
            continue;
        }
        let wake = shared.writer_wake.notified();
        // While draining, the drain's end is a deadline too.
        let at = match (next, drain_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match at {
            Some(at) => {
                tokio::select! {
                    () = wake => {}
                    () = tokio::time::sleep_until(at.into()) => {}
                }
            }
            None => wake.await,
        }
    }
}

/// The queues are written (or the drain's time is up): flushes, shuts the write half down so
/// the peer reads an orderly end after the last message, and waits (until `until`) for the
/// peer to close its side, which ends the reader and thus the connection. Closing at once
/// instead could reset the connection while our last bytes are unread, losing them.
async fn finish_drain<W: AsyncWrite + Unpin>(
    shared: &Shared,
    io: &mut W,
    reason: DisconnectReason,
    until: Instant,
) -> DisconnectReason {
    let until = tokio::time::Instant::from_std(until);
    if tokio::time::timeout_at(until, io.flush()).await.is_ok() {
        shared.lock().sender.handle_flushed(clock::now());
        let _ = tokio::time::timeout_at(until, io.shutdown()).await;
        tokio::time::sleep_until(until).await;
    }
    reason
}

/// Writes all of `buf`, reporting progress to the send half after each partial write. While
/// the transport takes nothing, wakes at the core's deadline (pong, write progress), at the
/// drain's end, or when told (a drain started) to check them: a peer that stops reading
/// blocks the write forever otherwise.
async fn write_guarded<W: AsyncWrite + Unpin>(
    shared: &Shared,
    io: &mut W,
    buf: &[u8],
) -> Result<(), DisconnectReason> {
    let mut written = 0;
    while written < buf.len() {
        // `write` is cancel-safe: when it is dropped unfinished, nothing was written.
        let result = guarded(shared, io.write(&buf[written..])).await;
        written += took(shared, result)?;
    }
    Ok(())
}

/// What one guarded write did: the bytes the transport took (reported to the send half), 0
/// after a wake-up whose checks passed, or why the connection ends.
fn took(shared: &Shared, result: Option<io::Result<usize>>) -> Result<usize, DisconnectReason> {
    match result {
        Some(Ok(0)) => Err(io::Error::from(io::ErrorKind::WriteZero).into()),
        Some(Ok(n)) => {
            shared.lock().sender.handle_written(clock::now(), n);
            Ok(n)
        }
        Some(Err(e)) => Err(e.into()),
        None => shared.lock().check(clock::now()).map(|()| 0),
    }
}

/// [`write_guarded`] of a gather that passes message data by reference: its slices, several
/// per write (`write_vectored`: the secret stream copies them all into its frames in one
/// call), collected once (one allocation per transmit), not held as an iterator across the
/// awaits.
async fn write_gather_guarded<W: AsyncWrite + Unpin>(
    shared: &Shared,
    io: &mut W,
    buf: &Gather,
) -> Result<(), DisconnectReason> {
    let mut slices: Vec<_> = buf.slices().map(std::io::IoSlice::new).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        // `write_vectored` is cancel-safe: when it is dropped unfinished, nothing was written.
        let result = guarded(shared, io.write_vectored(rest)).await;
        let n = took(shared, result)?;
        std::io::IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

/// Flushes the transport, with the checks of [`write_guarded`]; reports the completed flush
/// to the send half (a ping written before it becomes outstanding).
async fn flush_guarded<W: AsyncWrite + Unpin>(
    shared: &Shared,
    io: &mut W,
) -> Result<(), DisconnectReason> {
    loop {
        // A flush dropped unfinished keeps its progress: the unsent bytes stay in the writer.
        match guarded(shared, io.flush()).await {
            Some(Ok(())) => {
                shared.lock().sender.handle_flushed(clock::now());
                return Ok(());
            }
            Some(Err(e)) => return Err(e.into()),
            None => shared.lock().check(clock::now())?,
        }
    }
}

/// Runs `op` until it completes (`Some`), the send state's deadline (read here, not passed
/// in: the writer's future would hold it twice) passes or the writer is woken (`None`).
async fn guarded<T>(shared: &Shared, op: impl std::future::Future<Output = T>) -> Option<T> {
    let deadline = shared.lock().deadline();
    let wake = shared.writer_wake.notified();
    match deadline {
        Some(at) => tokio::select! {
            r = op => Some(r),
            () = wake => None,
            () = tokio::time::sleep_until(at.into()) => None,
        },
        None => tokio::select! {
            r = op => Some(r),
            () = wake => None,
        },
    }
}

/// The reader task: reads, feeds the receive half, relays keep-alives and delivers messages
/// (module docs of `mconn`, "Reader task").
async fn read_loop<R: AsyncRead + Unpin>(
    shared: Arc<Shared>,
    mut io: Box<R>,
    mut rx: Box<MConnReceiver>,
    mut links: Vec<ReactorLink>,
) {
    // One buffer per read that finds data, released while a read waits (an idle connection
    // holds no read buffer).
    let mut chunks = ReadChunks::default();
    // Where the last read's chunk lies: the messages being delivered came from it.
    let mut chunk = ChunkSpan::default();
    let mut since_yield = 0usize;
    let reason = 'read: loop {
        while let Some(event) = rx.poll_event() {
            match event {
                Event::Received { channel, payload } => {
                    if shared.closed.load(Ordering::Acquire) {
                        return;
                    }
                    if let Some(link) = links.iter_mut().find(|l| l.channel == channel)
                        && let held = link.held(&payload, &chunk)
                        && let Some(payload) = link.deliver_now(shared.peer, payload, held)
                        && let Err(reason) = link.deliver(shared.peer, payload, held).await
                    {
                        break 'read reason;
                    }
                }
                Event::PingReceived => {
                    shared.lock().sender.queue_pong();
                    shared.writer_wake.notify_one();
                }
                Event::PongReceived => shared.lock().sender.handle_pong(clock::now()),
            }
        }
        if let Err(at) = rx.recv_ready(clock::now()) {
            flush_links(&mut links, shared.peer).await;
            tokio::time::sleep_until(at.into()).await;
            continue;
        }
        // Batched reactors get their messages when the socket has nothing more for now (or a
        // batch is full): a burst read in several chunks makes one batch, not one per chunk.
        if since_yield >= YIELD_EVERY {
            // See YIELD_EVERY: lets an idle worker take this task.
            since_yield = 0;
            tokio::task::yield_now().await;
        }
        let read = match chunks.read_now(&mut *io).await {
            Some(read) => read,
            None => {
                since_yield = 0;
                rx.handle_idle();
                flush_links(&mut links, shared.peer).await;
                chunks.read_releasing(&mut *io).await
            }
        };
        let n = match read {
            Ok(n) if n > 0 => n,
            end => {
                // What arrived before the end is delivered, as it would have been one by one.
                flush_links(&mut links, shared.peer).await;
                break match end {
                    Err(e) => e.into(),
                    Ok(_) => DisconnectReason::RemoteClosed,
                };
            }
        };
        // After the read, before decoding: a channel added while the read waited is known
        // to the receiver when this chunk's packets are matched (module docs, "Adding a
        // channel").
        if shared.channels_added.load(Ordering::Acquire)
            && let Err(reason) = apply_added_channels(&shared, &mut rx, &mut links)
        {
            break reason;
        }
        // The chunk's messages are slices of it: one allocation per read, not per message.
        since_yield += n;
        let read = chunks.take();
        chunk = chunk.next(&read);
        let handled = rx.handle_chunk(clock::now(), &read);
        chunks.retire(read);
        if let Err(e) = handled {
            // Messages of earlier chunks are delivered; none of this one (as before batches).
            flush_links(&mut links, shared.peer).await;
            break e.into();
        }
    };
    shared.close(reason);
}

/// The address range of the chunk a read filled, and its number: the messages the reader
/// delivers all came out of the last chunk, so one whose bytes lie in that range is a slice of
/// it and keeps the whole chunk's buffer alive.
#[derive(Debug, Default, Clone, Copy)]
struct ChunkSpan {
    /// Counts chunks from 1 (0: none read yet).
    seq: u64,
    start: usize,
    end: usize,
}

impl ChunkSpan {
    /// The span of `read`, the chunk after this one.
    fn next(self, read: &Bytes) -> Self {
        let start = read.as_ptr() as usize;
        Self {
            seq: self.seq + 1,
            start,
            end: start + read.len(),
        }
    }

    /// Whether `payload` is a slice of this chunk (an empty payload holds nothing).
    fn holds(&self, payload: &Bytes) -> bool {
        let at = payload.as_ptr() as usize;
        !payload.is_empty() && self.start <= at && at < self.end
    }
}

/// Pushes every batched reactor's collected messages. The pushing (which may wait for an
/// answer) is boxed: inline, its state would grow the reader task of every connection, idle
/// ones included; boxed, it costs one allocation per batch, never one for a connection
/// without batched reactors.
async fn flush_links(links: &mut [ReactorLink], peer: PeerId) {
    if links.iter().all(|link| link.batch.is_empty()) {
        return;
    }
    Box::pin(async move {
        for link in links {
            link.flush(peer).await;
        }
    })
    .await;
}

/// The reader's buffers. Each read fills a chunk that the receiver gets as [`Bytes`]
/// (single-packet messages are slices of it). The next read reuses the last chunk's buffer when
/// nothing holds a slice of it any more (a stream of multi-packet messages, which the receiver
/// copies out, reads into one buffer over and over: no allocation and no page faults per
/// read), and reads into uninitialised capacity (nothing is zeroed first). A read that has to
/// wait releases both buffers: an idle connection holds none.
#[derive(Debug, Default)]
struct ReadChunks {
    /// Where the next read goes ([`READ_CHUNK`] bytes); no capacity until a read needs it.
    next: BytesMut,
    /// The last chunk the receiver got back, kept to be reused.
    last: Bytes,
}

impl ReadChunks {
    /// Reads the next chunk if the transport has data now; `None` if the read would wait
    /// (buffers kept: the caller decides whether to wait holding them).
    async fn read_now<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
    ) -> Option<std::io::Result<usize>> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match self.poll_read(io, cx) {
                std::task::Poll::Ready(read) => Some(read),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }

    /// Reads the next chunk, releasing every buffer whenever the read has to wait: the wait
    /// of an idle connection holds no buffer, and a busy one pays at most one allocation per
    /// wake-up, not per read.
    async fn read_releasing<R: AsyncRead + Unpin>(&mut self, io: &mut R) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| {
            let polled = self.poll_read(io, cx);
            if polled.is_pending() {
                *self = Self::default();
            }
            polled
        })
        .await
    }

    /// One read into the spare capacity of `next`, which gets a buffer first if it has none.
    fn poll_read<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.next.capacity() == 0 {
            self.next = match std::mem::take(&mut self.last).try_into_mut() {
                Ok(mut reused) if reused.capacity() >= READ_CHUNK => {
                    reused.clear();
                    reused
                }
                _ => BytesMut::with_capacity(READ_CHUNK),
            };
        }
        tokio_util::io::poll_read_buf(std::pin::Pin::new(io), cx, &mut self.next)
    }

    /// The chunk the last read filled.
    fn take(&mut self) -> Bytes {
        std::mem::take(&mut self.next).freeze()
    }

    /// Gives back the chunk the receiver has handled: the next read reuses its buffer if no
    /// message delivered out of it holds a slice by then.
    fn retire(&mut self, chunk: Bytes) {
        self.last = chunk;
    }
}

/// Adds the channels [`PeerHandle::add_channel`] gave the sender to the receiver and the
/// reactor map. The receiver cannot refuse one: it started with the sender's channel set and
/// gets the same additions in the same order (the sender checked them).
fn apply_added_channels(
    shared: &Shared,
    rx: &mut MConnReceiver,
    links: &mut Vec<ReactorLink>,
) -> Result<(), DisconnectReason> {
    let added = {
        let mut state = shared.lock();
        shared.channels_added.store(false, Ordering::Relaxed);
        std::mem::take(&mut state.added)
    };
    for (desc, reactor) in added {
        rx.add_channel(desc).map_err(|e| {
            DisconnectReason::Internal(format!("receiver refused a channel the sender took: {e}"))
        })?;
        links.push(ReactorLink::new(&desc, reactor, &shared.metrics));
    }
    Ok(())
}

/// Delivery of one channel's messages to its reactor, bounded by answered deliveries.
struct ReactorLink {
    /// The channel id.
    channel: u8,
    /// The reactor.
    reactor: Delivery,
    /// The channel's `recv_message_capacity`: a typed payload is decoded within it.
    limit: usize,
    /// Answers of deliveries not yet awaited, oldest first; at most [`MAX_ACKS`].
    acks: VecDeque<Ack>,
    /// Messages pushed since the last answered delivery.
    since_ack: usize,
    /// Bytes held by the messages pushed since the last answered delivery (see
    /// [`held`](Self::held)).
    bytes_since_ack: usize,
    /// The chunk ([`ChunkSpan::seq`]) already counted whole in `bytes_since_ack` (and
    /// `batch_held`); 0 if none.
    counted_chunk: u64,
    /// A batched reactor's messages not yet pushed (at most [`MAX_BATCH`]); pushed by
    /// [`flush`](Self::flush) once the reader has decoded all it read.
    batch: Vec<Bytes>,
    /// Payload bytes in `batch` (what the counters count).
    batch_bytes: usize,
    /// Bytes `batch` holds (what bounds it; see [`held`](Self::held)).
    batch_held: usize,
    /// Messages in the last batch pushed: the next batch's first allocation.
    last_batch: usize,
    /// Payload bytes received on this channel from this peer.
    received: Counter,
    /// Payload bytes received from any peer.
    received_total: Counter,
}

/// The answer to an answered delivery.
enum Ack {
    /// To a raw reactor.
    Raw(RecipientRequest<Receive>),
    /// To a typed reactor.
    Typed(Handled),
    /// To a batched reactor.
    Batch(RecipientRequest<ReceiveBatch>),
}

impl Ack {
    /// Completes once the reactor handled the message (or is gone).
    async fn wait(self) {
        match self {
            // A closed reactor answers at once with an error: nothing to wait for.
            Self::Raw(answer) => {
                let _ = answer.await;
            }
            Self::Typed(handled) => handled.await,
            Self::Batch(answer) => {
                let _ = answer.await;
            }
        }
    }
}

impl Drop for ReactorLink {
    /// The reader ended with answered deliveries outstanding: their messages are in the
    /// reactor's mailbox, and actix skips a message whose answer nobody waits for any more.
    /// So the answers are awaited by a task of their own, and the reactor handles every
    /// message the connection pushed (before the `PeerRemoved` that follows them).
    fn drop(&mut self) {
        if self.acks.is_empty() {
            return;
        }
        let acks = std::mem::take(&mut self.acks);
        if let Ok(runtime) = Handle::try_current() {
            drop(runtime.spawn(async move {
                for ack in acks {
                    ack.wait().await;
                }
            }));
        }
    }
}

impl ReactorLink {
    fn new(desc: &ChannelDescriptor, reactor: Delivery, metrics: &ConnMetrics) -> Self {
        Self {
            channel: desc.id,
            reactor,
            limit: desc.recv_message_capacity,
            // Allocated by the first answered delivery: an idle link holds none (an `Ack` is
            // 200 bytes, so two of them up front were 400 bytes per channel and connection).
            acks: VecDeque::new(),
            since_ack: 0,
            bytes_since_ack: 0,
            counted_chunk: 0,
            batch: Vec::new(),
            batch_bytes: 0,
            batch_held: 0,
            last_batch: 0,
            received: metrics.received(desc.id),
            received_total: metrics.received_total.clone(),
        }
    }

    /// Bytes `payload` (out of `chunk`, the last read) holds that this link has not counted
    /// yet towards its bounds: its length if it has its own allocation; if it is a slice of
    /// the chunk, the chunk's whole buffer the first time, nothing after that (until the next
    /// answered delivery or batch starts counting afresh, which may count a chunk twice,
    /// never none).
    fn held(&mut self, payload: &Bytes, chunk: &ChunkSpan) -> usize {
        if !chunk.holds(payload) {
            payload.len()
        } else if self.counted_chunk == chunk.seq {
            0
        } else {
            self.counted_chunk = chunk.seq;
            READ_CHUNK
        }
    }

    /// The common case of [`deliver`](Self::deliver) without a future: a raw message that
    /// needs no answer is pushed, a batched one that does not fill its batch is collected.
    /// Hands the payload back when `deliver` must take it (an answer or a flush may wait, a
    /// typed payload is decoded). `held`: what [`held`](Self::held) counted for it.
    fn deliver_now(&mut self, peer: PeerId, payload: Bytes, held: usize) -> Option<Bytes> {
        let len = payload.len();
        match &self.reactor.0 {
            DeliveryKind::Raw(reactor)
                if self.since_ack + 1 < ACK_EVERY_MESSAGES
                    && self.bytes_since_ack + held < ACK_EVERY_BYTES =>
            {
                self.since_ack += 1;
                self.bytes_since_ack += held;
                self.received.inc_by(len as u64);
                self.received_total.inc_by(len as u64);
                // As in `deliver`: bounded by the answered deliveries.
                #[allow(clippy::disallowed_methods)]
                reactor.do_send(Receive {
                    channel: self.channel,
                    peer,
                    payload,
                });
                None
            }
            DeliveryKind::Batched(_)
                if self.batch.len() + 1 < MAX_BATCH && self.batch_held + held < ACK_EVERY_BYTES =>
            {
                self.collect(payload, held);
                None
            }
            _ => Some(payload),
        }
    }

    /// Adds `payload` to a batched reactor's batch (counted once per batch, by `flush`).
    fn collect(&mut self, payload: Bytes, held: usize) {
        if self.batch.capacity() == 0 {
            // Room for as many as the last batch had (the vector goes with the batch).
            self.batch
                .reserve_exact(self.last_batch.clamp(1, MAX_BATCH));
        }
        self.batch_bytes += payload.len();
        self.batch_held += held;
        self.batch.push(payload);
    }

    /// Pushes one message into the reactor's mailbox, in order (a batched reactor's into its
    /// batch); waits first if [`MAX_ACKS`] answered deliveries are outstanding. A typed
    /// channel's payload is decoded first; one that does not decode ends the connection with
    /// the reason returned.
    async fn deliver(
        &mut self,
        peer: PeerId,
        payload: Bytes,
        held: usize,
    ) -> Result<(), DisconnectReason> {
        if matches!(self.reactor.0, DeliveryKind::Batched(_)) {
            self.collect(payload, held);
            // A full batch goes at once, so a batch holds at most MAX_BATCH messages or
            // ACK_EVERY_BYTES plus one message (the mailbox bound of the module docs).
            if self.batch.len() >= MAX_BATCH || self.batch_held >= ACK_EVERY_BYTES {
                // Boxed for the reader task's size, as in `flush_links`.
                Box::pin(self.flush(peer)).await;
            }
            return Ok(());
        }
        self.received.inc_by(payload.len() as u64);
        self.received_total.inc_by(payload.len() as u64);
        let ack = self.count(1, held).await;
        match &self.reactor.0 {
            DeliveryKind::Raw(reactor) => {
                let msg = Receive {
                    channel: self.channel,
                    peer,
                    payload,
                };
                if ack {
                    // `send` on a fresh clone: actix's `send` from a sender that an earlier
                    // push "parked" (mailbox at capacity) returns a future that is never
                    // woken; a new clone is never parked, so the message is pushed now, in
                    // order, and the answer wakes us.
                    self.acks.push_back(Ack::Raw(reactor.clone().send(msg)));
                } else {
                    // Bounded by the answered deliveries, not by actix's mailbox capacity:
                    // at most ACK_EVERY_MESSAGES pushes separate two answered ones.
                    // (`try_send` would need a way to wait for room, which actix only offers
                    // through `send`.)
                    #[allow(clippy::disallowed_methods)]
                    reactor.do_send(msg);
                }
            }
            DeliveryKind::Typed(sink) => {
                let handled = sink
                    .push(peer, self.channel, &payload, self.limit, ack)
                    .map_err(|e| DisconnectReason::UndecodableMessage {
                        channel: self.channel,
                        error: e.to_string(),
                    })?;
                if let Some(handled) = handled {
                    self.acks.push_back(Ack::Typed(handled));
                }
            }
            // Collected above, pushed by `flush`.
            DeliveryKind::Batched(_) => {}
        }
        Ok(())
    }

    /// Pushes a batched reactor's collected messages as one [`ReceiveBatch`]; nothing to do
    /// for the other kinds or an empty batch.
    async fn flush(&mut self, peer: PeerId) {
        if self.batch.is_empty() {
            return;
        }
        self.last_batch = self.batch.len();
        let bytes = std::mem::take(&mut self.batch_bytes);
        self.received.inc_by(bytes as u64);
        self.received_total.inc_by(bytes as u64);
        let held = std::mem::take(&mut self.batch_held);
        // The next batch counts its chunks afresh: it holds them too.
        self.counted_chunk = 0;
        let ack = self.count(self.batch.len(), held).await;
        let DeliveryKind::Batched(reactor) = &self.reactor.0 else {
            return;
        };
        let msg = ReceiveBatch {
            channel: self.channel,
            peer,
            payloads: std::mem::take(&mut self.batch),
        };
        if ack {
            // A fresh clone, as for `Receive` (see `deliver`).
            self.acks.push_back(Ack::Batch(reactor.clone().send(msg)));
        } else {
            // Bounded by the answered deliveries, as `Receive`.
            #[allow(clippy::disallowed_methods)]
            reactor.do_send(msg);
        }
    }

    /// Counts `messages` (holding `bytes` in all) about to be pushed; true when this
    /// push must be answered ([`ACK_EVERY_MESSAGES`], [`ACK_EVERY_BYTES`]), after waiting for
    /// the oldest answer if [`MAX_ACKS`] are outstanding.
    async fn count(&mut self, messages: usize, bytes: usize) -> bool {
        self.since_ack += messages;
        self.bytes_since_ack += bytes;
        let ack = self.since_ack >= ACK_EVERY_MESSAGES || self.bytes_since_ack >= ACK_EVERY_BYTES;
        if ack {
            self.since_ack = 0;
            self.bytes_since_ack = 0;
            // The next group counts its chunks afresh (the pushed ones may still hold them).
            self.counted_chunk = 0;
            while self.acks.len() >= MAX_ACKS {
                // Boxed, and the `Ack` moved in without a local: inline, this wait (two
                // `Ack`s' worth of state) would set the size of the reader task's future,
                // which every idle connection holds. One allocation per wait, at most one per
                // ACK_EVERY_MESSAGES messages.
                if let Some(oldest) = self.acks.pop_front().map(|a| Box::pin(a.wait())) {
                    oldest.await;
                }
            }
        }
        ack
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

    use super::*;
    use crate::types::PEER_ID_LEN;

    const PEER: PeerId = PeerId::from_bytes([7; PEER_ID_LEN]);

    /// A batched reactor that records the size of every batch it gets.
    struct Sizes(Arc<Mutex<Vec<usize>>>);

    impl Actor for Sizes {
        type Context = Context<Self>;
    }

    impl Handler<ReceiveBatch> for Sizes {
        type Result = ();

        fn handle(&mut self, msg: ReceiveBatch, _: &mut Self::Context) {
            self.0.lock().unwrap().push(msg.payloads.len());
        }
    }

    fn batched_link() -> (ReactorLink, Arc<Mutex<Vec<usize>>>) {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let sink = Sizes(sizes.clone()).start();
        let link = ReactorLink::new(
            &ChannelDescriptor::new(0x01),
            Delivery::batched(&sink),
            &ConnMetrics::new(None, PEER),
        );
        (link, sizes)
    }

    /// Reads one chunk from `io` (which has data) and takes it.
    async fn next_chunk(chunks: &mut ReadChunks, io: &mut &[u8]) -> Bytes {
        let n = chunks.read_now(io).await.unwrap().unwrap();
        let chunk = chunks.take();
        assert_eq!(chunk.len(), n);
        chunk
    }

    #[tokio::test]
    async fn read_chunks_reuse_a_buffer_nothing_holds() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut io = &data[..];
        let mut chunks = ReadChunks::default();
        let (mut got, mut ptrs) = (Vec::new(), Vec::new());
        while !io.is_empty() {
            let chunk = next_chunk(&mut chunks, &mut io).await;
            assert!(chunk.len() <= READ_CHUNK);
            got.extend_from_slice(&chunk);
            ptrs.push(chunk.as_ptr());
            chunks.retire(chunk);
        }
        assert_eq!(got, data, "every byte once, in order");
        // None of the chunks' slices is held: every read reuses the first one's buffer.
        assert_eq!(ptrs.len(), data.len().div_ceil(READ_CHUNK));
        assert!(ptrs.iter().all(|&p| p == ptrs[0]));
    }

    #[tokio::test]
    async fn a_chunk_a_message_still_holds_is_never_reused() {
        let mut chunks = ReadChunks::default();
        let data = [0xabu8; 100];
        let first = next_chunk(&mut chunks, &mut &data[..]).await;
        let held = first.slice(10..20);
        let first_ptr = first.as_ptr();
        chunks.retire(first);
        let second = next_chunk(&mut chunks, &mut &[0xcd; 100][..]).await;
        assert_ne!(second.as_ptr(), first_ptr);
        assert_eq!(&held[..], &[0xab; 10], "the held message is intact");
        // Once the message is gone, the buffer of the chunk after it is reused.
        drop(held);
        let second_ptr = second.as_ptr();
        chunks.retire(second);
        let third = next_chunk(&mut chunks, &mut &[0xef; 100][..]).await;
        assert_eq!(third.as_ptr(), second_ptr);
        assert_eq!(&third[..], &[0xef; 100]);
    }

    #[tokio::test]
    async fn a_read_that_waits_releases_every_read_buffer() {
        let (mut near, mut far) = tokio::io::duplex(1 << 20);
        far.write_all(&[1; 5 * READ_CHUNK]).await.unwrap();
        let mut chunks = ReadChunks::default();
        let mut read = 0;
        // Until nothing more is there: the read would wait, and read_now keeps its buffer.
        while let Some(n) = chunks.read_now(&mut near).await {
            read += n.unwrap();
            let chunk = chunks.take();
            chunks.retire(chunk);
        }
        assert_eq!(read, 5 * READ_CHUNK);
        assert!(chunks.next.capacity() > 0, "read_now keeps its buffer");
        // The read that waits holds nothing while it does.
        assert!(futures::FutureExt::now_or_never(chunks.read_releasing(&mut near)).is_none());
        assert_eq!(chunks.next.capacity(), 0);
        assert!(chunks.last.is_empty());
        // The next read takes a new buffer.
        far.write_all(&[2; 100]).await.unwrap();
        assert_eq!(chunks.read_releasing(&mut near).await.unwrap(), 100);
        assert_eq!(&chunks.take()[..], &[2; 100]);
    }

    /// A chunk as the reader makes one: a `READ_CHUNK` buffer holding `len` bytes read.
    fn read_of(len: usize) -> Bytes {
        let mut buf = vec![0u8; READ_CHUNK];
        buf.truncate(len);
        Bytes::from(buf)
    }

    /// What the read loop does with one message.
    async fn push(link: &mut ReactorLink, payload: Bytes, chunk: &ChunkSpan) {
        let held = link.held(&payload, chunk);
        if let Some(payload) = link.deliver_now(PEER, payload, held) {
            link.deliver(PEER, payload, held).await.unwrap();
        }
    }

    #[test]
    fn a_chunk_span_holds_its_slices_only() {
        let read = read_of(100);
        let chunk = ChunkSpan::default().next(&read);
        assert_eq!(chunk.seq, 1);
        assert!(chunk.holds(&read.slice(0..1)) && chunk.holds(&read.slice(99..100)));
        assert!(
            !chunk.holds(&read.slice(5..5)),
            "an empty slice holds nothing"
        );
        assert!(!chunk.holds(&Bytes::copy_from_slice(&read[..10])));
        assert!(!ChunkSpan::default().holds(&read.slice(0..1)));
    }

    #[actix::test]
    async fn a_batch_counts_each_buffer_its_slices_hold_once() {
        let (mut link, sizes) = batched_link();
        // 1,000 one-byte slices of one read: the buffer is counted once, one batch.
        let read = read_of(1000);
        let chunk = ChunkSpan::default().next(&read);
        for i in 0..1000 {
            push(&mut link, read.slice(i..i + 1), &chunk).await;
        }
        // Copies count their length: 10 more of 1 byte stay in the same batch.
        for _ in 0..10 {
            push(&mut link, Bytes::from_static(b"x"), &chunk).await;
        }
        link.flush(PEER).await;
        assert_eq!(
            link.bytes_since_ack, 0,
            "the batch was answered (over 64 messages)"
        );
        // Drop the link to wait for the outstanding answers, then look.
        drop(link);
        wait(|| sizes.lock().unwrap().len() == 1).await;
        assert_eq!(*sizes.lock().unwrap(), [1010]);
    }

    #[actix::test]
    async fn small_messages_each_in_a_read_of_their_own_cannot_pin_a_buffer_each_uncounted() {
        // A peer whose one-byte messages each arrive alone pins a 4 KiB buffer per byte: a
        // batch ends once its buffers hold ACK_EVERY_BYTES, long before MAX_BATCH messages.
        let (mut link, sizes) = batched_link();
        let mut chunk = ChunkSpan::default();
        let per_batch = ACK_EVERY_BYTES / READ_CHUNK;
        let total = 3 * per_batch + 5;
        for _ in 0..total {
            let read = read_of(1);
            chunk = chunk.next(&read);
            push(&mut link, read.slice(0..1), &chunk).await;
        }
        link.flush(PEER).await;
        drop(link);
        wait(|| sizes.lock().unwrap().iter().sum::<usize>() == total).await;
        assert!(per_batch < MAX_BATCH);
        assert_eq!(*sizes.lock().unwrap(), [per_batch, per_batch, per_batch, 5]);
    }

    /// Waits (bounded) for `done`, letting the arbiter run the sink.
    async fn wait(done: impl Fn() -> bool) {
        for _ in 0..10_000 {
            if done() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the sink never got the batches");
    }
}
