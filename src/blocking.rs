//! Blocking work (PBKDF2, fsyncs, a file lock) run from async code without stalling the
//! runtime's other tasks.

/// Runs `f` on the current task: on a multi-threaded runtime the worker first hands its other
/// tasks over (`block_in_place`); on a current-thread runtime, or outside any runtime, there is
/// no other worker to spare, so it just runs.
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}
