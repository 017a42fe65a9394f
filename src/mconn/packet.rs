//! mconn packets and their wire encoding.
//!
//! Three packet types travel over a secret connection once the handshake and the NodeInfo
//! exchange are done: [`Packet::Ping`], [`Packet::Pong`] and [`Packet::Msg`], a piece of a
//! message on one channel (TM2's `/p2p.Ping`, `/p2p.Pong`, `/p2p.Msg`; reference section 3.1).
//!
//! ## Byte layout
//!
//! The body of a packet is the project codec's encoding of [`Packet`] (serde + bincode 2.0.1,
//! standard configuration: an enum is its variant index as a varint, then its fields; `u8` is
//! one raw byte; `bool` is one byte `00`/`01`; a byte string is a varint length then the bytes).
//! On the stream every packet is preceded by the varint length of its body:
//!
//! ```text
//! packet  = varint(len(body)) body
//! body    = 00                                  Ping
//!         | 01                                  Pong
//!         | 02 channel:u8 eof:(00|01) varint(len(data)) data      Msg
//!
//! varint(v) = v                      if v <= 250           (1 byte)
//!           | fb + v as u16 LE       if v <= 0xffff        (3 bytes)
//!           | fc + v as u32 LE       if v <= 0xffff_ffff   (5 bytes)
//!           | fd + v as u64 LE       otherwise             (9 bytes)
//! ```
//!
//! Examples (hex, with the length prefix):
//!
//! | packet | bytes |
//! | --- | --- |
//! | Ping | `01 00` |
//! | Pong | `01 01` |
//! | Msg { channel: 0x40, eof: true, data: "hello" } | `09 02 40 01 05 68656c6c6f` |
//! | Msg { channel: 0x20, eof: false, data: 1024 bytes } | `fb 0604 02 20 00 fb 0004` + 1024 bytes (1033 B) |
//!
//! `eof = 01` marks the last packet of a message; a message of `n` bytes travels as
//! `max(1, ceil(n / max_payload))` packets (an empty message is one packet with empty data).
//!
//! ## Decoding rules
//!
//! - The length prefix is read first and checked against the receiver's
//!   [`max_packet_size`]: a prefix announcing more (prefix + body) is refused
//!   ([`DecodeError::TooLarge`]) *before* any byte of the body is read or buffered.
//! - The body must be exactly one packet: unknown types, an `eof` byte other than `00`/`01`,
//!   a data length that disagrees with the body length and bytes left over are errors.
//! - Varints must be canonical (the shortest form). The generic codec
//!   ([`crate::codec::decode`]) accepts overlong varints; this decoder is deliberately stricter
//!   so that one packet has exactly one encoding. Every packet it accepts decodes to the same
//!   value with the codec, and it accepts everything the codec encodes (tested below).
//!
//! The hot path ([`encode_msg`], [`decode_framed`]) is written by hand: it copies message bytes
//! straight into the caller's buffer and decodes into a borrowed [`PacketRef`] without
//! allocating. Tests prove it produces and accepts exactly the codec's bytes.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::codec::varint;

/// Variant index of [`Packet::Ping`] on the wire.
const PING: u8 = 0;
/// Variant index of [`Packet::Pong`] on the wire.
const PONG: u8 = 1;
/// Variant index of [`Packet::Msg`] on the wire.
const MSG: u8 = 2;

/// Longest varint: marker + 8 bytes.
pub const MAX_VARINT_LEN: usize = varint::MAX_LEN;

/// One mconn packet, owned. The connection itself encodes and decodes through the borrowed
/// fast path ([`encode_msg`], [`decode_framed`]); this type is for building and inspecting
/// packets and is what the codec (serde) encodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
        #[serde(with = "bytes_field")]
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
    /// The body starts with a byte that is not a known packet type.
    #[error("unknown packet type {0:#04x}")]
    UnknownPacketType(u8),
    /// A field has an invalid value; names the field.
    #[error("malformed packet field: {0}")]
    Malformed(&'static str),
    /// The body ended before its fields did (including a data length past the body's end).
    #[error("packet body truncated")]
    Truncated,
    /// The body holds bytes after the packet.
    #[error("{extra} trailing bytes after the packet")]
    TrailingBytes {
        /// How many bytes were left over.
        extra: usize,
    },
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
            Self::Ping => out.extend_from_slice(&[1, PING]),
            Self::Pong => out.extend_from_slice(&[1, PONG]),
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
/// pieces of at most `max_payload` bytes: exactly the size of a full `Msg` packet, so a peer
/// with the same setting is never refused. (TM2's `maxPacketMsgSize` adds 10 bytes of slack
/// to its amino encoding; our encoding is deterministic, so no slack is needed. 1033 bytes for
/// the default payload of 1024.)
pub fn max_packet_size(max_payload: usize) -> usize {
    msg_framed_len(max_payload)
}

/// Length of a framed `Msg` packet carrying `data_len` bytes.
pub fn msg_framed_len(data_len: usize) -> usize {
    let body = msg_body_len(data_len);
    varint::len(body as u64) + body
}

fn msg_body_len(data_len: usize) -> usize {
    3 + varint::len(data_len as u64) + data_len
}

/// Appends a framed `Msg` packet to `out`, copying `data` straight into it.
pub fn encode_msg(channel: u8, eof: bool, data: &[u8], out: &mut Vec<u8>) {
    let body = msg_body_len(data.len());
    out.reserve(varint::len(body as u64) + body);
    varint::put(out, body as u64);
    out.extend_from_slice(&[MSG, channel, u8::from(eof)]);
    varint::put(out, data.len() as u64);
    out.extend_from_slice(data);
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
    let Some((prefix, total)) = frame_header(buf, max_packet_size)? else {
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
    Ok(frame_header(buf, max_packet_size)?.map(|(_, total)| total))
}

/// `(prefix length, total length)` of the packet starting at `buf`, once the prefix is complete.
fn frame_header(buf: &[u8], max_packet_size: usize) -> Result<Option<(usize, usize)>, DecodeError> {
    varint::frame_header(buf, max_packet_size).map_err(|e| match e {
        varint::FrameError::TooLarge { len, max } => DecodeError::TooLarge { len, max },
        varint::FrameError::Prefix(_) => DecodeError::Malformed("length prefix"),
    })
}

/// Decodes a packet body (no length prefix): exactly one packet, nothing after it.
pub fn decode_body(body: &[u8]) -> Result<PacketRef<'_>, DecodeError> {
    let (&tag, rest) = body.split_first().ok_or(DecodeError::Truncated)?;
    let packet = match tag {
        PING => PacketRef::Ping,
        PONG => PacketRef::Pong,
        MSG => {
            let [channel, eof, rest @ ..] = rest else {
                return Err(DecodeError::Truncated);
            };
            let eof = match eof {
                0 => false,
                1 => true,
                _ => return Err(DecodeError::Malformed("eof")),
            };
            let (len, used) = get_varint(rest, "data length")?.ok_or(DecodeError::Truncated)?;
            let data = &rest[used..];
            if len > data.len() as u64 {
                return Err(DecodeError::Truncated);
            }
            if len < data.len() as u64 {
                return Err(DecodeError::TrailingBytes {
                    extra: data.len() - len as usize,
                });
            }
            return Ok(PacketRef::Msg {
                channel: *channel,
                eof,
                data,
            });
        }
        other => return Err(DecodeError::UnknownPacketType(other)),
    };
    match rest.len() {
        0 => Ok(packet),
        extra => Err(DecodeError::TrailingBytes { extra }),
    }
}

/// Reads a canonical varint from the start of `buf`; `Malformed(field)` for a bad marker or an
/// overlong form.
fn get_varint(buf: &[u8], field: &'static str) -> Result<Option<(u64, usize)>, DecodeError> {
    varint::get(buf).map_err(|_| DecodeError::Malformed(field))
}

/// serde for the `data` field: a byte string (varint length + raw bytes in bincode), decoded
/// into `Bytes` without a per-element loop.
mod bytes_field {
    use std::fmt;

    use bytes::Bytes;
    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(data: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(data)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Bytes;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
            Ok(Bytes::copy_from_slice(v))
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
            Ok(Bytes::from(v))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
            // Human-readable formats write bytes as a list; the size hint is the peer's claim,
            // so it only caps the preallocation.
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(Bytes::from(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use proptest::prelude::*;

    const MAX: usize = 1033;

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

    // --- bad input first ---

    #[test]
    fn oversize_length_prefix_is_refused_before_the_body_arrives() {
        // Prefix announcing a 1031-byte body (1034 with the prefix): one over the maximum.
        let prefix = [0xfb, 0x07, 0x04];
        assert_eq!(
            decode_framed(&prefix, MAX),
            Err(DecodeError::TooLarge {
                len: 1034,
                max: MAX
            })
        );
        // The largest legal announcement only asks for more bytes.
        assert_eq!(decode_framed(&[0xfb, 0x06, 0x04], MAX), Ok(None));
        // A 9-byte prefix claiming u64::MAX does not overflow.
        let huge = [0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            decode_framed(&huge, MAX),
            Err(DecodeError::TooLarge { len: u64::MAX, .. })
        ));
    }

    #[test]
    fn unknown_packet_type_is_refused() {
        assert_eq!(
            decode_framed(&[1, 3], MAX),
            Err(DecodeError::UnknownPacketType(3))
        );
        assert_eq!(
            decode_framed(&[1, 0xfb], MAX),
            Err(DecodeError::UnknownPacketType(0xfb))
        );
    }

    #[test]
    fn bad_eof_byte_is_refused() {
        assert_eq!(
            decode_framed(&[4, 2, 7, 2, 0], MAX),
            Err(DecodeError::Malformed("eof"))
        );
    }

    #[test]
    fn truncated_bodies_are_refused() {
        for body in [&[][..], &[2], &[2, 7], &[2, 7, 1], &[2, 7, 1, 3, b'a']] {
            let mut bytes = vec![body.len() as u8];
            bytes.extend_from_slice(body);
            assert_eq!(
                decode_framed(&bytes, MAX),
                Err(DecodeError::Truncated),
                "{body:?}"
            );
        }
    }

    #[test]
    fn trailing_bytes_in_a_body_are_refused() {
        assert_eq!(
            decode_framed(&[2, 0, 0], MAX),
            Err(DecodeError::TrailingBytes { extra: 1 })
        );
        assert_eq!(
            decode_framed(&[6, 2, 7, 1, 1, b'a', b'b'], MAX),
            Err(DecodeError::TrailingBytes { extra: 1 })
        );
    }

    #[test]
    fn overlong_varints_are_refused() {
        // Length prefix 2 written as fb 02 00.
        assert_eq!(
            decode_framed(&[0xfb, 2, 0, 2, 0], MAX),
            Err(DecodeError::Malformed("length prefix"))
        );
        // Data length 1 written as fb 01 00.
        assert_eq!(
            decode_framed(&[7, 2, 7, 1, 0xfb, 1, 0, b'a'], MAX),
            Err(DecodeError::Malformed("data length"))
        );
        // Markers fe/ff (u128, reserved) are not accepted.
        assert_eq!(
            decode_framed(&[0xfe], MAX),
            Err(DecodeError::Malformed("length prefix"))
        );
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
        assert_eq!(hex::encode(framed(&Packet::Ping)), "0100");
        assert_eq!(hex::encode(framed(&Packet::Pong)), "0101");
        assert_eq!(
            hex::encode(framed(&msg(0x40, true, b"hello"))),
            "090240010568656c6c6f"
        );
        let full = framed(&msg(0x20, false, &[0x55; 1024]));
        assert_eq!(hex::encode(&full[..9]), "fb0604022000fb0004");
        assert_eq!(full.len(), 1033);
        assert_eq!(max_packet_size(1024), 1033);
        assert_eq!(msg_framed_len(1024), 1033);
    }

    #[test]
    fn max_packet_size_fits_exactly_one_full_packet() {
        for payload in [1, 200, 245, 246, 247, 250, 251, 1024, 65_000, 70_000] {
            let bytes = framed(&msg(1, true, &vec![0; payload]));
            assert_eq!(bytes.len(), max_packet_size(payload), "payload {payload}");
            assert!(decode_framed(&bytes, max_packet_size(payload)).is_ok());
            let bigger = framed(&msg(1, true, &vec![0; payload + 1]));
            assert!(matches!(
                decode_framed(&bigger, max_packet_size(payload)),
                Err(DecodeError::TooLarge { .. })
            ));
        }
    }

    #[test]
    fn decoded_packet_reports_bytes_used_and_ignores_what_follows() {
        let mut bytes = framed(&msg(3, false, b"abc"));
        let first = bytes.len();
        bytes.extend_from_slice(&framed(&Packet::Ping));
        assert_eq!(decode_one(&bytes), Ok(Some((msg(3, false, b"abc"), first))));
        assert_eq!(decode_one(&bytes[first..]), Ok(Some((Packet::Ping, 2))));
    }

    // --- the fast path equals the codec ---

    fn arb_packet() -> impl Strategy<Value = Packet> {
        prop_oneof![
            Just(Packet::Ping),
            Just(Packet::Pong),
            (
                any::<u8>(),
                any::<bool>(),
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..300),
                    proptest::collection::vec(any::<u8>(), 65_530..65_540),
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
        fn fast_encoding_is_the_codec_encoding(p in arb_packet()) {
            let bytes = framed(&p);
            let body = codec::encode(&p).unwrap();
            let prefix = codec::encode(&(body.len() as u64)).unwrap();
            prop_assert_eq!(bytes, [prefix, body].concat());
        }

        #[test]
        fn encode_then_decode_round_trips(p in arb_packet()) {
            let bytes = framed(&p);
            prop_assert_eq!(
                decode_framed(&bytes, bytes.len()).unwrap().map(|(q, n)| (q.to_packet(), n)),
                Some((p, bytes.len()))
            );
        }

        #[test]
        fn fast_decoder_accepts_only_what_the_codec_accepts(
            body in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let fast = decode_body(&body);
            let slow = codec::decode::<Packet>(&body, 1 << 20);
            if let Ok(p) = &fast {
                // Stricter, never looser: the codec agrees on the value.
                prop_assert_eq!(slow.as_ref().ok(), Some(&p.to_packet()));
            }
            if let Ok(p) = &slow {
                // Everything the codec would produce itself is accepted.
                if codec::encode(p).unwrap() == body {
                    prop_assert_eq!(fast.map(|f| f.to_packet()).ok(), Some(p.clone()));
                }
            }
        }

        #[test]
        fn fast_decoder_agrees_on_codec_shaped_msgs(
            channel in any::<u8>(),
            eof in 0u8..3,
            len in 0u8..8,
            data in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            // Random bodies rarely hit a well-formed Msg; build near-misses on purpose.
            let body = [&[MSG, channel, eof, len][..], &data].concat();
            let fast = decode_body(&body).map(|p| p.to_packet()).ok();
            let slow = codec::decode::<Packet>(&body, 1 << 20).ok();
            prop_assert_eq!(fast, slow);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_framed(&bytes, MAX);
            let _ = decode_framed(&bytes, 3);
            let _ = framed_len(&bytes, 0);
        }
    }
}
