//! The functions and methods a condition may call, with their types (as upstream declares them).
//!
//! Source: `lib/expression/parser.go` (`DefaultParserSpec`: functions and methods), which is all
//! v18.0's access-request conditions get (`lib/accessmonitoring/request_mapping.go` adds
//! variables, no functions). Methods take their receiver as the first argument; a name that is a
//! method wins over a dotted function name.

use std::collections::{BTreeMap, BTreeSet};

use super::eval::Value;
use super::text::{email_local, regexp_replace, replace_all, simple_case, split, transform};
use crate::calendar::parse_rfc3339;

/// Static types, as `typical` knows them at parse time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ty {
    Bool,
    Str,
    Int,
    Float,
    Time,
    Set,
    Dict,
    Pair,
    Opt,
    /// Only known at evaluation (functions declared to return Go's `any`).
    Any,
}

impl Ty {
    pub(super) fn name(self) -> &'static str {
        match self {
            Ty::Bool => "bool",
            Ty::Str => "string",
            Ty::Int => "int",
            Ty::Float => "float",
            Ty::Time => "time",
            Ty::Set => "set",
            Ty::Dict => "dict",
            Ty::Pair => "pair",
            Ty::Opt => "option",
            Ty::Any => "any",
        }
    }
}

/// What a parameter accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Param {
    T(Ty),
    Any,
    /// A set or a dict (upstream's `remover` interface).
    Remover,
}

impl Param {
    pub(super) fn name(self) -> &'static str {
        match self {
            Param::T(t) => t.name(),
            Param::Any => "any",
            Param::Remover => "set or dict",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Func {
    Set,
    Dict,
    Pair,
    Union,
    IfElse,
    Upper,
    Lower,
    ReplaceAll,
    Choose,
    Option,
    EmailLocal,
    RegexpReplace,
    Split,
    Rfc3339,
    Before,
    After,
    Between,
    ContainsAny,
    ContainsAll,
    IsEmpty,
    Add,
    Contains,
    Put,
    AddValues,
    Remove,
}

/// A signature: fixed parameters, then optionally any number of `rest`.
pub(super) struct Sig {
    pub fixed: &'static [Param],
    pub rest: Option<Param>,
    pub ret: Ty,
}

const S: Param = Param::T(Ty::Str);
const SET: Param = Param::T(Ty::Set);
const TIME: Param = Param::T(Ty::Time);
const DICT: Param = Param::T(Ty::Dict);
const BOOL: Param = Param::T(Ty::Bool);

/// Functions called by name (`set(...)`, `strings.upper(...)`).
pub(super) fn function(name: &str) -> Option<Func> {
    Some(match name {
        "set" => Func::Set,
        "dict" => Func::Dict,
        "pair" => Func::Pair,
        "union" => Func::Union,
        "ifelse" => Func::IfElse,
        "strings.upper" => Func::Upper,
        "strings.lower" => Func::Lower,
        "strings.replaceall" => Func::ReplaceAll,
        "choose" => Func::Choose,
        "option" => Func::Option,
        "email.local" => Func::EmailLocal,
        "regexp.replace" => Func::RegexpReplace,
        "strings.split" => Func::Split,
        "time.RFC3339" => Func::Rfc3339,
        "before" => Func::Before,
        "after" => Func::After,
        "between" => Func::Between,
        "contains_any" => Func::ContainsAny,
        "contains_all" => Func::ContainsAll,
        "is_empty" => Func::IsEmpty,
        _ => return None,
    })
}

/// Methods called on a receiver (`x.contains(...)`). Note `isempty`, not `is_empty`, upstream.
pub(super) fn method(name: &str) -> Option<Func> {
    Some(match name {
        "add" => Func::Add,
        "contains" => Func::Contains,
        "put" => Func::Put,
        "add_values" => Func::AddValues,
        "remove" => Func::Remove,
        "before" => Func::Before,
        "after" => Func::After,
        "between" => Func::Between,
        "contains_any" => Func::ContainsAny,
        "contains_all" => Func::ContainsAll,
        "isempty" => Func::IsEmpty,
        _ => return None,
    })
}

pub(super) fn sig(f: Func) -> Sig {
    let (fixed, rest, ret): (&'static [Param], Option<Param>, Ty) = match f {
        Func::Set => (&[], Some(S), Ty::Set),
        Func::Dict => (&[], Some(Param::T(Ty::Pair)), Ty::Dict),
        Func::Pair => (&[Param::Any, Param::Any], None, Ty::Pair),
        Func::Union => (&[], Some(SET), Ty::Set),
        Func::IfElse => (&[BOOL, Param::Any, Param::Any], None, Ty::Any),
        Func::Upper | Func::Lower => (&[Param::Any], None, Ty::Any),
        Func::ReplaceAll => (&[Param::Any, S, S], None, Ty::Any),
        Func::Choose => (&[], Some(Param::T(Ty::Opt)), Ty::Any),
        Func::Option => (&[BOOL, Param::Any], None, Ty::Opt),
        Func::EmailLocal => (&[SET], None, Ty::Set),
        Func::RegexpReplace => (&[SET, S, S], None, Ty::Set),
        Func::Split => (&[SET, S], None, Ty::Set),
        Func::Rfc3339 => (&[S], None, Ty::Time),
        Func::Before | Func::After => (&[TIME, TIME], None, Ty::Bool),
        Func::Between => (&[TIME], Some(TIME), Ty::Bool),
        Func::ContainsAny | Func::ContainsAll => (&[SET, SET], None, Ty::Bool),
        Func::IsEmpty => (&[SET], None, Ty::Bool),
        Func::Add => (&[SET], Some(S), Ty::Set),
        Func::Contains => (&[SET, S], None, Ty::Bool),
        Func::Put => (&[DICT, S, SET], None, Ty::Dict),
        Func::AddValues => (&[DICT, S], Some(S), Ty::Dict),
        Func::Remove => (&[Param::Remover], Some(S), Ty::Any),
    };
    Sig { fixed, rest, ret }
}

/// Calls `f` on evaluated arguments (already of the checked types).
pub(super) fn call(f: Func, args: Vec<Value>) -> Result<Value, String> {
    let mut a = Args(args.into_iter());
    match f {
        Func::Set => Ok(Value::Set(a.strs()?.into_iter().collect())),
        Func::Union => {
            let mut out = BTreeSet::new();
            while a.more() {
                out.append(&mut a.set()?);
            }
            Ok(Value::Set(out))
        }
        Func::Add => {
            let mut s = a.set()?;
            s.extend(a.strs()?);
            Ok(Value::Set(s))
        }
        Func::Contains => Ok(Value::Bool(a.set()?.contains(&a.str()?))),
        Func::ContainsAny => {
            let (s1, s2) = (a.set()?, a.set()?);
            Ok(Value::Bool(s2.iter().any(|v| s1.contains(v))))
        }
        Func::ContainsAll => {
            let (s1, s2) = (a.set()?, a.set()?);
            Ok(Value::Bool(
                !s2.is_empty() && s2.iter().all(|v| s1.contains(v)),
            ))
        }
        Func::IsEmpty => Ok(Value::Bool(a.set()?.is_empty())),
        _ => call_more(f, a),
    }
}

fn call_more(f: Func, mut a: Args) -> Result<Value, String> {
    match f {
        Func::Remove => remove(a.next()?, a.strs()?),
        Func::Dict => dict(a.rest()),
        Func::Put => {
            let (mut d, k, v) = (a.dict()?, a.str()?, a.set()?);
            d.insert(k, v);
            Ok(Value::Dict(d))
        }
        Func::AddValues => {
            let (mut d, k) = (a.dict()?, a.str()?);
            d.entry(k).or_default().extend(a.strs()?);
            Ok(Value::Dict(d))
        }
        Func::Pair => Ok(Value::Pair(Box::new(a.next()?), Box::new(a.next()?))),
        Func::Option => Ok(Value::Opt(a.bool()?, Box::new(a.next()?))),
        Func::IfElse => {
            let (c, x, y) = (a.bool()?, a.next()?, a.next()?);
            Ok(if c { x } else { y })
        }
        Func::Choose => choose(a.rest()),
        _ => call_strings(f, a),
    }
}

fn call_strings(f: Func, mut a: Args) -> Result<Value, String> {
    match f {
        Func::Upper => transform("strings.upper", a.next()?, |s| Ok(simple_case(s, true))),
        Func::Lower => transform("strings.lower", a.next()?, |s| Ok(simple_case(s, false))),
        Func::ReplaceAll => {
            let (input, from, to) = (a.next()?, a.str()?, a.str()?);
            transform("strings.replaceall", input, |s| replace_all(s, &from, &to))
        }
        Func::Split => {
            let (inputs, sep) = (a.set()?, a.str()?);
            Ok(Value::Set(
                inputs.iter().flat_map(|s| split(s, &sep)).collect(),
            ))
        }
        Func::EmailLocal => {
            let locals: Result<BTreeSet<String>, String> =
                a.set()?.iter().map(|e| email_local(e)).collect();
            Ok(Value::Set(locals?))
        }
        Func::RegexpReplace => {
            let (inputs, pattern, replacement) = (a.set()?, a.str()?, a.str()?);
            regexp_replace(&inputs, &pattern, &replacement).map(Value::Set)
        }
        _ => call_times(f, a),
    }
}

fn call_times(f: Func, mut a: Args) -> Result<Value, String> {
    match f {
        Func::Rfc3339 => {
            let s = a.str()?;
            parse_rfc3339(&s)
                .map(Value::Time)
                .map_err(|e| format!("parsing time {s:?} as RFC 3339: {e}"))
        }
        Func::Before => Ok(Value::Bool(a.time()? < a.time()?)),
        Func::After => Ok(Value::Bool(a.time()? > a.time()?)),
        Func::Between => {
            let t = a.time()?;
            let interval: Vec<Value> = a.rest();
            let [Value::Time(x), Value::Time(y)] = interval.as_slice() else {
                return Err(format!(
                    "between expects 2 times after the first, got {}",
                    interval.len()
                ));
            };
            let (lo, hi) = if x > y { (y, x) } else { (x, y) };
            Ok(Value::Bool(t > *lo && t < *hi))
        }
        other => Err(format!("no implementation for {other:?} (this is a bug)")),
    }
}

/// Evaluated arguments, taken in order; the checker guarantees their types.
struct Args(std::vec::IntoIter<Value>);

fn internal(want: &str, got: &Value) -> String {
    format!("expected {want}, got {} (this is a bug)", got.type_name())
}

impl Args {
    fn more(&self) -> bool {
        self.0.len() > 0
    }
    fn next(&mut self) -> Result<Value, String> {
        self.0
            .next()
            .ok_or_else(|| "missing argument (this is a bug)".to_string())
    }
    fn rest(self) -> Vec<Value> {
        self.0.collect()
    }
    fn str(&mut self) -> Result<String, String> {
        match self.next()? {
            Value::Str(s) => Ok(s),
            v => Err(internal("string", &v)),
        }
    }
    fn strs(self) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        let mut me = self;
        while me.more() {
            out.push(me.str()?);
        }
        Ok(out)
    }
    fn bool(&mut self) -> Result<bool, String> {
        match self.next()? {
            Value::Bool(b) => Ok(b),
            v => Err(internal("bool", &v)),
        }
    }
    fn set(&mut self) -> Result<BTreeSet<String>, String> {
        match self.next()? {
            Value::Set(s) => Ok(s),
            v => Err(internal("set", &v)),
        }
    }
    fn dict(&mut self) -> Result<BTreeMap<String, BTreeSet<String>>, String> {
        match self.next()? {
            Value::Dict(d) => Ok(d),
            v => Err(internal("dict", &v)),
        }
    }
    fn time(&mut self) -> Result<std::time::SystemTime, String> {
        match self.next()? {
            Value::Time(t) => Ok(t),
            v => Err(internal("time", &v)),
        }
    }
}

fn remove(target: Value, items: Vec<String>) -> Result<Value, String> {
    match target {
        Value::Set(mut s) => {
            items.iter().for_each(|i| {
                s.remove(i);
            });
            Ok(Value::Set(s))
        }
        Value::Dict(mut d) => {
            items.iter().for_each(|i| {
                d.remove(i);
            });
            Ok(Value::Dict(d))
        }
        v => Err(internal("set or dict", &v)),
    }
}

fn dict(pairs: Vec<Value>) -> Result<Value, String> {
    let mut d = BTreeMap::new();
    for p in pairs {
        let Value::Pair(k, v) = p else {
            return Err(internal("pair", &p));
        };
        let Value::Str(k) = *k else {
            return Err(format!("dict keys must be strings, got {}", k.type_name()));
        };
        let Value::Set(v) = *v else {
            return Err(format!("dict values must be sets, got {}", v.type_name()));
        };
        d.insert(k, v);
    }
    Ok(Value::Dict(d))
}

fn choose(options: Vec<Value>) -> Result<Value, String> {
    for o in options {
        if let Value::Opt(true, v) = o {
            return Ok(*v);
        }
    }
    Err("choose: no option could be selected; add a default option whose condition is true".into())
}
