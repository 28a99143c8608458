//! The Alertmanager sink: the active alarms as alerts of the Alertmanager API v2
//! (`POST {url}/api/v2/alerts`), re-sent every `resend_interval` with an `endsAt` in the
//! future, and each cleared alarm sent once more with `endsAt` = the time of the clear, which
//! Alertmanager takes as resolved.
//!
//! Invariants: the labels of an alert never change while it is active (the `domain` label is
//! the one of its first raise), so its clear resolves the very alert that fired; a clear that
//! could not be delivered is kept and sent with the next round, never forgotten; if imcrypt
//! stops sending, its alerts resolve by themselves after `ends_at_after`. The payload is pure
//! ([`payload`]) and tested here.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::RetryableWithContext;
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;

use super::config::AlertmanagerConfig;
use super::http::{HttpUrl, post_json};
use super::{Counters, Item, SinkEvent};
use crate::alarm::{AlarmEventKind, AlarmKey};

/// The alerts path under the configured base URL.
pub(crate) const ALERTS_PATH: &str = "/api/v2/alerts";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Alert {
    labels: BTreeMap<&'static str, String>,
    annotations: BTreeMap<&'static str, String>,
    starts_at: String,
    ends_at: String,
}

/// One alert to send: the event (its labels and texts), when it started, when it ends.
pub(crate) struct Entry<'a> {
    pub(crate) event: &'a SinkEvent,
    pub(crate) starts_at_unix_ms: u64,
    pub(crate) ends_at_unix_ms: u64,
}

/// The JSON array of `POST /api/v2/alerts`. Labels: `alertname` (the alarm name), `severity`,
/// `cluster` (this cluster), `about` (the other cluster), `domain` (the encryption domain id,
/// absent when the cluster had none); annotations: `cause`, `remedy`, `summary`.
pub(crate) fn payload(entries: &[Entry<'_>]) -> Bytes {
    let alerts: Vec<Alert> = entries
        .iter()
        .map(|e| {
            let a = &e.event.alarm;
            let mut labels = BTreeMap::from([
                ("alertname", a.key.name.as_str().to_owned()),
                ("severity", a.severity.to_string()),
                ("cluster", e.event.cluster.to_string()),
                ("about", a.key.about.to_string()),
            ]);
            if let Some(d) = &e.event.domain {
                labels.insert("domain", d.to_string());
            }
            let annotations = BTreeMap::from([
                ("cause", a.cause.clone()),
                ("remedy", a.remedy.clone()),
                ("summary", a.to_string()),
            ]);
            Alert {
                labels,
                annotations,
                starts_at: crate::alarm::rfc3339(e.starts_at_unix_ms),
                ends_at: crate::alarm::rfc3339(e.ends_at_unix_ms),
            }
        })
        .collect();
    Bytes::from(serde_json::to_vec(&alerts).expect("alerts serialize"))
}

/// What the sink knows: the active alarms (with their first raise) and the clears not yet
/// delivered.
#[derive(Default)]
struct State {
    /// The latest raise of each active alarm, and when it was first raised.
    active: BTreeMap<AlarmKey, (SinkEvent, u64)>,
    /// Clears to send: the event (labels of the raise) and when the alarm started.
    resolved: Vec<(SinkEvent, u64)>,
}

impl State {
    fn apply(&mut self, ev: SinkEvent) {
        let key = ev.alarm.key.clone();
        match ev.event {
            AlarmEventKind::Raised => {
                let (starts, domain) = match self.active.get(&key) {
                    Some((old, s)) => (*s, old.domain),
                    None => (ev.at_unix_ms, ev.domain),
                };
                self.resolved.retain(|(r, _)| r.alarm.key != key);
                self.active.insert(key, (SinkEvent { domain, ..ev }, starts));
            }
            AlarmEventKind::Cleared => {
                let (raise, starts) = match self.active.remove(&key) {
                    Some(a) => a,
                    None => (ev.clone(), ev.at_unix_ms),
                };
                // The labels of the raise, the end of the clear.
                let clear = SinkEvent {
                    event: AlarmEventKind::Cleared,
                    at_unix_ms: ev.at_unix_ms,
                    ..raise
                };
                self.resolved.push((clear, starts));
            }
        }
    }

    fn payload(&self, now_ms: u64, ends_after: Duration) -> Option<Bytes> {
        let ends = now_ms + u64::try_from(ends_after.as_millis()).unwrap_or(u64::MAX / 2);
        let mut entries: Vec<Entry<'_>> = self
            .active
            .values()
            .map(|(e, s)| Entry { event: e, starts_at_unix_ms: *s, ends_at_unix_ms: ends })
            .collect();
        entries.extend(self.resolved.iter().map(|(e, s)| Entry {
            event: e,
            starts_at_unix_ms: *s,
            ends_at_unix_ms: e.at_unix_ms.max(*s),
        }));
        (!entries.is_empty()).then(|| payload(&entries))
    }
}

/// Runs the sink until its queue closes: applies events as they come, and sends the whole set
/// after each batch of raises and clears and every `resend_interval`. An in-place update (new
/// texts of an active alarm) is applied but sent with the next round, not at once: it is not a
/// new alert, and an alarm whose cause carries an elapsed time would otherwise cost a POST per
/// hello.
pub(crate) async fn run(
    config: AlertmanagerConfig,
    mut rx: mpsc::Receiver<Item>,
    counters: Arc<Mutex<Counters>>,
) {
    let url = HttpUrl::parse(&config.url).expect("validated at config load").join(ALERTS_PATH);
    let mut state = State::default();
    let mut next = tokio::time::Instant::now() + config.resend_interval;
    loop {
        let mut send_now = tokio::select! {
            q = rx.recv() => match q {
                Some(Item::Alarm(q)) => {
                    let event = !q.in_place;
                    state.apply(q.event);
                    event
                }
                // Never queued here (`Running::offer_audit`).
                Some(Item::Audit(_)) => false,
                None => return,
            },
            () = tokio::time::sleep_until(next) => true,
        };
        while let Ok(item) = rx.try_recv() {
            if let Item::Alarm(q) = item {
                send_now |= !q.in_place;
                state.apply(q.event);
            }
        }
        if !send_now {
            continue;
        }
        next = tokio::time::Instant::now() + config.resend_interval;
        let Some(body) = state.payload(crate::clock::now().unix_millis(), config.ends_at_after())
        else {
            continue;
        };
        // A few quick retries within the round; what is still not delivered goes with the
        // next round (the active set is re-sent anyway, and clears are kept).
        let backoff = super::backoff().with_max_times(4);
        let send = |b: Bytes| {
            let url = &url;
            let ca = config.ca.as_ref();
            async move {
                let r = post_json(url, ca, &[], b.clone()).await.map_err(|e| e.to_string());
                (b, r)
            }
        };
        let (_, r) = send
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .context(body)
            .notify(|e: &String, _| super::failed(&counters, e))
            .await;
        match r {
            Ok(()) => {
                state.resolved.clear();
                super::succeeded(&counters);
            }
            Err(e) => super::failed(&counters, &e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarm::{Alarm, AlarmName};
    use crate::ids::{ClusterId, DomainId};

    fn ev(kind: AlarmEventKind, at: u64, domain: Option<DomainId>) -> SinkEvent {
        SinkEvent {
            event: kind,
            alarm: Alarm::new(AlarmName::MultiMaster, ClusterId::new("b").unwrap(), "two", "one"),
            cluster: ClusterId::new("a").unwrap(),
            domain,
            at_unix_ms: at,
        }
    }

    #[test]
    fn an_active_alarm_ends_in_the_future_and_a_clear_resolves_it_with_the_same_labels() {
        let d = DomainId::from_bytes([0xab; 16]);
        let mut s = State::default();
        s.apply(ev(AlarmEventKind::Raised, 1_000, Some(d)));
        let v: serde_json::Value =
            serde_json::from_slice(&s.payload(5_000, Duration::from_secs(180)).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{
                "labels": {"alertname": "MAencryptionMultiMaster", "severity": "critical",
                           "cluster": "a", "about": "b", "domain": "ab".repeat(16)},
                "annotations": {"cause": "two", "remedy": "one",
                                "summary": "MAencryptionMultiMaster (critical) about cluster b: two Remedy: one"},
                "startsAt": "1970-01-01T00:00:01.000Z",
                "endsAt": "1970-01-01T00:03:05.000Z"
            }])
        );
        // Cleared when the cluster no longer has a domain: the labels stay the raise's.
        s.apply(ev(AlarmEventKind::Cleared, 9_000, None));
        let v: serde_json::Value =
            serde_json::from_slice(&s.payload(10_000, Duration::from_secs(180)).unwrap()).unwrap();
        assert_eq!(v[0]["labels"]["domain"], "ab".repeat(16));
        assert_eq!(v[0]["endsAt"], "1970-01-01T00:00:09.000Z");
        assert_eq!(v.as_array().unwrap().len(), 1);
        s.resolved.clear();
        assert!(s.payload(11_000, Duration::from_secs(180)).is_none());
    }
}
