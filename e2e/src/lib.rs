//! The end-to-end harness: pods as Linux network namespaces (`netns`), the
//! operator's local runtime writing their mounts and a proxy in each
//! (`mesh`), what runs in each pod according to its manifest (`kubelet`),
//! the sample application and traffic generator (`app`, `load`), metrics
//! reading (`metrics`), the demo (`demo`), and for tests that do without
//! the operator a test CA (`pki`) and kubelet-style mounts (`mount`).
//! Test code: it panics on setup failures with a message saying what
//! failed, which is what a test wants (the demo prints the message).
#![forbid(unsafe_code)]

pub mod app;
pub mod demo;
pub mod kubelet;
pub mod load;
pub mod mesh;
pub mod metrics;
pub mod mount;
pub mod netns;
pub mod pki;
