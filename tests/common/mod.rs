//! Shared harness of the test binaries that start nodes or processes: loopback configs, a test
//! node that subscribes to its events before acting, waits bounded by [`TIMEOUT`], a counting
//! reactor that checks per-peer sequence numbers, the process's RSS and open-file limit (from
//! [`sys`], which the benchmarks share), running a test of this binary in a child process, and
//! reading another program's output lines.
//!
//! Each test binary uses a different part of it.
#![allow(dead_code)]

mod sys;

use std::collections::HashMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use tm2_p2p::actors::clock;
use tm2_p2p::actors::transport::{self, Upgraded};
use tm2_p2p::{
    ChannelDescriptor, EventStream, NetAddress, Node, NodeInfo, NodeKey, P2pConfig, PeerAdded,
    PeerId, PeerRemoved, Receive, RegisterReactor, SwitchBuilder, SwitchEvent,
};
use tokio::net::{TcpSocket, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{Notify, mpsc};

#[allow(unused_imports)] // Each binary uses some of them.
pub(crate) use sys::{heap_in_use, io_runtime, mib, raise_fd_limit, rss};

/// How long any single wait for an event may take before the test fails. Generous: the
/// machine is shared and debug builds are slow.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(30);

/// The network of the nodes [`TestNode::spawn`] and [`TestNode::spawn_with`] start.
pub(crate) const NETWORK: &str = "faults";

/// A node config for loopback tests: port 0 on 127.0.0.1 and private addresses allowed; all
/// else at its default (peer exchange on, default rate limits).
pub(crate) fn loopback_config() -> P2pConfig {
    P2pConfig {
        laddr: "127.0.0.1:0".parse().unwrap(),
        allow_non_routable: true,
        ..P2pConfig::default()
    }
}

/// A [`loopback_config`] with no peer exchange (the fault tests want only the events they
/// cause) and no rate limits.
pub(crate) fn config() -> P2pConfig {
    P2pConfig {
        pex: false,
        send_rate: 0,
        recv_rate: 0,
        ..loopback_config()
    }
}

/// Awaits `fut`, a channel's `recv`, up to [`TIMEOUT`]; panics naming `what` if it times out
/// or the channel is closed.
pub(crate) async fn recv_within<T>(what: &str, fut: impl Future<Output = Option<T>>) -> T {
    tokio::time::timeout(TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("channel closed while waiting for {what}"))
}

/// Waits until `cond` holds, checking it every `every`, up to [`TIMEOUT`]: for states no event
/// announces (an actor's mailbox closing, "at least 4 peers").
pub(crate) async fn wait_until<F: Future<Output = bool>>(
    what: &str,
    every: Duration,
    mut cond: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(every).await;
    }
}

/// CPU time (user + system) of the calling thread so far, from /proc/thread-self/stat. Under
/// `actix::test` a test's whole actor system runs on its thread, so this is the test's node
/// work, not that of the other tests of the binary running beside it.
pub(crate) fn thread_cpu_time() -> Duration {
    cpu_time("/proc/thread-self/stat")
}

/// CPU time (user + system) of this process so far, from /proc/self/stat.
pub(crate) fn process_cpu_time() -> Duration {
    cpu_time("/proc/self/stat")
}

/// Fields 14 and 15 (utime, stime) of a /proc `stat` file, in clock ticks of 1/100 s (USER_HZ,
/// fixed at 100 by the Linux /proc ABI).
fn cpu_time(stat: &str) -> Duration {
    let stat = std::fs::read_to_string(stat).unwrap();
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// A loopback address nobody listens on (a port bound then released), with a random id. Tests
/// run in parallel, so another test's node may take the port meanwhile; dialing
/// it then fails too (the id does not match).
pub(crate) fn closed_address() -> NetAddress {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    NetAddress::from_socket_addr(NodeKey::generate().unwrap().id(), port).unwrap()
}

/// A raw TCP connection to `to` from `source` (any port): for connections that never
/// handshake, from an address of the test's choosing in 127.0.0.0/8.
pub(crate) async fn connect_from(source: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(IpAddr::from(source), 0))
        .unwrap();
    socket.connect(to).await.unwrap()
}

/// Serialises the heavy tests of one binary: they measure throughput, memory and close
/// latencies, which tests running beside them on a 2-core machine would distort. Poisoning is
/// ignored: a failed test must not fail the others.
pub(crate) fn heavy_lock() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---- the counting reactor ----

/// What a [`Counter`] has seen; shared with the test.
#[derive(Default)]
pub(crate) struct Tally {
    /// Messages received.
    pub(crate) messages: AtomicU64,
    /// Payload bytes received.
    pub(crate) bytes: AtomicU64,
    /// Messages whose leading sequence number was not the next one expected from that peer.
    pub(crate) out_of_order: AtomicU64,
    /// Next expected sequence number per peer (with `check_seq`).
    next: Mutex<HashMap<PeerId, u64>>,
    /// Notified after every message.
    pub(crate) changed: Notify,
}

impl Tally {
    pub(crate) fn messages(&self) -> u64 {
        self.messages.load(Ordering::Acquire)
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// Messages received from `peer` so far (with `check_seq`: the next expected number).
    pub(crate) fn from(&self, peer: &PeerId) -> u64 {
        *self
            .next
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(peer)
            .unwrap_or(&0)
    }

    /// Waits until `cond` holds, up to [`TIMEOUT`].
    pub(crate) async fn wait(&self, what: &str, mut cond: impl FnMut(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if cond(self) {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!("timed out waiting for {what}");
            }
        }
    }
}

/// A reactor that counts what it receives. With `check_seq`, every payload starts with a
/// little-endian u64 sequence number, counted from 0 per peer; numbers out of order are
/// counted in [`Tally::out_of_order`]. A new connection from the same peer starts from 0.
pub(crate) struct Counter {
    pub(crate) tally: Arc<Tally>,
    pub(crate) check_seq: bool,
}

impl Actor for Counter {
    type Context = Context<Self>;
}

impl Handler<PeerAdded> for Counter {
    type Result = ();
    fn handle(&mut self, msg: PeerAdded, _: &mut Self::Context) {
        self.tally
            .next
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(msg.peer.id, 0);
    }
}

impl Handler<PeerRemoved> for Counter {
    type Result = ();
    fn handle(&mut self, _: PeerRemoved, _: &mut Self::Context) {}
}

impl Handler<Receive> for Counter {
    type Result = ();
    fn handle(&mut self, msg: Receive, _: &mut Self::Context) {
        if self.check_seq {
            let mut next = self
                .tally
                .next
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let expected = next.entry(msg.peer).or_insert(0);
            if seq_of(&msg.payload) != Some(*expected) {
                self.tally.out_of_order.fetch_add(1, Ordering::AcqRel);
            }
            *expected += 1;
        }
        self.tally
            .bytes
            .fetch_add(msg.payload.len() as u64, Ordering::AcqRel);
        self.tally.messages.fetch_add(1, Ordering::AcqRel);
        self.tally.changed.notify_waiters();
    }
}

/// The sequence number at the start of a payload.
pub(crate) fn seq_of(payload: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(payload.get(..8)?.try_into().ok()?))
}

/// A payload of `len` bytes (at least 8) starting with `seq`.
pub(crate) fn numbered(seq: u64, len: usize) -> Bytes {
    let mut v = vec![0x5a; len.max(8)];
    v[..8].copy_from_slice(&seq.to_le_bytes());
    Bytes::from(v)
}

/// Registers a [`Counter`] on `channel` (send queue of `queue` messages); returns its tally.
pub(crate) async fn counter(node: &Node, channel: u8, queue: usize, check_seq: bool) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let addr = Counter {
        tally: tally.clone(),
        check_seq,
    }
    .start();
    let desc = ChannelDescriptor::new(channel).with_send_queue_capacity(queue);
    node.switch()
        .send(RegisterReactor::new("counter", vec![desc], &addr))
        .await
        .unwrap()
        .unwrap();
    tally
}

// ---- forwarding to the test ----

/// An actor that forwards every `M` it gets to a bounded channel; what does not fit is dropped
/// (a test reads only the first few).
pub(crate) struct Forward<M>(pub(crate) mpsc::Sender<M>);

impl<M: Unpin + 'static> Actor for Forward<M> {
    type Context = Context<Self>;
}

impl<M: Message<Result = ()> + Send + Unpin + 'static> Handler<M> for Forward<M> {
    type Result = ();
    fn handle(&mut self, msg: M, _: &mut Self::Context) {
        let _ = self.0.try_send(msg);
    }
}

// ---- a node and its events ----

/// A node with a subscription to all its events, taken before it did anything.
pub(crate) struct TestNode {
    pub(crate) node: Node,
    pub(crate) events: EventStream,
}

impl TestNode {
    /// Spawns a node on `network` with `key` (its connection tasks on `io`, if given) and
    /// subscribes to its events.
    pub(crate) async fn start(
        config: P2pConfig,
        network: &str,
        key: NodeKey,
        io: Option<Handle>,
    ) -> Self {
        let mut builder = SwitchBuilder::new(config, key).network(network);
        if let Some(io) = io {
            builder = builder.io_runtime(io);
        }
        // Subscribed before the node runs: nothing is missed.
        let events = builder.subscribe(|_| true);
        let node = builder.spawn().await.unwrap();
        Self { node, events }
    }

    /// Spawns a node on [`NETWORK`] with `key` (on `io`, if given) and subscribes to its events.
    pub(crate) async fn spawn_with(config: P2pConfig, key: NodeKey, io: Option<Handle>) -> Self {
        Self::start(config, NETWORK, key, io).await
    }

    /// Spawns a node on [`NETWORK`] with a new key.
    pub(crate) async fn spawn(config: P2pConfig) -> Self {
        Self::spawn_with(config, NodeKey::generate().unwrap(), None).await
    }

    /// Spawns a node on `network` with a new key.
    pub(crate) async fn spawn_in(config: P2pConfig, network: &str) -> Self {
        Self::start(config, network, NodeKey::generate().unwrap(), None).await
    }

    pub(crate) fn id(&self) -> PeerId {
        self.node.net_address().id()
    }

    pub(crate) fn address(&self) -> NetAddress {
        self.node.net_address()
    }

    /// The next event, up to [`TIMEOUT`].
    pub(crate) async fn next(&mut self, what: &str) -> SwitchEvent {
        recv_within(what, self.events.recv()).await
    }

    /// Skips events until one matches `pred`, up to [`TIMEOUT`] in all.
    pub(crate) async fn wait_for(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&SwitchEvent) -> bool,
    ) -> SwitchEvent {
        tokio::time::timeout(TIMEOUT, async {
            loop {
                let e = self.events.recv().await.expect("node gone");
                if pred(&e) {
                    return e;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    pub(crate) async fn connected_to(&mut self, peer: PeerId) {
        self.wait_for(
            "PeerConnected",
            |e| matches!(e, SwitchEvent::PeerConnected { peer: p, .. } if *p == peer),
        )
        .await;
    }

    pub(crate) async fn disconnected_from(&mut self, peer: PeerId) {
        self.wait_for(
            "PeerDisconnected",
            |e| matches!(e, SwitchEvent::PeerDisconnected { peer: p, .. } if *p == peer),
        )
        .await;
    }

    /// Skips events until a `DialFailed`, up to [`TIMEOUT`]; returns it.
    pub(crate) async fn dial_failed(&mut self) -> SwitchEvent {
        self.wait_for("DialFailed", |e| {
            matches!(e, SwitchEvent::DialFailed { .. })
        })
        .await
    }

    /// Skips events until an `InboundRejected`, up to [`TIMEOUT`]; returns it.
    pub(crate) async fn inbound_rejected(&mut self) -> SwitchEvent {
        self.wait_for("InboundRejected", |e| {
            matches!(e, SwitchEvent::InboundRejected { .. })
        })
        .await
    }

    /// Dials `addr` (fire and forget; the outcome is an event).
    pub(crate) fn dial(&self, addr: NetAddress) {
        #[allow(clippy::disallowed_methods)] // Test: a fire-and-forget command.
        self.node.switch().do_send(tm2_p2p::DialPeers(vec![addr]));
    }
}

/// Dials `to` as a bare peer with a new key and no Switch of its own (its advertised listen
/// address, port 1, is never dialed), on `network` with `channels`: the handshake and the
/// NodeInfo exchange only. Returns the key and the connection, which the test drives itself.
pub(crate) async fn raw_dial(
    to: &NetAddress,
    network: &str,
    channels: Vec<u8>,
) -> (NodeKey, Upgraded) {
    let key = NodeKey::generate().unwrap();
    let addr: NetAddress = format!("{}@127.0.0.1:1", key.id()).parse().unwrap();
    let info = NodeInfo::new(addr, network, channels);
    let up = transport::dial(to, &key, &info, TIMEOUT, TIMEOUT)
        .await
        .unwrap();
    (key, up)
}

/// Connects `a` to `b` (a dials) and waits until both report it.
pub(crate) async fn connect(a: &mut TestNode, b: &mut TestNode) {
    a.dial(b.address());
    let (ida, idb) = (a.id(), b.id());
    a.connected_to(idb).await;
    b.connected_to(ida).await;
}

// ---- tests in a child process ----

/// The environment variable that tells a test of this binary that it runs as a child process
/// (its value says which role); without it, such tests return at once.
pub(crate) const CHILD_ROLE: &str = "TM2_P2P_TEST_CHILD_ROLE";

/// The role this process was started with, if it is a child.
pub(crate) fn child_role() -> Option<String> {
    std::env::var(CHILD_ROLE).ok()
}

/// A command running test `name` of this very binary alone, in role `role` (the re-exec
/// pattern: no other binary is needed).
pub(crate) fn child_command(name: &str, role: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        name,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ROLE, role);
    cmd
}

/// Runs test `name` of this binary alone in a child process (role `role`), prints its output
/// and fails if it failed. For measurements that other tests of this process would distort
/// (RSS).
pub(crate) fn run_isolated(name: &str, role: &str) {
    let out = child_command(name, role)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("---- child process {name} ----\n{stdout}{stderr}");
    assert!(out.status.success(), "child {name} failed: {}", out.status);
}

/// A child process whose stdout lines are read by a thread: lines with `PROGRESS <n>` update
/// [`progress`](Self::progress), other lines are queued for [`line`](Self::line). Killed
/// (SIGKILL) and reaped when dropped, so a failing test leaves no process behind; the child
/// also exits by itself when its stdin (a pipe from us) closes, in case we die first.
pub(crate) struct ChildProcess {
    pub(crate) child: Child,
    /// The last `PROGRESS` value the child printed.
    pub(crate) progress: Arc<AtomicU64>,
    /// Other lines; bounded (a line that does not fit is dropped: only the first few matter).
    lines: mpsc::Receiver<String>,
}

impl ChildProcess {
    pub(crate) fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let progress = Arc::new(AtomicU64::new(0));
        let (tx, lines) = mpsc::channel(256);
        let p = progress.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(at) = line.find("PROGRESS ") {
                    if let Ok(n) = line[at + "PROGRESS ".len()..].trim().parse() {
                        p.store(n, Ordering::Release);
                    }
                } else {
                    let _ = tx.try_send(line);
                }
            }
        });
        Self {
            child,
            progress,
            lines,
        }
    }

    /// Waits for a line starting with `prefix` and returns the rest of it.
    pub(crate) async fn line(&mut self, prefix: &str) -> String {
        tokio::time::timeout(TIMEOUT, async {
            loop {
                let line = self.lines.recv().await.expect("child closed its stdout");
                // Anywhere in the line: libtest prints "test NAME ... " without a newline
                // before the test's own output.
                if let Some(at) = line.find(prefix) {
                    return line[at + prefix.len()..].trim().to_owned();
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for the child to print {prefix:?}"))
    }

    pub(crate) fn progress(&self) -> u64 {
        self.progress.load(Ordering::Acquire)
    }

    /// Kills the child with SIGKILL and reaps it.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// In a child process: exits the process when stdin reaches EOF (the parent died or dropped
/// its handle), so no child outlives its test.
pub(crate) fn exit_when_parent_goes() {
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        std::process::exit(0);
    });
}

// ---- another program's output ----

/// Forwards a pipe's lines (a child's stdout or stderr) to a channel from a thread; the channel
/// disconnects at the end of the output.
pub(crate) fn lines(
    pipe: impl std::io::Read + Send + 'static,
) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits up to [`TIMEOUT`] for a line `want` accepts, dropping the others; panics with `what`
/// and every line seen on timeout or end of output.
pub(crate) fn wait_line(
    lines: &std::sync::mpsc::Receiver<String>,
    what: &str,
    want: impl Fn(&str) -> bool,
) -> String {
    let deadline = clock::now() + TIMEOUT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(clock::now());
        match lines.recv_timeout(left) {
            Ok(line) if want(&line) => return line,
            Ok(line) => seen.push(line),
            Err(e) => panic!("no {what} ({e:?}); output so far: {seen:#?}"),
        }
    }
}

/// Sends SIGINT (Ctrl-C) to `child`, which must not have been reaped yet.
pub(crate) fn interrupt(child: &Child) {
    // SAFETY: kill(2) on our own child's pid, not reaped yet, so not reused.
    unsafe {
        libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGINT);
    }
}
