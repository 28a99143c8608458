//! CPU time of this process's threads, from Linux's `/proc/self/task/*/schedstat` (its first
//! field: nanoseconds on a CPU, user and kernel time alike). It says how much CPU each end of
//! the hot path spent for a figure, which a rate alone cannot: when both ends share the
//! machine's CPUs, the rate is capped by what one record costs both of them together.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

/// CPU time of the calling thread and of the threads named `name` (as Tokio's
/// `Builder::thread_name` names a runtime's workers), from one moment.
pub struct Cpu {
    name: &'static str,
    at: Option<(u64, Threads)>,
    wall: Instant,
}

/// CPU time per thread id, of the threads of one name.
type Threads = HashMap<String, u64>;

/// The CPUs used since [`Cpu::start`], on average: 1.0 is one CPU busy all the time.
#[derive(Debug, Clone, Copy)]
pub struct Used {
    /// By the thread that called `start`.
    pub this: f64,
    /// By the threads named as given.
    pub named: f64,
}

impl Cpu {
    pub fn start(name: &'static str) -> Cpu {
        Cpu { name, at: now(name), wall: Instant::now() }
    }

    /// `None` where `/proc` cannot tell (not Linux, or no thread of that name). Call it on
    /// the thread that called `start`: `this` is whichever thread calls.
    pub fn used(&self) -> Option<Used> {
        let wall = self.wall.elapsed().as_nanos() as f64;
        let ((this0, named0), (this1, named1)) = (self.at.as_ref()?, now(self.name)?);
        // Per thread, so that a thread that ends in between (a runtime's blocking thread)
        // takes only its own time with it; one started in between counts from zero.
        let named: u64 =
            named1.iter().map(|(tid, t)| t.saturating_sub(*named0.get(tid).unwrap_or(&0))).sum();
        Some(Used { this: this1.saturating_sub(*this0) as f64 / wall, named: named as f64 / wall })
    }
}

fn now(name: &str) -> Option<(u64, Threads)> {
    let named = named(name)?;
    (!named.is_empty()).then_some(())?;
    Some((on_cpu(Path::new("/proc/thread-self"))?, named))
}

/// The threads named `name`.
fn named(name: &str) -> Option<Threads> {
    let mut threads = Threads::new();
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let task = task.ok()?;
        let path = task.path();
        // A thread that ended since the listing has no files left: it counts no more.
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else { continue };
        if comm.trim_end() == name
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
