//! Text to [`Node`] tree, with go-yaml v2 scalar resolution, anchors, aliases and merge keys.

use std::collections::HashMap;
use std::sync::Arc;

use saphyr_parser::{Event, Parser, ScalarStyle, Span as ParserSpan};

use super::{Map, Node, Span, Value, YamlPath};
use crate::diagnostics::Diagnostic;

/// How deep collections may nest before the input is refused (a guard against stack
/// exhaustion on hostile input; real manifests stay far below it).
const MAX_DEPTH: usize = 256;

/// How many nodes aliases may expand to in total (a guard against "billion laughs").
const MAX_ALIAS_EXPANSION: usize = 1_000_000;

/// Parses the first YAML document of `text`. An empty document is `null`.
pub fn parse(text: &str, file: &str) -> Result<Node, Diagnostic> {
    parse_document(text, Arc::from(file))
}

/// Like [`parse`], with the file name already shared.
pub fn parse_document(text: &str, file: Arc<str>) -> Result<Node, Diagnostic> {
    let mut builder = Builder {
        file,
        stack: Vec::new(),
        anchors: HashMap::new(),
        root: None,
        expanded: 0,
    };
    let parser = Parser::new_from_str(text);
    for event in parser {
        let (event, span) = event.map_err(|e| {
            let marker = e.marker();
            let at = builder.span_at(marker.line(), marker.col());
            let hint = builder
                .unclosed_flow(text, marker.line())
                .unwrap_or_default();
            Diagnostic::error(
                &at,
                builder.current_path(),
                format!("invalid YAML: {}{hint}", e.info()),
            )
        })?;
        if builder.handle(event, span)? {
            break;
        }
    }
    let empty = builder.span_at(1, 0);
    Ok(builder
        .root
        .unwrap_or_else(|| Node::new(Value::Null, empty)))
}

enum Frame {
    Seq {
        node: Node,
        anchor: usize,
    },
    Map {
        node: Node,
        anchor: usize,
        key: Option<Node>,
        key_is_merge: bool,
        merges: Vec<Node>,
    },
}

struct Builder {
    file: Arc<str>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    expanded: usize,
}

impl Builder {
    /// The YAML path of the value being read, from the open collections.
    fn current_path(&self) -> YamlPath {
        let mut path = YamlPath::root();
        for frame in &self.stack {
            path = match frame {
                Frame::Seq { node, .. } => path.index(node.as_seq().map_or(0, <[Node]>::len)),
                Frame::Map { key: Some(key), .. } => {
                    path.key(&key.scalar_text().unwrap_or_default())
                }
                Frame::Map { key: None, .. } => path,
            };
        }
        path
    }

    /// " (the '[' at line 3 column 8 is not closed)" when a flow collection opened on an
    /// earlier line is still open: the usual cause of a confusing error further down.
    fn unclosed_flow(&self, text: &str, error_line: usize) -> Option<String> {
        self.stack.iter().rev().find_map(|frame| {
            let node = match frame {
                Frame::Seq { node, .. } | Frame::Map { node, .. } => node,
            };
            let (line, col) = (node.span.line as usize, node.span.col as usize);
            let opener = text
                .lines()
                .nth(line.checked_sub(1)?)?
                .chars()
                .nth(col.checked_sub(1)?)?;
            (matches!(opener, '[' | '{') && line < error_line)
                .then(|| format!(" (the '{opener}' at line {line} column {col} is not closed)"))
        })
    }

    fn span_at(&self, line: usize, col: usize) -> Span {
        Span {
            file: self.file.clone(),
            line: u32::try_from(line).unwrap_or(u32::MAX),
            col: u32::try_from(col + 1).unwrap_or(u32::MAX),
        }
    }

    fn span(&self, span: ParserSpan) -> Span {
        self.span_at(span.start.line(), span.start.col())
    }

    /// Feeds one event; returns true when the first document is complete.
    fn handle(&mut self, event: Event<'_>, span: ParserSpan) -> Result<bool, Diagnostic> {
        let at = self.span(span);
        match event {
            Event::Nothing | Event::StreamStart | Event::DocumentStart(_) => {}
            Event::StreamEnd | Event::DocumentEnd => return Ok(self.root.is_some()),
            Event::Alias(id) => {
                let Some(target) = self.anchors.get(&id) else {
                    return Err(Diagnostic::error(&at, "", "invalid YAML: unknown alias"));
                };
                self.expanded += count_nodes(target);
                if self.expanded > MAX_ALIAS_EXPANSION {
                    return Err(Diagnostic::error(
                        &at,
                        "",
                        format!("aliases expand to more than {MAX_ALIAS_EXPANSION} values"),
                    ));
                }
                let mut node = target.clone();
                node.respan(&at);
                self.complete(node, false)?;
            }
            Event::Scalar(text, style, anchor, tag) => {
                let merge_key = style == ScalarStyle::Plain && text == "<<" && tag.is_none();
                let value = resolve_scalar(&text, style, tag.as_deref(), &at)?;
                let node = Node::new(value, at);
                if anchor > 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                self.complete(node, merge_key)?;
            }
            Event::SequenceStart(anchor, _) => {
                self.check_depth(&at)?;
                self.stack.push(Frame::Seq {
                    node: Node::new(Value::Seq(Vec::new()), at),
                    anchor,
                });
            }
            Event::MappingStart(anchor, _) => {
                self.check_depth(&at)?;
                self.stack.push(Frame::Map {
                    node: Node::new(Value::Map(Map::new()), at),
                    anchor,
                    key: None,
                    key_is_merge: false,
                    merges: Vec::new(),
                });
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq { node, anchor }) = self.stack.pop() {
                    if anchor > 0 {
                        self.anchors.insert(anchor, node.clone());
                    }
                    self.complete(node, false)?;
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map {
                    mut node,
                    anchor,
                    merges,
                    ..
                }) = self.stack.pop()
                {
                    apply_merges(&mut node, merges)?;
                    if anchor > 0 {
                        self.anchors.insert(anchor, node.clone());
                    }
                    self.complete(node, false)?;
                }
            }
        }
        Ok(false)
    }

    fn check_depth(&self, at: &Span) -> Result<(), Diagnostic> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(Diagnostic::error(
                at,
                "",
                format!("values are nested more than {MAX_DEPTH} levels deep"),
            ));
        }
        Ok(())
    }

    /// Hands a finished node to its parent (or makes it the root).
    fn complete(&mut self, node: Node, merge_key: bool) -> Result<(), Diagnostic> {
        let duplicate = match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
                None
            }
            Some(Frame::Seq { node: seq, .. }) => {
                if let Value::Seq(items) = &mut seq.value {
                    items.push(node);
                }
                None
            }
            Some(Frame::Map {
                node: map,
                key,
                key_is_merge,
                merges,
                ..
            }) => match key.take() {
                None => {
                    *key = Some(node);
                    *key_is_merge = merge_key;
                    None
                }
                Some(k) => {
                    let Value::Map(entries) = &mut map.value else {
                        return Ok(());
                    };
                    if *key_is_merge {
                        merges.push(node);
                        None
                    } else if let Some((first, _)) =
                        entries.iter().find(|(existing, _)| existing.same_value(&k))
                    {
                        Some((k, first.span.line))
                    } else {
                        entries.push(k, node);
                        None
                    }
                }
            },
        };
        match duplicate {
            None => Ok(()),
            Some((key, first_line)) => {
                let path = self
                    .current_path()
                    .key(&key.scalar_text().unwrap_or_default());
                Err(Diagnostic::error(
                    &key.span,
                    path,
                    format!(
                        "duplicate key {} (first defined at line {first_line})",
                        key.describe()
                    ),
                ))
            }
        }
    }
}

/// Applies `<<: *anchor` merges: keys written in the mapping win over merged ones, and
/// earlier merged mappings win over later ones.
fn apply_merges(node: &mut Node, merges: Vec<Node>) -> Result<(), Diagnostic> {
    let Value::Map(map) = &mut node.value else {
        return Ok(());
    };
    for merge in merges {
        let sources: Vec<Node> = match merge.value {
            Value::Map(_) => vec![merge],
            Value::Seq(items) => items,
            _ => {
                return Err(Diagnostic::error(
                    &merge.span,
                    "",
                    "a merge key (<<) needs a map or a list of maps",
                ));
            }
        };
        for source in sources {
            let Value::Map(source_map) = source.value else {
                return Err(Diagnostic::error(
                    &source.span,
                    "",
                    "a merge key (<<) needs a map or a list of maps",
                ));
            };
            for (k, v) in source_map.into_entries() {
                if map.get_node(&k).is_none() {
                    map.push(k, v);
                }
            }
        }
    }
    Ok(())
}

fn count_nodes(node: &Node) -> usize {
    1 + match &node.value {
        Value::Seq(items) => items.iter().map(count_nodes).sum(),
        Value::Map(map) => map
            .iter()
            .map(|(k, v)| count_nodes(k) + count_nodes(v))
            .sum(),
        _ => 0,
    }
}

fn resolve_scalar(
    text: &str,
    style: ScalarStyle,
    tag: Option<&saphyr_parser::Tag>,
    at: &Span,
) -> Result<Value, Diagnostic> {
    if let Some(tag) = tag.filter(|t| t.is_yaml_core_schema()) {
        let wrong = |kind: &str| {
            Diagnostic::error(
                at,
                "",
                format!("cannot read {text:?} as {kind} (tagged !!{})", tag.suffix),
            )
        };
        return match tag.suffix.as_str() {
            "str" | "binary" | "timestamp" => Ok(Value::Str(text.to_string())),
            "int" => match resolve_plain(text) {
                Value::Int(i) => Ok(Value::Int(i)),
                _ => Err(wrong("an integer")),
            },
            "float" => match resolve_plain(text) {
                Value::Int(i) => Ok(Value::Float(i as f64)),
                Value::Float(f) => Ok(Value::Float(f)),
                _ => Err(wrong("a float")),
            },
            "bool" => match resolve_plain(text) {
                Value::Bool(b) => Ok(Value::Bool(b)),
                _ => Err(wrong("a boolean")),
            },
            "null" => Ok(Value::Null),
            _ => Ok(resolve_plain(text)),
        };
    }
    Ok(match style {
        ScalarStyle::Plain => resolve_plain(text),
        _ => Value::Str(text.to_string()),
    })
}

/// Resolves a plain scalar as go-yaml v2 does.
pub(crate) fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            return Value::Bool(true);
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Value::Bool(false);
        }
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        _ => {}
    }
    match text.as_bytes()[0] {
        b'.' => match text.parse::<f64>() {
            Ok(f) if f.is_finite() && is_go_float_syntax(text) => Value::Float(f),
            _ => Value::Str(text.to_string()),
        },
        b'+' | b'-' | b'0'..=b'9' => {
            let plain: String = text.chars().filter(|&c| c != '_').collect();
            if let Some(i) = parse_go_int(&plain) {
                return Value::Int(i);
            }
            if is_yaml_style_float(&plain) {
                if let Ok(f) = plain.parse::<f64>() {
                    if f.is_finite() {
                        return Value::Float(f);
                    }
                }
            }
            Value::Str(text.to_string())
        }
        _ => Value::Str(text.to_string()),
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)`: optional sign, then `0x`, `0o`, `0b`, leading-zero
/// octal, or decimal.
fn parse_go_int(s: &str) -> Option<i64> {
    let (negative, digits) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, body) = if let Some(rest) = digits.strip_prefix("0x").or(digits.strip_prefix("0X"))
    {
        (16, rest)
    } else if let Some(rest) = digits.strip_prefix("0o").or(digits.strip_prefix("0O")) {
        (8, rest)
    } else if let Some(rest) = digits.strip_prefix("0b").or(digits.strip_prefix("0B")) {
        (2, rest)
    } else if digits.len() > 1 && digits.starts_with('0') {
        (8, &digits[1..])
    } else {
        (10, digits)
    };
    if body.is_empty() || !body.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = u64::from_str_radix(body, radix).ok()?;
    if negative {
        i64::try_from(-i128::from(magnitude)).ok()
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// go-yaml v2's float pattern: `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn is_yaml_style_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if matches!(b.first(), Some(b'-' | b'+')) {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    } else {
        if digits(&mut i) == 0 {
            return false;
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            digits(&mut i);
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'-' | b'+')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// Whether Go's `strconv.ParseFloat` accepts a scalar starting with `.` as a plain float.
fn is_go_float_syntax(s: &str) -> bool {
    s.bytes()
        .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> Value {
        parse(text, "t.yml").unwrap().value
    }

    #[test]
    fn resolves_scalars_like_go_yaml_v2() {
        assert!(matches!(value("yes"), Value::Bool(true)));
        assert!(matches!(value("Off"), Value::Bool(false)));
        assert!(matches!(value("'yes'"), Value::Str(_)));
        assert!(matches!(value("50_000"), Value::Int(50000)));
        assert!(matches!(value("0x1F"), Value::Int(31)));
        assert!(matches!(value("017"), Value::Int(15)));
        assert!(matches!(value("08"), Value::Float(f) if f == 8.0));
        assert!(matches!(value("1.0"), Value::Float(f) if f == 1.0));
        assert!(matches!(value(".5"), Value::Float(f) if f == 0.5));
        assert!(matches!(value("1e3"), Value::Float(f) if f == 1000.0));
        assert!(matches!(value("283.1.6"), Value::Str(_)));
        assert!(matches!(value("~"), Value::Null));
        assert!(matches!(value(""), Value::Null));
        assert!(matches!(value("-12"), Value::Int(-12)));
        assert!(matches!(value("1e400"), Value::Str(_)));
        assert!(matches!(value("!!str 12"), Value::Str(_)));
        assert!(matches!(value("t"), Value::Str(_)));
    }

    #[test]
    fn spans_are_one_based() {
        let doc = parse("a:\n  b: three\n", "m.yml").unwrap();
        let b = doc.get("a").unwrap().get("b").unwrap();
        assert_eq!((b.span.line, b.span.col), (2, 6));
    }

    #[test]
    fn merges_and_aliases() {
        let doc = parse("base: &b {k: 1, v: 2}\nother:\n  <<: *b\n  v: 3\n", "m.yml").unwrap();
        let other = doc.get("other").unwrap();
        assert!(matches!(other.get("k").unwrap().value, Value::Int(1)));
        assert!(matches!(other.get("v").unwrap().value, Value::Int(3)));
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let err = parse("a: 1\nb: 2\na: 3\n", "m.yml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "m.yml:3:1: a: duplicate key \"a\" (first defined at line 1)"
        );
    }

    #[test]
    fn syntax_errors_have_places() {
        let err = parse("a: [1, 2\nb: 3\n", "m.yml").unwrap_err();
        assert!(err.to_string().starts_with("m.yml:"), "{err}");
    }
}
