//! Shared harness of the fault, soak and metrics tests: loopback configs, a test node that subscribes to
//! its events before acting, a counting reactor that checks per-peer sequence numbers, the
//! process's RSS, the open-file limit, and running a test of this binary in a child process.
//!
//! Each test binary uses a different part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use tm2_p2p::{
    ChannelDescriptor, EventStream, NetAddress, Node, NodeKey, P2pConfig, PeerAdded, PeerId,
    PeerRemoved, Receive, RegisterReactor, SwitchBuilder, SwitchEvent,
};
use tokio::runtime::{Handle, Runtime};
use tokio::sync::{Notify, mpsc};

/// How long any single wait for an event may take before the test fails. Generous: the
/// machine is shared and debug builds are slow.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(30);

/// A node config for loopback tests: port 0, private addresses allowed, no peer exchange (the
/// fault tests want only the events they cause), no rate limits.
pub(crate) fn config() -> P2pConfig {
    P2pConfig {
        laddr: "127.0.0.1:0".parse().unwrap(),
        allow_non_routable: true,
        pex: false,
        send_rate: 0,
        recv_rate: 0,
        ..P2pConfig::default()
    }
}

/// A multi-thread runtime for connection tasks, shared by the tests of a binary and never
/// dropped (dropping a runtime inside another one's task panics).
pub(crate) fn io_runtime() -> Handle {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
    .handle()
    .clone()
}

/// Serialises the heavy tests of one binary: they measure throughput, memory and close
/// latencies, which tests running beside them on a 2-core machine would distort. Poisoning is
/// ignored: a failed test must not fail the others.
pub(crate) fn heavy_lock() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Resident set size of this process, in bytes (`VmRSS` of /proc/self/status).
pub(crate) fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Raises the soft open-file limit to the hard limit (a thousand connections need two
/// thousand descriptors in one process: both ends are here).
pub(crate) fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit get a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// `MiB` as bytes, for printing.
pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
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

// ---- a node and its events ----

/// A node with a subscription to all its events, taken before it did anything.
pub(crate) struct TestNode {
    pub(crate) node: Node,
    pub(crate) events: EventStream,
}

impl TestNode {
    /// Spawns a node with `key` (on `io`, if given) and subscribes to its events.
    pub(crate) async fn spawn_with(config: P2pConfig, key: NodeKey, io: Option<Handle>) -> Self {
        let mut builder = SwitchBuilder::new(config, key).network("faults");
        if let Some(io) = io {
            builder = builder.io_runtime(io);
        }
        let node = builder.spawn().await.unwrap();
        // Actors run only when this task awaits: subscribing now misses nothing.
        let events = node.subscribe(|_| true);
        Self { node, events }
    }

    pub(crate) async fn spawn(config: P2pConfig) -> Self {
        Self::spawn_with(config, NodeKey::generate().unwrap(), None).await
    }

    pub(crate) fn id(&self) -> PeerId {
        self.node.net_address().id()
    }

    pub(crate) fn address(&self) -> NetAddress {
        self.node.net_address()
    }

    /// The next event, up to [`TIMEOUT`].
    pub(crate) async fn next(&mut self, what: &str) -> SwitchEvent {
        tokio::time::timeout(TIMEOUT, self.events.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("node gone")
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

    /// Dials `addr` (fire and forget; the outcome is an event).
    pub(crate) fn dial(&self, addr: NetAddress) {
        #[allow(clippy::disallowed_methods)] // Test: a fire-and-forget command.
        self.node.switch().do_send(tm2_p2p::DialPeers(vec![addr]));
    }
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

/// Bytes the allocator has handed out and not got back (glibc's `mallinfo2`: `uordblks` plus
/// `hblkhd`, the mmapped blocks), or `None` where glibc is not the allocator. Unlike RSS it
/// does not count freed memory the allocator keeps, so it tells live growth from
/// fragmentation.
pub(crate) fn heap_in_use() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no arguments and returns a plain struct.
        let info = unsafe { libc::mallinfo2() };
        Some((info.uordblks + info.hblkhd) as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}
