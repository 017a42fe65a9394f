//! Connection upgrade: what turns a TCP socket, accepted or dialed, into a verified peer
//! connection.
//!
//! [`upgrade`] runs, each stage under its own timeout (TM2: 3 s each):
//! 1. the secret-connection handshake ([`SecretStream::upgrade_with_early_data`]), which also
//!    sends our `uvarint(len) NodeInfo` (amino), sealed right after our auth frame in the same write
//!    ("early data": two round trips after TCP instead of three, one write fewer per side);
//! 2. the NodeInfo exchange, now only reading the peer's `uvarint(len) NodeInfo` (which a peer
//!    like us sent with its auth frame, and TM2 sends after its handshake; both work): the
//!    length (with its prefix) is checked against 10,240 bytes before the body is read; bytes after it stay
//!    buffered in the secret reader for the connection that follows;
//! 3. [`verify_remote`]: valid NodeInfo, authenticated key = claimed id, not ourselves, the
//!    dialed id, compatible.
//!
//! Sending our NodeInfo before the peer's signature is verified (TM2 sends it after) gives
//! nothing away: a NodeInfo is public (any peer may connect and receive it, and peer exchange
//! advertises our address), it is encrypted to the key we agreed with that peer, and a
//! connection to the wrong id or an impostor is still refused by the checks of step 3 before
//! it becomes a peer.
//!
//! The [`Transport`] actor owns the listener. Every accepted socket first takes a handshake
//! slot ([`HandshakeSlots`]: bounded in total, per remote IP and per subnet); without one it is
//! closed at once (TM2 starts an unbounded number of handshakes). When every slot is taken, a
//! newcomer takes the slot of the oldest unauthenticated connection of the subnet holding the
//! most, whose upgrade is cancelled (reported as [`InboundRejectReason::Evicted`]): silent
//! sockets from a few hosts cannot lock honest newcomers out. Upgraded connections go to the
//! `inbound` recipient (the Switch) with backpressure: the slot is held until the Switch took
//! the connection. Failures go to the `rejected` recipient as [`InboundRejected`]. An accept
//! error never stops accepting (TM2's loop ends for good on the first one); repeated errors
//! back off up to a second so a full file table does not spin a core. Dials
//! ([`Dial`]) run concurrently, each under the dial and handshake timeouts. Refused inbound
//! connections and failed upgrades (both directions) are counted in the node's
//! [`Metrics`].
//!
//! The accept loop and every upgrade run as tasks, on the node's I/O runtime when it has one
//! ([`Transport::with_io_runtime`]) and on the actor's arbiter otherwise. They share the slots
//! under a lock that is never held across an await; the actor itself only answers messages.
//! With an I/O runtime, the handshakes' public-key work never runs on the arbiter, where the
//! reactors are, and an inbound connection first touches the arbiter when it is handed to the
//! Switch, verified. Stopping the actor aborts the loop and every upgrade in progress, closing
//! their sockets; [`Stop`] is answered once the listener is closed.
//!
//! | message | from | reply |
//! | --- | --- | --- |
//! | [`Dial`] | Dialer / Switch | `Result<Upgraded, TransportError>` |
//! | [`UpdateNodeInfo`] | Switch | `()` |
//! | [`Stop`] | Switch | `()`, once the listener is closed |
//! | [`InboundConnection`] (sent) | to the Switch | `()` |
//! | [`InboundRejected`] (sent) | to the Switch | `()` |

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use actix::prelude::*;
use slog::{Logger, debug, warn};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Handle;
use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::task::AbortOnDropHandle;

use crate::actors::clock;
use crate::actors::metrics::Metrics;
use crate::actors::secret_stream::{SecretStream, SecretStreamError};
use crate::codec::amino;
use crate::dial::ConnectAttempts;
use crate::key::NodeKey;
use crate::peers::{HandshakeSlots, SlotRefused, SlotTicket};
use crate::secret::FrameError;
use crate::types::verify_remote;
use crate::types::{
    Direction, Incompatible, NetAddress, NodeInfo, NodeInfoError, PeerCheckError, PeerId,
};

/// Settings of the [`Transport`] actor (from [`crate::P2pConfig`]).
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Timeout of each upgrade stage (secret handshake, NodeInfo exchange). Default 3 s.
    pub handshake_timeout: Duration,
    /// Time an accepted connection has to send its first handshake message (the ephemeral
    /// key), capped by `handshake_timeout`. Default 1 s.
    pub handshake_first_message_timeout: Duration,
    /// Timeout of a dial's TCP connect. Default 3 s.
    pub dial_timeout: Duration,
    /// Inbound handshakes in progress at most. Default 64.
    pub max_handshakes_in_progress: usize,
    /// Inbound handshakes in progress from one IP at most. Default 8.
    pub max_handshakes_per_ip: usize,
    /// Inbound handshakes in progress from one subnet (/24, /64) at most. Default 16.
    pub max_handshakes_per_subnet: usize,
    /// The local IP that dials to loopback addresses are made from, if not the kernel's choice.
    /// Linux routes all of 127.0.0.0/8 to `lo` but sends from 127.0.0.1 whatever the
    /// destination, so a node listening on 127.0.5.1 would reach its peers as 127.0.0.1, and
    /// every node of a one-machine testnet would share one IP in their address books and
    /// handshake limits. [`From<&P2pConfig>`](crate::P2pConfig) sets it to the listen IP when
    /// that is a loopback address other than 127.0.0.1 and `::1` (where binding would change
    /// nothing but the port allocation); dials to non-loopback addresses never use it.
    /// Default: none.
    pub loopback_dial_from: Option<IpAddr>,
}

impl Default for TransportConfig {
    /// The defaults of [`crate::P2pConfig`].
    fn default() -> Self {
        Self::from(&crate::P2pConfig::default())
    }
}

impl From<&crate::P2pConfig> for TransportConfig {
    fn from(c: &crate::P2pConfig) -> Self {
        Self {
            handshake_timeout: c.handshake_timeout,
            handshake_first_message_timeout: c.handshake_first_message_timeout,
            dial_timeout: c.dial_timeout,
            max_handshakes_in_progress: c.max_handshakes_in_progress,
            max_handshakes_per_ip: c.max_handshakes_per_ip,
            max_handshakes_per_subnet: c.max_handshakes_per_subnet,
            loopback_dial_from: Some(c.laddr.ip()).filter(|ip| {
                ip.is_loopback()
                    && *ip != IpAddr::V4(Ipv4Addr::LOCALHOST)
                    && *ip != IpAddr::V6(Ipv6Addr::LOCALHOST)
            }),
        }
    }
}

/// The listener actor: accepts, bounds and upgrades inbound connections, and dials.
pub struct Transport {
    /// Our identity, shared with every upgrade in flight.
    key: NodeKey,
    /// Our NodeInfo (its listen address carries the bound port), for dials.
    info: Arc<NodeInfo>,
    /// Timeouts and limits.
    config: TransportConfig,
    /// What `started` needs to start accepting (taken then).
    pending: Option<Pending>,
    /// Counts refused inbound connections and failed upgrades (both directions).
    metrics: Metrics,
    /// Where the accept loop and upgrades run (and their sockets are registered), if not on
    /// this actor's arbiter.
    io: Option<Handle>,
    /// The accept loop and what it shares with the inbound upgrades it starts, once started.
    accepting: Option<Accepting>,
    /// Log of this node.
    log: Logger,
}

/// The listener and the recipients, until the actor starts.
struct Pending {
    listener: TcpListener,
    inbound: Recipient<InboundConnection>,
    rejected: Recipient<InboundRejected>,
}

impl Transport {
    /// A transport accepting on `listener` (bound by the caller, so bind errors surface before
    /// anything starts).
    pub fn new(
        listener: TcpListener,
        key: NodeKey,
        info: NodeInfo,
        config: TransportConfig,
        inbound: Recipient<InboundConnection>,
        rejected: Recipient<InboundRejected>,
        log: Logger,
    ) -> Self {
        Self {
            key,
            info: Arc::new(info),
            config,
            pending: Some(Pending {
                listener,
                inbound,
                rejected,
            }),
            metrics: Metrics::new(),
            io: None,
            accepting: None,
            log,
        }
    }

    /// Counts into `metrics` (the node's) instead of a private registry.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Accepts, and runs every upgrade (the TCP connect of a dial, the secret handshake, the
    /// NodeInfo exchange, the checks), as tasks on `handle`, a multi-thread tokio runtime,
    /// instead of on this actor's arbiter. The handshake's public-key work (X25519, Ed25519
    /// signing and verification) then no longer competes with the reactors on the arbiter's
    /// one thread and runs on every worker; an inbound connection reaches the arbiter only
    /// once it is verified, and each socket is registered with that runtime from the start,
    /// so the Switch need not move it when the peer's connection starts there
    /// ([`SecretStream::is_on_io_runtime`]).
    /// [`SwitchBuilder::io_runtime`](crate::SwitchBuilder::io_runtime) sets it.
    pub fn with_io_runtime(mut self, handle: Handle) -> Self {
        self.io = Some(handle);
        self
    }
}

impl Actor for Transport {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        let Some(Pending {
            listener,
            inbound,
            rejected,
        }) = self.pending.take()
        else {
            return;
        };
        let shared = Arc::new(Inbound {
            key: self.key.clone(),
            config: self.config.clone(),
            to_switch: inbound,
            rejected,
            metrics: self.metrics.clone(),
            io: self.io.clone(),
            log: self.log.clone(),
            state: Mutex::new(InboundState {
                info: self.info.clone(),
                slots: HandshakeSlots::new(
                    self.config.max_handshakes_in_progress,
                    self.config.max_handshakes_per_ip,
                    self.config.max_handshakes_per_subnet,
                ),
                upgrades: HashMap::new(),
                stopped: false,
            }),
        });
        // The listener was registered where it was bound; the loop registers it again where
        // it runs.
        let task = match listener.into_std() {
            Ok(listener) => spawn_on(self.io.as_ref(), accept_loop(listener, shared.clone())),
            Err(e) => {
                // Only fails when the descriptor cannot be deregistered, which a listening
                // socket never does.
                warn!(self.log, "cannot start accepting"; "error" => %e);
                return;
            }
        };
        self.accepting = Some(Accepting {
            shared,
            task: Some(task),
        });
    }
}

/// Spawns `task` on `io`, or on the current arbiter.
fn spawn_on(
    io: Option<&Handle>,
    task: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    match io {
        Some(io) => io.spawn(task),
        None => actix_rt::spawn(task),
    }
}

/// The accept loop's task and the state it shares with the upgrades it started. Dropped with
/// the actor (stopped or not): the loop and every upgrade in progress are aborted, closing
/// the listener and their sockets.
struct Accepting {
    shared: Arc<Inbound>,
    /// The accept loop, until aborted.
    task: Option<JoinHandle<()>>,
}

impl Accepting {
    /// Aborts the accept loop and every inbound upgrade in progress (including those waiting
    /// for the Switch to take their connection). Returns the loop's task, which ends, and
    /// closes the listener, as soon as its runtime polls it.
    fn abort(&mut self) -> Option<JoinHandle<()>> {
        let task = self.task.take();
        if let Some(task) = &task {
            task.abort();
        }
        let mut state = self.shared.lock();
        state.stopped = true;
        for (upgrade, _) in state.upgrades.values() {
            upgrade.abort();
        }
        task
    }
}

impl Drop for Accepting {
    fn drop(&mut self) {
        self.abort();
    }
}

/// What the accept loop and the inbound upgrades share (they run as tasks, on the I/O runtime
/// or the arbiter).
struct Inbound {
    /// Our identity.
    key: NodeKey,
    /// Timeouts.
    config: TransportConfig,
    /// Where verified connections go (the Switch).
    to_switch: Recipient<InboundConnection>,
    /// Where refused connections are reported (the Switch, which publishes them).
    rejected: Recipient<InboundRejected>,
    /// The node's counters.
    metrics: Metrics,
    /// The I/O runtime the tasks run on, if any.
    io: Option<Handle>,
    /// Log of this node.
    log: Logger,
    /// The handshake slots and the upgrades holding them.
    state: Mutex<InboundState>,
}

/// The part of [`Inbound`] that changes, under its lock (never held across an await).
struct InboundState {
    /// Our NodeInfo as of now ([`UpdateNodeInfo`]); an upgrade keeps the one it started with.
    info: Arc<NodeInfo>,
    /// Inbound handshakes in progress.
    slots: HandshakeSlots,
    /// The task of each inbound upgrade holding a slot, so that an evicted one can be
    /// cancelled (which closes its socket) and all of them when the transport stops. Removed
    /// when the upgrade fails or the Switch took its connection; an upgrade whose entry is
    /// gone was evicted.
    upgrades: HashMap<SlotTicket, (AbortHandle, SocketAddr)>,
    /// Set when the transport stops: nothing new starts.
    stopped: bool,
}

impl Inbound {
    fn lock(&self) -> MutexGuard<'_, InboundState> {
        // A panic under this lock is a bug in the slot bookkeeping; the counts stay usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a handshake slot for `tcp` and starts its upgrade, or closes it at once.
    fn admit(self: &Arc<Self>, tcp: TcpStream, remote: SocketAddr) {
        let mut state = self.lock();
        if state.stopped {
            return;
        }
        let acquired = match state.slots.try_acquire(remote.ip()) {
            Ok(acquired) => acquired,
            Err(refused) => {
                drop(tcp); // Closed at once: no handshake, no buffers.
                self.report(remote, InboundRejectReason::NoHandshakeSlot(refused));
                return;
            }
        };
        let ticket = acquired.ticket;
        if let Some(evicted) = acquired.evicted
            && let Some((task, evicted_remote)) = state.upgrades.remove(&evicted)
        {
            // Its slot is already the newcomer's; aborting its task drops (closes) its socket.
            task.abort();
            self.report(evicted_remote, InboundRejectReason::Evicted);
        }
        let info = state.info.clone();
        // Registered under the lock, so the task (which takes it when it ends) finds it.
        let task = spawn_on(
            self.io.as_ref(),
            self.clone().upgrade(tcp, remote, ticket, info),
        );
        state.upgrades.insert(ticket, (task.abort_handle(), remote));
    }

    /// Upgrades one accepted connection and hands it to the Switch. Holds its slot until the
    /// Switch took the connection (backpressure, not a queue), no longer evictable once
    /// verified.
    async fn upgrade(
        self: Arc<Self>,
        tcp: TcpStream,
        remote: SocketAddr,
        ticket: SlotTicket,
        info: Arc<NodeInfo>,
    ) {
        let (timeout, first) = (
            self.config.handshake_timeout,
            self.config.handshake_first_message_timeout,
        );
        let result = upgrade_within(tcp, &self.key, &info, None, timeout, first)
            .await
            .inspect_err(|e| self.metrics.handshake_failed(Direction::Inbound, e));
        let mut up = {
            let mut state = self.lock();
            if !state.upgrades.contains_key(&ticket) {
                // Evicted while finishing: its slot is a newcomer's now.
                return;
            }
            match result {
                Ok(up) => {
                    state.slots.authenticated(ticket);
                    up
                }
                Err(e) => {
                    state.upgrades.remove(&ticket);
                    state.slots.release(ticket);
                    self.report(remote, InboundRejectReason::Upgrade(Arc::new(e)));
                    return;
                }
            }
        };
        if self.io.is_some() {
            up.stream.made_on_io_runtime();
        }
        let sent = self.to_switch.send(InboundConnection(up)).await;
        let mut state = self.lock();
        state.upgrades.remove(&ticket);
        state.slots.release(ticket);
        if sent.is_err() {
            let gone = TransportError::Io(io::Error::other("switch is gone"));
            self.report(remote, InboundRejectReason::Upgrade(Arc::new(gone)));
        }
    }

    /// Reports a refused inbound connection without ever waiting or queueing.
    fn report(&self, remote: SocketAddr, reason: InboundRejectReason) {
        debug!(self.log, "inbound connection refused"; "remote" => %remote, "reason" => %reason);
        // Counted here, not by the Switch, so a report lost to a full mailbox still counts.
        self.metrics.inbound_rejected_by_transport(&reason);
        let _ = self.rejected.try_send(InboundRejected { remote, reason });
    }
}

/// Accepts until aborted (when the transport stops). Errors (a full file table, a connection
/// reset before accept) are logged and retried after a pause that doubles up to one second.
async fn accept_loop(listener: std::net::TcpListener, shared: Arc<Inbound>) {
    // Registered with the runtime this task runs on.
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            warn!(shared.log, "cannot register the listener; not accepting"; "error" => %e);
            return;
        }
    };
    let mut pause = Duration::from_millis(5);
    loop {
        match listener.accept().await {
            Ok((tcp, remote)) => {
                pause = Duration::from_millis(5);
                shared.admit(tcp, remote);
            }
            Err(e) => {
                warn!(shared.log, "accept failed; still accepting"; "error" => %e, "retry_in" => ?pause);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Dials `addr` and upgrades the connection (TCP connect under the dial timeout, each upgrade
/// stage under the handshake timeout). Dials run concurrently.
///
/// A host name is resolved here, within the dial timeout, and every address it resolves to is
/// tried in turn ([`ConnectAttempts`]: each gets an equal share of the time left) until one
/// connects: `localhost` resolving to `::1` first still reaches a node listening on
/// `127.0.0.1` only. Once TCP connects, the upgrade's outcome is the dial's.
#[derive(Message)]
#[rtype(result = "Result<Upgraded, TransportError>")]
pub struct Dial {
    /// Where to dial: an IP address, or a host name resolved at dial time.
    pub addr: NetAddress,
}

impl Handler<Dial> for Transport {
    type Result = ResponseFuture<Result<Upgraded, TransportError>>;

    fn handle(&mut self, msg: Dial, _: &mut Self::Context) -> Self::Result {
        let (key, info, config) = (self.key.clone(), self.info.clone(), self.config.clone());
        let metrics = self.metrics.clone();
        let work = async move {
            // As `dial`, with a host name resolved and each of its addresses tried, and upgrade
            // failures counted (a failed connect is no handshake).
            let tcp = connect_resolving(&msg.addr, config.dial_timeout, config.loopback_dial_from)
                .await?;
            upgrade(
                tcp,
                &key,
                &info,
                Some(msg.addr.id()),
                config.handshake_timeout,
            )
            .await
            .inspect_err(|e| metrics.handshake_failed(Direction::Outbound, e))
        };
        match &self.io {
            None => Box::pin(work),
            Some(io) => Box::pin(on_io_runtime(io, work)),
        }
    }
}

/// Runs an upgrade as a task on the I/O runtime `io` and marks the stream it makes as
/// registered there. The task is aborted (closing its socket) when the returned future is
/// dropped: when an evicted inbound upgrade is cancelled, or the Transport stops.
fn on_io_runtime(
    io: &Handle,
    work: impl Future<Output = Result<Upgraded, TransportError>> + Send + 'static,
) -> impl Future<Output = Result<Upgraded, TransportError>> + 'static {
    let task = AbortOnDropHandle::new(io.spawn(work));
    async move {
        match task.await {
            Ok(result) => result.map(|mut up| {
                up.stream.made_on_io_runtime();
                up
            }),
            // Panicked, or cancelled by the runtime's shutdown.
            Err(e) => Err(TransportError::Io(io::Error::other(format!(
                "upgrade task failed: {e}"
            )))),
        }
    }
}

/// Stops the transport: no more accepts, the listener is closed (its port free to bind again)
/// and upgrades in progress are dropped, closing their sockets. Dials already answered are
/// unaffected.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Stop> for Transport {
    /// Answered once the listener is closed.
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) -> Self::Result {
        ctx.stop();
        let accept_loop = self.accepting.as_mut().and_then(Accepting::abort);
        Box::pin(async move {
            if let Some(task) = accept_loop {
                // Err(cancelled): the task and its listener are gone.
                let _ = task.await;
            }
        })
    }
}

/// Replaces the NodeInfo sent in later handshakes (the Switch sends it when a reactor
/// registers, so new connections advertise its channels). Upgrades already running keep the
/// NodeInfo they started with.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct UpdateNodeInfo(pub NodeInfo);

impl Handler<UpdateNodeInfo> for Transport {
    type Result = ();

    fn handle(&mut self, msg: UpdateNodeInfo, _: &mut Self::Context) {
        self.info = Arc::new(msg.0);
        if let Some(accepting) = &self.accepting {
            accepting.shared.lock().info = self.info.clone();
        }
    }
}

/// A verified inbound connection, sent to the Switch.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct InboundConnection(pub Upgraded);

/// An inbound connection that did not become a peer, sent to the Switch (which publishes it as
/// `SwitchEvent::InboundRejected`).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct InboundRejected {
    /// The remote socket address.
    pub remote: SocketAddr,
    /// Why.
    pub reason: InboundRejectReason,
}

/// Why an inbound connection was refused by the transport.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum InboundRejectReason {
    /// Too many handshakes in progress (in total, from this IP or from its subnet); closed
    /// without one.
    #[error("no handshake slot: {0}")]
    NoHandshakeSlot(SlotRefused),
    /// Every handshake slot was taken and this connection, not yet authenticated, was the
    /// oldest of the subnet holding the most: its slot went to a newer connection and it was
    /// closed (see [`HandshakeSlots`]).
    #[error("handshake slot given to a newer connection")]
    Evicted,
    /// The upgrade failed (handshake, NodeInfo, checks, timeout).
    #[error("upgrade failed: {0}")]
    Upgrade(Arc<TransportError>),
}

/// A connection that passed every check: encrypted, authenticated, compatible.
#[derive(Debug)]
pub struct Upgraded {
    /// The encrypted stream; any bytes the peer sent after its NodeInfo are buffered in it.
    pub stream: SecretStream,
    /// The peer's NodeInfo (validated).
    pub node_info: NodeInfo,
    /// The peer's socket address.
    pub remote_addr: SocketAddr,
    /// Who opened the connection.
    pub direction: Direction,
}

impl Upgraded {
    /// The peer's id (authenticated by the handshake, equal to its NodeInfo id).
    pub fn id(&self) -> PeerId {
        self.stream.remote_id()
    }
}

/// The step an upgrade was in when it timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Opening the TCP connection (dials only).
    Connect,
    /// The secret-connection handshake.
    SecretHandshake,
    /// Receiving the peer's NodeInfo (ours went out with the secret handshake).
    NodeInfoExchange,
}

/// Why a connection did not become a peer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The socket failed or closed (connect refused, reset, EOF mid-exchange).
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The secret-connection handshake failed.
    #[error(transparent)]
    Secret(SecretStreamError),
    /// The peer's NodeInfo could not be decoded (too large, malformed).
    #[error("node info: {0}")]
    NodeInfo(#[source] NodeInfoError),
    /// A stream frame from the peer did not open while its NodeInfo was read (forged,
    /// replayed or reordered, or a length field over 1024): the peer's bytes, not the socket,
    /// are at fault.
    #[error("bad frame from the peer: {0}")]
    BadFrame(#[source] FrameError),
    /// The connection works but the peer is refused (invalid or incompatible NodeInfo, an id
    /// mismatch, ourselves).
    #[error("rejected: {0}")]
    Rejected(#[from] PeerCheckError),
    /// A stage did not finish within its timeout.
    #[error("timed out during {stage:?} after {after:?}")]
    Timeout {
        /// The stage that timed out.
        stage: Stage,
        /// The timeout that expired.
        after: Duration,
    },
    /// The address given to [`dial`] has a DNS host, which must be resolved first (resolution
    /// is an explicit step, never hidden in a decoder; the [`Dial`] message resolves names).
    #[error("address {0} is not resolved to an IP")]
    Unresolved(NetAddress),
}

impl TransportError {
    /// True when the remote peer is to blame (its bytes broke the protocol, or it lied about
    /// its id): its address deserves a bad mark.
    pub fn is_peer_fault(&self) -> bool {
        match self {
            Self::Secret(e) => e.is_peer_fault(),
            Self::NodeInfo(e) => e.is_peer_fault(),
            Self::BadFrame(e) => e.is_peer_fault(),
            Self::Rejected(e) => e.is_peer_fault(),
            Self::Io(_) | Self::Timeout { .. } | Self::Unresolved(_) => false,
        }
    }

    /// Why the peer is incompatible with us (another network, a missing or different
    /// version, no common channel), when that is why the connection failed.
    pub fn incompatibility(&self) -> Option<&Incompatible> {
        match self {
            Self::Rejected(PeerCheckError::Incompatible(i)) => Some(i),
            _ => None,
        }
    }

    /// True when a stage (connect, handshake, NodeInfo exchange) did not finish in time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }

    /// The socket error, whichever stage it broke.
    fn io_error(&self) -> Option<&io::Error> {
        match self {
            Self::Io(e) | Self::Secret(SecretStreamError::Io(e)) => Some(e),
            _ => None,
        }
    }

    /// True when nothing accepted the TCP connection (refused, host or network unreachable).
    pub fn is_unreachable(&self) -> bool {
        matches!(self.io_error(), Some(e) if matches!(
            e.kind(),
            io::ErrorKind::ConnectionRefused
                | io::ErrorKind::HostUnreachable
                | io::ErrorKind::NetworkUnreachable
                | io::ErrorKind::AddrNotAvailable
        ))
    }

    /// True when the peer closed or reset the connection during the upgrade. This is how a
    /// TM2 node refuses us (it closes without a word once it has read our NodeInfo, e.g. when
    /// our network or version set does not suit it, or it is full).
    pub fn is_closed_by_peer(&self) -> bool {
        matches!(self.io_error(), Some(e) if matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
        ))
    }
}

impl From<SecretStreamError> for TransportError {
    fn from(e: SecretStreamError) -> Self {
        match e {
            SecretStreamError::Timeout(after) => Self::Timeout {
                stage: Stage::SecretHandshake,
                after,
            },
            other => Self::Secret(other),
        }
    }
}

/// Upgrades `tcp` into a verified connection. `dialed` is the id we dialed (outbound), `None`
/// for an accepted connection. `timeout` applies to each stage separately.
///
/// Our NodeInfo goes out as early data with our auth frame, before the peer's signature is
/// checked: it is public, encrypted to the agreed key, and a dial that reaches the wrong id
/// is still refused after the authentication check (see the module docs). A peer that sends
/// its NodeInfo only after the handshake, as TM2 does, is read the same way.
pub async fn upgrade(
    tcp: TcpStream,
    key: &NodeKey,
    ours: &NodeInfo,
    dialed: Option<PeerId>,
    timeout: Duration,
) -> Result<Upgraded, TransportError> {
    upgrade_within(tcp, key, ours, dialed, timeout, timeout).await
}

/// [`upgrade`], with the peer's first handshake message (its ephemeral key) due within
/// `first_message_timeout` (capped by `timeout`).
async fn upgrade_within(
    tcp: TcpStream,
    key: &NodeKey,
    ours: &NodeInfo,
    dialed: Option<PeerId>,
    timeout: Duration,
    first_message_timeout: Duration,
) -> Result<Upgraded, TransportError> {
    let remote_addr = tcp.peer_addr()?;
    let ours_framed = ours.encode_framed();
    let mut stream = SecretStream::upgrade_with_first_message_timeout(
        tcp,
        key,
        timeout,
        first_message_timeout,
        &ours_framed,
    )
    .await?;
    let node_info = tokio::time::timeout(timeout, read_node_info(&mut stream))
        .await
        .map_err(|_| TransportError::Timeout {
            stage: Stage::NodeInfoExchange,
            after: timeout,
        })??;
    verify_remote(ours, stream.remote_id(), &node_info, dialed)?;
    let direction = if dialed.is_some() {
        Direction::Outbound
    } else {
        Direction::Inbound
    };
    Ok(Upgraded {
        stream,
        node_info,
        remote_addr,
        direction,
    })
}

/// Dials `addr` (which must hold an IP; resolve names first, or send the Transport a [`Dial`],
/// which resolves them) and upgrades the connection, requiring the peer to be `addr.id()`.
/// `connect_timeout` bounds the TCP connect and `handshake_timeout` each upgrade stage.
pub async fn dial(
    addr: &NetAddress,
    key: &NodeKey,
    ours: &NodeInfo,
    connect_timeout: Duration,
    handshake_timeout: Duration,
) -> Result<Upgraded, TransportError> {
    let tcp = connect(addr, connect_timeout).await?;
    upgrade(tcp, key, ours, Some(addr.id()), handshake_timeout).await
}

/// Opens the TCP connection of a dial to an IP address, within `timeout`; a host name is
/// refused with [`TransportError::Unresolved`] (see [`connect_resolving`]).
async fn connect(addr: &NetAddress, timeout: Duration) -> Result<TcpStream, TransportError> {
    let socket = addr
        .socket_addr()
        .ok_or_else(|| TransportError::Unresolved(addr.clone()))?;
    connect_any(&[socket], timeout).await
}

/// Opens the TCP connection of a dial within `timeout`: an IP address directly; a host name is
/// resolved (within the same timeout) and its addresses tried in turn by [`connect_any`].
async fn connect_resolving(
    addr: &NetAddress,
    timeout: Duration,
    loopback_from: Option<IpAddr>,
) -> Result<TcpStream, TransportError> {
    if let Some(socket) = addr.socket_addr() {
        return connect_any_from(&[socket], timeout, loopback_from).await;
    }
    let start = clock::now();
    let timed_out = || TransportError::Timeout {
        stage: Stage::Connect,
        after: timeout,
    };
    let addrs: Vec<SocketAddr> =
        tokio::time::timeout(timeout, tokio::net::lookup_host(addr.dial_string()))
            .await
            .map_err(|_| timed_out())??
            .collect();
    let left = timeout.saturating_sub(clock::now().saturating_duration_since(start));
    if left.is_zero() {
        return Err(timed_out());
    }
    connect_any_from(&addrs, left, loopback_from).await
}

/// Connects to the first of `addrs` that accepts, trying them in turn ([`ConnectAttempts`]:
/// duplicates skipped, each attempt an equal share of the time left over the addresses left),
/// all within `timeout`. Fails with the last attempt's error (a timeout is
/// [`TransportError::Timeout`] in [`Stage::Connect`]), or an `io::Error` of kind `NotFound`
/// when `addrs` is empty.
pub async fn connect_any(
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<TcpStream, TransportError> {
    connect_any_from(addrs, timeout, None).await
}

/// As [`connect_any`], a connection to a loopback address made from `loopback_from` when that
/// is given and of the same family ([`TransportConfig::loopback_dial_from`]).
pub async fn connect_any_from(
    addrs: &[SocketAddr],
    timeout: Duration,
    loopback_from: Option<IpAddr>,
) -> Result<TcpStream, TransportError> {
    let mut attempts = ConnectAttempts::new(addrs.iter().copied(), clock::now() + timeout);
    let mut last = None;
    while let Some(attempt) = attempts.next_attempt(clock::now()) {
        let share = attempt.deadline.saturating_duration_since(clock::now());
        let connect = connect_from(attempt.addr, loopback_from);
        match tokio::time::timeout(share, connect).await {
            Ok(Ok(tcp)) => return Ok(tcp),
            Ok(Err(e)) => last = Some(TransportError::Io(e)),
            Err(_) => {
                last = Some(TransportError::Timeout {
                    stage: Stage::Connect,
                    after: timeout,
                });
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        TransportError::Io(io::Error::new(
            io::ErrorKind::NotFound,
            "name has no address",
        ))
    }))
}

/// Connects to `addr`, from `loopback_from` (any port) when `addr` is a loopback address and
/// `loopback_from` one of the same family; otherwise from the kernel's choice.
async fn connect_from(addr: SocketAddr, loopback_from: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = match loopback_from {
        Some(from @ IpAddr::V4(_)) if addr.ip().is_loopback() && addr.is_ipv4() => {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(from, 0))?;
            socket
        }
        Some(from @ IpAddr::V6(_)) if addr.ip().is_loopback() && addr.is_ipv6() => {
            let socket = TcpSocket::new_v6()?;
            socket.bind(SocketAddr::new(from, 0))?;
            socket
        }
        _ => return TcpStream::connect(addr).await,
    };
    socket.connect(addr).await
}

/// Reads the peer's framed NodeInfo (ours went out with the handshake). Reads exactly the
/// peer's frame, so whatever follows stays in the secret reader's buffer.
async fn read_node_info(stream: &mut SecretStream) -> Result<NodeInfo, TransportError> {
    let (reader, _) = stream.halves_mut();
    let mut head = [0u8; amino::MAX_UVARINT_LEN];
    let mut have = 0;
    let body_len = loop {
        reader
            .read_exact(&mut head[have..=have])
            .await
            .map_err(read_error)?;
        have += 1;
        if let Some((_, body_len)) =
            NodeInfo::frame_header(&head[..have]).map_err(TransportError::NodeInfo)?
        {
            break body_len;
        }
    };
    // body_len < MAX_NODE_INFO_SIZE, checked by frame_header before this allocation.
    let mut body = vec![0u8; body_len];
    reader.read_exact(&mut body).await.map_err(read_error)?;
    NodeInfo::decode(&body).map_err(TransportError::NodeInfo)
}

/// A read error of the secret stream: a frame that did not open (the [`FrameError`] the
/// reader carries inside its `io::Error`) is the peer's fault, anything else is the socket's.
fn read_error(e: io::Error) -> TransportError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<FrameError>())
    {
        Some(frame) => TransportError::BadFrame(*frame),
        None => TransportError::Io(e),
    }
}
