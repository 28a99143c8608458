//! Archived records opened with both AEAD implementations: see `imcrypt::fuzzing::record` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imcrypt::fuzzing::record(data);
});
