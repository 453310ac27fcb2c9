//! Reading typed values out of a [`Node`] tree while collecting every problem.
//!
//! Each accessor either returns the value or records a diagnostic that names the place, the
//! YAML path, what was expected and what was found, and returns `None`; callers go on, so
//! one run reports every problem of a file. A value that is still a `((placeholder))` (a
//! variable not given offline) is neither checked nor reported: the director resolves it.

use crate::diagnostics::Diagnostics;
use crate::interpolate::placeholders;
use crate::yaml::{Map, Node, Span, Value, YamlPath};

/// A value with the place and path it was read from.
#[derive(Clone, Debug)]
pub struct Spanned<T> {
    /// The value.
    pub value: T,
    /// Where it was written.
    pub span: Span,
    /// Its YAML path.
    pub path: YamlPath,
}

impl<T> Spanned<T> {
    pub(crate) fn new(value: T, node: &Node, path: YamlPath) -> Spanned<T> {
        Spanned {
            value,
            span: node.span.clone(),
            path,
        }
    }
}

impl<T: std::fmt::Display> std::fmt::Display for Spanned<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.value.fmt(f)
    }
}

/// Whether a node is a string that is exactly one `((placeholder))`.
pub(crate) fn is_placeholder(node: &Node) -> bool {
    match node.as_str() {
        Some(text) => {
            let found = placeholders(text);
            found.len() == 1 && found[0].start == 0 && found[0].end == text.len()
        }
        None => false,
    }
}

/// Whether a string still holds a `((placeholder))` anywhere: such a value cannot be parsed
/// further (as an IP, a range) until its variables are given, so checks skip it.
pub(crate) fn has_placeholder(text: &str) -> bool {
    !placeholders(text).is_empty()
}

/// The decoding context: where diagnostics go.
#[derive(Default)]
pub(crate) struct Cx {
    pub diagnostics: Diagnostics,
}

impl Cx {
    pub fn error(&mut self, span: &Span, path: &YamlPath, message: impl Into<String>) {
        self.diagnostics.error(span, path, message);
    }

    pub fn warning(&mut self, span: &Span, path: &YamlPath, message: impl Into<String>) {
        self.diagnostics.warning(span, path, message);
    }

    /// Expects a map; `what` is a phrase such as "an instance group".
    pub fn map<'a>(&mut self, node: &'a Node, path: &YamlPath, what: &str) -> Option<MapView<'a>> {
        match &node.value {
            Value::Map(map) => Some(MapView {
                node,
                map,
                path: path.clone(),
            }),
            _ if is_placeholder(node) => None,
            _ => {
                self.error(
                    &node.span,
                    path,
                    format!("expected {what} (a map), found {}", node.describe()),
                );
                None
            }
        }
    }

    /// Expects a list; `null` counts as empty.
    pub fn list<'a>(&mut self, node: &'a Node, path: &YamlPath, what: &str) -> Option<&'a [Node]> {
        match &node.value {
            Value::Seq(items) => Some(items),
            Value::Null => Some(&[]),
            _ if is_placeholder(node) => None,
            _ => {
                self.error(
                    &node.span,
                    path,
                    format!("expected a list of {what}, found {}", node.describe()),
                );
                None
            }
        }
    }

    /// Expects a string.
    pub fn string(&mut self, node: &Node, path: &YamlPath) -> Option<Spanned<String>> {
        match &node.value {
            _ if is_placeholder(node) => None,
            Value::Str(s) => Some(Spanned::new(s.clone(), node, path.clone())),
            _ => {
                self.error(
                    &node.span,
                    path,
                    format!("expected a string, found {}", node.describe()),
                );
                None
            }
        }
    }

    /// Expects a scalar that reads as text (`version: 12`, `version: "1.2"`).
    pub fn text(&mut self, node: &Node, path: &YamlPath) -> Option<Spanned<String>> {
        if is_placeholder(node) {
            return None;
        }
        match node.scalar_text() {
            Some(text) => Some(Spanned::new(text, node, path.clone())),
            None => {
                self.error(
                    &node.span,
                    path,
                    format!("expected a string or a number, found {}", node.describe()),
                );
                None
            }
        }
    }

    /// Expects a non-negative integer.
    pub fn uint(&mut self, node: &Node, path: &YamlPath) -> Option<Spanned<u64>> {
        match &node.value {
            _ if is_placeholder(node) => None,
            Value::Int(i) if *i >= 0 => Some(Spanned::new(i.unsigned_abs(), node, path.clone())),
            _ => {
                self.error(
                    &node.span,
                    path,
                    format!("expected a non-negative integer, found {}", node.describe()),
                );
                None
            }
        }
    }

    /// Expects a boolean.
    pub fn boolean(&mut self, node: &Node, path: &YamlPath) -> Option<bool> {
        match &node.value {
            _ if is_placeholder(node) => None,
            Value::Bool(b) => Some(*b),
            _ => {
                self.error(
                    &node.span,
                    path,
                    format!("expected true or false, found {}", node.describe()),
                );
                None
            }
        }
    }

    /// Expects a list of strings.
    pub fn strings(&mut self, node: &Node, path: &YamlPath, what: &str) -> Vec<Spanned<String>> {
        let Some(items) = self.list(node, path, what) else {
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| self.string(item, &path.index(i)))
            .collect()
    }
}

/// A map being decoded, with its path.
pub(crate) struct MapView<'a> {
    pub node: &'a Node,
    pub map: &'a Map,
    pub path: YamlPath,
}

impl<'a> MapView<'a> {
    /// The value under `key`; `null` counts as absent.
    pub fn get(&self, key: &str) -> Option<&'a Node> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// The path of `key`.
    pub fn at(&self, key: &str) -> YamlPath {
        self.path.key(key)
    }

    fn missing(&self, cx: &mut Cx, key: &str, expected: &str) {
        cx.error(
            &self.node.span,
            &self.path,
            format!("missing required key '{key}' ({expected})"),
        );
    }

    /// A required string.
    pub fn req_string(&self, cx: &mut Cx, key: &str, expected: &str) -> Option<Spanned<String>> {
        match self.get(key) {
            Some(node) => cx.string(node, &self.at(key)),
            None => {
                self.missing(cx, key, expected);
                None
            }
        }
    }

    /// An optional string.
    pub fn opt_string(&self, cx: &mut Cx, key: &str) -> Option<Spanned<String>> {
        self.get(key)
            .and_then(|node| cx.string(node, &self.at(key)))
    }

    /// A required scalar read as text.
    pub fn req_text(&self, cx: &mut Cx, key: &str, expected: &str) -> Option<Spanned<String>> {
        match self.get(key) {
            Some(node) => cx.text(node, &self.at(key)),
            None => {
                self.missing(cx, key, expected);
                None
            }
        }
    }

    /// A required non-negative integer.
    pub fn req_uint(&self, cx: &mut Cx, key: &str, expected: &str) -> Option<Spanned<u64>> {
        match self.get(key) {
            Some(node) => cx.uint(node, &self.at(key)),
            None => {
                self.missing(cx, key, expected);
                None
            }
        }
    }

    /// An optional non-negative integer.
    pub fn opt_uint(&self, cx: &mut Cx, key: &str) -> Option<Spanned<u64>> {
        self.get(key).and_then(|node| cx.uint(node, &self.at(key)))
    }

    /// An optional boolean.
    pub fn opt_bool(&self, cx: &mut Cx, key: &str) -> Option<bool> {
        self.get(key)
            .and_then(|node| cx.boolean(node, &self.at(key)))
    }

    /// An optional list of strings (absent is empty).
    pub fn strings(&self, cx: &mut Cx, key: &str, what: &str) -> Vec<Spanned<String>> {
        match self.get(key) {
            Some(node) => cx.strings(node, &self.at(key), what),
            None => Vec::new(),
        }
    }

    /// An optional list (absent is empty), with its path.
    pub fn list(&self, cx: &mut Cx, key: &str, what: &str) -> (&'a [Node], YamlPath) {
        let path = self.at(key);
        let items = self
            .get(key)
            .and_then(|node| cx.list(node, &path, what))
            .unwrap_or(&[]);
        (items, path)
    }

    /// An optional map, kept as a tree (properties, env, cloud_properties).
    pub fn tree(&self, cx: &mut Cx, key: &str) -> Option<Node> {
        let node = self.get(key)?;
        cx.map(node, &self.at(key), &format!("'{key}'"))
            .map(|_| node.clone())
    }

    /// Warns about keys that are not in `known`, suggesting the closest known key.
    pub fn unknown_keys(&self, cx: &mut Cx, known: &[&str]) {
        for (key, _) in self.map.iter() {
            let Some(name) = key.as_str() else {
                cx.warning(
                    &key.span,
                    &self.path,
                    format!("unexpected key {}: keys are names", key.describe()),
                );
                continue;
            };
            if known.contains(&name) || is_placeholder(key) {
                continue;
            }
            let hint = match closest(name, known.iter().copied()) {
                Some(candidate) => format!(" (did you mean '{candidate}'?)"),
                None => String::new(),
            };
            cx.warning(
                &key.span,
                &self.path.key(name),
                format!("unknown key '{name}' is ignored{hint}"),
            );
        }
    }
}

/// The known name closest to `name`, when it is close enough to be a likely typo.
pub(crate) fn closest<'k>(name: &str, known: impl IntoIterator<Item = &'k str>) -> Option<&'k str> {
    let limit = (name.chars().count() / 3).max(1);
    known
        .into_iter()
        .map(|candidate| (edit_distance(name, candidate), candidate))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

/// "did you mean" text for a reference to something that is not defined.
pub(crate) fn undefined(kind: &str, name: &str, defined: &[&str], where_: &str) -> String {
    let mut message = format!("{kind} '{name}' is not defined {where_}");
    if defined.is_empty() {
        message.push_str(" (none are defined)");
    } else {
        let mut names = defined.to_vec();
        names.sort_unstable();
        names.dedup();
        let shown: Vec<&str> = names.iter().take(8).copied().collect();
        let more = if names.len() > 8 { ", …" } else { "" };
        message.push_str(&format!(" (defined: {}{more})", shown.join(", ")));
        if let Some(candidate) = closest(name, names.iter().copied()) {
            message.push_str(&format!("; did you mean '{candidate}'?"));
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names() {
        assert_eq!(
            closest("instance", ["instances", "name", "jobs"]),
            Some("instances")
        );
        assert_eq!(closest("zzz", ["instances", "name"]), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
