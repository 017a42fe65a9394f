//! Multiplexed-connection benchmarks: two `PeerConn`s over one loopback TCP connection (real
//! secret handshake, rate limits off), A sending to a counting reactor behind B.
//!
//! - `msgs_256`: 256-byte messages per second (goal >= 500,000/s);
//! - `bytes_1mib`: bytes per second with 1 MiB messages (goal >= 0.45 x the single-core
//!   ChaCha20-Poly1305 seal rate of 1028-byte frames, `seal_1028`, measured in the same run);
//! - latency: one-way time from `PeerHandle::try_send` to the reactor's handler for a 256-byte
//!   message on an idle connection, p50 and p99 (goal p99 < 1 ms; TM2's 100 ms flush throttle
//!   gives about 100 ms).
//!
//! Each is run with the connection tasks on the actix arbiter (everything on one thread) and on
//! a 2-worker multi-thread tokio runtime (the sender and the reactor stay on the arbiter, as a
//! node's reactors would). After criterion's report, a side-by-side pass alternates each
//! measurement with the seal rate and prints medians and ratios.
//!
//! Run: `cargo bench --bench mconn`

// Benchmarks measure wall time, so they read the clock directly.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)] // Benchmark code: a failed unwrap aborts the run, which is right.

mod common;
use common::{FRAME_PLAIN, io_runtime, seal_frames};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use criterion::{Criterion, Throughput};
use tm2_p2p::NodeKey;
use tm2_p2p::actors::peer_conn::{PeerConn, PeerConnConfig, PeerHandle, PeerStopped};
use tm2_p2p::actors::reactor::{Delivery, Receive, ReceiveBatch};
use tm2_p2p::actors::secret_stream::SecretStream;
use tm2_p2p::mconn::{ChannelDescriptor, MConnConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::Notify;

const CHANNEL: u8 = 0x01;
const SMALL: usize = 256;
const LARGE: usize = 1 << 20;

/// What the counting reactor has seen; shared with the benchmark driver.
#[derive(Default)]
struct Tally {
    count: AtomicU64,
    bytes: AtomicU64,
    /// The driver waits for `count` to reach this.
    target: AtomicU64,
    reached: Notify,
    /// One-way latencies, when messages carry a send time.
    latencies: Mutex<Vec<Duration>>,
    /// Origin of the send times carried in latency messages.
    base: OnceLock<Instant>,
}

/// The reactor behind B: counts messages and bytes; for latency messages (first byte 1),
/// records now minus the send time in bytes 1..9.
struct Counter(Arc<Tally>);

impl Actor for Counter {
    type Context = Context<Self>;
}

impl Counter {
    fn count(&self, payload: &[u8]) {
        let t = &self.0;
        if payload.first() == Some(&1) {
            let base = *t.base.get().unwrap();
            let sent = u64::from_le_bytes(payload[1..9].try_into().unwrap());
            let latency = base.elapsed() - Duration::from_nanos(sent);
            t.latencies.lock().unwrap().push(latency);
        }
        t.bytes.fetch_add(payload.len() as u64, Ordering::Relaxed);
        let n = t.count.fetch_add(1, Ordering::AcqRel) + 1;
        if n == t.target.load(Ordering::Acquire) {
            t.reached.notify_one();
        }
    }
}

impl Handler<Receive> for Counter {
    type Result = ();

    fn handle(&mut self, msg: Receive, _: &mut Self::Context) {
        self.count(&msg.payload);
    }
}

impl Handler<ReceiveBatch> for Counter {
    type Result = ();

    fn handle(&mut self, msg: ReceiveBatch, _: &mut Self::Context) {
        for payload in &msg.payloads {
            self.count(payload);
        }
    }
}

/// Swallows the stop reports (nothing stops during a run).
struct Sink;

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<PeerStopped> for Sink {
    type Result = ();

    fn handle(&mut self, msg: PeerStopped, _: &mut Self::Context) {
        panic!("a connection ended during the benchmark: {:?}", msg.reason);
    }
}

/// One loopback connection: A's handle, and B's reactor tally.
struct Conn {
    a: PeerHandle,
    tally: Arc<Tally>,
    /// Keeps both actors' addresses (the connection lives as long as this).
    _actors: (Addr<PeerConn>, Addr<PeerConn>),
}

/// `batched`: B's reactor takes `ReceiveBatch` (`Delivery::batched`) instead of `Receive`.
async fn connect(io: Option<Handle>, batched: bool) -> Conn {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ka, kb) = (NodeKey::generate().unwrap(), NodeKey::generate().unwrap());
    let timeout = Duration::from_secs(10);
    let (sa, sb) = tokio::join!(
        async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            SecretStream::upgrade(tcp, &ka, timeout).await.unwrap()
        },
        async {
            let (tcp, _) = listener.accept().await.unwrap();
            SecretStream::upgrade(tcp, &kb, timeout).await.unwrap()
        }
    );
    let config = PeerConnConfig {
        mconn: MConnConfig {
            send_rate: 0,
            recv_rate: 0,
            ..MConnConfig::default()
        },
        ..PeerConnConfig::default()
    };
    let chan = ChannelDescriptor::new(CHANNEL).with_send_queue_capacity(1000);
    let tally = Arc::new(Tally::default());
    let _ = tally.base.set(Instant::now());
    let counter = Counter(tally.clone()).start();
    let counter = if batched {
        Delivery::batched(&counter)
    } else {
        counter.recipient::<Receive>().into()
    };
    let sink = Sink.start().recipient::<PeerStopped>();
    // A's own reactor never receives anything in these runs.
    let idle = Counter(Arc::new(Tally::default()))
        .start()
        .recipient::<Receive>();
    let (addr_a, a) = PeerConn::start(
        sa,
        config.clone(),
        vec![(chan, idle.into())],
        sink.clone(),
        io.clone(),
    )
    .unwrap();
    let (addr_b, _) = PeerConn::start(sb, config, vec![(chan, counter)], sink, io).unwrap();
    Conn {
        a,
        tally,
        _actors: (addr_a, addr_b),
    }
}

impl Conn {
    /// Sends `n` copies of `msg` (waiting for room when the queue is full) and waits until the
    /// reactor has them all; returns the time taken.
    async fn pump(&self, msg: &Bytes, n: u64) -> Duration {
        let start = Instant::now();
        let target = self.tally.count.load(Ordering::Acquire) + n;
        self.tally.target.store(target, Ordering::Release);
        for _ in 0..n {
            assert!(self.a.send(CHANNEL, msg.clone()).await);
        }
        self.wait_count(target).await;
        start.elapsed()
    }

    async fn wait_count(&self, target: u64) {
        while self.tally.count.load(Ordering::Acquire) < target {
            self.tally.reached.notified().await;
        }
    }

    /// Sends `n` latency messages one at a time on the idle connection; returns their
    /// one-way latencies, sorted.
    async fn latencies(&self, n: u64) -> Vec<Duration> {
        self.tally.latencies.lock().unwrap().clear();
        let base = *self.tally.base.get().unwrap();
        let mut msg = vec![0u8; SMALL];
        msg[0] = 1;
        for _ in 0..n {
            let target = self.tally.count.load(Ordering::Acquire) + 1;
            self.tally.target.store(target, Ordering::Release);
            let sent = base.elapsed().as_nanos() as u64;
            msg[1..9].copy_from_slice(&sent.to_le_bytes());
            assert!(self.a.try_send(CHANNEL, Bytes::copy_from_slice(&msg)));
            self.wait_count(target).await;
        }
        let mut l = std::mem::take(&mut *self.tally.latencies.lock().unwrap());
        l.sort();
        l
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The two places the connection tasks can run.
fn modes() -> [(&'static str, Option<Handle>); 2] {
    [("arbiter", None), ("io_runtime", Some(io_runtime()))]
}

/// The modes, each with per-message (`Receive`) and batched (`ReceiveBatch`) delivery.
fn delivery_modes() -> Vec<(String, Option<Handle>, bool)> {
    modes()
        .into_iter()
        .flat_map(|(mode, io)| {
            [
                (mode.to_string(), io.clone(), false),
                (format!("{mode}/batch"), io, true),
            ]
        })
        .collect()
}

fn benches(c: &mut Criterion, sys: &SystemRunner) {
    let small = Bytes::from(vec![0x5a; SMALL]);
    let large = Bytes::from(vec![0x5a; LARGE]);
    let mut g = c.benchmark_group("mconn");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Bytes(FRAME_PLAIN as u64));
    g.bench_function("seal_1028", |b| b.iter_custom(seal_frames));
    for (mode, io, batched) in delivery_modes() {
        let conn = sys.block_on(connect(io, batched));
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("msgs_256/{mode}"), |b| {
            b.iter_custom(|n| sys.block_on(conn.pump(&small, n)))
        });
        if batched {
            // Large messages are one per batch: nothing new to see.
            continue;
        }
        g.throughput(Throughput::Bytes(LARGE as u64));
        g.bench_function(format!("bytes_1mib/{mode}"), |b| {
            b.iter_custom(|n| sys.block_on(conn.pump(&large, n)))
        });
    }
    g.finish();
}

/// Side-by-side pass: per mode, alternates each measurement with the seal rate five times and
/// prints medians, so machine noise hits both alike.
fn ratios(sys: &SystemRunner) {
    const MSGS: u64 = 500_000;
    const LARGE_MSGS: u64 = 256;
    const SEAL: u64 = 200_000;
    let small = Bytes::from(vec![0x5a; SMALL]);
    let large = Bytes::from(vec![0x5a; LARGE]);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("\nside by side (median of 5 rounds; one loopback connection, rate limits off)");
    println!(
        "{:<17} {:>12} {:>8} {:>10} {:>10} {:>11} {:>9} {:>9}",
        "tasks on",
        "msgs/s 256B",
        "/500k",
        "MB/s 1MiB",
        "seal MB/s",
        "MB/s/seal",
        "p50 us",
        "p99 us"
    );
    for (mode, io, batched) in delivery_modes() {
        let conn = sys.block_on(connect(io, batched));
        // Warm up both paths once.
        sys.block_on(conn.pump(&small, 50_000));
        sys.block_on(conn.pump(&large, 16));
        let (mut msgs, mut bytes, mut seals, mut ratio) = (vec![], vec![], vec![], vec![]);
        for _ in 0..5 {
            let t = sys.block_on(conn.pump(&small, MSGS));
            msgs.push(MSGS as f64 / t.as_secs_f64());
            let seal = SEAL as f64 * FRAME_PLAIN as f64 / seal_frames(SEAL).as_secs_f64();
            let t = sys.block_on(conn.pump(&large, LARGE_MSGS));
            let rate = (LARGE_MSGS * LARGE as u64) as f64 / t.as_secs_f64();
            seals.push(seal);
            bytes.push(rate);
            ratio.push(rate / seal);
        }
        let lat = sys.block_on(conn.latencies(10_000));
        let m = median(&mut msgs);
        println!(
            "{mode:<17} {m:>12.0} {:>8.2} {:>10.0} {:>10.0} {:>11.2} {:>9.1} {:>9.1}",
            m / 500_000.0,
            median(&mut bytes) / 1e6,
            median(&mut seals) / 1e6,
            median(&mut ratio),
            percentile(&lat, 0.5).as_secs_f64() * 1e6,
            percentile(&lat, 0.99).as_secs_f64() * 1e6,
        );
    }
    println!("goals: msgs/s >= 500,000 (/500k >= 1); MB/s/seal >= 0.45; p99 < 1000 us");
}

fn main() {
    let sys = System::new();
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c, &sys);
    c.final_summary();
    if std::env::args().any(|a| a == "--bench") {
        ratios(&sys);
    }
}
