//! Tokens of a condition, following Go's scanner (including its automatic semicolons).

use super::{ConditionError, Position};

/// One token kind. Only what the predicate language can use is kept apart; other Go
/// punctuation is carried as `Punct` so the parser can name it in its error.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    Ident(String),
    /// The literal text of an integer, converted (or refused) by the checker, as upstream does.
    Int(String),
    Float(f64),
    Str(String),
    Punct(&'static str),
    /// A newline where Go inserts a semicolon: the expression must end here.
    Newline,
    Eof,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Token {
    pub tok: Tok,
    pub pos: Position,
}

/// Go's keywords: never identifiers, so `x.type` or `range` do not parse upstream either.
const KEYWORDS: &[&str] = &[
    "break",
    "case",
    "chan",
    "const",
    "continue",
    "default",
    "defer",
    "else",
    "fallthrough",
    "for",
    "func",
    "go",
    "goto",
    "if",
    "import",
    "interface",
    "map",
    "package",
    "range",
    "return",
    "select",
    "struct",
    "switch",
    "type",
    "var",
];

/// Longest first, so `&&` wins over `&`.
const PUNCTS: &[&str] = &[
    "...", "&^=", "<<=", ">>=", "&&", "||", "==", "!=", "<=", ">=", "<-", "<<", ">>", "&^", "++",
    "--", ":=", "+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=", "(", ")", "[", "]", "{", "}", ",",
    ".", "!", "<", ">", "+", "-", "*", "/", "%", "&", "|", "^", ":", ";", "=", "~",
];

pub(super) fn tokenize(src: &str) -> Result<Vec<Token>, ConditionError> {
    let mut lx = Lexer {
        chars: src.chars().collect(),
        i: 0,
        line: 1,
        col: 1,
        out: Vec::new(),
        semi: false,
    };
    lx.run()?;
    Ok(lx.out)
}

struct Lexer {
    chars: Vec<char>,
    i: usize,
    line: u32,
    col: u32,
    out: Vec<Token>,
    /// Whether a newline here would end the expression (Go's `insertSemi`).
    semi: bool,
}

fn syntax(pos: Position, msg: impl Into<String>) -> ConditionError {
    ConditionError::Syntax {
        pos,
        msg: msg.into(),
    }
}

impl Lexer {
    fn pos(&self) -> Position {
        Position {
            line: self.line,
            column: self.col,
        }
    }

    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.i + ahead).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.chars.get(self.i).copied()?;
        self.i += 1;
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    fn push(&mut self, tok: Tok, pos: Position) {
        self.semi = matches!(
            &tok,
            Tok::Ident(_)
                | Tok::Int(_)
                | Tok::Float(_)
                | Tok::Str(_)
                | Tok::Punct(")" | "]" | "}" | "++" | "--")
        );
        self.out.push(Token { tok, pos });
    }

    fn newline(&mut self, pos: Position) {
        if self.semi {
            self.out.push(Token {
                tok: Tok::Newline,
                pos,
            });
            self.semi = false;
        }
    }

    fn run(&mut self) -> Result<(), ConditionError> {
        while let Some(c) = self.peek(0) {
            let pos = self.pos();
            match c {
                ' ' | '\t' | '\r' => {
                    self.bump();
                }
                '\n' => {
                    self.bump();
                    self.newline(pos);
                }
                '/' if self.peek(1) == Some('/') => self.line_comment(pos),
                '/' if self.peek(1) == Some('*') => self.block_comment(pos)?,
                '"' => self.interpreted_string(pos)?,
                '`' => self.raw_string(pos)?,
                '\'' => return Err(syntax(pos, "character literals are not supported")),
                c if c.is_ascii_digit() => self.number(pos)?,
                '.' if self.peek(1).is_some_and(|d| d.is_ascii_digit()) => self.number(pos)?,
                c if c == '_' || c.is_alphabetic() => self.ident(pos)?,
                _ => self.punct(pos)?,
            }
        }
        let pos = self.pos();
        self.out.push(Token { tok: Tok::Eof, pos });
        Ok(())
    }

    fn line_comment(&mut self, pos: Position) {
        while self.peek(0).is_some_and(|c| c != '\n') {
            self.bump();
        }
        // The comment stands for the newline that ends it (or the end of input).
        self.newline(pos);
    }

    fn block_comment(&mut self, pos: Position) -> Result<(), ConditionError> {
        self.bump();
        self.bump();
        let mut saw_newline = false;
        loop {
            match self.bump() {
                None => return Err(syntax(pos, "comment not terminated")),
                Some('*') if self.peek(0) == Some('/') => {
                    self.bump();
                    break;
                }
                Some('\n') => saw_newline = true,
                Some(_) => {}
            }
        }
        if saw_newline {
            self.newline(pos);
        }
        Ok(())
    }

    fn ident(&mut self, pos: Position) -> Result<(), ConditionError> {
        let mut s = String::new();
        while let Some(c) = self.peek(0).filter(|c| *c == '_' || c.is_alphanumeric()) {
            s.push(c);
            self.bump();
        }
        if KEYWORDS.contains(&s.as_str()) {
            return Err(syntax(pos, format!("keyword {s:?} cannot be used here")));
        }
        self.push(Tok::Ident(s), pos);
        Ok(())
    }

    fn number(&mut self, pos: Position) -> Result<(), ConditionError> {
        let mut s = String::new();
        while let Some(c) = self.peek(0) {
            let exp_sign = (c == '+' || c == '-') && s.ends_with(['e', 'E']) && !is_hex(&s);
            if !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || exp_sign) {
                break;
            }
            if c == '.' && self.peek(1) == Some('.') {
                break; // `1...` is `1` followed by `...`
            }
            s.push(c);
            self.bump();
        }
        if s.ends_with('i') {
            return Err(syntax(pos, "imaginary literals are not supported"));
        }
        if is_hex(&s) || !s.contains(['.', 'e', 'E']) {
            check_int_literal(&s).map_err(|m| syntax(pos, m))?;
            self.push(Tok::Int(s), pos);
            return Ok(());
        }
        let value = s
            .parse::<f64>()
            .ok()
            .filter(|_| !s.contains('_'))
            .ok_or_else(|| syntax(pos, format!("malformed number {s:?}")))?;
        self.push(Tok::Float(value), pos);
        Ok(())
    }

    fn punct(&mut self, pos: Position) -> Result<(), ConditionError> {
        let rest: String = self.chars[self.i..].iter().take(3).collect();
        let Some(p) = PUNCTS.iter().find(|p| rest.starts_with(**p)) else {
            let c = self.peek(0).unwrap_or(' ');
            return Err(syntax(pos, format!("invalid character {c:?}")));
        };
        for _ in 0..p.chars().count() {
            self.bump();
        }
        self.push(Tok::Punct(p), pos);
        Ok(())
    }

    fn raw_string(&mut self, pos: Position) -> Result<(), ConditionError> {
        self.bump();
        let mut s = String::new();
        loop {
            match self.bump() {
                None => return Err(syntax(pos, "raw string literal not terminated")),
                Some('`') => break,
                Some('\r') => {} // Go drops carriage returns from raw strings
                Some(c) => s.push(c),
            }
        }
        self.push(Tok::Str(s), pos);
        Ok(())
    }

    fn interpreted_string(&mut self, pos: Position) -> Result<(), ConditionError> {
        self.bump();
        let mut bytes = Vec::new();
        loop {
            let here = self.pos();
            match self.bump() {
                None | Some('\n') => return Err(syntax(pos, "string literal not terminated")),
                Some('"') => break,
                Some('\\') => self.escape(here, &mut bytes)?,
                Some(c) => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
        let s = String::from_utf8(bytes)
            .map_err(|_| syntax(pos, "string literal is not valid UTF-8 once unescaped"))?;
        self.push(Tok::Str(s), pos);
        Ok(())
    }

    fn escape(&mut self, pos: Position, out: &mut Vec<u8>) -> Result<(), ConditionError> {
        let bad = || syntax(pos, "unknown escape sequence in string literal");
        let c = self.bump().ok_or_else(bad)?;
        let simple = match c {
            'a' => Some(7u8),
            'b' => Some(8),
            'f' => Some(12),
            'n' => Some(b'\n'),
            'r' => Some(b'\r'),
            't' => Some(b'\t'),
            'v' => Some(11),
            '\\' => Some(b'\\'),
            '"' => Some(b'"'),
            _ => None,
        };
        if let Some(b) = simple {
            out.push(b);
            return Ok(());
        }
        let (digits, radix) = match c {
            '0'..='7' => (2, 8),
            'x' => (2, 16),
            'u' => (4, 16),
            'U' => (8, 16),
            _ => return Err(bad()),
        };
        let mut text = if radix == 8 {
            c.to_string()
        } else {
            String::new()
        };
        for _ in 0..digits {
            let d = self.bump().filter(|d| d.is_digit(radix)).ok_or_else(bad)?;
            text.push(d);
        }
        let value = u32::from_str_radix(&text, radix).map_err(|_| bad())?;
        if matches!(c, 'u' | 'U') {
            let ch = char::from_u32(value).ok_or_else(bad)?;
            out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
        } else {
            out.push(u8::try_from(value).map_err(|_| bad())?);
        }
        Ok(())
    }
}

fn is_hex(s: &str) -> bool {
    s.starts_with("0x") || s.starts_with("0X")
}

/// Go's scanner refuses `09` (an octal literal with a decimal digit) before anything else sees it.
fn check_int_literal(s: &str) -> Result<(), String> {
    let octal_like = s.len() > 1 && s.starts_with('0') && s.chars().all(|c| c.is_ascii_digit());
    if octal_like && s.contains(['8', '9']) {
        return Err(format!("invalid digit in octal literal {s}"));
    }
    Ok(())
}
