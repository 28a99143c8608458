//! imcrypt keeps instant-message compliance archives encrypted across a network of peered IM
//! clusters. See docs/ for the behaviour, the formats and the operations guide.

// Denied everywhere but in crypto::locked, which places key material in pages of its own.
#![deny(unsafe_code)]
#![warn(unreachable_pub)]

pub mod admin;
pub mod alarm;
pub mod archive;
pub mod audit;
mod blocking;
pub mod caps;
pub mod cli;
mod clock;
pub mod cluster;
pub mod config;
pub mod crypto;
pub mod daemon;
pub mod demo;
mod duration;
#[doc(hidden)]
pub mod fuzzing;
pub mod hotpath;
pub mod ids;
pub mod metrics;
pub mod peer;
mod pem_files;
mod pki;
pub mod store;
mod systemd;
