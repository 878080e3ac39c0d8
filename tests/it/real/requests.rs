//! Access requests on the real cluster: create, review, resolve, delete, inspect.
//!
//! Users act through `tsh` with their own identity (that is how suggested reviewers and
//! reviews are made); the "ruler" path — an admin approving or denying outright — is `tctl`.
//! `tctl request create` has no `--reviewers` flag, hence the two ways to create.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::backend::plugin_data_key;
use super::cluster::RealCluster;

/// `AccessRequestSpecV3.state` as `tctl get --format=json` prints it (a number).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestState {
    None,
    Pending,
    Approved,
    Denied,
    Promoted,
}

impl RequestState {
    fn from_number(n: u64) -> Self {
        match n {
            1 => RequestState::Pending,
            2 => RequestState::Approved,
            3 => RequestState::Denied,
            4 => RequestState::Promoted,
            _ => RequestState::None,
        }
    }
}

impl RealCluster {
    /// `user` creates a request for `roles` with `tsh request create --nowait`, suggesting
    /// `suggested_reviewers`; returns the request id.
    pub fn create_request(
        &self,
        user: &str,
        roles: &[&str],
        reason: &str,
        suggested_reviewers: &[&str],
    ) -> String {
        let identity = self.identity_of(user);
        let roles = format!("--roles={}", roles.join(","));
        let reason = format!("--reason={reason}");
        let reviewers = format!("--reviewers={}", suggested_reviewers.join(","));
        let mut args = vec!["request", "create", &roles, &reason, "--nowait"];
        if !suggested_reviewers.is_empty() {
            args.push(&reviewers);
        }
        let run = self.tsh(&identity, &args).ok();
        find_request_id(&format!("{}\n{}", run.stdout, run.stderr))
            .unwrap_or_else(|| panic!("no request id in the output of {run}"))
    }

    /// The admin creates a request on behalf of `user` (`tctl request create`, no suggested
    /// reviewers); returns the request id.
    pub fn create_request_as_admin(&self, user: &str, roles: &[&str], reason: &str) -> String {
        let run = self
            .tctl(&[
                "request",
                "create",
                user,
                &format!("--roles={}", roles.join(",")),
                &format!("--reason={reason}"),
            ])
            .ok();
        find_request_id(&run.stdout)
            .unwrap_or_else(|| panic!("no request id in the output of {run}"))
    }

    /// `reviewer` submits a review with `tsh request review --approve|--deny`.
    pub fn review(&self, reviewer: &str, id: &str, approve: bool, reason: &str) {
        let identity = self.identity_of(reviewer);
        let verdict = if approve { "--approve" } else { "--deny" };
        self.tsh(
            &identity,
            &[
                "request",
                "review",
                verdict,
                &format!("--reason={reason}"),
                id,
            ],
        )
        .ok();
    }

    /// The admin approves outright (`tctl request approve`), whatever the thresholds.
    pub fn approve_as_admin(&self, id: &str, reason: &str) {
        self.tctl(&["request", "approve", &format!("--reason={reason}"), id])
            .ok();
    }

    /// The admin denies outright (`tctl request deny`).
    pub fn deny_as_admin(&self, id: &str, reason: &str) {
        self.tctl(&["request", "deny", &format!("--reason={reason}"), id])
            .ok();
    }

    /// Deletes the request (`tctl request rm --force`). Without `--force`, v18 refuses to
    /// delete an approved request yet exits 0, so the flag is always given.
    pub fn delete_request(&self, id: &str) {
        self.tctl(&["request", "rm", "--force", id]).ok();
    }

    /// The request as `tctl get access_request/<id> --format=json` shows it; `None` if it does
    /// not exist (v18 then prints `[]` and exits 0).
    pub fn get_request(&self, id: &str) -> Option<Value> {
        let run = self
            .tctl(&["get", &format!("access_request/{id}"), "--format=json"])
            .ok();
        let list: Value =
            serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {run}"));
        list.get(0).cloned()
    }

    /// The request's state.
    #[track_caller]
    pub fn request_state(&self, id: &str) -> RequestState {
        let request = self
            .get_request(id)
            .unwrap_or_else(|| panic!("request {id} not found"));
        RequestState::from_number(request["spec"]["state"].as_u64().unwrap_or(0))
    }

    /// Waits up to `timeout` for the request to reach `state`.
    #[track_caller]
    pub fn wait_for_state(&self, id: &str, state: RequestState, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.request_state(id);
            if now == state {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "request {id} is {now:?}, not {state:?}, after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The plugin data stored for the request (all plugins), read from the backend: no `tctl`
    /// command shows plugin data. `None` if no plugin wrote any.
    pub fn get_plugin_data(&self, id: &str) -> Option<Value> {
        self.backend()
            .get(&plugin_data_key(id))
            .map(|bytes| serde_json::from_slice(&bytes).expect("plugin data is JSON"))
    }
}

/// The first UUID-shaped word in `text` (request ids are UUIDs).
pub fn find_request_id(text: &str) -> Option<String> {
    text.split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
        .find(|w| is_uuid(w))
        .map(str::to_owned)
}

fn is_uuid(w: &str) -> bool {
    w.len() == 36
        && w.char_indices().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}
