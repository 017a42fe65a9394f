//! The [`Switch`] actor: the peer set, the reactors by channel, and the events.
//!
//! It owns no socket. The Transport hands it verified connections ([`InboundConnection`],
//! or the answer to a [`Dial`](crate::actors::transport::Dial)); it admits them by the rules of [`PeerSet`] (limits,
//! duplicates with the simultaneous-dial tie-break, ourselves), starts a [`PeerConn`] for each
//! and tells the reactors. A [`PeerConn`] reports once, with [`PeerStopped`], when its
//! connection ended; only then is the peer removed and the reactors told.
//!
//! Ordering promises to each reactor, per peer: [`PeerAdded`] before any [`Receive`], and
//! [`PeerRemoved`] exactly once after the last [`Receive`]. The first holds because the
//! connection's reader is held at a gate until `PeerAdded` is in every reactor's mailbox; the
//! second because a `PeerConn` reports [`PeerStopped`] only after its reader ended.
//!
//! It keeps the node's peer gauges, dial outcomes, disconnects and the drops it decides
//! (broadcast to a full queue, a send to a peer not connected or on a channel it did not
//! advertise) in its [`Metrics`]; its connections count their own bytes and drops.
//!
//! | message | from | reply |
//! | --- | --- | --- |
//! | [`RegisterReactor`] | host | `Result<(), SwitchError>` |
//! | [`DialPeers`] | host, peer exchange | `()` (outcomes are events) |
//! | [`AddPersistentPeers`] | host | `()` (outcomes are events) |
//! | [`BeginDial`], [`DialFinished`] | Dialer | [`DialCheck`], `()` |
//! | [`Broadcast`] | reactors | `()` (never waits; full queues drop, counted) |
//! | [`SendTo`] / [`TrySendTo`] | reactors | `bool` |
//! | [`GetPeers`] | anyone | [`PeerSetSnapshot`] |
//! | [`StopPeerForError`] | reactors | `()` (idempotent) |
//! | [`DisconnectPeer`] | reactors (a seed) | `()` (idempotent, no fault) |
//! | [`Shutdown`] | the node handle | `()` once every peer has stopped |
//! | [`InboundConnection`], [`InboundRejected`] | Transport | `()` |
//! | [`PeerStopped`] | PeerConn | `()` |

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use actix::prelude::*;
use bytes::Bytes;
use futures::channel::oneshot;
use slog::{Logger, debug, info, warn};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::runtime::Handle;

use crate::actors::clock;
use crate::actors::dialer::{QueueDials, StopDialing};
use crate::actors::events::{DialError, EventBus, InboundRejection, SwitchEvent};
use crate::actors::metrics::{DialOutcome, DropReason, Metrics};
use crate::actors::peer_conn::{PeerConn, PeerConnConfig, PeerHandle, PeerStopped, Stop};
use crate::actors::reactor::{
    Delivery, DisconnectReason, PeerAdded, PeerInfo, PeerRemoved, Receive, ReceiveBatch,
    TypedReceive,
};
use crate::actors::redialer::{
    PersistentDialFailed, PersistentPeerConnected, PersistentPeerDisconnected, StopRedialing,
    WatchPersistentPeers,
};
use crate::actors::transport::{
    InboundConnection, InboundRejected, Stop as StopTransport, Transport, UpdateNodeInfo, Upgraded,
};
use crate::codec::{self, EncodeError};
use crate::config::P2pConfig;
use crate::dial::DialItem;
use crate::mconn::{ChannelDescriptor, MAX_CHANNELS, MConnConfigError};
use crate::peers::{Admission, PeerEntry, PeerLimits, PeerSet, RejectReason};
use crate::throttle::LogThrottle;
use crate::types::{Direction, NetAddress, NodeInfo, PeerId};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Errors the Switch answers synchronously.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SwitchError {
    /// Another reactor already claimed this channel (TM2 silently ignores the second claim).
    #[error("channel {0:#04x} is already claimed by reactor {1:?}")]
    DuplicateChannel(u8, String),
    /// A channel descriptor is invalid (zero priority or capacity, the same id twice).
    #[error("invalid channel: {0}")]
    InvalidChannel(#[from] MConnConfigError),
    /// All reactors together would have more than 16 channels (NodeInfo's limit).
    #[error("more than {MAX_CHANNELS} channels in total")]
    TooManyChannels,
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The metrics address (`metrics_addr`) could not be bound.
    #[error("cannot serve metrics on {addr}: {source}")]
    MetricsBind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The NodeInfo the builder was given is invalid (a version set with a repeated or
    /// unprintable name, unprintable software strings, ...): peers would refuse it.
    #[error("invalid node info: {0}")]
    NodeInfo(#[source] crate::types::NodeInfoError),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// [`SwitchBuilder::spawn`](crate::SwitchBuilder::spawn) was called outside an actix
    /// `System` (e.g. straight from `#[tokio::main]`): the node's actors need one.
    #[error(
        "a node runs in an actix System: use #[actix::main] or actix::System::new().block_on(..); \
         from a tokio main, run it on a thread of its own: \
         tokio::task::spawn_blocking(|| actix::System::new().block_on(run_node()))"
    )]
    NoActixSystem,
}

/// The Switch's per-peer state, kept in the [`PeerSet`].
#[derive(Debug)]
struct PeerState {
    /// The connection actor.
    conn: Addr<PeerConn>,
    /// Sends to the peer without a mailbox hop.
    handle: PeerHandle,
    /// What the peer told us about itself.
    node_info: NodeInfo,
}

/// A registered reactor.
struct Reactor {
    /// Its name, for errors and logs.
    name: String,
    /// The channels it claimed, in its order.
    channels: Vec<ChannelDescriptor>,
    /// Where its messages go.
    recipients: ReactorRecipients,
}

/// The three recipients of a reactor actor.
#[derive(Clone)]
pub struct ReactorRecipients {
    /// Gets [`PeerAdded`].
    added: Recipient<PeerAdded>,
    /// Gets [`PeerRemoved`].
    removed: Recipient<PeerRemoved>,
    /// Gets [`Receive`] (or, for a typed reactor, decoded values) for the reactor's channels.
    receive: Delivery,
}

/// The Switch's recipients of the [`Dialer`](crate::actors::dialer::Dialer) and the
/// [`Redialer`](crate::actors::redialer::Redialer).
#[derive(Clone)]
pub struct DialRecipients {
    /// The Dialer's queue.
    pub queue: Recipient<QueueDials>,
    /// Stops the Dialer.
    pub stop_dialing: Recipient<StopDialing>,
    /// New persistent peers for the Redialer.
    pub watch: Recipient<WatchPersistentPeers>,
    /// A persistent peer connected.
    pub connected: Recipient<PersistentPeerConnected>,
    /// A persistent peer disconnected.
    pub disconnected: Recipient<PersistentPeerDisconnected>,
    /// A dial of a persistent peer failed.
    pub dial_failed: Recipient<PersistentDialFailed>,
    /// Stops the Redialer.
    pub stop_redialing: Recipient<StopRedialing>,
}

/// The Switch actor; spawned by [`SwitchBuilder`](crate::actors::node::SwitchBuilder).
pub struct Switch {
    /// The p2p configuration (validated).
    config: P2pConfig,
    /// Our NodeInfo; its channels are the registered reactors' channels.
    info: NodeInfo,
    /// The transport (listener, dials).
    transport: Addr<Transport>,
    /// Reactors in registration order (the scheduler's tie-break order of their channels).
    reactors: Vec<Reactor>,
    /// Channel id -> index in `reactors`.
    channel_owner: HashMap<u8, usize>,
    /// Connected peers.
    peers: PeerSet<PeerState>,
    /// Peers asked to stop, whose [`PeerStopped`] has not arrived yet.
    stopping: HashSet<PeerId>,
    /// A connection that won the simultaneous-dial tie-break, waiting for the connection it
    /// replaces to stop.
    replacing: HashMap<PeerId, (Upgraded, NetAddress)>,
    /// Dials in flight: allowed by [`BeginDial`], not yet reported by [`DialFinished`].
    dialing: HashSet<PeerId>,
    /// The Dialer and the Redialer.
    dial: DialRecipients,
    /// Ids of persistent peers.
    persistent: HashSet<PeerId>,
    /// Ids of private peers.
    private: HashSet<PeerId>,
    /// The event publisher.
    events: EventBus,
    /// Where connection tasks run (`None`: the current runtime).
    io: Option<Handle>,
    /// Broadcast messages not queued because a peer's queue was full.
    broadcast_drops: u64,
    /// The node's metrics (peer gauges, dial outcomes, drops, disconnects); connections get
    /// a handle to count their own.
    metrics: Metrics,
    /// Set by [`Shutdown`]: answered once every peer has stopped.
    shutdown: Option<oneshot::Sender<()>>,
    /// The node's log.
    log: Logger,
    /// Failed dials logged at most once a minute per address.
    dial_log: LogThrottle<NetAddress>,
    /// Refused inbound connections logged at most once a minute per remote IP.
    inbound_log: LogThrottle<IpAddr>,
}

impl Switch {
    /// A switch for `info` (our NodeInfo without channels), using `transport`.
    pub(crate) fn new(
        config: P2pConfig,
        info: NodeInfo,
        transport: Addr<Transport>,
        dial: DialRecipients,
        events: EventBus,
        io: Option<Handle>,
        log: Logger,
    ) -> Self {
        let local = info.id();
        let persistent = config.persistent_peers.iter().map(NetAddress::id).collect();
        let private = config.private_peer_ids.iter().copied().collect();
        let limits = PeerLimits::from_config(&config);
        Self {
            config,
            info,
            transport,
            reactors: Vec::new(),
            channel_owner: HashMap::new(),
            peers: PeerSet::new(local, limits),
            stopping: HashSet::new(),
            replacing: HashMap::new(),
            dialing: HashSet::new(),
            dial,
            persistent,
            private,
            events,
            io,
            broadcast_drops: 0,
            metrics: Metrics::new(),
            shutdown: None,
            log,
            dial_log: LogThrottle::default(),
            inbound_log: LogThrottle::default(),
        }
    }

    /// Counts into `metrics` (the node's) instead of a private registry.
    pub(crate) fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Sets the peer gauges from the peer set.
    fn update_peer_gauges(&self) {
        self.metrics
            .set_peers(self.peers.num_inbound(), self.peers.num_outbound());
    }

    /// Every channel with the reactor it belongs to, in registration order.
    fn channels(&self) -> Vec<(ChannelDescriptor, Delivery)> {
        self.reactors
            .iter()
            .flat_map(|r| {
                r.channels
                    .iter()
                    .map(|d| (*d, r.recipients.receive.clone()))
            })
            .collect()
    }

    /// Admits a verified connection, or says why not (the connection is then dropped, which
    /// closes it).
    fn admit(
        &mut self,
        up: Upgraded,
        listen_addr: NetAddress,
        ctx: &mut Context<Self>,
    ) -> Result<(), RejectReason> {
        let id = up.id();
        let persistent = self.persistent.contains(&id);
        match self.peers.admit(id, up.direction, persistent)? {
            Admission::New => {
                self.start_peer(up, listen_addr, ctx);
                Ok(())
            }
            Admission::ReplaceExisting { .. } => {
                // Both nodes keep the connection the tie-break picks: stop ours, start the new
                // one once the old one has reported.
                self.stop_peer(id, DisconnectReason::Replaced);
                self.replacing.insert(id, (up, listen_addr));
                Ok(())
            }
        }
    }

    /// Starts the connection actor of an admitted peer and tells the reactors.
    fn start_peer(&mut self, up: Upgraded, listen_addr: NetAddress, ctx: &mut Context<Self>) {
        let id = up.id();
        let Upgraded {
            mut stream,
            node_info,
            remote_addr,
            direction,
        } = up;
        // A Transport given the same runtime upgraded it there: nothing to move.
        if let Some(io) = &self.io
            && !stream.is_on_io_runtime()
            && let Err(e) = stream.register_with(io)
        {
            // Still correct where it is; only its readiness events keep waking this thread.
            slog::warn!(self.log, "cannot move a connection's socket to the I/O runtime";
                "peer" => %id, "error" => %e);
        }
        let (reader, writer) = stream.into_split();
        let (gate, reader) = GatedReader::new(reader);
        let config = PeerConnConfig {
            metrics: Some(self.metrics.clone()),
            // The handle refuses channels the peer lacks, as `SendTo` does (TM2's Peer.Send).
            peer_channels: Some(node_info.channels.clone()),
            ..PeerConnConfig::from(&self.config)
        };
        let started = PeerConn::start_split(
            reader,
            writer,
            id,
            config,
            self.channels(),
            ctx.address().recipient(),
            self.io.clone(),
        );
        let (conn, handle) = match started {
            Ok(started) => started,
            Err(e) => {
                // Our own channel set is invalid: a bug, since RegisterReactor validated it.
                slog::error!(self.log, "cannot start peer connection"; "peer" => %id, "error" => %e);
                return;
            }
        };
        let entry = PeerEntry {
            listen_addr,
            direction,
            persistent: self.persistent.contains(&id),
            private: self.private.contains(&id),
            socket_addr: remote_addr,
            connected_at: clock::now(),
            data: PeerState {
                conn,
                handle,
                node_info,
            },
        };
        let info = peer_info(&entry);
        if self.peers.add(entry).is_err() {
            // admit() checked; cannot happen. Dropping the gate ends the connection.
            return;
        }
        self.update_peer_gauges();
        for reactor in &self.reactors {
            // Control message, at most one per reactor and connection; it must be in the
            // mailbox before the gate opens, which a bounded `try_send` cannot promise.
            #[allow(clippy::disallowed_methods)]
            reactor
                .recipients
                .added
                .do_send(PeerAdded { peer: info.clone() });
        }
        gate.open();
        info!(self.log, "peer connected"; "peer" => %id, "direction" => ?direction, "remote" => %remote_addr);
        self.events.publish(SwitchEvent::PeerConnected {
            peer: id,
            direction,
            remote: remote_addr,
        });
        if info.persistent {
            // Control message, once per persistent connection.
            #[allow(clippy::disallowed_methods)]
            self.dial.connected.do_send(PersistentPeerConnected {
                peer: id,
                at: clock::now(),
            });
        }
    }

    /// Publishes a failed dial, and tells the Redialer if the peer is persistent.
    fn dial_failed(&mut self, address: NetAddress, error: DialError) {
        let persistent = self.persistent.contains(&address.id());
        // What an operator needs: a dial that did not reach its peer (persistent peers are
        // logged by the Redialer, with the next retry), once a minute per address. Refusals
        // of our own (already connected, no slot) and shutdown are normal: debug.
        let worth_telling = !persistent && matches!(error, DialError::Transport(_));
        match worth_telling
            .then(|| self.dial_log.allow(&address, clock::now()))
            .flatten()
        {
            Some(held_back) => {
                info!(self.log, "dial failed"; "address" => %address, "error" => %error,
                      "similar_failures_not_logged" => held_back);
            }
            None => debug!(self.log, "dial failed"; "address" => %address, "error" => %error),
        }
        self.metrics.dial_finished(DialOutcome::from(&error));
        if self.persistent.contains(&address.id()) {
            // Control message, at most once per dial of a persistent peer.
            #[allow(clippy::disallowed_methods)]
            self.dial.dial_failed.do_send(PersistentDialFailed {
                address: address.clone(),
                error: error.clone(),
            });
        }
        self.events
            .publish(SwitchEvent::DialFailed { address, error });
    }

    /// Dials in flight of non-persistent peers (they hold outbound slots).
    fn non_persistent_dials(&self) -> usize {
        self.dialing
            .iter()
            .filter(|id| !self.persistent.contains(id))
            .count()
    }

    /// Asks a peer's connection to stop (once); its [`PeerStopped`] finishes the removal.
    fn stop_peer(&mut self, id: PeerId, reason: DisconnectReason) {
        let Some(entry) = self.peers.get(&id) else {
            return;
        };
        if !self.stopping.insert(id) {
            return;
        }
        // Control message to one connection actor, once per peer (guarded by `stopping`).
        #[allow(clippy::disallowed_methods)]
        entry.data.conn.do_send(Stop { reason });
    }

    /// The connected peer `id` if it advertised `channel`; otherwise counts the message as
    /// dropped and answers `None`.
    fn peer_for(&self, id: &PeerId, channel: u8) -> Option<&PeerEntry<PeerState>> {
        let Some(entry) = self.peers.get(id) else {
            self.metrics.message_dropped(DropReason::PeerNotConnected);
            return None;
        };
        if !entry.data.node_info.channels.contains(&channel) {
            self.metrics.message_dropped(DropReason::UnknownChannel);
            return None;
        }
        Some(entry)
    }

    /// Publishes a refused inbound connection.
    fn inbound_rejected(&mut self, remote: SocketAddr, reason: InboundRejection) {
        // Why a node did not get in (another network or version set, limits, a failed
        // handshake), once a minute per remote IP: a flood from one host is one line a minute.
        match self.inbound_log.allow(&remote.ip(), clock::now()) {
            Some(held_back) => {
                info!(self.log, "inbound connection refused"; "remote" => %remote,
                      "reason" => %reason, "similar_refusals_not_logged" => held_back);
            }
            None => {
                debug!(self.log, "inbound connection refused"; "remote" => %remote, "reason" => %reason)
            }
        }
        self.events
            .publish(SwitchEvent::InboundRejected { remote, reason });
    }

    /// Answers a pending [`Shutdown`] once every peer has gone.
    fn maybe_finish_shutdown(&mut self, ctx: &mut Context<Self>) {
        if self.peers.is_empty()
            && let Some(done) = self.shutdown.take()
        {
            let _ = done.send(());
            ctx.stop();
        }
    }
}

impl Actor for Switch {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Reactors and connection actors talk to the Switch all the time; a larger mailbox
        // absorbs bursts (each sender is still bounded by actix's per-sender backpressure).
        ctx.set_mailbox_capacity(1024);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        // However the Switch ends (Shutdown, its arbiter or System stopping), subscribers'
        // streams end once they have read what is buffered.
        self.events.close();
    }
}

/// Registers a reactor actor for its channels. Fails if a channel is already claimed or the
/// descriptors are invalid. A reactor registered while peers are connected gets [`PeerAdded`]
/// for each of them; its channels are advertised to peers that connect from then on.
#[derive(Message)]
#[rtype(result = "Result<(), SwitchError>")]
pub struct RegisterReactor {
    /// The reactor's name (logs and errors).
    name: String,
    /// Its channels.
    channels: Vec<ChannelDescriptor>,
    /// Its recipients.
    recipients: ReactorRecipients,
}

impl RegisterReactor {
    /// Registers actor `addr`, which handles [`PeerAdded`], [`PeerRemoved`] and [`Receive`], for
    /// `channels`.
    pub fn new<A>(name: impl Into<String>, channels: Vec<ChannelDescriptor>, addr: &Addr<A>) -> Self
    where
        A: Actor<Context = Context<A>>
            + Handler<PeerAdded>
            + Handler<PeerRemoved>
            + Handler<Receive>,
    {
        Self::with(
            name,
            channels,
            addr,
            addr.clone().recipient::<Receive>().into(),
        )
    }

    /// `addr` gets peer arrivals and departures; its messages go to `receive`.
    fn with<A>(
        name: impl Into<String>,
        channels: Vec<ChannelDescriptor>,
        addr: &Addr<A>,
        receive: Delivery,
    ) -> Self
    where
        A: Actor<Context = Context<A>> + Handler<PeerAdded> + Handler<PeerRemoved>,
    {
        Self {
            name: name.into(),
            channels,
            recipients: ReactorRecipients {
                added: addr.clone().recipient(),
                removed: addr.clone().recipient(),
                receive,
            },
        }
    }

    /// Like [`new`](Self::new), but the reactor gets the messages of each channel in
    /// [`ReceiveBatch`]es (what a connection decoded until its socket had nothing more, in order)
    /// instead of one [`Receive`] each: the faster shape for a reactor that takes many small
    /// messages (transactions, votes), as it pays one actor message per batch.
    pub fn batched<A>(
        name: impl Into<String>,
        channels: Vec<ChannelDescriptor>,
        addr: &Addr<A>,
    ) -> Self
    where
        A: Actor<Context = Context<A>>
            + Handler<PeerAdded>
            + Handler<PeerRemoved>
            + Handler<ReceiveBatch>,
    {
        Self::with(name, channels, addr, Delivery::batched(addr))
    }

    /// Registers actor `addr` for `channels`, each carrying values of `T`: the connection
    /// decodes every payload on them as `T` (bincode, standard configuration, at most the
    /// channel's `recv_message_capacity`, no trailing bytes) and the reactor gets
    /// [`TypedReceive<T>`]; a payload that does not decode stops that peer as
    /// [`DisconnectReason::UndecodableMessage`] (the peer's fault, counted as
    /// `undecodable_message`), the reactor never sees it. Send them with
    /// [`Broadcast::typed`], [`SendTo::typed`], [`TrySendTo::typed`] or
    /// [`PeerHandle::try_send_typed`](crate::PeerHandle::try_send_typed).
    ///
    /// ```no_run
    /// # use tm2_p2p::actix::prelude::*;
    /// # use tm2_p2p::{ChannelDescriptor, PeerAdded, PeerRemoved, RegisterReactor, TypedReceive};
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// enum Chat { Hello { name: String }, Line(String) }
    ///
    /// struct ChatReactor;
    /// impl Actor for ChatReactor { type Context = Context<Self>; }
    /// impl Handler<TypedReceive<Chat>> for ChatReactor {
    ///     type Result = ();
    ///     fn handle(&mut self, msg: TypedReceive<Chat>, _: &mut Context<Self>) {
    ///         if let Chat::Line(text) = msg.message { println!("{}: {text}", msg.peer); }
    ///     }
    /// }
    /// # impl Handler<PeerAdded> for ChatReactor { type Result = (); fn handle(&mut self, _: PeerAdded, _: &mut Context<Self>) {} }
    /// # impl Handler<PeerRemoved> for ChatReactor { type Result = (); fn handle(&mut self, _: PeerRemoved, _: &mut Context<Self>) {} }
    /// # fn register(addr: Addr<ChatReactor>) -> RegisterReactor {
    /// RegisterReactor::typed::<Chat, _>("chat", vec![ChannelDescriptor::new(0x40)], &addr)
    /// # }
    /// ```
    pub fn typed<T, A>(
        name: impl Into<String>,
        channels: Vec<ChannelDescriptor>,
        addr: &Addr<A>,
    ) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        A: Actor<Context = Context<A>>
            + Handler<PeerAdded>
            + Handler<PeerRemoved>
            + Handler<TypedReceive<T>>,
    {
        Self::with(name, channels, addr, Delivery::typed::<T, A>(addr))
    }
}

impl std::fmt::Debug for RegisterReactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterReactor")
            .field("name", &self.name)
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

impl Handler<RegisterReactor> for Switch {
    type Result = Result<(), SwitchError>;

    fn handle(&mut self, msg: RegisterReactor, _: &mut Self::Context) -> Self::Result {
        self.register(msg)
    }
}

impl Switch {
    /// Registers a reactor (see [`RegisterReactor`]); also used by
    /// [`SwitchBuilder::reactor`](crate::actors::node::SwitchBuilder::reactor) before the
    /// Switch runs.
    pub(crate) fn register(&mut self, msg: RegisterReactor) -> Result<(), SwitchError> {
        if self.shutdown.is_some() {
            return Err(SwitchError::ShuttingDown);
        }
        let mut seen = HashSet::new();
        for d in &msg.channels {
            d.validate()?;
            if let Some(&owner) = self.channel_owner.get(&d.id) {
                return Err(SwitchError::DuplicateChannel(
                    d.id,
                    self.reactors[owner].name.clone(),
                ));
            }
            if !seen.insert(d.id) {
                return Err(SwitchError::DuplicateChannel(d.id, msg.name.clone()));
            }
        }
        if self.channel_owner.len() + msg.channels.len() > MAX_CHANNELS {
            return Err(SwitchError::TooManyChannels);
        }
        let index = self.reactors.len();
        for d in &msg.channels {
            self.channel_owner.insert(d.id, index);
            self.info.channels.push(d.id);
        }
        // Connected peers: the new reactor hears of each of them, then its channels are added
        // to their connections (after PeerAdded is queued, so no Receive can come first).
        for entry in self.peers.iter() {
            let info = peer_info(entry);
            // Control message, once per connected peer at registration.
            #[allow(clippy::disallowed_methods)]
            msg.recipients.added.do_send(PeerAdded { peer: info });
            for d in &msg.channels {
                if let Err(e) = entry
                    .data
                    .handle
                    .add_channel(*d, msg.recipients.receive.clone())
                {
                    // Validated above, so only a connection that just ended gets here; its
                    // PeerStopped is on the way.
                    debug!(self.log, "channel not added to a closing connection"; "peer" => %entry.id(), "error" => %e);
                }
            }
        }
        self.reactors.push(Reactor {
            name: msg.name,
            channels: msg.channels,
            recipients: msg.recipients,
        });
        // New handshakes advertise the new channels.
        #[allow(clippy::disallowed_methods)] // Control message, once per registration.
        self.transport.do_send(UpdateNodeInfo(self.info.clone()));
        Ok(())
    }
}

/// Queues a dial of each address, due now, in the Dialer. Names are resolved when the dial
/// starts. Every address ends in one [`SwitchEvent::PeerConnected`] or
/// [`SwitchEvent::DialFailed`] (ourselves, already connected, no outbound slot, a full queue,
/// an unresolvable name, a failed connection or handshake); a peer already queued is dialed
/// once.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct DialPeers(pub Vec<NetAddress>);

impl Handler<DialPeers> for Switch {
    type Result = ();

    fn handle(&mut self, msg: DialPeers, ctx: &mut Self::Context) {
        if self.shutdown.is_some() {
            for address in msg.0 {
                self.dial_failed(address, DialError::Shutdown);
            }
            return;
        }
        let now = clock::now();
        let items = msg.0.into_iter().map(|a| DialItem::new(a, now)).collect();
        let queue = self.dial.queue.clone();
        // `send` waits for room in the Dialer's mailbox; nothing is dropped.
        ctx.spawn(
            async move {
                let _ = queue.send(QueueDials(items)).await;
            }
            .into_actor(self),
        );
    }
}

/// Makes peers persistent (exempt from the limits, redialed forever after a disconnect or a
/// failed dial) and dials those not connected now. `persistent_peers` in the config does the
/// same at start.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct AddPersistentPeers(pub Vec<NetAddress>);

impl Handler<AddPersistentPeers> for Switch {
    type Result = ();

    fn handle(&mut self, msg: AddPersistentPeers, _: &mut Self::Context) {
        if self.shutdown.is_some() {
            for address in msg.0 {
                self.dial_failed(address, DialError::Shutdown);
            }
            return;
        }
        let watch = msg
            .0
            .into_iter()
            .map(|address| {
                let id = address.id();
                self.persistent.insert(id);
                self.peers.set_persistent(&id, true);
                let connected_at = self.peers.get(&id).map(|e| e.connected_at);
                (address, connected_at)
            })
            .collect();
        // Control message, once per request.
        #[allow(clippy::disallowed_methods)]
        self.dial.watch.do_send(WatchPersistentPeers(watch));
    }
}

/// What the Switch says to a dial about to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, MessageResponse)]
pub enum DialCheck {
    /// Dial: counted as in flight until its [`DialFinished`].
    Go,
    /// Not now: the outbound slots are held only by dials in flight, one of which may fail.
    /// Queue it again and wait for one of them to finish.
    Defer,
    /// Do not dial; the Switch has published the `DialFailed`.
    Refused,
}

/// Asked by the Dialer just before a dial: is it still worth making (not ourselves, not
/// connected, not being dialed, an outbound slot free counting the dials in flight)?
#[derive(Message, Debug, Clone)]
#[rtype(result = "DialCheck")]
pub struct BeginDial {
    /// The address about to be dialed.
    pub address: NetAddress,
}

impl Handler<BeginDial> for Switch {
    type Result = DialCheck;

    fn handle(&mut self, msg: BeginDial, _: &mut Self::Context) -> DialCheck {
        let id = msg.address.id();
        if self.shutdown.is_some() {
            self.dial_failed(msg.address, DialError::Shutdown);
            return DialCheck::Refused;
        }
        if self.dialing.contains(&id) {
            self.dial_failed(msg.address, DialError::Refused(RejectReason::Duplicate));
            return DialCheck::Refused;
        }
        let persistent = self.persistent.contains(&id);
        let in_flight = self.non_persistent_dials();
        match self.peers.can_dial(id, persistent, in_flight) {
            Ok(()) => {
                self.dialing.insert(id);
                DialCheck::Go
            }
            Err(RejectReason::MaxOutbound { .. })
                if in_flight > 0 && self.peers.room(Direction::Outbound) > 0 =>
            {
                DialCheck::Defer
            }
            Err(reason) => {
                self.dial_failed(msg.address, DialError::Refused(reason));
                DialCheck::Refused
            }
        }
    }
}

/// The outcome of a dial (or of an address the Dialer could not queue): the Switch admits the
/// connection and publishes `PeerConnected`, or publishes `DialFailed`.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct DialFinished {
    /// The address dialed (before name resolution).
    pub address: NetAddress,
    /// The verified connection, or why there is none.
    pub result: Result<Upgraded, DialError>,
}

impl Handler<DialFinished> for Switch {
    type Result = ();

    fn handle(&mut self, msg: DialFinished, ctx: &mut Self::Context) {
        let DialFinished { address, result } = msg;
        self.dialing.remove(&address.id());
        if self.shutdown.is_some() {
            // Dropping a connection closes it.
            self.dial_failed(address, DialError::Shutdown);
            return;
        }
        match result {
            Ok(up) => match self.admit(up, address.clone(), ctx) {
                Ok(()) => self.metrics.dial_finished(DialOutcome::Connected),
                Err(reason) => self.dial_failed(address, DialError::Rejected(reason)),
            },
            Err(error) => self.dial_failed(address, error),
        }
    }
}

/// Sends `payload` on `channel` to every connected peer that advertised the channel. Never
/// waits: a peer whose queue is full misses this message (counted), the others are unaffected.
/// Every peer gets one reference to the same buffer, and successive broadcasts reach each peer
/// in the order they were sent.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Broadcast {
    /// The channel.
    pub channel: u8,
    /// The message (shared, not copied, between peers).
    pub payload: Bytes,
}

impl Broadcast {
    /// A broadcast of `message` encoded for a typed channel ([`RegisterReactor::typed`]):
    /// bincode, standard configuration, as the receiving connection decodes it.
    pub fn typed<T: Serialize + ?Sized>(channel: u8, message: &T) -> Result<Self, EncodeError> {
        Ok(Self {
            channel,
            payload: codec::encode(message)?.into(),
        })
    }
}

impl Handler<Broadcast> for Switch {
    type Result = ();

    fn handle(&mut self, msg: Broadcast, _: &mut Self::Context) {
        for entry in self.peers.iter() {
            if self.stopping.contains(&entry.id())
                || !entry.data.node_info.channels.contains(&msg.channel)
            {
                continue;
            }
            if !entry
                .data
                .handle
                .try_broadcast(msg.channel, msg.payload.clone())
            {
                self.broadcast_drops += 1;
            }
        }
    }
}

/// Sends to one peer, waiting up to the send timeout for room. Answers false for an unknown
/// peer, a channel the peer did not advertise (it would drop the connection, as TM2's
/// `Peer.Send` guards), a full queue after the timeout, or a stopped peer.
#[derive(Message, Debug, Clone)]
#[rtype(result = "bool")]
pub struct SendTo {
    /// The peer.
    pub peer: PeerId,
    /// The channel.
    pub channel: u8,
    /// The message.
    pub payload: Bytes,
}

impl SendTo {
    /// A send of `message` encoded for a typed channel (see [`Broadcast::typed`]).
    pub fn typed<T: Serialize + ?Sized>(
        peer: PeerId,
        channel: u8,
        message: &T,
    ) -> Result<Self, EncodeError> {
        Ok(Self {
            peer,
            channel,
            payload: codec::encode(message)?.into(),
        })
    }
}

impl Handler<SendTo> for Switch {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, msg: SendTo, _: &mut Self::Context) -> Self::Result {
        let handle = self
            .peer_for(&msg.peer, msg.channel)
            .map(|e| e.data.handle.clone());
        Box::pin(async move {
            match handle {
                Some(h) => h.send(msg.channel, msg.payload).await,
                None => false,
            }
        })
    }
}

/// Sends to one peer if its queue has room now. Answers false otherwise, for an unknown peer,
/// a channel the peer did not advertise, or a stopped peer.
#[derive(Message, Debug, Clone)]
#[rtype(result = "bool")]
pub struct TrySendTo {
    /// The peer.
    pub peer: PeerId,
    /// The channel.
    pub channel: u8,
    /// The message.
    pub payload: Bytes,
}

impl TrySendTo {
    /// A send of `message` encoded for a typed channel (see [`Broadcast::typed`]).
    pub fn typed<T: Serialize + ?Sized>(
        peer: PeerId,
        channel: u8,
        message: &T,
    ) -> Result<Self, EncodeError> {
        Ok(Self {
            peer,
            channel,
            payload: codec::encode(message)?.into(),
        })
    }
}

impl Handler<TrySendTo> for Switch {
    type Result = bool;

    fn handle(&mut self, msg: TrySendTo, _: &mut Self::Context) -> bool {
        self.peer_for(&msg.peer, msg.channel)
            .is_some_and(|e| e.data.handle.try_send(msg.channel, msg.payload))
    }
}

/// Asks for a snapshot of the connected peers.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "PeerSetSnapshot")]
pub struct GetPeers;

/// The connected peers at one moment.
#[derive(Debug, Clone, MessageResponse)]
pub struct PeerSetSnapshot {
    /// Every connected peer.
    pub peers: Vec<PeerInfo>,
    /// How many dialed us.
    pub inbound: usize,
    /// How many we dialed.
    pub outbound: usize,
    /// Broadcast messages dropped so far because a peer's queue was full.
    pub broadcast_drops: u64,
}

impl Handler<GetPeers> for Switch {
    type Result = PeerSetSnapshot;

    fn handle(&mut self, _: GetPeers, _: &mut Self::Context) -> PeerSetSnapshot {
        let peers = self.peers.iter().map(peer_info).collect();
        PeerSetSnapshot {
            peers,
            inbound: self.peers.num_inbound(),
            outbound: self.peers.num_outbound(),
            broadcast_drops: self.broadcast_drops,
        }
    }
}

/// Disconnects a peer that misbehaved. Idempotent: a second request for the same peer (or
/// one for an unknown peer) does nothing, so one `PeerDisconnected` is published (TM2 emits
/// two).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct StopPeerForError {
    /// The peer.
    pub peer: PeerId,
    /// What it did (reported as [`DisconnectReason::Misbehaved`]).
    pub reason: String,
}

impl Handler<StopPeerForError> for Switch {
    type Result = ();

    fn handle(&mut self, msg: StopPeerForError, _: &mut Self::Context) {
        self.stop_peer(msg.peer, DisconnectReason::Misbehaved(msg.reason));
    }
}

/// Disconnects a peer that did nothing wrong (a seed that has served it, an operator command).
/// Reported as [`DisconnectReason::Stopped`], which is no fault of the peer. Idempotent. What
/// is already queued to the peer is still written for up to `drain_timeout` (see
/// [`Stop`]); new sends to it are refused at once.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct DisconnectPeer {
    /// The peer.
    pub peer: PeerId,
    /// Why (for logs and `PeerDisconnected`).
    pub reason: String,
}

impl Handler<DisconnectPeer> for Switch {
    type Result = ();

    fn handle(&mut self, msg: DisconnectPeer, _: &mut Self::Context) {
        self.stop_peer(msg.peer, DisconnectReason::Stopped(msg.reason));
    }
}

/// Stops the node gracefully: no more accepts or dials, every peer closed after its queued
/// messages were written (for up to `drain_timeout`, see [`Stop`]; reactors get
/// `PeerRemoved`), then the Switch stops. Answered once every peer has stopped and the
/// listener is closed (its port free to bind again).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for Switch {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        let mut transport_stopped = None;
        if self.shutdown.is_none() {
            self.shutdown = Some(tx);
            // Answered once the listener is closed (its accept loop may run on the I/O
            // runtime): the shutdown's answer waits for it, so the port is free by then.
            transport_stopped = Some(self.transport.send(StopTransport));
            // Control messages, once each: stop dialing and redialing.
            #[allow(clippy::disallowed_methods)]
            self.dial.stop_redialing.do_send(StopRedialing);
            #[allow(clippy::disallowed_methods)]
            self.dial.stop_dialing.do_send(StopDialing);
            let ids: Vec<PeerId> = self.peers.ids().collect();
            for id in ids {
                self.stop_peer(id, DisconnectReason::Shutdown);
            }
            self.replacing.clear();
            self.maybe_finish_shutdown(ctx);
        } else {
            drop(tx);
        }
        Box::pin(async move {
            if let Some(stopped) = transport_stopped {
                let _ = stopped.await;
            }
            let _ = rx.await;
        })
    }
}

impl Handler<InboundConnection> for Switch {
    type Result = ();

    fn handle(&mut self, msg: InboundConnection, ctx: &mut Self::Context) {
        let up = msg.0;
        if self.shutdown.is_some() {
            return; // Dropping the connection closes it.
        }
        let remote = up.remote_addr;
        let listen_addr = up.node_info.net_address.clone();
        if let Err(reason) = self.admit(up, listen_addr, ctx) {
            self.metrics.inbound_rejected_by_peer_set(&reason);
            self.inbound_rejected(remote, InboundRejection::PeerSet(reason));
        }
    }
}

impl Handler<InboundRejected> for Switch {
    type Result = ();

    fn handle(&mut self, msg: InboundRejected, _: &mut Self::Context) {
        self.inbound_rejected(msg.remote, InboundRejection::Transport(msg.reason));
    }
}

impl Handler<PeerStopped> for Switch {
    type Result = ();

    fn handle(&mut self, msg: PeerStopped, ctx: &mut Self::Context) {
        let PeerStopped { peer, reason } = msg;
        self.stopping.remove(&peer);
        // `remove` answers once per connection: the rest runs exactly once.
        if let Some(entry) = self.peers.remove(&peer) {
            self.update_peer_gauges();
            self.metrics.peer_disconnected(&reason);
            if reason.is_peer_fault() {
                warn!(self.log, "peer stopped for error"; "peer" => %peer, "reason" => %reason);
            } else {
                info!(self.log, "peer disconnected"; "peer" => %peer, "reason" => %reason);
            }
            if self.persistent.contains(&peer) && self.shutdown.is_none() {
                // Control message, once per persistent connection: the Redialer redials at
                // the advertised listen address (not an inbound socket's ephemeral port).
                #[allow(clippy::disallowed_methods)]
                self.dial.disconnected.do_send(PersistentPeerDisconnected {
                    address: entry.dial_address(),
                    at: clock::now(),
                });
            }
            for reactor in &self.reactors {
                // Control message, once per reactor and connection; it must follow every
                // Receive of this connection, which are already in the mailbox.
                #[allow(clippy::disallowed_methods)]
                reactor.recipients.removed.do_send(PeerRemoved {
                    peer,
                    reason: reason.clone(),
                });
            }
            self.events
                .publish(SwitchEvent::PeerDisconnected { peer, reason });
        }
        if let Some((up, listen_addr)) = self.replacing.remove(&peer)
            && let Err(reason) = self.admit(up, listen_addr, ctx)
        {
            debug!(self.log, "replacement connection refused"; "peer" => %peer, "reason" => %reason);
        }
        self.maybe_finish_shutdown(ctx);
    }
}

/// What reactors are told about a connected peer.
fn peer_info(entry: &PeerEntry<PeerState>) -> PeerInfo {
    PeerInfo {
        id: entry.id(),
        node_info: entry.data.node_info.clone(),
        direction: entry.direction,
        persistent: entry.persistent,
        private: entry.private,
        socket_addr: entry.socket_addr,
        handle: entry.data.handle.clone(),
    }
}

/// A reader that yields nothing until its gate opens: holds a new connection's reads until the
/// reactors have been told about the peer. After that, one branch per read.
struct GatedReader<R> {
    /// The wrapped reader.
    inner: R,
    /// `Some` until the gate opens (or is dropped, which ends the connection).
    gate: Option<oneshot::Receiver<()>>,
}

/// Opens a [`GatedReader`].
struct Gate(oneshot::Sender<()>);

impl Gate {
    fn open(self) {
        let _ = self.0.send(());
    }
}

impl<R> GatedReader<R> {
    fn new(inner: R) -> (Gate, Self) {
        let (tx, rx) = oneshot::channel();
        (
            Gate(tx),
            Self {
                inner,
                gate: Some(rx),
            },
        )
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for GatedReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(gate) = &mut this.gate {
            match Pin::new(gate).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => this.gate = None,
                Poll::Ready(Err(_)) => {
                    return Poll::Ready(Err(io::Error::other("connection abandoned before start")));
                }
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}
