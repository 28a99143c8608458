//! The password lockout under attack, against a real daemon on 127.0.0.1 (issue 17, item 3):
//! someone who holds the shared admin token guesses passwords from ever new 127.x.y.z source
//! addresses. The guesses stay bounded (five are checked, the rest are refused before any
//! hashing), and the administrator, whose CLI kept the proof of an earlier right password,
//! gets through with the right password while the flood goes on.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How to talk to the daemon's admin API.
#[derive(Clone)]
struct Api {
    addr: SocketAddr,
    token: String,
    tls: Arc<rustls::ClientConfig>,
}

/// One answer: status, the client proof header if any, the body.
#[derive(Debug)]
struct Answer {
    status: u16,
    proof: Option<String>,
    body: String,
}

impl Api {
    fn new(lab: &Lab) -> Api {
        let tls = tls_client_trusting(&lab.dir().join("pki/ca.pem"));
        let token = std::fs::read_to_string(lab.dir().join("state/a/admin.token")).unwrap();
        Api { addr: lab.daemon("a").unwrap().admin_addr(), token: token.trim().to_owned(), tls }
    }

    /// A key download with `password`, sent from source address `from`, with `proof` if
    /// given.
    async fn download(
        &self,
        from: Ipv4Addr,
        password: &str,
        pem: &str,
        proof: Option<&str>,
    ) -> Answer {
        let body = serde_json::to_vec(&serde_json::json!({
            "password": password,
            "public_key_pem": pem,
        }))
        .unwrap();
        let mut head = format!(
            "POST /v1/keys/download HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.token,
            body.len()
        );
        if let Some(p) = proof {
            head.push_str(&format!("imcrypt-client-proof: {p}\r\n"));
        }
        head.push_str("\r\n");
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(from.into(), 0)).unwrap();
        let tcp = socket.connect(self.addr).await.unwrap();
        assert_eq!(tcp.local_addr().unwrap().ip(), from);
        let name = rustls_pki_types::ServerName::try_from("a").unwrap();
        let mut s =
            tokio_rustls::TlsConnector::from(self.tls.clone()).connect(name, tcp).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body).await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let proof = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("imcrypt-client-proof").then(|| v.trim().to_owned())
        });
        Answer { status, proof, body: body.to_owned() }
    }
}

/// The n-th source address of the attacker: 127.1.x.y, never 127.0.0.1.
fn attacker(n: u32) -> Ipv4Addr {
    Ipv4Addr::new(127, 1, (n >> 8) as u8, n as u8)
}

const ADMIN: Ipv4Addr = Ipv4Addr::LOCALHOST;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_source_addresses_stay_limited_and_the_administrator_gets_through_the_flood() {
    bounded(async {
        let (dir, mut lab) = mesh(&["a"]);
        lab.start("a").await.unwrap();
        lab.daemon("a").unwrap().command(enable(false)).await.unwrap();
        let pem = openssl_key_pair(dir.path(), "admin", KeyKind::Rsa(2048)).public_pem();
        let api = Api::new(&lab);

        // The administrator downloads the keys once; the answer carries the client proof the
        // CLI keeps in its proof file.
        let first = api.download(ADMIN, PASSWORD, &pem, None).await;
        assert_eq!(first.status, 200, "{}", first.body);
        let proof = first.proof.expect("a right password without a proof earns one");

        // The attack: wrong guesses, each from a new 127.1.x.y. First 16 at once: requests in
        // flight count, so five are checked (403) and the rest refused before any hashing.
        let guess = |api: &Api, pem: &str, n: u32| {
            let (api, pem) = (api.clone(), pem.to_owned());
            async move { api.download(attacker(n), "Wrong-Guess-123", &pem, None).await }
        };
        let mut batch = tokio::task::JoinSet::new();
        for n in 0..16 {
            batch.spawn(guess(&api, &pem, n));
        }
        let first = batch.join_all().await;
        let status = |answers: &[Answer], code| answers.iter().filter(|a| a.status == code).count();
        assert_eq!((status(&first, 403), status(&first, 429)), (5, 11), "{first:?}");

        // Then a flood, 8 at a time from ever new addresses, until the administrator is done.
        let stop = Arc::new(AtomicBool::new(false));
        let flood = {
            let (api, pem, stop) = (api.clone(), pem.clone(), stop.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                let mut n = 16;
                while !stop.load(Ordering::Relaxed) || answers.len() < 64 {
                    let mut batch = tokio::task::JoinSet::new();
                    for _ in 0..8 {
                        n += 1;
                        batch.spawn(guess(&api, &pem, n));
                    }
                    answers.extend(batch.join_all().await);
                }
                answers
            })
        };

        // During it, the administrator's right password goes through, each time.
        for _ in 0..3 {
            let a = api.download(ADMIN, PASSWORD, &pem, Some(&proof)).await;
            assert_eq!(a.status, 200, "stopped by someone else's guesses: {}", a.body);
            assert!(a.proof.is_none(), "a proven client needs no new proof");
        }
        // Without the proof, or with a forged one, even the right password waits out the
        // lockout, whatever the address: that is what bounds the guessing.
        let mut forged = proof.clone().into_bytes();
        forged[0] = if forged[0] == b'0' { b'1' } else { b'0' };
        let forged = String::from_utf8(forged).unwrap();
        for (from, proof) in
            [(ADMIN, None), (attacker(9_999), None), (ADMIN, Some(forged.as_str()))]
        {
            let a = api.download(from, PASSWORD, &pem, proof).await;
            assert_eq!(a.status, 429, "{}", a.body);
            assert!(a.body.contains("locked_out") && a.body.contains("proof"), "{}", a.body);
        }

        stop.store(true, Ordering::Relaxed);
        let answers = flood.await.unwrap();
        // Bounded: not one more guess was checked, however many addresses.
        assert!(answers.len() >= 64);
        assert_eq!(status(&answers, 429), answers.len(), "{answers:?}");
        assert!(answers.iter().all(|a| a.proof.is_none()), "a wrong password never earns a proof");
        lab.stop_all().await;
    })
    .await;
}
