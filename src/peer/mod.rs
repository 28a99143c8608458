//! The intercluster link: HTTPS/JSON over mutually authenticated TLS 1.3.

pub mod tls;
