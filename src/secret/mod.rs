//! The secret connection: an authenticated, encrypted stream over TCP, byte-compatible with
//! Tendermint2's (`tm2/pkg/p2p/conn/secret_connection.go`), as a sans-IO core.
//!
//! Two parts:
//! - [`Handshake`]: a symmetric station-to-station handshake (no initiator/responder roles;
//!   both sides run the same code). Each side sends an ephemeral X25519 key (`22 0a 20` + 32
//!   bytes, plaintext), refuses TM2's 7 low-order keys ([`HandshakeError::LowOrderKey`]) and
//!   an all-zero shared secret, derives two ChaCha20-Poly1305 keys and a challenge with
//!   HKDF-SHA256 ([`derive_secrets_and_challenge`]), then sends its Ed25519 node key and its
//!   signature of the challenge (`64 0a 20` + key + `12 40` + signature, 101 bytes) inside the
//!   first encrypted frame, and checks the peer's signature over its own challenge.
//! - [`FrameSealer`] / [`FrameOpener`]: the encrypted stream afterwards. Every frame is
//!   exactly [`FRAME_LEN`] = 1044 bytes: a 4-byte little-endian length, up to [`DATA_MAX`] =
//!   1024 data bytes, zero padding, a 16-byte tag. The nonce is 4 zero bytes and a
//!   little-endian frame counter from 0, one counter per direction; it never wraps
//!   ([`FrameError::NonceExhausted`]). Sealing and opening happen in place, without
//!   allocation.
//!
//! No I/O, no clock and no global RNG: the caller moves bytes and passes the RNG in.
//!
//! ## Calling protocol
//!
//! 1. `let mut hs = Handshake::new(&node_key, &ring::rand::SystemRandom::new())?;`, or
//!    [`Handshake::with_early_data`] to send the first stream bytes with the auth frame
//!    (see "Early data" below).
//! 2. Write every [`Handshake::poll_transmit`] result to the socket (the 35-byte ephemeral
//!    message at once). Both sides write before they read, so neither waits on the other.
//! 3. For each read, `let n = hs.handle_bytes(&buf)?;` then drain `poll_transmit` again (the
//!    1044-byte auth frame, and the early-data frames after it in the same entry, appear once
//!    the peer's ephemeral key is in). Bytes from `n` on
//!    are not the handshake's: they are the peer's first stream frames; keep them.
//!    On EOF call [`Handshake::handle_eof`], which fails with
//!    [`HandshakeError::UnexpectedEof`]. Bound the whole exchange with a timeout (TM2: 3 s);
//!    the core has no clock.
//! 4. Once [`Handshake::is_established`] (true only after everything queued was taken),
//!    [`Handshake::finish`] gives an [`Established`]: the peer's authenticated public key and
//!    the sealer and opener for the stream, both positioned after the auth frames.
//! 5. **Check the peer's identity.** The handshake proves the peer holds
//!    [`Established::remote_public_key`]; it does not check that this is the peer you meant.
//!    Compare [`Established::remote_id`] with the dialed id (and with the NodeInfo id);
//!    without that check a man in the middle can run two handshakes and relay.
//!
//! ## Early data
//!
//! Our first stream message (the NodeInfo) does not depend on anything the peer sends after
//! its ephemeral key, so [`Handshake::with_early_data`] seals it right after our auth frame,
//! with the same sealer and the next nonces, and queues both as one `poll_transmit` entry: one
//! write instead of two, and the connection is ready a round trip sooner. On the wire this is
//! exactly what a peer that wrote its auth frame and then, without waiting, its first frames
//! would send, so it needs nothing from the peer: a TM2 node reads exactly its auth frame and
//! finds our frames waiting in its buffer afterwards, and a peer that sends no early data (TM2
//! itself) interoperates with one that does. The early frames leave before the peer's
//! signature is verified: they are encrypted to whoever ran the key agreement with us, so they
//! must be public data (a NodeInfo is: any peer may connect and ask for it).
//!
//! Errors say whether the peer is to blame ([`HandshakeError::is_peer_fault`],
//! [`FrameError::is_peer_fault`]). After any error the handshake, and an opener after a
//! failed open, are dead: close the connection.
//!
//! ## What TM2 does worse, and what we keep for compatibility
//!
//! - It is the pre-Merlin variant of Tendermint's handshake:
//!   the challenge comes from the DH secret alone and is not bound to a transcript of both
//!   ephemeral keys, and the auth message lacks upstream's 2-byte key wrapper; so TM2 (and
//!   this crate) cannot talk to CometBFT / Tendermint >= 0.33. We keep it: byte compatibility
//!   with TM2 is the point.
//! - The handshake does not check the peer's id (TM2's TODO citing tendermint issue 3010);
//!   callers must, as step 5 says. Our transport does.
//! - TM2 reads handshake messages up to 1 MiB each, before anything is authenticated. We cap
//!   a message body at [`HANDSHAKE_MSG_MAX`] (1014 bytes: any larger body could not share a
//!   frame with its length prefix; the real messages are 34 and 100 bytes), refuse a larger
//!   length prefix before buffering the body ([`HandshakeError::MessageTooLarge`]), and
//!   require the auth message to be exactly the data of one frame (TM2 always writes it so).
//! - TM2 panics when a nonce counter would wrap; we return an error.
//! - Ordering ties (equal ephemeral keys) make both sides "least", as in TM2; the keys then
//!   disagree and the auth frame fails to open, so a reflected handshake cannot succeed.

mod frame;
mod handshake;
mod kdf;
mod wire;

pub use frame::{
    DATA_LEN_SIZE, DATA_MAX, FRAME_LEN, FrameError, FrameOpener, FrameSealer, KEY_LEN,
    PLAINTEXT_LEN, TAG_LEN,
};
pub use handshake::{EARLY_DATA_MAX, Established, Handshake, HandshakeError};
pub use kdf::{DerivedSecrets, HKDF_INFO, SECRET_LEN, derive_secrets_and_challenge};
pub use wire::{AUTH_MSG_LEN, EPHEMERAL_MSG_LEN, HANDSHAKE_MSG_MAX};
