//! The encrypted framing of an established secret connection (TM2 `SecretConnection.Write` /
//! `Read`): every frame on the wire is exactly [`FRAME_LEN`] bytes, the ChaCha20-Poly1305
//! sealing of a 4-byte little-endian length, up to [`DATA_MAX`] data bytes and zero padding.

use std::fmt;

use ring::aead::{self, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

/// Size of the little-endian data length at the start of a plaintext frame (TM2
/// `dataLenSize`).
pub const DATA_LEN_SIZE: usize = 4;
/// Most data bytes one frame carries (TM2 `dataMaxSize`).
pub const DATA_MAX: usize = 1024;
/// Size of a plaintext frame: length, data and padding (TM2 `totalFrameSize`).
pub const PLAINTEXT_LEN: usize = DATA_LEN_SIZE + DATA_MAX;
/// Size of the Poly1305 tag appended to each frame (TM2 `aeadSizeOverhead`).
pub const TAG_LEN: usize = 16;
/// Size of every sealed frame on the wire.
pub const FRAME_LEN: usize = PLAINTEXT_LEN + TAG_LEN;
/// Size of an AEAD key.
pub const KEY_LEN: usize = 32;

/// Why a frame could not be sealed or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// [`FrameSealer::seal`] was given more than [`DATA_MAX`] bytes (a caller bug: split data
    /// into chunks first). Nothing was sealed and the sealer is still usable.
    #[error("{len} data bytes do not fit in one frame (max {DATA_MAX})")]
    DataTooLong {
        /// Length of the data given.
        len: usize,
    },
    /// A frame authenticated but its length field claims more than [`DATA_MAX`] bytes (TM2:
    /// "chunkLength is greater than dataMaxSize"): the peer is broken or hostile.
    #[error("frame length field {len} exceeds {DATA_MAX}")]
    LengthTooLarge {
        /// The length field found.
        len: u32,
    },
    /// The frame did not authenticate with the receive key and the expected nonce: it was
    /// tampered with, replayed, reordered, truncated or sealed with another key.
    #[error("frame failed to decrypt")]
    Decrypt,
    /// Every nonce has been used (2^64 frames in one direction); a nonce is never reused, so
    /// the connection must be closed.
    #[error("nonce counter exhausted")]
    NonceExhausted,
    /// An earlier frame failed to open, so this opener refuses everything (the stream is out of
    /// sync and must be closed).
    #[error("opener unusable after an earlier error")]
    Poisoned,
    /// ring refused a key or a seal that it cannot refuse for these sizes: a bug, kept as an
    /// error so that it is no panic.
    #[error("internal AEAD error")]
    Internal,
}

impl FrameError {
    /// Whether the peer caused this error (its bytes were bad), as opposed to a local bug or
    /// the nonce space running out.
    pub fn is_peer_fault(&self) -> bool {
        matches!(self, Self::LengthTooLarge { .. } | Self::Decrypt)
    }
}

/// The 64-bit frame counter behind a nonce (`00000000` + little-endian counter).
#[derive(Debug, Clone, Copy)]
struct Counter {
    /// The counter of the next frame; `None` once `u64::MAX` has been used.
    next: Option<u64>,
}

impl Counter {
    /// Returns the next nonce and advances, or fails without reusing any nonce.
    fn take(&mut self) -> Result<Nonce, FrameError> {
        let Some(n) = self.next else {
            return Err(FrameError::NonceExhausted);
        };
        self.next = n.checked_add(1);
        let mut nonce = [0; aead::NONCE_LEN];
        nonce[4..].copy_from_slice(&n.to_le_bytes());
        Ok(Nonce::assume_unique_for_key(nonce))
    }
}

/// Builds a ChaCha20-Poly1305 key.
fn chacha_key(key: &[u8; KEY_LEN]) -> Result<LessSafeKey, FrameError> {
    // Only a wrong key length makes this fail, and the type fixes it at 32.
    UnboundKey::new(&CHACHA20_POLY1305, key)
        .map(LessSafeKey::new)
        .map_err(|_| FrameError::Internal)
}

/// Seals outgoing frames with the send key and the send nonce counter.
///
/// A [`FrameError::DataTooLong`] leaves the sealer usable (nothing happened); after
/// [`FrameError::NonceExhausted`] it refuses every further frame.
pub struct FrameSealer {
    /// The send AEAD.
    key: LessSafeKey,
    /// The nonce of the next frame.
    counter: Counter,
}

impl FrameSealer {
    /// A sealer whose first frame uses nonce counter `next_nonce`.
    ///
    /// For tests and fuzzing (the handshake builds the real ones). Two sealers with one key
    /// would reuse nonces: never do that with a live key.
    #[doc(hidden)]
    pub fn from_raw_key(key: &[u8; KEY_LEN], next_nonce: u64) -> Result<Self, FrameError> {
        Ok(Self {
            key: chacha_key(key)?,
            counter: Counter {
                next: Some(next_nonce),
            },
        })
    }

    /// Seals `data` (at most [`DATA_MAX`] bytes, else [`FrameError::DataTooLong`]) as one frame,
    /// writing the whole sealed frame into `frame`. In place, no allocation.
    pub fn seal(&mut self, data: &[u8], frame: &mut [u8; FRAME_LEN]) -> Result<(), FrameError> {
        if data.len() > DATA_MAX {
            return Err(FrameError::DataTooLong { len: data.len() });
        }
        frame[DATA_LEN_SIZE..DATA_LEN_SIZE + data.len()].copy_from_slice(data);
        self.seal_filled(data.len(), frame)
    }

    /// Seals `frame` as one frame of `len` data bytes (at most [`DATA_MAX`], else
    /// [`FrameError::DataTooLong`]) that are already in place right after the length field,
    /// at `frame[DATA_LEN_SIZE..DATA_LEN_SIZE + len]`: writes the length and the zero padding,
    /// then seals in place. For a writer that fills its frames where they will be sent (one
    /// copy per byte); [`seal`](Self::seal) copies the data in first.
    pub fn seal_filled(
        &mut self,
        len: usize,
        frame: &mut [u8; FRAME_LEN],
    ) -> Result<(), FrameError> {
        if len > DATA_MAX {
            return Err(FrameError::DataTooLong { len });
        }
        let nonce = self.counter.take()?;
        let (plain, tag_out) = frame.split_at_mut(PLAINTEXT_LEN);
        // Invariant: len <= DATA_MAX < u32::MAX.
        plain[..DATA_LEN_SIZE].copy_from_slice(&(len as u32).to_le_bytes());
        plain[DATA_LEN_SIZE + len..].fill(0);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::empty(), plain)
            .map_err(|_| FrameError::Internal)?;
        tag_out.copy_from_slice(tag.as_ref());
        Ok(())
    }
}

impl fmt::Debug for FrameSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameSealer")
            .field("next_nonce", &self.counter.next)
            .finish_non_exhaustive()
    }
}

/// Opens incoming frames with the receive key and the receive nonce counter.
///
/// Frames must be opened in the order they were sealed: each one consumes a nonce, so a
/// replayed, dropped or reordered frame fails with [`FrameError::Decrypt`]. After any error
/// the opener is poisoned: every later call returns [`FrameError::Poisoned`] (or
/// [`FrameError::NonceExhausted`]); close the connection.
pub struct FrameOpener {
    /// The receive AEAD.
    key: LessSafeKey,
    /// The nonce of the next frame.
    counter: Counter,
    /// Set by the first error.
    poisoned: bool,
}

impl FrameOpener {
    /// An opener whose first frame uses nonce counter `next_nonce`.
    ///
    /// For tests and fuzzing (the handshake builds the real ones).
    #[doc(hidden)]
    pub fn from_raw_key(key: &[u8; KEY_LEN], next_nonce: u64) -> Result<Self, FrameError> {
        Ok(Self {
            key: chacha_key(key)?,
            counter: Counter {
                next: Some(next_nonce),
            },
            poisoned: false,
        })
    }

    /// Opens `frame` in place and returns its data part, a sub-slice of `frame` of at most
    /// [`DATA_MAX`] bytes (possibly empty). No allocation.
    pub fn open<'a>(&mut self, frame: &'a mut [u8; FRAME_LEN]) -> Result<&'a [u8], FrameError> {
        if self.poisoned {
            return Err(FrameError::Poisoned);
        }
        let result = self.open_inner(frame);
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn open_inner<'a>(&mut self, frame: &'a mut [u8; FRAME_LEN]) -> Result<&'a [u8], FrameError> {
        let nonce = self.counter.take()?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::empty(), frame)
            .map_err(|_| FrameError::Decrypt)?;
        let mut len = [0; DATA_LEN_SIZE];
        len.copy_from_slice(&plain[..DATA_LEN_SIZE]);
        let len = u32::from_le_bytes(len);
        match usize::try_from(len) {
            Ok(n) if n <= DATA_MAX => Ok(&plain[DATA_LEN_SIZE..DATA_LEN_SIZE + n]),
            _ => Err(FrameError::LengthTooLarge { len }),
        }
    }
}

impl fmt::Debug for FrameOpener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameOpener")
            .field("next_nonce", &self.counter.next)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: [u8; 32] = [0x42; 32];

    fn pair() -> (FrameSealer, FrameOpener) {
        (
            FrameSealer::from_raw_key(&KEY, 0).unwrap(),
            FrameOpener::from_raw_key(&KEY, 0).unwrap(),
        )
    }

    fn sealed(sealer: &mut FrameSealer, data: &[u8]) -> [u8; FRAME_LEN] {
        let mut frame = [0; FRAME_LEN];
        sealer.seal(data, &mut frame).unwrap();
        frame
    }

    #[test]
    fn too_long_data_is_refused_and_sealer_stays_usable() {
        let (mut sealer, mut opener) = pair();
        let mut frame = [0xaa; FRAME_LEN];
        assert_eq!(
            sealer.seal(&[0; DATA_MAX + 1], &mut frame),
            Err(FrameError::DataTooLong { len: DATA_MAX + 1 })
        );
        // No nonce was consumed: the next frame opens with nonce 0.
        let mut frame = sealed(&mut sealer, b"ok");
        assert_eq!(opener.open(&mut frame).unwrap(), b"ok");
    }

    #[test]
    fn seal_filled_seals_data_already_in_place_like_seal() {
        let (mut a, _) = pair();
        let (mut b, mut opener) = pair();
        for data in [&b""[..], b"in place", &[0x77; DATA_MAX][..]] {
            let copied = sealed(&mut a, data);
            // Garbage everywhere but the data: the length, padding and tag are overwritten.
            let mut frame = [0xee; FRAME_LEN];
            frame[DATA_LEN_SIZE..DATA_LEN_SIZE + data.len()].copy_from_slice(data);
            b.seal_filled(data.len(), &mut frame).unwrap();
            assert_eq!(frame, copied);
            assert_eq!(opener.open(&mut frame).unwrap(), data);
        }
        let mut frame = [0; FRAME_LEN];
        assert_eq!(
            b.seal_filled(DATA_MAX + 1, &mut frame),
            Err(FrameError::DataTooLong { len: DATA_MAX + 1 })
        );
    }

    #[test]
    fn every_tampered_byte_fails_to_decrypt() {
        let (mut sealer, _) = pair();
        let frame = sealed(&mut sealer, b"hello");
        for i in 0..FRAME_LEN {
            let mut bad = frame;
            bad[i] ^= 0x01;
            let mut opener = FrameOpener::from_raw_key(&KEY, 0).unwrap();
            assert_eq!(opener.open(&mut bad), Err(FrameError::Decrypt), "byte {i}");
        }
    }

    #[test]
    fn replayed_frame_fails_to_decrypt() {
        let (mut sealer, mut opener) = pair();
        let frame = sealed(&mut sealer, b"once");
        let mut first = frame;
        assert_eq!(opener.open(&mut first).unwrap(), b"once");
        let mut again = frame;
        assert_eq!(opener.open(&mut again), Err(FrameError::Decrypt));
    }

    #[test]
    fn reordered_frames_fail_to_decrypt() {
        let (mut sealer, mut opener) = pair();
        let _first = sealed(&mut sealer, b"1");
        let mut second = sealed(&mut sealer, b"2");
        assert_eq!(opener.open(&mut second), Err(FrameError::Decrypt));
    }

    #[test]
    fn wrong_key_fails_to_decrypt() {
        let mut sealer = FrameSealer::from_raw_key(&[1; 32], 0).unwrap();
        let mut opener = FrameOpener::from_raw_key(&[2; 32], 0).unwrap();
        let mut frame = sealed(&mut sealer, b"x");
        assert_eq!(opener.open(&mut frame), Err(FrameError::Decrypt));
    }

    #[test]
    fn opener_is_poisoned_after_an_error() {
        let (mut sealer, mut opener) = pair();
        let mut good = sealed(&mut sealer, b"good");
        let mut bad = good;
        bad[0] ^= 1;
        assert_eq!(opener.open(&mut bad), Err(FrameError::Decrypt));
        assert_eq!(opener.open(&mut good), Err(FrameError::Poisoned));
    }

    #[test]
    fn authenticated_length_over_data_max_is_refused() {
        // Seal a plaintext with a length field of 1025 directly with ring, as a broken peer
        // would.
        let key = chacha_key(&KEY).unwrap();
        let mut frame = [0; FRAME_LEN];
        frame[..4].copy_from_slice(&1025u32.to_le_bytes());
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::empty(),
                &mut frame[..PLAINTEXT_LEN],
            )
            .unwrap();
        frame[PLAINTEXT_LEN..].copy_from_slice(tag.as_ref());
        let mut opener = FrameOpener::from_raw_key(&KEY, 0).unwrap();
        assert_eq!(
            opener.open(&mut frame),
            Err(FrameError::LengthTooLarge { len: 1025 })
        );
        assert!(FrameError::LengthTooLarge { len: 1025 }.is_peer_fault());
    }

    #[test]
    fn nonce_counter_never_wraps() {
        let start = u64::MAX - 1;
        let mut sealer = FrameSealer::from_raw_key(&KEY, start).unwrap();
        let mut opener = FrameOpener::from_raw_key(&KEY, start).unwrap();
        for data in [&b"max-1"[..], b"max"] {
            let mut frame = sealed(&mut sealer, data);
            assert_eq!(opener.open(&mut frame).unwrap(), data);
        }
        let mut frame = [0; FRAME_LEN];
        assert_eq!(
            sealer.seal(b"wrap", &mut frame),
            Err(FrameError::NonceExhausted)
        );
        assert_eq!(opener.open(&mut frame), Err(FrameError::NonceExhausted));
        assert!(!FrameError::NonceExhausted.is_peer_fault());
    }

    #[test]
    fn layout_is_length_data_padding_tag_with_le_counter_nonce() {
        let (mut sealer, _) = pair();
        let _ = sealed(&mut sealer, b"first");
        let mut frame = sealed(&mut sealer, b"second");
        // The second frame uses nonce 00000000 01000000 00000000.
        let key = chacha_key(&KEY).unwrap();
        let mut nonce = [0; 12];
        nonce[4] = 1;
        assert_eq!(hex::encode(nonce), "000000000100000000000000");
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut frame,
            )
            .unwrap();
        assert_eq!(plain.len(), PLAINTEXT_LEN);
        assert_eq!(&plain[..4], &6u32.to_le_bytes());
        assert_eq!(&plain[4..10], b"second");
        assert!(plain[10..].iter().all(|&b| b == 0));
    }

    #[test]
    fn round_trips_empty_and_full_frames_in_order() {
        let (mut sealer, mut opener) = pair();
        let full = [0x5a; DATA_MAX];
        for data in [&[][..], &full[..], b"mid"] {
            let mut frame = sealed(&mut sealer, data);
            assert_eq!(opener.open(&mut frame).unwrap(), data);
        }
    }

    #[test]
    fn debug_shows_counters_not_keys() {
        let (sealer, opener) = pair();
        assert_eq!(
            format!("{sealer:?}"),
            "FrameSealer { next_nonce: Some(0), .. }"
        );
        assert!(format!("{opener:?}").contains("poisoned: false"));
    }

    proptest! {
        #[test]
        fn random_frames_never_open_and_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), FRAME_LEN),
            start in any::<u64>(),
        ) {
            let mut frame: [u8; FRAME_LEN] = bytes.try_into().unwrap();
            let mut opener = FrameOpener::from_raw_key(&KEY, start).unwrap();
            prop_assert!(opener.open(&mut frame).is_err());
        }

        #[test]
        fn any_data_up_to_max_round_trips(
            data in proptest::collection::vec(any::<u8>(), 0..=DATA_MAX),
        ) {
            let (mut sealer, mut opener) = pair();
            let mut frame = sealed(&mut sealer, &data);
            prop_assert_eq!(opener.open(&mut frame).unwrap(), &data[..]);
        }
    }
}
