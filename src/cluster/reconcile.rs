//! Reconcile: the configuration file is the source of truth for a cluster's nodes and peers at
//! every start, and [`Cluster::reconcile`] brings the persisted state in line with it.
//!
//! Invariants:
//! - each change runs as its own command, with the command's rules: a change the machine
//!   refuses (a node added while encryption is on) is returned as a [`Refusal`] with its
//!   reason and leaves the state as it was, and the other changes still apply;
//! - nodes are reconciled before peers, so the first hello to a newly added peer already says
//!   whether this cluster is eligible (instead of a transient "no nodes");
//! - every configured peer ends with its link up at its configured address; reconciling the
//!   same configuration twice changes nothing and emits nothing;
//! - a peer learnt by a peering token is not removed for being absent from the file, and its
//!   link comes up at its learnt address unless the file names it (the file wins).

use std::fmt;

use crate::ids::ClusterId;

use super::command::CommandError;
use super::machine::Cluster;
use super::state::{ComplianceDb, NodeId, Time};

/// The nodes and peers the configuration file names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Wanted {
    /// Each node with its archiver database (`None`: no archiver configured).
    pub(crate) nodes: Vec<(NodeId, Option<ComplianceDb>)>,
    /// Each peer with the `host:port` of its intercluster listener.
    pub(crate) peers: Vec<(ClusterId, String)>,
}

/// A change of the configuration that the machine refused, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The change in the operator's terms, e.g. "add node n3".
    pub(crate) change: String,
    pub(crate) reason: CommandError,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} refused: {}", self.change, self.reason)
    }
}

impl Cluster {
    /// Input: the configuration file's nodes and peers (at start). Returns the changes that
    /// were refused; everything else now matches `wanted`.
    pub(crate) fn reconcile(&mut self, wanted: &Wanted, now: Time) -> Vec<Refusal> {
        self.configured = wanted.peers.iter().map(|(p, _)| p.clone()).collect();
        let mut refused = Vec::new();
        let mut apply =
            |c: &mut Self, change: String, f: &dyn Fn(&mut Self) -> Result<(), CommandError>| {
                if let Err(reason) = c.transaction(f) {
                    refused.push(Refusal { change, reason });
                }
            };
        for (node, archiver) in &wanted.nodes {
            match self.state().nodes.get(node) {
                None => apply(self, format!("add node {node}"), &|c| {
                    c.add_node(node.clone(), archiver.clone())
                }),
                Some(a) if a != archiver => {
                    let change = match archiver {
                        Some(db) => format!("set the archiver of node {node} to {db}"),
                        None => format!("remove the archiver of node {node}"),
                    };
                    apply(self, change, &|c| c.set_archiver(node.clone(), archiver.clone()))
                }
                Some(_) => {}
            }
        }
        let gone: Vec<NodeId> = (self.state().nodes.keys())
            .filter(|n| wanted.nodes.iter().all(|(w, _)| w != *n))
            .cloned()
            .collect();
        for node in gone {
            apply(self, format!("remove node {node}"), &|c| c.remove_node(&node));
        }
        // Peers learnt by token are not the configuration's to remove.
        let gone: Vec<ClusterId> = (self.state().peers.iter())
            .filter(|p| !self.configured.contains(*p))
            .filter(|p| !self.state().learnt_peers.contains_key(*p))
            .cloned()
            .collect();
        for peer in gone {
            apply(self, format!("remove peer {peer}"), &|c| c.remove_peer(&peer));
        }
        let mut known = Vec::new();
        for (peer, address) in &wanted.peers {
            if self.state().peers.contains(peer) {
                known.push((peer, address));
            } else {
                apply(self, format!("add peer {peer} at {address}"), &|c| {
                    c.add_peer(peer.clone(), address.clone(), now)
                });
            }
        }
        for (peer, address) in known {
            self.set_peer_address(peer, address);
        }
        // A learnt peer the configuration does not name keeps the address it gave.
        let learnt: Vec<(ClusterId, String)> = (self.state().learnt_peers.iter())
            .filter(|(p, _)| !self.configured.contains(*p))
            .map(|(p, l)| (p.clone(), l.address.clone()))
            .collect();
        for (peer, address) in &learnt {
            self.set_peer_address(peer, address);
        }
        self.finish(now);
        refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{ClusterConfig, Command, Effect, Entropy, Role};
    use crate::crypto::password::Password;

    fn id(s: &str) -> ClusterId {
        ClusterId::new(s).unwrap()
    }

    fn node(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn links(c: &mut Cluster) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(e) = c.poll_effect() {
            match e {
                Effect::LinkUp { peer, address } => out.push(format!("up {peer} {address}")),
                Effect::LinkDown { peer } => out.push(format!("down {peer}")),
                _ => {}
            }
        }
        out
    }

    fn wanted(nodes: &[(&str, Option<ComplianceDb>)], peers: &[(&str, &str)]) -> Wanted {
        Wanted {
            nodes: nodes.iter().map(|(n, db)| (node(n), db.clone())).collect(),
            peers: peers.iter().map(|(p, a)| (id(p), a.to_string())).collect(),
        }
    }

    #[test]
    fn the_configuration_decides_nodes_and_peers_and_every_configured_peer_gets_a_link() {
        let mut c = Cluster::fresh(ClusterConfig::new(id("a")), Time(1));
        let pg = Some(ComplianceDb::PostgreSql);
        let w = wanted(&[("n1", pg.clone())], &[("b", "127.0.0.1:7102")]);
        assert!(c.reconcile(&w, Time(2)).is_empty());
        assert_eq!(links(&mut c), ["up b 127.0.0.1:7102"]);
        assert!(c.eligibility().is_eligible());

        // The same configuration again: nothing to do.
        assert!(c.reconcile(&w, Time(3)).is_empty());
        assert_eq!(links(&mut c), Vec::<String>::new());

        // A restart from the persisted state: the peer is known, but its link is brought up.
        let state = c.state().clone();
        let mut c = Cluster::new(ClusterConfig::new(id("a")), state, Time(4)).unwrap();
        assert!(c.reconcile(&w, Time(5)).is_empty());
        assert_eq!(links(&mut c), ["up b 127.0.0.1:7102"]);

        // Peer b leaves the file, c comes in; node n2 is added with no archiver.
        let w = wanted(&[("n1", pg), ("n2", None)], &[("c", "127.0.0.1:7103")]);
        assert!(c.reconcile(&w, Time(6)).is_empty());
        assert_eq!(links(&mut c), ["down b", "up c 127.0.0.1:7103"]);
        assert_eq!(c.state().nodes.len(), 2);
        assert!(!c.eligibility().is_eligible(), "n2 has no archiver");
    }

    /// The links and hellos among `c`'s effects, in order.
    fn links_and_hellos(c: &mut Cluster) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(e) = c.poll_effect() {
            match e {
                Effect::LinkUp { peer, .. } => out.push(format!("up {peer}")),
                Effect::Send { to, msg: crate::cluster::PeerMessage::Hello(h) } => {
                    out.push(format!("hello {to} want_reply={}", h.want_reply))
                }
                _ => {}
            }
        }
        out
    }

    #[test]
    fn after_a_restart_each_peer_gets_its_hello_as_soon_as_its_link_is_up_and_not_before() {
        let mut c = Cluster::fresh(ClusterConfig::new(id("a")), Time(1));
        let w = wanted(&[], &[("b", "127.0.0.1:7102"), ("c", "127.0.0.1:7103")]);
        assert!(c.reconcile(&w, Time(2)).is_empty());
        links_and_hellos(&mut c);

        let state = c.state().clone();
        let mut c = Cluster::new(ClusterConfig::new(id("a")), state, Time(3)).unwrap();
        // No link exists yet: a hello now would have no way out.
        assert_eq!(links_and_hellos(&mut c), Vec::<String>::new());
        assert!(c.reconcile(&w, Time(4)).is_empty());
        assert_eq!(
            links_and_hellos(&mut c),
            ["up b", "hello b want_reply=true", "up c", "hello c want_reply=true"]
        );
    }

    #[test]
    fn a_refused_change_is_reported_and_the_others_still_apply() {
        let mut c = Cluster::fresh(ClusterConfig::new(id("a")), Time(1));
        let pg = Some(ComplianceDb::PostgreSql);
        c.reconcile(&wanted(&[("n1", pg.clone())], &[]), Time(2));
        let enable =
            Command::Enable { password: Password::new("Correct-Horse-9-battery"), remote: false };
        c.handle_command(enable, Time(3), Entropy::from_seed(1)).unwrap();
        assert!(matches!(c.role(), Role::Master(_)));

        let w = wanted(&[("n1", pg.clone()), ("n2", pg)], &[("a", "127.0.0.1:1"), ("b", "x")]);
        let refused = c.reconcile(&w, Time(4));
        let texts: Vec<String> = refused.iter().map(Refusal::to_string).collect();
        assert_eq!(texts.len(), 3, "{texts:?}");
        assert!(texts[0].starts_with("add node n2 refused: a node cannot be added"), "{texts:?}");
        assert!(texts[1].starts_with("add peer a at 127.0.0.1:1 refused: a cluster cannot"));
        assert!(texts[2].contains("peer address \"x\" must be host:port"), "{texts:?}");
        assert_eq!(c.state().nodes.len(), 1, "n2 was not added");
        assert!(c.state().peers.is_empty());
        assert!(matches!(c.role(), Role::Master(_)), "encryption stays on");
    }
}
