//! The compliance-database probe loop: it only looks and reports; the state machine decides
//! what a probe means (eligibility, `MAcomplianceDbDown`, in `cluster::dbprobe`).

use crate::archive::ProbeResult;
use crate::cluster::DbProbe;
use crate::config::Config;

use super::Control;

/// Probes each node's configured compliance database (kind and reachability) every
/// `db_probe.interval` and hands the results to the core. Ends when the core has stopped.
pub(super) async fn probe_databases(config: Config, core: Control) {
    let nodes: Vec<_> =
        config.nodes.iter().filter_map(|n| Some((n.id.clone(), n.db.clone()?))).collect();
    loop {
        for (node, url) in &nodes {
            let probe = match crate::archive::probe(url).await {
                ProbeResult::Reachable { kind, version } => {
                    tracing::debug!(%node, db = %url, %version, "compliance database reachable");
                    DbProbe::Reachable { kind }
                }
                ProbeResult::Unreachable { reason } => DbProbe::Unreachable { reason },
            };
            if core.db_probe(node.clone(), probe).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(config.db_probe.interval).await;
    }
}
