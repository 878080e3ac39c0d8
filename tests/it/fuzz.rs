//! Bounded property tests ("fuzzing") of every parser that reads outside input: plugin data, the
//! identity file and the config loader must return errors, never panic.

use std::collections::BTreeMap;

use proptest::prelude::*;
use teleport_email::config::{self, Credentials};
use teleport_email::engine::PluginData;
use teleport_email::teleport::CredentialStore;

fn cases() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn plugin_data_decoder_never_panics(entries in proptest::collection::btree_map(
        prop_oneof![
            Just("user".to_owned()), Just("roles".to_owned()), Just("reviews_count".to_owned()),
            Just("resolution".to_owned()), Just("email_threads".to_owned()), Just("email".to_owned()),
            Just("timestamp".to_owned()), Just("te_reviews_sent".to_owned()), Just("te_claim".to_owned()),
            Just("te_recipients".to_owned()), Just("te_resolution_sent".to_owned()), ".*",
        ],
        "(v1:)?[a-z@./,0-9<>\\-]{0,40}|.*",
        0..12,
    )) {
        let d = PluginData::decode(&entries);
        // Re-encoding what was decoded and decoding again is stable.
        let again = PluginData::decode(&d.encode());
        prop_assert_eq!(again.encode(), d.encode());
    }

    #[test]
    fn identity_parser_never_panics(text in "(-----BEGIN [A-Z ]{0,20}-----\n[A-Za-z0-9+/=\n]{0,200}(-----END X-----\n)?|[^\u{0}]{0,80}\n){0,6}") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity");
        std::fs::write(&path, &text).unwrap();
        let result = CredentialStore::load(&Credentials::IdentityFile { path, refresh: None });
        prop_assert!(result.is_err());
    }

    #[test]
    fn config_loader_never_panics(text in "(\\[(teleport|smtp|mailgun|delivery|log|role_to_recipients)\\]\n|[a-z_\"*]{1,20} = (\"[^\"\n]{0,20}\"|[0-9]{1,6}|true|\\[\\]|\\[\"[a-z@.]{0,12}\"\\])\n|[^\u{0}]{0,30}\n){0,12}") {
        let _ = config::parse(&text, std::path::Path::new("fuzz.toml"));
    }
}

#[test]
fn plugin_data_decoder_handles_huge_values() {
    let mut m = BTreeMap::new();
    let threads: String = (0..100_000).map(|i| format!("a{i}@b/t/id,")).collect();
    m.insert(
        "email_threads".to_owned(),
        threads + &"z@b/t/id,".repeat(100_000),
    );
    m.insert("reviews_count".to_owned(), "9".repeat(1000));
    let d = PluginData::decode(&m);
    // 100,000 recipients, and one more written 100,000 times: one thread each, read in linear
    // time.
    assert_eq!(d.threads.len(), 100_001);
    assert_eq!(d.reviews_count, 0);
}
