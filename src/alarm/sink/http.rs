//! The one HTTP client of the Alertmanager and webhook sinks: a POST of a JSON body on a fresh
//! HTTP/1.1 connection (plain, or TLS verified against the sink's CA), bounded in time.
//!
//! Invariants: a POST is a success only when the server answered 2xx; every failure says what
//! failed (connect, TLS, HTTP, the status and the start of the answer), never the body sent
//! (it may carry a signature) and never a header value.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;

use super::stream;

/// How long one POST may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(10);

/// An `http://` or `https://` URL split for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpUrl {
    pub(crate) https: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
    /// Path and query, starting with `/`.
    pub(crate) path: String,
}

impl HttpUrl {
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let uri: hyper::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("{s:?}: the URL must start with http:// or https://")),
        };
        let host =
            uri.host().filter(|h| !h.is_empty()).ok_or_else(|| format!("{s:?} has no host"))?;
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let path = if path.is_empty() { "/".to_owned() } else { path.to_owned() };
        Ok(Self {
            https,
            host: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
            port,
            path,
        })
    }

    /// The same server with `path` (joined to this URL's path without doubling the `/`).
    pub(crate) fn join(&self, path: &str) -> Self {
        let base = self.path.split('?').next().unwrap_or("").trim_end_matches('/');
        Self { path: format!("{base}{path}"), ..self.clone() }
    }
}

/// Why a POST failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Connect(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("answered {status}: {body}")]
    Status { status: u16, body: String },
}

/// POSTs `body` (JSON) to `url` with `headers`.
pub(crate) async fn post_json(
    url: &HttpUrl,
    ca: Option<&Arc<[CertificateDer<'static>]>>,
    headers: &[(&str, String)],
    body: Bytes,
) -> Result<(), HttpError> {
    tokio::time::timeout(TIMEOUT, post_inner(url, ca, headers, body))
        .await
        .unwrap_or(Err(HttpError::Timeout(TIMEOUT)))
}

async fn post_inner(
    url: &HttpUrl,
    ca: Option<&Arc<[CertificateDer<'static>]>>,
    headers: &[(&str, String)],
    body: Bytes,
) -> Result<(), HttpError> {
    let ca = match (url.https, ca) {
        (true, Some(ca)) => Some(ca),
        // Never plain HTTP to an https URL (config load reads the CA for every https URL).
        (true, None) => return Err(HttpError::Connect("https without a CA file".into())),
        (false, _) => None,
    };
    let addr = format!("{}:{}", bracket(&url.host), url.port);
    let io = stream::connect(&addr, &url.host, ca).await.map_err(HttpError::Connect)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| HttpError::Http(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = hyper::Request::post(&url.path)
        .header(hyper::header::HOST, format!("{}:{}", bracket(&url.host), url.port))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, concat!("imcrypt/", env!("CARGO_PKG_VERSION")));
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let req = req.body(Full::new(body)).map_err(|e| HttpError::Http(e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(|e| HttpError::Http(e.to_string()))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let mut body = String::from_utf8_lossy(&body).trim().to_owned();
    if body.len() > 200 {
        let cut = (0..=200).rev().find(|i| body.is_char_boundary(*i)).unwrap_or(0);
        body.truncate(cut);
        body.push('…');
    }
    Err(HttpError::Status { status: status.as_u16(), body })
}

fn bracket(host: &str) -> String {
    if host.contains(':') { format!("[{host}]") } else { host.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_and_join() {
        let u = HttpUrl::parse("http://127.0.0.1:9093").unwrap();
        assert_eq!(
            (u.https, u.host.as_str(), u.port, u.path.as_str()),
            (false, "127.0.0.1", 9093, "/")
        );
        assert_eq!(u.join("/api/v2/alerts").path, "/api/v2/alerts");
        let u = HttpUrl::parse("https://am.example/prefix/").unwrap();
        assert_eq!((u.https, u.port), (true, 443));
        assert_eq!(u.join("/api/v2/alerts").path, "/prefix/api/v2/alerts");
        assert!(HttpUrl::parse("ftp://h/").is_err());
        assert!(HttpUrl::parse("not a url").is_err());
    }
}
