//! The gossip reactor on real loopback TCP: a line delivers once everywhere, duplicates are
//! dropped, a triangle does not loop, oversized messages are refused, bursts use the backlog,
//! and reactors registered with `SwitchBuilder::reactor` are checked like `RegisterReactor`.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use tm2_p2p::actors::gossip::{
    DEFAULT_MAX_MESSAGE_SIZE, Delivered, Deliveries, GetGossipStats, Gossip, GossipConfig,
    GossipStats, MessageId, Publish, PublishError, SubscribeDelivered, gossip_channel,
};
use tm2_p2p::{
    DialPeers, DisconnectPeer, EventStream, Node, NodeKey, P2pConfig, PeerId, RegisterReactor,
    SwitchBuilder, SwitchError, SwitchEvent,
};

const TIMEOUT: Duration = Duration::from_secs(30);

/// One node with its gossip reactor and a subscription to what it delivers.
struct GossipNode {
    node: Node,
    gossip: Addr<Gossip>,
    delivered: Deliveries,
}

impl GossipNode {
    /// A node on 127.0.0.1:0 without peer exchange (the tests choose the topology), with its
    /// gossip reactor registered as it is built.
    async fn spawn() -> Self {
        let gossip = Gossip::new(GossipConfig::default(), discard()).start();
        let node = builder()
            .reactor(RegisterReactor::new(
                "gossip",
                vec![gossip_channel()],
                &gossip,
            ))
            .spawn()
            .await
            .unwrap();
        Self::subscribe(node, gossip).await
    }

    /// The same, with the reactor registered once the node runs ([`Gossip::register`]).
    async fn spawn_then_register() -> Self {
        let node = builder().spawn().await.unwrap();
        let gossip = Gossip::new(GossipConfig::default(), discard())
            .register(&node.switch())
            .await
            .unwrap();
        Self::subscribe(node, gossip).await
    }

    async fn subscribe(node: Node, gossip: Addr<Gossip>) -> Self {
        let delivered = gossip
            .send(SubscribeDelivered { capacity: 10_000 })
            .await
            .unwrap();
        Self {
            node,
            gossip,
            delivered,
        }
    }

    fn id(&self) -> PeerId {
        self.node.net_address().id()
    }

    async fn publish(&self, payload: &[u8]) -> Result<MessageId, PublishError> {
        self.gossip
            .send(Publish(Bytes::copy_from_slice(payload)))
            .await
            .unwrap()
    }

    async fn stats(&self) -> GossipStats {
        self.gossip.send(GetGossipStats).await.unwrap()
    }

    async fn next_delivery(&mut self) -> Delivered {
        tokio::time::timeout(TIMEOUT, self.delivered.recv())
            .await
            .expect("no delivery in time")
            .expect("reactor stopped")
    }
}

fn builder() -> SwitchBuilder {
    let config = P2pConfig {
        laddr: "127.0.0.1:0".parse().unwrap(),
        allow_non_routable: true,
        pex: false,
        ..P2pConfig::default()
    };
    SwitchBuilder::new(config, NodeKey::generate().unwrap()).network("gossip-test")
}

fn discard() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

/// Connects `a` to `b` and waits until each side has the other as a peer.
async fn connect(a: &GossipNode, b: &GossipNode) {
    let events = subscribe_both(a, b, |e| matches!(e, SwitchEvent::PeerConnected { .. }));
    a.node
        .switch()
        .send(DialPeers(vec![b.node.net_address()]))
        .await
        .unwrap();
    each_sees(
        events,
        "connect",
        |e, other| matches!(e, SwitchEvent::PeerConnected { peer, .. } if *peer == other),
    )
    .await;
}

/// Disconnects `a` from `b` and waits until each side has seen it.
async fn disconnect(a: &GossipNode, b: &GossipNode) {
    let events = subscribe_both(a, b, |e| matches!(e, SwitchEvent::PeerDisconnected { .. }));
    a.node
        .switch()
        .send(DisconnectPeer {
            peer: b.id(),
            reason: "test".into(),
        })
        .await
        .unwrap();
    each_sees(
        events,
        "disconnect",
        |e, other| matches!(e, SwitchEvent::PeerDisconnected { peer, .. } if *peer == other),
    )
    .await;
}

/// Subscribes to `a`'s and `b`'s events that `filter` keeps; each paired with the other id.
fn subscribe_both(
    a: &GossipNode,
    b: &GossipNode,
    filter: fn(&SwitchEvent) -> bool,
) -> [(EventStream, PeerId); 2] {
    [
        (a.node.subscribe(filter), b.id()),
        (b.node.subscribe(filter), a.id()),
    ]
}

/// Waits until each stream has an event that `about` says concerns the other node.
async fn each_sees(
    events: [(EventStream, PeerId); 2],
    what: &str,
    about: fn(&SwitchEvent, PeerId) -> bool,
) {
    for (mut events, other) in events {
        tokio::time::timeout(TIMEOUT, async {
            loop {
                match events.recv().await {
                    Some(e) if about(&e, other) => return,
                    Some(_) => {}
                    None => panic!("node stopped"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("peers did not {what} in time"));
    }
}

/// Waits until `cond` holds for the nodes' stats, checking every 20 ms, up to `TIMEOUT`
/// (counters have no event of their own).
async fn wait_for_stats(nodes: &[&GossipNode], what: &str, cond: impl Fn(&[GossipStats]) -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let mut stats = Vec::new();
        for n in nodes {
            stats.push(n.stats().await);
        }
        if cond(&stats) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn shutdown(nodes: &[&GossipNode]) {
    for n in nodes {
        n.node.shutdown().await;
    }
}

#[actix::test]
async fn a_peer_back_within_the_window_is_sent_what_it_missed_and_a_new_peer_is_not() {
    // Connections end and come back (a simultaneous dial's duplicate is replaced, a peer
    // restarts): what a node accepted while the peer was away, or just before (in flight on
    // the old connection), is sent again to it. Here B is away while A publishes M1.
    let a = GossipNode::spawn().await;
    let mut b = GossipNode::spawn().await;
    let mut c = GossipNode::spawn().await;
    connect(&a, &b).await;
    disconnect(&a, &b).await;
    let m1 = a.publish(b"while b was away").await.unwrap();
    connect(&b, &a).await;
    let d = b.next_delivery().await;
    assert_eq!((d.id, d.from), (m1, Some(a.id())));
    // C was never connected: it gets what is published from now on, not M1 (a connection
    // delivers in order, so M2 first means M1 was never sent).
    connect(&c, &a).await;
    let m2 = a.publish(b"after c came").await.unwrap();
    let d = c.next_delivery().await;
    assert_eq!(d.id, m2, "a new peer was sent an old message");
    // B gets M2 once, and nothing more (M1 is not sent a third time).
    let d = b.next_delivery().await;
    assert_eq!(d.id, m2);
    wait_for_stats(&[&a, &b, &c], "M2 everywhere", |s| {
        s[0].published == 2 && s[1].delivered == 2 && s[2].delivered == 1
    })
    .await;
    assert_eq!(b.stats().await.duplicates, 0);
    shutdown(&[&a, &b, &c]).await;
}

#[actix::test]
async fn a_message_crosses_a_line_of_four_and_is_delivered_once_at_each_node() {
    let mut a = GossipNode::spawn().await;
    let mut b = GossipNode::spawn().await;
    let mut c = GossipNode::spawn().await;
    let mut d = GossipNode::spawn().await;
    connect(&a, &b).await;
    connect(&b, &c).await;
    connect(&c, &d).await;

    let id = a.publish(b"hello, line").await.unwrap();
    assert_eq!(id, MessageId::of(b"hello, line"));
    let local = a.next_delivery().await;
    assert_eq!((local.id, local.from), (id, None));
    let (a_id, b_id, c_id) = (a.id(), b.id(), c.id());
    for (node, from) in [(&mut b, a_id), (&mut c, b_id), (&mut d, c_id)] {
        let got = node.next_delivery().await;
        assert_eq!(got.id, id);
        assert_eq!(got.from, Some(from));
        assert_eq!(&got.payload[..], b"hello, line");
    }

    // The same bytes again, at the publisher or elsewhere: already seen, not sent again.
    assert_eq!(
        a.publish(b"hello, line").await,
        Err(PublishError::AlreadySeen(id))
    );
    assert_eq!(
        d.publish(b"hello, line").await,
        Err(PublishError::AlreadySeen(id))
    );

    // A second message from the other end: every node's next delivery is that one, so the
    // first was delivered exactly once (each link delivers in order).
    let marker = d.publish(b"marker").await.unwrap();
    for node in [&mut a, &mut b, &mut c, &mut d] {
        assert_eq!(node.next_delivery().await.id, marker);
        assert!(node.delivered.try_recv().is_none());
    }
    let stats = [
        a.stats().await,
        b.stats().await,
        c.stats().await,
        d.stats().await,
    ];
    assert_eq!(stats[0].published, 1);
    assert_eq!(stats[0].duplicates, 1, "the re-publish");
    assert_eq!(stats[3].duplicates, 1, "the re-publish");
    for s in &stats[1..3] {
        assert_eq!((s.delivered, s.duplicates, s.dropped), (2, 0, 0), "{s:?}");
    }
    // A line forwards each message across each of its 3 links once.
    let forwarded: u64 = stats.iter().map(|s| s.forwarded).sum();
    assert_eq!(forwarded, 6);
    let bytes: u64 = stats.iter().map(|s| s.payload_bytes_sent).sum();
    assert_eq!(bytes, 3 * (b"hello, line".len() + b"marker".len()) as u64);
    shutdown(&[&a, &b, &c, &d]).await;
}

#[actix::test]
async fn a_triangle_delivers_once_per_node_and_counts_the_duplicates() {
    let mut x = GossipNode::spawn().await;
    let mut y = GossipNode::spawn().await;
    let mut z = GossipNode::spawn().await;
    connect(&x, &y).await;
    connect(&y, &z).await;
    connect(&z, &x).await;

    let first = x.publish(b"round and round?").await.unwrap();
    // The publisher sends 2 copies, each other node forwards 1: 4 copies, 2 of them new
    // arrivals, so 2 duplicates, whichever copy wins each race.
    wait_for_stats(&[&x, &y, &z], "two duplicates", |s| {
        s.iter().map(|s| s.duplicates).sum::<u64>() >= 2
    })
    .await;
    let second = y.publish(b"and back").await.unwrap();
    wait_for_stats(&[&x, &y, &z], "four duplicates", |s| {
        s.iter().map(|s| s.duplicates).sum::<u64>() >= 4
    })
    .await;
    for node in [&mut x, &mut y, &mut z] {
        assert_eq!(node.next_delivery().await.id, first);
        assert_eq!(node.next_delivery().await.id, second);
        assert!(node.delivered.try_recv().is_none());
    }
    let stats = [x.stats().await, y.stats().await, z.stats().await];
    assert_eq!(
        stats.iter().map(|s| s.duplicates).sum::<u64>(),
        4,
        "{stats:?}"
    );
    assert_eq!(
        stats.iter().map(|s| s.forwarded).sum::<u64>(),
        8,
        "{stats:?}"
    );
    assert_eq!(
        stats.iter().map(|s| s.delivered).sum::<u64>(),
        4,
        "{stats:?}"
    );
    shutdown(&[&x, &y, &z]).await;
}

#[actix::test]
async fn a_message_above_the_limit_is_refused_and_one_at_the_limit_arrives_whole() {
    // Registered on running nodes: works for peers that connect afterwards.
    let a = GossipNode::spawn_then_register().await;
    let mut b = GossipNode::spawn_then_register().await;
    connect(&a, &b).await;

    let too_big = vec![7; DEFAULT_MAX_MESSAGE_SIZE + 1];
    assert_eq!(
        a.publish(&too_big).await,
        Err(PublishError::TooLarge {
            len: DEFAULT_MAX_MESSAGE_SIZE + 1,
            max: DEFAULT_MAX_MESSAGE_SIZE
        })
    );
    assert_eq!(a.stats().await.published, 0);

    let largest: Vec<u8> = (0..DEFAULT_MAX_MESSAGE_SIZE).map(|i| i as u8).collect();
    let id = a.publish(&largest).await.unwrap();
    let got = b.next_delivery().await;
    assert_eq!(got.id, id);
    assert_eq!(&got.payload[..], &largest[..]);
    shutdown(&[&a, &b]).await;
}

#[actix::test]
async fn a_burst_larger_than_the_send_queue_is_delivered_through_the_backlog() {
    let a = GossipNode::spawn().await;
    let mut b = GossipNode::spawn().await;
    connect(&a, &b).await;

    // Queued all at once, so the reactor handles them back to back while the connection's
    // writer cannot drain its queue of 256: the rest waits in the backlog of 1024.
    let count: u32 = 1000;
    let mut ids = Vec::new();
    for i in 0..count {
        let mut payload = vec![0; 512];
        payload[..4].copy_from_slice(&i.to_le_bytes());
        ids.push(MessageId::of(&payload));
        // Test only: do_send ignores the mailbox bound on purpose, to make a burst; the
        // burst is bounded by `count`.
        #[allow(clippy::disallowed_methods)]
        a.gossip.do_send(Publish(Bytes::from(payload)));
    }
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(b.next_delivery().await.id, *id, "message {i} in order");
    }
    let stats = a.stats().await;
    assert_eq!(
        (stats.forwarded, stats.dropped),
        (count.into(), 0),
        "{stats:?}"
    );
    // actix handles a full mailbox in one go, and the writer runs on the same thread.
    assert!(stats.backlogged > 0, "{stats:?}");
    shutdown(&[&a, &b]).await;
}

#[actix::test]
async fn a_channel_claimed_twice_at_build_fails_the_spawn() {
    let one = Gossip::new(GossipConfig::default(), discard()).start();
    let two = Gossip::new(GossipConfig::default(), discard()).start();
    let err = builder()
        .reactor(RegisterReactor::new("gossip", vec![gossip_channel()], &one))
        .reactor(RegisterReactor::new("again", vec![gossip_channel()], &two))
        .spawn()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SwitchError::DuplicateChannel(0x30, owner) if owner == "gossip"),
        "{err:?}"
    );
}
