//! The server side of one hot-path connection, without I/O: bytes in, answers out.
//!
//! The driver (`server`) reads into a buffer, calls `Session::handle`, writes what it appended
//! to `out`, and does what the returned `Next` says. Nothing here reads a socket or a clock.
//!
//! Invariants:
//! - Every complete request frame gets exactly one answer frame, in request order: SEALED (all
//!   records of the batch, sealed under one key version), OFF, STATUS, or ERROR. A batch is all
//!   or nothing: an ERROR answer carries no ciphertexts.
//! - A frame that breaks the protocol (oversized, garbled, before HELLO) gets an ERROR answer
//!   with `closes = 1`, and nothing after it is processed.
//! - A batch that finds the counter reservation used up is not answered until the driver has
//!   waited for the reservation (`Next::WaitForReservation`); after the wait it is sealed or,
//!   if `give_up` is set, answered with `ReservationUnavailable`. It is never dropped.

use std::sync::Arc;

use super::frame::{self, ErrorCode, FrameError, Request, StatusInfo};
use super::keys::{KeySource, KeyStatus};
use crate::crypto::counter::CounterError;
use crate::crypto::random::NonceSource;
use crate::crypto::record::RecordError;
use crate::crypto::record::RecordOpener;
use crate::metrics::HotpathMetrics;

/// Limits a session enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_frame: u32,
    pub max_batch: u32,
}

/// What the driver does after `handle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// All complete frames are answered: read more.
    NeedMore,
    /// The frame at `used` waits for a counter reservation: wait, then call `handle` again.
    WaitForReservation,
    /// Write `out`, then close the connection.
    Close,
}

/// The result of one `handle` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Input bytes consumed (whole frames only).
    pub used: usize,
    pub next: Next,
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct Session {
    limits: Limits,
    greeted: bool,
    nonces: NonceSource,
    /// Whether REWRAP is served: only to connections of the rewrap socket.
    may_rewrap: bool,
    /// `None`: metrics off, nothing counted.
    metrics: Option<Arc<HotpathMetrics>>,
    /// ENCRYPT and INDEX requests answered since the driver last asked ([`Self::take_answered`]).
    answered: u32,
}

impl Session {
    pub fn new(limits: Limits, nonces: NonceSource) -> Self {
        Self { limits, greeted: false, nonces, metrics: None, answered: 0, may_rewrap: false }
    }

    /// Serves REWRAP on this connection (the rewrap socket's connections only).
    pub(crate) fn with_rewrap(mut self, allowed: bool) -> Self {
        self.may_rewrap = allowed;
        self
    }

    /// Counts requests, records and errors in `metrics` (once per batch, not per record).
    pub(crate) fn with_metrics(mut self, metrics: Option<Arc<HotpathMetrics>>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The ENCRYPT and INDEX requests answered since the last call (for the driver's latency
    /// histogram: the session reads no clock).
    pub(crate) fn take_answered(&mut self) -> u32 {
        std::mem::take(&mut self.answered)
    }

    fn count(&mut self, records: usize, error: Option<ErrorCode>) {
        if let Some(m) = &self.metrics {
            self.answered += 1;
            m.answered(records);
            if let Some(code) = error {
                m.error(code.name());
            }
        }
    }

    pub(crate) fn greeted(&self) -> bool {
        self.greeted
    }

    /// Answers the complete frames at the front of `input`, appending answer frames to `out`.
    pub fn handle(
        &mut self,
        input: &[u8],
        keys: &KeySource,
        out: &mut Vec<u8>,
        give_up: bool,
    ) -> Progress {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            let (req, n) =
                match frame::decode_request(rest, self.limits.max_frame, self.limits.max_batch) {
                    Ok(Some(x)) => x,
                    Ok(None) => return Progress { used, next: Next::NeedMore },
                    Err(e) => {
                        protocol_error(out, &e);
                        if let Some(m) = &self.metrics {
                            m.error(e.code().name());
                        }
                        return Progress { used, next: Next::Close };
                    }
                };
            match (self.greeted, req) {
                (false, Request::Hello { min_version, max_version }) => {
                    if !(min_version..=max_version).contains(&frame::VERSION) {
                        frame::encode_error(
                            out,
                            0,
                            ErrorCode::UnsupportedVersion,
                            true,
                            &format!(
                                "client speaks versions {min_version}..={max_version}; this server \
                                 speaks {}",
                                frame::VERSION
                            ),
                        );
                        return Progress { used, next: Next::Close };
                    }
                    self.greeted = true;
                    frame::encode_welcome(
                        out,
                        frame::VERSION,
                        self.limits.max_frame,
                        self.limits.max_batch,
                    );
                }
                (true, Request::Hello { .. }) | (false, _) => {
                    frame::encode_error(
                        out,
                        0,
                        ErrorCode::HandshakeRequired,
                        true,
                        "HELLO must be the first frame of a connection, and only the first",
                    );
                    return Progress { used, next: Next::Close };
                }
                (true, Request::Index { request_id, messages }) => {
                    match keys.indexer() {
                        None => frame::encode_off(out, request_id),
                        Some(ix) => {
                            let idx: Vec<[u8; 32]> = messages.iter().map(|m| ix.index(m)).collect();
                            frame::encode_indexed(out, request_id, ix.version().get(), &idx);
                        }
                    }
                    self.count(0, None);
                }
                (true, Request::Identify { request_id, messages }) => {
                    match keys.row_identifier() {
                        None => frame::encode_off(out, request_id),
                        Some(ri) => {
                            let ids: Vec<[u8; 32]> =
                                messages.iter().map(|m| ri.identity(m)).collect();
                            frame::encode_identified(out, request_id, &ids);
                        }
                    }
                    self.count(0, None);
                }
                (true, Request::Status { request_id }) => {
                    frame::encode_status(out, request_id, &status_info(keys));
                }
                (true, Request::Rewrap { request_id, records }) => {
                    if !self.may_rewrap {
                        frame::encode_error(
                            out,
                            request_id,
                            ErrorCode::NotPermitted,
                            false,
                            "REWRAP is served on the daemon's rewrap socket only \
                             ([hotpath.rewrap_socket])",
                        );
                        self.count(0, Some(ErrorCode::NotPermitted));
                        used += n;
                        continue;
                    }
                    if let Some(wait) = self.rewrap(keys, request_id, records, out, give_up) {
                        return Progress { used, next: wait };
                    }
                }
                (true, Request::Encrypt { request_id, records }) => {
                    let Some(sealer) = keys.sealer() else {
                        frame::encode_off(out, request_id);
                        self.count(0, None);
                        used += n;
                        continue;
                    };
                    let at = frame::begin_sealed(out, request_id);
                    let failed = match sealer.take_batch(records.len()) {
                        Ok(mut permit) => {
                            for (meta, pt) in records.iter() {
                                let len_at = out.len();
                                out.extend_from_slice(&[0; 4]);
                                permit.seal_into(&mut self.nonces, meta, pt, out);
                                let l = (out.len() - len_at - 4) as u32;
                                out[len_at..len_at + 4].copy_from_slice(&l.to_be_bytes());
                            }
                            None
                        }
                        Err(e) => Some(e),
                    };
                    match failed {
                        None => {
                            frame::finish_sealed(out, at, records.len() as u32);
                            self.count(records.len(), None);
                        }
                        Some(e) => {
                            out.truncate(at);
                            let exhausted =
                                e == RecordError::Counter(CounterError::ReservationExhausted);
                            if exhausted && !give_up {
                                return Progress { used, next: Next::WaitForReservation };
                            }
                            let (code, msg) = seal_error(e);
                            frame::encode_error(out, request_id, code, false, &msg);
                            self.count(0, Some(code));
                        }
                    }
                    keys.note_use(&sealer);
                }
            }
            used += n;
        }
    }

    /// Answers REWRAP (rewrap socket only): each record opened with the domain's ring and
    /// sealed again under the primary version with its row's blind indexes under that same
    /// version. `Some(next)` when the request must wait for a counter reservation.
    fn rewrap(
        &mut self,
        keys: &KeySource,
        request_id: u64,
        records: frame::RecordList<'_>,
        out: &mut Vec<u8>,
        give_up: bool,
    ) -> Option<Next> {
        if !self.may_rewrap {
            frame::encode_error(
                out,
                request_id,
                ErrorCode::NotPermitted,
                false,
                "REWRAP is served on the daemon's rewrap socket only ([hotpath.rewrap_socket])",
            );
            self.count(0, Some(ErrorCode::NotPermitted));
            return None;
        }
        // Sealer, indexer and ring are swapped one after the other on a rotation: loaded
        // again until the sealer and the indexer are of one version.
        let mut loaded = (keys.sealer(), keys.indexer(), keys.ring());
        for _ in 0..3 {
            match &loaded {
                (Some(s), Some(ix), Some(_)) if s.key_version() != ix.version() => {
                    loaded = (keys.sealer(), keys.indexer(), keys.ring());
                }
                _ => break,
            }
        }
        let (Some(sealer), Some(ix), Some(ring)) = loaded else {
            frame::encode_off(out, request_id);
            self.count(0, None);
            return None;
        };
        if sealer.key_version() != ix.version() {
            let (code, msg) = (ErrorCode::ShuttingDown, "the key is rotating; retry");
            frame::encode_error(out, request_id, code, false, msg);
            self.count(0, Some(code));
            return None;
        }
        match sealer.take_batch(records.len()) {
            Ok(mut permit) => {
                let mut opener = RecordOpener::new(&ring, keys.aead());
                let at = frame::begin_rewrapped(out, request_id, sealer.key_version().get());
                for (meta, rec) in records.iter() {
                    crate::archive::rewrap::reseal_into(
                        &mut opener,
                        &mut permit,
                        &mut self.nonces,
                        &ix,
                        meta,
                        rec,
                        out,
                    );
                }
                frame::finish_rewrapped(out, at, records.len() as u32);
                self.count(records.len(), None);
            }
            Err(RecordError::Counter(CounterError::ReservationExhausted)) if !give_up => {
                return Some(Next::WaitForReservation);
            }
            Err(e) => {
                let (code, msg) = seal_error(e);
                frame::encode_error(out, request_id, code, false, &msg);
                self.count(0, Some(code));
            }
        }
        keys.note_use(&sealer);
        None
    }

    /// The answer to a connection that announces a frame too large to be a HELLO before
    /// sending one: no share of the byte budget goes to a client that has not said HELLO.
    pub(crate) fn before_hello(out: &mut Vec<u8>, len: usize) {
        frame::encode_error(
            out,
            0,
            ErrorCode::HandshakeRequired,
            true,
            &format!("a {len}-byte frame before HELLO; send HELLO first"),
        );
    }

    /// The answer when the peer closed the connection in the middle of a frame.
    pub(crate) fn truncated(out: &mut Vec<u8>, pending: usize) {
        frame::encode_error(
            out,
            0,
            ErrorCode::Truncated,
            true,
            &format!("connection ended {pending} bytes into an incomplete frame"),
        );
    }
}

fn status_info(keys: &KeySource) -> StatusInfo {
    match keys.status() {
        KeyStatus::Off => StatusInfo::Off,
        KeyStatus::On { domain, key_version, cluster } => StatusInfo::On {
            domain: *domain.as_bytes(),
            key_version: key_version.get(),
            cluster: cluster.as_str().to_owned(),
        },
    }
}

fn protocol_error(out: &mut Vec<u8>, e: &FrameError) {
    frame::encode_error(out, e.request_id().unwrap_or(0), e.code(), true, &e.to_string());
}

/// The ERROR an ENCRYPT or REWRAP gets when its batch cannot be sealed: nothing was sealed.
fn seal_error(e: RecordError) -> (ErrorCode, String) {
    match e {
        RecordError::Counter(CounterError::ReservationExhausted) => (
            ErrorCode::ReservationUnavailable,
            "the invocation-counter reservation could not be persisted in time; nothing was \
             sealed, retry later"
                .to_owned(),
        ),
        RecordError::Counter(CounterError::KeyExhausted) => {
            (ErrorCode::KeyExhausted, e.to_string())
        }
        other => (ErrorCode::Internal, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::crypto::aead::AeadImpl;
    use crate::crypto::keyring::KeyRing;
    use crate::crypto::record::RecordOpener;
    use crate::hotpath::frame::Response;
    use crate::hotpath::keys::MemoryReservations;
    use crate::ids::{ClusterId, DomainId};
    use zeroize::Zeroizing;

    const LIMITS: Limits = Limits { max_frame: 1 << 16, max_batch: 8 };

    fn setup(on: bool) -> (KeySource, KeyRing, Session) {
        let ring = KeyRing::new(DomainId::from_bytes([1; 16]), 1, Zeroizing::new([2; 32]));
        let ks = KeySource::new(
            ClusterId::new("east").unwrap(),
            AeadImpl::Ring,
            Arc::new(MemoryReservations::new()),
        )
        .unwrap();
        if on {
            ks.set_ring(Some(&ring)).unwrap();
        }
        (ks, ring, Session::new(LIMITS, NonceSource::from_os()))
    }

    fn answers(out: &[u8]) -> Vec<Response<'_>> {
        let mut v = Vec::new();
        let mut rest = out;
        while let Some((r, n)) = frame::decode_response(rest, u32::MAX).unwrap() {
            v.push(r);
            rest = &rest[n..];
        }
        assert!(rest.is_empty());
        v
    }

    fn hello() -> Vec<u8> {
        let mut b = Vec::new();
        frame::encode_hello(&mut b, 1, 1);
        b
    }

    #[test]
    fn each_request_gets_one_answer_in_order() {
        let (ks, ring, mut s) = setup(true);
        let mut input = hello();
        frame::encode_encrypt(
            &mut input,
            7,
            [(&b"r1"[..], &b"one"[..]), (b"r2", b"two")].into_iter(),
        );
        frame::encode_status_request(&mut input, 8);
        frame::encode_encrypt(&mut input, 9, std::iter::empty());
        let mut out = Vec::new();
        let p = s.handle(&input, &ks, &mut out, false);
        assert_eq!(p, Progress { used: input.len(), next: Next::NeedMore });
        let a = answers(&out);
        assert_eq!(a.len(), 4);
        assert!(matches!(a[0], Response::Welcome { version: 1, max_batch: 8, .. }));
        let Response::Sealed { request_id: 7, records } = &a[1] else { panic!("{:?}", a[1]) };
        let mut op = RecordOpener::new(&ring, AeadImpl::RustCrypto);
        let recs: Vec<_> = records.iter().collect();
        assert_eq!(&op.open(recs[0], b"r1").unwrap()[..], b"one");
        assert_eq!(&op.open(recs[1], b"r2").unwrap()[..], b"two");
        assert!(matches!(
            &a[2],
            Response::Status { request_id: 8, status: StatusInfo::On { key_version: 1, .. } }
        ));
        assert!(matches!(&a[3], Response::Sealed { request_id: 9, records } if records.is_empty()));
    }

    #[test]
    fn index_answers_blind_indexes_under_the_primary_version_or_off() {
        let (ks, ring, mut s) = setup(true);
        let mut input = hello();
        frame::encode_message_list(
            &mut input,
            frame::kind::INDEX,
            5,
            [&b"participant\0alice"[..], b"room\0ops"].into_iter(),
        );
        let mut out = Vec::new();
        s.handle(&input, &ks, &mut out, false);
        let a = answers(&out);
        let ix = crate::crypto::blind::BlindIndexer::primary(&ring);
        let Response::Indexed { request_id: 5, key_version: 1, indexes } = a[1] else {
            panic!("{:?}", a[1])
        };
        assert_eq!(&indexes[..32], &ix.index(b"participant\0alice")[..]);
        assert_eq!(&indexes[32..], &ix.index(b"room\0ops")[..]);
        assert_answered_off(frame::kind::INDEX);
    }

    #[test]
    fn identify_answers_row_identities_under_the_domain_key_that_does_not_rotate_or_off() {
        let (ks, ring, mut s) = setup(true);
        let mut input = hello();
        let msgs = [&b"row\0a"[..], b"row\0b"];
        frame::encode_message_list(&mut input, frame::kind::IDENTIFY, 5, msgs.into_iter());
        let mut out = Vec::new();
        s.handle(&input, &ks, &mut out, false);
        let a = answers(&out);
        let ri = crate::crypto::blind::RowIdentifier::of(&ring);
        let Response::Identified { request_id: 5, identities } = a[1] else { panic!("{:?}", a[1]) };
        assert_eq!(&identities[..32], &ri.identity(b"row\0a")[..]);
        assert_eq!(&identities[32..], &ri.identity(b"row\0b")[..]);
        assert_answered_off(frame::kind::IDENTIFY);
    }

    /// An INDEX or IDENTIFY (`kind`) to a cluster with encryption off is answered OFF.
    fn assert_answered_off(kind: u8) {
        let (ks, _, mut s) = setup(false);
        let mut input = hello();
        frame::encode_message_list(&mut input, kind, 6, [&b"x"[..]].into_iter());
        let mut out = Vec::new();
        s.handle(&input, &ks, &mut out, false);
        assert_eq!(answers(&out)[1], Response::Off { request_id: 6 });
    }

    #[test]
    fn rewrap_reseals_rows_under_the_primary_only_on_the_rewrap_socket() {
        use crate::archive::event::{participant_message, room_message};
        use crate::crypto::blind::BlindIndexer;
        let (ks, ring, _) = setup(true);
        // A row sealed under version 1, then the key rotates.
        let row = br#"{"message_id":"m1","from":"Alice@x","to":"bob@x","room":"ops","timestamp_ms":5,"direction":"inbound","body":"hi"}"#;
        let sealer = ks.sealer().unwrap();
        let rec = sealer.seal(&mut NonceSource::from_os(), b"meta", row).unwrap();
        let not_a_row = sealer.seal(&mut NonceSource::from_os(), b"meta", b"[1]").unwrap();
        let mut ring2 = ring.clone();
        ring2.rotate(2, Zeroizing::new([3; 32])).unwrap();
        ks.set_ring(Some(&ring2)).unwrap();
        let items =
            [(&b"meta"[..], &rec[..]), (b"other meta", &rec[..]), (b"meta", &not_a_row[..])];

        let mut input = hello();
        frame::encode_rewrap(&mut input, 9, items.into_iter());
        let mut out = Vec::new();
        let mut router = Session::new(LIMITS, NonceSource::from_os());
        router.handle(&input, &ks, &mut out, false);
        let Response::Error { request_id: 9, code: ErrorCode::NotPermitted, closes: false, .. } =
            answers(&out)[1]
        else {
            panic!("{:?}", answers(&out)[1])
        };

        let mut out = Vec::new();
        let mut admin = Session::new(LIMITS, NonceSource::from_os()).with_rewrap(true);
        admin.handle(&input, &ks, &mut out, false);
        let a = answers(&out);
        let Response::Rewrapped { request_id: 9, key_version: 2, items } = &a[1] else {
            panic!("{:?}", a[1])
        };
        let got: Vec<_> = items.iter().collect();
        let ix = BlindIndexer::primary(&ring2);
        let frame::RewrappedItem::Done { record, from_idx, to_idx, room_idx } = &got[0] else {
            panic!("{:?}", got[0])
        };
        let mut op = RecordOpener::new(&ring2, AeadImpl::RustCrypto);
        assert_eq!(
            &op.open(record, b"meta").unwrap()[..],
            &row[..],
            "same plaintext, same metadata"
        );
        assert_eq!(
            crate::crypto::record::RecordHeader::parse(record).unwrap().key_version.get(),
            2
        );
        assert_eq!(*from_idx, ix.index(&participant_message("alice@x")));
        assert_eq!(*to_idx, ix.index(&participant_message("bob@x")));
        assert_eq!(*room_idx, Some(ix.index(&room_message("ops"))));
        assert!(
            matches!(got[1], frame::RewrappedItem::Failed(why) if why.contains("authenticat")),
            "{:?}",
            got[1]
        );
        assert_eq!(
            got[2],
            frame::RewrappedItem::Failed("the record opened but is not an archive row")
        );
    }

    #[test]
    fn encryption_off_is_an_answer() {
        let (ks, _, mut s) = setup(false);
        let mut input = hello();
        frame::encode_encrypt(&mut input, 3, [(&b""[..], &b"x"[..])].into_iter());
        frame::encode_status_request(&mut input, 4);
        let mut out = Vec::new();
        s.handle(&input, &ks, &mut out, false);
        let a = answers(&out);
        assert_eq!(a[1], Response::Off { request_id: 3 });
        assert_eq!(a[2], Response::Status { request_id: 4, status: StatusInfo::Off });
    }

    #[test]
    fn requests_before_hello_and_bad_versions_close() {
        let (ks, _, mut s) = setup(true);
        let mut input = Vec::new();
        frame::encode_status_request(&mut input, 1);
        let mut out = Vec::new();
        assert_eq!(s.handle(&input, &ks, &mut out, false).next, Next::Close);
        assert!(matches!(
            answers(&out)[0],
            Response::Error { code: ErrorCode::HandshakeRequired, closes: true, .. }
        ));
        let (ks, _, mut s) = setup(true);
        let mut input = Vec::new();
        frame::encode_hello(&mut input, 2, 5);
        let mut out = Vec::new();
        assert_eq!(s.handle(&input, &ks, &mut out, false).next, Next::Close);
        assert!(matches!(
            answers(&out)[0],
            Response::Error { code: ErrorCode::UnsupportedVersion, .. }
        ));
    }

    #[test]
    fn a_garbled_frame_is_answered_after_the_good_ones_and_closes() {
        let (ks, _, mut s) = setup(true);
        let mut input = hello();
        frame::encode_status_request(&mut input, 1);
        input.extend_from_slice(&[0, 0, 0, 3, 0x02, 0xde, 0xad]);
        frame::encode_status_request(&mut input, 2);
        let mut out = Vec::new();
        let p = s.handle(&input, &ks, &mut out, false);
        assert_eq!(p.next, Next::Close);
        let a = answers(&out);
        assert_eq!(a.len(), 3);
        assert!(matches!(
            a[2],
            Response::Error { request_id: 0, code: ErrorCode::Malformed, closes: true, .. }
        ));
        // Oversized: refused from the prefix alone.
        let (ks, _, mut s) = setup(true);
        let mut input = hello();
        input.extend_from_slice(&u32::MAX.to_be_bytes());
        let mut out = Vec::new();
        assert_eq!(s.handle(&input, &ks, &mut out, false).next, Next::Close);
        assert!(matches!(answers(&out)[1], Response::Error { code: ErrorCode::FrameTooLarge, .. }));
    }

    #[test]
    fn an_exhausted_reservation_waits_then_answers_explicitly() {
        let (ks, _, mut s) = setup(true);
        let sealer = ks.sealer().unwrap();
        while sealer.counter().take().is_ok() {}
        let mut input = hello();
        let before = input.len();
        frame::encode_encrypt(&mut input, 5, [(&b""[..], &b"x"[..])].into_iter());
        let mut out = Vec::new();
        let p = s.handle(&input, &ks, &mut out, false);
        assert_eq!(p, Progress { used: before, next: Next::WaitForReservation });
        assert_eq!(answers(&out).len(), 1, "only WELCOME so far");
        // The driver gives up after its wait: an explicit error, never silence.
        let mut out2 = Vec::new();
        let p = s.handle(&input[p.used..], &ks, &mut out2, true);
        assert_eq!(p.next, Next::NeedMore);
        assert!(matches!(
            answers(&out2)[0],
            Response::Error {
                request_id: 5,
                code: ErrorCode::ReservationUnavailable,
                closes: false,
                ..
            }
        ));
        // Once the reservation is persisted, the same frame is sealed.
        ks.reserve_now().unwrap();
        let mut out3 = Vec::new();
        s.handle(&input[before..], &ks, &mut out3, false);
        assert!(matches!(answers(&out3)[0], Response::Sealed { request_id: 5, .. }));
    }
}
