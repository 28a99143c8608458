//! Key export documents parsed and unwrapped as the data viewer does: see `imcrypt::fuzzing::key_export` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imcrypt::fuzzing::key_export(data);
});
