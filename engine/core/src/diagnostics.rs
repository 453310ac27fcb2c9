//! Diagnostics: problems found in a user's files, each with a place and a YAML path.
//!
//! A [`Diagnostic`] says where (file, line, column), what (the YAML path, e.g.
//! `instance_groups[1].instances`) and what was expected and found. Functions that check
//! input collect every diagnostic of a file into [`Diagnostics`] instead of stopping at the
//! first, so a user fixes a manifest in one round.

use std::fmt;
use std::sync::Arc;

/// Where a node came from: a file (or `-v name=…` flag, or generated value), 1-based line and column.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Span {
    /// The file name as the user gave it, or a description such as `-v internal_ip`.
    pub file: Arc<str>,
    /// 1-based line; 0 when the value has no line (a flag, a generated value).
    pub line: u32,
    /// 1-based column; 0 when the value has no column.
    pub col: u32,
}

impl Span {
    /// A span for a value that has no position in a file, e.g. a `-v` flag.
    pub fn synthetic(origin: &str) -> Span {
        Span {
            file: Arc::from(origin),
            line: 0,
            col: 0,
        }
    }

    /// Whether the span points at a line in a file.
    pub fn has_position(&self) -> bool {
        self.line > 0
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.has_position() {
            write!(f, "{}:{}:{}", self.file, self.line, self.col)
        } else {
            write!(f, "{}", self.file)
        }
    }
}

/// How serious a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The input cannot be used.
    Error,
    /// The input can be used but probably does not say what was meant.
    Warning,
}

/// One problem in one place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Where the problem is; `None` when it is about a whole command line.
    pub span: Option<Span>,
    /// The YAML path of the value (`instance_groups[1].instances`), empty for the document.
    pub path: String,
    /// What was expected and what was found, lowercase, no trailing period.
    pub message: String,
}

impl Diagnostic {
    /// An error at a place.
    pub fn error(span: &Span, path: impl Into<String>, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            span: Some(span.clone()),
            path: path.into(),
            message: message.into(),
        }
    }

    /// A warning at a place.
    pub fn warning(span: &Span, path: impl Into<String>, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(span, path, message)
        }
    }

    /// An error that has no place in a file.
    pub fn general(message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            span: None,
            path: String::new(),
            message: message.into(),
        }
    }

    /// Whether this is an error (not a warning).
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(span) = &self.span {
            write!(f, "{span}: ")?;
        }
        if self.severity == Severity::Warning {
            write!(f, "warning: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for Diagnostic {}

/// Every diagnostic found in a run, in the order of the files and lines they point at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    /// No diagnostics.
    pub fn new() -> Diagnostics {
        Diagnostics::default()
    }

    /// Adds one.
    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.items.push(diagnostic);
    }

    /// Adds an error at a place.
    pub fn error(&mut self, span: &Span, path: impl Into<String>, message: impl Into<String>) {
        self.push(Diagnostic::error(span, path, message));
    }

    /// Adds a warning at a place.
    pub fn warning(&mut self, span: &Span, path: impl Into<String>, message: impl Into<String>) {
        self.push(Diagnostic::warning(span, path, message));
    }

    /// Adds all of another set.
    pub fn extend(&mut self, other: Diagnostics) {
        self.items.extend(other.items);
    }

    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.items.iter().any(Diagnostic::is_error)
    }

    /// Whether there are none at all.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// The diagnostics, sorted by file, line and column (stable for equal places).
    pub fn sorted(mut self) -> Diagnostics {
        self.items.sort_by(|a, b| {
            let key = |d: &Diagnostic| d.span.as_ref().map(|s| (s.file.clone(), s.line, s.col));
            key(a).cmp(&key(b))
        });
        self.items.dedup();
        self
    }

    /// Iterates over them.
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter()
    }

    /// Only the warnings.
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter().filter(|d| !d.is_error())
    }

    /// `Ok(warnings)` when there is no error, else `Err(all)`.
    pub fn into_result(self) -> Result<Diagnostics, Diagnostics> {
        if self.has_errors() {
            Err(self)
        } else {
            Ok(self)
        }
    }
}

impl From<Diagnostic> for Diagnostics {
    fn from(diagnostic: Diagnostic) -> Diagnostics {
        Diagnostics {
            items: vec![diagnostic],
        }
    }
}

impl IntoIterator for Diagnostics {
    type Item = Diagnostic;
    type IntoIter = std::vec::IntoIter<Diagnostic>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.items.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}
