//! The Weft sidecar proxy.
//!
//! Layers, lower to upper: `identity`/`tls` (certificates and rustls
//! configs), `table` (the routing table as the hot path reads it),
//! `routes_doc` (routes keys → table) and `arbiter` (which source's table
//! to use), `api_client`/`api_protocol`/`api_watch` (the routes ConfigMap
//! through the API server), `reload` (files and API updates → validated config, swapped
//! atomically), `metrics`, then the listeners `outbound`, `inbound` and
//! `admin`, composed by `run`. `init` is the separate init-container command
//! that installs iptables rules.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod api_client;
pub mod api_protocol;
pub mod api_watch;
pub mod arbiter;
pub mod authz;
pub mod balance;
pub mod client_hello;
pub mod correlation;
pub mod detect;
pub mod h1_upstream;
pub mod h2_upstream;
pub mod hop;
pub mod http;
pub mod identity;
pub mod idle;
pub mod inbound;
pub mod inbound_http;
pub mod init;
pub mod metrics;
pub mod orig_dst;
pub mod outbound;
pub mod outbound_http;
pub mod relay;
pub mod reload;
pub mod retry;
pub mod routes_doc;
pub mod run;
pub mod series;
pub mod sniff;
pub mod state;
pub mod table;
pub mod tls;
pub mod upstream;
pub mod wait_ready;
