//! Arbitrary bytes from a peer into a fresh handshake, delivered in arbitrary chunks.
//!
//! Input: the first byte picks a chunk size (1..=256); the rest is what the peer sends.
//! Must never panic, and garbage must never establish a connection.

#![no_main]
#![allow(deprecated)] // ring::test::rand::FixedSliceRandom: a fixed ephemeral key.

use libfuzzer_sys::fuzz_target;
use ring::test::rand::FixedSliceRandom;
use tm2_p2p::key::NodeKey;
use tm2_p2p::secret::Handshake;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk) + 1;
    let Ok(key) = NodeKey::from_seed([0xb2; 32]) else {
        return;
    };
    let rng = FixedSliceRandom { bytes: &[0x5d; 32] };
    let Ok(mut hs) = Handshake::new(&key, &rng) else {
        return;
    };
    while hs.poll_transmit().is_some() {}
    for piece in input.chunks(chunk) {
        match hs.handle_bytes(piece) {
            Ok(n) => assert!(n <= piece.len()),
            Err(_) => return,
        }
        while hs.poll_transmit().is_some() {}
    }
    // Finishing needs a forged Poly1305 tag and Ed25519 signature.
    assert!(!hs.is_established());
    assert!(hs.handle_eof().is_err());
});
