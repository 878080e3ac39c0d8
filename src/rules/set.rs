//! The Access Monitoring Rules that route this plugin's mail, as the cluster has them now: filled
//! by a listing at every (re)connect, kept current by the watch's rule events, and asked which
//! recipients a request has.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use super::condition::{Condition, ConditionError, Env};
use crate::teleport::MonitoringRule;

/// A rule, its condition parsed once.
struct Compiled {
    condition: Result<Condition, ConditionError>,
    recipients: Vec<String>,
}

type Rules = BTreeMap<String, Arc<Compiled>>;

/// The rules that apply to this plugin, by name.
pub struct RuleSet {
    plugin: &'static str,
    rules: RwLock<Arc<Rules>>,
}

impl RuleSet {
    /// An empty set for the rules whose notification names `plugin`.
    pub fn new(plugin: &'static str) -> Self {
        Self {
            plugin,
            rules: RwLock::default(),
        }
    }

    /// Replaces every rule (a fresh listing), keeping only those that apply.
    pub fn replace_all(&self, rules: Vec<MonitoringRule>) {
        let map = rules
            .into_iter()
            .filter(|r| r.applies_to(self.plugin))
            .map(|r| (r.name.clone(), Arc::new(compile(r))))
            .collect();
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
    }

    /// A rule created or changed; one that no longer applies is dropped.
    pub fn put(&self, rule: MonitoringRule) {
        self.change(|map| {
            map.remove(&rule.name);
            if rule.applies_to(self.plugin) {
                map.insert(rule.name.clone(), Arc::new(compile(rule)));
            }
        });
    }

    /// A rule deleted.
    pub fn delete(&self, name: &str) {
        self.change(|map| {
            map.remove(name);
        });
    }

    /// Edits a copy of the map (of shared rules) and puts it in place: readers keep the version
    /// they took.
    fn change(&self, edit: impl FnOnce(&mut Rules)) {
        let mut rules = self.rules.write().unwrap_or_else(|e| e.into_inner());
        let mut map = Rules::clone(&rules);
        edit(&mut map);
        *rules = Arc::new(map);
    }

    fn snapshot(&self) -> Arc<Rules> {
        Arc::clone(&self.rules.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// How many rules apply.
    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    /// Whether no rule applies (routing is then `role_to_recipients` alone).
    pub fn is_empty(&self) -> bool {
        self.snapshot().is_empty()
    }

    /// Whether any rule's condition reads `user.traits` (then the requester must be read).
    pub fn needs_user_traits(&self) -> bool {
        self.snapshot()
            .values()
            .any(|c| c.condition.as_ref().is_ok_and(Condition::needs_user_traits))
    }

    /// The recipients of every rule whose condition holds for `env`, in rule-name order, each
    /// once; `None` when no rule matches. A condition that does not parse or evaluate is no match
    /// (with a WARN naming the rule), as with the original. v18.0's conditions know nothing of
    /// the requested resources (their labels came in later 18.x releases), so neither do ours: a
    /// condition that names them does not parse.
    pub fn recipients(&self, request_id: &str, env: &Env) -> Option<Vec<String>> {
        let mut out: Option<Vec<String>> = None;
        for (name, rule) in self.snapshot().iter() {
            // A rule that names no recipients (one kept for automatic reviews, say) routes
            // nothing, as with the original: it neither adds nor replaces.
            if rule.recipients.is_empty() || !rule_matches(request_id, name, rule, env) {
                continue;
            }
            let out = out.get_or_insert_with(Vec::new);
            for r in &rule.recipients {
                if !out.contains(r) {
                    out.push(r.clone());
                }
            }
        }
        out
    }
}

fn rule_matches(request_id: &str, name: &str, rule: &Compiled, env: &Env) -> bool {
    let condition = match &rule.condition {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(request_id, rule = %name, error = %e, "The condition of an access monitoring rule does not parse; the rule is skipped");
            return false;
        }
    };
    match condition.eval(env) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(request_id, rule = %name, error = %e, "The condition of an access monitoring rule cannot be evaluated; the rule is skipped");
            false
        }
    }
}

fn compile(rule: MonitoringRule) -> Compiled {
    let condition = Condition::parse(&rule.condition);
    if let Err(e) = &condition {
        tracing::warn!(rule = %rule.name, error = %e, "The condition of an access monitoring rule does not parse; the rule never matches");
    }
    Compiled {
        condition,
        recipients: rule.recipients,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, condition: &str, to: &[&str]) -> MonitoringRule {
        MonitoringRule::for_email(name, condition, to)
    }

    fn env(roles: &[&str]) -> Env {
        Env {
            roles: roles.iter().map(|s| s.to_string()).collect(),
            user: "alice".into(),
            ..Env::default()
        }
    }

    #[test]
    fn matching_rules_union_their_recipients_once_and_bad_ones_never_match() {
        let set = RuleSet::new("email");
        set.replace_all(vec![
            rule(
                "b-dev",
                r#"access_request.spec.roles.contains("dev")"#,
                &["dev@x", "all@x"],
            ),
            rule("a-all", "true", &["all@x"]),
            rule(
                "c-broken",
                "access_request.spec.roles.contains(",
                &["broken@x"],
            ),
            rule(
                "d-prod",
                r#"access_request.spec.roles.contains("prod")"#,
                &["prod@x"],
            ),
            MonitoringRule {
                notification_name: "slack".into(),
                ..rule("e-slack", "true", &["slack@x"])
            },
        ]);
        assert_eq!(set.len(), 4, "the slack rule does not apply");
        let to = |roles: &[&str]| set.recipients("r1", &env(roles));
        assert_eq!(to(&["dev"]).unwrap(), ["all@x", "dev@x"]);
        assert_eq!(to(&["ops"]).unwrap(), ["all@x"]);
        set.delete("a-all");
        assert_eq!(to(&["ops"]), None);
        set.put(MonitoringRule {
            notification_name: "slack".into(),
            ..rule("b-dev", "true", &["dev@x"])
        });
        assert_eq!(to(&["dev"]), None, "no longer ours");
    }

    #[test]
    fn traits_are_needed_only_when_a_rule_reads_them() {
        let set = RuleSet::new("email");
        set.put(rule("a", "true", &["a@x"]));
        assert!(!set.needs_user_traits());
        set.put(rule(
            "b",
            r#"contains_any(user.traits["team"], set("x"))"#,
            &["b@x"],
        ));
        assert!(set.needs_user_traits());
    }
}
