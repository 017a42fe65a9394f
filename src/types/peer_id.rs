//! [`PeerId`]: a node's identity, derived from its Ed25519 public key exactly as TM2 does.

use std::fmt;
use std::str::FromStr;

use bech32::primitives::decode::{CheckedHrpstring, CheckedHrpstringError, ChecksumError};
use bech32::{Bech32, Hrp};
use ring::digest;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The bech32 human-readable prefix of peer ids (TM2's `crypto.Bech32AddrPrefix()`).
pub const PEER_ID_PREFIX: &str = "g";

/// Length of a peer id in bytes: the first 20 bytes of SHA-256 of the public key
/// (TM2's `tmhash.SumTruncated`).
pub const PEER_ID_LEN: usize = 20;

/// A node's identity: the first 20 bytes of SHA-256 of its Ed25519 public key, written as
/// bech32 with prefix `g` (for example `g1x36slx9at870e9rd53d2405n80s4ff94dx42dl`).
///
/// The id of a connection is always derived from the key the secret-connection handshake
/// authenticated, never taken from what a peer claims.
///
/// Serialized as its bech32 string in human-readable formats (JSON, TOML) and as its 20 raw
/// bytes in the binary wire codec.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId([u8; PEER_ID_LEN]);

impl PeerId {
    /// Derives the id of an Ed25519 public key.
    pub fn from_public_key(public_key: &[u8; 32]) -> Self {
        let hash = digest::digest(&digest::SHA256, public_key);
        let mut id = [0; PEER_ID_LEN];
        id.copy_from_slice(&hash.as_ref()[..PEER_ID_LEN]);
        Self(id)
    }

    /// Wraps 20 raw id bytes.
    pub const fn from_bytes(bytes: [u8; PEER_ID_LEN]) -> Self {
        Self(bytes)
    }

    /// The 20 raw id bytes.
    pub const fn as_bytes(&self) -> &[u8; PEER_ID_LEN] {
        &self.0
    }
}

/// Why a string is not a valid [`PeerId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerIdError {
    /// The string is empty (TM2's `ErrZeroID`).
    #[error("peer id is empty")]
    Empty,
    /// The string is not bech32 at all: no separator, a character outside the bech32
    /// alphabet, mixed case, or too long.
    #[error("peer id is not valid bech32: {0}")]
    Syntax(String),
    /// The string is bech32-shaped but its checksum does not match (a typo).
    #[error("peer id has a bad bech32 checksum")]
    BadChecksum,
    /// The human-readable prefix is not `g`.
    #[error("peer id has prefix {found:?}, expected {PEER_ID_PREFIX:?}")]
    WrongPrefix {
        /// The prefix found.
        found: String,
    },
    /// The payload is not 20 bytes.
    #[error("peer id is {len} bytes long, expected {PEER_ID_LEN}")]
    WrongLength {
        /// The payload length found.
        len: usize,
    },
}

fn hrp() -> Hrp {
    Hrp::parse_unchecked(PEER_ID_PREFIX)
}

impl FromStr for PeerId {
    type Err = PeerIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(PeerIdError::Empty);
        }
        let checked = CheckedHrpstring::new::<Bech32>(s).map_err(|e| match e {
            CheckedHrpstringError::Checksum(ChecksumError::InvalidResidue) => {
                PeerIdError::BadChecksum
            }
            other => PeerIdError::Syntax(other.to_string()),
        })?;
        if checked.hrp() != hrp() {
            return Err(PeerIdError::WrongPrefix {
                found: checked.hrp().to_string(),
            });
        }
        let mut id = [0; PEER_ID_LEN];
        let mut len = 0;
        for byte in checked.byte_iter() {
            if len < PEER_ID_LEN {
                id[len] = byte;
            }
            len += 1;
        }
        if len != PEER_ID_LEN {
            return Err(PeerIdError::WrongLength { len });
        }
        Ok(Self(id))
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        bech32::encode_lower_to_fmt::<Bech32, _>(f, hrp(), &self.0).map_err(|_| fmt::Error)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}

impl Serialize for PeerId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            self.0.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for PeerId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let s = String::deserialize(deserializer)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            <[u8; PEER_ID_LEN]>::deserialize(deserializer).map(Self)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex32(s: &str) -> [u8; 32] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    #[test]
    fn reproduces_tm2_node_id_vectors() {
        let csv = include_str!("../../tests/data/tm2_node_ids.csv");
        let mut n = 0;
        for line in csv.lines().filter(|l| !l.trim().is_empty()) {
            let cols: Vec<&str> = line.split(',').map(str::trim).collect();
            let id = PeerId::from_public_key(&hex32(cols[1]));
            assert_eq!(id.to_string(), cols[2]);
            assert_eq!(cols[2].parse::<PeerId>().unwrap(), id);
            n += 1;
        }
        assert_eq!(n, 3);
    }

    #[test]
    fn tm2_example_id_parses() {
        let id: PeerId = "g1m6kmam774klwlh4dhmhaatd7al02m0h0jwnyc6".parse().unwrap();
        assert_eq!(id.to_string(), "g1m6kmam774klwlh4dhmhaatd7al02m0h0jwnyc6");
    }

    #[test]
    fn empty_is_its_own_error() {
        assert_eq!("".parse::<PeerId>(), Err(PeerIdError::Empty));
    }

    #[test]
    fn wrong_checksum_is_reported_as_such() {
        // Last checksum character changed.
        let err = "g1x36slx9at870e9rd53d2405n80s4ff94dx42dm"
            .parse::<PeerId>()
            .unwrap_err();
        assert_eq!(err, PeerIdError::BadChecksum);
        // A data character changed.
        let err = "g1x36slx9at870e9rd53d2405n80s4ff94dx43dl"
            .parse::<PeerId>()
            .unwrap_err();
        assert_eq!(err, PeerIdError::BadChecksum);
    }

    #[test]
    fn wrong_prefix_is_reported_as_such() {
        let id = [7u8; 20];
        let s = bech32::encode::<Bech32>(Hrp::parse("cosmos").unwrap(), &id).unwrap();
        assert_eq!(
            s.parse::<PeerId>(),
            Err(PeerIdError::WrongPrefix {
                found: "cosmos".into()
            })
        );
        let s = bech32::encode::<Bech32>(Hrp::parse("gpub").unwrap(), &id).unwrap();
        assert!(matches!(
            s.parse::<PeerId>(),
            Err(PeerIdError::WrongPrefix { .. })
        ));
    }

    #[test]
    fn wrong_length_is_reported_as_such() {
        for len in [0, 19, 21, 32] {
            let s = bech32::encode::<Bech32>(hrp(), &vec![1u8; len]).unwrap();
            assert_eq!(
                s.parse::<PeerId>(),
                Err(PeerIdError::WrongLength { len }),
                "len {len}"
            );
        }
    }

    #[test]
    fn non_bech32_is_a_syntax_error() {
        for s in [
            "g",
            "g1",
            "nothing",
            "g1b",
            "g1x36slx9at870e9rd53d2405n80s4FF94dx42dl",
            "g1 x",
        ] {
            assert!(
                matches!(s.parse::<PeerId>(), Err(PeerIdError::Syntax(_))),
                "{s}"
            );
        }
    }

    #[test]
    fn bech32m_checksum_is_refused() {
        let s = bech32::encode::<bech32::Bech32m>(hrp(), &[1u8; 20]).unwrap();
        assert_eq!(s.parse::<PeerId>(), Err(PeerIdError::BadChecksum));
    }

    #[test]
    fn serde_forms() {
        let id = PeerId::from_bytes([9; 20]);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<PeerId>(&json).unwrap(), id);
        let wire = crate::codec::encode(&id).unwrap();
        assert_eq!(wire, [9; 20]);
        assert_eq!(crate::codec::decode::<PeerId>(&wire, 20).unwrap(), id);
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(bytes in any::<[u8; 20]>()) {
            let id = PeerId::from_bytes(bytes);
            prop_assert_eq!(id.to_string().parse::<PeerId>().unwrap(), id);
            prop_assert_eq!(id.to_string().len(), 40);
        }

        #[test]
        fn random_strings_never_panic(s in ".{0,64}") {
            let _ = s.parse::<PeerId>();
        }

        #[test]
        fn random_bytes_into_the_decoder_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = crate::codec::decode::<PeerId>(&bytes, 64);
        }
    }
}
