//! The hot-path frame decoders on arbitrary bytes: no panic, no read past the input, and a
//! decoded ENCRYPT yields exactly `count` records that re-encode to the same bytes.
#![no_main]

use imcrypt::hotpath::frame::{self, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (limits, bytes) = data.split_at(data.len().min(2));
    let max_frame = 64 + u32::from(limits.first().copied().unwrap_or(0)) * 256;
    let max_batch = u32::from(limits.get(1).copied().unwrap_or(255));
    let mut rest = bytes;
    while let Ok(Some((req, n))) = frame::decode_request(rest, max_frame, max_batch) {
        assert!(n <= rest.len());
        if let Request::Encrypt { request_id, records } = req {
            assert_eq!(records.iter().count(), records.len());
            let mut again = Vec::new();
            frame::encode_encrypt(
                &mut again,
                request_id,
                records.iter().collect::<Vec<_>>().into_iter(),
            );
            assert_eq!(&again[..], &rest[..n]);
        }
        rest = &rest[n..];
    }
    let mut rest = bytes;
    while let Ok(Some((_, n))) = frame::decode_response(rest, max_frame) {
        assert!(n <= rest.len());
        rest = &rest[n..];
    }
});
