//! The script of `fake_fidelity::transcript` against the real Auth Service: what the real one answers
//! is pinned in `fake_fidelity::REAL_TRANSCRIPT`, which the fake must also give.

use crate::fake_fidelity::{self, Driver, REAL_TRANSCRIPT};

use super::RealCluster;
use super::rbac::{PLUGIN_USER, REQUESTED_ROLE, REVIEWER1, REVIEWER2};

struct RealDriver<'a>(&'a RealCluster);

impl Driver for RealDriver<'_> {
    fn create_two_of_two(&self, user: &str, reason: &str, reviewers: &[&str]) -> String {
        self.0
            .create_request(user, &[REQUESTED_ROLE], reason, reviewers)
    }
    fn delete(&self, id: &str) {
        self.0.delete_request(id);
    }
}

#[test]
fn the_real_auth_service_gives_the_pinned_transcript() {
    let cluster = shared_real_cluster!();
    let addr = cluster.auth_addr().to_string();
    let plugin = cluster.identity_of(PLUGIN_USER);
    let r1 = cluster.identity_of(REVIEWER1);
    let r2 = cluster.identity_of(REVIEWER2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let got = runtime.block_on(async {
        let plugin = fake_fidelity::client(&addr, &plugin).await;
        let r1 = fake_fidelity::client(&addr, &r1).await;
        let r2 = fake_fidelity::client(&addr, &r2).await;
        fake_fidelity::transcript(&RealDriver(cluster), &plugin, &r1, &r2).await
    });
    eprintln!("real transcript:\n{}", got.join("\n"));
    assert_eq!(got, REAL_TRANSCRIPT, "\n{}", got.join("\n"));
}
