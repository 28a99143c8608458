//! The client of the admin API (the CLI and the demo use it): connects to a daemon's admin API over TLS 1.3, trusting only the given CA
//! file, and sends the admin token with every request.
//!
//! Where the connection settings come from, first match wins: the flag, its environment
//! variable, then the daemon's config file (`--config`/`IMCRYPT_CONFIG`): `admin.listen`, the
//! CA `peer.ca`, the server name `cluster_id`, the token file `admin.token_file`.
//!
//! Invariants: the token is never printed; an error answer from the daemon keeps its HTTP
//! status and code, so that `cli` maps it to one exit code.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_rustls::TlsConnector;
use zeroize::Zeroizing;

use crate::admin::api::ErrorBody;
use crate::pem_files::{self, PemFileError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request did not get a successful answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no daemon address: give --addr (or IMCRYPT_ADDR), or --config with the daemon's config file"
    )]
    NoAddress,
    #[error("no CA certificate to trust: give --ca (or IMCRYPT_CACERT), or --config")]
    NoCa,
    #[error(
        "no admin token: give --token (or IMCRYPT_TOKEN), --token-file (or IMCRYPT_TOKEN_FILE), \
         or --config (the token file is in the daemon's state directory)"
    )]
    NoToken,
    #[error("cannot read {what} {path}: {reason}")]
    Read { what: &'static str, path: PathBuf, reason: String },
    #[error(transparent)]
    CaFile(#[from] PemFileError),
    #[error("{0}")]
    Setup(String),
    #[error("cannot connect to the daemon at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error(
        "TLS with the daemon at {addr} failed: {reason}{hint}",
        hint = if reason.contains("NotValidForName") || reason.contains("not valid for") {
            " (the daemon's certificate names its cluster id: pass --server-name ID or set \
             IMCRYPT_SERVER_NAME)"
        } else {
            ""
        }
    )]
    Tls { addr: String, reason: String },
    #[error("the daemon at {addr} did not answer in time")]
    Timeout { addr: String },
    #[error("HTTP exchange with the daemon failed: {0}")]
    Http(String),
    #[error("{message}")]
    Api { status: StatusCode, code: String, message: String, retry_after: Option<u64> },
    #[error("the daemon's answer is not understood: {0}")]
    Decode(String),
}

/// How to reach one daemon.
pub struct Target {
    /// host:port
    pub addr: String,
    pub server_name: String,
    pub ca: PathBuf,
    pub token: Zeroizing<String>,
}

/// Connection settings as given on the command line (flags with their env fallbacks).
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct ConnectArgs {
    /// The daemon's config file: supplies the address, CA, server name and token file.
    #[arg(long, short = 'c', global = true, env = "IMCRYPT_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Admin API address, host:port or https://host:port.
    #[arg(long, global = true, env = "IMCRYPT_ADDR")]
    pub(crate) addr: Option<String>,
    /// The admin token (prefer --token-file or IMCRYPT_TOKEN: argv is visible to other users).
    #[arg(long, global = true, env = "IMCRYPT_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// File holding the admin token (the daemon writes it to its state directory).
    #[arg(long, global = true, env = "IMCRYPT_TOKEN_FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// CA certificate (PEM) the daemon's certificate must chain to.
    #[arg(long, global = true, env = "IMCRYPT_CACERT")]
    pub(crate) ca: Option<PathBuf>,
    /// The DNS name the daemon's certificate must carry (default: the cluster id from
    /// --config, else the host of --addr).
    #[arg(long, global = true, env = "IMCRYPT_SERVER_NAME")]
    pub(crate) server_name: Option<String>,
    /// Where the CLI keeps the daemon's proof that this user gave the right password, which
    /// lets them through a lockout caused by someone else's guesses (docs/admin.md). Default:
    /// `$HOME/.local/state/imcrypt/SERVER_NAME@HOST_PORT.proof`.
    #[arg(long, global = true, env = "IMCRYPT_PROOF_FILE")]
    pub(crate) proof_file: Option<PathBuf>,
}

fn read(what: &'static str, path: &std::path::Path) -> Result<Zeroizing<String>, ClientError> {
    std::fs::read_to_string(path).map(Zeroizing::new).map_err(|e| ClientError::Read {
        what,
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

impl ConnectArgs {
    /// The proof file of `target` (`--proof-file`, else under `$HOME`, else none).
    pub(crate) fn proof_file(&self, target: &Target) -> Option<PathBuf> {
        self.proof_file.clone().or_else(|| {
            let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
            // Named by server name and address: two daemons of one name (the same cluster id
            // on two hosts, or a test's) keep their proofs apart.
            let name: String = format!("{}@{}", target.server_name, target.addr)
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || ".-@".contains(c) { c } else { '_' })
                .collect();
            Some(Path::new(&home).join(format!(".local/state/imcrypt/{name}.proof")))
        })
    }

    /// Resolves the flags, environment and config file into a target.
    pub(crate) fn target(&self) -> Result<Target, ClientError> {
        let config = match &self.config {
            Some(p) => Some(
                crate::config::Config::load(p).map_err(|e| ClientError::Setup(e.to_string()))?,
            ),
            None => None,
        };
        let addr = match (&self.addr, &config) {
            (Some(a), _) => {
                let a = a.strip_prefix("https://").unwrap_or(a).trim_end_matches('/');
                if a.starts_with("http://") {
                    return Err(ClientError::Setup(
                        "--addr: the admin API speaks HTTPS only; use https://host:port".into(),
                    ));
                }
                a.to_owned()
            }
            (None, Some(c)) => c.admin.listen.to_string(),
            (None, None) => return Err(ClientError::NoAddress),
        };
        let ca = match (&self.ca, &config) {
            (Some(p), _) => p.clone(),
            (None, Some(c)) => c.peer.ca.clone(),
            (None, None) => return Err(ClientError::NoCa),
        };
        let server_name = match (&self.server_name, &config) {
            (Some(n), _) => n.clone(),
            (None, Some(c)) => c.cluster_id.to_string(),
            (None, None) => {
                let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
                host.trim_start_matches('[').trim_end_matches(']').to_owned()
            }
        };
        let token = match (&self.token, &self.token_file, &config) {
            (Some(t), _, _) => Zeroizing::new(t.trim().to_owned()),
            (None, Some(p), _) => Zeroizing::new(read("token file", p)?.trim().to_owned()),
            (None, None, Some(c)) => {
                Zeroizing::new(read("token file", &c.admin_token_file())?.trim().to_owned())
            }
            (None, None, None) => return Err(ClientError::NoToken),
        };
        if token.is_empty() {
            return Err(ClientError::NoToken);
        }
        Ok(Target { addr, server_name, ca, token })
    }
}

/// A client for one daemon.
pub struct Client {
    target: Target,
    tls: Arc<ClientConfig>,
    /// The daemon's proof that this client gave the right password (`admin::proof`), sent
    /// with every request once known; and whether the daemon handed out a new one.
    proof: Mutex<(Option<Zeroizing<String>>, bool)>,
}

impl Client {
    pub fn new(target: Target) -> Result<Self, ClientError> {
        let roots = pem_files::ca_roots(&target.ca)?;
        let mut tls =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| ClientError::Setup(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self { target, tls: Arc::new(tls), proof: Mutex::new((None, false)) })
    }

    /// Sends `proof` (a proof this client was given earlier) with the requests from now on.
    pub fn set_proof(&self, proof: &str) {
        let p = proof.trim();
        if !p.is_empty() {
            *self.proof.lock().unwrap_or_else(|e| e.into_inner()) =
                (Some(Zeroizing::new(p.to_owned())), false);
        }
    }

    /// The proof the daemon handed out since the last call, if it did: to keep for later runs.
    pub fn take_new_proof(&self) -> Option<Zeroizing<String>> {
        let mut g = self.proof.lock().unwrap_or_else(|e| e.into_inner());
        if std::mem::take(&mut g.1) { g.0.clone() } else { None }
    }

    /// Sends one request; returns the body of a 2xx answer, or the daemon's error.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let addr = self.target.addr.clone();
        tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, body))
            .await
            .map_err(|_| ClientError::Timeout { addr })?
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let addr = &self.target.addr;
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout { addr: addr.clone() })?
            .map_err(|e| ClientError::Connect { addr: addr.clone(), reason: e.to_string() })?;
        let name = ServerName::try_from(self.target.server_name.clone()).map_err(|_| {
            ClientError::Setup(format!(
                "server name {:?} is not a DNS name or IP address",
                self.target.server_name
            ))
        })?;
        let tls = TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| ClientError::Tls { addr: addr.clone(), reason: e.to_string() })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.target.server_name.as_str());
        if !self.target.token.is_empty() {
            req = req.header(AUTHORIZATION, format!("Bearer {}", self.target.token.as_str()));
        }
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        if let Some(p) = &self.proof.lock().unwrap_or_else(|e| e.into_inner()).0 {
            req = req.header(super::proof::HEADER, p.as_str());
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| ClientError::Http(e.to_string()))?;
        let status = resp.status();
        if let Some(p) = resp.headers().get(super::proof::HEADER).and_then(|v| v.to_str().ok()) {
            *self.proof.lock().unwrap_or_else(|e| e.into_inner()) =
                (Some(Zeroizing::new(p.to_owned())), true);
        }
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?
            .to_bytes();
        if status.is_success() {
            return Ok(bytes);
        }
        Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => ClientError::Api {
                status,
                code: e.error.code,
                message: e.error.message,
                retry_after: e.error.retry_after_secs,
            },
            Err(_) => ClientError::Api {
                status,
                code: "unknown".into(),
                message: format!("{status}: {}", String::from_utf8_lossy(&bytes).trim()),
                retry_after: None,
            },
        })
    }

    /// Sends `body` as JSON (if any) and decodes the JSON answer.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let body = body
            .map(|b| serde_json::to_vec(b).map_err(|e| ClientError::Setup(e.to_string())))
            .transpose()?;
        let bytes = self.send(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(server_name: &str, addr: &str) -> Target {
        Target {
            addr: addr.into(),
            server_name: server_name.into(),
            ca: PathBuf::new(),
            token: Zeroizing::new(String::new()),
        }
    }

    #[test]
    fn each_daemon_gets_its_own_default_proof_file_even_when_two_share_a_server_name() {
        let args = ConnectArgs::default();
        let home = std::env::var_os("HOME").expect("tests run with a HOME");
        let file = |name, addr| args.proof_file(&target(name, addr)).unwrap();
        let a1 = file("a", "127.0.0.1:7201");
        assert_eq!(a1, Path::new(&home).join(".local/state/imcrypt/a@127.0.0.1_7201.proof"));
        assert_ne!(a1, file("a", "127.0.0.1:7202"), "same name, another daemon");
        assert_ne!(a1, file("b", "127.0.0.1:7201"));
        assert_eq!(a1, file("a", "127.0.0.1:7201"));
        let given = ConnectArgs { proof_file: Some("/tmp/p".into()), ..ConnectArgs::default() };
        assert_eq!(given.proof_file(&target("a", "x:1")).unwrap(), Path::new("/tmp/p"));
    }
}
