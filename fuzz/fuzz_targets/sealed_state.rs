//! Sealed state files and the state documents inside them: see `imcrypt::fuzzing::sealed_state` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imcrypt::fuzzing::sealed_state(data);
});
