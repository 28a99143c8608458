//! Request bodies on the admin listener: read whole within [`api::MAX_BODY`] by the routes that
//! take one, and drained by the connection when a request is answered without reading it.
//!
//! Why the drain: a refusal (no token, wrong role, unknown route, wrong method, a body of the
//! wrong type) is decided before the body is looked at. Left to itself, hyper then drains only
//! what has already arrived and otherwise closes the connection after the answer, saying
//! `Connection: close` only if it learnt that before it wrote the answer's head. A client that
//! sends its body in a write of its own (urllib3, hence `requests` and Schemathesis) then either
//! put the connection back in its pool and sent its next request into the closing socket, or
//! was still sending the body when the connection closed: "EOF occurred in violation of
//! protocol" either way, on a request that had nothing wrong with it.
//!
//! Invariants:
//! - no byte of a body is read before the request's token is checked and its role allowed
//!   (but for the console's login form, which carries the token), and no more than
//!   [`api::MAX_BODY`] bytes of one are ever read (a body that declares more is refused from
//!   its `Content-Length`);
//! - a body left unread is read and thrown away as it comes, never looked at nor kept, for at
//!   most [`DRAIN_TIMEOUT`] from the moment the answer is ready, before the answer goes out;
//!   the connection then serves the next request (unless the client waits for a
//!   `100 Continue` before sending it: a refusal does not ask for a body);
//! - an answer given while part of its request's body is still unread (too large, too slow, or
//!   cut off by an error) says `Connection: close`, and hyper closes the connection after it
//!   (RFC 9112 §9.6), so the client opens a new one for its next request.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::header::{CONTENT_LENGTH, EXPECT};
use hyper::{Request, Version};

use super::{ApiError, api};

/// How long a body left unread may take to arrive before the connection gives up on it and
/// closes after the answer. A client sends its body right after its headers.
pub(super) const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// A request on the admin listener: its body stays in a [`BodySlot`] the connection keeps a
/// handle on, so that a route that does not read it leaves it for [`BodySlot::settle`].
pub(super) type AdminRequest = Request<BodySlot>;

/// Where a request's body waits until a route takes it ([`read_limited`]), or until the
/// connection drains it ([`BodySlot::settle`]).
#[derive(Clone)]
pub(super) struct BodySlot(Arc<Mutex<Slot>>);

enum Slot {
    /// Not taken; `waits_for_continue` when the client sends the body only after a
    /// `100 Continue`, which a refusal does not ask for.
    Unread { body: Incoming, waits_for_continue: bool },
    /// Taken by a route; `whole` once it was read to its end.
    Taken { whole: bool },
}

impl BodySlot {
    /// `req` with its body in a slot, and the connection's handle on that slot.
    pub(super) fn hold(req: Request<Incoming>) -> (AdminRequest, BodySlot) {
        let (parts, body) = req.into_parts();
        // As hyper decides it: the last `Expect` header, on HTTP/1.1.
        let waits_for_continue = parts.version > Version::HTTP_10
            && parts
                .headers
                .get_all(EXPECT)
                .iter()
                .next_back()
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let slot = BodySlot(Arc::new(Mutex::new(Slot::Unread { body, waits_for_continue })));
        (Request::from_parts(parts, slot.clone()), slot)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The body, for the route that reads it; `None` if it was taken already.
    fn take(&self) -> Option<Incoming> {
        let mut slot = self.lock();
        match std::mem::replace(&mut *slot, Slot::Taken { whole: false }) {
            Slot::Unread { body, .. } => Some(body),
            taken @ Slot::Taken { .. } => {
                *slot = taken;
                None
            }
        }
    }

    fn read_whole(&self) {
        *self.lock() = Slot::Taken { whole: true };
    }

    /// Once the answer is ready: drains a body no route read (at most [`api::MAX_BODY`] bytes,
    /// for at most [`DRAIN_TIMEOUT`]) and tells whether the connection may serve another
    /// request; if not, the answer must say `Connection: close`.
    pub(super) async fn settle(&self) -> bool {
        let slot = std::mem::replace(&mut *self.lock(), Slot::Taken { whole: false });
        let (body, waits_for_continue) = match slot {
            Slot::Unread { body, waits_for_continue } => (body, waits_for_continue),
            Slot::Taken { whole } => return whole,
        };
        if body.is_end_stream() {
            return true;
        }
        if waits_for_continue || body.size_hint().lower() > api::MAX_BODY as u64 {
            return false;
        }
        matches!(tokio::time::timeout(DRAIN_TIMEOUT, discard(body)).await, Ok(true))
    }
}

/// Reads `body` to its end, keeping none of it; false if it is over [`api::MAX_BODY`] bytes (the
/// same [`Limited`] bound as [`read_limited`]) or fails.
async fn discard(body: Incoming) -> bool {
    let mut body = Limited::new(body, api::MAX_BODY);
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            return false;
        }
    }
    true
}

/// A request's body of at most [`api::MAX_BODY`] bytes, refused from its `Content-Length`
/// before reading when it is given, then `check`ed (its type) before it is read.
pub(super) async fn read_limited(
    req: AdminRequest,
    check: impl FnOnce(&AdminRequest) -> Result<(), ApiError>,
) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > api::MAX_BODY as u64) {
        return Err(ApiError::TooLarge);
    }
    check(&req)?;
    let slot = req.into_body();
    let Some(body) = slot.take() else {
        return Err(ApiError::BadBody("the request body was read already".into()));
    };
    let bytes = Limited::new(body, api::MAX_BODY).collect().await.map_err(|e| {
        if e.is::<http_body_util::LengthLimitError>() {
            ApiError::TooLarge
        } else {
            ApiError::BadBody(e.to_string())
        }
    })?;
    slot.read_whole();
    Ok(bytes.to_bytes())
}
