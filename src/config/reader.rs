//! Typed reads from a TOML table that collect every problem instead of stopping at the first.

use std::collections::BTreeSet;
use std::time::Duration;

use toml::{Table, Value};

use super::duration::parse_go_duration;

/// Everything wrong (errors) or doubtful (warnings) found while reading a config.
#[derive(Debug, Default)]
pub(super) struct Findings {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl Findings {
    pub(super) fn error(&mut self, key: impl AsRef<str>, message: impl AsRef<str>) {
        self.errors
            .push(format!("{}: {}", key.as_ref(), message.as_ref()));
    }

    pub(super) fn warn(&mut self, message: impl Into<String>) {
        self.warnings.push(message.into());
    }
}

/// One `[section]` of the file; remembers which keys were read so the rest can be reported.
pub(super) struct Section<'t> {
    name: &'static str,
    table: &'t Table,
    seen: BTreeSet<&'t str>,
}

impl<'t> Section<'t> {
    pub(super) fn new(name: &'static str, table: &'t Table) -> Self {
        Self {
            name,
            table,
            seen: BTreeSet::new(),
        }
    }

    /// The value under `key` or one of its aliases, and the spelling that was used.
    fn lookup(&mut self, key: &str, aliases: &[&str]) -> Option<(String, &'t Value)> {
        let mut found = None;
        for (k, v) in self.table {
            if k == key || aliases.contains(&k.as_str()) {
                self.seen.insert(k.as_str());
                if found.is_none() || k == key {
                    found = Some((format!("{}.{}", self.name, k), v));
                }
            }
        }
        found
    }

    /// The full dotted name of `key` in this section, for messages.
    pub(super) fn key(&self, key: &str) -> String {
        format!("{}.{}", self.name, key)
    }

    /// Whether `key` (or an alias) is present at all.
    pub(super) fn has(&self, key: &str, aliases: &[&str]) -> bool {
        self.table
            .keys()
            .any(|k| k == key || aliases.contains(&k.as_str()))
    }

    pub(super) fn string(
        &mut self,
        f: &mut Findings,
        key: &str,
        aliases: &[&str],
    ) -> Option<String> {
        match self.lookup(key, aliases)? {
            (_, Value::String(s)) => Some(s.clone()),
            (name, other) => {
                f.error(
                    name,
                    format!("expected a string, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// A string that is treated as absent when empty, as the original treats `""`.
    pub(super) fn non_empty(
        &mut self,
        f: &mut Findings,
        key: &str,
        aliases: &[&str],
    ) -> Option<String> {
        self.string(f, key, aliases).filter(|s| !s.is_empty())
    }

    pub(super) fn bool(&mut self, f: &mut Findings, key: &str) -> Option<bool> {
        match self.lookup(key, &[])? {
            (_, Value::Boolean(b)) => Some(*b),
            (name, other) => {
                f.error(
                    name,
                    format!("expected true or false, found {}", other.type_str()),
                );
                None
            }
        }
    }

    pub(super) fn integer(&mut self, f: &mut Findings, key: &str, aliases: &[&str]) -> Option<i64> {
        match self.lookup(key, aliases)? {
            (_, Value::Integer(i)) => Some(*i),
            (name, other) => {
                f.error(
                    name,
                    format!("expected an integer, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// A duration written as a Go duration string (`"1m"`) or an integer of nanoseconds.
    pub(super) fn duration(&mut self, f: &mut Findings, key: &str) -> Option<Duration> {
        match self.lookup(key, &[])? {
            (name, Value::String(s)) => match parse_go_duration(s) {
                Ok(d) => Some(d),
                Err(e) => {
                    f.error(name, e);
                    None
                }
            },
            (name, Value::Integer(ns)) => match u64::try_from(*ns) {
                Ok(ns) => Some(Duration::from_nanos(ns)),
                Err(_) => {
                    f.error(name, "must not be negative");
                    None
                }
            },
            (name, other) => {
                f.error(
                    name,
                    format!(
                        "expected a duration such as \"1m\", found {}",
                        other.type_str()
                    ),
                );
                None
            }
        }
    }

    /// A string or an array of strings.
    pub(super) fn strings(&mut self, f: &mut Findings, key: &str) -> Option<Vec<String>> {
        let (name, value) = self.lookup(key, &[])?;
        string_list(f, &name, value)
    }

    /// Reports keys this section does not know, as warnings (the original ignored them).
    pub(super) fn finish(self, f: &mut Findings) {
        for k in self.table.keys() {
            if !self.seen.contains(k.as_str()) {
                f.warn(format!(
                    "unknown key {}.{} is ignored (check its spelling)",
                    self.name, k
                ));
            }
        }
    }
}

/// Reads a value that may be one string or an array of strings.
pub(super) fn string_list(f: &mut Findings, name: &str, value: &Value) -> Option<Vec<String>> {
    match value {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) => out.push(s.clone()),
                    other => {
                        f.error(
                            name,
                            format!(
                                "unexpected type for recipients value: expected strings, found {}",
                                other.type_str()
                            ),
                        );
                        return None;
                    }
                }
            }
            Some(out)
        }
        other => {
            f.error(
                name,
                format!(
                    "expected a string or an array of strings, found {}",
                    other.type_str()
                ),
            );
            None
        }
    }
}
