//! Measurements several benchmarks compare against, and the process-level helpers the tests
//! use too (one file, `tests/common/sys.rs`, included by path).
//!
//! Each benchmark uses a different part of it.
#![allow(dead_code)]

#[path = "../../tests/common/sys.rs"]
mod sys;

use std::time::{Duration, Instant};

use criterion::black_box;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

#[allow(unused_imports)] // Each benchmark uses some of them.
pub(crate) use sys::{io_runtime, raise_fd_limit, rss};

/// Plaintext size of one secret-connection frame (4-byte length + 1024 data bytes).
pub(crate) const FRAME_PLAIN: usize = 1028;

/// Seals `n` 1028-byte frames with ring's ChaCha20-Poly1305 on this thread, as the secret
/// connection does, and returns the time taken: the single-core ceiling of any secret stream.
pub(crate) fn seal_frames(n: u64) -> Duration {
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[7; 32]).unwrap());
    let mut frame = [0u8; FRAME_PLAIN];
    let start = Instant::now();
    for i in 0..n {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&i.to_le_bytes());
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut frame,
            )
            .unwrap();
        let _ = black_box(tag);
    }
    start.elapsed()
}
