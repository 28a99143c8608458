//! What each act of the daemon is recorded as: a command and how it ended, and what the state
//! machine's effects of one input change (role, key ring, alarms, a peer's state accepted or
//! rejected). The core builds these records before it carries out any effect of the input.
//!
//! Invariant: the records hold names, ids, versions and reasons, never key bytes or a
//! password (a key ring is recorded as its version numbers, a command by its kind).

use serde_json::json;

use super::{Actor, Outcome as Result_, Record, Request};
use crate::alarm::AlarmChange;
use crate::cluster::{Command, CommandError, Effect, Outcome, PeerMessage};
use crate::crypto::keyring::KeyRing;
use crate::ids::ClusterId;

/// The action names of records (docs/formats.md, "Audit trail", lists them all).
pub(crate) mod action {
    pub(crate) const ENABLE: &str = "encryption.enable";
    pub(crate) const REMOTE: &str = "encryption.remote";
    pub(crate) const DISABLE: &str = "encryption.disable";
    pub(crate) const HANDOVER: &str = "encryption.handover";
    pub(crate) const PROMOTE: &str = "encryption.promote";
    pub(crate) const PASSWORD_CHANGE: &str = "password.change";
    pub(crate) const KEY_ROTATE: &str = "key.rotate";
    pub(crate) const KEY_DOWNLOAD: &str = "key.download";
    pub(crate) const KEY_RETIRE: &str = "key.retire";
    pub(crate) const KEY_RESTORE: &str = "key.restore";
    /// Key material pending destruction destroyed at the end of its grace period (a timer).
    pub(crate) const KEY_DESTROY: &str = "key.destroy";
    pub(crate) const PEER_ADD: &str = "peer.add";
    pub(crate) const PEER_REMOVE: &str = "peer.remove";
    pub(crate) const NODE_ADD: &str = "node.add";
    pub(crate) const NODE_REMOVE: &str = "node.remove";
    pub(crate) const TOKEN_CREATE: &str = "token.create";
    pub(crate) const TOKEN_REVOKE: &str = "token.revoke";
    pub(crate) const PEERING_TOKEN: &str = "peering.token";
    /// On the issuer: a token presented by another cluster (accepted or refused).
    pub(crate) const PEERING_ACCEPT: &str = "peering.accept";
    /// On the cluster that presented a token: the issuer accepted it.
    pub(crate) const PEERING_ESTABLISH: &str = "peering.establish";
    pub(crate) const PEERING_DELETE: &str = "peering.delete";
    /// A request to a route that reads (status, peers, alarms) refused for its token.
    pub(crate) const ADMIN_READ: &str = "admin.read";
    /// An administrator logged in to the web console with their token, or out of it.
    pub(crate) const CONSOLE_LOGIN: &str = "console.login";
    pub(crate) const CONSOLE_LOGOUT: &str = "console.logout";
}

/// The action and target a command run on cluster `me` is recorded under. The target is
/// what the act is about: for a handover and a promotion, the cluster that becomes master
/// (the one named by `--to`, or `me`, which promotes itself).
pub(crate) fn action_of(cmd: &Command, me: &ClusterId) -> (&'static str, String) {
    match cmd {
        Command::Enable { .. } => (action::ENABLE, String::new()),
        Command::EnableRemote | Command::DisableRemote => (action::REMOTE, String::new()),
        Command::ChangePassword { .. } => (action::PASSWORD_CHANGE, String::new()),
        Command::RotateKey => (action::KEY_ROTATE, String::new()),
        Command::DownloadKeys { .. } => (action::KEY_DOWNLOAD, String::new()),
        Command::RetireKeys { .. } => (action::KEY_RETIRE, String::new()),
        Command::RestoreKeys { .. } => (action::KEY_RESTORE, String::new()),
        Command::Disable { .. } => (action::DISABLE, String::new()),
        Command::AddPeer { peer, .. } => (action::PEER_ADD, peer.to_string()),
        Command::RemovePeer { peer } => (action::PEER_REMOVE, peer.to_string()),
        Command::AddNode { node, .. } => (action::NODE_ADD, node.to_string()),
        Command::RemoveNode { node } => (action::NODE_REMOVE, node.to_string()),
        Command::SetArchiver { node, .. } => ("node.archiver", node.to_string()),
        Command::AcknowledgeStaleData { peer } => ("stale_data.acknowledge", peer.to_string()),
        Command::IssuePeeringToken { for_cluster, .. } => {
            (action::PEERING_TOKEN, for_cluster.to_string())
        }
        Command::AcceptPeering { peer, .. } => (action::PEERING_ACCEPT, peer.to_string()),
        Command::LearnPeer { peer, .. } => (action::PEERING_ESTABLISH, peer.to_string()),
        Command::DeletePeering { peer } => (action::PEERING_DELETE, peer.to_string()),
        Command::Handover { to, .. } => (action::HANDOVER, to.to_string()),
        Command::Promote { .. } => (action::PROMOTE, me.to_string()),
    }
}

/// The record of `cmd` on cluster `me`, asked for by `by`, before it runs ([`outcome`]
/// completes it).
pub(crate) fn command(by: &Request, cmd: &Command, me: &ClusterId) -> Record {
    let (action, target) = action_of(cmd, me);
    let mut details = by.details.clone();
    match cmd {
        Command::Enable { remote, .. } => {
            details.insert("remote".into(), json!(remote));
        }
        Command::EnableRemote => {
            details.insert("remote".into(), json!(true));
        }
        Command::DisableRemote => {
            details.insert("remote".into(), json!(false));
        }
        Command::Disable { i_understand_data_loss, .. } => {
            details.insert("i_understand_data_loss".into(), json!(i_understand_data_loss));
        }
        Command::RetireKeys { below, i_understand_data_loss, .. } => {
            details.insert("below".into(), json!(below.get()));
            details.insert("i_understand_data_loss".into(), json!(i_understand_data_loss));
        }
        Command::Promote { force, .. } => {
            details.insert("force".into(), json!(force));
        }
        Command::AddPeer { address, .. }
        | Command::AcceptPeering { address, .. }
        | Command::LearnPeer { learnt: crate::cluster::LearntPeer { address, .. }, .. } => {
            details.insert("address".into(), json!(address));
        }
        Command::IssuePeeringToken { expires, .. } => {
            details.insert("expires_unix_ms".into(), json!(expires.unix_millis()));
        }
        Command::AddNode { archiver, .. } | Command::SetArchiver { archiver, .. } => {
            details.insert(
                "archiver".into(),
                json!(archiver.as_ref().map_or("none".to_owned(), |a| a.to_string())),
            );
        }
        _ => {}
    }
    Record {
        actor: by.actor.clone(),
        source: by.source.clone(),
        action: action.into(),
        target,
        result: Result_::Ok,
        reason: None,
        details,
    }
}

/// Completes the record of a command with how it ended.
pub(crate) fn outcome(r: &mut Record, result: &std::result::Result<Outcome, CommandError>) {
    let details = &mut r.details;
    match result {
        Ok(Outcome::KeysForDownload(ring)) => {
            details.insert("versions".into(), json!(versions(ring)));
        }
        Ok(Outcome::Rotated { primary }) => {
            details.insert("primary".into(), json!(primary.get()));
        }
        Ok(Outcome::Retired { domain, retired, destroy_at }) => {
            details.insert("domain".into(), json!(domain.to_string()));
            details.insert(
                "versions".into(),
                json!(retired.iter().map(|v| v.get()).collect::<Vec<_>>()),
            );
            details.insert("destroy_at_unix_ms".into(), json!(destroy_at.map(|t| t.unix_millis())));
        }
        Ok(Outcome::Restored { domain, versions, domain_back }) => {
            details.insert("domain".into(), json!(domain.to_string()));
            details.insert(
                "versions".into(),
                json!(versions.iter().map(|v| v.get()).collect::<Vec<_>>()),
            );
            details.insert("domain_back".into(), json!(domain_back));
        }
        Ok(Outcome::Enabled { domain }) | Ok(Outcome::DisabledDomain { domain }) => {
            details.insert("domain".into(), json!(domain.to_string()));
        }
        Ok(Outcome::HandedOver { term, .. }) => {
            details.insert("term".into(), json!(term.to_string()));
        }
        Ok(Outcome::Promoted { domain, term, forced, replaced }) => {
            details.insert("domain".into(), json!(domain.to_string()));
            details.insert("term".into(), json!(term.to_string()));
            details.insert("forced".into(), json!(forced));
            details.insert("replaces".into(), json!(replaced.to_string()));
        }
        // The token's peering stands; its first answer was lost and is given again.
        Ok(Outcome::PeeringRepeated { since }) => {
            details.insert("repeat".into(), json!(true));
            details.insert("since_unix_ms".into(), json!(since.unix_millis()));
        }
        _ => {}
    }
    if let Err(e) = result {
        r.result = Result_::Refused;
        r.reason = Some(e.to_string());
    }
}

fn versions(ring: &KeyRing) -> Vec<u32> {
    ring.versions().map(|v| v.get()).collect()
}

/// A summary of the role, to see whether an input changed it, and of what is pending
/// destruction, to record what a timer destroyed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RoleView {
    role: &'static str,
    domain: Option<String>,
    master: Option<String>,
    /// Each entry pending destruction: (domain, versions, when it is destroyed).
    pending: Vec<(String, Vec<u32>, u64)>,
}

impl RoleView {
    pub(crate) fn of(c: &crate::cluster::Cluster) -> Self {
        use crate::cluster::Role;
        let role = match c.role() {
            Role::Off { .. } => "off",
            Role::Master(_) => "master",
            Role::Slave(_) => "slave",
        };
        let d = c.domain_state();
        let pending = c
            .pending_destruction()
            .iter()
            .map(|p| {
                (
                    p.removed.domain().to_string(),
                    versions(p.removed.ring()),
                    p.destroy_at.unix_millis(),
                )
            })
            .collect();
        Self {
            role,
            domain: d.map(|d| d.domain.to_string()),
            master: d.map(|d| d.master.to_string()),
            pending,
        }
    }
}

/// A peer's domain state as the audit names it (no key bytes: its key versions).
pub(crate) struct Offered {
    from: ClusterId,
    domain: String,
    epoch: serde_json::Value,
    versions: Vec<u32>,
}

impl Offered {
    /// The state `msg` offers, if it is one.
    pub(crate) fn of(from: &ClusterId, msg: &PeerMessage) -> Option<Self> {
        let PeerMessage::State(s) = msg else { return None };
        Some(Self {
            from: from.clone(),
            domain: s.domain.to_string(),
            epoch: json!(s.epoch),
            versions: versions(&s.ring),
        })
    }
}

/// The records of one input's effects: a role change (`before` → `after`), each key-ring
/// change, each alarm raised or cleared, and, for a peer's domain state, whether it was
/// accepted or rejected.
pub(crate) fn effects(
    actor: &Actor,
    before: &RoleView,
    after: &RoleView,
    offered: Option<&Offered>,
    effects: &[Effect],
) -> Vec<Record> {
    let mut out = Vec::new();
    if let Some(s) = offered {
        let rejected = effects.iter().find_map(|e| match e {
            Effect::Send { to, msg: PeerMessage::Reject(r) } if *to == s.from => Some(r),
            _ => None,
        });
        let base = |result| {
            Record::new(actor.clone(), "peer.state", result)
                .target(s.from.to_string())
                .detail("domain", s.domain.clone())
                .detail("epoch", s.epoch.clone())
                .detail("versions", s.versions.clone())
        };
        if let Some(r) = rejected {
            out.push(
                base(Result_::Refused).reason(format!("this cluster refused it: {}", r.reason)),
            );
        } else if effects.iter().any(|e| matches!(e, Effect::Persist(_))) {
            out.push(base(Result_::Ok));
        }
    }
    // Gone from the area without an administrator's restore: destroyed by the timer.
    if *actor == Actor::Local {
        for (domain, vs, at) in before.pending.iter().filter(|p| !after.pending.contains(p)) {
            out.push(
                Record::new(actor.clone(), action::KEY_DESTROY, Result_::Ok)
                    .target(domain.clone())
                    .detail("versions", vs.clone())
                    .detail("destroy_at_unix_ms", *at),
            );
        }
    }
    if (before.role, &before.domain, &before.master) != (after.role, &after.domain, &after.master) {
        let mut r = Record::new(actor.clone(), "role.change", Result_::Ok)
            .target(after.role)
            .detail("from", before.role);
        if let Some(d) = &after.domain {
            r = r.detail("domain", d.clone());
        }
        if let Some(m) = &after.master {
            r = r.detail("master", m.clone());
        }
        out.push(r);
    }
    for e in effects {
        match e {
            // A peer's `Unpeer` took it off the peers: the peering was deleted over there.
            Effect::LinkDown { peer } if matches!(actor, Actor::Peer { cluster } if *cluster == peer.as_str()) =>
            {
                out.push(
                    Record::new(actor.clone(), action::PEERING_DELETE, Result_::Ok)
                        .target(peer.to_string())
                        .detail("deleted_by", "peer"),
                );
            }
            Effect::KeyRingChanged(ring) => {
                let mut r = Record::new(actor.clone(), "keyring.change", Result_::Ok);
                r = match ring {
                    Some(ring) => r
                        .target(ring.domain().to_string())
                        .detail("versions", versions(ring))
                        .detail("primary", ring.primary_version().get()),
                    None => r.detail("versions", Vec::<u32>::new()),
                };
                out.push(r);
            }
            Effect::Alarm(AlarmChange::Raise(a)) => out.push(
                Record::new(actor.clone(), "alarm.raise", Result_::Ok)
                    .target(a.key.name.as_str())
                    .detail("about", a.key.about.to_string())
                    .detail("severity", a.severity.to_string())
                    .detail("cause", a.cause.clone()),
            ),
            Effect::Alarm(AlarmChange::Clear(k)) => out.push(
                Record::new(actor.clone(), "alarm.clear", Result_::Ok)
                    .target(k.name.as_str())
                    .detail("about", k.about.to_string()),
            ),
            Effect::Alarm(AlarmChange::Update(_))
            | Effect::Persist(_)
            | Effect::Send { .. }
            | Effect::Log(_)
            | Effect::LinkUp { .. }
            | Effect::LinkDown { .. }
            | Effect::RetryLink { .. } => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::password::Password;
    use crate::demo::cid as id;
    use crate::ids::{DomainId, Term};

    #[test]
    fn a_promotion_is_recorded_against_the_promoted_cluster_and_names_the_master_it_replaces() {
        let cmd = Command::Promote { password: Password::new("not recorded"), force: false };
        let mut r = command(&Request::local(), &cmd, &id("b"));
        assert_eq!((r.action.as_str(), r.target.as_str()), (action::PROMOTE, "b"));
        assert_eq!(r.details["force"], json!(false));

        let done = Outcome::Promoted {
            domain: DomainId::from_bytes([7; 16]),
            term: Term::new(1, 1).unwrap(),
            forced: false,
            replaced: id("a"),
        };
        outcome(&mut r, &Ok(done));
        assert_eq!(r.target, "b", "the outcome keeps the target");
        assert_eq!(r.details["replaces"], json!("a"));
        assert_eq!(r.details["term"], json!("1.1"));
        assert!(!serde_json::to_string(&r.details).unwrap().contains("not recorded"));
    }

    #[test]
    fn a_handover_is_recorded_against_the_cluster_it_names_not_this_one() {
        let cmd = Command::Handover { to: id("b"), password: Password::new("x") };
        let r = command(&Request::local(), &cmd, &id("a"));
        assert_eq!((r.action.as_str(), r.target.as_str()), (action::HANDOVER, "b"));
    }

    #[test]
    fn a_refused_promotion_keeps_its_target_and_says_why() {
        let cmd = Command::Promote { password: Password::new("x"), force: true };
        let mut r = command(&Request::local(), &cmd, &id("b"));
        outcome(&mut r, &Err(CommandError::NotEncrypting));
        assert_eq!(r.target, "b");
        assert_eq!(r.result, Result_::Refused);
        assert!(r.reason.is_some() && !r.details.contains_key("replaces"));
    }
}
