//! The admin API's contract: routes, request bodies and response bodies, one type each,
//! serialized by the server (`admin`, filled by the daemon) and deserialized by the client
//! (`cli`), so a renamed field breaks the build instead of printing `-`.
//! docs/admin-api.yaml describes the same routes and bodies; tests keep the two equal.
//!
//! Invariants: [`Route::ALL`] is the complete list of routes the server answers; request types
//! that carry a password hold it in zeroizing memory and have no `Debug`; no response type
//! holds key material; the one response that holds a token ([`CreatedToken`]) holds it in
//! zeroizing memory and has no `Debug`.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::admin::roles::AdminRole;
use crate::alarm::sink::SinkStatus;
use crate::alarm::{Alarm, AlarmEvent};
use crate::cluster::PeerRelation;
use crate::ids::{ClusterId, DomainId, Epoch, KeyVersion, Term};
use crate::peer::client::LinkStatus;

/// Largest request body accepted (a 16384-bit RSA public key in PEM is about 3 KiB).
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// Every route of the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Status,
    Peers,
    AddPeer,
    RemovePeer,
    AddNode,
    RemoveNode,
    Alarms,
    Health,
    Enable,
    Disable,
    SetRemote,
    ChangePassword,
    RotateKey,
    RetireKeys,
    RestoreKeys,
    DownloadKeys,
    Handover,
    Promote,
    ListTokens,
    CreateToken,
    RevokeToken,
    PeeringToken,
    PeeringEstablish,
    PeeringList,
    PeeringDelete,
    Audit,
}

impl Route {
    pub const ALL: [Route; 26] = [
        Route::Status,
        Route::Peers,
        Route::AddPeer,
        Route::RemovePeer,
        Route::AddNode,
        Route::RemoveNode,
        Route::Alarms,
        Route::Health,
        Route::Enable,
        Route::Disable,
        Route::SetRemote,
        Route::ChangePassword,
        Route::RotateKey,
        Route::RetireKeys,
        Route::RestoreKeys,
        Route::DownloadKeys,
        Route::Handover,
        Route::Promote,
        Route::ListTokens,
        Route::CreateToken,
        Route::RevokeToken,
        Route::PeeringToken,
        Route::PeeringEstablish,
        Route::PeeringList,
        Route::PeeringDelete,
        Route::Audit,
    ];

    /// The HTTP method and the path pattern (`{id}` stands for one path segment).
    pub fn method_and_path(self) -> (&'static str, &'static str) {
        match self {
            Route::Status => ("GET", "/v1/status"),
            Route::Peers => ("GET", "/v1/peers"),
            Route::AddPeer => ("POST", "/v1/peers"),
            Route::RemovePeer => ("DELETE", "/v1/peers/{id}"),
            Route::AddNode => ("POST", "/v1/nodes"),
            Route::RemoveNode => ("DELETE", "/v1/nodes/{id}"),
            Route::Alarms => ("GET", "/v1/alarms"),
            Route::Health => ("GET", "/v1/health"),
            Route::Enable => ("POST", "/v1/encryption/enable"),
            Route::Disable => ("POST", "/v1/encryption/disable"),
            Route::SetRemote => ("PUT", "/v1/encryption/remote"),
            Route::ChangePassword => ("POST", "/v1/password"),
            Route::RotateKey => ("POST", "/v1/keys/rotate"),
            Route::RetireKeys => ("POST", "/v1/keys/retire"),
            Route::RestoreKeys => ("POST", "/v1/keys/restore"),
            Route::DownloadKeys => ("POST", "/v1/keys/download"),
            Route::Handover => ("POST", "/v1/encryption/handover"),
            Route::Promote => ("POST", "/v1/encryption/promote"),
            Route::ListTokens => ("GET", "/v1/tokens"),
            Route::CreateToken => ("POST", "/v1/tokens"),
            Route::RevokeToken => ("DELETE", "/v1/tokens/{id}"),
            Route::PeeringToken => ("POST", "/v1/peering/tokens"),
            Route::PeeringEstablish => ("POST", "/v1/peering/establish"),
            Route::PeeringList => ("GET", "/v1/peering"),
            Route::PeeringDelete => ("DELETE", "/v1/peering/{id}"),
            Route::Audit => ("GET", "/v1/audit"),
        }
    }

    /// The audit action of a request to this route that changes or reveals something (its
    /// refusals before the daemon's core are recorded under it); `None` for the routes that
    /// only read status.
    pub(crate) fn audit_action(self) -> Option<&'static str> {
        use crate::audit::acts::action as a;
        match self {
            Route::Status | Route::Peers | Route::Alarms | Route::Health => None,
            Route::AddPeer => Some(a::PEER_ADD),
            Route::RemovePeer => Some(a::PEER_REMOVE),
            Route::AddNode => Some(a::NODE_ADD),
            Route::RemoveNode => Some(a::NODE_REMOVE),
            Route::Enable => Some(a::ENABLE),
            Route::Disable => Some(a::DISABLE),
            Route::SetRemote => Some(a::REMOTE),
            Route::ChangePassword => Some(a::PASSWORD_CHANGE),
            Route::RotateKey => Some(a::KEY_ROTATE),
            Route::RetireKeys => Some(a::KEY_RETIRE),
            Route::RestoreKeys => Some(a::KEY_RESTORE),
            Route::DownloadKeys => Some(a::KEY_DOWNLOAD),
            Route::Handover => Some(a::HANDOVER),
            Route::Promote => Some(a::PROMOTE),
            Route::CreateToken => Some(a::TOKEN_CREATE),
            Route::RevokeToken => Some(a::TOKEN_REVOKE),
            Route::PeeringToken => Some(a::PEERING_TOKEN),
            Route::PeeringEstablish => Some(a::PEERING_ESTABLISH),
            Route::PeeringDelete => Some(a::PEERING_DELETE),
            Route::PeeringList => None,
            // Names and roles, no secret: read like the status.
            Route::ListTokens => None,
            // Reading the trail is not an act on the domain (as `imcrypt audit show` is not).
            Route::Audit => None,
        }
    }

    /// Whether the route reads a JSON request body (the others never read one, whatever is
    /// sent).
    pub(crate) fn takes_body(self) -> bool {
        match self {
            Route::AddPeer
            | Route::AddNode
            | Route::Enable
            | Route::Disable
            | Route::SetRemote
            | Route::ChangePassword
            | Route::RetireKeys
            | Route::RestoreKeys
            | Route::DownloadKeys
            | Route::Handover
            | Route::Promote
            | Route::CreateToken
            | Route::PeeringToken
            | Route::PeeringEstablish => true,
            Route::Status
            | Route::Peers
            | Route::RemovePeer
            | Route::RemoveNode
            | Route::Alarms
            | Route::Health
            | Route::RotateKey
            | Route::ListTokens
            | Route::RevokeToken
            | Route::PeeringList
            | Route::PeeringDelete
            | Route::Audit => false,
        }
    }

    /// Answered without the admin token: a load balancer or monitor holds no token, and the
    /// answer ([`Health`]) says nothing a monitor of this cluster does not need.
    pub fn needs_token(self) -> bool {
        self != Route::Health
    }
}

/// How a request path matched the route table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Match {
    Found {
        route: Route,
        param: Option<String>,
    },
    /// The path exists with other methods.
    WrongMethod {
        allowed: Vec<&'static str>,
    },
    NotFound,
}

fn matches_pattern(pattern: &str, path: &str) -> Option<Option<String>> {
    let (mut p, mut q) = (pattern.split('/'), path.split('/'));
    let mut param = None;
    loop {
        match (p.next(), q.next()) {
            (None, None) => return Some(param),
            (Some("{id}"), Some(seg)) if !seg.is_empty() => param = Some(seg.to_owned()),
            (Some(a), Some(b)) if a == b => {}
            _ => return None,
        }
    }
}

/// Finds the route for `method` and `path`. A path that some route names literally is that
/// route's path only: `/v1/peering/tokens` is never the `{id}` of `/v1/peering/{id}`, so its
/// methods (and a 405's `Allow`) are the literal routes' alone, as docs/admin-api.yaml has
/// them.
pub(crate) fn find(method: &str, path: &str) -> Match {
    let matching: Vec<(Route, Option<String>)> = Route::ALL
        .into_iter()
        .filter_map(|r| Some((r, matches_pattern(r.method_and_path().1, path)?)))
        .collect();
    let literal = matching.iter().any(|(_, param)| param.is_none());
    let mut allowed = Vec::new();
    for (r, param) in matching {
        if literal && param.is_some() {
            continue;
        }
        let m = r.method_and_path().0;
        if m == method {
            return Match::Found { route: r, param };
        }
        allowed.push(m);
    }
    if allowed.is_empty() { Match::NotFound } else { Match::WrongMethod { allowed } }
}

/// `POST /v1/encryption/enable`
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnableRequest {
    pub(crate) password: Zeroizing<String>,
    /// Also enroll every eligible peer as a slave ("enable on remote clusters").
    #[serde(default)]
    pub(crate) remote: bool,
}

/// `POST /v1/encryption/disable`. On a slave the password is the master's.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DisableRequest {
    pub(crate) password: Zeroizing<String>,
    #[serde(default)]
    pub(crate) i_understand_data_loss: bool,
}

/// A key version from any JSON number without a fractional part: JSON has one number type,
/// and `4469.0` is the integer 4469 (JSON Schema says so too, and clients generated from
/// docs/admin-api.yaml may send it so).
fn integral_key_version<'de, D: serde::Deserializer<'de>>(d: D) -> Result<KeyVersion, D::Error> {
    use serde::de::Error as _;
    let n = serde_json::Number::deserialize(d)?;
    let whole = n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(f))
            .map(|f| f as u64)
    });
    let v = whole.and_then(|v| u32::try_from(v).ok()).ok_or_else(|| {
        D::Error::custom(format!("{n} is not a key version (an integer from 1 to 4294967295)"))
    })?;
    KeyVersion::new(v).map_err(D::Error::custom)
}

/// `POST /v1/keys/retire` (on the master): remove every key version below `below`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetireRequest {
    pub(crate) password: Zeroizing<String>,
    #[serde(deserialize_with = "integral_key_version")]
    pub(crate) below: KeyVersion,
    #[serde(default)]
    pub(crate) i_understand_data_loss: bool,
}

/// `POST /v1/keys/restore`: take back what is pending destruction (see docs/operations.md).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RestoreRequest {
    pub(crate) password: Zeroizing<String>,
}

/// `POST /v1/encryption/handover` (on the master): slave `to` becomes master under a new
/// term, this cluster its slave. The password is the domain's.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HandoverRequest {
    pub(crate) to: String,
    pub(crate) password: Zeroizing<String>,
}

/// The answer to `POST /v1/encryption/handover`: the new master and its term.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandedOver {
    pub to: ClusterId,
    #[serde(with = "term_text")]
    pub term: Term,
}

/// `POST /v1/encryption/promote` (on a slave whose master is lost): this cluster becomes
/// master under a new term. The password is the domain's; `force` promotes even though the
/// master was heard from within `peer.master_unreachable_after`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PromoteRequest {
    pub(crate) password: Zeroizing<String>,
    #[serde(default)]
    pub(crate) force: bool,
}

/// The answer to `POST /v1/encryption/promote`: this cluster is master of `domain` under
/// `term`; `forced`: the old master had been heard from recently (it steps down when it
/// hears the new term).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Promoted {
    pub domain: DomainId,
    #[serde(with = "term_text")]
    pub term: Term,
    pub forced: bool,
}

/// A [`Term`] as the admin API writes it: the text `round.slot` (e.g. `"1.2"`), as the CLI
/// and the logs show it, not the number the peer protocol carries.
pub(crate) mod term_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::ids::Term;

    pub(crate) fn serialize<S: Serializer>(t: &Term, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(t)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Term, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not a term (round.slot)")))
    }

    pub(crate) fn parse(s: &str) -> Option<Term> {
        let (round, slot) = s.split_once('.')?;
        Term::new(round.parse().ok()?, slot.parse().ok()?)
    }

    /// The same for an optional term (`null` where there is no domain).
    pub(crate) mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        use crate::ids::Term;

        pub(crate) fn serialize<S: Serializer>(t: &Option<Term>, s: S) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.collect_str(t),
                None => s.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Term>, D::Error> {
            let Some(s) = Option::<String>::deserialize(d)? else { return Ok(None) };
            super::parse(&s).map(Some).ok_or_else(|| {
                serde::de::Error::custom(format!("{s:?} is not a term (round.slot)"))
            })
        }
    }
}

/// `PUT /v1/encryption/remote`
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RemoteRequest {
    pub(crate) enabled: bool,
}

/// `POST /v1/password`
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PasswordChangeRequest {
    pub(crate) old_password: Zeroizing<String>,
    pub(crate) new_password: Zeroizing<String>,
}

/// `POST /v1/keys/download`
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DownloadRequest {
    pub(crate) password: Zeroizing<String>,
    /// The administrator's RSA public key, PEM (SPKI or PKCS#1), at least 2048 bits.
    pub(crate) public_key_pem: String,
}

/// `POST /v1/peers`
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddPeerRequest {
    pub(crate) id: String,
    /// host:port of the peer's intercluster listener.
    pub(crate) address: String,
}

/// `POST /v1/nodes`
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddNodeRequest {
    pub(crate) id: String,
    /// `postgresql`, `sql_server`, `none`, or another product's name.
    pub(crate) archiver: String,
}

/// One administrator's token, as `GET /v1/tokens` lists it: never the token or its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub name: String,
    pub role: AdminRole,
    /// When it was made (Unix seconds).
    pub created_unix: u64,
    /// When it was revoked; `None`: it is valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_unix: Option<u64>,
}

/// `GET /v1/tokens`: every token made on this daemon, oldest first, revoked ones included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

/// `POST /v1/tokens`
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateTokenRequest {
    pub(crate) name: String,
    pub(crate) role: AdminRole,
}

/// The answer to `POST /v1/tokens`: the token, shown this once (only its hash is kept).
#[derive(Serialize, Deserialize)]
pub(crate) struct CreatedToken {
    #[serde(flatten)]
    pub(crate) info: TokenInfo,
    pub(crate) token: Zeroizing<String>,
}

/// `POST /v1/peering/tokens`
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PeeringTokenRequest {
    /// The cluster the token is for (only it can use it).
    #[serde(rename = "for")]
    pub(crate) for_cluster: String,
    /// How long the token is valid (`30m`, `1h`, `2d`; 1 minute to 7 days); default 1 hour.
    #[serde(default)]
    pub(crate) expires: Option<String>,
}

/// The answer to `POST /v1/peering/tokens`: the token, shown this once (only the SHA-256 of
/// its secret is kept). No `Debug`: it holds the secret.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeeringToken {
    pub token: Zeroizing<String>,
    #[serde(rename = "for")]
    pub for_cluster: String,
    pub expires_unix_ms: u64,
}

/// `POST /v1/peering/establish`. No `Debug`: it holds the token.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PeeringEstablishRequest {
    pub(crate) token: Zeroizing<String>,
}

/// `GET /v1/peering`: every peer with where it came from, and the peering tokens issued here
/// that are still usable (never their secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeeringList {
    pub peers: Vec<crate::cluster::PeeringView>,
    pub tokens: Vec<crate::cluster::PendingTokenView>,
}

/// A cluster's role, as the admin API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Encryption is not enabled here.
    Off,
    Master,
    Slave,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Off => "off",
            Role::Master => "master",
            Role::Slave => "slave",
        })
    }
}

/// `GET /v1/status`: role, domain, key versions (never key bytes), peers, active alarms and
/// alarm sinks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub(crate) cluster: ClusterId,
    pub role: Role,
    /// Why this cluster does not encrypt (when it does not).
    pub off_reason: Option<String>,
    pub domain: Option<DomainId>,
    pub master: Option<ClusterId>,
    pub epoch: Option<Epoch>,
    /// The domain's term, `round.slot` (raised by every handover and promotion).
    #[serde(default, with = "term_text::option")]
    pub term: Option<Term>,
    pub key_versions: Vec<KeyVersion>,
    pub primary_version: Option<KeyVersion>,
    /// When the primary version was made (Unix seconds): its age drives rotation by age.
    #[serde(default)]
    pub primary_created_unix: Option<u64>,
    /// "Enable on remote clusters" (on a master or slave).
    pub(crate) remote: Option<bool>,
    pub eligible: bool,
    pub peers: Vec<PeerStatus>,
    pub alarms: Vec<Alarm>,
    /// The last probe of each node's compliance database (nodes with a `db` only, once
    /// probed since start).
    #[serde(default)]
    pub db_probes: Vec<DbProbeStatus>,
    /// Each configured alarm sink and its delivery counters.
    pub sinks: Vec<SinkStatus>,
    /// Key material removed on this master and not yet destroyed, oldest first (only
    /// `imcrypt key restore` uses it).
    #[serde(default)]
    pub pending_destruction: Vec<PendingStatus>,
}

/// One entry of the pending destruction area, as the status shows it (never key bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingStatus {
    /// `retired` (versions retired from the domain) or `disabled` (the whole domain).
    pub kind: PendingKind,
    pub domain: DomainId,
    pub versions: Vec<KeyVersion>,
    pub removed_unix_ms: u64,
    /// When it is destroyed for good.
    pub destroy_unix_ms: u64,
}

/// What a pending entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PendingKind {
    Retired,
    Disabled,
}

impl std::fmt::Display for PendingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PendingKind::Retired => "retired",
            PendingKind::Disabled => "disabled",
        })
    }
}

/// One node's compliance database as the daemon's probe last found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbProbeStatus {
    pub node: String,
    /// It answered, and is of the kind configured.
    pub reachable: bool,
}

/// One peer in `GET /v1/status` and `GET /v1/peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub id: ClusterId,
    /// `host:port` of its intercluster listener, when one is configured.
    pub address: Option<String>,
    /// How this cluster sees the peer (slave in sync, conflict and why, not enrolled and why…).
    pub relation: PeerRelation,
    pub link: LinkStatus,
    /// Unix milliseconds of the last message this cluster received from the peer (its hellos
    /// come every `hello_interval`); `None`: nothing since this daemon started.
    #[serde(default)]
    pub last_hello_unix_ms: Option<u64>,
    /// What the peer said of itself in its last hello; `None`: nothing heard since start.
    #[serde(default)]
    pub announced: Option<PeerAnnounced>,
}

/// A peer's role as its last hello announced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAnnounced {
    pub role: Role,
    pub domain: Option<DomainId>,
    /// The master it follows (a slave).
    pub master: Option<ClusterId>,
    pub epoch: Option<Epoch>,
}

/// `GET /v1/alarms`: the active alarms and the recent raises and clears, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AlarmsReport {
    pub(crate) active: Vec<Alarm>,
    pub(crate) history: Vec<AlarmEvent>,
}

/// `GET /v1/audit`'s query: which records (all optional).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    /// RFC 3339 time or a duration ago (`2h`).
    #[serde(default)]
    pub(crate) since: Option<String>,
    /// An administrator's name, a peer's cluster id, `anonymous` or `local`.
    #[serde(default)]
    pub(crate) actor: Option<String>,
    /// An action (`key.download`) or a family (`key.`).
    #[serde(default)]
    pub(crate) action: Option<String>,
    /// At most this many of the newest matching records (default 100, at most 1000).
    #[serde(default)]
    pub(crate) limit: Option<usize>,
}

/// The default and largest `limit` of `GET /v1/audit`.
pub(crate) const AUDIT_LIMIT: (usize, usize) = (100, 1000);

/// `GET /v1/audit`: the newest records that match, oldest first, and the chain's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditReport {
    /// `false`: `[audit] enabled = false`, nothing is recorded.
    pub enabled: bool,
    pub chain: ChainReport,
    /// How many records match in all (more than `records` holds when over the limit).
    pub matched: u64,
    pub records: Vec<crate::audit::Entry>,
}

/// Whether the audit chain verifies, from its first record to the last one written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainReport {
    pub intact: bool,
    /// The records read, and the first and last of them (none while the trail is empty).
    pub records: u64,
    pub first: Option<u64>,
    pub last: Option<u64>,
    /// What is wrong, naming the file, line and record, when it is not intact (then
    /// `records`, `first` and `last` are 0 and none: nothing after the break is vouched for).
    pub problem: Option<String>,
}

impl ChainReport {
    /// Intact, and nothing in it: an empty trail, or one that is off.
    pub(crate) const EMPTY: ChainReport =
        ChainReport { intact: true, records: 0, first: None, last: None, problem: None };
}

/// `GET /v1/health`'s verdict, most severe first where several apply; each has its own HTTP
/// status (see [`Health::http_status`] and docs/operations.md, "Health").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// The daemon is shutting down: take it out of rotation.
    Stopping,
    /// A critical alarm is active (e.g. `MAencryptionMultiMaster`).
    CriticalAlarm,
    /// A slave whose master has not been heard from for `master_unreachable_after`: it still
    /// encrypts with the keys it holds; changes wait.
    MasterUnreachable,
    /// Encryption is off here (by choice, or not eligible: see `off_reason` in the status).
    Off,
    /// A slave in good health.
    Slave,
    /// The master of its domain, in good health.
    Master,
}

impl Health {
    /// The verdict on a status; `None` (no status): the daemon is stopping.
    pub(crate) fn of(status: Option<&Status>) -> Self {
        use crate::alarm::{AlarmName, Severity};
        let Some(s) = status else { return Health::Stopping };
        if s.alarms.iter().any(|a| a.severity == Severity::Critical) {
            return Health::CriticalAlarm;
        }
        match s.role {
            Role::Master => Health::Master,
            Role::Off => Health::Off,
            Role::Slave if s.alarms.iter().any(|a| a.key.name == AlarmName::MasterUnreachable) => {
                Health::MasterUnreachable
            }
            Role::Slave => Health::Slave,
        }
    }

    /// The HTTP status a load balancer or monitor acts on, in the spirit of Vault's
    /// `/sys/health`: 2xx only for a healthy master (and a healthy slave with
    /// `standbyok=true`), distinct 4xx for states that are normal but not "master", 5xx for
    /// states that need someone. The one place where a verdict becomes a status code.
    pub fn http_status(self, standby_ok: bool) -> u16 {
        match self {
            Health::Master => 200,
            Health::Slave if standby_ok => 200,
            Health::Slave => 429,
            Health::Off => 472,
            Health::MasterUnreachable => 473,
            Health::CriticalAlarm => 500,
            Health::Stopping => 503,
        }
    }
}

/// `GET /v1/health`: enough for a monitor, nothing more (no peers, no causes, no addresses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    pub health: Health,
    pub cluster: ClusterId,
    /// `None` while stopping (the daemon no longer answers for its state).
    pub role: Option<Role>,
    pub domain: Option<DomainId>,
    pub master: Option<ClusterId>,
    pub epoch: Option<Epoch>,
    /// The domain's term, `round.slot`.
    #[serde(default, with = "term_text::option")]
    pub term: Option<Term>,
    pub critical_alarms: usize,
}

impl HealthReport {
    pub(crate) fn new(cluster: ClusterId, status: Option<&Status>) -> Self {
        let critical = |s: &Status| {
            s.alarms.iter().filter(|a| a.severity == crate::alarm::Severity::Critical).count()
        };
        Self {
            health: Health::of(status),
            cluster,
            role: status.map(|s| s.role),
            domain: status.and_then(|s| s.domain),
            master: status.and_then(|s| s.master.clone()),
            epoch: status.and_then(|s| s.epoch),
            term: status.and_then(|s| s.term),
            critical_alarms: status.map(critical).unwrap_or(0),
        }
    }
}

/// The answer to a command that succeeded: what happened, in the operator's terms.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Done {
    pub(crate) message: String,
    /// Things the operator should know (e.g. that a runtime change lasts until restart).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) notes: Vec<String>,
}

/// Every error answer: `{"error": {...}}`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ErrorBody {
    pub(crate) error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ErrorDetail {
    /// A stable machine-readable code, e.g. `wrong_password`, `locked_out`, `not_master`.
    pub(crate) code: String,
    /// What went wrong and what to do, for a human.
    pub(crate) message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) retry_after_secs: Option<u64>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_retire_body_takes_a_version_written_as_a_whole_number_in_any_form() {
        let parse = |below: &str| {
            serde_json::from_str::<super::RetireRequest>(&format!(
                r#"{{"password":"p","below":{below}}}"#
            ))
            .map(|r| r.below.get())
            .map_err(|e| e.to_string())
        };
        assert_eq!(parse("4469"), Ok(4469));
        assert_eq!(parse("4469.0"), Ok(4469));
        assert_eq!(parse("4.469e3"), Ok(4469));
        assert!(parse("4469.5").unwrap_err().contains("is not a key version"));
        assert!(parse("-1").unwrap_err().contains("is not a key version"));
        assert!(parse("4294967296").unwrap_err().contains("is not a key version"));
        assert!(parse("0").is_err());
    }

    use super::*;

    #[test]
    fn route_table_matches_methods_and_params() {
        assert_eq!(find("GET", "/v1/status"), Match::Found { route: Route::Status, param: None });
        assert_eq!(
            find("DELETE", "/v1/peers/b"),
            Match::Found { route: Route::RemovePeer, param: Some("b".into()) }
        );
        assert_eq!(find("GET", "/v1/peers/"), Match::NotFound);
        assert_eq!(find("PUT", "/v1/peers"), Match::WrongMethod { allowed: vec!["GET", "POST"] });
        // A literal path is not the parameter of a sibling route (schemathesis found `Allow:
        // POST, DELETE` on /v1/peering/establish).
        for path in ["/v1/peering/establish", "/v1/peering/tokens"] {
            assert_eq!(find("OPTIONS", path), Match::WrongMethod { allowed: vec!["POST"] });
            assert_eq!(find("DELETE", path), Match::WrongMethod { allowed: vec!["POST"] });
        }
        assert_eq!(
            find("DELETE", "/v1/peering/b"),
            Match::Found { route: Route::PeeringDelete, param: Some("b".into()) }
        );
        assert_eq!(find("GET", "/v1/nope"), Match::NotFound);
        assert_eq!(
            find("POST", "/v1/encryption/promote"),
            Match::Found { route: Route::Promote, param: None }
        );
        for r in Route::ALL {
            let (m, p) = r.method_and_path();
            let p = p.replace("{id}", "x");
            assert!(matches!(find(m, &p), Match::Found { route, .. } if route == r), "{r:?}");
        }
    }

    #[test]
    fn a_term_is_written_round_dot_slot_and_read_back() {
        let p = Promoted {
            domain: DomainId::from_bytes([1; 16]),
            term: Term::new(2, 7).unwrap(),
            forced: true,
        };
        let text = serde_json::to_string(&p).unwrap();
        assert!(text.contains(r#""term":"2.7""#), "{text}");
        assert_eq!(serde_json::from_str::<Promoted>(&text).unwrap(), p);
        for bad in ["2", "x.1", "1.256", "1024.0", ""] {
            assert!(term_text::parse(bad).is_none(), "{bad}");
        }
    }
}
