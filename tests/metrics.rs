//! The metrics endpoint of running nodes, scraped over real TCP on 127.0.0.1 with a
//! hand-written HTTP request: peer gauges, byte counters, per-peer series going away with the
//! peer, dial outcomes and handshake failures.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use tm2_p2p::actors::metrics::{CONTENT_TYPE, DialOutcome};
use tm2_p2p::{
    ChannelDescriptor, DisconnectPeer, NetAddress, NodeKey, P2pConfig, PeerAdded, PeerId,
    PeerRemoved, Receive, RegisterReactor, SendTo, SwitchBuilder, SwitchError, SwitchEvent,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use common::TIMEOUT;
const CHANNEL: u8 = 0x40;

/// A reactor that forwards what it receives into a bounded channel.
struct Inbox {
    tx: mpsc::Sender<(PeerId, Bytes)>,
}

impl Actor for Inbox {
    type Context = Context<Self>;
}

impl Handler<PeerAdded> for Inbox {
    type Result = ();
    fn handle(&mut self, _: PeerAdded, _: &mut Self::Context) {}
}

impl Handler<PeerRemoved> for Inbox {
    type Result = ();
    fn handle(&mut self, _: PeerRemoved, _: &mut Self::Context) {}
}

impl Handler<Receive> for Inbox {
    type Result = ();
    fn handle(&mut self, msg: Receive, _: &mut Self::Context) {
        self.tx.try_send((msg.peer, msg.payload)).unwrap();
    }
}

/// A [`common::TestNode`] serving metrics on 127.0.0.1:0, with an [`Inbox`] on [`CHANNEL`].
struct TestNode {
    harness: common::TestNode,
    inbox: mpsc::Receiver<(PeerId, Bytes)>,
}

impl std::ops::Deref for TestNode {
    type Target = common::TestNode;
    fn deref(&self) -> &common::TestNode {
        &self.harness
    }
}

impl std::ops::DerefMut for TestNode {
    fn deref_mut(&mut self) -> &mut common::TestNode {
        &mut self.harness
    }
}

impl TestNode {
    /// A node on 127.0.0.1:0 serving metrics on 127.0.0.1:0, without peer exchange (so the
    /// only connections are the ones the test makes), with a reactor on [`CHANNEL`].
    async fn spawn() -> Self {
        let config = P2pConfig {
            metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
            ..common::config()
        };
        let harness = common::TestNode::spawn(config).await;
        let (tx, inbox) = mpsc::channel(1000);
        let reactor = Inbox { tx }.start();
        harness
            .node
            .switch()
            .send(RegisterReactor::new(
                "inbox",
                vec![ChannelDescriptor::new(CHANNEL)],
                &reactor,
            ))
            .await
            .unwrap()
            .unwrap();
        Self { harness, inbox }
    }

    async fn scrape(&self) -> Scrape {
        let answer = get(self.node.metrics_addr().unwrap(), "/metrics").await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.header("content-type"), Some(CONTENT_TYPE));
        assert!(answer.body.ends_with("# EOF\n"), "{}", answer.body);
        Scrape(answer.body)
    }
}

/// An HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What Prometheus sends in `Accept`: OpenMetrics first.
const PROMETHEUS_ACCEPT: &str =
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// `GET path` as Prometheus asks, over a fresh TCP connection, read until the server closes it.
async fn get(addr: SocketAddr, path: &str) -> Answer {
    get_accepting(addr, path, Some(PROMETHEUS_ACCEPT)).await
}

/// `GET path` with `accept` (no `Accept` header for `None`, as curl).
async fn get_accepting(addr: SocketAddr, path: &str, accept: Option<&str>) -> Answer {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(TIMEOUT, s.read_to_end(&mut raw))
        .await
        .expect("metrics server did not close the connection")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("no end of head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(": ").unwrap();
            (n.to_owned(), v.to_owned())
        })
        .collect();
    let answer = Answer {
        status,
        headers,
        body: body.to_owned(),
    };
    let len: usize = answer.header("content-length").unwrap().parse().unwrap();
    assert_eq!(len, answer.body.len(), "Content-Length");
    assert_eq!(answer.header("connection"), Some("close"));
    answer
}

/// A scraped exposition.
struct Scrape(String);

impl Scrape {
    /// The value of the series `name` with exactly `labels`, if present.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (series_name, series_labels) = match series.split_once('{') {
                    Some((n, rest)) => (n, parse_labels(rest.strip_suffix('}')?)),
                    None => (series, Vec::new()),
                };
                let mut want: Vec<(String, String)> = labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect();
                want.sort();
                (series_name == name && series_labels == want).then(|| value.parse().unwrap())
            })
    }

    /// Like [`value`](Self::value), failing the test when the series is missing.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no series {name}{labels:?} in\n{}", self.0))
    }

    /// Whether any series carries label `peer` = `peer`.
    fn mentions_peer(&self, peer: PeerId) -> bool {
        self.0.contains(&format!("peer=\"{peer}\""))
    }
}

/// `k="v",k2="v2"` (values without commas or quotes, as ours are), sorted.
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut labels: Vec<(String, String)> = text
        .split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.trim_matches('"').to_owned()))
        })
        .collect();
    labels.sort();
    labels
}

#[actix::test]
async fn peer_gauges_bytes_and_per_peer_series_over_http() {
    let mut a = TestNode::spawn().await;
    let mut b = TestNode::spawn().await;
    let mut c = TestNode::spawn().await;
    a.dial(b.node.net_address());
    a.dial(c.node.net_address());
    a.connected_to(b.id()).await;
    a.connected_to(c.id()).await;
    b.connected_to(a.id()).await;
    c.connected_to(a.id()).await;

    let peers = "tm2p2p_peers";
    let scrape = a.scrape().await;
    assert_eq!(scrape.get(peers, &[("direction", "outbound")]), 2.0);
    assert_eq!(scrape.get(peers, &[("direction", "inbound")]), 0.0);
    assert_eq!(
        scrape.get("tm2p2p_dials_total", &[("outcome", "connected")]),
        2.0
    );
    for node in [&b, &c] {
        let scrape = node.scrape().await;
        assert_eq!(scrape.get(peers, &[("direction", "inbound")]), 1.0);
        assert_eq!(scrape.get(peers, &[("direction", "outbound")]), 0.0);
    }

    // A message A -> B on the test channel.
    let payload = Bytes::from_static(b"hello, metrics");
    let queued = a
        .node
        .switch()
        .send(SendTo {
            peer: b.id(),
            channel: CHANNEL,
            payload: payload.clone(),
        })
        .await
        .unwrap();
    assert!(queued);
    let (from, got) = tokio::time::timeout(TIMEOUT, b.inbox.recv())
        .await
        .expect("message not delivered")
        .unwrap();
    assert_eq!((from, &got), (a.id(), &payload));

    let len = payload.len() as f64;
    let (b_id, a_id) = (b.id().to_string(), a.id().to_string());
    let scrape = a.scrape().await;
    let sent = scrape.get(
        "tm2p2p_peer_sent_bytes_total",
        &[("peer", &b_id), ("channel", "0x40")],
    );
    assert_eq!(sent, len);
    assert!(scrape.get("tm2p2p_sent_bytes_total", &[]) >= len);
    let scrape = b.scrape().await;
    let received = scrape.get(
        "tm2p2p_peer_received_bytes_total",
        &[("peer", &a_id), ("channel", "0x40")],
    );
    assert_eq!(received, len);
    assert!(scrape.get("tm2p2p_received_bytes_total", &[]) >= len);
    // The send queue is read at scrape time: A's queue to B exists (and is empty by now or
    // soon; the value is not deterministic).
    assert!(
        a.scrape()
            .await
            .value(
                "tm2p2p_peer_send_queue_messages",
                &[("peer", &b_id), ("channel", "0x40")]
            )
            .is_some()
    );

    // A drops C: every series of C goes, the totals keep what C contributed.
    let c_id = c.id();
    assert!(a.scrape().await.mentions_peer(c_id));
    let sent_before = a.node.metrics().total_bytes_sent();
    #[allow(clippy::disallowed_methods)] // Test: a fire-and-forget command.
    a.node.switch().do_send(DisconnectPeer {
        peer: c_id,
        reason: "test".into(),
    });
    a.wait_for(
        "PeerDisconnected",
        |e| matches!(e, SwitchEvent::PeerDisconnected { peer, .. } if *peer == c_id),
    )
    .await;
    let scrape = a.scrape().await;
    assert!(!scrape.mentions_peer(c_id), "{}", scrape.0);
    assert!(scrape.mentions_peer(b.id()));
    assert_eq!(scrape.get(peers, &[("direction", "outbound")]), 1.0);
    assert_eq!(
        scrape.get("tm2p2p_peer_disconnects_total", &[("reason", "stopped")]),
        1.0
    );
    assert!(a.node.metrics().total_bytes_sent() >= sent_before);
    assert!(sent_before > 0 && b.node.metrics().total_bytes_received() > 0);

    // Other paths are not found.
    let missing = get(a.node.metrics_addr().unwrap(), "/").await;
    assert_eq!(missing.status, 404);

    // Shutdown stops the server: its port can be bound again.
    let metrics_addr = a.node.metrics_addr().unwrap();
    for node in [&a, &b, &c] {
        node.node.shutdown().await;
    }
    TcpListener::bind(metrics_addr).await.unwrap();
}

#[actix::test]
async fn a_dial_to_a_closed_port_counts_as_io_error() {
    let mut a = TestNode::spawn().await;
    // A port nothing listens on: bound, then released.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let nobody = NodeKey::generate().unwrap().id();
    let address = NetAddress::from_socket_addr(nobody, closed).unwrap();
    let before = a
        .scrape()
        .await
        .get("tm2p2p_dials_total", &[("outcome", "io_error")]);
    assert_eq!(before, 0.0);
    a.dial(address);
    a.wait_for(
        "DialFailed",
        |e| matches!(e, SwitchEvent::DialFailed { address, .. } if address.id() == nobody),
    )
    .await;
    let scrape = a.scrape().await;
    assert_eq!(
        scrape.get("tm2p2p_dials_total", &[("outcome", "io_error")]),
        1.0
    );
    assert_eq!(a.node.metrics().dials(DialOutcome::IoError), 1);
    // A failed connect is no handshake failure.
    assert!(
        !scrape
            .0
            .lines()
            .any(|l| l.starts_with("tm2p2p_handshake_failures_total") && !l.ends_with(" 0"))
    );
    a.node.shutdown().await;
}

#[actix::test]
async fn garbage_instead_of_a_handshake_counts_as_a_handshake_failure() {
    let mut a = TestNode::spawn().await;
    let mut raw = TcpStream::connect(a.node.local_addr()).await.unwrap();
    // Not the 35-byte ephemeral-key message the secret handshake expects.
    raw.write_all(&[0xff; 64]).await.unwrap();
    // Kept open until the node has given up on it, so the failure is the garbage and not an
    // early close.
    a.inbound_rejected().await;
    let scrape = a.scrape().await;
    assert_eq!(
        scrape.get(
            "tm2p2p_handshake_failures_total",
            &[("direction", "inbound"), ("reason", "bad_handshake")]
        ),
        1.0
    );
    assert_eq!(
        scrape.get(
            "tm2p2p_inbound_rejected_total",
            &[("reason", "handshake_failed")]
        ),
        1.0
    );
    drop(raw);
    a.node.shutdown().await;
}

#[actix::test]
async fn a_scrape_gets_through_while_idle_connections_hold_every_slot() {
    let a = TestNode::spawn().await;
    let addr = a.node.metrics_addr().unwrap();
    // Twice the server's 16 slots in connections that never send a byte (and one that sends
    // half a head), kept open throughout.
    let mut idle = Vec::new();
    for _ in 0..32 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
    // Each scrape is answered at once, long before the idle connections' 5 s head timeout.
    for _ in 0..3 {
        let t0 = tm2_p2p::actors::clock::now();
        let scrape = a.scrape().await;
        let took = tm2_p2p::actors::clock::now() - t0;
        assert!(scrape.0.contains("tm2p2p_peers"));
        assert!(took < Duration::from_secs(2), "scrape took {took:?}");
    }
    drop((idle, half));
    a.node.shutdown().await;
}

#[actix::test]
async fn metrics_are_off_by_default_and_a_busy_address_is_a_typed_error() {
    let config = P2pConfig {
        laddr: "127.0.0.1:0".parse().unwrap(),
        ..P2pConfig::default()
    };
    let node = SwitchBuilder::new(config.clone(), NodeKey::generate().unwrap())
        .spawn()
        .await
        .unwrap();
    assert_eq!(node.metrics_addr(), None);
    // Still counted, readable in-process.
    assert!(node.metrics().encode().contains("tm2p2p_peers"));
    node.shutdown().await;

    let busy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = busy.local_addr().unwrap();
    let err = SwitchBuilder::new(
        P2pConfig {
            metrics_addr: Some(addr),
            ..config
        },
        NodeKey::generate().unwrap(),
    )
    .spawn()
    .await
    .unwrap_err();
    assert!(
        matches!(err, SwitchError::MetricsBind { addr: a, .. } if a == addr),
        "{err:?}"
    );
}

/// `promtool` (Prometheus's own checker), when installed; `.ci/run` installs it and sets
/// `REQUIRE_PROMTOOL`, so CI cannot pass without it.
fn promtool() -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("promtool"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("REQUIRE_PROMTOOL").is_none(),
            "REQUIRE_PROMTOOL is set but promtool is not on PATH (apt-get install prometheus)"
        );
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "promtool not on PATH: the text format is checked by openmetrics-parser only"
        );
    }
    found
}

#[actix::test]
async fn both_exposition_formats_of_a_busy_node_pass_their_checkers() {
    let mut a = TestNode::spawn().await;
    let mut b = TestNode::spawn().await;
    a.dial(b.node.net_address());
    a.connected_to(b.id()).await;
    let queued = a
        .node
        .switch()
        .send(SendTo {
            peer: b.id(),
            channel: CHANNEL,
            payload: Bytes::from_static(b"x"),
        })
        .await
        .unwrap();
    assert!(queued);
    tokio::time::timeout(TIMEOUT, b.inbox.recv())
        .await
        .unwrap()
        .unwrap();
    // A host metric of another type next to ours.
    let latency = tm2_p2p::prometheus_client::metrics::histogram::Histogram::new(
        [0.001, 0.01, 0.1].into_iter(),
    );
    latency.observe(0.005);
    a.node
        .metrics()
        .register("reactor_latency_seconds", "A host histogram", latency);

    // Over HTTP: the format follows `Accept`.
    let addr = a.node.metrics_addr().unwrap();
    let open = get_accepting(addr, "/metrics", Some(PROMETHEUS_ACCEPT)).await;
    assert_eq!(open.header("content-type"), Some(CONTENT_TYPE));
    let open = open.body;
    let parsed = openmetrics_parser::openmetrics::parse_openmetrics(&open);
    assert!(parsed.is_ok(), "{parsed:?}\n{open}");
    let text = get_accepting(addr, "/metrics", None).await;
    assert_eq!(
        text.header("content-type"),
        Some(tm2_p2p::actors::metrics::TEXT_CONTENT_TYPE)
    );
    let text = text.body;
    assert!(
        !text.contains("# EOF") && !text.contains("# UNIT"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE tm2p2p_sent_bytes_total counter\n")
            && text.contains("\ntm2p2p_sent_bytes_total 1\n"),
        "{text}"
    );
    let parsed = openmetrics_parser::prometheus::parse_prometheus(&text);
    assert!(parsed.is_ok(), "{parsed:?}\n{text}");

    let Some(promtool) = promtool() else {
        return;
    };
    for (what, input, must_pass) in [("text 0.0.4", &text, true), ("OpenMetrics", &open, false)] {
        let mut child = std::process::Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if must_pass {
            assert!(
                out.status.success() && said.trim().is_empty(),
                "promtool check metrics on the {what} format: {said}\n{input}"
            );
        } else {
            // Why both formats are served: promtool (2.42, Debian's) reads only the older text
            // format, and takes every OpenMetrics counter for an untyped metric without help.
            assert!(said.contains("no help text"), "{what}: {said}");
        }
    }
}

#[actix::test]
async fn a_host_serves_the_nodes_metrics_from_its_own_registry_under_its_namespace() {
    assert!(tm2_p2p::Metrics::with_namespace("9lives").is_err());
    assert!(tm2_p2p::Metrics::with_namespace("my-chain").is_err());
    let metrics = tm2_p2p::Metrics::with_namespace("chain_p2p").unwrap();
    let mut registry = tm2_p2p::prometheus_client::registry::Registry::default();
    metrics.register_into(&mut registry);

    let mut config = common::config();
    config.laddr = "127.0.0.1:0".parse().unwrap();
    let (tx, _inbox) = mpsc::channel(10);
    let reactor = Inbox { tx }.start();
    let builder = SwitchBuilder::new(config, NodeKey::generate().unwrap())
        .network(common::NETWORK)
        .metrics(metrics.clone())
        .reactor(RegisterReactor::new(
            "inbox",
            vec![ChannelDescriptor::new(CHANNEL)],
            &reactor,
        ));
    let mut events = builder.subscribe(|e| matches!(e, SwitchEvent::PeerConnected { .. }));
    let a = builder.spawn().await.unwrap();
    assert_eq!(a.metrics(), metrics);
    let b = TestNode::spawn().await;
    b.dial(a.net_address());
    tokio::time::timeout(TIMEOUT, events.recv())
        .await
        .unwrap()
        .unwrap();

    let mut text = String::new();
    tm2_p2p::prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("chain_p2p_peers{direction=\"inbound\"} 1"),
        "{text}"
    );
    // The send queues are read from the live connection at the host's scrape too.
    let b_id = b.id().to_string();
    assert!(
        text.contains(&format!(
            "chain_p2p_peer_send_queue_messages{{peer=\"{b_id}\""
        )),
        "{text}"
    );
    assert!(!text.contains("tm2p2p_"), "{text}");
    a.shutdown().await;
}
