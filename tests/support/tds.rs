//! A stand-in for SQL Server up to the login, on 127.0.0.1: the TDS prelogin, the TLS
//! handshake carried inside prelogin packets (MS-TDS 2.2.6.5 and 3.2.5.1), and the client's
//! LOGIN7 packet, which it records and never answers (it closes the connection). Enough to see
//! what a client does about encryption and certificates without a SQL Server: whether the login
//! left in clear, inside TLS, or not at all. The TLS side is rustls on ring.
//!
//! One thread accepts connections one after the other, each bounded by a 5 s read timeout;
//! dropping the [`FakeTds`] stops and joins it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// TDS packet types (MS-TDS 2.2.3.1.1).
const PRELOGIN: u8 = 0x12;
const LOGIN7: u8 = 0x10;
const TABULAR_RESULT: u8 = 0x04;
/// The prelogin ENCRYPTION values (MS-TDS 2.2.6.5).
const ENCRYPT_ON: u8 = 0x01;
const ENCRYPT_NOT_SUP: u8 = 0x02;

/// What the server saw on one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A LOGIN7 packet in clear: the password went over the wire readable.
    LoginInClear,
    /// A LOGIN7 packet inside TLS.
    LoginOverTls,
    /// The TLS handshake failed, e.g. the client refused the certificate (its alert).
    HandshakeFailed(String),
    /// The client left after the prelogin answer (it wanted TLS, the server offers none).
    LeftAfterPrelogin,
}

pub struct FakeTds {
    port: u16,
    seen: Arc<(Mutex<Vec<Seen>>, Condvar)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeTds {
    /// A server that offers TLS with this certificate and key (PEM files), or none.
    pub fn start(tls: Option<(&Path, &Path)>) -> Self {
        let config = tls.map(|(cert, key)| {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(cert).unwrap().map(Result::unwrap).collect();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut c = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap();
            // A ticket would be written after the handshake, which the client reads without
            // the prelogin framing: keep the exchange to the handshake and the login.
            c.send_tls13_tickets = 0;
            Arc::new(c)
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for tcp in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(tcp) = tcp else { continue };
                if let Some(what) = serve(tcp, config.as_ref()) {
                    s.0.lock().unwrap().push(what);
                    s.1.notify_all();
                }
            }
        });
        Self { port, seen, stop, thread: Some(thread) }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// What the connections since the last call saw, in order, once there are `n` of them
    /// (the client may report its error before the server has seen it hang up), or after 5 s.
    pub fn take(&self, n: usize) -> Vec<Seen> {
        let (seen, more) = &*self.seen;
        let (mut seen, _) = more
            .wait_timeout_while(seen.lock().unwrap(), Duration::from_secs(5), |s| s.len() < n)
            .unwrap();
        std::mem::take(&mut *seen)
    }
}

impl Drop for FakeTds {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One connection: the prelogin, TLS if both sides want it, then the login.
fn serve(mut tcp: TcpStream, tls: Option<&Arc<rustls::ServerConfig>>) -> Option<Seen> {
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (kind, prelogin) = read_packet(&mut tcp)?;
    assert_eq!(kind, PRELOGIN, "a client opens with a prelogin");
    let wants_tls = client_encryption(&prelogin) != ENCRYPT_NOT_SUP;
    let tls = tls.filter(|_| wants_tls);
    write_packet(&mut tcp, TABULAR_RESULT, &prelogin_answer(tls.is_some()));
    let Some(config) = tls else {
        return match read_packet(&mut tcp) {
            Some((LOGIN7, _)) => Some(Seen::LoginInClear),
            Some((other, _)) => panic!("packet type {other:#x} instead of a login"),
            None => Some(Seen::LeftAfterPrelogin),
        };
    };
    let mut conn = rustls::ServerConnection::new(config.clone()).unwrap();
    while conn.is_handshaking() {
        if conn.wants_write() {
            let mut out = Vec::new();
            conn.write_tls(&mut out).unwrap();
            write_packet(&mut tcp, PRELOGIN, &out);
            continue;
        }
        let Some((_, payload)) = read_packet(&mut tcp) else {
            return Some(Seen::HandshakeFailed("the client closed the connection".into()));
        };
        let mut rd = &payload[..];
        while !rd.is_empty() {
            conn.read_tls(&mut rd).unwrap();
            if let Err(e) = conn.process_new_packets() {
                return Some(Seen::HandshakeFailed(e.to_string()));
            }
        }
    }
    // From here on the records travel without the prelogin framing.
    let mut header = [0u8; 8];
    let mut s = rustls::Stream::new(&mut conn, &mut tcp);
    s.read_exact(&mut header).ok()?;
    assert_eq!(header[0], LOGIN7, "the first packet inside TLS is the login");
    Some(Seen::LoginOverTls)
}

/// The ENCRYPTION option of a client's prelogin.
fn client_encryption(prelogin: &[u8]) -> u8 {
    let mut i = 0;
    while prelogin[i] != 0xff {
        let offset = u16::from_be_bytes([prelogin[i + 1], prelogin[i + 2]]) as usize;
        if prelogin[i] == 0x01 {
            return prelogin[offset];
        }
        i += 5;
    }
    panic!("a prelogin without ENCRYPTION")
}

/// The server's prelogin: VERSION and ENCRYPTION (ON, or NOT_SUP: no TLS here).
fn prelogin_answer(tls: bool) -> Vec<u8> {
    let mut p = vec![0x00, 0, 11, 0, 6, 0x01, 0, 17, 0, 1, 0xff];
    p.extend_from_slice(&[16, 0, 0x07, 0xd0, 0, 0]); // 16.0.2000: SQL Server 2022
    p.push(if tls { ENCRYPT_ON } else { ENCRYPT_NOT_SUP });
    p
}

fn read_packet(tcp: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut header = [0u8; 8];
    tcp.read_exact(&mut header).ok()?;
    let len = u16::from_be_bytes([header[2], header[3]]) as usize;
    let mut payload = vec![0u8; len.checked_sub(8)?];
    tcp.read_exact(&mut payload).ok()?;
    Some((header[0], payload))
}

fn write_packet(tcp: &mut TcpStream, kind: u8, payload: &[u8]) {
    let len = u16::try_from(payload.len() + 8).unwrap().to_be_bytes();
    let mut p = vec![kind, 0x01, len[0], len[1], 0, 0, 1, 0];
    p.extend_from_slice(payload);
    let _ = tcp.write_all(&p);
}
