//! Config files (TOML) parsed and validated as at start-up: see `imcrypt::fuzzing::config` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imcrypt::fuzzing::config(data);
});
