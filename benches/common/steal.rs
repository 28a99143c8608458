//! How much of the time this virtual machine's CPUs wanted to run its host took instead
//! (steal). A ratio of two runs is only as good as the host's quiet during both.

/// The CPU time stolen by the host (the `steal` column of `/proc/stat`) since a moment, as a
/// share of the time the machine's CPUs were busy or stolen (idle and iowait left out: an
/// idle virtual CPU accrues no steal, so against all time a half-idle run would look half as
/// stolen as it was). A run under steal goes slower by an amount that grows with the share,
/// not in proportion to it, and the two runs of one ratio can lose different amounts.
pub struct Steal {
    at: Option<Ticks>,
}

/// Above this share stolen during any run of a round, the round is not used for a target's
/// ratio when enough quieter rounds were had.
pub const STEAL_LIMIT: f64 = 0.05;

impl Steal {
    pub fn start() -> Steal {
        Steal { at: ticks() }
    }

    /// The share stolen since `start`; `None` where `/proc/stat` cannot tell (not Linux, or
    /// a line this code does not know).
    pub fn share(&self) -> Option<f64> {
        let (a, b) = (self.at?, ticks()?);
        let stolen = b.steal.saturating_sub(a.steal);
        let wanted = b.wanted.saturating_sub(a.wanted);
        Some(if wanted == 0 { 0.0 } else { stolen as f64 / wanted as f64 })
    }
}

#[derive(Clone, Copy)]
struct Ticks {
    steal: u64,
    /// Busy or stolen: user, nice, system, irq, softirq and steal (guest time is inside
    /// user's and nice's).
    wanted: u64,
}

/// All CPUs' ticks from the `cpu` line of `/proc/stat`, whose first eight columns are user,
/// nice, system, idle, iowait, irq, softirq, steal.
fn ticks() -> Option<Ticks> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> =
        line.split_whitespace().take(8).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    let [user, nice, system, _idle, _iowait, irq, softirq, steal] = v[..] else {
        return None;
    };
    Some(Ticks { steal, wanted: user + nice + system + irq + softirq + steal })
}
