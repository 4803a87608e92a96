//! The subset of the OpenTelemetry Transformation Language (OTTL) that `ottl_condition` policies
//! may use: boolean conditions over one span (context `span`) or one span event (context
//! `spanevent`), parsed once at configure time and evaluated per span at ingest.
//!
//! # The supported subset
//!
//! A condition is a boolean expression:
//!
//! * **Boolean operators**: `and`, `or`, `not` (precedence `not` > `and` > `or`), parentheses.
//! * **Comparisons**: `==`, `!=`, `<`, `<=`, `>`, `>=` between two values.
//! * **Boolean terms**: a comparison, `true`, `false`, or `IsMatch(target, "regex")`.
//! * **Values**:
//!   * literals: strings (`"GET /"`, Go escapes `\"`, `\\`, `\n`, `\t`, `\r`), integers
//!     (`-42`), floats (`1.5`, `2e3`), `true`, `false`, `nil`;
//!   * enums: `SPAN_KIND_UNSPECIFIED` … `SPAN_KIND_CONSUMER` (0–5) and `STATUS_CODE_UNSET`,
//!     `STATUS_CODE_OK`, `STATUS_CODE_ERROR` (0–2);
//!   * paths, context `span`: `name`, `kind`, `status.code`, `attributes["key"]`,
//!     `resource.attributes["key"]` (each may also be written with a `span.` prefix);
//!   * paths, context `spanevent`: `name` and `attributes["key"]` (the event's),
//!     `span.name`, `span.kind`, `span.status.code`, `span.attributes["key"]`,
//!     `resource.attributes["key"]`;
//!   * the converter `IsMatch(target, "pattern")` (it returns a boolean).
//!
//! Anything else (other paths, other functions, editors, math, nested map indexing
//! `attributes["a"]["b"]`) is refused at configure time with the position of the problem.
//!
//! # Semantics (as OTTL's)
//!
//! * A missing attribute, and an attribute with an empty value, is `nil`.
//! * `==` / `!=` compare any two values; values of different types are unequal, except that
//!   integers and floats compare numerically. `nil == nil` is true.
//! * `<`, `<=`, `>`, `>=` order numbers (integers and floats together), strings (bytewise) and
//!   byte strings; for any other pair (booleans, `nil`, mixed types) they are false.
//! * Array and map attribute values equal nothing (`!=` is true).
//! * `IsMatch` is an unanchored regular-expression search. Its target is converted to a string
//!   as OTTL does (integers and floats in decimal, booleans as `true`/`false`, bytes as lower
//!   hex); a `nil` target gives false; an array or map target is an **error**.
//! * Patterns use the `regex-lite` syntax (RE2-like, as Go's `regexp`, but without Unicode
//!   classes such as `\p{L}`; `\d`, `\w`, `\s` are ASCII).
//!
//! Errors at evaluation (only `IsMatch` on an array or map in this subset) follow the policy's
//! `error_mode`: `propagate` (the default, as in the collector) makes the policy's result an
//! error for that trace, which the final decision ignores; `ignore` and `silent` count the
//! erroring condition as false and go on (the guest has no log, so the two are the same).

use core::fmt;

use regex_lite::Regex;
use tracekeeper_abi::Value;

/// Most bytes of one condition's source text.
pub const MAX_CONDITION_LEN: usize = 4096;
/// Deepest nesting of parentheses and `not` in one condition.
pub const MAX_DEPTH: usize = 32;
/// Largest compiled size of one `IsMatch` pattern, bytes (bounds configure time and memory).
pub const MAX_REGEX_SIZE: usize = 1 << 20;

/// The evaluation context a condition is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// One span (`ottl_condition.span`).
    Span,
    /// One event of a span (`ottl_condition.spanevent`).
    SpanEvent,
}

/// Interns the attribute keys a condition reads into the sampler's interest.
pub trait KeyResolver {
    /// The slot of span attribute `key` (event attributes share the span keys).
    fn span_key(&mut self, key: &str) -> Result<u16, String>;
    /// The slot of resource attribute `key`.
    fn resource_key(&mut self, key: &str) -> Result<u16, String>;
}

/// What a condition can read: the span (and its resource), and for `spanevent`, the event.
#[derive(Debug, Clone, Copy)]
pub struct EvalCtx<'c, 'a> {
    /// Span name.
    pub span_name: &'a str,
    /// OTLP span kind.
    pub kind: u8,
    /// OTLP status code.
    pub status: u8,
    /// Span attributes by slot (first occurrence of each key).
    pub span_attrs: &'c [Option<Value<'a>>],
    /// Resource attributes by slot.
    pub resource_attrs: &'c [Option<Value<'a>>],
    /// Event name and attributes by slot, in context `spanevent`.
    pub event: Option<(&'a str, &'c [Option<Value<'a>>])>,
}

/// An evaluation error (subject to `error_mode`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError(pub String);

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A parsed condition.
#[derive(Debug, Clone)]
pub struct Condition {
    expr: BoolExpr,
}

impl Condition {
    /// Parses `source` for `context`, interning the attribute keys it reads. The error says
    /// what is wrong and where (`at column N`).
    pub fn parse(
        source: &str,
        context: Context,
        keys: &mut dyn KeyResolver,
    ) -> Result<Condition, String> {
        if source.len() > MAX_CONDITION_LEN {
            return Err(format!(
                "condition longer than {MAX_CONDITION_LEN} bytes ({} bytes)",
                source.len()
            ));
        }
        let tokens = lex(source)?;
        let mut p = Parser {
            tokens,
            pos: 0,
            context,
            keys,
            depth: 0,
            len: source.len(),
        };
        let expr = p.or()?;
        if let Some(t) = p.tokens.get(p.pos) {
            return Err(format!(
                "unexpected {} at column {}",
                t.tok.describe(),
                t.col
            ));
        }
        Ok(Condition { expr })
    }

    /// Evaluates the condition.
    pub fn eval(&self, ctx: &EvalCtx<'_, '_>) -> Result<bool, EvalError> {
        self.expr.eval(ctx)
    }
}

// ---------------------------------------------------------------------------------------------
// Lexer

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    Float(f64),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Dot,
    Op(CmpOp),
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Int(i) => format!("number {i}"),
            Tok::Float(f) => format!("number {f}"),
            Tok::LParen => "`(`".to_owned(),
            Tok::RParen => "`)`".to_owned(),
            Tok::LBracket => "`[`".to_owned(),
            Tok::RBracket => "`]`".to_owned(),
            Tok::Comma => "`,`".to_owned(),
            Tok::Dot => "`.`".to_owned(),
            Tok::Op(op) => format!("`{}`", op.symbol()),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    /// 1-based column (byte offset + 1) of the token's first byte.
    col: usize,
}

fn lex(src: &str) -> Result<Vec<Token>, String> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let col = i + 1;
        let single = match b {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => Some(Tok::LParen),
            b')' => Some(Tok::RParen),
            b'[' => Some(Tok::LBracket),
            b']' => Some(Tok::RBracket),
            b',' => Some(Tok::Comma),
            b'.' if !bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => Some(Tok::Dot),
            _ => None,
        };
        if let Some(tok) = single {
            out.push(Token { tok, col });
            i += 1;
            continue;
        }
        let next = bytes.get(i + 1).copied();
        let (tok, len) = match (b, next) {
            (b'=', Some(b'=')) => (Tok::Op(CmpOp::Eq), 2),
            (b'!', Some(b'=')) => (Tok::Op(CmpOp::Ne), 2),
            (b'<', Some(b'=')) => (Tok::Op(CmpOp::Le), 2),
            (b'>', Some(b'=')) => (Tok::Op(CmpOp::Ge), 2),
            (b'<', _) => (Tok::Op(CmpOp::Lt), 1),
            (b'>', _) => (Tok::Op(CmpOp::Gt), 1),
            (b'"', _) => lex_string(src, i)?,
            (b'-' | b'+' | b'.' | b'0'..=b'9', _) => lex_number(src, i)?,
            (b'a'..=b'z' | b'A'..=b'Z' | b'_', _) => {
                let end = src[i..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .map_or(src.len(), |n| i + n);
                (Tok::Ident(src[i..end].to_owned()), end - i)
            }
            _ => {
                let c = src[i..].chars().next().unwrap_or('?');
                return Err(format!("unexpected character {c:?} at column {col}"));
            }
        };
        out.push(Token { tok, col });
        i += len;
    }
    Ok(out)
}

/// A Go-style double-quoted string starting at `start`; returns the token and its length.
fn lex_string(src: &str, start: usize) -> Result<(Tok, usize), String> {
    let mut value = String::new();
    let mut chars = src[start + 1..].char_indices();
    while let Some((off, c)) = chars.next() {
        match c {
            '"' => return Ok((Tok::Str(value), off + 2)),
            '\\' => {
                let escaped = match chars.next() {
                    Some((_, '"')) => '"',
                    Some((_, '\\')) => '\\',
                    Some((_, 'n')) => '\n',
                    Some((_, 't')) => '\t',
                    Some((_, 'r')) => '\r',
                    Some((_, other)) => {
                        return Err(format!(
                            "unsupported escape \\{other} in the string at column {}",
                            start + 1
                        ));
                    }
                    None => break,
                };
                value.push(escaped);
            }
            c => value.push(c),
        }
    }
    Err(format!("unterminated string at column {}", start + 1))
}

/// An integer or float literal starting at `start`; returns the token and its length.
fn lex_number(src: &str, start: usize) -> Result<(Tok, usize), String> {
    let bytes = src.as_bytes();
    let mut end = start;
    if matches!(bytes.get(end), Some(b'-' | b'+')) {
        end += 1;
    }
    let mut float = false;
    while let Some(&b) = bytes.get(end) {
        match b {
            b'0'..=b'9' => end += 1,
            b'.' | b'e' | b'E' => {
                float = true;
                end += 1;
                if matches!(b, b'e' | b'E') && matches!(bytes.get(end), Some(b'-' | b'+')) {
                    end += 1;
                }
            }
            _ => break,
        }
    }
    let text = &src[start..end];
    let col = start + 1;
    let tok = if float {
        text.parse::<f64>()
            .map(Tok::Float)
            .map_err(|_| format!("malformed number {text:?} at column {col}"))?
    } else {
        text.parse::<i64>()
            .map(Tok::Int)
            .map_err(|_| format!("malformed or out-of-range integer {text:?} at column {col}"))?
    };
    Ok((tok, end - start))
}

// ---------------------------------------------------------------------------------------------
// Syntax tree

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl CmpOp {
    fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

#[derive(Debug, Clone)]
enum BoolExpr {
    Or(Vec<BoolExpr>),
    And(Vec<BoolExpr>),
    Not(Box<BoolExpr>),
    Const(bool),
    Cmp(ValueExpr, CmpOp, ValueExpr),
    IsMatch(Box<ValueExpr>, Regex),
}

#[derive(Debug, Clone)]
enum ValueExpr {
    Lit(Lit),
    Path(Path),
    IsMatch(Box<ValueExpr>, Regex),
}

#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    SpanName,
    Kind,
    Status,
    SpanAttr(u16),
    ResourceAttr(u16),
    EventName,
    EventAttr(u16),
}

const SPAN_KINDS: [(&str, i64); 6] = [
    ("SPAN_KIND_UNSPECIFIED", 0),
    ("SPAN_KIND_INTERNAL", 1),
    ("SPAN_KIND_SERVER", 2),
    ("SPAN_KIND_CLIENT", 3),
    ("SPAN_KIND_PRODUCER", 4),
    ("SPAN_KIND_CONSUMER", 5),
];
const STATUS_CODES: [(&str, i64); 3] = [
    ("STATUS_CODE_UNSET", 0),
    ("STATUS_CODE_OK", 1),
    ("STATUS_CODE_ERROR", 2),
];
const IS_MATCH: &str = "IsMatch";

// ---------------------------------------------------------------------------------------------
// Parser

struct Parser<'k> {
    tokens: Vec<Token>,
    pos: usize,
    context: Context,
    keys: &'k mut dyn KeyResolver,
    depth: usize,
    len: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos).map(|t| &t.tok)
    }

    fn col(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.len + 1, |t| t.col)
    }

    fn here(&self) -> String {
        match self.tokens.get(self.pos) {
            Some(t) => format!("{} at column {}", t.tok.describe(), t.col),
            None => "the end of the condition".to_owned(),
        }
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.tokens.get(self.pos).map(|t| t.tok.clone());
        self.pos += 1;
        t
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(w)) if w == word)
    }

    fn expect(&mut self, want: &Tok, what: &str) -> Result<(), String> {
        if self.peek() == Some(want) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected {what}, found {}", self.here()))
        }
    }

    fn deeper(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!(
                "nesting deeper than {MAX_DEPTH} levels at column {}",
                self.col()
            ));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<BoolExpr, String> {
        let mut terms = vec![self.and()?];
        while self.keyword("or") {
            self.pos += 1;
            terms.push(self.and()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            BoolExpr::Or(terms)
        })
    }

    fn and(&mut self) -> Result<BoolExpr, String> {
        let mut terms = vec![self.not()?];
        while self.keyword("and") {
            self.pos += 1;
            terms.push(self.not()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            BoolExpr::And(terms)
        })
    }

    fn not(&mut self) -> Result<BoolExpr, String> {
        if self.keyword("not") {
            self.pos += 1;
            self.deeper()?;
            let inner = self.not()?;
            self.depth -= 1;
            return Ok(BoolExpr::Not(Box::new(inner)));
        }
        self.term()
    }

    fn term(&mut self) -> Result<BoolExpr, String> {
        if self.peek() == Some(&Tok::LParen) {
            self.pos += 1;
            self.deeper()?;
            let inner = self.or()?;
            self.depth -= 1;
            self.expect(&Tok::RParen, "`)`")?;
            return Ok(inner);
        }
        let col = self.col();
        let left = self.value()?;
        if let Some(Tok::Op(op)) = self.peek() {
            let op = *op;
            self.pos += 1;
            let right = self.value()?;
            return Ok(BoolExpr::Cmp(left, op, right));
        }
        match left {
            ValueExpr::Lit(Lit::Bool(b)) => Ok(BoolExpr::Const(b)),
            ValueExpr::IsMatch(target, re) => Ok(BoolExpr::IsMatch(target, re)),
            ValueExpr::Path(_) | ValueExpr::Lit(_) => Err(format!(
                "the value at column {col} is not a condition: compare it with ==, !=, <, <=, > \
                 or >= (found {} after it)",
                self.here()
            )),
        }
    }

    fn value(&mut self) -> Result<ValueExpr, String> {
        let col = self.col();
        let Some(tok) = self.next() else {
            return Err("expected a value, found the end of the condition".to_owned());
        };
        let lit = match tok {
            Tok::Str(s) => Lit::Str(s),
            Tok::Int(i) => Lit::Int(i),
            Tok::Float(f) => Lit::Float(f),
            Tok::Ident(word) => return self.word(word, col),
            other => {
                return Err(format!(
                    "expected a value, found {} at column {col}",
                    other.describe()
                ));
            }
        };
        Ok(ValueExpr::Lit(lit))
    }

    fn word(&mut self, word: String, col: usize) -> Result<ValueExpr, String> {
        match word.as_str() {
            "true" => return Ok(ValueExpr::Lit(Lit::Bool(true))),
            "false" => return Ok(ValueExpr::Lit(Lit::Bool(false))),
            "nil" => return Ok(ValueExpr::Lit(Lit::Nil)),
            "and" | "or" | "not" => {
                return Err(format!("expected a value, found `{word}` at column {col}"));
            }
            _ => {}
        }
        if let Some((_, v)) = SPAN_KINDS
            .iter()
            .chain(&STATUS_CODES)
            .find(|(n, _)| *n == word)
        {
            return Ok(ValueExpr::Lit(Lit::Int(*v)));
        }
        if self.peek() == Some(&Tok::LParen) {
            return self.call(word, col);
        }
        if word.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
            return Err(format!(
                "unknown enum `{word}` at column {col} (supported: SPAN_KIND_* and STATUS_CODE_*)"
            ));
        }
        self.path(word, col)
    }

    fn call(&mut self, name: String, col: usize) -> Result<ValueExpr, String> {
        if name != IS_MATCH {
            return Err(format!(
                "unsupported function `{name}` at column {col} (this subset has {IS_MATCH})"
            ));
        }
        self.pos += 1; // (
        self.deeper()?;
        let target = self.value()?;
        self.depth -= 1;
        self.expect(&Tok::Comma, "`,` between the arguments of IsMatch")?;
        let pattern_col = self.col();
        let pattern = match self.next() {
            Some(Tok::Str(p)) => p,
            _ => {
                return Err(format!(
                    "the pattern of {IS_MATCH} at column {pattern_col} must be a string literal"
                ));
            }
        };
        self.expect(&Tok::RParen, "`)` closing IsMatch")?;
        let re = regex_lite::RegexBuilder::new(&pattern)
            .size_limit(MAX_REGEX_SIZE)
            .build()
            .map_err(|e| {
                format!("invalid regular expression {pattern:?} at column {pattern_col}: {e}")
            })?;
        Ok(ValueExpr::IsMatch(Box::new(target), re))
    }

    /// A path whose first segment `first` was read; reads `.seg` and `["key"]` parts.
    fn path(&mut self, first: String, col: usize) -> Result<ValueExpr, String> {
        let mut segments = vec![first];
        while self.peek() == Some(&Tok::Dot) {
            self.pos += 1;
            match self.next() {
                Some(Tok::Ident(s)) => segments.push(s),
                _ => {
                    self.pos -= 1;
                    return Err(format!(
                        "expected a path segment after `.`, found {}",
                        self.here()
                    ));
                }
            }
        }
        let mut keys = Vec::new();
        while self.peek() == Some(&Tok::LBracket) {
            self.pos += 1;
            match self.next() {
                Some(Tok::Str(k)) => keys.push(k),
                _ => {
                    self.pos -= 1;
                    return Err(format!(
                        "expected a string key after `[`, found {}",
                        self.here()
                    ));
                }
            }
            self.expect(&Tok::RBracket, "`]`")?;
        }
        let written = segments.join(".");
        let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
        let path = self.resolve(&segs, &keys, &written, col)?;
        Ok(ValueExpr::Path(path))
    }

    fn resolve(
        &mut self,
        segs: &[&str],
        keys: &[String],
        written: &str,
        col: usize,
    ) -> Result<Path, String> {
        let unsupported = |ctx: Context| {
            let supported = match ctx {
                Context::Span => {
                    "name, kind, status.code, attributes[\"key\"], resource.attributes[\"key\"]"
                }
                Context::SpanEvent => {
                    "name, attributes[\"key\"], span.name, span.kind, span.status.code, \
                     span.attributes[\"key\"], resource.attributes[\"key\"]"
                }
            };
            format!("unsupported path `{written}` at column {col} (supported: {supported})")
        };
        // In context span, `span.` is an optional prefix; in spanevent it selects the span.
        let (on_span, rest) = match (self.context, segs) {
            (Context::Span, ["span", rest @ ..]) => (true, rest),
            (Context::Span, rest) => (true, rest),
            (Context::SpanEvent, ["span", rest @ ..]) => (true, rest),
            (Context::SpanEvent, rest) => (false, rest),
        };
        let attr_key = |keys: &[String]| -> Result<String, String> {
            match keys {
                [k] => Ok(k.clone()),
                [] => Err(format!(
                    "`{written}` at column {col} needs a key: {written}[\"key\"]"
                )),
                _ => Err(format!(
                    "`{written}` at column {col}: indexing into map or array values is not \
                     supported"
                )),
            }
        };
        let no_keys = |p: Path| -> Result<Path, String> {
            if keys.is_empty() {
                Ok(p)
            } else {
                Err(format!("`{written}` at column {col} cannot be indexed"))
            }
        };
        match rest {
            ["resource", "attributes"] if self.context == Context::Span || !on_span => {
                let k = attr_key(keys)?;
                Ok(Path::ResourceAttr(self.keys.resource_key(&k)?))
            }
            ["attributes"] => {
                let slot = self.keys.span_key(&attr_key(keys)?)?;
                Ok(if on_span {
                    Path::SpanAttr(slot)
                } else {
                    Path::EventAttr(slot)
                })
            }
            ["name"] => no_keys(if on_span {
                Path::SpanName
            } else {
                Path::EventName
            }),
            ["kind"] if on_span => no_keys(Path::Kind),
            ["status", "code"] if on_span => no_keys(Path::Status),
            _ => Err(unsupported(self.context)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation

/// A runtime value.
#[derive(Debug, Clone, Copy)]
enum Val<'v> {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'v str),
    Bytes(&'v [u8]),
    /// An array or map attribute value.
    Composite,
}

fn from_attr<'v>(v: Option<&'v Option<Value<'_>>>) -> Val<'v> {
    match v.and_then(Option::as_ref) {
        None | Some(Value::Empty) => Val::Nil,
        Some(Value::Str(s)) => Val::Str(s),
        Some(Value::Bool(b)) => Val::Bool(*b),
        Some(Value::Int(i)) => Val::Int(*i),
        Some(Value::Double(f)) => Val::Float(*f),
        Some(Value::Bytes(b)) => Val::Bytes(b),
        Some(Value::Array(_) | Value::KvList(_)) => Val::Composite,
    }
}

impl BoolExpr {
    fn eval(&self, ctx: &EvalCtx<'_, '_>) -> Result<bool, EvalError> {
        Ok(match self {
            BoolExpr::Or(terms) => {
                for t in terms {
                    if t.eval(ctx)? {
                        return Ok(true);
                    }
                }
                false
            }
            BoolExpr::And(terms) => {
                for t in terms {
                    if !t.eval(ctx)? {
                        return Ok(false);
                    }
                }
                true
            }
            BoolExpr::Not(inner) => !inner.eval(ctx)?,
            BoolExpr::Const(b) => *b,
            BoolExpr::Cmp(l, op, r) => compare(l.eval(ctx)?, *op, r.eval(ctx)?),
            BoolExpr::IsMatch(target, re) => is_match(target.eval(ctx)?, re)?,
        })
    }
}

impl ValueExpr {
    fn eval<'v>(&'v self, ctx: &EvalCtx<'v, '_>) -> Result<Val<'v>, EvalError> {
        Ok(match self {
            ValueExpr::Lit(Lit::Nil) => Val::Nil,
            ValueExpr::Lit(Lit::Bool(b)) => Val::Bool(*b),
            ValueExpr::Lit(Lit::Int(i)) => Val::Int(*i),
            ValueExpr::Lit(Lit::Float(f)) => Val::Float(*f),
            ValueExpr::Lit(Lit::Str(s)) => Val::Str(s),
            ValueExpr::IsMatch(target, re) => Val::Bool(is_match(target.eval(ctx)?, re)?),
            ValueExpr::Path(p) => match *p {
                Path::SpanName => Val::Str(ctx.span_name),
                Path::Kind => Val::Int(i64::from(ctx.kind)),
                Path::Status => Val::Int(i64::from(ctx.status)),
                Path::SpanAttr(slot) => from_attr(ctx.span_attrs.get(usize::from(slot))),
                Path::ResourceAttr(slot) => from_attr(ctx.resource_attrs.get(usize::from(slot))),
                Path::EventName => ctx.event.map_or(Val::Nil, |(name, _)| Val::Str(name)),
                Path::EventAttr(slot) => from_attr(
                    ctx.event
                        .and_then(|(_, attrs)| attrs.get(usize::from(slot))),
                ),
            },
        })
    }
}

fn compare(l: Val<'_>, op: CmpOp, r: Val<'_>) -> bool {
    use core::cmp::Ordering;
    let ord: Option<Ordering> = match (l, r) {
        (Val::Nil, Val::Nil) => Some(Ordering::Equal),
        (Val::Int(a), Val::Int(b)) => Some(a.cmp(&b)),
        (Val::Int(a), Val::Float(b)) => (a as f64).partial_cmp(&b),
        (Val::Float(a), Val::Int(b)) => a.partial_cmp(&(b as f64)),
        (Val::Float(a), Val::Float(b)) => a.partial_cmp(&b),
        (Val::Str(a), Val::Str(b)) => Some(a.cmp(b)),
        (Val::Bytes(a), Val::Bytes(b)) => Some(a.cmp(b)),
        (Val::Bool(a), Val::Bool(b)) => {
            // Booleans only have equality.
            return match op {
                CmpOp::Eq => a == b,
                CmpOp::Ne => a != b,
                _ => false,
            };
        }
        _ => None,
    };
    match (op, ord) {
        (CmpOp::Eq, o) => o == Some(Ordering::Equal),
        (CmpOp::Ne, o) => o != Some(Ordering::Equal),
        // nil has equality only.
        (_, _) if matches!(l, Val::Nil) => false,
        (_, None) => false,
        (CmpOp::Lt, Some(o)) => o == Ordering::Less,
        (CmpOp::Le, Some(o)) => o != Ordering::Greater,
        (CmpOp::Gt, Some(o)) => o == Ordering::Greater,
        (CmpOp::Ge, Some(o)) => o != Ordering::Less,
    }
}

fn is_match(target: Val<'_>, re: &Regex) -> Result<bool, EvalError> {
    let text: String;
    let s: &str = match target {
        Val::Nil => return Ok(false),
        Val::Str(s) => s,
        Val::Bool(b) => {
            if b {
                "true"
            } else {
                "false"
            }
        }
        Val::Int(i) => {
            text = i.to_string();
            &text
        }
        Val::Float(f) => {
            text = go_float(f);
            &text
        }
        Val::Bytes(b) => {
            text = b.iter().map(|x| format!("{x:02x}")).collect();
            &text
        }
        Val::Composite => {
            return Err(EvalError(
                "IsMatch: an array or map value cannot be matched (not in the supported OTTL \
                 subset)"
                    .to_owned(),
            ));
        }
    };
    Ok(re.is_match(s))
}

/// A float as Go's `strconv.FormatFloat(f, 'f', -1, 64)` writes it.
fn go_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".to_owned()
    } else if f.is_infinite() {
        if f > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{f}")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Interns keys into two plain lists.
    #[derive(Default)]
    struct Keys {
        span: Vec<String>,
        resource: Vec<String>,
    }

    fn intern(list: &mut Vec<String>, key: &str) -> u16 {
        let i = list.iter().position(|k| k == key).unwrap_or_else(|| {
            list.push(key.to_owned());
            list.len() - 1
        });
        u16::try_from(i).unwrap()
    }

    impl KeyResolver for Keys {
        fn span_key(&mut self, key: &str) -> Result<u16, String> {
            Ok(intern(&mut self.span, key))
        }
        fn resource_key(&mut self, key: &str) -> Result<u16, String> {
            Ok(intern(&mut self.resource, key))
        }
    }

    /// A span for evaluation: attributes by key.
    struct Span<'a> {
        name: &'a str,
        kind: u8,
        status: u8,
        attrs: Vec<(&'a str, Value<'a>)>,
        resource: Vec<(&'a str, Value<'a>)>,
        event: Option<(&'a str, Vec<(&'a str, Value<'a>)>)>,
    }

    fn span<'a>(attrs: Vec<(&'a str, Value<'a>)>) -> Span<'a> {
        Span {
            name: "GET /cart",
            kind: 2,
            status: 0,
            attrs,
            resource: vec![("service.name", Value::Str("checkout"))],
            event: None,
        }
    }

    fn slots<'a>(keys: &[String], attrs: &[(&'a str, Value<'a>)]) -> Vec<Option<Value<'a>>> {
        keys.iter()
            .map(|k| {
                attrs
                    .iter()
                    .find(|(name, _)| name == k)
                    .map(|(_, v)| v.clone())
            })
            .collect()
    }

    fn eval_in(ctx: Context, cond: &str, sp: &Span<'_>) -> Result<bool, EvalError> {
        let mut keys = Keys::default();
        let c = Condition::parse(cond, ctx, &mut keys).unwrap_or_else(|e| panic!("{cond}: {e}"));
        let span_attrs = slots(&keys.span, &sp.attrs);
        let resource_attrs = slots(&keys.resource, &sp.resource);
        let event_attrs = sp
            .event
            .as_ref()
            .map(|(_, a)| slots(&keys.span, a))
            .unwrap_or_default();
        let e = EvalCtx {
            span_name: sp.name,
            kind: sp.kind,
            status: sp.status,
            span_attrs: &span_attrs,
            resource_attrs: &resource_attrs,
            event: sp.event.as_ref().map(|(n, _)| (*n, event_attrs.as_slice())),
        };
        c.eval(&e)
    }

    fn eval(cond: &str, sp: &Span<'_>) -> bool {
        eval_in(Context::Span, cond, sp).unwrap()
    }

    fn parse_err(ctx: Context, cond: &str) -> String {
        Condition::parse(cond, ctx, &mut Keys::default()).unwrap_err()
    }

    #[test]
    fn comparisons_table() {
        let sp = span(vec![
            ("http.route", Value::Str("/cart")),
            ("http.status", Value::Int(503)),
            ("ratio", Value::Double(0.25)),
            ("cached", Value::Bool(true)),
            ("blob", Value::Bytes(&[0xab, 0x01])),
            ("empty", Value::Empty),
        ]);
        let cases: &[(&str, bool)] = &[
            (r#"attributes["http.route"] == "/cart""#, true),
            (r#"attributes["http.route"] != "/cart""#, false),
            (r#"attributes["http.route"] == "/CART""#, false),
            (r#"attributes["http.route"] < "/d""#, true),
            (r#"attributes["http.status"] >= 500"#, true),
            (r#"attributes["http.status"] > 503"#, false),
            (r#"attributes["http.status"] <= 503"#, true),
            (r#"attributes["http.status"] == 503.0"#, true),
            (r#"attributes["ratio"] < 1"#, true),
            (r#"attributes["ratio"] == 0.25"#, true),
            (r#"attributes["cached"] == true"#, true),
            (r#"attributes["cached"] != false"#, true),
            (r#"attributes["cached"] > false"#, false),
            // Mixed types are unequal and unordered.
            (r#"attributes["http.status"] == "503""#, false),
            (r#"attributes["http.status"] != "503""#, true),
            (r#"attributes["http.route"] > 1"#, false),
            // Missing and empty are nil.
            (r#"attributes["missing"] == nil"#, true),
            (r#"attributes["empty"] == nil"#, true),
            (r#"attributes["missing"] != nil"#, false),
            (r#"attributes["http.route"] == nil"#, false),
            (r#"attributes["missing"] < 5"#, false),
            (r#"attributes["missing"] >= nil"#, false),
            (r#"nil == nil"#, true),
            // Fixed fields and enums.
            (r#"name == "GET /cart""#, true),
            (r#"span.name == "GET /cart""#, true),
            ("kind == SPAN_KIND_SERVER", true),
            ("kind == 2", true),
            ("kind == SPAN_KIND_CLIENT", false),
            ("status.code == STATUS_CODE_UNSET", true),
            ("status.code != STATUS_CODE_ERROR", true),
            (r#"resource.attributes["service.name"] == "checkout""#, true),
            (r#"resource.attributes["service.name"] == "cart""#, false),
            // Boolean structure and precedence.
            ("true", true),
            ("not true", false),
            ("false or true and false", false),
            ("(false or true) and true", true),
            (r#"not attributes["http.status"] == 200"#, true),
            (r#"not (kind == 2 and name == "x") or false"#, true),
            // IsMatch: strings, conversions, nil.
            (r#"IsMatch(attributes["http.route"], "^/ca")"#, true),
            (r#"IsMatch(name, "cart$")"#, true),
            (r#"IsMatch(name, "^cart")"#, false),
            (r#"IsMatch(attributes["http.status"], "^5\\d\\d$")"#, true),
            (r#"IsMatch(attributes["ratio"], "^0\\.25$")"#, true),
            (r#"IsMatch(attributes["cached"], "true")"#, true),
            (r#"IsMatch(attributes["blob"], "^ab01$")"#, true),
            (r#"IsMatch(attributes["missing"], ".*")"#, false),
            (r#"IsMatch(name, "GET") == true"#, true),
            (r#"not IsMatch(name, "POST")"#, true),
        ];
        for (cond, want) in cases {
            assert_eq!(eval(cond, &sp), *want, "{cond}");
        }
    }

    #[test]
    fn span_event_context() {
        let mut sp = span(vec![("http.route", Value::Str("/cart"))]);
        sp.event = Some(("exception", vec![("exception.type", Value::Str("IOError"))]));
        let cases: &[(&str, bool)] = &[
            (r#"name == "exception""#, true),
            (r#"span.name == "GET /cart""#, true),
            (r#"attributes["exception.type"] == "IOError""#, true),
            // `attributes` is the event's; the span's is `span.attributes`.
            (r#"attributes["http.route"] == nil"#, true),
            (r#"span.attributes["http.route"] == "/cart""#, true),
            ("span.kind == SPAN_KIND_SERVER", true),
            ("span.status.code == STATUS_CODE_OK", false),
            (r#"resource.attributes["service.name"] == "checkout""#, true),
        ];
        for (cond, want) in cases {
            assert_eq!(
                eval_in(Context::SpanEvent, cond, &sp).unwrap(),
                *want,
                "{cond}"
            );
        }
        assert!(parse_err(Context::SpanEvent, "kind == 2").contains("unsupported path `kind`"));
    }

    /// An array attribute value `["a"]`, read back from a batch written by the host's writer.
    fn array_value() -> Value<'static> {
        let mut w = tracekeeper_abi::BatchWriter::new();
        let (_, mut attrs) = w.begin_resource();
        let mut arr = w.attr_indexed(&mut attrs, 0).begin_array();
        w.array_item(&mut arr).str(b"a");
        w.end_section(arr);
        w.end_section(attrs);
        let bytes: &'static [u8] = Box::leak(w.finish().into_boxed_slice());
        let mut reader = tracekeeper_abi::BatchReader::new(bytes).unwrap();
        match reader.next().unwrap().unwrap() {
            tracekeeper_abi::Record::Resource(mut r) => r.attributes.next().unwrap().unwrap().1,
            tracekeeper_abi::Record::Span(_) => panic!("expected a resource"),
        }
    }

    #[test]
    fn array_and_map_values() {
        let sp = span(vec![("list", array_value())]);
        assert!(eval(r#"attributes["list"] != "a""#, &sp));
        assert!(!eval(r#"attributes["list"] == "a""#, &sp));
        assert!(!eval(r#"attributes["list"] == nil"#, &sp));
        let err = eval_in(Context::Span, r#"IsMatch(attributes["list"], "a")"#, &sp).unwrap_err();
        assert!(err.0.contains("array or map"), "{err}");
    }

    #[test]
    fn literals_and_escapes() {
        let sp = span(vec![
            ("q", Value::Str("say \"hi\"\n")),
            ("neg", Value::Int(-7)),
            ("big", Value::Double(2000.0)),
        ]);
        assert!(eval(r#"attributes["q"] == "say \"hi\"\n""#, &sp));
        assert!(eval(r#"attributes["neg"] == -7"#, &sp));
        assert!(eval(r#"attributes["neg"] < -6.5"#, &sp));
        assert!(eval(r#"attributes["big"] == 2e3"#, &sp));
        assert!(eval(r#"attributes["big"] == 2000"#, &sp));
    }

    #[test]
    fn parse_errors_say_what_and_where() {
        let cases: &[(&str, &str)] = &[
            (r#"attributes["a"] = "b""#, "unexpected character '='"),
            (r#"attributes["a"]"#, "is not a condition"),
            (r#""x""#, "is not a condition"),
            (
                r#"attributes["a"] == "b" and"#,
                "expected a value, found the end",
            ),
            (r#"(name == "a""#, "expected `)`"),
            (r#"name == "a")"#, "unexpected `)` at column 12"),
            (
                r#"Substring(name, 0, 1) == "a""#,
                "unsupported function `Substring`",
            ),
            (r#"IsMatch(name, pattern)"#, "must be a string literal"),
            (r#"IsMatch(name, "(")"#, "invalid regular expression"),
            ("trace_id == nil", "unsupported path `trace_id`"),
            (
                r#"attributes["a"]["b"] == 1"#,
                "indexing into map or array values",
            ),
            ("attributes == nil", "needs a key"),
            ("SPAN_KIND_QUEUE == kind", "unknown enum `SPAN_KIND_QUEUE`"),
            (
                r#"name == "unterminated"#,
                "unterminated string at column 9",
            ),
            (r#"name == "\q""#, "unsupported escape"),
            ("kind == 99999999999999999999", "out-of-range integer"),
            ("", "expected a value, found the end"),
        ];
        for (cond, want) in cases {
            let err = parse_err(Context::Span, cond);
            assert!(err.contains(want), "{cond}: {err}");
        }
        let deep = format!(
            "{}true{}",
            "(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        assert!(parse_err(Context::Span, &deep).contains("nesting deeper"));
        let long = format!("name == \"{}\"", "x".repeat(MAX_CONDITION_LEN));
        assert!(parse_err(Context::Span, &long).contains("longer than"));
    }

    #[test]
    fn keys_are_interned_per_kind() {
        let mut keys = Keys::default();
        Condition::parse(
            r#"attributes["a"] == 1 or resource.attributes["r"] == 2 or span.attributes["b"] == 3 or attributes["a"] == 4"#,
            Context::Span,
            &mut keys,
        )
        .unwrap();
        assert_eq!(keys.span, ["a", "b"]);
        assert_eq!(keys.resource, ["r"]);
    }

    #[test]
    fn floats_convert_as_go_writes_them() {
        assert_eq!(go_float(0.25), "0.25");
        assert_eq!(go_float(1e21), "1000000000000000000000");
        assert_eq!(go_float(-3.0), "-3");
        assert_eq!(go_float(f64::INFINITY), "+Inf");
        assert_eq!(go_float(f64::NAN), "NaN");
    }
}
