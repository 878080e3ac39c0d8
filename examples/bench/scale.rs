//! Cluster scale: what a (re)connect costs when the cluster already holds N requests, and how a
//! burst's cost grows with its size.
//!
//! Reconnect: the fake Auth Service is seeded with N requests (1 % pending, the rest approved),
//! each with the plugin data our daemon leaves once its mails are out. The daemon starts (its
//! first reconcile), then the fake drops its watch (a reconnect, the second reconcile); a request
//! created the moment the new watch opens measures how long live mail waits behind the listing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use teleport_email::engine::{PluginData, Resolution, Thread};
use teleport_email::testkit::auth::{FakeAuth, FakeAuthOptions};

use crate::load::{self, RECIPIENTS};
use crate::process::Daemon;
use crate::sink::{Sink, Tally};

/// Log line our daemon writes when a lost watch is back and its reconcile is done.
const RECONNECTED: &str = "Watch re-established";

/// One size's reconnect figures.
pub struct Reconnect {
    pub requests: usize,
    pub ready: Duration,
    pub reconnected: Option<Duration>,
    pub live_mail: Option<Duration>,
    pub live_before_reconciled: Option<bool>,
    pub peak_rss: Option<u64>,
    /// The daemon's CPU time from the dropped watch to the end of its reconcile.
    pub cpu: Option<Duration>,
    pub calls: Calls,
    pub mails: usize,
}

/// Auth Service calls during the reconnect.
#[derive(Default, Clone, Copy)]
pub struct Calls {
    pub list_pages: u64,
    pub data_reads: u64,
    pub data_writes: u64,
}

/// The plugin data our daemon leaves on a request whose mails all went out.
fn finished(id: &str, pending: bool) -> BTreeMap<String, String> {
    let threads = RECIPIENTS.iter().map(|e| Thread {
        email: (*e).into(),
        timestamp: "2026-01-01T00:00:00Z".into(),
        message_id: format!("<{id}.{e}@example.com>"),
    });
    let data = PluginData {
        user: "someone@example.com".into(),
        roles: vec!["editor".into()],
        request_reason: "seeded".into(),
        intended: Some(RECIPIENTS.iter().map(|e| e.to_string()).collect()),
        threads: threads.collect(),
        resolution: (!pending).then_some(Resolution::Approved),
        resolution_sent: (!pending).then(|| RECIPIENTS.iter().map(|e| e.to_string()).collect()),
        ..Default::default()
    };
    data.encode()
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

fn calls(auth: &FakeAuth) -> Calls {
    Calls {
        list_pages: auth.list_calls(),
        data_reads: auth.plugin_data_reads(),
        data_writes: auth.plugin_data_writes(),
    }
}

/// Seeds `n` finished requests, starts the daemon, forces a reconnect with a live request.
pub async fn reconnect(bin: &Path, dir: &Path, n: usize) -> anyhow::Result<Reconnect> {
    let auth = FakeAuth::start(FakeAuthOptions::default()).await;
    auth.seed_requests(n, |i| i % 100 == 0, finished);
    let sink = Sink::smtp().await?;
    let stem = format!("reconnect-{n}");
    let config = crate::write_config(&auth, &sink, dir, &stem)?;
    let daemon = Daemon::start(bin, &config, dir.join(format!("{stem}.log"))).await?;
    let ready = daemon.ready_after;

    let before = calls(&auth);
    let cpu_before = daemon.cpu();
    let dropped = Instant::now();
    auth.drop_watchers();
    let deadline = dropped + Duration::from_secs(120);
    while auth.watcher_count() == 0 {
        anyhow::ensure!(Instant::now() < deadline, "the daemon did not watch again");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let created = Instant::now();
    let id = auth.create_request("live@example.com", &["editor"], "live", &load::REVIEWERS);
    let mut live_mail = None;
    let mut reconnected = None;
    let mut cpu = None;
    while (live_mail.is_none() || reconnected.is_none()) && Instant::now() < deadline {
        if live_mail.is_none() && sink.accepted().iter().any(|m| m.request == id) {
            live_mail = Some(created.elapsed());
        }
        if reconnected.is_none() && daemon.log_contains(RECONNECTED) {
            reconnected = Some(dropped.elapsed());
            cpu = daemon
                .cpu()
                .zip(cpu_before)
                .map(|(after, before)| after - before);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let _ = sink
        .wait_for(RECIPIENTS.len(), Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = calls(&auth);
    let peak_rss = daemon.status_bytes("VmHWM");
    let mails = sink.accepted().len();
    daemon.stop().await;
    Ok(Reconnect {
        requests: n,
        ready,
        reconnected,
        live_before_reconciled: live_mail
            .zip(reconnected)
            .map(|(m, r)| created - dropped + m < r),
        live_mail,
        peak_rss,
        cpu,
        calls: Calls {
            list_pages: after.list_pages - before.list_pages,
            data_reads: after.data_reads - before.data_reads,
            data_writes: after.data_writes - before.data_writes,
        },
        mails,
    })
}

/// One burst size's figures.
pub struct Growth {
    pub requests: usize,
    pub elapsed: Option<Duration>,
    pub mails_per_second: Option<f64>,
    pub peak_rss: Option<u64>,
    pub tally: Tally,
}

/// A burst of `n` requests on a fresh daemon.
pub async fn growth(bin: &Path, dir: &Path, n: usize) -> anyhow::Result<Growth> {
    let auth = FakeAuth::start(FakeAuthOptions::default()).await;
    let sink = Sink::smtp().await?;
    let stem = format!("growth-{n}");
    let config = crate::write_config(&auth, &sink, dir, &stem)?;
    let daemon = Daemon::start(bin, &config, dir.join(format!("{stem}.log"))).await?;
    let burst = load::burst(&auth, &sink, n).await;
    let peak_rss = daemon.status_bytes("VmHWM");
    daemon.stop().await;
    Ok(Growth {
        requests: n,
        elapsed: burst.elapsed,
        mails_per_second: burst.mails_per_second(),
        peak_rss,
        tally: burst.tally,
    })
}

fn mb(bytes: Option<u64>) -> String {
    bytes.map_or("–".into(), |b| format!("{:.1} MB", b as f64 / 1e6))
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("–".into(), |d| {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    })
}

/// The reconnect table (Markdown).
pub fn render_reconnect(rows: &[Reconnect]) -> String {
    let mut out = String::from(
        "| requests in the cluster | ready after start | reconnect: ready again | live request's mail during the reconcile | peak RSS | daemon CPU for the reconnect | Auth calls per reconnect (list pages / plugin-data reads / writes) | mails |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let live = match r.live_before_reconciled {
            Some(true) => format!("{} (before the reconcile ended)", ms(r.live_mail)),
            _ => ms(r.live_mail),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {live} | {} | {} | {} / {} / {} | {} |",
            r.requests,
            ms(Some(r.ready)),
            ms(r.reconnected),
            mb(r.peak_rss),
            ms(r.cpu),
            r.calls.list_pages,
            r.calls.data_reads,
            r.calls.data_writes,
            r.mails,
        );
    }
    out
}

/// The growth table (Markdown).
pub fn render_growth(rows: &[Growth]) -> String {
    let mut out = String::from(
        "| burst (requests, 3 mails each) | time to the last mail | mails/s | peak RSS | lost | duplicates |\n|---|---|---|---|---|---|\n",
    );
    for g in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            g.requests,
            ms(g.elapsed),
            g.mails_per_second.map_or("–".into(), |m| format!("{m:.0}")),
            mb(g.peak_rss),
            g.tally.lost,
            g.tally.duplicates,
        );
    }
    out
}

/// `--reconnect` and `--growth`: runs the sizes asked for and prints their tables.
pub async fn run(
    bin: &Path,
    dir: &Path,
    reconnects: &[usize],
    bursts: &[usize],
) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for &n in reconnects {
        eprintln!("bench: reconnect with {n} requests in the cluster …");
        rows.push(
            reconnect(bin, dir, n)
                .await
                .with_context(|| format!("reconnect with {n}"))?,
        );
    }
    if !rows.is_empty() {
        println!("{}", render_reconnect(&rows));
    }
    let mut rows = Vec::new();
    for &n in bursts {
        eprintln!("bench: burst of {n} requests …");
        rows.push(
            growth(bin, dir, n)
                .await
                .with_context(|| format!("burst of {n}"))?,
        );
    }
    if !rows.is_empty() {
        println!("{}", render_growth(&rows));
    }
    Ok(())
}

/// `--smoke`: a reconnect to a cluster of 2,000 finished requests sends nothing again, reads
/// their plugin data in one call, and mails the live request (correctness, never timings).
pub async fn smoke(bin: &Path, dir: &Path) -> anyhow::Result<()> {
    let row = reconnect(bin, dir, 2000).await?;
    println!("{}", render_reconnect(std::slice::from_ref(&row)));
    // The live request may cost a read or two of its own; reading per request would be 2,000.
    let ok = row.mails == RECIPIENTS.len() && row.calls.data_reads <= 4;
    println!(
        "smoke: {}",
        match ok {
            true => "a reconnect read every plugin data at once and mailed only the live request",
            false =>
                "FAILED: the reconnect re-sent mail, missed the live request or read per request",
        }
    );
    anyhow::ensure!(ok, "reconnect smoke failed");
    Ok(())
}
