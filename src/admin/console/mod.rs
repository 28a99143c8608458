//! The web console (docs/console.md): server-rendered HTML under `/ui/` on the admin
//! listener, for the administrators of the API, with their tokens and roles.
//!
//! Invariants:
//! - every state-changing form becomes the API request it stands for and goes through
//!   [`super::serve_route`], so it meets the same role check, password limits, core checks
//!   and audit records as the API, and no others; a refusal before the core is recorded by
//!   [`super::record_refusal`], as the API's are;
//! - the role is checked from the form's path alone, before its body is read: a viewer that
//!   posts an action gets 403 and changes nothing;
//! - every POST but the login carries the session's CSRF token, and a POST whose `Origin` or
//!   `Sec-Fetch-Site` names another site is refused; the session cookie is `__Host-`,
//!   `Secure`, `HttpOnly`, `SameSite=Strict`;
//! - every answer carries the security headers of [`harden`]: a CSP without inline script
//!   or style, no framing, no caching;
//! - a page never holds a secret: no token, password or key is ever written into HTML (the
//!   key export is an attachment, never a page).

mod pages;
mod picture;
mod session;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::body::AdminRequest;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, COOKIE, HeaderValue, LOCATION, SET_COOKIE};
use hyper::{Method, Response, StatusCode};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::api::{self, Match, Route};
use super::roles::Principal;
use super::tokens::Lookup;
use super::{ApiError, Call, Ctx, Daemon, limit::Credential};
use crate::audit::{Outcome, Record};
use crate::caps::Ticket;
use session::{Flash, Sessions};

/// The session cookie: `__Host-` makes the browser refuse it unless `Secure`, `Path=/` and
/// without `Domain`, so no other site or path can set or shadow it.
const COOKIE_NAME: &str = "__Host-imcrypt-console";
const COOKIE_ATTRIBUTES: &str = "Path=/; Secure; HttpOnly; SameSite=Strict";

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// The console's state in the admin API: its sessions.
pub(super) struct Console {
    sessions: Mutex<Sessions>,
}

impl Console {
    pub(super) fn new(idle: Duration) -> Self {
        Self { sessions: Mutex::new(Sessions::new(idle)) }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether `path` is the console's.
pub(super) fn is_console(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// Answers a request under `/ui/` (the caller checked [`is_console`] and that the console is
/// on).
pub(super) async fn serve(
    req: AdminRequest,
    peer: SocketAddr,
    ctx: &Arc<Ctx>,
    console: &Console,
    control: &impl Daemon,
    ticket: &Ticket,
) -> Response<Full<Bytes>> {
    let mut r = match route(req, peer, ctx, console, control, ticket).await {
        Ok(r) => r,
        Err(page) => page.into_response(),
    };
    harden(&mut r);
    r
}

/// The headers of every console answer: a Content-Security-Policy that allows this origin's
/// script and style files only (no inline script, style or `eval`), no framing, no sniffing,
/// no referrer to other sites, and no caching (pages show the domain's state and, after a download, a
/// browser must not keep anything).
fn harden(r: &mut Response<Full<Bytes>>) {
    let h = r.headers_mut();
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    // `same-origin`, not `no-referrer`: under `no-referrer` a browser sends `Origin: null`
    // with the console's own forms, and [`same_origin`] could no longer tell them apart.
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    h.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
    h.insert("strict-transport-security", HeaderValue::from_static("max-age=31536000"));
    h.insert("cache-control", HeaderValue::from_static("no-store"));
}

/// An answer that is not the page asked for: an error page, or a redirect.
enum Page {
    Redirect(&'static str),
    Error { status: StatusCode, title: &'static str, message: String },
}

impl Page {
    fn error(status: StatusCode, title: &'static str, message: impl Into<String>) -> Self {
        Page::Error { status, title, message: message.into() }
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        match self {
            Page::Redirect(to) => redirect(to),
            Page::Error { status, title, message } => {
                html(status, pages::error_page(title, &message))
            }
        }
    }
}

fn redirect(to: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    r.headers_mut().insert(LOCATION, HeaderValue::from_static(to));
    r
}

fn html(status: StatusCode, page: maud::Markup) -> Response<Full<Bytes>> {
    typed(status, "text/html; charset=utf-8", page.into_string())
}

fn typed(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A logged-in request: the session's id, who it is, and its CSRF token.
struct Me {
    id: String,
    principal: Principal,
    credential: Credential,
    csrf: String,
    proof: Option<String>,
}

fn cookie(req: &AdminRequest) -> Option<String> {
    req.headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE_NAME)
        .map(|(_, v)| v.to_owned())
}

/// The session the request's cookie names, if it is live and its token still valid. A session
/// whose token was revoked meanwhile ends here.
fn me(req: &AdminRequest, ctx: &Ctx, console: &Console) -> Result<Option<Me>, Page> {
    let Some(id) = cookie(req) else { return Ok(None) };
    // The overview's own refresh is not the administrator's use of the session.
    let touch = req.uri().path() != "/ui/live";
    let (token, csrf, proof) = {
        let mut sessions = console.sessions();
        let Some(s) = sessions.get(&id, Instant::now(), touch) else { return Ok(None) };
        (s.token.clone(), s.csrf.clone(), s.proof.clone())
    };
    let tokens = ctx.tokens.current().map_err(|e| {
        Page::error(StatusCode::SERVICE_UNAVAILABLE, "Tokens unavailable", e.to_string())
    })?;
    match tokens.authenticate(&token) {
        Lookup::Valid(principal, credential) => {
            Ok(Some(Me { id, principal, credential, csrf, proof }))
        }
        Lookup::Revoked(_) | Lookup::Unknown => {
            console.sessions().remove(&id);
            Ok(None)
        }
    }
}

/// Refuses a POST that another site made the browser send. Browsers send `Origin` with every
/// POST, and `Sec-Fetch-Site`; a client that sends neither (curl) is not a browser a page
/// could steer, and still needs the CSRF token of a session.
fn same_origin(req: &AdminRequest) -> Result<(), ApiError> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site")
        && !matches!(site, "same-origin" | "none")
    {
        return Err(ApiError::CrossSite(format!(
            "a form sent from another site ({site}) is refused"
        )));
    }
    if let (Some(origin), Some(host)) = (header("origin"), header("host"))
        && origin != format!("https://{host}")
    {
        return Err(ApiError::CrossSite(format!(
            "a form sent from {origin} is refused: the console only takes its own forms"
        )));
    }
    Ok(())
}

/// The body of a console form: `application/x-www-form-urlencoded`, at most
/// [`api::MAX_BODY`] bytes.
async fn form_body(req: AdminRequest) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    let bytes = super::read_limited(req, |req| {
        let kind = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if kind.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded") {
            Ok(())
        } else {
            Err(ApiError::BadBody(format!(
                "a console form is sent as application/x-www-form-urlencoded, not {kind:?}"
            )))
        }
    })
    .await?;
    Ok(Zeroizing::new(bytes.to_vec()))
}

fn form<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_urlencoded::from_bytes(body).map_err(|e| ApiError::BadBody(format!("form: {e}")))
}

#[derive(Deserialize)]
struct CsrfField {
    #[serde(default)]
    csrf: String,
}

async fn route(
    req: AdminRequest,
    peer: SocketAddr,
    ctx: &Arc<Ctx>,
    console: &Console,
    control: &impl Daemon,
    ticket: &Ticket,
) -> Result<Response<Full<Bytes>>, Page> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/ui") => return Err(Page::Redirect("/ui/")),
        (&Method::GET, "/ui/assets/console.css") => {
            return Ok(typed(StatusCode::OK, "text/css; charset=utf-8", CSS.into()));
        }
        (&Method::GET, "/ui/assets/console.js") => {
            return Ok(typed(StatusCode::OK, "text/javascript; charset=utf-8", JS.into()));
        }
        (&Method::GET, "/ui/login") => {
            if me(&req, ctx, console)?.is_some() {
                return Err(Page::Redirect("/ui/"));
            }
            return Ok(html(StatusCode::OK, pages::login(ctx.cluster.as_str(), None)));
        }
        (&Method::POST, "/ui/login") => return login(req, peer, ctx, console).await,
        _ => {}
    }
    let Some(me) = me(&req, ctx, console)? else {
        if method != Method::GET {
            // As the API records a request without a token (coalesced per source).
            let e = ApiError::NoToken;
            super::record_refusal(ctx, &Match::NotFound, &path, peer, None, e).await;
        }
        return match method {
            Method::GET if path != "/ui/live" => Err(Page::Redirect("/ui/login")),
            _ => Err(Page::error(
                StatusCode::UNAUTHORIZED,
                "Not logged in",
                "log in again: the session ended (logged out, idle too long, or its token was \
                 revoked)",
            )),
        };
    };
    // An administrator's connection: no longer one a flood of idle ones can evict.
    ticket.establish();
    // Taken here, once the session's token is known to be valid (not in `me()`, which a
    // logged-in visit to the login page calls too, before it redirects).
    let flash = if method == Method::GET && path != "/ui/live" {
        console.sessions().get(&me.id, Instant::now(), true).and_then(|s| s.flash.take())
    } else {
        None
    };
    let frame = pages::Frame {
        cluster: ctx.cluster.as_str(),
        who: &me.principal,
        csrf: &me.csrf,
        flash: flash.as_ref(),
        here: path.as_str(),
    };
    let forbidden = |route: Route| {
        me.principal
            .may(route)
            .map_err(|e| Page::error(StatusCode::FORBIDDEN, "Not allowed", e.to_string()))
    };
    match (&method, path.as_str()) {
        (&Method::GET, "/ui/") => {
            if !me.principal.allows(Route::Status) {
                // A key-custodian reads no status: its page is the key download.
                return Err(Page::Redirect("/ui/keys"));
            }
            let status = control.status().await.map_err(unavailable)?;
            Ok(html(StatusCode::OK, pages::overview(&frame, &status)))
        }
        (&Method::GET, "/ui/live") => {
            forbidden(Route::Status)?;
            let status = control.status().await.map_err(unavailable)?;
            Ok(html(StatusCode::OK, pages::live(&status)))
        }
        (&Method::GET, "/ui/alarms") => {
            forbidden(Route::Alarms)?;
            let active = control.status().await.map_err(unavailable)?.alarms;
            let history = ctx.history.snapshot();
            Ok(html(StatusCode::OK, pages::alarms(&frame, &active, &history)))
        }
        (&Method::GET, "/ui/audit") => {
            forbidden(Route::Audit)?;
            let query = req.uri().query().unwrap_or_default();
            // The form shows what was asked; the API's handler reads and checks it.
            let q: api::AuditQuery = serde_urlencoded::from_str(query).unwrap_or_default();
            let report = super::audit_report(ctx, Some(query)).await.map_err(|e| e.to_string());
            Ok(html(StatusCode::OK, pages::audit(&frame, &q, &report)))
        }
        (&Method::GET, "/ui/keys") => {
            let status = if me.principal.allows(Route::Status) {
                Some(control.status().await.map_err(unavailable)?)
            } else {
                None
            };
            Ok(html(StatusCode::OK, pages::keys(&frame, status.as_ref(), None)))
        }
        (&Method::GET, "/ui/encryption") => {
            forbidden(Route::Status)?;
            let status = control.status().await.map_err(unavailable)?;
            Ok(html(StatusCode::OK, pages::encryption(&frame, &status)))
        }
        (&Method::GET, "/ui/peers") => {
            forbidden(Route::Status)?;
            let status = control.status().await.map_err(unavailable)?;
            Ok(html(StatusCode::OK, pages::peers(&frame, &status)))
        }
        (&Method::POST, "/ui/logout") => {
            let checked = async {
                same_origin(&req)?;
                let body = form_body(req).await?;
                check_csrf(&me, &body)
            };
            if let Err(e) = checked.await {
                let record = Record::new(super::actor(&me.principal), ACT_LOGOUT, Outcome::Refused)
                    .source(Some(peer.to_string()))
                    .reason(e.to_string())
                    .detail("code", e.status().1);
                if let Err(w) = ctx.audit.write_async(vec![record]).await {
                    tracing::error!(error = %w, "the audit record of a refused logout was not written");
                }
                let (status, _) = e.status();
                return Err(Page::error(status, "Refused", e.to_string()));
            }
            console.sessions().remove(&me.id);
            let record = Record::new(super::actor(&me.principal), ACT_LOGOUT, Outcome::Ok)
                .source(Some(peer.to_string()));
            // Logging out is never refused: a failed record is logged, not an error page.
            if let Err(e) = ctx.audit.write_async(vec![record]).await {
                tracing::error!(error = %e, "the audit record of a console logout was not written");
            }
            let mut r = redirect("/ui/login");
            let clear = format!("{COOKIE_NAME}=; {COOKIE_ATTRIBUTES}; Max-Age=0");
            r.headers_mut().insert(SET_COOKIE, HeaderValue::from_str(&clear).expect("ASCII"));
            Ok(r)
        }
        (&Method::POST, p) if p.starts_with("/ui/act/") => {
            act(req, &p["/ui/act/".len()..], peer, ctx, console, control, &me, &frame).await
        }
        (&Method::GET | &Method::POST, _) => {
            Err(Page::error(StatusCode::NOT_FOUND, "Not found", format!("no console page {path}")))
        }
        _ => Err(Page::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed",
            format!("the console answers GET and POST, not {method}"),
        )),
    }
}

const ACT_LOGIN: &str = crate::audit::acts::action::CONSOLE_LOGIN;
const ACT_LOGOUT: &str = crate::audit::acts::action::CONSOLE_LOGOUT;

fn unavailable(e: super::RequestError) -> Page {
    Page::error(StatusCode::SERVICE_UNAVAILABLE, "Daemon unavailable", e.to_string())
}

fn bad_form(e: ApiError) -> Page {
    let (status, _) = e.status();
    Page::error(status, "Bad form", e.to_string())
}

fn check_csrf(me: &Me, body: &[u8]) -> Result<(), ApiError> {
    let given: CsrfField = form(body)?;
    if session::csrf_matches(&me.csrf, &given.csrf) {
        Ok(())
    } else {
        Err(ApiError::CrossSite(
            "the form's CSRF token is missing or not this session's: reload the page and send \
             the form again"
                .into(),
        ))
    }
}

/// The error page of a form refused before it became an API request, once recorded as the
/// API records its refusals (under the route's action, when the route has one).
async fn refused(
    ctx: &Ctx,
    route: Option<Route>,
    path: &str,
    peer: SocketAddr,
    who: &Principal,
    e: ApiError,
) -> Page {
    let found = match route {
        Some(route) => Match::Found { route, param: None },
        None => Match::NotFound,
    };
    let e = super::record_refusal(ctx, &found, path, peer, Some(who), e).await;
    let (status, _) = e.status();
    let title = if status == StatusCode::FORBIDDEN { "Refused" } else { "Bad form" };
    Page::error(status, title, e.to_string())
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: Zeroizing<String>,
}

async fn login(
    req: AdminRequest,
    peer: SocketAddr,
    ctx: &Arc<Ctx>,
    console: &Console,
) -> Result<Response<Full<Bytes>>, Page> {
    same_origin(&req).map_err(|e| Page::error(StatusCode::FORBIDDEN, "Refused", e.to_string()))?;
    // A new login replaces the browser's old session, if any (no session fixation either:
    // the new id is always fresh).
    let old = cookie(&req);
    let body = form_body(req).await.map_err(bad_form)?;
    let f: LoginForm = form(&body).map_err(bad_form)?;
    let given = f.token.trim();
    let refused = |e: ApiError| async {
        let e = super::record_refusal(ctx, &Match::NotFound, "/ui/login", peer, None, e).await;
        let (status, _) = e.status();
        Ok(html(status, pages::login(ctx.cluster.as_str(), Some(&e.to_string()))))
    };
    if given.is_empty() {
        ctx.metrics.token_refused("missing");
        return refused(ApiError::NoToken).await;
    }
    let tokens = ctx.tokens.current().map_err(|e| {
        Page::error(StatusCode::SERVICE_UNAVAILABLE, "Tokens unavailable", e.to_string())
    })?;
    let principal = match tokens.authenticate(given) {
        Lookup::Valid(p, _) => p,
        Lookup::Revoked(name) => {
            ctx.metrics.token_refused("revoked");
            return refused(ApiError::WrongToken { revoked: Some(name) }).await;
        }
        Lookup::Unknown => {
            ctx.metrics.token_refused("unknown");
            return refused(ApiError::WrongToken { revoked: None }).await;
        }
    };
    let record = Record::new(super::actor(&principal), ACT_LOGIN, Outcome::Ok)
        .source(Some(peer.to_string()));
    // No record, no session: a login is how an act begins.
    if let Err(e) = ctx.audit.write_async(vec![record]).await {
        return Err(Page::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Audit trail unavailable",
            ApiError::NotAudited(e).to_string(),
        ));
    }
    let id = {
        let mut sessions = console.sessions();
        if let Some(old) = old {
            sessions.remove(&old);
        }
        sessions.create(Zeroizing::new(given.to_owned()), Instant::now())
    };
    tracing::info!(name = %principal.name, role = %principal.role, %peer, "console login");
    let mut r = redirect("/ui/");
    let cookie = format!("{COOKIE_NAME}={id}; {COOKIE_ATTRIBUTES}");
    r.headers_mut().insert(SET_COOKIE, HeaderValue::from_str(&cookie).expect("hex is a header"));
    Ok(r)
}

/// The forms of the actions, one per route.
#[derive(Deserialize)]
struct EnableForm {
    #[serde(default)]
    password: Zeroizing<String>,
    /// A checkbox: present when ticked.
    #[serde(default)]
    remote: Option<String>,
}

#[derive(Deserialize)]
struct DisableForm {
    #[serde(default)]
    password: Zeroizing<String>,
    #[serde(default)]
    i_understand_data_loss: Option<String>,
}

#[derive(Deserialize)]
struct RemoteForm {
    #[serde(default)]
    enabled: String,
}

#[derive(Deserialize)]
struct ChangePasswordForm {
    #[serde(default)]
    old_password: Zeroizing<String>,
    #[serde(default)]
    new_password: Zeroizing<String>,
    #[serde(default)]
    new_password_again: Zeroizing<String>,
}

#[derive(Deserialize)]
struct KeyForm {
    #[serde(default)]
    password: Zeroizing<String>,
    #[serde(default)]
    public_key_pem: String,
}

#[derive(Deserialize)]
struct IdForm {
    #[serde(default)]
    id: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    archiver: String,
}

/// Which route a console action stands for, and the page it returns to.
fn action_route(name: &str) -> Option<(Route, &'static str)> {
    Some(match name {
        "enable" => (Route::Enable, "/ui/encryption"),
        "disable" => (Route::Disable, "/ui/encryption"),
        "remote" => (Route::SetRemote, "/ui/encryption"),
        "password" => (Route::ChangePassword, "/ui/encryption"),
        "rotate" => (Route::RotateKey, "/ui/keys"),
        "check-key" | "download" => (Route::DownloadKeys, "/ui/keys"),
        "peer-add" => (Route::AddPeer, "/ui/peers"),
        "peer-remove" => (Route::RemovePeer, "/ui/peers"),
        "node-add" => (Route::AddNode, "/ui/peers"),
        "node-remove" => (Route::RemoveNode, "/ui/peers"),
        _ => return None,
    })
}

fn to_json(v: &impl serde::Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(v).expect("a request serializes"))
}

#[allow(clippy::too_many_arguments)]
async fn act(
    req: AdminRequest,
    name: &str,
    peer: SocketAddr,
    ctx: &Arc<Ctx>,
    console: &Console,
    control: &impl Daemon,
    me: &Me,
    frame: &pages::Frame<'_>,
) -> Result<Response<Full<Bytes>>, Page> {
    let Some((route, back)) = action_route(name) else {
        return Err(Page::error(StatusCode::NOT_FOUND, "Not found", format!("no action {name:?}")));
    };
    let path = format!("/ui/act/{name}");
    let checked = async {
        // Before the body is read, as the API does.
        me.principal.may(route)?;
        same_origin(&req)?;
        let body = form_body(req).await?;
        check_csrf(me, &body)?;
        Ok::<_, ApiError>(body)
    };
    let body = match checked.await {
        Ok(body) => body,
        Err(e) => return Err(refused(ctx, Some(route), &path, peer, &me.principal, e).await),
    };
    let (call_body, param) = match parse_action(name, &body) {
        Ok(Parsed::Request(body)) => (body, String::new()),
        Ok(Parsed::Param(id)) => (Bytes::new(), id),
        Ok(Parsed::PasswordsDiffer) => {
            // Caught before it is a request: the API never sees it, so nothing records it.
            flash(console, me, false, "the two new passwords differ; nothing was changed");
            return Err(Page::Redirect("/ui/encryption"));
        }
        Ok(Parsed::CheckKey(pem)) => {
            let checked = match crate::crypto::export::parse_public_key(&pem) {
                Ok(k) => {
                    Ok(pages::KeyCheck { bits: k.bits(), fingerprint: k.fingerprint_hex(), pem })
                }
                Err(e) => Err(e.to_string()),
            };
            let status = if me.principal.allows(Route::Status) {
                Some(control.status().await.map_err(unavailable)?)
            } else {
                None
            };
            let code =
                if checked.is_ok() { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
            return Ok(html(code, pages::keys(frame, status.as_ref(), Some(&checked))));
        }
        // A form that does not parse is recorded as the API records a body that does not.
        Err(e) => return Err(refused(ctx, Some(route), &path, peer, &me.principal, e).await),
    };
    let call = Call {
        principal: me.principal.clone(),
        credential: me.credential,
        peer,
        proof: me.proof.as_ref().map(|p| p.as_bytes().to_vec()),
        query: None,
        body: call_body,
    };
    let mut issued = None;
    let found = Match::Found { route, param: Some(param.clone()) };
    let answer = super::serve_route(call, route, param, ctx, control, &mut issued).await;
    if let Some(p) = issued
        && let Some(s) = console.sessions().get(&me.id, Instant::now(), true)
    {
        s.proof = Some(p);
    }
    match answer {
        Ok(r) if name == "download" => {
            let bytes = r.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let mut r = Response::new(Full::new(bytes));
            let file = format!(
                "attachment; filename=\"imcrypt-keys-{}-{}.json\"",
                ctx.cluster,
                crate::clock::now().unix_secs()
            );
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if let Ok(v) = HeaderValue::from_str(&file) {
                r.headers_mut().insert("content-disposition", v);
            }
            Ok(r)
        }
        Ok(r) => {
            let bytes = r.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let (text, notes) = match serde_json::from_slice::<api::Done>(&bytes) {
                Ok(d) => (d.message, d.notes),
                Err(_) => ("done".to_owned(), vec![]),
            };
            flash_notes(console, me, true, text, notes);
            Err(Page::Redirect(back))
        }
        Err(e) => {
            let e = super::record_refusal(ctx, &found, &path, peer, Some(&me.principal), e).await;
            flash(console, me, false, &e.to_string());
            Err(Page::Redirect(back))
        }
    }
}

/// What a console form asks for.
enum Parsed {
    /// The API request's JSON body.
    Request(Bytes),
    /// The `{id}` of a route that takes one (remove a peer or a node).
    Param(String),
    /// A password change whose two new passwords differ.
    PasswordsDiffer,
    /// "Check the key": the public key to check before a download.
    CheckKey(String),
}

/// The API request the form of action `name` stands for.
fn parse_action(name: &str, body: &[u8]) -> Result<Parsed, ApiError> {
    Ok(Parsed::Request(match name {
        "enable" => {
            let f: EnableForm = form(body)?;
            to_json(&api::EnableRequest { password: f.password, remote: f.remote.is_some() })
        }
        "disable" => {
            let f: DisableForm = form(body)?;
            to_json(&api::DisableRequest {
                password: f.password,
                i_understand_data_loss: f.i_understand_data_loss.is_some(),
            })
        }
        "remote" => {
            let f: RemoteForm = form(body)?;
            to_json(&api::RemoteRequest { enabled: f.enabled == "on" })
        }
        "password" => {
            let f: ChangePasswordForm = form(body)?;
            if f.new_password != f.new_password_again {
                return Ok(Parsed::PasswordsDiffer);
            }
            to_json(&api::PasswordChangeRequest {
                old_password: f.old_password,
                new_password: f.new_password,
            })
        }
        "check-key" => return Ok(Parsed::CheckKey(form::<KeyForm>(body)?.public_key_pem)),
        "download" => {
            let f: KeyForm = form(body)?;
            to_json(&api::DownloadRequest {
                password: f.password,
                public_key_pem: f.public_key_pem,
            })
        }
        "peer-add" => {
            let f: IdForm = form(body)?;
            to_json(&api::AddPeerRequest { id: f.id, address: f.address })
        }
        "node-add" => {
            let f: IdForm = form(body)?;
            to_json(&api::AddNodeRequest { id: f.id, archiver: f.archiver })
        }
        "peer-remove" | "node-remove" => return Ok(Parsed::Param(form::<IdForm>(body)?.id)),
        // "rotate": no fields but the CSRF token.
        _ => Bytes::new(),
    }))
}

fn flash(console: &Console, me: &Me, ok: bool, text: &str) {
    flash_notes(console, me, ok, text.to_owned(), vec![]);
}

fn flash_notes(console: &Console, me: &Me, ok: bool, text: String, notes: Vec<String>) {
    if let Some(s) = console.sessions().get(&me.id, Instant::now(), true) {
        s.flash = Some(Flash { ok, text, notes });
    }
}
