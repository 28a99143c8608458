//! The `imcrypt` command line: argument parsing, dispatch, and the one place where errors
//! become a message on stderr and an exit code.
//!
//! Exit codes: 0 success; 1 the operation failed (I/O, refused by the daemon); 2 usage error
//! (clap); 3 invalid input (a key, a file, a value that does not pass validation).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::crypto::export::{PublicKeyError, parse_public_key};

#[derive(Debug, Parser)]
#[command(
    name = "imcrypt",
    version,
    about = "Encrypted IM compliance archives across peered clusters"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check that an RSA public key is acceptable for key download and print its fingerprint.
    CheckKey {
        /// PEM file: SPKI (BEGIN PUBLIC KEY) or PKCS#1 (BEGIN RSA PUBLIC KEY).
        public_key: PathBuf,
    },
}

/// Everything a command can fail with, mapped to an exit code in `exit_code`.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    PublicKey { path: PathBuf, source: PublicKeyError },
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Read { .. } => 1,
            CliError::PublicKey { .. } => 3,
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imcrypt: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::CheckKey { public_key } => check_key(public_key),
    }
}

fn check_key(path: PathBuf) -> Result<(), CliError> {
    let pem = std::fs::read_to_string(&path)
        .map_err(|source| CliError::Read { path: path.clone(), source })?;
    let r = parse_public_key(&pem).map_err(|source| CliError::PublicKey { path, source })?;
    println!("RSA {} bits, exponent 65537", r.bits());
    println!("sha256 fingerprint (SPKI DER): {}", r.fingerprint_hex());
    if r.bits() < 3072 {
        println!("acceptable for key download; 3072 bits or more are recommended");
    } else {
        println!("acceptable for key download");
    }
    Ok(())
}
