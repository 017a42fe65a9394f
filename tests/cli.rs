//! The `tm2p2p` binary as a user runs it: `init`, `show-id`, and `node` until Ctrl-C.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod common;

use std::process::{Command, Stdio};
use std::sync::mpsc;

use common::{TIMEOUT, interrupt, lines, wait_line};

const BIN: &str = env!("CARGO_BIN_EXE_tm2p2p");

fn tm2p2p(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn init_then_show_id_then_a_node_that_stops_cleanly_on_ctrl_c() {
    let home = tempfile::tempdir().unwrap();
    let home_arg = home.path().to_str().unwrap();
    let out = tm2p2p(&["init", "--home", home_arg]);
    assert!(out.status.success(), "{out:?}");
    let id = tm2p2p(&["show-id", "--home", home_arg]);
    assert!(id.status.success(), "{id:?}");
    let id = String::from_utf8(id.stdout).unwrap().trim().to_owned();
    assert!(id.starts_with("g1") && id.len() == 40, "{id}");

    // Listen on a free loopback port instead of the default 0.0.0.0:26656.
    let config_path = home.path().join("config.toml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    let config = config
        .replace(
            "laddr = \"tcp://0.0.0.0:26656\"",
            "laddr = \"tcp://127.0.0.1:0\"",
        )
        .replace("log_level = \"info\"", "log_level = \"warning\"");
    std::fs::write(&config_path, config).unwrap();

    // No --log-level: the config's `warning` applies, so the info lines are not written.
    let mut child = Command::new(BIN)
        .args(["node", "--home", home_arg])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
        text
    });
    let rx = lines(child.stdout.take().unwrap());
    let listening = rx.recv_timeout(TIMEOUT).expect("node printed nothing");
    assert!(
        listening.starts_with(&format!("listening as {id}@127.0.0.1:")),
        "{listening}"
    );

    // Ctrl-C: the node shuts down gracefully and exits 0.
    interrupt(&child);
    let stopped = rx
        .recv_timeout(TIMEOUT)
        .expect("node did not report stopping");
    assert_eq!(stopped, "stopped");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let stderr = stderr.join().unwrap();
    assert!(
        !stderr.contains("node started"),
        "log_level = \"warning\" in config.toml was not applied:\n{stderr}"
    );
}

#[test]
fn node_without_a_home_says_how_to_create_one() {
    let home = tempfile::tempdir().unwrap();
    let out = tm2p2p(&["node", "--home", home.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("tm2p2p init"), "{err}");
}

#[test]
fn a_small_testnet_converges_delivers_everything_and_prints_the_table() {
    let out = tm2p2p(&["testnet", "--nodes", "4", "--messages", "50"]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // 50 messages, each delivered at the 3 nodes that did not publish it.
    for row in [
        "nodes                 4 (+1 seed)",
        "outbound peers        at most 10 a node",
        "peak memory",
        "time to converge",
        "peers per node        min ",
        "messages delivered    150 of 150",
        "latency               p50 ",
        "bytes sent",
        "lost                  0",
    ] {
        assert!(stdout.contains(row), "{row:?} missing from\n{stdout}");
    }
}

#[test]
fn a_testnet_that_cannot_converge_fails_with_one_line() {
    // Without peer exchange the nodes never learn of each other, whatever the timing.
    let out = tm2p2p(&[
        "testnet",
        "--nodes",
        "3",
        "--timeout",
        "1",
        "--no-discovery",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: the network did not converge within 1s"),
        "{stderr}"
    );
}

#[test]
fn a_bad_config_value_is_named_and_fails_without_a_panic() {
    let home = tempfile::tempdir().unwrap();
    let home_arg = home.path().to_str().unwrap();
    assert!(tm2p2p(&["init", "--home", home_arg]).status.success());
    let config_path = home.path().join("config.toml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    for (bad, field) in [
        ("max_num_outbound_peers = \"ten\"", "max_num_outbound_peers"),
        ("pex_interval = \"0s\"", "pex_interval"),
    ] {
        let key = bad.split(' ').next().unwrap();
        let line = config
            .lines()
            .find(|l| l.starts_with(&format!("{key} =")))
            .unwrap();
        std::fs::write(&config_path, config.replace(line, bad)).unwrap();
        let out = tm2p2p(&["node", "--home", home_arg]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert!(stderr.contains(field), "{field} not named in {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// A running `tm2p2p node` whose stdout and stderr lines arrive on channels.
struct RunningNode {
    child: std::process::Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl RunningNode {
    /// Inits a home on a free loopback port with `moniker` and `persistent_peers`, and starts
    /// a node there with `extra` arguments.
    fn start(home: &std::path::Path, moniker: &str, persistent: &str, extra: &[&str]) -> Self {
        Self::start_in(std::path::Path::new("."), home, moniker, persistent, extra)
    }

    /// [`start`](Self::start) with both commands run in `cwd`, `home` as given (relative to
    /// `cwd` when relative).
    fn start_in(
        cwd: &std::path::Path,
        home: &std::path::Path,
        moniker: &str,
        persistent: &str,
        extra: &[&str],
    ) -> Self {
        Self::start_with_seeds(cwd, home, moniker, persistent, "", extra)
    }

    /// [`start_in`](Self::start_in) with `seeds` (TOML list items) too.
    fn start_with_seeds(
        cwd: &std::path::Path,
        home: &std::path::Path,
        moniker: &str,
        persistent: &str,
        seeds: &str,
        extra: &[&str],
    ) -> Self {
        let home_arg = home.to_str().unwrap();
        let init = Command::new(BIN)
            .args(["init", "--home", home_arg])
            .current_dir(cwd)
            .output()
            .unwrap();
        assert!(init.status.success(), "{init:?}");
        let path = cwd.join(home).join("config.toml");
        let config = std::fs::read_to_string(&path)
            .unwrap()
            .replace("tcp://0.0.0.0:26656", "tcp://127.0.0.1:0")
            .replace(
                "moniker = \"anonymous\"",
                &format!("moniker = \"{moniker}\""),
            )
            .replace("allow_non_routable = false", "allow_non_routable = true")
            .replace(
                "persistent_peers = []",
                &format!("persistent_peers = [{persistent}]"),
            )
            .replace("seeds = []", &format!("seeds = [{seeds}]"));
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(BIN)
            .args(["node", "--home", home_arg])
            .args(extra)
            .current_dir(cwd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = lines(child.stdout.take().unwrap());
        let stderr = lines(child.stderr.take().unwrap());
        Self {
            child,
            stdout,
            stderr,
        }
    }

    /// Waits for a stderr line containing every one of `parts`.
    fn wait_log(&self, parts: &[&str]) -> String {
        wait_line(&self.stderr, &format!("log line with {parts:?}"), |l| {
            parts.iter().all(|p| l.contains(p))
        })
    }

    /// Ctrl-C, then waits for exit 0.
    fn stop(mut self) -> mpsc::Receiver<String> {
        interrupt(&self.child);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status:?}");
        self.stderr
    }
}

#[test]
fn two_nodes_gossip_what_one_publishes_and_log_each_delivery() {
    let (home_a, home_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = RunningNode::start(home_a.path(), "alice", "", &["--publish-every", "100ms"]);
    let listening = a.stdout.recv_timeout(TIMEOUT).unwrap();
    let address = listening.strip_prefix("listening as ").unwrap().to_owned();
    let a_id = address.split('@').next().unwrap().to_owned();
    let b = RunningNode::start(home_b.path(), "bob", &format!("\"{address}\""), &[]);

    // Bob delivers Alice's messages, each logged with its id, sender and size.
    let line = b.wait_log(&["gossip delivered", &format!("from: {a_id}"), "size: "]);
    assert!(line.contains("id: "), "{line}");
    a.wait_log(&["gossip delivered", "from: self"]);

    let a_rest: Vec<String> = a.stop().try_iter().collect();
    assert!(
        a_rest.iter().any(|l| l.contains("gossip totals")),
        "{a_rest:?}"
    );
    let b_rest: Vec<String> = b.stop().try_iter().collect();
    assert!(
        b_rest.iter().any(|l| l.contains("gossip totals")),
        "{b_rest:?}"
    );
}

#[test]
fn trace_logs_are_compiled_in_and_every_line_carries_a_dated_utc_timestamp() {
    // slog drops trace records at compile time unless told otherwise (and debug ones in
    // release builds): `--log-level trace` must show the gossip reactor's trace lines.
    let home = tempfile::tempdir().unwrap();
    let node = RunningNode::start(
        home.path(),
        "tracer",
        "",
        &["--publish-every", "50ms", "--log-level", "trace"],
    );
    let line = node.wait_log(&["gossip published"]);
    // `2026-12-05T17:44:44.710Z TRCE gossip published, ...`: a full RFC 3339 date in UTC.
    let stamp = line.split_whitespace().next().unwrap();
    let bytes = stamp.as_bytes();
    assert!(
        stamp.len() == 24
            && bytes[4] == b'-'
            && bytes[7] == b'-'
            && bytes[10] == b'T'
            && stamp.ends_with('Z')
            && stamp[..4].parse::<u32>().is_ok_and(|y| y >= 2024),
        "{line}"
    );
    node.stop();
}

#[test]
fn an_operator_sees_an_unreachable_persistent_peer_and_a_refused_network_at_the_default_level() {
    // Nothing listens at the persistent peer's port.
    let ghost = common::closed_address().to_string();
    let (home_a, home_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = RunningNode::start(home_a.path(), "alice", &format!("\"{ghost}\""), &[]);
    let line = a.wait_log(&["WARN", "persistent peer unreachable", "next_retry_in: "]);
    assert!(line.contains(&ghost), "{line}");
    let listening = a.stdout.recv_timeout(TIMEOUT).unwrap();
    let address = listening.strip_prefix("listening as ").unwrap().to_owned();

    // A node of another network dials Alice: both say why, at info.
    let b = RunningNode::start(
        home_b.path(),
        "bob",
        &format!("\"{address}\""),
        &["--network", "elsewhere"],
    );
    let refused = a.wait_log(&["INFO", "inbound connection refused", "network"]);
    assert!(refused.contains("elsewhere"), "{refused}");
    b.wait_log(&["persistent peer unreachable", "network"]);
    a.stop();
    b.stop();
}

#[test]
fn a_node_with_a_relative_home_keeps_its_address_book_in_that_home() {
    // As the README's quick start: `--home ./node1` from another directory than ours. The
    // book went to node1/node1/config/addrbook.json (the home joined twice).
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let a = RunningNode::start_in(cwd, "./node1".as_ref(), "alice", "", &[]);
    let listening = a.stdout.recv_timeout(TIMEOUT).unwrap();
    let address = listening.strip_prefix("listening as ").unwrap().to_owned();
    let a_id = address.split('@').next().unwrap().to_owned();
    let b = RunningNode::start_in(cwd, "node2".as_ref(), "bob", &format!("\"{address}\""), &[]);
    // Listening is printed once Ctrl-C is handled.
    b.stdout.recv_timeout(TIMEOUT).unwrap();
    b.wait_log(&["peer connected", &a_id]);
    a.wait_log(&["peer connected"]);
    // Ctrl-C saves the books.
    b.stop();
    a.stop();
    for home in ["node1", "node2"] {
        let book = cwd.join(home).join("config/addrbook.json");
        assert!(book.is_file(), "no book at {}", book.display());
        assert!(!cwd.join(home).join(home).exists(), "{home} joined twice");
    }
    let book = std::fs::read_to_string(cwd.join("node2/config/addrbook.json")).unwrap();
    assert!(book.contains(&a_id), "{book}");

    // Restarted, bob finds it there.
    let b = RunningNode::start_in(cwd, "node2".as_ref(), "bob", "", &[]);
    let line = b.wait_log(&["address book loaded", "entries: 1"]);
    b.stdout.recv_timeout(TIMEOUT).unwrap();
    let expected = cwd.join("node2/config/addrbook.json");
    assert!(line.contains(expected.to_str().unwrap()), "{line}");
    b.stop();
}

#[test]
fn the_readme_walkthrough_a_third_node_that_knows_only_a_seed_finds_the_second() {
    // README, "Two nodes" then "A node listed in seeds": node1 alone; node2 keeps node1 as a
    // persistent peer; node3 lists node1 as a seed. Every config has allow_non_routable = true
    // (loopback addresses are shared only then), as the README says for one machine.
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let node1 = RunningNode::start_in(cwd, "./node1".as_ref(), "node1", "", &[]);
    let address1 = node1.stdout.recv_timeout(TIMEOUT).unwrap();
    let address1 = address1.strip_prefix("listening as ").unwrap().to_owned();
    let node2 = RunningNode::start_in(
        cwd,
        "./node2".as_ref(),
        "node2",
        &format!("\"{address1}\""),
        &[],
    );
    let address2 = node2.stdout.recv_timeout(TIMEOUT).unwrap();
    let id2 = address2
        .strip_prefix("listening as ")
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    node2.wait_log(&["peer connected"]);
    let node3 = RunningNode::start_with_seeds(
        cwd,
        "./node3".as_ref(),
        "node3",
        "",
        &format!("\"{address1}\""),
        &[],
    );
    // node3 learns node2 from the seed and connects to it.
    node3.wait_log(&["peer connected", &id2]);
    node3.stop();
    node2.stop();
    node1.stop();
}
