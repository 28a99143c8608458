//! Archive event lines (JSON) parsed into rows: see `imcrypt::fuzzing::archive_event` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imcrypt::fuzzing::archive_event(data);
});
