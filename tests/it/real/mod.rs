//! Tests against a real Teleport cluster (auth + proxy on loopback, real `tctl` and `tsh`).
//!
//! They run only when `TELEPORT_BIN`, `TCTL_BIN` and `TSH_BIN` name the binaries; otherwise each
//! prints a `SKIPPED real_cluster::<test>` line and passes. None of Teleport's code or binaries
//! is part of this repository. What these tests pinned about the real Teleport is written up in
//! `FINDINGS.md` beside this file.
//!
//! The harness: [`RealCluster`] (start, `tctl`, `tsh`, identities), RBAC from the user guide
//! (`rbac`), access-request helpers (`requests`), an nginx L7 balancer (`nginx`), TLS/HTTP
//! probes (`probe`), the SQLite backend (`backend`).

// The harness is shared by tests yet to come; not every helper is used yet.
#![allow(dead_code)]

/// The calling function's name (the test's name).
macro_rules! test_name {
    () => {{
        fn f() {}
        let path = std::any::type_name_of_val(&f);
        let path = path.strip_suffix("::f").unwrap_or(path);
        path.rsplit("::").next().unwrap_or(path)
    }};
}

/// The real binaries, or — when the environment does not name them — a SKIPPED line on
/// stderr and an early (passing) return from the calling test.
macro_rules! real_binaries_or_skip {
    () => {
        match crate::real::Binaries::from_env() {
            Ok(bins) => bins,
            Err(missing) => {
                crate::real::print_skipped(test_name!(), &missing);
                return;
            }
        }
    };
}

/// A fresh cluster of the calling test's own, or SKIPPED (see `real_binaries_or_skip!`).
macro_rules! real_cluster {
    () => {
        crate::real::RealCluster::start_with(real_binaries_or_skip!())
    };
}

/// The cluster shared by the tests that only read or add requests, with the RBAC in place, or
/// SKIPPED (see `real_binaries_or_skip!`).
macro_rules! shared_real_cluster {
    () => {
        crate::real::shared(real_binaries_or_skip!())
    };
}

mod backend;
mod certs;
mod cluster;
mod nginx;
mod plugins;
pub mod probe;
mod rbac;
mod requests;
mod supervisor;

mod facts;
mod interop;
mod rules;
mod smoke;
mod wire;

use std::sync::OnceLock;

pub use cluster::{Binaries, IdentityFormat, RealCluster, SignedIdentity};
pub use nginx::L7Balancer;
pub use requests::RequestState;

/// Prints the loud line that says a real-cluster test did not run. It goes to the process's
/// stderr directly, past the test harness's output capture, so it shows for passing tests too.
pub fn print_skipped(test: &str, missing: &[&str]) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED real_cluster::{test}: {} not set (see README \"Real-cluster tests\")",
        missing.join(", ")
    );
}

/// One cluster for the whole test binary, started on first use with the RBAC created.
///
/// It lives in a `static`, so it is never dropped: its watchdog stops teleport and deletes its
/// directory when the test process exits.
pub fn shared(bins: Binaries) -> &'static RealCluster {
    static SHARED: OnceLock<RealCluster> = OnceLock::new();
    SHARED.get_or_init(|| {
        let cluster = RealCluster::start_with(bins);
        cluster.create_rbac();
        cluster
    })
}
