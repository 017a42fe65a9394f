//! Fault tests (issue 9): a peer process killed mid-transfer, a peer that stops reading while
//! we broadcast, and a thousand hostile connections beside real peers.
//!
//! The heavy tests take one lock ([`common::heavy_lock`]) so they run one at a time: each
//! measures something (close latencies, throughput, RSS) that a neighbour on a 2-core machine
//! would distort. Tests that need a separate process run this very binary again as a child
//! (`child_command`): the `#[ignore]`d tests below are those children and return at once when
//! run without the role variable.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod common;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{
    ChildProcess, TIMEOUT, Tally, TestNode, child_command, child_role, config, connect, counter,
    heavy_lock, io_runtime, mib, numbered, process_cpu_time, raise_fd_limit, rss, run_isolated,
};
use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::rand::SystemRandom;
use tm2_p2p::actors::clock;
use tm2_p2p::actors::secret_stream::{SecretStreamError, SecretWriter, handshake};
use tm2_p2p::actors::transport::{InboundRejectReason, TransportError, dial};
use tm2_p2p::codec::amino;
use tm2_p2p::secret::{FRAME_LEN, FrameSealer, derive_secrets_and_challenge};
use tm2_p2p::{
    AddPersistentPeers, Broadcast, DialError, DisconnectPeer, GetPeers, InboundRejection,
    NetAddress, NodeInfo, NodeKey, P2pConfig, PeerHandle, PeerId, SwitchEvent,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

/// The channel every test reactor uses.
const CHANNEL: u8 = 0x40;

// ================================================================================================
// 1. A peer process killed with SIGKILL in the middle of a transfer
// ================================================================================================

/// Environment of the peer child: its key file and listen address.
const PEER_KEY_FILE: &str = "TM2_P2P_TEST_PEER_KEY_FILE";
const PEER_LADDR: &str = "TM2_P2P_TEST_PEER_LADDR";

/// Size of each message the survivor sends to the child.
const TRANSFER_MSG: usize = 256 * 1024;

/// The child side of the SIGKILL test: a node with a counting reactor that prints
/// `LISTEN id@ip:port` once ready and `PROGRESS <bytes received>` as bytes arrive, and runs
/// until it is killed (or its parent goes away).
#[test]
#[ignore = "a child process of the SIGKILL test; returns at once when run by hand"]
fn child_peer_process() {
    if child_role().as_deref() != Some("peer") {
        return;
    }
    common::exit_when_parent_goes();
    let key_file = std::env::var(PEER_KEY_FILE).unwrap();
    let laddr: SocketAddr = std::env::var(PEER_LADDR).unwrap().parse().unwrap();
    actix::System::new().block_on(async move {
        let key = NodeKey::load_or_generate(&key_file).unwrap();
        let node = TestNode::spawn_with(P2pConfig { laddr, ..config() }, key, None).await;
        let tally = counter(&node.node, CHANNEL, 8, false).await;
        println!("LISTEN {}", node.address());
        let mut printed = u64::MAX;
        loop {
            let changed = tally.changed.notified();
            let bytes = tally.bytes();
            if bytes != printed {
                println!("PROGRESS {bytes}");
                printed = bytes;
            }
            // At most one line per 10 ms, as soon as something changed.
            changed.await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}

/// Starts the peer child with the key in `key_file`, listening on `laddr`.
fn spawn_peer_child(key_file: &Path, laddr: SocketAddr) -> ChildProcess {
    let mut cmd = child_command("child_peer_process", "peer");
    cmd.env(PEER_KEY_FILE, key_file)
        .env(PEER_LADDR, laddr.to_string());
    ChildProcess::spawn(cmd)
}

/// Waits until `cond` holds, checking every 5 ms, up to [`TIMEOUT`] (for a child's progress,
/// which a reader thread updates and no event announces).
async fn poll_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = clock::now() + TIMEOUT;
    while !cond() {
        assert!(clock::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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

/// A peer in another process is killed (SIGKILL) while we send it 256 KiB messages as fast as
/// it takes them. The survivor publishes exactly one `PeerDisconnected` for it (checked until
/// three failed redials have been seen, all events of one subscription in order), with a
/// reason that blames no one; the send loop ends with `false` rather than hanging; because
/// the peer is persistent, failed redials (`DialFailed`) follow; when the peer restarts with
/// the same key on the same port, the survivor reconnects by itself and the new connection
/// carries data.
#[test]
fn a_peer_process_killed_mid_transfer_is_reported_once_and_redialed_until_it_returns() {
    let _heavy = heavy_lock();
    actix::System::new().block_on(async {
        let home = tempfile::tempdir().unwrap();
        let key_file = home.path().join("node_key.json");
        let key = NodeKey::generate().unwrap();
        key.save(&key_file).unwrap();
        let child_id = key.id();

        let mut child = spawn_peer_child(&key_file, "127.0.0.1:0".parse().unwrap());
        let child_addr: NetAddress = child.line("LISTEN ").await.parse().unwrap();
        assert_eq!(child_addr.id(), child_id);

        let mut a = TestNode::spawn(P2pConfig {
            redial_backoff_base: Duration::from_millis(50),
            redial_backoff_max: Duration::from_millis(400),
            ..config()
        })
        .await;
        let _tally = counter(&a.node, CHANNEL, 8, false).await;
        // Persistent from now on: dialed now and redialed after any disconnect.
        a.node
            .switch()
            .send(AddPersistentPeers(vec![child_addr.clone()]))
            .await
            .unwrap();
        a.connected_to(child_id).await;

        // Send continuously; the loop ends when a send is refused (the connection ended).
        let handle = handle_of(&a, child_id).await;
        let sent = Arc::new(AtomicU64::new(0));
        let sender = {
            let sent = sent.clone();
            let payload = Bytes::from(vec![0xab; TRANSFER_MSG]);
            actix::spawn(async move {
                while handle.send(CHANNEL, payload.clone()).await {
                    sent.fetch_add(1, Ordering::AcqRel);
                }
            })
        };
        // Kill it in the middle: after 16 MiB arrived, with the sender still going.
        let threshold = 16 * 1024 * 1024;
        poll_until("16 MiB to reach the child", || child.progress() >= threshold).await;
        assert!(!sender.is_finished(), "the transfer ended before the kill");
        let received_before_kill = child.progress();
        child.kill();
        let sent_at_kill = sent.load(Ordering::Acquire) * TRANSFER_MSG as u64;
        println!(
            "killed the child after it reported {:.1} MiB received ({:.1} MiB queued by the sender)",
            mib(received_before_kill),
            mib(sent_at_kill)
        );

        let t_kill = clock::now();
        let e = a
            .wait_for(
                "PeerDisconnected",
                |e| matches!(e, SwitchEvent::PeerDisconnected { peer, .. } if *peer == child_id),
            )
            .await;
        let SwitchEvent::PeerDisconnected { reason, .. } = e else {
            unreachable!()
        };
        println!(
            "PeerDisconnected after {:?}: {reason}",
            clock::now() - t_kill
        );
        assert!(!reason.is_peer_fault(), "{reason:?}");
        tokio::time::timeout(TIMEOUT, sender)
            .await
            .expect("the send loop did not end after the disconnect")
            .unwrap();

        // The redial loop: failed dials of the dead peer, and no second disconnect (nor a
        // connection, nor lost events) in between.
        let mut redials = 0;
        while redials < 3 {
            match a.next("a failed redial").await {
                SwitchEvent::DialFailed { address, error } if address.id() == child_id => {
                    assert!(matches!(error, DialError::Transport(_)), "{error:?}");
                    redials += 1;
                }
                SwitchEvent::PeerDisconnected { peer, reason } if peer == child_id => {
                    panic!("a second PeerDisconnected for the killed peer: {reason:?}")
                }
                e @ (SwitchEvent::PeerConnected { .. } | SwitchEvent::Lagged { .. }) => {
                    panic!("unexpected {e:?}")
                }
                _ => {}
            }
        }
        println!(
            "{redials} failed redials within {:?} of the kill",
            clock::now() - t_kill
        );

        // The peer comes back with the same key on the same port: reconnected unasked.
        let mut child = spawn_peer_child(&key_file, child_addr.socket_addr().unwrap());
        let again: NetAddress = child.line("LISTEN ").await.parse().unwrap();
        assert_eq!(again, child_addr);
        loop {
            match a.next("the reconnection").await {
                SwitchEvent::PeerConnected { peer, .. } if peer == child_id => break,
                SwitchEvent::PeerDisconnected { peer, reason } if peer == child_id => {
                    panic!("a second PeerDisconnected for the killed peer: {reason:?}")
                }
                e @ SwitchEvent::Lagged { .. } => panic!("unexpected {e:?}"),
                _ => {}
            }
        }
        println!("reconnected {:?} after the kill", clock::now() - t_kill);
        let peers = a.node.switch().send(GetPeers).await.unwrap();
        assert_eq!(peers.peers.len(), 1);
        assert!(peers.peers[0].persistent);
        let handle = handle_of(&a, child_id).await;
        assert!(handle.send(CHANNEL, Bytes::from(vec![1; 1000])).await);
        poll_until("the restarted child to receive", || child.progress() >= 1000).await;
        a.node.shutdown().await;
    });
}

// ================================================================================================
// 2. A peer that stops reading while we broadcast
// ================================================================================================

/// Broadcast message size.
const BCAST_MSG: usize = 64 * 1024;
/// The broadcast channel's send queue per peer, in messages.
const BCAST_QUEUE: usize = 32;
/// The broadcaster stays at most this many messages ahead of the slowest healthy peer, so a
/// healthy peer's queue never overflows (it holds at most this many) and every drop counted is
/// the stalled peer's.
const BCAST_WINDOW: u64 = 16;

/// See [`slow_consumer_measurement`]; run in its own process so that its RSS is its own.
#[test]
fn a_peer_that_stops_reading_costs_bounded_memory_and_under_20_percent_of_the_others_throughput() {
    let _heavy = heavy_lock();
    run_isolated("slow_consumer_measurement", "slow-consumer");
}

/// Node S broadcasts 64 KiB messages to 3 healthy peers in 12 phases of 32 MiB each
/// (`FAULTS_PHASE_MIB` to change), in the order A B B A A B B A A B B A: in A phases S has only
/// the healthy peers; in B phases also a peer that completed the handshake and never reads
/// (connected before the first B of a pair, and first filled: broadcasts go on, untimed, until
/// its queue is full and S starts dropping for it; disconnected before the next A). The
/// broadcaster paces itself on the slowest healthy peer (at most 16 messages ahead), so healthy
/// peers never drop; every drop counted is the stalled peer's.
///
/// Asserts:
/// - every healthy peer receives every broadcast, in order;
/// - throughput: the healthy peers' bytes per CPU second of this process in the B phases are
///   at least 80 % of those in the A phases. The process is CPU-bound (unloaded, a phase's wall
///   time equals its CPU time: about 0.55 s for 96 MiB delivered), so at equal CPU this is the
///   ratio of throughputs, and it does not depend on what else the machine runs: measured
///   0.945 to 0.994 while other builds kept the load average at 10 on 2 cores. The same
///   ratio in wall time varied from 0.76 to 1.34 under that load (single phases by ±50 %), so
///   it is printed (totals, and the median over the 6 AB pairs) but asserted only at 0.5: that
///   catches the failure a CPU ratio cannot see, broadcasts waiting on the stalled peer;
/// - S's RSS grows by less than [`RSS_BOUND`] from before the first stalled peer to the end of
///   any B phase, while 6 × 32 MiB (192 MiB, plus the fills) are broadcast with a stalled peer.
#[test]
#[ignore = "run in its own process by a_peer_that_stops_reading_...; returns at once alone"]
fn slow_consumer_measurement() {
    if child_role().as_deref() != Some("slow-consumer") {
        return;
    }
    actix::System::new().block_on(slow_consumer());
}

/// See [`quiet_after_burst_measurement`]; run in its own process so that its heap is its own.
#[test]
fn a_connection_that_was_busy_once_holds_no_batch_buffers_once_quiet() {
    let _heavy = heavy_lock();
    run_isolated("quiet_after_burst_measurement", "quiet-after-burst");
}

/// Two nodes; A sends B 32 MiB in 1 MiB messages (which grows A's packet batch to 64 KiB, its
/// sealed-frame batch and B's read buffer to 267 KiB, and puts up to two 1 MiB reassembly
/// buffers on B's shelf of spares), then both send a few small messages. The live heap
/// (mallinfo2) after that is within [`QUIET_HEAP_BOUND`] of what it was before the burst: the
/// grown buffers (about 2.6 MiB in all) were released once traffic went quiet.
#[test]
#[ignore = "run in its own process by a_connection_that_was_busy_once_...; returns at once alone"]
fn quiet_after_burst_measurement() {
    if child_role().as_deref() != Some("quiet-after-burst") {
        return;
    }
    actix::System::new().block_on(quiet_after_burst());
}

/// Heap growth allowed from before a burst to after the quiet messages that follow it: a
/// quarter of what the packet batch alone would keep.
const QUIET_HEAP_BOUND: u64 = 64 * 1024;

/// One small message from `from` to `to`, waiting until `to`'s tally has it.
async fn small_message(from: &TestNode, to: &Tally) {
    let before = to.messages();
    from.node
        .switch()
        .send(Broadcast {
            channel: CHANNEL,
            payload: Bytes::from_static(b"quiet"),
        })
        .await
        .unwrap();
    to.wait("a small message", |t| t.messages() > before).await;
}

async fn quiet_after_burst() {
    let (mut a, mut b) = (
        TestNode::spawn(config()).await,
        TestNode::spawn(config()).await,
    );
    let ta = counter(&a.node, CHANNEL, 64, false).await;
    let tb = counter(&b.node, CHANNEL, 64, false).await;
    connect(&mut a, &mut b).await;
    for _ in 0..3 {
        small_message(&a, &tb).await;
        small_message(&b, &ta).await;
    }
    let Some(before) = common::heap_in_use() else {
        println!("no mallinfo2 on this platform: nothing to measure");
        return;
    };
    const BURST: u64 = 32;
    let sent_before = tb.messages();
    for i in 0..BURST {
        // At most 8 messages in flight: the burst fills the pipe, not a queue.
        tb.wait("the burst", |t| t.messages() + 8 > sent_before + i)
            .await;
        a.node
            .switch()
            .send(Broadcast {
                channel: CHANNEL,
                payload: numbered(i, 1 << 20),
            })
            .await
            .unwrap();
    }
    tb.wait("the whole burst", |t| t.messages() >= sent_before + BURST)
        .await;
    for _ in 0..3 {
        small_message(&a, &tb).await;
        small_message(&b, &ta).await;
    }
    let after = common::heap_in_use().unwrap_or(before);
    let grew = after.saturating_sub(before);
    println!(
        "heap in use: {:.1} KiB before the burst, {:.1} KiB after it and the quiet messages \
         (+{:.1} KiB; bound {} KiB)",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        grew as f64 / 1024.0,
        QUIET_HEAP_BOUND / 1024
    );
    assert!(
        grew < QUIET_HEAP_BOUND,
        "a quiet connection kept {grew} bytes grown by the burst"
    );
}

/// MiB broadcast per phase: `FAULTS_PHASE_MIB`, default 32.
fn phase_mib() -> u64 {
    std::env::var("FAULTS_PHASE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

/// The bound on RSS growth while broadcasting with a stalled peer. What S may legitimately
/// hold: each of 4 peers' queues, `BCAST_QUEUE` × 64 KiB = 2 MiB (8 MiB; the buffers are
/// shared, so at most that many distinct messages); each connection's write batch
/// (`WRITE_BATCH_FRAMES`, 267 KiB); on the healthy receivers in this same process, each reactor link's bound of
/// `(MAX_ACKS + 1) × (ACK_EVERY_BYTES + message)` = 3 × 320 KiB ≈ 1 MiB, plus one message being
/// reassembled (3 MiB for 3 peers). About 12 MiB in all; the rest of the bound is allocator
/// slack (arenas of the io runtime's threads, which hold freed memory). A queue without a
/// bound would hold the stalled peer's whole 192 MiB.
const RSS_BOUND: u64 = 48 * 1024 * 1024;

/// What one phase measured.
#[derive(Debug, Clone, Copy, Default)]
struct Phase {
    /// Bytes the healthy peers received, in total.
    bytes: u64,
    /// Wall time.
    wall: Duration,
    /// CPU time of the process.
    cpu: Duration,
}

impl Phase {
    fn rate(&self) -> f64 {
        mib(self.bytes) / self.wall.as_secs_f64()
    }

    fn add(&mut self, other: Self) {
        self.bytes += other.bytes;
        self.wall += other.wall;
        self.cpu += other.cpu;
    }
}

/// Broadcasts one 64 KiB message (number `seq`) from `s` once the slowest healthy peer is
/// within [`BCAST_WINDOW`] of it.
async fn paced_broadcast(s: &TestNode, healthy: &[Arc<Tally>], seq: &mut u64) {
    let next = *seq;
    let slowest = healthy.iter().min_by_key(|t| t.messages()).unwrap();
    slowest
        .wait("the slowest healthy peer", |t| {
            next.saturating_sub(t.messages()) < BCAST_WINDOW
        })
        .await;
    s.node
        .switch()
        .send(Broadcast {
            channel: CHANNEL,
            payload: numbered(next, BCAST_MSG),
        })
        .await
        .unwrap();
    *seq += 1;
}

/// Broadcasts `bytes` from `s` and waits until every healthy peer has all of it.
async fn broadcast_phase(s: &TestNode, healthy: &[Arc<Tally>], seq: &mut u64, bytes: u64) -> Phase {
    let before: u64 = healthy.iter().map(|t| t.bytes()).sum();
    let (t0, cpu0) = (clock::now(), process_cpu_time());
    for _ in 0..bytes / BCAST_MSG as u64 {
        paced_broadcast(s, healthy, seq).await;
    }
    let all = *seq;
    for t in healthy {
        t.wait("a healthy peer to get every broadcast", |t| {
            t.messages() >= all
        })
        .await;
    }
    let after: u64 = healthy.iter().map(|t| t.bytes()).sum();
    Phase {
        bytes: after - before,
        wall: clock::now() - t0,
        cpu: process_cpu_time() - cpu0,
    }
}

/// A peer that completes the handshake with `s` (advertising `CHANNEL`) and then never reads;
/// returned once S has filled its queue and started dropping broadcasts for it.
async fn stalled_peer(
    s: &mut TestNode,
    healthy: &[Arc<Tally>],
    seq: &mut u64,
) -> (PeerId, tm2_p2p::actors::transport::Upgraded) {
    let key = NodeKey::generate().unwrap();
    let addr: NetAddress = format!("{}@127.0.0.1:1", key.id()).parse().unwrap();
    let info = NodeInfo::new(addr, "faults", vec![CHANNEL]);
    let up = dial(&s.address(), &key, &info, TIMEOUT, TIMEOUT)
        .await
        .unwrap();
    s.connected_to(key.id()).await;
    let drops = s
        .node
        .switch()
        .send(GetPeers)
        .await
        .unwrap()
        .broadcast_drops;
    let mut fill = 0;
    while s
        .node
        .switch()
        .send(GetPeers)
        .await
        .unwrap()
        .broadcast_drops
        == drops
    {
        paced_broadcast(s, healthy, seq).await;
        fill += 1;
        assert!(fill < 10_000, "the stalled peer's queue never filled");
    }
    // The fill's broadcasts are not part of the next phase.
    let all = *seq;
    for t in healthy {
        t.wait("a healthy peer to get the fill", |t| t.messages() >= all)
            .await;
    }
    println!(
        "stalled peer filled after {fill} broadcasts ({:.1} MiB: its queue and the socket buffers)",
        mib(fill * BCAST_MSG as u64)
    );
    (key.id(), up)
}

async fn slow_consumer() {
    let io = io_runtime();
    let phase = phase_mib() * 1024 * 1024;
    let rss_start = rss();
    let mut s =
        TestNode::spawn_with(config(), NodeKey::generate().unwrap(), Some(io.clone())).await;
    let _s_tally = counter(&s.node, CHANNEL, BCAST_QUEUE, false).await;
    let mut nodes = Vec::new();
    let mut healthy = Vec::new();
    for _ in 0..3 {
        let mut h =
            TestNode::spawn_with(config(), NodeKey::generate().unwrap(), Some(io.clone())).await;
        healthy.push(counter(&h.node, CHANNEL, BCAST_QUEUE, true).await);
        connect(&mut h, &mut s).await;
        nodes.push(h);
    }
    let mut seq = 0;
    // Warm-up: connections, buffers and the allocator reach their working size.
    broadcast_phase(&s, &healthy, &mut seq, 16 * 1024 * 1024).await;

    let (mut total_a, mut total_b) = (Phase::default(), Phase::default());
    let mut pair_ratios = Vec::new();
    let mut last_a = None;
    let mut last_b = None;
    let mut stalled = None;
    let mut rss_before_b = None;
    let mut rss_max_b = 0;
    for (i, with_stalled) in [false, true, true, false].repeat(3).into_iter().enumerate() {
        if with_stalled && stalled.is_none() {
            rss_before_b.get_or_insert_with(rss);
            stalled = Some(stalled_peer(&mut s, &healthy, &mut seq).await);
        }
        if !with_stalled && let Some((id, up)) = stalled.take() {
            s.node
                .switch()
                .send(DisconnectPeer {
                    peer: id,
                    reason: "end of a B phase".into(),
                })
                .await
                .unwrap();
            s.wait_for(
                "the stalled peer to go",
                |e| matches!(e, SwitchEvent::PeerDisconnected { peer, .. } if *peer == id),
            )
            .await;
            drop(up);
        }
        let m = broadcast_phase(&s, &healthy, &mut seq, phase).await;
        println!(
            "phase {i:2} {}: {:.0} MiB delivered to the healthy peers in {:.2?} ({:.2?} CPU) = {:.1} MiB/s",
            if with_stalled { "B" } else { "A" },
            mib(m.bytes),
            m.wall,
            m.cpu,
            m.rate()
        );
        if with_stalled {
            assert_eq!(s.node.switch().send(GetPeers).await.unwrap().peers.len(), 4);
            rss_max_b = rss_max_b.max(rss());
            total_b.add(m);
            last_b = Some(m);
        } else {
            total_a.add(m);
            last_a = Some(m);
        }
        if i % 2 == 1 {
            let (a, b) = (last_a.take().unwrap(), last_b.take().unwrap());
            pair_ratios.push(b.rate() / a.rate());
        }
    }
    let snap = s.node.switch().send(GetPeers).await.unwrap();
    for (i, t) in healthy.iter().enumerate() {
        assert_eq!(t.messages(), seq, "healthy peer {i}");
        assert_eq!(
            t.out_of_order.load(Ordering::Acquire),
            0,
            "healthy peer {i}"
        );
    }
    println!(
        "broadcasts: {seq}; dropped for the stalled peers: {}",
        snap.broadcast_drops
    );
    assert!(snap.broadcast_drops > 0);

    pair_ratios.sort_by(f64::total_cmp);
    let median = (pair_ratios[2] + pair_ratios[3]) / 2.0;
    let per_cpu = |p: Phase| mib(p.bytes) / p.cpu.as_secs_f64().max(0.01);
    println!(
        "healthy throughput: {:.1} MiB/s without a stalled peer, {:.1} MiB/s with one (totals: ratio {:.3}); \
         pair ratios {pair_ratios:.3?}, median {median:.3}; per CPU second: {:.1} vs {:.1} MiB (ratio {:.3})",
        total_a.rate(),
        total_b.rate(),
        total_b.rate() / total_a.rate(),
        per_cpu(total_a),
        per_cpu(total_b),
        per_cpu(total_b) / per_cpu(total_a)
    );
    let rss_before_b = rss_before_b.unwrap();
    let growth = rss_max_b.saturating_sub(rss_before_b);
    println!(
        "RSS: {:.1} MiB at start, {:.1} MiB before the first stalled peer, max {:.1} MiB at the end \
         of B phases: growth {:.1} MiB (bound {:.0} MiB) while {:.0} MiB were broadcast with a \
         stalled peer",
        mib(rss_start),
        mib(rss_before_b),
        mib(rss_max_b),
        mib(growth),
        mib(RSS_BOUND),
        mib(6 * phase)
    );
    let cpu_ratio = per_cpu(total_b) / per_cpu(total_a);
    assert!(
        cpu_ratio >= 0.8,
        "healthy bytes per CPU second with a stalled peer: ratio {cpu_ratio:.3}"
    );
    assert!(
        median >= 0.5,
        "healthy throughput with a stalled peer: median wall-time ratio {median:.3}"
    );
    assert!(growth < RSS_BOUND, "RSS grew by {:.1} MiB", mib(growth));
    drop(nodes);
}

// ================================================================================================
// 3. 500 silent and 500 garbage connections beside real peers
// ================================================================================================

/// What a hostile connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Bad {
    /// Connects and sends nothing.
    Silent,
    /// Sends garbage instead of the ephemeral-key message.
    GarbageEphemeral,
    /// Sends a valid ephemeral key, then garbage instead of the auth frame.
    GarbageFrame,
    /// Completes the key exchange, then sends a correctly sealed frame holding a garbage auth
    /// message (alternately malformed, or well formed with a wrong signature).
    GarbageAuth,
    /// Completes the secret handshake, then sends garbage instead of its NodeInfo
    /// (alternately an oversize length, or an undecodable body).
    GarbageNodeInfo,
}

impl Bad {
    /// How many upgrade stages (each under the handshake timeout) the node may spend on it.
    fn stages(self) -> u32 {
        if self == Self::GarbageNodeInfo { 2 } else { 1 }
    }
}

/// The 1000 hostile connections: 500 silent, 125 of each garbage kind, interleaved.
fn hostile_plan() -> Vec<Bad> {
    (0..1000)
        .map(|i| match (i % 2, i / 2 % 4) {
            (0, _) => Bad::Silent,
            (_, 0) => Bad::GarbageEphemeral,
            (_, 1) => Bad::GarbageFrame,
            (_, 2) => Bad::GarbageAuth,
            _ => Bad::GarbageNodeInfo,
        })
        .collect()
}

/// Deterministic junk (xorshift), different per connection.
fn junk(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A fresh X25519 key pair and its ephemeral-key message (`22 0a 20` + key).
fn ephemeral() -> (EphemeralPrivateKey, [u8; 32], Vec<u8>) {
    let private = EphemeralPrivateKey::generate(&X25519, &SystemRandom::new()).unwrap();
    let public: [u8; 32] = private
        .compute_public_key()
        .unwrap()
        .as_ref()
        .try_into()
        .unwrap();
    let mut msg = vec![0x22, 0x0a, 0x20];
    msg.extend_from_slice(&public);
    (private, public, msg)
}

/// Plays `kind` on `tcp` (connection number `i`): the valid steps with the crate's own
/// handshake code, then the garbage. An error means the node already closed.
async fn misbehave(kind: Bad, i: u64, tcp: &mut TcpStream) -> io::Result<()> {
    match kind {
        Bad::Silent => {}
        Bad::GarbageEphemeral => tcp.write_all(&junk(i, 64)).await?,
        Bad::GarbageFrame => {
            let (_, _, msg) = ephemeral();
            tcp.write_all(&msg).await?;
            tcp.write_all(&junk(i, FRAME_LEN)).await?;
        }
        Bad::GarbageAuth => {
            let (private, public, msg) = ephemeral();
            tcp.write_all(&msg).await?;
            let mut theirs = [0u8; 35];
            tcp.read_exact(&mut theirs).await?;
            let remote: [u8; 32] = theirs[3..].try_into().unwrap();
            let secrets = agreement::agree_ephemeral(
                private,
                &UnparsedPublicKey::new(&X25519, remote),
                |dh| derive_secrets_and_challenge(dh.try_into().unwrap(), public <= remote),
            )
            .unwrap();
            let auth = if (i / 8).is_multiple_of(2) {
                junk(i, 101)
            } else {
                // Well formed, but signing something other than the challenge.
                let key = NodeKey::generate().unwrap();
                let mut auth = vec![0x64, 0x0a, 0x20];
                auth.extend_from_slice(&key.public_key());
                auth.extend_from_slice(&[0x12, 0x40]);
                auth.extend_from_slice(&key.sign(b"not the challenge"));
                auth
            };
            let mut frame = [0u8; FRAME_LEN];
            FrameSealer::from_raw_key(&secrets.send, 0)
                .unwrap()
                .seal(&auth, &mut frame)
                .unwrap();
            tcp.write_all(&frame).await?;
        }
        Bad::GarbageNodeInfo => {
            let key = NodeKey::generate().unwrap();
            let (established, _) = handshake(tcp, &key).await.map_err(io::Error::other)?;
            let mut garbage = Vec::new();
            if (i / 8).is_multiple_of(2) {
                amino::put_uvarint(&mut garbage, 10_241);
            } else {
                amino::put_uvarint(&mut garbage, 64);
                garbage.extend_from_slice(&junk(i, 64));
            }
            let mut w = SecretWriter::new(&mut *tcp, established.sealer);
            w.write_all(&garbage).await?;
            w.flush().await?;
        }
    }
    Ok(())
}

/// Reads until the node closes the connection (EOF or reset).
async fn until_closed(tcp: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = tcp.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

/// A sending task of [`Traffic`]: messages sent, and the longest a send waited.
type SenderTask = tokio::task::JoinHandle<(u64, Duration)>;

/// Real peers exchanging numbered messages in both directions while the flood runs.
struct Traffic {
    /// Per link: the receiver's tally, the sender's id, and the task sending (it returns how
    /// many messages it sent and the longest a send waited for room, or fails if one was
    /// refused).
    links: Vec<(Arc<Tally>, PeerId, SenderTask)>,
    stop: Rc<Cell<bool>>,
}

impl Traffic {
    /// Starts sending one 1 KiB message on every link every 2 ms.
    fn start(links: Vec<(PeerHandle, Arc<Tally>, PeerId)>) -> Self {
        let stop = Rc::new(Cell::new(false));
        let links = links
            .into_iter()
            .map(|(handle, tally, from)| {
                let stop = stop.clone();
                let task = actix::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(2));
                    let (mut sent, mut longest) = (0, Duration::ZERO);
                    while !stop.get() {
                        tick.tick().await;
                        let t0 = clock::now();
                        assert!(
                            handle.send(CHANNEL, numbered(sent, 1024)).await,
                            "a real peer refused a message during the flood"
                        );
                        longest = longest.max(clock::now() - t0);
                        sent += 1;
                    }
                    (sent, longest)
                });
                (tally, from, task)
            })
            .collect();
        Self { links, stop }
    }

    /// Stops sending and checks that every message sent arrived, in order. Returns the
    /// messages sent and the longest a send waited for room.
    async fn finish(self) -> (u64, Duration) {
        self.stop.set(true);
        let (mut total, mut longest) = (0, Duration::ZERO);
        for (tally, from, task) in self.links {
            let (sent, waited) = task.await.unwrap();
            longest = longest.max(waited);
            assert!(sent > 0);
            tally
                .wait("the real peers' messages", |t| t.from(&from) >= sent)
                .await;
            assert_eq!(tally.from(&from), sent);
            assert_eq!(tally.out_of_order.load(Ordering::Acquire), 0);
            total += sent;
        }
        (total, longest)
    }
}

/// Runs the flood against a node configured with `slots` (total and per IP handshake slots):
/// two real peers keep exchanging messages with it throughout, 1000 hostile connections are
/// opened from 100 loopback source addresses (127.0.0.2 to 127.0.0.101), every one kept open
/// until the node closes it, and each must be closed within its stages × handshake timeout +
/// [`CLOSE_MARGIN`] of being accepted (when the node sent its first byte, or closed it).
///
/// At most `max_open` hostile connections are open at a time, and they are opened as fast as
/// the node accepts them, at most 100 waiting: the node's listen backlog is 128 (tokio's
/// default), and beyond it the kernel drops the handshake's last ACK, so a client believes it
/// is connected 1 to 3 s (SYN-ACK retransmissions) before the node can accept it; that delay
/// is the kernel's, not the node's timeout.
///
/// Returns the node's rejection counts by reason.
async fn flood(slots: (usize, usize, usize), max_open: usize) -> BTreeMap<String, u64> {
    raise_fd_limit();
    let handshake_timeout = Duration::from_secs(1);
    let mut n = TestNode::spawn(P2pConfig {
        handshake_timeout,
        max_handshakes_in_progress: slots.0,
        max_handshakes_per_ip: slots.1,
        max_handshakes_per_subnet: slots.2,
        ..config()
    })
    .await;
    let n_tally = counter(&n.node, CHANNEL, 64, true).await;
    let mut real = Vec::new();
    for _ in 0..2 {
        let mut r = TestNode::spawn(config()).await;
        let tally = counter(&r.node, CHANNEL, 64, true).await;
        connect(&mut n, &mut r).await;
        real.push((r, tally));
    }
    let mut links = Vec::new();
    for (r, tally) in &real {
        links.push((handle_of(&n, r.id()).await, tally.clone(), n.id()));
        links.push((handle_of(r, n.id()).await, n_tally.clone(), r.id()));
    }
    let traffic = Traffic::start(links);

    // Count the node's events meanwhile (a real peer's disconnection fails the test).
    let real_ids: Vec<PeerId> = real.iter().map(|(r, _)| r.id()).collect();
    let mut events = n.node.subscribe(|e| {
        matches!(
            e,
            SwitchEvent::InboundRejected { .. } | SwitchEvent::PeerDisconnected { .. }
        )
    });
    let counts = Rc::new(RefCell::new(BTreeMap::<String, u64>::new()));
    let watcher = {
        let counts = counts.clone();
        actix::spawn(async move {
            while let Some(e) = events.recv().await {
                let key = match e {
                    SwitchEvent::PeerDisconnected { peer, reason } if real_ids.contains(&peer) => {
                        format!("REAL PEER DISCONNECTED: {reason}")
                    }
                    SwitchEvent::InboundRejected { reason, .. } => rejection_kind(&reason),
                    SwitchEvent::Lagged { .. } => "(events lost by a lagging subscriber)".into(),
                    _ => continue,
                };
                *counts.borrow_mut().entry(key).or_default() += 1;
            }
        })
    };

    let target = n.node.local_addr();
    // The hostile clients run on the io runtime's threads, so that their own handshake work
    // does not delay the node's thread and inflate the close latencies measured.
    let io = io_runtime();
    let connects = Arc::new(Semaphore::new(100));
    let open = Arc::new(Semaphore::new(max_open));
    let plan = hostile_plan();
    let t0 = clock::now();
    let mut tasks = Vec::new();
    for (i, kind) in plan.iter().copied().enumerate() {
        let (connects, open) = (connects.clone(), open.clone());
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 100) as u8));
        tasks.push(io.spawn(async move {
            let _open = open.acquire_owned().await.unwrap();
            let permit = connects.acquire().await.unwrap();
            let socket = TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::new(source, 0)).unwrap();
            let mut tcp = socket.connect(target).await.unwrap();
            // The node has accepted the connection once it sends its first byte (its
            // ephemeral key; nothing of ours is needed for that) or closes it.
            let mut first = [0u8; 1];
            let accepted = tokio::time::timeout(TIMEOUT, tcp.peek(&mut first))
                .await
                .unwrap_or_else(|_| panic!("hostile connection {i} was never accepted"));
            drop(permit);
            let t0 = clock::now();
            if matches!(accepted, Ok(n) if n > 0)
                && misbehave(kind, i as u64, &mut tcp).await.is_ok()
            {
                tokio::time::timeout(TIMEOUT, until_closed(&mut tcp))
                    .await
                    .unwrap_or_else(|_| panic!("hostile connection {i} ({kind:?}) stayed open"));
            }
            (kind, clock::now() - t0)
        }));
    }
    let mut latencies = BTreeMap::<Bad, Vec<Duration>>::new();
    for task in tasks {
        let (kind, latency) = task.await.unwrap();
        latencies.entry(kind).or_default().push(latency);
    }
    let flood_time = clock::now() - t0;
    let (sent, longest_send) = traffic.finish().await;

    // A new real peer is accepted after the flood.
    let mut late = TestNode::spawn(config()).await;
    let _late_tally = counter(&late.node, CHANNEL, 8, false).await;
    connect(&mut late, &mut n).await;
    watcher.abort();

    println!(
        "slots {slots:?}, at most {max_open} open: 1000 hostile connections handled in \
         {flood_time:.2?}; {sent} messages between real peers meanwhile, all delivered in order \
         (the longest a send waited for room: {longest_send:.2?})"
    );
    let mut worst = Vec::new();
    for (kind, mut l) in latencies {
        l.sort();
        let bound = handshake_timeout * kind.stages() + CLOSE_MARGIN;
        println!(
            "  {kind:?} x{}: closed after min {:.2?}, median {:.2?}, p99 {:.2?}, max {:.2?} \
             (bound {bound:?})",
            l.len(),
            l[0],
            l[l.len() / 2],
            l[l.len() * 99 / 100],
            l[l.len() - 1]
        );
        if l[l.len() - 1] > bound {
            worst.push(format!("{kind:?}: {:?} > {bound:?}", l[l.len() - 1]));
        }
    }
    let counts = counts.borrow().clone();
    println!("  node's InboundRejected events by reason: {counts:?}");
    assert!(worst.is_empty(), "closed too late: {worst:?}");
    assert!(
        !counts.keys().any(|k| k.starts_with("REAL PEER")),
        "{counts:?}"
    );
    late.node.shutdown().await;
    n.node.shutdown().await;
    counts
}

/// Slack over the handshake timeout for a hostile connection to be closed. The node runs every
/// upgrade, and so its timeouts, on its one actix thread, which in a debug build spends about
/// 1.5 ms per X25519 operation and 1 ms per signature (measured; 10 times less in release):
/// hundreds of handshakes at once keep it busy, and its timers fire late by that backlog. On
/// this 2-core machine under a load average of 8 (other builds), the every-handshake variant
/// closed silent connections after up to 2.8 s with 250 open at a time.
const CLOSE_MARGIN: Duration = Duration::from_secs(3);

/// A short name of why the node refused an inbound connection.
fn rejection_kind(reason: &InboundRejection) -> String {
    let e = match reason {
        InboundRejection::Transport(InboundRejectReason::NoHandshakeSlot(_)) => {
            return "no handshake slot".into();
        }
        InboundRejection::Transport(InboundRejectReason::Evicted) => {
            return "evicted from its handshake slot".into();
        }
        InboundRejection::PeerSet(r) => return format!("peer set: {r}"),
        InboundRejection::Transport(InboundRejectReason::Upgrade(e)) => e,
        other => return format!("{other}"),
    };
    // The variants, without their fields' values.
    let short = |debug: String| {
        let end = debug.find(['{', '"']).unwrap_or(debug.len());
        debug[..end].trim_end_matches(['(', ' ']).to_owned()
    };
    match &**e {
        TransportError::Timeout { stage, .. } => format!("timeout in {stage:?}"),
        TransportError::Secret(SecretStreamError::Handshake(h)) => {
            format!("handshake: {}", short(format!("{h:?}")))
        }
        TransportError::NodeInfo(n) => format!("node info: {}", short(format!("{n:?}"))),
        other => short(format!("{other:?}")),
    }
}

/// Room for every handshake (1100 slots in total, per IP and per subnet): every hostile connection goes
/// through the upgrade and is closed by its error or its timeout. At most 200 are open at a
/// time: with every handshake admitted, more would measure how late one thread's timers fire
/// under a debug build's handshake crypto (1000 at once took up to 6 s to close on this
/// 2-core machine under load), which the default slots exist to prevent (the next test).
#[test]
fn a_thousand_silent_and_garbage_connections_are_each_closed_by_the_handshake_timeout() {
    let _heavy = heavy_lock();
    actix::System::new().block_on(async {
        let counts = flood((1100, 1100, 1100), 200).await;
        assert!(!counts.contains_key("no handshake slot"), "{counts:?}");
    });
}

/// The default handshake slots (64 in total, 8 per IP, 16 per subnet), and all 1000 hostile connections open
/// at once: connections beyond the slots are closed at once without a handshake, the others by
/// their error or timeout; the real peers are unaffected either way.
#[test]
fn a_thousand_hostile_connections_beyond_the_handshake_slots_are_closed_at_once() {
    let _heavy = heavy_lock();
    let defaults = P2pConfig::default();
    actix::System::new().block_on(async {
        let counts = flood(
            (
                defaults.max_handshakes_in_progress,
                defaults.max_handshakes_per_ip,
                defaults.max_handshakes_per_subnet,
            ),
            1000,
        )
        .await;
        assert!(counts.contains_key("no handshake slot"), "{counts:?}");
    });
}
