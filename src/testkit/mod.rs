//! Test peers (feature `testkit`): a fake Teleport Auth Service with real mTLS, the cluster PKI
//! behind it, and more. Used by the tests, the benchmark and the sandbox; never in the release binary.

pub mod auth;
pub mod pki;
pub mod proxy;
