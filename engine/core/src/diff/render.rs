//! YAML fragments of the diff, and shown values as JSON.
//!
//! Every fragment is rendered by the YAML emitter (keys in document order) as a small
//! document of its own — `{key: value}`, `[item]` — and then indented to its place, so
//! quoting, block scalars and go-yaml's unindented sequences are exactly what `bosh int`
//! prints. Nodes handed here are always the redacted ("shown") copies.

use serde_json::{Map as JsonMap, Number, Value as Json};

use super::redact::{REDACTED, REDACTED_YAML, SENTINEL};
use crate::yaml::{Map, Node, Span, Value, emit_to};

fn synthetic(value: Value) -> Node {
    Node::new(value, Span::synthetic("diff"))
}

/// `node` as YAML lines, each indented by `indent` spaces (empty lines stay empty).
fn lines(node: &Node, indent: usize) -> Vec<String> {
    let mut out = String::new();
    emit_to(node, &mut out, false);
    let pad = " ".repeat(indent);
    out.lines()
        .map(|line| {
            let line = line.replace(SENTINEL, REDACTED_YAML);
            if line.is_empty() {
                line
            } else {
                format!("{pad}{line}")
            }
        })
        .collect()
}

/// `key: value` (several lines when the value is a collection or a block scalar).
pub(super) fn entry(key: &Node, value: &Node, indent: usize) -> Vec<String> {
    let mut map = Map::new();
    map.push(key.clone(), value.clone());
    lines(&synthetic(Value::Map(map)), indent)
}

/// `key:`, the context line above changes inside a key's value.
pub(super) fn header(key: &Node, indent: usize) -> Vec<String> {
    let mut out = entry(key, &synthetic(Value::Null), indent);
    if let Some(last) = out.last_mut() {
        if let Some(stripped) = last.strip_suffix(" null") {
            *last = stripped.to_string();
        }
    }
    out
}

/// `- value`, an array item.
pub(super) fn item(value: &Node, indent: usize) -> Vec<String> {
    lines(&synthetic(Value::Seq(vec![value.clone()])), indent)
}

/// `- name: web`, the line that identifies an array item.
pub(super) fn identity(key: &Node, id: &Node, indent: usize) -> Vec<String> {
    let mut map = Map::new();
    map.push(key.clone(), id.clone());
    item(&synthetic(Value::Map(map)), indent)
}

/// A whole document.
pub(super) fn document(node: &Node) -> Vec<String> {
    lines(node, 0)
}

/// A shown value as JSON: maps as objects in document order, redacted leaves as
/// `"<redacted>"`, floats JSON cannot hold (`.nan`, `.inf`) as their YAML text.
pub(super) fn json(node: &Node) -> Json {
    match &node.value {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::Float(f) => Number::from_f64(*f).map_or_else(
            || Json::String(node.scalar_text().unwrap_or_default()),
            Json::Number,
        ),
        Value::Str(s) if s == SENTINEL => Json::String(REDACTED.to_string()),
        Value::Str(s) => Json::String(s.clone()),
        Value::Seq(items) => Json::Array(items.iter().map(json).collect()),
        Value::Map(map) => {
            let mut object = JsonMap::new();
            for (k, v) in map.iter() {
                object.insert(key_text(k), json(v));
            }
            Json::Object(object)
        }
    }
}

/// A map key as text (for JSON objects and go-patch paths).
pub(super) fn key_text(key: &Node) -> String {
    key.scalar_text().unwrap_or_else(|| match key.value {
        Value::Null => "null".to_string(),
        _ => key.describe(),
    })
}
