//! The RBAC of the email plugin's user guide, plus what the plugin tests need on top of it.
//!
//! From the guide: role `editor-reviewer` (may review requests for the preset role `editor`),
//! role `editor-requester` (may request `editor`, one approval or one denial decides), user
//! `myuser` with `editor-requester`, and the plugin user `access-plugin` with role
//! `access-plugin`. Added here: reviewers `reviewer1@example.com` and `reviewer2@example.com`
//! (`editor-reviewer`), and `myuser-2of2`, whose role `editor-requester-2of2` needs two
//! approvals or two denials. The guide's `access-plugin-impersonator` role is not needed:
//! `tctl --config` is the local admin, which may sign for any user.
//!
//! Roles the Community Edition refuses to create (see `backend.rs`) are written straight into
//! the backend; [`Rbac::via_backend`] lists them.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::backend::role_key;
use super::cluster::RealCluster;

/// The role requested in every test request (a preset role).
pub const REQUESTED_ROLE: &str = "editor";
/// May review requests for `editor`.
pub const REVIEWER_ROLE: &str = "editor-reviewer";
/// May request `editor`; thresholds approve 1 / deny 1 (the guide's role).
pub const REQUESTER_ROLE: &str = "editor-requester";
/// May request `editor`; thresholds approve 2 / deny 2.
pub const STRICT_REQUESTER_ROLE: &str = "editor-requester-2of2";
/// The plugin's role.
pub const PLUGIN_ROLE: &str = "access-plugin";

/// The guide's requester.
pub const REQUESTER: &str = "myuser";
/// A requester whose requests need two approvals or two denials.
pub const STRICT_REQUESTER: &str = "myuser-2of2";
pub const REVIEWER1: &str = "reviewer1@example.com";
pub const REVIEWER2: &str = "reviewer2@example.com";
/// The plugin's user.
pub const PLUGIN_USER: &str = "access-plugin";

/// What [`RealCluster::create_rbac`] found and did.
#[derive(Debug)]
pub struct Rbac {
    /// The preset `access-plugin` role as the cluster had it before we touched anything, or
    /// `None` if the cluster has no such preset (then the harness created its own).
    pub preset_access_plugin: Option<Value>,
    /// Roles written into the backend because `tctl create` refused them.
    pub via_backend: Vec<String>,
}

/// The `access-plugin` role the harness creates when the cluster has no preset one: what the
/// plugin calls need (watch and read access requests and access monitoring rules, write
/// plugin data, read users for their traits), as in Teleport's own plugin integration tests
/// and the README's role.
pub fn fallback_access_plugin_role() -> Value {
    json!({
        "kind": "role", "version": "v7",
        "metadata": {"name": PLUGIN_ROLE, "description": "teleport-email tests: stand-in for the Enterprise preset"},
        "spec": {"allow": {"rules": [
            {"resources": ["access_request"], "verbs": ["list", "read"]},
            {"resources": ["access_plugin_data"], "verbs": ["update"]},
            {"resources": ["access_monitoring_rule"], "verbs": ["list", "read"]},
            // The requester's traits, for rules whose condition reads `user.traits`.
            {"resources": ["user"], "verbs": ["read"]},
        ]}},
    })
}

fn role(name: &str, allow: Value) -> Value {
    json!({"kind": "role", "version": "v7", "metadata": {"name": name}, "spec": {"allow": allow}})
}

fn user(name: &str, roles: &[&str]) -> Value {
    json!({"kind": "user", "version": "v2", "metadata": {"name": name}, "spec": {"roles": roles}})
}

impl RealCluster {
    /// Creates the roles and users described in the module docs (once; later calls return
    /// what the first one did).
    pub fn create_rbac(&self) -> &Rbac {
        self.rbac.get_or_init(|| self.create_rbac_now())
    }

    fn create_rbac_now(&self) -> Rbac {
        let preset = self.tctl(&["get", &format!("roles/{PLUGIN_ROLE}"), "--format=json"]);
        let preset_access_plugin = preset.success().then(|| first_of_list(&preset.stdout));

        let mut roles = vec![
            role(
                REVIEWER_ROLE,
                json!({"review_requests": {"roles": [REQUESTED_ROLE]}}),
            ),
            role(
                REQUESTER_ROLE,
                json!({"request": {"roles": [REQUESTED_ROLE], "thresholds": [{"approve": 1, "deny": 1}]}}),
            ),
            role(
                STRICT_REQUESTER_ROLE,
                json!({"request": {"roles": [REQUESTED_ROLE], "thresholds": [{"approve": 2, "deny": 2}]}}),
            ),
        ];
        if preset_access_plugin.is_none() {
            roles.push(fallback_access_plugin_role());
        }
        let mut via_backend = Vec::new();
        for role in &roles {
            let name = role["metadata"]["name"]
                .as_str()
                .expect("role name")
                .to_owned();
            if !self.create_resources(std::slice::from_ref(role)) {
                self.backend().put(&role_key(&name), &role.to_string());
                self.wait_for_role(&name);
                via_backend.push(name);
            }
        }

        let users = [
            user(REQUESTER, &[REQUESTER_ROLE]),
            user(STRICT_REQUESTER, &[STRICT_REQUESTER_ROLE]),
            user(REVIEWER1, &[REVIEWER_ROLE]),
            user(REVIEWER2, &[REVIEWER_ROLE]),
            user(PLUGIN_USER, &[PLUGIN_ROLE]),
        ];
        assert!(
            self.create_resources(&users),
            "creating the users was refused"
        );
        Rbac {
            preset_access_plugin,
            via_backend,
        }
    }

    /// `tctl create -f` of these resources; `false` if refused as an Enterprise-only feature,
    /// panics on any other failure.
    pub fn create_resources(&self, resources: &[Value]) -> bool {
        // JSON is YAML, and `---` separates documents.
        let text: Vec<String> = resources.iter().map(Value::to_string).collect();
        let file = self
            .scratch_dir()
            .join(format!("resources-{}.yaml", rand::random::<u64>()));
        std::fs::write(&file, text.join("\n---\n")).expect("write resources");
        let run = self.tctl(&["create", "-f", &file.display().to_string()]);
        if !run.success() && run.stderr.contains("only available in enterprise") {
            return false;
        }
        run.ok();
        true
    }

    /// Waits until `tctl get roles/<name>` finds the role (a backend write reaches the Auth
    /// Service's cache within about a second).
    pub fn wait_for_role(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let run = self.tctl(&["get", &format!("roles/{name}"), "--format=json"]);
            if run.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "role {name} did not appear: {run}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// `tctl get … --format=json` prints a list; its first element.
#[track_caller]
pub fn first_of_list(stdout: &str) -> Value {
    let list: Value =
        serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    list.get(0)
        .cloned()
        .unwrap_or_else(|| panic!("empty list: {stdout}"))
}
