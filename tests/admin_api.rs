//! The admin API over HTTPS against real daemons (tasks of this process): token checks, body
//! limits, public-key validation before the password, key download only on the master, the
//! password rate limit with its lockout, and that none of these refusals changes anything.
//! docs/admin-api.yaml is compared with the server's route table here too.

mod support;

use std::collections::BTreeSet;

use hyper::{Method, StatusCode};
use imcrypt::admin::api::Route;
use imcrypt::admin::client::{Client, ClientError, Target};
use support::*;
use zeroize::Zeroizing;

fn target(lab: &Lab, id: &str, token: Option<&str>) -> Target {
    let token = match token {
        Some(t) => t.to_owned(),
        None => std::fs::read_to_string(lab.dir().join(format!("state/{id}/admin.token")))
            .unwrap()
            .trim()
            .to_owned(),
    };
    Target {
        addr: lab.daemon(id).unwrap().admin_addr().to_string(),
        server_name: id.to_owned(),
        ca: lab.dir().join("pki/ca.pem"),
        token: Zeroizing::new(token),
    }
}

fn client(lab: &Lab, id: &str) -> Client {
    Client::new(target(lab, id, None)).unwrap()
}

/// (status, code, message, retry after) of an error answer.
type Refusal = (StatusCode, String, String, Option<u64>);

fn refused(r: Result<bytes::Bytes, ClientError>) -> Refusal {
    match r {
        Err(ClientError::Api { status, code, message, retry_after }) => {
            (status, code, message, retry_after)
        }
        other => panic!("expected an error answer, got {other:?}"),
    }
}

/// Sends `head` and `body` over TLS as they are and returns what the daemon answers.
async fn raw(t: &Target, head: &str, body: &[u8]) -> String {
    raw_paused(t, head, std::time::Duration::ZERO, body).await
}

/// Whether the first answer in `answers` says `Connection: close` (hyper writes header names
/// in lower case).
fn says_close(answers: &str) -> bool {
    let head = answers.split("\r\n\r\n").next().unwrap_or_default();
    head.lines().any(|l| l.eq_ignore_ascii_case("connection: close"))
}

/// Like [`raw`], with `rest` sent `pause` after `head`, in a write of its own: the way a client
/// whose body (and next request) comes late looks to the daemon.
async fn raw_paused(t: &Target, head: &str, pause: std::time::Duration, rest: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cfg = tls_client_trusting(&t.ca);
    let tcp = tokio::net::TcpStream::connect(&t.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(t.server_name.clone()).unwrap();
    let mut s = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.flush().await.unwrap();
    tokio::time::sleep(pause).await;
    // The daemon may answer and close before it has read the body.
    let _ = s.write_all(rest).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn download_body(password: &str, pem: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "password": password, "public_key_pem": pem })).unwrap()
}

/// What must not change when a request is refused.
fn fingerprint(s: &Status) -> String {
    format!("{} {:?} {:?} {:?} {:?}", s.role, s.domain, s.epoch, s.key_versions, s.primary_version)
}

/// Clusters a and b, running; a is the master with remote enabling, b its slave. Every test
/// below sends requests that must be refused, and ends with [`MasterAndSlave::unchanged`].
struct MasterAndSlave {
    dir: tempfile::TempDir,
    lab: Lab,
    /// a's status before any refused request, as [`fingerprint`] gives it.
    before: String,
}

impl MasterAndSlave {
    async fn start() -> MasterAndSlave {
        let (dir, mut lab) = mesh(&["a", "b"]);
        lab.start("a").await.unwrap();
        lab.start("b").await.unwrap();
        lab.daemon("a").unwrap().command(enable(true)).await.unwrap();
        lab.wait_until("b", "slave of a", WAIT, is_slave_of("a")).await.unwrap();
        let before = fingerprint(&lab.status("a").await.unwrap());
        MasterAndSlave { dir, lab, before }
    }

    /// A good RSA key to download for.
    fn good_key(&self) -> String {
        openssl_key_pair(self.dir.path(), "good", KeyKind::Rsa(2048)).public_pem()
    }

    /// Nothing changed: same role, domain, epoch and keys; and no download was recorded, so
    /// disabling is still refused for want of one (b's password limiter is its own). Stops
    /// the clusters.
    async fn unchanged(mut self) {
        assert_eq!(fingerprint(&self.lab.status("a").await.unwrap()), self.before);
        let e = self.lab.daemon("a").unwrap().command(disable_unacknowledged()).await.unwrap_err();
        assert!(e.to_string().contains("--i-understand-data-loss"), "{e}");
        self.lab.stop_all().await;
    }
}

/// A key download from `c` for `pem` with `password`, which must be refused.
async fn refused_download(c: &Client, password: &str, pem: &str) -> Refusal {
    refused(c.send(Method::POST, "/v1/keys/download", Some(download_body(password, pem))).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_file_is_private_and_a_missing_or_wrong_token_is_refused() {
    bounded(async {
        let f = MasterAndSlave::start().await;
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(f.lab.dir().join("state/a/admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let none = Client::new(target(&f.lab, "a", Some(""))).unwrap();
        let (st, code, msg, _) = refused(none.send(Method::GET, "/v1/status", None).await);
        assert_eq!((st, code.as_str()), (StatusCode::UNAUTHORIZED, "no_token"), "{msg}");
        let wrong = Client::new(target(&f.lab, "a", Some(&"0".repeat(64)))).unwrap();
        let (st, code, _, _) = refused(wrong.send(Method::GET, "/v1/status", None).await);
        assert_eq!((st, code.as_str()), (StatusCode::UNAUTHORIZED, "wrong_token"));
        let (st, ..) = refused(
            wrong
                .send(Method::POST, "/v1/encryption/disable", Some(br#"{"password":"x"}"#.to_vec()))
                .await,
        );
        assert_eq!(st, StatusCode::UNAUTHORIZED);
        f.unchanged().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_wrong_methods_and_malformed_bodies_are_refused() {
    bounded(async {
        let f = MasterAndSlave::start().await;
        let a = client(&f.lab, "a");
        let (st, ..) = refused(a.send(Method::GET, "/v1/nope", None).await);
        assert_eq!(st, StatusCode::NOT_FOUND);
        let (st, _, msg, _) = refused(a.send(Method::GET, "/v1/keys/download", None).await);
        assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED, "{msg}");
        assert!(msg.contains("POST"), "{msg}");
        let (st, _, msg, _) =
            refused(a.send(Method::POST, "/v1/encryption/enable", Some(b"{nope".to_vec())).await);
        assert_eq!(st, StatusCode::BAD_REQUEST, "{msg}");
        f.unchanged().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_refused_by_its_length_or_cut_off_at_the_limit() {
    bounded(async {
        let f = MasterAndSlave::start().await;
        // A body over the limit is refused from its Content-Length, before it is read; one
        // that does not declare its length is cut off at the limit.
        let t = target(&f.lab, "a", None);
        let head = raw(
            &t,
            &format!(
                "POST /v1/keys/download HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\n\
             Content-Length: 10000000\r\n\r\n",
                t.token.as_str()
            ),
            b"",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 413") && head.contains("body_too_large"), "{head}");
        assert!(says_close(&head), "an unread body closes the connection: {head}");
        let chunk = vec![b' '; 100 * 1024];
        let mut chunked = format!("{:x}\r\n", chunk.len()).into_bytes();
        chunked.extend_from_slice(&chunk);
        chunked.extend_from_slice(b"\r\n0\r\n\r\n");
        let head = raw(
            &t,
            &format!(
                "POST /v1/keys/download HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\n\
             Transfer-Encoding: chunked\r\n\r\n",
                t.token.as_str()
            ),
            &chunked,
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 413") && head.contains("body_too_large"), "{head}");
        assert!(says_close(&head), "a body cut off closes the connection: {head}");
        f.unchanged().await;
    })
    .await;
}

/// A request refused before its body is read (here: no token, or a route that does not exist)
/// still has its body read and thrown away, so the connection answers the next request, even
/// when the body comes late in a write of its own. Schemathesis, through urllib3, which sends a
/// body that way, once got "EOF occurred in violation of protocol" when the daemon closed such
/// a connection instead. A body that never comes closes the connection after the answer, and
/// the answer says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_before_its_body_is_read_leaves_the_connection_usable() {
    bounded(async {
        let f = MasterAndSlave::start().await;
        let t = target(&f.lab, "a", None);
        let token = t.token.as_str();
        let late = std::time::Duration::from_millis(300);
        let status = format!(
            "GET /v1/status HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n\
             Connection: close\r\n\r\n"
        );
        let body = r#"{"password":"Demo-Passw0rd!","remote":true}"#;
        for (head, refusal) in [
            (String::new(), "HTTP/1.1 401"),
            (format!("Authorization: Bearer {token}\r\n"), "HTTP/1.1 404"),
        ] {
            let path = if refusal.ends_with("404") { "/v1/no-such-route" } else { "/v1/encryption/enable" };
            let answers = raw_paused(
                &t,
                &format!(
                    "POST {path} HTTP/1.1\r\nHost: a\r\n{head}Content-Type: application/json\r\n\
                     Content-Length: {}\r\n\r\n",
                    body.len()
                ),
                late,
                format!("{body}{status}").as_bytes(),
            )
            .await;
            assert!(answers.starts_with(refusal), "{answers}");
            assert!(!says_close(&answers), "{answers}");
            assert!(answers.contains("HTTP/1.1 200"), "the next request was answered: {answers}");
        }

        // A body read, then refused: the same.
        let answers = raw(
            &t,
            &format!(
                "POST /v1/encryption/enable HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}{status}"
            ),
            b"",
        )
        .await;
        assert!(answers.starts_with("HTTP/1.1 400") && answers.contains("bad_body"), "{answers}");
        assert!(!says_close(&answers), "{answers}");
        assert!(answers.contains("HTTP/1.1 200"), "the next request was answered: {answers}");

        // A body announced and never sent: the refusal, after the drain's bound, says that the
        // connection closes.
        let answers = raw(
            &t,
            "POST /v1/encryption/enable HTTP/1.1\r\nHost: a\r\n\
             Content-Type: application/json\r\nContent-Length: 40\r\n\r\n",
            b"",
        )
        .await;
        assert!(answers.starts_with("HTTP/1.1 401") && answers.contains("no_token"), "{answers}");
        assert!(says_close(&answers), "{answers}");
        // A refused body over the limit, chunked so that only reading finds it out: closed.
        let mut chunked = b"4000\r\n".to_vec();
        for _ in 0..5 {
            chunked.extend_from_slice(&[b' '; 0x4000]);
            chunked.extend_from_slice(b"\r\n4000\r\n");
        }
        chunked.extend_from_slice(&[b' '; 0x4000]);
        chunked.extend_from_slice(b"\r\n0\r\n\r\n");
        let answers = raw(
            &t,
            "POST /v1/encryption/enable HTTP/1.1\r\nHost: a\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
            &chunked,
        )
        .await;
        assert!(answers.starts_with("HTTP/1.1 401") && says_close(&answers), "{answers}");
        // A client that waits for `100 Continue` is refused without being asked for its body.
        let answers = raw(
            &t,
            "POST /v1/encryption/enable HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\
             Content-Type: application/json\r\nContent-Length: 40\r\n\r\n",
            b"",
        )
        .await;
        assert!(answers.starts_with("HTTP/1.1 401") && says_close(&answers), "{answers}");
        f.unchanged().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive_and_a_body_that_is_not_json_gets_415() {
    bounded(async {
        let f = MasterAndSlave::start().await;
        let t = target(&f.lab, "a", None);
        let token = t.token.as_str();
        // RFC 9110 §11.1: the scheme name in any case.
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            let head = raw(
                &t,
                &format!(
                    "GET /v1/status HTTP/1.1\r\nHost: a\r\nAuthorization: {scheme} {token}\r\n\
                     Connection: close\r\n\r\n"
                ),
                b"",
            )
            .await;
            assert!(head.starts_with("HTTP/1.1 200"), "{scheme}: {head}");
        }
        let head = raw(
            &t,
            &format!(
                "GET /v1/status HTTP/1.1\r\nHost: a\r\nAuthorization: Basic {token}\r\n\
                 Connection: close\r\n\r\n"
            ),
            b"",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 401") && head.contains("no_token"), "{head}");

        // A JSON body under another Content-Type: 415 naming the header to send, before the
        // body is looked at (so the wrong password in it counts nothing).
        let body = download_body("Wrong-Passw0rd!", &f.good_key());
        let post = |content_type: &str| {
            format!(
                "POST /v1/keys/download HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
        };
        for ct in ["text/plain", "application/x-www-form-urlencoded", "application/jsonx"] {
            let head = raw(&t, &post(ct), &body).await;
            assert!(head.starts_with("HTTP/1.1 415"), "{ct}: {head}");
            assert!(head.contains("not_json") && head.contains("application/json"), "{head}");
        }
        // JSON in any spelling is read: the wrong password is answered as such.
        for ct in ["application/json", "Application/JSON; charset=utf-8", "application/merge+json"]
        {
            let head = raw(&t, &post(ct), &body).await;
            assert!(
                head.starts_with("HTTP/1.1 403") && head.contains("wrong_password"),
                "{ct}: {head}"
            );
        }
        f.unchanged().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_wrong_or_garbage_public_keys_are_refused_before_the_password_is_looked_at() {
    bounded(async {
        let f = MasterAndSlave::start().await;
        let a = client(&f.lab, "a");
        let dir = f.dir.path();
        // These carry a wrong password, yet no failure is counted (checked below).
        let weak = openssl_key_pair(dir, "weak", KeyKind::Rsa(1024)).public_pem();
        let ec = openssl_key_pair(dir, "ec", KeyKind::EcP256).public_pem();
        let garbage = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        for (pem, expect) in [
            (weak.as_str(), "1024 bits; at least 2048"),
            (ec.as_str(), "not RSA"),
            (garbage, "malformed"),
            ("hello", "not a PEM document"),
        ] {
            for _ in 0..2 {
                let (st, code, msg, _) = refused_download(&a, "Wrong-Passw0rd!", pem).await;
                assert_eq!(
                    (st, code.as_str()),
                    (StatusCode::UNPROCESSABLE_ENTITY, "bad_public_key")
                );
                assert!(msg.contains(expect), "{msg}");
            }
        }
        // No failure was counted: five wrong passwords are each still answered as such (the
        // lockout comes after five).
        let good = f.good_key();
        for _ in 0..5 {
            let (st, code, msg, _) = refused_download(&a, "Wrong-Passw0rd!", &good).await;
            assert_eq!((st, code.as_str()), (StatusCode::FORBIDDEN, "wrong_password"), "{msg}");
        }
        f.unchanged().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_download_on_a_slave_names_the_master() {
    bounded(async {
        let f = MasterAndSlave::start().await;
        let b = client(&f.lab, "b");
        let (st, code, msg, _) = refused_download(&b, PASSWORD, &f.good_key()).await;
        assert_eq!((st, code.as_str()), (StatusCode::CONFLICT, "not_master"));
        assert!(msg.contains("slave of cluster a"), "{msg}");
        f.unchanged().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_wrong_passwords_lock_the_download_out_even_when_sent_at_once() {
    bounded(async {
        let f = MasterAndSlave::start().await;
        let a = client(&f.lab, "a");
        let good = f.good_key();
        // Wrong passwords: 403 each, and after 5 a lockout, even for the right password, and
        // checked before any hashing. Requests in flight count, so 8 at once admit only 5.
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let c = client(&f.lab, "a");
            let good = good.clone();
            set.spawn(async move { refused_download(&c, "Wrong-Passw0rd!", &good).await });
        }
        let mut codes = Vec::new();
        while let Some(r) = set.join_next().await {
            let (st, code, msg, retry) = r.unwrap();
            if st == StatusCode::FORBIDDEN {
                assert!(msg.contains("password is wrong"), "{msg}");
            } else {
                assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "{msg}");
                assert!(retry.is_some());
            }
            codes.push(code);
        }
        codes.sort();
        assert_eq!(codes.iter().filter(|c| *c == "wrong_password").count(), 5, "{codes:?}");
        let (st, code, msg, retry) = refused_download(&a, PASSWORD, &good).await;
        assert_eq!((st, code.as_str()), (StatusCode::TOO_MANY_REQUESTS, "locked_out"), "{msg}");
        assert!(retry.unwrap() > 800, "{retry:?}");
        // The API still answers everything else.
        a.send(Method::GET, "/v1/status", None).await.unwrap();
        f.unchanged().await;
    })
    .await;
}

#[test]
fn openapi_document_lists_exactly_the_servers_routes() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/admin-api.yaml"))
        .unwrap();
    let mut documented = BTreeSet::new();
    let mut in_paths = false;
    let mut path = None;
    for line in text.lines() {
        if line.starts_with("paths:") {
            in_paths = true;
            continue;
        }
        if in_paths && !line.starts_with(' ') && !line.trim().is_empty() {
            in_paths = false;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /") {
            path = Some(format!("/{}", p.trim_end_matches(':')));
        } else if let Some(m) = line.strip_prefix("    ")
            && !m.starts_with(' ')
            && let Some(m) = m.strip_suffix(':')
            && ["get", "post", "put", "delete", "patch"].contains(&m)
        {
            documented.insert((m.to_uppercase(), path.clone().unwrap()));
        }
    }
    let served: BTreeSet<(String, String)> = Route::ALL
        .iter()
        .map(|r| {
            let (m, p) = r.method_and_path();
            (m.to_owned(), p.to_owned())
        })
        .collect();
    assert_eq!(documented, served, "docs/admin-api.yaml and admin::api::Route differ");
}

/// Where the Schemathesis CLI is: `IMCRYPT_SCHEMATHESIS`, or the virtualenv that
/// scripts/test.sh installs it into.
fn schemathesis() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("IMCRYPT_SCHEMATHESIS") {
        return p.into();
    }
    let p =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/schemathesis/bin/st");
    assert!(
        p.exists(),
        "{} is missing: run scripts/test.sh, which installs Schemathesis",
        p.display()
    );
    p
}

/// Schemathesis generates requests from docs/admin-api.yaml (valid and invalid bodies, path
/// parameters, missing or wrong tokens, methods a path does not have) against a live daemon,
/// and checks every answer with its default checks: no server error, only declared status
/// codes, bodies and headers as documented, invalid data refused, missing auth refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_the_daemon_true_to_its_document() {
    let st = schemathesis();
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let mut lab = Lab::new(dir.path(), &["fuzzed"]).unwrap();
        lab.spec_mut("fuzzed").unlimited_password_attempts = true;
        lab.start("fuzzed").await.unwrap();
        let t = target(&lab, "fuzzed", None);
        let root = env!("CARGO_MANIFEST_DIR");
        let run = tokio::process::Command::new(&st)
            .current_dir(dir.path())
            .env("NO_COLOR", "1")
            .arg("--config-file")
            .arg(format!("{root}/tests/schemathesis/schemathesis.toml"))
            .arg("run")
            .arg(format!("{root}/docs/admin-api.yaml"))
            .args(["--url", &format!("https://{}", t.addr)])
            .args(["--header", &format!("Authorization: Bearer {}", t.token.as_str())])
            // The daemon's certificate names its cluster, not 127.0.0.1; what is checked here
            // is the API, and the TLS tests check the certificate.
            .args(["--tls-verify", "false"])
            // One seed: the same requests every run (Schemathesis and Hypothesis are pinned by
            // scripts/test.sh), so a failure here is a real difference, never luck.
            .args(["--seed", "20261201"])
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(std::time::Duration::from_secs(100), run)
            .await
            .expect("Schemathesis finished within 100 s")
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{report}\n{}", String::from_utf8_lossy(&out.stderr));
        let all = format!("Selected: {0}/{0}", Route::ALL.len());
        assert!(report.contains(&all), "every route was tried: {report}");
        lab.stop_all().await;
    })
    .await;
}
