//! The admin API over HTTPS against real daemons (tasks of this process): token checks, body
//! limits, public-key validation before the password, key download only on the master, the
//! password rate limit with its lockout, and that none of these refusals changes anything.
//! docs/admin-api.yaml is compared with the server's route table here too.

mod support;

use std::collections::BTreeSet;
use std::process::Command as Proc;

use hyper::{Method, StatusCode};
use imcrypt::admin::api::Route;
use imcrypt::cli::client::{Client, ClientError, Target};
use rustls_pki_types::pem::PemObject;
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

/// (status, code, message) of an error answer.
fn refused(r: Result<bytes::Bytes, ClientError>) -> (StatusCode, String, String, Option<u64>) {
    match r {
        Err(ClientError::Api { status, code, message, retry_after }) => {
            (status, code, message, retry_after)
        }
        other => panic!("expected an error answer, got {other:?}"),
    }
}

fn openssl_pub(dir: &std::path::Path, name: &str, args: &[&str]) -> String {
    let sk = dir.join(format!("{name}.pem"));
    let pk = dir.join(format!("{name}.pub.pem"));
    assert!(
        Proc::new("openssl")
            .arg("genpkey")
            .args(args)
            .arg("-out")
            .arg(&sk)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    );
    assert!(
        Proc::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&sk)
            .arg("-out")
            .arg(&pk)
            .status()
            .unwrap()
            .success()
    );
    std::fs::read_to_string(pk).unwrap()
}

/// Sends `head` and `body` over TLS as they are and returns what the daemon answers.
async fn raw(t: &Target, head: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(&t.ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(&t.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(t.server_name.clone()).unwrap();
    let mut s = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    // The daemon may answer and close before it has read the body.
    let _ = s.write_all(body).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_clearly_and_change_nothing() {
    bounded(async {
        let (d, mut lab) = mesh(&["a", "b"]);
        lab.start("a").await.unwrap();
        lab.start("b").await.unwrap();
        lab.daemon("a").unwrap().command(enable(true)).await.unwrap();
        lab.wait_until("b", "slave of a", WAIT, is_slave_of("a")).await.unwrap();
        let before = fingerprint(&lab.status("a").await.unwrap());
        let a = client(&lab, "a");

        // Token: missing, wrong; and the file is 0600.
        use std::os::unix::fs::PermissionsExt;
        let mode =
            std::fs::metadata(lab.dir().join("state/a/admin.token")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let none = Client::new(target(&lab, "a", Some(""))).unwrap();
        let (st, code, msg, _) = refused(none.send(Method::GET, "/v1/status", None).await);
        assert_eq!((st, code.as_str()), (StatusCode::UNAUTHORIZED, "no_token"), "{msg}");
        let wrong = Client::new(target(&lab, "a", Some(&"0".repeat(64)))).unwrap();
        let (st, code, _, _) = refused(wrong.send(Method::GET, "/v1/status", None).await);
        assert_eq!((st, code.as_str()), (StatusCode::UNAUTHORIZED, "wrong_token"));
        let (st, ..) = refused(
            wrong
                .send(Method::POST, "/v1/encryption/disable", Some(br#"{"password":"x"}"#.to_vec()))
                .await,
        );
        assert_eq!(st, StatusCode::UNAUTHORIZED);

        // Routing and bodies.
        let (st, ..) = refused(a.send(Method::GET, "/v1/nope", None).await);
        assert_eq!(st, StatusCode::NOT_FOUND);
        let (st, _, msg, _) = refused(a.send(Method::GET, "/v1/keys/download", None).await);
        assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED, "{msg}");
        assert!(msg.contains("POST"), "{msg}");
        // A body over the limit is refused from its Content-Length, before it is read; one
        // that does not declare its length is cut off at the limit.
        let t = target(&lab, "a", None);
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
        let (st, _, msg, _) =
            refused(a.send(Method::POST, "/v1/encryption/enable", Some(b"{nope".to_vec())).await);
        assert_eq!(st, StatusCode::BAD_REQUEST, "{msg}");

        // Weak, wrong or garbage public keys are refused before the password is looked at:
        // these carry a wrong password, yet no failure is counted (checked below).
        let weak = openssl_pub(
            d.path(),
            "weak",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
        );
        let ec = openssl_pub(
            d.path(),
            "ec",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        );
        let garbage = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        for (pem, expect) in [
            (weak.as_str(), "1024 bits; at least 2048"),
            (ec.as_str(), "not RSA"),
            (garbage, "malformed"),
            ("hello", "not a PEM document"),
        ] {
            for _ in 0..2 {
                let (st, code, msg, _) = refused(
                    a.send(
                        Method::POST,
                        "/v1/keys/download",
                        Some(download_body("Wrong-Passw0rd!", pem)),
                    )
                    .await,
                );
                assert_eq!(
                    (st, code.as_str()),
                    (StatusCode::UNPROCESSABLE_ENTITY, "bad_public_key")
                );
                assert!(msg.contains(expect), "{msg}");
            }
        }
        let good = openssl_pub(
            d.path(),
            "good",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        );

        // Download on a slave names the master.
        let b = client(&lab, "b");
        let (st, code, msg, _) = refused(
            b.send(Method::POST, "/v1/keys/download", Some(download_body(PASSWORD, &good))).await,
        );
        assert_eq!((st, code.as_str()), (StatusCode::CONFLICT, "not_master"));
        assert!(msg.contains("slave of cluster a"), "{msg}");

        // Wrong passwords: 403 each, and after 5 a lockout, even for the right password, and
        // checked before any hashing. Requests in flight count, so 8 at once admit only 5.
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let c = client(&lab, "a");
            let body = download_body("Wrong-Passw0rd!", &good);
            set.spawn(async move {
                refused(c.send(Method::POST, "/v1/keys/download", Some(body)).await)
            });
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
        let (st, code, msg, retry) = refused(
            a.send(Method::POST, "/v1/keys/download", Some(download_body(PASSWORD, &good))).await,
        );
        assert_eq!((st, code.as_str()), (StatusCode::TOO_MANY_REQUESTS, "locked_out"), "{msg}");
        assert!(retry.unwrap() > 800, "{retry:?}");
        // The API still answers everything else.
        a.send(Method::GET, "/v1/status", None).await.unwrap();

        // Nothing changed: same role, domain, epoch and keys; and no download was recorded, so
        // disabling is still refused for want of one (b's limiter is its own).
        assert_eq!(fingerprint(&lab.status("a").await.unwrap()), before);
        let cb = lab.daemon("a").unwrap();
        let e = cb
            .command(Command::Disable { password: pw(PASSWORD), i_understand_data_loss: false })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("--i-understand-data-loss"), "{e}");
        lab.stop_all().await;
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
        assert!(report.contains("Selected: 13/13"), "every route was tried: {report}");
        lab.stop_all().await;
    })
    .await;
}
