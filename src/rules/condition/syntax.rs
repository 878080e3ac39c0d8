//! The syntax tree of a condition: Go's expression grammar, cut down to what predicate accepts.

use super::lexer::{Tok, Token};
use super::{ConditionError, MAX_DEPTH, Position};

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Syn {
    pub kind: SynKind,
    pub pos: Position,
    /// Height of this subtree; bounded by `MAX_DEPTH` so checking and evaluating never recurse
    /// deeper than the parser did.
    pub height: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum SynKind {
    Int(String),
    Float(f64),
    Str(String),
    Ident(String),
    Selector(Box<Syn>, String),
    Index(Box<Syn>, Box<Syn>),
    Call(Box<Syn>, Vec<Syn>),
    Paren(Box<Syn>),
    Not(Box<Syn>),
    /// A chain of `&&` (`and` true) or `||`, flattened: both short-circuit left to right.
    Logic {
        and: bool,
        items: Vec<Syn>,
    },
    /// `==`, `!=` (and the comparisons predicate parses but Teleport does not define).
    Compare(&'static str, Box<Syn>, Box<Syn>),
}

pub(super) fn parse(tokens: &[Token]) -> Result<Syn, ConditionError> {
    let mut p = Parser {
        tokens,
        i: 0,
        depth: 0,
    };
    let expr = p.expr()?;
    // Like `go/parser.ParseExpr`: one automatic semicolon may end the text, nothing else.
    if p.peek().tok == Tok::Newline {
        p.i += 1;
    }
    let t = p.peek();
    if t.tok != Tok::Eof {
        return Err(syntax(
            t.pos,
            format!("expected end of condition, found {}", describe(&t.tok)),
        ));
    }
    Ok(expr)
}

struct Parser<'a> {
    tokens: &'a [Token],
    i: usize,
    depth: u32,
}

fn syntax(pos: Position, msg: impl Into<String>) -> ConditionError {
    ConditionError::Syntax {
        pos,
        msg: msg.into(),
    }
}

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Ident(s) => format!("identifier {s}"),
        Tok::Int(s) => format!("number {s}"),
        Tok::Float(f) => format!("number {f}"),
        Tok::Str(s) => format!("string {s:?}"),
        Tok::Punct(p) => format!("'{p}'"),
        Tok::Newline => {
            "newline (a line may not end here; end it with an operator or a comma)".into()
        }
        Tok::Eof => "end of condition".into(),
    }
}

/// Height of a new node over `children`, refused past `MAX_DEPTH`.
fn height(pos: Position, children: &[&Syn]) -> Result<u32, ConditionError> {
    let height = 1 + children.iter().map(|c| c.height).max().unwrap_or(0);
    if height > MAX_DEPTH {
        return Err(ConditionError::TooDeep { pos });
    }
    Ok(height)
}

const UNSUPPORTED_BINARY: &[&str] = &["+", "-", "|", "^", "*", "/", "%", "<<", ">>", "&", "&^"];
const COMPARE: &[&str] = &["==", "!=", "<", "<=", ">", ">="];

impl<'a> Parser<'a> {
    fn peek(&self) -> &'a Token {
        // The token list always ends with Eof, and `i` never moves past it.
        &self.tokens[self.i.min(self.tokens.len() - 1)]
    }

    fn eat(&mut self, p: &str) -> bool {
        if matches!(self.peek().tok, Tok::Punct(q) if q == p) {
            self.i += 1;
            return true;
        }
        false
    }

    fn expect(&mut self, p: &'static str, context: &str) -> Result<(), ConditionError> {
        if self.eat(p) {
            return Ok(());
        }
        let t = self.peek();
        Err(syntax(
            t.pos,
            format!("expected '{p}' {context}, found {}", describe(&t.tok)),
        ))
    }

    fn enter(&mut self) -> Result<(), ConditionError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ConditionError::TooDeep {
                pos: self.peek().pos,
            });
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Syn, ConditionError> {
        self.enter()?;
        let r = self.logic(false);
        self.depth -= 1;
        r
    }

    /// `||` chains (and=false) of `&&` chains (and=true) of comparisons.
    fn logic(&mut self, and: bool) -> Result<Syn, ConditionError> {
        let op = if and { "&&" } else { "||" };
        let first = if and {
            self.compare()?
        } else {
            self.logic(true)?
        };
        let pos = first.pos;
        let mut items = vec![first];
        while self.eat(op) {
            items.push(if and {
                self.compare()?
            } else {
                self.logic(true)?
            });
        }
        if items.len() == 1 {
            return Ok(items.remove(0));
        }
        let refs: Vec<&Syn> = items.iter().collect();
        let height = height(pos, &refs)?;
        Ok(Syn {
            kind: SynKind::Logic { and, items },
            pos,
            height,
        })
    }

    fn compare(&mut self) -> Result<Syn, ConditionError> {
        let mut lhs = self.unary()?;
        loop {
            let t = self.peek();
            let Tok::Punct(p) = t.tok else { break };
            if UNSUPPORTED_BINARY.contains(&p) {
                return Err(syntax(t.pos, format!("operator {p} is not supported")));
            }
            let Some(op) = COMPARE.iter().find(|c| **c == p) else {
                break;
            };
            self.i += 1;
            let rhs = self.unary()?;
            let height = height(t.pos, &[&lhs, &rhs])?;
            lhs = Syn {
                kind: SynKind::Compare(op, Box::new(lhs), Box::new(rhs)),
                pos: t.pos,
                height,
            };
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<Syn, ConditionError> {
        let t = self.peek();
        match t.tok {
            Tok::Punct("!") => {
                self.i += 1;
                self.enter()?;
                let inner = self.unary();
                self.depth -= 1;
                let inner = inner?;
                let height = height(t.pos, &[&inner])?;
                Ok(Syn {
                    kind: SynKind::Not(Box::new(inner)),
                    pos: t.pos,
                    height,
                })
            }
            Tok::Punct(p @ ("-" | "+" | "^" | "*" | "&" | "<-")) => {
                Err(syntax(t.pos, format!("operator {p} is not supported")))
            }
            _ => self.postfix(),
        }
    }

    fn postfix(&mut self) -> Result<Syn, ConditionError> {
        let mut x = self.primary()?;
        loop {
            let t = self.peek();
            x = match t.tok {
                Tok::Punct(".") => self.selector(x)?,
                Tok::Punct("[") => self.index(x)?,
                Tok::Punct("(") => self.call(x)?,
                Tok::Punct("{") => {
                    return Err(syntax(t.pos, "composite literals are not supported"));
                }
                _ => return Ok(x),
            };
        }
    }

    fn selector(&mut self, x: Syn) -> Result<Syn, ConditionError> {
        self.i += 1;
        let t = self.peek();
        let Tok::Ident(name) = &t.tok else {
            return Err(syntax(
                t.pos,
                format!("expected a name after '.', found {}", describe(&t.tok)),
            ));
        };
        self.i += 1;
        let pos = x.pos;
        let height = height(t.pos, &[&x])?;
        Ok(Syn {
            kind: SynKind::Selector(Box::new(x), name.clone()),
            pos,
            height,
        })
    }

    fn index(&mut self, x: Syn) -> Result<Syn, ConditionError> {
        let pos = x.pos;
        self.i += 1;
        let key = self.expr()?;
        let t = self.peek();
        if matches!(t.tok, Tok::Punct(":" | ",")) {
            return Err(syntax(
                t.pos,
                "slices and multiple indexes are not supported",
            ));
        }
        self.expect("]", "to close the index")?;
        let height = height(pos, &[&x, &key])?;
        Ok(Syn {
            kind: SynKind::Index(Box::new(x), Box::new(key)),
            pos,
            height,
        })
    }

    fn call(&mut self, fun: Syn) -> Result<Syn, ConditionError> {
        let pos = fun.pos;
        self.i += 1;
        let mut args = Vec::new();
        while !self.eat(")") {
            args.push(self.expr()?);
            // Go accepts `f(xs...)`; predicate ignores the ellipsis.
            let spread = self.eat("...");
            if self.eat(",") && !spread {
                continue;
            }
            self.expect(")", "or ',' in the argument list")?;
            break;
        }
        let mut refs: Vec<&Syn> = args.iter().collect();
        refs.push(&fun);
        let height = height(pos, &refs)?;
        Ok(Syn {
            kind: SynKind::Call(Box::new(fun), args),
            pos,
            height,
        })
    }

    fn primary(&mut self) -> Result<Syn, ConditionError> {
        let t = self.peek();
        let kind = match &t.tok {
            Tok::Ident(s) => SynKind::Ident(s.clone()),
            Tok::Int(s) => SynKind::Int(s.clone()),
            Tok::Float(f) => SynKind::Float(*f),
            Tok::Str(s) => SynKind::Str(s.clone()),
            Tok::Punct("(") => {
                self.i += 1;
                let inner = self.expr()?;
                self.expect(")", "to close the parenthesis")?;
                let height = height(t.pos, &[&inner])?;
                return Ok(Syn {
                    kind: SynKind::Paren(Box::new(inner)),
                    pos: t.pos,
                    height,
                });
            }
            other => {
                return Err(syntax(
                    t.pos,
                    format!("expected an operand, found {}", describe(other)),
                ));
            }
        };
        self.i += 1;
        Ok(Syn {
            kind,
            pos: t.pos,
            height: 1,
        })
    }
}
