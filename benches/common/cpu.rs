//! CPU time of this process's threads, from Linux's `/proc/self/task/*/schedstat` (its first
//! field: nanoseconds on a CPU, user and kernel time alike). It says how much CPU each end of
//! the hot path spent for a figure, which a rate alone cannot: when both ends share the
//! machine's CPUs, the rate is capped by what one record costs both of them together.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// CPU time of one thread (the one that called [`Cpu::start`], wherever `used` is called)
/// and of the threads with one of `names` (as Tokio's `Builder::thread_name` names a runtime's
/// workers and blocking threads, or `std::thread::Builder::name` a thread), from one moment.
pub struct Cpu {
    names: &'static [&'static str],
    /// `/proc/self/task/<tid>` of the thread that called `start`.
    this: Option<PathBuf>,
    at: Option<(u64, Threads)>,
    wall: Instant,
}

/// CPU time per thread id, of the threads of the given names.
type Threads = HashMap<String, u64>;

/// The CPUs used since [`Cpu::start`], on average over the wall time: 1.0 is one CPU busy
/// all the time.
#[derive(Debug, Clone, Copy)]
pub struct CpusUsed {
    /// By the thread that called `start`.
    pub this: f64,
    /// By the threads of the given names.
    pub named: f64,
}

impl Cpu {
    pub fn start(names: &'static [&'static str]) -> Cpu {
        // `/proc/thread-self` links to `<pid>/task/<tid>` of the thread that reads it.
        let this = std::fs::read_link("/proc/thread-self")
            .ok()
            .and_then(|l| l.file_name().map(|tid| Path::new("/proc/self/task").join(tid)));
        let at = this.as_deref().and_then(|t| now(t, names));
        Cpu { names, this, at, wall: Instant::now() }
    }

    /// `None` where `/proc` cannot tell (not Linux, no thread of those names, or the calling
    /// thread of `start` has ended).
    pub fn used(&self) -> Option<CpusUsed> {
        let wall = self.wall.elapsed().as_nanos() as f64;
        let ((this0, named0), (this1, named1)) =
            (self.at.as_ref()?, now(self.this.as_deref()?, self.names)?);
        // Per thread, so that one started in between counts from zero. One that ended in
        // between is missing from the sum, with its time in the window (Tokio's blocking
        // threads end only after 10 s idle, longer than a bench's window).
        let named: u64 = named1
            .iter()
            .map(|(tid, t)| t.saturating_sub(named0.get(tid).copied().unwrap_or(0)))
            .sum();
        Some(CpusUsed {
            this: this1.saturating_sub(*this0) as f64 / wall,
            named: named as f64 / wall,
        })
    }
}

fn now(this: &Path, names: &[&str]) -> Option<(u64, Threads)> {
    let named = named(names)?;
    if named.is_empty() {
        return None;
    }
    Some((on_cpu(this)?, named))
}

/// The threads with one of `names`.
fn named(names: &[&str]) -> Option<Threads> {
    let mut threads = Threads::new();
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let task = task.ok()?;
        let path = task.path();
        // A thread that ended since the listing has no files left: it counts no more.
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else { continue };
        if names.contains(&comm.trim_end())
            && let Some(t) = on_cpu(&path)
        {
            threads.insert(task.file_name().to_string_lossy().into_owned(), t);
        }
    }
    Some(threads)
}

fn on_cpu(task: &Path) -> Option<u64> {
    std::fs::read_to_string(task.join("schedstat")).ok()?.split_whitespace().next()?.parse().ok()
}
