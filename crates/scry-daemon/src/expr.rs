//! The probe-expression checker: one gate in the daemon for every way a probe gets in (CLI,
//! HTTP, MCP, web UI all end in [`crate::state::probes::build`]), whether or not an agent is
//! connected. The agent checks again (`python/scry/_probes.py`) with the same rules; the shared
//! vectors `crates/scry-proto/vectors/expressions.json` hold both to them. The rules are
//! written down in `docs/expressions.md`.
//!
//! A small hand-written tokenizer and recursive-descent parser for the Python *expression*
//! subset scry accepts. It is fail-closed: anything it cannot parse or does not know is
//! rejected, with a reason that names the piece. It builds no tree: the only thing a call check
//! needs to know about the callee is whether it is a bare name or `.method`, which the parse
//! functions return as a [`Shape`].
//!
//! What it cannot decide statically (a receiver's type, an operand's size) the agent decides
//! at run time: method calls and the operators `**`, `*`, `<<`, `%` are rewritten there into
//! guarded calls that refuse before computing.
//!
//! Not for: evaluating anything, or parsing Python statements.

/// Longest expression accepted, in characters (bounds parse time and the agent's compile).
pub const MAX_LEN: usize = 2000;
/// Deepest nesting accepted (brackets, unary operators, operands of `**`).
const MAX_DEPTH: usize = 64;

/// The builtins an expression may call without `unsafe` (resolved by scry, never by the frame).
pub const PURE_BUILTINS: &[&str] = &[
    "len",
    "type",
    "isinstance",
    "min",
    "max",
    "sum",
    "abs",
    "round",
    "str",
    "repr",
    "sorted",
    "bool",
    "int",
    "float",
    "any",
    "all",
];

/// Method names that may be called without `unsafe`: the union of the known-pure methods of
/// builtin types. The agent checks at run time that the receiver is exactly a builtin type for
/// which the method is listed (a user object's `.get` never runs).
pub const PURE_METHODS: &[&str] = &[
    "as_integer_ratio",
    "bit_count",
    "bit_length",
    "capitalize",
    "casefold",
    "count",
    "difference",
    "endswith",
    "find",
    "get",
    "hex",
    "index",
    "intersection",
    "is_integer",
    "isalnum",
    "isalpha",
    "isascii",
    "isdecimal",
    "isdigit",
    "isdisjoint",
    "isidentifier",
    "islower",
    "isnumeric",
    "isprintable",
    "isspace",
    "issubset",
    "issuperset",
    "istitle",
    "isupper",
    "items",
    "join",
    "keys",
    "lower",
    "lstrip",
    "partition",
    "removeprefix",
    "removesuffix",
    "replace",
    "rfind",
    "rindex",
    "rpartition",
    "rsplit",
    "rstrip",
    "split",
    "splitlines",
    "startswith",
    "strip",
    "swapcase",
    "symmetric_difference",
    "title",
    "union",
    "upper",
    "values",
];

/// Keyword arguments a pure call may take (none of them passes a callable).
pub const KEYWORDS: &[&str] = &[
    "base", "default", "maxsplit", "ndigits", "reverse", "sep", "start",
];

/// The reason for an expression that is not a single expression (shared with the agent).
const NOT_AN_EXPRESSION: &str = "not an expression: assignments/imports/del are not allowed";
const COMPREHENSION: &str =
    "comprehensions and generator expressions are not allowed (they are unbounded loops)";

/// Python statement keywords: text that starts with one is a statement, not an expression.
const STATEMENTS: &[&str] = &[
    "import", "from", "del", "global", "nonlocal", "def", "class", "return", "pass", "raise",
    "try", "while", "with", "assert", "break", "continue", "for", "async", "elif", "else",
    "except", "finally",
];
/// Every Python keyword (none is a name).
const KEYWORDS_PY: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield",
];

/// Why an expression is refused; the message names the offending piece.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ExprError {
    /// What is wrong, e.g. ``calls are not allowed: os.system() (…)``.
    pub reason: String,
}

impl ExprError {
    fn new(reason: impl Into<String>) -> ExprError {
        ExprError {
            reason: reason.into(),
        }
    }
}

/// The hint shown with every refusal.
pub const HINT: &str = "expressions read names, attributes and items, use operators, and call \
only pure builtins (len, min, max, …) and known-pure methods of builtin types (d.get, \
s.startswith, …); see docs/expressions.md. `--unsafe` lifts the call rule";

/// Checks a probe's expressions and condition; the error says which one is wrong.
pub fn check_probe(
    expressions: &[String],
    condition: Option<&str>,
    unsafe_calls: bool,
) -> Result<(), ExprError> {
    for e in expressions {
        check(e, unsafe_calls)
            .map_err(|err| ExprError::new(format!("expression `{e}`: {}", err.reason)))?;
    }
    if let Some(c) = condition {
        check(c, unsafe_calls)
            .map_err(|err| ExprError::new(format!("condition `{c}`: {}", err.reason)))?;
    }
    Ok(())
}

/// Checks one expression. `unsafe_calls` lifts the call rule (which callables, which keyword
/// arguments) and nothing else.
pub fn check(text: &str, unsafe_calls: bool) -> Result<(), ExprError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(ExprError::new("empty expression"));
    }
    if text.chars().count() > MAX_LEN {
        return Err(ExprError::new(format!(
            "the expression is too long ({} characters; at most {MAX_LEN})",
            text.chars().count()
        )));
    }
    let toks = lex(text)?;
    let mut p = Parser {
        src: text,
        toks,
        i: 0,
        unsafe_calls,
        depth: 0,
        deferred: None,
    };
    p.top()?;
    match p.deferred {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

// -- tokens ------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Name(String),
    Num,
    Str { bytes: bool },
    Op(&'static str),
    End,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    start: usize,
    end: usize,
}

/// Operators, longest first.
const OPS: &[&str] = &[
    "**=", "//=", ">>=", "<<=", "...", ":=", "**", "//", "<<", ">>", "<=", ">=", "==", "!=", "->",
    "+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=", "@=", "+", "-", "*", "/", "%", "@", "&", "|",
    "^", "~", "<", ">", "(", ")", "[", "]", "{", "}", ",", ":", ".", ";", "=",
];

fn lex(src: &str) -> Result<Vec<Token>, ExprError> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b' ' || c == b'\t' {
            i += 1;
            continue;
        }
        if c == b'\n' || c == b'\r' {
            return Err(ExprError::new("an expression must be one line"));
        }
        if c < 0x20 || c == 0x7f {
            return Err(ExprError::new(
                "control characters are not allowed (use escapes in strings)",
            ));
        }
        if c >= 0x80 {
            // Python folds non-ASCII names (NFKC: `ｅｖａｌ` is `eval`); refusing them keeps
            // this checker and Python's parser agreeing on every name.
            let ch = src[i..].chars().next().unwrap_or('?');
            return Err(ExprError::new(format!(
                "names must be ASCII: `{ch}` outside a string"
            )));
        }
        if c == b'#' {
            return Err(ExprError::new("comments (#) are not allowed"));
        }
        if c == b'\\' {
            return Err(ExprError::new(
                "invalid syntax: a backslash outside a string",
            ));
        }
        let start = i;
        if c.is_ascii_alphabetic() || c == b'_' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let word = &src[start..i];
            if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
                let lower = word.to_ascii_lowercase();
                if lower.contains('f') || lower.contains('t') {
                    return Err(ExprError::new(format!(
                        "f-strings and t-strings are not allowed: {}…",
                        &src[start..=i]
                    )));
                }
                let bytes = match lower.as_str() {
                    "r" | "u" => false,
                    "b" | "br" | "rb" => true,
                    _ => {
                        return Err(ExprError::new(format!(
                            "invalid syntax: unknown string prefix `{word}`"
                        )))
                    }
                };
                i = string_end(src, i)?;
                out.push(Token {
                    tok: Tok::Str { bytes },
                    start,
                    end: i,
                });
                continue;
            }
            out.push(Token {
                tok: Tok::Name(word.to_owned()),
                start,
                end: i,
            });
            continue;
        }
        if c == b'"' || c == b'\'' {
            i = string_end(src, i)?;
            out.push(Token {
                tok: Tok::Str { bytes: false },
                start,
                end: i,
            });
            continue;
        }
        if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            i = number_end(src, i)?;
            out.push(Token {
                tok: Tok::Num,
                start,
                end: i,
            });
            continue;
        }
        match OPS.iter().find(|op| src[i..].starts_with(**op)) {
            Some(op) => {
                i += op.len();
                out.push(Token {
                    tok: Tok::Op(op),
                    start,
                    end: i,
                });
            }
            None => {
                return Err(ExprError::new(format!(
                    "invalid syntax: unexpected character `{}`",
                    c as char
                )))
            }
        }
    }
    out.push(Token {
        tok: Tok::End,
        start: b.len(),
        end: b.len(),
    });
    Ok(out)
}

/// The end of the string literal whose opening quote is at `i`. A backslash always keeps the
/// next character from closing the string (also in raw strings, as in Python).
fn string_end(src: &str, i: usize) -> Result<usize, ExprError> {
    let b = src.as_bytes();
    let q = b[i];
    let triple = b.len() >= i + 3 && b[i + 1] == q && b[i + 2] == q;
    let mut j = if triple { i + 3 } else { i + 1 };
    while j < b.len() {
        let c = b[j];
        if c == b'\\' {
            j += 2;
            continue;
        }
        if c == q {
            if !triple {
                return Ok(j + 1);
            }
            if b.len() >= j + 3 && b[j + 1] == q && b[j + 2] == q {
                return Ok(j + 3);
            }
        }
        j += 1;
    }
    Err(ExprError::new(
        "invalid syntax: a string literal is not closed",
    ))
}

fn number_end(src: &str, mut i: usize) -> Result<usize, ExprError> {
    let b = src.as_bytes();
    let digits = |i: &mut usize, ok: fn(u8) -> bool| {
        while *i < b.len() && (ok(b[*i]) || b[*i] == b'_') {
            *i += 1;
        }
    };
    if b[i] == b'0' && b.get(i + 1).is_some_and(|c| b"xXoObB".contains(c)) {
        i += 2;
        digits(&mut i, |c| c.is_ascii_hexdigit());
    } else {
        digits(&mut i, |c| c.is_ascii_digit());
        if i < b.len() && b[i] == b'.' {
            i += 1;
            digits(&mut i, |c| c.is_ascii_digit());
        }
        if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
            i += 1;
            if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
                i += 1;
            }
            digits(&mut i, |c| c.is_ascii_digit());
        }
        if i < b.len() && (b[i] == b'j' || b[i] == b'J') {
            i += 1;
        }
    }
    if i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
        return Err(ExprError::new(format!(
            "invalid syntax: invalid number `{}`",
            &src[..=i]
                .rsplit(|c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '_')
                .next()
                .unwrap_or("")
        )));
    }
    Ok(i)
}

// -- the parser ----------------------------------------------------------------------------------

/// What a parsed piece is, as far as a call on it cares.
#[derive(Debug, Clone, PartialEq)]
enum Shape {
    /// A bare name.
    Name(String),
    /// `….name`.
    Attr(String),
    /// Anything else.
    Other,
}

type R = Result<Shape, ExprError>;

struct Parser<'a> {
    src: &'a str,
    toks: Vec<Token>,
    i: usize,
    unsafe_calls: bool,
    depth: usize,
    /// The first call-rule violation (by where it starts): reported only when nothing worse
    /// (a forbidden form, a dunder name) is found in the whole expression, as the agent does.
    deferred: Option<(usize, ExprError)>,
}

fn is_dunder(name: &str) -> bool {
    name.len() >= 4 && name.starts_with("__") && name.ends_with("__")
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        &self.toks[self.i.min(self.toks.len() - 1)].tok
    }

    fn peek_at(&self, n: usize) -> &Tok {
        &self.toks[(self.i + n).min(self.toks.len() - 1)].tok
    }

    fn pos(&self) -> usize {
        self.toks[self.i.min(self.toks.len() - 1)].start
    }

    fn prev_end(&self) -> usize {
        if self.i == 0 {
            0
        } else {
            self.toks[self.i - 1].end
        }
    }

    fn is_op(&self, op: &str) -> bool {
        matches!(self.peek(), Tok::Op(o) if *o == op)
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Tok::Name(n) if n == kw)
    }

    fn bump(&mut self) {
        if self.i < self.toks.len() - 1 {
            self.i += 1;
        }
    }

    fn eat(&mut self, op: &str) -> bool {
        if self.is_op(op) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, op: &str) -> Result<(), ExprError> {
        if self.eat(op) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("expected `{op}`")))
        }
    }

    /// A piece of the source, shortened for messages.
    fn piece(&self, start: usize, end: usize) -> String {
        let s = self.src.get(start..end).unwrap_or("").trim();
        if s.chars().count() <= 60 {
            s.to_owned()
        } else {
            format!("{}...", s.chars().take(57).collect::<String>())
        }
    }

    /// The error for the current token, which does not belong here.
    fn unexpected(&self, what: &str) -> ExprError {
        match self.peek() {
            Tok::Op(":=") => ExprError::new(format!(
                "assignment expressions (:=) are not allowed: {}",
                self.piece(self.pos(), self.src.len())
            )),
            Tok::Op("=") | Tok::Op(";") => ExprError::new(NOT_AN_EXPRESSION),
            Tok::Op(o)
                if o.len() >= 2 && o.ends_with('=') && !["==", "!=", "<=", ">="].contains(o) =>
            {
                ExprError::new(NOT_AN_EXPRESSION)
            }
            Tok::Name(n) if n == "for" || n == "async" => ExprError::new(format!(
                "{COMPREHENSION}: {}",
                self.piece(self.pos(), self.src.len())
            )),
            Tok::End => ExprError::new(format!("invalid syntax: {what} at the end")),
            _ => {
                let t = &self.toks[self.i];
                ExprError::new(format!(
                    "invalid syntax: {what}, found `{}`",
                    self.piece(t.start, t.end)
                ))
            }
        }
    }

    fn defer(&mut self, start: usize, e: ExprError) {
        if self.deferred.as_ref().is_none_or(|(at, _)| start < *at) {
            self.deferred = Some((start, e));
        }
    }

    fn enter(&mut self) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ExprError::new(format!(
                "the expression is nested too deeply (more than {MAX_DEPTH} levels)"
            )));
        }
        Ok(())
    }

    fn top(&mut self) -> Result<(), ExprError> {
        if let Tok::Name(n) = self.peek() {
            if STATEMENTS.contains(&n.as_str()) {
                return Err(ExprError::new(NOT_AN_EXPRESSION));
            }
        }
        // `a, b` is a tuple in Python's eval mode.
        self.star_expr()?;
        while self.eat(",") {
            if matches!(self.peek(), Tok::End) {
                break;
            }
            self.star_expr()?;
        }
        if !matches!(self.peek(), Tok::End) {
            return Err(self.unexpected("unexpected text"));
        }
        Ok(())
    }

    /// An element of a display, an argument or a subscript: `*x` is refused here.
    fn star_expr(&mut self) -> R {
        if self.is_op("*") {
            let start = self.pos();
            self.bump();
            let _ = self.or_test();
            return Err(ExprError::new(format!(
                "starred expressions (*x) are not allowed: {}",
                self.piece(start, self.prev_end())
            )));
        }
        self.expr()
    }

    /// `a if b else c`, lambda.
    fn expr(&mut self) -> R {
        self.enter()?;
        let r = self.expr_inner();
        self.depth -= 1;
        r
    }

    fn expr_inner(&mut self) -> R {
        if self.is_kw("lambda") {
            let start = self.pos();
            return Err(ExprError::new(format!(
                "lambda is not allowed: {}",
                self.piece(start, self.src.len())
            )));
        }
        if self.is_kw("yield") {
            return Err(ExprError::new("yield is not allowed"));
        }
        let shape = self.or_test()?;
        if self.is_op(":=") {
            return Err(self.unexpected(""));
        }
        if self.is_kw("if") {
            self.bump();
            self.or_test()?;
            if !self.is_kw("else") {
                return Err(self.unexpected("expected `else` after `if` expression"));
            }
            self.bump();
            self.expr()?;
            return Ok(Shape::Other);
        }
        Ok(shape)
    }

    fn or_test(&mut self) -> R {
        let mut s = self.and_test()?;
        while self.is_kw("or") {
            self.bump();
            self.and_test()?;
            s = Shape::Other;
        }
        Ok(s)
    }

    fn and_test(&mut self) -> R {
        let mut s = self.not_test()?;
        while self.is_kw("and") {
            self.bump();
            self.not_test()?;
            s = Shape::Other;
        }
        Ok(s)
    }

    fn not_test(&mut self) -> R {
        if self.is_kw("not") {
            self.enter()?;
            self.bump();
            let r = self.not_test();
            self.depth -= 1;
            r?;
            return Ok(Shape::Other);
        }
        self.comparison()
    }

    /// The comparison operator at the cursor (consumed), if any; true when it is `in`/`not in`.
    fn comp_op(&mut self) -> Option<bool> {
        let op = match self.peek() {
            Tok::Op(o) if ["<", ">", "==", "!=", "<=", ">="].contains(o) => Some(false),
            Tok::Name(n) if n == "in" => Some(true),
            Tok::Name(n) if n == "is" => {
                if matches!(self.peek_at(1), Tok::Name(m) if m == "not") {
                    self.bump();
                }
                Some(false)
            }
            Tok::Name(n) if n == "not" && matches!(self.peek_at(1), Tok::Name(m) if m == "in") => {
                self.bump();
                Some(true)
            }
            _ => None,
        };
        if op.is_some() {
            self.bump();
        }
        op
    }

    fn comparison(&mut self) -> R {
        let start = self.pos();
        let mut s = self.bitor()?;
        let mut ops = 0;
        let mut membership = false;
        while let Some(is_in) = self.comp_op() {
            ops += 1;
            membership |= is_in;
            self.bitor()?;
            s = Shape::Other;
        }
        if ops > 1 && membership {
            // The agent guards `in` (an iterator on the right could run without end), which it
            // does for one comparison at a time.
            let e = ExprError::new(format!(
                "chained comparisons with `in` are not supported (use `and`): {}",
                self.piece(start, self.prev_end())
            ));
            self.defer(start, e);
        }
        Ok(s)
    }

    fn binary(&mut self, ops: &[&str], next: fn(&mut Self) -> R) -> R {
        let mut s = next(self)?;
        while let Tok::Op(o) = self.peek() {
            if !ops.contains(o) {
                break;
            }
            if *o == "@" {
                return Err(ExprError::new("matrix multiplication (@) is not allowed"));
            }
            self.bump();
            next(self)?;
            s = Shape::Other;
        }
        Ok(s)
    }

    fn bitor(&mut self) -> R {
        self.binary(&["|"], Self::bitxor)
    }
    fn bitxor(&mut self) -> R {
        self.binary(&["^"], Self::bitand)
    }
    fn bitand(&mut self) -> R {
        self.binary(&["&"], Self::shift)
    }
    fn shift(&mut self) -> R {
        self.binary(&["<<", ">>"], Self::arith)
    }
    fn arith(&mut self) -> R {
        self.binary(&["+", "-"], Self::term)
    }
    fn term(&mut self) -> R {
        self.binary(&["*", "/", "//", "%", "@"], Self::factor)
    }

    fn factor(&mut self) -> R {
        if self.is_op("-") || self.is_op("+") || self.is_op("~") {
            self.enter()?;
            self.bump();
            let r = self.factor();
            self.depth -= 1;
            r?;
            return Ok(Shape::Other);
        }
        self.power()
    }

    fn power(&mut self) -> R {
        if self.is_kw("await") {
            return Err(ExprError::new("await is not allowed"));
        }
        let s = self.primary()?;
        if self.eat("**") {
            self.enter()?;
            let r = self.factor();
            self.depth -= 1;
            r?;
            return Ok(Shape::Other);
        }
        Ok(s)
    }

    fn primary(&mut self) -> R {
        let start = self.pos();
        let mut s = self.atom()?;
        loop {
            if self.eat(".") {
                let Tok::Name(name) = self.peek().clone() else {
                    return Err(self.unexpected("expected an attribute name after `.`"));
                };
                if KEYWORDS_PY.contains(&name.as_str()) {
                    return Err(self.unexpected("expected an attribute name after `.`"));
                }
                if is_dunder(&name) {
                    return Err(ExprError::new(format!(
                        "attributes that start and end with __ are not allowed: .{name}"
                    )));
                }
                if name.starts_with("_scry") {
                    return Err(ExprError::new(format!(
                        "attributes starting with _scry are not allowed: .{name}"
                    )));
                }
                self.bump();
                s = Shape::Attr(name);
            } else if self.is_op("(") {
                let callee = self.piece(start, self.prev_end());
                self.bump();
                self.enter()?;
                let r = self.call(&s, &callee, start);
                self.depth -= 1;
                r?;
                s = Shape::Other;
            } else if self.is_op("[") {
                self.bump();
                self.enter()?;
                let r = self.subscripts();
                self.depth -= 1;
                r?;
                s = Shape::Other;
            } else {
                return Ok(s);
            }
        }
    }

    /// The arguments of a call (after `(`), and whether the call is allowed.
    fn call(&mut self, callee: &Shape, piece: &str, start: usize) -> Result<(), ExprError> {
        let mut positional = 0usize;
        let mut keywords = Vec::new();
        while !self.is_op(")") {
            if self.is_op("**") {
                let start = self.pos();
                self.bump();
                let _ = self.expr();
                return Err(ExprError::new(format!(
                    "keyword unpacking (**x) is not allowed: {}",
                    self.piece(start, self.prev_end())
                )));
            }
            if let (Tok::Name(n), Tok::Op("=")) = (self.peek().clone(), self.peek_at(1).clone()) {
                if KEYWORDS_PY.contains(&n.as_str()) {
                    return Err(self.unexpected("unexpected keyword"));
                }
                self.bump();
                self.bump();
                self.expr()?;
                keywords.push(n);
            } else {
                self.star_expr()?;
                if self.is_kw("for") || self.is_kw("async") {
                    return Err(self.unexpected(""));
                }
                positional += 1;
            }
            if !self.eat(",") {
                break;
            }
        }
        self.expect(")")?;
        if let Err(e) = self.call_rule(callee, piece, positional, &keywords) {
            self.defer(start, e);
        }
        Ok(())
    }

    /// Which calls are allowed (lifted by `unsafe`).
    fn call_rule(
        &self,
        callee: &Shape,
        piece: &str,
        positional: usize,
        keywords: &[String],
    ) -> Result<(), ExprError> {
        if self.unsafe_calls {
            return Ok(());
        }
        let allowed = match callee {
            Shape::Name(n) => PURE_BUILTINS.contains(&n.as_str()),
            Shape::Attr(m) => PURE_METHODS.contains(&m.as_str()),
            Shape::Other => false,
        };
        if !allowed {
            return Err(ExprError::new(format!(
                "calls are not allowed: {piece}() (only pure builtins ({}) and known-pure \
                 methods of builtin types may be called; a probe created with unsafe may call \
                 anything)",
                PURE_BUILTINS.join(", ")
            )));
        }
        for k in keywords {
            if k == "key" {
                return Err(ExprError::new(format!(
                    "keyword argument key= is not allowed in {piece}(): it would pass a callable"
                )));
            }
            if !KEYWORDS.contains(&k.as_str()) {
                return Err(ExprError::new(format!(
                    "keyword argument {k}= is not allowed in {piece}() (allowed: {})",
                    KEYWORDS.join(", ")
                )));
            }
        }
        if *callee == Shape::Name("type".into()) && (positional != 1 || !keywords.is_empty()) {
            return Err(ExprError::new(
                "type() takes one argument here (the three-argument form makes a class)",
            ));
        }
        Ok(())
    }

    /// `[i]`, `[a:b:c]`, `[i, j]` (after `[`).
    fn subscripts(&mut self) -> Result<(), ExprError> {
        loop {
            if !self.is_op(":") {
                self.star_expr()?;
            }
            if self.eat(":") {
                if !self.is_op(":") && !self.is_op("]") && !self.is_op(",") {
                    self.expr()?;
                }
                if self.eat(":") && !self.is_op("]") && !self.is_op(",") {
                    self.expr()?;
                }
            }
            if !self.eat(",") || self.is_op("]") {
                break;
            }
        }
        self.expect("]")
    }

    fn atom(&mut self) -> R {
        let tok = self.peek().clone();
        match tok {
            Tok::Name(n) => {
                match n.as_str() {
                    "True" | "False" | "None" => {
                        self.bump();
                        return Ok(Shape::Other);
                    }
                    "lambda" | "yield" => return self.expr(),
                    "await" => return Err(ExprError::new("await is not allowed")),
                    _ => {}
                }
                if KEYWORDS_PY.contains(&n.as_str()) {
                    return Err(self.unexpected("unexpected keyword"));
                }
                if is_dunder(&n) {
                    return Err(ExprError::new(format!(
                        "names that start and end with __ are not allowed: {n}"
                    )));
                }
                if n.starts_with("_scry") {
                    return Err(ExprError::new(format!(
                        "names starting with _scry are reserved for scry: {n}"
                    )));
                }
                self.bump();
                Ok(Shape::Name(n))
            }
            Tok::Num => {
                self.bump();
                Ok(Shape::Other)
            }
            Tok::Str { bytes } => {
                self.bump();
                while let Tok::Str { bytes: b } = self.peek() {
                    if *b != bytes {
                        return Err(ExprError::new(
                            "invalid syntax: cannot mix bytes and nonbytes literals",
                        ));
                    }
                    self.bump();
                }
                Ok(Shape::Other)
            }
            Tok::Op("...") => {
                self.bump();
                Ok(Shape::Other)
            }
            Tok::Op("(") => {
                self.bump();
                self.enter()?;
                let r = self.paren();
                self.depth -= 1;
                r
            }
            Tok::Op("[") => {
                self.bump();
                self.enter()?;
                let r = self.display("]");
                self.depth -= 1;
                r.map(|_| Shape::Other)
            }
            Tok::Op("{") => {
                self.bump();
                self.enter()?;
                let r = self.braces();
                self.depth -= 1;
                r.map(|_| Shape::Other)
            }
            _ => Err(self.unexpected("expected a value")),
        }
    }

    /// After `(`: `()`, `(x)` (keeps x's shape: `(len)(x)` calls len), `(x, y)`.
    fn paren(&mut self) -> R {
        if self.eat(")") {
            return Ok(Shape::Other);
        }
        if self.is_kw("yield") {
            return Err(ExprError::new("yield is not allowed"));
        }
        let s = self.star_expr()?;
        if self.is_kw("for") || self.is_kw("async") || self.is_op(":=") {
            return Err(self.unexpected(""));
        }
        if self.eat(")") {
            return Ok(s);
        }
        self.expect(",")?;
        self.display(")").map(|_| Shape::Other)
    }

    /// The rest of a list or tuple display, up to `close`.
    fn display(&mut self, close: &str) -> Result<(), ExprError> {
        let mut first = true;
        while !self.is_op(close) {
            self.star_expr()?;
            if first && (self.is_kw("for") || self.is_kw("async")) {
                return Err(self.unexpected(""));
            }
            first = false;
            if !self.eat(",") {
                break;
            }
        }
        self.expect(close)
    }

    /// After `{`: a dict or a set display.
    fn braces(&mut self) -> Result<(), ExprError> {
        if self.eat("}") {
            return Ok(());
        }
        let mut dict = None;
        loop {
            if self.is_op("**") {
                let start = self.pos();
                self.bump();
                let _ = self.bitor();
                return Err(ExprError::new(format!(
                    "dict unpacking (**x) is not allowed: {}",
                    self.piece(start, self.prev_end())
                )));
            }
            self.star_expr()?;
            let is_pair = self.eat(":");
            if is_pair {
                self.expr()?;
            }
            if dict.is_some_and(|d| d != is_pair) {
                return Err(self.unexpected("invalid syntax: mixed dict and set items"));
            }
            dict = Some(is_pair);
            if self.is_kw("for") || self.is_kw("async") {
                return Err(self.unexpected(""));
            }
            if !self.eat(",") || self.is_op("}") {
                break;
            }
        }
        self.expect("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(e: &str) {
        if let Err(err) = check(e, false) {
            panic!("`{e}` was refused: {err}");
        }
    }

    fn bad(e: &str, why: &str) {
        match check(e, false) {
            Ok(()) => panic!("`{e}` was accepted"),
            Err(err) => assert!(err.reason.contains(why), "`{e}`: {err} (wanted {why})"),
        }
    }

    #[test]
    fn everyday_expressions_pass() {
        for e in [
            "user.id",
            "len(order.items)",
            "x ** 2",
            "s[:20]",
            "s[::2]",
            "m[1:2, 3]",
            "d.get(\"k\")",
            "d.get('k', 0)",
            "a if b else c",
            "0 < x <= 10",
            "x is not None",
            "k not in d",
            "(a, b)",
            "a, b",
            "()",
            "[1, 2.5, 1e3, 0x1f, 1_000, .5, 3j]",
            "{1: 'a', 'b': [2]}",
            "{1, 2}",
            "{}",
            "not a and (b or c)",
            "-x + ~y",
            "r'\\d' + b'x'.hex() if f else u'y'",
            "'a' 'b'",
            "\"\"\"tri 'ple' \"\"\"",
            "sorted(xs, reverse=True)",
            "max(xs, default=0)",
            "round(x, ndigits=2)",
            "(len)(x)",
            "type(x).mro",
            "isinstance(x, (int, str))",
            "...",
            "s.lower().startswith('x')",
            "x.y[0].z",
            "a // b % c << 2 >> 1 & 3 | 4 ^ 5",
        ] {
            ok(e);
        }
    }

    #[test]
    fn escapes_are_refused() {
        bad("min(['touch /tmp/p'], key=os.system)", "key=");
        bad("sorted(['x'], key=eval)", "key=");
        bad("max(['x'], key=exec)", "key=");
        bad("__import__('os').system('true')", "start and end with __");
        bad("os.system('true')", "calls are not allowed");
        bad("getattr(x, 'y')", "calls are not allowed");
        bad("x.__class__", "attributes that start and end with __");
        bad(
            "x.__class__.__bases__",
            "attributes that start and end with __",
        );
        bad("(lambda: 1)()", "lambda is not allowed");
        bad("(y := 1)", "(:=)");
        bad("[i for i in x]", "comprehensions");
        bad("sum(i for i in x)", "comprehensions");
        bad("{k: v for k, v in d}", "comprehensions");
        bad("{k for k in d}", "comprehensions");
        bad("len(*x)", "starred");
        bad("[*x]", "starred");
        bad("len(**x)", "keyword unpacking");
        bad("{**x}", "dict unpacking");
        bad("f'{x}'", "f-strings");
        bad("rf'{x}'", "f-strings");
        bad("x = 1", "not an expression");
        bad("x += 1", "not an expression");
        bad("import os", "not an expression");
        bad("del x", "not an expression");
        bad("x; y", "not an expression");
        bad("type('A', (), {})", "type() takes one argument");
        bad("ｅｖａｌ('1')", "ASCII");
        bad("x # c", "comments");
        bad("a\nb", "one line");
        bad("a @ b", "matrix");
        bad("a in b in c", "chained comparisons");
        bad("await x", "await");
        bad("(yield x)", "yield");
        bad("_scry_len(x)", "reserved");
        bad("x._scry", "_scry");
        bad("len(x, sep=1, foo=2)", "foo=");
        bad("x.foo()", "calls are not allowed");
        bad("x[0]()", "calls are not allowed");
        bad("(x)()", "calls are not allowed");
        bad("", "empty");
        bad("'abc", "not closed");
        bad("a if b", "else");
        bad("1x", "invalid");
        assert!(check("os.system(if=1)", true).is_err());
        bad("x.", "attribute name");
        bad("(", "invalid syntax");
        bad("x $ y", "invalid syntax");
    }

    #[test]
    fn unsafe_lifts_only_the_call_rule() {
        assert!(check("os.system('x')", true).is_ok());
        assert!(check("sorted(x, key=str.lower)", true).is_ok());
        assert!(check("x.__class__", true).is_err());
        assert!(check("[i for i in x]", true).is_err());
        assert!(check("(lambda: 1)", true).is_err());
    }

    #[test]
    fn size_and_depth_are_bounded() {
        bad(&"x+".repeat(1500), "too long");
        bad(
            &format!("{}x{}", "(".repeat(200), ")".repeat(200)),
            "nested too deeply",
        );
        bad(&format!("{}x", "-".repeat(200)), "nested too deeply");
        bad(&format!("{}x", "not ".repeat(200)), "nested too deeply");
        bad(&"2**".repeat(200).to_string().add_x(), "nested too deeply");
        ok(&format!("{}x{}", "(".repeat(20), ")".repeat(20)));
    }

    trait AddX {
        fn add_x(self) -> String;
    }
    impl AddX for String {
        fn add_x(self) -> String {
            self + "x"
        }
    }

    /// The shared vectors: the agent's test (python/tests/test_expressions.py) asserts the same
    /// verdicts and reasons, and the run-time outcomes.
    #[test]
    fn shared_vectors() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../scry-proto/vectors/expressions.json");
        let text = std::fs::read_to_string(&path).expect("read the expression vectors");
        let doc: serde_json::Value = serde_json::from_str(&text).expect("vector json");
        let names = |key: &str| -> Vec<String> {
            doc[key]
                .as_array()
                .expect(key)
                .iter()
                .map(|v| v.as_str().expect("name").to_owned())
                .collect()
        };
        assert_eq!(names("pure_builtins"), PURE_BUILTINS);
        assert_eq!(names("pure_methods"), PURE_METHODS);
        let mut kw = names("keywords");
        kw.sort();
        assert_eq!(kw, KEYWORDS);
        assert_eq!(doc["bounds"]["max_len"], MAX_LEN);
        let vectors = doc["vectors"].as_array().expect("vectors");
        assert!(vectors.len() >= 60, "at least 60 vectors");
        for v in vectors {
            let expr = v["expr"].as_str().expect("expr");
            let unsafe_calls = v["unsafe"].as_bool().expect("unsafe");
            match (v["verdict"].as_str(), check(expr, unsafe_calls)) {
                (Some("accept"), Ok(())) => {}
                (Some("reject"), Err(e)) => {
                    let want = v["reason"].as_str().expect("reason");
                    assert!(e.reason.contains(want), "`{expr}`: {e} (wanted {want})");
                }
                (verdict, got) => {
                    panic!("`{expr}` (unsafe {unsafe_calls}): wanted {verdict:?}, got {got:?}")
                }
            }
        }
    }

    #[test]
    fn probe_errors_name_the_expression() {
        let e = check_probe(&["x".into(), "eval('1')".into()], None, false).expect_err("bad");
        assert!(e
            .reason
            .starts_with("expression `eval('1')`: calls are not allowed"));
        let e = check_probe(&["x".into()], Some("x.__dict__"), false).expect_err("bad");
        assert!(e.reason.starts_with("condition `x.__dict__`:"));
    }
}
