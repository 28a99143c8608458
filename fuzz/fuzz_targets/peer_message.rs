//! Peer messages (JSON lines) delivered to a cluster's state machine: see `imcrypt::fuzzing::peer_message` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imcrypt::fuzzing::peer_message(data);
});
