//! The admin status, filled from the state machine and the links: the daemon fills the admin
//! API's typed [`api::Status`], the CLI reads the same type. Never key bytes.

use std::collections::BTreeMap;

use crate::admin::api;
use crate::alarm::sink::Sinks;
use crate::cluster::{Announced, Cluster, PeerRelation, Removed, Role};
use crate::ids::ClusterId;
use crate::peer::client::PeerLink;

pub(super) fn status(
    c: &Cluster,
    links: &BTreeMap<ClusterId, PeerLink>,
    sinks: &Sinks,
) -> api::Status {
    let ds = c.domain_state();
    let role = match c.role() {
        Role::Off { .. } => api::Role::Off,
        Role::Master(_) => api::Role::Master,
        Role::Slave(_) => api::Role::Slave,
    };
    let peers = c
        .state()
        .peers
        .iter()
        .map(|p| api::PeerStatus {
            id: p.clone(),
            address: links.get(p).map(|l| l.address().to_owned()),
            relation: c.peer_relation(p).unwrap_or(PeerRelation::NotHeardFrom),
            link: links.get(p).map(PeerLink::status).unwrap_or_default(),
            last_hello_unix_ms: c.peer_last_heard(p).map(|t| t.unix_millis()),
            announced: c.peer_announced(p).map(announced),
        })
        .collect();
    api::Status {
        cluster: c.id().clone(),
        role,
        off_reason: c.off_reason(),
        domain: ds.map(|d| d.domain),
        master: ds.map(|d| d.master.clone()),
        epoch: ds.map(|d| d.epoch),
        term: ds.map(|d| d.term),
        key_versions: ds.map(|d| d.ring.versions().collect()).unwrap_or_default(),
        primary_version: ds.map(|d| d.ring.primary_version()),
        primary_created_unix: ds.map(|d| d.ring.primary().created_unix()),
        remote: ds.map(|d| d.remote),
        eligible: c.eligibility().is_eligible(),
        peers,
        alarms: c.alarms().iter().cloned().collect(),
        db_probes: c
            .db_probes()
            .reachability()
            .map(|(n, reachable)| api::DbProbeStatus { node: n.to_string(), reachable })
            .collect(),
        sinks: sinks.snapshot(),
        pending_destruction: c
            .pending_destruction()
            .iter()
            .map(|p| api::PendingStatus {
                kind: match p.removed {
                    Removed::Retired { .. } => api::PendingKind::Retired,
                    Removed::Disabled { .. } => api::PendingKind::Disabled,
                },
                domain: p.removed.domain(),
                versions: p.removed.ring().versions().collect(),
                removed_unix_ms: p.removed_at.unix_millis(),
                destroy_unix_ms: p.destroy_at.unix_millis(),
            })
            .collect(),
    }
}

/// A peer's last hello, as the status shows it.
fn announced(a: &Announced) -> api::PeerAnnounced {
    match a {
        Announced::Off { .. } => {
            api::PeerAnnounced { role: api::Role::Off, domain: None, master: None, epoch: None }
        }
        Announced::Master { domain, epoch, .. } => api::PeerAnnounced {
            role: api::Role::Master,
            domain: Some(*domain),
            master: None,
            epoch: Some(*epoch),
        },
        Announced::Slave { domain, master, epoch, .. } => api::PeerAnnounced {
            role: api::Role::Slave,
            domain: Some(*domain),
            master: Some(master.clone()),
            epoch: Some(*epoch),
        },
    }
}
