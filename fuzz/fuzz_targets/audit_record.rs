//! Audit trail lines parsed and their hash chain checked, as `imcrypt audit verify` does: see `imcrypt::fuzzing::audit_record` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imcrypt::fuzzing::audit_record(data);
});
