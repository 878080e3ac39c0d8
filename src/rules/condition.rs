//! The predicate language of Access Monitoring Rule conditions: parse once, evaluate per request.
//!
//! What Teleport v18 accepts for `spec.condition` of a rule on `access_request`, re-implemented
//! from reading the upstream Go sources (facts only, no code):
//!
//! - Syntax is Go's expression syntax (upstream hands the text to `go/parser.ParseExpr` through
//!   `vulcand/predicate`): string literals `"..."` with Go escapes and raw `` `...` ``, integer and
//!   float literals, `//` and `/* */` comments, identifiers and selectors `a.b.c`, indexing
//!   `m["k"]`, calls `f(x, y)` (a trailing comma and a final `...` are allowed, as in Go), method
//!   calls `x.f(y)`, parentheses, `!`, `&&`, `||`, `==`, `!=`. Go's automatic semicolon rule
//!   applies: a line may not end right after an identifier, literal, `)` or `]` unless the
//!   expression ends there too (`f(x)` newline `&& g(y)` is an error upstream, and here).
//!   Every other Go construct (`<`, `+`, composite literals, slices, …) is rejected.
//! - Types are checked at parse time the way `lib/utils/typical` does: function arguments must
//!   have the declared type, `==`/`!=` compare strings or integers only, `&&`/`||`/`!` take
//!   booleans; functions returning "any" (`ifelse`, `choose`, `remove`, `strings.*`) defer the
//!   check to evaluation.
//! - Variables and functions are those of `lib/accessmonitoring/request_mapping.go` on top of
//!   `lib/expression/parser.go`'s default spec; see [`Env`] and `funcs.rs`.
//! - A condition matches when it evaluates to boolean `true`; any other value is no match (not an
//!   error), as upstream's `EvaluateCondition` does.

mod check;
mod eval;
mod funcs;
mod lexer;
mod syntax;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_fuzz;
mod text;

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

/// Longest condition accepted, in bytes. Real rules are a few hundred bytes; the limit keeps a
/// hostile rule from costing more than a moment to parse.
pub const MAX_CONDITION_BYTES: usize = 64 * 1024;

/// Deepest nesting accepted (parentheses, calls, `!`, selectors, indexes).
pub const MAX_DEPTH: u32 = 200;

/// Largest string or set (in bytes) one evaluation step may build (`strings.replaceall`, …).
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// What a condition sees of one access request (upstream `AccessRequestExpressionEnv`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// `access_request.spec.roles`
    pub roles: Vec<String>,
    /// `access_request.spec.suggested_reviewers`
    pub suggested_reviewers: Vec<String>,
    /// `access_request.spec.system_annotations`
    pub system_annotations: BTreeMap<String, Vec<String>>,
    /// `access_request.spec.user`
    pub user: String,
    /// `access_request.spec.request_reason`
    pub request_reason: String,
    /// `access_request.spec.creation_time`
    pub creation_time: SystemTime,
    /// `access_request.spec.expiry`
    pub expiry: SystemTime,
    /// `user.traits` of the requester (empty when the plugin may not read users).
    pub user_traits: BTreeMap<String, Vec<String>>,
}

impl Default for Env {
    fn default() -> Self {
        Env {
            roles: Vec::new(),
            suggested_reviewers: Vec::new(),
            system_annotations: BTreeMap::new(),
            user: String::new(),
            request_reason: String::new(),
            creation_time: SystemTime::UNIX_EPOCH,
            expiry: SystemTime::UNIX_EPOCH,
            user_traits: BTreeMap::new(),
        }
    }
}

/// Where in the condition text a problem is: 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// Why a condition could not be parsed or evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    #[error("condition is empty")]
    Empty,
    #[error("condition is {len} bytes long; at most {MAX_CONDITION_BYTES} are accepted")]
    TooLong { len: usize },
    #[error("condition nests deeper than {MAX_DEPTH} levels at {pos}")]
    TooDeep { pos: Position },
    #[error("syntax error at {pos}: {msg}")]
    Syntax { pos: Position, msg: String },
    #[error("at {pos}: {msg}")]
    Type { pos: Position, msg: String },
    #[error("evaluating condition at {pos}: {msg}")]
    Eval { pos: Position, msg: String },
}

impl ConditionError {
    /// The position the error points at, if it has one.
    pub fn position(&self) -> Option<Position> {
        match self {
            ConditionError::Empty | ConditionError::TooLong { .. } => None,
            ConditionError::TooDeep { pos }
            | ConditionError::Syntax { pos, .. }
            | ConditionError::Type { pos, .. }
            | ConditionError::Eval { pos, .. } => Some(*pos),
        }
    }
}

/// A parsed, type-checked condition, ready to be evaluated against many requests.
#[derive(Debug, Clone)]
pub struct Condition {
    expr: check::Expr,
    needs_user_traits: bool,
}

impl Condition {
    /// Parses and type-checks `src`; every error names the problem and where it is.
    pub fn parse(src: &str) -> Result<Condition, ConditionError> {
        if src.is_empty() {
            return Err(ConditionError::Empty);
        }
        if src.len() > MAX_CONDITION_BYTES {
            return Err(ConditionError::TooLong { len: src.len() });
        }
        let tokens = lexer::tokenize(src)?;
        let syn = syntax::parse(&tokens)?;
        let checked = check::check(&syn)?;
        Ok(Condition {
            expr: checked.expr,
            needs_user_traits: checked.uses_user_traits,
        })
    }

    /// Whether the request matches: `Ok(true)` only when the condition evaluates to `true`.
    pub fn eval(&self, env: &Env) -> Result<bool, ConditionError> {
        Ok(matches!(
            eval::eval(&self.expr, env)?,
            eval::Value::Bool(true)
        ))
    }

    /// Whether the condition reads `user.traits` (so the caller fetches the user only then).
    pub fn needs_user_traits(&self) -> bool {
        self.needs_user_traits
    }
}
