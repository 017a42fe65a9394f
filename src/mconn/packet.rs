//! mconn packets and their wire encoding: TM2's, byte for byte.
//!
//! Three packet types travel over a secret connection once the handshake and the NodeInfo
//! exchange are done: [`Packet::Ping`], [`Packet::Pong`] and [`Packet::Msg`], a piece of a
//! message on one channel (TM2's `/p2p.Ping`, `/p2p.Pong`, `/p2p.Msg`, in `tm2/pkg/p2p/conn/connection.go`).
//!
//! ## Byte layout
//!
//! Every packet is an amino Any ([`crate::codec::amino`]) preceded by its uvarint length:
//!
//! ```text
//! packet = uvarint(len(any)) any
//! any    = 0a 09 "/p2p.Ping"                             Ping
//!        | 0a 09 "/p2p.Pong"                             Pong
//!        | 0a 08 "/p2p.Msg" [12 uvarint(len(msg)) msg]   Msg (msg left out when empty)
//! msg    = [08 uvarint(channel)] [10 01] [1a uvarint(len(data)) data]
//! ```
//!
//! In `msg` a zero value is left out: channel 0, `eof` false (eof is `10 01` on the last packet
//! of a message), empty data. Examples (hex, with the length prefix):
//!
//! | packet | bytes |
//! | --- | --- |
//! | Ping | `0b 0a09 2f7032702e50696e67` |
//! | Pong | `0b 0a09 2f7032702e506f6e67` |
//! | Msg { channel: 0x07, eof: true, data: "hello world" } | `1d 0a08 2f7032702e4d7367 12 11 0807 1001 1a0b 68656c6c6f20776f726c64` |
//! | Msg { channel: 0x30, eof: false, data: "abc" } | `13 0a08 2f7032702e4d7367 12 07 0830 1a03 616263` |
//!
//! A message of `n` bytes travels as `max(1, ceil(n / max_payload))` packets, `eof` on the last
//! (an empty message is one packet with no data).
//!
//! ## Decoding rules
//!
//! - The length prefix is read first and checked against the receiver's
//!   [`max_packet_size`] (TM2's `maxPacketMsgSize`: a full packet on channel 1 plus 10 bytes,
//!   1,056 for the default payload of 1,024): a prefix announcing more (prefix + body) is
//!   refused ([`DecodeError::TooLarge`]) *before* any byte of the body is read or buffered.
//! - The body must be exactly one canonical Any of a known packet type. As gno's decoder, we
//!   refuse unknown types and fields, wrong wire types, decreasing field numbers and a channel
//!   or `eof` over 8 bits; stricter than gno, we also refuse every other encoding of a packet
//!   than the one gno writes (overlong varints, zero values written out, an `eof` other than
//!   1, an empty Ping value written out): one packet has exactly one encoding, and every
//!   packet gno writes is accepted (tests/tm2_vectors.rs, tests/tm2_interop.rs).
//!
//! The hot path ([`encode_msg`], [`decode_framed`]) copies message bytes straight into the
//! caller's buffer and decodes into a borrowed [`PacketRef`] without allocating.

use bytes::Bytes;

use crate::codec::amino::{self, AminoError, Fields, WireType};

/// Type URL of [`Packet::Ping`].
pub const PING_TYPE: &str = "/p2p.Ping";
/// Type URL of [`Packet::Pong`].
pub const PONG_TYPE: &str = "/p2p.Pong";
/// Type URL of [`Packet::Msg`].
pub const MSG_TYPE: &str = "/p2p.Msg";

/// A framed Ping: `0b 0a 09 "/p2p.Ping"`.
const PING_FRAMED: &[u8] = b"\x0b\x0a\x09/p2p.Ping";
/// A framed Pong: `0b 0a 09 "/p2p.Pong"`.
const PONG_FRAMED: &[u8] = b"\x0b\x0a\x09/p2p.Pong";

/// Longest uvarint (a length prefix never needs more).
pub const MAX_VARINT_LEN: usize = amino::MAX_UVARINT_LEN;

/// The slack TM2 adds to a full packet's size to get the largest packet it accepts
/// (`maxPacketMsgSize`, `conn/connection.go`).
pub const MAX_PACKET_SLACK: usize = 10;

/// One mconn packet, owned. The connection itself encodes and decodes through the borrowed
/// fast path ([`encode_msg`], [`decode_framed`]); this type is for building and inspecting
/// packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Keep-alive request; the peer answers with [`Packet::Pong`].
    Ping,
    /// Keep-alive answer.
    Pong,
    /// A piece of a message on one channel.
    Msg {
        /// The channel id.
        channel: u8,
        /// True on the last packet of a message.
        eof: bool,
        /// At most `max_packet_msg_payload_size` bytes of the message.
        data: Bytes,
    },
}

/// A decoded packet borrowing its data from the input buffer (no allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketRef<'a> {
    /// Keep-alive request.
    Ping,
    /// Keep-alive answer.
    Pong,
    /// A piece of a message on one channel.
    Msg {
        /// The channel id.
        channel: u8,
        /// True on the last packet of a message.
        eof: bool,
        /// The piece of the message carried by this packet.
        data: &'a [u8],
    },
}

/// Why bytes from the peer are not a valid packet. Always the peer's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The length prefix announces a packet (prefix + body) larger than the receiver's
    /// [`max_packet_size`]; detected before the body is read.
    #[error("packet of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Announced size: prefix + body length.
        len: u64,
        /// The receiver's maximum packet size.
        max: usize,
    },
    /// The Any's type URL is not `/p2p.Ping`, `/p2p.Pong` or `/p2p.Msg` (an empty packet, which
    /// gno decodes to nil and then refuses, included).
    #[error("unknown packet type {0:?}")]
    UnknownPacketType(String),
    /// A Msg's `eof` is neither absent (0) nor 1: gno reads any other value as "not last" but
    /// never writes one.
    #[error("packet eof flag {0} is not 1")]
    InvalidEof(u8),
    /// The bytes are not the canonical amino encoding of a packet (see the module docs).
    #[error("malformed packet: {0}")]
    Malformed(AminoError),
}

impl From<AminoError> for DecodeError {
    fn from(e: AminoError) -> Self {
        match e {
            AminoError::TooLarge { len, max } => Self::TooLarge { len, max },
            AminoError::UnexpectedType(t) => Self::UnknownPacketType(t),
            other => Self::Malformed(other),
        }
    }
}

impl Packet {
    /// Appends this packet, with its length prefix, to `out`.
    pub fn encode_framed(&self, out: &mut Vec<u8>) {
        self.as_ref().encode_framed(out);
    }

    /// The borrowed view of this packet.
    pub fn as_ref(&self) -> PacketRef<'_> {
        match self {
            Self::Ping => PacketRef::Ping,
            Self::Pong => PacketRef::Pong,
            Self::Msg { channel, eof, data } => PacketRef::Msg {
                channel: *channel,
                eof: *eof,
                data,
            },
        }
    }
}

impl PacketRef<'_> {
    /// Appends this packet, with its length prefix, to `out`.
    pub fn encode_framed(&self, out: &mut Vec<u8>) {
        match *self {
            Self::Ping => out.extend_from_slice(PING_FRAMED),
            Self::Pong => out.extend_from_slice(PONG_FRAMED),
            Self::Msg { channel, eof, data } => encode_msg(channel, eof, data, out),
        }
    }

    /// Copies the data into an owned [`Packet`].
    pub fn to_packet(&self) -> Packet {
        match *self {
            Self::Ping => Packet::Ping,
            Self::Pong => Packet::Pong,
            Self::Msg { channel, eof, data } => Packet::Msg {
                channel,
                eof,
                data: Bytes::copy_from_slice(data),
            },
        }
    }
}

/// The largest packet (length prefix included) a receiver accepts when messages are split into
/// pieces of at most `max_payload` bytes: TM2's `maxPacketMsgSize`, the size of a full `Msg`
/// on channel 1 plus [`MAX_PACKET_SLACK`] (1,056 for the default payload of 1,024). The slack
/// covers the extra byte a channel id of 128 or more takes, so a peer with the same setting is
/// never refused.
pub fn max_packet_size(max_payload: usize) -> usize {
    msg_framed_len(1, true, max_payload) + MAX_PACKET_SLACK
}

/// Length of the body (the msg inside the Any's value) of a `Msg` packet.
const fn msg_value_len(channel: u8, eof: bool, data_len: usize) -> usize {
    amino::varint_field_len(1, channel as u64)
        + amino::varint_field_len(2, eof as u64)
        + if data_len == 0 {
            0
        } else {
            amino::element_len(3, data_len)
        }
}

/// Length of a framed `Msg` packet on `channel` carrying `data_len` bytes.
pub const fn msg_framed_len(channel: u8, eof: bool, data_len: usize) -> usize {
    amino::sized_len(amino::any_len(
        MSG_TYPE.len(),
        msg_value_len(channel, eof, data_len),
    ))
}

/// Appends a framed `Msg` packet to `out`, copying `data` straight into it.
pub fn encode_msg(channel: u8, eof: bool, data: &[u8], out: &mut Vec<u8>) {
    out.reserve(msg_framed_len(channel, eof, data.len()));
    encode_msg_head(channel, eof, data.len(), out);
    out.extend_from_slice(data);
}

/// Appends everything of a framed `Msg` packet carrying `data_len` bytes but the data itself,
/// which must follow it on the wire: [`encode_msg`] is this plus the data, so a writer can send
/// the data from where it lies instead of copying it in.
pub fn encode_msg_head(channel: u8, eof: bool, data_len: usize, out: &mut Vec<u8>) {
    let value = msg_value_len(channel, eof, data_len);
    let any = amino::any_len(MSG_TYPE.len(), value);
    amino::put_uvarint(out, any as u64);
    amino::put_element(out, 1, MSG_TYPE.as_bytes());
    if value > 0 {
        amino::put_key(out, 2, WireType::Bytes);
        amino::put_uvarint(out, value as u64);
        amino::put_varint_field(out, 1, u64::from(channel));
        amino::put_bool_field(out, 2, eof);
        if data_len > 0 {
            amino::put_key(out, 3, WireType::Bytes);
            amino::put_uvarint(out, data_len as u64);
        }
    }
}

/// Decodes one framed packet from the start of `buf` (tokio-util contract).
///
/// Returns `Ok(None)` when `buf` does not yet hold the whole packet (more bytes needed),
/// `Ok(Some((packet, used)))` with the number of bytes the packet took, or an error. The length
/// prefix is checked against `max_packet_size` as soon as it is complete, before the body.
pub fn decode_framed(
    buf: &[u8],
    max_packet_size: usize,
) -> Result<Option<(PacketRef<'_>, usize)>, DecodeError> {
    let Some((prefix, total)) = amino::sized_header(buf, max_packet_size)? else {
        return Ok(None);
    };
    let Some(body) = buf.get(prefix..total) else {
        return Ok(None);
    };
    Ok(Some((decode_body(body)?, total)))
}

/// The total length (prefix + body) of the packet starting at `buf`, once its length prefix is
/// complete (`Ok(None)` before that); refuses a packet larger than `max_packet_size`.
pub fn framed_len(buf: &[u8], max_packet_size: usize) -> Result<Option<usize>, DecodeError> {
    Ok(amino::sized_header(buf, max_packet_size)?.map(|(_, total)| total))
}

/// Decodes a packet body (the Any, without its length prefix): exactly one packet, nothing
/// after it.
pub fn decode_body(body: &[u8]) -> Result<PacketRef<'_>, DecodeError> {
    match decode_msg_fast(body) {
        Some(packet) => Ok(packet),
        None => decode_body_checked(body),
    }
}

/// What every Msg body starts with: the Any's type URL field and the key of its value.
const MSG_HEAD: &[u8] = b"\x0a\x08/p2p.Msg\x12";

/// The common case in a few comparisons: a Msg in the layout gno writes, with a channel below
/// 0x80 and data. `None` for anything else, valid or not, which [`decode_body_checked`] then
/// decides. Whatever this accepts, the checked decoder accepts with the same value (a unit
/// test and a property test check it).
#[inline]
fn decode_msg_fast(body: &[u8]) -> Option<PacketRef<'_>> {
    let rest = body.strip_prefix(MSG_HEAD)?;
    let (value, rest) = short_len_prefixed(rest)?;
    if !rest.is_empty() {
        return None;
    }
    let [0x08, channel @ 0x01..=0x7f, rest @ ..] = value else {
        return None;
    };
    let (eof, rest) = match rest {
        [0x10, 0x01, rest @ ..] => (true, rest),
        rest => (false, rest),
    };
    let [0x1a, rest @ ..] = rest else {
        return None;
    };
    let (data, rest) = short_len_prefixed(rest)?;
    if data.is_empty() || !rest.is_empty() {
        return None;
    }
    Some(PacketRef::Msg {
        channel: *channel,
        eof,
        data,
    })
}

/// Splits `buf` into the bytes a canonical one- or two-byte uvarint length announces and the
/// rest; `None` for a longer, overlong or truncated one (packets are at most a few KiB, so a
/// two-byte length covers every one the fast path sees).
#[inline]
fn short_len_prefixed(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, n) = match *buf {
        [b0 @ 0x00..=0x7f, ..] => (usize::from(b0), 1),
        [b0 @ 0x80..=0xff, b1 @ 0x01..=0x7f, ..] => {
            (usize::from(b0 & 0x7f) | usize::from(b1) << 7, 2)
        }
        _ => return None,
    };
    let rest = &buf[n..];
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// [`decode_body`] without the fast path: every rule, every error.
fn decode_body_checked(body: &[u8]) -> Result<PacketRef<'_>, DecodeError> {
    if body.is_empty() {
        return Err(DecodeError::UnknownPacketType(String::new()));
    }
    let (type_url, value) = amino::decode_any(body)?;
    match type_url {
        b"/p2p.Msg" => decode_msg(value),
        b"/p2p.Ping" | b"/p2p.Pong" if !value.is_empty() => {
            Err(DecodeError::Malformed(amino::unexpected_value(value)))
        }
        b"/p2p.Ping" => Ok(PacketRef::Ping),
        b"/p2p.Pong" => Ok(PacketRef::Pong),
        other => Err(amino::unexpected_type(other).into()),
    }
}

/// Decodes the value of a `/p2p.Msg` Any.
fn decode_msg(value: &[u8]) -> Result<PacketRef<'_>, DecodeError> {
    let (mut channel, mut eof, mut data) = (0, false, &[][..]);
    let mut fields = Fields::new(value);
    while let Some(field) = fields.next()? {
        match field.number {
            1 => channel = field.nonzero_u8()?,
            2 => match field.nonzero_u8()? {
                1 => eof = true,
                other => return Err(DecodeError::InvalidEof(other)),
            },
            3 => data = field.nonempty_bytes()?,
            _ => return Err(field.unknown().into()),
        }
    }
    Ok(PacketRef::Msg { channel, eof, data })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 1056;

    fn framed(p: &Packet) -> Vec<u8> {
        let mut out = Vec::new();
        p.encode_framed(&mut out);
        out
    }

    fn msg(channel: u8, eof: bool, data: &[u8]) -> Packet {
        Packet::Msg {
            channel,
            eof,
            data: Bytes::copy_from_slice(data),
        }
    }

    fn decode_one(bytes: &[u8]) -> Result<Option<(Packet, usize)>, DecodeError> {
        Ok(decode_framed(bytes, MAX)?.map(|(p, used)| (p.to_packet(), used)))
    }

    /// A sized packet around `any`.
    fn sized(any: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        amino::put_sized(&mut out, any);
        out
    }

    /// A sized `/p2p.Msg` Any around the raw msg value `value`.
    fn sized_msg(value: &[u8]) -> Vec<u8> {
        let mut any = Vec::new();
        amino::put_element(&mut any, 1, b"/p2p.Msg");
        amino::put_element(&mut any, 2, value);
        sized(&any)
    }

    // --- bad input first ---

    #[test]
    fn oversize_length_prefix_is_refused_before_the_body_arrives() {
        // Prefix announcing a 1055-byte body (1057 with the prefix): one over the maximum.
        let prefix = [0x9f, 0x08];
        assert_eq!(
            decode_framed(&prefix, MAX),
            Err(DecodeError::TooLarge {
                len: 1057,
                max: MAX
            })
        );
        // The largest legal announcement only asks for more bytes.
        assert_eq!(decode_framed(&[0x9e, 0x08], MAX), Ok(None));
        // A 10-byte prefix claiming u64::MAX does not overflow.
        let huge = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert!(matches!(
            decode_framed(&huge, MAX),
            Err(DecodeError::TooLarge { len: u64::MAX, .. })
        ));
    }

    #[test]
    fn unknown_packet_types_are_refused() {
        let mut any = Vec::new();
        amino::put_any(&mut any, "/p2p.Pinh", &[]);
        assert_eq!(
            decode_framed(&sized(&any), MAX),
            Err(DecodeError::UnknownPacketType("/p2p.Pinh".into()))
        );
        let mut any = Vec::new();
        amino::put_any(&mut any, "/p2p.Request", &[]);
        assert!(matches!(
            decode_framed(&sized(&any), MAX),
            Err(DecodeError::UnknownPacketType(_))
        ));
        // An empty packet: gno decodes it to nil, then stops the connection.
        assert!(matches!(
            decode_framed(&[0], MAX),
            Err(DecodeError::UnknownPacketType(_))
        ));
    }

    #[test]
    fn what_gno_refuses_is_refused() {
        for (value, why) in [
            (&b"\x10\x01\x08\x30"[..], "decreasing field numbers"),
            (b"\x08\x30\x20\x01", "unknown field 4"),
            (b"\x08\x30\x12\x00", "wrong wire type for eof"),
            (b"\x0a\x01\x30", "wrong wire type for channel"),
            (b"\x1a\x01", "data length past the end"),
            (b"\x08\x80\x02", "channel over 8 bits"),
            (b"\x08\x30\x10\x81\x02", "eof over 8 bits"),
        ] {
            let err = decode_framed(&sized_msg(value), MAX).unwrap_err();
            assert!(matches!(err, DecodeError::Malformed(_)), "{why}: {err:?}");
        }
        // Bytes after the Any's fields, an unknown Any field.
        let mut bad = b"\x0a\x09/p2p.Ping\x1a\x00".to_vec();
        assert!(decode_framed(&sized(&bad), MAX).is_err());
        bad.truncate(11);
        bad.extend_from_slice(b"\x12\x02\x08\x01");
        assert!(decode_framed(&sized(&bad), MAX).is_err());
    }

    #[test]
    fn other_encodings_than_gnos_are_refused() {
        // gno accepts these (it decodes leniently) but never writes them.
        for (value, why) in [
            (&b"\x08\x00\x10\x01"[..], "channel 0 written out"),
            (b"\x08\x30\x10\x00", "eof 0 written out"),
            (b"\x08\x30\x10\x01\x1a\x00", "empty data written out"),
            (b"\x08\xb0\x00", "overlong channel varint"),
            (b"\x08\x30\x08\x31", "channel twice"),
        ] {
            let err = decode_framed(&sized_msg(value), MAX).unwrap_err();
            assert!(matches!(err, DecodeError::Malformed(_)), "{why}: {err:?}");
        }
        assert_eq!(
            decode_framed(&sized_msg(b"\x08\x30\x10\x02"), MAX),
            Err(DecodeError::InvalidEof(2))
        );
        // An explicit empty value, and an overlong length prefix (gno accepts `8f 00`).
        assert!(decode_framed(&sized(b"\x0a\x09/p2p.Ping\x12\x00"), MAX).is_err());
        assert_eq!(
            decode_framed(b"\x8b\x00\x0a\x09/p2p.Ping", MAX),
            Err(DecodeError::Malformed(AminoError::OverlongVarint))
        );
    }

    #[test]
    fn truncated_and_trailing_bodies_are_refused() {
        let good = framed(&msg(0x30, true, b"abc"));
        let body = &good[1..];
        // Amino has no end marker: a cut right after the type URL is a Msg with no value (the
        // length prefix is what protects a stream); every other cut is an error.
        for cut in 0..body.len() {
            match decode_body(&body[..cut]) {
                Ok(p) => assert_eq!((cut, p.to_packet()), (10, msg(0, false, b""))),
                Err(_) => assert_ne!(cut, 10),
            }
        }
        let mut longer = body.to_vec();
        longer.push(0);
        assert!(decode_body(&longer).is_err());
    }

    #[test]
    fn incomplete_input_asks_for_more() {
        let bytes = framed(&msg(9, true, &[0xab; 300]));
        for cut in 0..bytes.len() {
            assert_eq!(decode_framed(&bytes[..cut], MAX), Ok(None), "cut {cut}");
        }
        assert!(decode_framed(&bytes, MAX).unwrap().is_some());
    }

    // --- layout ---

    #[test]
    fn documented_examples_are_exact() {
        assert_eq!(
            hex::encode(framed(&Packet::Ping)),
            "0b0a092f7032702e50696e67"
        );
        assert_eq!(
            hex::encode(framed(&Packet::Pong)),
            "0b0a092f7032702e506f6e67"
        );
        assert_eq!(
            hex::encode(framed(&msg(7, true, b"hello world"))),
            "1d0a082f7032702e4d73671211080710011a0b68656c6c6f20776f726c64"
        );
        assert_eq!(
            hex::encode(framed(&msg(0x30, false, b"abc"))),
            "130a082f7032702e4d7367120708301a03616263"
        );
        assert_eq!(
            hex::encode(framed(&msg(0, false, b""))),
            "0a0a082f7032702e4d7367"
        );
        assert_eq!(max_packet_size(1024), 1056);
        assert_eq!(msg_framed_len(1, true, 1024), 1046);
    }

    #[test]
    fn max_packet_size_holds_a_full_packet_on_every_channel() {
        for payload in [1, 100, 105, 106, 107, 1024, 16_000, 16_384, 65_000, 1 << 20] {
            let max = max_packet_size(payload);
            for channel in [0, 1, 0x7f, 0x80, 0xff] {
                let bytes = framed(&msg(channel, true, &vec![7; payload]));
                assert!(bytes.len() <= max, "payload {payload} channel {channel}");
                assert_eq!(bytes.len(), msg_framed_len(channel, true, payload));
                assert!(decode_framed(&bytes, max).unwrap().is_some());
            }
        }
    }

    #[test]
    fn the_fast_path_takes_the_common_shapes_and_leaves_the_rest() {
        for (channel, eof, len) in [
            (0x30, true, 1),
            (0x01, false, 127),
            (0x7f, true, 128),
            (0x40, true, 1024),
        ] {
            let bytes = framed(&msg(channel, eof, &vec![7; len]));
            let body = &bytes[amino::sized_header(&bytes, MAX).unwrap().unwrap().0..];
            let fast = decode_msg_fast(body).unwrap();
            assert_eq!(Ok(fast), decode_body_checked(body));
        }
        // Valid, but left to the checked decoder: channel 0x80 and up (two-byte varint), no
        // data, channel 0; and the control packets.
        for p in [
            msg(0x80, true, b"x"),
            msg(0x30, true, b""),
            msg(0, true, b"x"),
            Packet::Ping,
        ] {
            let bytes = framed(&p);
            let body = &bytes[amino::sized_header(&bytes, MAX).unwrap().unwrap().0..];
            assert_eq!(decode_msg_fast(body), None, "{p:?}");
            assert_eq!(decode_body(body).map(|q| q.to_packet()), Ok(p));
        }
    }

    #[test]
    fn decoded_packet_reports_bytes_used_and_ignores_what_follows() {
        let mut bytes = framed(&msg(3, false, b"abc"));
        let first = bytes.len();
        bytes.extend_from_slice(&framed(&Packet::Ping));
        assert_eq!(decode_one(&bytes), Ok(Some((msg(3, false, b"abc"), first))));
        assert_eq!(decode_one(&bytes[first..]), Ok(Some((Packet::Ping, 12))));
    }

    fn arb_packet() -> impl Strategy<Value = Packet> {
        prop_oneof![
            Just(Packet::Ping),
            Just(Packet::Pong),
            (
                any::<u8>(),
                any::<bool>(),
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..300),
                    proptest::collection::vec(any::<u8>(), 16_370..16_400),
                ]
            )
                .prop_map(|(channel, eof, data)| Packet::Msg {
                    channel,
                    eof,
                    data: data.into()
                }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn encode_then_decode_round_trips(p in arb_packet()) {
            let bytes = framed(&p);
            prop_assert_eq!(
                decode_framed(&bytes, bytes.len()).unwrap().map(|(q, n)| (q.to_packet(), n)),
                Some((p, bytes.len()))
            );
        }

        #[test]
        fn an_accepted_packet_is_its_one_encoding(
            value in proptest::collection::vec(
                prop_oneof![Just(0x08u8), Just(0x10), Just(0x1a), Just(0x00), Just(0x01), Just(0x80), any::<u8>()],
                0..12,
            ),
        ) {
            // Random msg values built from likely keys: anything accepted re-encodes to itself.
            let bytes = sized_msg(&value);
            if let Ok(Some((p, used))) = decode_framed(&bytes, 1 << 20) {
                prop_assert_eq!(used, bytes.len());
                prop_assert_eq!(framed(&p.to_packet()), bytes);
            }
        }

        #[test]
        fn the_fast_path_agrees_with_the_checked_decoder(
            p in arb_packet(),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
            cut in any::<usize>(),
            value in proptest::collection::vec(
                prop_oneof![Just(0x08u8), Just(0x10), Just(0x1a), Just(0x01), Just(0x80), any::<u8>()],
                0..12,
            ),
        ) {
            // A valid body, with a few bytes replaced and possibly cut short, and a random Msg
            // value built from likely keys: whatever the fast path accepts, the checked decoder
            // accepts with the same value.
            let mut body = framed(&p);
            let prefix = amino::sized_header(&body, usize::MAX).unwrap().unwrap().0;
            body.drain(..prefix);
            for (at, byte) in edits {
                let at = at % body.len();
                body[at] = byte;
            }
            body.truncate(body.len() - cut % 3);
            let mut random = MSG_HEAD.to_vec();
            amino::put_uvarint(&mut random, value.len() as u64);
            random.extend_from_slice(&value);
            for b in [&body, &random] {
                if let Some(fast) = decode_msg_fast(b) {
                    prop_assert_eq!(decode_body_checked(b), Ok(fast), "{:02x?}", b);
                }
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_framed(&bytes, MAX);
            let _ = decode_framed(&bytes, 3);
            let _ = framed_len(&bytes, 0);
            let _ = decode_body(&bytes);
        }
    }
}
