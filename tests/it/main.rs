//! Integration tests over real sockets and the built binary. One test binary, one module per area.

mod aiosmtpd;
mod cli;
mod mailgun;
mod native_roots;
mod smtp;
mod support;
