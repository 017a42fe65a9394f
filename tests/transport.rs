//! Connection upgrade over loopback TCP: secret handshake, NodeInfo exchange and the checks
//! that follow, with honest and hostile peers.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::time::Duration;

use tm2_p2p::actors::secret_stream::{SecretStream, handshake};
use tm2_p2p::actors::transport::{Stage, TransportError, Upgraded, connect_any, dial, upgrade};
use tm2_p2p::codec::amino;
use tm2_p2p::secret::{FRAME_LEN, FrameError};
use tm2_p2p::types::{Direction, NodeInfoError, PeerCheckError};
use tm2_p2p::{NetAddress, NodeInfo, NodeKey, PeerId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TIMEOUT: Duration = Duration::from_secs(10);

/// The process helpers the test binaries share (here: the I/O runtime).
#[path = "common/sys.rs"]
mod sys;

fn node_info(id: PeerId, port: u16, network: &str) -> NodeInfo {
    let addr: NetAddress = format!("{id}@127.0.0.1:{port}").parse().unwrap();
    NodeInfo::new(addr, network, vec![0x40, 0x50])
}

struct Listening {
    listener: TcpListener,
    key: NodeKey,
    info: NodeInfo,
}

impl Listening {
    async fn new(network: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let key = NodeKey::generate().unwrap();
        let info = node_info(key.id(), listener.local_addr().unwrap().port(), network);
        Self {
            listener,
            key,
            info,
        }
    }

    fn address(&self) -> NetAddress {
        self.info.net_address.clone()
    }

    /// Accepts one connection and upgrades it, in the background.
    fn accept_one(self) -> tokio::task::JoinHandle<Result<Upgraded, TransportError>> {
        tokio::spawn(async move {
            let (tcp, _) = self.listener.accept().await.unwrap();
            upgrade(tcp, &self.key, &self.info, None, TIMEOUT).await
        })
    }
}

fn dialer(network: &str) -> (NodeKey, NodeInfo) {
    let key = NodeKey::generate().unwrap();
    let info = node_info(key.id(), 1, network);
    (key, info)
}

#[tokio::test]
async fn dial_and_accept_produce_verified_connections() {
    let server = Listening::new("net").await;
    let (addr, server_id) = (server.address(), server.key.id());
    let accepted = server.accept_one();
    let (key, info) = dialer("net");
    let out = dial(&addr, &key, &info, TIMEOUT, TIMEOUT).await.unwrap();
    let inb = accepted.await.unwrap().unwrap();
    assert_eq!(out.id(), server_id);
    assert_eq!(out.direction, Direction::Outbound);
    assert_eq!(out.node_info.id(), server_id);
    assert_eq!(inb.id(), key.id());
    assert_eq!(inb.direction, Direction::Inbound);
    assert_eq!(inb.node_info, info);
}

#[tokio::test]
async fn a_peer_on_another_network_is_rejected_by_both_sides() {
    let server = Listening::new("net-a").await;
    let addr = server.address();
    let accepted = server.accept_one();
    let (key, info) = dialer("net-b");
    let err = dial(&addr, &key, &info, TIMEOUT, TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Rejected(PeerCheckError::Incompatible(_))
        ),
        "{err:?}"
    );
    let err = accepted.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Rejected(PeerCheckError::Incompatible(_))
        ),
        "{err:?}"
    );
    assert!(!err.is_peer_fault());
}

#[tokio::test]
async fn dialing_a_real_address_with_the_wrong_id_fails_with_id_mismatch() {
    let server = Listening::new("net").await;
    let real = server.address();
    let _accepted = server.accept_one();
    let wrong_id = NodeKey::generate().unwrap().id();
    let addr = NetAddress::new(wrong_id, real.host().clone(), real.port()).unwrap();
    let (key, info) = dialer("net");
    let err = dial(&addr, &key, &info, TIMEOUT, TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::Rejected(PeerCheckError::DialedIdMismatch { dialed, .. }) if dialed == wrong_id),
        "{err:?}"
    );
}

#[tokio::test]
async fn dialing_ourselves_is_refused() {
    let server = Listening::new("net").await;
    let addr = server.address();
    let (key, info) = (server.key.clone(), server.info.clone());
    let accepted = server.accept_one();
    let err = dial(&addr, &key, &info, TIMEOUT, TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Rejected(PeerCheckError::SelfConnection)
        ),
        "{err:?}"
    );
    let err = accepted.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Rejected(PeerCheckError::SelfConnection)
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_node_info_claiming_another_id_is_refused() {
    let server = Listening::new("net").await;
    let addr = server.address();
    let accepted = server.accept_one();
    let key = NodeKey::generate().unwrap();
    let impostor = node_info(NodeKey::generate().unwrap().id(), 1, "net");
    let _ = dial(&addr, &key, &impostor, TIMEOUT, TIMEOUT).await;
    let err = accepted.await.unwrap().unwrap_err();
    assert!(
        matches!(err, TransportError::Rejected(PeerCheckError::IdMismatch { authenticated, .. }) if authenticated == key.id()),
        "{err:?}"
    );
    assert!(err.is_peer_fault());
}

/// A peer that completes the secret handshake, then sends `bytes` instead of a NodeInfo.
async fn raw_peer_sending(bytes: Vec<u8>) -> TransportError {
    let server = Listening::new("net").await;
    let addr = server.listener.local_addr().unwrap();
    let accepted = server.accept_one();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let key = NodeKey::generate().unwrap();
    let stream = SecretStream::upgrade(tcp, &key, TIMEOUT).await.unwrap();
    let (r, mut w) = stream.into_split();
    w.write_all(&bytes).await.unwrap();
    w.flush().await.unwrap();
    let err = accepted.await.unwrap().unwrap_err();
    // The connection stays open until the server has decided.
    drop((r, w));
    err
}

#[tokio::test]
async fn an_oversize_node_info_prefix_is_refused_before_the_body() {
    // 10,239 bytes of body and a 2-byte prefix: one over the limit of 10,240 for both.
    let mut bytes = Vec::new();
    amino::put_uvarint(&mut bytes, 10_239);
    let err = raw_peer_sending(bytes).await;
    assert!(
        matches!(
            err,
            TransportError::NodeInfo(NodeInfoError::Decode(amino::AminoError::TooLarge {
                len: 10_241,
                ..
            }))
        ),
        "{err:?}"
    );
    assert!(err.is_peer_fault());
}

#[tokio::test]
async fn garbage_instead_of_node_info_is_a_decode_error() {
    let mut bytes = Vec::new();
    amino::put_uvarint(&mut bytes, 16);
    bytes.extend_from_slice(&[0xff; 16]);
    let err = raw_peer_sending(bytes).await;
    assert!(matches!(err, TransportError::NodeInfo(_)), "{err:?}");
}

/// A peer that completes the secret handshake, then sends its first stream frame (the start
/// of a NodeInfo) twice: the replay does not open (its nonce was used).
async fn replaying_peer(tcp: &mut TcpStream) {
    let key = NodeKey::generate().unwrap();
    let (mut established, _) = handshake(tcp, &key).await.unwrap();
    let mut start = Vec::new();
    amino::put_uvarint(&mut start, 200);
    start.extend_from_slice(&[0x0a; 10]);
    let mut frame = [0u8; FRAME_LEN];
    established.sealer.seal(&start, &mut frame).unwrap();
    tcp.write_all(&frame).await.unwrap();
    tcp.write_all(&frame).await.unwrap();
}

#[tokio::test]
async fn a_replayed_frame_in_the_node_info_stage_is_a_bad_frame_and_the_peers_fault() {
    let server = Listening::new("net").await;
    let addr = server.listener.local_addr().unwrap();
    let accepted = server.accept_one();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    replaying_peer(&mut tcp).await;
    let err = accepted.await.unwrap().unwrap_err();
    assert!(
        matches!(err, TransportError::BadFrame(FrameError::Decrypt)),
        "{err:?}"
    );
    assert!(err.is_peer_fault());
    // A forged frame (random bytes) is the same fault.
    let server = Listening::new("net").await;
    let addr = server.listener.local_addr().unwrap();
    let accepted = server.accept_one();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let key = NodeKey::generate().unwrap();
    let _ = handshake(&mut tcp, &key).await.unwrap();
    tcp.write_all(&[0x5a; FRAME_LEN]).await.unwrap();
    let err = accepted.await.unwrap().unwrap_err();
    assert!(
        matches!(err, TransportError::BadFrame(FrameError::Decrypt)),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_peer_silent_after_the_handshake_times_out_in_the_exchange() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let key = NodeKey::generate().unwrap();
    let info = node_info(key.id(), addr.port(), "net");
    let accepted = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        upgrade(tcp, &key, &info, None, Duration::from_millis(300)).await
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let peer_key = NodeKey::generate().unwrap();
    let stream = SecretStream::upgrade(tcp, &peer_key, TIMEOUT)
        .await
        .unwrap();
    let err = accepted.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Timeout {
                stage: Stage::NodeInfoExchange,
                ..
            }
        ),
        "{err:?}"
    );
    drop(stream);
}

#[tokio::test]
async fn bytes_sent_right_after_the_node_info_are_kept() {
    let server = Listening::new("net").await;
    let addr = server.listener.local_addr().unwrap();
    let accepted = server.accept_one();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let key = NodeKey::generate().unwrap();
    let stream = SecretStream::upgrade(tcp, &key, TIMEOUT).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    // NodeInfo and the first application bytes in one write, as an eager peer would.
    let mut bytes = node_info(key.id(), 1, "net").encode_framed();
    bytes.extend_from_slice(b"first packet");
    w.write_all(&bytes).await.unwrap();
    w.flush().await.unwrap();
    let up = accepted.await.unwrap().unwrap();
    let (mut reader, _writer) = up.stream.into_split();
    let mut got = [0u8; 12];
    reader.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"first packet");
    let mut their_info = vec![0u8; 1];
    r.read_exact(&mut their_info).await.unwrap();
}

// ---- early data: our NodeInfo rides with our auth frame ----

/// Reads a framed NodeInfo from `reader`, exactly its bytes.
async fn read_framed_node_info(reader: &mut (impl tokio::io::AsyncRead + Unpin)) -> NodeInfo {
    let mut head = Vec::new();
    let body_len = loop {
        head.push(reader.read_u8().await.unwrap());
        if let Some((_, len)) = NodeInfo::frame_header(&head).unwrap() {
            break len;
        }
    };
    let mut body = vec![0u8; body_len];
    reader.read_exact(&mut body).await.unwrap();
    NodeInfo::decode(&body).unwrap()
}

/// The upgrade as it was before early data, and as TM2 (Go) does it: the secret handshake
/// with nothing sent after the auth frame; only once it is done, our NodeInfo is written, then
/// the peer's read. Then the same checks.
async fn sequential_upgrade(
    tcp: TcpStream,
    key: &NodeKey,
    ours: &NodeInfo,
    dialed: Option<PeerId>,
) -> (SecretStream, NodeInfo) {
    let mut stream = SecretStream::upgrade(tcp, key, TIMEOUT).await.unwrap();
    let (reader, writer) = stream.halves_mut();
    writer.write_all(&ours.encode_framed()).await.unwrap();
    writer.flush().await.unwrap();
    let theirs = read_framed_node_info(reader).await;
    tm2_p2p::types::verify_remote(ours, stream.remote_id(), &theirs, dialed).unwrap();
    (stream, theirs)
}

/// Sends a message each way over two upgraded streams: the sealers and openers of both
/// ends are in step after their different upgrades.
async fn both_ways(a: SecretStream, b: SecretStream) {
    let (mut ar, mut aw) = a.into_split();
    let (mut br, mut bw) = b.into_split();
    aw.write_all(b"from a").await.unwrap();
    aw.flush().await.unwrap();
    bw.write_all(b"from b").await.unwrap();
    bw.flush().await.unwrap();
    let mut got = [0u8; 6];
    br.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"from a");
    ar.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"from b");
}

#[tokio::test]
async fn our_node_info_arrives_before_the_peer_sent_its_auth_frame() {
    // The peer runs the handshake by hand and withholds its auth frame: our auth frame and
    // our NodeInfo must come anyway, in one piece (before early data the NodeInfo waited for
    // the peer's auth frame, and this read would time out).
    let server = Listening::new("net").await;
    let addr = server.listener.local_addr().unwrap();
    let server_info = server.info.clone();
    let accepted = server.accept_one();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let key = NodeKey::generate().unwrap();
    let mut hs = tm2_p2p::secret::Handshake::new(&key, &ring::rand::SystemRandom::new()).unwrap();
    tcp.write_all(&hs.poll_transmit().unwrap()).await.unwrap();
    let mut eph = [0u8; tm2_p2p::secret::EPHEMERAL_MSG_LEN];
    tcp.read_exact(&mut eph).await.unwrap();
    assert_eq!(hs.handle_bytes(&eph).unwrap(), eph.len());
    let our_auth = hs.poll_transmit().unwrap(); // Withheld for now.
    let framed_len = server_info.encode_framed().len();
    let frames = 1 + framed_len.div_ceil(tm2_p2p::secret::DATA_MAX);
    let mut theirs = vec![0u8; frames * FRAME_LEN];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut theirs))
        .await
        .expect("auth frame and NodeInfo before our auth frame")
        .unwrap();
    assert_eq!(hs.handle_bytes(&theirs).unwrap(), FRAME_LEN);
    assert!(hs.poll_transmit().is_none());
    let established = hs.finish().unwrap();
    assert_eq!(established.remote_id(), server_info.id());
    let mut reader = tm2_p2p::actors::secret_stream::SecretReader::with_leftover(
        tokio::io::empty(),
        established.opener,
        &theirs[FRAME_LEN..],
    );
    assert_eq!(read_framed_node_info(&mut reader).await, server_info);
    // Now complete the upgrade, TM2's way: auth frame, then our NodeInfo after it.
    let mut writer =
        tm2_p2p::actors::secret_stream::SecretWriter::new(Vec::new(), established.sealer);
    let info = node_info(key.id(), 1, "net");
    writer.write_all(&info.encode_framed()).await.unwrap();
    writer.flush().await.unwrap();
    tcp.write_all(&our_auth).await.unwrap();
    tcp.write_all(&writer.into_inner()).await.unwrap();
    let up = accepted.await.unwrap().unwrap();
    assert_eq!(up.node_info, info);
    assert_eq!(up.id(), key.id());
}

#[tokio::test]
async fn an_early_data_dialer_connects_to_a_sequential_listener() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_key = NodeKey::generate().unwrap();
    let server_info = node_info(
        server_key.id(),
        listener.local_addr().unwrap().port(),
        "net",
    );
    let addr = server_info.net_address.clone();
    let expected_server = server_info.clone();
    let accepted = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        sequential_upgrade(tcp, &server_key, &server_info, None).await
    });
    let (key, info) = dialer("net");
    let out = dial(&addr, &key, &info, TIMEOUT, TIMEOUT).await.unwrap();
    let (inb, got_info) = accepted.await.unwrap();
    assert_eq!(out.node_info, expected_server);
    assert_eq!(got_info, info);
    assert_eq!(inb.remote_id(), key.id());
    both_ways(out.stream, inb).await;
}

#[tokio::test]
async fn a_sequential_dialer_connects_to_an_early_data_listener() {
    let server = Listening::new("net").await;
    let addr = server.listener.local_addr().unwrap();
    let (server_id, server_info) = (server.key.id(), server.info.clone());
    let accepted = server.accept_one();
    let (key, info) = dialer("net");
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (out, got_info) = sequential_upgrade(tcp, &key, &info, Some(server_id)).await;
    let inb = accepted.await.unwrap().unwrap();
    assert_eq!(got_info, server_info);
    assert_eq!(inb.node_info, info);
    assert_eq!(inb.direction, Direction::Inbound);
    both_ways(out, inb.stream).await;
}

#[tokio::test]
async fn two_early_data_ends_stay_in_step_after_the_upgrade() {
    let server = Listening::new("net").await;
    let addr = server.address();
    let accepted = server.accept_one();
    let (key, info) = dialer("net");
    let out = dial(&addr, &key, &info, TIMEOUT, TIMEOUT).await.unwrap();
    let inb = accepted.await.unwrap().unwrap();
    both_ways(out.stream, inb.stream).await;
}

#[tokio::test]
async fn a_dns_address_must_be_resolved_before_dialing() {
    let id = NodeKey::generate().unwrap().id();
    let addr: NetAddress = format!("{id}@localhost:1").parse().unwrap();
    let (key, info) = dialer("net");
    let err = dial(&addr, &key, &info, TIMEOUT, TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Unresolved(_)), "{err:?}");
}

#[tokio::test]
async fn connect_any_tries_each_address_until_one_accepts() {
    // A listener on 127.0.0.1 only: ::1 at its port refuses (as when `localhost` resolves to
    // ::1 first), 127.0.0.1 accepts.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let v4 = listener.local_addr().unwrap();
    let v6 = std::net::SocketAddr::new("::1".parse().unwrap(), v4.port());
    let tcp = connect_any(&[v6, v4], TIMEOUT).await.unwrap();
    assert_eq!(tcp.peer_addr().unwrap(), v4);
    // Every address refusing: the last error; none at all: NotFound.
    drop(listener);
    let err = connect_any(&[v6, v4], TIMEOUT).await.unwrap_err();
    assert!(matches!(err, TransportError::Io(_)), "{err:?}");
    let err = connect_any(&[], TIMEOUT).await.unwrap_err();
    assert!(
        matches!(&err, TransportError::Io(e) if e.kind() == std::io::ErrorKind::NotFound),
        "{err:?}"
    );
}

mod actor {
    use std::net::{IpAddr, SocketAddr};

    use actix::prelude::*;
    use tm2_p2p::actors::metrics::{HandshakeFailure, Metrics};
    use tm2_p2p::actors::transport::{
        Dial, InboundConnection, InboundRejectReason, InboundRejected, Stop, Transport,
        TransportConfig, UpdateNodeInfo,
    };
    use tokio::net::TcpSocket;
    use tokio::sync::mpsc;

    use super::*;
    use crate::sys::io_runtime;

    /// Stands in for the Switch: forwards what the transport sends into bounded channels.
    struct Collector {
        inbound: mpsc::Sender<Upgraded>,
        rejected: mpsc::Sender<InboundRejected>,
    }

    impl Actor for Collector {
        type Context = Context<Self>;

        fn started(&mut self, ctx: &mut Self::Context) {
            // As the Switch's: reports arrive from the transport's tasks faster than the
            // default 16 are handled, and a full mailbox drops them.
            ctx.set_mailbox_capacity(1024);
        }
    }

    impl Handler<InboundConnection> for Collector {
        type Result = ResponseFuture<()>;
        fn handle(&mut self, msg: InboundConnection, _: &mut Self::Context) -> Self::Result {
            let tx = self.inbound.clone();
            Box::pin(async move {
                let _ = tx.send(msg.0).await;
            })
        }
    }

    impl Handler<InboundRejected> for Collector {
        type Result = ();
        fn handle(&mut self, msg: InboundRejected, _: &mut Self::Context) {
            let _ = self.rejected.try_send(msg);
        }
    }

    struct Running {
        addr: Addr<Transport>,
        net: NetAddress,
        inbound: mpsc::Receiver<Upgraded>,
        rejected: mpsc::Receiver<InboundRejected>,
    }

    async fn start(config: TransportConfig) -> Running {
        start_with(config, Metrics::new()).await
    }

    async fn start_with(config: TransportConfig, metrics: Metrics) -> Running {
        start_on(config, metrics, None).await
    }

    /// A transport whose upgrades run on `io` when given.
    async fn start_on(
        config: TransportConfig,
        metrics: Metrics,
        io: Option<tokio::runtime::Handle>,
    ) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let key = NodeKey::generate().unwrap();
        let info = node_info(key.id(), listener.local_addr().unwrap().port(), "net");
        let net = info.net_address.clone();
        let (in_tx, inbound) = mpsc::channel(64);
        let (rej_tx, rejected) = mpsc::channel(1024);
        let collector = Collector {
            inbound: in_tx,
            rejected: rej_tx,
        }
        .start();
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let transport = Transport::new(
            listener,
            key,
            info,
            config,
            collector.clone().recipient(),
            collector.recipient(),
            log,
        )
        .with_metrics(metrics);
        let addr = match io {
            Some(io) => transport.with_io_runtime(io),
            None => transport,
        }
        .start();
        Running {
            addr,
            net,
            inbound,
            rejected,
        }
    }

    fn config(handshake_timeout: Duration) -> TransportConfig {
        TransportConfig {
            handshake_timeout,
            dial_timeout: TIMEOUT,
            max_handshakes_in_progress: 64,
            max_handshakes_per_ip: 8,
            ..TransportConfig::default()
        }
    }

    /// Runs a flood of silent sockets against a transport with the default slots (64 in total,
    /// 8 per IP, 16 per subnet) and a 10 s handshake timeout: 8 sockets from each of
    /// `flood_ips`, each reconnecting (after 20 ms) whenever the node closes it, so the flood
    /// keeps every slot it can. `HONEST` honest peers, one after another, each from a fresh
    /// IP of 127.0.200.0/24, run a full upgrade, each once the flood holds `expect_held` slots
    /// (the node sent those sockets its ephemeral key). Returns how many succeeded and the node's
    /// rejections of flood sockets by kind (no slot, evicted, other).
    async fn honest_handshakes_during_a_flood(
        flood_ips: &[[u8; 4]],
        expect_held: usize,
    ) -> (usize, [usize; 3]) {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        const HONEST: usize = 20;
        // Timeouts longer than the test: a flood socket only gives its slot up when evicted.
        let mut a = start(TransportConfig {
            handshake_first_message_timeout: TIMEOUT,
            ..config(TIMEOUT)
        })
        .await;
        let target = a.net.socket_addr().unwrap();
        let held = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut flood = Vec::new();
        for &ip in flood_ips {
            for _ in 0..8 {
                let (held, stop) = (held.clone(), stop.clone());
                flood.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Acquire) {
                        // A socket refused at once is reset; the reset can reach the
                        // connect itself, which is one more refusal, not a failure.
                        let Ok(tcp) = try_connect_from(ip, target).await else {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        };
                        let mut first = [0u8; 1];
                        // Holding a slot: the node started its handshake (sent its key).
                        if matches!(tcp.peek(&mut first).await, Ok(n) if n > 0) {
                            held.fetch_add(1, Ordering::AcqRel);
                            closed_within(tcp, TIMEOUT).await;
                            held.fetch_sub(1, Ordering::AcqRel);
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }));
            }
        }
        let mut succeeded = 0;
        for i in 0..HONEST {
            // Every attempt starts while the flood holds all it can.
            let deadline = tokio::time::Instant::now() + TIMEOUT;
            while held.load(Ordering::Acquire) < expect_held {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the flood never held {expect_held} slots"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let tcp = connect_from([127, 0, 200, 1 + i as u8], target).await;
            let (key, info) = dialer("net");
            let up = upgrade(tcp, &key, &info, Some(a.net.id()), TIMEOUT).await;
            if up.is_ok() {
                let inbound = tokio::time::timeout(TIMEOUT, a.inbound.recv()).await;
                assert_eq!(inbound.unwrap().unwrap().id(), key.id());
                succeeded += 1;
            }
        }
        stop.store(true, Ordering::Release);
        a.addr.send(Stop).await.unwrap();
        for task in flood {
            task.await.unwrap();
        }
        let mut kinds = [0; 3];
        while let Ok(r) = a.rejected.try_recv() {
            if r.remote.ip().to_string().starts_with("127.0.200.") {
                continue;
            }
            kinds[match r.reason {
                InboundRejectReason::NoHandshakeSlot(_) => 0,
                InboundRejectReason::Evicted => 1,
                InboundRejectReason::Upgrade(_) => 2,
                other => panic!("unexpected rejection {other:?}"),
            }] += 1;
        }
        println!(
            "flood from {} IPs: {succeeded} of {HONEST} honest handshakes succeeded; flood \
             sockets refused {}, evicted {}, failed otherwise {}",
            flood_ips.len(),
            kinds[0],
            kinds[1],
            kinds[2]
        );
        (succeeded, kinds)
    }

    #[actix::test]
    async fn honest_newcomers_get_in_while_silent_sockets_from_8_subnets_hold_every_slot() {
        // 8 IPs in 8 different /24s x 8 sockets: exactly the 64 slots, within every per-IP and
        // per-subnet bound. Each honest newcomer evicts the oldest flood socket.
        let ips: Vec<[u8; 4]> = (1..=8).map(|net| [127, 0, net, 2]).collect();
        let (succeeded, [_, evicted, _]) = honest_handshakes_during_a_flood(&ips, 64).await;
        assert_eq!(succeeded, 20);
        assert!(evicted >= 20, "every newcomer took a flood socket's slot");
    }

    #[actix::test]
    async fn silent_sockets_from_one_subnet_hold_at_most_its_share_of_the_slots() {
        // 8 IPs of one /24 x 8 sockets (the 8 IPs x 8 silent sockets, all in 127.0.0.0/24):
        // the subnet holds at most 16 slots, the rest are refused at once.
        let ips: Vec<[u8; 4]> = (2..=9).map(|n| [127, 0, 0, n]).collect();
        let (succeeded, [refused, _, _]) = honest_handshakes_during_a_flood(&ips, 16).await;
        assert_eq!(succeeded, 20);
        assert!(refused > 0);
    }

    async fn connect_from(source: [u8; 4], to: SocketAddr) -> TcpStream {
        try_connect_from(source, to).await.unwrap()
    }

    async fn try_connect_from(source: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(IpAddr::from(source), 0))?;
        socket.connect(to).await
    }

    /// Waits for the server to close `tcp` (EOF or reset), within `within`.
    async fn closed_within(mut tcp: TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 64];
        tokio::time::timeout(within, async {
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }

    /// `b` dials `a`; checks both ends see the right id; returns `a`'s inbound connection.
    async fn dial_and_accept(a: &mut Running, b: &Running) -> Upgraded {
        dial_and_accept_both(a, b).await.1
    }

    /// `b` dials `a`; checks both ends see the right id; returns both ends (`b`'s, `a`'s).
    async fn dial_and_accept_both(a: &mut Running, b: &Running) -> (Upgraded, Upgraded) {
        let up = b
            .addr
            .send(Dial {
                addr: a.net.clone(),
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(up.id(), a.net.id());
        let inbound = tokio::time::timeout(TIMEOUT, a.inbound.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(inbound.id(), b.net.id());
        (up, inbound)
    }

    #[actix::test]
    async fn accepted_connections_reach_the_switch_and_dials_work() {
        let mut a = start(config(TIMEOUT)).await;
        let b = start(config(TIMEOUT)).await;
        let inbound = dial_and_accept(&mut a, &b).await;
        assert_eq!(inbound.direction, Direction::Inbound);
        assert!(a.rejected.try_recv().is_err());
    }

    #[actix::test]
    async fn upgrades_on_an_io_runtime_make_streams_registered_there() {
        let io = io_runtime();
        let mut a = start_on(config(TIMEOUT), Metrics::new(), Some(io.clone())).await;
        let b = start_on(config(TIMEOUT), Metrics::new(), Some(io.clone())).await;
        let (dialed, accepted) = dial_and_accept_both(&mut a, &b).await;
        assert_eq!(accepted.direction, Direction::Inbound);
        assert!(dialed.stream.is_on_io_runtime() && accepted.stream.is_on_io_runtime());
        // This test's thread is the arbiter's, and it now blocks: only the I/O runtime's own
        // driver can wake the tasks reading these sockets. Were they registered with the
        // arbiter's runtime (where the Transport accepted), the exchange would never finish.
        let (done, finished) = std::sync::mpsc::channel();
        io.spawn(async move {
            both_ways(dialed.stream, accepted.stream).await;
            done.send(()).unwrap();
        });
        finished.recv_timeout(TIMEOUT).unwrap();
    }

    #[actix::test]
    async fn with_an_io_runtime_handshakes_complete_while_the_arbiter_is_busy() {
        // The arbiter (this test's thread) blocks, as under a busy reactor. Accepting and the
        // whole upgrade happen on the I/O runtime: a client completes its upgrade (handshake,
        // NodeInfo exchange, checks of our side) meanwhile. Only the hand-over to the Switch
        // waits for the arbiter.
        let io = io_runtime();
        let mut a = start_on(config(TIMEOUT), Metrics::new(), Some(io.clone())).await;
        // Answered once the actor started (and so its accept loop).
        let port = a.net.socket_addr().unwrap().port();
        let ours = node_info(a.net.id(), port, "net");
        a.addr.send(UpdateNodeInfo(ours)).await.unwrap();
        let (key, info) = dialer("net");
        let (client_id, target) = (key.id(), a.net.clone());
        let (done, finished) = std::sync::mpsc::channel();
        io.spawn(async move {
            let up = dial(&target, &key, &info, TIMEOUT, TIMEOUT).await;
            done.send(up.map(|up| up.id())).unwrap();
        });
        let upgraded = finished.recv_timeout(TIMEOUT).unwrap();
        assert_eq!(upgraded.unwrap(), a.net.id());
        let inbound = tokio::time::timeout(TIMEOUT, a.inbound.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(inbound.id(), client_id);
    }

    #[actix::test]
    async fn an_evicted_or_stopped_upgrade_on_an_io_runtime_closes_its_socket() {
        // Two slots in all; the second silent socket (from another subnet) is evicted by the
        // third, whose subnet holds none. Evicting cancels the upgrade's task on the I/O
        // runtime, which must close the socket there.
        let mut a = start_on(
            TransportConfig {
                max_handshakes_in_progress: 2,
                max_handshakes_per_ip: 2,
                max_handshakes_per_subnet: 2,
                // Longer than the waits below: only cancelling can close a socket in time.
                handshake_first_message_timeout: 3 * TIMEOUT,
                ..config(3 * TIMEOUT)
            },
            Metrics::new(),
            Some(io_runtime()),
        )
        .await;
        let target = a.net.socket_addr().unwrap();
        let mut first = [0u8; 1];
        let mut held = Vec::new();
        for _ in 0..2 {
            let tcp = connect_from([127, 0, 7, 2], target).await;
            // Holding a slot once the node sent its ephemeral key.
            assert!(tcp.peek(&mut first).await.unwrap() > 0);
            held.push(tcp);
        }
        let newcomer = connect_from([127, 0, 8, 2], target).await;
        assert!(newcomer.peek(&mut first).await.unwrap() > 0);
        let r = tokio::time::timeout(TIMEOUT, a.rejected.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(r.reason, InboundRejectReason::Evicted), "{r:?}");
        let evicted = held.remove(0);
        assert_eq!(evicted.local_addr().unwrap(), r.remote);
        assert!(
            closed_within(evicted, TIMEOUT).await,
            "evicted socket left open"
        );
        // Stopping the transport cancels the upgrades in progress: their sockets close too.
        a.addr.send(Stop).await.unwrap();
        assert!(closed_within(held.remove(0), TIMEOUT).await);
        assert!(closed_within(newcomer, TIMEOUT).await);
    }

    #[actix::test]
    async fn a_flood_of_silent_sockets_is_bounded_closed_and_does_not_block_real_peers() {
        silent_flood(None, [127, 0, 0, 2]).await;
    }

    #[actix::test]
    async fn a_flood_of_silent_sockets_against_upgrades_on_an_io_runtime() {
        silent_flood(Some(io_runtime()), [127, 0, 0, 3]).await;
    }

    /// 200 silent sockets from `from`: 192 refused at once, 8 closed at the handshake timeout,
    /// and a real node from another address gets in meanwhile.
    async fn silent_flood(io: Option<tokio::runtime::Handle>, from: [u8; 4]) {
        const FLOOD: usize = 200;
        let handshake_timeout = Duration::from_millis(800);
        let mut a = start_on(config(handshake_timeout), Metrics::new(), io.clone()).await;
        let target = a.net.socket_addr().unwrap();
        // 200 connections that never say a word.
        let started = tokio::time::Instant::now();
        let mut silent = Vec::with_capacity(FLOOD);
        for _ in 0..FLOOD {
            silent.push(connect_from(from, target).await);
        }
        let connecting = started.elapsed();
        // A real node, from another loopback address, still gets in.
        let b = start_on(config(TIMEOUT), Metrics::new(), io).await;
        dial_and_accept(&mut a, &b).await;
        // Every silent socket is closed: 192 at once (no slot), 8 at the handshake timeout.
        let mut closed = 0;
        for tcp in silent {
            if closed_within(tcp, handshake_timeout + TIMEOUT).await {
                closed += 1;
            }
        }
        assert_eq!(closed, FLOOD);
        // One report each. A report can trail its socket's closing: wait for it.
        let (mut no_slot, mut timed_out) = (0, 0);
        for _ in 0..FLOOD {
            let r = tokio::time::timeout(TIMEOUT, a.rejected.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(r.remote.ip(), IpAddr::from(from));
            match r.reason {
                InboundRejectReason::NoHandshakeSlot(_) => no_slot += 1,
                InboundRejectReason::Evicted => panic!("nothing to evict for"),
                InboundRejectReason::Upgrade(e) => {
                    assert!(
                        matches!(*e, TransportError::Timeout { .. } | TransportError::Io(_)),
                        "{e:?}"
                    );
                    timed_out += 1;
                }
                other => panic!("unexpected rejection {other:?}"),
            }
        }
        let counts =
            format!("refused {no_slot}, timed out {timed_out}, connecting took {connecting:?}");
        if connecting < handshake_timeout / 2 {
            assert_eq!(
                (no_slot, timed_out),
                (FLOOD - 8, 8),
                "8 handshakes per IP at once: {counts}"
            );
        } else {
            // A connect was slow (a lost SYN is retried after 1 s): the first 8 may have timed
            // out, freeing their slots, before the last sockets arrived.
            let rounds = 1 + connecting.as_millis() / handshake_timeout.as_millis();
            assert!(
                timed_out >= 8 && timed_out <= 8 * rounds as usize,
                "{counts}"
            );
        }
    }

    #[actix::test]
    async fn a_replayed_frame_is_counted_as_a_bad_frame_not_an_io_error() {
        let metrics = Metrics::new();
        let mut a = start_with(config(TIMEOUT), metrics.clone()).await;
        let mut tcp = TcpStream::connect(a.net.socket_addr().unwrap())
            .await
            .unwrap();
        replaying_peer(&mut tcp).await;
        let r = tokio::time::timeout(TIMEOUT, a.rejected.recv())
            .await
            .unwrap()
            .unwrap();
        match r.reason {
            InboundRejectReason::Upgrade(e) => assert!(
                matches!(*e, TransportError::BadFrame(FrameError::Decrypt)),
                "{e:?}"
            ),
            other => panic!("{other:?}"),
        }
        let count = |reason| metrics.handshake_failures(Direction::Inbound, reason);
        assert_eq!(count(HandshakeFailure::BadFrame), 1);
        assert_eq!(count(HandshakeFailure::IoError), 0);
        assert!(
            metrics
                .encode()
                .contains("handshake_failures_total{direction=\"inbound\",reason=\"bad_frame\"} 1")
        );
    }

    #[actix::test]
    async fn silent_and_trickling_sockets_lose_their_slot_at_the_first_message_deadline() {
        // The handshake timeout is 10 s; the ephemeral key is due within 300 ms.
        let mut a = start(TransportConfig {
            handshake_first_message_timeout: Duration::from_millis(300),
            ..config(TIMEOUT)
        })
        .await;
        let target = a.net.socket_addr().unwrap();
        let silent = TcpStream::connect(target).await.unwrap();
        let mut trickle = TcpStream::connect(target).await.unwrap();
        // 20 bytes of a 35-byte ephemeral message, one every 50 ms (the writes fail once the
        // node has closed the socket).
        let trickle = tokio::spawn(async move {
            let mut msg = vec![0x22, 0x0a, 0x20];
            msg.resize(20, 0x42);
            for b in msg {
                if trickle.write_all(&[b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            trickle
        });
        assert!(closed_within(silent, Duration::from_secs(3)).await);
        let trickle = trickle.await.unwrap();
        assert!(closed_within(trickle, Duration::from_secs(3)).await);
        for _ in 0..2 {
            let r = tokio::time::timeout(TIMEOUT, a.rejected.recv())
                .await
                .unwrap()
                .unwrap();
            match r.reason {
                InboundRejectReason::Upgrade(e) => assert!(
                    matches!(
                        *e,
                        TransportError::Timeout {
                            stage: Stage::SecretHandshake,
                            after,
                        } if after == Duration::from_millis(300)
                    ),
                    "{e:?}"
                ),
                other => panic!("{other:?}"),
            }
        }
        // An honest peer is not affected.
        let b = start(config(TIMEOUT)).await;
        dial_and_accept(&mut a, &b).await;
    }

    #[actix::test]
    async fn a_dial_message_resolves_a_host_name() {
        // Whatever `localhost` resolves to here (::1 and 127.0.0.1 in either order, or only
        // one), the node listening on 127.0.0.1 is reached.
        let mut a = start(config(TIMEOUT)).await;
        let b = start(config(TIMEOUT)).await;
        let port = a.net.socket_addr().unwrap().port();
        let by_name: NetAddress = format!("{}@localhost:{port}", a.net.id()).parse().unwrap();
        let up = b.addr.send(Dial { addr: by_name }).await.unwrap().unwrap();
        assert_eq!(up.id(), a.net.id());
        let inbound = tokio::time::timeout(TIMEOUT, a.inbound.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(inbound.id(), b.net.id());
    }

    #[actix::test]
    async fn stopping_the_transport_releases_the_port() {
        let a = start(config(TIMEOUT)).await;
        let socket = a.net.socket_addr().unwrap();
        a.addr.send(Stop).await.unwrap();
        // Bind again: succeeds once the accept loop is gone.
        let mut bound = None;
        for _ in 0..100 {
            if let Ok(l) = TcpListener::bind(socket).await {
                bound = Some(l);
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(bound.is_some(), "port {socket} still taken");
    }

    #[actix::test]
    async fn stop_is_answered_only_once_the_listener_on_the_io_runtime_is_closed() {
        let io = io_runtime();
        let a = start_on(config(TIMEOUT), Metrics::new(), Some(io.clone())).await;
        let socket = a.net.socket_addr().unwrap();
        // Answered once the actor started, and so its accept loop.
        let ours = node_info(a.net.id(), socket.port(), "net");
        a.addr.send(UpdateNodeInfo(ours)).await.unwrap();
        // Both workers of the I/O runtime, where the listener lives, are held: nothing there
        // can drop it until they are let go.
        let (held_tx, held) = std::sync::mpsc::channel();
        let mut release = Vec::new();
        for _ in 0..2 {
            let (go_tx, go) = std::sync::mpsc::channel::<()>();
            let held_tx = held_tx.clone();
            io.spawn(async move {
                held_tx.send(()).unwrap();
                let _ = go.recv_timeout(TIMEOUT);
            });
            release.push(go_tx);
        }
        for _ in 0..2 {
            held.recv_timeout(TIMEOUT).unwrap();
        }
        let stopped = a.addr.send(Stop);
        tokio::pin!(stopped);
        // While the listener cannot have closed, the answer must not come. (A bounded wait
        // for something that must not happen.)
        let early = tokio::time::timeout(Duration::from_millis(200), &mut stopped).await;
        let answered_early = early.is_ok();
        drop(release);
        if !answered_early {
            stopped.await.unwrap();
        }
        // Answered: the port is free at once.
        let bound = TcpListener::bind(socket).await;
        assert!(
            !answered_early && bound.is_ok(),
            "answered before the listener closed: {answered_early}; bind: {bound:?}"
        );
    }
}
