//! Hostile input: arbitrary text to `parse`, arbitrary requests to `eval`; neither may panic.

use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use super::{Condition, Env};

/// Pieces of the language, so generated text gets past the lexer often enough to reach the
/// parser, the checker and the evaluator.
const PIECES: &[&str] = &[
    "access_request.spec.roles",
    "access_request.spec.suggested_reviewers",
    "access_request.spec.system_annotations",
    "access_request.spec.user",
    "access_request.spec.request_reason",
    "access_request.spec.creation_time",
    "access_request.spec.expiry",
    "access_request.spec.requested_resources",
    "access_request.spec.requested_resources.length",
    "user.traits",
    "true",
    "false",
    "set",
    "dict",
    "pair",
    "union",
    "ifelse",
    "strings.upper",
    "strings.lower",
    "strings.replaceall",
    "choose",
    "option",
    "email.local",
    "regexp.replace",
    "strings.split",
    "time.RFC3339",
    "before",
    "after",
    "between",
    "contains_any",
    "contains_all",
    "is_empty",
    "has_labels",
    ".add",
    ".contains",
    ".put",
    ".add_values",
    ".remove",
    ".isempty",
    ".before",
    ".between",
    "(",
    ")",
    "[",
    "]",
    ",",
    "&&",
    "||",
    "!",
    "==",
    "!=",
    "...",
    "\"a\"",
    "\"\"",
    "\"team\"",
    "\"(\"",
    "\"^a(.*)\"",
    "\"$1$1\"",
    "\"2025-06-01T12:00:00Z\"",
    "`x`",
    "1",
    "0",
    "1.5",
    "\n",
    " ",
    "//c\n",
    "/*",
    "*/",
    "\\",
    "'",
    "\"",
];

fn soup() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(PIECES), 0..40).prop_map(|v| v.concat())
}

fn strings() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec("[a-zA-Z@.,(]{0,6}", 0..4)
}

fn env() -> impl Strategy<Value = Env> {
    let map = || prop::collection::btree_map("[a-z]{0,4}", strings(), 0..4);
    (
        strings(),
        strings(),
        map(),
        "\\PC{0,8}",
        "\\PC{0,8}",
        any::<u32>(),
        any::<u32>(),
        map(),
    )
        .prop_map(|(roles, rev, ann, user, reason, c, x, traits)| Env {
            roles,
            suggested_reviewers: rev,
            system_annotations: ann,
            user,
            request_reason: reason,
            creation_time: SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(c)),
            expiry: SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(x)),
            user_traits: traits,
        })
}

fn exercise(src: &str, env: &Env) {
    if let Ok(c) = Condition::parse(src) {
        let _ = c.eval(env);
        let _ = c.eval(&Env::default());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_text_never_panics(src in "\\PC{0,200}", env in env()) {
        exercise(&src, &env);
    }

    #[test]
    fn token_soup_never_panics(src in soup(), env in env()) {
        exercise(&src, &env);
    }

    #[test]
    fn arbitrary_requests_never_panic(env in env()) {
        let c = Condition::parse(r#"contains_any(user.traits["team"], access_request.spec.roles) ||
            strings.upper(access_request.spec.system_annotations["a"]).contains("X") ||
            regexp.replace(email.local(set("a@b")), "^(.*)$", "$1").contains(access_request.spec.user) ||
            access_request.spec.creation_time.between(access_request.spec.expiry, time.RFC3339("2025-06-01T12:00:00Z"))"#);
        prop_assert!(c.is_ok(), "{c:?}");
        if let Ok(c) = c {
            let _ = c.eval(&env);
        }
    }
}
