//! The benchmark: our release binary beside the original Go plugin and beside the limit.
//!
//! `cargo build --release --bin teleport-email && cargo run --release --example bench`
//!
//! Each column gets a fresh fake Auth Service (real mTLS and gRPC) and a fresh receiver of the
//! same kind, and the same load: a burst of requests, then requests at a fixed rate, each owed
//! a new-thread mail to three recipients. The daemons run as separate processes, as operators
//! run them. `--smoke` checks correctness only (nothing lost, nothing twice) and exits non-zero
//! otherwise; it never judges timings. With Postfix's `smtp-source` and `smtp-sink` at hand, an
//! outside reference is printed under the table; `--smtp-sink` sends our burst into `smtp-sink`
//! instead (see `postfix`).
// `pub` here means "shared between the modules of this example"; nothing is exported.
#![allow(unreachable_pub)]

mod lettre_pool;
mod limit;
mod load;
mod postfix;
mod process;
mod scale;
mod sink;
mod table;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use teleport_email::testkit::auth::{FakeAuth, FakeAuthOptions};

use load::{ALL, Burst};
use postfix::{Programs, SourceRun};
use process::Daemon;
use sink::{SMTP_PASSWORD, SMTP_USER, Sink, Tally};
use table::{Column, Run};

#[derive(Parser, Debug)]
#[command(about = "teleport-email beside the original plugin and the limit")]
struct Args {
    /// Requests in the burst (3 mails each).
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Requests per second in the steady phase.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Length of the steady phase.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Correctness only, tiny load (20 requests, 2 s steady); exit 1 on a lost or duplicate mail.
    #[arg(long)]
    smoke: bool,
    /// Our daemon's binary; default: `teleport-email` next to this example's directory.
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Keep the configs and daemon logs (the directory is printed).
    #[arg(long)]
    keep: bool,
    /// Rounds of every column, interleaved; the table shows each column's best round.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Cluster sizes for the reconnect rows (e.g. `10000,100000`): only those rows are run.
    #[arg(long, value_delimiter = ',')]
    reconnect: Vec<usize>,
    /// Burst sizes for the growth rows (e.g. `1000,10000,100000`): only those rows are run.
    #[arg(long, value_delimiter = ',')]
    growth: Vec<usize>,
    /// Sessions of the limit and of lettre's pool, and smtp-source's (our daemon's pool: 8).
    #[arg(long, default_value_t = 8)]
    limit_connections: u32,
    /// Our daemon's burst into Postfix's smtp-sink (`SMTP_SINK_BIN` or on PATH), with and
    /// without PIPELINING offered, every mail checked; instead of the table.
    #[arg(long)]
    smtp_sink: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut args = Args::parse();
    if args.smoke {
        args.requests = 20;
        args.seconds = 2.0;
        args.rate = 10.0;
        args.rounds = 1;
    }
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    let ours_bin = match &args.bin {
        Some(b) => b.clone(),
        None => default_bin()?,
    };
    anyhow::ensure!(
        ours_bin.exists(),
        "{} is missing: build it first with `cargo build --release --bin teleport-email`",
        ours_bin.display()
    );
    let original = std::env::var_os("ORIGINAL_EMAIL_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    // With `--keep`, the directory outlives the run however it ends (a failed smoke included).
    let dir = tempfile::Builder::new()
        .disable_cleanup(args.keep)
        .tempdir()?;
    if args.keep {
        eprintln!("bench: configs and logs kept in {}", dir.path().display());
    }
    eprintln!(
        "bench: ours = {}, original = {}, burst {} requests, steady {}/s for {} s",
        ours_bin.display(),
        original
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "not given".into()),
        args.requests,
        args.rate,
        args.seconds
    );

    if !args.reconnect.is_empty() || !args.growth.is_empty() {
        scale::run(&ours_bin, dir.path(), &args.reconnect, &args.growth).await?;
        return Ok(());
    }
    if args.smtp_sink {
        let ok = postfix::sink_mode(&args, &ours_bin, dir.path()).await?;
        if !ok {
            std::process::exit(1);
        }
        return Ok(());
    }
    let programs = match (Programs::find(), args.smoke) {
        (Ok(_), true) => Err("not run in --smoke".to_owned()),
        (found, _) => found,
    };

    let mut rounds: [Vec<Column>; 5] = Default::default();
    let mut sources = Vec::new();
    for round in 1..=args.rounds {
        eprintln!("bench: round {round} of {}: ours (SMTP) …", args.rounds);
        let (ours, captured) =
            daemon_column(&args, &ours_bin, Which::Ours, Mailer::Smtp, dir.path()).await;
        eprintln!("bench: round {round}: limit (pipelined) and lettre …");
        let (limit, lettre) = limit_columns(&args, &captured).await;
        if let (Ok(programs), Some(sample)) = (&programs, captured.first()) {
            let dump = false;
            let run = postfix::reference(&args, programs, &sample.data, dump, round, dir.path());
            sources.extend(run.await);
        }
        eprintln!("bench: round {round}: ours (Mailgun) …");
        let (ours_mailgun, _) =
            daemon_column(&args, &ours_bin, Which::Ours, Mailer::Mailgun, dir.path()).await;
        let original_col = match (&original, args.smoke) {
            (None, _) => Column::absent("not given"),
            (Some(_), true) => Column::absent("not run in --smoke"),
            (Some(bin), false) => {
                eprintln!("bench: round {round}: original (SMTP) …");
                daemon_column(&args, bin, Which::Original, Mailer::Smtp, dir.path())
                    .await
                    .0
            }
        };
        let names = [
            "limit (pipelined)",
            "lettre, no pipelining",
            "original",
            "ours (SMTP)",
            "ours (Mailgun)",
        ];
        let columns = [limit, lettre, original_col, ours, ours_mailgun];
        for ((all, col), name) in rounds.iter_mut().zip(columns).zip(names) {
            if let Some(summary) = col.summary() {
                eprintln!("bench: round {round}: {name}: {summary}");
            }
            all.push(col);
        }
    }
    let [limit, lettre, original_col, ours, ours_mailgun] = rounds.map(Column::best_of);
    let run = Run {
        limit,
        lettre,
        original: original_col,
        ours,
        ours_mailgun,
        requests: args.requests,
        rate: args.rate,
        seconds: args.seconds,
        rounds: args.rounds,
    };
    println!("{}", run.render());
    println!(
        "Outside reference, Postfix's smtp-source into smtp-sink (no pipelining, so a floor for \
         the limit; another receiver than the table's): {}",
        SourceRun::best_line(&programs, sources, args.rounds)
    );
    if args.smoke {
        let ok = run.ours_correct();
        println!(
            "smoke: {}",
            if ok {
                "ours delivered every mail exactly once"
            } else {
                "FAILED: ours lost or duplicated mail"
            }
        );
        if !ok {
            std::process::exit(1);
        }
        scale::smoke(&ours_bin, dir.path()).await?;
    }
    Ok(())
}

/// `target/<profile>/teleport-email`, beside `target/<profile>/examples/bench`.
fn default_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("cannot locate the target directory")?;
    Ok(profile_dir.join("teleport-email"))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Ours,
    Original,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mailer {
    Smtp,
    Mailgun,
}

/// One daemon on a fresh fake Auth Service and receiver, under the whole load. Also returns what
/// the receiver got (for the limit to replay). Failures end up in the column's note.
async fn daemon_column(
    args: &Args,
    bin: &Path,
    which: Which,
    mailer: Mailer,
    dir: &Path,
) -> (Column, Vec<teleport_email::testkit::smtp::ReceivedMail>) {
    match try_daemon_column(args, bin, which, mailer, dir).await {
        Ok(out) => out,
        Err(e) => (Column::absent(&format!("failed: {e:#}")), Vec::new()),
    }
}

async fn try_daemon_column(
    args: &Args,
    bin: &Path,
    which: Which,
    mailer: Mailer,
    dir: &Path,
) -> anyhow::Result<(Column, Vec<teleport_email::testkit::smtp::ReceivedMail>)> {
    let sink = match mailer {
        Mailer::Smtp => Sink::smtp().await?,
        Mailer::Mailgun => Sink::mailgun().await?,
    };
    let stem = match (which, mailer) {
        (Which::Ours, Mailer::Smtp) => "ours-smtp",
        (Which::Ours, Mailer::Mailgun) => "ours-mailgun",
        (Which::Original, _) => "original",
    };
    let (auth, daemon) = start_daemon(bin, &sink, stem, dir).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = daemon.status_bytes("VmRSS");
    let cpu_at_ready = daemon.cpu();
    let burst = load::burst(&auth, &sink, args.requests).await;
    let peak_rss = daemon.status_bytes("VmHWM");
    let steady = load::steady(&auth, &sink, args.rate, args.seconds).await;
    let cpu = daemon.cpu();
    let mails = burst.tally.delivered() + steady.delivered();
    let cpu_per_1000 = match (cpu_at_ready, cpu) {
        (Some(a), Some(b)) if mails > 0 => Some((b - a).as_secs_f64() * 1000.0 / mails as f64),
        _ => None,
    };
    let errors = daemon.error_lines();
    let ready = daemon.ready_after;
    let note = (!burst.tally.correct() || !steady.correct())
        .then(|| format!("log: {}", daemon.log.display()));
    daemon.stop().await;
    let captured = sink.receiver().map(|r| r.messages()).unwrap_or_default();
    Ok((
        Column {
            burst: Some(burst),
            steady: Some(steady),
            ready: Some(ready),
            idle_rss,
            peak_rss,
            cpu_per_1000,
            errors: Some(errors),
            note,
            absent: None,
        },
        captured,
    ))
}

/// A daemon (`bin`) on a fresh fake Auth Service, configured for `sink`; its files are named
/// after `stem` in `dir`.
pub async fn start_daemon(
    bin: &Path,
    sink: &Sink,
    stem: &str,
    dir: &Path,
) -> anyhow::Result<(std::sync::Arc<FakeAuth>, Daemon)> {
    let auth = FakeAuth::start(FakeAuthOptions::default()).await;
    let config = write_config(&auth, sink, dir, stem)?;
    let daemon = Daemon::start(bin, &config, dir.join(format!("{stem}.log"))).await?;
    Ok((auth, daemon))
}

/// The config both plugins read: the original requires SMTP AUTH, so our receiver asks for it
/// of everyone (smtp-sink asks nobody).
fn config_text(
    auth: &FakeAuth,
    (crt, key, cas): &(PathBuf, PathBuf, PathBuf),
    sink: &Sink,
) -> String {
    let mailer = match sink {
        Sink::Smtp(r) => format!(
            "[smtp]\nhost = \"127.0.0.1\"\nport = {}\nusername = \"{SMTP_USER}\"\npassword = \"{SMTP_PASSWORD}\"\nstarttls_policy = \"disabled\"\n",
            r.port()
        ),
        Sink::Postfix(p) => format!(
            "[smtp]\nhost = \"127.0.0.1\"\nport = {}\nstarttls_policy = \"disabled\"\n",
            p.port()
        ),
        Sink::Mailgun(m) => format!(
            "[mailgun]\ndomain = \"example.com\"\nprivate_key = \"key-bench\"\napi_base = \"{}\"\n",
            m.api_base()
        ),
    };
    format!(
        "[teleport]\naddr = \"{}\"\nclient_crt = \"{}\"\nclient_key = \"{}\"\nroot_cas = \"{}\"\n{mailer}[delivery]\nsender = \"noreply@example.com\"\n[role_to_recipients]\n\"*\" = \"{ALL}\"\n[log]\noutput = \"stderr\"\nseverity = \"info\"\n",
        auth.addr(),
        crt.display(),
        key.display(),
        cas.display()
    )
}

/// The limit and lettre columns: each replays what our daemon delivered (burst mails, then
/// steady mails) into a fresh receiver.
async fn limit_columns(
    args: &Args,
    captured: &[teleport_email::testkit::smtp::ReceivedMail],
) -> (Column, Column) {
    let requests = limit::requests(captured);
    if requests.is_empty() {
        let why = "failed: our daemon delivered nothing to replay";
        return (Column::absent(why), Column::absent(why));
    }
    let split = args.requests.min(requests.len());
    let (burst, steady) = requests.split_at(split);
    let failed = |e: anyhow::Error| Column::absent(&format!("failed: {e:#}"));
    let limit = limit_column(args, burst, steady)
        .await
        .unwrap_or_else(failed);
    let lettre = lettre_column(args, burst, steady)
        .await
        .unwrap_or_else(failed);
    (limit, lettre)
}

async fn limit_column(
    args: &Args,
    burst: &[limit::Request],
    steady: &[limit::Request],
) -> anyhow::Result<Column> {
    let n = args.limit_connections;
    let sink = Sink::smtp().await?;
    let burst = limit::burst(&sink, burst, n).await?;
    let steady = limit::steady(&sink, steady, args.rate, n).await?;
    Ok(sender_column(
        burst,
        steady,
        format!(
            "{n} pipelined sessions (RFC 2920) kept open, TCP_NODELAY, the next mail's commands \
             behind each message's final dot, in this process."
        ),
    ))
}

async fn lettre_column(
    args: &Args,
    burst_reqs: &[limit::Request],
    steady_reqs: &[limit::Request],
) -> anyhow::Result<Column> {
    let n = args.limit_connections;
    let mut figures = Vec::new();
    for kind in [lettre_pool::Kind::Transport, lettre_pool::Kind::Nodelay] {
        let sink = Sink::smtp().await?;
        let burst: Burst = lettre_pool::burst(kind, &sink, burst_reqs, n).await?;
        let steady: Tally = lettre_pool::steady(kind, &sink, steady_reqs, args.rate, n).await?;
        figures.push((burst, steady));
    }
    let (nodelay_burst, nodelay_steady) = figures.pop().context("two runs")?;
    let (shipped_burst, shipped_steady) = figures.pop().context("two runs")?;
    let ms = |d: Option<Duration>| d.map(|d| format!("{:.0} ms", d.as_secs_f64() * 1000.0));
    Ok(sender_column(
        nodelay_burst,
        nodelay_steady,
        format!(
            "lettre's AsyncSmtpConnection on TCP_NODELAY sockets, pooled as lettre's pool does \
             (reuse, NOOP first), up to {n} at once, in this process. lettre's pooled \
             AsyncSmtpTransport as shipped (no TCP_NODELAY), same mails, same run: burst {:.0} \
             mails/s, steady p50 {} p99 {}, {} lost, {} duplicates.",
            shipped_burst.mails_per_second().unwrap_or(0.0),
            ms(shipped_steady.quantile(0.5)).unwrap_or_default(),
            ms(shipped_steady.quantile(0.99)).unwrap_or_default(),
            shipped_burst.tally.lost + shipped_steady.lost,
            shipped_burst.tally.duplicates + shipped_steady.duplicates,
        ),
    ))
}

/// A column of a sender without a daemon: no memory, CPU or log figures.
fn sender_column(burst: Burst, steady: Tally, note: String) -> Column {
    Column {
        burst: Some(burst),
        steady: Some(steady),
        note: Some(note),
        ..Column::default()
    }
}

/// Writes the credentials and the config of a daemon called `stem` into `dir`; returns the
/// config's path. The `--format=tls` trio rather than an identity file: the Go client insists
/// on an SSH certificate in an identity file (`ssh: no key found`), and the fake's has none.
fn write_config(auth: &FakeAuth, sink: &Sink, dir: &Path, stem: &str) -> anyhow::Result<PathBuf> {
    let trio = auth
        .pki()
        .write_tls_trio(&dir.join(stem), "access-plugin", &["access-plugin"]);
    let config = dir.join(format!("{stem}.toml"));
    std::fs::write(&config, config_text(auth, &trio, sink))?;
    Ok(config)
}
