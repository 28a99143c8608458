//! Hot-path frames decoded in both directions: see `imcrypt::fuzzing::frame` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imcrypt::fuzzing::frame(data);
});
