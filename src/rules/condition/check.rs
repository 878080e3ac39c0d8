//! Resolution and type checking: syntax tree → typed expression, as `lib/utils/typical` does.

use super::eval::Value;
use super::funcs::{self, Func, Param, Ty};
use super::syntax::{Syn, SynKind};
use super::{ConditionError, Position};

/// A typed expression, ready to evaluate.
#[derive(Debug, Clone)]
pub(super) struct Expr {
    pub kind: ExprKind,
    pub ty: Ty,
    pub pos: Position,
}

#[derive(Debug, Clone)]
pub(super) enum ExprKind {
    Const(Value),
    Var(Var),
    /// `user.traits[key]` or `access_request.spec.system_annotations[key]`: a set.
    Index(Var, Box<Expr>),
    Call(Func, Vec<Expr>),
    Not(Box<Expr>),
    Logic {
        and: bool,
        items: Vec<Expr>,
    },
    Eq {
        negate: bool,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    /// A value only typed at evaluation, checked against the parameter then.
    Check(Param, Box<Expr>),
}

/// The request's variables (upstream `request_mapping.go`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Var {
    Roles,
    SuggestedReviewers,
    Annotations,
    User,
    Reason,
    CreationTime,
    Expiry,
    Traits,
}

pub(super) struct Checked {
    pub expr: Expr,
    pub uses_user_traits: bool,
}

pub(super) fn check(syn: &Syn) -> Result<Checked, ConditionError> {
    let mut c = Checker::default();
    let expr = c.expr(syn)?;
    Ok(Checked {
        expr,
        uses_user_traits: c.traits,
    })
}

#[derive(Default)]
struct Checker {
    traits: bool,
}

fn type_err(pos: Position, msg: impl Into<String>) -> ConditionError {
    ConditionError::Type {
        pos,
        msg: msg.into(),
    }
}

fn mk(kind: ExprKind, ty: Ty, pos: Position) -> Expr {
    Expr { kind, ty, pos }
}

/// Go's `strconv.Atoi`, which is what upstream applies to integer literals.
fn parse_int(s: &str, pos: Position) -> Result<Expr, ConditionError> {
    let ok = !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    let n = s.parse::<i64>().ok().filter(|_| ok).ok_or_else(|| {
        type_err(
            pos,
            format!("failed to parse number {s} (only decimal integers are accepted)"),
        )
    })?;
    Ok(mk(ExprKind::Const(Value::Int(n)), Ty::Int, pos))
}

impl Checker {
    fn expr(&mut self, syn: &Syn) -> Result<Expr, ConditionError> {
        let pos = syn.pos;
        match &syn.kind {
            SynKind::Int(s) => parse_int(s, pos),
            SynKind::Float(f) => Ok(mk(ExprKind::Const(Value::Float(*f)), Ty::Float, pos)),
            SynKind::Str(s) => Ok(mk(ExprKind::Const(Value::Str(s.clone())), Ty::Str, pos)),
            SynKind::Ident(name) => self.identifier(std::slice::from_ref(name), pos),
            SynKind::Selector(..) => {
                let fields = selector_fields(syn)?;
                self.identifier(&fields, pos)
            }
            SynKind::Index(m, k) => {
                let m = self.expr(m)?;
                let k = self.expr(k)?;
                let key = coerce(k, Param::T(Ty::Str), "the index key")?;
                property(m, key, pos)
            }
            SynKind::Call(fun, args) => self.call(fun, args, pos),
            SynKind::Paren(inner) => self.expr(inner),
            SynKind::Not(inner) => {
                let inner = coerce(self.expr(inner)?, Param::T(Ty::Bool), "the operand of !")?;
                Ok(mk(ExprKind::Not(Box::new(inner)), Ty::Bool, pos))
            }
            SynKind::Logic { and, items } => {
                let what = if *and {
                    "an operand of &&"
                } else {
                    "an operand of ||"
                };
                let items = items
                    .iter()
                    .map(|i| coerce(self.expr(i)?, Param::T(Ty::Bool), what))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(mk(ExprKind::Logic { and: *and, items }, Ty::Bool, pos))
            }
            SynKind::Compare(op, l, r) => {
                let (l, r) = (self.expr(l)?, self.expr(r)?);
                equality(op, l, r, pos)
            }
        }
    }

    fn variable(&mut self, name: &str, pos: Position) -> Option<Expr> {
        let (var, ty) = match name {
            "true" | "false" => {
                let b = Value::Bool(name == "true");
                return Some(mk(ExprKind::Const(b), Ty::Bool, pos));
            }
            "access_request.spec.roles" => (Var::Roles, Ty::Set),
            "access_request.spec.suggested_reviewers" => (Var::SuggestedReviewers, Ty::Set),
            "access_request.spec.system_annotations" => (Var::Annotations, Ty::Dict),
            "access_request.spec.user" => (Var::User, Ty::Str),
            "access_request.spec.request_reason" => (Var::Reason, Ty::Str),
            "access_request.spec.creation_time" => (Var::CreationTime, Ty::Time),
            "access_request.spec.expiry" => (Var::Expiry, Ty::Time),
            "user.traits" => (Var::Traits, Ty::Dict),
            _ => return None,
        };
        self.traits |= var == Var::Traits;
        Some(mk(ExprKind::Var(var), ty, pos))
    }

    /// Upstream `getIdentifier`: the longest-known prefix, where `map.key` means `map["key"]`.
    fn identifier(&mut self, fields: &[String], pos: Position) -> Result<Expr, ConditionError> {
        for n in 1..=fields.len() {
            let Some(v) = self.variable(&fields[..n].join("."), pos) else {
                continue;
            };
            match &fields[n..] {
                [] => return Ok(v),
                [key] => {
                    let key = mk(ExprKind::Const(Value::Str(key.clone())), Ty::Str, pos);
                    if let Ok(e) = property(v, key, pos) {
                        return Ok(e);
                    }
                }
                _ => {}
            }
        }
        Err(type_err(
            pos,
            format!("unknown identifier {:?}", fields.join(".")),
        ))
    }

    fn call(&mut self, fun: &Syn, args: &[Syn], pos: Position) -> Result<Expr, ConditionError> {
        let mut all: Vec<&Syn> = Vec::new();
        let (f, name) = match &fun.kind {
            SynKind::Ident(n) => (funcs::function(n), n.clone()),
            SynKind::Selector(x, sel) => match (funcs::method(sel), &x.kind) {
                (Some(m), _) => {
                    all.push(x);
                    (Some(m), sel.clone())
                }
                (None, SynKind::Ident(id)) => {
                    let name = format!("{id}.{sel}");
                    (funcs::function(&name), name)
                }
                (None, _) => return Err(type_err(fun.pos, format!("{sel} is not a method"))),
            },
            _ => {
                return Err(type_err(
                    fun.pos,
                    "only named functions and methods can be called",
                ));
            }
        };
        let f = f.ok_or_else(|| type_err(fun.pos, format!("unsupported function: {name}")))?;
        all.extend(args);
        self.apply(f, &name, &all, pos)
    }

    fn apply(
        &mut self,
        f: Func,
        name: &str,
        args: &[&Syn],
        pos: Position,
    ) -> Result<Expr, ConditionError> {
        let sig = funcs::sig(f);
        let n = sig.fixed.len();
        let arity_ok = if sig.rest.is_some() {
            args.len() >= n
        } else {
            args.len() == n
        };
        if !arity_ok {
            let more = if sig.rest.is_some() { " or more" } else { "" };
            let msg = format!(
                "function {name} accepts {n}{more} arguments, given {}",
                args.len()
            );
            return Err(type_err(pos, msg));
        }
        let mut typed = Vec::with_capacity(args.len());
        for (i, arg) in args.iter().enumerate() {
            let param = sig.fixed.get(i).copied().or(sig.rest).unwrap_or(Param::Any);
            let e = self.expr(arg)?;
            typed.push(coerce(e, param, &format!("argument {} of {name}", i + 1))?);
        }
        Ok(mk(ExprKind::Call(f, typed), sig.ret, pos))
    }
}

/// Upstream `evaluateSelector`: `a.b.c` must be names all the way down.
fn selector_fields(syn: &Syn) -> Result<Vec<String>, ConditionError> {
    let mut fields = Vec::new();
    let mut cur = syn;
    loop {
        match &cur.kind {
            SynKind::Selector(x, name) => {
                fields.push(name.clone());
                cur = x;
            }
            SynKind::Ident(name) => {
                fields.push(name.clone());
                fields.reverse();
                return Ok(fields);
            }
            _ => {
                return Err(type_err(
                    cur.pos,
                    "only names can be joined with '.' (except to call a method)",
                ));
            }
        }
    }
}

/// Upstream `getProperty`: only the request's two maps can be indexed.
fn property(m: Expr, key: Expr, pos: Position) -> Result<Expr, ConditionError> {
    match m.kind {
        ExprKind::Var(v @ (Var::Annotations | Var::Traits)) => {
            Ok(mk(ExprKind::Index(v, Box::new(key)), Ty::Set, pos))
        }
        _ => Err(type_err(
            pos,
            format!("cannot index a value of type {}", m.ty.name()),
        )),
    }
}

/// Upstream `coerce`: exact type, or checked at evaluation when only known then.
fn coerce(e: Expr, want: Param, what: &str) -> Result<Expr, ConditionError> {
    let fits = match want {
        Param::Any => true,
        Param::T(t) => e.ty == t,
        Param::Remover => matches!(e.ty, Ty::Set | Ty::Dict),
    };
    if fits {
        return Ok(e);
    }
    if e.ty == Ty::Any {
        let ty = match want {
            Param::T(t) => t,
            _ => Ty::Any,
        };
        let pos = e.pos;
        return Ok(mk(ExprKind::Check(want, Box::new(e)), ty, pos));
    }
    let msg = format!("{what}: expected {}, got {}", want.name(), e.ty.name());
    Err(type_err(e.pos, msg))
}

/// Upstream `eq`/`neq`: strings or integers, typed by the left operand unless it is `any`.
fn equality(op: &str, l: Expr, r: Expr, pos: Position) -> Result<Expr, ConditionError> {
    let negate = match op {
        "==" => false,
        "!=" => true,
        _ => return Err(type_err(pos, format!("operator {op} is not supported"))),
    };
    let operand = if l.ty == Ty::Any { r.ty } else { l.ty };
    let t = match operand {
        Ty::Str | Ty::Int => operand,
        Ty::Any => {
            let msg =
                format!("operator {op} needs an operand whose type is known before evaluation");
            return Err(type_err(pos, msg));
        }
        other => {
            return Err(type_err(
                pos,
                format!("operator {op} is not supported for type {}", other.name()),
            ));
        }
    };
    let lhs = coerce(l, Param::T(t), &format!("left operand of {op}"))?;
    let rhs = coerce(r, Param::T(t), &format!("right operand of {op}"))?;
    Ok(mk(
        ExprKind::Eq {
            negate,
            lhs: Box::new(lhs),
            rhs: Box::new(rhs),
        },
        Ty::Bool,
        pos,
    ))
}
