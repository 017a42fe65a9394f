//! The Dialer and the Redialer end to end, on real TCP sockets on 127.0.0.1: many failing
//! dials without busy-waiting, a persistent peer that comes back, the outbound limit under a
//! burst of dials.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{TestNode, closed_address, counter, loopback_config, thread_cpu_time};
use tm2_p2p::actors::clock;
use tm2_p2p::actors::switch::AddPersistentPeers;
use tm2_p2p::{
    ChannelDescriptor, DialError, DialPeers, Direction, GetPeers, NetAddress, NodeKey, P2pConfig,
    PeerId, SwitchEvent,
};

/// A config whose persistent peers are redialed quickly: 50 ms doubling to 400 ms.
fn fast_redial() -> P2pConfig {
    P2pConfig {
        redial_backoff_base: Duration::from_millis(50),
        redial_backoff_max: Duration::from_millis(400),
        redial_backoff_reset_after: Duration::from_secs(1),
        ..loopback_config()
    }
}

/// A node on network "net" with `key`, and a reactor on channel 0x40 (nodes need a common
/// channel to connect).
async fn spawn_with(config: P2pConfig, key: NodeKey) -> TestNode {
    let node = TestNode::start(config, "net", key, None).await;
    counter(
        &node.node,
        0x40,
        ChannelDescriptor::DEFAULT_SEND_QUEUE_CAPACITY,
        false,
    )
    .await;
    node
}

async fn spawn(config: P2pConfig) -> TestNode {
    spawn_with(config, NodeKey::generate().unwrap()).await
}

/// A node with `key` at the address `old` (shut down) listened on: `old` restarted.
async fn restart(old: &TestNode, key: NodeKey) -> TestNode {
    let laddr = old.node.local_addr();
    spawn_with(
        P2pConfig {
            laddr,
            ..loopback_config()
        },
        key,
    )
    .await
}

/// 100 dials of closed ports: each ends in one `DialFailed`, and the node does not spin while
/// it waits. To give it something to wait for, a persistent peer at a closed port is redialed
/// meanwhile every 100-200 ms (backoff base 100 ms, cap 200 ms), so the Dialer sleeps on its
/// timer between redials; the test waits for 100 failures of the `DialPeers` addresses and 6 of
/// the persistent one (about 1 s). Bound: the CPU time of the node's thread over that wait is
/// below a quarter of the wall time (plus 20 ms for the 10 ms granularity of /proc). A busy
/// loop, like TM2's dial loop while the next item is not yet due, uses about 100 %. Measured
/// (debug build, 2 cores): 20 ms of CPU over 1.0 s; with the timer replaced by a zero-delay
/// re-arm (a 1 ms poll through tokio's timer wheel) 90 ms, which this bound does not catch.
#[actix::test]
async fn a_hundred_dials_of_closed_ports_fail_without_busy_waiting() {
    let persistent = closed_address();
    let mut a = spawn(P2pConfig {
        persistent_peers: vec![persistent.clone()],
        redial_backoff_base: Duration::from_millis(100),
        redial_backoff_max: Duration::from_millis(200),
        ..loopback_config()
    })
    .await;
    let addrs: Vec<NetAddress> = (0..100).map(|_| closed_address()).collect();
    let want: HashSet<PeerId> = addrs.iter().map(NetAddress::id).collect();
    let (cpu0, t0) = (thread_cpu_time(), clock::now());
    a.node.switch().send(DialPeers(addrs)).await.unwrap();
    let mut failed = HashSet::new();
    let mut redials = 0;
    while failed.len() < 100 || redials < 6 {
        match a.next("an event").await {
            SwitchEvent::DialFailed { address, error } => {
                assert!(
                    matches!(error, DialError::Transport(_)),
                    "{address}: {error}"
                );
                if address == persistent {
                    redials += 1;
                    continue;
                }
                assert!(want.contains(&address.id()), "unexpected {address}");
                assert!(failed.insert(address.id()), "{address} reported twice");
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    let (cpu, wall) = (thread_cpu_time() - cpu0, clock::now() - t0);
    eprintln!(
        "100 failed dials and {redials} failed redials: wall {wall:?}, CPU of the node's thread {cpu:?}"
    );
    assert!(
        cpu < wall / 4 + Duration::from_millis(20),
        "busy: CPU {cpu:?} over a wall time of {wall:?}"
    );
    let peers = a.node.switch().send(GetPeers).await.unwrap();
    assert!(peers.peers.is_empty());
    a.node.shutdown().await;
}

/// A peer given by host name (`id@localhost:port`) is reached whatever order `localhost`
/// resolves in: its node listens on 127.0.0.1 only.
#[actix::test]
async fn a_peer_dialed_by_host_name_connects() {
    let mut a = spawn(loopback_config()).await;
    let b = spawn(loopback_config()).await;
    let port = b.node.local_addr().port();
    let by_name: NetAddress = format!("{}@localhost:{port}", b.id()).parse().unwrap();
    a.dial(by_name);
    a.connected_to(b.id()).await;
    a.node.shutdown().await;
    b.node.shutdown().await;
}

/// A persistent peer (from the config) is dialed at start, and when it goes away and comes
/// back on the same address with the same key, it is reconnected without being asked.
#[actix::test]
async fn a_persistent_peer_that_restarts_is_reconnected_by_itself() {
    let key_b = NodeKey::generate().unwrap();
    let b = spawn_with(loopback_config(), key_b.clone()).await;
    let b_addr = b.node.net_address();
    let b_id = b.id();
    let mut a = spawn(P2pConfig {
        persistent_peers: vec![b_addr.clone()],
        ..fast_redial()
    })
    .await;
    a.connected_to(b_id).await;

    b.node.shutdown().await;
    a.disconnected_from(b_id).await;
    // While b is down, a keeps trying (and failing).
    a.wait_for(
        "a failed redial",
        |e| matches!(e, SwitchEvent::DialFailed { address, .. } if address.id() == b_id),
    )
    .await;

    let b = restart(&b, key_b).await;
    a.connected_to(b_id).await;
    let peers = a.node.switch().send(GetPeers).await.unwrap();
    assert_eq!(peers.peers.len(), 1);
    assert!(peers.peers[0].persistent);
    assert_eq!(peers.peers[0].direction, Direction::Outbound);
    a.node.shutdown().await;
    b.node.shutdown().await;
}

/// A peer that dialed us, made persistent at runtime, is redialed after it restarts at the
/// listen address it advertised, not at the ephemeral port its connection came from.
#[actix::test]
async fn an_inbound_persistent_peer_is_redialed_at_its_listen_address() {
    let mut a = spawn(fast_redial()).await;
    let key_c = NodeKey::generate().unwrap();
    let mut c = spawn_with(loopback_config(), key_c.clone()).await;
    let c_id = c.id();
    c.node
        .switch()
        .send(DialPeers(vec![a.node.net_address()]))
        .await
        .unwrap();
    a.connected_to(c_id).await;
    c.connected_to(a.id()).await;
    // Given with a wrong port: what counts after a disconnect is the connected peer's
    // advertised listen address.
    let wrong_port =
        NetAddress::from_socket_addr(c_id, closed_address().socket_addr().unwrap()).unwrap();
    a.node
        .switch()
        .send(AddPersistentPeers(vec![wrong_port]))
        .await
        .unwrap();

    c.node.shutdown().await;
    a.disconnected_from(c_id).await;
    let c = restart(&c, key_c).await;
    a.connected_to(c_id).await;
    let peers = a.node.switch().send(GetPeers).await.unwrap();
    assert_eq!(peers.peers.len(), 1);
    assert_eq!(peers.peers[0].direction, Direction::Outbound);
    assert_eq!(peers.peers[0].socket_addr, c.node.local_addr());
    a.node.shutdown().await;
    c.node.shutdown().await;
}

/// 50 addresses dialed at once (20 real nodes and 30 closed ports, interleaved) with
/// `max_num_outbound_peers = 5`: never more than 5 outbound peers, and exactly 5 in the end
/// (a dial that finds the slots held only by dials in flight waits for them instead of being
/// refused). 20 real nodes rather than 50 keeps the test light on a 2-core machine; the 30
/// closed ports make 50 addresses.
#[actix::test]
async fn the_outbound_limit_holds_when_fifty_addresses_are_dialed_at_once() {
    const LIMIT: usize = 5;
    let mut hub = spawn(P2pConfig {
        max_num_outbound_peers: LIMIT,
        ..loopback_config()
    })
    .await;
    let mut targets = Vec::new();
    for _ in 0..20 {
        targets.push(spawn(loopback_config()).await);
    }
    let mut addrs = Vec::new();
    for i in 0..50 {
        if i % 5 < 2 {
            addrs.push(targets[i / 5 * 2 + i % 5].node.net_address());
        } else {
            addrs.push(closed_address());
        }
    }
    hub.node.switch().send(DialPeers(addrs)).await.unwrap();
    let (mut connected, mut outcomes) = (0_usize, 0);
    while outcomes < 50 {
        match hub.next("an event").await {
            SwitchEvent::PeerConnected { direction, .. } => {
                assert_eq!(direction, Direction::Outbound);
                connected += 1;
                outcomes += 1;
                assert!(connected <= LIMIT, "{connected} outbound peers");
            }
            SwitchEvent::DialFailed { .. } => outcomes += 1,
            other => panic!("unexpected event {other:?}"),
        }
    }
    let peers = hub.node.switch().send(GetPeers).await.unwrap();
    assert_eq!(peers.outbound, LIMIT);
    assert_eq!(connected, LIMIT);
    hub.node.shutdown().await;
    for t in &targets {
        t.node.shutdown().await;
    }
}

#[actix::test]
async fn an_unreachable_persistent_peer_is_redialed_after_the_documented_base_delay() {
    // `redial_backoff_base` is documented as the first redial delay; it used to be twice that
    // (the failure was counted before the delay was computed). Jitter is ±10 %: the second dial
    // comes 0.9-1.1 s after the first fails; the old code took 1.8-2.2 s.
    let peer = closed_address();
    let mut config = loopback_config();
    config.redial_backoff_base = Duration::from_secs(1);
    config.persistent_peers = vec![peer];
    let mut node = TestNode::spawn(config).await;
    let failed = |e: &SwitchEvent| matches!(e, SwitchEvent::DialFailed { .. });
    node.wait_for("the first dial to fail", failed).await;
    let first = clock::now();
    node.wait_for("the redial to fail", failed).await;
    let gap = clock::now() - first;
    assert!(
        gap >= Duration::from_millis(850) && gap < Duration::from_millis(1700),
        "first redial after {gap:?}, expected about 1 s"
    );
}
