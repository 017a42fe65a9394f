//! What a connection promises about sending, stopping and slow readers, end to end on loopback
//! TCP: a `PeerHandle` sends only what the peer accepts (its channels, messages within the
//! channel's `recv_message_capacity`) and leaves the connection alone otherwise; a shutdown or
//! `DisconnectPeer` drains what is queued for up to `drain_timeout`, a stop for an error does
//! not; a peer that stops reading is dropped as a slow reader after `write_timeout`, blind
//! pongs do not keep it alive, and what it pins in memory stays under the bound stated in
//! docs/ARCHITECTURE.md.
//!
//! Tests wait on events with generous timeouts; none sleeps hoping something happened.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod common;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use common::{
    Counter, TIMEOUT, Tally, TestNode, child_role, config, connect, heap_in_use, heavy_lock,
    io_runtime, mib, numbered, raw_dial, rss, run_isolated,
};
use tm2_p2p::actors::clock;
use tm2_p2p::actors::metrics::DropReason;
use tm2_p2p::actors::peer_conn::{PeerConn, PeerConnConfig, PeerStopped};
use tm2_p2p::actors::secret_stream::WRITE_BATCH_FRAMES;
use tm2_p2p::actors::transport::Upgraded;
use tm2_p2p::mconn::{MConnConfig, Packet};
use tm2_p2p::secret::FRAME_LEN;
use tm2_p2p::{
    Broadcast, ChannelDescriptor, DisconnectPeer, DisconnectReason, GetPeers, NodeKey, P2pConfig,
    PeerHandle, PeerId, RegisterReactor, SendTo, StopPeerForError, Switch, SwitchEvent, TrySendTo,
};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Registers a [`Counter`] for `desc` on `node`; returns its tally.
async fn counter_for(node: &TestNode, desc: ChannelDescriptor) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let addr = Counter {
        tally: tally.clone(),
        check_seq: false,
    }
    .start();
    node.node
        .switch()
        .send(RegisterReactor::new("counter", vec![desc], &addr))
        .await
        .unwrap()
        .unwrap();
    tally
}

/// The handle of the connected peer `id`.
async fn handle_of(node: &TestNode, id: PeerId) -> PeerHandle {
    let peers = node.node.switch().send(GetPeers).await.unwrap();
    peers
        .peers
        .into_iter()
        .find(|p| p.id == id)
        .expect("peer connected")
        .handle
}

/// Waits for `node`'s `PeerDisconnected` about `peer`; returns the reason.
async fn disconnect_reason(node: &mut TestNode, peer: PeerId) -> DisconnectReason {
    match node
        .wait_for(
            "PeerDisconnected",
            |e| matches!(e, SwitchEvent::PeerDisconnected { peer: p, .. } if *p == peer),
        )
        .await
    {
        SwitchEvent::PeerDisconnected { reason, .. } => reason,
        _ => unreachable!(),
    }
}

// ---- sending only what the peer accepts ----

#[actix::test]
async fn a_peer_handle_refuses_a_channel_the_peer_did_not_advertise_and_keeps_the_connection() {
    let mut a = TestNode::spawn(config()).await;
    let mut b = TestNode::spawn(config()).await;
    let _a40 = counter_for(&a, ChannelDescriptor::new(0x40)).await;
    let _a41 = counter_for(&a, ChannelDescriptor::new(0x41)).await;
    let b40 = counter_for(&b, ChannelDescriptor::new(0x40).with_send_queue_capacity(4)).await;
    connect(&mut a, &mut b).await;
    let to_b = handle_of(&a, b.id()).await;
    assert_eq!(to_b.channels(), [0x40]);
    assert!(to_b.has_channel(0x40) && !to_b.has_channel(0x41));
    let before = a.node.metrics().dropped(DropReason::UnknownChannel);
    assert!(!to_b.try_send(0x41, Bytes::from_static(b"never")));
    assert!(!to_b.send(0x41, Bytes::from_static(b"never")).await);
    assert_eq!(
        a.node.metrics().dropped(DropReason::UnknownChannel),
        before + 2
    );
    // Messages on one connection arrive in order: had the 0x41 packet gone out, B would have
    // dropped the connection before this one arrived.
    assert!(to_b.send(0x40, Bytes::from_static(b"after")).await);
    b40.wait("the message after the refused ones", |t| t.messages() == 1)
        .await;
    assert!(!to_b.is_closed());
    let peers = b.node.switch().send(GetPeers).await.unwrap();
    assert_eq!(peers.peers.len(), 1, "B kept A");
}

#[actix::test]
async fn a_message_over_recv_message_capacity_is_refused_locally_counted_and_the_next_arrives() {
    const MAX: usize = 10_000;
    let desc = ChannelDescriptor::new(0x40)
        .with_send_queue_capacity(4)
        .with_recv_message_capacity(MAX);
    let mut a = TestNode::spawn(config()).await;
    let mut b = TestNode::spawn(config()).await;
    let _a40 = counter_for(&a, desc).await;
    let b40 = counter_for(&b, desc).await;
    connect(&mut a, &mut b).await;
    let to_b = handle_of(&a, b.id()).await;
    assert_eq!(to_b.max_message_size(0x40), Some(MAX));
    let big = Bytes::from(vec![1; MAX + 1]);
    assert!(!to_b.try_send(0x40, big.clone()));
    assert!(!to_b.send(0x40, big.clone()).await);
    let switch = a.node.switch();
    let (peer, channel) = (b.id(), 0x40);
    let payload = big.clone();
    assert!(
        !switch
            .send(SendTo {
                peer,
                channel,
                payload
            })
            .await
            .unwrap()
    );
    let payload = big;
    assert!(
        !switch
            .send(TrySendTo {
                peer,
                channel,
                payload
            })
            .await
            .unwrap()
    );
    assert_eq!(a.node.metrics().dropped(DropReason::MessageTooLarge), 4);
    // The next message, at the limit, arrives on the same connection.
    assert!(to_b.send(0x40, Bytes::from(vec![2; MAX])).await);
    b40.wait("the message at the limit", |t| t.bytes() == MAX as u64)
        .await;
    assert!(!to_b.is_closed());
}

// ---- graceful stop ----

const CHANNEL: u8 = 0x40;
const QUEUED: u64 = 40;
const MSG: usize = 8 * 1024;

/// A and B connected on [`CHANNEL`] (room for all [`QUEUED`] messages), A with `send_rate`
/// and `drain_timeout`; returns both, B's tally and A's handle to B holding the 40 messages.
async fn queued_pair(
    send_rate: u64,
    drain_timeout: Duration,
) -> (TestNode, TestNode, Arc<Tally>, PeerHandle) {
    let desc = ChannelDescriptor::new(CHANNEL).with_send_queue_capacity(64);
    let a_config = P2pConfig {
        send_rate,
        drain_timeout,
        ..config()
    };
    let mut a = TestNode::spawn(a_config).await;
    let mut b = TestNode::spawn(config()).await;
    let _a_tally = counter_for(&a, desc).await;
    let b_tally = counter_for(&b, desc).await;
    connect(&mut a, &mut b).await;
    let to_b = handle_of(&a, b.id()).await;
    for seq in 0..QUEUED {
        assert!(to_b.try_send(CHANNEL, numbered(seq, MSG)));
    }
    (a, b, b_tally, to_b)
}

#[actix::test]
async fn shutdown_writes_the_queued_messages_before_closing() {
    // At 1 MB/s the 320 KiB take about 0.33 s: far longer than closing at once.
    let (a, mut b, b_tally, _to_b) = queued_pair(1_000_000, Duration::from_secs(10)).await;
    a.node.shutdown().await;
    b.disconnected_from(a.id()).await;
    assert_eq!(b_tally.messages(), QUEUED, "every queued message arrived");
}

/// Ends A's connection to B with `stop` (sent to A's Switch, then `meanwhile` runs), checks A
/// reports `reason` and waits for B to see the end; returns how many messages B got.
async fn stop_and_count<M>(
    (a, b, b_tally): (&mut TestNode, &mut TestNode, &Tally),
    stop: M,
    reason: DisconnectReason,
    meanwhile: impl FnOnce(),
) -> u64
where
    M: Message<Result = ()> + Send + 'static,
    Switch: Handler<M>,
{
    let peer = b.id();
    a.node.switch().send(stop).await.unwrap();
    meanwhile();
    assert_eq!(disconnect_reason(a, peer).await, reason);
    b.disconnected_from(a.id()).await;
    b_tally.messages()
}

#[actix::test]
async fn disconnect_peer_drains_and_new_sends_are_refused_meanwhile() {
    let (mut a, mut b, b_tally, to_b) = queued_pair(1_000_000, Duration::from_secs(10)).await;
    let stop = DisconnectPeer {
        peer: b.id(),
        reason: "done".into(),
    };
    let got = stop_and_count(
        (&mut a, &mut b, &b_tally),
        stop,
        DisconnectReason::Stopped("done".into()),
        || assert!(!to_b.try_send(CHANNEL, numbered(99, MSG)), "draining"),
    )
    .await;
    assert_eq!(got, QUEUED);
}

#[actix::test]
async fn a_drain_ends_at_drain_timeout() {
    // At 20 kB/s the 320 KiB would take 16 s; the drain is cut after 300 ms.
    let (mut a, mut b, b_tally, _to_b) = queued_pair(20_000, Duration::from_millis(300)).await;
    let stop = DisconnectPeer {
        peer: b.id(),
        reason: "done".into(),
    };
    let reason = DisconnectReason::Stopped("done".into());
    let got = stop_and_count((&mut a, &mut b, &b_tally), stop, reason, || {}).await;
    assert!(got < QUEUED, "{got} arrived: the drain was not cut");
}

#[actix::test]
async fn stop_peer_for_error_does_not_drain() {
    let (mut a, mut b, b_tally, _to_b) = queued_pair(20_000, Duration::from_secs(60)).await;
    let stop = StopPeerForError {
        peer: b.id(),
        reason: "bad".into(),
    };
    let reason = DisconnectReason::Misbehaved("bad".into());
    let got = stop_and_count((&mut a, &mut b, &b_tally), stop, reason, || {}).await;
    assert!(got < QUEUED, "{got} arrived: a stop for an error drained");
}

// ---- slow readers ----

/// Broadcasts `len`-byte messages on `channel` from `node` until `done` answers true (checked
/// after each message), yielding between messages so the node's tasks run.
async fn broadcast_until(
    node: &TestNode,
    channel: u8,
    len: usize,
    mut done: impl FnMut() -> bool,
) -> u64 {
    let mut seq = 0;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out broadcasting"
        );
        node.node
            .switch()
            .send(Broadcast {
                channel,
                payload: numbered(seq, len),
            })
            .await
            .unwrap();
        seq += 1;
        // Paced: a few hundred messages a second, the node's tasks run in between.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    seq
}

/// The events of `node` about `peers` disconnecting, forwarded as they come.
fn watch_disconnects(
    node: &TestNode,
) -> mpsc::Receiver<(PeerId, DisconnectReason, std::time::Instant)> {
    let (tx, rx) = mpsc::channel(64);
    let mut events = node
        .node
        .subscribe(|e| matches!(e, SwitchEvent::PeerDisconnected { .. }));
    actix::spawn(async move {
        while let Some(e) = events.recv().await {
            if let SwitchEvent::PeerDisconnected { peer, reason } = e {
                let _ = tx.send((peer, reason, clock::now())).await;
            }
        }
    });
    rx
}

#[actix::test]
async fn a_peer_that_stops_reading_is_dropped_as_a_slow_reader_after_write_timeout() {
    let write_timeout = Duration::from_secs(2);
    let s_config = P2pConfig {
        write_timeout,
        ..config()
    };
    let mut s = TestNode::spawn(s_config).await;
    let desc = ChannelDescriptor::new(CHANNEL).with_send_queue_capacity(8);
    let _s_tally = counter_for(&s, desc).await;
    let mut disconnects = watch_disconnects(&s);
    // Completes the handshake, then never reads (the connection is held, unread).
    let (key, _up) = raw_dial(&s.address(), common::NETWORK, vec![CHANNEL]).await;
    s.connected_to(key.id()).await;
    let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let gone = gone.clone();
        actix::spawn(async move {
            let got = disconnects.recv().await;
            gone.store(true, std::sync::atomic::Ordering::Release);
            got
        })
    };
    broadcast_until(&s, CHANNEL, 60_000, || {
        gone.load(std::sync::atomic::Ordering::Acquire)
    })
    .await;
    let (peer, reason, _) = watcher.await.unwrap().unwrap();
    assert_eq!(peer, key.id());
    assert_eq!(reason, DisconnectReason::SlowReader(write_timeout));
    assert!(!reason.is_peer_fault());
    let text = s.node.metrics().encode();
    assert!(
        text.contains("tm2p2p_peer_disconnects_total{reason=\"slow_reader\"} 1"),
        "{text}"
    );
}

/// A write half whose bytes are all taken and whose flush never completes: a secret stream
/// whose socket is full, at the moment its sealed frames wait for the kernel.
struct FlushNeverCompletes;

impl AsyncWrite for FlushNeverCompletes {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }
}

/// Records the `PeerStopped` it gets.
struct Stopped(mpsc::Sender<PeerStopped>);

impl Actor for Stopped {
    type Context = Context<Self>;
}

impl Handler<PeerStopped> for Stopped {
    type Result = ();
    fn handle(&mut self, msg: PeerStopped, _: &mut Self::Context) {
        let _ = self.0.try_send(msg);
    }
}

/// Ignores what it receives.
struct Sink;

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<tm2_p2p::Receive> for Sink {
    type Result = ();
    fn handle(&mut self, _: tm2_p2p::Receive, _: &mut Self::Context) {}
}

#[actix::test]
async fn blind_pongs_do_not_answer_a_ping_the_peer_cannot_have_read() {
    // The peer reads nothing: our ping is taken by the stream but its flush never completes
    // (a secret writer whose socket is full). A stream of our own makes that state certain;
    // on real TCP, whether a ping lands there or waits unwritten behind the blocked batch
    // (then `write_timeout` ends the connection) depends on the kernel's window updates.
    // It sends a pong every 10 ms anyway. With a write timeout far away, only the pong
    // deadline can end this connection, and it must: those pongs answer nothing.
    let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
    let (read, _unused_write) = tokio::io::split(ours);
    let config = PeerConnConfig {
        mconn: MConnConfig {
            ping_interval: Duration::from_millis(300),
            pong_timeout: Duration::from_millis(200),
            write_timeout: Duration::from_secs(3600),
            send_rate: 0,
            recv_rate: 0,
            ..MConnConfig::default()
        },
        ..PeerConnConfig::default()
    };
    let (tx, mut stopped) = mpsc::channel(4);
    let sup = Stopped(tx).start();
    let peer = NodeKey::generate().unwrap().id();
    let (_addr, handle) = PeerConn::start_split(
        read,
        FlushNeverCompletes,
        peer,
        config,
        vec![(
            ChannelDescriptor::new(CHANNEL),
            Sink.start().recipient().into(),
        )],
        sup.recipient(),
        Some(io_runtime()),
    )
    .unwrap();
    let mut pong = Vec::new();
    Packet::Pong.encode_framed(&mut pong);
    let pongs = async {
        loop {
            if theirs.write_all(&pong).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let report = tokio::select! {
        r = tokio::time::timeout(TIMEOUT, stopped.recv()) => r,
        () = pongs => panic!("the connection's read half went away first"),
    };
    let report = report
        .expect("blind pongs kept the connection alive")
        .unwrap();
    assert_eq!(report.peer, handle.id());
    assert_eq!(report.reason, DisconnectReason::PongTimeout);
}

// ---- what non-readers pin ----

/// The memory bound per peer of docs/ARCHITECTURE.md ("What one peer can pin") for this
/// test's single channel: its send queue, the message being split and one that finished in
/// the writer's batch (which passes message data by reference until written),
/// `(send_queue_capacity + 2) × recv_message_capacity`, plus the writer's batch buffer
/// (`BATCH_BYTES` + one packet) and the secret writer's sealed frames
/// (`WRITE_BATCH_FRAMES` × 1044 bytes).
fn per_peer_bound(desc: &ChannelDescriptor) -> u64 {
    let queues = (desc.send_queue_capacity as u64 + 2) * desc.recv_message_capacity as u64;
    let batch = tm2_p2p::mconn::BATCH_BYTES as u64 + 1056;
    let sealed = (WRITE_BATCH_FRAMES * FRAME_LEN) as u64;
    queues + batch + sealed
}

/// See [`slow_readers_measurement`]; run in its own process so that its RSS is its own.
#[test]
fn three_non_readers_are_dropped_as_slow_readers_and_pin_less_than_the_stated_bound() {
    let _heavy = heavy_lock();
    run_isolated("slow_readers_measurement", "slow-readers");
}

/// Node S broadcasts 60 KB messages to 2 honest peers, paced on the slower one (at most 8
/// messages ahead, so they never drop). 3 peers then complete the handshake and never read.
/// Asserts: each is dropped as `SlowReader(write_timeout)`; while they are connected, each
/// one's queued bytes stay within its send-queue bound; S's heap and RSS grow by less than 3 ×
/// [`per_peer_bound`] (plus allocator slack) from before they joined; the honest peers get
/// every broadcast.
#[test]
#[ignore = "run in its own process by three_non_readers_...; returns at once alone"]
fn slow_readers_measurement() {
    if child_role().as_deref() != Some("slow-readers") {
        return;
    }
    actix::System::new().block_on(slow_readers());
}

async fn slow_readers() {
    const LEN: usize = 60_000;
    const NON_READERS: usize = 3;
    let write_timeout = Duration::from_secs(3);
    let desc = ChannelDescriptor::new(CHANNEL)
        .with_send_queue_capacity(16)
        .with_recv_message_capacity(64 * 1024);
    let io = io_runtime();
    let s_config = P2pConfig {
        write_timeout,
        ..config()
    };
    let mut s =
        TestNode::spawn_with(s_config, NodeKey::generate().unwrap(), Some(io.clone())).await;
    let _s_tally = counter_for(&s, desc).await;
    let mut disconnects = watch_disconnects(&s);
    let mut honest = Vec::new();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let mut h =
            TestNode::spawn_with(config(), NodeKey::generate().unwrap(), Some(io.clone())).await;
        honest.push(counter_for(&h, desc).await);
        connect(&mut h, &mut s).await;
        nodes.push(h);
    }
    let mut seq = 0u64;
    let mut paced = async |s: &TestNode| {
        let next = seq;
        let slowest = honest.iter().min_by_key(|t| t.messages()).unwrap();
        slowest
            .wait("the slower honest peer", |t| {
                next.saturating_sub(t.messages()) < 8
            })
            .await;
        s.node
            .switch()
            .send(Broadcast {
                channel: CHANNEL,
                payload: numbered(next, LEN),
            })
            .await
            .unwrap();
        seq += 1;
    };
    // Warm-up: buffers and the allocator reach their working size.
    for _ in 0..500 {
        paced(&s).await;
    }
    let run = NonReaders::run(&mut s, CHANNEL, NON_READERS, &mut disconnects, &mut paced).await;
    let all = seq;
    for t in &honest {
        t.wait("an honest peer to get every broadcast", |t| {
            t.messages() >= all
        })
        .await;
    }
    let bound = per_peer_bound(&desc);
    let queue_bound = (desc.send_queue_capacity as u64 + 1) * desc.recv_message_capacity as u64;
    println!(
        "per-peer bound {:.2} MiB (queues {:.2} MiB); {NON_READERS} non-readers: {:.2} MiB",
        mib(bound),
        mib(queue_bound),
        mib(NON_READERS as u64 * bound)
    );
    println!(
        "measured: queued bytes max {:.2} MiB per non-reader; {}; {all} broadcasts",
        mib(run.queued_max as u64),
        run.growth()
    );
    run.check(write_timeout, bound);
    assert!(
        run.dropped
            .iter()
            .all(|(p, _, _)| run.stalled.iter().any(|(q, ..)| q == p)),
        "{:?}",
        run.dropped
    );
    assert!(
        run.queued_max as u64 <= queue_bound,
        "queued {} > {queue_bound}",
        run.queued_max
    );
    drop(run);
    drop(nodes);
}

/// One run of non-readers: peers that connect to a node, advertise the channel and never
/// read, while the node keeps sending to them.
struct NonReaders {
    /// RSS and heap in use just before the non-readers connected.
    rss0: u64,
    heap0: u64,
    /// The most of each seen until every non-reader was dropped.
    rss_max: u64,
    heap_max: u64,
    /// The most bytes queued for one non-reader while it was connected.
    queued_max: usize,
    /// Each non-reader: its id, its handle on the node, its connection (held open, never
    /// read) and when it connected.
    stalled: Vec<(PeerId, PeerHandle, Upgraded, std::time::Instant)>,
    /// The node's disconnections meanwhile: who, why, when.
    dropped: Vec<(PeerId, DisconnectReason, std::time::Instant)>,
}

impl NonReaders {
    /// Connects `count` non-readers to `s` on `channel`, then runs `step` (one paced message
    /// from `s`, which it is given) until `s` has reported as many disconnections, sampling RSS, heap and each
    /// non-reader's queued bytes after every step.
    async fn run(
        s: &mut TestNode,
        channel: u8,
        count: usize,
        disconnects: &mut mpsc::Receiver<(PeerId, DisconnectReason, std::time::Instant)>,
        step: &mut impl AsyncFnMut(&TestNode),
    ) -> Self {
        let (rss0, heap0) = (rss(), heap_in_use().unwrap_or(0));
        let mut stalled = Vec::new();
        for _ in 0..count {
            let (key, up) = raw_dial(&s.address(), common::NETWORK, vec![channel]).await;
            s.connected_to(key.id()).await;
            let handle = handle_of(s, key.id()).await;
            stalled.push((key.id(), handle, up, clock::now()));
        }
        let mut run = Self {
            rss0,
            heap0,
            rss_max: rss0,
            heap_max: heap0,
            queued_max: 0,
            stalled,
            dropped: Vec::new(),
        };
        while run.dropped.len() < count {
            step(s).await;
            for (_, handle, _, _) in &run.stalled {
                if !handle.is_closed() {
                    run.queued_max = run.queued_max.max(handle.queued_bytes());
                }
            }
            run.rss_max = run.rss_max.max(rss());
            run.heap_max = run.heap_max.max(heap_in_use().unwrap_or(0));
            while let Ok(d) = disconnects.try_recv() {
                run.dropped.push(d);
            }
        }
        run
    }

    /// Heap and RSS growth, for the test's report.
    fn growth(&self) -> String {
        format!(
            "heap +{:.2} MiB; RSS +{:.2} MiB ({:.1} -> {:.1} MiB)",
            mib(self.heap_max.saturating_sub(self.heap0)),
            mib(self.rss_max.saturating_sub(self.rss0)),
            mib(self.rss0),
            mib(self.rss_max)
        )
    }

    /// Every non-reader was dropped as `SlowReader(write_timeout)` (printing how long each
    /// lasted), and heap and RSS grew by less than `bound` per non-reader plus allocator
    /// slack.
    fn check(&self, write_timeout: Duration, bound: u64) {
        for (peer, _, _, connected_at) in &self.stalled {
            let (_, reason, at) = self
                .dropped
                .iter()
                .find(|(p, _, _)| p == peer)
                .expect("every non-reader dropped");
            println!(
                "non-reader {peer} dropped {:.2?} after it connected: {reason}",
                at.duration_since(*connected_at)
            );
            assert_eq!(*reason, DisconnectReason::SlowReader(write_timeout));
        }
        let stated = self.stalled.len() as u64 * bound;
        let heap_growth = self.heap_max.saturating_sub(self.heap0);
        // Allocator slack: freed memory kept in the io runtime's thread arenas.
        assert!(
            heap_growth < stated + 8 * 1024 * 1024,
            "heap grew {heap_growth} bytes, bound {stated}"
        );
        let rss_growth = self.rss_max.saturating_sub(self.rss0);
        assert!(
            rss_growth < stated + 32 * 1024 * 1024,
            "RSS grew {rss_growth} bytes, bound {stated}"
        );
    }
}

/// See [`gossip_slow_readers_measurement`]; run in its own process so that its RSS is its own.
#[test]
fn three_non_readers_of_the_gossip_reactor_are_dropped_and_its_backlogs_stay_under_the_bound() {
    let _heavy = heavy_lock();
    run_isolated("gossip_slow_readers_measurement", "gossip-slow-readers");
}

/// The same shape as [`slow_readers_measurement`] with the Gossip reactor, whose per-peer
/// backlog sits in front of each connection's send queue: node S publishes 60 KB messages,
/// paced on the slower of 2 honest gossip nodes; 3 peers advertise the gossip channel and
/// never read. The bound per peer adds `backlog_per_peer × max_message_size`.
#[test]
#[ignore = "run in its own process by three_non_readers_of_the_gossip_...; returns at once alone"]
fn gossip_slow_readers_measurement() {
    if child_role().as_deref() != Some("gossip-slow-readers") {
        return;
    }
    actix::System::new().block_on(gossip_slow_readers());
}

async fn gossip_slow_readers() {
    use tm2_p2p::actors::gossip::{
        GetGossipStats, Gossip, GossipConfig, Publish, SEND_QUEUE_CAPACITY,
    };
    const LEN: usize = 60_000;
    const NON_READERS: usize = 3;
    let write_timeout = Duration::from_secs(3);
    let gossip_config = GossipConfig {
        max_message_size: 64 * 1024,
        backlog_per_peer: 64,
        ..GossipConfig::default()
    };
    let desc = gossip_config.channel();
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let io = io_runtime();
    let s_config = P2pConfig {
        write_timeout,
        ..config()
    };
    let mut s =
        TestNode::spawn_with(s_config, NodeKey::generate().unwrap(), Some(io.clone())).await;
    let s_gossip = Gossip::new(gossip_config, log.clone()).start();
    s.node
        .switch()
        .send(RegisterReactor::new("gossip", vec![desc], &s_gossip))
        .await
        .unwrap()
        .unwrap();
    let mut disconnects = watch_disconnects(&s);
    let mut honest = Vec::new();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let mut h =
            TestNode::spawn_with(config(), NodeKey::generate().unwrap(), Some(io.clone())).await;
        let g = Gossip::new(gossip_config, log.clone()).start();
        h.node
            .switch()
            .send(RegisterReactor::new("gossip", vec![desc], &g))
            .await
            .unwrap()
            .unwrap();
        connect(&mut h, &mut s).await;
        honest.push(g);
        nodes.push(h);
    }
    let mut seq = 0u64;
    // A `TestNode` argument as `NonReaders::run` passes one; S's gossip reactor does the work.
    let mut paced = async |_: &TestNode| {
        let next = seq;
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let mut slowest = u64::MAX;
            for g in &honest {
                slowest = slowest.min(g.send(GetGossipStats).await.unwrap().delivered);
            }
            if next.saturating_sub(slowest) < 8 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "honest peers stalled"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        s_gossip
            .send(Publish(numbered(next, LEN)))
            .await
            .unwrap()
            .unwrap();
        seq += 1;
    };
    for _ in 0..500 {
        paced(&s).await;
    }
    let run = NonReaders::run(&mut s, desc.id, NON_READERS, &mut disconnects, &mut paced).await;
    let all = seq;
    for g in &honest {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while g.send(GetGossipStats).await.unwrap().delivered < all {
            assert!(
                tokio::time::Instant::now() < deadline,
                "an honest peer missed messages"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let stats = s_gossip.send(GetGossipStats).await.unwrap();
    let max = gossip_config.max_message_size as u64;
    let backlog = gossip_config.backlog_per_peer as u64 * max;
    let bound = per_peer_bound(&desc) + backlog;
    assert_eq!(desc.send_queue_capacity, SEND_QUEUE_CAPACITY);
    println!(
        "gossip: per-peer bound {:.2} MiB (send queue {:.2} MiB, backlog {:.2} MiB); \
         {NON_READERS} non-readers: {:.2} MiB",
        mib(bound),
        mib((desc.send_queue_capacity as u64 + 1) * max),
        mib(backlog),
        mib(NON_READERS as u64 * bound)
    );
    println!(
        "measured: {}; {all} messages; backlogged {}, dropped {}",
        run.growth(),
        stats.backlogged,
        stats.dropped
    );
    run.check(write_timeout, bound);
    drop(run);
    drop(nodes);
}
