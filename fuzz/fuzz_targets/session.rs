//! A hot-path server session fed arbitrary bytes after HELLO: see `imcrypt::fuzzing::session` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imcrypt::fuzzing::session(data);
});
