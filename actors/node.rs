//! [`SwitchBuilder`] and [`Node`]: how a host program starts and stops a node.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use tm2_p2p::{NodeKey, P2pConfig, SwitchBuilder};
//! let node = SwitchBuilder::new(P2pConfig::default(), NodeKey::generate()?)
//!     .network("my-chain")
//!     .spawn() // binds first, so a bind error surfaces here
//!     .await?;
//! println!("listening as {}", node.net_address());
//! node.shutdown().await;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use actix::prelude::*;
use slog::{Logger, o};
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Handle;

use crate::actors::dialer::{Dialer, DialerSwitch};
use crate::actors::events::{EventBus, EventStream, SwitchEvent};
use crate::actors::metrics::{Metrics, MetricsServer, ServerLimits};
use crate::actors::pex::{PeerExchange, StopExchange, pex_channel_for};
use crate::actors::redialer::Redialer;
use crate::actors::switch::{
    DialRecipients, GetPeers, RegisterReactor, Shutdown, Switch, SwitchError,
};
use crate::actors::transport::{Transport, TransportConfig};
use crate::config::P2pConfig;
use crate::dial::{BackoffConfig, DEFAULT_DIAL_QUEUE_CAPACITY};
use crate::key::NodeKey;
use crate::types::{NetAddress, NodeInfo, NodeInfoOther, VersionInfo};

/// Builds and spawns a node: its Transport (listener), Switch, Dialer and Redialer.
#[derive(Debug)]
pub struct SwitchBuilder {
    /// The p2p configuration.
    config: P2pConfig,
    /// The node's identity.
    key: NodeKey,
    /// The network (chain id) put in our NodeInfo; peers on another network are refused.
    network: String,
    /// Our NodeInfo's version set, software, software version and `other`, when the host set
    /// them; [`NodeInfo::new`]'s defaults otherwise.
    version_set: Option<Vec<VersionInfo>>,
    /// See `version_set`.
    software: Option<String>,
    /// See `version_set`.
    software_version: Option<String>,
    /// See `version_set`.
    other: Option<NodeInfoOther>,
    /// The node's log; discards by default.
    log: Logger,
    /// Where connection tasks run; the current runtime by default.
    io: Option<Handle>,
    /// Reactors registered as the Switch is built, before anything is accepted or dialed.
    reactors: Vec<RegisterReactor>,
    /// The node's event bus, made here so that a host can subscribe before anything runs.
    events: EventBus,
    /// The node's metrics, when the host made them (to pick their namespace, or register them
    /// in its own registry); new ones otherwise.
    metrics: Option<Metrics>,
}

impl SwitchBuilder {
    /// A builder for a node with `config` and identity `key`, on the network `""` until
    /// [`network`](Self::network) is called.
    pub fn new(config: P2pConfig, key: NodeKey) -> Self {
        Self {
            config,
            key,
            network: String::new(),
            version_set: None,
            software: None,
            software_version: None,
            other: None,
            log: Logger::root(slog::Discard, o!()),
            io: None,
            reactors: Vec::new(),
            events: EventBus::new(),
            metrics: None,
        }
    }

    /// The metrics the node counts into, instead of new ones named `tm2p2p_...`: made by the
    /// host with [`Metrics::with_namespace`] and/or registered in the host's own
    /// `prometheus_client` registry with [`Metrics::register_into`], so the host serves them
    /// with its own:
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use tm2_p2p::{Metrics, NodeKey, P2pConfig, SwitchBuilder};
    /// let mut registry = prometheus_client::registry::Registry::default();
    /// let metrics = Metrics::with_namespace("mychain_p2p")?;
    /// metrics.register_into(&mut registry);
    /// let node = SwitchBuilder::new(P2pConfig::default(), NodeKey::generate()?)
    ///     .metrics(metrics)
    ///     .spawn()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// A bounded subscription to the node's events that `filter` accepts, made before the
    /// node runs, so it sees every event from the very first (the connections to
    /// `persistent_peers` and seeds, which are dialed as soon as [`spawn`](Self::spawn)
    /// starts the node). [`Node::subscribe`] after `spawn` sees only what happens from then
    /// on. If `spawn` fails, the stream ends.
    pub fn subscribe(
        &self,
        filter: impl Fn(&SwitchEvent) -> bool + Send + Sync + 'static,
    ) -> EventStream {
        self.events.subscribe(filter)
    }

    /// Registers a reactor as the node is built, before it accepts or dials anything, so the
    /// reactor's channels are in the NodeInfo of every connection. A reactor registered after
    /// [`spawn`](Self::spawn) (with [`RegisterReactor`]) misses the connections made in
    /// between (persistent peers, seeds and saved addresses are dialed at once): those peers
    /// were told this node has no such channel and never send on it. `spawn` fails as
    /// `RegisterReactor` would (a claimed channel, an invalid descriptor, too many channels).
    pub fn reactor(mut self, reactor: RegisterReactor) -> Self {
        self.reactors.push(reactor);
        self
    }

    /// The network (chain id) advertised in our NodeInfo.
    pub fn network(mut self, network: impl Into<String>) -> Self {
        self.network = network.into();
        self
    }

    /// The version set advertised in our NodeInfo, replacing the default (`p2p` =
    /// [`P2P_PROTOCOL_VERSION`](crate::types::P2P_PROTOCOL_VERSION), required). A peer is refused
    /// when a name either side requires is missing on the other, or when a name both have
    /// differs in semver major; a real gno.land node requires `abci`, `app`, `bft`,
    /// `blockchain` and `p2p`: join one with [`gnoland_version_set`](crate::types::gnoland_version_set).
    /// Checked by [`spawn`](Self::spawn) (names unique, printable).
    pub fn version_set(mut self, set: Vec<VersionInfo>) -> Self {
        self.version_set = Some(set);
        self
    }

    /// The software name in our NodeInfo (default `tm2-p2p`; gno.land nodes leave it empty).
    /// Informational: peers never compare it.
    pub fn software(mut self, software: impl Into<String>) -> Self {
        self.software = Some(software.into());
        self
    }

    /// The software version in our NodeInfo (default this crate's version; gno.land nodes
    /// send `v1.0.0-rc.0`). Informational: peers never compare it.
    pub fn software_version(mut self, version: impl Into<String>) -> Self {
        self.software_version = Some(version.into());
        self
    }

    /// The `other` fields of our NodeInfo (`tx_index`, `rpc_address`; default empty), which a
    /// gno.land node fills with `"on"`/`"off"` and its RPC address. Informational.
    pub fn other(mut self, other: NodeInfoOther) -> Self {
        self.other = Some(other);
        self
    }

    /// The node's logger.
    pub fn logger(mut self, log: Logger) -> Self {
        self.log = log;
        self
    }

    /// Runs the connections' reader and writer tasks on `handle` (a multi-thread tokio runtime
    /// the host owns), so that encryption of many peers uses every core, and registers their
    /// sockets with it (its workers, not the arbiter, are woken when a socket is ready). The
    /// accept loop and the upgrades run there too (dials' connects, handshakes, NodeInfo
    /// exchanges: [`Transport::with_io_runtime`](crate::actors::transport::Transport::with_io_runtime)),
    /// so a burst of handshakes never holds up the reactors. By default all of it runs on the
    /// current (actix) runtime. See docs/PERFORMANCE.md, "mconn".
    pub fn io_runtime(mut self, handle: Handle) -> Self {
        self.io = Some(handle);
        self
    }

    /// Validates the config and our NodeInfo, binds the listen address (and `metrics_addr`,
    /// if set), and starts the Transport, the Switch, the Dialer and the Redialer (which dials
    /// `persistent_peers`) on the current actix arbiter. A bind error is returned here, before
    /// anything runs. Outside an actix `System` (e.g. from `#[tokio::main]`) it returns
    /// [`SwitchError::NoActixSystem`], whose message shows the way.
    pub async fn spawn(self) -> Result<Node, SwitchError> {
        let events = self.events.clone();
        if actix::System::try_current().is_none() {
            // Starting an actor here would panic deep in tokio ("spawn_local called from
            // outside of a task::LocalSet"); say what to do instead.
            events.close();
            return Err(SwitchError::NoActixSystem);
        }
        let result = self.start().await;
        if result.is_err() {
            // Streams made with `subscribe` end rather than wait for a node that never ran.
            events.close();
        }
        result
    }

    /// [`spawn`](Self::spawn) but for closing the bus on failure.
    async fn start(self) -> Result<Node, SwitchError> {
        let Self {
            config,
            key,
            network,
            version_set,
            software,
            software_version,
            other,
            log,
            io,
            reactors,
            events,
            metrics,
        } = self;
        config.validate()?;
        let listener = listen(config.laddr).map_err(|source| SwitchError::Bind {
            addr: config.laddr,
            source,
        })?;
        let bound = listener.local_addr().map_err(|source| SwitchError::Bind {
            addr: config.laddr,
            source,
        })?;
        let advertised = config.external_address.unwrap_or(bound);
        let net_address =
            NetAddress::from_socket_addr(key.id(), advertised).map_err(|e| SwitchError::Bind {
                addr: advertised,
                source: std::io::Error::other(e),
            })?;
        let metrics = metrics.unwrap_or_default();
        let metrics_server = match config.metrics_addr {
            Some(addr) => Some(Arc::new(
                MetricsServer::bind(addr, metrics.clone(), ServerLimits::default())
                    .await
                    .map_err(|source| SwitchError::MetricsBind { addr, source })?,
            )),
            None => None,
        };
        let mut info = NodeInfo::new(net_address.clone(), network, Vec::new());
        info.moniker.clone_from(&config.moniker);
        if let Some(set) = version_set {
            info.version_set = set;
        }
        if let Some(software) = software {
            info.software = software;
        }
        if let Some(version) = software_version {
            info.version = version;
        }
        if let Some(other) = other {
            info.other = other;
        }
        // Without channels yet (reactors add theirs): everything else is checked here, so a
        // bad version set or software string is a spawn error, not a refusal by every peer.
        info.validate().map_err(SwitchError::NodeInfo)?;
        let log = log.new(o!("node" => key.id().to_string()));
        let transport_config = TransportConfig::from(&config);
        let pex_config = config.pex.then(|| config.clone());
        let max_pex_addresses = config.max_pex_addresses;
        let own_id = key.id();
        let pex_log = log.clone();
        let mut registered = Ok(());
        let mut peer_exchange = None;
        let switch = Switch::create({
            let registered = &mut registered;
            let peer_exchange = &mut peer_exchange;
            let events = events.clone();
            let info = info.clone();
            let metrics = metrics.clone();
            move |ctx| {
                let transport = Transport::new(
                    listener,
                    key,
                    info.clone(),
                    transport_config,
                    ctx.address().recipient(),
                    ctx.address().recipient(),
                    log.clone(),
                )
                .with_metrics(metrics.clone());
                let transport = match &io {
                    Some(io) => transport.with_io_runtime(io.clone()),
                    None => transport,
                }
                .start();
                let dialer = Dialer::new(
                    DEFAULT_DIAL_QUEUE_CAPACITY,
                    config.max_concurrent_dials,
                    DialerSwitch {
                        begin: ctx.address().recipient(),
                        finished: ctx.address().recipient(),
                    },
                    transport.clone().recipient(),
                    log.clone(),
                )
                .start();
                let redialer = Redialer::new(
                    config.persistent_peers.clone(),
                    BackoffConfig::from_config(&config),
                    dialer.clone().recipient(),
                    log.clone(),
                )
                .start();
                let dial = DialRecipients {
                    queue: dialer.clone().recipient(),
                    stop_dialing: dialer.recipient(),
                    watch: redialer.clone().recipient(),
                    connected: redialer.clone().recipient(),
                    disconnected: redialer.clone().recipient(),
                    dial_failed: redialer.clone().recipient(),
                    stop_redialing: redialer.recipient(),
                };
                let pex = pex_config.map(|pex_config| {
                    PeerExchange::new(
                        own_id,
                        &pex_config,
                        ctx.address(),
                        events.subscribe(|e| matches!(e, SwitchEvent::DialFailed { .. })),
                        pex_log,
                    )
                    .with_metrics(metrics.clone())
                    .start()
                });
                let mut switch = Switch::new(config, info, transport, dial, events, io, log)
                    .with_metrics(metrics);
                // Before the Switch runs, so the Transport has the NodeInfo with every channel
                // (peer exchange's too) ahead of the first connection: a peer that connected
                // earlier would never learn a channel registered later.
                let pex_reactor = pex.as_ref().map(|pex| {
                    RegisterReactor::new("pex", vec![pex_channel_for(max_pex_addresses)], pex)
                });
                *registered = pex_reactor
                    .into_iter()
                    .chain(reactors)
                    .try_for_each(|r| switch.register(r));
                *peer_exchange = pex;
                switch
            }
        });
        if let Err(e) = registered {
            let _ = switch.send(Shutdown).await;
            if let Some(pex) = &peer_exchange {
                let _ = pex.send(StopExchange).await;
            }
            return Err(e);
        }
        Ok(Node {
            peer_exchange,
            switch,
            net_address,
            local_addr: bound,
            events,
            metrics,
            metrics_server,
        })
    }
}

/// Binds a listener on `addr` with a backlog of [`LISTEN_BACKLOG`] (tokio's `bind` uses 128,
/// which a burst of connections overflows: clients then believe they are connected seconds
/// before the node accepts them) and `SO_REUSEADDR`, so a restarted node can bind its port
/// while old connections are in TIME_WAIT.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The listen backlog: connections the kernel has completed and holds until we accept them (capped
/// by `net.core.somaxconn`, 4096 on current Linux). Handshake slots, not this, bound the work.
pub const LISTEN_BACKLOG: u32 = 1024;

/// A running node: the address of its Switch, the address it listens on, and its events.
#[derive(Debug, Clone)]
pub struct Node {
    /// The peer-exchange reactor, when `pex = true`.
    peer_exchange: Option<Addr<PeerExchange>>,
    /// The Switch actor.
    switch: Addr<Switch>,
    /// Our id and the address peers can dial.
    net_address: NetAddress,
    /// The socket address actually bound.
    local_addr: SocketAddr,
    /// The event publisher.
    events: EventBus,
    /// The node's metrics.
    metrics: Metrics,
    /// The HTTP responder serving them, when `metrics_addr` is set; stopped by
    /// [`shutdown`](Node::shutdown) or when the last handle is dropped.
    metrics_server: Option<Arc<MetricsServer>>,
}

impl Node {
    /// The Switch: send it `RegisterReactor`, `DialPeers`, `Broadcast`, ...
    pub fn switch(&self) -> Addr<Switch> {
        self.switch.clone()
    }

    /// The peer-exchange reactor, when the config enables it (`pex = true`, the default).
    pub fn peer_exchange(&self) -> Option<Addr<PeerExchange>> {
        self.peer_exchange.clone()
    }

    /// `id@ip:port` as advertised to peers (the bound port, even when the config said 0).
    pub fn net_address(&self) -> NetAddress {
        self.net_address.clone()
    }

    /// The socket address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The node's metrics (also when `metrics_addr` is not set): read them, encode them, or
    /// add the host program's own.
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// The address the metrics are served on (`http://ADDR/metrics`; the bound port, even
    /// when the config said 0), or `None` when `metrics_addr` is not set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_server.as_ref().map(|s| s.local_addr())
    }

    /// A bounded subscription to the events `filter` accepts, from now on; a subscriber that
    /// falls behind gets [`SwitchEvent::Lagged`].
    pub fn subscribe(
        &self,
        filter: impl Fn(&SwitchEvent) -> bool + Send + Sync + 'static,
    ) -> EventStream {
        self.events.subscribe(filter)
    }

    /// Waits until at least `n` peers are connected and returns how many are, or `None` if the
    /// node shuts down first. Wrap it in a timeout for a deadline:
    ///
    /// ```no_run
    /// # async fn run(node: tm2_p2p::Node) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// let peers = tokio::time::timeout(Duration::from_secs(30), node.wait_for_peers(3))
    ///     .await?
    ///     .ok_or("node stopped")?;
    /// println!("{peers} peers");
    /// # Ok(()) }
    /// ```
    pub async fn wait_for_peers(&self, n: usize) -> Option<usize> {
        // Subscribed before counting, so a connection between the two is not missed.
        let mut changes = self.subscribe(|e| {
            matches!(
                e,
                SwitchEvent::PeerConnected { .. } | SwitchEvent::PeerDisconnected { .. }
            )
        });
        loop {
            let connected = self.switch.send(GetPeers).await.ok()?.peers.len();
            if connected >= n {
                return Some(connected);
            }
            changes.recv().await?;
        }
    }

    /// Stops the node gracefully: stops accepting, closes every peer once what was queued to
    /// it is written (for up to the config's `drain_timeout`; reactors get `PeerRemoved`),
    /// waits for them, then stops the Switch and the metrics server. The listen port (and the
    /// metrics port) is free again when this returns, and every [`EventStream`] returns
    /// `None` once it has returned the events it holds.
    pub async fn shutdown(&self) {
        let _ = self.switch.send(Shutdown).await;
        // Every peer is gone and `PeerDisconnected` published: end the event streams, whatever
        // clones of this `Node` are still alive.
        self.events.close();
        if let Some(server) = &self.metrics_server {
            server.stop().await;
        }
        if let Some(pex) = &self.peer_exchange {
            let _ = pex.send(StopExchange).await;
        }
    }
}
