//! The examples run as a user runs them: `custom_reactor` to completion, and two `chat`
//! processes that talk to each other through their stdin and stdout.
//!
//! `cargo test` builds the examples, but `cargo test --test examples` does not, and an example
//! binary left from an earlier build may be stale; so the test asks cargo to build them first
//! (a no-op when they are up to date) and runs the binaries cargo reports.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use common::{TIMEOUT, interrupt, lines, wait_line};
use tm2_p2p::actors::clock;

/// For cargo to build the examples (slow on a busy machine).
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

/// The paths of the example binaries, built once per test run.
struct Examples {
    chat: PathBuf,
    custom_reactor: PathBuf,
}

fn examples() -> &'static Examples {
    static EXAMPLES: OnceLock<Examples> = OnceLock::new();
    EXAMPLES.get_or_init(build_examples)
}

/// Builds both examples with the profile this test was built with and returns the
/// executables cargo reports (so a custom target dir or layout does not matter).
fn build_examples() -> Examples {
    let mut cargo = Command::new(env!("CARGO"));
    cargo.args([
        "build",
        "--quiet",
        "--message-format=json",
        "--manifest-path",
        concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
        "--example",
        "chat",
        "--example",
        "custom_reactor",
    ]);
    if !cfg!(debug_assertions) {
        cargo.arg("--release");
    }
    // Cargo describes this package to the test through the environment (CARGO_PKG_NAME, ...).
    // Build scripts watch some of those variables (ring's does), so a nested build that
    // inherited them would rebuild dependencies, and the next plain build would rebuild them
    // back. The nested build gets the environment the user gave cargo.
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let set_by_cargo = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_EXE_"]
            .iter()
            .any(|prefix| key.starts_with(prefix))
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&key);
        if set_by_cargo {
            cargo.env_remove(key);
        }
    }
    let mut child = Guard(
        cargo
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let lines = read_lines(&mut child);
    let mut chat = None;
    let mut custom_reactor = None;
    let deadline = clock::now() + BUILD_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(clock::now());
        let line = match lines.recv_timeout(left) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("cargo build did not finish"),
        };
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let (Some(name), Some(exe)) = (msg["target"]["name"].as_str(), msg["executable"].as_str())
        else {
            continue;
        };
        match name {
            "chat" => chat = Some(PathBuf::from(exe)),
            "custom_reactor" => custom_reactor = Some(PathBuf::from(exe)),
            _ => {}
        }
    }
    let status = child.0.wait().unwrap();
    assert!(status.success(), "cargo build --examples failed: {status}");
    Examples {
        chat: chat.expect("cargo reported no chat executable"),
        custom_reactor: custom_reactor.expect("cargo reported no custom_reactor executable"),
    }
}

/// A child process killed when the test ends, passed or not.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The child's stdout, line by line, from a reader thread; disconnects at end of output.
fn read_lines(child: &mut Guard) -> Receiver<String> {
    lines(child.0.stdout.take().unwrap())
}

/// Waits for the process to exit, checks it exited 0 and returns the lines it printed since
/// `lines` was last read.
fn exits_cleanly(mut child: Guard, lines: &Receiver<String>, name: &str) -> Vec<String> {
    // Its stdout closes when it exits.
    let deadline = clock::now() + TIMEOUT;
    let mut rest = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(clock::now());
        match lines.recv_timeout(left) {
            Ok(line) => rest.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("{name} did not exit: {rest:#?}"),
        }
    }
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{name} exited with {status}: {rest:#?}");
    rest
}

#[test]
fn custom_reactor_plays_ping_pong_and_exits_zero() {
    let mut child = Guard(
        Command::new(&examples().custom_reactor)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = read_lines(&mut child);
    let output = exits_cleanly(child, &lines, "custom_reactor");
    for who in ["alice", "bob"] {
        assert!(
            output
                .iter()
                .any(|l| l.starts_with(&format!("{who}: pong from g1"))),
            "no pong for {who}: {output:#?}"
        );
    }
    assert!(
        output.last().is_some_and(|l| l.starts_with("done:")),
        "{output:#?}"
    );
}

/// One running chat: the process, its stdin and its stdout lines.
struct Chat {
    child: Guard,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// `id@ip:port` as it printed it.
    address: String,
}

impl Chat {
    fn start(extra: &[&str]) -> Self {
        let mut child = Guard(
            Command::new(&examples().chat)
                .args(["--laddr", "127.0.0.1:0"])
                .args(extra)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let stdin = child.0.stdin.take();
        let lines = read_lines(&mut child);
        let listening = wait_line(&lines, "address", |l| l.starts_with("listening as "));
        let address = listening["listening as ".len()..].to_owned();
        assert!(
            address.starts_with("g1") && address.contains("@127.0.0.1:"),
            "{address}"
        );
        Self {
            child,
            stdin,
            lines,
            address,
        }
    }

    /// The id as chat shortens it in its output.
    fn short_id(&self) -> String {
        self.address.chars().take(12).collect()
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }
}

#[test]
fn a_line_typed_in_one_chat_appears_in_the_other() {
    let a = Chat::start(&[]);
    let mut b = Chat::start(&["--peer", &a.address]);
    let (a_short, b_short) = (a.short_id(), b.short_id());
    wait_line(&b.lines, "b connected to a", |l| {
        l.starts_with(&format!("* {a_short} connected"))
    });
    wait_line(&a.lines, "a connected to b", |l| {
        l.starts_with(&format!("* {b_short} connected"))
    });

    b.type_line("hello from b");
    wait_line(&a.lines, "b's line at a", |l| {
        l == format!("{b_short}: hello from b")
    });

    // Too long: refused with a message, not sent; the next line still goes through.
    b.type_line(&"x".repeat(2000));
    wait_line(&b.lines, "refusal", |l| {
        l.starts_with("(line too long: 2000 bytes")
    });
    b.type_line("still here");
    wait_line(&a.lines, "b's next line at a", |l| {
        l == format!("{b_short}: still here")
    });

    // Ctrl-D in b: it shuts down and exits 0; a sees it leave.
    let Chat {
        child: b_child,
        stdin: b_stdin,
        lines: b_lines,
        ..
    } = b;
    drop(b_stdin);
    let _ = exits_cleanly(b_child, &b_lines, "chat b");
    wait_line(&a.lines, "b leaving", |l| {
        l.starts_with(&format!("* {b_short} disconnected"))
    });

    // Ctrl-C in a: it shuts down and exits 0.
    // The guard has not reaped it yet.
    interrupt(&a.child.0);
    wait_line(&a.lines, "a shutting down", |l| l == "shutting down");
    let _ = exits_cleanly(a.child, &a.lines, "chat a");
}
