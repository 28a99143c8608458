//! The recent history of alarm changes, for `GET /v1/alarms`: a bounded ring buffer that the
//! daemon's core appends to as it carries out `RaiseAlarm` and `ClearAlarm` effects, and the
//! admin API reads.
//!
//! Invariants: at most `capacity` events are kept, the oldest dropped first; events are in the
//! order the core carried them out; nothing here holds key material (alarm texts never do).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{Alarm, AlarmKey, AlarmName, Severity};
use crate::ids::ClusterId;

/// How many alarm events are kept by default.
const DEFAULT_CAPACITY: usize = 256;

/// Whether an alarm was raised or cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum AlarmEventKind {
    Raised,
    Cleared,
}

impl std::fmt::Display for AlarmEventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AlarmEventKind::Raised => "raised",
            AlarmEventKind::Cleared => "cleared",
        })
    }
}

/// One raise or clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AlarmEvent {
    /// Milliseconds since the Unix epoch.
    at_unix_ms: u64,
    /// RFC 3339, UTC.
    pub(crate) at: String,
    pub(crate) event: AlarmEventKind,
    pub(crate) name: AlarmName,
    pub(crate) about: ClusterId,
    /// For a raise: its severity, cause and remedy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) severity: Option<Severity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cause: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) remedy: Option<String>,
}

/// A cloneable handle on the shared history.
#[derive(Debug, Clone)]
pub(crate) struct AlarmHistory {
    inner: Arc<Mutex<VecDeque<AlarmEvent>>>,
    capacity: usize,
}

impl Default for AlarmHistory {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl AlarmHistory {
    fn new(capacity: usize) -> Self {
        Self { inner: Arc::new(Mutex::new(VecDeque::new())), capacity: capacity.max(1) }
    }

    fn push(&self, e: AlarmEvent) {
        let mut q = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == self.capacity {
            q.pop_front();
        }
        q.push_back(e);
    }

    pub(crate) fn raised(&self, at_unix_ms: u64, a: &Alarm) {
        self.push(AlarmEvent {
            at_unix_ms,
            at: super::rfc3339(at_unix_ms),
            event: AlarmEventKind::Raised,
            name: a.key.name,
            about: a.key.about.clone(),
            severity: Some(a.severity),
            cause: Some(a.cause.clone()),
            remedy: Some(a.remedy.clone()),
        });
    }

    pub(crate) fn cleared(&self, at_unix_ms: u64, k: &AlarmKey) {
        self.push(AlarmEvent {
            at_unix_ms,
            at: super::rfc3339(at_unix_ms),
            event: AlarmEventKind::Cleared,
            name: k.name,
            about: k.about.clone(),
            severity: None,
            cause: None,
            remedy: None,
        });
    }

    /// The events, oldest first.
    pub(crate) fn snapshot(&self) -> Vec<AlarmEvent> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_events_in_order() {
        let h = AlarmHistory::new(2);
        let b = ClusterId::new("b").unwrap();
        let a = Alarm::new(AlarmName::MultiMaster, b.clone(), "cause", "remedy");
        h.raised(1, &a);
        h.cleared(2, &a.key);
        h.raised(3_000, &a);
        let s = h.snapshot();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].event, s[1].event), (AlarmEventKind::Cleared, AlarmEventKind::Raised));
        assert_eq!(s[1].at, "1970-01-01T00:00:03.000Z");
        let json = serde_json::to_string(&s[0]).unwrap();
        assert!(json.contains("MAencryptionMultiMaster") && !json.contains("cause"), "{json}");
    }
}
