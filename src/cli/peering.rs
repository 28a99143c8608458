//! `imcrypt peering token|establish|list|delete`: peering two clusters, each with its own CA,
//! with a one-time token (docs/operations.md, "Peering").
//!
//! Invariants: a new token is printed once, alone on standard output (so `> FILE` keeps it and
//! nothing else), the explanation on standard error; `establish` takes the token from a file
//! (`--from-file`) or standard input as well as from the command line, so it need not land in a shell's
//! history; no token is ever printed by `establish`, `list` or an error.

use std::io::Read;
use std::path::PathBuf;

use hyper::Method;
use zeroize::Zeroizing;

use super::CliError;
use super::commands::{Common, NO_BODY, Output, call, path_segment, print_done, print_json};
use crate::admin::api;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum PeeringCommand {
    /// Make a one-time token for cluster CLUSTER to peer with this one; it is printed this
    /// once (only the SHA-256 of its secret is kept).
    Token {
        /// The cluster the token is for: only it can use the token.
        #[arg(long = "for", value_name = "CLUSTER")]
        for_cluster: String,
        /// How long the token is valid: 1m to 7d (e.g. 30m, 1h, 2d).
        #[arg(long, default_value = "1h")]
        expires: String,
        #[command(flatten)]
        common: Common,
    },
    /// Peer with the cluster that made TOKEN: checks its certificate against the CA the token
    /// pins, proves the token and exchanges CAs.
    Establish {
        /// The peering token; "-" or omitted: read from standard input (keeps it out of the
        /// shell's history).
        #[arg(value_name = "TOKEN", conflicts_with = "from_file")]
        peering_token: Option<String>,
        /// Read the peering token from this file.
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// List the peers (and whether each came from a token, the config file or an
    /// administrator) and the tokens still usable.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Delete the peering with CLUSTER (peered by token); CLUSTER deletes it too.
    Delete {
        /// The peer cluster's id.
        cluster: String,
        #[command(flatten)]
        common: Common,
    },
}

/// The token of `establish`, from the argument, a file or standard input.
fn token_text(arg: Option<String>, file: Option<PathBuf>) -> Result<Zeroizing<String>, CliError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(&path)
            .map_err(|source| CliError::Read { path: path.clone(), source })?;
        return Ok(Zeroizing::new(text.trim().to_owned()));
    }
    match arg {
        Some(t) if t != "-" => Ok(Zeroizing::new(t)),
        _ => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprintln!("paste the peering token, then press Enter and Ctrl-D:");
            }
            let mut text = Zeroizing::new(String::new());
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|source| CliError::Read { path: "standard input".into(), source })?;
            Ok(Zeroizing::new(text.trim().to_owned()))
        }
    }
}

fn time(unix_ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub(crate) fn peering(cmd: PeeringCommand) -> Result<(), CliError> {
    match cmd {
        PeeringCommand::Token { for_cluster, expires, common } => {
            let body = api::PeeringTokenRequest { for_cluster, expires: Some(expires) };
            let t: api::PeeringToken =
                call(&common, Method::POST, "/v1/peering/tokens", Some(&body))?;
            if common.output == Output::Json {
                return print_json(&t);
            }
            eprintln!(
                "peering token for cluster {} follows, valid until {} and only once; run \
                 `imcrypt peering establish` with it on cluster {}. Anyone holding it until \
                 then can pose as that cluster: hand it over privately",
                t.for_cluster,
                time(t.expires_unix_ms),
                t.for_cluster
            );
            println!("{}", t.token.as_str());
            Ok(())
        }
        PeeringCommand::Establish { peering_token, from_file, common } => {
            let token = token_text(peering_token, from_file)?;
            let body = api::PeeringEstablishRequest { token };
            let done: api::Done =
                call(&common, Method::POST, "/v1/peering/establish", Some(&body))?;
            print_done(&common, &done)
        }
        PeeringCommand::List { common } => {
            let l: api::PeeringList = call(&common, Method::GET, "/v1/peering", NO_BODY)?;
            if common.output == Output::Json {
                return print_json(&l);
            }
            println!("{:<24} {:<8} {:<28} SINCE", "CLUSTER", "SOURCE", "ADDRESS");
            for p in &l.peers {
                let since = p.since_unix_ms.map(time).unwrap_or_else(|| "-".into());
                println!("{:<24} {:<8} {:<28} {since}", p.cluster, p.source, p.address);
            }
            for t in &l.tokens {
                println!(
                    "token for cluster {} usable until {}",
                    t.for_cluster,
                    time(t.expires_unix_ms)
                );
            }
            Ok(())
        }
        PeeringCommand::Delete { cluster, common } => {
            let path = format!("/v1/peering/{}", path_segment(&cluster)?);
            let done: api::Done = call(&common, Method::DELETE, &path, NO_BODY)?;
            print_done(&common, &done)
        }
    }
}
