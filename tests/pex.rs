//! Peer exchange on real loopback TCP: discovery from one seed, privacy, solicited responses
//! only, no empty responses, peers without the channel left alone, request flooding, and the
//! address book on disk.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod common;

use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use common::{
    Forward, TIMEOUT, connect_from, counter, loopback_config, raw_dial, recv_within, wait_until,
};
use tm2_p2p::actors::peer_conn::{PeerConn, PeerConnConfig, PeerHandle, PeerStopped};
use tm2_p2p::actors::pex::{BookEntries, BookSize, PEX_CHANNEL, pex_channel};
use tm2_p2p::actors::transport::{self, Upgraded};
use tm2_p2p::pex::PexMessage;
use tm2_p2p::pex::protocol::decode;
use tm2_p2p::{
    DisconnectReason, GetPeers, NetAddress, Node, NodeInfo, NodeKey, P2pConfig, Receive,
    SwitchBuilder, SwitchEvent,
};
use tokio::sync::mpsc;

/// How often [`wait_until`] checks a node's state.
const POLL: Duration = Duration::from_millis(50);

/// Loopback, asking for addresses every 200 ms.
fn config() -> P2pConfig {
    P2pConfig {
        pex_interval: Duration::from_millis(200),
        ..loopback_config()
    }
}

/// A [`config`] in seed mode.
fn seed_config() -> P2pConfig {
    P2pConfig {
        seed_mode: true,
        ..config()
    }
}

async fn spawn(config: P2pConfig) -> Node {
    SwitchBuilder::new(config, NodeKey::generate().unwrap())
        .network("net")
        .spawn()
        .await
        .unwrap()
}

/// A node that asks its peers for addresses every `pex_interval`.
async fn spawn_asking_every(pex_interval: Duration) -> Node {
    spawn(P2pConfig {
        pex_interval,
        ..config()
    })
    .await
}

/// Starts a seed with `seed_config` and 12 nodes that know only the seed, and waits until each
/// node has at least min(4, max_num_outbound_peers) peers other than the seed.
async fn bootstrap_twelve_from(seed_config: P2pConfig) {
    let seed = spawn(seed_config).await;
    let seed_id = seed.net_address().id();
    let mut nodes = Vec::new();
    for _ in 0..12 {
        let cfg = P2pConfig {
            seeds: vec![seed.net_address()],
            ..config()
        };
        nodes.push(spawn(cfg).await);
    }
    let want = 4.min(P2pConfig::default().max_num_outbound_peers);
    for (i, node) in nodes.iter().enumerate() {
        wait_until(&format!("node {i} to reach {want} peers"), POLL, || async {
            let peers = node.switch().send(GetPeers).await.unwrap().peers;
            peers.iter().filter(|p| p.id != seed_id).count() >= want
        })
        .await;
    }
}

#[actix::test]
async fn twelve_nodes_that_know_only_a_seed_find_each_other() {
    bootstrap_twelve_from(config()).await;
}

#[actix::test]
async fn a_seed_in_seed_mode_bootstraps_twelve_nodes() {
    bootstrap_twelve_from(seed_config()).await;
}

/// Connects a new node to `node` and waits until `node`'s book holds at least `book` entries,
/// so `node` has an address to share.
async fn give_an_address_to(node: &Node, book: usize) -> Node {
    let other = spawn(config()).await;
    other
        .switch()
        .send(tm2_p2p::DialPeers(vec![node.net_address()]))
        .await
        .unwrap();
    let pex = node.peer_exchange().unwrap();
    wait_until("the other node in the book", POLL, || async {
        pex.send(BookSize).await.unwrap() >= book
    })
    .await;
    other
}

/// The next peer-exchange response `c` receives, skipping the node's own requests.
async fn next_response(c: &mut Client) -> Vec<NetAddress> {
    tokio::time::timeout(TIMEOUT, async {
        loop {
            let bytes = c.received.recv().await.unwrap().payload;
            if let PexMessage::Response(addrs) = decode(&bytes).unwrap().message {
                return addrs;
            }
        }
    })
    .await
    .expect("a response within the timeout")
}

#[actix::test]
async fn a_seed_disconnects_a_peer_it_served_without_blame() {
    let seed = spawn(seed_config()).await;
    let _other = give_an_address_to(&seed, 1).await;
    let mut events = seed.subscribe(|e| matches!(e, SwitchEvent::PeerDisconnected { .. }));
    let mut c = client(&seed).await;
    assert!(c.handle.send(PEX_CHANNEL, request()).await);
    let answer = recv_within("the answer", c.received.recv()).await.payload;
    assert!(matches!(
        decode(&answer).unwrap().message,
        PexMessage::Response(_)
    ));
    assert_closed_by_node(&mut c).await;
    let e = recv_within("PeerDisconnected", events.recv()).await;
    assert!(
        matches!(&e, SwitchEvent::PeerDisconnected { peer, reason: DisconnectReason::Stopped(_) } if *peer == c.id),
        "{e:?}"
    );
}

/// A bare client: a verified connection with only the peer-exchange channel, whose received
/// messages land in a channel.
struct Client {
    handle: PeerHandle,
    received: mpsc::Receiver<Receive>,
    stopped: mpsc::Receiver<PeerStopped>,
    id: tm2_p2p::PeerId,
}

async fn client(node: &Node) -> Client {
    let (key, up) = raw_dial(&node.net_address(), "net", vec![PEX_CHANNEL]).await;
    let (tx, received) = mpsc::channel(64);
    let (stx, stopped) = mpsc::channel(4);
    let (_, handle) = PeerConn::start(
        up.stream,
        PeerConnConfig::default(),
        vec![(pex_channel(), Forward(tx).start().recipient().into())],
        Forward(stx).start().recipient(),
        None,
    )
    .unwrap();
    Client {
        handle,
        received,
        stopped,
        id: key.id(),
    }
}

/// Waits for `c`'s connection to end, and asserts the node closed it.
async fn assert_closed_by_node(c: &mut Client) {
    let stop = recv_within("the connection to end", c.stopped.recv()).await;
    assert!(
        matches!(stop.reason, DisconnectReason::RemoteClosed),
        "{stop:?}"
    );
}

fn request() -> Bytes {
    Bytes::from(PexMessage::Request.encode())
}

#[actix::test]
async fn a_private_peer_is_never_shared() {
    let private_node = spawn(config()).await;
    let public_node = spawn(config()).await;
    let hub_cfg = P2pConfig {
        private_peer_ids: vec![private_node.net_address().id()],
        ..config()
    };
    let hub = spawn(hub_cfg).await;
    let mut events = hub.subscribe(|e| matches!(e, SwitchEvent::PeerConnected { .. }));
    for n in [&private_node, &public_node] {
        n.switch()
            .send(tm2_p2p::DialPeers(vec![hub.net_address()]))
            .await
            .unwrap();
        recv_within("PeerConnected", events.recv()).await;
    }
    let mut c = client(&hub).await;
    assert!(c.handle.send(PEX_CHANNEL, request()).await);
    let answer = tokio::time::timeout(TIMEOUT, async {
        loop {
            let bytes = c.received.recv().await.unwrap().payload;
            if let PexMessage::Response(addrs) = decode(&bytes).unwrap().message {
                return addrs;
            }
        }
    })
    .await
    .unwrap();
    let ids: Vec<_> = answer.iter().map(NetAddress::id).collect();
    assert!(ids.contains(&public_node.net_address().id()), "{answer:?}");
    assert!(
        !ids.contains(&private_node.net_address().id()),
        "private peer shared: {answer:?}"
    );
    assert!(!ids.contains(&c.id), "the asker itself shared");
}

#[actix::test]
async fn an_unsolicited_response_is_ignored() {
    // A node that never asks (one peer only and a long interval) gets a response it did not
    // request: its book must not grow.
    let node = spawn_asking_every(Duration::from_secs(3600)).await;
    let pex = node.peer_exchange().unwrap();
    // Something to share, so the request below is answered.
    let _other = give_an_address_to(&node, 1).await;
    let c = client(&node).await;
    // The client itself enters the book when it connects.
    wait_until("the client in the book", POLL, || async {
        pex.send(BookSize).await.unwrap() >= 2
    })
    .await;
    let before = pex.send(BookSize).await.unwrap();
    let stranger: NetAddress = format!("{}@127.0.0.9:4000", NodeKey::generate().unwrap().id())
        .parse()
        .unwrap();
    let response = PexMessage::Response(vec![stranger]).encode();
    assert!(c.handle.send(PEX_CHANNEL, Bytes::from(response)).await);
    // A request right after, answered, proves the response was processed before it.
    let mut c = c;
    assert!(c.handle.send(PEX_CHANNEL, request()).await);
    recv_within("the answer", c.received.recv()).await;
    assert_eq!(pex.send(BookSize).await.unwrap(), before);
}

#[actix::test]
async fn a_node_with_nothing_to_share_sends_no_response() {
    // TM2 refuses an empty response ("no peers received"): a node that knows no one else
    // answers nothing, and keeps the peer.
    let node = spawn_asking_every(Duration::from_millis(100)).await;
    let mut c = client(&node).await;
    assert!(c.handle.send(PEX_CHANNEL, request()).await);
    // Now give it someone to share and ask again (past the request rate limit of 50 ms, as
    // the wait below takes longer): the first response to arrive is the second one's, so the
    // first request was not answered.
    let other = give_an_address_to(&node, 2).await;
    assert!(c.handle.send(PEX_CHANNEL, request()).await);
    let answer = next_response(&mut c).await;
    assert_eq!(answer, vec![other.net_address()]);
    assert!(c.stopped.try_recv().is_err(), "the node dropped the peer");
}

#[actix::test]
async fn a_peer_without_the_pex_channel_is_never_asked_and_stays_connected() {
    // A node with peer exchange asks every 20 ms; its peer runs without peer exchange, so it
    // does not have channel 0x50 and would drop a node that sent on it. It must stay
    // connected through many rounds.
    let asker = spawn_asking_every(Duration::from_millis(20)).await;
    let quiet = spawn(P2pConfig {
        pex: false,
        ..config()
    })
    .await;
    // The channel they share.
    counter(&asker, 0x40, 1, false).await;
    counter(&quiet, 0x40, 1, false).await;
    let mut connected = asker.subscribe(|e| matches!(e, SwitchEvent::PeerConnected { .. }));
    let mut dropped = asker.subscribe(|e| matches!(e, SwitchEvent::PeerDisconnected { .. }));
    quiet
        .switch()
        .send(tm2_p2p::DialPeers(vec![asker.net_address()]))
        .await
        .unwrap();
    recv_within("PeerConnected", connected.recv()).await;
    // 50 rounds of peer exchange (a second): an absence can only be watched for a while.
    let watched = tokio::time::timeout(Duration::from_secs(1), dropped.recv()).await;
    assert!(watched.is_err(), "the peer was dropped: {watched:?}");
    let peers = asker.switch().send(GetPeers).await.unwrap().peers;
    assert_eq!(peers.len(), 1);
}

#[actix::test]
async fn a_node_that_floods_requests_is_disconnected() {
    let node = spawn_asking_every(Duration::from_secs(10)).await;
    let mut c = client(&node).await;
    // The first is answered, the next ones ignored, the tenth ignored one in a row is a flood.
    for _ in 0..=tm2_p2p::pex::protocol::FLOOD_AFTER_EARLY_REQUESTS {
        assert!(c.handle.send(PEX_CHANNEL, request()).await);
    }
    assert_closed_by_node(&mut c).await;
}

#[actix::test]
async fn the_address_book_survives_a_restart_and_a_corrupt_one_does_not_stop_the_node() {
    let home = tempfile::tempdir().unwrap();
    let cfg = P2pConfig {
        home: home.path().to_path_buf(),
        ..config()
    };
    let node = spawn(cfg.clone()).await;
    let other = spawn(config()).await;
    let mut events = node.subscribe(|e| matches!(e, SwitchEvent::PeerConnected { .. }));
    node.switch()
        .send(tm2_p2p::DialPeers(vec![other.net_address()]))
        .await
        .unwrap();
    recv_within("PeerConnected", events.recv()).await;
    let pex = node.peer_exchange().unwrap();
    wait_until("the peer in the book", POLL, || async {
        pex.send(BookSize).await.unwrap() >= 1
    })
    .await;
    // Shutdown saves the book before it returns.
    node.shutdown().await;
    let path = home.path().join(&cfg.addr_book_file);
    assert!(path.exists(), "no book at {}", path.display());
    let node_again = spawn(cfg.clone()).await;
    let size = node_again
        .peer_exchange()
        .unwrap()
        .send(BookSize)
        .await
        .unwrap();
    assert!(size >= 1, "the book was not reloaded");
    node_again.shutdown().await;
    // Corrupt the file: the next node still starts, with the file set aside.
    std::fs::write(&path, b"{ not json").unwrap();
    let third = spawn(cfg.clone()).await;
    assert_eq!(
        third.peer_exchange().unwrap().send(BookSize).await.unwrap(),
        0
    );
    let mut aside = path.clone().into_os_string();
    aside.push(".corrupt");
    assert!(std::path::Path::new(&aside).exists());
}

/// `n` addresses of made-up peers on loopback, distinct ids and ports.
fn made_up_addresses(n: u16) -> Vec<NetAddress> {
    (0..n)
        .map(|i| {
            let id = tm2_p2p::PeerId::from_public_key(&[u8::try_from(i % 251).unwrap() + 1; 32]);
            format!("{id}@127.0.0.1:{}", 20_000 + i).parse().unwrap()
        })
        .collect()
}

/// Waits for `c` to receive the node's peer-exchange request.
async fn next_request(c: &mut Client) {
    tokio::time::timeout(TIMEOUT, async {
        loop {
            let bytes = c.received.recv().await.unwrap().payload;
            if decode(&bytes).unwrap().message == PexMessage::Request {
                return;
            }
        }
    })
    .await
    .expect("a request within the timeout");
}

#[actix::test]
async fn answers_carry_at_most_max_pex_addresses() {
    let node = spawn(P2pConfig {
        max_pex_addresses: 2,
        ..config()
    })
    .await;
    let _others = [
        give_an_address_to(&node, 1).await,
        give_an_address_to(&node, 2).await,
        give_an_address_to(&node, 3).await,
    ];
    let mut c = client(&node).await;
    assert!(c.handle.send(PEX_CHANNEL, request()).await);
    let answer = next_response(&mut c).await;
    assert_eq!(answer.len(), 2, "{answer:?}");
}

#[actix::test]
async fn responses_are_used_up_to_max_pex_addresses() {
    // Raised above TM2's 30: a response of 35 is used.
    let node = spawn(P2pConfig {
        max_pex_addresses: 40,
        ..config()
    })
    .await;
    let pex = node.peer_exchange().unwrap();
    let mut c = client(&node).await;
    next_request(&mut c).await;
    let response = PexMessage::Response(made_up_addresses(35)).encode();
    assert!(c.handle.send(PEX_CHANNEL, Bytes::from(response)).await);
    wait_until("35 addresses in the book", POLL, || async {
        pex.send(BookSize).await.unwrap() >= 35
    })
    .await;
    assert!(c.stopped.try_recv().is_err(), "the node dropped the peer");

    // Lowered to 2: of a response of 3 (which gno may send: it sends up to 30), the first 2
    // are used and the sender is not blamed.
    let node = spawn(P2pConfig {
        max_pex_addresses: 2,
        ..config()
    })
    .await;
    let pex = node.peer_exchange().unwrap();
    let mut c = client(&node).await;
    next_request(&mut c).await;
    let before = pex.send(BookSize).await.unwrap(); // the client itself
    let response = PexMessage::Response(made_up_addresses(3)).encode();
    assert!(c.handle.send(PEX_CHANNEL, Bytes::from(response)).await);
    // A request right after, answered, proves the response was processed before it.
    assert!(c.handle.send(PEX_CHANNEL, request()).await);
    next_response(&mut c).await;
    assert_eq!(pex.send(BookSize).await.unwrap(), before + 2);
    assert!(c.stopped.try_recv().is_err(), "the node dropped the peer");
    // Longer than TM2 ever sends and than the limit: refused, the sender stopped.
    let response = PexMessage::Response(made_up_addresses(31)).encode();
    assert!(c.handle.send(PEX_CHANNEL, Bytes::from(response)).await);
    assert_closed_by_node(&mut c).await;
}

/// Connects to `node` from `source` (in 127.0.0.0/8) as a made-up identity advertising
/// `source:1` and peer exchange, and returns the verified connection.
async fn throwaway_identity(node: &Node, source: [u8; 4]) -> (tm2_p2p::PeerId, Upgraded) {
    let key = NodeKey::generate().unwrap();
    let ip = std::net::Ipv4Addr::from(source);
    let addr: NetAddress = format!("{}@{ip}:1", key.id()).parse().unwrap();
    let info = NodeInfo::new(addr, "net", vec![PEX_CHANNEL]);
    let tcp = connect_from(source, node.local_addr()).await;
    let up = transport::upgrade(tcp, &key, &info, Some(node.net_address().id()), TIMEOUT)
        .await
        .unwrap();
    (key.id(), up)
}

#[actix::test]
async fn a_thousand_throwaway_identities_from_four_ips_do_not_poison_the_book() {
    // The attack that left 981 attacker entries and 3 honest ones in a 1,000-entry book, and
    // 30 of 30 attacker addresses in a fresh asker's response: 1,100 identities connect once
    // each from four source IPs. An honest node connected before, another one after.
    let node = spawn(P2pConfig {
        max_num_inbound_peers: 100,
        ..config()
    })
    .await;
    let mut connected = node.subscribe(|e| matches!(e, SwitchEvent::PeerConnected { .. }));
    // The honest nodes never ask for addresses during the test, so they relay none of the
    // attackers' back (on loopback they share one source IP with every other honest peer).
    let early = spawn_asking_every(Duration::from_secs(3600)).await;
    early
        .switch()
        .send(tm2_p2p::DialPeers(vec![node.net_address()]))
        .await
        .unwrap();
    recv_within("the early honest node", connected.recv()).await;

    let sources = [
        [127, 0, 0, 2],
        [127, 0, 0, 3],
        [127, 0, 0, 4],
        [127, 0, 0, 5],
    ];
    // One connection per source IP at a time: well inside any per-IP handshake bound.
    const BATCH: usize = 4;
    for batch in 0..1100 / BATCH + 1 {
        let conns = futures::future::join_all(
            (0..BATCH).map(|i| throwaway_identity(&node, sources[(batch * BATCH + i) % 4])),
        )
        .await;
        // Each stays until the node admitted it (its PeerAdded is then queued for peer
        // exchange), then goes.
        for _ in 0..conns.len() {
            recv_within("a throwaway identity admitted", connected.recv()).await;
        }
        drop(conns);
    }

    let late = spawn_asking_every(Duration::from_secs(3600)).await;
    late.switch()
        .send(tm2_p2p::DialPeers(vec![node.net_address()]))
        .await
        .unwrap();
    let honest = [early.net_address().id(), late.net_address().id()];
    let pex = node.peer_exchange().unwrap();
    wait_until("the late honest node in the book", POLL, || async {
        let entries = pex.send(BookEntries).await.unwrap();
        entries.iter().any(|e| e.addr.id() == honest[1])
    })
    .await;
    let entries = pex.send(BookEntries).await.unwrap();
    let kept = entries
        .iter()
        .filter(|e| honest.contains(&e.addr.id()))
        .count();
    println!("book: {} entries, {kept} of 2 honest ones", entries.len());
    assert_eq!(kept, 2);
    // Each source IP is a group (loopback): at most the group limit each.
    let limit = tm2_p2p::pex::AddressBookConfig::default().group_limit;
    assert!(
        entries.len() - kept <= sources.len() * limit,
        "{}",
        entries.len()
    );

    // A fresh asker gets both honest addresses.
    let mut c = client(&node).await;
    assert!(c.handle.send(PEX_CHANNEL, request()).await);
    let answer = next_response(&mut c).await;
    let shared = answer.iter().filter(|a| honest.contains(&a.id())).count();
    println!(
        "response: {} addresses, {shared} of 2 honest ones",
        answer.len()
    );
    assert_eq!(shared, 2, "{answer:?}");
}

/// A log drain that keeps every message with its key-value pairs, as one line each.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl slog::Drain for Captured {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        let line = format!("{} {}", record.level(), record.msg());
        self.0.lock().unwrap().push(line);
        Ok(())
    }
}

#[actix::test]
async fn a_node_without_a_home_says_its_address_book_is_not_saved() {
    let logs = Captured::default();
    let node = SwitchBuilder::new(config(), NodeKey::generate().unwrap())
        .network("net")
        .logger(slog::Logger::root(logs.clone(), slog::o!()))
        .spawn()
        .await
        .unwrap();
    node.shutdown().await;
    let lines = logs.0.lock().unwrap().clone();
    assert!(
        lines.iter().any(|l| l.starts_with("WARN")
            && l.contains("address book")
            && l.contains("not saved")),
        "{lines:#?}"
    );
}
