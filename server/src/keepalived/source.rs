//! Where the parser's files come from: a small trait so the parser itself does no I/O (tests and the fuzz
//! target feed it from memory, the CLI from the file system, the API from an upload), and the glob matching
//! `include` needs (`*`, `?`, `[...]`, csh-style `{a,b}` braces), written once for both.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// A file the parser asked for could not be read or listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct SourceError {
    pub path: String,
    pub reason: String,
}

/// Files by path. Paths handed to it are absolute or relative to wherever the caller's top files live; the
/// parser joins `include` paths onto the including file's directory before asking.
pub trait Source {
    /// The whole text of one file.
    fn read(&mut self, path: &Path) -> Result<String, SourceError>;
    /// The files matching a pattern without braces (`*`, `?`, `[...]` in any component), sorted. No match
    /// is an empty list, not an error.
    fn glob(&mut self, pattern: &Path) -> Result<Vec<PathBuf>, SourceError>;
}

/// Files held in memory (tests, the fuzz target, an upload through the API).
#[derive(Debug, Clone, Default)]
pub struct MemorySource {
    files: BTreeMap<PathBuf, String>,
}

impl MemorySource {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a file.
    pub fn with(mut self, path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        self.insert(path, text);
        self
    }

    pub fn insert(&mut self, path: impl Into<PathBuf>, text: impl Into<String>) {
        self.files.insert(normalize(&path.into()), text.into());
    }
}

impl Source for MemorySource {
    fn read(&mut self, path: &Path) -> Result<String, SourceError> {
        self.files
            .get(&normalize(path))
            .cloned()
            .ok_or_else(|| SourceError {
                path: path.display().to_string(),
                reason: "no such file".into(),
            })
    }

    fn glob(&mut self, pattern: &Path) -> Result<Vec<PathBuf>, SourceError> {
        let pattern = normalize(pattern);
        let pat: Vec<String> = components(&pattern);
        Ok(self
            .files
            .keys()
            .filter(|p| {
                let c = components(p);
                c.len() == pat.len() && c.iter().zip(&pat).all(|(n, p)| matches(p, n))
            })
            .cloned()
            .collect())
    }
}

/// The file system (the CLI).
#[derive(Debug, Clone, Copy, Default)]
pub struct FsSource;

impl Source for FsSource {
    fn read(&mut self, path: &Path) -> Result<String, SourceError> {
        std::fs::read_to_string(path).map_err(|e| SourceError {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    fn glob(&mut self, pattern: &Path) -> Result<Vec<PathBuf>, SourceError> {
        let mut found = vec![PathBuf::new()];
        for comp in pattern.components() {
            let text = comp.as_os_str().to_string_lossy().into_owned();
            if !matches!(comp, Component::Normal(_)) || !has_wildcard(&text) {
                for f in &mut found {
                    f.push(comp.as_os_str());
                }
                continue;
            }
            let mut next = Vec::new();
            for dir in &found {
                let listing = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir.as_path()
                };
                let Ok(entries) = std::fs::read_dir(listing) else {
                    continue;
                };
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    // As glob(3): a leading dot is matched only by a pattern's leading dot.
                    if name.starts_with('.') && !text.starts_with('.') {
                        continue;
                    }
                    if matches(&text, &name) {
                        next.push(dir.join(&name));
                    }
                }
            }
            found = next;
        }
        found.retain(|p| p.exists());
        found.sort();
        Ok(found)
    }
}

/// Removes `.` and folds `..` onto its parent, without touching the file system.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn components(p: &Path) -> Vec<String> {
    p.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect()
}

pub(crate) fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Whether `name` matches the glob `pattern` (one path component): `*`, `?`, `[abc]`, `[a-z]`, `[!a]`/`[^a]`,
/// `\` escaping the next character. Iterative with one backtrack point, so it is linear-ish in practice and
/// never recursive.
pub fn matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ni));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                '[' => {
                    if let Some((ok, len)) = class(&p[pi..], n[ni]) {
                        if ok {
                            pi += len;
                            ni += 1;
                            continue;
                        }
                    } else if n[ni] == '[' {
                        pi += 1;
                        ni += 1;
                        continue;
                    }
                }
                '\\' if pi + 1 < p.len() => {
                    if p[pi + 1] == n[ni] {
                        pi += 2;
                        ni += 1;
                        continue;
                    }
                }
                c => {
                    if c == n[ni] {
                        pi += 1;
                        ni += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, sn)) => {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// A `[...]` class at the start of `p`: whether `c` is in it, and the class's length; `None` if unclosed.
fn class(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(1), Some('!' | '^'));
    if negate {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            return Some((hit != negate, i + 1));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            if p[i] <= c && c <= p[i + 2] {
                hit = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                hit = true;
            }
            i += 1;
        }
    }
    None
}

/// Expands csh-style braces (`{a,b}c` -> `ac`, `bc`; nested too), at most `max` results (more is an error).
pub fn expand_braces(pattern: &str, max: usize) -> Result<Vec<String>, String> {
    let mut done = Vec::new();
    let mut work = vec![pattern.to_owned()];
    while let Some(p) = work.pop() {
        match first_brace_group(&p) {
            None => done.push(p),
            Some((open, close, alternatives)) => {
                for alt in alternatives.into_iter().rev() {
                    work.push(format!("{}{}{}", &p[..open], alt, &p[close + 1..]));
                }
            }
        }
        if done.len() + work.len() > max {
            return Err(format!(
                "the brace expression in {pattern:?} expands to more than {max} patterns"
            ));
        }
    }
    Ok(done)
}

/// The first top-level `{...}` group containing a comma: its byte offsets and its alternatives.
fn first_brace_group(p: &str) -> Option<(usize, usize, Vec<String>)> {
    let bytes = p.as_bytes();
    let mut start = 0;
    while let Some(off) = p[start..].find('{') {
        let open = start + off;
        let mut depth = 0usize;
        let mut parts = Vec::new();
        let mut last = open + 1;
        for (i, b) in bytes.iter().enumerate().skip(open) {
            match b {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        parts.push(p[last..i].to_owned());
                        if parts.len() > 1 {
                            return Some((open, i, parts));
                        }
                        break;
                    }
                }
                b',' if depth == 1 => {
                    parts.push(p[last..i].to_owned());
                    last = i + 1;
                }
                _ => {}
            }
        }
        start = open + 1;
    }
    None
}
