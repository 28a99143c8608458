//! The daemon's compliance-database probe as an input of the state machine.
//!
//! The daemon connects to each node's configured archiver database now and then and reports
//! what it found with [`Cluster::handle_db_probe`]. The machine decides what follows:
//! eligibility (a node whose database is unreachable, or is not the kind configured, makes the
//! cluster not eligible, announced in the next hello) and the `MAcomplianceDbDown` alarm
//! (active exactly while some node's last probe failed).
//!
//! Invariants: a probe changes no persisted state (probes are forgotten at restart and taken
//! again); a node that was never probed is judged by its configuration alone; a probe of a
//! node that is not (or no longer) one of the cluster's nodes is ignored.

use std::collections::{BTreeMap, BTreeSet};

use crate::alarm::{Alarm, AlarmName};
use crate::ids::ClusterId;

use super::machine::Cluster;
use super::state::{ComplianceDb, NodeId, Time};

/// What one probe of a node's compliance database found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DbProbe {
    /// The database answered and says it is of this kind.
    Reachable { kind: ComplianceDb },
    /// It could not be reached (or did not answer), and why.
    Unreachable { reason: String },
}

/// The last probe of each node's database, owned by the [`Cluster`]. Only nodes of the
/// cluster are kept.
#[derive(Clone, Debug, Default)]
pub(crate) struct DbProbes(BTreeMap<NodeId, DbProbe>);

impl DbProbes {
    /// Records `probe` of `node` and forgets probes of nodes that are no longer in `nodes`.
    fn record<'a>(
        &mut self,
        node: &NodeId,
        probe: DbProbe,
        nodes: impl Iterator<Item = &'a NodeId>,
    ) {
        let nodes: BTreeSet<&NodeId> = nodes.collect();
        if nodes.contains(node) {
            self.0.insert(node.clone(), probe);
        }
        self.0.retain(|n, _| nodes.contains(n));
    }

    /// Each probed node and whether its database answered as the kind configured or at all
    /// (`true`: reachable), for the status and the metrics.
    pub(crate) fn reachability(&self) -> impl Iterator<Item = (&NodeId, bool)> {
        self.0.iter().map(|(n, p)| (n, matches!(p, DbProbe::Reachable { .. })))
    }

    /// Forgets `node` (it was removed from the cluster).
    pub(super) fn forget(&mut self, node: &NodeId) {
        self.0.remove(node);
    }

    /// Why the probe of `node` (configured for `configured`) makes this cluster not eligible.
    pub(super) fn not_eligible_reason(
        &self,
        node: &NodeId,
        configured: &ComplianceDb,
    ) -> Option<String> {
        match self.0.get(node)? {
            DbProbe::Unreachable { reason } => {
                Some(format!("the compliance database of node {node} is unreachable ({reason})"))
            }
            DbProbe::Reachable { kind } if kind != configured => Some(format!(
                "node {node} is configured to archive to {configured}, but its database is {kind}"
            )),
            DbProbe::Reachable { .. } => None,
        }
    }

    /// `MAcomplianceDbDown` about cluster `about` while some node's last probe failed.
    pub(super) fn down_alarm(&self, about: &ClusterId) -> Option<Alarm> {
        let down: Vec<String> = self
            .0
            .iter()
            .filter_map(|(n, p)| match p {
                DbProbe::Unreachable { reason } => Some(format!("node {n}: {reason}")),
                DbProbe::Reachable { .. } => None,
            })
            .collect();
        if down.is_empty() {
            return None;
        }
        Some(Alarm::new(
            AlarmName::ComplianceDbDown,
            about.clone(),
            format!(
                "the connection to the compliance database is lost ({}); messages cannot be \
                 archived there, and the cluster is not eligible for encryption meanwhile",
                down.join("; ")
            ),
            "check that the database server runs and is reachable from the node, and the \
             credentials in [[nodes]] db; cleared by the first successful probe",
        ))
    }
}

impl Cluster {
    /// Input: the latest probe of `node`'s compliance database. A probe of a node that is not
    /// one of the cluster's is ignored.
    pub(crate) fn handle_db_probe(&mut self, node: &NodeId, probe: DbProbe, now: Time) {
        self.db_probes.record(node, probe, self.state.nodes.keys());
        self.finish(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarm::AlarmChange;
    use crate::cluster::message::Eligibility;
    use crate::cluster::{ClusterConfig, Command, Effect, Entropy};
    use crate::ids::ClusterId;

    fn alarms(c: &mut Cluster) -> (Vec<AlarmName>, Vec<AlarmName>) {
        let (mut raised, mut cleared) = (Vec::new(), Vec::new());
        while let Some(e) = c.poll_effect() {
            match e {
                Effect::Alarm(AlarmChange::Raise(a)) => raised.push(a.name()),
                Effect::Alarm(AlarmChange::Clear(k)) => cleared.push(k.name),
                _ => {}
            }
        }
        (raised, cleared)
    }

    #[test]
    fn a_lost_database_raises_the_alarm_and_makes_the_cluster_not_eligible_until_it_is_back() {
        let id = ClusterId::new("a").unwrap();
        let mut c = Cluster::fresh(ClusterConfig::new(id.clone()), Time(1));
        let n1 = NodeId::new("n1").unwrap();
        let add = Command::AddNode { node: n1.clone(), archiver: Some(ComplianceDb::PostgreSql) };
        c.handle_command(add, Time(2), Entropy::from_os()).unwrap();
        alarms(&mut c);
        assert!(c.eligibility().is_eligible(), "never probed: judged by its configuration");

        let down = DbProbe::Unreachable { reason: "connection refused".into() };
        c.handle_db_probe(&n1, down.clone(), Time(3));
        assert_eq!(alarms(&mut c).0, [AlarmName::ComplianceDbDown]);
        let a = c.alarms().get(AlarmName::ComplianceDbDown, &id).unwrap();
        assert!(a.cause.contains("node n1: connection refused"), "{}", a.cause);
        let Eligibility::NotEligible { reason } = c.eligibility() else { panic!() };
        assert!(reason.contains("unreachable"), "{reason}");
        c.handle_db_probe(&n1, down, Time(4));
        assert_eq!(alarms(&mut c), (vec![], vec![]), "raised once");

        c.handle_db_probe(&n1, DbProbe::Reachable { kind: ComplianceDb::PostgreSql }, Time(5));
        assert_eq!(alarms(&mut c).1, [AlarmName::ComplianceDbDown]);
        assert!(c.eligibility().is_eligible());

        c.handle_db_probe(&n1, DbProbe::Reachable { kind: ComplianceDb::SqlServer }, Time(6));
        let Eligibility::NotEligible { reason } = c.eligibility() else { panic!() };
        assert!(reason.contains("configured to archive to PostgreSQL"), "{reason}");
        let ghost = NodeId::new("ghost").unwrap();
        c.handle_db_probe(&ghost, DbProbe::Unreachable { reason: "x".into() }, Time(7));
        assert!(!c.alarms().is_active(AlarmName::ComplianceDbDown, &id));
    }
}
