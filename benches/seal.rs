//! In-process AES-256-GCM seal throughput, both implementations side by side, for 64 B,
//! 256 B, 1 KiB and 16 KiB plaintexts: the baseline the hot path is held against.
//!
//! Two rows per size and implementation: the bare AEAD (key, fixed nonce, no header) and a full
//! imcrypt record (counter, ChaCha nonce, header, associated data). Ratios are against ring's
//! bare AEAD at the same size, measured in this run. One core, `cargo bench --bench seal`.

#[path = "common/mod.rs"]
mod common;

use common::rate;
use std::hint::black_box;
use std::time::Duration;

use imcrypt::crypto::aead::{AeadImpl, AeadKey};
use imcrypt::crypto::keyring::KeyRing;
use imcrypt::crypto::random::{NonceSource, new_key};
use imcrypt::crypto::record::RecordSealer;
use imcrypt::ids::{ClusterId, DomainId};

const SIZES: [usize; 4] = [64, 256, 1024, 16384];

fn main() {
    let budget = Duration::from_millis(
        std::env::var("IMCRYPT_BENCH_MS").ok().and_then(|s| s.parse().ok()).unwrap_or(700),
    );
    let ring = KeyRing::new(DomainId::from_bytes([1; 16]), 0, new_key());
    let cluster = ClusterId::new("bench").unwrap();
    println!("AES-256-GCM seal, one core ({} ms per figure)", budget.as_millis());
    println!(
        "{:>7}  {:<8} {:<7} {:>13} {:>10} {:>9}",
        "size", "impl", "what", "records/s", "MB/s", "vs ring"
    );
    for size in SIZES {
        let pt = vec![0x5au8; size];
        let mut baseline = 0.0;
        for imp in AeadImpl::ALL {
            let key = AeadKey::new(imp, &[7; 32]);
            let mut buf = Vec::with_capacity(size + 16);
            let bare = rate(budget, || {
                buf.clear();
                buf.extend_from_slice(&pt);
                key.seal_in_place(&[0; 12], b"", &mut buf, 0);
                black_box(&buf);
            });
            if imp == AeadImpl::Ring {
                baseline = bare;
            }
            let sealer = RecordSealer::new(&ring, &cluster, imp, 0);
            sealer.counter().commit_reservation(imcrypt::crypto::counter::HARD_LIMIT);
            let mut nonces = NonceSource::from_os();
            let mut out = Vec::with_capacity(size + 64);
            let record = rate(budget, || {
                out.clear();
                sealer.seal_into(&mut nonces, b"msg-0001", &pt, &mut out).unwrap();
                black_box(&out);
            });
            for (what, r) in [("aead", bare), ("record", record)] {
                println!(
                    "{:>7}  {:<8} {:<7} {:>13.0} {:>10.1} {:>8.2}x",
                    size,
                    imp.name(),
                    what,
                    r,
                    r * size as f64 / 1e6,
                    r / baseline
                );
            }
        }
    }
}
