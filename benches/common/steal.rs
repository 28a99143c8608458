//! How much of the machine's CPU time its host took during a run. On a virtual machine a
//! ratio of two runs is only as good as the host's quiet during both.

/// The machine's CPU time stolen by its host (the `steal` column of `/proc/stat`) since a
/// moment. On a virtual machine whose host is busy, a run's figures fall by whatever share
/// the host took during it; two figures of one ratio can each lose a different share, so a
/// ratio is only as good as the steal during both of its runs.
pub struct Steal {
    at: Option<(u64, u64)>,
}

/// Above this share of the machine's CPU time stolen during a run, its figure is not used
/// for a target's ratio when enough quieter runs were had.
pub const STEAL_LIMIT: f64 = 0.05;

impl Steal {
    pub fn start() -> Steal {
        Steal { at: cpu_times() }
    }

    /// The share of all CPUs' time stolen since `start` (0 where `/proc/stat` says nothing).
    pub fn share(&self) -> f64 {
        match (self.at, cpu_times()) {
            (Some((s0, t0)), Some((s1, t1))) if t1 > t0 => (s1 - s0) as f64 / (t1 - t0) as f64,
            _ => 0.0,
        }
    }
}

/// (steal, total) of all CPUs, in clock ticks: the first eight columns of the `cpu` line
/// (user, nice, system, idle, iowait, irq, softirq, steal; guest time is inside user's).
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> =
        line.split_whitespace().take(8).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    (v.len() == 8).then(|| (v[7], v.iter().sum()))
}
