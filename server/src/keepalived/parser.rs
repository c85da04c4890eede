//! keepalived.conf into a tree of statements, as keepalived 2.2 reads it (`man keepalived.conf`, "ADVANCED
//! CONFIGURATION"; `keepalived/core/parser.c`): `include` (globs, braces, paths relative to the including
//! file, detected before anything else on the line), `@id` / `@^id` conditional lines against the config id,
//! `$NAME=value` parameters (also multi-line ones, lines ending in `\`) substituted as `$NAME` (before
//! whitespace) or `${NAME}`, recursively at use time, `~SEQ` / `~SEQx` / `~LST` repetition, then blocks by `{`
//! and `}`. Every statement keeps the file and line it came from. No I/O: files come through a `Source`.
//! Every expansion is bounded (`Limits`), so include loops and self-referencing parameters end in an error,
//! never in unbounded memory.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::lexer::{self, Token};
use super::source::{self, Source};

/// Where a statement came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Loc {
    pub file: Arc<str>,
    pub line: u32,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One statement: its words (keyword first) and, for a block, the statements inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub loc: Loc,
    pub words: Vec<String>,
    pub block: Option<Vec<Statement>>,
}

impl Statement {
    /// The keyword (first word), or "" for a bare block.
    pub fn keyword(&self) -> &str {
        self.words.first().map(String::as_str).unwrap_or("")
    }

    /// The words after the keyword.
    pub fn args(&self) -> &[String] {
        self.words.get(1..).unwrap_or(&[])
    }

    /// The statements inside (empty when not a block).
    pub fn children(&self) -> &[Statement] {
        self.block.as_deref().unwrap_or(&[])
    }
}

/// Something the parser noticed and went on past (a missing include, an unbalanced brace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub loc: Loc,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.loc, self.message)
    }
}

/// Why a configuration could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("cannot read {0}")]
    Read(#[from] source::SourceError),
    #[error("{loc}: {message}")]
    Limit { loc: Loc, message: String },
}

/// Bounds on what one configuration may expand to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Nested includes (an include loop ends here).
    pub include_depth: usize,
    /// Files read, includes counted each time.
    pub files: usize,
    /// Logical lines after every expansion.
    pub lines: usize,
    /// Bytes of one line after parameter substitution.
    pub line_bytes: usize,
    /// Nested expansions (multi-line parameters inside each other, `~SEQ` inside `~SEQ`).
    pub expansion_depth: usize,
    /// Bytes of all lines after expansion.
    pub total_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            include_depth: 32,
            files: 10_000,
            lines: 2_000_000,
            line_bytes: 64 * 1024,
            expansion_depth: 32,
            total_bytes: 256 * 1024 * 1024,
        }
    }
}

/// A parsed configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The config id it was read with (`@id` lines).
    pub config_id: String,
    pub statements: Vec<Statement>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Reads `path` and what it includes, with `config_id` deciding `@id` lines.
pub fn parse<S: Source>(
    src: &mut S,
    path: &Path,
    config_id: &str,
    limits: Limits,
) -> Result<Config, ParseError> {
    let mut pre = Preprocessor {
        src,
        config_id: config_id.to_owned(),
        limits,
        vars: HashMap::new(),
        lines: Vec::new(),
        bytes: 0,
        steps: 0,
        files_read: 0,
        stack: Vec::new(),
        diagnostics: Vec::new(),
    };
    let top = source::normalize(path);
    let text = pre.src.read(&top)?;
    pre.file(&top, &text)?;
    let Preprocessor {
        lines,
        mut diagnostics,
        ..
    } = pre;
    let statements = build_tree(lines, &mut diagnostics);
    Ok(Config {
        config_id: config_id.to_owned(),
        statements,
        diagnostics,
    })
}

/// A parameter's value: one line, or the lines of a multi-line definition with where each was written.
#[derive(Debug, Clone)]
enum Value {
    Line(String),
    Lines(Vec<(String, Loc)>),
}

/// A line after every expansion, as tokens.
struct Line {
    loc: Loc,
    tokens: Vec<Token>,
}

struct Preprocessor<'a, S> {
    src: &'a mut S,
    config_id: String,
    limits: Limits,
    vars: HashMap<String, Value>,
    lines: Vec<Line>,
    bytes: usize,
    /// Logical lines looked at, emitted or not (bounds a `~SEQ` of lines that all turn out empty).
    steps: usize,
    files_read: usize,
    /// Files being read, outermost first.
    stack: Vec<PathBuf>,
    diagnostics: Vec<Diagnostic>,
}

const INCLUDE_KEYWORDS: &[&str] = &[
    "include", "includer", "includem", "includew", "includeb", "includea",
];

impl<S: Source> Preprocessor<'_, S> {
    fn limit(&self, loc: &Loc, message: String) -> ParseError {
        ParseError::Limit {
            loc: loc.clone(),
            message,
        }
    }

    fn note(&mut self, loc: &Loc, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic {
            loc: loc.clone(),
            message: message.into(),
        });
    }

    fn file(&mut self, path: &Path, text: &str) -> Result<(), ParseError> {
        let name: Arc<str> = Arc::from(path.display().to_string());
        self.files_read += 1;
        self.stack.push(path.to_owned());
        let raw: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < raw.len() {
            let loc = Loc {
                file: name.clone(),
                line: u32::try_from(i + 1).unwrap_or(u32::MAX),
            };
            let line = lexer::strip_comment(raw[i]).trim();
            i += 1;
            if line.is_empty() {
                continue;
            }
            // Include lines are recognised before conditionals and parameters, as keepalived does.
            let first = line.split_whitespace().next().unwrap_or("");
            if INCLUDE_KEYWORDS.contains(&first) {
                self.include(path, line, &loc)?;
                continue;
            }
            let Some(line) = self.conditional(line) else {
                continue;
            };
            if let Some((var, rest)) = definition(line) {
                if rest.trim() == "\\" {
                    // A multi-line definition: the following lines up to one not ending in `\`.
                    let mut body = Vec::new();
                    while i < raw.len() {
                        let l = Loc {
                            file: name.clone(),
                            line: u32::try_from(i + 1).unwrap_or(u32::MAX),
                        };
                        let part = lexer::strip_comment(raw[i]).trim();
                        i += 1;
                        if part.is_empty() {
                            continue;
                        }
                        match part.strip_suffix('\\') {
                            Some(p) => {
                                if !p.trim().is_empty() {
                                    body.push((p.trim().to_owned(), l));
                                }
                            }
                            None => {
                                body.push((part.to_owned(), l));
                                break;
                            }
                        }
                    }
                    self.vars.insert(var.to_owned(), Value::Lines(body));
                    continue;
                }
            }
            self.logical(line, &loc, 0)?;
        }
        self.stack.pop();
        Ok(())
    }

    fn include(&mut self, from: &Path, line: &str, loc: &Loc) -> Result<(), ParseError> {
        // The file name as written (braces are glob syntax here, not blocks), quotes removed.
        let rest = line
            .split_once(char::is_whitespace)
            .map(|r| r.1)
            .unwrap_or("")
            .trim();
        let pattern = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => rest[1..].split(q).next().unwrap_or("").to_owned(),
            _ => rest.to_owned(),
        };
        if pattern.is_empty() {
            self.note(loc, "include without a file name");
            return Ok(());
        }
        if self.stack.len() >= self.limits.include_depth {
            return Err(self.limit(
                loc,
                format!(
                    "includes nested more than {} deep (an include loop?)",
                    self.limits.include_depth
                ),
            ));
        }
        let dir = from.parent().unwrap_or(Path::new(""));
        let patterns = source::expand_braces(&pattern, 1024).map_err(|m| self.limit(loc, m))?;
        let mut files = Vec::new();
        for p in patterns {
            let full = source::normalize(&dir.join(&p));
            if source::has_wildcard(&p) {
                files.extend(self.src.glob(&full)?);
            } else {
                files.push(full);
            }
        }
        if files.is_empty() {
            self.note(loc, format!("include {pattern:?} matched no file"));
        }
        for f in files {
            if self.stack.contains(&f) {
                self.note(
                    loc,
                    format!(
                        "include of {} skipped: it is already being read (an include loop)",
                        f.display()
                    ),
                );
                continue;
            }
            if self.files_read >= self.limits.files {
                return Err(self.limit(loc, format!("more than {} files read", self.limits.files)));
            }
            match self.src.read(&f) {
                Ok(text) => self.file(&f, &text)?,
                Err(e) => self.note(loc, format!("include: {e}")),
            }
        }
        Ok(())
    }

    /// Applies an `@id` / `@^id` prefix: `None` drops the line, otherwise the rest of it.
    fn conditional<'l>(&self, line: &'l str) -> Option<&'l str> {
        let Some(rest) = line.strip_prefix('@') else {
            return Some(line);
        };
        let (negate, rest) = match rest.strip_prefix('^') {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let (id, body) = rest.split_at(end);
        ((id == self.config_id) != negate).then_some(body.trim_start())
    }

    /// One logical line (from a file, a multi-line parameter or a repetition).
    fn logical(&mut self, line: &str, loc: &Loc, depth: usize) -> Result<(), ParseError> {
        self.steps += 1;
        if self.steps > self.limits.lines.saturating_mul(4) {
            return Err(self.limit(
                loc,
                format!(
                    "the configuration expands to more than {} lines",
                    self.limits.lines
                ),
            ));
        }
        if depth > self.limits.expansion_depth {
            return Err(self.limit(
                loc,
                format!(
                    "expansions nested more than {} deep (a parameter that uses itself?)",
                    self.limits.expansion_depth
                ),
            ));
        }
        let Some(line) = self.conditional(line.trim()) else {
            return Ok(());
        };
        if line.is_empty() {
            return Ok(());
        }
        if let Some((var, value)) = definition(line) {
            self.vars
                .insert(var.to_owned(), Value::Line(value.trim().to_owned()));
            return Ok(());
        }
        if let Some(rep) = line.strip_prefix('~') {
            if let Some((var_values, rest)) = repetition(rep).map_err(|m| self.limit(loc, m))? {
                for bindings in var_values {
                    let saved: Vec<(String, Option<Value>)> = bindings
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                self.vars.insert(k.clone(), Value::Line(v.clone())),
                            )
                        })
                        .collect();
                    let r = self.logical(rest, loc, depth + 1);
                    for (k, old) in saved {
                        match old {
                            Some(v) => self.vars.insert(k, v),
                            None => self.vars.remove(&k),
                        };
                    }
                    r?;
                }
                return Ok(());
            }
        }
        // A line that is only a multi-line parameter expands to its lines.
        if let Some(name) = whole_reference(line) {
            if let Some(Value::Lines(body)) = self.vars.get(name) {
                let body = body.clone();
                for (l, at) in body {
                    self.logical(&l, &at, depth + 1)?;
                }
                return Ok(());
            }
        }
        let text = self.substitute(line, loc)?;
        if text != line {
            // What substitution produced may be conditional or a definition itself.
            return self.logical(&text, loc, depth + 1);
        }
        self.emit(&text, loc)
    }

    fn emit(&mut self, text: &str, loc: &Loc) -> Result<(), ParseError> {
        self.bytes += text.len();
        if self.lines.len() >= self.limits.lines || self.bytes > self.limits.total_bytes {
            return Err(self.limit(
                loc,
                format!(
                    "the configuration expands to more than {} lines or {} bytes",
                    self.limits.lines, self.limits.total_bytes
                ),
            ));
        }
        let tokens = lexer::tokenize(text);
        if !tokens.is_empty() {
            self.lines.push(Line {
                loc: loc.clone(),
                tokens,
            });
        }
        Ok(())
    }

    /// Replaces defined parameters (`${NAME}` anywhere, `$NAME` before whitespace or the end) until none is
    /// left; undefined ones stay as written.
    fn substitute(&self, line: &str, loc: &Loc) -> Result<String, ParseError> {
        let mut text = line.to_owned();
        for _ in 0..=self.limits.expansion_depth {
            let (next, changed) = self.substitute_once(&text, loc)?;
            if !changed {
                return Ok(next);
            }
            if next.len() > self.limits.line_bytes {
                return Err(self.limit(
                    loc,
                    format!(
                        "a line grows past {} bytes by substitution",
                        self.limits.line_bytes
                    ),
                ));
            }
            text = next;
        }
        Err(self.limit(
            loc,
            format!(
                "parameter substitution does not end after {} rounds (a parameter that uses itself?)",
                self.limits.expansion_depth
            ),
        ))
    }

    fn substitute_once(&self, text: &str, loc: &Loc) -> Result<(String, bool), ParseError> {
        let mut out = String::with_capacity(text.len());
        let mut changed = false;
        let mut rest = text;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            let (name, consumed) = if let Some(b) = after.strip_prefix('{') {
                match b.find('}') {
                    Some(end) => (&b[..end], end + 2),
                    None => ("", 0),
                }
            } else {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                let followed_ok = after[end..].chars().next().is_none_or(char::is_whitespace);
                if followed_ok {
                    (&after[..end], end)
                } else {
                    ("", 0)
                }
            };
            let value = if valid_name(name) {
                self.lookup(name, loc)
            } else {
                None
            };
            match value {
                Some(v) => {
                    out.push_str(&v);
                    changed = true;
                    rest = &after[consumed..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        Ok((out, changed))
    }

    fn lookup(&self, name: &str, loc: &Loc) -> Option<String> {
        match self.vars.get(name) {
            Some(Value::Line(v)) => Some(v.clone()),
            // Inside a line a multi-line parameter reads as its lines joined by spaces.
            Some(Value::Lines(body)) => Some(
                body.iter()
                    .map(|(l, _)| l.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            None => match name {
                "_PWD" => Some(
                    Path::new(&*loc.file)
                        .parent()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                ),
                "_INSTANCE" => Some(self.config_id.clone()),
                "_HASH" => Some("#".into()),
                "_BANG" => Some("!".into()),
                _ => None,
            },
        }
    }
}

/// `$NAME=value` (only whitespace before the `$`, none before the `=`): the name and the raw value.
fn definition(line: &str) -> Option<(&str, &str)> {
    let rest = line.trim_start().strip_prefix('$')?;
    let eq = rest.find('=')?;
    let name = &rest[..eq];
    valid_name(name).then(|| (name, &rest[eq + 1..]))
}

/// `$NAME` or `${NAME}` and nothing else.
fn whole_reference(line: &str) -> Option<&str> {
    let rest = line.trim().strip_prefix('$')?;
    let name = match rest.strip_prefix('{') {
        Some(b) => b.strip_suffix('}')?,
        None => rest,
    };
    valid_name(name).then_some(name)
}

/// A parameter name: letters, digits and `_`, not starting with a digit.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Most values one `~SEQ` / `~LST` may produce (the line limit bounds the product of nested ones).
const MAX_REPETITION: usize = 1_000_000;

type Bindings = Vec<(String, String)>;

/// `SEQ(var, [start,] [step,] end) rest`, `SEQx(...)` or `LST(var, v1, v2...)` / `LST({a, b}, {1, 2}, ...)`
/// after the `~`: the bindings of each round and the rest of the line. `Ok(None)`: not a repetition.
fn repetition(text: &str) -> Result<Option<(Vec<Bindings>, &str)>, String> {
    let (kind, after) = if let Some(r) = text.strip_prefix("SEQx(") {
        ("SEQx", r)
    } else if let Some(r) = text.strip_prefix("SEQ(") {
        ("SEQ", r)
    } else if let Some(r) = text.strip_prefix("LST(") {
        ("LST", r)
    } else {
        return Ok(None);
    };
    let close = matching_paren(after).ok_or_else(|| format!("~{kind}( is not closed"))?;
    let inner = &after[..close];
    let rest = after[close + 1..].trim_start();
    let args = split_args(inner);
    if kind == "LST" {
        let (vars, values) = args
            .split_first()
            .ok_or_else(|| "~LST needs a variable and values".to_owned())?;
        let vars: Vec<&str> = unbrace(vars).split(',').map(str::trim).collect();
        if vars.iter().any(|v| !valid_name(v)) {
            return Err(format!("~LST: {vars:?} is not a list of parameter names"));
        }
        if values.is_empty() {
            return Err("~LST needs at least one value".into());
        }
        if values.len() > MAX_REPETITION {
            return Err(format!("~LST with more than {MAX_REPETITION} values"));
        }
        let mut rounds = Vec::new();
        for v in values {
            let vals: Vec<&str> = unbrace(v).split(',').map(str::trim).collect();
            if vals.len() != vars.len() {
                return Err(format!(
                    "~LST: {v:?} has {} values for {} variables",
                    vals.len(),
                    vars.len()
                ));
            }
            rounds.push(
                vars.iter()
                    .zip(vals)
                    .map(|(k, v)| ((*k).to_owned(), v.to_owned()))
                    .collect(),
            );
        }
        return Ok(Some((rounds, rest)));
    }
    let hex = kind == "SEQx";
    let var = args.first().map(|s| s.trim()).unwrap_or("");
    if !valid_name(var) {
        return Err(format!("~{kind}: {var:?} is not a parameter name"));
    }
    let nums: Vec<i64> = args[1..]
        .iter()
        .map(|a| parse_int(a.trim()))
        .collect::<Result<_, _>>()
        .map_err(|a| format!("~{kind}: {a:?} is not a number"))?;
    let (start, step, end) = match nums.as_slice() {
        [end] => (if *end >= 0 { 1 } else { -1 }, None, *end),
        [start, end] => (*start, None, *end),
        [start, step, end] => (*start, Some(*step), *end),
        _ => return Err(format!("~{kind} takes a variable and one to three numbers")),
    };
    let step = step.unwrap_or(if end >= start { 1 } else { -1 });
    if step == 0 {
        return Err(format!("~{kind}: a step of 0 never ends"));
    }
    let count = if (step > 0 && end < start) || (step < 0 && end > start) {
        0
    } else {
        (end.abs_diff(start) / step.unsigned_abs()).saturating_add(1)
    };
    if count > MAX_REPETITION as u64 {
        return Err(format!("~{kind} with more than {MAX_REPETITION} values"));
    }
    let rounds = (0..count as i64)
        .map(|k| {
            let v = start + k * step;
            let text = if hex { format!("{v:x}") } else { v.to_string() };
            vec![(var.to_owned(), text)]
        })
        .collect();
    Ok(Some((rounds, rest)))
}

fn parse_int(s: &str) -> Result<i64, String> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s),
    };
    let v = match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(h) => i64::from_str_radix(h, 16),
        None => digits.parse::<i64>(),
    }
    .map_err(|_| s.to_owned())?;
    // Keeps start + k * step far from overflow.
    if v.abs() > 1 << 40 {
        return Err(s.to_owned());
    }
    Ok(if neg { -v } else { v })
}

/// The offset of the `)` closing an already opened `(`, skipping nested ones.
fn matching_paren(s: &str) -> Option<usize> {
    let mut depth = 1usize;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Splits on commas outside `{...}`.
fn split_args(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut last = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(s[last..i].trim());
                last = i + 1;
            }
            _ => {}
        }
    }
    out.push(s[last..].trim());
    out
}

fn unbrace(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .unwrap_or(s)
}

/// Groups lines into statements and blocks. A `{` on a line of its own opens the block of the statement
/// before it; unbalanced braces are reported and repaired (a stray `}` ignored, an unclosed block closed at
/// the end).
fn build_tree(lines: Vec<Line>, diagnostics: &mut Vec<Diagnostic>) -> Vec<Statement> {
    // Open blocks: the statement that opened it (None for the top level) and the statements inside so far.
    let mut stack: Vec<(Option<Statement>, Vec<Statement>)> = vec![(None, Vec::new())];
    for line in lines {
        let mut words: Vec<String> = Vec::new();
        let flush = |words: &mut Vec<String>,
                     stack: &mut Vec<(Option<Statement>, Vec<Statement>)>| {
            if !words.is_empty() {
                let s = Statement {
                    loc: line.loc.clone(),
                    words: std::mem::take(words),
                    block: None,
                };
                if let Some(top) = stack.last_mut() {
                    top.1.push(s);
                }
            }
        };
        for tok in line.tokens {
            match tok {
                Token::Word(w) => words.push(w),
                Token::Open => {
                    let opener = if words.is_empty() {
                        // `{` alone: it belongs to the previous statement if that has no block yet.
                        match stack.last_mut().and_then(|t| t.1.last()) {
                            Some(prev) if prev.block.is_none() => {
                                stack.last_mut().and_then(|t| t.1.pop())
                            }
                            _ => None,
                        }
                    } else {
                        None
                    };
                    let opener = opener.unwrap_or_else(|| Statement {
                        loc: line.loc.clone(),
                        words: std::mem::take(&mut words),
                        block: None,
                    });
                    stack.push((Some(opener), Vec::new()));
                }
                Token::Close => {
                    flush(&mut words, &mut stack);
                    if stack.len() == 1 {
                        diagnostics.push(Diagnostic {
                            loc: line.loc.clone(),
                            message: "'}' without a block to close (ignored)".into(),
                        });
                        continue;
                    }
                    close_block(&mut stack);
                }
            }
        }
        flush(&mut words, &mut stack);
    }
    while stack.len() > 1 {
        if let Some((Some(opener), _)) = stack.last() {
            diagnostics.push(Diagnostic {
                loc: opener.loc.clone(),
                message: format!("block '{}' is not closed", opener.words.join(" ")),
            });
        }
        close_block(&mut stack);
    }
    stack.pop().map(|(_, s)| s).unwrap_or_default()
}

fn close_block(stack: &mut Vec<(Option<Statement>, Vec<Statement>)>) {
    if let Some((Some(mut opener), inner)) = stack.pop() {
        opener.block = Some(inner);
        if let Some(parent) = stack.last_mut() {
            parent.1.push(opener);
        }
    }
}
