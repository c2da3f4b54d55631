//! Arbitrary scenarios of devices and clients against the server's
//! sessions and registry; every promise of PROTOCOL.md is checked after
//! every step (see `server/src/sim.rs`, which also decodes the bytes).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = signaling_server::sim::run_bytes(data) {
        panic!("{violation}");
    }
});
