//! Integration tests over real sockets and the built binary. One test binary, one module per area.

mod aiosmtpd;
mod cli;
mod delivery;
mod fakes;
mod fuzz;
mod helm;
mod hostile;
mod install;
mod mailgun;
mod native_roots;
mod ops;
mod plugin;
mod process;
mod real;
mod replicas;
mod rules;
mod smtp;
mod support;
mod teleport;
