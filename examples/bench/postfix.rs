//! Postfix's test programs beside our figures: `smtp-source` into `smtp-sink` as an outside
//! reference for the limit, and (`--smtp-sink`) our daemon's burst into `smtp-sink`, with and
//! without `PIPELINING` offered, every mail checked.
//!
//! Neither program is part of this repository; `SMTP_SOURCE_BIN` and `SMTP_SINK_BIN` name them,
//! or they are found on `PATH` (README, Performance).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use teleport_email::testkit::postfix::{self, DumpedMail, SinkOptions, SmtpSink};

use crate::Args;
use crate::load::{self, ALL, Burst};
use crate::sink::Sink;

/// How long smtp-sink may take to count the last message after smtp-source has exited.
const DRAIN: Duration = Duration::from_secs(10);

/// `smtp-source` and `smtp-sink`, when both are there.
pub struct Programs {
    pub source: PathBuf,
    pub sink: PathBuf,
}

impl Programs {
    /// Both programs, or why not (one line).
    pub fn find() -> Result<Self, String> {
        let source = postfix::program(postfix::SOURCE_ENV, "smtp-source");
        let sink = postfix::program(postfix::SINK_ENV, "smtp-sink");
        match (source, sink) {
            (Some(source), Some(sink)) => Ok(Self { source, sink }),
            (source, sink) => {
                let missing: Vec<String> = [
                    (source.is_none(), postfix::SOURCE_ENV, "smtp-source"),
                    (sink.is_none(), postfix::SINK_ENV, "smtp-sink"),
                ]
                .iter()
                .filter(|(missing, ..)| *missing)
                .map(|(_, env, name)| format!("{env} not set and {name} not on PATH"))
                .collect();
                Err(missing.join(", "))
            }
        }
    }
}

/// One run of smtp-source into smtp-sink.
pub struct SourceRun {
    /// From starting smtp-source to smtp-sink counting the last message.
    pub elapsed: Duration,
    pub expected: usize,
    pub received: usize,
    /// The size of the message sent, in bytes.
    pub size: usize,
    pub sessions: u32,
}

impl SourceRun {
    pub fn mails_per_second(&self) -> f64 {
        self.received as f64 / self.elapsed.as_secs_f64()
    }

    pub fn summary(&self) -> String {
        format!(
            "{:.3} s ({:.0} mails/s), {} of {} received",
            self.elapsed.as_secs_f64(),
            self.mails_per_second(),
            self.received,
            self.expected
        )
    }

    /// The fastest of the runs, described in a line with the mails lost over all of them; or
    /// why there is none.
    pub fn best_line(
        programs: &Result<Programs, String>,
        runs: Vec<SourceRun>,
        rounds: usize,
    ) -> String {
        if let Err(why) = programs {
            return format!("skipped ({why})");
        }
        let lost: usize = runs
            .iter()
            .map(|r| r.expected.saturating_sub(r.received))
            .sum();
        let Some(best) = runs.into_iter().min_by_key(|r| r.elapsed) else {
            return "failed (see above)".to_owned();
        };
        format!(
            "{} kept-open sessions, {} copies of one of our mails ({} bytes): {:.3} s, {:.0} \
             mails/s (best of {rounds} round(s)); {lost} lost over all rounds",
            best.sessions,
            best.expected,
            best.size,
            best.elapsed.as_secs_f64(),
            best.mails_per_second()
        )
    }
}

/// One round of the outside reference: smtp-source sends as many copies of `message` as the
/// burst has mails. `None`, with a line saying why, when it failed.
pub async fn reference(
    args: &Args,
    programs: &Programs,
    message: &[u8],
    dump: bool,
    round: usize,
    dir: &Path,
) -> Option<SourceRun> {
    eprintln!("bench: round {round}: smtp-source into smtp-sink …");
    let count = args.requests * load::RECIPIENTS.len();
    let sessions = args.limit_connections;
    match smtp_source(programs, sessions, count, message, dump, dir).await {
        Ok(run) => {
            eprintln!("bench: round {round}: smtp-source: {}", run.summary());
            Some(run)
        }
        Err(e) => {
            eprintln!("bench: round {round}: smtp-source failed: {e:#}");
            None
        }
    }
}

/// `smtp-source` sends `count` copies of `message` (one of our mails) over `sessions` kept-open
/// sessions (`-d`), one command at a time: it does not pipeline. A reply it does not expect
/// makes it stop with an error, which fails the run.
pub async fn smtp_source(
    programs: &Programs,
    sessions: u32,
    count: usize,
    message: &[u8],
    dump: bool,
    dir: &Path,
) -> anyhow::Result<SourceRun> {
    let sink = SmtpSink::start(
        &programs.sink,
        SinkOptions {
            pipelining: true,
            dump,
        },
    )
    .await?;
    // smtp-source ends each line with CRLF itself and dot-stuffs (`-F`).
    let file = dir.join("smtp-source-message.txt");
    let text = String::from_utf8_lossy(message).replace("\r\n", "\n");
    std::fs::write(&file, text)?;
    let mut cmd = postfix::command(&programs.source);
    cmd.arg("-d")
        .args(["-s", &sessions.to_string()])
        .args(["-m", &count.to_string()])
        .arg("-F")
        .arg(&file)
        .args(["-f", "noreply@example.com", "-t", ALL])
        .arg(format!("127.0.0.1:{}", sink.port()));
    let start = Instant::now();
    let output = tokio::task::spawn_blocking(move || cmd.output()).await??;
    anyhow::ensure!(
        output.status.success(),
        "smtp-source failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    sink.wait_for(count, DRAIN).await;
    let times = sink.completed();
    let last = times.last().context("smtp-sink received nothing")?;
    Ok(SourceRun {
        elapsed: *last - start,
        expected: count,
        received: times.len(),
        size: message.len(),
        sessions,
    })
}

/// Our daemon's burst into a fresh smtp-sink, and what was wrong with the mails it got.
pub struct SinkRun {
    pub burst: Burst,
    /// One line per problem found in the dumped mails (headers, counts).
    pub problems: Vec<String>,
    /// One mail as received, for smtp-source to send.
    pub sample: Option<Vec<u8>>,
}

impl SinkRun {
    pub fn correct(&self) -> bool {
        self.burst.tally.correct() && self.problems.is_empty()
    }

    pub fn summary(&self) -> String {
        let t = &self.burst.tally;
        format!(
            "burst {:.3} s ({:.0} mails/s), {} lost, {} duplicates, {} problems",
            self.burst.elapsed.map_or(f64::NAN, |d| d.as_secs_f64()),
            self.burst.mails_per_second().unwrap_or(f64::NAN),
            t.lost + t.unexpected,
            t.duplicates,
            self.problems.len()
        )
    }
}

/// `--smtp-sink`: our daemon's burst into smtp-sink with and without `PIPELINING`, `--rounds`
/// times, then smtp-source's for comparison; exit 1 when a mail of ours was lost, doubled or
/// malformed.
pub async fn sink_mode(args: &Args, bin: &Path, dir: &Path) -> anyhow::Result<bool> {
    let sink_bin = postfix::program(postfix::SINK_ENV, "smtp-sink").context(
        "--smtp-sink needs Postfix's smtp-sink: set SMTP_SINK_BIN or put it on PATH \
         (README, Performance)",
    )?;
    let programs = Programs::find();
    let mut runs: [Vec<SinkRun>; 2] = Default::default();
    let mut sources = Vec::new();
    let mut sample = None;
    for round in 1..=args.rounds {
        for (pipelining, runs) in [true, false].into_iter().zip(runs.iter_mut()) {
            let name = offered(pipelining);
            eprintln!("bench: round {round}: ours into smtp-sink, {name} …");
            let run = ours_into_sink(args, bin, &sink_bin, pipelining, dir).await?;
            eprintln!("bench: round {round}: ours, {name}: {}", run.summary());
            for p in run.problems.iter().take(5) {
                eprintln!("bench:   {p}");
            }
            sample = sample.or(run.sample.clone());
            runs.push(run);
        }
        if let (Ok(programs), Some(message)) = (&programs, &sample) {
            // Dumping too, as smtp-sink does for ours.
            let dump = true;
            sources.extend(reference(args, programs, message, dump, round, dir).await);
        }
    }
    println!(
        "Our daemon's burst ({} requests × 3) into Postfix's smtp-sink (every mail dumped to a \
         file and checked), best of {} round(s):\n",
        args.requests, args.rounds
    );
    let mut ok = true;
    for (pipelining, runs) in [true, false].into_iter().zip(runs) {
        ok &= runs.iter().all(SinkRun::correct);
        let lost: usize = runs
            .iter()
            .map(|r| r.burst.tally.lost + r.burst.tally.unexpected)
            .sum();
        let dups: usize = runs.iter().map(|r| r.burst.tally.duplicates).sum();
        let problems: usize = runs.iter().map(|r| r.problems.len()).sum();
        let best = runs
            .iter()
            .min_by_key(|r| r.burst.elapsed.unwrap_or(Duration::MAX));
        if let Some(best) = best {
            println!(
                "- ours, {}: {:.3} s, {:.0} mails/s; {lost} lost, {dups} duplicates, {problems} \
                 malformed or miscounted (all rounds)",
                offered(pipelining),
                best.burst.elapsed.map_or(f64::NAN, |d| d.as_secs_f64()),
                best.burst.mails_per_second().unwrap_or(f64::NAN),
            );
        }
    }
    println!(
        "- smtp-source, no pipelining, into smtp-sink dumping as for ours: {}",
        SourceRun::best_line(&programs, sources, args.rounds)
    );
    Ok(ok)
}

fn offered(pipelining: bool) -> &'static str {
    if pipelining {
        "PIPELINING offered"
    } else {
        "PIPELINING not offered (-p)"
    }
}

async fn ours_into_sink(
    args: &Args,
    bin: &Path,
    sink_bin: &Path,
    pipelining: bool,
    dir: &Path,
) -> anyhow::Result<SinkRun> {
    let options = SinkOptions {
        pipelining,
        dump: true,
    };
    let sink = Sink::Postfix(SmtpSink::start(sink_bin, options).await?);
    let (auth, daemon) = crate::start_daemon(bin, &sink, "ours-smtp-sink", dir).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let burst = load::burst(&auth, &sink, args.requests).await;
    daemon.stop().await;
    let Sink::Postfix(sink) = sink else {
        unreachable!("made above")
    };
    let mails = sink.mails()?;
    let mut problems = check(&mails);
    if mails.len() != sink.completed().len() {
        problems.push(format!(
            "smtp-sink counted {} messages but dumped {}",
            sink.completed().len(),
            mails.len()
        ));
    }
    Ok(SinkRun {
        burst,
        problems,
        sample: mails.first().map(|m| m.data.clone()),
    })
}

/// What is wrong with the burst's new-thread mails as smtp-sink got them: each must have a
/// unique Message-ID, no In-Reply-To (a new thread), From, To (its envelope recipient), Subject
/// and Date, and no CR outside a line end. (smtp-sink's dump ends every line with LF whatever
/// was sent, so bare LFs cannot be seen here; `tests/it/postfix.rs` checks them on the wire.)
pub fn check(mails: &[DumpedMail]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut ids = HashSet::new();
    for m in mails {
        let to = m.rcpt_to.join(",");
        let mut problem = |what: &str| problems.push(format!("mail to {to}: {what}"));
        let Some(parsed) = mail_parser::MessageParser::default().parse_headers(&m.data) else {
            problem("no header section");
            continue;
        };
        match parsed.message_id() {
            Some(id) if !ids.insert(id.to_owned()) => problem("a Message-ID seen before"),
            Some(_) => {}
            None => problem("no Message-ID"),
        }
        if parsed.header("In-Reply-To").is_some() {
            problem("an In-Reply-To in a new thread");
        }
        let address = |a: Option<&mail_parser::Address>| {
            a.and_then(|a| a.first())
                .and_then(|a| a.address())
                .map(str::to_owned)
        };
        if address(parsed.from()).as_deref() != Some(m.mail_from.as_str()) {
            problem("From is not the envelope sender");
        }
        if address(parsed.to()) != Some(to.clone()) {
            problem("To is not the envelope recipient");
        }
        if !parsed.subject().is_some_and(|s| s.contains("Role Request")) {
            problem("no Subject naming the request");
        }
        if parsed.date().is_none() {
            problem("no Date");
        }
        if m.data.windows(2).any(|w| w[0] == b'\r' && w[1] != b'\n') {
            problem("a CR outside a line end");
        }
    }
    problems
}
