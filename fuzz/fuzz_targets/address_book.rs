//! `address_book`: see `tm2_p2p::fuzzing::address_book` (src/fuzzing.rs) for what it feeds and checks.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tm2_p2p::fuzzing::address_book(data));
