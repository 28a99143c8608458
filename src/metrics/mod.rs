//! Prometheus metrics (`[metrics]` in the config), through the `prometheus-client` crate, in the
//! Prometheus text format; docs/operations.md ("Monitoring") lists every metric.
//!
//! Two kinds, so that nothing in the core changes per metric and the hot path stays fast:
//! - **counted where the event happens**: hot-path requests, records, errors and latency
//!   ([`HotpathMetrics`]), admin requests, password failures and lockouts ([`AdminMetrics`]).
//!   Plain atomic counters, no locks on the hot path: a batch costs a few relaxed atomic adds
//!   and one histogram observation per request;
//! - **derived at scrape time** from the daemon's typed status (`admin::api::Status`, which
//!   carries the alarm sinks' counters too) and the hot path's seal counts
//!   ([`StateCollector`]): role, epoch, term round, key versions, peers, alarms, database
//!   probes, sink deliveries. A scrape asks the core for its status once, like
//!   `GET /v1/status` does.
//!
//! Invariants: metrics off means no registry at all (`None` everywhere, not a registry nobody
//! reads); no metric carries key material, passwords, tokens or addresses; every name starts
//! with `imcrypt_` and follows Prometheus naming (base units, `_total` on counters).

pub(crate) mod server;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::admin::api::{Role, Status};
use crate::alarm::sink::SinkStatus;
use crate::crypto::counter::HARD_LIMIT;
use crate::ids::KeyVersion;

/// The hot path's counters; shared by every connection (`hotpath::serve_with`).
#[derive(Debug)]
pub struct HotpathMetrics {
    /// ENCRYPT and INDEX requests answered (with ciphertexts, "off" or an error).
    pub(crate) requests: Counter,
    /// Records sealed.
    pub(crate) records: Counter,
    /// Requests answered with an ERROR frame, by its code.
    pub(crate) errors: Family<[(&'static str, &'static str); 1], Counter>,
    /// From the read of a request to the write of its answer.
    pub(crate) latency: Histogram,
}

impl HotpathMetrics {
    fn new(registry: &mut Registry) -> Arc<Self> {
        // 10 µs to about 1.3 s: a single record on loopback is tens of µs, a batch waiting
        // for a counter reservation up to `reservation_wait` (2 s by default).
        let m = Arc::new(Self {
            requests: Counter::default(),
            records: Counter::default(),
            errors: Family::default(),
            latency: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                10e-6, 2.0, 18,
            )),
        });
        registry.register(
            "imcrypt_hotpath_requests",
            "Hot-path ENCRYPT and INDEX requests answered",
            m.requests.clone(),
        );
        registry.register(
            "imcrypt_hotpath_records",
            "Records sealed by the hot path",
            m.records.clone(),
        );
        registry.register(
            "imcrypt_hotpath_errors",
            "Hot-path requests answered with an error, by error code",
            m.errors.clone(),
        );
        registry.register(
            "imcrypt_hotpath_request_duration_seconds",
            "Time from reading a hot-path request to writing its answer",
            m.latency.clone(),
        );
        m
    }

    /// One answered request: `records` sealed (0 for "off" and errors).
    pub(crate) fn answered(&self, records: usize) {
        self.requests.inc();
        if records > 0 {
            self.records.inc_by(records as u64);
        }
    }

    /// One request answered with an error `code` (a `hotpath::frame::ErrorCode`'s name).
    pub(crate) fn error(&self, code: &'static str) {
        self.errors.get_or_create(&[("code", code)]).inc();
    }

    /// `n` requests answered `elapsed` after their bytes were read.
    pub(crate) fn observe(&self, n: u32, elapsed: Duration) {
        let s = elapsed.as_secs_f64();
        for _ in 0..n {
            self.latency.observe(s);
        }
    }
}

type AdminLabels = [(&'static str, String); 3];

/// The admin API's counters.
#[derive(Debug)]
pub(crate) struct AdminMetrics {
    requests: Family<AdminLabels, Counter>,
    pub(crate) password_failures: Counter,
    pub(crate) lockouts: Counter,
    token_refusals: Family<[(&'static str, &'static str); 1], Counter>,
}

impl AdminMetrics {
    fn new(registry: &mut Registry) -> Arc<Self> {
        let m = Arc::new(Self {
            requests: Family::default(),
            password_failures: Counter::default(),
            lockouts: Counter::default(),
            token_refusals: Family::default(),
        });
        registry.register(
            "imcrypt_admin_requests",
            "Admin API requests, by method, route (the path pattern, or \"other\") and HTTP status",
            m.requests.clone(),
        );
        registry.register(
            "imcrypt_admin_password_failures",
            "Admin requests refused for a wrong password",
            m.password_failures.clone(),
        );
        registry.register(
            "imcrypt_admin_lockouts",
            "Admin clients locked out after consecutive wrong passwords",
            m.lockouts.clone(),
        );
        registry.register(
            "imcrypt_admin_token_refusals",
            "Admin requests refused (401) for their token, by reason: missing, unknown or revoked",
            m.token_refusals.clone(),
        );
        m
    }

    /// One request refused for its token; `reason` is `missing`, `unknown` or `revoked`.
    pub(crate) fn token_refused(&self, reason: &'static str) {
        self.token_refusals.get_or_create(&[("reason", reason)]).inc();
    }

    /// One answered request; `route` is a path pattern of `admin::api::Route` or "other", so
    /// the label set stays bounded whatever clients send.
    pub(crate) fn request(&self, method: &'static str, route: &'static str, code: u16) {
        let labels = [
            ("method", method.to_owned()),
            ("route", route.to_owned()),
            ("code", code.to_string()),
        ];
        self.requests.get_or_create(&labels).inc();
    }
}

/// Seals per key version of this cluster's hot path (its share of the 2^32 budget).
pub(crate) type SealCounts = Vec<(KeyVersion, u64)>;

/// What one scrape reports about the daemon's state.
#[derive(Debug, Clone)]
pub(crate) struct Scrape {
    /// `None`: the daemon is stopping and no longer answers for its state.
    pub(crate) status: Option<Status>,
    pub(crate) seals: SealCounts,
    pub(crate) now_unix_ms: u64,
}

/// The metrics derived from the daemon's state, computed at scrape time from the last
/// [`Scrape`] handed to it (the scrape handler sets it, then encodes, under one lock).
#[derive(Debug, Default)]
pub(crate) struct StateCollector {
    scrape: Mutex<Option<Scrape>>,
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Vec<(&'static str, String)>, f64)>,
) -> Result<(), std::fmt::Error> {
    let series: Vec<_> = series.into_iter().collect();
    if series.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in &series {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Vec<(&'static str, String)>, u64)>,
) -> Result<(), std::fmt::Error> {
    let series: Vec<_> = series.into_iter().collect();
    if series.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in &series {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn one(v: f64) -> Option<(Vec<(&'static str, String)>, f64)> {
    Some((vec![], v))
}

impl Collector for StateCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let guard = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        let Some(sc) = guard.as_ref() else { return Ok(()) };
        let e = &mut enc;
        gauge(
            e,
            "imcrypt_up",
            "1 while the daemon answers for its state, 0 while it stops",
            one(if sc.status.is_some() { 1.0 } else { 0.0 }),
        )?;
        let now_s = sc.now_unix_ms as f64 / 1000.0;
        if let Some(s) = &sc.status {
            let roles = [Role::Off, Role::Master, Role::Slave];
            gauge(
                e,
                "imcrypt_role",
                "This cluster's role: 1 on the series of its current role (off, master, slave)",
                roles.map(|r| (vec![("role", r.to_string())], if r == s.role { 1.0 } else { 0.0 })),
            )?;
            gauge(
                e,
                "imcrypt_domain_epoch",
                "Epoch of the domain's state this cluster holds",
                s.epoch.map(|x| (vec![], x.0 as f64)),
            )?;
            gauge(
                e,
                "imcrypt_domain_term_round",
                "Round of the domain's term: raised by every handover and promotion",
                s.term.map(|t| (vec![], f64::from(t.round()))),
            )?;
            gauge(
                e,
                "imcrypt_key_versions",
                "Key versions this cluster holds",
                s.domain.map(|_| (vec![], s.key_versions.len() as f64)),
            )?;
            gauge(
                e,
                "imcrypt_key_primary_version",
                "The key version new records are sealed under",
                s.primary_version.map(|v| (vec![], v.get() as f64)),
            )?;
            gauge(
                e,
                "imcrypt_key_primary_age_seconds",
                "Age of the primary key version",
                s.primary_created_unix.map(|c| (vec![], (now_s - c as f64).max(0.0))),
            )?;
            gauge(
                e,
                "imcrypt_peer_up",
                "1 while the link to the peer delivers messages, 0 otherwise",
                s.peers.iter().map(|p| {
                    (vec![("peer", p.id.to_string())], if p.link.connected { 1.0 } else { 0.0 })
                }),
            )?;
            gauge(
                e,
                "imcrypt_peer_last_hello_age_seconds",
                "Time since the last message from the peer (absent: none since start)",
                s.peers.iter().filter_map(|p| {
                    let at = p.last_hello_unix_ms? as f64 / 1000.0;
                    Some((vec![("peer", p.id.to_string())], (now_s - at).max(0.0)))
                }),
            )?;
            let mut alarms = std::collections::BTreeMap::<(String, String), f64>::new();
            for a in &s.alarms {
                *alarms.entry((a.key.name.to_string(), a.severity.to_string())).or_default() += 1.0;
            }
            gauge(
                e,
                "imcrypt_alarms_active",
                "Active alarms, by name and severity (absent: none active)",
                alarms.into_iter().map(|((n, sev), v)| (vec![("name", n), ("severity", sev)], v)),
            )?;
            gauge(
                e,
                "imcrypt_archive_db_up",
                "1 if the node's compliance database answered the last probe as configured",
                s.db_probes
                    .iter()
                    .map(|p| (vec![("node", p.node.clone())], if p.reachable { 1.0 } else { 0.0 })),
            )?;
            let sink = |k: &SinkStatus| vec![("sink", k.name.clone()), ("kind", k.kind.clone())];
            counter(
                e,
                "imcrypt_sink_deliveries",
                "Alarm events delivered, per sink",
                s.sinks.iter().map(|k| (sink(k), k.counters.delivered)),
            )?;
            counter(
                e,
                "imcrypt_sink_failures",
                "Failed delivery attempts of alarm events, per sink (each is retried)",
                s.sinks.iter().map(|k| (sink(k), k.counters.failed_attempts)),
            )?;
            counter(
                e,
                "imcrypt_sink_undelivered",
                "Alarm events dropped because the sink's queue was full, per sink",
                s.sinks.iter().map(|k| (sink(k), k.counters.undelivered)),
            )?;
            counter(
                e,
                "imcrypt_sink_audit_undelivered",
                "Audit record copies not sent because half the sink's queue was taken, per \
                 syslog sink (the records are in audit.log)",
                s.sinks.iter().map(|k| (sink(k), k.counters.audit_undelivered)),
            )?;
        }
        counter(
            e,
            "imcrypt_seals",
            "Records sealed per key version on this cluster, as counted against the key's 2^32 \
             budget (after a restart the whole reserved block counts)",
            sc.seals.iter().map(|(v, n)| (vec![("key_version", v.to_string())], *n)),
        )?;
        gauge(
            e,
            "imcrypt_key_budget_used_ratio",
            "Fraction of the 2^32 AES-GCM invocations of the key version used on this cluster \
             (the master is asked to rotate at 0.9)",
            sc.seals.iter().map(|(v, n)| {
                (vec![("key_version", v.to_string())], *n as f64 / HARD_LIMIT as f64)
            }),
        )?;
        Ok(())
    }
}

/// The daemon's metrics: one registry, the counters the hot path and the admin API update,
/// and the state collector a scrape fills.
pub struct Metrics {
    registry: Registry,
    hotpath: Arc<HotpathMetrics>,
    admin: Arc<AdminMetrics>,
    state: Arc<StateCollector>,
    /// One scrape at a time: the state collector holds the scrape being encoded.
    scraping: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let hotpath = HotpathMetrics::new(&mut registry);
        let admin = AdminMetrics::new(&mut registry);
        let state = Arc::new(StateCollector::default());
        registry.register_collector(Box::new(state.clone()));
        Self { registry, hotpath, admin, state, scraping: tokio::sync::Mutex::new(()) }
    }

    /// The hot path's counters, for `hotpath::serve_with`.
    pub fn hotpath(&self) -> Arc<HotpathMetrics> {
        self.hotpath.clone()
    }

    pub(crate) fn admin(&self) -> Arc<AdminMetrics> {
        self.admin.clone()
    }

    /// The exposition (Prometheus text format 0.0.4) of the counters alone, without the state
    /// (what the benchmark and unit tests read).
    pub fn encode_counters(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }

    /// The exposition of everything, `scrape` included.
    pub(crate) async fn encode(
        &self,
        status: Option<Status>,
        seals: SealCounts,
        now_unix_ms: u64,
    ) -> String {
        let _one = self.scraping.lock().await;
        *self.state.scrape.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Scrape { status, seals, now_unix_ms });
        let out = self.encode_counters();
        *self.state.scrape.lock().unwrap_or_else(|p| p.into_inner()) = None;
        out
    }
}

/// The `Content-Type` of [`Metrics::encode`]'s answer.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_exported_with_their_prometheus_names() {
        let m = Metrics::new();
        m.hotpath().answered(64);
        m.hotpath().error("KeyExhausted");
        m.admin().request("GET", "/v1/status", 200);
        let text = m.encode_counters();
        for line in [
            "imcrypt_hotpath_requests_total 1",
            "imcrypt_hotpath_records_total 64",
            "imcrypt_hotpath_errors_total{code=\"KeyExhausted\"} 1",
            "imcrypt_admin_requests_total{method=\"GET\",route=\"/v1/status\",code=\"200\"} 1",
            "# TYPE imcrypt_hotpath_request_duration_seconds histogram",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        // No state was scraped: no state metric is made up.
        assert!(!text.contains("imcrypt_role"), "{text}");
    }

    #[tokio::test]
    async fn a_scrape_reports_seals_and_the_budget_used_per_key_version() {
        let m = Metrics::new();
        let v = KeyVersion::new(2).unwrap();
        let text = m.encode(None, vec![(v, HARD_LIMIT / 4)], 0).await;
        for line in [
            "imcrypt_up 0",
            "imcrypt_seals_total{key_version=\"2\"} 1073741824",
            "imcrypt_key_budget_used_ratio{key_version=\"2\"} 0.25",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    /// A status with every kind of subject: a domain, a peer heard from, an alarm, a probed
    /// database, an alarm sink.
    fn full_status() -> Status {
        use crate::admin::api::{DbProbeStatus, PeerStatus};
        use crate::alarm::{Alarm, AlarmName};
        use crate::ids::{ClusterId, DomainId, Epoch};
        let b = ClusterId::new("b").unwrap();
        Status {
            cluster: ClusterId::new("a").unwrap(),
            role: Role::Master,
            off_reason: None,
            domain: Some(DomainId::from_bytes([1; 16])),
            master: Some(ClusterId::new("a").unwrap()),
            epoch: Some(Epoch(3)),
            term: crate::ids::Term::new(2, 1),
            key_versions: vec![KeyVersion::FIRST, KeyVersion::new(2).unwrap()],
            primary_version: Some(KeyVersion::new(2).unwrap()),
            primary_created_unix: Some(1_000),
            remote: Some(true),
            eligible: true,
            peers: vec![PeerStatus {
                id: b.clone(),
                address: Some("127.0.0.1:7102".into()),
                relation: crate::cluster::PeerRelation::NotHeardFrom,
                link: Default::default(),
                last_hello_unix_ms: Some(1_500_000),
                announced: None,
            }],
            alarms: vec![Alarm::new(AlarmName::MultiMaster, b, "cause", "remedy")],
            db_probes: vec![DbProbeStatus { node: "n1".into(), reachable: false }],
            pending_destruction: vec![],
            sinks: vec![SinkStatus {
                name: "pager".into(),
                kind: "webhook".into(),
                min_severity: crate::alarm::Severity::Major,
                counters: crate::alarm::sink::Counters {
                    delivered: 3,
                    failed_attempts: 1,
                    undelivered: 2,
                    audit_undelivered: 4,
                    last_error: None,
                    last_success_unix_ms: None,
                },
            }],
        }
    }

    /// The metric names of a table of `doc` whose rows start with `` | `imcrypt_ ``.
    fn documented(doc: &str) -> std::collections::BTreeSet<String> {
        doc.lines()
            .filter_map(|l| l.strip_prefix("| `imcrypt_"))
            .map(|l| format!("imcrypt_{}", l.split('`').next().unwrap()))
            .collect()
    }

    /// The family names of an exposition (`# TYPE` lines; a counter's carries `_total`).
    fn exported(text: &str) -> std::collections::BTreeSet<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap().to_owned())
            .collect()
    }

    /// docs/operations.md lists every metric an operator can query; it must be the list the
    /// daemon exports, no more and no less.
    #[tokio::test]
    async fn every_documented_metric_is_exported_and_no_other() {
        let m = Metrics::new();
        m.hotpath().answered(1);
        m.hotpath().error("internal");
        m.admin().token_refused("unknown");
        m.admin().request("GET", "/v1/status", 200);
        let text = m.encode(Some(full_status()), vec![(KeyVersion::FIRST, 5)], 2_000_000).await;
        let docs = documented(include_str!("../../docs/operations.md"));
        assert_eq!(docs, exported(&text), "docs/operations.md vs the exposition:\n{text}");
        for line in [
            "imcrypt_role{role=\"master\"} 1",
            "imcrypt_role{role=\"slave\"} 0",
            "imcrypt_domain_epoch 3",
            "imcrypt_domain_term_round 2",
            "imcrypt_key_versions 2",
            "imcrypt_key_primary_age_seconds 1000",
            "imcrypt_peer_up{peer=\"b\"} 0",
            "imcrypt_peer_last_hello_age_seconds{peer=\"b\"} 500",
            "imcrypt_alarms_active{name=\"MAencryptionMultiMaster\",severity=\"critical\"} 1",
            "imcrypt_archive_db_up{node=\"n1\"} 0",
            "imcrypt_sink_deliveries_total{sink=\"pager\",kind=\"webhook\"} 3",
            "imcrypt_sink_failures_total{sink=\"pager\",kind=\"webhook\"} 1",
            "imcrypt_sink_undelivered_total{sink=\"pager\",kind=\"webhook\"} 2",
            "imcrypt_sink_audit_undelivered_total{sink=\"pager\",kind=\"webhook\"} 4",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(!text.contains("127.0.0.1"), "no address in the metrics:\n{text}");
    }
}
