//! The tm2-p2p side, through the public API: `SwitchBuilder` nodes whose connection tasks run
//! on the shared multi-thread runtime (`io_runtime`), reactors that count what they receive,
//! and a sender holding the `PeerHandle` its reactor got in `PeerAdded`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use tm2_p2p::actors::peer_conn::{PeerConn, PeerConnConfig, PeerStopped, Stop};
use tm2_p2p::actors::transport::dial;
use tm2_p2p::mconn::MConnConfig;
use tm2_p2p::{
    ChannelDescriptor, DialPeers, DisconnectReason, NetAddress, Node, NodeInfo, NodeKey, P2pConfig,
    PeerAdded, PeerInfo, PeerRemoved, Receive, ReceiveBatch, RegisterReactor, SwitchBuilder,
};
use tokio::sync::mpsc;

use crate::common::{Figure, Tally, Window, heap_live, io_runtime, report_heap, rss, wait_count};

/// The one channel every measurement uses.
const CHANNEL: u8 = 0x30;

/// Messages a channel's send queue holds. TM2's default is 1; a sender that streams needs
/// room to run ahead of the writer task (benches/mconn.rs uses the same).
const SEND_QUEUE: usize = 1000;

/// Timeout of each dial and upgrade stage in these runs (never reached on loopback).
const STAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the receiving reactor takes messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// One `Receive` per message (`RegisterReactor::new`).
    Each,
    /// `ReceiveBatch`es (`RegisterReactor::batched`).
    Batch,
}

/// Where the streaming sender's loop runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SenderOn {
    /// A task on the multi-thread I/O runtime (next to the connection tasks).
    Io,
    /// The actix arbiter thread, where reactors run.
    Arbiter,
}

/// A node's configuration for these runs: loopback, rate limits off, peer exchange off (no
/// dials of its own), and peer and handshake limits above anything a run opens.
fn config() -> P2pConfig {
    P2pConfig {
        laddr: "127.0.0.1:0".parse().expect("valid address"),
        allow_non_routable: true,
        pex: false,
        send_rate: 0,
        recv_rate: 0,
        max_num_inbound_peers: 100_000,
        max_handshakes_in_progress: 1024,
        max_handshakes_per_ip: 1024,
        // Every client dials from 127.0.0.1: TM2's per-/24 guard (16) would refuse or evict
        // some of the 16-in-flight run's handshakes (about 100 failed dials a run).
        max_handshakes_per_subnet: 1024,
        ..P2pConfig::default()
    }
}

/// The channel's descriptor when messages stream: TM2's defaults but for the send queue.
fn channel() -> ChannelDescriptor {
    ChannelDescriptor::new(CHANNEL).with_send_queue_capacity(SEND_QUEUE)
}

/// The channel's descriptor of idle connections: TM2's defaults, as benches/switch.rs uses
/// (a longer send queue adds its preallocated part, up to 64 entries of 32 bytes).
fn idle_channel() -> ChannelDescriptor {
    ChannelDescriptor::new(CHANNEL)
}

/// What [`Probe`] counts of each [`Receive`].
#[derive(Debug, Clone, Copy)]
enum Count {
    /// Payload bytes.
    Bytes,
    /// Messages.
    Messages,
}

/// The reactor of every node here: counts what it receives and the peers added, and hands the
/// first `PeerInfo`s to `peers` (the sender's way to its `PeerHandle`).
struct Probe {
    count: Count,
    received: Arc<Tally>,
    added: Arc<AtomicU64>,
    peers: Option<mpsc::Sender<PeerInfo>>,
}

impl Probe {
    fn new(count: Count, received: Arc<Tally>) -> Self {
        Self {
            count,
            received,
            added: Arc::new(AtomicU64::new(0)),
            peers: None,
        }
    }
}

impl Actor for Probe {
    type Context = Context<Self>;
}

impl Handler<PeerAdded> for Probe {
    type Result = ();

    fn handle(&mut self, msg: PeerAdded, _: &mut Self::Context) {
        self.added.fetch_add(1, Ordering::AcqRel);
        if let Some(peers) = &self.peers {
            let _ = peers.try_send(msg.peer);
        }
    }
}

impl Handler<PeerRemoved> for Probe {
    type Result = ();

    fn handle(&mut self, _: PeerRemoved, _: &mut Self::Context) {}
}

impl Handler<ReceiveBatch> for Probe {
    type Result = ();

    fn handle(&mut self, msg: ReceiveBatch, _: &mut Self::Context) {
        self.received.add(match self.count {
            Count::Bytes => msg.payloads.iter().map(|p| p.len() as u64).sum(),
            Count::Messages => msg.payloads.len() as u64,
        });
    }
}

impl Handler<Receive> for Probe {
    type Result = ();

    fn handle(&mut self, msg: Receive, _: &mut Self::Context) {
        self.received.add(match self.count {
            Count::Bytes => msg.payload.len() as u64,
            Count::Messages => 1,
        });
    }
}

/// Ignores connection ends (clients without a Switch of their own supervise nothing).
struct Unsupervised;

impl Actor for Unsupervised {
    type Context = Context<Self>;
}

impl Handler<PeerStopped> for Unsupervised {
    type Result = ();

    fn handle(&mut self, _: PeerStopped, _: &mut Self::Context) {}
}

/// Spawns a node with `probe` registered on `desc`; returns it with the probe's count of peers
/// added.
async fn node(
    probe: Probe,
    desc: ChannelDescriptor,
    delivery: Delivery,
) -> anyhow::Result<(Node, Arc<AtomicU64>)> {
    let node = SwitchBuilder::new(config(), NodeKey::generate()?)
        .network("perf")
        .io_runtime(io_runtime())
        .spawn()
        .await?;
    let added = probe.added.clone();
    let probe = probe.start();
    let register = match delivery {
        Delivery::Each => RegisterReactor::new("perf", vec![desc], &probe),
        Delivery::Batch => RegisterReactor::batched("perf", vec![desc], &probe),
    };
    node.switch().send(register).await??;
    Ok((node, added))
}

/// A client's identity and the NodeInfo it sends (it listens nowhere: port 1 is a placeholder
/// the hub never dials).
fn client_identity() -> anyhow::Result<(NodeKey, NodeInfo)> {
    let key = NodeKey::generate()?;
    let addr: NetAddress = format!("{}@127.0.0.1:1", key.id()).parse()?;
    let info = NodeInfo::new(addr, "perf", vec![CHANNEL]);
    Ok((key, info))
}

/// The connection settings a node derives from [`config`], for clients without a Switch.
fn peer_conn_config() -> PeerConnConfig {
    PeerConnConfig {
        mconn: MConnConfig {
            send_rate: 0,
            recv_rate: 0,
            ..MConnConfig::default()
        },
        ..PeerConnConfig::default()
    }
}

/// One connection between two nodes, A sending `size`-byte messages to B as fast as
/// `PeerHandle::send` takes them; returns what B's reactor counts per second (bytes for
/// `Count::Bytes`, messages otherwise).
async fn stream(
    window: Window,
    size: usize,
    sender_on: SenderOn,
    delivery: Delivery,
) -> anyhow::Result<Figure> {
    let count = if size >= 1024 {
        Count::Bytes
    } else {
        Count::Messages
    };
    let received = Arc::new(Tally::default());
    let (b, _) = node(Probe::new(count, received.clone()), channel(), delivery).await?;
    let (tx, mut rx) = mpsc::channel(4);
    let mut probe = Probe::new(count, Arc::new(Tally::default()));
    probe.peers = Some(tx);
    let (a, _) = node(probe, channel(), Delivery::Each).await?;
    a.switch().send(DialPeers(vec![b.net_address()])).await?;
    let peer = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("node A stopped before connecting"))?;
    let msg = Bytes::from(vec![0x5a; size]);
    let tally = received.clone();
    let send_loop = async move {
        while !tally.stopped() {
            if !peer.handle.send(CHANNEL, msg.clone()).await {
                tally.fail();
                break;
            }
        }
    };
    match sender_on {
        SenderOn::Io => drop(io_runtime().spawn(send_loop)),
        SenderOn::Arbiter => drop(actix::spawn(send_loop)),
    }
    let rate = window.rate(&received.count).await;
    received.stop.store(true, Ordering::Relaxed);
    report_failures("send", &received);
    Ok(rate)
}

/// Single-connection throughput with 1 MiB messages, in bytes per second at the receiver.
pub(crate) fn throughput(window: Window, sender_on: SenderOn) -> anyhow::Result<Figure> {
    System::new().block_on(stream(window, 1 << 20, sender_on, Delivery::Each))
}

/// 256-byte messages per second on one connection.
pub(crate) fn messages(
    window: Window,
    sender_on: SenderOn,
    delivery: Delivery,
) -> anyhow::Result<Figure> {
    System::new().block_on(stream(window, 256, sender_on, delivery))
}

/// Connections per second into one node (the hub): `concurrency` clients each dial with a
/// fresh identity (generated beforehand: the hub refuses a second connection from a connected
/// id), run the whole upgrade (TCP, secret handshake, NodeInfo exchange, checks), start their
/// `PeerConn`, then stop it and dial again. Counted when the hub's reactor gets `PeerAdded`
/// (the hub's Switch admitted the peer and its connection is ready to send).
pub(crate) fn connections(window: Window, concurrency: usize) -> anyhow::Result<Figure> {
    System::new().block_on(async move {
        // More identities than two cores can handshake in the run (about 3,200/s is the
        // crypto bound with both ends on one core).
        let total = window.warmup + window.duration;
        let need = (5_000.0 * total.as_secs_f64()) as usize + concurrency;
        let identities = Arc::new(
            (0..need)
                .map(|_| client_identity())
                .collect::<anyhow::Result<Vec<_>>>()?,
        );
        let next = Arc::new(AtomicUsize::new(0));
        let (hub, added) = node(
            Probe::new(Count::Messages, Arc::new(Tally::default())),
            channel(),
            Delivery::Each,
        )
        .await?;
        let hub_addr = hub.net_address();
        let tally = Arc::new(Tally::default());
        let supervisor = Unsupervised.start().recipient();
        let idle = Probe::new(Count::Messages, Arc::new(Tally::default()))
            .start()
            .recipient::<Receive>();
        let io = io_runtime();
        for _ in 0..concurrency {
            let (identities, next, tally) = (identities.clone(), next.clone(), tally.clone());
            let (hub_addr, supervisor, idle, io) = (
                hub_addr.clone(),
                supervisor.clone(),
                idle.clone(),
                io.clone(),
            );
            actix::spawn(async move {
                while !tally.stopped() {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= identities.len() {
                        eprintln!("tm2: ran out of client identities");
                        break;
                    }
                    // The dial's crypto runs on the I/O runtime; the connection actor is
                    // created here, on the arbiter (actors live on an actix system).
                    let (ids, addr) = (identities.clone(), hub_addr.clone());
                    let dialed = io
                        .spawn(async move {
                            let (key, info) = &ids[i];
                            dial(&addr, key, info, STAGE_TIMEOUT, STAGE_TIMEOUT).await
                        })
                        .await;
                    let Ok(Ok(up)) = dialed else {
                        tally.fail();
                        continue;
                    };
                    let started = PeerConn::start(
                        up.stream,
                        peer_conn_config(),
                        vec![(channel(), idle.clone().into())],
                        supervisor.clone(),
                        Some(io.clone()),
                    );
                    match started {
                        Ok((conn, _handle)) => {
                            let reason = DisconnectReason::Stopped("measured".into());
                            let _ = conn.send(Stop { reason }).await;
                        }
                        Err(_) => tally.fail(),
                    }
                }
            });
        }
        let rate = window.rate(&added).await;
        tally.stop.store(true, Ordering::Relaxed);
        report_failures("dial", &tally);
        Ok(rate)
    })
}

/// RSS growth per connection end with `n` idle connections into one node: each client is a
/// dial plus a `PeerConn` (no Switch of its own), as benches/switch.rs measures; both ends of
/// every connection live in this process, so the growth is divided by `2 n`.
pub(crate) fn memory(n: usize) -> anyhow::Result<Figure> {
    System::new().block_on(async move {
        let (hub, added) = node(
            Probe::new(Count::Messages, Arc::new(Tally::default())),
            idle_channel(),
            Delivery::Each,
        )
        .await?;
        let supervisor = Unsupervised.start().recipient();
        let idle = Probe::new(Count::Messages, Arc::new(Tally::default()))
            .start()
            .recipient::<Receive>();
        let before = rss();
        let heap_before = heap_live();
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            let (key, info) = client_identity()?;
            let up = dial(
                &hub.net_address(),
                &key,
                &info,
                STAGE_TIMEOUT,
                STAGE_TIMEOUT,
            )
            .await?;
            let conn = PeerConn::start(
                up.stream,
                peer_conn_config(),
                vec![(idle_channel(), idle.clone().into())],
                supervisor.clone(),
                Some(io_runtime()),
            )?;
            clients.push(conn);
        }
        if !wait_count(&added, n as u64, Duration::from_secs(60)).await {
            anyhow::bail!(
                "only {} of {n} clients connected",
                added.load(Ordering::Acquire)
            );
        }
        let after = rss();
        report_heap("tm2", heap_before, 2 * n);
        let per_end = after.saturating_sub(before) as f64 / (2 * n) as f64;
        drop(clients);
        Ok(Figure::plain(per_end))
    })
}

fn report_failures(what: &str, tally: &Tally) {
    let failed = tally.failures.load(Ordering::Relaxed);
    if failed > 0 {
        eprintln!("tm2: {failed} {what} failures");
    }
}
