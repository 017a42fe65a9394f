//! Arbitrary frames into a `FrameOpener`.
//!
//! Input: the first byte picks the mode.
//! - even: the rest, cut into 1044-byte frames, is opened as received ciphertext (must fail:
//!   nothing here can forge a Poly1305 tag);
//! - odd: the rest, padded or cut to 1028 bytes, is sealed with the right key as a plaintext
//!   frame (arbitrary length field included) and opened, which reaches the checks made after
//!   decryption.
//!
//! Must never panic; whatever opens must be at most DATA_MAX bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use tm2_p2p::secret::{DATA_MAX, FRAME_LEN, FrameOpener, PLAINTEXT_LEN};

const KEY: [u8; 32] = [0x42; 32];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(mut opener) = FrameOpener::from_raw_key(&KEY, 0) else {
        return;
    };
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
    let Ok(key) = UnboundKey::new(&CHACHA20_POLY1305, &KEY) else {
        return;
    };
    let key = LessSafeKey::new(key);
    let Ok(tag) = key.seal_in_place_separate_tag(
        Nonce::assume_unique_for_key([0; 12]),
        Aad::empty(),
        &mut frame[..PLAINTEXT_LEN],
    ) else {
        return;
    };
    frame[PLAINTEXT_LEN..].copy_from_slice(tag.as_ref());
    match opener.open(&mut frame) {
        Ok(opened) => {
            assert!(opened.len() <= DATA_MAX);
            assert_eq!(opened.len() as u64, u64::from(declared));
        }
        Err(_) => assert!(declared as usize > DATA_MAX),
    }
});
