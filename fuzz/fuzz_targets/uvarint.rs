//! `uvarint`: see `tm2_p2p::fuzzing::uvarint` (src/fuzzing.rs) for what it feeds and checks.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tm2_p2p::fuzzing::uvarint(data));
