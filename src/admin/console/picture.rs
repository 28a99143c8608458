//! The domain at a glance: an SVG picture of this cluster and its peers, drawn from the
//! status alone, so it shows what the API shows and nothing it does not.
//!
//! Invariants: every value comes from [`api::Status`] and is escaped by maud; each cluster
//! is a `g.node` with `data-cluster` and `data-role` (what the browser tests read), each link a
//! `line.link` with `data-peer`; a peer's role is what its last hello said (`announced`), and
//! where nothing was heard it says so rather than guess. No inline style (the console's CSP
//! forbids it): the look is console.css's classes.

use maud::{Markup, html};

use crate::admin::api::{PeerStatus, Role, Status};
use crate::cluster::PeerRelation;

const WIDTH: u32 = 760;
const BOX_W: u32 = 172;
const BOX_H: u32 = 86;
const PER_ROW: usize = 4;

/// One box: its lines of text, its role, whether something is wrong with it.
struct Node<'a> {
    id: &'a str,
    role: String,
    lines: [String; 3],
    conflict: bool,
    alarms: Vec<String>,
}

fn versions(v: &[crate::ids::KeyVersion]) -> String {
    v.iter().map(|v| format!("v{v}")).collect::<Vec<_>>().join(" ")
}

fn this_cluster(s: &Status) -> Node<'_> {
    let role = match (s.role, &s.master) {
        (Role::Slave, Some(m)) => format!("slave of {m}"),
        (r, _) => r.to_string(),
    };
    let epoch = match (s.epoch, s.term) {
        (Some(e), Some(t)) => format!("epoch {e} · term {t}"),
        (Some(e), None) => format!("epoch {e}"),
        _ => "not encrypting".into(),
    };
    let keys = match s.primary_version {
        Some(p) => format!("keys {} (primary v{p})", versions(&s.key_versions)),
        None => "no keys".into(),
    };
    let about_self = s.alarms.iter().filter(|a| a.key.about == s.cluster);
    Node {
        id: s.cluster.as_str(),
        role,
        lines: [epoch, keys, "this cluster".into()],
        conflict: false,
        alarms: about_self.map(|a| a.key.name.to_string()).collect(),
    }
}

fn peer<'a>(s: &Status, p: &'a PeerStatus) -> Node<'a> {
    let (role, epoch) = match &p.announced {
        None => ("not heard from".to_owned(), "epoch unknown".to_owned()),
        Some(a) => {
            let role = match (&a.role, &a.master) {
                (Role::Slave, Some(m)) => format!("slave of {m}"),
                (r, _) => r.to_string(),
            };
            let epoch = a.epoch.map_or("not encrypting".into(), |e| format!("epoch {e}"));
            (role, epoch)
        }
    };
    let keys = match &p.relation {
        PeerRelation::OurSlave { in_sync: true, .. } => "keys as this master's".to_owned(),
        PeerRelation::OurSlave { in_sync: false, .. } => "keys behind, syncing".to_owned(),
        PeerRelation::OurMaster => "this cluster's keys come from it".to_owned(),
        PeerRelation::SameDomain => "keys of the same domain".to_owned(),
        PeerRelation::Conflict { .. } => "another domain: no keys shared".to_owned(),
        PeerRelation::NotEnrolled { .. } | PeerRelation::Unrelated | PeerRelation::NotHeardFrom => {
            "no keys shared".to_owned()
        }
    };
    Node {
        id: p.id.as_str(),
        role,
        lines: [epoch, keys, p.relation.to_string()],
        conflict: matches!(p.relation, PeerRelation::Conflict { .. }),
        alarms: s
            .alarms
            .iter()
            .filter(|a| a.key.about == p.id)
            .map(|a| a.key.name.to_string())
            .collect(),
    }
}

/// The role word a test or a style keys on: `master`, `slave`, `off` or `unknown`.
fn role_class(role: &str) -> &'static str {
    if role.starts_with("master") {
        "master"
    } else if role.starts_with("slave") {
        "slave"
    } else if role == "off" {
        "off"
    } else {
        "unknown"
    }
}

fn draw(n: &Node, x: u32, y: u32) -> Markup {
    let class = format!(
        "node role-{}{}{}",
        role_class(&n.role),
        if n.conflict { " conflict" } else { "" },
        if n.alarms.is_empty() { "" } else { " alarmed" }
    );
    let short = |t: &str| -> String {
        if t.chars().count() > 26 { t.chars().take(25).chain(['…']).collect() } else { t.into() }
    };
    html! {
        g class=(class) data-cluster=(n.id) data-role=(role_class(&n.role)) {
            title { (n.id) ": " (n.role) "; " (n.lines.join("; ")) }
            rect x=(x) y=(y) width=(BOX_W) height=(BOX_H) rx="8" {}
            text class="id" x=(x + 10) y=(y + 20) { (n.id) }
            text class="role" x=(x + BOX_W - 10) y=(y + 20) text-anchor="end" { (short(&n.role)) }
            @for (i, line) in n.lines.iter().enumerate() {
                text x=(x + 10) y=(y + 40 + 15 * i as u32) { (short(line)) }
            }
            @for (i, name) in n.alarms.iter().enumerate() {
                text class="alarm" x=(x + 10) y=(y + BOX_H + 16 + 14 * i as u32) { "⚠ " (name) }
            }
        }
    }
}

/// The picture of `s`: this cluster on top, its peers in rows below, a line to each whose
/// look says the link's state (connected or not) and whether the peering is a conflict.
pub(super) fn domain(s: &Status) -> Markup {
    let rows = s.peers.len().div_ceil(PER_ROW).max(1) as u32;
    let height = 150 + rows * 150;
    let me = this_cluster(s);
    let (mx, my) = (WIDTH / 2 - BOX_W / 2, 16);
    html! {
        svg xmlns="http://www.w3.org/2000/svg" class="domain" viewBox=(format!("0 0 {WIDTH} {height}"))
            role="img" aria-label=(format!("cluster {} and its {} peers", s.cluster, s.peers.len())) {
            @for (i, p) in s.peers.iter().enumerate() {
                @let (x, y) = place(i, s.peers.len());
                @let class = format!(
                    "link {}{}",
                    if p.link.connected { "up" } else { "down" },
                    if matches!(p.relation, PeerRelation::Conflict { .. }) { " conflict" } else { "" }
                );
                line class=(class) data-peer=(p.id.as_str()) x1=(WIDTH / 2) y1=(my + BOX_H)
                    x2=(x + BOX_W / 2) y2=(y) {}
            }
            (draw(&me, mx, my))
            @for (i, p) in s.peers.iter().enumerate() {
                @let (x, y) = place(i, s.peers.len());
                (draw(&peer(s, p), x, y))
            }
            @if s.peers.is_empty() {
                text class="note" x=(WIDTH / 2) y=(my + BOX_H + 60) text-anchor="middle" {
                    "no peers: add one under Peers and nodes"
                }
            }
        }
    }
}

/// Where peer `i` of `n` goes: rows of [`PER_ROW`], each row centred.
fn place(i: usize, n: usize) -> (u32, u32) {
    let row = i / PER_ROW;
    let in_row = (n - row * PER_ROW).min(PER_ROW) as u32;
    let col = (i % PER_ROW) as u32;
    let gap = 14;
    let row_w = in_row * BOX_W + (in_row - 1) * gap;
    let x0 = (WIDTH - row_w) / 2;
    (x0 + col * (BOX_W + gap), 190 + row as u32 * 150)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_placed_in_centred_rows_inside_the_picture() {
        for n in 1..=9 {
            for i in 0..n {
                let (x, _) = place(i, n);
                assert!(x + BOX_W <= WIDTH, "peer {i} of {n} at x {x} leaves the picture");
            }
        }
        assert_eq!(place(0, 1).0, WIDTH / 2 - BOX_W / 2, "a single peer is centred");
        assert_eq!(place(4, 5).1, place(0, 5).1 + 150, "the fifth peer starts a new row");
    }
}
