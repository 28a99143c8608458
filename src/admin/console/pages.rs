//! The console's pages, written with maud (every value escaped). Each page offers only the
//! forms the logged-in role may send ([`Principal::may`], the API's one table), and each form
//! carries the session's CSRF token. Element ids are stable: docs/console.md and the browser
//! tests (tests/console.rs) name them.

use maud::{DOCTYPE, Markup, html};

use super::picture;
use super::session::Flash;
use crate::admin::api::{AuditQuery, AuditReport, Role, Route, Status};
use crate::admin::roles::Principal;
use crate::alarm::{Alarm, AlarmEvent};

/// What every page of a session shows around its content.
pub(super) struct Frame<'a> {
    pub(super) cluster: &'a str,
    pub(super) who: &'a Principal,
    pub(super) csrf: &'a str,
    pub(super) flash: Option<&'a Flash>,
    /// The path asked for, to mark the current page in the navigation.
    pub(super) here: &'a str,
}

/// A public key checked before a download: its size and fingerprint, and the PEM itself so
/// the download form can send it again.
pub(super) struct KeyCheck {
    pub(super) bits: u32,
    pub(super) fingerprint: String,
    pub(super) pem: String,
}

fn head(title: &str, cluster: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · imcrypt · cluster " (cluster) }
            // No favicon request (it would be a 404 in the browser's console).
            link rel="icon" href="data:,";
            link rel="stylesheet" href="/ui/assets/console.css";
            script src="/ui/assets/console.js" defer {}
        }
    }
}

fn csrf(f: &Frame) -> Markup {
    html! { input type="hidden" name="csrf" value=(f.csrf); }
}

/// The page around `content`: who is logged in, the navigation, the message of the last form.
fn page(f: &Frame, title: &str, content: Markup) -> Markup {
    let nav: [(&str, &str, bool); 6] = [
        ("/ui/", "Overview", f.who.allows(Route::Status)),
        ("/ui/alarms", "Alarms", f.who.allows(Route::Alarms)),
        ("/ui/encryption", "Encryption", f.who.allows(Route::Status)),
        ("/ui/keys", "Keys", f.who.allows(Route::DownloadKeys) || f.who.allows(Route::Status)),
        ("/ui/peers", "Peers and nodes", f.who.allows(Route::Status)),
        ("/ui/audit", "Audit", f.who.allows(Route::Audit)),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, f.cluster))
            body {
                header {
                    span.brand { "imcrypt" }
                    span.cluster { "cluster " strong { (f.cluster) } }
                    nav {
                        @for (href, label, shown) in nav {
                            @if shown {
                                a href=(href) class=[(f.here == href).then_some("current")] { (label) }
                            }
                        }
                    }
                    div.who {
                        "logged in as " strong #who-name { (f.who.name) }
                        " · role " strong #who-role { (f.who.role) }
                        form #logout method="post" action="/ui/logout" {
                            (csrf(f))
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    @if let Some(m) = f.flash {
                        div #flash class=(if m.ok { "flash ok" } else { "flash error" }) role="status" {
                            p { (m.text) }
                            @for n in &m.notes { p.note { (n) } }
                        }
                    }
                    (content)
                }
            }
        }
    }
}

pub(super) fn login(cluster: &str, error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Log in", cluster))
            body.login {
                main {
                    h1 { "imcrypt · cluster " (cluster) }
                    @if let Some(e) = error { div #flash class="flash error" role="alert" { p { (e) } } }
                    form #login method="post" action="/ui/login" {
                        label for="token" { "Administrator token" }
                        input #token type="password" name="token" autocomplete="off" required;
                        p.note {
                            "The token of a named administrator (imcrypt admin token create). \
                             The session ends when you log out, after the idle timeout, or when \
                             the token is revoked."
                        }
                        button type="submit" { "Log in" }
                    }
                }
            }
        }
    }
}

pub(super) fn error_page(title: &str, message: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, "?"))
            body {
                main {
                    h1 { (title) }
                    div #flash class="flash error" role="alert" { p { (message) } }
                    p { a href="/ui/" { "Back to the console" } }
                }
            }
        }
    }
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or("—".into(), |v| v.to_string())
}

fn versions(s: &Status) -> String {
    let list = s.key_versions.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ");
    match s.primary_version {
        Some(p) => format!("{list} (primary {p})"),
        None => "none".into(),
    }
}

fn status_table(s: &Status) -> Markup {
    html! {
        table #status.facts {
            tr { th { "Role" } td #role { (s.role) } }
            @if let Some(why) = &s.off_reason { tr { th { "Why not encrypting" } td { (why) } } }
            tr { th { "Domain" } td { (opt(&s.domain)) } }
            tr { th { "Master" } td { (opt(&s.master)) } }
            tr { th { "Term · epoch" } td { (opt(&s.term)) " · " (opt(&s.epoch)) } }
            tr { th { "Key versions" } td #versions { (versions(s)) } }
            tr { th { "Enable on remote clusters" } td { (opt(&s.remote)) } }
            tr { th { "Eligible" } td { (if s.eligible { "yes" } else { "no" }) } }
        }
    }
}

pub(super) fn overview(f: &Frame, s: &Status) -> Markup {
    page(
        f,
        "Overview",
        html! {
            p.note { "Refreshed every 2 seconds while this page is open (with JavaScript)." }
            div #live { (live(s)) }
        },
    )
}

/// What the overview refreshes in place (`GET /ui/live`): the picture, this cluster's
/// status and the active alarms, from one status.
pub(super) fn live(s: &Status) -> Markup {
    html! {
        section {
            h2 { "The domain at a glance" }
            div #domain { (picture::domain(s)) }
        }
        section.columns {
            div {
                h2 { "This cluster" }
                (status_table(s))
            }
            div {
                h2 { "Active alarms" }
                (alarm_table(&s.alarms))
            }
        }
    }
}

fn alarm_table(active: &[Alarm]) -> Markup {
    html! {
        @if active.is_empty() {
            p #no-alarms { "No active alarm." }
        } @else {
            table #active-alarms {
                tr { th { "Alarm" } th { "Severity" } th { "About" } th { "Cause" } th { "Remedy" } }
                @for a in active {
                    tr class=(format!("alarm sev-{}", a.severity)) {
                        td.name { (a.key.name) }
                        td { (a.severity) }
                        td { (a.key.about) }
                        td { (a.cause) }
                        td { (a.remedy) }
                    }
                }
            }
        }
    }
}

pub(super) fn alarms(f: &Frame, active: &[Alarm], history: &[AlarmEvent]) -> Markup {
    page(
        f,
        "Alarms",
        html! {
            h2 { "Active" }
            (alarm_table(active))
            h2 { "History" }
            p.note { "Raises and clears since this daemon started, newest first." }
            table #alarm-history {
                tr { th { "Time" } th { "Event" } th { "Alarm" } th { "About" } th { "Severity" } th { "Cause" } }
                @for e in history.iter().rev() {
                    tr {
                        td { (e.at) }
                        td { (e.event) }
                        td { (e.name) }
                        td { (e.about) }
                        td { (opt(&e.severity)) }
                        td { (e.cause.as_deref().unwrap_or("")) }
                    }
                }
            }
        },
    )
}

pub(super) fn audit(f: &Frame, q: &AuditQuery, report: &Result<AuditReport, String>) -> Markup {
    page(
        f,
        "Audit trail",
        html! {
            form #audit-filter.inline method="get" action="/ui/audit" {
                label { "Actor " input name="actor" value=(q.actor.as_deref().unwrap_or("")) placeholder="admin, local, anonymous, b"; }
                label { "Action " input name="action" value=(q.action.as_deref().unwrap_or("")) placeholder="key.download or key."; }
                label { "Since " input name="since" value=(q.since.as_deref().unwrap_or("")) placeholder="2h or 2026-12-01T10:00:00Z"; }
                button type="submit" { "Filter" }
            }
            @match report {
                Err(e) => div #flash class="flash error" role="alert" { p { (e) } },
                Ok(r) => {
                    @if !r.enabled {
                        p #chain.broken { "The audit trail is off ([audit] enabled = false): nothing is recorded." }
                    } @else if r.chain.intact {
                        p #chain.intact {
                            "Chain intact: " (r.chain.records) " records"
                            @if let (Some(a), Some(b)) = (r.chain.first, r.chain.last) { " (" (a) " to " (b) ")" }
                            ", ending at the last record this daemon wrote."
                        }
                    } @else {
                        p #chain.broken { "Chain broken: " (r.chain.problem.as_deref().unwrap_or("")) }
                    }
                    p.note { (r.records.len()) " of " (r.matched) " matching records, newest first." }
                    table #audit-records {
                        tr { th { "Seq" } th { "Time" } th { "Actor" } th { "Source" } th { "Action" } th { "Target" } th { "Result" } th { "Reason" } }
                        @for e in r.records.iter().rev() {
                            tr class=(format!("result-{}", e.result)) {
                                td { (e.seq) }
                                td.time { (e.time) }
                                td.actor { (e.actor.label()) }
                                td { (e.source.as_deref().unwrap_or("")) }
                                td.action { (e.action) }
                                td { (e.target) }
                                td { (e.result) }
                                td { (e.reason.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
        },
    )
}

fn password_field(id: &str, name: &str, label: &str) -> Markup {
    html! {
        label for=(id) { (label) }
        input id=(id) type="password" name=(name) autocomplete="off" required;
    }
}

pub(super) fn encryption(f: &Frame, s: &Status) -> Markup {
    let encrypting = s.role != Role::Off;
    page(
        f,
        "Encryption",
        html! {
            (status_table(s))
            @if !encrypting && f.who.allows(Route::Enable) {
                section {
                    h2 { "Enable encryption" }
                    p { "This cluster becomes the master of a new encryption domain: it makes the key and keeps the password you set here." }
                    form #enable.action method="post" action="/ui/act/enable" {
                        (csrf(f))
                        (password_field("enable-password", "password", "New encryption password"))
                        (rules())
                        label.check { input #enable-remote type="checkbox" name="remote"; " Enable on remote clusters (every eligible peer becomes a slave of this domain at the next sync)" }
                        button type="submit" { "Enable encryption" }
                    }
                }
            }
            @if encrypting && s.role == Role::Master && f.who.allows(Route::SetRemote) {
                section {
                    h2 { "Enable on remote clusters" }
                    form #remote.action method="post" action="/ui/act/remote" {
                        (csrf(f))
                        @if s.remote == Some(true) {
                            input type="hidden" name="enabled" value="off";
                            p { "On: eligible peers are slaves of this domain. Turning it off makes them stop encrypting and delete their keys." }
                            button type="submit" { "Turn off" }
                        } @else {
                            input type="hidden" name="enabled" value="on";
                            p { "Off: peers do not join this domain." }
                            button type="submit" { "Turn on" }
                        }
                    }
                }
            }
            @if s.role == Role::Master && f.who.allows(Route::ChangePassword) {
                section {
                    h2 { "Change the encryption password" }
                    form #password.action method="post" action="/ui/act/password" {
                        (csrf(f))
                        (password_field("old-password", "old_password", "Current password"))
                        (password_field("new-password", "new_password", "New password"))
                        (password_field("new-password-again", "new_password_again", "New password again"))
                        (rules())
                        button type="submit" { "Change password" }
                    }
                }
            }
            @if encrypting && f.who.allows(Route::Disable) {
                section.danger {
                    h2 { "Disable encryption" }
                    @if s.role == Role::Master {
                        p { "Disabling on the master disables encryption on every cluster of the domain, and every cluster deletes its keys." }
                    } @else {
                        p { "Disabling on this slave needs the master's password; this cluster deletes its keys and stops encrypting." }
                    }
                    p.warning {
                        strong { "Records archived under these keys can then be read only with a key export made before. " }
                        "So the daemon refuses unless the current key set was downloaded (Keys) since its last change, "
                        "or you tick the box below to say you accept that they become unreadable."
                    }
                    form #disable.action method="post" action="/ui/act/disable" {
                        (csrf(f))
                        (password_field("disable-password", "password", "Encryption password (the master's)"))
                        label.check { input #disable-data-loss type="checkbox" name="i_understand_data_loss"; " I understand: without a key export, archived records become unreadable" }
                        button.danger type="submit" { "Disable encryption" }
                    }
                }
            }
            @if !f.who.allows(Route::Enable) {
                p.note { "Your role " (f.who.role) " reads this page; enabling, disabling and the password need the role admin." }
            }
        },
    )
}

fn rules() -> Markup {
    html! {
        div.rules {
            "The password must have:"
            ul { @for r in crate::crypto::password::policy_rules() { li { (r) } } }
        }
    }
}

pub(super) fn keys(
    f: &Frame,
    s: Option<&Status>,
    checked: Option<&Result<KeyCheck, String>>,
) -> Markup {
    let master = s.is_none_or(|s| s.role == Role::Master);
    page(
        f,
        "Keys",
        html! {
            @if let Some(s) = s {
                table.facts {
                    tr { th { "Key versions" } td #versions { (versions(s)) } }
                    tr { th { "Role" } td { (s.role) } }
                    @if let Some(m) = &s.master { tr { th { "Master" } td { (m) } } }
                }
                @for p in &s.pending_destruction {
                    p.warning { (p.kind) " versions " (p.versions.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ")) " are kept until their destruction (imcrypt key restore)" }
                }
            }
            @if master && f.who.allows(Route::RotateKey) {
                section {
                    h2 { "Rotate" }
                    p { "Makes a new key version, primary from now on; older versions stay for reading. Download the keys again after a rotation." }
                    form #rotate.action method="post" action="/ui/act/rotate" {
                        (csrf(f))
                        button type="submit" { "Rotate the key" }
                    }
                }
            }
            @if f.who.allows(Route::DownloadKeys) {
                section {
                    h2 { "Download Encryption Key" }
                    @if !master {
                        p.warning { "Only the master hands out its keys: download from cluster " (opt(&s.and_then(|s| s.master.clone()))) "." }
                    }
                    p { "The keys are encrypted to your RSA public key (at least 2048 bits, 3072 or more recommended) with RSA-OAEP-SHA-256; only the matching private key opens the file (docs/formats.md)." }
                    form #check-key.action method="post" action="/ui/act/check-key" {
                        (csrf(f))
                        label for="public-key-pem" { "RSA public key (PEM)" }
                        textarea #public-key-pem name="public_key_pem" rows="6" required
                            placeholder="-----BEGIN PUBLIC KEY-----" {
                            @if let Some(Ok(k)) = checked { (k.pem) }
                        }
                        label for="public-key-file" { "or choose its file" }
                        input #public-key-file type="file" accept=".pem,.pub,.txt";
                        button type="submit" { "Check the key" }
                    }
                    @match checked {
                        Some(Err(e)) => div #key-check class="flash error" role="alert" { p { (e) } },
                        Some(Ok(k)) => {
                            div #key-check class="flash ok" {
                                p { "RSA " span #key-bits { (k.bits) } " bits · SHA-256 fingerprint " code #key-fingerprint { (k.fingerprint) } }
                                @if k.bits < 3072 { p.warning { "Accepted; 3072 bits or more is recommended." } }
                                p.note { "Compare the fingerprint with: openssl pkey -pubin -in key.pem -outform DER | sha256sum" }
                            }
                            form #download.action method="post" action="/ui/act/download" {
                                (csrf(f))
                                input type="hidden" name="public_key_pem" value=(k.pem);
                                (password_field("download-password", "password", "Encryption password"))
                                button type="submit" { "Download Encryption Key" }
                            }
                        }
                        None => {}
                    }
                }
            }
        },
    )
}

pub(super) fn peers(f: &Frame, s: &Status) -> Markup {
    page(
        f,
        "Peers and nodes",
        html! {
            table #peers {
                tr { th { "Peer" } th { "Address" } th { "Relation" } th { "Link" } th { "Last hello" } @if f.who.allows(Route::RemovePeer) { th {} } }
                @for p in &s.peers {
                    tr data-peer=(p.id.as_str()) {
                        td { (p.id) }
                        td { (p.address.as_deref().unwrap_or("—")) }
                        td { (p.relation) }
                        td { (if p.link.connected { "connected".to_owned() } else { format!("down{}", p.link.last_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()) }) }
                        td { (p.last_hello_unix_ms.map(|ms| humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()).unwrap_or_else(|| "—".into())) }
                        @if f.who.allows(Route::RemovePeer) {
                            td {
                                form.action.inline method="post" action="/ui/act/peer-remove" {
                                    (csrf(f))
                                    input type="hidden" name="id" value=(p.id.as_str());
                                    button type="submit" { "Remove" }
                                }
                            }
                        }
                    }
                }
            }
            @if f.who.allows(Route::AddPeer) {
                h2 { "Add a peer" }
                p.note { "Until the daemon restarts: the config file's [[peers]] are the source of truth at start." }
                form #peer-add.action.inline method="post" action="/ui/act/peer-add" {
                    (csrf(f))
                    label { "Cluster id " input name="id" required; }
                    label { "Address (host:port) " input name="address" required; }
                    button type="submit" { "Add peer" }
                }
            }
            h2 { "Nodes" }
            @if s.db_probes.is_empty() {
                p.note { "No node's compliance database has been probed since start." }
            } @else {
                table #nodes {
                    tr { th { "Node" } th { "Compliance database" } }
                    @for n in &s.db_probes {
                        tr { td { (n.node) } td { (if n.reachable { "reachable" } else { "unreachable" }) } }
                    }
                }
            }
            @if f.who.allows(Route::AddNode) {
                p.note { "A node cannot be added while encryption is on (the product's rule): disable first." }
                form #node-add.action.inline method="post" action="/ui/act/node-add" {
                    (csrf(f))
                    label { "Node id " input name="id" required; }
                    label { "Archiver " select name="archiver" {
                        option value="postgresql" { "postgresql" }
                        option value="sql_server" { "sql_server" }
                        option value="none" { "none" }
                    } }
                    button type="submit" { "Add node" }
                }
            }
            @if f.who.allows(Route::RemoveNode) {
                form #node-remove.action.inline method="post" action="/ui/act/node-remove" {
                    (csrf(f))
                    label { "Node id " input name="id" required; }
                    button type="submit" { "Remove node" }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn pages_escape_what_they_show() {
        let m = super::error_page("t", "<script>alert(1)</script>");
        let s = m.into_string();
        assert!(!s.contains("<script>alert"), "{s}");
        assert!(s.contains("&lt;script&gt;"));
    }
}
