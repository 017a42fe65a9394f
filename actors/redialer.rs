//! The [`Redialer`] actor: keeps persistent peers connected, forever, with a [`Backoff`] each.
//!
//! Persistent peers come from `persistent_peers` in the config (dialed when the actor starts)
//! and from `AddPersistentPeers` on the Switch at runtime (the Switch marks them persistent and
//! forwards them as [`WatchPersistentPeers`]). The Switch tells it when a persistent peer
//! connects ([`PersistentPeerConnected`]), disconnects ([`PersistentPeerDisconnected`], with
//! the address to redial: the advertised listen address for an inbound peer, not the socket's
//! ephemeral port as TM2 does) or fails a dial ([`PersistentDialFailed`]). After a disconnect
//! or a failed dial it queues a redial in the Dialer at `now + Backoff::next_delay`: the delay
//! doubles from `redial_backoff_base` to `redial_backoff_max` with ±10 % jitter and restarts
//! only after a connection that stayed up `redial_backoff_reset_after`. It keeps no timer of
//! its own except to retry a redial the full dial queue refused.
//!
//! | message | from | reply |
//! | --- | --- | --- |
//! | [`WatchPersistentPeers`] | Switch (`AddPersistentPeers`) | `()` |
//! | [`PersistentPeerConnected`], [`PersistentPeerDisconnected`], [`PersistentDialFailed`] | Switch | `()` |
//! | [`StopRedialing`] | Switch (shutdown) | `()` |

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::fut::wrap_future;
use actix::prelude::*;
use rand_core::{OsRng, RngCore};
use slog::{Logger, debug, info, warn};

use crate::actors::clock;
use crate::actors::dialer::QueueDials;
use crate::actors::events::DialError;
use crate::dial::{Backoff, BackoffConfig, DialItem};
use crate::peers::RejectReason;
use crate::throttle::LogThrottle;
use crate::types::{NetAddress, PeerId};

/// One persistent peer.
#[derive(Debug)]
struct Persistent {
    /// Where to dial it.
    address: NetAddress,
    /// Its redial delay.
    backoff: Backoff,
    /// Whether it is connected (no redial then).
    connected: bool,
}

/// The Redialer actor; spawned by [`SwitchBuilder`](crate::actors::node::SwitchBuilder).
pub struct Redialer {
    /// Persistent peers by id.
    peers: HashMap<PeerId, Persistent>,
    /// The configured peers, dialed on start.
    initial: Vec<NetAddress>,
    /// The backoff parameters.
    backoff: BackoffConfig,
    /// The Dialer's queue.
    dialer: Recipient<QueueDials>,
    /// Jitter source ([`OsRng`] in production).
    rng: Box<dyn RngCore>,
    /// The node's log.
    log: Logger,
    /// Failed dials of a persistent peer logged at most once a minute per peer.
    failure_log: LogThrottle<PeerId>,
}

impl Redialer {
    /// A redialer for the configured `persistent` peers, queueing into `dialer`, with jitter
    /// from the operating system's RNG.
    pub fn new(
        persistent: Vec<NetAddress>,
        backoff: BackoffConfig,
        dialer: Recipient<QueueDials>,
        log: Logger,
    ) -> Self {
        Self {
            peers: HashMap::new(),
            initial: persistent,
            backoff,
            dialer,
            rng: Box::new(OsRng),
            log,
            failure_log: LogThrottle::default(),
        }
    }

    /// Starts watching `address` (connected since `connected_at`, if it is); returns whether
    /// it has to be dialed now.
    fn watch(&mut self, address: NetAddress, connected_at: Option<Instant>) -> bool {
        let entry = self
            .peers
            .entry(address.id())
            .or_insert_with(|| Persistent {
                address: address.clone(),
                backoff: Backoff::new(self.backoff),
                connected: false,
            });
        entry.address = address;
        if let Some(at) = connected_at
            && !entry.connected
        {
            entry.backoff.connected(at);
            entry.connected = true;
        }
        !entry.connected
    }

    /// Queues dials of `items` in the Dialer.
    fn queue(&self, items: Vec<DialItem>, ctx: &mut Context<Self>) {
        if items.is_empty() {
            return;
        }
        let dialer = self.dialer.clone();
        // `send` waits for room in the Dialer's mailbox; nothing is dropped.
        ctx.spawn(wrap_future(async move {
            let _ = dialer.send(QueueDials(items)).await;
        }));
    }

    /// Queues a redial of `id` after its backoff delay (or, with `retry_later`, arms a timer
    /// for that delay and queues it due then: the queue was full).
    fn redial_later(
        &mut self,
        id: PeerId,
        retry_later: bool,
        ctx: &mut Context<Self>,
    ) -> Option<Duration> {
        let entry = self.peers.get(&id)?;
        let delay = entry.backoff.next_delay(&mut *self.rng);
        let address = entry.address.clone();
        debug!(self.log, "redial scheduled"; "address" => %address, "delay" => ?delay);
        if retry_later {
            ctx.run_later(delay, move |act, ctx| {
                if act.peers.get(&id).is_some_and(|p| !p.connected) {
                    act.queue(vec![DialItem::new(address, clock::now())], ctx);
                }
            });
            return Some(delay);
        }
        match clock::now().checked_add(delay) {
            Some(due) => {
                self.queue(vec![DialItem::new(address, due)], ctx);
                Some(delay)
            }
            None => {
                info!(self.log, "redial delay not representable: not redialing"; "peer" => %id);
                None
            }
        }
    }
}

impl Actor for Redialer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let now = clock::now();
        let mut items = Vec::new();
        for address in std::mem::take(&mut self.initial) {
            if self.watch(address.clone(), None) {
                items.push(DialItem::new(address, now));
            }
        }
        self.queue(items, ctx);
    }
}

/// Watches more persistent peers (the Switch already treats them as persistent); each that is
/// not connected is dialed now.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct WatchPersistentPeers(pub Vec<(NetAddress, Option<Instant>)>);

impl Handler<WatchPersistentPeers> for Redialer {
    type Result = ();

    fn handle(&mut self, msg: WatchPersistentPeers, ctx: &mut Self::Context) {
        let now = clock::now();
        let mut items = Vec::new();
        for (address, connected_at) in msg.0 {
            if self.watch(address.clone(), connected_at) {
                items.push(DialItem::new(address, now));
            }
        }
        self.queue(items, ctx);
    }
}

/// A persistent peer connected (at `at`, the Switch's admission time).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct PersistentPeerConnected {
    /// The peer.
    pub peer: PeerId,
    /// When it was admitted.
    pub at: Instant,
}

impl Handler<PersistentPeerConnected> for Redialer {
    type Result = ();

    fn handle(&mut self, msg: PersistentPeerConnected, _: &mut Self::Context) {
        if let Some(entry) = self.peers.get_mut(&msg.peer) {
            entry.backoff.connected(msg.at);
            entry.connected = true;
        }
    }
}

/// A persistent peer disconnected at `at`; redial it at `address` (for an inbound peer its
/// advertised listen address, `PeerEntry::dial_address`).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct PersistentPeerDisconnected {
    /// Where to redial it.
    pub address: NetAddress,
    /// When it was removed.
    pub at: Instant,
}

impl Handler<PersistentPeerDisconnected> for Redialer {
    type Result = ();

    fn handle(&mut self, msg: PersistentPeerDisconnected, ctx: &mut Self::Context) {
        let id = msg.address.id();
        let Some(entry) = self.peers.get_mut(&id) else {
            return;
        };
        entry.connected = false;
        entry.address = msg.address;
        // Restarts the sequence after a long enough connection, else counts a failure.
        entry.backoff.disconnected(msg.at);
        let _ = self.redial_later(id, false, ctx);
    }
}

/// A dial of a persistent peer failed.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct PersistentDialFailed {
    /// The address dialed.
    pub address: NetAddress,
    /// Why.
    pub error: DialError,
}

impl Handler<PersistentDialFailed> for Redialer {
    type Result = ();

    fn handle(&mut self, msg: PersistentDialFailed, ctx: &mut Self::Context) {
        let id = msg.address.id();
        let Some(entry) = self.peers.get_mut(&id) else {
            return;
        };
        if entry.connected {
            return; // A dial that raced with a connection in the other direction.
        }
        match msg.error {
            // Connected, or another dial is in flight: its outcome decides.
            DialError::Refused(RejectReason::Duplicate)
            | DialError::Rejected(RejectReason::Duplicate)
            | DialError::Shutdown => {}
            DialError::Refused(RejectReason::SelfConnection)
            | DialError::Rejected(RejectReason::SelfConnection) => {
                info!(self.log, "persistent peer is this node: not redialing"; "address" => %msg.address);
                self.peers.remove(&id);
            }
            DialError::QueueFull { .. } => {
                entry.backoff.record_failure();
                let _ = self.redial_later(id, true, ctx);
            }
            DialError::Refused(_) | DialError::Rejected(_) | DialError::Transport(_) => {
                entry.backoff.record_failure();
                let attempts = entry.backoff.attempts();
                let retry_in = self.redial_later(id, false, ctx);
                // An operator's first question about a persistent peer: is it reachable, and
                // when is the next try? Once a minute per peer, with the count in between.
                if let (Some(held_back), Some(retry_in)) =
                    (self.failure_log.allow(&id, clock::now()), retry_in)
                {
                    warn!(self.log, "persistent peer unreachable";
                          "address" => %msg.address, "error" => %msg.error,
                          "failed_attempts" => attempts,
                          "next_retry_in" => %humantime_secs(retry_in),
                          "failures_not_logged" => held_back);
                }
            }
        }
    }
}

/// `d` in seconds with one decimal (`2.2s`), for logs.
fn humantime_secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// Stops redialing (node shutdown).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct StopRedialing;

impl Handler<StopRedialing> for Redialer {
    type Result = ();

    fn handle(&mut self, _: StopRedialing, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
