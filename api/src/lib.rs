//! The contract between the Weft operator and the Weft proxy: the routing
//! table format (`routes.json`), identity file names, ports, paths,
//! environment variables and SPIFFE IDs.
//!
//! Plain data and pure functions only (serde, no async runtime, no
//! Kubernetes client), so both sides and every test can depend on it cheaply.
#![forbid(unsafe_code)]

pub mod duration;
pub mod names;
pub mod net;
pub mod routes;
pub mod spiffe;
pub mod validate;

pub use routes::RoutesTable;
pub use spiffe::{SpiffeId, SpiffeIdError};
pub use validate::Problem;
