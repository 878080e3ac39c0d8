//! Evaluation of a typed condition against one request.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use super::check::{Expr, ExprKind, Var};
use super::funcs::{self, Param, Ty};
use super::{ConditionError, Env};

/// A run-time value.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    Bool(bool),
    Str(String),
    Int(i64),
    Float(f64),
    Time(SystemTime),
    Set(BTreeSet<String>),
    Dict(BTreeMap<String, BTreeSet<String>>),
    Pair(Box<Value>, Box<Value>),
    Opt(bool, Box<Value>),
}

impl Value {
    pub(super) fn ty(&self) -> Ty {
        match self {
            Value::Bool(_) => Ty::Bool,
            Value::Str(_) => Ty::Str,
            Value::Int(_) => Ty::Int,
            Value::Float(_) => Ty::Float,
            Value::Time(_) => Ty::Time,
            Value::Set(_) => Ty::Set,
            Value::Dict(_) => Ty::Dict,
            Value::Pair(..) => Ty::Pair,
            Value::Opt(..) => Ty::Opt,
        }
    }

    pub(super) fn type_name(&self) -> &'static str {
        self.ty().name()
    }
}

fn set_of(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

fn dict_of(m: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, BTreeSet<String>> {
    m.iter().map(|(k, v)| (k.clone(), set_of(v))).collect()
}

fn var(v: Var, env: &Env) -> Value {
    match v {
        Var::Roles => Value::Set(set_of(&env.roles)),
        Var::SuggestedReviewers => Value::Set(set_of(&env.suggested_reviewers)),
        Var::Annotations => Value::Dict(dict_of(&env.system_annotations)),
        Var::User => Value::Str(env.user.clone()),
        Var::Reason => Value::Str(env.request_reason.clone()),
        Var::CreationTime => Value::Time(env.creation_time),
        Var::Expiry => Value::Time(env.expiry),
        Var::Traits => Value::Dict(dict_of(&env.user_traits)),
    }
}

fn eval_err(e: &Expr, msg: String) -> ConditionError {
    ConditionError::Eval { pos: e.pos, msg }
}

pub(super) fn eval(e: &Expr, env: &Env) -> Result<Value, ConditionError> {
    match &e.kind {
        ExprKind::Const(v) => Ok(v.clone()),
        ExprKind::Var(v) => Ok(var(*v, env)),
        ExprKind::Index(m, key) => {
            let Value::Str(key) = eval(key, env)? else {
                return Err(eval_err(
                    e,
                    "index key is not a string (this is a bug)".into(),
                ));
            };
            let map = if *m == Var::Traits {
                &env.user_traits
            } else {
                &env.system_annotations
            };
            // A missing key is an empty set, as upstream's `Dict.Get`.
            Ok(Value::Set(
                map.get(&key).map(|v| set_of(v)).unwrap_or_default(),
            ))
        }
        ExprKind::Call(f, args) => {
            let args = args
                .iter()
                .map(|a| eval(a, env))
                .collect::<Result<Vec<_>, _>>()?;
            funcs::call(*f, args).map_err(|m| eval_err(e, m))
        }
        ExprKind::Not(inner) => Ok(Value::Bool(!truth(inner, env)?)),
        ExprKind::Logic { and, items } => {
            for item in items {
                if truth(item, env)? != *and {
                    return Ok(Value::Bool(!*and));
                }
            }
            Ok(Value::Bool(*and))
        }
        ExprKind::Eq { negate, lhs, rhs } => {
            let (l, r) = (eval(lhs, env)?, eval(rhs, env)?);
            Ok(Value::Bool((l == r) != *negate))
        }
        ExprKind::Check(want, inner) => checked(*want, inner, env),
    }
}

/// A value whose type was only known at evaluation, checked against what the caller wants.
fn checked(want: Param, inner: &Expr, env: &Env) -> Result<Value, ConditionError> {
    let v = eval(inner, env)?;
    let fits = match want {
        Param::Any => true,
        Param::T(t) => v.ty() == t,
        Param::Remover => matches!(v, Value::Set(_) | Value::Dict(_)),
    };
    if !fits {
        let msg = format!("expected {}, got {}", want.name(), v.type_name());
        return Err(eval_err(inner, msg));
    }
    Ok(v)
}

fn truth(e: &Expr, env: &Env) -> Result<bool, ConditionError> {
    match eval(e, env)? {
        Value::Bool(b) => Ok(b),
        other => Err(eval_err(
            e,
            format!("expected bool, got {} (this is a bug)", other.type_name()),
        )),
    }
}
