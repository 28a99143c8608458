//! The admin API: HTTPS (TLS 1.3 only) with JSON bodies, on loopback by default. Every
//! request but `GET /v1/health` ([`health`], for load balancers) needs the token of a named
//! administrator ([`tokens`]), whose role must allow the route ([`roles`]); routes are in
//! [`api::Route`] and docs/admin-api.yaml, and the operator's guide is docs/admin.md.
//!
//! Invariants:
//! - nothing is read from a request body before its token is checked and its role allowed
//!   (401 and 403 change nothing), and no body over [`api::MAX_BODY`] is read at all; a body
//!   no route read is drained and thrown away, so a refusal leaves the connection usable
//!   ([`body`]);
//! - a request is answered as the token file is at that moment: a token created or revoked by
//!   the CLI or the API takes effect at the next request ([`tokens::LiveTokens`]);
//! - a request that carries a password passes the rate limits ([`limit`]), keyed on its
//!   credential and its client proof ([`proof`]), never on its source address, *before* any
//!   hashing, and at most `max_concurrent_password_checks` such requests are handed to the core
//!   at once; PBKDF2 itself runs in the core off the async workers (see `daemon`);
//! - a key download validates the public key before the password is looked at, and answers
//!   with the whole export or an error, never part of one;
//! - a refused request changes nothing (the state machine's own guarantee, carried through);
//! - every error becomes one HTTP status and one JSON body in [`ApiError::status`], the one
//!   place where that mapping lives;
//! - at most `admin.max_connections` connections at once ([`crate::caps::Gate`]); a connection
//!   that has not yet made a request with the token is evicted, oldest first, to make room for
//!   a new one, so idle connections cannot lock the administrator out; one with the token keeps
//!   its slot.

pub mod api;
mod body;
pub mod client;
mod console;
mod limit;
mod proof;
mod refusals;
pub mod roles;
mod token;
pub mod tokens;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONNECTION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::alarm::AlarmHistory;
use crate::audit::{Actor, Audit, AuditError, Record};
use crate::caps::{Caps, Gate, Ticket};
use crate::cluster::{Command, CommandError, ComplianceDb, NodeId, Outcome};
use crate::config::Config;
use crate::crypto::export::{ExportError, PublicKeyError, export_ring, parse_public_key};
use crate::crypto::password::Password;
use crate::ids::ClusterId;
use crate::metrics::AdminMetrics;
use crate::peer::establish::PeeringError;
use crate::pem_files::{self, PemFileError, PemKind};
use crate::store::StoreError;

use api::{ErrorBody, ErrorDetail, Match, Route};
use body::{AdminRequest, BodySlot, read_limited};
use limit::{Client, Credential, Limits, Outcome as Checked, PasswordLimiter, Refused};
use proof::ProofKey;
use roles::{Forbidden, Principal};
use token::TokenError;
use tokens::{LiveTokens, Lookup, TokenFile, TokensError};

/// The CLI on the same host handshakes in milliseconds; a connection that has not finished in
/// this time is closed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a password request waits for a free PBKDF2 slot before it is told to retry.
const HASH_SLOT_WAIT: Duration = Duration::from_secs(10);

/// What the admin API needs of the daemon: run a command (answered once its effects are carried
/// out), read the status. The daemon's `Control` implements it; the admin API never names the
/// daemon, which starts it.
pub trait Daemon: Clone + Send + Sync + 'static {
    /// Runs `cmd` for `by`, who is named in its audit record.
    fn command(
        &self,
        cmd: Command,
        by: crate::audit::Request,
    ) -> impl std::future::Future<Output = Result<Outcome, RequestError>> + Send;
    fn status(&self)
    -> impl std::future::Future<Output = Result<api::Status, RequestError>> + Send;
    /// Issues a peering token (`imcrypt peering token`).
    fn peering_token(
        &self,
        for_cluster: ClusterId,
        valid_for: Duration,
        by: crate::audit::Request,
    ) -> impl std::future::Future<Output = Result<api::PeeringToken, PeeringError>> + Send;
    /// Presents a peering token to its issuer (`imcrypt peering establish`).
    fn establish_peering(
        &self,
        token: &str,
        by: crate::audit::Request,
    ) -> impl std::future::Future<Output = Result<ClusterId, PeeringError>> + Send;
    fn peerings(
        &self,
    ) -> impl std::future::Future<Output = Result<api::PeeringList, RequestError>> + Send;
}

/// Why the daemon did not carry out a request.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The state machine refused it; nothing changed.
    #[error(transparent)]
    Refused(#[from] CommandError),
    /// Decided but not written; the daemon stops, and after a restart the change is not there.
    #[error("the change could not be saved ({0}); the daemon stops and the change is lost")]
    NotSaved(#[source] Arc<StoreError>),
    #[error("the daemon has stopped")]
    Stopped,
    /// Its audit record could not be written, so it was not done; nothing changed.
    #[error(
        "refused: the audit record of this request cannot be written ({0}); nothing was \
         changed. Fix the audit trail (docs/operations.md, \"Audit trail\") and retry"
    )]
    NotAudited(#[source] Arc<crate::audit::AuditError>),
}

/// Why the admin API cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Tokens(#[from] TokensError),
    #[error("admin TLS: {0}")]
    TlsFile(#[from] PemFileError),
    #[error("admin TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// The admin API of one daemon, ready to serve.
pub(crate) struct Admin {
    tls: Arc<ServerConfig>,
    ctx: Arc<Ctx>,
    gate: Arc<Gate>,
}

struct Ctx {
    /// This daemon's cluster, named in answers.
    cluster: ClusterId,
    /// The named administrators' tokens, as the file holds them now.
    tokens: LiveTokens,
    proofs: ProofKey,
    limiter: Mutex<PasswordLimiter>,
    hashing: Semaphore,
    history: AlarmHistory,
    metrics: Arc<AdminMetrics>,
    /// Refusals that never reach the core are recorded here (the core records the rest).
    audit: Audit,
    /// How often anonymous refusals are recorded ([`refusals`]).
    refusals: Mutex<refusals::Refusals>,
    /// The web console, unless `admin.console = false`.
    console: Option<console::Console>,
    /// One audit trail scan at a time (`GET /v1/audit` reads every file): more are told to
    /// retry, so readers cannot pile up blocking threads.
    audit_scans: Semaphore,
}

fn load_tls(cert: &Path, key: &Path) -> Result<ServerConfig, AdminError> {
    let certs = pem_files::certificates(PemKind::Certificate, cert)?;
    let key = pem_files::private_key(key)?;
    let mut c =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}

impl Admin {
    /// Loads the TLS certificate and the tokens. The first time (a fresh install, or an
    /// upgrade from a release with one token) the token file (created now if missing) becomes
    /// the administrator `admin`. `proof_key` signs client proofs
    /// (`NodeKey::client_proof_key`).
    pub(crate) fn new(
        config: &Config,
        history: AlarmHistory,
        metrics: Arc<AdminMetrics>,
        proof_key: zeroize::Zeroizing<[u8; 32]>,
        tokens: TokenFile,
        audit: Audit,
    ) -> Result<Self, AdminError> {
        let (cert, key) = config.admin_cert_files();
        let tls = load_tls(&cert, &key)?;
        let path = config.admin_token_file();
        let fresh = !path.exists();
        if tokens.import_if_missing(crate::clock::now().unix_secs())? {
            if fresh {
                tracing::info!(path = %path.display(), "created admin token file");
            }
            tracing::info!(
                token_file = %path.display(),
                tokens = %tokens.path().display(),
                "the admin token file is now the administrator \"admin\" with the role admin; \
                 manage administrators with `imcrypt admin token`"
            );
        }
        let tokens = LiveTokens::new(tokens, audit.clone());
        match tokens.current() {
            // Not a reason to stay down: every request tries again, and is refused meanwhile.
            Err(TokensError::Unaudited(e)) => tracing::error!(error = %e,
                "token changes made with `imcrypt admin token --local` cannot be recorded in the \
                 audit trail; no admin token is accepted until they are"),
            other => {
                other?;
            }
        }
        let a = &config.admin;
        let limits = Limits {
            max_failures: a.max_failures,
            lockout: a.lockout,
            attempts_per_minute: a.password_attempts_per_minute,
        };
        Ok(Self {
            tls: Arc::new(tls),
            gate: Gate::new("admin listener", Caps::new(a.max_connections as usize)),
            ctx: Arc::new(Ctx {
                cluster: config.cluster_id.clone(),
                tokens,
                proofs: ProofKey::new(proof_key),
                limiter: Mutex::new(PasswordLimiter::new(limits)),
                hashing: Semaphore::new(a.max_concurrent_password_checks as usize),
                history,
                metrics,
                audit,
                refusals: Mutex::default(),
                console: a.console.then(|| console::Console::new(a.console_idle_timeout)),
                audit_scans: Semaphore::new(1),
            }),
        })
    }

    /// Serves the admin listener until the task is aborted.
    pub(crate) async fn serve(self, listener: TcpListener, control: impl Daemon) {
        let acceptor = TlsAcceptor::from(self.tls);
        loop {
            let (tcp, ticket) = self.gate.accept(&listener).await;
            let Ok(addr) = tcp.peer_addr() else { continue };
            let (acceptor, ctx, control) = (acceptor.clone(), self.ctx.clone(), control.clone());
            tokio::spawn(tracing::Instrument::in_current_span(async move {
                let ticket = Arc::new(ticket);
                let conn = connection(acceptor, tcp, addr, ctx, control, ticket.clone());
                match ticket.guard(conn).await {
                    Some(Ok(())) => {}
                    Some(Err(why)) => {
                        tracing::debug!(%addr, reason = %why, "admin connection ended")
                    }
                    None => tracing::debug!(%addr, "admin connection without a request evicted"),
                }
            }));
        }
    }
}

async fn connection(
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    ctx: Arc<Ctx>,
    control: impl Daemon,
    ticket: Arc<Ticket>,
) -> Result<(), String> {
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (ctx, control, ticket) = (ctx.clone(), control.clone(), ticket.clone());
        async move {
            let (method, route) = metric_labels(&req);
            let (req, body) = BodySlot::hold(req);
            let mut r = match &ctx.console {
                Some(console) if console::is_console(req.uri().path()) => {
                    console::serve(req, addr, &ctx, console, &control, &ticket).await
                }
                _ => answer(req, addr, &ctx, &control, &ticket).await,
            };
            close_unless_settled(&body, &mut r).await;
            ctx.metrics.request(method, route, r.status().as_u16());
            Ok::<_, std::convert::Infallible>(r)
        }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(tls), service)
        .await
        .map_err(|e| format!("HTTP: {e}"))
}

/// The API's answer to `req`: the route's, with the client proof it issued, or the refusal,
/// recorded as [`record_refusal`] says.
async fn answer(
    req: AdminRequest,
    addr: SocketAddr,
    ctx: &Arc<Ctx>,
    control: &impl Daemon,
    ticket: &Ticket,
) -> Response<Full<Bytes>> {
    let (mut issued, mut known) = (None, None);
    let found = api::find(req.method().as_str(), req.uri().path());
    let path = req.uri().path().to_owned();
    match handle(req, addr, ctx, control, ticket, &mut issued, &mut known).await {
        Ok(mut r) => {
            if let Some(v) = issued.and_then(|p| HeaderValue::from_str(&p).ok()) {
                r.headers_mut().insert(proof::HEADER, v);
            }
            r
        }
        Err(e) => record_refusal(ctx, &found, &path, addr, known.as_ref(), e).await.response(),
    }
}

/// Drains what no route read of the request's body ([`BodySlot::settle`]); if some of it is
/// left unread, the answer says `Connection: close` and hyper closes the connection after it.
async fn close_unless_settled<B>(body: &BodySlot, answer: &mut Response<B>) {
    if !body.settle().await {
        answer.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
}

/// Every way a request can fail. [`ApiError::status`] maps each to its HTTP status and code.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error(
        "no admin token given: send `Authorization: Bearer <token>` (the CLI reads --token, IMCRYPT_TOKEN or --token-file)"
    )]
    NoToken,
    /// A token this daemon never made, or (`revoked`: whose) one it revoked: answered alike,
    /// so a stolen token does not tell that it was ever valid; the audit record tells apart.
    #[error("the admin token is not valid for this daemon")]
    WrongToken { revoked: Option<String> },
    #[error(transparent)]
    Forbidden(#[from] Forbidden),
    #[error(transparent)]
    Tokens(#[from] TokensError),
    #[error("no such endpoint {0}")]
    NotFound(String),
    #[error("{path} does not allow {method}; use {allowed}")]
    WrongMethod { method: String, path: String, allowed: String },
    #[error("request body is larger than {} bytes", api::MAX_BODY)]
    TooLarge,
    #[error(
        "request body has Content-Type {0:?}; the admin API takes JSON: send \
         `Content-Type: application/json`"
    )]
    NotJson(String),
    #[error("request body is not valid: {0}")]
    BadBody(String),
    #[error("{0}")]
    BadValue(String),
    #[error(transparent)]
    PublicKey(#[from] PublicKeyError),
    #[error(transparent)]
    RateLimited(#[from] Refused),
    #[error("too many password checks are in progress; try again in a moment")]
    Busy,
    #[error("another reading of the audit trail is in progress; try again in a moment")]
    AuditBusy,
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("the daemon is stopping")]
    Stopping,
    #[error("the change could not be saved ({0}); the daemon stops and the change is lost")]
    NotSaved(#[source] Arc<StoreError>),
    #[error("the key export could not be made: {0}")]
    Export(#[from] ExportError),
    /// The request's audit record could not be written, so it was not carried out.
    #[error(
        "refused: the audit record of this request cannot be written ({0}); nothing was \
         changed. Fix the audit trail (docs/operations.md, \"Audit trail\") and retry"
    )]
    NotAudited(#[source] Arc<AuditError>),
    /// The daemon answered a command with an outcome of another command: a bug, never an
    /// answer to make up.
    #[error("internal error: the daemon answered {0}")]
    UnexpectedOutcome(String),
    /// A peering token could not be made or used (its core refusals are `Command`).
    #[error(transparent)]
    Peering(PeeringError),
    /// A console form without this session's CSRF token, or sent from another site.
    #[error("{0}")]
    CrossSite(String),
}

impl From<PeeringError> for ApiError {
    fn from(e: PeeringError) -> Self {
        match e {
            PeeringError::Request(r) => r.into(),
            e => ApiError::Peering(e),
        }
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::Refused(c) => ApiError::Command(c),
            RequestError::NotSaved(e) => ApiError::NotSaved(e),
            RequestError::Stopped => ApiError::Stopping,
            RequestError::NotAudited(e) => ApiError::NotAudited(e),
        }
    }
}

impl ApiError {
    /// The one place where an error becomes an HTTP status and a stable code.
    fn status(&self) -> (StatusCode, &'static str) {
        use CommandError as C;
        match self {
            ApiError::NoToken => (StatusCode::UNAUTHORIZED, "no_token"),
            ApiError::WrongToken { .. } => (StatusCode::UNAUTHORIZED, "wrong_token"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "role_forbidden"),
            ApiError::CrossSite(_) => (StatusCode::FORBIDDEN, "cross_site"),
            ApiError::Tokens(t) => match t {
                TokensError::BadName { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "bad_value"),
                TokensError::NameTaken(_) => (StatusCode::CONFLICT, "refused"),
                TokensError::NoSuchName(_) => (StatusCode::NOT_FOUND, "not_found"),
                TokensError::LastAdmin(_) => (StatusCode::CONFLICT, "last_admin"),
                TokensError::Unaudited(_) => (StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable"),
                TokensError::NotRecorded(_)
                | TokensError::Store(_)
                | TokensError::Lock { .. }
                | TokensError::Legacy(_)
                | TokensError::NoNodeKey(_)
                | TokensError::NodeKey(_)
                | TokensError::Missing(_) => (StatusCode::INTERNAL_SERVER_ERROR, "token_store"),
            },
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "no_such_endpoint"),
            ApiError::WrongMethod { .. } => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::NotJson(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "not_json"),
            ApiError::BadBody(_) => (StatusCode::BAD_REQUEST, "bad_body"),
            ApiError::BadValue(_) => (StatusCode::UNPROCESSABLE_ENTITY, "bad_value"),
            ApiError::PublicKey(_) => (StatusCode::UNPROCESSABLE_ENTITY, "bad_public_key"),
            ApiError::RateLimited(
                Refused::LockedOut { .. } | Refused::UnprovenLockedOut { .. },
            ) => (StatusCode::TOO_MANY_REQUESTS, "locked_out"),
            ApiError::RateLimited(Refused::Overall { .. } | Refused::CredentialShare { .. }) => {
                (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
            }
            ApiError::Busy | ApiError::AuditBusy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            ApiError::Stopping => (StatusCode::SERVICE_UNAVAILABLE, "stopping"),
            ApiError::NotSaved(_) => (StatusCode::INTERNAL_SERVER_ERROR, "not_saved"),
            ApiError::Export(_) => (StatusCode::INTERNAL_SERVER_ERROR, "export_failed"),
            ApiError::NotAudited(_) => (StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable"),
            ApiError::UnexpectedOutcome(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::Peering(p) => match p {
                PeeringError::Token(_) | PeeringError::OwnToken(_) => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "bad_token")
                }
                PeeringError::NotReady(_) | PeeringError::AlreadyPeer(_) => {
                    (StatusCode::CONFLICT, "refused")
                }
                PeeringError::Refused { .. } => (StatusCode::FORBIDDEN, "peering_refused"),
                PeeringError::Pin { .. } => (StatusCode::BAD_GATEWAY, "pin_mismatch"),
                PeeringError::Unreachable { .. }
                | PeeringError::NoAnswer { .. }
                | PeeringError::Protocol { .. } => (StatusCode::BAD_GATEWAY, "issuer_unreachable"),
                PeeringError::Tls(_) | PeeringError::Request(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "internal")
                }
            },
            ApiError::Command(c) => match c {
                C::WrongPassword | C::WrongMasterPassword { .. } => {
                    (StatusCode::FORBIDDEN, "wrong_password")
                }
                C::Policy(_) => (StatusCode::UNPROCESSABLE_ENTITY, "password_policy"),
                C::PeerIsSelf
                | C::BadPeerAddress(_)
                | C::TokenExpiryNotFuture
                | C::HandoverToSelf => (StatusCode::UNPROCESSABLE_ENTITY, "bad_value"),
                C::TokenUnknown
                | C::TokenUsed { .. }
                | C::TokenExpired { .. }
                | C::TokenForOther { .. } => (StatusCode::FORBIDDEN, "peering_refused"),
                C::NoSuchPeer(_)
                | C::NoSuchNode(_)
                | C::NoStaleData(_)
                | C::NotPeeredByToken(_) => (StatusCode::NOT_FOUND, "not_found"),
                C::NotMasterButSlave { .. } | C::NotMasterButOff { .. } => {
                    (StatusCode::CONFLICT, "not_master")
                }
                C::KeysNotDownloaded { .. } | C::RetireNotDownloaded { .. } => {
                    (StatusCode::CONFLICT, "keys_not_downloaded")
                }
                C::RetireAbovePrimary { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "bad_value"),
                C::NothingToRetire { .. } | C::NothingToRestore { .. } => {
                    (StatusCode::CONFLICT, "nothing_to_do")
                }
                C::NoCapability
                | C::AlreadyMaster { .. }
                | C::AlreadySlave { .. }
                | C::PeerEncrypts { .. }
                | C::NotEligible { .. }
                | C::NotEncrypting
                | C::RemoteAlreadySet(_)
                | C::KeyVersionsExhausted { .. }
                | C::HandoverTargetNotReady { .. }
                | C::HandbackPending { .. }
                | C::RecoveredNotDownloaded
                | C::HandoverInProgress { .. }
                | C::PromoteOnMaster { .. }
                | C::MasterStillReachable { .. }
                | C::NoSlot(_)
                | C::TermsExhausted
                | C::PeerExists(_)
                | C::NodeAddWhileEncrypting
                | C::ArchiverChangeWhileEncrypting { .. }
                | C::NodeExists(_)
                | C::PeerFromConfig(_)
                | C::PeeredByToken(_) => (StatusCode::CONFLICT, "refused"),
            },
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::RateLimited(r) => Some(r.retry_after()),
            ApiError::Busy | ApiError::AuditBusy | ApiError::Stopping => {
                Some(Duration::from_secs(1))
            }
            ApiError::NotAudited(_) | ApiError::Tokens(TokensError::Unaudited(_)) => {
                Some(Duration::from_secs(5))
            }
            ApiError::NoToken
            | ApiError::WrongToken { .. }
            | ApiError::Forbidden(_)
            | ApiError::CrossSite(_)
            | ApiError::Tokens(_)
            | ApiError::NotFound(_)
            | ApiError::WrongMethod { .. }
            | ApiError::TooLarge
            | ApiError::NotJson(_)
            | ApiError::BadBody(_)
            | ApiError::BadValue(_)
            | ApiError::PublicKey(_)
            | ApiError::Command(_)
            | ApiError::NotSaved(_)
            | ApiError::Export(_)
            | ApiError::Peering(_)
            | ApiError::UnexpectedOutcome(_) => None,
        }
    }

    fn response(&self) -> Response<Full<Bytes>> {
        let (status, code) = self.status();
        let retry = self.retry_after().map(|d| d.as_secs().max(1));
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message: self.to_string(),
                retry_after_secs: retry,
            },
        };
        let mut r = json(status, &body);
        if let Some(s) = retry {
            r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(s));
        }
        if let ApiError::WrongMethod { allowed, .. } = self
            && let Ok(v) = HeaderValue::from_str(allowed)
        {
            r.headers_mut().insert(hyper::header::ALLOW, v);
        }
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        r
    }
}

fn json(status: StatusCode, body: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let mut bytes = serde_json::to_vec_pretty(body).expect("a response serializes");
    bytes.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn done(message: impl Into<String>, notes: Vec<String>) -> Response<Full<Bytes>> {
    json(StatusCode::OK, &api::Done { message: message.into(), notes })
}

/// The method and route labels of `imcrypt_admin_requests_total`: only values of the route
/// table (or "other"), never what a client typed, so the series stay few.
fn metric_labels<B>(req: &Request<B>) -> (&'static str, &'static str) {
    if console::is_console(req.uri().path()) {
        let method = match *req.method() {
            hyper::Method::GET => "GET",
            hyper::Method::POST => "POST",
            _ => "other",
        };
        return (method, "/ui/");
    }
    match api::find(req.method().as_str(), req.uri().path()) {
        Match::Found { route, .. } => route.method_and_path(),
        Match::WrongMethod { .. } | Match::NotFound => ("other", "other"),
    }
}

/// `GET /v1/health`, on the admin and the metrics listeners, without a token: the verdict on
/// the daemon's status and its HTTP status ([`api::Health::http_status`], the one place where
/// a verdict becomes a code; docs/operations.md has the table). `standbyok=true` in the query
/// makes a healthy slave 200, as Vault's `standbyok` does for a standby.
pub(crate) async fn health(
    cluster: &ClusterId,
    query: Option<&str>,
    control: &impl Daemon,
) -> Response<Full<Bytes>> {
    let status = control.status().await.ok();
    let report = api::HealthReport::new(cluster.clone(), status.as_ref());
    let standby_ok = query.is_some_and(|q| q.split('&').any(|kv| kv == "standbyok=true"));
    let code = report.health.http_status(standby_ok);
    let mut r = json(StatusCode::from_u16(code).expect("a valid status code"), &report);
    if report.health == api::Health::Stopping {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(1));
    }
    r
}

/// Who a request with a valid token is, in the audit: the administrator it names.
fn actor(p: &Principal) -> Actor {
    Actor::Admin { name: p.name.clone(), role: p.role.to_string() }
}

impl ApiError {
    /// Whether the daemon's core already recorded the request (it got that far).
    fn recorded_by_core(&self) -> bool {
        matches!(
            self,
            ApiError::Command(_)
                | ApiError::NotSaved(_)
                | ApiError::NotAudited(_)
                | ApiError::UnexpectedOutcome(_)
        )
    }
}

/// Records a request refused before the core saw it (no or a wrong token, a bad body or
/// public key, a rate limit) when it was for a route that changes or reveals something, or
/// failed its token check. When that record cannot be written, a request for such a route is
/// answered [`ApiError::NotAudited`] instead: no answer without its record. The one
/// exception: anonymous refusals are coalesced ([`refusals`]), so a request without a valid
/// token may be answered with only a count. `principal` is
/// who the request's token named, if it got that far (a role refusal names them).
async fn record_refusal(
    ctx: &Ctx,
    found: &Match,
    path: &str,
    addr: SocketAddr,
    principal: Option<&Principal>,
    e: ApiError,
) -> ApiError {
    if e.recorded_by_core() {
        return e;
    }
    let route = match found {
        Match::Found { route, .. } => Some(*route),
        Match::WrongMethod { .. } | Match::NotFound => None,
    };
    let token_refused = matches!(e, ApiError::NoToken | ApiError::WrongToken { .. });
    let audited = route.and_then(Route::audit_action);
    let action = match (audited, token_refused) {
        (Some(a), _) => a,
        (None, true) => crate::audit::acts::action::ADMIN_READ,
        (None, false) => return e,
    };
    let who = match principal {
        Some(p) if !token_refused => actor(p),
        _ => Actor::Anonymous,
    };
    let target: String =
        if audited.is_some() { String::new() } else { path.chars().take(200).collect() };
    let outcome =
        if matches!(e, ApiError::Export(_)) || e.status().0 == StatusCode::INTERNAL_SERVER_ERROR {
            crate::audit::Outcome::Failed
        } else {
            crate::audit::Outcome::Refused
        };
    // A body's parse error may quote a value of the body (a password sent as a number): the
    // record names the refusal, never what was sent.
    let reason = match &e {
        ApiError::BadBody(_) => "the request body does not parse as this route's JSON".into(),
        e => e.to_string(),
    };
    let code = e.status().1;
    let mut record = Record::new(who, action, outcome)
        .source(Some(addr.to_string()))
        .target(target)
        .reason(reason)
        .detail("code", code);
    // A revoked administrator's attempts are named, and coalesced apart from wrong tokens, so
    // that nobody else's refusals can fold them into a count.
    let revoked = match &e {
        ApiError::WrongToken { revoked: Some(name) } => Some(name.clone()),
        _ => None,
    };
    if let Some(name) = &revoked {
        record = record.detail("revoked", name.clone());
    }
    if record.actor == Actor::Anonymous {
        let key_code = if revoked.is_some() { "revoked_token" } else { code };
        let verdict = ctx.refusals.lock().unwrap_or_else(|p| p.into_inner()).check(
            action,
            key_code,
            addr.ip(),
            std::time::Instant::now(),
        );
        match verdict {
            // Coalesced: an anonymous request cannot make the trail grow faster than that.
            refusals::Verdict::Counted => return e,
            refusals::Verdict::Record { suppressed, shared } => {
                if suppressed > 0 {
                    record = record.detail("suppressed", suppressed);
                }
                if shared {
                    record = record.source(None).detail("sources", "many");
                }
            }
        }
    }
    match ctx.audit.write_async(vec![record]).await {
        Ok(()) => e,
        Err(w) if audited.is_some() => ApiError::NotAudited(w),
        Err(_) => e,
    }
}

/// Who sent the request: the administrator whose token it carries, and that token's
/// credential in the password limits. A missing, unknown or revoked token is counted
/// (`imcrypt_admin_token_refusals_total`) and answered 401; a revoked one is answered as an
/// unknown one, so a stolen token does not tell that it was ever valid.
fn check_token(req: &AdminRequest, ctx: &Ctx) -> Result<(Principal, Credential), ApiError> {
    let given = req.headers().get(AUTHORIZATION).and_then(|h| h.to_str().ok()).and_then(bearer);
    let Some(given) = given else {
        ctx.metrics.token_refused("missing");
        return Err(ApiError::NoToken);
    };
    match ctx.tokens.current()?.authenticate(given) {
        Lookup::Valid(p, c) => Ok((p, c)),
        Lookup::Revoked(name) => {
            ctx.metrics.token_refused("revoked");
            Err(ApiError::WrongToken { revoked: Some(name) })
        }
        Lookup::Unknown => {
            ctx.metrics.token_refused("unknown");
            Err(ApiError::WrongToken { revoked: None })
        }
    }
}

/// The credentials of an `Authorization` value of the `Bearer` scheme, whose name is
/// case-insensitive (RFC 9110 §11.1); one or more spaces separate it from the token.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim_start_matches(' '))
}

/// A body is JSON: its Content-Type is `application/json` or a `+json` type (any case, any
/// parameters). A body sent without a Content-Type is read as JSON, as the CLI of earlier
/// releases sent it.
fn check_json(req: &AdminRequest) -> Result<(), ApiError> {
    let Some(v) = req.headers().get(CONTENT_TYPE) else { return Ok(()) };
    let text = String::from_utf8_lossy(v.as_bytes());
    let essence = text.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if json { Ok(()) } else { Err(ApiError::NotJson(text.chars().take(100).collect())) }
}

/// The JSON body of a request to a route that takes one (see [`read_limited`]).
async fn read_body(req: AdminRequest) -> Result<Bytes, ApiError> {
    read_limited(req, check_json).await
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadBody(e.to_string()))
}

fn password(s: &zeroize::Zeroizing<String>) -> Password {
    Password::new(s.as_str())
}

/// Who sent a password request, for the limits: the token's credential and the client its
/// proof names (or none).
fn client_of(call: &Call, ctx: &Ctx) -> Client {
    ctx.proofs.client(call.credential, call.proof.as_deref())
}

/// Runs a command that carries a password: rate limits first, then a PBKDF2 slot, then the
/// core. The check runs in its own task, so a client that goes away cannot stop its outcome
/// from being recorded (a guess abandoned mid-way still counts as a failure if it was wrong).
/// A client without a proof that gave the right password gets one in `issued`.
async fn with_password(
    ctx: &Arc<Ctx>,
    control: &impl Daemon,
    (credential, client, peer): (Credential, Client, SocketAddr),
    cmd: Command,
    by: crate::audit::Request,
    issued: &mut Option<String>,
) -> Result<Outcome, ApiError> {
    ctx.limiter.lock().unwrap_or_else(|p| p.into_inner()).begin(
        credential,
        client,
        Instant::now(),
    )?;
    /// Records the outcome when dropped, whatever happened.
    struct Finish {
        ctx: Arc<Ctx>,
        credential: Credential,
        client: Client,
        outcome: Checked,
    }
    impl Drop for Finish {
        fn drop(&mut self) {
            let locked = self.ctx.limiter.lock().unwrap_or_else(|p| p.into_inner()).finish(
                self.credential,
                self.client,
                self.outcome,
                Instant::now(),
            );
            if self.outcome == Checked::Wrong {
                self.ctx.metrics.password_failures.inc();
            }
            if locked {
                self.ctx.metrics.lockouts.inc();
            }
        }
    }
    let mut finish = Finish { ctx: ctx.clone(), credential, client, outcome: Checked::NotChecked };
    let control = control.clone();
    let task = tokio::spawn(tracing::Instrument::in_current_span(async move {
        let _slot = tokio::time::timeout(HASH_SLOT_WAIT, finish.ctx.hashing.acquire())
            .await
            .map_err(|_| ApiError::Busy)?
            .map_err(|_| ApiError::Stopping)?;
        let r = control.command(cmd, by).await;
        finish.outcome = match &r {
            Ok(_) => Checked::Correct,
            Err(RequestError::Refused(
                CommandError::WrongPassword | CommandError::WrongMasterPassword { .. },
            )) => Checked::Wrong,
            Err(_) => Checked::NotChecked,
        };
        if finish.outcome == Checked::Wrong {
            let proven = matches!(client, Client::Proven(_));
            tracing::warn!(%peer, proven, "admin request with a wrong password");
        }
        Ok::<_, ApiError>(r?)
    }));
    let outcome = task.await.map_err(|_| ApiError::Stopping)??;
    if client == Client::Unproven {
        *issued = Some(ctx.proofs.issue(credential));
    }
    Ok(outcome)
}

fn archiver(s: &str) -> Result<Option<ComplianceDb>, ApiError> {
    ComplianceDb::parse_archiver(s).map_err(|e| ApiError::BadValue(e.to_string()))
}

fn cluster_id(s: &str) -> Result<ClusterId, ApiError> {
    ClusterId::new(s).map_err(|e| ApiError::BadValue(format!("peer id: {e}")))
}

fn node_id(s: &str) -> Result<NodeId, ApiError> {
    NodeId::new(s).map_err(|e| ApiError::BadValue(e.to_string()))
}

/// The shortest and longest life of a peering token, and its default.
const PEERING_TOKEN_LIFE: (Duration, Duration, Duration) =
    (Duration::from_secs(60), Duration::from_secs(7 * 24 * 3600), Duration::from_secs(3600));

/// How long a new peering token is valid, from the request's `expires` (`1h`, `30m`, `2d`).
fn peering_token_lifetime(expires: Option<&str>) -> Result<Duration, ApiError> {
    let (min, max, default) = PEERING_TOKEN_LIFE;
    let Some(text) = expires else { return Ok(default) };
    let d = humantime::parse_duration(text)
        .map_err(|e| ApiError::BadValue(format!("expires {text:?}: {e} (e.g. 30m, 1h, 2d)")))?;
    if d < min || d > max {
        return Err(ApiError::BadValue(format!(
            "expires {text:?}: a peering token is valid for 1 minute to 7 days"
        )));
    }
    Ok(d)
}

const UNTIL_RESTART: &str = "this change lasts until the daemon restarts: the config file is the \
     source of truth at start; edit it to keep the change";

async fn handle(
    req: AdminRequest,
    peer: SocketAddr,
    ctx: &Arc<Ctx>,
    control: &impl Daemon,
    ticket: &Ticket,
    issued: &mut Option<String>,
    known: &mut Option<Principal>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let path = req.uri().path().to_owned();
    let found = api::find(req.method().as_str(), &path);
    let who = if matches!(found, Match::Found { route, .. } if !route.needs_token()) {
        None
    } else {
        let who = check_token(&req, ctx)?;
        // The administrator's connection: no longer one a flood can evict.
        ticket.establish();
        Some(who)
    };
    let (route, param) = match found {
        Match::Found { route, param } => (route, param),
        Match::WrongMethod { allowed } => {
            return Err(ApiError::WrongMethod {
                method: req.method().to_string(),
                path,
                allowed: allowed.join(", "),
            });
        }
        Match::NotFound => return Err(ApiError::NotFound(path)),
    };
    let Some((principal, credential)) = who else {
        return match route {
            Route::Health => Ok(health(&ctx.cluster, req.uri().query(), control).await),
            _ => Err(ApiError::NoToken),
        };
    };
    *known = Some(principal.clone());
    // Before the body is read: a refused role changes nothing and costs no hashing.
    principal.may(route)?;
    let query = req.uri().query().map(str::to_owned);
    let proof = req.headers().get(proof::HEADER).map(|v| v.as_bytes().to_vec());
    let body = if route.takes_body() { read_body(req).await? } else { Bytes::new() };
    let call = Call { principal, credential, peer, proof, query, body };
    serve_route(call, route, param.unwrap_or_default(), ctx, control, issued).await
}

/// A request whose token was checked and whose role allows its route, whatever brought it
/// (the API's JSON, or a form of the console, [`console`]): who sent it (the one place a route
/// handler learns it, e.g. for an audit record), the token's credential in the password
/// limits, from where, and what it carries. Both go through [`serve_route`], so the console
/// has the API's checks, limits and audit records and no others.
struct Call {
    principal: Principal,
    credential: Credential,
    peer: SocketAddr,
    /// The client proof the request presented ([`proof::HEADER`]).
    proof: Option<Vec<u8>>,
    query: Option<String>,
    /// The JSON body; empty unless the route [takes one](Route::takes_body).
    body: Bytes,
}

/// Answers `route` for an administrator whose role allows it.
async fn serve_route(
    call: Call,
    route: Route,
    param: String,
    ctx: &Arc<Ctx>,
    control: &impl Daemon,
    issued: &mut Option<String>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let client = (call.credential, client_of(&call, ctx), call.peer);
    let Call { principal, peer, query, body, .. } = call;
    let by = crate::audit::Request {
        actor: actor(&principal),
        source: Some(peer.to_string()),
        details: crate::audit::Details::new(),
    };
    match route {
        Route::Status => Ok(json(StatusCode::OK, &control.status().await?)),
        Route::Health => Ok(health(&ctx.cluster, query.as_deref(), control).await),
        Route::Audit => Ok(json(StatusCode::OK, &audit_report(ctx, query.as_deref()).await?)),
        Route::Peers => Ok(json(StatusCode::OK, &control.status().await?.peers)),
        Route::Alarms => {
            let active = control.status().await?.alarms;
            let report = api::AlarmsReport { active, history: ctx.history.snapshot() };
            Ok(json(StatusCode::OK, &report))
        }
        Route::Enable => {
            let b: api::EnableRequest = parse(&body)?;
            let cmd = Command::Enable { password: password(&b.password), remote: b.remote };
            let domain = match with_password(ctx, control, client, cmd, by, issued).await? {
                Outcome::Enabled { domain } => domain,
                other => return Err(ApiError::UnexpectedOutcome(format!("{other:?}"))),
            };
            let mut msg =
                format!("encryption enabled: cluster {} is master of domain {domain}", ctx.cluster);
            if b.remote {
                msg.push_str("; eligible peers are enrolled as slaves at the next sync");
            }
            Ok(done(msg, vec![]))
        }
        Route::Disable => {
            let b: api::DisableRequest = parse(&body)?;
            let cmd = Command::Disable {
                password: password(&b.password),
                i_understand_data_loss: b.i_understand_data_loss,
            };
            let msg = match with_password(ctx, control, client, cmd, by, issued).await? {
                Outcome::DisabledHere { master } => format!(
                    "encryption disabled on this slave of cluster {master}; its keys are deleted"
                ),
                Outcome::DisabledDomain { domain } => format!(
                    "encryption disabled in the whole domain {domain}; every cluster deletes its \
                     keys"
                ),
                other => return Err(ApiError::UnexpectedOutcome(format!("{other:?}"))),
            };
            Ok(done(msg, vec![]))
        }
        Route::Handover => {
            let b: api::HandoverRequest = parse(&body)?;
            let to = cluster_id(&b.to)?;
            let cmd = Command::Handover { to, password: password(&b.password) };
            match with_password(ctx, control, client, cmd, by, issued).await? {
                Outcome::HandedOver { to, term } => {
                    tracing::info!(%to, %term, by = %principal.name, "encryption handover started");
                    Ok(json(StatusCode::OK, &api::HandedOver { to, term }))
                }
                other => Err(ApiError::UnexpectedOutcome(format!("{other:?}"))),
            }
        }
        Route::Promote => {
            let b: api::PromoteRequest = parse(&body)?;
            let cmd = Command::Promote { password: password(&b.password), force: b.force };
            match with_password(ctx, control, client, cmd, by, issued).await? {
                Outcome::Promoted { domain, term, forced, .. } => {
                    tracing::info!(%domain, %term, forced, by = %principal.name, "promoted to master");
                    Ok(json(StatusCode::OK, &api::Promoted { domain, term, forced }))
                }
                other => Err(ApiError::UnexpectedOutcome(format!("{other:?}"))),
            }
        }
        Route::SetRemote => {
            let b: api::RemoteRequest = parse(&body)?;
            control
                .command(if b.enabled { Command::EnableRemote } else { Command::DisableRemote }, by)
                .await?;
            Ok(done(
                if b.enabled {
                    "\"enable on remote clusters\" is on: eligible peers are enrolled as slaves"
                } else {
                    "\"enable on remote clusters\" is off: slaves stop encrypting and delete their keys"
                },
                vec![],
            ))
        }
        Route::ChangePassword => {
            let b: api::PasswordChangeRequest = parse(&body)?;
            let cmd = Command::ChangePassword {
                old: password(&b.old_password),
                new: password(&b.new_password),
            };
            with_password(ctx, control, client, cmd, by, issued).await?;
            Ok(done(
                "the encryption password was changed; slaves receive it at the next sync",
                vec![],
            ))
        }
        Route::RotateKey => {
            let v = match control.command(Command::RotateKey, by).await? {
                Outcome::Rotated { primary } => primary,
                other => return Err(ApiError::UnexpectedOutcome(format!("{other:?}"))),
            };
            Ok(done(
                format!("new key version {v} is primary; older versions stay for decryption"),
                vec![
                    "download the keys again: the last download does not hold this version".into(),
                ],
            ))
        }
        Route::RetireKeys => {
            let b: api::RetireRequest = parse(&body)?;
            let cmd = Command::RetireKeys {
                password: password(&b.password),
                below: b.below,
                i_understand_data_loss: b.i_understand_data_loss,
            };
            let (domain, retired, destroy_at) =
                match with_password(ctx, control, client, cmd, by, issued).await? {
                    Outcome::Retired { domain, retired, destroy_at } => {
                        (domain, retired, destroy_at)
                    }
                    other => return Err(ApiError::UnexpectedOutcome(format!("{other:?}"))),
                };
            let list = retired.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ");
            let kept = match destroy_at {
                Some(t) => format!(
                    "this master keeps them until {} (imcrypt key restore brings them back), then \
                     destroys them for good",
                    humantime::format_rfc3339_seconds(t.system_time())
                ),
                None => "destroyed at once (encryption.destruction_grace is 0)".into(),
            };
            Ok(done(
                format!(
                    "key versions {list} of domain {domain} retired: every cluster deletes them at \
                     the next sync; {kept}"
                ),
                vec![
                    "records sealed under them open only with a key export made before this \
                     retirement: keep it"
                        .into(),
                ],
            ))
        }
        Route::RestoreKeys => {
            let b: api::RestoreRequest = parse(&body)?;
            let cmd = Command::RestoreKeys { password: password(&b.password) };
            let msg = match with_password(ctx, control, client, cmd, by, issued).await? {
                Outcome::Restored { domain, versions, domain_back } => {
                    let list =
                        versions.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ");
                    if domain_back {
                        format!(
                            "encryption domain {domain} restored with key versions {list}: this \
                             cluster is its master again; its former slaves enrol again at the \
                             next sync if \"enable on remote clusters\" is on"
                        )
                    } else {
                        format!(
                            "key versions {list} of domain {domain} restored: every cluster holds \
                             them again at the next sync"
                        )
                    }
                }
                other => return Err(ApiError::UnexpectedOutcome(format!("{other:?}"))),
            };
            Ok(done(msg, vec![]))
        }
        Route::DownloadKeys => {
            let b: api::DownloadRequest = parse(&body)?;
            // The key is checked before the password is looked at.
            let to = parse_public_key(&b.public_key_pem)?;
            let cmd = Command::DownloadKeys { password: password(&b.password) };
            // The record names the recipient: the fingerprint `imcrypt check-key` and openssl
            // show for this public key.
            let mut by = by;
            by.details.insert("recipient_fingerprint".into(), to.fingerprint_hex().into());
            by.details.insert("recipient_bits".into(), to.bits().into());
            let ring = match with_password(ctx, control, client, cmd, by, issued).await? {
                Outcome::KeysForDownload(ring) => ring,
                other => return Err(ApiError::UnexpectedOutcome(format!("{other:?}"))),
            };
            // A failure here is recorded as `failed` by `record_refusal`, after the core's
            // record of the authorised download.
            let doc = export_ring(&ring, &to, crate::clock::now().unix_secs())?;
            tracing::info!(
                recipient = %to.fingerprint_hex(),
                versions = doc.keys.len(),
                by = %principal.name,
                "key export handed out"
            );
            Ok(json(StatusCode::OK, &doc))
        }
        Route::AddPeer => {
            let b: api::AddPeerRequest = parse(&body)?;
            let peer = cluster_id(&b.id)?;
            control
                .command(Command::AddPeer { peer: peer.clone(), address: b.address.clone() }, by)
                .await?;
            Ok(done(
                format!("cluster {peer} is now a peer of this cluster, at {}", b.address),
                vec![
                    UNTIL_RESTART.into(),
                    format!(
                        "to keep it, add [[peers]] id = \"{peer}\", address = \"{}\" to the \
                         config file",
                        b.address
                    ),
                ],
            ))
        }
        Route::RemovePeer => {
            let peer = cluster_id(&param)?;
            control.command(Command::RemovePeer { peer: peer.clone() }, by).await?;
            Ok(done(format!("cluster {peer} is no longer a peer"), vec![UNTIL_RESTART.into()]))
        }
        Route::AddNode => {
            let b: api::AddNodeRequest = parse(&body)?;
            let node = node_id(&b.id)?;
            let archiver = archiver(&b.archiver)?;
            control.command(Command::AddNode { node: node.clone(), archiver }, by).await?;
            Ok(done(format!("node {node} added"), vec![UNTIL_RESTART.into()]))
        }
        Route::RemoveNode => {
            let node = node_id(&param)?;
            control.command(Command::RemoveNode { node: node.clone() }, by).await?;
            Ok(done(format!("node {node} removed"), vec![UNTIL_RESTART.into()]))
        }
        Route::PeeringToken => {
            let b: api::PeeringTokenRequest = parse(&body)?;
            let for_cluster = cluster_id(&b.for_cluster)?;
            let valid_for = peering_token_lifetime(b.expires.as_deref())?;
            let token = control.peering_token(for_cluster, valid_for, by).await?;
            // Never the token: who made one for whom, and until when.
            tracing::info!(
                for_cluster = %token.for_cluster,
                expires_unix_ms = token.expires_unix_ms,
                by = %principal.name,
                "peering token issued"
            );
            Ok(json(StatusCode::CREATED, &token))
        }
        Route::PeeringEstablish => {
            let b: api::PeeringEstablishRequest = parse(&body)?;
            let issuer = control.establish_peering(&b.token, by).await?;
            Ok(done(
                format!(
                    "cluster {issuer} is now a peer of this cluster, each verified against the \
                     other's CA; the peering survives restarts (imcrypt peering delete {issuer} \
                     ends it on both sides)"
                ),
                vec![],
            ))
        }
        Route::PeeringList => Ok(json(StatusCode::OK, &control.peerings().await?)),
        Route::PeeringDelete => {
            let peer = cluster_id(&param)?;
            control.command(Command::DeletePeering { peer: peer.clone() }, by).await?;
            Ok(done(
                format!(
                    "the peering with cluster {peer} is deleted here, and cluster {peer} is told \
                     to delete it too; each side now refuses the other's link"
                ),
                vec![],
            ))
        }
        Route::ListTokens => {
            Ok(json(StatusCode::OK, &api::TokenList { tokens: ctx.tokens.current()?.list() }))
        }
        Route::CreateToken => {
            let b: api::CreateTokenRequest = parse(&body)?;
            let record = token_record(ctx, by, crate::audit::acts::action::TOKEN_CREATE);
            let audit = ctx.audit.clone();
            let new = token_change(ctx, move |f, now| {
                f.create_recorded(Some(&audit), &b.name, b.role, now, record, |()| {})
            })
            .await?;
            tracing::info!(
                name = %new.info.name,
                role = %new.info.role,
                by = %principal.name,
                "admin token created"
            );
            let created = api::CreatedToken { info: new.info, token: new.token };
            Ok(json(StatusCode::CREATED, &created))
        }
        Route::RevokeToken => {
            let record = token_record(ctx, by, crate::audit::acts::action::TOKEN_REVOKE);
            let audit = ctx.audit.clone();
            let tokens::Revoked { info, note } = token_change(ctx, move |f, now| {
                f.revoke_recorded(Some(&audit), &param, now, record, |()| {})
            })
            .await?;
            tracing::info!(
                name = %info.name,
                role = %info.role,
                by = %principal.name,
                "admin token revoked"
            );
            if let Some(n) = &note {
                tracing::info!("{n}");
            }
            Ok(done(
                format!(
                    "the token of administrator {} (role {}) is revoked: it is refused from its \
                     next request",
                    info.name, info.role
                ),
                note.into_iter().collect(),
            ))
        }
    }
}

/// `GET /v1/audit`: reads the trail off the async workers ([`Audit::scan`]).
async fn audit_report(ctx: &Arc<Ctx>, query: Option<&str>) -> Result<api::AuditReport, ApiError> {
    // An empty field is no filter (what a form with an empty box sends).
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or_default())
        .map_err(|e| ApiError::BadValue(format!("query: {e}")))?;
    let given: Vec<_> = pairs.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    let q: api::AuditQuery =
        serde_urlencoded::from_str(&serde_urlencoded::to_string(given).unwrap_or_default())
            .map_err(|e| ApiError::BadValue(format!("query: {e}")))?;
    let (default, max) = api::AUDIT_LIMIT;
    let limit = q.limit.unwrap_or(default);
    if limit > max {
        return Err(ApiError::BadValue(format!("limit {limit}: at most {max}")));
    }
    let since = q
        .since
        .as_deref()
        .map(|s| crate::audit::chain::parse_since(s, std::time::SystemTime::now()))
        .transpose()
        .map_err(|why| ApiError::BadValue(format!("since: {why}")))?;
    let filter = crate::audit::chain::Filter { since, actor: q.actor, action: q.action };
    let _one = ctx.audit_scans.try_acquire().map_err(|_| ApiError::AuditBusy)?;
    let audit = ctx.audit.clone();
    let scan = tokio::task::spawn_blocking(move || audit.scan(&filter, limit))
        .await
        .map_err(|e| ApiError::UnexpectedOutcome(format!("the audit trail reader failed: {e}")))?;
    let Some(scan) = scan else {
        let chain = api::ChainReport::EMPTY;
        return Ok(api::AuditReport { enabled: false, chain, matched: 0, records: vec![] });
    };
    let chain = match &scan.verdict {
        Ok(s) => api::ChainReport {
            intact: true,
            records: s.records,
            first: Some(s.first),
            last: Some(s.last),
            problem: None,
        },
        Err(crate::audit::chain::ChainError::Empty) => api::ChainReport::EMPTY,
        Err(e) => api::ChainReport {
            intact: false,
            problem: Some(e.to_string()),
            ..api::ChainReport::EMPTY
        },
    };
    Ok(api::AuditReport { enabled: true, chain, matched: scan.matched, records: scan.records })
}

/// Writes the audit record of a token change that is valid, before the change is saved (a
/// refused change is recorded by `record_refusal`, like any refusal); if it cannot be
/// written, the change is not made ([`ApiError::NotAudited`]).
fn token_record(
    ctx: &Arc<Ctx>,
    by: crate::audit::Request,
    action: &'static str,
) -> impl FnOnce(&api::TokenInfo) -> Result<(), ApiError> + Send + 'static {
    let audit = ctx.audit.clone();
    move |info| {
        let record = Record::new(by.actor, action, crate::audit::Outcome::Ok)
            .source(by.source)
            .target(info.name.clone())
            .detail("role", info.role.to_string());
        audit.write(vec![record]).map_err(|e| ApiError::NotAudited(Arc::new(e)))
    }
}

/// Runs a change of the token file off the async workers (it takes the file's lock, which
/// `imcrypt admin token --local` may hold, and fsyncs, as the audit record does).
async fn token_change<T: Send + 'static>(
    ctx: &Arc<Ctx>,
    change: impl FnOnce(&TokenFile, u64) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let ctx = ctx.clone();
    let now = crate::clock::now().unix_secs();
    tokio::task::spawn_blocking(move || change(ctx.tokens.file(), now))
        .await
        .map_err(|_| ApiError::Stopping)?
}
