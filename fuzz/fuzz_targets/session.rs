//! A server session fed arbitrary bytes (after a valid HELLO): no panic, every answer frame is
//! well formed, and nothing is answered after a closing error.
#![no_main]

use std::sync::{Arc, OnceLock};

use imcrypt::crypto::aead::AeadImpl;
use imcrypt::crypto::keyring::KeyRing;
use imcrypt::crypto::random::NonceSource;
use imcrypt::hotpath::frame::{self, Response};
use imcrypt::hotpath::session::{Limits, Next, Session};
use imcrypt::hotpath::{KeySource, MemoryReservations};
use imcrypt::ids::{ClusterId, DomainId};
use libfuzzer_sys::fuzz_target;

fn keys() -> &'static KeySource {
    static K: OnceLock<KeySource> = OnceLock::new();
    K.get_or_init(|| {
        let ks = KeySource::new(
            ClusterId::new("fuzz").unwrap(),
            AeadImpl::Ring,
            Arc::new(MemoryReservations::new()),
        )
        .unwrap();
        let ring = KeyRing::new(DomainId::from_bytes([1; 16]), 0, zeroize::Zeroizing::new([2; 32]));
        ks.set_ring(Some(&ring)).unwrap();
        ks
    })
}

fuzz_target!(|data: &[u8]| {
    let mut input = Vec::new();
    frame::encode_hello(&mut input, 1, 1);
    input.extend_from_slice(data);
    let mut s =
        Session::new(Limits { max_frame: 1 << 16, max_batch: 64 }, NonceSource::from_seed([0; 32]));
    let mut out = Vec::new();
    let p = s.handle(&input, keys(), &mut out, true);
    assert!(p.used <= input.len());
    assert_ne!(p.next, Next::WaitForReservation);
    let mut rest = &out[..];
    let mut closed = false;
    while let Some((r, n)) =
        frame::decode_response(rest, u32::MAX).expect("answers are well formed")
    {
        assert!(!closed, "an answer after a closing error");
        if let Response::Error { closes: true, .. } = r {
            closed = true;
        }
        rest = &rest[n..];
    }
    assert!(rest.is_empty());
    assert_eq!(closed, p.next == Next::Close);
});
