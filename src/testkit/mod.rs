//! Test peers and fixtures for tests, benchmarks and the sandbox (feature `testkit`): an SMTP
//! receiver, a Mailgun stand-in, a recording mailer and throwaway TLS material. Never part of the
//! released binary.

pub mod mailer;
pub mod mailgun;
pub mod smtp;
pub mod tls;
