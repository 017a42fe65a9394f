//! [`Metrics`]: the node's Prometheus metrics, and [`MetricsServer`], a minimal HTTP/1.1
//! responder that serves them.
//!
//! Every node has a [`Metrics`] (created by `SwitchBuilder::spawn`, read with
//! `Node::metrics`); it is served only when the config sets `metrics_addr`. Metric names,
//! types and labels are listed in docs/ARCHITECTURE.md, "Metrics".
//!
//! ## Cost on the hot path
//!
//! Counters are `prometheus-client` counters: an `Arc` around an atomic, incremented with a
//! relaxed add. A connection takes its counter handles once, when it starts (and when a
//! channel is added), so a message costs two relaxed adds on each side (the peer/channel
//! counter and the node-wide total) and nothing else: no mailbox hop, no lock, no label
//! lookup. Send queue depths are not tracked per push; each scrape reads them from the live
//! connections. Drops, dials, handshakes and disconnects are counted on their (cold) paths.
//!
//! ## Bounded label sets
//!
//! Per-peer series (`peer`, `channel`) are created when a connection starts and removed when
//! it ends, so their number is bounded by the connected peers (the peer limits plus the
//! persistent peers) times their channels (at most 16). Every other label takes values from a
//! fixed list, all present from the start with value 0.
//!
//! ## The HTTP responder
//!
//! [`MetricsServer`] (hyper, HTTP/1.1) answers `GET /metrics` (and `HEAD`) in the format the
//! `Accept` header asks for: OpenMetrics ([`CONTENT_TYPE`]) for a client that accepts
//! `application/openmetrics-text` (Prometheus), the Prometheus text format 0.0.4
//! ([`TEXT_CONTENT_TYPE`]) otherwise (`curl`, `promtool`, older scrapers); other paths get
//! 404, other methods 405. One request per connection. Requests are hostile input: the head
//! is read up to [`ServerLimits::max_head_bytes`] (431 beyond), within
//! [`ServerLimits::io_timeout`] (hyper's header-read timeout: then the connection is closed),
//! and at most [`ServerLimits::max_connections`] connections are served at once; one more
//! takes the slot of the oldest connection still waiting for its head.
//!
//! ## In a host's registry
//!
//! A host that serves its own metrics registers the node's with
//! [`Metrics::register_into`] (under [`Metrics::namespace`], `tm2p2p` unless made with
//! [`Metrics::with_namespace`]) and hands them to `SwitchBuilder::metrics`; no
//! `metrics_addr` is needed then.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry, Unit};

use crate::actors::events::DialError;
use crate::actors::reactor::DisconnectReason;
use crate::actors::transport::{InboundRejectReason, TransportError};
use crate::peers::RejectReason;
use crate::secret::HandshakeError;
use crate::types::{Direction, PeerCheckError, PeerId};

mod server;
pub use server::{CONTENT_TYPE, MetricsServer, ServerLimits};

/// The prefix of every metric name.
pub const METRIC_PREFIX: &str = "tm2p2p";

/// The node's metrics: a registry and handles to every metric in it. Cheap to clone (one
/// `Arc`); clones share the metrics. Two handles are equal when they share the registry.
#[derive(Clone)]
pub struct Metrics {
    /// Shared by every clone.
    inner: Arc<Inner>,
}

/// The registry and the metric handles.
struct Inner {
    /// The prefix of every metric name.
    namespace: String,
    /// Every metric below, for encoding; a lock only because [`Metrics::register`] adds to it.
    registry: Mutex<Registry>,
    /// Connected peers by direction.
    peers: Family<DirectionLabels, Gauge>,
    /// Payload bytes of messages queued to a peer, per channel.
    peer_sent: Family<PeerChannelLabels, Counter>,
    /// Payload bytes of messages received from a peer, per channel.
    peer_received: Family<PeerChannelLabels, Counter>,
    /// Payload bytes queued to any peer, disconnected peers included.
    sent: Counter,
    /// Payload bytes received from any peer, disconnected peers included.
    received: Counter,
    /// Messages waiting in a peer's channel queue, sampled at each scrape.
    send_queue: Family<PeerChannelLabels, Gauge>,
    /// Messages not sent, by reason.
    dropped: Family<ReasonLabels, Counter>,
    /// Dial outcomes.
    dials: Family<OutcomeLabels, Counter>,
    /// Failed connection upgrades by direction and reason.
    handshake_failures: Family<HandshakeLabels, Counter>,
    /// Inbound connections that did not become peers, by reason.
    inbound_rejected: Family<ReasonLabels, Counter>,
    /// Peers removed, by reason.
    disconnects: Family<ReasonLabels, Counter>,
    /// Addresses in the peer-exchange address book.
    address_book: Gauge,
    /// Live connections whose send queues a scrape samples, by connection number.
    probes: Mutex<HashMap<u64, Probe>>,
    /// The next connection number.
    next_conn: AtomicU64,
    /// Held while a scrape samples the queues and encodes, so two scrapes do not interleave.
    scrape: Mutex<()>,
}

/// A live connection as a scrape sees it.
struct Probe {
    /// The peer.
    peer: PeerId,
    /// The connection's shared state; gone once the connection and its handles are.
    queues: Weak<dyn QueueProbe>,
}

/// Reads a connection's send queues (implemented by the connection's shared state).
pub(crate) trait QueueProbe: Send + Sync {
    /// Whether the connection has ended.
    fn is_closed(&self) -> bool;
    /// `(channel, messages waiting)` for each channel.
    fn queue_depths(&self) -> Vec<(u8, usize)>;
}

impl Metrics {
    /// A registry with every metric at zero and no peer, named `tm2p2p_...`.
    pub fn new() -> Self {
        Self::build(METRIC_PREFIX.to_owned())
    }

    /// As [`new`](Self::new), with every metric named `<namespace>_...` instead of
    /// `tm2p2p_...`. The namespace must be a valid Prometheus metric name (ASCII letters,
    /// digits and `_`, not starting with a digit).
    pub fn with_namespace(namespace: &str) -> Result<Self, InvalidNamespace> {
        let mut bytes = namespace.bytes();
        let valid = bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(InvalidNamespace(namespace.to_owned()));
        }
        Ok(Self::build(namespace.to_owned()))
    }

    fn build(namespace: String) -> Self {
        let inner = Arc::new(Inner {
            registry: Mutex::new(Registry::with_prefix(&namespace)),
            namespace,
            peers: Family::default(),
            peer_sent: Family::default(),
            peer_received: Family::default(),
            sent: Counter::default(),
            received: Counter::default(),
            send_queue: Family::default(),
            dropped: Family::default(),
            dials: Family::default(),
            handshake_failures: Family::default(),
            inbound_rejected: Family::default(),
            disconnects: Family::default(),
            address_book: Gauge::default(),
            probes: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            scrape: Mutex::new(()),
        });
        register_families(&inner, &mut lock(&inner.registry));

        // Every fixed label value from the start, at zero: dashboards and alerts see the
        // series before the first event.
        for direction in [Direction::Inbound, Direction::Outbound] {
            let _ = inner.peers.get_or_create(&DirectionLabels::new(direction));
        }
        for reason in DropReason::ALL {
            let _ = inner
                .dropped
                .get_or_create(&ReasonLabels::new(reason.as_str()));
        }
        for outcome in DialOutcome::ALL {
            let _ = inner
                .dials
                .get_or_create(&OutcomeLabels::new(outcome.as_str()));
        }
        for direction in [Direction::Inbound, Direction::Outbound] {
            for reason in HandshakeFailure::ALL {
                let _ = inner
                    .handshake_failures
                    .get_or_create(&HandshakeLabels::new(direction, reason));
            }
        }
        for reason in INBOUND_REJECT_REASONS {
            let _ = inner
                .inbound_rejected
                .get_or_create(&ReasonLabels::new(reason));
        }
        for reason in DISCONNECT_REASONS {
            let _ = inner.disconnects.get_or_create(&ReasonLabels::new(reason));
        }
        Self { inner }
    }

    /// The prefix of every metric name (`tm2p2p` unless made
    /// [`with_namespace`](Self::with_namespace)).
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// Registers the node's metrics in the host program's own registry, under this handle's
    /// namespace, as rust-libp2p's `Metrics::new(&mut registry)` does: the host serves them
    /// with its own, and needs no `metrics_addr`. The metrics are shared, not copied (the
    /// node keeps counting into them), and send-queue depths are read from the live
    /// connections at each encoding of `registry`. Metrics added with
    /// [`register`](Self::register) stay in this handle's registry only.
    pub fn register_into(&self, registry: &mut Registry) {
        register_families(
            &self.inner,
            registry.sub_registry_with_prefix(&self.inner.namespace),
        );
    }

    /// Every metric in the OpenMetrics text format ([`CONTENT_TYPE`]), as served at
    /// `/metrics`. Reads the live connections' send queues first.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail, and no metric's encoder fails on its own.
        let _ = prometheus_client::encoding::text::encode(&mut out, &lock(&self.inner.registry));
        out
    }

    /// Every metric in the Prometheus text format 0.0.4 ([`TEXT_CONTENT_TYPE`]), for scrapers
    /// and tools that do not read OpenMetrics (`promtool check metrics`, older Prometheus,
    /// `curl`): the same samples, with counters typed under their `_total` sample name and no
    /// `# UNIT` or `# EOF` lines.
    pub fn encode_prometheus(&self) -> String {
        openmetrics_to_prometheus(&self.encode())
    }

    /// Adds a metric of the host program (a reactor's, say) to this registry, under the
    /// `tm2p2p_` prefix, so that it is served with the node's.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        lock(&self.inner.registry).register(name, help, metric);
    }

    // --- readers (tests, local testnets, host programs) ---

    /// Payload bytes of every message queued to a peer so far, disconnected peers included.
    pub fn total_bytes_sent(&self) -> u64 {
        self.inner.sent.get()
    }

    /// Payload bytes of every message received from a peer so far, disconnected peers
    /// included.
    pub fn total_bytes_received(&self) -> u64 {
        self.inner.received.get()
    }

    /// Connected peers in `direction`.
    pub fn peers(&self, direction: Direction) -> u64 {
        let gauge = self
            .inner
            .peers
            .get_or_create(&DirectionLabels::new(direction));
        u64::try_from(gauge.get()).unwrap_or(0)
    }

    /// Messages dropped so far for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.inner
            .dropped
            .get_or_create(&ReasonLabels::new(reason.as_str()))
            .get()
    }

    /// Dials that ended with `outcome` so far.
    pub fn dials(&self, outcome: DialOutcome) -> u64 {
        self.inner
            .dials
            .get_or_create(&OutcomeLabels::new(outcome.as_str()))
            .get()
    }

    /// Failed upgrades in `direction` for `reason` so far.
    pub fn handshake_failures(&self, direction: Direction, reason: HandshakeFailure) -> u64 {
        self.inner
            .handshake_failures
            .get_or_create(&HandshakeLabels::new(direction, reason))
            .get()
    }

    /// The address book's size at its last update.
    pub fn address_book_size(&self) -> u64 {
        u64::try_from(self.inner.address_book.get()).unwrap_or(0)
    }

    // --- recorders (the runtime) ---

    /// The Switch's peer counts changed.
    pub(crate) fn set_peers(&self, inbound: usize, outbound: usize) {
        for (direction, n) in [
            (Direction::Inbound, inbound),
            (Direction::Outbound, outbound),
        ] {
            self.inner
                .peers
                .get_or_create(&DirectionLabels::new(direction))
                .set(saturating_i64(n));
        }
    }

    /// A message was not sent.
    pub(crate) fn message_dropped(&self, reason: DropReason) {
        self.inner
            .dropped
            .get_or_create(&ReasonLabels::new(reason.as_str()))
            .inc();
    }

    /// A dial (or an address the Dialer could not queue) ended.
    pub(crate) fn dial_finished(&self, outcome: DialOutcome) {
        self.inner
            .dials
            .get_or_create(&OutcomeLabels::new(outcome.as_str()))
            .inc();
    }

    /// Upgrading a connection in `direction` failed with `error`.
    pub(crate) fn handshake_failed(&self, direction: Direction, error: &TransportError) {
        self.inner
            .handshake_failures
            .get_or_create(&HandshakeLabels::new(
                direction,
                HandshakeFailure::from(error),
            ))
            .inc();
    }

    /// The Transport refused an inbound connection.
    pub(crate) fn inbound_rejected_by_transport(&self, reason: &InboundRejectReason) {
        let label = match reason {
            InboundRejectReason::NoHandshakeSlot(_) => "no_handshake_slot",
            InboundRejectReason::Evicted => "handshake_evicted",
            InboundRejectReason::Upgrade(_) => "handshake_failed",
        };
        self.inbound_rejected(label);
    }

    /// The peer set refused a verified inbound connection.
    pub(crate) fn inbound_rejected_by_peer_set(&self, reason: &RejectReason) {
        self.inbound_rejected(reject_label(reason));
    }

    /// A peer was removed.
    pub(crate) fn peer_disconnected(&self, reason: &DisconnectReason) {
        self.inner
            .disconnects
            .get_or_create(&ReasonLabels::new(disconnect_label(reason)))
            .inc();
    }

    /// The address book holds `size` addresses.
    pub(crate) fn set_address_book_size(&self, size: usize) {
        self.inner.address_book.set(saturating_i64(size));
    }

    fn inbound_rejected(&self, label: &'static str) {
        self.inner
            .inbound_rejected
            .get_or_create(&ReasonLabels::new(label))
            .inc();
    }

    /// Rebuilds the send-queue gauges from the live connections (the caller holds the scrape
    /// lock).
    fn sample_send_queues(&self) {
        let live: Vec<(PeerId, Arc<dyn QueueProbe>)> = {
            let mut probes = lock(&self.inner.probes);
            probes.retain(|_, p| p.queues.strong_count() > 0);
            probes
                .values()
                .filter_map(|p| Some((p.peer, p.queues.upgrade()?)))
                .collect()
        };
        // Cleared and refilled under the scrape lock: a connection that ended since the last
        // scrape leaves no stale series behind.
        self.inner.send_queue.clear();
        for (peer, queues) in live {
            if queues.is_closed() {
                continue;
            }
            for (channel, depth) in queues.queue_depths() {
                self.inner
                    .send_queue
                    .get_or_create(&PeerChannelLabels::new(peer, channel))
                    .set(saturating_i64(depth));
            }
        }
    }
}

/// `Content-Type` of the Prometheus text format 0.0.4 ([`Metrics::encode_prometheus`]).
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Rewrites the OpenMetrics text prometheus-client writes as Prometheus text 0.0.4. The two
/// differ only in their metadata for what this crate and a host register: a counter family
/// `x` is typed `x` in OpenMetrics and `x_total` (its sample's name) in 0.0.4; `# UNIT` and
/// `# EOF` exist only in OpenMetrics, as do exemplars (` # {..}` after a sample) and the types
/// `unknown` (0.0.4: `untyped`), `info` (a gauge named `x_info`) and `stateset` and
/// `gaugehistogram` (written as gauge and histogram).
fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let infos: HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" info"))
        .collect();
    let renamed = |name: &str| -> String {
        if counters.contains(name) {
            format!("{name}_total")
        } else if infos.contains(name) {
            format!("{name}_info")
        } else {
            name.to_owned()
        }
    };
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let kind = match kind {
                "unknown" => "untyped",
                "info" | "stateset" => "gauge",
                "gaugehistogram" => "histogram",
                other => other,
            };
            out.push_str(&format!("# TYPE {} {kind}\n", renamed(name)));
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!("# HELP {} {help}\n", renamed(name)));
        } else if line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
        } else {
            // A sample: drop an exemplar (`value # {labels} value`), kept in OpenMetrics only.
            let sample = line.split_once(" # ").map_or(line, |(sample, _)| sample);
            out.push_str(sample);
            out.push('\n');
        }
    }
    out
}

/// A namespace that is not a valid Prometheus metric name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid metrics namespace {0:?}: use ASCII letters, digits and '_', not starting with a digit"
)]
pub struct InvalidNamespace(pub String);

/// Registers every metric of `inner` in `registry` (whose prefix names them).
fn register_families(inner: &Arc<Inner>, registry: &mut Registry) {
    registry.register(
        "peers",
        "Connected peers by direction (inbound: they dialed us)",
        inner.peers.clone(),
    );
    registry.register_with_unit(
        "peer_sent",
        "Payload bytes of messages queued to a connected peer, by channel (0x-prefixed hex)",
        Unit::Bytes,
        inner.peer_sent.clone(),
    );
    registry.register_with_unit(
        "peer_received",
        "Payload bytes of messages received from a connected peer, by channel",
        Unit::Bytes,
        inner.peer_received.clone(),
    );
    registry.register_with_unit(
        "sent",
        "Payload bytes of messages queued to any peer, disconnected ones included",
        Unit::Bytes,
        inner.sent.clone(),
    );
    registry.register_with_unit(
        "received",
        "Payload bytes of messages received from any peer, disconnected ones included",
        Unit::Bytes,
        inner.received.clone(),
    );
    // Through a collector: each encoding of the registry reads the live connections first.
    registry.register_collector(Box::new(SendQueues(Arc::downgrade(inner))));
    registry.register(
        "messages_dropped",
        "Messages not sent, by reason",
        inner.dropped.clone(),
    );
    registry.register("dials", "Dials by outcome", inner.dials.clone());
    registry.register(
        "handshake_failures",
        "Connection upgrades (secret handshake, NodeInfo exchange, checks) that failed, by \
         direction and reason",
        inner.handshake_failures.clone(),
    );
    registry.register(
        "inbound_rejected",
        "Inbound connections that did not become peers, by reason",
        inner.inbound_rejected.clone(),
    );
    registry.register(
        "peer_disconnects",
        "Peers removed, by reason",
        inner.disconnects.clone(),
    );
    registry.register(
        "address_book_size",
        "Addresses in the peer-exchange address book",
        inner.address_book.clone(),
    );
}

/// The send-queue gauges, sampled from the live connections when a registry is encoded. Holds
/// the metrics weakly: it lives in their own registry.
#[derive(Debug)]
struct SendQueues(Weak<Inner>);

impl Collector for SendQueues {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let Some(inner) = self.0.upgrade() else {
            return Ok(());
        };
        let metrics = Metrics { inner };
        let _scrape = lock(&metrics.inner.scrape);
        metrics.sample_send_queues();
        let family = &metrics.inner.send_queue;
        let metric = encoder.encode_descriptor(
            "peer_send_queue_messages",
            "Messages waiting in a peer's channel send queue (read at scrape time)",
            None,
            family.metric_type(),
        )?;
        family.encode(metric)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl PartialEq for Metrics {
    /// Handles are equal when they share one registry.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for Metrics {}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("total_bytes_sent", &self.total_bytes_sent())
            .field("total_bytes_received", &self.total_bytes_received())
            .finish_non_exhaustive()
    }
}

/// The metric handles of one connection, taken when it starts; see the module docs.
pub(crate) struct ConnMetrics {
    /// The registry, `None` for a connection started without metrics (its counters are then
    /// detached: counted, never encoded).
    metrics: Option<Metrics>,
    /// The peer.
    peer: PeerId,
    /// This connection's number among the probes.
    conn: u64,
    /// The node-wide sent total.
    pub(crate) sent_total: Counter,
    /// The node-wide received total.
    pub(crate) received_total: Counter,
}

impl ConnMetrics {
    /// Handles for a connection to `peer`, registered in `metrics` if given.
    pub(crate) fn new(metrics: Option<Metrics>, peer: PeerId) -> Self {
        let (sent_total, received_total, conn) = match &metrics {
            Some(m) => (
                m.inner.sent.clone(),
                m.inner.received.clone(),
                m.inner.next_conn.fetch_add(1, Ordering::Relaxed),
            ),
            None => (Counter::default(), Counter::default(), 0),
        };
        Self {
            metrics,
            peer,
            conn,
            sent_total,
            received_total,
        }
    }

    /// The counter of payload bytes queued on `channel`.
    pub(crate) fn sent(&self, channel: u8) -> Counter {
        self.metrics.as_ref().map_or_else(Counter::default, |m| {
            m.inner
                .peer_sent
                .get_or_create_owned(&PeerChannelLabels::new(self.peer, channel))
        })
    }

    /// The counter of payload bytes received on `channel`.
    pub(crate) fn received(&self, channel: u8) -> Counter {
        self.metrics.as_ref().map_or_else(Counter::default, |m| {
            m.inner
                .peer_received
                .get_or_create_owned(&PeerChannelLabels::new(self.peer, channel))
        })
    }

    /// Counts a message not sent.
    pub(crate) fn dropped(&self, reason: DropReason) {
        if let Some(m) = &self.metrics {
            m.message_dropped(reason);
        }
    }

    /// Lets scrapes read the connection's send queues until [`remove`](Self::remove).
    pub(crate) fn watch_queues(&self, queues: Weak<dyn QueueProbe>) {
        if let Some(m) = &self.metrics {
            lock(&m.inner.probes).insert(
                self.conn,
                Probe {
                    peer: self.peer,
                    queues,
                },
            );
        }
    }

    /// The connection has ended: removes its per-peer series for `channels` (counters still
    /// held keep counting, unseen) and stops sampling its queues.
    pub(crate) fn remove(&self, channels: impl IntoIterator<Item = u8>) {
        let Some(m) = &self.metrics else {
            return;
        };
        lock(&m.inner.probes).remove(&self.conn);
        for channel in channels {
            let labels = PeerChannelLabels::new(self.peer, channel);
            m.inner.peer_sent.remove(&labels);
            m.inner.peer_received.remove(&labels);
            m.inner.send_queue.remove(&labels);
        }
    }
}

/// Why a message was not sent (label `reason` of `tm2p2p_messages_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// `Broadcast` skipped a peer whose channel queue was full.
    BroadcastQueueFull,
    /// A send to one peer found the channel queue full (`TrySendTo`, `PeerHandle::try_send`)
    /// or still full after the send timeout (`SendTo`, `PeerHandle::send`).
    SendQueueFull,
    /// `SendTo`/`TrySendTo` named a peer that is not connected.
    PeerNotConnected,
    /// The peer did not advertise the channel, or the connection does not have it.
    UnknownChannel,
    /// The message is longer than the channel's `recv_message_capacity` (the peer, which
    /// has the same descriptor, would drop the connection on it).
    MessageTooLarge,
    /// The connection had already ended (or is draining before it closes).
    ConnectionClosed,
}

impl DropReason {
    /// Every reason.
    pub const ALL: [Self; 6] = [
        Self::BroadcastQueueFull,
        Self::SendQueueFull,
        Self::PeerNotConnected,
        Self::UnknownChannel,
        Self::MessageTooLarge,
        Self::ConnectionClosed,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BroadcastQueueFull => "broadcast_queue_full",
            Self::SendQueueFull => "send_queue_full",
            Self::PeerNotConnected => "peer_not_connected",
            Self::UnknownChannel => "unknown_channel",
            Self::MessageTooLarge => "message_too_large",
            Self::ConnectionClosed => "connection_closed",
        }
    }
}

/// How a dial ended (label `outcome` of `tm2p2p_dials_total`), one per [`DialError`] kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DialOutcome {
    /// The peer was admitted.
    Connected,
    /// Not dialed: ourselves, already connected or being dialed, no outbound slot
    /// ([`DialError::Refused`]).
    Refused,
    /// Connected and verified, then refused by the peer set ([`DialError::Rejected`]).
    Rejected,
    /// The TCP connection failed (refused, unreachable, reset) or the name did not resolve.
    IoError,
    /// The TCP connect or an upgrade stage timed out.
    Timeout,
    /// The secret handshake, the NodeInfo exchange or the checks after them failed.
    HandshakeFailed,
    /// The address still held a DNS name at dial time. A running node resolves names in its
    /// Transport, so this stays 0 there; kept so the series (and the API) stay stable.
    Unresolved,
    /// The dial queue was full ([`DialError::QueueFull`]).
    QueueFull,
    /// The node was shutting down ([`DialError::Shutdown`]).
    Shutdown,
}

impl DialOutcome {
    /// Every outcome.
    pub const ALL: [Self; 9] = [
        Self::Connected,
        Self::Refused,
        Self::Rejected,
        Self::IoError,
        Self::Timeout,
        Self::HandshakeFailed,
        Self::Unresolved,
        Self::QueueFull,
        Self::Shutdown,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Refused => "refused",
            Self::Rejected => "rejected",
            Self::IoError => "io_error",
            Self::Timeout => "timeout",
            Self::HandshakeFailed => "handshake_failed",
            Self::Unresolved => "unresolved",
            Self::QueueFull => "queue_full",
            Self::Shutdown => "shutdown",
        }
    }
}

impl From<&DialError> for DialOutcome {
    fn from(e: &DialError) -> Self {
        match e {
            DialError::Refused(_) => Self::Refused,
            DialError::Rejected(_) => Self::Rejected,
            DialError::Shutdown => Self::Shutdown,
            DialError::QueueFull { .. } => Self::QueueFull,
            DialError::Transport(t) => match t.as_ref() {
                TransportError::Io(_) => Self::IoError,
                TransportError::Timeout { .. } => Self::Timeout,
                TransportError::Unresolved(_) => Self::Unresolved,
                TransportError::Secret(_)
                | TransportError::NodeInfo(_)
                | TransportError::BadFrame(_)
                | TransportError::Rejected(_) => Self::HandshakeFailed,
            },
        }
    }
}

/// Why a connection upgrade failed (label `reason` of `tm2p2p_handshake_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    /// The socket failed or closed during the upgrade.
    IoError,
    /// A stage (secret handshake, NodeInfo exchange) timed out.
    Timeout,
    /// The peer broke the secret-handshake protocol (malformed or oversized message,
    /// low-order key, a frame that does not open).
    BadHandshake,
    /// The peer's challenge signature did not verify.
    BadSignature,
    /// The peer's NodeInfo was undecodable or invalid.
    BadNodeInfo,
    /// A stream frame after the secret handshake did not open (forged, replayed, oversize
    /// length) while the peer's NodeInfo was read.
    BadFrame,
    /// The authenticated key is not the id claimed or dialed.
    IdMismatch,
    /// The peer is this node.
    SelfConnection,
    /// Another network, major version, or no common channel.
    Incompatible,
    /// A failure of this node (random number generator, a bug).
    Internal,
}

impl HandshakeFailure {
    /// Every reason.
    pub const ALL: [Self; 10] = [
        Self::IoError,
        Self::Timeout,
        Self::BadHandshake,
        Self::BadSignature,
        Self::BadNodeInfo,
        Self::BadFrame,
        Self::IdMismatch,
        Self::SelfConnection,
        Self::Incompatible,
        Self::Internal,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::IoError => "io_error",
            Self::Timeout => "timeout",
            Self::BadHandshake => "bad_handshake",
            Self::BadSignature => "bad_signature",
            Self::BadNodeInfo => "bad_node_info",
            Self::BadFrame => "bad_frame",
            Self::IdMismatch => "id_mismatch",
            Self::SelfConnection => "self_connection",
            Self::Incompatible => "incompatible",
            Self::Internal => "internal",
        }
    }
}

impl From<&TransportError> for HandshakeFailure {
    fn from(e: &TransportError) -> Self {
        use crate::actors::secret_stream::SecretStreamError;
        match e {
            TransportError::Io(_) => Self::IoError,
            TransportError::Timeout { .. } => Self::Timeout,
            TransportError::NodeInfo(_) => Self::BadNodeInfo,
            TransportError::BadFrame(_) => Self::BadFrame,
            TransportError::Secret(s) => match s {
                SecretStreamError::Io(_) => Self::IoError,
                SecretStreamError::Timeout(_) => Self::Timeout,
                SecretStreamError::Handshake(h) => match h {
                    HandshakeError::UnexpectedEof => Self::IoError,
                    HandshakeError::BadSignature => Self::BadSignature,
                    HandshakeError::LowOrderKey
                    | HandshakeError::AllZeroSecret
                    | HandshakeError::Malformed(_)
                    | HandshakeError::MessageTooLarge { .. }
                    | HandshakeError::Frame(_) => Self::BadHandshake,
                    HandshakeError::NotFinished
                    | HandshakeError::EarlyDataTooLarge { .. }
                    | HandshakeError::Rng
                    | HandshakeError::Internal(_) => Self::Internal,
                },
            },
            TransportError::Rejected(r) => match r {
                PeerCheckError::InvalidNodeInfo(_) => Self::BadNodeInfo,
                PeerCheckError::IdMismatch { .. } | PeerCheckError::DialedIdMismatch { .. } => {
                    Self::IdMismatch
                }
                PeerCheckError::SelfConnection => Self::SelfConnection,
                PeerCheckError::Incompatible(_) => Self::Incompatible,
            },
            // Only a dial of a DNS name fails so, before any upgrade starts.
            TransportError::Unresolved(_) => Self::Internal,
        }
    }
}

/// Label values of `tm2p2p_inbound_rejected_total`.
const INBOUND_REJECT_REASONS: [&str; 7] = [
    "no_handshake_slot",
    "handshake_evicted",
    "handshake_failed",
    "self_connection",
    "duplicate",
    "max_inbound",
    "max_outbound",
];

fn reject_label(reason: &RejectReason) -> &'static str {
    match reason {
        RejectReason::SelfConnection => "self_connection",
        RejectReason::Duplicate => "duplicate",
        RejectReason::MaxInbound { .. } => "max_inbound",
        RejectReason::MaxOutbound { .. } => "max_outbound",
    }
}

/// Label values of `tm2p2p_peer_disconnects_total`.
const DISCONNECT_REASONS: [&str; 12] = [
    "remote_closed",
    "replaced",
    "undecodable_message",
    "io_error",
    "secret",
    "protocol",
    "pong_timeout",
    "slow_reader",
    "misbehaved",
    "stopped",
    "shutdown",
    "internal",
];

fn disconnect_label(reason: &DisconnectReason) -> &'static str {
    match reason {
        DisconnectReason::RemoteClosed => "remote_closed",
        DisconnectReason::Io { .. } => "io_error",
        DisconnectReason::Secret(_) => "secret",
        DisconnectReason::Protocol(_) => "protocol",
        DisconnectReason::PongTimeout => "pong_timeout",
        DisconnectReason::SlowReader(_) => "slow_reader",
        DisconnectReason::Misbehaved(_) => "misbehaved",
        DisconnectReason::UndecodableMessage { .. } => "undecodable_message",
        DisconnectReason::Stopped(_) => "stopped",
        DisconnectReason::Replaced => "replaced",
        DisconnectReason::Shutdown => "shutdown",
        DisconnectReason::Internal(_) => "internal",
    }
}

/// Labels `direction="inbound"|"outbound"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DirectionLabels {
    /// Who dialed.
    direction: &'static str,
}

impl DirectionLabels {
    fn new(direction: Direction) -> Self {
        Self {
            direction: direction_label(direction),
        }
    }
}

/// Labels `peer` (bech32 id) and `channel` (`0x40`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PeerChannelLabels {
    /// The peer.
    peer: PeerLabel,
    /// The channel.
    channel: ChannelLabel,
}

impl PeerChannelLabels {
    fn new(peer: PeerId, channel: u8) -> Self {
        Self {
            peer: PeerLabel(peer),
            channel: ChannelLabel(channel),
        }
    }
}

/// Label `reason`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    /// Why.
    reason: &'static str,
}

impl ReasonLabels {
    fn new(reason: &'static str) -> Self {
        Self { reason }
    }
}

/// Label `outcome`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    /// How it ended.
    outcome: &'static str,
}

impl OutcomeLabels {
    fn new(outcome: &'static str) -> Self {
        Self { outcome }
    }
}

/// Labels `direction` and `reason`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HandshakeLabels {
    /// Who dialed.
    direction: &'static str,
    /// Why it failed.
    reason: &'static str,
}

impl HandshakeLabels {
    fn new(direction: Direction, reason: HandshakeFailure) -> Self {
        Self {
            direction: direction_label(direction),
            reason: reason.as_str(),
        }
    }
}

/// A peer id as a label value: its bech32 form, written at scrape time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PeerLabel(PeerId);

impl EncodeLabelValue for PeerLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        fmt::Write::write_fmt(encoder, format_args!("{}", self.0))
    }
}

/// A channel id as a label value: `0x` and two lowercase hex digits (`0x40`), close to
/// CometBFT's `chID` label (`%#x`, which drops a leading zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ChannelLabel(u8);

impl EncodeLabelValue for ChannelLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        fmt::Write::write_fmt(encoder, format_args!("{:#04x}", self.0))
    }
}

fn direction_label(direction: Direction) -> &'static str {
    if direction.is_outbound() {
        "outbound"
    } else {
        "inbound"
    }
}

fn saturating_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Locks a mutex of this module; a panic while holding one leaves data that is still valid
/// (counters, a map of weak references), so poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

    use super::*;

    fn peer(n: u8) -> PeerId {
        PeerId::from_bytes([n; 20])
    }

    #[test]
    fn a_fresh_registry_shows_every_fixed_series_at_zero() {
        let text = Metrics::new().encode();
        assert!(text.ends_with("# EOF\n"), "{text}");
        for line in [
            "tm2p2p_peers{direction=\"inbound\"} 0",
            "tm2p2p_peers{direction=\"outbound\"} 0",
            "tm2p2p_sent_bytes_total 0",
            "tm2p2p_received_bytes_total 0",
            "tm2p2p_messages_dropped_total{reason=\"broadcast_queue_full\"} 0",
            "tm2p2p_dials_total{outcome=\"connected\"} 0",
            "tm2p2p_handshake_failures_total{direction=\"inbound\",reason=\"bad_handshake\"} 0",
            "tm2p2p_inbound_rejected_total{reason=\"max_inbound\"} 0",
            "tm2p2p_peer_disconnects_total{reason=\"remote_closed\"} 0",
            "tm2p2p_address_book_size 0",
            "# TYPE tm2p2p_sent_bytes counter",
            "# UNIT tm2p2p_sent_bytes bytes",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn peer_series_count_and_go_away_with_the_connection() {
        let metrics = Metrics::new();
        let conn = ConnMetrics::new(Some(metrics.clone()), peer(1));
        let sent = conn.sent(0x40);
        sent.inc_by(5);
        conn.sent_total.inc_by(5);
        conn.received(0x40).inc_by(7);
        conn.received_total.inc_by(7);
        let text = metrics.encode();
        let labels = format!("peer=\"{}\",channel=\"0x40\"", peer(1));
        assert!(
            text.contains(&format!("tm2p2p_peer_sent_bytes_total{{{labels}}} 5")),
            "{text}"
        );
        assert!(
            text.contains(&format!("tm2p2p_peer_received_bytes_total{{{labels}}} 7")),
            "{text}"
        );
        conn.remove([0x40]);
        sent.inc_by(1); // A task still holding the counter: counted, no longer shown.
        let text = metrics.encode();
        assert!(!text.contains(&peer(1).to_string()), "{text}");
        assert_eq!(metrics.total_bytes_sent(), 5);
        assert_eq!(metrics.total_bytes_received(), 7);
    }

    struct FakeQueues(Vec<(u8, usize)>, bool);

    impl QueueProbe for FakeQueues {
        fn is_closed(&self) -> bool {
            self.1
        }
        fn queue_depths(&self) -> Vec<(u8, usize)> {
            self.0.clone()
        }
    }

    #[test]
    fn send_queues_are_read_at_scrape_time_from_live_connections_only() {
        let metrics = Metrics::new();
        let live: Arc<dyn QueueProbe> = Arc::new(FakeQueues(vec![(0x40, 3), (0x50, 0)], false));
        let closed: Arc<dyn QueueProbe> = Arc::new(FakeQueues(vec![(0x40, 9)], true));
        let a = ConnMetrics::new(Some(metrics.clone()), peer(1));
        a.watch_queues(Arc::downgrade(&live));
        let b = ConnMetrics::new(Some(metrics.clone()), peer(2));
        b.watch_queues(Arc::downgrade(&closed));
        let text = metrics.encode();
        let series = |p: PeerId, ch: &str| {
            format!("tm2p2p_peer_send_queue_messages{{peer=\"{p}\",channel=\"{ch}\"}}")
        };
        assert!(
            text.contains(&format!("{} 3", series(peer(1), "0x40"))),
            "{text}"
        );
        assert!(
            text.contains(&format!("{} 0", series(peer(1), "0x50"))),
            "{text}"
        );
        assert!(!text.contains(&peer(2).to_string()), "{text}");
        drop(live);
        let text = metrics.encode();
        assert!(!text.contains(&peer(1).to_string()), "{text}");
    }

    #[test]
    fn readers_and_recorders_agree() {
        let m = Metrics::new();
        m.set_peers(1, 2);
        m.message_dropped(DropReason::SendQueueFull);
        m.dial_finished(DialOutcome::Connected);
        m.set_address_book_size(42);
        assert_eq!(m.peers(Direction::Inbound), 1);
        assert_eq!(m.peers(Direction::Outbound), 2);
        assert_eq!(m.dropped(DropReason::SendQueueFull), 1);
        assert_eq!(m.dials(DialOutcome::Connected), 1);
        assert_eq!(m.address_book_size(), 42);
        assert_eq!(m.clone(), m);
        assert_ne!(Metrics::new(), m);
    }

    #[test]
    fn label_values_are_unique() {
        let mut seen = std::collections::HashSet::new();
        assert!(DropReason::ALL.iter().all(|r| seen.insert(r.as_str())));
        seen.clear();
        assert!(DialOutcome::ALL.iter().all(|r| seen.insert(r.as_str())));
        seen.clear();
        assert!(
            HandshakeFailure::ALL
                .iter()
                .all(|r| seen.insert(r.as_str()))
        );
    }
}
