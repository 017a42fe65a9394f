//! The one place bytes are encoded and decoded.
//!
//! - [`amino`]: TM2's wire. Everything a node puts on a connection after the secret-connection
//!   handshake (NodeInfo, mconn packets, peer-exchange messages) is TM2's amino binary
//!   encoding, built from the primitives of that module, byte for byte what gno's code writes
//!   (docs/PROTOCOL.md; every encoding gno wrote for the vectors is checked in
//!   tests/tm2_vectors.rs).
//! - [`encode`] and [`decode`]: this project's own typed payloads (what a reactor puts *inside*
//!   a message), serde + bincode 2.0.1 in its standard configuration. Never the wire itself:
//!   the two codecs share nothing, not even their varints (bincode's agree with amino's uvarint
//!   only below 128).
//!
//! Decoding is hostile-input safe in both:
//! - the caller passes the largest input it is willing to decode, checked before anything is
//!   read, so no declared length can make us allocate past what the peer actually sent;
//! - bincode's own limit ([`DECODE_LIMIT`]) bounds every container claim as a second line;
//! - input left over after the value is an error ([`DecodeError::TrailingBytes`]), so one
//!   message has exactly one encoding.

pub mod amino;

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
}
