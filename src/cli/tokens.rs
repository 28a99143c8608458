//! `imcrypt admin token create|list|revoke`: the named administrators' tokens, either through
//! the admin API (an `admin` token) or with `--local` on the daemon's host, where the CLI
//! reads the daemon's config file and changes its token store itself (under the store's lock;
//! the running daemon sees the change at its next request).
//!
//! Invariants: a new token is printed once, alone on standard output (so `> FILE` keeps it and
//! nothing else), and never anywhere else; the explanation goes to standard error.

use hyper::Method;

use super::CliError;
use super::commands::{Common, NO_BODY, Output, call, print_done, print_json};
use crate::admin::api;
use crate::admin::roles::AdminRole;
use crate::admin::tokens::{TokenFile, TokensError};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum AdminCommand {
    /// Named administrators' tokens and their roles (docs/admin.md, "Administrators and
    /// roles").
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

/// Where a token command is carried out.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Local {
    /// Change the daemon's token store directly on its host (needs --config and the rights of
    /// the daemon's user) instead of through the admin API with an admin token.
    #[arg(long, requires = "config")]
    local: bool,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum TokenCommand {
    /// Make a token for a named administrator; it is printed this once (only its hash is kept).
    Create {
        /// The administrator's name: 1 to 64 letters, digits, '-', '_' or '.'.
        #[arg(long)]
        name: String,
        /// viewer, operator, admin or key-custodian.
        #[arg(long)]
        role: AdminRole,
        #[command(flatten)]
        local: Local,
        #[command(flatten)]
        common: Common,
    },
    /// List the administrators' tokens (names, roles, when made and revoked; never a token).
    List {
        #[command(flatten)]
        local: Local,
        #[command(flatten)]
        common: Common,
    },
    /// Revoke an administrator's token: it is refused from its next request.
    Revoke {
        /// The administrator's name.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        local: Local,
        #[command(flatten)]
        common: Common,
    },
}

impl clap::builder::ValueParserFactory for AdminRole {
    type Parser = clap::builder::ValueParser;
    fn value_parser() -> Self::Parser {
        clap::builder::ValueParser::new(|s: &str| s.parse::<AdminRole>())
    }
}

/// The token store of the daemon whose config file `common` names.
fn local_file(common: &Common) -> Result<TokenFile, CliError> {
    let path = common.conn.config.as_ref().ok_or(CliError::LocalWithoutConfig)?;
    let config = crate::config::Config::load(path)?;
    Ok(TokenFile::local(&config)?)
}

/// As [`local_file`], for a change: the store is first made from the admin token file if the
/// daemon has not yet done so (and that is said).
fn local_file_to_change(common: &Common) -> Result<TokenFile, CliError> {
    let file = local_file(common)?;
    if file.import_if_missing(now())? {
        eprintln!(
            "note: the admin token file {} is now the administrator \"admin\" with the role admin",
            file.legacy().display()
        );
    }
    Ok(file)
}

fn now() -> u64 {
    crate::clock::now().unix_secs()
}

fn time(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
        .to_string()
}

pub(crate) fn admin(cmd: AdminCommand) -> Result<(), CliError> {
    let AdminCommand::Token { command } = cmd;
    match command {
        TokenCommand::Create { name, role, local, common } => {
            let created = if local.local {
                let new = local_file_to_change(&common)?.create_local(&name, role, now())?;
                api::CreatedToken { info: new.info, token: new.token }
            } else {
                let body = api::CreateTokenRequest { name, role };
                call(&common, Method::POST, "/v1/tokens", Some(&body))?
            };
            if common.output == Output::Json {
                return print_json(&created);
            }
            eprintln!(
                "the token of administrator {} (role {}) follows; it is shown this once, only its \
                 hash is kept: hand it over and keep it secret",
                created.info.name, created.info.role
            );
            println!("{}", created.token.as_str());
            Ok(())
        }
        TokenCommand::List { local, common } => {
            let list = if local.local {
                api::TokenList { tokens: local_file(&common)?.list()? }
            } else {
                call(&common, Method::GET, "/v1/tokens", NO_BODY)?
            };
            if common.output == Output::Json {
                return print_json(&list);
            }
            println!("{:<24} {:<14} {:<21} REVOKED", "NAME", "ROLE", "CREATED");
            for t in &list.tokens {
                let revoked = t.revoked_unix.map(time).unwrap_or_else(|| "-".into());
                println!("{:<24} {:<14} {:<21} {revoked}", t.name, t.role, time(t.created_unix));
            }
            Ok(())
        }
        TokenCommand::Revoke { name, local, common } => {
            let done = if local.local {
                let r = local_file_to_change(&common)?.revoke_local(&name, now())?;
                api::Done {
                    message: format!(
                        "the token of administrator {} (role {}) is revoked: the daemon refuses \
                         it from its next request",
                        r.info.name, r.info.role
                    ),
                    notes: r.note.into_iter().collect(),
                }
            } else {
                let path = format!("/v1/tokens/{}", super::commands::path_segment(&name)?);
                call(&common, Method::DELETE, &path, NO_BODY)?
            };
            print_done(&common, &done)
        }
    }
}

impl From<TokensError> for CliError {
    fn from(e: TokensError) -> Self {
        CliError::Tokens(e)
    }
}
