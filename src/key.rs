//! [`NodeKey`]: the node's long-term Ed25519 identity key.
//!
//! The id of a node ([`PeerId`]) is derived from this key's public half. The secret-connection
//! handshake proves possession of the key by signing a per-connection challenge.

use std::fmt;

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};

use crate::types::PeerId;

/// Length of an Ed25519 seed (the private half TM2 stores first).
pub const SEED_LEN: usize = 32;
/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// The node's Ed25519 identity key.
///
/// Holds the 32-byte seed (from which ring expands the signing key) and the derived key pair.
/// `Debug` never prints the seed.
pub struct NodeKey {
    /// The private seed; kept so the key can be written back in TM2's 64-byte layout.
    seed: [u8; SEED_LEN],
    /// The expanded key pair used for signing.
    pair: Ed25519KeyPair,
}

/// Why a key could not be created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The system RNG failed (the OS refused to hand out randomness).
    #[error("the system random number generator failed")]
    Rng,
    /// ring refused the seed (does not happen for 32-byte seeds; kept so it is no panic).
    #[error("invalid Ed25519 seed")]
    InvalidSeed,
}

impl NodeKey {
    /// Generates a new key from the system RNG.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0; SEED_LEN];
        SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| KeyError::Rng)?;
        Self::from_seed(seed)
    }

    /// Builds the key from a 32-byte Ed25519 seed.
    pub fn from_seed(seed: [u8; SEED_LEN]) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| KeyError::InvalidSeed)?;
        Ok(Self { seed, pair })
    }

    /// The 32-byte seed (private: handle with care).
    pub fn seed(&self) -> &[u8; SEED_LEN] {
        &self.seed
    }

    /// The 32-byte Ed25519 public key.
    pub fn public_key(&self) -> [u8; PUBLIC_KEY_LEN] {
        let mut out = [0; PUBLIC_KEY_LEN];
        out.copy_from_slice(self.pair.public_key().as_ref());
        out
    }

    /// This node's id, derived from the public key.
    pub fn id(&self) -> PeerId {
        PeerId::from_public_key(&self.public_key())
    }

    /// Signs `message` with pure Ed25519.
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut out = [0; SIGNATURE_LEN];
        out.copy_from_slice(self.pair.sign(message).as_ref());
        out
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

/// Verifies an Ed25519 signature by `public_key` over `message`.
pub fn verify(public_key: &[u8; PUBLIC_KEY_LEN], message: &[u8], signature: &[u8]) -> bool {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key)
        .verify(message, signature)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproduces_tm2_node_id_vectors() {
        let csv = include_str!("../tests/data/tm2_node_ids.csv");
        for line in csv.lines().filter(|l| !l.trim().is_empty()) {
            let cols: Vec<&str> = line.split(',').map(str::trim).collect();
            let seed: [u8; 32] = hex::decode(cols[0]).unwrap().try_into().unwrap();
            let key = NodeKey::from_seed(seed).unwrap();
            assert_eq!(hex::encode(key.public_key()), cols[1]);
            assert_eq!(key.id().to_string(), cols[2]);
        }
    }

    #[test]
    fn signatures_verify_only_with_the_right_key_and_message() {
        let a = NodeKey::generate().unwrap();
        let b = NodeKey::generate().unwrap();
        let sig = a.sign(b"challenge");
        assert!(verify(&a.public_key(), b"challenge", &sig));
        assert!(!verify(&b.public_key(), b"challenge", &sig));
        assert!(!verify(&a.public_key(), b"challengf", &sig));
        assert!(!verify(&a.public_key(), b"challenge", &sig[..63]));
    }

    #[test]
    fn debug_does_not_leak_the_seed() {
        let key = NodeKey::from_seed([0xab; 32]).unwrap();
        let dbg = format!("{key:?}");
        assert!(!dbg.contains("ab, ab") && !dbg.contains("abab"), "{dbg}");
    }
}
