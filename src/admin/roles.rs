//! Who may call which route: the administrators' roles and the one table from [`Route`] to the
//! roles allowed ([`allowed`]). The server asks [`Principal::may`] before it reads a request's
//! body; docs/admin.md prints the same table ([`markdown_table`]), and a test keeps the two
//! equal.
//!
//! The roles nest except one: `viewer` < `operator` < `admin`, and `key-custodian` beside
//! them, which may download the keys and nothing else. `admin` may do everything: it manages
//! the tokens, so it could always make itself a key-custodian token; refusing it the download
//! would be theatre, not separation. Duties are separated below it: a key-custodian downloads
//! but cannot disable, rotate or change anything; an operator rotates and changes peers and
//! nodes but cannot download, enable, disable or change the password. Issuing a peering token
//! and establishing a peering are `admin` only: with "enable on remote clusters" on, a cluster
//! peered that way joins the encryption domain and receives its key ring (and an established
//! peering can join this cluster to another's domain), which is as strong as a key download.
//!
//! Invariants: [`allowed`] is an exhaustive match, so a new route cannot be added without
//! deciding who may call it; `admin` is allowed every route; a route that needs no token
//! ([`Route::needs_token`]) is allowed to every role.

use serde::{Deserialize, Serialize};

use super::api::Route;

/// An administrator's role (docs/admin.md, "Administrators and roles").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdminRole {
    /// Reads status, alarms and health.
    Viewer,
    /// A viewer that also changes peers and nodes, lists and deletes peerings, and rotates
    /// the key.
    Operator,
    /// Everything: enable, disable, handover, promotion, password change, token management, peering tokens and
    /// establishing peerings, and all of the above.
    Admin,
    /// Downloads the keys, and nothing else.
    KeyCustodian,
}

impl AdminRole {
    pub const ALL: [AdminRole; 4] =
        [AdminRole::Viewer, AdminRole::Operator, AdminRole::Admin, AdminRole::KeyCustodian];

    /// The role's name, as the CLI, the API and the docs write it.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminRole::Viewer => "viewer",
            AdminRole::Operator => "operator",
            AdminRole::Admin => "admin",
            AdminRole::KeyCustodian => "key-custodian",
        }
    }
}

impl std::fmt::Display for AdminRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is none of the four.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: the roles are viewer, operator, admin and key-custodian")]
pub struct UnknownRole(pub String);

impl std::str::FromStr for AdminRole {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AdminRole::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| UnknownRole(s.into()))
    }
}

const EVERYONE: &[AdminRole] =
    &[AdminRole::Viewer, AdminRole::Operator, AdminRole::Admin, AdminRole::KeyCustodian];
const READERS: &[AdminRole] = &[AdminRole::Viewer, AdminRole::Operator, AdminRole::Admin];
const OPERATORS: &[AdminRole] = &[AdminRole::Operator, AdminRole::Admin];
const ADMINS: &[AdminRole] = &[AdminRole::Admin];
const CUSTODIANS: &[AdminRole] = &[AdminRole::Admin, AdminRole::KeyCustodian];

/// The roles allowed to call `route`: the one table of who may do what.
pub fn allowed(route: Route) -> &'static [AdminRole] {
    match route {
        Route::Health => EVERYONE,
        Route::Status | Route::Alarms | Route::Audit => READERS,
        Route::Peers
        | Route::AddPeer
        | Route::RemovePeer
        | Route::AddNode
        | Route::RemoveNode
        | Route::RotateKey
        | Route::PeeringList
        | Route::PeeringDelete => OPERATORS,
        Route::Enable
        | Route::Disable
        | Route::RetireKeys
        | Route::RestoreKeys
        | Route::Handover
        | Route::Promote
        | Route::SetRemote
        | Route::ChangePassword
        | Route::ListTokens
        | Route::CreateToken
        | Route::RevokeToken
        | Route::PeeringToken
        | Route::PeeringEstablish => ADMINS,
        Route::DownloadKeys => CUSTODIANS,
    }
}

/// The authenticated maker of a request: the name and role of the token it carried. Passed to
/// every route handler; the one place where "who did this" is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: AdminRole,
}

/// A route the principal's role may not call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{method} {path} needs the role {needed}; administrator {name:?} has the role {held} \
     (an admin can give you a token of another role: docs/admin.md)",
    needed = needed.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(" or ")
)]
pub struct Forbidden {
    pub method: &'static str,
    pub path: &'static str,
    pub needed: &'static [AdminRole],
    pub name: String,
    pub held: AdminRole,
}

impl Principal {
    /// Whether this principal's role may call `route`, by [`allowed`] (what the console asks
    /// before it offers an action; [`Self::may`] says why not).
    pub fn allows(&self, route: Route) -> bool {
        allowed(route).contains(&self.role)
    }

    /// Whether this principal may call `route`, and if not, who may.
    pub fn may(&self, route: Route) -> Result<(), Forbidden> {
        if self.allows(route) {
            return Ok(());
        }
        let needed = allowed(route);
        let (method, path) = route.method_and_path();
        Err(Forbidden { method, path, needed, name: self.name.clone(), held: self.role })
    }
}

/// The table of [`allowed`] in Markdown, one row per route, as docs/admin.md shows it.
pub fn markdown_table() -> String {
    let mut out = String::from("| route |");
    for r in AdminRole::ALL {
        out.push_str(&format!(" {r} |"));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(AdminRole::ALL.len()));
    out.push('\n');
    for route in Route::ALL {
        let (m, p) = route.method_and_path();
        out.push_str(&format!("| `{m} {p}` |"));
        for r in AdminRole::ALL {
            out.push_str(if allowed(route).contains(&r) { " yes |" } else { " – |" });
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_may_do_everything_and_tokenless_routes_are_open_to_all() {
        for route in Route::ALL {
            assert!(allowed(route).contains(&AdminRole::Admin), "{route:?}");
            if !route.needs_token() {
                assert_eq!(allowed(route), EVERYONE, "{route:?}");
            }
        }
    }

    #[test]
    fn duties_are_separated_below_admin() {
        let custodian = Principal { name: "kc".into(), role: AdminRole::KeyCustodian };
        let operator = Principal { name: "op".into(), role: AdminRole::Operator };
        assert!(custodian.may(Route::DownloadKeys).is_ok());
        assert!(custodian.may(Route::Disable).is_err() && custodian.may(Route::Status).is_err());
        assert!(operator.may(Route::RotateKey).is_ok());
        let e = operator.may(Route::DownloadKeys).unwrap_err().to_string();
        assert!(
            e.contains("needs the role admin or key-custodian")
                && e.contains("\"op\" has the role operator"),
            "{e}"
        );
        let viewer = Principal { name: "v".into(), role: AdminRole::Viewer };
        assert!(viewer.may(Route::Alarms).is_ok() && viewer.may(Route::RotateKey).is_err());
    }

    #[test]
    fn an_operator_lists_and_deletes_peerings_but_cannot_make_or_use_a_peering_token() {
        // A token or an establish can bring a cluster into the domain with its key ring.
        let operator = Principal { name: "op".into(), role: AdminRole::Operator };
        for route in [Route::PeeringToken, Route::PeeringEstablish] {
            let e = operator.may(route).unwrap_err().to_string();
            assert!(e.contains("needs the role admin;"), "{route:?}: {e}");
        }
        assert!(operator.may(Route::PeeringList).is_ok());
        assert!(operator.may(Route::PeeringDelete).is_ok());
    }

    #[test]
    fn role_names_round_trip_and_unknown_ones_are_named() {
        for r in AdminRole::ALL {
            assert_eq!(r.as_str().parse::<AdminRole>(), Ok(r));
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        }
        let e = "root".parse::<AdminRole>().unwrap_err().to_string();
        assert!(e.contains("\"root\"") && e.contains("key-custodian"), "{e}");
    }

    /// docs/admin.md shows the table the server enforces, row for row.
    #[test]
    fn docs_admin_md_shows_the_enforced_table() {
        let doc = include_str!("../../docs/admin.md");
        let table = markdown_table();
        assert!(
            doc.contains(&table),
            "docs/admin.md must contain the roles table exactly as follows:\n{table}"
        );
    }
}
