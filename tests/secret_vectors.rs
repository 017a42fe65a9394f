//! The secret connection through the public API only: TM2's key-derivation vectors, and a
//! handshake between two nodes with real randomness, as the runtime drives it.

// clippy's allow-unwrap-in-tests does not reach helper functions of an integration test.
#![allow(clippy::unwrap_used)]

use ring::rand::SystemRandom;
use tm2_p2p::key::NodeKey;
use tm2_p2p::secret::{
    DATA_MAX, Established, FRAME_LEN, Handshake, HandshakeError, derive_secrets_and_challenge,
};

fn hex32(s: &str) -> [u8; 32] {
    hex::decode(s).unwrap().try_into().unwrap()
}

#[test]
fn truncated_handshake_reports_eof() {
    let key = NodeKey::generate().unwrap();
    let mut hs = Handshake::new(&key, &SystemRandom::new()).unwrap();
    assert_eq!(hs.handle_bytes(&[0x22, 0x0a]), Ok(2));
    assert_eq!(hs.handle_eof(), Err(HandshakeError::UnexpectedEof));
    assert_eq!(hs.finish().unwrap_err(), HandshakeError::UnexpectedEof);
}

#[test]
fn derivation_matches_tm2_golden_file() {
    let csv = include_str!("data/tm2_derive_secrets_and_challenge.csv");
    let mut n = 0;
    for line in csv.lines().filter(|l| !l.trim().is_empty()) {
        let cols: Vec<&str> = line.split(',').map(str::trim).collect();
        let got = derive_secrets_and_challenge(&hex32(cols[0]), cols[1] == "true");
        assert_eq!(
            [got.recv, got.send, got.challenge].map(hex::encode),
            [cols[2], cols[3], cols[4]],
            "{line}"
        );
        n += 1;
    }
    assert_eq!(n, 32);
}

/// Runs two handshakes against each other, moving at most `chunk` bytes per read, the way a
/// socket loop would; returns both results.
fn run_pair(a: &NodeKey, b: &NodeKey, chunk: usize) -> (Established, Established) {
    let rng = SystemRandom::new();
    let mut sides = [
        Handshake::new(a, &rng).unwrap(),
        Handshake::new(b, &rng).unwrap(),
    ];
    let mut wires: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..10_000 {
        if sides.iter().all(Handshake::is_established) {
            break;
        }
        for i in 0..2 {
            while let Some(bytes) = sides[i].poll_transmit() {
                wires[i].extend(bytes);
            }
        }
        for i in 0..2 {
            let incoming = &mut wires[1 - i];
            let n = incoming.len().min(chunk);
            let used = sides[i].handle_bytes(&incoming[..n]).unwrap();
            incoming.drain(..used);
        }
    }
    assert!(wires.iter().all(Vec::is_empty), "handshake bytes left over");
    let [a, b] = sides;
    (a.finish().unwrap(), b.finish().unwrap())
}

#[test]
fn two_nodes_authenticate_each_other_and_talk() {
    let (ka, kb) = (NodeKey::generate().unwrap(), NodeKey::generate().unwrap());
    for chunk in [1, 7, 35, 1044, 4096] {
        let (mut a, mut b) = run_pair(&ka, &kb, chunk);
        assert_eq!(a.remote_id(), kb.id());
        assert_eq!(b.remote_id(), ka.id());
        let mut frame = [0; FRAME_LEN];
        a.sealer.seal(&[9; DATA_MAX], &mut frame).unwrap();
        assert_eq!(b.opener.open(&mut frame).unwrap(), &[9; DATA_MAX]);
        b.sealer.seal(b"pong", &mut frame).unwrap();
        assert_eq!(a.opener.open(&mut frame).unwrap(), b"pong");
    }
}
