//! The end-to-end harness: a test certificate authority, kubelet-style
//! mounted directories, pods as Linux network namespaces, and the sample
//! application. Test code only: it panics on setup failures with a message
//! saying what failed, which is what a test wants.
#![forbid(unsafe_code)]

pub mod app;
pub mod mount;
pub mod netns;
pub mod pki;
