//! The one table: a row per figure, the limit, lettre, the original and ours side by side, the
//! ratios, and each target with whether this run met it.

use std::fmt::Write as _;
use std::time::Duration;

use crate::load::Burst;
use crate::sink::Tally;

/// What one column measured; `absent` says why there is nothing.
#[derive(Default)]
pub struct Column {
    pub burst: Option<Burst>,
    pub steady: Option<Tally>,
    pub ready: Option<Duration>,
    pub idle_rss: Option<u64>,
    pub peak_rss: Option<u64>,
    pub cpu_per_1000: Option<f64>,
    pub errors: Option<usize>,
    pub note: Option<String>,
    pub absent: Option<String>,
}

impl Column {
    pub fn absent(why: &str) -> Self {
        Self {
            absent: Some(why.to_owned()),
            ..Self::default()
        }
    }

    /// One column from several rounds of the same column: for each figure of time the best
    /// round (the machine's noise only ever adds), for memory the worst, and lost, duplicate
    /// and unexpected mails and ERROR lines summed over every round.
    pub fn best_of(rounds: Vec<Column>) -> Column {
        let (measured, absent): (Vec<_>, Vec<_>) =
            rounds.into_iter().partition(|c| c.absent.is_none());
        if measured.is_empty() {
            return absent.into_iter().next().unwrap_or_default();
        }
        let min_f =
            |f: fn(&Column) -> Option<f64>| measured.iter().filter_map(f).min_by(f64::total_cmp);
        let max_u = |f: fn(&Column) -> Option<u64>| measured.iter().filter_map(f).max();
        let sum_u = |f: fn(&Column) -> Option<usize>| measured.iter().map(f).sum::<Option<usize>>();
        // Every round's failures stay visible: summed onto the chosen round's rows.
        let mut burst: Option<Burst> = None;
        let mut steady: Option<Tally> = None;
        let (mut burst_failures, mut steady_failures) = (Failures::default(), Failures::default());
        for c in &measured {
            if let Some(b) = &c.burst {
                burst_failures.add(&b.tally);
                if burst.as_ref().is_none_or(|best| {
                    b.elapsed.unwrap_or(Duration::MAX) < best.elapsed.unwrap_or(Duration::MAX)
                }) {
                    burst = Some(b.clone());
                }
            }
            if let Some(t) = &c.steady {
                steady_failures.add(t);
                let p99 = |t: &Tally| t.quantile(0.99).unwrap_or(Duration::MAX);
                if steady.as_ref().is_none_or(|best| p99(t) < p99(best)) {
                    steady = Some(t.clone());
                }
            }
        }
        if let Some(b) = &mut burst {
            burst_failures.put(&mut b.tally);
        }
        if let Some(t) = &mut steady {
            steady_failures.put(t);
        }
        let notes: Vec<String> = measured.iter().filter_map(|c| c.note.clone()).collect();
        Column {
            burst,
            steady,
            ready: measured.iter().filter_map(|c| c.ready).min(),
            idle_rss: max_u(|c| c.idle_rss),
            peak_rss: max_u(|c| c.peak_rss),
            cpu_per_1000: min_f(|c| c.cpu_per_1000),
            errors: sum_u(|c| c.errors),
            note: (!notes.is_empty()).then(|| notes.join("; ")),
            absent: None,
        }
    }

    /// One line on this round of the column, for the progress output.
    pub fn summary(&self) -> Option<String> {
        let burst = self.burst.as_ref()?;
        let steady = self.steady.as_ref()?;
        let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
        Some(format!(
            "burst {:.3} s ({:.0} mails/s), steady p50 {:.1} ms p99 {:.1} ms, CPU {}",
            burst.elapsed.map_or(f64::NAN, |d| d.as_secs_f64()),
            burst.mails_per_second().unwrap_or(f64::NAN),
            ms(steady.quantile(0.5)),
            ms(steady.quantile(0.99)),
            self.cpu_per_1000
                .map_or("—".into(), |c| format!("{c:.3} s per 1,000 mails")),
        ))
    }

    fn correct(&self) -> bool {
        self.burst.as_ref().is_some_and(|b| b.tally.correct())
            && self.steady.as_ref().is_some_and(Tally::correct)
    }
}

/// Lost, duplicate and unexpected mails, summed over rounds.
#[derive(Default)]
struct Failures {
    lost: usize,
    duplicates: usize,
    unexpected: usize,
}

impl Failures {
    fn add(&mut self, t: &Tally) {
        self.lost += t.lost;
        self.duplicates += t.duplicates;
        self.unexpected += t.unexpected;
    }

    fn put(&self, t: &mut Tally) {
        (t.lost, t.duplicates, t.unexpected) = (self.lost, self.duplicates, self.unexpected);
    }
}

pub struct Run {
    /// The pipelined sender: what the ratios and targets compare ours with.
    pub limit: Column,
    /// lettre's pool, which does not pipeline.
    pub lettre: Column,
    pub original: Column,
    pub ours: Column,
    pub ours_mailgun: Column,
    pub requests: usize,
    pub rate: f64,
    pub seconds: f64,
    pub rounds: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum Better {
    Lower,
    Higher,
}

/// A figure of a column: a number, or text such as "n/a".
type Figure = Result<f64, String>;

/// Label, target, unit, the target's check, and the figure of a column.
type ResourceRow = (
    &'static str,
    &'static str,
    &'static str,
    Option<fn(f64, Option<f64>) -> bool>,
    fn(&Column) -> Option<f64>,
);

struct Row {
    label: String,
    target: &'static str,
    better: Better,
    unit: &'static str,
    /// Whether ours meets the row's own target, given ours and the limit.
    meets: Option<fn(f64, Option<f64>) -> bool>,
    /// Limit, lettre, original, ours.
    cells: [Figure; 4],
}

fn ms(d: Option<Duration>) -> Figure {
    d.map(|d| d.as_secs_f64() * 1000.0)
        .ok_or_else(|| "—".to_owned())
}

/// The cell of a column that has no figures: its reason's first line, or "failed (below)".
fn absent_cell(why: &str) -> String {
    if why.starts_with("failed") {
        "failed (see below)".into()
    } else {
        why.lines().next().unwrap_or_default().to_owned()
    }
}

fn get(c: &Column, f: impl Fn(&Column) -> Option<f64>) -> Figure {
    match &c.absent {
        Some(why) => Err(absent_cell(why)),
        None => f(c).ok_or_else(|| "—".to_owned()),
    }
}

fn mb(b: Option<u64>) -> Option<f64> {
    b.map(|b| b as f64 / (1024.0 * 1024.0))
}

impl Run {
    pub fn ours_correct(&self) -> bool {
        self.ours.correct() && self.ours_mailgun.correct()
    }

    fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        for mg in [false, true] {
            let path = if mg { "Mailgun" } else { "SMTP" };
            let (l, t, o) = (&self.limit, &self.lettre, &self.original);
            let u = if mg { &self.ours_mailgun } else { &self.ours };
            let senders_only = |c: &Column| std::ptr::eq(c, l) || std::ptr::eq(c, t);
            let na = |c: &Column, f: &dyn Fn(&Column) -> Figure| -> Figure {
                if mg && !std::ptr::eq(c, u) {
                    Err(if senders_only(c) {
                        "n/a (SMTP only)".into()
                    } else {
                        "n/a (no api_base)".into()
                    })
                } else {
                    f(c)
                }
            };
            let cells = |f: &dyn Fn(&Column) -> Figure| [na(l, f), na(t, f), na(o, f), f(u)];
            let burst_time =
                |c: &Column| get(c, |c| c.burst.as_ref()?.elapsed.map(|d| d.as_secs_f64()));
            let rate = |c: &Column| get(c, |c| c.burst.as_ref()?.mails_per_second());
            let lost = |c: &Column| {
                get(c, |c| {
                    let b = c.burst.as_ref()?;
                    Some((b.tally.lost + b.tally.unexpected) as f64)
                })
            };
            let dups = |c: &Column| get(c, |c| Some(c.burst.as_ref()?.tally.duplicates as f64));
            let n = self.requests;
            rows.push(Row {
                label: format!("{path} burst: {n} requests × 3, s to last mail"),
                target: "",
                better: Better::Lower,
                unit: "s",
                meets: None,
                cells: cells(&burst_time),
            });
            rows.push(Row {
                label: format!("{path} burst: mails/s"),
                target: if mg { "" } else { "≥ 0.8 × limit" },
                better: Better::Higher,
                unit: "",
                meets: if mg {
                    None
                } else {
                    Some(|ours, limit| limit.is_some_and(|l| ours >= 0.8 * l))
                },
                cells: cells(&rate),
            });
            rows.push(Row {
                label: format!("{path} burst: lost"),
                target: "0",
                better: Better::Lower,
                unit: "",
                meets: Some(|ours, _| ours == 0.0),
                cells: cells(&lost),
            });
            rows.push(Row {
                label: format!("{path} burst: duplicates"),
                target: "0",
                better: Better::Lower,
                unit: "",
                meets: Some(|ours, _| ours == 0.0),
                cells: cells(&dups),
            });
            for (q, name) in [(0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (1.0, "max")] {
                let lat = move |c: &Column| -> Figure {
                    match &c.absent {
                        Some(why) => Err(absent_cell(why)),
                        None => ms(c.steady.as_ref().and_then(|t| t.quantile(q))),
                    }
                };
                rows.push(Row {
                    label: format!(
                        "{path} steady {}/s × {} s: latency {name}",
                        self.rate, self.seconds
                    ),
                    target: if name == "p99" { "≤ 50 ms" } else { "" },
                    better: Better::Lower,
                    unit: "ms",
                    meets: (name == "p99")
                        .then_some((|ours, _| ours <= 50.0) as fn(f64, Option<f64>) -> bool),
                    cells: cells(&lat),
                });
            }
            let slost = |c: &Column| {
                get(c, |c| {
                    let t = c.steady.as_ref()?;
                    Some((t.lost + t.unexpected + t.duplicates) as f64)
                })
            };
            rows.push(Row {
                label: format!("{path} steady: lost + duplicates"),
                target: "0",
                better: Better::Lower,
                unit: "",
                meets: Some(|ours, _| ours == 0.0),
                cells: cells(&slost),
            });
            let process = |c: &Column, f: fn(&Column) -> Option<f64>| -> Figure {
                if senders_only(c) {
                    Err("— (no daemon)".into())
                } else {
                    na(c, &|c| get(c, f))
                }
            };
            let resource_rows: [ResourceRow; 5] = [
                (
                    "RSS idle after start, MB",
                    "≤ 15 MB",
                    "MB",
                    Some(|o, _| o <= 15.0),
                    |c| mb(c.idle_rss),
                ),
                (
                    "RSS peak (VmHWM) after the burst, MB",
                    "≤ 60 MB",
                    "MB",
                    Some(|o, _| o <= 60.0),
                    |c| mb(c.peak_rss),
                ),
                (
                    "start → `Plugin is ready`, ms",
                    "≤ 200 ms",
                    "ms",
                    Some(|o, _| o <= 200.0),
                    |c| ms(c.ready).ok(),
                ),
                ("CPU s per 1,000 mails", "", "s", None, |c| c.cpu_per_1000),
                ("ERROR lines in the log", "", "", None, |c| {
                    c.errors.map(|e| e as f64)
                }),
            ];
            for (label, target, unit, meets, f) in resource_rows {
                rows.push(Row {
                    label: format!("{path}: {label}"),
                    target: if mg { "" } else { target },
                    better: Better::Lower,
                    unit,
                    meets: if mg { None } else { meets },
                    cells: [l, t, o, u].map(|c| process(c, f)),
                });
            }
        }
        rows
    }

    pub fn render(&self) -> String {
        let header = [
            "",
            "limit (pipelined)",
            "lettre, no pipelining",
            "original",
            "ours",
            "ours/limit",
            "ours/original",
            "target",
            "met",
        ];
        let mut lines: Vec<[String; 9]> = Vec::new();
        for r in self.rows() {
            let [l, t, o, u] = &r.cells;
            let ratio = |other: &Figure| match (u, other) {
                (Ok(a), Ok(b)) if *b != 0.0 => format!("{:.2}", a / b),
                _ => "—".into(),
            };
            let mut met = Vec::new();
            if let (Some(meets), Ok(ours)) = (r.meets, u) {
                met.push(if meets(*ours, l.as_ref().ok().copied()) {
                    "yes"
                } else {
                    "NO"
                });
            }
            if let (Ok(ours), Ok(orig)) = (u, o) {
                let better = match r.better {
                    Better::Lower => ours < orig,
                    Better::Higher => ours > orig,
                };
                met.push(if ours == orig {
                    "same as original"
                } else if better {
                    "beats original"
                } else {
                    "WORSE than original"
                });
            }
            lines.push([
                r.label.clone(),
                fmt(l, r.unit),
                fmt(t, r.unit),
                fmt(o, r.unit),
                fmt(u, r.unit),
                ratio(l),
                ratio(o),
                r.target.to_owned(),
                met.join(", "),
            ]);
        }
        let mut widths = header.map(str::len);
        for l in &lines {
            for (i, c) in l.iter().enumerate() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        let row = |out: &mut String, cells: &[String]| {
            out.push('|');
            for (i, c) in cells.iter().enumerate() {
                let pad = widths[i] - c.chars().count();
                if i == 0 || i >= 7 {
                    let _ = write!(out, " {c}{} |", " ".repeat(pad));
                } else {
                    let _ = write!(out, " {}{c} |", " ".repeat(pad));
                }
            }
            out.push('\n');
        };
        row(&mut out, &header.map(str::to_owned));
        out.push('|');
        for (i, w) in widths.iter().enumerate() {
            let dashes = "-".repeat(*w);
            let _ = if i == 0 || i >= 7 {
                write!(out, " {dashes} |")
            } else {
                write!(out, " {dashes}:|").map(|_| ())
            };
        }
        out.push('\n');
        for l in &lines {
            row(&mut out, l);
        }
        let notes = [
            ("limit (pipelined)", &self.limit),
            ("lettre, no pipelining", &self.lettre),
            ("original", &self.original),
            ("ours (SMTP)", &self.ours),
            ("ours (Mailgun)", &self.ours_mailgun),
        ];
        for (name, c) in notes {
            if let Some(n) = c.absent.as_ref().or(c.note.as_ref()) {
                let _ = writeln!(out, "\n{name}: {n}");
            }
        }
        if self.rounds > 1 {
            let _ = writeln!(
                out,
                "\n{} rounds, the columns interleaved in each; per column, figures of time are \
                 its best round's, memory its worst round's, lost, duplicate and ERROR counts \
                 the sum over every round.",
                self.rounds
            );
        }
        out
    }
}

fn fmt(f: &Figure, unit: &str) -> String {
    match f {
        Err(text) => text.clone(),
        Ok(v) => match unit {
            "ms" if *v < 10.0 => format!("{v:.1} ms"),
            "ms" => format!("{v:.0} ms"),
            "s" if *v < 1.0 => format!("{v:.3} s"),
            "s" => format!("{v:.2} s"),
            "MB" => format!("{v:.1} MB"),
            _ if v.fract() == 0.0 => format!("{v:.0}"),
            _ => format!("{v:.0}"),
        },
    }
}
