//! The local testnet: a seed and N nodes in one process on loopback addresses that discover
//! each other and gossip M messages; what `tm2p2p testnet` (and `cargo run --release`) runs.
//!
//! [`run`] does, in order:
//!
//! 1. **Start.** Raise the soft open-file limit to the hard one and check that the run fits
//!    (below, "Limits"). A seed, then `nodes` nodes, each on a loopback address (below) port 0
//!    with a fresh [`NodeKey`], peer exchange on with a short `pex_interval`, no persistent
//!    peers, and `seeds` = the seed's address. Each node registers a [`Gossip`] reactor as it
//!    is built ([`SwitchBuilder::reactor`]), so every connection knows it gossips. The seed
//!    runs in `seed_mode`: it hands out addresses and disconnects every peer shortly after
//!    serving it, so it is no part of the gossip network; it does not gossip and is not
//!    counted among the nodes.
//! 2. **Converge.** Wait until the network has converged (below), at most
//!    `converge_timeout`; otherwise [`TestnetError::NotConverged`].
//! 3. **Gossip.** Publish `messages` messages of `message_size` bytes, each from a node chosen
//!    by a RNG seeded with `rng_seed` (the same seed gives the same publishers and payloads).
//!    A payload starts with its message number, so every payload, hence every
//!    [`MessageId`], is distinct. Publishing is paced by a window: at most `max_in_flight`
//!    messages are published and not yet delivered at every node, so the load adapts to
//!    what the network carries and no backlog overflows. Wait until every node has delivered
//!    every message, giving up when no delivery arrived for `delivery_timeout`.
//! 4. **Stop.** Shut every node down gracefully (also after an error), then report.
//!
//! # Addresses
//!
//! The seed listens on 127.0.0.1 and node *i* on its own loopback IP, `127.a.b.1` with
//! `a.b` = *i* + 1 ([`node_ip`]): each node in its own /24, so the address book's network
//! groups and the handshake limits per IP and per subnet see one host per node, as on a real
//! network. Linux routes all of 127.0.0.0/8 to `lo`, and a node on such an address dials its
//! peers from it ([`TransportConfig::loopback_dial_from`]). Where only 127.0.0.1 can be bound
//! (macOS, for one), the run says so ([`TestnetProgress::one_ip`]) and puts every node on
//! 127.0.0.1, as does `spread_addresses = false`; the per-IP handshake bound is then raised to
//! the overall one, and the book's per-group limit slows convergence past about 100 nodes
//! (docs/ARCHITECTURE.md, the address book).
//!
//! [`TransportConfig::loopback_dial_from`]: crate::actors::transport::TransportConfig::loopback_dial_from
//!
//! # Limits
//!
//! Every connection is two sockets of this process. A node keeps at most `max_outbound`
//! outbound peers (TM2's 10 by default), so a run needs about [`open_files_needed`]
//! descriptors. When the open-file limit is lower, each node's outbound target is lowered to
//! the most that fits (not below the peers convergence requires; the report says so), and
//! when even that does not fit the run fails at once ([`TestnetError::OpenFiles`]).
//! [`MAX_NODES`] is the largest run measured (docs/PERFORMANCE.md).
//!
//! # Convergence
//!
//! Node *a* **counts** node *b* as a peer when *a*'s Switch lists *b* as connected
//! ([`GetPeers`]), *b* is one of the testnet's nodes (not the seed) and *b*'s NodeInfo
//! advertises the gossip channel. The network has **converged** when, in one round of
//! snapshots of every node:
//!
//! - every node counts at least `min(target_peers, nodes − 1)` peers, and
//! - the graph whose edges are counted peers (in either direction) is connected, so a message
//!   published anywhere can reach every node.
//!
//! The check runs after each `PeerConnected` or `PeerDisconnected` event of any node (several
//! arriving together are checked once), and at least every [`RECHECK_EVERY`].
//!
//! # Measurements
//!
//! All instants come from [`clock::now`] in this one process, so they are comparable across
//! nodes. *Time to converge* runs from the seed's start to the first converged check.
//! A *delivery* is a node other than the publisher handing a message to its subscriber; there
//! are `messages × (nodes − 1)` expected. *Latency* runs from just before the publisher's
//! reactor is asked to publish to the moment this run receives the delivery from the other
//! node's subscription. *Bytes sent* are the gossip payload bytes handed to connections
//! ([`GossipStats::payload_bytes_sent`](crate::actors::gossip::GossipStats::payload_bytes_sent)), without packet headers and encryption. *Peers per
//! node* are counted after the gossip phase.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use futures::stream::{Stream, StreamExt, select_all};
use futures::{FutureExt, future::join_all};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use slog::{Logger, o};

use crate::actors::clock;
use crate::actors::events::SwitchEvent;
use crate::actors::gossip::{
    DEFAULT_SEEN_CAPACITY, Delivered, GOSSIP_CHANNEL, GetGossipStats, Gossip, GossipConfig,
    MessageId, Publish, PublishError, SubscribeDelivered,
};
use crate::actors::node::{Node, SwitchBuilder};
use crate::actors::switch::{GetPeers, RegisterReactor, SwitchError};
use crate::config::P2pConfig;
use crate::key::{KeyError, NodeKey};
use crate::types::PeerId;

/// How often convergence is checked when no peer event arrives.
pub const RECHECK_EVERY: Duration = Duration::from_millis(100);

/// The most deliveries a run may expect (`messages × (nodes − 1)`): each one's latency is
/// kept (4 bytes) for the percentiles.
pub const MAX_DELIVERIES: u64 = 10_000_000;

/// The most nodes a run may start: the largest run measured (1,000 nodes converge in 10-15 s on
/// 2 shared cores and deliver everything, docs/PERFORMANCE.md). All run on one thread and every
/// connection costs two sockets of this process ([`open_files_needed`]), so larger runs are
/// slower to converge and need a raised open-file limit.
pub const MAX_NODES: usize = 1000;

/// Descriptors set aside besides the nodes' listeners and connections: the runtime's own,
/// standard streams, and connections that exist only briefly (refused inbound ones).
pub const RESERVED_OPEN_FILES: u64 = 256;

/// TM2's `max_num_outbound_peers`, each node's outbound target unless the open-file limit
/// lowers it.
pub const DEFAULT_MAX_OUTBOUND: usize = 10;

/// The network (chain id) of the testnet's nodes.
pub const TESTNET_NETWORK: &str = "tm2p2p-testnet";

/// What a testnet run does. [`Default`] is what `tm2p2p testnet` runs without options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestnetConfig {
    /// Gossiping nodes, besides the seed (at least 2, at most [`MAX_NODES`]). Default 16.
    pub nodes: usize,
    /// Messages to publish. Default 1000.
    pub messages: usize,
    /// Bytes per message (at least 8, the message number; at most the gossip limit).
    /// Default 256.
    pub message_size: usize,
    /// Seeds the RNG that picks each message's publisher and fills its payload. Default 1.
    pub rng_seed: u64,
    /// Converged means every node has at least `min(target_peers, nodes − 1)` peers (and the
    /// peer graph is connected). Default 4.
    pub target_peers: usize,
    /// Each node's `pex_interval`: how often it asks for and dials addresses while below its
    /// outbound target. Default 100 ms.
    pub pex_interval: Duration,
    /// At most this many messages are published and not yet delivered everywhere. Default 64.
    pub max_in_flight: usize,
    /// How long the network may take to converge. Default 30 s.
    pub converge_timeout: Duration,
    /// How long the gossip phase waits for the next delivery before it gives up and counts
    /// the missing ones as lost. Default 30 s.
    pub delivery_timeout: Duration,
    /// Whether nodes run peer exchange. Without it they never learn of each other, so the run
    /// cannot converge: this exists to exercise that failure. Default true.
    pub discovery: bool,
    /// Each node's outbound peer target (`max_num_outbound_peers`), lowered at run time when
    /// the open-file limit cannot hold it (module docs, "Limits"). Default
    /// [`DEFAULT_MAX_OUTBOUND`].
    pub max_outbound: usize,
    /// Whether each node gets its own loopback IP (module docs, "Addresses"); false puts
    /// every node on 127.0.0.1. Default true.
    pub spread_addresses: bool,
}

impl Default for TestnetConfig {
    fn default() -> Self {
        Self {
            nodes: 16,
            messages: 1000,
            message_size: 256,
            rng_seed: 1,
            target_peers: 4,
            pex_interval: Duration::from_millis(100),
            max_in_flight: 64,
            converge_timeout: Duration::from_secs(30),
            delivery_timeout: Duration::from_secs(30),
            discovery: true,
            max_outbound: DEFAULT_MAX_OUTBOUND,
            spread_addresses: true,
        }
    }
}

impl TestnetConfig {
    /// The peers each node must count for the network to have converged.
    pub fn required_peers(&self) -> usize {
        self.target_peers.min(self.nodes.saturating_sub(1))
    }

    /// Deliveries a complete run makes: `messages × (nodes − 1)`.
    pub fn expected_deliveries(&self) -> u64 {
        (self.messages as u64).saturating_mul(self.nodes.saturating_sub(1) as u64)
    }

    /// The outbound target a run uses under an open-file limit of `limit`: the largest, at
    /// most `max_outbound` and at least the peers convergence requires, whose run fits
    /// ([`open_files_needed`]); [`TestnetError::OpenFiles`] when none does.
    pub fn max_outbound_within(&self, limit: u64) -> Result<usize, TestnetError> {
        let least = self.required_peers().clamp(1, self.max_outbound.max(1));
        (least..=self.max_outbound.max(least))
            .rev()
            .find(|&o| open_files_needed(self.nodes, o) <= limit)
            .ok_or(TestnetError::OpenFiles {
                nodes: self.nodes,
                needed: open_files_needed(self.nodes, least),
                limit,
            })
    }

    /// Checks the numbers, naming the bad field.
    pub fn validate(&self) -> Result<(), TestnetError> {
        let bad = |field, reason: String| Err(TestnetError::Config { field, reason });
        if !(2..=MAX_NODES).contains(&self.nodes) {
            return bad("nodes", format!("must be 2 to {MAX_NODES}"));
        }
        let max_size = GossipConfig::default().max_message_size;
        if !(8..=max_size).contains(&self.message_size) {
            return bad("message_size", format!("must be 8 to {max_size} bytes"));
        }
        if self.expected_deliveries() > MAX_DELIVERIES {
            return bad(
                "messages",
                format!("messages × (nodes − 1) must be at most {MAX_DELIVERIES}"),
            );
        }
        if self.max_outbound == 0 {
            return bad("max_outbound", "must be positive".into());
        }
        if self.max_in_flight == 0 {
            return bad("max_in_flight", "must be positive".into());
        }
        if self.pex_interval.is_zero() {
            return bad("pex_interval", "must be positive".into());
        }
        Ok(())
    }
}

/// Why a testnet run failed. A run that converged but lost messages is not an error: its
/// [`TestnetReport`] says how many ([`TestnetReport::lost`]).
#[derive(Debug, thiserror::Error)]
pub enum TestnetError {
    /// A [`TestnetConfig`] field is out of range.
    #[error("invalid testnet setting {field}: {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The open-file limit cannot hold the run, even with each node's outbound target lowered
    /// to the peers convergence requires.
    #[error(
        "{nodes} nodes need about {needed} open files, more than the limit of {limit}: \
         raise it (ulimit -n) or run fewer nodes"
    )]
    OpenFiles {
        /// Nodes asked for.
        nodes: usize,
        /// Descriptors needed with the smallest outbound target ([`open_files_needed`]).
        needed: u64,
        /// The open-file limit after raising the soft limit to the hard one.
        limit: u64,
    },
    /// A node key could not be generated.
    #[error("cannot generate a node key: {0}")]
    Key(#[from] KeyError),
    /// A node (or its gossip reactor) could not be started.
    #[error("cannot start {which}: {source}")]
    Spawn {
        /// `"the seed"` or `"node N"`.
        which: String,
        /// Why (boxed: the error type stays small).
        source: Box<SwitchError>,
    },
    /// The network did not converge in time.
    #[error(
        "the network did not converge within {timeout:?}: {ready} of {nodes} nodes had {required} \
         peers, peer graph {}",
        if *connected { "connected" } else { "not connected" }
    )]
    NotConverged {
        /// The timeout.
        timeout: Duration,
        /// Nodes that had the required peers at the last check.
        ready: usize,
        /// All nodes.
        nodes: usize,
        /// Peers each node needed.
        required: usize,
        /// Whether the peer graph was connected at the last check.
        connected: bool,
    },
    /// A node's reactor refused a message.
    #[error("publishing message {index} failed: {source}")]
    Publish {
        /// The message number.
        index: usize,
        /// Why.
        source: PublishError,
    },
    /// A node's actors stopped while the run needed them.
    #[error("a node stopped during the run")]
    NodeStopped,
}

/// Told how a run progresses, to show it (every method does nothing by default; `()` shows
/// nothing).
pub trait TestnetProgress {
    /// Each node could not get its own loopback IP (binding `_tried` failed with `_error`), so
    /// every node runs on 127.0.0.1 (module docs, "Addresses").
    fn one_ip(&mut self, _tried: Ipv4Addr, _error: &io::Error) {}
    /// The seed and every node are listening and discovering each other.
    fn started(&mut self, _nodes: usize) {}
    /// After each convergence check: `ready` of `nodes` nodes have the required peers.
    fn discovery(&mut self, _ready: usize, _nodes: usize) {}
    /// The network converged after `_elapsed`.
    fn converged(&mut self, _elapsed: Duration) {}
    /// Gossip begins; `_expected` deliveries are awaited.
    fn gossip_started(&mut self, _expected: u64) {}
    /// After each delivery: `delivered` of `expected`.
    fn delivered(&mut self, _delivered: u64, _expected: u64) {}
    /// Gossip is over (complete or given up); nodes are shutting down.
    fn gossip_finished(&mut self) {}
}

impl TestnetProgress for () {}

/// What a run measured; its [`Display`](fmt::Display) is the table `tm2p2p testnet` prints.
#[derive(Debug, Clone, PartialEq)]
pub struct TestnetReport {
    /// Gossiping nodes (the seed not counted).
    pub nodes: usize,
    /// Messages published.
    pub messages: usize,
    /// Bytes per message.
    pub message_size: usize,
    /// The RNG seed used.
    pub rng_seed: u64,
    /// The most messages that were in flight at once (the pacing window).
    pub max_in_flight: usize,
    /// Peers each node needed for convergence.
    pub required_peers: usize,
    /// Each node's outbound peer target, as the run used it.
    pub max_outbound: usize,
    /// The target asked for, when the open-file limit lowered it (module docs, "Limits").
    pub max_outbound_asked: Option<usize>,
    /// The open-file limit of the run, where known.
    pub open_file_limit: Option<u64>,
    /// Whether each node had its own loopback IP (else all were on 127.0.0.1).
    pub spread_addresses: bool,
    /// From the seed's start to convergence.
    pub converge_time: Duration,
    /// Peers per node after the gossip phase.
    pub peers: PeerCounts,
    /// Deliveries made (each message at each node but its publisher, once).
    pub delivered: u64,
    /// Deliveries expected: `messages × (nodes − 1)`.
    pub expected: u64,
    /// Publish-to-delivery latency over all deliveries.
    pub latency: Latency,
    /// From the first publish to the last delivery (or giving up).
    pub gossip_time: Duration,
    /// Gossip payload bytes handed to connections by all nodes.
    pub bytes_sent: u64,
    /// Copies the reactors dropped because a peer's queue and backlog were full.
    pub dropped: u64,
    /// Copies that arrived again and were dropped by de-duplication, over all nodes.
    pub duplicates: u64,
    /// Messages delivered twice at one node, or unknown: always 0 unless something is broken.
    pub anomalies: u64,
    /// This process's peak resident memory at the end of the run (Linux's `VmHWM`), where
    /// known.
    pub peak_rss: Option<u64>,
}

impl TestnetReport {
    /// Deliveries missing: expected but not made.
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.delivered)
    }

    /// Whether every message reached every node, each once.
    pub fn is_complete(&self) -> bool {
        self.lost() == 0 && self.anomalies == 0
    }
}

impl fmt::Display for TestnetReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows = [
            (
                "nodes",
                if self.spread_addresses {
                    format!(
                        "{} (+1 seed), on 127.0.0.1 (seed) and {} to {}, one IP each",
                        self.nodes,
                        node_ip(0),
                        node_ip(self.nodes.saturating_sub(1))
                    )
                } else {
                    format!("{} (+1 seed), on 127.0.0.1", self.nodes)
                },
            ),
            (
                "outbound peers",
                match (self.max_outbound_asked, self.open_file_limit) {
                    (Some(asked), Some(limit)) => format!(
                        "at most {} a node ({asked} would exceed the open-file limit {limit})",
                        self.max_outbound
                    ),
                    _ => format!("at most {} a node", self.max_outbound),
                },
            ),
            (
                "messages",
                format!(
                    "{} x {} bytes from random nodes, at most {} in flight (rng seed {})",
                    self.messages, self.message_size, self.max_in_flight, self.rng_seed
                ),
            ),
            (
                "time to converge",
                format!(
                    "{} (every node >= {} peers, peer graph connected)",
                    duration(self.converge_time),
                    self.required_peers
                ),
            ),
            (
                "peers per node",
                format!(
                    "min {} / mean {:.1} / max {}",
                    self.peers.min, self.peers.mean, self.peers.max
                ),
            ),
            (
                "messages delivered",
                format!("{} of {}", self.delivered, self.expected),
            ),
            (
                "latency",
                format!(
                    "p50 {} / p99 {} / max {}",
                    duration(self.latency.p50),
                    duration(self.latency.p99),
                    duration(self.latency.max)
                ),
            ),
            ("gossip time", duration(self.gossip_time)),
            (
                "bytes sent",
                format!(
                    "{} gossip payload ({} duplicates dropped)",
                    bytes(self.bytes_sent),
                    self.duplicates
                ),
            ),
            ("lost", self.lost().to_string()),
            (
                "peak memory",
                self.peak_rss
                    .map_or_else(|| "unknown".into(), |b| format!("{} resident", bytes(b))),
            ),
        ];
        writeln!(f, "{:<20}  result", "testnet")?;
        writeln!(f, "{:<20}  {}", "-".repeat(20), "-".repeat(50))?;
        for (name, value) in rows {
            writeln!(f, "{name:<20}  {value}")?;
        }
        if self.dropped > 0 {
            writeln!(f, "{:<20}  {}", "copies dropped", self.dropped)?;
        }
        if self.anomalies > 0 {
            writeln!(f, "{:<20}  {}", "anomalies", self.anomalies)?;
        }
        Ok(())
    }
}

/// Peers per node: least, mean, most.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PeerCounts {
    /// The fewest.
    pub min: usize,
    /// The mean.
    pub mean: f64,
    /// The most.
    pub max: usize,
}

impl PeerCounts {
    /// The counts of `per_node` (all zero for none).
    pub fn of(per_node: &[usize]) -> Self {
        let (Some(&min), Some(&max)) = (per_node.iter().min(), per_node.iter().max()) else {
            return Self::default();
        };
        let mean = per_node.iter().sum::<usize>() as f64 / per_node.len() as f64;
        Self { min, mean, max }
    }
}

/// Latency percentiles (nearest rank).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    /// The median.
    pub p50: Duration,
    /// The 99th percentile.
    pub p99: Duration,
    /// The largest.
    pub max: Duration,
}

impl Latency {
    /// The percentiles of `micros` (latencies in microseconds; sorted here). All zero for
    /// none.
    pub fn of(micros: &mut [u32]) -> Self {
        micros.sort_unstable();
        let at = |p: usize| {
            // Nearest rank: the smallest value with at least p % of values at or below it.
            let rank = (p * micros.len()).div_ceil(100).max(1);
            micros
                .get(rank - 1)
                .map_or(Duration::ZERO, |&us| Duration::from_micros(us.into()))
        };
        Self {
            p50: at(50),
            p99: at(99),
            max: at(100),
        }
    }
}

/// Where the network stands at one check; see the module docs, "Convergence".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Convergence {
    /// Nodes that count at least the required peers.
    pub ready: usize,
    /// All nodes.
    pub nodes: usize,
    /// Whether the graph of counted peers (either direction) is connected.
    pub connected: bool,
}

impl Convergence {
    /// Evaluates `peers[i]`, the nodes (by index) node `i` counts as peers, against
    /// `required` peers per node. Indices out of range are ignored.
    pub fn evaluate(peers: &[Vec<usize>], required: usize) -> Self {
        let n = peers.len();
        let ready = peers.iter().filter(|p| p.len() >= required).count();
        let mut adjacent = vec![Vec::new(); n];
        for (a, list) in peers.iter().enumerate() {
            for &b in list.iter().filter(|&&b| b < n && b != a) {
                adjacent[a].push(b);
                adjacent[b].push(a);
            }
        }
        let mut reached = vec![false; n];
        let mut queue = VecDeque::new();
        if n > 0 {
            reached[0] = true;
            queue.push_back(0);
        }
        while let Some(a) = queue.pop_front() {
            for &b in &adjacent[a] {
                if !reached[b] {
                    reached[b] = true;
                    queue.push_back(b);
                }
            }
        }
        Self {
            ready,
            nodes: n,
            connected: reached.iter().all(|&r| r),
        }
    }

    /// Every node ready and the graph connected.
    pub fn is_converged(&self) -> bool {
        self.ready == self.nodes && self.connected
    }
}

/// Runs a testnet as the module docs describe, telling `progress` how it goes. Must run inside
/// an actix system. Every node is shut down before this returns, whatever the outcome.
pub async fn run(
    config: TestnetConfig,
    mut progress: impl TestnetProgress,
) -> Result<TestnetReport, TestnetError> {
    config.validate()?;
    let open_file_limit = raise_open_file_limit();
    let max_outbound = match open_file_limit {
        Some(limit) => config.max_outbound_within(limit)?,
        None => config.max_outbound,
    };
    let spread_addresses = config.spread_addresses
        && match std::net::TcpListener::bind((node_ip(0), 0)) {
            Ok(_) => true,
            Err(e) => {
                progress.one_ip(node_ip(0), &e);
                false
            }
        };
    let layout = Layout {
        max_outbound,
        spread_addresses,
    };
    let started = clock::now();
    let mut net = Testnet {
        seed: None,
        nodes: Vec::new(),
    };
    let result = async {
        net.start(&config, layout).await?;
        progress.started(config.nodes);
        let converge_time = net.converge(&config, started, &mut progress).await?;
        progress.converged(converge_time);
        let gossip = net.gossip(&config, &mut progress).await?;
        progress.gossip_finished();
        let peers = net.peer_counts().await?;
        Ok(TestnetReport {
            nodes: config.nodes,
            messages: config.messages,
            message_size: config.message_size,
            rng_seed: config.rng_seed,
            max_in_flight: config.max_in_flight,
            required_peers: config.required_peers(),
            max_outbound,
            max_outbound_asked: (max_outbound < config.max_outbound).then_some(config.max_outbound),
            open_file_limit,
            spread_addresses,
            converge_time,
            peers: PeerCounts::of(&peers),
            delivered: gossip.delivered,
            expected: config.expected_deliveries(),
            latency: gossip.latency,
            gossip_time: gossip.elapsed,
            bytes_sent: gossip.bytes_sent,
            dropped: gossip.dropped,
            duplicates: gossip.duplicates,
            anomalies: gossip.anomalies,
            peak_rss: peak_rss(),
        })
    }
    .await;
    net.shutdown().await;
    result
}

/// The loopback IP of node `index` (from 0): `127.a.b.1` with `a.b` = `index + 1`, so every
/// node of a run of up to 65,535 has its own /24 (module docs, "Addresses").
pub fn node_ip(index: usize) -> Ipv4Addr {
    let n = (index + 1).min(usize::from(u16::MAX));
    Ipv4Addr::new(127, (n >> 8) as u8, n as u8, 1)
}

/// Descriptors a run of `nodes` nodes with outbound target `max_outbound` needs, about: each
/// node's listener and both ends of `max_outbound + 1` connections (its outbound peers, and a
/// connection to the seed or a dial in flight), the seed's listener and
/// [`RESERVED_OPEN_FILES`]. Inbound peers are the other ends of outbound ones.
pub fn open_files_needed(nodes: usize, max_outbound: usize) -> u64 {
    let per_node = 1 + 2 * (max_outbound as u64 + 1);
    (nodes as u64) * per_node + 1 + RESERVED_OPEN_FILES
}

/// Raises the soft open-file limit to the hard one; returns the limit then in force, or `None`
/// where it cannot be read.
#[cfg(unix)]
fn raise_open_file_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit are given a valid pointer to an rlimit that lives across
    // the calls; neither keeps it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    // RLIM_INFINITY and other huge values are "no limit" for a run of at most MAX_NODES.
    // `rlim_t` is u64 on Linux, not on every unix.
    #[allow(clippy::useless_conversion)]
    Some(u64::try_from(lim.rlim_cur).unwrap_or(u64::MAX))
}

/// Where the open-file limit is unknown, the run is not checked against it.
#[cfg(not(unix))]
fn raise_open_file_limit() -> Option<u64> {
    None
}

/// This process's peak resident set size (`VmHWM` of `/proc/self/status`), where there is one.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// How a run places its nodes, decided before they start.
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// Each node's outbound target.
    max_outbound: usize,
    /// Each node on its own loopback IP ([`node_ip`]), else all on 127.0.0.1.
    spread_addresses: bool,
}

/// The running nodes.
struct Testnet {
    /// The seed, once started.
    seed: Option<Node>,
    /// The gossiping nodes started so far.
    nodes: Vec<TestnetNode>,
}

/// One gossiping node.
struct TestnetNode {
    /// The node.
    node: Node,
    /// Its gossip reactor.
    gossip: Addr<Gossip>,
    /// Its deliveries, until the gossip phase takes them.
    delivered: Option<Pin<Box<dyn Stream<Item = Delivered>>>>,
}

/// What the gossip phase measured.
struct GossipOutcome {
    delivered: u64,
    latency: Latency,
    elapsed: Duration,
    bytes_sent: u64,
    dropped: u64,
    duplicates: u64,
    anomalies: u64,
}

/// One published message while it is being delivered.
struct Flight {
    /// When it was handed to its publisher.
    published_at: Instant,
    /// Which nodes delivered it (the publisher's entry stays false); emptied once complete.
    delivered: Vec<bool>,
    /// Nodes yet to deliver it.
    remaining: usize,
}

impl Testnet {
    /// Starts the seed and the nodes, each node with its gossip reactor.
    async fn start(&mut self, config: &TestnetConfig, layout: Layout) -> Result<(), TestnetError> {
        let log = Logger::root(slog::Discard, o!());
        let seed_config = P2pConfig {
            moniker: "seed".into(),
            seed_mode: true,
            pex: true,
            // Every node learns its first addresses here, and the seed holds each connection
            // for SEED_DISCONNECT_AFTER (2 s): with TM2's 40 inbound slots it served about 20
            // nodes a second, so 256 nodes took 14 s to converge. Room for all of them at once.
            max_num_inbound_peers: config.nodes.max(P2pConfig::default().max_num_inbound_peers),
            ..base_config(config, layout, Ipv4Addr::LOCALHOST)
        };
        let seed = SwitchBuilder::new(seed_config, NodeKey::generate()?)
            .network(TESTNET_NETWORK)
            .spawn()
            .await
            .map_err(|e| TestnetError::Spawn {
                which: "the seed".into(),
                source: Box::new(e),
            })?;
        let seed_address = seed.net_address();
        self.seed = Some(seed);
        let gossip_config = GossipConfig {
            seen_capacity: DEFAULT_SEEN_CAPACITY.max(config.messages),
            ..GossipConfig::default()
        };
        // Enough for every message in flight, with room to spare (see `gossip`).
        let subscriber_capacity = 2 * config.max_in_flight + 64;
        for i in 0..config.nodes {
            let spawn_error = |e| TestnetError::Spawn {
                which: format!("node {i}"),
                source: Box::new(e),
            };
            let node_config = P2pConfig {
                moniker: format!("node-{i}"),
                seeds: vec![seed_address.clone()],
                pex: config.discovery,
                ..base_config(
                    config,
                    layout,
                    if layout.spread_addresses {
                        node_ip(i)
                    } else {
                        Ipv4Addr::LOCALHOST
                    },
                )
            };
            let gossip = Gossip::new(gossip_config, log.clone()).start();
            let node = SwitchBuilder::new(node_config, NodeKey::generate()?)
                .network(TESTNET_NETWORK)
                .reactor(RegisterReactor::batched(
                    "gossip",
                    vec![gossip_config.channel()],
                    &gossip,
                ))
                .spawn()
                .await
                .map_err(spawn_error)?;
            let delivered = gossip
                .send(SubscribeDelivered {
                    capacity: subscriber_capacity,
                })
                .await
                .map_err(|_| TestnetError::NodeStopped)?;
            self.nodes.push(TestnetNode {
                node,
                gossip,
                delivered: Some(Box::pin(delivered.into_stream())),
            });
        }
        Ok(())
    }

    /// For each node, the indices of the nodes it counts as peers (module docs).
    async fn counted_peers(&self) -> Result<Vec<Vec<usize>>, TestnetError> {
        let index: HashMap<PeerId, usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.node.net_address().id(), i))
            .collect();
        let snapshots = join_all(self.nodes.iter().map(|n| n.node.switch().send(GetPeers))).await;
        snapshots
            .into_iter()
            .map(|s| {
                let s = s.map_err(|_| TestnetError::NodeStopped)?;
                Ok(s.peers
                    .iter()
                    .filter(|p| p.node_info.channels.contains(&GOSSIP_CHANNEL))
                    .filter_map(|p| index.get(&p.id).copied())
                    .collect())
            })
            .collect()
    }

    /// Peers per node, counted as for convergence.
    async fn peer_counts(&self) -> Result<Vec<usize>, TestnetError> {
        Ok(self.counted_peers().await?.iter().map(Vec::len).collect())
    }

    /// Waits until the network has converged; returns the time since `started`.
    async fn converge(
        &self,
        config: &TestnetConfig,
        started: Instant,
        progress: &mut impl TestnetProgress,
    ) -> Result<Duration, TestnetError> {
        let required = config.required_peers();
        let deadline = tokio::time::Instant::from_std(started + config.converge_timeout);
        let mut events = select_all(self.nodes.iter().map(|n| {
            Box::pin(
                n.node
                    .subscribe(|e| {
                        matches!(
                            e,
                            SwitchEvent::PeerConnected { .. }
                                | SwitchEvent::PeerDisconnected { .. }
                        )
                    })
                    .into_stream(),
            )
        }));
        loop {
            let state = Convergence::evaluate(&self.counted_peers().await?, required);
            progress.discovery(state.ready, state.nodes);
            if state.is_converged() {
                return Ok(clock::now().saturating_duration_since(started));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TestnetError::NotConverged {
                    timeout: config.converge_timeout,
                    ready: state.ready,
                    nodes: state.nodes,
                    required,
                    connected: state.connected,
                });
            }
            tokio::select! {
                _ = events.next() => {}
                () = tokio::time::sleep(RECHECK_EVERY) => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
            // Events that arrived meanwhile are covered by the next check (bounded: the
            // buffer of each subscription is).
            for _ in 0..self.nodes.len() * 1024 {
                if events.next().now_or_never().flatten().is_none() {
                    break;
                }
            }
        }
    }

    /// Publishes the messages and waits for their deliveries (module docs, step 3).
    async fn gossip(
        &mut self,
        config: &TestnetConfig,
        progress: &mut impl TestnetProgress,
    ) -> Result<GossipOutcome, TestnetError> {
        let n = self.nodes.len();
        let expected = config.expected_deliveries();
        progress.gossip_started(expected);
        let mut deliveries = select_all(
            self.nodes
                .iter_mut()
                .enumerate()
                .filter_map(|(i, node)| Some(node.delivered.take()?.map(move |d| (i, d)))),
        );
        let mut rng = ChaCha8Rng::seed_from_u64(config.rng_seed);
        let mut flights: Vec<Flight> = Vec::with_capacity(config.messages);
        let mut by_id: HashMap<MessageId, usize> = HashMap::with_capacity(config.messages);
        let mut latencies: Vec<u32> = Vec::with_capacity(expected.try_into().unwrap_or(0));
        let (mut delivered, mut complete, mut anomalies) = (0u64, 0usize, 0u64);
        let started = clock::now();
        let mut last_delivery = started;
        while complete < config.messages {
            let published = flights.len();
            if published < config.messages && published - complete < config.max_in_flight {
                let publisher = (rng.next_u64() % n as u64) as usize;
                let mut payload = vec![0; config.message_size];
                payload[..8].copy_from_slice(&(published as u64).to_le_bytes());
                rng.fill_bytes(&mut payload[8..]);
                let published_at = clock::now();
                let id = self.nodes[publisher]
                    .gossip
                    .send(Publish(Bytes::from(payload)))
                    .await
                    .map_err(|_| TestnetError::NodeStopped)?
                    .map_err(|source| TestnetError::Publish {
                        index: published,
                        source,
                    })?;
                by_id.insert(id, published);
                flights.push(Flight {
                    published_at,
                    delivered: vec![false; n],
                    remaining: n - 1,
                });
                // The publisher itself never delivers it as a remote message.
                flights[published].delivered[publisher] = true;
                continue;
            }
            let idle_deadline =
                tokio::time::Instant::from_std(last_delivery + config.delivery_timeout);
            let (node, d) = tokio::select! {
                next = deliveries.next() => next.ok_or(TestnetError::NodeStopped)?,
                () = tokio::time::sleep_until(idle_deadline) => break,
            };
            if d.from.is_none() {
                // The publisher's own delivery.
                continue;
            }
            let now = clock::now();
            let Some(flight) = by_id.get(&d.id).and_then(|&k| flights.get_mut(k)) else {
                anomalies += 1;
                continue;
            };
            match flight.delivered.get_mut(node) {
                Some(seen @ false) => *seen = true,
                _ => {
                    anomalies += 1;
                    continue;
                }
            }
            let micros = now
                .saturating_duration_since(flight.published_at)
                .as_micros();
            latencies.push(u32::try_from(micros).unwrap_or(u32::MAX));
            flight.remaining -= 1;
            if flight.remaining == 0 {
                flight.delivered = Vec::new();
                complete += 1;
            }
            delivered += 1;
            last_delivery = now;
            progress.delivered(delivered, expected);
        }
        let elapsed = last_delivery.saturating_duration_since(started);
        let stats = join_all(self.nodes.iter().map(|n| n.gossip.send(GetGossipStats))).await;
        let (mut bytes_sent, mut dropped, mut duplicates) = (0, 0, 0);
        for s in stats {
            let s = s.map_err(|_| TestnetError::NodeStopped)?;
            bytes_sent += s.payload_bytes_sent;
            dropped += s.dropped;
            duplicates += s.duplicates;
        }
        Ok(GossipOutcome {
            delivered,
            latency: Latency::of(&mut latencies),
            elapsed,
            bytes_sent,
            dropped,
            duplicates,
            anomalies,
        })
    }

    /// Shuts every node down gracefully, the seed last.
    async fn shutdown(&mut self) {
        join_all(self.nodes.iter().map(|n| n.node.shutdown())).await;
        if let Some(seed) = &self.seed {
            seed.shutdown().await;
        }
    }
}

/// What every testnet node shares: port 0 on `ip`, discovery on loopback addresses, the
/// layout's outbound target.
fn base_config(config: &TestnetConfig, layout: Layout, ip: Ipv4Addr) -> P2pConfig {
    let defaults = P2pConfig::default();
    let max_handshakes_per_ip = if layout.spread_addresses {
        defaults.max_handshakes_per_ip
    } else {
        // Every node has the same IP: the per-IP bound would refuse peers meant to connect.
        defaults.max_handshakes_in_progress
    };
    P2pConfig {
        laddr: SocketAddr::from((ip, 0)),
        allow_non_routable: true,
        pex_interval: config.pex_interval,
        max_num_outbound_peers: layout.max_outbound,
        max_handshakes_per_ip,
        ..defaults
    }
}

/// A duration as people read it: "0.42 ms", "12.3 ms", "1.25 s".
fn duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

/// A byte count as people read it: "512 B", "3.4 KiB", "5.27 MiB".
fn bytes(n: u64) -> String {
    const KIB: f64 = 1024.0;
    let x = n as f64;
    if x < KIB {
        format!("{n} B")
    } else if x < KIB * KIB {
        format!("{:.1} KiB", x / KIB)
    } else {
        format!("{:.2} MiB", x / (KIB * KIB))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix::test]
    async fn nodes_that_cannot_discover_each_other_do_not_converge() {
        let config = TestnetConfig {
            nodes: 3,
            messages: 1,
            discovery: false,
            converge_timeout: Duration::from_millis(300),
            ..TestnetConfig::default()
        };
        let err = run(config, ()).await.expect_err("cannot converge");
        assert!(err.to_string().contains("did not converge"), "{err}");
        match err {
            TestnetError::NotConverged {
                ready,
                nodes,
                required,
                connected,
                ..
            } => assert_eq!((ready, nodes, required, connected), (0, 3, 2, false)),
            other => panic!("expected NotConverged, got {other:?}"),
        }
    }

    #[test]
    fn a_line_is_connected_and_ready_for_one_peer() {
        let line = vec![vec![1], vec![0, 2], vec![1, 3], vec![2]];
        let c = Convergence::evaluate(&line, 1);
        assert_eq!(c.ready, 4);
        assert!(c.connected && c.is_converged());
        let c = Convergence::evaluate(&line, 2);
        assert_eq!(c.ready, 2);
        assert!(!c.is_converged());
    }

    #[test]
    fn two_islands_are_not_converged_even_with_enough_peers() {
        // Two triangles: every node has 2 peers, but no path between them.
        let islands = vec![
            vec![1, 2],
            vec![0, 2],
            vec![0, 1],
            vec![4, 5],
            vec![3, 5],
            vec![3, 4],
        ];
        let c = Convergence::evaluate(&islands, 2);
        assert_eq!(c.ready, 6);
        assert!(!c.connected);
        assert!(!c.is_converged());
    }

    #[test]
    fn an_edge_seen_from_one_side_still_connects() {
        // Node 1 lists node 0, node 0's snapshot was taken before: still one component.
        let c = Convergence::evaluate(&[vec![], vec![0]], 0);
        assert!(c.connected);
        let c = Convergence::evaluate(&[vec![], vec![]], 0);
        assert!(!c.connected);
        let c = Convergence::evaluate(&[vec![7], vec![0]], 1);
        assert!(c.connected, "out-of-range indices are ignored");
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut v: Vec<u32> = (1..=100).rev().collect();
        let l = Latency::of(&mut v);
        assert_eq!(l.p50, Duration::from_micros(50));
        assert_eq!(l.p99, Duration::from_micros(99));
        assert_eq!(l.max, Duration::from_micros(100));
        assert_eq!(Latency::of(&mut []), Latency::default());
        let l = Latency::of(&mut [7]);
        let seven = Duration::from_micros(7);
        assert_eq!((l.p50, l.p99, l.max), (seven, seven, seven));
    }

    #[test]
    fn peer_counts() {
        let c = PeerCounts::of(&[3, 5, 4]);
        assert_eq!((c.min, c.max), (3, 5));
        assert!((c.mean - 4.0).abs() < 1e-9);
        assert_eq!(PeerCounts::of(&[]), PeerCounts::default());
    }

    #[test]
    fn config_checks_name_the_field() {
        let err = |c: TestnetConfig| match c.validate() {
            Err(TestnetError::Config { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        TestnetConfig::default().validate().unwrap();
        assert_eq!(
            err(TestnetConfig {
                nodes: 1,
                ..TestnetConfig::default()
            }),
            "nodes"
        );
        assert_eq!(
            err(TestnetConfig {
                message_size: 4,
                ..TestnetConfig::default()
            }),
            "message_size"
        );
        assert_eq!(
            err(TestnetConfig {
                messages: usize::MAX,
                ..TestnetConfig::default()
            }),
            "messages"
        );
        assert_eq!(TestnetConfig::default().expected_deliveries(), 15_000);
        assert_eq!(
            TestnetConfig {
                nodes: 3,
                ..TestnetConfig::default()
            }
            .required_peers(),
            2
        );
    }

    #[test]
    fn the_report_table_has_every_row() {
        let report = TestnetReport {
            nodes: 4,
            messages: 50,
            message_size: 256,
            rng_seed: 1,
            max_in_flight: 64,
            required_peers: 3,
            max_outbound: 10,
            max_outbound_asked: None,
            open_file_limit: Some(1024),
            spread_addresses: true,
            converge_time: Duration::from_millis(812),
            peers: PeerCounts::of(&[3, 3, 3, 3]),
            delivered: 150,
            expected: 150,
            latency: Latency::default(),
            gossip_time: Duration::from_millis(40),
            bytes_sent: 3 * 1024 * 1024,
            dropped: 0,
            duplicates: 300,
            anomalies: 0,
            peak_rss: Some(30 * 1024 * 1024),
        };
        let table = report.to_string();
        for row in [
            "nodes",
            "time to converge      812.0 ms",
            "peers per node        min 3 / mean 3.0 / max 3",
            "messages delivered    150 of 150",
            "latency",
            "bytes sent            3.00 MiB",
            "lost                  0",
            "nodes                 4 (+1 seed), on 127.0.0.1 (seed) and 127.0.1.1 to 127.0.4.1",
            "outbound peers        at most 10 a node\n",
            "peak memory           30.00 MiB resident",
        ] {
            assert!(table.contains(row), "{row:?} missing from\n{table}");
        }
        assert!(report.is_complete());
        let lossy = TestnetReport {
            delivered: 149,
            ..report
        };
        assert_eq!(lossy.lost(), 1);
        assert!(!lossy.is_complete());
    }
}
