//! The webhook sink: each raise or clear as a JSON POST signed with HMAC-SHA256.
//!
//! Signature (docs/operations.md, "Alarm delivery"): `X-Imcrypt-Timestamp: <unix seconds>` and
//! `X-Imcrypt-Signature: sha256=<hex of HMAC-SHA256(secret, timestamp + "." + body)>`, over the
//! exact body bytes sent. The timestamp is the attempt's, so a receiver may refuse old ones
//! (replay); `id` and `sequence` stay the same across retries, so a receiver that got an
//! event twice (an answer lost on the way back) can tell.
//!
//! Invariants: the body is built once per event ([`body`]) and signed per attempt
//! ([`signature`]); both are pure and tested here. The secret is never logged nor put in an
//! error.

use bytes::Bytes;
use serde::Serialize;

use super::Queued;
use super::config::WebhookConfig;
use super::http::{HttpUrl, post_json};
use crate::alarm::{AlarmEventKind, Severity};

pub(crate) const SIGNATURE_HEADER: &str = "X-Imcrypt-Signature";
pub(crate) const TIMESTAMP_HEADER: &str = "X-Imcrypt-Timestamp";

/// The JSON body of one event (field order is the wire order).
#[derive(Serialize)]
struct Body<'a> {
    /// Unique per event: the sink instance's random id and the sequence.
    id: &'a str,
    /// 1, 2, 3… per sink since the daemon (or the sink) started; a gap means events were
    /// dropped because the queue was full.
    sequence: u64,
    event: AlarmEventKind,
    /// RFC 3339, UTC, when the daemon raised or cleared the alarm.
    at: String,
    cluster: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    domain: Option<String>,
    alarm: &'a str,
    severity: Severity,
    about: &'a str,
    cause: &'a str,
    remedy: &'a str,
}

/// The exact bytes POSTed for `q`.
pub(crate) fn body(q: &Queued) -> Bytes {
    let a = &q.event.alarm;
    let b = Body {
        id: &q.id,
        sequence: q.sequence,
        event: q.event.event,
        at: crate::alarm::rfc3339(q.event.at_unix_ms),
        cluster: q.event.cluster.as_str(),
        domain: q.event.domain.map(|d| d.to_string()),
        alarm: a.key.name.as_str(),
        severity: a.severity,
        about: a.key.about.as_str(),
        cause: &a.cause,
        remedy: &a.remedy,
    };
    Bytes::from(serde_json::to_vec(&b).expect("the body serializes"))
}

/// `sha256=` and the hex HMAC-SHA256 under `secret` of `timestamp`, `.`, and `body`.
pub(crate) fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut signed = format!("{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    format!("sha256={}", hex::encode(crate::crypto::mac::hmac_sha256(secret, &signed)))
}

pub(crate) struct WebhookSender {
    config: WebhookConfig,
    url: HttpUrl,
}

impl WebhookSender {
    pub(crate) fn new(config: WebhookConfig) -> Self {
        let url = HttpUrl::parse(&config.url).expect("validated at config load");
        Self { config, url }
    }

    pub(crate) async fn send(&mut self, q: &Queued) -> Result<(), String> {
        let body = body(q);
        let ts = crate::clock::now().unix_millis() / 1000;
        let sig = signature(&self.config.secret.0, ts, &body);
        let headers = [(TIMESTAMP_HEADER, ts.to_string()), (SIGNATURE_HEADER, sig)];
        post_json(&self.url, self.config.ca.as_ref(), &headers, body)
            .await
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarm::sink::SinkEvent;
    use crate::alarm::{Alarm, AlarmName};
    use crate::ids::ClusterId;

    #[test]
    fn the_body_carries_the_event_and_the_signature_covers_timestamp_and_body() {
        let q = Queued {
            sequence: 7,
            id: "0123456789abcdef-7".into(),
            event: SinkEvent {
                event: AlarmEventKind::Raised,
                alarm: Alarm::new(
                    AlarmName::MultiMaster,
                    ClusterId::new("b").unwrap(),
                    "c \"q\"",
                    "r",
                ),
                cluster: ClusterId::new("a").unwrap(),
                domain: None,
                at_unix_ms: 0,
            },
            in_place: false,
        };
        let b = body(&q);
        assert_eq!(
            std::str::from_utf8(&b).unwrap(),
            r#"{"id":"0123456789abcdef-7","sequence":7,"event":"raised","at":"1970-01-01T00:00:00.000Z","cluster":"a","alarm":"MAencryptionMultiMaster","severity":"critical","about":"b","cause":"c \"q\"","remedy":"r"}"#
        );
        // Computed with Python's hmac module: the receiver's side of docs/operations.md.
        assert_eq!(
            signature(b"Jefe", 0, b"what do ya want for nothing?"),
            "sha256=37f471929915ccd2cbbe79feb84ffcff4f2bb25e15fc41c2506687331ae179cc"
        );
        assert_ne!(signature(b"Jefe", 1, b"x"), signature(b"Jefe", 2, b"x"));
    }
}
