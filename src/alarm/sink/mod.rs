//! Alarm sinks: every raise and clear of the daemon delivered to syslog, Alertmanager and
//! signed webhooks, as configured in `[[alarms.sinks]]` (docs/operations.md, "Alarm delivery").
//!
//! [`Sinks`] is the set the core hands events to. Each sink is its own task behind a bounded
//! queue ([`QUEUE`] events); the hand-off is `try_send`, so a sink that is down or slow never
//! makes the core (nor the hot path) wait. Guarantees:
//! - a sink receives an alarm iff its severity is at least the sink's `min_severity`, and the
//!   clear of an alarm iff it received the raise;
//! - one condition is one alarm: a raise of an alarm that is already active (same
//!   [`AlarmKey`]) is an update in place, never a second raise. An update (new cause or remedy
//!   text) is sent to no syslog or webhook receiver; an Alertmanager sink that has the alarm
//!   takes the new annotations into its next re-send, without an extra POST;
//! - the events of one sink are delivered in order; each is retried (exponential backoff with
//!   jitter, `backon`) until delivered, so a receiver that comes back gets every event once
//!   (TCP and HTTP: a delivery whose answer is lost may come twice, webhook events carry an id);
//! - when a sink's queue is full the newest event is dropped and counted as undelivered, and
//!   logged at most once a minute per sink;
//! - per sink, delivered messages, failed attempts, undelivered events, the last error and the
//!   last success are counted ([`Sinks::snapshot`], `GET /v1/status`);
//! - [`Sinks::reconfigure`] keeps sinks whose name and settings are unchanged (queue and
//!   counters included), starts new ones, and stops removed ones; a new Alertmanager sink is
//!   sent the alarms active at that moment.
//!
//! Syslog sinks also take a copy of every audit record ([`Sinks::audit`], unless the sink says
//! `audit = false`), in the same queue as its alarms, in the chain's order. Copies may take
//! half the queue at most (alarms keep the other half); past that a copy is dropped and
//! counted apart (`audit_undelivered`): the copy is best effort, `state_dir/audit.log` is the
//! record.
//!
//! Undelivered events are lost when the daemon stops. Files: [`config`] (the config section),
//! [`syslog`], [`alertmanager`], [`webhook`] (one per kind), [`http`] and `stream` (the
//! client side they share).

pub(crate) mod alertmanager;
pub(crate) mod config;
pub(crate) mod http;
mod stream;
pub(crate) mod syslog;
pub(crate) mod webhook;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, RetryableWithContext};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub(crate) use config::{AlarmsSection, SinkConfig, SinkKind};

use super::{Alarm, AlarmEventKind, AlarmKey, Severity};
use crate::ids::{ClusterId, DomainId};

/// Events waiting per sink before new ones are dropped.
pub(crate) const QUEUE: usize = 1024;
/// How long one delivery attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// First and longest wait between attempts (before jitter).
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The retry policy of every sink: exponential from 100 ms to 5 s, with jitter, no limit.
fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(BACKOFF_MIN)
        .with_max_delay(BACKOFF_MAX)
        .with_jitter()
        .without_max_times()
}

/// One raise or clear as the sinks see it. For a clear, `alarm` is the raise it clears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SinkEvent {
    pub(crate) event: AlarmEventKind,
    pub(crate) alarm: Alarm,
    /// This cluster.
    pub(crate) cluster: ClusterId,
    /// The encryption domain this cluster was in when the alarm was raised.
    pub(crate) domain: Option<DomainId>,
    pub(crate) at_unix_ms: u64,
}

/// An event in one sink's queue, numbered by that sink.
#[derive(Debug, Clone)]
pub(crate) struct Queued {
    /// 1, 2, 3… per sink instance; a gap means events were dropped (queue full).
    pub(crate) sequence: u64,
    /// Unique: the sink instance's random id and the sequence.
    pub(crate) id: String,
    pub(crate) event: SinkEvent,
    /// New texts for an alarm the sink already has (only ever queued to Alertmanager sinks,
    /// which apply it to the next re-send): not an event of its own, so it takes no sequence
    /// number and is never delivered by itself.
    pub(crate) in_place: bool,
}

/// A copy of one audit record, as written to `audit.log`, for the syslog sinks.
#[derive(Debug, Clone)]
pub(crate) struct AuditCopy {
    /// The record's `time` (RFC 3339, UTC, milliseconds): the message's TIMESTAMP.
    pub(crate) time: String,
    pub(crate) result: crate::audit::Outcome,
    /// The record's line, without its line feed.
    pub(crate) line: Arc<str>,
}

/// What one sink's queue carries. Audit copies are only ever offered to syslog sinks
/// ([`Running::offer_audit`]).
#[derive(Debug, Clone)]
pub(crate) enum Item {
    Alarm(Queued),
    Audit(AuditCopy),
}

/// What `GET /v1/status` shows of one sink (no `deny_unknown_fields`: serde does not support
/// it with `flatten`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkStatus {
    pub name: String,
    /// `syslog`, `alertmanager` or `webhook`.
    pub kind: String,
    pub(crate) min_severity: Severity,
    #[serde(flatten)]
    pub counters: Counters,
}

/// A sink's delivery counters since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Messages the receiver took: syslog lines, webhook POSTs, Alertmanager POSTs (re-sends
    /// included).
    pub delivered: u64,
    /// Attempts that failed (each is retried).
    pub failed_attempts: u64,
    /// Events never delivered: dropped because the queue was full.
    pub undelivered: u64,
    /// Audit record copies not sent because half the queue was taken (syslog sinks only; the
    /// records themselves are in `audit.log`).
    #[serde(default)]
    pub audit_undelivered: u64,
    pub last_error: Option<String>,
    pub last_success_unix_ms: Option<u64>,
}

fn failed(c: &Mutex<Counters>, e: &str) {
    let mut c = c.lock().unwrap_or_else(|p| p.into_inner());
    c.failed_attempts += 1;
    c.last_error = Some(e.to_owned());
}

fn succeeded(c: &Mutex<Counters>) {
    let mut c = c.lock().unwrap_or_else(|p| p.into_inner());
    c.delivered += 1;
    c.last_success_unix_ms = Some(crate::clock::now().unix_millis());
}

/// A random id for one sink instance: event ids are this and the sequence, so they stay unique
/// across restarts and reconfigurations.
fn instance_id() -> String {
    hex::encode(crate::crypto::random::os_bytes::<8>())
}

/// One running sink.
struct Running {
    config: SinkConfig,
    tx: mpsc::Sender<Item>,
    counters: Arc<Mutex<Counters>>,
    sequence: u64,
    instance: String,
    /// The alarms this sink was given a raise of and no clear since: a clear goes only to
    /// the sinks that got the raise.
    raised: std::collections::BTreeSet<AlarmKey>,
    /// When a full queue was last logged.
    last_drop_log: Option<std::time::Instant>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Running {
    /// Starts the sink's task (on the current tokio runtime).
    fn start(config: SinkConfig) -> Self {
        if let SinkKind::Syslog(c) = &config.kind
            && c.audit
            && c.transport != config::Transport::Tls
            && !config::host_port(&c.address).is_ok_and(|(h, _)| crate::archive::is_loopback(h))
        {
            tracing::warn!(sink = %config.name, address = %c.address,
                "this syslog sink sends audit record copies (administrators' names, source \
                 addresses, key fingerprints) in clear to another host: use transport = \"tls\", \
                 or audit = false");
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let counters: Arc<Mutex<Counters>> = Arc::default();
        let span = tracing::info_span!("sink", name = %config.name);
        let (kind, c) = (config.kind.clone(), counters.clone());
        let task = tokio::spawn(tracing::Instrument::instrument(
            async move {
                match kind {
                    SinkKind::Syslog(k) => {
                        let s = Sender::Syslog(syslog::SyslogSender::new(k));
                        deliver_in_order(s, rx, c).await
                    }
                    SinkKind::Webhook(k) => {
                        let s = Sender::Webhook(webhook::WebhookSender::new(k));
                        deliver_in_order(s, rx, c).await
                    }
                    SinkKind::Alertmanager(k) => alertmanager::run(k, rx, c).await,
                }
            },
            span,
        ));
        Self {
            config,
            tx,
            counters,
            sequence: 0,
            raised: Default::default(),
            instance: instance_id(),
            last_drop_log: None,
            task,
        }
    }

    /// Hands `event` to the sink's queue without waiting; a full queue drops it.
    fn offer(&mut self, event: SinkEvent) {
        match event.event {
            AlarmEventKind::Raised => {
                self.raised.insert(event.alarm.key.clone());
            }
            AlarmEventKind::Cleared => {
                if !self.raised.remove(&event.alarm.key) {
                    return;
                }
            }
        }
        self.sequence += 1;
        let q = Queued {
            sequence: self.sequence,
            id: format!("{}-{}", self.instance, self.sequence),
            event,
            in_place: false,
        };
        self.enqueue(Item::Alarm(q));
    }

    /// Whether the sink takes audit copies: a syslog sink without `audit = false`.
    fn takes_audit(&self) -> bool {
        matches!(&self.config.kind, SinkKind::Syslog(c) if c.audit)
    }

    /// Hands an audit record's copy to a sink that takes them. Copies may fill half the queue
    /// at most, so a collector that is down for a while never costs an alarm its place; a
    /// copy past that is dropped and counted in `audit_undelivered`.
    fn offer_audit(&mut self, copy: &AuditCopy) {
        if !self.takes_audit() {
            return;
        }
        if self.tx.capacity() <= QUEUE / 2 {
            self.counters.lock().unwrap_or_else(|p| p.into_inner()).audit_undelivered += 1;
            return;
        }
        self.enqueue(Item::Audit(copy.clone()));
    }

    /// Queues `item` without waiting; a full queue drops it, counts it, and logs at most once a
    /// minute.
    fn enqueue(&mut self, item: Item) {
        if self.tx.try_send(item).is_err() {
            self.counters.lock().unwrap_or_else(|p| p.into_inner()).undelivered += 1;
            let now = std::time::Instant::now();
            if self.last_drop_log.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60)) {
                self.last_drop_log = Some(now);
                tracing::warn!(
                    sink = %self.config.name,
                    queue = QUEUE,
                    "alarm sink queue full; event dropped (counted as undelivered; logged at most once a minute)"
                );
            }
        }
    }

    /// Hands the new texts of an alarm this sink has to an Alertmanager sink (the others
    /// have nothing to update: a syslog line or a webhook POST is sent once). A full queue
    /// drops the update: the raise it updates is queued already, and the next update or the
    /// clear follows.
    fn offer_update(&mut self, event: SinkEvent) {
        if matches!(self.config.kind, SinkKind::Alertmanager(_))
            && self.raised.contains(&event.alarm.key)
        {
            let q = Queued { sequence: self.sequence, id: String::new(), event, in_place: true };
            let _ = self.tx.try_send(Item::Alarm(q));
        }
    }

    fn status(&self) -> SinkStatus {
        SinkStatus {
            name: self.config.name.clone(),
            kind: self.config.kind.name().to_owned(),
            min_severity: self.config.min_severity,
            counters: self.counters.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}

/// The senders that deliver one event at a time.
enum Sender {
    Syslog(syslog::SyslogSender),
    Webhook(webhook::WebhookSender),
}

impl Sender {
    async fn send(&mut self, item: &Item) -> Result<(), String> {
        match (self, item) {
            (Sender::Syslog(s), item) => s.send_item(item).await,
            (Sender::Webhook(s), Item::Alarm(q)) => s.send(q).await,
            // Never queued to a webhook (`Running::offer_audit`).
            (Sender::Webhook(_), Item::Audit(_)) => Ok(()),
        }
    }
}

/// Delivers the queue's events in order, each retried until it is delivered.
async fn deliver_in_order(
    mut sender: Sender,
    mut rx: mpsc::Receiver<Item>,
    counters: Arc<Mutex<Counters>>,
) {
    let mut last_logged: Option<String> = None;
    while let Some(q) = rx.recv().await {
        let q = &q;
        let attempt = |mut s: Sender| async move {
            let r = s.send(q).await;
            (s, r)
        };
        let (s, r) = attempt
            .retry(backoff())
            .sleep(tokio::time::sleep)
            .context(sender)
            .notify(|e: &String, wait: Duration| {
                failed(&counters, e);
                if last_logged.as_deref() != Some(e) {
                    tracing::warn!(error = %e, retry_in = ?wait, "alarm sink unreachable; retrying with backoff");
                    last_logged = Some(e.clone());
                }
            })
            .await;
        sender = s;
        match r {
            Ok(()) => {
                if last_logged.take().is_some() {
                    tracing::info!("alarm sink reachable again");
                }
                succeeded(&counters);
            }
            // Only with a limit on attempts, which this policy has not.
            Err(e) => {
                failed(&counters, &e);
                counters.lock().unwrap_or_else(|p| p.into_inner()).undelivered += 1;
            }
        }
    }
}

/// Every configured sink of a daemon, and the alarms active now (for clears and new sinks).
/// Cloning gives another handle on the same set.
#[derive(Clone)]
pub(crate) struct Sinks {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    cluster: ClusterId,
    sinks: Vec<Running>,
    /// The raise of each active alarm, as the sinks were given it.
    active: BTreeMap<AlarmKey, SinkEvent>,
}

impl Sinks {
    /// Starts a task per sink; must run inside the tokio runtime.
    pub(crate) fn new(cluster: ClusterId, configs: &[SinkConfig]) -> Self {
        let sinks = configs.iter().cloned().map(Running::start).collect();
        Self { inner: Arc::new(Mutex::new(Inner { cluster, sinks, active: BTreeMap::new() })) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands a raise to every sink whose `min_severity` it reaches. Never waits. A raise of
    /// an alarm that is already active is an [update](Sinks::updated): one condition is
    /// raised once.
    pub(crate) fn raised(&self, alarm: &Alarm, domain: Option<DomainId>, at_unix_ms: u64) {
        let mut inner = self.lock();
        if inner.active.contains_key(&alarm.key) {
            drop(inner);
            return self.updated(alarm);
        }
        let ev = SinkEvent {
            event: AlarmEventKind::Raised,
            alarm: alarm.clone(),
            cluster: inner.cluster.clone(),
            domain,
            at_unix_ms,
        };
        inner.active.insert(alarm.key.clone(), ev.clone());
        for s in inner.sinks.iter_mut().filter(|s| alarm.severity >= s.config.min_severity) {
            s.offer(ev.clone());
        }
    }

    /// New cause or remedy text for an active alarm: kept as the alarm's texts (for the clear,
    /// and for an Alertmanager sink started later), and handed to the Alertmanager sinks that
    /// have the alarm, for their next re-send. Syslog and webhook receivers get nothing: their
    /// raise was sent once. The labels and the start time stay those of the raise. An alarm
    /// that is not active is ignored. Never waits.
    pub(crate) fn updated(&self, alarm: &Alarm) {
        let mut inner = self.lock();
        let Some(ev) = inner.active.get_mut(&alarm.key) else { return };
        ev.alarm = alarm.clone();
        let ev = ev.clone();
        for s in &mut inner.sinks {
            s.offer_update(ev.clone());
        }
    }

    /// Hands a clear to every sink that was given the raise. Never waits.
    pub(crate) fn cleared(&self, key: &AlarmKey, at_unix_ms: u64) {
        let mut inner = self.lock();
        let Some(raise) = inner.active.remove(key) else { return };
        let ev = SinkEvent { event: AlarmEventKind::Cleared, at_unix_ms, ..raise };
        for s in &mut inner.sinks {
            s.offer(ev.clone());
        }
    }

    /// Hands a copy of each audit record just written to the syslog sinks that take them.
    /// Never waits (it runs on the audit writer's thread, between fsync and answer).
    pub(crate) fn audit(&self, entries: &[crate::audit::Entry]) {
        let mut inner = self.lock();
        if !inner.sinks.iter().any(Running::takes_audit) {
            return;
        }
        for e in entries {
            let copy = AuditCopy { time: e.time.clone(), result: e.result, line: e.line().into() };
            for s in &mut inner.sinks {
                s.offer_audit(&copy);
            }
        }
    }

    /// The status of every sink, in configuration order.
    pub(crate) fn snapshot(&self) -> Vec<SinkStatus> {
        self.lock().sinks.iter().map(Running::status).collect()
    }

    /// Makes `configs` the sinks: a sink whose name and settings are unchanged keeps running
    /// (queue and counters), the others are stopped (undelivered events are lost) or started;
    /// a started Alertmanager sink is given the alarms active now.
    pub(crate) fn reconfigure(&self, configs: &[SinkConfig]) {
        let mut inner = self.lock();
        let mut old: Vec<Running> = std::mem::take(&mut inner.sinks);
        for c in configs {
            if let Some(i) = old.iter().position(|r| r.config == *c) {
                inner.sinks.push(old.remove(i));
                continue;
            }
            let mut r = Running::start(c.clone());
            if matches!(c.kind, SinkKind::Alertmanager(_)) {
                for ev in inner.active.values() {
                    if ev.alarm.severity >= c.min_severity {
                        r.offer(ev.clone());
                    }
                }
            }
            inner.sinks.push(r);
        }
        drop(inner);
        drop(old); // stops the removed and changed sinks
    }
}

/// What `imcrypt alarms test` sends: `MAimcryptTest`, severity warning, about this cluster.
pub(crate) fn test_event(cluster: &ClusterId) -> SinkEvent {
    SinkEvent {
        event: AlarmEventKind::Raised,
        alarm: Alarm::new(
            super::AlarmName::Test,
            cluster.clone(),
            "a test alarm sent by `imcrypt alarms test`; nothing is wrong",
            "none: it shows that alarms of this cluster reach this receiver",
        ),
        cluster: cluster.clone(),
        domain: None,
        at_unix_ms: crate::clock::now().unix_millis(),
    }
}

/// How long the test alert of `imcrypt alarms test` stays active in Alertmanager.
const TEST_ALERT_LIFETIME: Duration = Duration::from_secs(300);

/// Sends `event` to the sink `config` once, now, without queue or retry (for `imcrypt alarms
/// test`): `Ok` when the receiver took it.
pub(crate) async fn send_once(config: &SinkConfig, event: SinkEvent) -> Result<(), String> {
    let q = Queued { sequence: 1, id: format!("{}-1", instance_id()), event, in_place: false };
    match &config.kind {
        SinkKind::Syslog(c) => {
            let mut s = syslog::SyslogSender::new(c.clone());
            let sent = s.send(&q.event).await;
            s.close().await;
            sent
        }
        SinkKind::Webhook(c) => webhook::WebhookSender::new(c.clone()).send(&q).await,
        SinkKind::Alertmanager(c) => {
            let url = http::HttpUrl::parse(&c.url).map_err(|e| e.to_string())?;
            let body = alertmanager::payload(&[alertmanager::Entry {
                event: &q.event,
                starts_at_unix_ms: q.event.at_unix_ms,
                ends_at_unix_ms: q.event.at_unix_ms
                    + u64::try_from(TEST_ALERT_LIFETIME.as_millis()).unwrap_or(0),
            }]);
            http::post_json(&url.join(alertmanager::ALERTS_PATH), c.ca.as_ref(), &[], body)
                .await
                .map_err(|e| e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarm::AlarmName;
    use config::{SyslogConfig, Transport, WebhookConfig};
    use tokio::io::AsyncBufReadExt;

    fn syslog_sink(name: &str, address: &str, min: Severity) -> SinkConfig {
        SinkConfig {
            name: name.into(),
            min_severity: min,
            kind: SinkKind::Syslog(SyslogConfig {
                address: address.into(),
                transport: Transport::Tcp,
                ca_file: None,
                facility: 3,
                app_name: "imcrypt".into(),
                hostname: Some("h".into()),
                sd_id: config::DEFAULT_SD_ID.into(),
                audit: true,
                ca: None,
            }),
        }
    }

    fn alertmanager_sink(url: String, resend_interval: Duration) -> SinkConfig {
        SinkConfig {
            name: "am".into(),
            min_severity: Severity::Warning,
            kind: SinkKind::Alertmanager(config::AlertmanagerConfig {
                url,
                resend_interval,
                ends_at_after: None,
                ca_file: None,
                ca: None,
            }),
        }
    }

    fn alarm(name: AlarmName, about: &str) -> Alarm {
        Alarm::new(name, ClusterId::new(about).unwrap(), "cause", "remedy")
    }

    /// Reads octet-counted syslog messages from one TCP connection.
    async fn collector() -> (String, mpsc::UnboundedReceiver<String>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut r = tokio::io::BufReader::new(s);
                    loop {
                        let mut len = Vec::new();
                        if r.read_until(b' ', &mut len).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let n: usize = std::str::from_utf8(&len).unwrap().trim().parse().unwrap();
                        let mut msg = vec![0; n];
                        tokio::io::AsyncReadExt::read_exact(&mut r, &mut msg).await.unwrap();
                        let _ = tx.send(String::from_utf8(msg).unwrap());
                    }
                });
            }
        });
        (addr, rx)
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
        tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap()
    }

    fn audit_entries(results: &[crate::audit::Outcome]) -> Vec<crate::audit::Entry> {
        let mut prev = crate::audit::GENESIS;
        let mut out = Vec::new();
        for (i, r) in results.iter().enumerate() {
            let rec = crate::audit::Record::new(crate::audit::Actor::Local, "key.rotate", *r);
            let e = crate::audit::Entry::new(i as u64 + 1, &prev, 1_796_000_000_000, "a", rec);
            prev = crate::audit::hash_line(e.line().as_bytes());
            out.push(e);
        }
        out
    }

    #[tokio::test]
    async fn syslog_sinks_get_each_audit_record_line_in_order_unless_they_say_audit_false() {
        use crate::audit::Outcome;
        let (with, mut rx_with) = collector().await;
        let (without, mut rx_without) = collector().await;
        let mut off = syslog_sink("off", &without, Severity::Warning);
        if let SinkKind::Syslog(c) = &mut off.kind {
            c.audit = false;
        }
        // min_severity concerns alarms only: a critical-only sink still takes the audit.
        let sinks = Sinks::new(
            ClusterId::new("a").unwrap(),
            &[syslog_sink("on", &with, Severity::Critical), off],
        );
        let entries = audit_entries(&[Outcome::Ok, Outcome::Refused]);
        sinks.audit(&entries);
        for (e, pri) in entries.iter().zip(["<30>", "<29>"]) {
            let m = next(&mut rx_with).await;
            let head = format!("{pri}1 {} h imcrypt {} audit - ", e.time, std::process::id());
            assert_eq!(m, head + &e.line(), "daemon.info for ok, daemon.notice for refused");
        }
        // Alarms go on as before, after the copies; the other sink's first message is the alarm.
        sinks.raised(&alarm(AlarmName::MultiMaster, "b"), None, 1);
        assert!(next(&mut rx_with).await.contains(" MAencryptionMultiMaster ["));
        assert!(next(&mut rx_without).await.contains(" MAencryptionMultiMaster ["));
    }

    #[tokio::test]
    async fn a_sink_gets_what_reaches_its_severity_and_the_clears_of_what_it_got() {
        let (addr, mut rx) = collector().await;
        let sinks = Sinks::new(
            ClusterId::new("a").unwrap(),
            &[syslog_sink("major-up", &addr, Severity::Major)],
        );
        let critical = alarm(AlarmName::MultiMaster, "b");
        let major = alarm(AlarmName::StaleData, "c");
        let mut minor = alarm(AlarmName::SyncRejected, "d");
        minor.severity = Severity::Minor;
        sinks.raised(&minor, None, 1);
        sinks.raised(&critical, None, 2);
        sinks.raised(&major, None, 3);
        sinks.cleared(&minor.key, 4);
        sinks.cleared(&critical.key, 5);
        let got: Vec<String> =
            [next(&mut rx).await, next(&mut rx).await, next(&mut rx).await].into();
        assert!(
            got[0].contains("name=\"MAencryptionMultiMaster\"")
                && got[0].contains("event=\"raised\"")
        );
        assert!(got[1].contains("name=\"MAencryptionStaleData\""));
        assert!(
            got[2].contains("name=\"MAencryptionMultiMaster\"")
                && got[2].contains("event=\"cleared\"")
        );
        assert!(tokio::time::timeout(Duration::from_millis(200), rx.recv()).await.is_err());
        let s = sinks.snapshot();
        assert_eq!((s[0].counters.delivered, s[0].counters.undelivered), (3, 0));
    }

    /// One syslog sink whose address nobody listens on: every event waits for its retries.
    fn sink_to_nobody() -> Sinks {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        Sinks::new(
            ClusterId::new("a").unwrap(),
            &[syslog_sink("down", &format!("127.0.0.1:{port}"), Severity::Warning)],
        )
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        let sinks = sink_to_nobody();
        let start = std::time::Instant::now();
        for i in 0..(QUEUE as u64 + 10) {
            sinks.raised(&alarm(AlarmName::MultiMaster, &format!("b{i}")), None, i);
        }
        assert!(start.elapsed() < Duration::from_secs(1), "the hand-off never waits");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let s = &sinks.snapshot()[0];
        assert!(s.counters.undelivered >= 9, "{s:?}");
        assert!(s.counters.failed_attempts >= 1, "{s:?}");
        assert!(s.counters.last_error.as_deref().unwrap().contains("connect to"), "{s:?}");
    }

    #[tokio::test]
    async fn audit_copies_take_half_the_queue_at_most_so_alarms_keep_their_place() {
        let sinks = sink_to_nobody();
        let copies = audit_entries(&vec![crate::audit::Outcome::Ok; QUEUE]);
        sinks.audit(&copies);
        for i in 0..(QUEUE as u64 / 2 - 2) {
            sinks.raised(&alarm(AlarmName::MultiMaster, &format!("b{i}")), None, i);
        }
        let c = sinks.snapshot()[0].counters.clone();
        assert_eq!(c.undelivered, 0, "no alarm dropped: {c:?}");
        let queued = QUEUE as u64 - c.audit_undelivered;
        assert!((QUEUE as u64 / 2..=QUEUE as u64 / 2 + 1).contains(&queued), "{c:?}");
    }

    #[tokio::test]
    async fn reconfigure_keeps_unchanged_sinks_and_their_counters() {
        let (addr, mut rx) = collector().await;
        let keep = syslog_sink("keep", &addr, Severity::Warning);
        let gone = syslog_sink("gone", &addr, Severity::Warning);
        let sinks = Sinks::new(ClusterId::new("a").unwrap(), &[keep.clone(), gone]);
        sinks.raised(&alarm(AlarmName::MultiMaster, "b"), None, 1);
        next(&mut rx).await;
        next(&mut rx).await;
        let mut changed = syslog_sink("new", &addr, Severity::Critical);
        changed.name = "new".into();
        sinks.reconfigure(&[changed, keep]);
        let s = sinks.snapshot();
        assert_eq!(s.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["new", "keep"]);
        assert_eq!((s[0].counters.delivered, s[1].counters.delivered), (0, 1));
        // A syslog sink is not sent what was active before it started; the kept one goes on.
        sinks.cleared(&alarm(AlarmName::MultiMaster, "b").key, 2);
        assert!(next(&mut rx).await.contains("event=\"cleared\""));
        assert!(tokio::time::timeout(Duration::from_millis(200), rx.recv()).await.is_err());
    }

    /// Answers every HTTP POST with 200 and passes its body on.
    async fn http_receiver() -> (String, mpsc::UnboundedReceiver<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                let mut r = tokio::io::BufReader::new(s);
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    r.read_line(&mut line).await.unwrap();
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).await.unwrap();
                let _ = tx.send(String::from_utf8(body).unwrap());
                r.get_mut()
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await
                    .unwrap();
            }
        });
        (url, rx)
    }

    #[tokio::test]
    async fn a_new_alertmanager_sink_is_given_the_alarms_already_active() {
        let (url, mut rx) = http_receiver().await;
        let sinks = Sinks::new(ClusterId::new("a").unwrap(), &[]);
        sinks.raised(&alarm(AlarmName::MultiMaster, "b"), None, 1);
        sinks.reconfigure(&[alertmanager_sink(url, Duration::from_secs(3600))]);
        let body: serde_json::Value = serde_json::from_str(&next(&mut rx).await).unwrap();
        assert_eq!(body[0]["labels"]["alertname"], "MAencryptionMultiMaster", "{body}");
        assert_eq!(body[0]["labels"]["about"], "b", "{body}");
    }

    #[tokio::test]
    async fn an_update_reaches_alertmanager_with_its_next_resend_and_nobody_else() {
        let (addr, mut lines) = collector().await;
        let (url, mut posts) = http_receiver().await;
        let am = alertmanager_sink(url, Duration::from_millis(1500));
        let sinks = Sinks::new(
            ClusterId::new("a").unwrap(),
            &[syslog_sink("log", &addr, Severity::Warning), am],
        );
        let first =
            Alarm::new(AlarmName::MasterUnreachable, ClusterId::new("m").unwrap(), "61 s", "r");
        sinks.raised(&first, None, 1_000);
        assert!(next(&mut lines).await.contains("event=\"raised\""));
        let body: serde_json::Value = serde_json::from_str(&next(&mut posts).await).unwrap();
        assert_eq!(body[0]["annotations"]["cause"], "61 s");
        // The same condition, 10 s later: a new cause, one through `updated` and one through a
        // careless second `raised`. Neither is a new event for syslog, nor an extra POST.
        let mut later = first.clone();
        later.cause = "71 s".into();
        sinks.updated(&later);
        later.cause = "81 s".into();
        sinks.raised(&later, None, 21_000);
        let quiet = Duration::from_millis(500);
        assert!(tokio::time::timeout(quiet, lines.recv()).await.is_err(), "syslog: one raise");
        assert!(tokio::time::timeout(quiet, posts.recv()).await.is_err(), "no POST per update");
        // The re-send carries the newest text, with the first raise's start.
        let body: serde_json::Value = serde_json::from_str(&next(&mut posts).await).unwrap();
        assert_eq!(body[0]["annotations"]["cause"], "81 s", "{body}");
        assert_eq!(body[0]["startsAt"], "1970-01-01T00:00:01.000Z", "{body}");
        sinks.cleared(&first.key, 30_000);
        assert!(next(&mut lines).await.contains("event=\"cleared\""));
        assert_eq!(sinks.snapshot()[0].counters.delivered, 2, "raise and clear, nothing else");
    }

    #[test]
    fn a_sink_status_is_flat_json_that_reads_back() {
        let s = SinkStatus {
            name: "hook".into(),
            kind: "webhook".into(),
            min_severity: Severity::Major,
            counters: Counters {
                delivered: 3,
                failed_attempts: 2,
                undelivered: 1,
                audit_undelivered: 0,
                last_error: Some("connect to h:1: refused".into()),
                last_success_unix_ms: Some(5),
            },
        };
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"name": "hook", "kind": "webhook", "min_severity": "major",
                "delivered": 3, "failed_attempts": 2, "undelivered": 1, "audit_undelivered": 0,
                "last_error": "connect to h:1: refused", "last_success_unix_ms": 5})
        );
        assert_eq!(serde_json::from_value::<SinkStatus>(json).unwrap(), s);
    }

    #[test]
    fn a_webhook_config_with_another_secret_is_a_changed_sink() {
        let w = |s: &[u8]| {
            SinkKind::Webhook(WebhookConfig {
                url: "http://h:1/".into(),
                secret_file: "/s".into(),
                ca_file: None,
                secret: config::Secret(Arc::new(zeroize::Zeroizing::new(s.to_vec()))),
                ca: None,
            })
        };
        assert_eq!(w(b"one"), w(b"one"));
        assert_ne!(w(b"one"), w(b"two"));
    }
}
