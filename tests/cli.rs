//! The `tm2p2p` binary as a user runs it: `init`, `show-id`, and `node` until Ctrl-C.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_tm2p2p");
const TIMEOUT: Duration = Duration::from_secs(30);

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
    let config = config.replace(
        "laddr = \"tcp://0.0.0.0:26656\"",
        "laddr = \"tcp://127.0.0.1:0\"",
    );
    std::fs::write(&config_path, config).unwrap();

    let mut child = Command::new(BIN)
        .args(["node", "--home", home_arg, "--log-level", "warning"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let listening = rx.recv_timeout(TIMEOUT).expect("node printed nothing");
    assert!(
        listening.starts_with(&format!("listening as {id}@127.0.0.1:")),
        "{listening}"
    );

    // Ctrl-C: the node shuts down gracefully and exits 0.
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGINT);
    }
    let stopped = rx
        .recv_timeout(TIMEOUT)
        .expect("node did not report stopping");
    assert_eq!(stopped, "stopped");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn node_without_a_home_says_how_to_create_one() {
    let home = tempfile::tempdir().unwrap();
    let out = tm2p2p(&["node", "--home", home.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("tm2p2p init"), "{err}");
}
