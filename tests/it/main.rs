//! Integration tests over real sockets and the built binary. One test binary, one module per area.

mod cli;
mod delivery;
mod fuzz;
mod hostile;
mod plugin;
mod process;
mod real;
mod teleport;
