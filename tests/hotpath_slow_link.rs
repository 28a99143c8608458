//! The router's client over TCP with mutual TLS to a far end that reads slowly, as over a
//! congested link: TLS may keep the end of a request buffered when the socket is full, and
//! the client must still get it out, or the daemon waits for the rest of the frame while the
//! router waits for its answer. The far end here is a stand-in that speaks the wire protocol
//! (docs/hotpath.md) and answers OFF, because the daemon's own server reads as fast as it
//! can and so never makes the socket fill; the client under test is the real one.

use std::sync::Arc;
use std::time::Duration;

use imcrypt::hotpath::{Client, ClientConfig, Encrypted, Endpoint, TlsEndpoint};
use rcgen::KeyPair;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

fn frame(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut f = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    f.push(ty);
    f.extend_from_slice(body);
    f
}

/// A TLS listener on 127.0.0.1 with a 4 KiB receive buffer, whose connections read 16 KiB at
/// a time with a millisecond's pause, answer WELCOME to HELLO and OFF to every request.
async fn slow_far_end(dir: &std::path::Path) -> std::net::SocketAddr {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name.push(DnType::CommonName, "slow link test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["a".to_string()]).unwrap();
    p.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("a.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("a.key"), key.serialize_pem()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = sock.local_addr().unwrap();
    let listener = sock.listen(8).unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else { return };
                let (mut buf, mut chunk, mut greeted) = (Vec::new(), vec![0u8; 16 << 10], false);
                loop {
                    while buf.len() >= 4 {
                        let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
                        if buf.len() < 4 + len {
                            break;
                        }
                        let f: Vec<u8> = buf.drain(..4 + len).collect();
                        let answer = if greeted {
                            frame(0x83, &f[5..13])
                        } else {
                            greeted = true;
                            let mut w = 1u16.to_be_bytes().to_vec();
                            w.extend_from_slice(&(64u32 << 20).to_be_bytes());
                            w.extend_from_slice(&4096u32.to_be_bytes());
                            frame(0x81, &w)
                        };
                        if s.write_all(&answer).await.is_err() || s.flush().await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_a_far_end_that_reads_slowly_whole_and_get_their_answers() {
    let dir = tempfile::tempdir().unwrap();
    let addr = slow_far_end(dir.path()).await;
    let f = |n: &str| dir.path().join(n);
    let client = Client::new(ClientConfig::to(Endpoint::Tls(TlsEndpoint {
        addr: addr.to_string(),
        server_name: "a".into(),
        cert: f("a.pem"),
        key: f("a.key"),
        ca: f("ca.pem"),
    })));
    // One at a time, on the idle connection (the caller's own write and read).
    for (i, size) in [20_000usize, 150_000, 1 << 20, 3 << 20].into_iter().enumerate() {
        let body = vec![i as u8; size];
        let answer = timeout(Duration::from_secs(20), client.encrypt(b"m", &body)).await;
        assert_eq!(answer.expect("answered").unwrap(), Encrypted::Off, "{size} bytes alone");
    }
    // Pipelined through the driver: many frames in flight.
    let bodies: Vec<Vec<u8>> =
        (0..200).map(|i| vec![i as u8; 50_000 + (i * 7919) % 250_000]).collect();
    let mut pending = Vec::new();
    for b in &bodies {
        pending.push(client.submit([(&b"m"[..], &b[..])].into_iter()).await.unwrap());
    }
    let answers = timeout(Duration::from_secs(60), futures_util::future::join_all(pending))
        .await
        .expect("every pipelined request answered");
    assert!(answers.into_iter().all(|a| a == Ok(Encrypted::Off)));
}
