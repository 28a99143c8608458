//! Connection caps shared by every listener (admin, peer, metrics, hot path), and the
//! process's descriptor budget they are carved from.
//!
//! Each listener accepts through one [`Gate`]: [`Gate::accept`] takes connections off the
//! socket and hands each one out with a [`Ticket`], the slot it holds until it closes. A new
//! connection starts *pending* (TLS handshake not done, no token, no HELLO yet) and becomes
//! *established* once the listener has authenticated it ([`Ticket::establish`]).
//!
//! Invariants:
//! - at most `max_connections` connections hold a slot at once, of which at most
//!   `max_pending` are pending and, per source address, at most `max_pending_per_source`;
//! - a new connection is never refused while a pending one can make room: the oldest pending
//!   connection (of the same source, when that source is at its quota) is evicted instead, so
//!   idle connections cannot lock out a client that does its handshake at once;
//! - an established connection is never evicted: a flood cannot take a configured peer's or
//!   an authenticated administrator's slot;
//! - an accept that fails because the process or the system ran out of descriptors (EMFILE,
//!   ENFILE) backs off (up to 1 s) instead of spinning, and evicts a pending connection;
//! - refusals, evictions and failed accepts are logged as one summary line per
//!   [`REPORT_INTERVAL`] with their counts, never one line per connection;
//! - [`check_descriptors`]: the caps of all listeners together, plus a reserve for the state
//!   store, the alarm sinks, the database probes and the peer links, fit in the descriptor
//!   limit, so a client's connections can never make a state write fail for lack of a
//!   descriptor.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often at most a listener logs its refusals.
pub(crate) const REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// Descriptors kept for the daemon itself beyond its listeners' caps: the state store's
/// temporary file and directory, the counters file, the log file, the runtime's own (epoll,
/// signals, blocking threads' files), a margin. Sinks, database probes and peer links come on
/// top ([`Reserve`]).
pub(crate) const BASE_RESERVE: u64 = 64;
/// The longest back-off after an accept failed for lack of descriptors.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The caps of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caps {
    /// Connections holding a slot, pending and established together.
    pub(crate) max_connections: usize,
    /// Pending connections (not yet authenticated); the oldest is evicted when a new one comes.
    pub(crate) max_pending: usize,
    /// Pending connections from one source address.
    pub(crate) max_pending_per_source: usize,
}

impl Caps {
    /// The shape every listener uses: half of `max_connections` for pending connections, a
    /// quarter of those per source address (at least one each).
    pub(crate) fn new(max_connections: usize) -> Self {
        let max_connections = max_connections.max(1);
        let max_pending = (max_connections / 2).max(1);
        Self { max_connections, max_pending, max_pending_per_source: (max_pending / 4).max(1) }
    }
}

/// A listener the gate can accept from: TCP (with its source address) or a Unix socket
/// (no source address).
pub(crate) trait Listener {
    type Io;
    fn accept_one(&self) -> impl Future<Output = io::Result<(Self::Io, Option<IpAddr>)>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept_one(&self) -> io::Result<(Self::Io, Option<IpAddr>)> {
        let (s, a) = self.accept().await?;
        Ok((s, Some(a.ip())))
    }
}

impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept_one(&self) -> io::Result<(Self::Io, Option<IpAddr>)> {
        let (s, _) = self.accept().await?;
        Ok((s, None))
    }
}

/// The slots of one listener. Shared (`Arc`) by its accept loop and its connections' tickets.
#[derive(Debug)]
pub(crate) struct Gate {
    /// The listener, as the log names it ("admin listener").
    what: &'static str,
    caps: Caps,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    next_id: u64,
    /// Pending connections by id (ids grow, so the first is the oldest).
    pending: BTreeMap<u64, (Option<IpAddr>, CancellationToken)>,
    per_source: HashMap<IpAddr, usize>,
    established: HashSet<u64>,
    /// Since the last summary.
    counts: Counts,
    next_report: Instant,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Counts {
    refused: u64,
    evicted: u64,
    /// Closed by the listener after accept (handshake failed or timed out, not a peer…).
    dropped: u64,
    last_drop_reason: Option<String>,
    out_of_descriptors: u64,
    accept_errors: u64,
    last_accept_error: Option<String>,
}

impl Inner {
    fn evict(&mut self, id: u64) {
        if let Some((src, token)) = self.pending.remove(&id) {
            if let Some(ip) = src {
                self.release_source(ip);
            }
            token.cancel();
            self.counts.evicted += 1;
        }
    }

    fn evict_oldest(&mut self, of: Option<IpAddr>) -> bool {
        let oldest = match of {
            None => self.pending.keys().next().copied(),
            Some(ip) => self.pending.iter().find(|(_, (s, _))| *s == Some(ip)).map(|(id, _)| *id),
        };
        oldest.inspect(|id| self.evict(*id)).is_some()
    }

    fn release_source(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_source.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&ip);
            }
        }
    }
}

impl Gate {
    pub(crate) fn new(what: &'static str, caps: Caps) -> Arc<Self> {
        Arc::new(Self {
            what,
            caps,
            inner: Mutex::new(Inner {
                next_id: 0,
                pending: BTreeMap::new(),
                per_source: HashMap::new(),
                established: HashSet::new(),
                counts: Counts::default(),
                next_report: Instant::now() + REPORT_INTERVAL,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connections holding a slot now: (pending, established).
    pub(crate) fn open(&self) -> (usize, usize) {
        let g = self.lock();
        (g.pending.len(), g.established.len())
    }

    /// Gives a new connection from `source` a pending slot, evicting older pending ones as the
    /// caps require; `None` when every slot is established.
    pub(crate) fn admit(self: &Arc<Self>, source: Option<IpAddr>) -> Option<Ticket> {
        let mut g = self.lock();
        let c = self.caps;
        if let Some(ip) = source
            && g.per_source.get(&ip).copied().unwrap_or(0) >= c.max_pending_per_source
        {
            g.evict_oldest(Some(ip));
        }
        if g.pending.len() >= c.max_pending {
            g.evict_oldest(None);
        }
        if g.pending.len() + g.established.len() >= c.max_connections && !g.evict_oldest(None) {
            g.counts.refused += 1;
            return None;
        }
        let id = g.next_id;
        g.next_id += 1;
        let evicted = CancellationToken::new();
        g.pending.insert(id, (source, evicted.clone()));
        if let Some(ip) = source {
            *g.per_source.entry(ip).or_default() += 1;
        }
        Some(Ticket { gate: self.clone(), id, evicted })
    }

    /// Counts a connection the listener closed after accepting it (a failed or timed-out
    /// handshake, a certificate of no configured peer); the summary line gives the count and
    /// the last reason.
    pub(crate) fn dropped(&self, reason: impl std::fmt::Display) {
        let mut g = self.lock();
        g.counts.dropped += 1;
        g.counts.last_drop_reason = Some(reason.to_string());
    }

    /// Logs the counts since the last summary, if there is anything to say and the interval
    /// has passed.
    fn report(&self, now: Instant) {
        let counts = {
            let mut g = self.lock();
            if now < g.next_report {
                return;
            }
            g.next_report = now + REPORT_INTERVAL;
            std::mem::take(&mut g.counts)
        };
        if counts == Counts::default() {
            return;
        }
        let (pending, established) = self.open();
        tracing::warn!(
            listener = self.what,
            refused = counts.refused,
            evicted = counts.evicted,
            dropped = counts.dropped,
            last_drop_reason = counts.last_drop_reason.as_deref().unwrap_or("-"),
            out_of_descriptors = counts.out_of_descriptors,
            accept_errors = counts.accept_errors,
            last_accept_error = counts.last_accept_error.as_deref().unwrap_or("-"),
            pending,
            established,
            max_connections = self.caps.max_connections,
            interval = ?REPORT_INTERVAL,
            "connections refused or closed by the listener's caps (summary)"
        );
    }

    /// Accepts the next connection that gets a slot. Cancel-safe: nothing is lost when the
    /// future is dropped (a connection taken off the socket is admitted before any await).
    pub(crate) async fn accept<L: Listener>(self: &Arc<Self>, listener: &L) -> (L::Io, Ticket) {
        let mut backoff = Duration::from_millis(10);
        loop {
            let next_report = self.lock().next_report;
            let accepted = tokio::select! {
                r = listener.accept_one() => r,
                _ = tokio::time::sleep_until(next_report) => {
                    self.report(Instant::now());
                    continue;
                }
            };
            match accepted {
                Ok((io, source)) => {
                    backoff = Duration::from_millis(10);
                    if let Some(t) = self.admit(source) {
                        self.report(Instant::now());
                        return (io, t);
                    }
                    // Refused: `io` is closed here.
                }
                Err(e) if out_of_descriptors(&e) => {
                    {
                        let mut g = self.lock();
                        g.counts.out_of_descriptors += 1;
                        g.evict_oldest(None);
                    }
                    self.report(Instant::now());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => {
                    // ECONNABORTED and the like: that connection is gone, the next is not.
                    let mut g = self.lock();
                    g.counts.accept_errors += 1;
                    g.counts.last_accept_error = Some(e.to_string());
                }
            }
        }
    }
}

fn out_of_descriptors(e: &io::Error) -> bool {
    // EMFILE (24): this process; ENFILE (23): the system. Also ENOBUFS/ENOMEM: no memory for
    // the socket, same remedy.
    matches!(e.raw_os_error(), Some(23 | 24 | 105 | 12))
}

/// A connection's slot; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct Ticket {
    gate: Arc<Gate>,
    id: u64,
    evicted: CancellationToken,
}

impl Ticket {
    /// Makes the connection established: it is no longer counted as pending and can no longer
    /// be evicted. False when it was already evicted (the connection is ending).
    pub(crate) fn establish(&self) -> bool {
        let mut g = self.gate.lock();
        if g.established.contains(&self.id) {
            return true;
        }
        let Some((src, _)) = g.pending.remove(&self.id) else { return false };
        if let Some(ip) = src {
            g.release_source(ip);
        }
        g.established.insert(self.id);
        true
    }

    /// Resolves when the connection was evicted to make room for a newer one.
    pub(crate) async fn evicted(&self) {
        self.evicted.cancelled().await
    }

    /// Runs `connection` until it ends or the connection is evicted (then `None`).
    pub(crate) async fn guard<T>(&self, connection: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            r = connection => Some(r),
            _ = self.evicted() => None,
        }
    }

    /// Counts this connection as closed by the listener, with why (see [`Gate::dropped`]).
    pub(crate) fn dropped(&self, reason: impl std::fmt::Display) {
        self.gate.dropped(reason);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut g = self.gate.lock();
        if let Some((src, _)) = g.pending.remove(&self.id) {
            if let Some(ip) = src {
                g.release_source(ip);
            }
        } else {
            g.established.remove(&self.id);
        }
    }
}

/// Why the daemon cannot run with these caps.
#[derive(Debug, thiserror::Error)]
pub enum DescriptorError {
    #[error(
        "the listeners' connection caps ({caps}) and the {reserve} descriptors kept in reserve \
         for the state store, alarm sinks, database probes and peer links need {needed} file \
         descriptors, but this process may open only {limit} (RLIMIT_NOFILE); lower those keys \
         or raise the limit (LimitNOFILE= in the systemd unit, `ulimit -Hn`)"
    )]
    TooFew { caps: String, reserve: u64, needed: u64, limit: u64 },
}

/// What the daemon needs beyond its listeners.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Reserve {
    /// Configured peers (a link each, and a reconnect overlapping it).
    pub(crate) peers: usize,
    /// Alarm sinks (one connection each).
    pub(crate) sinks: usize,
    /// Nodes whose database is probed (one connection each).
    pub(crate) probed_databases: usize,
}

impl Reserve {
    pub(crate) fn descriptors(&self) -> u64 {
        BASE_RESERVE + 2 * self.peers as u64 + self.sinks as u64 + self.probed_databases as u64
    }
}

/// Checks that `caps` (config key, cap) and `reserve` fit in `limit` descriptors; the error
/// names the keys.
pub(crate) fn check_descriptors(
    limit: u64,
    caps: &[(&'static str, usize)],
    reserve: Reserve,
) -> Result<(), DescriptorError> {
    let reserve = reserve.descriptors();
    let needed = caps.iter().map(|(_, n)| *n as u64).sum::<u64>() + reserve;
    if needed <= limit {
        return Ok(());
    }
    let caps = caps.iter().map(|(k, n)| format!("{k} = {n}")).collect::<Vec<_>>().join(", ");
    Err(DescriptorError::TooFew { caps, reserve, needed, limit })
}

/// Raises the soft descriptor limit to the hard one and returns the soft limit now in force.
/// A failure leaves the limit as it was (and is logged by the caller through the figure).
pub(crate) fn raise_descriptor_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    // An unlimited hard limit is not a valid soft one for descriptors: Linux caps it at
    // fs.nr_open, 1,048,576 by default.
    let target = now.maximum.unwrap_or(1 << 20);
    if now.current.is_some_and(|c| c < target) {
        let _ = setrlimit(Resource::Nofile, Rlimit { current: Some(target), maximum: now.maximum });
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn a_full_pending_pool_evicts_its_oldest_and_never_an_established_slot() {
        let gate = Gate::new(
            "test",
            Caps { max_connections: 4, max_pending: 2, max_pending_per_source: 2 },
        );
        let peer = gate.admit(ip(1)).unwrap();
        assert!(peer.establish());
        let a = gate.admit(ip(2)).unwrap();
        let b = gate.admit(ip(3)).unwrap();
        let c = gate.admit(ip(4)).unwrap();
        assert!(a.evicted.is_cancelled(), "the oldest pending connection makes room");
        assert!(!b.evicted.is_cancelled() && !c.evicted.is_cancelled());
        assert!(!peer.evicted.is_cancelled());
        assert_eq!(gate.open(), (2, 1));
        drop(a);
        assert_eq!(gate.open(), (2, 1), "dropping an evicted ticket frees nothing twice");
        // Every slot established: a new connection is refused, nobody is evicted.
        assert!(b.establish() && c.establish());
        let d = gate.admit(ip(5)).unwrap();
        assert!(d.establish());
        assert!(gate.admit(ip(6)).is_none());
        assert_eq!(gate.lock().counts.refused, 1);
        drop(d);
        assert!(gate.admit(ip(6)).is_some(), "a closed connection frees its slot");
    }

    #[test]
    fn one_source_at_its_quota_evicts_its_own_oldest_not_others() {
        let gate = Gate::new(
            "test",
            Caps { max_connections: 10, max_pending: 6, max_pending_per_source: 2 },
        );
        let other = gate.admit(ip(9)).unwrap();
        let flood: Vec<_> = (0..5).map(|_| gate.admit(ip(1)).unwrap()).collect();
        assert!(!other.evicted.is_cancelled(), "another source keeps its pending slot");
        assert_eq!(flood.iter().filter(|t| !t.evicted.is_cancelled()).count(), 2);
        assert_eq!(gate.lock().per_source.get(&ip(1).unwrap()), Some(&2));
        drop(flood);
        assert_eq!(gate.open(), (1, 0));
        assert!(!gate.lock().per_source.contains_key(&ip(1).unwrap()));
    }

    #[test]
    fn an_evicted_connection_cannot_become_established() {
        let gate = Gate::new("test", Caps::new(2));
        let a = gate.admit(None).unwrap();
        let _b = gate.admit(None).unwrap();
        assert!(!a.establish());
    }

    #[test]
    fn caps_keep_half_for_pending_and_a_quarter_of_that_per_source() {
        assert_eq!(
            Caps::new(256),
            Caps { max_connections: 256, max_pending: 128, max_pending_per_source: 32 }
        );
        assert_eq!(
            Caps::new(1),
            Caps { max_connections: 1, max_pending: 1, max_pending_per_source: 1 }
        );
    }

    #[test]
    fn caps_over_the_descriptor_limit_are_refused_naming_the_keys() {
        let caps = [("admin.max_connections", 64), ("peer.max_connections", 256)];
        let reserve = Reserve { peers: 2, sinks: 1, probed_databases: 0 };
        assert_eq!(reserve.descriptors(), BASE_RESERVE + 5);
        assert!(check_descriptors(1024, &caps, reserve).is_ok());
        let e = check_descriptors(300, &caps, reserve).unwrap_err().to_string();
        assert!(
            e.contains("admin.max_connections = 64, peer.max_connections = 256")
                && e.contains(&format!("need {}", 320 + BASE_RESERVE + 5))
                && e.contains("only 300")
                && e.contains("LimitNOFILE"),
            "{e}"
        );
    }

    #[test]
    fn the_soft_descriptor_limit_is_raised_to_the_hard_one() {
        use rustix::process::{Resource, getrlimit};
        let soft = raise_descriptor_limit();
        let now = getrlimit(Resource::Nofile);
        assert_eq!(Some(soft), now.current);
        assert_eq!(now.current, now.maximum.or(now.current));
    }

    /// A listener whose accept fails with EMFILE, as a process out of descriptors sees it.
    struct OutOfDescriptors(std::sync::atomic::AtomicUsize);

    impl Listener for OutOfDescriptors {
        type Io = ();
        async fn accept_one(&self) -> io::Result<((), Option<IpAddr>)> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(io::Error::from_raw_os_error(24))
        }
    }

    #[tokio::test]
    async fn an_accept_out_of_descriptors_backs_off_instead_of_spinning() {
        let gate = Gate::new("test", Caps::new(4));
        let pending = gate.admit(ip(1)).unwrap();
        let l = OutOfDescriptors(Default::default());
        let _ = tokio::time::timeout(Duration::from_millis(1500), gate.accept(&l)).await;
        let tries = l.0.load(std::sync::atomic::Ordering::Relaxed);
        // Waits of 10 ms, 20, 40 … 640, 1 s: 8 tries in 1.5 s, where a spin makes millions.
        assert!((4..=12).contains(&tries), "{tries} accepts in 1.5 s");
        assert!(pending.evicted.is_cancelled(), "a pending connection gave its descriptor back");
    }
}
