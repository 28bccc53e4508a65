//! The Weft control plane.
//!
//! Pure logic — `crd` (the MeshPolicy resource), `cluster` (the index of
//! watched objects), `endpoints` (EndpointSlices derived from Pods, for the
//! local runtime), `policy` (MeshPolicy validation and precedence),
//! `desired` (cluster → routing tables and identities) and `ca` (the
//! certificate authority) — is separate from the runtimes that feed it and
//! write its output.
#![forbid(unsafe_code)]

pub mod admission;
pub mod ca;
pub mod cluster;
pub mod crd;
pub mod crdgen;
pub mod desired;
pub mod endpoints;
pub mod inject;
pub mod inject_docs;
pub mod k8s;
pub mod kubelet;
pub mod local;
pub mod logging;
pub mod manifests;
pub mod policy;
pub mod scope;
