//! The local admin listener. For now it serves the read-only status, `GET /v1/status`, as
//! JSON on loopback; the full admin API (commands, token, TLS, rate limits) builds on it.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::daemon::Control;

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_str(content_type).expect("a valid header value"),
    );
    r
}

async fn route<B>(req: Request<B>, source: Control) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/v1/status") => match source.status().await {
            Ok(s) => respond(
                StatusCode::OK,
                "application/json",
                serde_json::to_vec_pretty(&s).expect("status serializes"),
            ),
            Err(_) => respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", b"stopping".to_vec()),
        },
        (_, "/v1/status") => {
            respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", b"use GET".to_vec())
        }
        (_, path) => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("no such endpoint {path}").into_bytes(),
        ),
    }
}

/// Serves the admin listener until the task is aborted.
pub async fn serve(listener: TcpListener, source: Control) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let source = source.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let source = source.clone();
                async move { Ok::<_, std::convert::Infallible>(route(req, source).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
