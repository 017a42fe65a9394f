//! Fuzzing entry points: one function per decoder of bytes that come from the network or from
//! disk, each asserting what must hold for *any* input.
//!
//! Not part of the API (hidden from the docs). Two drivers call these functions:
//! - the cargo-fuzz targets in `fuzz/fuzz_targets/` (one-line shims, run by `scripts/fuzz.sh`
//!   on a nightly toolchain);
//! - `tests/fuzz_corpus.rs`, which replays every file of `fuzz/corpus/<target>/` through the
//!   matching function on every `cargo test` (stable, no libFuzzer).
//!
//! Every function must return normally for every input: a panic (a failed assertion included)
//! is a finding. The properties checked, besides "never panics":
//! - where an encoder exists, whatever decodes re-encodes to something that decodes to the
//!   same value (and, for the hand-written codecs that accept only canonical forms, to the same
//!   bytes);
//! - sizes stay within the documented limits (frames, packets, reassembled messages, address
//!   counts, book capacity);
//! - a failed state machine stays failed with the same error;
//! - chunking does not matter: the mconn receiver gives the same messages and the same error
//!   whether the stream arrives in one call or in pieces.
//!
//! Inputs that need parameters (a chunk size, a limit) take them from their first bytes, so
//! the fuzzer explores them too. [`TARGETS`] lists every function by its cargo-fuzz target name.
//!
//! This module is compiled in every build (it is small and uses only the core), so the replay
//! test needs neither a feature nor a nightly compiler.

#![allow(clippy::missing_panics_doc)] // Panicking on a broken invariant is the point here.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use rand_core::{RngCore, impls};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

use crate::codec::{self, amino};
use crate::config::P2pConfig;
use crate::key::{self, NodeKey};
use crate::mconn::packet::{self, Packet, PacketRef};
use crate::mconn::{
    ChannelDescriptor, Event, MConnConfig, MConnConfigError, MConnReceiver, MConnSender,
    MConnection, MConnectionError,
};
use crate::pex::protocol::{self, MAX_ADDRESSES, PexMessage};
use crate::pex::{AddressBook, AddressBookConfig, RequestLimiter};
use crate::secret::{
    DATA_MAX, EPHEMERAL_MSG_LEN, FRAME_LEN, FrameOpener, FrameSealer, Handshake, PLAINTEXT_LEN,
    derive_secrets_and_challenge,
};
use crate::types::{MAX_NODE_INFO_SIZE, MAX_NUM_CHANNELS, NetAddress, NodeInfo, PeerId};

/// A fuzz target's function: runs one input, panics on a finding.
pub type Target = fn(&[u8]);

/// Every fuzz target: its cargo-fuzz name (the file `fuzz/fuzz_targets/<name>.rs` and the
/// corpus directory `fuzz/corpus/<name>/`) and the function it runs.
pub const TARGETS: &[(&str, Target)] = &[
    ("handshake", handshake),
    ("handshake_auth", handshake_auth),
    ("frame_open", frame_open),
    ("mconn_packet", mconn_packet),
    ("mconn_recv", mconn_recv),
    ("node_info", node_info),
    ("pex_message", pex_message),
    ("address_book", address_book),
    ("config", config),
    ("node_key", node_key),
    ("net_address", net_address),
    ("uvarint", uvarint),
];

// ---------------------------------------------------------------------------------------------
// Secret connection
// ---------------------------------------------------------------------------------------------

/// Seed of our node key in the handshake targets.
const OUR_SEED: [u8; 32] = [0xb2; 32];

/// Bob's X25519 private key (RFC 7748 section 6.1): our ephemeral key in `handshake_auth`.
pub const BOB_EPHEMERAL_PRIVATE: [u8; 32] = [
    0x5d, 0xab, 0x08, 0x7e, 0x62, 0x4a, 0x8a, 0x4b, 0x79, 0xe1, 0x7f, 0x8b, 0x83, 0x80, 0x0e, 0xe6,
    0x6f, 0x3b, 0xb1, 0x29, 0x26, 0x18, 0xb6, 0xfd, 0x1c, 0x2f, 0x8b, 0x27, 0xff, 0x88, 0xe0, 0xeb,
];
/// Alice's X25519 public key (RFC 7748 section 6.1): the peer's ephemeral key in
/// `handshake_auth`.
pub const ALICE_EPHEMERAL_PUBLIC: [u8; 32] = [
    0x85, 0x20, 0xf0, 0x09, 0x89, 0x30, 0xa7, 0x54, 0x74, 0x8b, 0x7d, 0xdc, 0xb4, 0x3e, 0xf7, 0x5a,
    0x0d, 0xbf, 0x3a, 0x0d, 0x26, 0x38, 0x1a, 0xf4, 0xeb, 0xa4, 0xa9, 0x8e, 0xaa, 0x9b, 0x4e, 0x6a,
];
/// Alice's and Bob's X25519 shared secret (RFC 7748 section 6.1).
pub const ALICE_BOB_SHARED: [u8; 32] = [
    0x4a, 0x5d, 0x9d, 0x5b, 0xa4, 0xce, 0x2d, 0xe1, 0x72, 0x8e, 0x3b, 0xf4, 0x80, 0x35, 0x0f, 0x25,
    0xe0, 0x7e, 0x21, 0xc9, 0x47, 0xd1, 0x9e, 0x33, 0x76, 0xf0, 0x9b, 0x3c, 0x1e, 0x16, 0x17, 0x42,
];

/// Key of the frames in `frame_open`.
const FRAME_KEY: [u8; 32] = [0x42; 32];

/// Our node key in the handshake targets.
fn our_key() -> NodeKey {
    NodeKey::from_seed(OUR_SEED).expect("ring accepts every 32-byte seed")
}

/// A handshake whose ephemeral key is the fixed `private` (ring's fixed-bytes RNG).
#[allow(deprecated)] // ring::test::rand::FixedSliceRandom: the only way to fix ring's key.
fn handshake_with(private: &[u8; 32]) -> Handshake {
    let rng = ring::test::rand::FixedSliceRandom { bytes: private };
    Handshake::new(&our_key(), &rng).expect("a fixed 32-byte ephemeral key is accepted")
}

/// The peer's bytes, in chunks of a fuzzed size, into a fresh handshake: the length prefix and
/// parser of the ephemeral-key message, the low-order-key checks, then auth frames that cannot
/// be forged.
///
/// Input: byte 0 picks the chunk size (1..=256); the rest is what the peer sends.
///
/// Checks: every call consumes all its input until the handshake ends; what we send is the
/// 35-byte ephemeral message, then (once a valid key arrived) one 1044-byte frame; an error
/// sticks; garbage never establishes a connection.
pub fn handshake(data: &[u8]) {
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk) + 1;
    let mut hs = handshake_with(&[0x5d; 32]);
    let mut sent = Vec::new();
    let mut drain = |hs: &mut Handshake| {
        while let Some(msg) = hs.poll_transmit() {
            sent.push(msg.len());
        }
    };
    drain(&mut hs);
    for piece in input.chunks(chunk) {
        match hs.handle_bytes(piece) {
            // Not established (see below), so everything is the handshake's.
            Ok(n) => assert_eq!(n, piece.len(), "handshake left input unconsumed"),
            Err(e) => {
                assert_eq!(
                    hs.handle_bytes(piece),
                    Err(e.clone()),
                    "error did not stick"
                );
                assert_eq!(hs.handle_eof(), Err(e));
                break;
            }
        }
        drain(&mut hs);
    }
    drain(&mut hs);
    assert!(
        sent == [EPHEMERAL_MSG_LEN] || sent == [EPHEMERAL_MSG_LEN, FRAME_LEN],
        "unexpected transmissions {sent:?}"
    );
    // Finishing needs a forged Poly1305 tag and Ed25519 signature.
    assert!(!hs.is_established());
    assert!(hs.handle_eof().is_err());
}

/// Sealed as the data of the peer's auth frame, an arbitrary auth message (at most 1024
/// bytes) reaches the auth-message parser and the signature check, which random bytes never
/// reach through [`handshake`] (a random frame never decrypts). The peer is Alice of RFC 7748
/// section 6.1 and we are Bob, so the shared secret, hence the frame key, is known.
///
/// Checks: never panics; a connection is established only when the input holds a valid
/// signature of the challenge by the key the handshake reports; once established, the stream
/// keys work (a frame Alice seals next opens with our opener, and ours opens with her key).
pub fn handshake_auth(data: &[u8]) {
    let data = &data[..data.len().min(DATA_MAX)];
    // Alice's key sorts before Bob's, so she is the "least" side.
    let alice = derive_secrets_and_challenge(&ALICE_BOB_SHARED, true);
    let mut alice_sealer =
        FrameSealer::from_raw_key(&alice.send, 0).expect("a 32-byte key is valid");
    let mut input = vec![0x22, 0x0a, 0x20];
    input.extend_from_slice(&ALICE_EPHEMERAL_PUBLIC);
    let mut frame = [0; FRAME_LEN];
    alice_sealer
        .seal(data, &mut frame)
        .expect("at most DATA_MAX bytes seal");
    input.extend_from_slice(&frame);

    let mut hs = handshake_with(&BOB_EPHEMERAL_PRIVATE);
    let result = hs.handle_bytes(&input);
    let mut ours = Vec::new();
    while let Some(msg) = hs.poll_transmit() {
        ours.push(msg);
    }
    let used = match result {
        Ok(used) => used,
        Err(e) => {
            assert!(!hs.is_established());
            assert_eq!(hs.handle_bytes(&[]), Err(e));
            return;
        }
    };
    assert_eq!(used, input.len());
    assert!(hs.is_established(), "a whole valid exchange must establish");
    let mut established = hs.finish().expect("established");
    let key = established.remote_public_key;
    let signed = data
        .windows(64)
        .any(|sig| key::verify(&key, &alice.challenge, sig));
    assert!(signed, "established without a valid signature");

    // Alice's next frame opens with our opener.
    alice_sealer
        .seal(b"after", &mut frame)
        .expect("short data seals");
    let opened = established.opener.open(&mut frame).expect("stream frame");
    assert_eq!(opened, b"after");
    // Our auth frame, then our next frame, open with Alice's receive key.
    let mut alice_opener = FrameOpener::from_raw_key(&alice.recv, 0).expect("a 32-byte key");
    let mut auth: [u8; FRAME_LEN] = ours
        .last()
        .and_then(|f| f.as_slice().try_into().ok())
        .expect("our auth frame was sent");
    alice_opener.open(&mut auth).expect("our auth frame opens");
    established
        .sealer
        .seal(b"back", &mut frame)
        .expect("short data seals");
    assert_eq!(
        alice_opener.open(&mut frame).expect("stream frame"),
        b"back"
    );
}

/// Arbitrary frames into a [`FrameOpener`].
///
/// Input: byte 0 picks the mode.
/// - even: the rest, cut into 1044-byte frames, is opened as received ciphertext; nothing
///   opens (a Poly1305 tag cannot be forged) and the opener stays failed;
/// - odd: the rest, padded or cut to 1028 bytes, is sealed with the right key as a plaintext
///   frame (any length field) and opened, which reaches the checks made after decryption.
///
/// Checks: an opened frame holds exactly the declared length, at most [`DATA_MAX`] bytes; a
/// larger declared length is refused.
pub fn frame_open(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut opener = FrameOpener::from_raw_key(&FRAME_KEY, 0).expect("a 32-byte key is valid");
    if mode % 2 == 0 {
        for chunk in rest.chunks_exact(FRAME_LEN) {
            let mut frame = [0; FRAME_LEN];
            frame.copy_from_slice(chunk);
            assert!(opener.open(&mut frame).is_err(), "forged frame opened");
        }
        return;
    }
    let mut frame = [0; FRAME_LEN];
    let n = rest.len().min(PLAINTEXT_LEN);
    frame[..n].copy_from_slice(&rest[..n]);
    let declared = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
    let expected = frame[4..4 + (declared as usize).min(DATA_MAX)].to_vec();
    let key = LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, &FRAME_KEY).expect("a 32-byte key is valid"),
    );
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::empty(),
            &mut frame[..PLAINTEXT_LEN],
        )
        .expect("sealing 1028 bytes succeeds");
    frame[PLAINTEXT_LEN..].copy_from_slice(tag.as_ref());
    match opener.open(&mut frame) {
        Ok(opened) => {
            assert!(opened.len() <= DATA_MAX);
            assert_eq!(opened.len() as u64, u64::from(declared));
            assert_eq!(opened, expected.as_slice());
        }
        Err(_) => assert!(declared as usize > DATA_MAX, "valid frame refused"),
    }
}

// ---------------------------------------------------------------------------------------------
// mconn
// ---------------------------------------------------------------------------------------------

/// A stream of mconn packets into the packet decoder ([`packet::decode_framed`]) and the body
/// decoder ([`packet::decode_body`]).
///
/// Input: byte 0 picks the receiver's maximum packet size (the default 1056, small ones, or
/// one derived from byte 0); the rest is decoded packet after packet, as a receiver does.
///
/// Checks: a decoded packet is within the maximum, at least the smallest packet
/// ([`MIN_PACKET_LEN`]), and re-encodes to exactly the bytes it came from (one encoding per
/// packet, gno's); its length is what [`packet::msg_framed_len`] computes (the sender's size
/// bound); it is accepted with the maximum set to its own length and refused one byte below;
/// [`packet::framed_len`] agrees with the decoder; the owned and borrowed forms agree; a body
/// the body decoder accepts re-encodes to itself.
pub fn mconn_packet(data: &[u8]) {
    let Some((&m, stream)) = data.split_first() else {
        return;
    };
    let max = match m % 4 {
        0 => packet::max_packet_size(1024),
        1 => packet::max_packet_size(usize::from(m >> 2)),
        2 => usize::from(m >> 2),
        _ => usize::MAX,
    };
    let mut rest = stream;
    while !rest.is_empty() {
        match packet::decode_framed(rest, max) {
            Ok(Some((p, used))) => {
                assert!((MIN_PACKET_LEN..=max).contains(&used) && used <= rest.len());
                assert_eq!(packet::framed_len(rest, max), Ok(Some(used)));
                let mut again = Vec::new();
                p.encode_framed(&mut again);
                assert_eq!(again, &rest[..used], "packet has a second encoding");
                if let PacketRef::Msg { channel, eof, data } = p {
                    assert_eq!(used, packet::msg_framed_len(channel, eof, data.len()));
                }
                // The maximum bounds prefix + body, exactly.
                assert_eq!(packet::decode_framed(rest, used), Ok(Some((p, used))));
                assert_eq!(
                    packet::framed_len(rest, used - 1),
                    Err(packet::DecodeError::TooLarge {
                        len: used as u64,
                        max: used - 1
                    })
                );
                let owned: Packet = p.to_packet();
                assert_eq!(owned.as_ref(), p);
                rest = &rest[used..];
            }
            Ok(None) => {
                if let Ok(Some(total)) = packet::framed_len(rest, max) {
                    assert!(total > rest.len() && total <= max);
                } else {
                    assert!(rest.len() < amino::MAX_UVARINT_LEN);
                }
                break;
            }
            Err(_) => break,
        }
    }
    // The body decoder on its own.
    if let Ok(p) = packet::decode_body(stream) {
        let mut framed = Vec::new();
        p.encode_framed(&mut framed);
        assert!(framed.ends_with(stream), "body has a second encoding");
        assert_eq!(framed.len(), amino::sized_len(stream.len()));
    }
}

/// Arbitrary received plaintext through the whole mconn receive path (framing across reads,
/// per-channel reassembly, limits, keep-alive answers), with small limits so they are hit.
///
/// Input: 4 parameter bytes, then the stream.
/// - byte 0: max packet payload (1..=32 bytes);
/// - byte 1: chunk size of the reads (1..=256 bytes);
/// - byte 2: channel 0x01's largest message (1..=64 bytes; channel 0x40 takes 3 payloads);
/// - byte 3: bit 0 uses the split receiver (ping/pong surface as events) instead of the whole
///   connection (which answers pings itself); bit 1 limits the receive rate; bit 2 adds
///   channel 0x02 halfway through the stream.
///
/// Checks: messages arrive only on registered channels and never exceed their channel's
/// limit; events queued per read stay bounded by the read; an error sticks; whatever the
/// whole connection sends back is valid packets; and, unless a channel is added midway, the
/// messages and the error are the same as when the stream arrives in one read.
pub fn mconn_recv(data: &[u8]) {
    let Some((&[p0, p1, p2, flags], stream)) = data.split_first_chunk::<4>() else {
        return;
    };
    let payload = usize::from(p0 % 32) + 1;
    let chunk = usize::from(p1) + 1;
    let small = ChannelDescriptor::new(0x01)
        .with_recv_message_capacity(usize::from(p2 % 64) + 1)
        .with_recv_buffer_capacity(usize::from(p2 >> 6) + 1);
    let large = ChannelDescriptor::new(0x40).with_recv_message_capacity(3 * payload);
    let late = ChannelDescriptor::new(0x02).with_recv_message_capacity(2 * payload);
    let config = MConnConfig {
        max_packet_msg_payload_size: payload,
        recv_rate: if flags & 2 != 0 { 1000 } else { 0 },
        send_rate: 0,
        ..MConnConfig::default()
    };
    let split = flags & 1 != 0;
    let add_late = flags & 4 != 0;
    let channels = [small, large];

    let chunked = run_mconn(
        &config,
        &channels,
        stream,
        chunk,
        split,
        add_late.then_some(late),
    );
    if !add_late {
        let whole = run_mconn(&config, &channels, stream, usize::MAX, split, None);
        assert_eq!(chunked, whole, "chunking changed what was received");
    }
}

/// The smallest packet: a `Msg` on channel 0 with no data and no `eof` (`0a 0a 08 "/p2p.Msg"`,
/// 11 bytes); a Ping or Pong takes 12.
pub const MIN_PACKET_LEN: usize = packet::msg_framed_len(0, false, 0);

/// Received messages and the error of one [`mconn_recv`] run.
type MconnOutcome = (Vec<(u8, Bytes)>, Option<MConnectionError>);

/// The connection under test: whole, or split into its two halves (then the harness relays
/// pings and pongs from the receiver to the sender, as the runtime's reader task does).
enum Conn {
    Whole(MConnection),
    Split(MConnSender, MConnReceiver),
}

impl Conn {
    fn add_channel(&mut self, desc: ChannelDescriptor) {
        match self {
            Self::Whole(c) => c.add_channel(desc).expect("a new channel id"),
            Self::Split(s, r) => {
                s.add_channel(desc).expect("a new channel id");
                r.add_channel(desc).expect("a new channel id");
            }
        }
    }

    /// Feeds one read; returns its result and the events it queued.
    fn handle_bytes(
        &mut self,
        now: Instant,
        bytes: &[u8],
    ) -> (Result<(), MConnectionError>, usize) {
        match self {
            Self::Whole(c) => {
                let _ = c.recv_ready(now);
                let result = c.handle_bytes(now, bytes);
                (result, c.receiver().pending_events())
            }
            Self::Split(_, r) => {
                let _ = r.recv_ready(now);
                let result = r.handle_bytes(now, bytes);
                (result, r.pending_events())
            }
        }
    }

    /// The next event; keep-alive events are relayed to the sender.
    fn poll_event(&mut self, now: Instant) -> Option<Event> {
        match self {
            Self::Whole(c) => {
                let event = c.poll_event();
                assert!(
                    matches!(event, None | Some(Event::Received { .. })),
                    "the whole connection surfaced {event:?}"
                );
                event
            }
            Self::Split(s, r) => {
                let event = r.poll_event();
                match event {
                    Some(Event::PingReceived) => s.queue_pong(),
                    Some(Event::PongReceived) => s.handle_pong(now),
                    _ => {}
                }
                event
            }
        }
    }

    /// Drains what the connection sends (pongs, here) in a bounded number of calls and checks
    /// it is whole, valid keep-alive packets.
    fn check_transmit(&mut self, now: Instant, max_packet: usize) {
        let mut out = Vec::new();
        let dry = (0..16).any(|_| {
            let sent = match self {
                Self::Whole(c) => c.poll_transmit(now, &mut out),
                Self::Split(s, _) => s.poll_transmit(now, &mut out),
            };
            sent.bytes == 0
        });
        assert!(dry, "poll_transmit never ran dry");
        let mut rest = out.as_slice();
        while !rest.is_empty() {
            let (p, used) = packet::decode_framed(rest, max_packet)
                .expect("we send valid packets")
                .expect("we send whole packets");
            assert!(matches!(p, PacketRef::Ping | PacketRef::Pong), "{p:?}");
            rest = &rest[used..];
        }
    }
}

fn run_mconn(
    config: &MConnConfig,
    channels: &[ChannelDescriptor],
    stream: &[u8],
    chunk: usize,
    split: bool,
    late: Option<ChannelDescriptor>,
) -> MconnOutcome {
    let t0 = base_instant();
    let whole = MConnection::new(config, channels, t0).expect("the fuzz config is valid");
    let mut conn = if split {
        let (s, r) = whole.into_split();
        Conn::Split(s, r)
    } else {
        Conn::Whole(whole)
    };
    let mut known: Vec<ChannelDescriptor> = channels.to_vec();
    let max_packet = packet::max_packet_size(config.max_packet_msg_payload_size);
    let mut received = Vec::new();
    let pieces: Vec<&[u8]> = stream.chunks(chunk.max(1)).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let now = t0 + Duration::from_millis(i as u64);
        if i == pieces.len() / 2
            && let Some(desc) = late
        {
            conn.add_channel(desc);
            known.push(desc);
        }
        let (result, pending) = conn.handle_bytes(now, piece);
        // Every event needs a whole packet of at least MIN_PACKET_LEN bytes that ends in this
        // read: at most one completes what an earlier read left, the others lie in this one.
        assert!(
            pending <= piece.len() / MIN_PACKET_LEN + 1,
            "{pending} events from {} bytes",
            piece.len()
        );
        while let Some(event) = conn.poll_event(now) {
            if let Event::Received { channel, payload } = event {
                let desc = known
                    .iter()
                    .find(|d| d.id == channel)
                    .expect("message on an unregistered channel");
                assert!(payload.len() <= desc.recv_message_capacity);
                received.push((channel, payload));
            }
        }
        conn.check_transmit(now, max_packet);
        if let Err(e) = result {
            let (again, _) = conn.handle_bytes(now, b"\x01\x00");
            assert_eq!(again, Err(e.clone()), "error did not stick");
            return (received, Some(e));
        }
    }
    (received, None)
}

/// The one clock read of the fuzzing harness: the base of the virtual times passed to the
/// mconn core (which never reads the clock itself).
fn base_instant() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    #[allow(clippy::disallowed_methods)] // Harness only: a base for virtual times, read once.
    *BASE.get_or_init(Instant::now)
}

// ---------------------------------------------------------------------------------------------
// NodeInfo
// ---------------------------------------------------------------------------------------------

/// A NodeInfo as the transport reads it (the length prefix, refused early when too large,
/// then the body), and the same bytes as an unframed body; then validation and the
/// compatibility check against ours and against itself.
///
/// Checks: the announced prefix and body are at most [`MAX_NODE_INFO_SIZE`]; the
/// whole-message decoder ([`NodeInfo::decode_framed`]) reads what the header and the body
/// decoder read, and only when the message is all of the input; what decodes re-encodes (plain
/// and framed) to a NodeInfo equal to it, and to exactly the input but for the net address (the
/// one field read leniently); a valid one encodes within the limit, declares at most
/// [`MAX_NUM_CHANNELS`] channels and, when it has a channel, is compatible with itself;
/// compatibility is symmetric.
pub fn node_info(data: &[u8]) {
    let whole = NodeInfo::decode_framed(data);
    match NodeInfo::frame_header(data) {
        Ok(Some((prefix, body_len))) => {
            let total = prefix + body_len;
            assert!(total <= MAX_NODE_INFO_SIZE && prefix <= amino::MAX_UVARINT_LEN);
            if let Some(body) = data.get(prefix..total) {
                check_node_info(body);
            }
            if data.len() == total {
                assert_eq!(whole, NodeInfo::decode(&data[prefix..]));
            } else {
                assert!(whole.is_err(), "a NodeInfo decoded from part of the input");
            }
        }
        Ok(None) => {
            assert!(data.len() < amino::MAX_UVARINT_LEN);
            assert!(whole.is_err());
        }
        Err(_) => assert!(whole.is_err()),
    }
    check_node_info(data);
}

fn check_node_info(body: &[u8]) {
    let Ok(info) = NodeInfo::decode(body) else {
        return;
    };
    let encoded = info.encode();
    assert_eq!(NodeInfo::decode(&encoded).expect("re-decodes"), info);
    // The address is the one field read leniently (a `tcp://` prefix, upper-case names, any
    // IPv6 spelling, leading zeros in the port): the encoding is the input with the address
    // printed in place of the one read, so the input itself when they are the same.
    let printed = info.net_address.to_string();
    let read = address_field(body).expect("a decoded NodeInfo has an address");
    if printed.as_bytes() == read {
        assert_eq!(encoded, body, "a NodeInfo has a second encoding");
    } else {
        assert_eq!(
            encoded.len() + amino::element_len(2, read.len()),
            body.len() + amino::element_len(2, printed.len()),
            "a NodeInfo re-encodes to more than its address changed"
        );
    }
    let framed = info.encode_framed();
    match NodeInfo::decode_framed(&framed) {
        Ok(again) => assert_eq!(again, info),
        // Only a body at the limit has no room for its prefix.
        Err(_) => assert!(framed.len() > MAX_NODE_INFO_SIZE),
    }
    let valid = info.validate().is_ok();
    if valid {
        assert!(framed.len() <= MAX_NODE_INFO_SIZE);
        assert!(info.channels.len() <= MAX_NUM_CHANNELS);
        if !info.channels.is_empty() {
            assert_eq!(info.compatible_with(&info), Ok(()));
        }
    }
    let ours = our_node_info();
    assert_eq!(
        ours.compatible_with(&info).is_ok(),
        info.compatible_with(&ours).is_ok(),
        "compatibility is not symmetric"
    );
    let _ = info.id();
}

/// The bytes of field 2 (the net address as sent) in a NodeInfo body that decoded.
fn address_field(body: &[u8]) -> Option<&[u8]> {
    let mut fields = amino::Fields::new(body);
    while let Ok(Some(f)) = fields.next() {
        if let (2, Ok(b)) = (f.number, f.bytes()) {
            return Some(b);
        }
    }
    None
}

/// Our NodeInfo in the `node_info` target: network `fuzz-net`, channels `0x40` and `0x50`.
fn our_node_info() -> NodeInfo {
    let addr = NetAddress::from_socket_addr(our_key().id(), (Ipv4Addr::LOCALHOST, 26656).into())
        .expect("a loopback address with a port");
    NodeInfo::new(addr, "fuzz-net", vec![0x40, 0x50])
}

// ---------------------------------------------------------------------------------------------
// Peer exchange
// ---------------------------------------------------------------------------------------------

/// A peer-exchange message through [`protocol::decode`] (the default limit of 30 addresses)
/// and [`protocol::decode_with_limit`] with a fuzzed limit.
///
/// Input: byte 0 gives the second limit (0..=39); the rest is the message.
///
/// Checks: a larger limit accepts whatever a smaller one does, with the same result; a
/// response that decodes has at most the limit of entries, and kept + skipped is their number;
/// the kept ones are valid, with distinct ids, and are entries of the message in its order; a
/// request is exactly gno's encoding, and so is a response with nothing skipped whose
/// addresses print as they were sent (one encoding per message); everything re-encodes within
/// the size bound to a message that decodes to the same addresses with nothing skipped.
pub fn pex_message(data: &[u8]) {
    let Some((&l, msg)) = data.split_first() else {
        return;
    };
    let limit = usize::from(l % 40);
    let default = protocol::decode(msg);
    let limited = protocol::decode_with_limit(msg, limit);
    let (smaller, larger) = if limit <= MAX_ADDRESSES {
        (&limited, &default)
    } else {
        (&default, &limited)
    };
    if let Ok(d) = smaller {
        assert_eq!(larger.as_ref(), Ok(d), "a larger limit changed the result");
    }
    for (decoded, max) in [(default, MAX_ADDRESSES), (limited, limit)] {
        let Ok(decoded) = decoded else {
            continue;
        };
        let bytes = decoded.message.encode();
        match &decoded.message {
            PexMessage::Request => {
                assert_eq!(decoded.skipped, 0);
                assert_eq!(bytes, msg, "a request has a second encoding");
            }
            PexMessage::Response(addrs) => {
                let entries = response_entries(msg);
                assert!(entries.len() <= max);
                assert_eq!(addrs.len() + decoded.skipped, entries.len());
                let mut ids = HashSet::new();
                for a in addrs {
                    assert!(a.validate().is_ok(), "invalid address kept: {a}");
                    assert!(ids.insert(a.id()), "repeated id kept: {a}");
                }
                let mut sent = entries
                    .iter()
                    .filter_map(|e| std::str::from_utf8(e).ok()?.parse::<NetAddress>().ok());
                for a in addrs {
                    assert!(
                        sent.any(|s| &s == a),
                        "kept address not sent, or reordered: {a}"
                    );
                }
                let as_sent = addrs
                    .iter()
                    .zip(&entries)
                    .all(|(a, e)| a.to_string().as_bytes() == *e);
                if decoded.skipped == 0 && as_sent {
                    assert_eq!(bytes, msg, "a response has a second encoding");
                }
            }
        }
        assert!(bytes.len() <= protocol::max_message_len(max));
        let again = protocol::decode_with_limit(&bytes, max).expect("re-decodes");
        assert_eq!(again.message, decoded.message);
        assert_eq!(again.skipped, 0);
    }
}

/// The entries (field 1 of the Any's value, as sent) of a response that decoded.
fn response_entries(msg: &[u8]) -> Vec<&[u8]> {
    let Ok((_, value)) = amino::decode_any(msg) else {
        return Vec::new();
    };
    let mut fields = amino::Fields::new(value);
    let mut entries = Vec::new();
    while let Ok(Some(f)) = fields.next() {
        if let Ok(e) = f.bytes() {
            entries.push(e);
        }
    }
    entries
}

/// The address-book file: [`AddressBook::from_json`] (what `AddressBook::load` reads), with a
/// small capacity, then the book's queries at a fixed time.
///
/// Checks: the book holds at most its capacity, never our own id, only valid addresses; it
/// saves to JSON that loads back to the same JSON; picking, sharing and the backoff and ban
/// queries do not panic whatever times the file holds.
pub fn address_book(data: &[u8]) {
    let own = our_key().id();
    let config = AddressBookConfig {
        capacity: 8,
        ..AddressBookConfig::default()
    };
    let Ok(mut book) = AddressBook::from_json(data, own, config) else {
        return;
    };
    assert!(book.len() <= config.capacity);
    for e in book.iter() {
        assert_ne!(e.addr.id(), own);
        assert!(e.addr.validate().is_ok());
    }
    let json = book.to_json();
    let again = AddressBook::from_json(&json, own, config).expect("our own file loads");
    assert_eq!(again.to_json(), json, "save/load changed the book");

    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
    let ids: Vec<PeerId> = book.iter().map(|e| e.addr.id()).collect();
    for id in &ids {
        let _ = book.next_dial_at(id);
        let _ = book.is_dialable(id, now);
        let _ = book.is_banned(id, now);
    }
    let picked = book.pick_to_dial(4, now, &HashSet::new(), &mut rng);
    assert!(picked.len() <= 4);
    let shared = book.sample_for_sharing(4, own, &HashSet::new(), true, now, &mut rng);
    assert!(shared.len() <= 4);
    for id in &ids {
        let _ = book.mark_attempt(id, now);
        let _ = book.mark_failed(id, now);
        let _ = book.next_dial_at(id);
        let _ = book.mark_good(id, now);
    }
    book.prune_bans(now);
    let _ = book.to_json();
}

/// A tiny deterministic RNG for the address-book queries.
struct Xorshift(u64);

impl RngCore for Xorshift {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        impls::fill_bytes_via_next(self, dest);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Files and strings
// ---------------------------------------------------------------------------------------------

/// A config file: [`P2pConfig::from_toml_str`] (parse and validate) on the input as UTF-8.
///
/// Checks: an accepted config writes to TOML, plain and commented, that reads back to an
/// equal config; the settings derived from it for an mconn connection, the address book and
/// the request limiter are accepted too.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = P2pConfig::from_toml_str(text) else {
        return;
    };
    let plain = c
        .to_toml_string()
        .expect("a config read from TOML writes as TOML");
    assert_eq!(P2pConfig::from_toml_str(&plain).expect("reads back"), c);
    let commented = c
        .to_commented_toml()
        .expect("a config read from TOML writes as TOML");
    assert_eq!(P2pConfig::from_toml_str(&commented).expect("reads back"), c);
    // The mconn settings the runtime derives from it (`MConnConfig::from`) must be accepted.
    let mconn = MConnConfig::from(&c);
    assert_eq!(mconn.validate(), Ok::<(), MConnConfigError>(()));
    MConnection::new(&mconn, &[ChannelDescriptor::new(0x40)], base_instant())
        .expect("a valid config builds a connection");
    let _ = AddressBookConfig::from_config(&c);
    let _ = RequestLimiter::from_config(&c);
    for addr in c.seeds.iter().chain(&c.persistent_peers) {
        assert!(addr.validate().is_ok());
    }
}

/// A key file: [`NodeKey::from_key_file_json`] (what `NodeKey::load` reads), and the raw
/// 64-byte layout ([`NodeKey::from_keypair_bytes`]).
///
/// Checks: an accepted key writes a file that loads to the same key, and its raw layout is
/// exactly the input.
pub fn node_key(data: &[u8]) {
    if let Ok(k) = NodeKey::from_key_file_json(data) {
        let json = k.to_key_file_json();
        let again = NodeKey::from_key_file_json(json.as_bytes()).expect("our own file loads");
        assert_eq!(again.seed(), k.seed());
        assert_eq!(again.id(), k.id());
    }
    if let Ok(k) = NodeKey::from_keypair_bytes(data) {
        assert_eq!(k.to_keypair_bytes().as_slice(), data);
    }
}

/// Address and id strings, as they come from the config and from peer exchange (where the
/// amino wire carries an address as its string): [`NetAddress`] and [`PeerId`] parsing
/// (`FromStr`), and both types through the serde payload codec ([`codec::decode`], bincode,
/// for what reactors put inside their messages).
///
/// Checks: a parsed address prints to a string that parses back to it and prints the same;
/// its parts rebuild it; it survives JSON and the payload codec; `is_shareable` implies valid, and
/// routable unless non-routable addresses are allowed. A parsed id prints as the input in
/// lower case.
pub fn net_address(data: &[u8]) {
    if let Ok(a) = codec::decode::<NetAddress>(data, 1024) {
        check_address(&a);
    }
    if let Ok(id) = codec::decode::<PeerId>(data, 64) {
        assert_eq!(codec::encode(&id).expect("an id encodes"), data);
    }
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(a) = s.parse::<NetAddress>() {
        check_address(&a);
    }
    if let Ok(id) = s.parse::<PeerId>() {
        let printed = id.to_string();
        assert!(printed.eq_ignore_ascii_case(s), "{printed} from {s:?}");
        assert_eq!(printed.parse::<PeerId>(), Ok(id));
    }
}

fn check_address(a: &NetAddress) {
    let printed = a.to_string();
    let back: NetAddress = printed.parse().expect("a printed address parses");
    assert_eq!(&back, a);
    assert_eq!(back.to_string(), printed);
    assert_eq!(
        NetAddress::new(a.id(), a.host().clone(), a.port()).as_ref(),
        Ok(a)
    );
    if let Some(sa) = a.socket_addr() {
        assert_eq!(NetAddress::from_socket_addr(a.id(), sa).as_ref(), Ok(a));
    }
    let json = serde_json::to_string(a).expect("an address serializes");
    assert_eq!(
        &serde_json::from_str::<NetAddress>(&json).expect("reads back"),
        a
    );
    let wire = codec::encode(a).expect("an address encodes");
    assert_eq!(
        &codec::decode::<NetAddress>(&wire, 1024).expect("decodes"),
        a
    );
    let valid = a.validate().is_ok();
    let routable = a.is_routable();
    assert!(!routable || valid);
    assert_eq!(a.is_shareable(true), valid);
    assert_eq!(a.is_shareable(false), routable);
    let _ = a.dial_string();
    let seen = a.or_seen_ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    assert_eq!(seen.id(), a.id());
    assert_eq!(seen.port(), a.port());
}

/// Amino's uvarint ([`amino::get_uvarint`]), the sized-message header and body
/// ([`amino::sized_header`], [`amino::sized_body`]: the length prefix of every message on the
/// wire), and the generic readers every message decoder is built on ([`amino::Fields`],
/// [`amino::decode_any`]).
///
/// Checks: an accepted uvarint is the canonical encoding of its value (`put_uvarint` writes the
/// same bytes, `uvarint_len` agrees); `Ok(None)` only before 10 bytes; a sized header is within
/// its limit and agrees with the uvarint, a refused one names the announced size, and the
/// whole-message reader accepts exactly the input whose length is the header's total; every
/// field [`amino::Fields`] reads re-encodes to exactly the bytes it took (field numbers never
/// decrease, and a repeat is flagged as one); an Any [`amino::decode_any`] accepts re-encodes to
/// exactly the input.
pub fn uvarint(data: &[u8]) {
    let read = amino::get_uvarint(data);
    match read {
        Ok(Some((v, n))) => {
            assert!(n <= amino::MAX_UVARINT_LEN && n == amino::uvarint_len(v));
            let mut out = Vec::new();
            amino::put_uvarint(&mut out, v);
            assert_eq!(out, &data[..n]);
        }
        Ok(None) => assert!(data.len() < amino::MAX_UVARINT_LEN),
        Err(_) => {}
    }
    for max in [0, 1, 250, 1056, 10_240, 65_538, usize::MAX] {
        match amino::sized_header(data, max) {
            Ok(Some((prefix, total))) => {
                assert!(prefix <= amino::MAX_UVARINT_LEN && prefix <= total && total <= max);
                let (v, n) = read.clone().ok().flatten().expect("a header has a uvarint");
                // Saturating: with no real maximum, a prefix near 2^64 saturates the total.
                assert_eq!((v.saturating_add(n as u64), n), (total as u64, prefix));
                match amino::sized_body(data, max) {
                    Ok(body) => assert!(data.len() == total && body == &data[prefix..]),
                    Err(e) => assert_ne!(data.len(), total, "whole message refused: {e}"),
                }
            }
            Ok(None) => assert_eq!(read, Ok(None)),
            Err(amino::AminoError::TooLarge { len, max: limit }) => {
                let (v, n) = read.clone().ok().flatten().expect("a header has a uvarint");
                assert_eq!(
                    (len, limit),
                    (v.saturating_add(n as u64), max),
                    "refused for another size than announced"
                );
                assert!(len > max as u64);
            }
            Err(e) => assert_eq!(read, Err(e)),
        }
    }
    check_fields(data);
    if let Ok((type_url, value)) = amino::decode_any(data) {
        let mut again = Vec::new();
        amino::put_element(&mut again, 1, type_url);
        amino::put_bytes_field(&mut again, 2, value);
        assert_eq!(again, data, "an Any has a second encoding");
    }
}

/// Reads `body` with [`amino::Fields`] until the end or an error, re-encoding every field.
fn check_fields(body: &[u8]) {
    let mut fields = amino::Fields::new(body);
    let (mut at, mut last) = (0, 0);
    while let Ok(Some(f)) = fields.next() {
        let end = body.len() - fields.remaining();
        let mut again = Vec::new();
        match f.value {
            amino::Value::Varint(v) => {
                amino::put_key(&mut again, f.number, amino::WireType::Varint);
                amino::put_uvarint(&mut again, v);
            }
            amino::Value::Fixed64(v) => {
                amino::put_key(&mut again, f.number, amino::WireType::Fixed64);
                again.extend_from_slice(&v.to_le_bytes());
            }
            amino::Value::Bytes(b) => amino::put_element(&mut again, f.number, b),
            amino::Value::Fixed32(v) => {
                amino::put_key(&mut again, f.number, amino::WireType::Fixed32);
                again.extend_from_slice(&v.to_le_bytes());
            }
        }
        assert_eq!(again, &body[at..end], "a field has a second encoding");
        assert!(f.number >= last && f.repeat == (f.number == last));
        (at, last) = (end, f.number);
    }
}
