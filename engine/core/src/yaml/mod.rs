//! The YAML document tree every manifest, cloud config, ops file and vars file is read into.
//!
//! A [`Node`] is a YAML value plus the place it came from ([`Span`]: file, line, column), so
//! that an error found after ops files and variables have been applied still points at the
//! line a user wrote. Scalars are resolved the way bosh-cli's YAML library (go-yaml v2)
//! resolves them (`yes` is a boolean, `1_000` is an integer, `1.0` is a float), so that
//! `director interpolate` prints what `bosh interpolate` prints.
//!
//! Invariant: this module does no IO; callers hand it text and a file name.

mod emit;
mod parse;
mod path;

pub use emit::{emit, emit_to, go_key_order};
pub use parse::{parse, parse_document};
pub use path::{PathSegment, YamlPath};

pub use crate::diagnostics::Span;

/// A YAML value with its origin.
#[derive(Clone, Debug)]
pub struct Node {
    /// The value.
    pub value: Value,
    /// Where the value was written.
    pub span: Span,
    /// True when the value (or the string it is part of) came from a `((variable))`: such
    /// values may be secrets and are redacted in diffs.
    pub from_variable: bool,
}

/// The kinds of YAML values, after go-yaml v2 scalar resolution.
#[derive(Clone, Debug)]
pub enum Value {
    /// `~`, `null` or an empty value.
    Null,
    /// `true`, `yes`, `on`, …
    Bool(bool),
    /// A 64-bit integer (decimal, `0x`, `0o`, `0b` or leading-zero octal; `_` allowed).
    Int(i64),
    /// A float (`1.5`, `1e3`, `.inf`, `.nan`).
    Float(f64),
    /// A string (quoted, block, or a plain scalar that is nothing else).
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in document order.
    Map(Map),
}

/// A YAML mapping that keeps its keys in the order they were written.
#[derive(Clone, Debug, Default)]
pub struct Map {
    entries: Vec<(Node, Node)>,
}

impl Map {
    /// An empty mapping.
    pub fn new() -> Map {
        Map {
            entries: Vec::new(),
        }
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries in document order.
    pub fn iter(&self) -> impl Iterator<Item = (&Node, &Node)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// Mutable entries in document order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&mut Node, &mut Node)> {
        self.entries.iter_mut().map(|(k, v)| (k, v))
    }

    /// The entries, owned.
    pub fn into_entries(self) -> Vec<(Node, Node)> {
        self.entries
    }

    /// The string keys, in document order.
    pub fn string_keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().filter_map(|(k, _)| k.as_str())
    }

    /// The value under a string key.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// The key node and value under a string key.
    pub fn get_entry(&self, key: &str) -> Option<(&Node, &Node)> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(k, v)| (k, v))
    }

    /// The mutable value under a string key.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        self.entries
            .iter_mut()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// The value under a key equal to `key` (any scalar kind).
    pub fn get_node(&self, key: &Node) -> Option<&Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.same_value(key))
            .map(|(_, v)| v)
    }

    /// Sets `key` to `value`, replacing an existing entry in place or appending a new one.
    pub fn insert(&mut self, key: Node, value: Node) {
        match self.entries.iter_mut().find(|(k, _)| k.same_value(&key)) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    /// Appends an entry without looking for an existing one (the parser checks duplicates).
    pub(crate) fn push(&mut self, key: Node, value: Node) {
        self.entries.push((key, value));
    }

    /// Removes the entry under a string key, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Node> {
        let index = self
            .entries
            .iter()
            .position(|(k, _)| k.as_str() == Some(key))?;
        Some(self.entries.remove(index).1)
    }

    /// Sorts the entries with `compare` on the keys.
    pub fn sort_by(&mut self, mut compare: impl FnMut(&Node, &Node) -> std::cmp::Ordering) {
        self.entries.sort_by(|a, b| compare(&a.0, &b.0));
    }
}

impl Node {
    /// This tree as JSON (what a CPI, an agent or a template receives): maps keep their
    /// order, keys become their text, floats JSON cannot hold (`.nan`, `.inf`) their YAML text.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as Json;
        match &self.value {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Int(i) => Json::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or_else(
                || Json::String(self.scalar_text().unwrap_or_default()),
                Json::Number,
            ),
            Value::Str(s) => Json::String(s.clone()),
            Value::Seq(items) => Json::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(map) => Json::Object(
                map.iter()
                    .map(|(k, v)| (k.scalar_text().unwrap_or_default(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// A JSON value as a tree whose nodes all carry `span`.
    pub fn from_json(json: &serde_json::Value, span: &Span) -> Node {
        use serde_json::Value as Json;
        let value = match json {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Json::String(s) => Value::Str(s.clone()),
            Json::Array(items) => {
                Value::Seq(items.iter().map(|i| Node::from_json(i, span)).collect())
            }
            Json::Object(object) => {
                let mut map = Map::new();
                for (key, value) in object {
                    map.insert(
                        Node::string(key, span.clone()),
                        Node::from_json(value, span),
                    );
                }
                Value::Map(map)
            }
        };
        Node::new(value, span.clone())
    }

    /// A node with a value and a span.
    pub fn new(value: Value, span: Span) -> Node {
        Node {
            value,
            span,
            from_variable: false,
        }
    }

    /// A string node.
    pub fn string(text: impl Into<String>, span: Span) -> Node {
        Node::new(Value::Str(text.into()), span)
    }

    /// The string, when this is a string node.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The mapping, when this is a mapping node.
    pub fn as_map(&self) -> Option<&Map> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The mutable mapping, when this is a mapping node.
    pub fn as_map_mut(&mut self) -> Option<&mut Map> {
        match &mut self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The sequence, when this is a sequence node.
    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(s) => Some(s),
            _ => None,
        }
    }

    /// The mutable sequence, when this is a sequence node.
    pub fn as_seq_mut(&mut self) -> Option<&mut Vec<Node>> {
        match &mut self.value {
            Value::Seq(s) => Some(s),
            _ => None,
        }
    }

    /// Whether this is `null`.
    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// Looks up a string key when this is a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?.get(key)
    }

    /// Equality of values, ignoring spans and variable marks (floats compare by bits, so
    /// that `.nan` equals itself and a document equals its own copy).
    pub fn same_value(&self, other: &Node) -> bool {
        match (&self.value, &other.value) {
            (Value::Null, Value::Null) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            (Value::Str(a), Value::Str(b)) => a == b,
            (Value::Seq(a), Value::Seq(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same_value(y))
            }
            (Value::Map(a), Value::Map(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .all(|(k, v)| b.get_node(k).is_some_and(|w| v.same_value(w)))
            }
            _ => false,
        }
    }

    /// Marks this node and everything below it as coming from a variable.
    pub fn mark_from_variable(&mut self) {
        self.from_variable = true;
        match &mut self.value {
            Value::Seq(items) => items.iter_mut().for_each(Node::mark_from_variable),
            Value::Map(map) => map.iter_mut().for_each(|(_, v)| v.mark_from_variable()),
            _ => {}
        }
    }

    /// Moves every span in this subtree to `span` (used when a value is copied in from a
    /// variable, so errors point at the placeholder rather than at the vars file).
    pub fn respan(&mut self, span: &Span) {
        self.span = span.clone();
        match &mut self.value {
            Value::Seq(items) => items.iter_mut().for_each(|n| n.respan(span)),
            Value::Map(map) => map.iter_mut().for_each(|(k, v)| {
                k.respan(span);
                v.respan(span);
            }),
            _ => {}
        }
    }

    /// A short description of the kind of value, for error messages ("a map", "a string").
    pub fn kind(&self) -> &'static str {
        self.value.kind()
    }

    /// A one-line rendering of a scalar for error messages (`"three"`, `12`, `a map`).
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Null => "null".to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => emit::format_float(*f),
            Value::Str(s) => {
                let shown: String = s.chars().take(60).collect();
                let ellipsis = if s.chars().count() > 60 { "…" } else { "" };
                format!("{:?}", format!("{shown}{ellipsis}"))
            }
            Value::Seq(_) | Value::Map(_) => self.kind().to_string(),
        }
    }

    /// The text a scalar stands for when it is put into a larger string (`((port))` in
    /// `host:((port))`) or compared with a go-patch `name=value` token.
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::Null => None,
            Value::Bool(b) => Some(b.to_string()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(emit::format_float(*f)),
            Value::Str(s) => Some(s.clone()),
            Value::Seq(_) | Value::Map(_) => None,
        }
    }
}

impl Value {
    /// A short description of the kind of value, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Seq(_) => "an array",
            Value::Map(_) => "a map",
        }
    }
}
