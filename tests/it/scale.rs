//! A (re)connect to a cluster with a long history: the plugin data of every request is read in
//! one call, and only the requests that still owe a mail cost a call of their own.

use std::collections::BTreeMap;

use teleport_email::engine::{PluginData, Resolution, Thread};
use teleport_email::testkit::auth::FakeAuthOptions;

use crate::support::harness::{Backend, Harness};

const RECIPIENT: &str = "all@example.com";

/// Plugin data of a request with its thread, and when `resolved` its resolution recorded, with
/// the resolution mail sent when `sent`.
fn data(id: &str, resolved: bool, sent: bool) -> BTreeMap<String, String> {
    let data = PluginData {
        user: "someone".into(),
        roles: vec!["editor".into()],
        request_reason: "seeded".into(),
        intended: Some(vec![RECIPIENT.into()]),
        threads: vec![Thread {
            email: RECIPIENT.into(),
            timestamp: "2026-01-01T00:00:00Z".into(),
            message_id: format!("<{id}@example.com>"),
        }],
        resolution: resolved.then_some(Resolution::Approved),
        resolution_sent: resolved.then(|| sent.then(|| RECIPIENT.into()).into_iter().collect()),
        ..Default::default()
    };
    data.encode()
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

/// The number a seeded request's id was made from.
fn number(id: &str) -> usize {
    usize::from_str_radix(&id[24..], 16).unwrap()
}

#[tokio::test]
async fn a_reconnect_reads_all_plugin_data_at_once_and_leaves_finished_requests_alone() {
    let mut h = Harness::start(Backend::Smtp, FakeAuthOptions::default()).await;
    h.shutdown_daemon_only().await;
    // 1,500 requests (three pages): every 100th pending; every 250th approved one not yet
    // mailed its resolution; the pending ones among the first 500 never mailed at all.
    let pending = |i: usize| i.is_multiple_of(100);
    let owes_resolution = |i: usize| !pending(i) && i % 250 == 1;
    let ids = h.auth.seed_requests(1500, pending, |id, pending| {
        let i = number(id);
        match (pending, owes_resolution(i)) {
            (true, _) if i < 500 => BTreeMap::new(),
            (true, _) => data(id, false, false),
            (false, owed) => data(id, true, !owed),
        }
    });
    let owed_new = ids
        .iter()
        .filter(|id| pending(number(id)) && number(id) < 500);
    let owed_resolution = ids.iter().filter(|id| owes_resolution(number(id)));
    let (owed_new, owed_resolution) = (owed_new.count(), owed_resolution.count());
    assert_eq!((owed_new, owed_resolution), (5, 6));
    let (reads, writes) = (h.auth.plugin_data_reads(), h.auth.plugin_data_writes());

    h.restart_daemon().await;
    let mails = h.next_mails(owed_new + owed_resolution).await;
    h.assert_quiet().await;

    let resolved = mails
        .iter()
        .filter(|m| m.subject.contains("Approved") || m.in_reply_to.is_some());
    assert_eq!(resolved.count(), owed_resolution, "{mails:#?}");
    let read_calls = h.auth.plugin_data_reads() - reads;
    let write_calls = h.auth.plugin_data_writes() - writes;
    // One read of everything; then, per request that owed a mail, a few reads and writes
    // (claim, outcome). Without the bulk read: at least one read per listed request, 1,500.
    let owed = (owed_new + owed_resolution) as u64;
    assert!(read_calls <= 1 + 2 * owed, "{read_calls} plugin-data reads");
    assert!(write_calls <= 4 * owed, "{write_calls} plugin-data writes");
    for id in ids.iter().filter(|id| owes_resolution(number(id))) {
        let data = h.auth.plugin_data(id, "email").unwrap();
        assert!(data["te_resolution_sent"].contains(RECIPIENT), "{data:?}");
    }
    h.shutdown().await;
}
