//! The Weft sidecar proxy.
//!
//! Layers, lower to upper: `identity`/`tls` (certificates and rustls
//! configs), `table` (the routing table as the hot path reads it), `reload`
//! (files → validated config, swapped atomically), `metrics`, then the
//! listeners `outbound`, `inbound` and `admin`, composed by `run`. `init` is
//! the separate init-container command that installs iptables rules.
#![forbid(unsafe_code)]

pub mod admin;
pub mod authz;
pub mod identity;
pub mod inbound;
pub mod init;
pub mod metrics;
pub mod orig_dst;
pub mod outbound;
pub mod relay;
pub mod reload;
pub mod run;
pub mod state;
pub mod table;
pub mod tls;
