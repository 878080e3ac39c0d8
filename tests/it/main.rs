//! Integration tests over real sockets and the built binary. One test binary, one module per area.

mod cli;
mod fakes;
mod plugin;
mod real;
mod teleport;
