//! Named administrators and their roles, through the `imcrypt` binary against a real daemon (a
//! task of this process, reached over HTTPS): every route for every role (allowed ones
//! succeed, refused ones get 403 naming the roles and change nothing), separation of duties,
//! tokens made and revoked locally and through the API taking effect at the next request, the
//! last admin kept, and refused tokens counted in the metrics.

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use imcrypt::admin::api::Route;
use imcrypt::admin::client::{Client, ClientError, Target};
use imcrypt::admin::roles::{AdminRole, allowed};
use support::*;

const NEW_PASSWORD: &str = "Another-Battery-7-staple";

/// What only these tests ask of the one-cluster fixture (cluster a, encryption off, metrics
/// on).
impl One {
    /// A token for `name` with `role`, made with `--local` on the daemon's host.
    async fn token(&self, name: &str, role: AdminRole) -> String {
        let o = self
            .run(
                None,
                &["admin", "token", "create", "--name", name, "--role", role.as_str(), "--local"],
            )
            .await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let token = o.stdout.trim().to_owned();
        assert_eq!(token.len(), 64, "the token alone on stdout: {}", o.stdout);
        assert!(o.stderr.contains("shown this once"), "{}", o.stderr);
        token
    }

    /// What a refused request must not change: the cluster's state and the tokens.
    async fn fingerprint(&self) -> String {
        let st = self.lab.status("a").await.unwrap();
        let peers: Vec<String> = st.peers.iter().map(|p| p.id.to_string()).collect();
        let tokens = self.run(None, &["admin", "token", "list", "--local", "-o", "json"]).await;
        assert_eq!(tokens.code, 0, "{}", tokens.stderr);
        format!(
            "{} {:?} {:?} {:?} {:?} {:?} {}",
            st.role, st.domain, st.epoch, st.key_versions, st.primary_version, peers, tokens.stdout
        )
    }
}

/// The CLI arguments that call `route` as `role` (names made per role, so that each allowed
/// role's call can succeed); `None` for the one route the CLI has no command for (health).
fn cli_args(
    route: Route,
    role: AdminRole,
    f: &One,
    pw: &str,
    pw2: &str,
    key: &str,
) -> Option<Vec<String>> {
    let peer = format!("z-{role}");
    let node = format!("n-{role}");
    let export = s(&f.dir.path().join(format!("export-{role}.json"))).to_owned();
    let v: Vec<&str> = match route {
        Route::Health => return None,
        Route::Status => vec!["status"],
        Route::Peers => vec!["peers"],
        Route::Alarms => vec!["alarms"],
        Route::Audit => vec!["audit", "list"],
        Route::AddPeer => vec!["peers", "add", &peer, "--address", "127.0.0.1:9"],
        Route::RemovePeer => vec!["peers", "remove", &peer],
        Route::AddNode => vec!["nodes", "add", &node, "--archiver", "none"],
        Route::RemoveNode => vec!["nodes", "remove", &node],
        Route::Enable => vec!["encryption", "enable", "--password-file", pw],
        Route::SetRemote => vec!["encryption", "remote", "on"],
        Route::RotateKey => vec!["key", "rotate"],
        Route::RetireKeys => vec!["key", "retire", "--below", "2", "--password-file", pw],
        Route::RestoreKeys => vec!["key", "restore", "--password-file", pw],
        Route::DownloadKeys => {
            vec!["key", "download", "--public-key", key, "--password-file", pw, "--out", &export]
        }
        Route::ChangePassword => {
            vec!["password", "change", "--old-password-file", pw, "--new-password-file", pw2]
        }
        Route::ListTokens => vec!["admin", "token", "list"],
        Route::CreateToken => {
            vec!["admin", "token", "create", "--name", "made-by-api", "--role", "viewer"]
        }
        Route::RevokeToken => vec!["admin", "token", "revoke", "--name", "made-by-api"],
        Route::Disable => {
            vec!["encryption", "disable", "--password-file", pw2, "--i-understand-data-loss"]
        }
        Route::PeeringToken => vec!["peering", "token", "--for", &peer],
        Route::PeeringList => vec!["peering", "list"],
        Route::PeeringEstablish => vec!["peering", "establish", "imcrypt-peering-v1.x"],
        Route::PeeringDelete => vec!["peering", "delete", &peer],
        Route::Handover => {
            vec!["encryption", "handover", "--to", &peer, "--password-file", pw2]
        }
        Route::Promote => vec!["encryption", "promote", "--password-file", pw2],
    };
    Some(v.into_iter().map(str::to_owned).collect())
}

/// `GET /v1/health` with `token`: its HTTP status.
async fn health(f: &One, token: &str) -> u16 {
    let c = Client::new(Target {
        addr: f.lab.daemon("a").unwrap().admin_addr().to_string(),
        server_name: "a".into(),
        ca: f.lab.dir().join("pki/ca.pem"),
        token: zeroize::Zeroizing::new(token.to_owned()),
    })
    .unwrap();
    match c.send(hyper::Method::GET, "/v1/health", None).await {
        Ok(_) => 200,
        Err(ClientError::Api { status, .. }) => status.as_u16(),
        Err(e) => panic!("health: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_can_call_its_routes_and_is_refused_the_rest_with_nothing_changed() {
    bounded(async {
        let f = One::start().await;
        let mut tokens = Vec::new();
        for role in AdminRole::ALL {
            tokens.push((role, f.token(&format!("the-{role}"), role).await));
        }
        let pw = f.file("pw.txt", PASSWORD);
        let pw2 = f.file("pw2.txt", NEW_PASSWORD);
        let key = openssl_key_pair(f.dir.path(), "custodian", KeyKind::Rsa(2048));
        // An order in which every allowed call can succeed: nodes before encryption is on,
        // the download after the last rotation (retire needs it), restore after retire,
        // disable last.
        let order = [
            Route::Status,
            Route::Peers,
            Route::Alarms,
            Route::Audit,
            Route::AddPeer,
            Route::RemovePeer,
            Route::AddNode,
            Route::RemoveNode,
            Route::Enable,
            Route::Health,
            Route::SetRemote,
            Route::RotateKey,
            Route::DownloadKeys,
            Route::RetireKeys,
            Route::RestoreKeys,
            Route::ChangePassword,
            Route::ListTokens,
            Route::CreateToken,
            Route::RevokeToken,
            Route::PeeringToken,
            Route::PeeringList,
            Route::PeeringEstablish,
            Route::PeeringDelete,
            Route::Handover,
            Route::Promote,
            Route::Disable,
        ];
        let all: BTreeSet<String> = Route::ALL.iter().map(|r| format!("{r:?}")).collect();
        let ordered: BTreeSet<String> = order.iter().map(|r| format!("{r:?}")).collect();
        assert_eq!((order.len(), ordered), (Route::ALL.len(), all), "every route, once");
        for route in order {
            let (refused, permitted): (Vec<_>, Vec<_>) =
                tokens.iter().partition(|(role, _)| !allowed(route).contains(role));
            let before = f.fingerprint().await;
            for (role, token) in &refused {
                let args = cli_args(route, *role, &f, &pw, &pw2, s(&key.public)).unwrap();
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let o = f.run(Some(token), &args).await;
                assert_eq!(o.code, 4, "{route:?} as {role}: {}{}", o.stdout, o.stderr);
                assert!(
                    o.stderr.contains("needs the role")
                        && o.stderr.contains(&format!("has the role {role}")),
                    "{route:?} as {role}: {}",
                    o.stderr
                );
            }
            assert_eq!(f.fingerprint().await, before, "a refused {route:?} changed something");
            for (role, token) in &permitted {
                match cli_args(route, *role, &f, &pw, &pw2, s(&key.public)) {
                    Some(args) => {
                        let args: Vec<&str> = args.iter().map(String::as_str).collect();
                        let o = f.run(Some(token), &args).await;
                        // This one-cluster fixture has no issuer to peer with: past the role
                        // check, an establish is refused as no token (3) and a delete as no
                        // such peering (4), by the route itself; and a lone master has no
                        // slave to hand over to, and cannot be promoted (4).
                        let want = match route {
                            Route::PeeringEstablish => 3,
                            Route::PeeringDelete | Route::Handover | Route::Promote => 4,
                            _ => 0,
                        };
                        assert_eq!(o.code, want, "{route:?} as {role}: {}", o.stderr);
                        assert!(!o.stderr.contains("needs the role"), "{}", o.stderr);
                    }
                    None => assert_eq!(health(&f, token).await, 200, "{route:?} as {role}"),
                }
            }
        }
        // The allowed calls did what they say: both custodians' downloads are there, and the
        // last call turned encryption off.
        for role in [AdminRole::Admin, AdminRole::KeyCustodian] {
            assert!(f.dir.path().join(format!("export-{role}.json")).exists(), "{role}");
        }
        assert_eq!(f.lab.status("a").await.unwrap().role, Role::Off);
        let mut f = f;
        f.lab.stop_all().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_custodian_downloads_but_cannot_disable_and_an_operator_rotates_but_cannot_download()
{
    bounded(async {
        let mut f = One::start().await;
        let custodian = f.token("kim", AdminRole::KeyCustodian).await;
        let operator = f.token("olga", AdminRole::Operator).await;
        let pw = f.file("pw.txt", PASSWORD);
        let o = f.run(None, &["encryption", "enable", "--password-file", &pw]).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let key = openssl_key_pair(f.dir.path(), "kim", KeyKind::Rsa(2048));
        let download = |out: &Path| -> Vec<String> {
            let (public, out) = (s(&key.public), s(out));
            ["key", "download", "--public-key", public, "--password-file", &pw, "--out", out]
                .map(str::to_owned)
                .to_vec()
        };

        let op_rotate = f.run(Some(&operator), &["key", "rotate"]).await;
        assert_eq!(op_rotate.code, 0, "{}", op_rotate.stderr);
        let op_out = f.dir.path().join("olga.json");
        let args = download(&op_out);
        let o = f.run(Some(&operator), &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
        assert_eq!(o.code, 4, "{}", o.stderr);
        assert!(o.stderr.contains("needs the role admin or key-custodian"), "{}", o.stderr);
        assert!(!op_out.exists(), "a refused download writes nothing");

        let kim_out = f.dir.path().join("kim.json");
        let args = download(&kim_out);
        let o = f.run(Some(&custodian), &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let export: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&kim_out).unwrap()).unwrap();
        assert_eq!(export["keys"].as_array().unwrap().len(), 2, "both versions: {export}");
        let o = f
            .run(
                Some(&custodian),
                &["encryption", "disable", "--password-file", &pw, "--i-understand-data-loss"],
            )
            .await;
        assert_eq!(o.code, 4, "{}", o.stderr);
        assert!(o.stderr.contains("has the role key-custodian"), "{}", o.stderr);
        assert_eq!(f.lab.status("a").await.unwrap().role, Role::Master, "still encrypting");
        let o = f.run(Some(&custodian), &["status"]).await;
        assert_eq!(o.code, 4, "key download only: {}", o.stderr);

        // The audit trail names who did what, a refusal for a role included.
        let o = f.run(None, &["audit", "show", "--action", "key.download", "-o", "json"]).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let shown: Vec<serde_json::Value> =
            o.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let who = |e: &serde_json::Value| {
            format!("{} {} {}", e["actor"]["name"], e["actor"]["role"], e["result"])
        };
        let shown: Vec<String> = shown.iter().map(who).collect();
        assert_eq!(
            shown,
            ["\"olga\" \"operator\" \"refused\"", "\"kim\" \"key-custodian\" \"ok\""],
            "{}",
            o.stdout
        );
        f.lab.stop_all().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_at_its_next_request_and_refused_tokens_are_counted() {
    bounded(async {
        let mut f = One::start().await;
        let revoked = "imcrypt_admin_token_refusals_total{reason=\"revoked\"}";
        let unknown = "imcrypt_admin_token_refusals_total{reason=\"unknown\"}";
        assert_eq!((f.metric(revoked).await, f.metric(unknown).await), (0.0, 0.0));

        // Made and revoked on the host while the daemon runs.
        let alice = f.token("alice", AdminRole::Viewer).await;
        assert_eq!(f.run(Some(&alice), &["status"]).await.code, 0);
        let o = f.run(None, &["admin", "token", "revoke", "--name", "alice", "--local"]).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let o = f.run(Some(&alice), &["status"]).await;
        assert_eq!(o.code, 5, "refused at once: {}", o.stderr);
        assert_eq!(f.metric(revoked).await, 1.0);
        // The answer is that of any wrong token; the audit names whose token it was.
        let o = f.run(None, &["audit", "show", "--actor", "anonymous", "-o", "json"]).await;
        assert!(o.stdout.contains(r#""revoked":"alice""#), "{}", o.stdout);

        // Made and revoked through the API by the first admin (the config's token file).
        let o = f
            .run(
                None,
                &["admin", "token", "create", "--name", "bob", "--role", "operator", "-o", "json"],
            )
            .await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let made: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!((made["name"].as_str(), made["role"].as_str()), (Some("bob"), Some("operator")));
        let bob = made["token"].as_str().unwrap().to_owned();
        assert_eq!(f.run(Some(&bob), &["key", "rotate"]).await.code, 4, "encryption is off");
        assert_eq!(f.run(Some(&bob), &["peers"]).await.code, 0);
        let o = f.run(None, &["admin", "token", "list"]).await;
        assert!(o.stdout.contains("bob") && o.stdout.contains("operator"), "{}", o.stdout);
        assert!(!o.stdout.contains(&bob), "a list never shows a token");
        let o = f.run(None, &["admin", "token", "revoke", "--name", "bob"]).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert_eq!(f.run(Some(&bob), &["peers"]).await.code, 5);
        assert_eq!(f.metric(revoked).await, 2.0);
        // Every change is in the audit trail: those through the API by the administrator who
        // made them, those made on the host as `local`, with how.
        let o = f.run(None, &["audit", "show", "--action", "token.", "-o", "json"]).await;
        let shown: Vec<String> = (o.stdout.lines())
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|e| {
                let who = &e["actor"]["name"];
                let who = if who.is_null() { &e["details"]["via"] } else { who };
                format!("{} {} {} {}", e["action"], who, e["target"], e["result"])
            })
            .collect();
        assert_eq!(
            shown,
            [
                "\"token.create\" \"imcrypt admin token --local\" \"alice\" \"ok\"",
                "\"token.revoke\" \"imcrypt admin token --local\" \"alice\" \"ok\"",
                "\"token.create\" \"admin\" \"bob\" \"ok\"",
                "\"token.revoke\" \"admin\" \"bob\" \"ok\""
            ],
            "{}",
            o.stdout
        );

        // A wrong token: 401 and counted apart.
        assert_eq!(f.run(Some(&"0".repeat(64)), &["status"]).await.code, 5);
        assert_eq!(f.metric(unknown).await, 1.0);

        // A bad name and a taken one are refused saying why; the last admin stays.
        let o =
            f.run(None, &["admin", "token", "create", "--name", "a b", "--role", "viewer"]).await;
        assert_eq!(o.code, 3, "{}", o.stderr);
        assert!(o.stderr.contains("letters, digits"), "{}", o.stderr);
        let o = f
            .run(
                None,
                &["admin", "token", "create", "--name", "admin", "--role", "viewer", "--local"],
            )
            .await;
        assert_eq!(o.code, 4, "{}", o.stderr);
        assert!(o.stderr.contains("already has a token"), "{}", o.stderr);
        for local in [false, true] {
            let mut args = vec!["admin", "token", "revoke", "--name", "admin"];
            if local {
                args.push("--local");
            }
            let o = f.run(None, &args).await;
            assert_eq!(o.code, 4, "{}", o.stderr);
            assert!(o.stderr.contains("last administrator with the role admin"), "{}", o.stderr);
        }
        assert_eq!(f.run(None, &["status"]).await.code, 0, "the first admin still works");
        f.lab.stop_all().await;
    })
    .await;
}

/// Requests without a valid token are each refused and counted, but recorded once per source,
/// action and error code a minute, the next record carrying how many were only counted: a
/// client without a token cannot make the audit trail grow without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_without_a_valid_token_is_counted_in_full_and_recorded_once() {
    bounded(async {
        let mut f = One::start().await;
        let wrong = "0".repeat(64);
        for _ in 0..12 {
            assert_eq!(f.run(Some(&wrong), &["key", "rotate"]).await.code, 5);
        }
        let unknown = "imcrypt_admin_token_refusals_total{reason=\"unknown\"}";
        assert_eq!(f.metric(unknown).await, 12.0);
        let o = f.run(None, &["audit", "show", "--actor", "anonymous", "-o", "json"]).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let records: Vec<serde_json::Value> =
            o.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(records.len(), 1, "{}", o.stdout);
        assert_eq!(records[0]["action"], "key.rotate");
        assert_eq!(records[0]["details"]["code"], "wrong_token");
        f.lab.stop_all().await;
    })
    .await;
}

/// A fresh install makes the token file and imports it as the first admin; an upgrade (a state
/// directory an earlier release left: node key, state, token file, no token store) imports the
/// same token file, logging one line saying so, and the token keeps working; later starts
/// import nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_file_becomes_the_first_admin_at_install_and_upgrade_with_one_log_line() {
    bounded(async {
        let (dir, lab) = mesh(&["a"]);
        let cfg = lab.write_config(&imcrypt::ids::ClusterId::new("a").unwrap()).unwrap();
        let c = s(&cfg).to_owned();
        let state = dir.path().join("state/a");
        let imported = "is now the administrator \"admin\" with the role admin";
        let log = |n: u32| dir.path().join(format!("serve-{n}.log"));

        let mut daemon = support::process::Serve::start(&cfg, &log(1), None);
        let first = daemon.log_text();
        assert!(first.contains("created admin token file"), "{first}");
        assert_eq!(first.matches(imported).count(), 1, "{first}");
        let token = std::fs::read_to_string(state.join("admin.token")).unwrap();
        let env = [("IMCRYPT_TOKEN", token.trim())];
        let run = |args: &'static [&'static str]| {
            let c = c.clone();
            async move {
                let args = [args, &["-c", &c]].concat();
                imcrypt_with(Run { dir: None, env: &env }, &args, "").await
            }
        };
        assert_eq!(run(&["status"]).await.code, 0);

        // As an earlier release left it: no token store.
        std::fs::remove_file(state.join(imcrypt::admin::tokens::FILE_NAME)).unwrap();
        // Listing on the host only reads: it says the store is missing and makes none.
        let list = run(&["admin", "token", "list", "--local"]).await;
        assert_eq!(list.code, 1, "{}", list.stderr);
        assert!(list.stderr.contains("is missing"), "{}", list.stderr);
        assert!(!state.join(imcrypt::admin::tokens::FILE_NAME).exists());
        daemon.restart(&log(2));
        let second = daemon.log_text();
        assert!(!second.contains("created admin token file"), "{second}");
        assert_eq!(second.matches(imported).count(), 1, "{second}");
        assert_eq!(run(&["status"]).await.code, 0, "the token of the earlier release works");
        let list = run(&["admin", "token", "list", "-o", "json"]).await;
        let list: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
        assert_eq!(list["tokens"].as_array().unwrap().len(), 1, "{list}");
        assert_eq!(
            (list["tokens"][0]["name"].as_str(), list["tokens"][0]["role"].as_str()),
            (Some("admin"), Some("admin"))
        );

        daemon.restart(&log(3));
        assert_eq!(daemon.log_text().matches(imported).count(), 0, "imported once");
        assert_eq!(run(&["status"]).await.code, 0);
        drop(daemon);
    })
    .await;
}
