//! Secrets in memory: key material lives in pages of its own that are kept out of core dumps
//! (`MADV_DONTDUMP`) and, where the process may, out of swap (`mlock`); and the processes that
//! hold keys make no core dumps at all ([`harden_process`]).
//!
//! [`Locked<T>`] puts one value in an anonymous private mapping of its own (whole pages),
//! advised `MADV_DONTDUMP` and locked with `mlock`. Where locking is not permitted
//! (`RLIMIT_MEMLOCK` too low, no `CAP_IPC_LOCK`), the value stays in its non-dumpable mapping and
//! one warning is logged for the whole process; where not even a mapping can be had, the value
//! goes to the ordinary heap, with a warning too. Dropping a `Locked<T>` drops the value, then
//! zeroes the whole mapping before unmapping it, so even a type that does not zeroize itself
//! (ring's AES key schedule) leaves nothing behind.
//!
//! The crate's one module with `unsafe` code: four system calls on a mapping it owns
//! (through `rustix`) and the placement of one value in it. Invariants: the mapping is page
//! aligned and at least `size_of::<T>()` long, so the pointer is valid and aligned for `T` for
//! the life of the `Locked`; the value is written once in `new`, dropped once in `drop`, and
//! only shared through `&`/`&mut` borrows of the `Locked`.
#![allow(unsafe_code)]

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::mm::{Advice, MapFlags, ProtFlags};
use zeroize::Zeroize;

/// What [`harden_process`] did, for the caller to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hardening {
    /// `PR_SET_DUMPABLE` is 0: no core dump, no ptrace attach by other users, and
    /// /proc/PID/mem and friends are root's only.
    pub not_dumpable: bool,
    /// `RLIMIT_CORE` is 0 (soft and hard).
    pub no_core_limit: bool,
    /// Why either failed, if it did.
    pub errors: Vec<String>,
}

/// Makes the process unable to dump core: `prctl(PR_SET_DUMPABLE, 0)` and `RLIMIT_CORE` 0.
/// Called first thing by `imcrypt serve` and by every CLI command that holds key material.
pub fn harden_process() -> Hardening {
    let mut errors = Vec::new();
    let not_dumpable =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
            .map_err(|e| errors.push(format!("prctl(PR_SET_DUMPABLE, 0): {e}")))
            .is_ok();
    let zero = rustix::process::Rlimit { current: Some(0), maximum: Some(0) };
    let no_core_limit = rustix::process::setrlimit(rustix::process::Resource::Core, zero)
        .map_err(|e| errors.push(format!("setrlimit(RLIMIT_CORE, 0): {e}")))
        .is_ok();
    Hardening { not_dumpable, no_core_limit, errors }
}

/// Logs the outcome of [`harden_process`]: a warning for anything that failed.
pub fn log_hardening(h: &Hardening) {
    for e in &h.errors {
        tracing::warn!(error = %e, "cannot keep key material out of core dumps");
    }
}

static WARNED_LOCK: AtomicBool = AtomicBool::new(false);
static WARNED_MAP: AtomicBool = AtomicBool::new(false);

fn warn_once(flag: &AtomicBool, f: impl FnOnce()) {
    if !flag.swap(true, Ordering::Relaxed) {
        f();
    }
}

/// A value in pages of its own, out of core dumps and (where permitted) out of swap.
pub struct Locked<T> {
    place: Place<T>,
}

enum Place<T> {
    Mapped {
        ptr: NonNull<T>,
        len: usize,
    },
    /// No mapping could be had (out of address space or map count): the ordinary heap.
    Heap(Box<T>),
}

// SAFETY: a `Locked<T>` owns its `T` exactly as a `Box<T>` does.
unsafe impl<T: Send> Send for Locked<T> {}
// SAFETY: shared access only hands out `&T`.
unsafe impl<T: Sync> Sync for Locked<T> {}

impl<T> Locked<T> {
    pub fn new(value: T) -> Self {
        let page = rustix::param::page_size();
        let len = std::mem::size_of::<T>().max(1).div_ceil(page) * page;
        assert!(std::mem::align_of::<T>() <= page, "a page aligns any key type");
        // SAFETY: a new anonymous private mapping, at an address of the kernel's choosing.
        let mapped = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        };
        let raw = match mapped {
            Ok(p) => p,
            Err(e) => {
                warn_once(
                    &WARNED_MAP,
                    || tracing::warn!(error = %e, "cannot map a page for key material: it is kept on the ordinary heap, where a core dump or swap may see it"),
                );
                return Self { place: Place::Heap(Box::new(value)) };
            }
        };
        // SAFETY: `raw..raw+len` is the mapping just made, owned by nobody else.
        if let Err(e) = unsafe { rustix::mm::madvise(raw, len, Advice::LinuxDontDump) } {
            warn_once(
                &WARNED_MAP,
                || tracing::warn!(error = %e, "cannot keep key pages out of core dumps (MADV_DONTDUMP)"),
            );
        }
        // SAFETY: as above.
        if let Err(e) = unsafe { rustix::mm::mlock(raw, len) } {
            warn_once(&WARNED_LOCK, || {
                let limit = rustix::process::getrlimit(rustix::process::Resource::Memlock);
                tracing::warn!(
                    error = %e,
                    memlock_limit_bytes = ?limit.current,
                    "cannot lock key pages in memory: they may be written to swap; raise \
                     RLIMIT_MEMLOCK (LimitMEMLOCK= in the systemd unit) or grant CAP_IPC_LOCK"
                )
            });
        }
        let ptr = NonNull::new(raw.cast::<T>()).expect("mmap never returns null on success");
        // SAFETY: the mapping is page aligned (so aligned for T), writable and at least
        // size_of::<T>() long; nothing is there yet to overwrite.
        unsafe { ptr.as_ptr().write(value) };
        Self { place: Place::Mapped { ptr, len } }
    }
}

impl<T> std::ops::Deref for Locked<T> {
    type Target = T;
    fn deref(&self) -> &T {
        match &self.place {
            // SAFETY: initialized in `new`, alive until `drop`; borrowed through `self`.
            Place::Mapped { ptr, .. } => unsafe { ptr.as_ref() },
            Place::Heap(b) => b,
        }
    }
}

impl<T> std::ops::DerefMut for Locked<T> {
    fn deref_mut(&mut self) -> &mut T {
        match &mut self.place {
            // SAFETY: as for `deref`, and `&mut self` makes the borrow unique.
            Place::Mapped { ptr, .. } => unsafe { ptr.as_mut() },
            Place::Heap(b) => b,
        }
    }
}

impl<T: Clone> Clone for Locked<T> {
    fn clone(&self) -> Self {
        Locked::new((**self).clone())
    }
}

impl<T> Drop for Locked<T> {
    fn drop(&mut self) {
        if let Place::Mapped { ptr, len } = self.place {
            // SAFETY: the value was written in `new` and is dropped only here; afterwards the
            // bytes of the mapping are plain memory we own, zeroed, then unmapped once.
            unsafe {
                std::ptr::drop_in_place(ptr.as_ptr());
                std::slice::from_raw_parts_mut(ptr.as_ptr().cast::<u8>(), len).zeroize();
                let _ = rustix::mm::munmap(ptr.as_ptr().cast(), len);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_value_reads_writes_clones_and_drops() {
        let mut k = Locked::new([7u8; 32]);
        assert_eq!(*k, [7; 32]);
        k[0] = 1;
        let c = k.clone();
        assert_eq!(c[0], 1);
        assert_eq!(c[1..], [7; 31]);
        drop(k);
        assert_eq!(c[1], 7);
        // A value with a destructor is dropped once.
        let rc = std::rc::Rc::new(());
        let l = Locked::new(rc.clone());
        assert_eq!(std::rc::Rc::strong_count(&rc), 2);
        drop(l);
        assert_eq!(std::rc::Rc::strong_count(&rc), 1);
    }

    #[test]
    fn key_pages_are_out_of_dumps_and_locked_where_permitted() {
        let k = Locked::new([9u8; 32]);
        let addr = match &k.place {
            Place::Mapped { ptr, .. } => ptr.as_ptr() as usize,
            Place::Heap(_) => panic!("a page could be mapped"),
        };
        // /proc/self/smaps lists the mapping with the "dd" (do not dump) flag, and locked when
        // the process may lock.
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        // The kernel may merge neighbouring mappings of the same kind into one area: find the
        // area that holds the address.
        let holds = |l: &str| {
            let range = l.split_whitespace().next().unwrap_or_default();
            let Some((a, b)) = range.split_once('-') else { return false };
            let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            else {
                return false;
            };
            (a..b).contains(&addr)
        };
        let flags = smaps
            .lines()
            .skip_while(|l| !holds(l))
            .find(|l| l.starts_with("VmFlags:"))
            .expect("the mapping is in smaps");
        let may_lock = rustix::process::getrlimit(rustix::process::Resource::Memlock)
            .current
            .is_none_or(|n| n > 0)
            || rustix::process::getuid().is_root();
        if may_lock {
            assert!(flags.split_whitespace().any(|f| f == "lo"), "{flags}");
        }
    }
}
