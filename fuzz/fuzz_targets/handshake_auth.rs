//! Arbitrary auth-message bytes, correctly encrypted, into a handshake.
//!
//! A random frame never decrypts, so the plain `handshake` target cannot reach the parser of
//! the auth message. Here the peer is Alice of RFC 7748 section 6.1 and we are Bob, so the
//! shared secret is known: the input (at most 1024 bytes) is sealed as the data of Alice's
//! auth frame, after her ephemeral-key message. Must never panic, and must never establish
//! (the signature would have to verify).

#![no_main]
#![allow(deprecated)] // ring::test::rand::FixedSliceRandom: a fixed ephemeral key.

use libfuzzer_sys::fuzz_target;
use ring::test::rand::FixedSliceRandom;
use tm2_p2p::key::NodeKey;
use tm2_p2p::secret::{DATA_MAX, FRAME_LEN, FrameSealer, Handshake, derive_secrets_and_challenge};

/// Bob's X25519 private key (RFC 7748 section 6.1).
const BOB_PRIVATE: [u8; 32] = [
    0x5d, 0xab, 0x08, 0x7e, 0x62, 0x4a, 0x8a, 0x4b, 0x79, 0xe1, 0x7f, 0x8b, 0x83, 0x80, 0x0e, 0xe6,
    0x6f, 0x3b, 0xb1, 0x29, 0x26, 0x18, 0xb6, 0xfd, 0x1c, 0x2f, 0x8b, 0x27, 0xff, 0x88, 0xe0, 0xeb,
];
/// Alice's X25519 public key.
const ALICE_PUBLIC: [u8; 32] = [
    0x85, 0x20, 0xf0, 0x09, 0x89, 0x30, 0xa7, 0x54, 0x74, 0x8b, 0x7d, 0xdc, 0xb4, 0x3e, 0xf7, 0x5a,
    0x0d, 0xbf, 0x3a, 0x0d, 0x26, 0x38, 0x1a, 0xf4, 0xeb, 0xa4, 0xa9, 0x8e, 0xaa, 0x9b, 0x4e, 0x6a,
];
/// Their shared secret.
const SHARED: [u8; 32] = [
    0x4a, 0x5d, 0x9d, 0x5b, 0xa4, 0xce, 0x2d, 0xe1, 0x72, 0x8e, 0x3b, 0xf4, 0x80, 0x35, 0x0f, 0x25,
    0xe0, 0x7e, 0x21, 0xc9, 0x47, 0xd1, 0x9e, 0x33, 0x76, 0xf0, 0x9b, 0x3c, 0x1e, 0x16, 0x17, 0x42,
];

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(DATA_MAX)];
    // Alice's key sorts before Bob's, so she is the "least" side.
    let alice = derive_secrets_and_challenge(&SHARED, true);
    let Ok(mut sealer) = FrameSealer::from_raw_key(&alice.send, 0) else {
        return;
    };
    let mut input = vec![0x22, 0x0a, 0x20];
    input.extend_from_slice(&ALICE_PUBLIC);
    let mut frame = [0; FRAME_LEN];
    if sealer.seal(data, &mut frame).is_err() {
        return;
    }
    input.extend_from_slice(&frame);

    let Ok(key) = NodeKey::from_seed([0xb2; 32]) else {
        return;
    };
    let rng = FixedSliceRandom {
        bytes: &BOB_PRIVATE,
    };
    let Ok(mut hs) = Handshake::new(&key, &rng) else {
        return;
    };
    let result = hs.handle_bytes(&input);
    while hs.poll_transmit().is_some() {}
    assert!(result.is_err(), "arbitrary auth message accepted");
    assert!(!hs.is_established());
});
