//! The one place wire structs are encoded and decoded.
//!
//! Everything this project puts on the wire after the secret-connection handshake (NodeInfo,
//! mconn packets, peer-exchange messages) goes through [`encode`] and [`decode`]: serde +
//! bincode 2.0.1 in its *standard* configuration (little-endian, variable-length integers; the
//! byte layout is written down in docs/PROTOCOL.md).
//!
//! Decoding is hostile-input safe:
//! - the caller passes the largest input it is willing to decode, checked before anything is
//!   read, so no declared length can make us allocate past what the peer actually sent;
//! - bincode's own limit ([`DECODE_LIMIT`]) bounds every container claim as a second line;
//! - input left over after the value is an error ([`DecodeError::TrailingBytes`]), so one
//!   message has exactly one encoding.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The hard ceiling on any single decode, in bytes: no wire message of this project is larger
/// (the largest is a reassembled mconn message, bounded per channel well below this). bincode
/// refuses any length claim past it before allocating.
pub const DECODE_LIMIT: usize = 64 * 1024 * 1024;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<DECODE_LIMIT>,
>;

const CONFIG: Config = bincode::config::standard().with_limit::<DECODE_LIMIT>();

/// Why a value could not be encoded. Encoding our own well-formed types does not fail in
/// practice; this exists so a bug surfaces as an error rather than a panic.
#[derive(Debug, thiserror::Error)]
#[error("encoding failed: {0}")]
pub struct EncodeError(#[from] bincode::error::EncodeError);

/// Why bytes could not be decoded. Every variant is the remote's fault when the bytes came off
/// the network.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The input is longer than the caller's limit; nothing was decoded.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Length of the input.
        len: usize,
        /// The caller's limit.
        max: usize,
    },
    /// The input ended before the value was complete.
    #[error("message truncated")]
    Truncated,
    /// The value decoded but input bytes remained after it.
    #[error("{extra} trailing bytes after the message")]
    TrailingBytes {
        /// How many bytes were left over.
        extra: usize,
    },
    /// The bytes do not form a valid value of the expected type (bad tag, bad UTF-8, a
    /// length claim past the limit, a value a type's own validation refused, ...).
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Encodes `value` with the project's wire configuration.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, EncodeError> {
    Ok(bincode::serde::encode_to_vec(value, CONFIG)?)
}

/// Encodes `value`, appending to `out` (no intermediate allocation when `out` has room).
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    bincode::serde::encode_into_std_write(value, out, CONFIG)?;
    Ok(())
}

/// Decodes exactly one `T` from `bytes`, refusing input longer than `max_len` and any trailing
/// bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max_len: usize) -> Result<T, DecodeError> {
    if bytes.len() > max_len {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: max_len,
        });
    }
    let (value, used) =
        bincode::serde::decode_from_slice::<T, _>(bytes, CONFIG).map_err(DecodeError::from)?;
    if used != bytes.len() {
        return Err(DecodeError::TrailingBytes {
            extra: bytes.len() - used,
        });
    }
    Ok(value)
}

impl From<bincode::error::DecodeError> for DecodeError {
    fn from(e: bincode::error::DecodeError) -> Self {
        match e {
            bincode::error::DecodeError::UnexpectedEnd { .. } => Self::Truncated,
            other => Self::Malformed(other.to_string()),
        }
    }
}

/// bincode's variable-length integer, used on its own as the length prefix of stream-framed
/// messages (mconn packets, the NodeInfo exchange): values up to 250 in one byte, else a marker
/// byte `fb`/`fc`/`fd` and the value as a little-endian `u16`/`u32`/`u64`.
///
/// [`varint::get`] accepts only the canonical (shortest) form, so one value has one encoding;
/// bincode itself also accepts overlong forms.
pub mod varint {
    /// Largest value encoded in one byte (bincode's `SINGLE_BYTE_MAX`).
    const SINGLE_MAX: u8 = 250;
    /// Marker: a little-endian `u16` follows.
    const U16: u8 = 0xfb;
    /// Marker: a little-endian `u32` follows.
    const U32: u8 = 0xfc;
    /// Marker: a little-endian `u64` follows.
    const U64: u8 = 0xfd;
    /// The longest varint: marker + 8 bytes.
    pub const MAX_LEN: usize = 9;

    /// Why bytes are not a canonical varint.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
    pub enum VarintError {
        /// The first byte is `fe` or `ff`, which no varint starts with.
        #[error("invalid varint marker")]
        BadMarker,
        /// The value would fit in a shorter form.
        #[error("overlong varint")]
        Overlong,
    }

    /// How many bytes the varint encoding of `v` takes.
    pub const fn len(v: u64) -> usize {
        if v <= SINGLE_MAX as u64 {
            1
        } else if v <= u16::MAX as u64 {
            3
        } else if v <= u32::MAX as u64 {
            5
        } else {
            9
        }
    }

    /// Appends the varint encoding of `v` to `out`.
    pub fn put(out: &mut Vec<u8>, v: u64) {
        // Each cast is checked by the range test before it.
        if v <= u64::from(SINGLE_MAX) {
            out.push(v as u8);
        } else if v <= u64::from(u16::MAX) {
            out.push(U16);
            out.extend_from_slice(&(v as u16).to_le_bytes());
        } else if v <= u64::from(u32::MAX) {
            out.push(U32);
            out.extend_from_slice(&(v as u32).to_le_bytes());
        } else {
            out.push(U64);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// Reads a canonical varint from the start of `buf`: `Ok(None)` if `buf` ends inside it,
    /// else the value and the number of bytes it took.
    pub fn get(buf: &[u8]) -> Result<Option<(u64, usize)>, VarintError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let n = match first {
            0..=SINGLE_MAX => return Ok(Some((u64::from(first), 1))),
            U16 => 3,
            U32 => 5,
            U64 => 9,
            _ => return Err(VarintError::BadMarker),
        };
        let Some(bytes) = buf.get(1..n) else {
            return Ok(None);
        };
        let mut le = [0u8; 8];
        le[..bytes.len()].copy_from_slice(bytes);
        let value = u64::from_le_bytes(le);
        if len(value) != n {
            return Err(VarintError::Overlong);
        }
        Ok(Some((value, n)))
    }

    /// The header of a length-prefixed frame at the start of `buf`: `Ok(None)` until the prefix
    /// is complete, then `(prefix length, total length)`. A frame whose total (prefix + body)
    /// exceeds `max` is refused as soon as the prefix is read, before any of the body.
    pub fn frame_header(buf: &[u8], max: usize) -> Result<Option<(usize, usize)>, FrameError> {
        let Some((body, prefix)) = get(buf)? else {
            return Ok(None);
        };
        let total = body.saturating_add(prefix as u64);
        if total > max as u64 {
            return Err(FrameError::TooLarge { len: total, max });
        }
        // Fits in usize: bounded by `max`.
        Ok(Some((prefix, total as usize)))
    }

    /// Why a length-prefixed frame header is refused.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
    pub enum FrameError {
        /// The length prefix is not a canonical varint.
        #[error("length prefix: {0}")]
        Prefix(#[from] VarintError),
        /// The frame (prefix + body) is larger than the receiver accepts.
        #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
        TooLarge {
            /// The announced total length.
            len: u64,
            /// The receiver's limit.
            max: usize,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        a: u8,
        b: u64,
        text: String,
        list: Vec<Vec<u8>>,
    }

    fn sample() -> Sample {
        Sample {
            a: 7,
            b: 300,
            text: "hé".into(),
            list: vec![vec![1, 2], vec![]],
        }
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&sample()).unwrap();
        assert_eq!(decode::<Sample>(&bytes, 1024).unwrap(), sample());
    }

    #[test]
    fn layout_is_varint_little_endian() {
        // u8 7, u64 300 as varint (0xfb + LE u16), string len 3 + UTF-8, list of 2 byte vecs.
        let bytes = encode(&sample()).unwrap();
        assert_eq!(
            bytes,
            [7, 0xfb, 0x2c, 0x01, 3, b'h', 0xc3, 0xa9, 2, 2, 1, 2, 0]
        );
    }

    #[test]
    fn encode_into_appends() {
        let mut out = vec![0xaa];
        encode_into(&sample(), &mut out).unwrap();
        assert_eq!(out[0], 0xaa);
        assert_eq!(&out[1..], encode(&sample()).unwrap());
    }

    #[test]
    fn input_over_the_limit_is_refused_before_decoding() {
        let bytes = encode(&sample()).unwrap();
        let err = decode::<Sample>(&bytes, bytes.len() - 1).unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge { .. }), "{err:?}");
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&sample()).unwrap();
        bytes.extend_from_slice(&[0, 0]);
        let err = decode::<Sample>(&bytes, 1024).unwrap_err();
        assert!(
            matches!(err, DecodeError::TrailingBytes { extra: 2 }),
            "{err:?}"
        );
    }

    #[test]
    fn truncated_input_is_refused() {
        let bytes = encode(&sample()).unwrap();
        for cut in 0..bytes.len() {
            let err = decode::<Sample>(&bytes[..cut], 1024).unwrap_err();
            assert!(matches!(err, DecodeError::Truncated), "cut {cut}: {err:?}");
        }
    }

    #[test]
    fn huge_length_claim_does_not_allocate() {
        // A Vec<Vec<u8>> claiming u64::MAX elements in a 10-byte message.
        let bytes = [
            7, 0, 0, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ];
        assert!(decode::<Sample>(&bytes, 1024).is_err());
        let bytes = [0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert!(decode::<Vec<u8>>(&bytes, 1024).is_err());
        assert!(decode::<String>(&bytes, 1024).is_err());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<Sample>(&bytes, 1024);
            let _ = decode::<Vec<String>>(&bytes, 1024);
        }
    }

    #[test]
    fn varint_boundaries_round_trip_and_match_bincode() {
        for v in [
            0u64,
            1,
            250,
            251,
            0xffff,
            0x1_0000,
            0xffff_ffff,
            0x1_0000_0000,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            varint::put(&mut out, v);
            assert_eq!(out.len(), varint::len(v), "{v}");
            assert_eq!(out, encode(&v).unwrap(), "{v}");
            assert_eq!(varint::get(&out), Ok(Some((v, out.len()))), "{v}");
            for cut in 0..out.len() {
                assert_eq!(varint::get(&out[..cut]), Ok(None), "{v} cut {cut}");
            }
        }
    }

    #[test]
    fn varint_refuses_bad_markers_and_overlong_forms() {
        assert_eq!(varint::get(&[0xfe]), Err(varint::VarintError::BadMarker));
        assert_eq!(varint::get(&[0xff]), Err(varint::VarintError::BadMarker));
        assert_eq!(
            varint::get(&[0xfb, 5, 0]),
            Err(varint::VarintError::Overlong)
        );
        assert_eq!(
            varint::get(&[0xfc, 0xff, 0xff, 0, 0]),
            Err(varint::VarintError::Overlong)
        );
    }

    #[test]
    fn frame_header_refuses_oversize_before_the_body() {
        let mut buf = Vec::new();
        varint::put(&mut buf, 10_000);
        assert_eq!(
            varint::frame_header(&buf, 10_002),
            Err(varint::FrameError::TooLarge {
                len: 10_003,
                max: 10_002
            })
        );
        assert_eq!(varint::frame_header(&buf, 10_003), Ok(Some((3, 10_003))));
        assert_eq!(varint::frame_header(&buf[..2], 10), Ok(None));
    }
}
