//! Integration tests over real sockets and the built binary. One test binary, one module per area.
// `pub` here means "shared between the modules of this binary"; nothing is exported.
#![allow(unreachable_pub)]

mod access_lists;
mod aiosmtpd;
mod cli;
mod daemon;
mod delivery;
mod fake_fidelity;
mod fuzz;
mod helm;
mod hostile;
mod install;
mod mailgun;
mod monitoring;
mod native_roots;
mod ops;
mod plugin;
mod postfix;
mod process;
mod real;
mod reminders;
mod replicas;
mod requester;
mod review_class;
mod review_cross;
mod review_fixes;
mod review_fixes10;
mod review_fixes11;
mod review_fixes2;
mod review_fixes3;
mod review_fixes4;
mod review_fixes9_smtp;
mod review_lists;
mod review_logging;
mod review_smtp;
mod review_third;
mod rules;
mod scale;
mod scan_wire;
mod smtp;
mod smtp_session;
mod support;
mod teleport;
mod watcher;
