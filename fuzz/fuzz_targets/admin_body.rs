//! Admin API request bodies through the API's parse and value checks: see `imcrypt::fuzzing::admin_body` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imcrypt::fuzzing::admin_body(data);
});
