//! Test peers (feature `testkit`): a fake Teleport Auth Service with real mTLS and the cluster PKI
//! behind it, a fake Proxy, an SMTP receiver, a Mailgun stand-in, a recording mailer, throwaway
//! TLS material, and Postfix's `smtp-sink` run as a child process. Used by the tests, the
//! benchmark and the sandbox; never part of the released binary.

pub mod auth;
pub mod mailer;
pub mod mailgun;
pub mod pki;
pub mod postfix;
pub mod proxy;
pub mod smtp;
pub mod tls;
