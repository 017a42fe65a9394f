//! Byte layouts of the two handshake messages (TM2 encodes them with amino: a uvarint length
//! prefix, then protobuf fields).
//!
//! We always write the one canonical form. We read the general sized form (any uvarint
//! encoding of the lengths), but require exactly the fields TM2 writes, in its order, with
//! nothing after them, and cap a message body at [`HANDSHAKE_MSG_MAX`] bytes.

use super::frame::DATA_MAX;
use super::handshake::HandshakeError;
use crate::codec::amino;

/// Length of the ephemeral-key message: `22 0a 20` + 32-byte X25519 public key.
pub const EPHEMERAL_MSG_LEN: usize = 3 + 32;
/// Length of the auth message: `64 0a 20` + Ed25519 public key + `12 40` + signature.
pub const AUTH_MSG_LEN: usize = 3 + 32 + 2 + 64;

/// The longest uvarint (a u64 takes at most 10 bytes).
const MAX_VARINT_LEN: usize = 10;

/// Largest handshake message body (after its length prefix) we accept, for either message.
///
/// TM2 accepts bodies up to 1 MiB, which lets an unauthenticated peer make us buffer 1 MiB
/// per connection before anything is checked. Both bodies have fixed-size fields (34 and 100
/// bytes in canonical form), so no valid message comes near this cap; it is the largest body
/// that, with the longest possible prefix, still fits in the data of one frame, so that the
/// auth message always arrives in a single frame.
pub const HANDSHAKE_MSG_MAX: usize = DATA_MAX - MAX_VARINT_LEN;

/// Protobuf key of field `n` with wire type 2 (length-delimited).
const fn bytes_key(field: u8) -> u8 {
    (field << 3) | 2
}

/// Encodes our ephemeral X25519 public key.
pub(crate) fn encode_ephemeral(public_key: &[u8; 32]) -> [u8; EPHEMERAL_MSG_LEN] {
    let mut out = [0; EPHEMERAL_MSG_LEN];
    out[..3].copy_from_slice(&[(EPHEMERAL_MSG_LEN - 1) as u8, bytes_key(1), 32]);
    out[3..].copy_from_slice(public_key);
    out
}

/// Encodes the auth message: our Ed25519 public key and our signature of the challenge.
pub(crate) fn encode_auth(public_key: &[u8; 32], signature: &[u8; 64]) -> [u8; AUTH_MSG_LEN] {
    let mut out = [0; AUTH_MSG_LEN];
    out[..3].copy_from_slice(&[(AUTH_MSG_LEN - 1) as u8, bytes_key(1), 32]);
    out[3..35].copy_from_slice(public_key);
    out[35..37].copy_from_slice(&[bytes_key(2), 64]);
    out[37..].copy_from_slice(signature);
    out
}

/// Decodes a uvarint at the start of `buf`: `Ok(None)` if `buf` ends inside it, else the
/// value and the number of bytes it took.
fn uvarint(buf: &[u8]) -> Result<Option<(u64, usize)>, HandshakeError> {
    let mut value: u64 = 0;
    for (i, &byte) in buf.iter().enumerate() {
        if i == MAX_VARINT_LEN - 1 && byte > 1 {
            return Err(HandshakeError::Malformed("varint overflows 64 bits"));
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    Ok(None)
}

/// For a buffer holding the start of a sized message: `Ok(None)` while the length prefix is
/// incomplete, then the lengths of the prefix and of the body. A declared body over
/// [`HANDSHAKE_MSG_MAX`] fails at once, before any of it is buffered.
fn sized_parts(buf: &[u8]) -> Result<Option<(usize, usize)>, HandshakeError> {
    let Some((len, prefix)) = uvarint(buf)? else {
        return Ok(None);
    };
    match usize::try_from(len) {
        Ok(len) if len <= HANDSHAKE_MSG_MAX => Ok(Some((prefix, len))),
        _ => Err(HandshakeError::MessageTooLarge {
            len,
            max: HANDSHAKE_MSG_MAX,
        }),
    }
}

/// The total length (prefix and body) of the sized message starting `buf`, once its prefix is
/// complete; see [`sized_parts`].
pub(crate) fn sized_total(buf: &[u8]) -> Result<Option<usize>, HandshakeError> {
    Ok(sized_parts(buf)?.map(|(prefix, body)| prefix + body))
}

/// Splits a complete sized message into its body, requiring the message to be all of `msg`.
fn sized_body(msg: &[u8]) -> Result<&[u8], HandshakeError> {
    let (prefix, len) =
        sized_parts(msg)?.ok_or(HandshakeError::Malformed("truncated length prefix"))?;
    if prefix + len != msg.len() {
        return Err(HandshakeError::Malformed(
            "message length does not match its prefix",
        ));
    }
    Ok(&msg[prefix..])
}

/// Reads one length-delimited field with number `field` from the front of `body`.
fn bytes_field<'a>(body: &mut &'a [u8], field: u8) -> Result<&'a [u8], HandshakeError> {
    let Some((key, n)) = uvarint(body)? else {
        return Err(HandshakeError::Malformed("missing field"));
    };
    if key != u64::from(bytes_key(field)) {
        return Err(HandshakeError::Malformed("unexpected field"));
    }
    let rest = &body[n..];
    let Some((len, n)) = uvarint(rest)? else {
        return Err(HandshakeError::Malformed("truncated field length"));
    };
    let rest = &rest[n..];
    let len = match usize::try_from(len) {
        Ok(len) if len <= rest.len() => len,
        _ => return Err(HandshakeError::Malformed("field longer than its message")),
    };
    let (value, rest) = rest.split_at(len);
    *body = rest;
    Ok(value)
}

/// Parses a complete ephemeral-key message (prefix included) into the peer's X25519 key.
pub(crate) fn parse_ephemeral(msg: &[u8]) -> Result<[u8; 32], HandshakeError> {
    let mut body = sized_body(msg)?;
    let key = bytes_field(&mut body, 1)?;
    if !body.is_empty() {
        return Err(HandshakeError::Malformed("bytes after the ephemeral key"));
    }
    key.try_into()
        .map_err(|_| HandshakeError::Malformed("ephemeral key is not 32 bytes"))
}

/// Parses the data of the auth frame into the peer's Ed25519 public key and its signature.
///
/// The message must be the whole frame data: TM2 writes it with one `Write` of 101 bytes. The
/// key is read in two shapes: the raw 32 bytes gno's secret connection writes (and we write),
/// and the amino Any `{1: "/tm.PubKeyEd25519", 2: {1: key}}` that gno's amino writes for a
/// `crypto.PubKey` field (shared/vectors' `sts_authsig_sized`), so a peer whose struct holds
/// the interface is read too. Either way the signature is then verified against the key.
pub(crate) fn parse_auth(data: &[u8]) -> Result<([u8; 32], &[u8]), HandshakeError> {
    let mut body = sized_body(data)?;
    let key = bytes_field(&mut body, 1)?;
    let signature = bytes_field(&mut body, 2)?;
    if !body.is_empty() {
        return Err(HandshakeError::Malformed("bytes after the signature"));
    }
    let key = match <[u8; 32]>::try_from(key) {
        Ok(key) => key,
        Err(_) => any_ed25519_key(key)?,
    };
    Ok((key, signature))
}

/// The Ed25519 key inside an amino Any of `/tm.PubKeyEd25519` (`{1: 32 key bytes}`).
fn any_ed25519_key(any: &[u8]) -> Result<[u8; 32], HandshakeError> {
    const NOT_A_KEY: HandshakeError = HandshakeError::Malformed("public key is not 32 bytes");
    let (type_url, value) = amino::decode_any(any).map_err(|_| NOT_A_KEY)?;
    if type_url != ED25519_PUBKEY_TYPE.as_bytes() {
        return Err(HandshakeError::Malformed(
            "public key is not an Ed25519 key",
        ));
    }
    let mut fields = amino::Fields::new(value);
    match (fields.next(), fields.next()) {
        (Ok(Some(f)), Ok(None)) if f.number == 1 => f
            .bytes()
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or(NOT_A_KEY),
        _ => Err(NOT_A_KEY),
    }
}

/// Amino's type URL of an Ed25519 public key.
const ED25519_PUBKEY_TYPE: &str = "/tm.PubKeyEd25519";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn oversized_prefix_is_refused_before_the_body_arrives() {
        // 1 MiB + 1 as a uvarint: 81 80 40.
        let prefix = [0x81, 0x80, 0x40];
        assert_eq!(
            sized_total(&prefix),
            Err(HandshakeError::MessageTooLarge {
                len: 1024 * 1024 + 1,
                max: HANDSHAKE_MSG_MAX
            })
        );
        assert_eq!(
            sized_total(&[0xff; 9].iter().copied().chain([0x01]).collect::<Vec<_>>()),
            Err(HandshakeError::MessageTooLarge {
                len: u64::MAX,
                max: HANDSHAKE_MSG_MAX
            })
        );
    }

    #[test]
    fn overlong_varint_is_malformed() {
        assert!(matches!(
            sized_total(&[0xff; 10]),
            Err(HandshakeError::Malformed(_))
        ));
        assert!(matches!(
            sized_total(&[0x80; 11]),
            Err(HandshakeError::Malformed(_))
        ));
    }

    #[test]
    fn incomplete_prefix_asks_for_more() {
        assert_eq!(sized_total(&[]), Ok(None));
        assert_eq!(sized_total(&[0x80, 0x80]), Ok(None));
        assert_eq!(sized_total(&[0x22]), Ok(Some(35)));
    }

    #[test]
    fn ephemeral_with_wrong_shapes_is_malformed() {
        let key = [9; 32];
        let good = encode_ephemeral(&key);
        let cases: Vec<Vec<u8>> = vec![
            // Key of 31 bytes.
            [&[0x21, 0x0a, 0x1f][..], &key[..31]].concat(),
            // Field 2 instead of 1.
            [&[0x22, 0x12, 0x20][..], &key].concat(),
            // Wire type 0.
            [&[0x22, 0x08, 0x20][..], &key].concat(),
            // A byte after the key.
            [&[0x23, 0x0a, 0x20][..], &key, &[0]].concat(),
            // Field length past the body.
            [&[0x22, 0x0a, 0x21][..], &key].concat(),
            // Empty body.
            vec![0x00],
            // Prefix disagrees with the buffer.
            good[..34].to_vec(),
        ];
        for case in cases {
            assert!(
                matches!(parse_ephemeral(&case), Err(HandshakeError::Malformed(_))),
                "{}",
                hex::encode(&case)
            );
        }
    }

    #[test]
    fn ephemeral_round_trips_and_accepts_non_minimal_varints() {
        let key: [u8; 32] = core::array::from_fn(|i| i as u8);
        let msg = encode_ephemeral(&key);
        assert_eq!(hex::encode(&msg[..3]), "220a20");
        assert_eq!(parse_ephemeral(&msg), Ok(key));
        // Same message with the prefix and the field length written in two bytes.
        let long = [&[0xa3, 0x00, 0x0a, 0xa0, 0x00][..], &key].concat();
        assert_eq!(parse_ephemeral(&long), Ok(key));
    }

    #[test]
    fn auth_with_wrong_shapes_is_malformed() {
        let (key, sig) = ([1; 32], [2; 64]);
        let good = encode_auth(&key, &sig);
        let cases: Vec<Vec<u8>> = vec![
            // Fields swapped.
            [&[0x64, 0x12, 0x40][..], &sig, &[0x0a, 0x20], &key].concat(),
            // Missing signature.
            [&[0x22, 0x0a, 0x20][..], &key].concat(),
            // Key of 33 bytes.
            [&[0x65, 0x0a, 0x21][..], &key, &[0], &[0x12, 0x40], &sig].concat(),
            // A trailing field.
            [&good[..], &[0x1a, 0x00]].concat(),
            // Trailing bytes in the frame after a complete message.
            [&good[..], &[0]].concat(),
        ];
        for case in cases {
            assert!(
                matches!(parse_auth(&case), Err(HandshakeError::Malformed(_))),
                "{}",
                hex::encode(&case)
            );
        }
    }

    #[test]
    fn auth_round_trips_with_the_tm2_layout() {
        let (key, sig) = ([1; 32], [2; 64]);
        let msg = encode_auth(&key, &sig);
        assert_eq!(msg.len(), 101);
        assert_eq!(hex::encode(&msg[..3]), "640a20");
        assert_eq!(hex::encode(&msg[35..37]), "1240");
        let (k, s) = parse_auth(&msg).unwrap();
        assert_eq!(k, key);
        assert_eq!(s, &sig[..]);
    }

    /// shared/vectors/tm2_amino.csv, `sts_ephemeral_pubkey_sized` (bytes 01..20) and
    /// `sts_authsig_sized` (key #1 signing "challenge", its key as an amino Any).
    const EPHEMERAL_VECTOR: &str =
        "220a200102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20";
    const AUTHSIG_VECTOR: &str = "7b0a370a112f746d2e5075624b65794564323535313912220a20692fe6d442614058920bec01ea821b438e4baf8cb3a3ca9439d268a16fb80f5f124087b6e6b03a7f148919a54fa58182219f7326c0d10a51527525fa998d9fb1a78da2cbd137862cc91b3915f084194db297daf052d545cd130f1c1df94a7643d309";

    #[test]
    fn gno_vectors_of_the_handshake_frames() {
        let key: [u8; 32] = core::array::from_fn(|i| i as u8 + 1);
        assert_eq!(hex::encode(encode_ephemeral(&key)), EPHEMERAL_VECTOR);
        assert_eq!(
            parse_ephemeral(&hex::decode(EPHEMERAL_VECTOR).unwrap()),
            Ok(key)
        );
        // The Any-wrapped key reads to the same key and signature as the raw layout, whose
        // re-encoding is what gno's secret connection sends (tests/tm2_interop.rs).
        let wrapped = hex::decode(AUTHSIG_VECTOR).unwrap();
        let (key, sig) = parse_auth(&wrapped).unwrap();
        assert_eq!(hex::encode(&key[..4]), "692fe6d4");
        assert_eq!(sig.len(), 64);
        let raw = encode_auth(&key, sig.try_into().unwrap());
        assert_eq!(parse_auth(&raw).unwrap(), (key, sig));
        // Another key type, or a key of the wrong length inside the Any, is refused.
        let mut other = wrapped.clone();
        other[6] = b'X'; // "/tX.PubKey..."
        assert!(parse_auth(&other).is_err());
        let mut short = wrapped;
        short[25] = 0x1f; // inner key length 31
        assert!(parse_auth(&short).is_err());
    }

    proptest! {
        #[test]
        fn parsers_never_panic_on_random_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let _ = sized_total(&bytes);
            let _ = parse_ephemeral(&bytes);
            let _ = parse_auth(&bytes);
        }

        #[test]
        fn parsers_never_panic_on_near_valid_messages(
            pos in 0usize..AUTH_MSG_LEN,
            byte in any::<u8>(),
            cut in 0usize..=AUTH_MSG_LEN,
        ) {
            let mut auth = encode_auth(&[1; 32], &[2; 64]).to_vec();
            auth[pos] = byte;
            auth.truncate(cut);
            if let Ok((key, sig)) = parse_auth(&auth) {
                prop_assert_eq!(key.len() + sig.len() + 5, auth.len());
            }
            let mut eph = encode_ephemeral(&[3; 32]).to_vec();
            eph[pos % EPHEMERAL_MSG_LEN] = byte;
            eph.truncate(cut);
            let _ = parse_ephemeral(&eph);
        }
    }
}
