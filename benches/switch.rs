//! Switch benchmarks (issue 5):
//!
//! - `broadcast_1k_to_32`: a hub with 32 connected leaves broadcasts 1 KiB messages; the figure
//!   is deliveries per second in total (messages received by all leaves together).
//! - memory per idle peer: RSS growth of the process while 500 nodes connect to one hub, divided
//!   by the number of connection ends (every connection has one end in the hub and one in a
//!   leaf, both in this process, and both ends cost the same: a `PeerConn` with its buffers).
//!   Printed after criterion's report; goal <= 64 KiB per peer.
//!
//! Run: `cargo bench --bench switch`

// Benchmarks measure wall time and read their own RSS.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)] // Benchmark code: a failed unwrap aborts the run, which is right.

mod common;
use common::{raise_fd_limit, rss};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use criterion::{Criterion, Throughput};
use tm2_p2p::actors::peer_conn::{PeerConn, PeerConnConfig, PeerStopped};
use tm2_p2p::actors::transport::dial;
use tm2_p2p::{
    Broadcast, ChannelDescriptor, DialPeers, GetPeers, NetAddress, Node, NodeInfo, NodeKey,
    P2pConfig, PeerAdded, PeerRemoved, Receive, RegisterReactor, SwitchBuilder, SwitchEvent,
};

const CHANNEL: u8 = 0x30;

/// Counts received messages into a shared counter.
struct Counter(Arc<AtomicU64>);

impl Actor for Counter {
    type Context = Context<Self>;
}
impl Handler<PeerAdded> for Counter {
    type Result = ();
    fn handle(&mut self, _: PeerAdded, _: &mut Self::Context) {}
}
impl Handler<PeerRemoved> for Counter {
    type Result = ();
    fn handle(&mut self, _: PeerRemoved, _: &mut Self::Context) {}
}
impl Handler<Receive> for Counter {
    type Result = ();
    fn handle(&mut self, _: Receive, _: &mut Self::Context) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn config() -> P2pConfig {
    P2pConfig {
        laddr: "127.0.0.1:0".parse().unwrap(),
        allow_non_routable: true,
        max_num_inbound_peers: 1000,
        send_rate: 0,
        recv_rate: 0,
        ..P2pConfig::default()
    }
}

/// Spawns a node with a counting reactor on `CHANNEL`.
async fn node(queue: usize) -> (Node, Arc<AtomicU64>) {
    let node = SwitchBuilder::new(config(), NodeKey::generate().unwrap())
        .network("bench")
        .spawn()
        .await
        .unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let reactor = Counter(count.clone()).start();
    let desc = ChannelDescriptor::new(CHANNEL).with_send_queue_capacity(queue);
    node.switch()
        .send(RegisterReactor::new("count", vec![desc], &reactor))
        .await
        .unwrap()
        .unwrap();
    (node, count)
}

/// Connects `n` fresh leaves to `hub` and waits until the hub has them all.
async fn leaves(hub: &Node, n: usize, queue: usize) -> Vec<(Node, Arc<AtomicU64>)> {
    let mut events = hub.subscribe(|e| matches!(e, SwitchEvent::PeerConnected { .. }));
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let leaf = node(queue).await;
        leaf.0
            .switch()
            .send(DialPeers(vec![hub.net_address()]))
            .await
            .unwrap();
        out.push(leaf);
    }
    let mut connected = 0;
    while connected < n {
        match tokio::time::timeout(Duration::from_secs(60), events.recv()).await {
            Ok(Some(SwitchEvent::PeerConnected { .. })) => connected += 1,
            Ok(Some(_)) => {}
            _ => panic!("only {connected} of {n} leaves connected"),
        }
    }
    out
}

/// Broadcasts `n` messages and waits until every leaf counted them; returns the time.
async fn broadcast_round(
    hub: &Node,
    leaves: &[(Node, Arc<AtomicU64>)],
    n: u64,
    payload: &Bytes,
) -> Duration {
    let targets: Vec<u64> = leaves
        .iter()
        .map(|(_, c)| c.load(Ordering::Relaxed) + n)
        .collect();
    let start = Instant::now();
    for _ in 0..n {
        hub.switch()
            .send(Broadcast {
                channel: CHANNEL,
                payload: payload.clone(),
            })
            .await
            .unwrap();
    }
    for ((_, count), target) in leaves.iter().zip(targets) {
        while count.load(Ordering::Relaxed) < target {
            tokio::task::yield_now().await;
        }
    }
    start.elapsed()
}

/// Ignores connection ends (the memory pass keeps every connection open).
struct Supervisor;

impl Actor for Supervisor {
    type Context = Context<Self>;
}
impl Handler<PeerStopped> for Supervisor {
    type Result = ();
    fn handle(&mut self, _: PeerStopped, _: &mut Self::Context) {}
}

/// Opens `n` idle connections to `hub` from lightweight clients (a dial and a `PeerConn`, no
/// Switch of their own) and returns the RSS growth per connection end.
async fn idle_memory_per_end(hub: &Node, n: usize) -> (u64, usize) {
    let supervisor = Supervisor.start().recipient();
    let reactor = Counter(Arc::new(AtomicU64::new(0)))
        .start()
        .recipient::<Receive>();
    let mut events = hub.subscribe(|e| matches!(e, SwitchEvent::PeerConnected { .. }));
    let before = rss();
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let key = NodeKey::generate().unwrap();
        let addr: NetAddress = format!("{}@127.0.0.1:1", key.id()).parse().unwrap();
        let info = NodeInfo::new(addr, "bench", vec![CHANNEL]);
        let up = dial(
            &hub.net_address(),
            &key,
            &info,
            Duration::from_secs(10),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        let conn = PeerConn::start(
            up.stream,
            PeerConnConfig::default(),
            vec![(ChannelDescriptor::new(CHANNEL), reactor.clone().into())],
            supervisor.clone(),
            None,
        )
        .unwrap();
        clients.push(conn);
    }
    let mut connected = 0;
    while connected < n {
        match tokio::time::timeout(Duration::from_secs(60), events.recv()).await {
            Ok(Some(SwitchEvent::PeerConnected { .. })) => connected += 1,
            Ok(Some(_)) => {}
            _ => panic!("only {connected} of {n} clients connected"),
        }
    }
    // Let every connection settle (first pings are a minute away; nothing else moves).
    let peers = hub.switch().send(GetPeers).await.unwrap().peers.len();
    let after = rss();
    let per_end = after.saturating_sub(before) / (2 * n as u64);
    drop(clients);
    (per_end, peers)
}

fn main() {
    raise_fd_limit();
    let mut c = Criterion::default().configure_from_args();
    let system = actix::System::new();

    let (hub, leaves32) = system.block_on(async {
        // Queues of 1,000 so a burst of broadcasts is not dropped.
        let (hub, _) = node(1000).await;
        let leaves32 = leaves(&hub, 32, 1000).await;
        (hub, leaves32)
    });
    let payload = Bytes::from(vec![0x5a; 1024]);
    const PER_ITER: u64 = 100;
    let mut g = c.benchmark_group("switch");
    g.throughput(Throughput::Elements(32 * PER_ITER));
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("broadcast_1k_to_32", |b| {
        b.iter_custom(|iters| {
            system.block_on(broadcast_round(&hub, &leaves32, iters * PER_ITER, &payload))
        })
    });
    g.finish();
    c.final_summary();

    if std::env::args().any(|a| a == "--bench") {
        let (per_end, peers) = system.block_on(async {
            let (hub, _) = node(1).await;
            idle_memory_per_end(&hub, 500).await
        });
        println!(
            "\nidle memory: {peers} peers on one hub; RSS growth per connection end = {:.1} KiB (goal <= 64 KiB)",
            per_end as f64 / 1024.0
        );
    }
    drop((hub, leaves32));
}
