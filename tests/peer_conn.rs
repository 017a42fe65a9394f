//! The `PeerConn` actor over real loopback TCP after a real secret handshake: messages of every
//! size both ways, rate limits, refusals after a stop, the one-report-per-connection rule,
//! hostile and silent peers, backpressure from a slow reactor, and channels added to a live
//! connection.
//!
//! Tests wait on events (a reactor's progress, a supervisor's reports) with generous timeouts;
//! the only timed waits are ones the scenario needs (time must pass for pings and rates).

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod common;

use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use common::{TIMEOUT, io_runtime, wait_until};
use tm2_p2p::NodeKey;
use tm2_p2p::actors::clock;
use tm2_p2p::actors::peer_conn::{
    AddChannel, AddChannelError, PeerConn, PeerConnConfig, PeerHandle, PeerStopped, SendMessage,
    Stop, TrySendMessage,
};
use tm2_p2p::actors::reactor::{Delivery, DisconnectReason, MAX_BATCH, Receive, ReceiveBatch};
use tm2_p2p::actors::secret_stream::SecretStream;
use tm2_p2p::mconn::{ChannelDescriptor, MConnConfig, MConnConfigError, MConnectionError};
use tm2_p2p::types::PeerId;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::watch;

fn unlimited() -> PeerConnConfig {
    PeerConnConfig {
        mconn: MConnConfig {
            send_rate: 0,
            recv_rate: 0,
            ..MConnConfig::default()
        },
        ..PeerConnConfig::default()
    }
}

/// Two secret streams over loopback TCP: (the dialer's, the acceptor's).
async fn secret_pair() -> (SecretStream, SecretStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ka, kb) = (NodeKey::generate().unwrap(), NodeKey::generate().unwrap());
    let accept = async {
        let (tcp, _) = listener.accept().await.unwrap();
        SecretStream::upgrade(tcp, &kb, TIMEOUT).await.unwrap()
    };
    let connect = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        SecretStream::upgrade(tcp, &ka, TIMEOUT).await.unwrap()
    };
    tokio::join!(connect, accept)
}

// ---- test actors ----

/// What a [`Collector`] has received so far.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    count: usize,
    bytes: u64,
}

/// A test reactor: records what it receives and publishes its progress. With a gate, it stops
/// handling messages after the first until the gate opens (a reactor that has fallen behind).
struct Collector {
    keep: bool,
    got: Vec<Receive>,
    progress: watch::Sender<Progress>,
    gate: Option<watch::Receiver<bool>>,
}

impl Actor for Collector {
    type Context = Context<Self>;
}

impl Collector {
    /// Counts `n` messages of `bytes` in all; with a closed gate, stops handling until it opens.
    fn handled(&mut self, n: usize, bytes: u64, ctx: &mut Context<Self>) {
        self.progress.send_modify(|p| {
            p.count += n;
            p.bytes += bytes;
        });
        if let Some(gate) = &self.gate
            && !*gate.borrow()
        {
            let mut gate = gate.clone();
            ctx.wait(
                async move {
                    let _ = gate.wait_for(|open| *open).await;
                }
                .into_actor(self),
            );
        }
    }
}

impl Handler<Receive> for Collector {
    type Result = ();

    fn handle(&mut self, msg: Receive, ctx: &mut Self::Context) {
        let len = msg.payload.len() as u64;
        if self.keep {
            self.got.push(msg);
        }
        self.handled(1, len, ctx);
    }
}

/// A batched reactor's view: the same records, a batch at a time (stalling after the first
/// batch when gated); `progress.count` counts messages.
impl Handler<ReceiveBatch> for Collector {
    type Result = ();

    fn handle(&mut self, msg: ReceiveBatch, ctx: &mut Self::Context) {
        assert!(!msg.payloads.is_empty() && msg.payloads.len() <= MAX_BATCH);
        let (n, bytes) = (
            msg.payloads.len(),
            msg.payloads.iter().map(|p| p.len() as u64).sum::<u64>(),
        );
        if self.keep {
            self.got
                .extend(msg.payloads.into_iter().map(|payload| Receive {
                    channel: msg.channel,
                    peer: msg.peer,
                    payload,
                }));
        }
        self.handled(n, bytes, ctx);
    }
}

/// Takes what a [`Collector`] kept.
#[derive(Message)]
#[rtype(result = "Vec<Receive>")]
struct Take;

impl Handler<Take> for Collector {
    type Result = MessageResult<Take>;

    fn handle(&mut self, _: Take, _: &mut Self::Context) -> Self::Result {
        MessageResult(std::mem::take(&mut self.got))
    }
}

struct Reactor {
    addr: Addr<Collector>,
    progress: watch::Receiver<Progress>,
}

impl Reactor {
    fn start(keep: bool, gate: Option<watch::Receiver<bool>>) -> Self {
        let (tx, progress) = watch::channel(Progress::default());
        let addr = Collector {
            keep,
            got: Vec::new(),
            progress: tx,
            gate,
        }
        .start();
        Self { addr, progress }
    }

    fn recipient(&self) -> Recipient<Receive> {
        self.addr.clone().recipient()
    }

    async fn wait_for(&mut self, what: &str, f: impl FnMut(&Progress) -> bool) -> Progress {
        let p = tokio::time::timeout(TIMEOUT, self.progress.wait_for(f))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap();
        *p
    }
}

/// A test supervisor: records every `PeerStopped`.
struct Supervisor {
    stops: Vec<PeerStopped>,
    count: watch::Sender<usize>,
}

impl Actor for Supervisor {
    type Context = Context<Self>;
}

impl Handler<PeerStopped> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: PeerStopped, _: &mut Self::Context) {
        self.stops.push(msg);
        self.count.send_modify(|c| *c += 1);
    }
}

/// Everything the supervisor got so far (a barrier: answered after earlier reports).
#[derive(Message)]
#[rtype(result = "Vec<PeerStopped>")]
struct Stops;

impl Handler<Stops> for Supervisor {
    type Result = MessageResult<Stops>;

    fn handle(&mut self, _: Stops, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.stops.clone())
    }
}

struct Sup {
    addr: Addr<Supervisor>,
    count: watch::Receiver<usize>,
}

impl Sup {
    fn start() -> Self {
        let (tx, count) = watch::channel(0);
        let addr = Supervisor {
            stops: Vec::new(),
            count: tx,
        }
        .start();
        Self { addr, count }
    }

    fn recipient(&self) -> Recipient<PeerStopped> {
        self.addr.clone().recipient()
    }

    /// Waits for a report about `peer` and returns its reason.
    async fn wait_stopped(&mut self, peer: PeerId) -> DisconnectReason {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let stops = self.addr.send(Stops).await.unwrap();
            if let Some(s) = stops.iter().find(|s| s.peer == peer) {
                return s.reason.clone();
            }
            tokio::time::timeout_at(deadline, self.count.changed())
                .await
                .expect("timed out waiting for PeerStopped")
                .unwrap();
        }
    }

    /// Asserts `peer` was reported exactly once, after its actor is gone for good (so a
    /// second report, which could only be sent before that, would be in the mailbox).
    async fn assert_reported_once(&self, peer: PeerId, conn: &Addr<PeerConn>) {
        let ended = || std::future::ready(!conn.connected());
        wait_until("the PeerConn actor to end", Duration::from_millis(5), ended).await;
        let stops = self.addr.send(Stops).await.unwrap();
        let n = stops.iter().filter(|s| s.peer == peer).count();
        assert_eq!(n, 1, "reports for {peer}: {stops:?}");
    }
}

/// One started side of a connection.
struct Side {
    addr: Addr<PeerConn>,
    handle: PeerHandle,
    reactor: Reactor,
}

/// Two PeerConns over loopback, each with one reactor for all of its channels.
async fn pair(
    (config_a, chans_a): (PeerConnConfig, &[ChannelDescriptor]),
    (config_b, chans_b): (PeerConnConfig, &[ChannelDescriptor]),
    sup: &Sup,
    io: Option<Handle>,
) -> (Side, Side) {
    let (sa, sb) = secret_pair().await;
    let side = |stream, config, chans: &[ChannelDescriptor], io| {
        let reactor = Reactor::start(true, None);
        let channels = chans
            .iter()
            .map(|d| (*d, reactor.recipient().into()))
            .collect();
        let (addr, handle) =
            PeerConn::start(stream, config, channels, sup.recipient(), io).unwrap();
        Side {
            addr,
            handle,
            reactor,
        }
    };
    let a = side(sa, config_a, chans_a, io.clone());
    let b = side(sb, config_b, chans_b, io);
    (a, b)
}

/// Deterministic bytes for message `seed` of `len` bytes.
fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

// ---- tests ----

async fn exchange_all_sizes(io: Option<Handle>) {
    const SIZES: [usize; 5] = [0, 1, 1024, 1025, 1 << 20];
    let chans = [
        ChannelDescriptor::new(0x10).with_send_queue_capacity(2),
        ChannelDescriptor::new(0x20)
            .with_priority(5)
            .with_send_queue_capacity(3),
    ];
    let sup = Sup::start();
    let (mut a, mut b) = pair((unlimited(), &chans), (unlimited(), &chans), &sup, io).await;
    // Per direction and channel: every size, three times with different contents.
    let messages = |channel: u8| -> Vec<Bytes> {
        (0..3u8)
            .flat_map(|round| SIZES.map(|len| pattern(len, channel ^ round)))
            .collect()
    };
    let mut senders = Vec::new();
    for handle in [a.handle.clone(), b.handle.clone()] {
        for channel in [0x10, 0x20] {
            let handle = handle.clone();
            senders.push(tokio::spawn(async move {
                for m in messages(channel) {
                    assert!(handle.send(channel, m).await, "send on {channel:#x}");
                }
            }));
        }
    }
    for s in senders {
        s.await.unwrap();
    }
    let total = 2 * 3 * SIZES.len();
    for side in [&mut a, &mut b] {
        side.reactor
            .wait_for("all messages", |p| p.count == total)
            .await;
    }
    for receiver in [&a, &b] {
        let got = receiver.reactor.addr.send(Take).await.unwrap();
        for channel in [0x10, 0x20] {
            let on_channel: Vec<Bytes> = got
                .iter()
                .filter(|r| r.channel == channel)
                .map(|r| {
                    // A connection's handle names its remote peer, the sender.
                    assert_eq!(r.peer, receiver.handle.id());
                    r.payload.clone()
                })
                .collect();
            assert!(
                on_channel == messages(channel),
                "channel {channel:#x}: contents or order differ"
            );
        }
    }
    // Nothing ended either connection.
    assert_eq!(*sup.count.borrow(), 0);
    assert!(!a.handle.is_closed() && !b.handle.is_closed());
}

#[actix::test]
async fn messages_of_every_size_arrive_intact_and_in_order_both_ways() {
    exchange_all_sizes(Some(io_runtime())).await;
}

#[actix::test]
async fn the_same_exchange_works_with_tasks_on_the_actix_arbiter() {
    exchange_all_sizes(None).await;
}

#[actix::test]
async fn rate_limits_of_1_mb_per_s_hold_within_10_percent_over_3_s() {
    const RATE: f64 = 1_000_000.0;
    const WINDOW: u64 = 3_000_000;
    let chans = [ChannelDescriptor::new(0x01).with_send_queue_capacity(8)];
    // A limits what it sends and what it reads; B is unlimited both ways.
    let limited = PeerConnConfig {
        mconn: MConnConfig {
            send_rate: RATE as u64,
            recv_rate: RATE as u64,
            ..MConnConfig::default()
        },
        ..PeerConnConfig::default()
    };
    let sup = Sup::start();
    let (a, b) = pair(
        (limited, &chans),
        (unlimited(), &chans),
        &sup,
        Some(io_runtime()),
    )
    .await;
    let (mut a_reactor, mut b_reactor) = (a.reactor, b.reactor);
    for handle in [a.handle.clone(), b.handle.clone()] {
        tokio::spawn(async move {
            let msg = pattern(16 * 1024, 1);
            while handle.send(0x01, msg.clone()).await {}
        });
    }
    // The rate is measured from the first delivery, over 3 MB of payload, at both receivers.
    let measure = |reactor: &mut Reactor, what: &'static str| {
        let mut progress = reactor.progress.clone();
        async move {
            let first = *tokio::time::timeout(TIMEOUT, progress.wait_for(|p| p.count > 0))
                .await
                .unwrap()
                .unwrap();
            let t0 = clock::now();
            let last = *tokio::time::timeout(
                TIMEOUT,
                progress.wait_for(|p| p.bytes >= first.bytes + WINDOW),
            )
            .await
            .unwrap()
            .unwrap();
            let rate = (last.bytes - first.bytes) as f64 / t0.elapsed().as_secs_f64();
            assert!(
                (rate - RATE).abs() <= 0.1 * RATE,
                "{what}: {rate:.0} B/s is not within 10 % of {RATE} B/s"
            );
            rate
        }
    };
    let send_limited = measure(&mut b_reactor, "A's send limit (measured at B)");
    let recv_limited = measure(&mut a_reactor, "A's receive limit (measured at A)");
    let (s, r) = tokio::join!(send_limited, recv_limited);
    println!("send-limited: {s:.0} B/s, receive-limited: {r:.0} B/s");
    a.addr
        .send(Stop {
            reason: DisconnectReason::Shutdown,
        })
        .await
        .unwrap();
}

#[actix::test]
async fn a_stopped_peer_refuses_every_send_and_both_sides_report_once() {
    let chans = [ChannelDescriptor::new(0x01).with_send_queue_capacity(4)];
    let mut sup = Sup::start();
    let (a, b) = pair(
        (unlimited(), &chans),
        (unlimited(), &chans),
        &sup,
        Some(io_runtime()),
    )
    .await;
    assert!(a.handle.try_send(0x01, Bytes::from_static(b"before")));
    a.addr
        .send(Stop {
            reason: DisconnectReason::Stopped("test".into()),
        })
        .await
        .unwrap();
    // The actor still answers while its tasks wind down, and answers false.
    let answer = a
        .addr
        .send(TrySendMessage {
            channel: 0x01,
            payload: Bytes::from_static(b"x"),
        })
        .await;
    assert!(matches!(answer, Ok(false) | Err(_)), "{answer:?}");
    assert_eq!(
        sup.wait_stopped(a.handle.id()).await,
        DisconnectReason::Stopped("test".into())
    );
    assert_eq!(
        sup.wait_stopped(b.handle.id()).await,
        DisconnectReason::RemoteClosed
    );
    assert!(a.handle.is_closed());
    assert!(!a.handle.try_send(0x01, Bytes::from_static(b"x")));
    let started = clock::now();
    assert!(!a.handle.send(0x01, Bytes::from_static(b"x")).await);
    assert!(started.elapsed() < Duration::from_secs(1), "send waited");
    assert!(!b.handle.try_send(0x01, Bytes::from_static(b"x")));
    // A second Stop (if the actor is still there) changes nothing.
    let _ = a
        .addr
        .send(Stop {
            reason: DisconnectReason::Shutdown,
        })
        .await;
    let answer = a
        .addr
        .send(SendMessage {
            channel: 0x01,
            payload: Bytes::from_static(b"x"),
        })
        .await;
    assert!(matches!(answer, Ok(false) | Err(_)), "{answer:?}");
    sup.assert_reported_once(a.handle.id(), &a.addr).await;
    sup.assert_reported_once(b.handle.id(), &b.addr).await;
}

#[actix::test]
async fn an_unknown_channel_is_refused_at_once_by_every_send() {
    let chans = [ChannelDescriptor::new(0x01)];
    let sup = Sup::start();
    let config = PeerConnConfig {
        send_timeout: TIMEOUT * 2,
        ..unlimited()
    };
    let (a, _b) = pair((config, &chans), (unlimited(), &chans), &sup, None).await;
    let x = Bytes::from_static(b"x");
    assert!(!a.handle.try_send(0x02, x.clone()));
    let sent = tokio::time::timeout(TIMEOUT, a.handle.send(0x02, x.clone())).await;
    assert_eq!(sent, Ok(false), "send must not wait for an unknown channel");
    let try_msg = TrySendMessage {
        channel: 0x02,
        payload: x.clone(),
    };
    assert!(!a.addr.send(try_msg).await.unwrap());
    let send_msg = SendMessage {
        channel: 0x02,
        payload: x.clone(),
    };
    assert!(
        !tokio::time::timeout(TIMEOUT, a.addr.send(send_msg))
            .await
            .unwrap()
            .unwrap()
    );
    // The known channel still works.
    assert!(
        a.addr
            .send(SendMessage {
                channel: 0x01,
                payload: x
            })
            .await
            .unwrap()
    );
}

#[actix::test]
async fn a_message_over_recv_message_capacity_stops_the_peer_with_the_capacity_reason() {
    let small = [ChannelDescriptor::new(0x01)
        .with_send_queue_capacity(4)
        .with_recv_message_capacity(4096)];
    let big = [ChannelDescriptor::new(0x01).with_send_queue_capacity(4)];
    let mut sup = Sup::start();
    let (mut a, b) = pair(
        (unlimited(), &small),
        (unlimited(), &big),
        &sup,
        Some(io_runtime()),
    )
    .await;
    // A message at the limit is fine; one byte... well, 904 bytes over is not.
    assert!(b.handle.send(0x01, pattern(4096, 1)).await);
    a.reactor
        .wait_for("the message at the limit", |p| p.count == 1)
        .await;
    assert!(b.handle.send(0x01, pattern(5000, 2)).await);
    let reason = sup.wait_stopped(a.handle.id()).await;
    assert!(
        matches!(
            reason,
            DisconnectReason::Protocol(MConnectionError::MessageTooLarge {
                channel: 0x01,
                max: 4096,
                ..
            })
        ),
        "{reason:?}"
    );
    assert!(reason.is_peer_fault());
    assert_eq!(
        sup.wait_stopped(b.handle.id()).await,
        DisconnectReason::RemoteClosed
    );
    sup.assert_reported_once(a.handle.id(), &a.addr).await;
    sup.assert_reported_once(b.handle.id(), &b.addr).await;
    let got = a.reactor.addr.send(Take).await.unwrap();
    assert_eq!(got.len(), 1, "the oversized message was never delivered");
}

#[actix::test]
async fn the_remote_closing_its_socket_gives_exactly_one_peer_stopped() {
    let (sa, sb) = secret_pair().await;
    let mut sup = Sup::start();
    let reactor = Reactor::start(true, None);
    let (addr, handle) = PeerConn::start(
        sa,
        unlimited(),
        vec![(ChannelDescriptor::new(0x01), reactor.recipient().into())],
        sup.recipient(),
        Some(io_runtime()),
    )
    .unwrap();
    drop(sb);
    assert_eq!(
        sup.wait_stopped(handle.id()).await,
        DisconnectReason::RemoteClosed
    );
    assert!(!handle.try_send(0x01, Bytes::new()));
    sup.assert_reported_once(handle.id(), &addr).await;
}

/// A connection whose receiving reactor handles its first delivery, then stalls: the sender
/// streams `msg`-byte messages until its queue (of `queue` messages) stays full, which must
/// happen before `bound` messages (anything near it means something buffers without limit:
/// loopback socket buffers hold a few MB, the receiving PeerConn a few hundred KB per
/// channel). Then the reactor resumes and everything accepted must arrive, in order, and
/// sending must work again. Returns how many messages were accepted and how many the stalled
/// reactor had handled.
async fn stall_then_resume(
    batched: bool,
    msg: usize,
    queue: usize,
    bound: usize,
) -> (usize, usize) {
    let chans = [ChannelDescriptor::new(0x01).with_send_queue_capacity(queue)];
    let sup = Sup::start();
    let (gate_tx, gate) = watch::channel(false);
    let (sa, sb) = secret_pair().await;
    let (a_addr, a_handle) = PeerConn::start(
        sa,
        unlimited(),
        vec![(chans[0], Reactor::start(false, None).recipient().into())],
        sup.recipient(),
        Some(io_runtime()),
    )
    .unwrap();
    let mut slow = Reactor::start(true, Some(gate));
    let delivery = if batched {
        Delivery::batched(&slow.addr)
    } else {
        slow.recipient().into()
    };
    let (_b_addr, b_handle) = PeerConn::start(
        sb,
        unlimited(),
        vec![(chans[0], delivery)],
        sup.recipient(),
        Some(io_runtime()),
    )
    .unwrap();
    let mut accepted = 0;
    loop {
        let payload = pattern(msg, accepted as u8);
        if !a_handle
            .send_timeout(0x01, payload, Duration::from_millis(500))
            .await
        {
            break;
        }
        accepted += 1;
        assert!(accepted < bound, "the sender never saw a full queue");
    }
    assert!(
        !a_handle.try_send(0x01, pattern(msg, 0)),
        "the queue stays full"
    );
    let stalled_at = slow.progress.borrow().count;
    println!(
        "accepted {accepted} messages of {msg} B before the queue stayed full ({} KiB); the \
         stalled reactor had handled {stalled_at}",
        accepted * msg / 1024
    );
    // Once the reactor catches up, everything accepted arrives, in order, and sending works.
    gate_tx.send(true).unwrap();
    slow.wait_for("every accepted message", |p| p.count == accepted)
        .await;
    let got = slow.addr.send(Take).await.unwrap();
    assert_eq!(got.len(), accepted);
    for (i, r) in got.iter().enumerate() {
        assert!(r.payload == pattern(msg, i as u8), "message {i} differs");
    }
    assert!(a_handle.send(0x01, pattern(msg, 0)).await);
    slow.wait_for("one more", |p| p.count == accepted + 1).await;
    assert_eq!(*sup.count.borrow(), 0);
    assert!(!b_handle.is_closed());
    drop(a_addr);
    (accepted, stalled_at)
}

#[actix::test]
async fn a_slow_reactor_makes_the_sender_fail_instead_of_buffering_without_bound() {
    // 64 KiB messages, queue of 4, bound 64 MiB of messages; stalled after one message.
    let (_, stalled_at) = stall_then_resume(false, 64 * 1024, 4, 1024).await;
    assert!(stalled_at <= 1, "the reactor is stalled");
}

#[actix::test]
async fn a_slow_batched_reactor_makes_the_sender_fail_instead_of_buffering_without_bound() {
    // Small messages, many per batch: the reactor handles one batch, then stalls. What the
    // receiving connection may hold for it is (MAX_ACKS + 1) batches; the rest must stay in
    // socket buffers and then in the sender's queue, which fills. Bound: 64 MiB of messages.
    let (_, stalled_at) = stall_then_resume(true, 1024, 64, 64 * 1024).await;
    assert!(
        stalled_at <= MAX_BATCH,
        "the reactor is stalled after one batch"
    );
}

#[actix::test]
async fn a_peer_that_never_answers_pings_is_stopped_for_pong_timeout() {
    let (sa, sb) = secret_pair().await;
    let mut sup = Sup::start();
    let config = PeerConnConfig {
        mconn: MConnConfig {
            ping_interval: Duration::from_millis(300),
            pong_timeout: Duration::from_millis(200),
            ..unlimited().mconn
        },
        ..unlimited()
    };
    let started = clock::now();
    let (addr, handle) = PeerConn::start(
        sa,
        config,
        vec![(
            ChannelDescriptor::new(0x01),
            Reactor::start(false, None).recipient().into(),
        )],
        sup.recipient(),
        Some(io_runtime()),
    )
    .unwrap();
    // `sb` completed the handshake and stays open, but nobody reads or answers.
    let reason = sup.wait_stopped(handle.id()).await;
    let elapsed = started.elapsed();
    assert_eq!(reason, DisconnectReason::PongTimeout);
    assert!(!reason.is_peer_fault());
    assert!(
        elapsed >= Duration::from_millis(490),
        "stopped after {elapsed:?}, before ping (300 ms) + pong timeout (200 ms)"
    );
    sup.assert_reported_once(handle.id(), &addr).await;
    drop(sb);
}

#[actix::test]
async fn pings_are_answered_so_an_idle_connection_stays_up() {
    let chans = [ChannelDescriptor::new(0x01)];
    let config = PeerConnConfig {
        mconn: MConnConfig {
            ping_interval: Duration::from_millis(400),
            pong_timeout: Duration::from_millis(350),
            ..unlimited().mconn
        },
        ..unlimited()
    };
    let sup = Sup::start();
    let (a, mut b) = pair((config.clone(), &chans), (config, &chans), &sup, None).await;
    // Time must pass for pings to matter: six ping intervals, each answered within 350 ms
    // (margins wide enough for a loaded 2-core machine). No event can stand in for "nothing
    // went wrong for a while", so this one test waits a fixed time.
    tokio::time::sleep(Duration::from_millis(2400)).await;
    assert_eq!(*sup.count.borrow(), 0, "{:?}", sup.addr.send(Stops).await);
    assert!(a.handle.send(0x01, Bytes::from_static(b"still here")).await);
    b.reactor.wait_for("the message", |p| p.count == 1).await;
}

#[actix::test]
async fn garbled_packets_over_any_stream_stop_the_peer_with_a_decode_reason() {
    use tokio::io::AsyncWriteExt;
    // `start_split` takes any stream halves: here an in-memory pipe with no secret layer.
    let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
    let (read, write) = tokio::io::split(ours);
    let peer = NodeKey::generate().unwrap().id();
    let mut sup = Sup::start();
    let (addr, handle) = PeerConn::start_split(
        read,
        write,
        peer,
        unlimited(),
        vec![(
            ChannelDescriptor::new(0x01),
            Reactor::start(false, None).recipient().into(),
        )],
        sup.recipient(),
        None,
    )
    .unwrap();
    assert_eq!(handle.id(), peer);
    theirs.write_all(&[0xff; 64]).await.unwrap();
    let reason = sup.wait_stopped(peer).await;
    assert!(
        matches!(
            reason,
            DisconnectReason::Protocol(MConnectionError::Decode(_))
        ),
        "{reason:?}"
    );
    assert!(reason.is_peer_fault());
    sup.assert_reported_once(peer, &addr).await;
}

#[actix::test]
async fn an_invalid_channel_set_is_refused_before_anything_starts() {
    let (sa, _sb) = secret_pair().await;
    let reactor = Reactor::start(false, None);
    let dup = vec![
        (ChannelDescriptor::new(0x01), reactor.recipient().into()),
        (ChannelDescriptor::new(0x01), reactor.recipient().into()),
    ];
    let err = PeerConn::start(sa, unlimited(), dup, Sup::start().recipient(), None).unwrap_err();
    assert_eq!(
        err,
        tm2_p2p::mconn::MConnConfigError::DuplicateChannel(0x01)
    );
}

// ---- adding a channel to a live connection ----

/// Sends `messages` on `channel` in order, each waiting for room.
fn spawn_sends(
    handle: &PeerHandle,
    channel: u8,
    messages: Vec<Bytes>,
) -> tokio::task::JoinHandle<()> {
    let handle = handle.clone();
    tokio::spawn(async move {
        for m in messages {
            assert!(handle.send(channel, m).await, "send on {channel:#x}");
        }
    })
}

/// The payloads a reactor received, checking each came on `channel`.
async fn payloads(reactor: &Reactor, channel: u8) -> Vec<Bytes> {
    let got = reactor.addr.send(Take).await.unwrap();
    got.into_iter()
        .map(|r| {
            assert_eq!(r.channel, channel, "a message reached the wrong reactor");
            r.payload
        })
        .collect()
}

#[actix::test]
async fn a_channel_added_on_both_sides_carries_messages_both_ways_while_the_first_keeps_working() {
    const OLD: u8 = 0x01;
    const NEW: u8 = 0x02;
    let chans = [ChannelDescriptor::new(OLD).with_send_queue_capacity(4)];
    let sup = Sup::start();
    let (mut a, mut b) = pair(
        (unlimited(), &chans),
        (unlimited(), &chans),
        &sup,
        Some(io_runtime()),
    )
    .await;
    let sizes = [0, 1, 1024, 1025, 3000, 64 * 1024];
    let batch = |channel: u8, seed: u8| -> Vec<Bytes> {
        (0..4u8)
            .flat_map(|round| sizes.map(|len| pattern(len, seed ^ channel ^ round)))
            .collect()
    };
    // Traffic on the old channel, both ways, keeps flowing while the channel is added.
    let old_a_to_b = batch(OLD, 0xa0);
    let old_b_to_a = batch(OLD, 0xb0);
    let old_senders = [
        spawn_sends(&a.handle, OLD, old_a_to_b.clone()),
        spawn_sends(&b.handle, OLD, old_b_to_a.clone()),
    ];
    // B's reader is typically parked in `read` here: the addition must be applied before the
    // next chunk is decoded, without any traffic on the new channel to wake it.
    let mut new_a = Reactor::start(true, None);
    let mut new_b = Reactor::start(true, None);
    let desc = ChannelDescriptor::new(NEW)
        .with_priority(5)
        .with_send_queue_capacity(2);
    a.handle.add_channel(desc, new_a.recipient()).unwrap();
    b.addr
        .send(AddChannel {
            desc,
            reactor: new_b.recipient().into(),
        })
        .await
        .unwrap()
        .unwrap();
    let new_a_to_b = batch(NEW, 0xa1);
    let new_b_to_a = batch(NEW, 0xb1);
    let new_senders = [
        spawn_sends(&a.handle, NEW, new_a_to_b.clone()),
        spawn_sends(&b.handle, NEW, new_b_to_a.clone()),
    ];
    for s in old_senders.into_iter().chain(new_senders) {
        s.await.unwrap();
    }
    let n = sizes.len() * 4;
    a.reactor
        .wait_for("old-channel messages at A", |p| p.count == n)
        .await;
    b.reactor
        .wait_for("old-channel messages at B", |p| p.count == n)
        .await;
    new_a
        .wait_for("new-channel messages at A", |p| p.count == n)
        .await;
    new_b
        .wait_for("new-channel messages at B", |p| p.count == n)
        .await;
    assert!(
        payloads(&b.reactor, OLD).await == old_a_to_b,
        "old channel A->B"
    );
    assert!(
        payloads(&a.reactor, OLD).await == old_b_to_a,
        "old channel B->A"
    );
    assert!(
        payloads(&new_b, NEW).await == new_a_to_b,
        "new channel A->B"
    );
    assert!(
        payloads(&new_a, NEW).await == new_b_to_a,
        "new channel B->A"
    );
    assert_eq!(*sup.count.borrow(), 0, "{:?}", sup.addr.send(Stops).await);
}

#[actix::test]
async fn adding_a_duplicate_or_a_seventeenth_channel_fails_and_the_connection_stays_up() {
    let chans = [ChannelDescriptor::new(0x01)];
    let sup = Sup::start();
    let (a, mut b) = pair((unlimited(), &chans), (unlimited(), &chans), &sup, None).await;
    let extra = Reactor::start(false, None);
    assert_eq!(
        a.handle
            .add_channel(ChannelDescriptor::new(0x01), extra.recipient()),
        Err(AddChannelError::Config(MConnConfigError::DuplicateChannel(
            0x01
        )))
    );
    assert_eq!(
        a.handle.add_channel(
            ChannelDescriptor::new(0x02).with_priority(0),
            extra.recipient()
        ),
        Err(AddChannelError::Config(MConnConfigError::ZeroPriority(
            0x02
        )))
    );
    // 0x01 plus fifteen more make the maximum of sixteen.
    for id in 0x02..=0x10 {
        a.handle
            .add_channel(ChannelDescriptor::new(id), extra.recipient())
            .unwrap();
    }
    let seventeenth = AddChannel {
        desc: ChannelDescriptor::new(0x11),
        reactor: extra.recipient().into(),
    };
    assert_eq!(
        a.addr.send(seventeenth).await.unwrap(),
        Err(AddChannelError::Config(MConnConfigError::TooManyChannels {
            count: 17,
            max: 16
        }))
    );
    assert_eq!(
        a.handle
            .add_channel(ChannelDescriptor::new(0x10), extra.recipient()),
        Err(AddChannelError::Config(MConnConfigError::DuplicateChannel(
            0x10
        )))
    );
    // Refusals changed nothing: the first channel still works.
    assert!(a.handle.send(0x01, Bytes::from_static(b"still here")).await);
    b.reactor.wait_for("the message", |p| p.count == 1).await;
    assert_eq!(*sup.count.borrow(), 0);
}

#[actix::test]
async fn adding_a_channel_to_an_ended_connection_fails() {
    let chans = [ChannelDescriptor::new(0x01)];
    let mut sup = Sup::start();
    let (a, b) = pair(
        (unlimited(), &chans),
        (unlimited(), &chans),
        &sup,
        Some(io_runtime()),
    )
    .await;
    a.addr
        .send(Stop {
            reason: DisconnectReason::Shutdown,
        })
        .await
        .unwrap();
    sup.wait_stopped(a.handle.id()).await;
    sup.wait_stopped(b.handle.id()).await;
    let reactor = Reactor::start(false, None);
    for handle in [&a.handle, &b.handle] {
        assert_eq!(
            handle.add_channel(ChannelDescriptor::new(0x02), reactor.recipient()),
            Err(AddChannelError::Closed)
        );
    }
}
