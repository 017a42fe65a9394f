//! Key derivation: the X25519 shared secret becomes two ChaCha20-Poly1305 keys and the
//! challenge each side signs (TM2 `deriveSecretsAndChallenge`).

use std::fmt;

use ring::hkdf;

/// The HKDF `info` string TM2 uses (`conn/secret_connection.go`).
pub const HKDF_INFO: &[u8] = b"TENDERMINT_SECRET_CONNECTION_KEY_AND_CHALLENGE_GEN";

/// Length of each derived secret (two AEAD keys and the challenge).
pub const SECRET_LEN: usize = 32;

/// What one side derives from the Diffie-Hellman secret.
///
/// `Debug` does not print the secrets.
pub struct DerivedSecrets {
    /// Key of the AEAD that opens frames the peer sends us.
    pub recv: [u8; SECRET_LEN],
    /// Key of the AEAD that seals frames we send.
    pub send: [u8; SECRET_LEN],
    /// The 32 bytes both sides sign with their node keys to authenticate.
    pub challenge: [u8; SECRET_LEN],
}

impl fmt::Debug for DerivedSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DerivedSecrets").finish_non_exhaustive()
    }
}

/// The HKDF output length: three 32-byte secrets.
struct Okm96;

impl hkdf::KeyType for Okm96 {
    fn len(&self) -> usize {
        3 * SECRET_LEN
    }
}

/// Derives the AEAD keys and the challenge from the X25519 secret, exactly as TM2:
/// `HKDF-SHA256(ikm = dh_secret, salt = none, info = HKDF_INFO)` gives 96 bytes `K1 | K2 |
/// challenge`; the side whose ephemeral key sorts first (`loc_is_least`) receives with `K1`
/// and sends with `K2`, the other side the other way round.
pub fn derive_secrets_and_challenge(
    dh_secret: &[u8; SECRET_LEN],
    loc_is_least: bool,
) -> DerivedSecrets {
    let okm = hkdf_96(dh_secret);
    let mut k1 = [0; SECRET_LEN];
    let mut k2 = [0; SECRET_LEN];
    let mut challenge = [0; SECRET_LEN];
    k1.copy_from_slice(&okm[..SECRET_LEN]);
    k2.copy_from_slice(&okm[SECRET_LEN..2 * SECRET_LEN]);
    challenge.copy_from_slice(&okm[2 * SECRET_LEN..]);
    let (recv, send) = if loc_is_least { (k1, k2) } else { (k2, k1) };
    DerivedSecrets {
        recv,
        send,
        challenge,
    }
}

/// `HKDF-SHA256(ikm, no salt, HKDF_INFO, 96)`.
fn hkdf_96(ikm: &[u8; SECRET_LEN]) -> [u8; 3 * SECRET_LEN] {
    // RFC 5869: an absent salt is HashLen zero bytes.
    let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, &[0; 32]);
    let prk = salt.extract(ikm);
    let mut out = [0; 3 * SECRET_LEN];
    let info = [HKDF_INFO];
    // Invariant: ring's `expand` fails only when the requested length exceeds 255 hash lengths
    // (8160 bytes) and `fill` only when `out` differs from the KeyType's length; 96 bytes into
    // a 96-byte array is neither, so neither can fail. A zero-key fallback would be worse than
    // a panic here, hence `expect`.
    prk.expand(&info, Okm96)
        .and_then(|okm| okm.fill(&mut out))
        .expect("HKDF-SHA256 can always produce 96 bytes");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex32(s: &str) -> [u8; 32] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    #[test]
    fn reproduces_all_tm2_golden_vectors() {
        let csv = include_str!("../../tests/data/tm2_derive_secrets_and_challenge.csv");
        let mut n = 0;
        for line in csv.lines().filter(|l| !l.trim().is_empty()) {
            let cols: Vec<&str> = line.split(',').map(str::trim).collect();
            assert_eq!(cols.len(), 5, "{line}");
            let loc_is_least = match cols[1] {
                "true" => true,
                "false" => false,
                other => panic!("bad bool {other}"),
            };
            let got = derive_secrets_and_challenge(&hex32(cols[0]), loc_is_least);
            assert_eq!(hex::encode(got.recv), cols[2], "recv of {line}");
            assert_eq!(hex::encode(got.send), cols[3], "send of {line}");
            assert_eq!(hex::encode(got.challenge), cols[4], "challenge of {line}");
            n += 1;
        }
        assert_eq!(n, 32);
    }

    #[test]
    fn reproduces_the_reference_hkdf_vector() {
        let mut ikm = [0; 32];
        for (i, b) in ikm.iter_mut().enumerate() {
            *b = i as u8;
        }
        let okm = hkdf_96(&ikm);
        assert_eq!(
            hex::encode(okm),
            concat!(
                "a780af6ec59555888a367147aa0a04e63fa4fe36e482d6f2bb44b430a02ada92",
                "9afd8e227434b443265069990ea1f43fad6483f4ba8382bff3fcd7c7b56263a9",
                "c416030041e5ff720eb3336522239dd7d5de700ee41fa4eadda775dbad37930d",
            )
        );
        // The split: least side receives with K1, the other side sends with it.
        let least = derive_secrets_and_challenge(&ikm, true);
        let other = derive_secrets_and_challenge(&ikm, false);
        assert_eq!(least.recv, other.send);
        assert_eq!(least.send, other.recv);
        assert_eq!(least.challenge, other.challenge);
        assert_eq!(least.recv[..], okm[..32]);
        assert_eq!(least.challenge[..], okm[64..]);
    }

    #[test]
    fn debug_does_not_print_secrets() {
        let s = derive_secrets_and_challenge(&[7; 32], true);
        let dbg = format!("{s:?}");
        assert_eq!(dbg, "DerivedSecrets { .. }");
    }
}
