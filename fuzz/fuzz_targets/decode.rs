//! Arbitrary text through every decoder of the protocol crate: none may
//! panic, and what decodes re-encodes to text that decodes to the same
//! message (`protocol/src/fuzzing.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| protocol::fuzzing::check_decoders(data));
