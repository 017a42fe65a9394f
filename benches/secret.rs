//! Secret-connection benchmarks, each measured against its bound in the same run:
//!
//! - `seal_1028`: ring ChaCha20-Poly1305 sealing one 1028-byte frame on one core, the limit
//!   of any secret stream (the sender seals on one core while the receiver opens on the other);
//! - `stream_64k`: a `SecretStream` over loopback TCP, 64 KiB writes, reader on another task;
//! - `x25519_*`, `ed25519_*`: the public-key operations a handshake needs (each side: one
//!   X25519 key generation and agreement, one Ed25519 signature and verification), which bound
//!   handshakes per second;
//! - `handshake_loopback`: TCP connect plus both sides' upgrade, sequential.
//!
//! After criterion's report, a side-by-side pass prints the two ratios the project tracks:
//! stream throughput / seal rate (goal >= 0.5) and handshakes / bound (goal >= 0.6).
//!
//! Run: `cargo bench --bench secret`

// Benchmarks measure wall time, so they read the clock directly.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)] // Benchmark code: a failed unwrap aborts the run, which is right.

mod common;
use common::{FRAME_PLAIN, seal_frames};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, black_box};
use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair};
use tm2_p2p::NodeKey;
use tm2_p2p::actors::secret_stream::SecretStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::Notify;

const WRITE: usize = 64 * 1024;
const ROUND: usize = 4 * 1024 * 1024;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A connected pair of secret streams: a writer, and a task that reads and counts bytes.
struct StreamPair {
    writer: tm2_p2p::actors::secret_stream::SecretWriter<tokio::net::tcp::OwnedWriteHalf>,
    /// Bytes the reader has received so far.
    received: Arc<AtomicU64>,
    /// Woken by the reader after each read.
    progress: Arc<Notify>,
    /// Bytes the writer has sent so far.
    sent: u64,
}

async fn stream_pair() -> StreamPair {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let key = NodeKey::generate().unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        SecretStream::upgrade(tcp, &key, Duration::from_secs(10))
            .await
            .unwrap()
    });
    let key = NodeKey::generate().unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let client = SecretStream::upgrade(tcp, &key, Duration::from_secs(10))
        .await
        .unwrap();
    let server = server.await.unwrap();
    let (_r, writer) = client.into_split();
    let (mut reader, server_writer) = server.into_split();
    let received = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Notify::new());
    let (rx_count, rx_progress) = (received.clone(), progress.clone());
    tokio::spawn(async move {
        let _keep_open = server_writer;
        let mut buf = vec![0u8; 256 * 1024];
        while let Ok(n) = reader.read(&mut buf).await {
            if n == 0 {
                return;
            }
            rx_count.fetch_add(n as u64, Ordering::Release);
            rx_progress.notify_one();
        }
    });
    StreamPair {
        writer,
        received,
        progress,
        sent: 0,
    }
}

impl StreamPair {
    /// Sends `rounds` rounds of `ROUND` bytes and waits until the reader has them all.
    async fn send_rounds(&mut self, rounds: u64) -> Duration {
        let chunk = vec![0x5au8; WRITE];
        let start = Instant::now();
        for _ in 0..rounds {
            for _ in 0..ROUND / WRITE {
                self.writer.write_all(&chunk).await.unwrap();
            }
        }
        self.writer.flush().await.unwrap();
        self.sent += rounds * ROUND as u64;
        while self.received.load(Ordering::Acquire) < self.sent {
            self.progress.notified().await;
        }
        start.elapsed()
    }
}

/// One sequential handshake over loopback: TCP connect and both sides' upgrade.
async fn one_handshake(listener: &TcpListener, a: &NodeKey, b: &'static NodeKey) {
    let addr = listener.local_addr().unwrap();
    let (connect, accept) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (tcp_b, _) = accept.unwrap();
    let server =
        tokio::spawn(async move { SecretStream::upgrade(tcp_b, b, Duration::from_secs(10)).await });
    let client = SecretStream::upgrade(connect.unwrap(), a, Duration::from_secs(10))
        .await
        .unwrap();
    let server = server.await.unwrap().unwrap();
    black_box((client.remote_id(), server.remote_id()));
}

/// Time of one handshake's public-key work, both sides in one process.
fn handshake_crypto(n: u64) -> Duration {
    let rng = SystemRandom::new();
    let pair = Ed25519KeyPair::from_seed_unchecked(&[3; 32]).unwrap();
    let peer_pub = {
        let k = EphemeralPrivateKey::generate(&X25519, &rng).unwrap();
        k.compute_public_key().unwrap()
    };
    let public = ring::signature::KeyPair::public_key(&pair)
        .as_ref()
        .to_vec();
    let start = Instant::now();
    for _ in 0..2 * n {
        let k = EphemeralPrivateKey::generate(&X25519, &rng).unwrap();
        black_box(k.compute_public_key().unwrap());
        let shared = agreement::agree_ephemeral(
            k,
            &UnparsedPublicKey::new(&X25519, peer_pub.as_ref()),
            |s| s[0],
        );
        black_box(shared.unwrap());
        let sig = pair.sign(b"challenge challenge challenge 32");
        ring::signature::UnparsedPublicKey::new(&ED25519, &public)
            .verify(b"challenge challenge challenge 32", sig.as_ref())
            .unwrap();
    }
    start.elapsed()
}

fn leak_key() -> &'static NodeKey {
    Box::leak(Box::new(NodeKey::generate().unwrap()))
}

fn benches(c: &mut Criterion) {
    let rt = runtime();

    let mut g = c.benchmark_group("secret");
    g.throughput(Throughput::Bytes(FRAME_PLAIN as u64));
    g.bench_function("seal_1028", |b| b.iter_custom(seal_frames));

    let mut pair = rt.block_on(stream_pair());
    g.throughput(Throughput::Bytes(ROUND as u64));
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("stream_64k", |b| {
        b.iter_custom(|n| rt.block_on(pair.send_rounds(n)))
    });
    drop(pair);

    g.throughput(Throughput::Elements(1));
    g.bench_function("handshake_crypto_bound", |b| {
        b.iter_custom(handshake_crypto)
    });
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let (a, bk) = (NodeKey::generate().unwrap(), leak_key());
    g.bench_function("handshake_loopback", |b| {
        b.iter(|| rt.block_on(one_handshake(&listener, &a, bk)))
    });
    g.finish();
}

/// Side-by-side pass: alternates the measured operation and its bound a few times and prints
/// the median ratio, so machine noise hits both alike.
fn ratios() {
    let rt = runtime();
    let mut stream_ratios = Vec::new();
    let mut pair = rt.block_on(stream_pair());
    for _ in 0..5 {
        let seal = seal_frames(200_000);
        let seal_rate = 200_000.0 * FRAME_PLAIN as f64 / seal.as_secs_f64();
        let t = rt.block_on(pair.send_rounds(64));
        let stream_rate = 64.0 * ROUND as f64 / t.as_secs_f64();
        stream_ratios.push((stream_rate / seal_rate, seal_rate, stream_rate));
    }
    drop(pair);
    let mut hs_ratios = Vec::new();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let (a, bk) = (NodeKey::generate().unwrap(), leak_key());
    for _ in 0..5 {
        let bound = 500.0 / handshake_crypto(500).as_secs_f64();
        let start = Instant::now();
        for _ in 0..500 {
            rt.block_on(one_handshake(&listener, &a, bk));
        }
        let rate = 500.0 / start.elapsed().as_secs_f64();
        hs_ratios.push((rate / bound, bound, rate));
    }
    let median = |v: &mut Vec<(f64, f64, f64)>| {
        v.sort_by(|x, y| x.0.total_cmp(&y.0));
        v[v.len() / 2]
    };
    let (r, seal, stream) = median(&mut stream_ratios);
    println!(
        "\nside by side (median of 5): seal {:.0} MB/s, stream {:.0} MB/s, stream/seal = {r:.2} (goal >= 0.5)",
        seal / 1e6,
        stream / 1e6
    );
    let (r, bound, rate) = median(&mut hs_ratios);
    println!(
        "side by side (median of 5): handshake bound {bound:.0}/s, loopback handshakes {rate:.0}/s, ratio = {r:.2} (goal >= 0.6)"
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
    if std::env::args().any(|a| a == "--bench") {
        ratios();
    }
}
