//! What the benchmarks share.

use std::time::{Duration, Instant};

/// Runs `f` (after a warm-up) until `budget` has passed; returns calls per second.
pub fn rate(budget: Duration, mut f: impl FnMut()) -> f64 {
    for _ in 0..1000 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..256 {
            f();
        }
        n += 256;
    }
    n as f64 / start.elapsed().as_secs_f64()
}
