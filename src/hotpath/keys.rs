//! The hot path's view of the key ring: which sealer new records use, swapped atomically when
//! the state machine's `Effect::KeyRingChanged` arrives, and the invocation-counter
//! reservations that must be on disk before a record is sealed.
//!
//! Invariants:
//! - Every record is sealed under the sealer that was current when its batch started; a swap
//!   (enable, rotation, disable) never pauses or blocks sealing: readers take a snapshot
//!   (`arc_swap`), the writer replaces it.
//! - No record is sealed with an invocation count that is not covered by a reservation already
//!   durably persisted (`crypto::counter`): a new sealer is published only after its first
//!   reservation is saved, and later reservations are saved ahead of use by `run_reserver`.
//! - Re-announcing the ring that is already in use keeps the current sealer (and its count),
//!   so repeated effects do not burn reservations.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::{Notify, watch};

use crate::crypto::aead::AeadImpl;
use crate::crypto::counter::Reservations;
use crate::crypto::keyring::KeyRing;
use crate::crypto::record::RecordSealer;
use crate::ids::{ClusterId, DomainId, KeyVersion};
use crate::store::{SealedFile, StoreError};

/// Why the hot path cannot (yet) use a key ring.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot persist the invocation-counter reservation: {0}")]
    Persist(#[source] StoreError),
    #[error("cannot load the invocation-counter reservations: {0}")]
    Load(#[source] StoreError),
}

/// Where reservations are kept. `SealedFile` (with `Purpose::Counters`) in the daemon; an
/// in-memory store in tests and benchmarks.
pub trait ReservationStore: Send + Sync + 'static {
    fn load(&self) -> Result<Reservations, StoreError>;
    /// Durably replaces the stored reservations (fsync before returning).
    fn save(&self, r: &Reservations) -> Result<(), StoreError>;
}

impl ReservationStore for SealedFile {
    fn load(&self) -> Result<Reservations, StoreError> {
        Ok(SealedFile::load::<Reservations>(self)?.unwrap_or_default())
    }

    fn save(&self, r: &Reservations) -> Result<(), StoreError> {
        SealedFile::save(self, r)
    }
}

/// Reservations kept in memory only: for tests and benchmarks, never for a daemon (a restart
/// would reuse counts).
#[derive(Debug, Default)]
pub struct MemoryReservations {
    saved: Mutex<Reservations>,
    fail: std::sync::atomic::AtomicBool,
}

impl MemoryReservations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every later save fail (to test what the hot path does when the disk is gone).
    pub fn fail_saves(&self, fail: bool) {
        self.fail.store(fail, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn saved(&self) -> Reservations {
        self.saved.lock().expect("not poisoned").clone()
    }
}

impl ReservationStore for MemoryReservations {
    fn load(&self) -> Result<Reservations, StoreError> {
        Ok(self.saved())
    }

    fn save(&self, r: &Reservations) -> Result<(), StoreError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Io {
                action: "write",
                path: "<memory>".into(),
                source: std::io::Error::other("saves disabled by the test"),
            });
        }
        *self.saved.lock().expect("not poisoned") = r.clone();
        Ok(())
    }
}

impl<T: ReservationStore> ReservationStore for Arc<T> {
    fn load(&self) -> Result<Reservations, StoreError> {
        (**self).load()
    }

    fn save(&self, r: &Reservations) -> Result<(), StoreError> {
        (**self).save(r)
    }
}

/// What the hot path reports in STATUS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyStatus {
    Off,
    On { domain: DomainId, key_version: KeyVersion, cluster: ClusterId },
}

/// The current sealer, shared by every connection, and the reservations behind it.
pub struct KeySource {
    cluster: ClusterId,
    imp: AeadImpl,
    current: ArcSwapOption<RecordSealer>,
    /// Blind indexes under the primary version (archive search columns, docs/archive.md).
    indexer: ArcSwapOption<crate::crypto::blind::BlindIndexer>,
    /// Row identities under the domain's row identity key (the archive's unique key).
    row_identifier: ArcSwapOption<crate::crypto::blind::RowIdentifier>,
    /// Every version of the domain, to open records for a rewrap (REWRAP, rewrap socket only).
    ring: ArcSwapOption<KeyRing>,
    /// The persisted reservations; the lock also orders saves.
    reservations: Mutex<(Reservations, Box<dyn ReservationStore>)>,
    /// Wakes the reserver when a sealer wants its next block.
    wanted: Notify,
    /// Bumped after each committed reservation, so waiting sealers retry.
    committed: watch::Sender<u64>,
    /// The key version this cluster sealed 0.9·2^32 records under, once it did: the daemon
    /// hands it to the state machine (`Cluster::handle_worn_out`), which decides what follows.
    worn_out: watch::Sender<Option<KeyVersion>>,
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeySource({}, {:?})", self.cluster, self.status())
    }
}

impl KeySource {
    /// A key source for `cluster`, encryption off until `set_ring`. Loads the reservations.
    pub fn new(
        cluster: ClusterId,
        imp: AeadImpl,
        store: impl ReservationStore,
    ) -> Result<Self, KeyError> {
        let saved = store.load().map_err(KeyError::Load)?;
        Ok(Self {
            cluster,
            imp,
            current: ArcSwapOption::empty(),
            indexer: ArcSwapOption::empty(),
            row_identifier: ArcSwapOption::empty(),
            ring: ArcSwapOption::empty(),
            reservations: Mutex::new((saved, Box::new(store))),
            wanted: Notify::new(),
            committed: watch::Sender::new(0),
            worn_out: watch::Sender::new(None),
        })
    }

    /// Applies `Effect::KeyRingChanged`: `None` turns encryption off; a ring makes its primary
    /// version the one new records use. Blocks for one durable save (a few milliseconds) when
    /// the primary version changes; the previous sealer keeps serving until then.
    pub fn set_ring(&self, ring: Option<&KeyRing>) -> Result<(), KeyError> {
        let Some(ring) = ring else {
            self.indexer.store(None);
            self.row_identifier.store(None);
            self.ring.store(None);
            if self.current.swap(None).is_some() {
                tracing::info!(cluster = %self.cluster, "hot path: encryption off");
            }
            return Ok(());
        };
        // Versions may come and go (recovered, retired) while the primary stays.
        self.ring.store(Some(Arc::new(ring.clone())));
        if let Some(cur) = self.current.load().as_ref()
            && cur.domain() == ring.domain()
            && cur.key_version() == ring.primary_version()
        {
            return Ok(());
        }
        let mut guard = self.reservations.lock().expect("not poisoned");
        let (saved, store) = &mut *guard;
        let reserved = saved.get(ring.domain(), ring.primary_version());
        let sealer = RecordSealer::new(ring, &self.cluster, self.imp, reserved);
        if let Some(n) = sealer.counter().reservation_due() {
            let mut next = saved.clone();
            next.set(ring.domain(), ring.primary_version(), n);
            store.save(&next).map_err(KeyError::Persist)?;
            *saved = next;
            sealer.counter().commit_reservation(n);
        }
        drop(guard);
        tracing::info!(
            cluster = %self.cluster,
            domain = %ring.domain(),
            key_version = %ring.primary_version(),
            "hot path: sealing with key version {}",
            ring.primary_version()
        );
        // The row identifier first: a client that got indexes finds it there too.
        self.row_identifier.store(Some(Arc::new(crate::crypto::blind::RowIdentifier::of(ring))));
        self.indexer.store(Some(Arc::new(crate::crypto::blind::BlindIndexer::primary(ring))));
        self.check_wear(&sealer);
        self.current.store(Some(Arc::new(sealer)));
        self.committed.send_modify(|g| *g += 1);
        Ok(())
    }

    /// The sealer for the next batch, or `None` when encryption is off.
    pub fn sealer(&self) -> Option<Arc<RecordSealer>> {
        self.current.load_full()
    }

    /// The blind indexer of the primary version, or `None` when encryption is off.
    pub(crate) fn indexer(&self) -> Option<Arc<crate::crypto::blind::BlindIndexer>> {
        self.indexer.load_full()
    }

    /// Which AEAD implementation seals and opens.
    pub(crate) fn aead(&self) -> AeadImpl {
        self.imp
    }

    /// Every key version of the domain (to open records for a rewrap), or `None` when
    /// encryption is off.
    pub(crate) fn ring(&self) -> Option<Arc<KeyRing>> {
        self.ring.load_full()
    }

    /// The domain's row identifier, or `None` when encryption is off.
    pub(crate) fn row_identifier(&self) -> Option<Arc<crate::crypto::blind::RowIdentifier>> {
        self.row_identifier.load_full()
    }

    pub(crate) fn status(&self) -> KeyStatus {
        match &*self.current.load() {
            None => KeyStatus::Off,
            Some(s) => KeyStatus::On {
                domain: s.domain(),
                key_version: s.key_version(),
                cluster: self.cluster.clone(),
            },
        }
    }

    /// Seals per key version of the current domain, counted against each version's 2^32
    /// budget: the live count of the primary version, and the persisted reservation of older
    /// ones (which is what counts for them after a restart). Empty while encryption is off.
    /// Takes the reservations lock, which a save holds for one fsync: call off the async
    /// workers.
    pub(crate) fn seal_counts(&self) -> Vec<(KeyVersion, u64)> {
        let Some(cur) = self.sealer() else { return Vec::new() };
        let guard = self.reservations.lock().expect("not poisoned");
        let mut v: std::collections::BTreeMap<KeyVersion, u64> =
            guard.0.versions(cur.domain()).collect();
        drop(guard);
        v.insert(cur.key_version(), cur.counter().used());
        v.into_iter().collect()
    }

    /// Tells when a key version reaches 0.9·2^32 seals here (checked after every batch and
    /// when a sealer is set up, so a restart with a worn-out count reports it too).
    pub(crate) fn worn_out(&self) -> watch::Receiver<Option<KeyVersion>> {
        self.worn_out.subscribe()
    }

    fn check_wear(&self, sealer: &RecordSealer) {
        let v = sealer.key_version();
        if sealer.counter().rotation_needed() && *self.worn_out.borrow() != Some(v) {
            self.worn_out.send_replace(Some(v));
        }
    }

    /// Called by sealers after a batch: wakes the reserver if the next block is due, and
    /// reports a worn-out key version.
    pub(crate) fn note_use(&self, sealer: &RecordSealer) {
        if sealer.counter().reservation_due().is_some() {
            self.wanted.notify_one();
        }
        self.check_wear(sealer);
    }

    /// Wakes the reserver and waits until it commits a reservation, or `timeout` passes.
    /// Returns whether one was committed. Callers retry their seal either way.
    pub(crate) async fn wait_for_reservation(&self, timeout: Duration) -> bool {
        let mut rx = self.committed.subscribe();
        rx.mark_unchanged();
        self.wanted.notify_one();
        matches!(tokio::time::timeout(timeout, rx.changed()).await, Ok(Ok(())))
    }

    /// Persists the current sealer's next reservation if it is due. Blocking (one fsync).
    pub(crate) fn reserve_now(&self) -> Result<bool, KeyError> {
        let Some(sealer) = self.sealer() else { return Ok(false) };
        let mut guard = self.reservations.lock().expect("not poisoned");
        let Some(n) = sealer.counter().reservation_due() else { return Ok(false) };
        let (saved, store) = &mut *guard;
        let mut next = saved.clone();
        next.set(sealer.domain(), sealer.key_version(), n);
        store.save(&next).map_err(KeyError::Persist)?;
        *saved = next;
        sealer.counter().commit_reservation(n);
        drop(guard);
        tracing::debug!(key_version = %sealer.key_version(), reserved = n, "reservation persisted");
        self.committed.send_modify(|g| *g += 1);
        Ok(true)
    }

    /// Applies every key ring the daemon publishes (its `Effect::KeyRingChanged`, carried on a
    /// watch channel) until the sender is dropped. A ring whose first reservation cannot be
    /// persisted is retried every `retry`; the previous sealer keeps serving meanwhile.
    pub(crate) async fn follow(
        self: Arc<Self>,
        mut rings: watch::Receiver<Option<Arc<KeyRing>>>,
        retry: Duration,
    ) {
        'rings: loop {
            let ring = rings.borrow_and_update().clone();
            loop {
                let (me, r) = (self.clone(), ring.clone());
                match tokio::task::spawn_blocking(move || me.set_ring(r.as_deref())).await {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "hot path cannot use the new key ring yet")
                    }
                    Err(e) => tracing::error!(error = %e, "key ring task failed"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    changed = rings.changed() => match changed {
                        Ok(()) => continue 'rings,
                        Err(_) => return,
                    },
                }
            }
            if rings.changed().await.is_err() {
                return;
            }
        }
    }

    /// Keeps reservations ahead of use until `shutdown` resolves: woken by `note_use` and by
    /// sealers waiting in `wait_for_reservation`; retries a failed save every `retry`.
    pub(crate) async fn run_reserver(
        self: Arc<Self>,
        shutdown: impl Future<Output = ()>,
        retry: Duration,
    ) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.wanted.notified() => {}
            }
            loop {
                let me = self.clone();
                match tokio::task::spawn_blocking(move || me.reserve_now()).await {
                    Ok(Ok(_)) => break,
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "hot path cannot persist its counter reservation; \
                                         sealing stops when the current block is used up");
                    }
                    Err(e) => tracing::error!(error = %e, "reservation task failed"),
                }
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(retry) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::counter::BLOCK;
    use crate::crypto::random::NonceSource;
    use zeroize::Zeroizing;

    fn ring() -> KeyRing {
        KeyRing::new(DomainId::from_bytes([4; 16]), 1, Zeroizing::new([8; 32]))
    }

    fn source(store: Arc<MemoryReservations>) -> KeySource {
        KeySource::new(ClusterId::new("east").unwrap(), AeadImpl::Ring, store).unwrap()
    }

    #[test]
    fn a_ring_is_published_only_with_a_persisted_reservation() {
        let store = Arc::new(MemoryReservations::new());
        let ks = source(store.clone());
        assert_eq!(ks.status(), KeyStatus::Off);
        let mut r = ring();
        ks.set_ring(Some(&r)).unwrap();
        let s = ks.sealer().unwrap();
        assert_eq!(store.saved().get(r.domain(), KeyVersion::FIRST), BLOCK);
        assert_eq!(s.counter().reserved(), BLOCK);
        s.seal(&mut NonceSource::from_os(), b"", b"x").unwrap();
        // The same ring again keeps the sealer and its count.
        ks.set_ring(Some(&r)).unwrap();
        assert!(Arc::ptr_eq(&s, &ks.sealer().unwrap()));
        // Rotation publishes version 2 with its own reservation.
        r.rotate(2, Zeroizing::new([9; 32])).unwrap();
        ks.set_ring(Some(&r)).unwrap();
        assert_eq!(ks.sealer().unwrap().key_version().get(), 2);
        assert_eq!(store.saved().get(r.domain(), r.primary_version()), BLOCK);
        ks.set_ring(None).unwrap();
        assert!(ks.sealer().is_none());
    }

    #[test]
    fn a_restart_resumes_past_everything_reserved() {
        let store = Arc::new(MemoryReservations::new());
        let r = ring();
        source(store.clone()).set_ring(Some(&r)).unwrap();
        let again = source(store.clone());
        again.set_ring(Some(&r)).unwrap();
        assert_eq!(again.sealer().unwrap().counter().used(), BLOCK);
        assert_eq!(store.saved().get(r.domain(), KeyVersion::FIRST), 2 * BLOCK);
    }

    #[test]
    fn a_failed_save_publishes_nothing() {
        let store = Arc::new(MemoryReservations::new());
        store.fail_saves(true);
        let ks = source(store.clone());
        assert!(matches!(ks.set_ring(Some(&ring())), Err(KeyError::Persist(_))));
        assert!(ks.sealer().is_none());
    }

    #[tokio::test]
    async fn follow_applies_each_published_ring() {
        let store = Arc::new(MemoryReservations::new());
        let ks = Arc::new(source(store.clone()));
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(ks.clone().follow(rx, Duration::from_millis(10)));
        let until = |want: fn(&KeyStatus) -> bool| {
            let ks = ks.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(5), async {
                    while !want(&ks.status()) {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
                .await
                .unwrap()
            }
        };
        store.fail_saves(true);
        tx.send_replace(Some(Arc::new(ring())));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(ks.status(), KeyStatus::Off, "not published without its reservation");
        store.fail_saves(false);
        until(|s| matches!(s, KeyStatus::On { .. })).await;
        tx.send_replace(None);
        until(|s| *s == KeyStatus::Off).await;
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    }

    #[test]
    fn reserve_now_moves_the_reservation_ahead() {
        let store = Arc::new(MemoryReservations::new());
        let ks = source(store.clone());
        ks.set_ring(Some(&ring())).unwrap();
        assert!(!ks.reserve_now().unwrap());
        let s = ks.sealer().unwrap();
        let mut n = NonceSource::from_os();
        for _ in 0..BLOCK / 2 {
            s.counter().take().unwrap();
        }
        s.seal(&mut n, b"", b"x").unwrap();
        assert!(ks.reserve_now().unwrap());
        assert_eq!(s.counter().reserved(), 2 * BLOCK);
    }
}
