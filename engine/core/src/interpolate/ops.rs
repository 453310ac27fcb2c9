//! go-patch ops files: parsing op definitions and applying `replace`, `remove` and `test`.
//!
//! Semantics follow go-patch (what bosh-cli applies for `-o`); errors say which op of which
//! file failed, at which pointer, and where the value it stumbled on was written.

use std::fmt;

use super::pointer::{Modifier, Pointer, Token};
use crate::diagnostics::{Diagnostic, Diagnostics};
use crate::yaml::{Map, Node, Span, Value};

/// What an op does.
#[derive(Clone, Debug)]
pub enum OpKind {
    /// Set the value at the pointer (creating optional parts).
    Replace(Node),
    /// Remove the value at the pointer.
    Remove,
    /// Fail unless the value at the pointer equals this one.
    Test(Node),
    /// Fail unless nothing is at the pointer.
    TestAbsent,
}

/// One op of an ops file.
#[derive(Clone, Debug)]
pub struct Op {
    /// What it does.
    pub kind: OpKind,
    /// Where it applies.
    pub path: Pointer,
    /// A custom error message (`error:`) shown when the op fails.
    pub error: Option<String>,
    /// Where the op was written.
    pub span: Span,
    /// Its index in its file.
    pub index: usize,
}

impl Op {
    fn type_name(&self) -> &'static str {
        match self.kind {
            OpKind::Replace(_) => "replace",
            OpKind::Remove => "remove",
            OpKind::Test(_) | OpKind::TestAbsent => "test",
        }
    }
}

/// The ops of one or more files, in the order they apply.
#[derive(Clone, Debug, Default)]
pub struct Ops {
    ops: Vec<Op>,
}

impl Ops {
    /// No ops.
    pub fn new() -> Ops {
        Ops::default()
    }

    /// Reads the op definitions of one file: a YAML list of maps with `type`, `path` and
    /// `value` (an empty file has none). Every malformed op is reported.
    pub fn from_node(node: &Node) -> Result<Ops, Diagnostics> {
        let mut diagnostics = Diagnostics::new();
        let items: &[Node] = match &node.value {
            Value::Null => &[],
            Value::Seq(items) => items,
            _ => {
                diagnostics.error(
                    &node.span,
                    "",
                    format!(
                        "expected an ops file (a list of operations), found {}",
                        node.kind()
                    ),
                );
                return Err(diagnostics);
            }
        };
        let mut ops = Vec::new();
        for (index, item) in items.iter().enumerate() {
            match parse_op(item, index) {
                Ok(op) => ops.push(op),
                Err(diagnostic) => diagnostics.push(diagnostic),
            }
        }
        if diagnostics.has_errors() {
            Err(diagnostics)
        } else {
            Ok(Ops { ops })
        }
    }

    /// Appends the ops of another file.
    pub fn extend(&mut self, other: Ops) {
        self.ops.extend(other.ops);
    }

    /// The ops.
    pub fn iter(&self) -> impl Iterator<Item = &Op> {
        self.ops.iter()
    }

    /// How many ops there are.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Applies every op in order; stops at the first that fails.
    pub fn apply(&self, mut doc: Node) -> Result<Node, Diagnostic> {
        for op in &self.ops {
            doc = apply_op(op, doc)?;
        }
        Ok(doc)
    }
}

fn parse_op(item: &Node, index: usize) -> Result<Op, Diagnostic> {
    let path_label = format!("[{index}]");
    let Some(map) = item.as_map() else {
        return Err(Diagnostic::error(
            &item.span,
            path_label,
            format!(
                "expected an operation (a map with type, path and value), found {}",
                item.kind()
            ),
        ));
    };
    let type_node = map.get("type");
    let op_type = match type_node {
        None => {
            return Err(Diagnostic::error(
                &item.span,
                path_label,
                "missing type (expected 'replace', 'remove' or 'test')",
            ));
        }
        Some(node) => match node.as_str() {
            Some(t @ ("replace" | "remove" | "test")) => t,
            _ => {
                return Err(Diagnostic::error(
                    &node.span,
                    format!("{path_label}.type"),
                    format!(
                        "unknown operation type {} (expected 'replace', 'remove' or 'test')",
                        node.describe()
                    ),
                ));
            }
        },
    };
    let label = format!("{path_label} ({op_type})");
    let Some(path_node) = map.get("path") else {
        return Err(Diagnostic::error(&item.span, label, "missing path"));
    };
    let Some(path_text) = path_node.as_str() else {
        return Err(Diagnostic::error(
            &path_node.span,
            format!("{path_label}.path"),
            format!(
                "expected a path such as /instance_groups/name=web, found {}",
                path_node.describe()
            ),
        ));
    };
    let path = Pointer::parse(path_text).map_err(|message| {
        Diagnostic::error(
            &path_node.span,
            format!("{path_label}.path"),
            format!("invalid path {path_text:?}: {message}"),
        )
    })?;
    // As go-patch, whose `Value` is a pointer that YAML's null leaves nil: `value: null`,
    // `value: ~` and an empty `value:` are no value at all.
    let written_null = map.get("value").filter(|v| v.is_null());
    let value = map.get("value").filter(|v| !v.is_null());
    let absent = map.get("absent");
    let kind = match op_type {
        "replace" => match (value, written_null) {
            (Some(value), _) => OpKind::Replace(value.clone()),
            (None, Some(null)) => {
                return Err(Diagnostic::error(
                    &null.span,
                    label,
                    "missing value: go-patch reads 'value: null' as no value (to delete the key, use type: remove)",
                ));
            }
            (None, None) => return Err(Diagnostic::error(&item.span, label, "missing value")),
        },
        "remove" => {
            if let Some(value) = value {
                return Err(Diagnostic::error(
                    &value.span,
                    label,
                    "a remove operation cannot have a value",
                ));
            }
            OpKind::Remove
        }
        _ => match (value, absent.map(|a| &a.value)) {
            (Some(_), Some(Value::Bool(true))) => {
                return Err(Diagnostic::error(
                    &item.span,
                    label,
                    "a test operation takes either value or absent: true, not both",
                ));
            }
            (Some(value), _) => OpKind::Test(value.clone()),
            (None, Some(Value::Bool(true))) => OpKind::TestAbsent,
            (None, _) => {
                return Err(Diagnostic::error(
                    &item.span,
                    label,
                    "missing value (or absent: true)",
                ));
            }
        },
    };
    let error = match map.get("error") {
        None => None,
        Some(node) => match node.as_str() {
            Some(text) => Some(text.to_string()),
            None => {
                return Err(Diagnostic::error(
                    &node.span,
                    format!("{path_label}.error"),
                    format!("expected a message string, found {}", node.describe()),
                ));
            }
        },
    };
    Ok(Op {
        kind,
        path,
        error,
        span: item.span.clone(),
        index,
    })
}

/// Why a pointer could not be followed.
#[derive(Debug)]
pub(crate) struct PatchError {
    message: String,
    /// Where the value that did not fit was written, when known.
    found_at: Option<Span>,
    /// For a missing key or index: the pointer that was not there.
    missing: Option<String>,
    /// What the user can write instead.
    hint: Option<String>,
}

impl PatchError {
    fn new(message: String, found_at: Option<&Span>) -> PatchError {
        PatchError {
            message,
            found_at: found_at.cloned(),
            missing: None,
            hint: None,
        }
    }

    fn missing(message: String, found_at: &Span, path: &Pointer) -> PatchError {
        PatchError {
            message,
            found_at: Some(found_at.clone()),
            missing: Some(path.to_string()),
            hint: None,
        }
    }
}

impl fmt::Display for PatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(span) = self.found_at.as_ref().filter(|s| s.has_position()) {
            write!(f, " (the value there is from {span})")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "; {hint}")?;
        }
        Ok(())
    }
}

/// `here` could not be followed because its parent is not a map or an array.
fn mismatch(expected: &str, here: &Pointer, found: &Node) -> PatchError {
    let parent = here.prefix(here.tokens().len().saturating_sub(1));
    let parent = if parent.is_root() {
        "/".to_string()
    } else {
        parent.to_string()
    };
    let message = format!(
        "expected to find {expected} at path '{parent}' (to follow '{here}') but found {}",
        found.kind()
    );
    let mut error = PatchError::new(message, Some(&found.span));
    if expected == "a map" && matches!(found.value, Value::Seq(_)) {
        error.hint = Some(match here.tokens().last() {
            Some(Token::Key { key, .. }) if key == "-" => {
                "'-' (after the last item) can only be the last token of a path".to_string()
            }
            _ => "pick an item of an array with an index (/0) or a match (/name=VALUE)".to_string(),
        });
    }
    error
}

fn not_exactly_one(here: &Pointer, count: usize, at: &Span) -> PatchError {
    PatchError::new(
        format!(
            "expected to find exactly one matching array item for path '{here}' but found {count}"
        ),
        Some(at),
    )
}

fn seq_mut<'a>(node: &'a mut Node, here: &Pointer) -> Result<&'a mut Vec<Node>, PatchError> {
    if !matches!(node.value, Value::Seq(_)) {
        return Err(mismatch("an array", here, node));
    }
    match &mut node.value {
        Value::Seq(items) => Ok(items),
        _ => Err(mismatch(
            "an array",
            here,
            &Node::new(Value::Null, Span::synthetic("")),
        )),
    }
}

fn map_mut<'a>(node: &'a mut Node, here: &Pointer) -> Result<&'a mut Map, PatchError> {
    if !matches!(node.value, Value::Map(_)) {
        return Err(mismatch("a map", here, node));
    }
    match &mut node.value {
        Value::Map(map) => Ok(map),
        _ => Err(mismatch(
            "a map",
            here,
            &Node::new(Value::Null, Span::synthetic("")),
        )),
    }
}

fn missing_key(key: &str, path: &Pointer, map: &Map, at: &Span) -> PatchError {
    let mut keys: Vec<&str> = map.string_keys().collect();
    keys.sort_unstable();
    let siblings = if keys.is_empty() {
        "found no other map keys".to_string()
    } else {
        format!("found map keys: '{}'", keys.join("', '"))
    };
    PatchError::missing(
        format!("expected to find a map key '{key}' for path '{path}' ({siblings})"),
        at,
        path,
    )
}

fn missing_index(index: i64, len: usize, path: &Pointer, at: &Span) -> PatchError {
    PatchError::missing(
        format!(
            "expected to find array index '{index}' but found array of length '{len}' for path '{path}'"
        ),
        at,
        path,
    )
}

fn concrete_index(
    index: i64,
    modifiers: &[Modifier],
    len: usize,
    path: &Pointer,
    at: &Span,
) -> Result<usize, PatchError> {
    let mut result = index;
    for modifier in modifiers {
        match modifier {
            Modifier::Prev => result -= 1,
            Modifier::Next => result += 1,
            Modifier::Before | Modifier::After => {
                return Err(PatchError::new(
                    format!(
                        "modifiers 'before' and 'after' only apply to the last token of a replace (path '{path}')"
                    ),
                    None,
                ));
            }
        }
    }
    let len_i = i64::try_from(len).unwrap_or(i64::MAX);
    if result >= len_i || -result > len_i {
        return Err(missing_index(result, len, path, at));
    }
    if result < 0 {
        result += len_i;
    }
    Ok(usize::try_from(result).unwrap_or(0))
}

/// Where a replace puts its value in an array: over an item, or inserted before it.
struct Insertion {
    position: usize,
    insert: bool,
}

fn concrete_insertion(
    index: i64,
    modifiers: &[Modifier],
    len: usize,
    path: &Pointer,
    at: &Span,
) -> Result<Insertion, PatchError> {
    let mut before = false;
    let mut after = false;
    let mut moves = Vec::new();
    for modifier in modifiers {
        if before || after {
            return Err(PatchError::new(
                format!("expected no modifiers after 'before' or 'after' in path '{path}'"),
                None,
            ));
        }
        match modifier {
            Modifier::Before => before = true,
            Modifier::After => after = true,
            other => moves.push(*other),
        }
    }
    let mut position = concrete_index(index, &moves, len, path, at)?;
    if after && position != len {
        position += 1;
    }
    Ok(Insertion {
        position,
        insert: before || after,
    })
}

fn matching_indices(items: &[Node], key: &str, value: &str) -> Vec<usize> {
    items
        .iter()
        .enumerate()
        .filter(|(_, item)| item.get(key).and_then(Node::as_str) == Some(value))
        .map(|(i, _)| i)
        .collect()
}

fn apply_op(op: &Op, doc: Node) -> Result<Node, Diagnostic> {
    let result = match &op.kind {
        OpKind::Replace(value) => replace(doc, &op.path, value),
        OpKind::Remove => remove(doc, &op.path),
        OpKind::Test(expected) => match find(&doc, &op.path) {
            Ok(found)
                if found.as_ref().is_some_and(|f| f.same_value(expected))
                    || (found.is_none() && expected.is_null()) =>
            {
                Ok(doc)
            }
            Ok(_) => Err(PatchError::new(
                format!(
                    "found a value at '{}' that does not match the expected value",
                    op.path
                ),
                None,
            )),
            Err(e) => Err(e),
        },
        OpKind::TestAbsent => match find(&doc, &op.path) {
            Ok(None) => Ok(doc),
            Ok(Some(_)) => Err(PatchError::new(
                format!("expected not to find '{}'", op.path),
                None,
            )),
            Err(e) if e.missing.as_deref() == Some(op.path.to_string().as_str()) => Ok(doc),
            Err(e) => Err(e),
        },
    };
    result.map_err(|error| {
        let detail = match &op.error {
            Some(custom) => format!("{custom}: {error}"),
            None => error.to_string(),
        };
        let shown = if op.path.is_root() {
            "''".to_string()
        } else {
            op.path.to_string()
        };
        Diagnostic::error(
            &op.span,
            format!("operation [{}] ({} {shown})", op.index, op.type_name()),
            detail,
        )
    })
}

/// Replaces (or inserts) at `path`, creating optional parts.
fn replace(mut doc: Node, path: &Pointer, value: &Node) -> Result<Node, PatchError> {
    let tokens = path.tokens();
    if tokens.is_empty() {
        return Ok(value.clone());
    }
    let mut current = &mut doc;
    for (i, token) in tokens.iter().enumerate() {
        let is_last = i + 1 == tokens.len();
        let here = path.prefix(i + 1);
        match token {
            Token::Index { index, modifiers } => {
                let span = current.span.clone();
                let items = seq_mut(current, &here)?;
                if is_last {
                    let at = concrete_insertion(*index, modifiers, items.len(), &here, &span)?;
                    if at.insert {
                        items.insert(at.position, value.clone());
                    } else {
                        items[at.position] = value.clone();
                    }
                    return Ok(doc);
                }
                let position = concrete_index(*index, modifiers, items.len(), &here, &span)?;
                current = &mut items[position];
            }
            Token::AfterLast => {
                let items = seq_mut(current, &here)?;
                if !is_last {
                    return Err(PatchError::new(
                        format!(
                            "expected the after-last-index token '-' to be last in path '{path}'"
                        ),
                        None,
                    ));
                }
                items.push(value.clone());
                return Ok(doc);
            }
            Token::Matching {
                key,
                value: wanted,
                optional,
                modifiers,
            } => {
                let span = current.span.clone();
                let items = seq_mut(current, &here)?;
                let found = matching_indices(items, key, wanted);
                if *optional && found.is_empty() {
                    if is_last {
                        items.push(value.clone());
                        return Ok(doc);
                    }
                    let mut item = Map::new();
                    item.insert(
                        Node::string(key.clone(), value.span.clone()),
                        Node::string(wanted.clone(), value.span.clone()),
                    );
                    items.push(Node::new(Value::Map(item), value.span.clone()));
                    let last = items.len() - 1;
                    current = &mut items[last];
                    continue;
                }
                if found.len() != 1 {
                    let mut error = not_exactly_one(&here, found.len(), &span);
                    if found.is_empty() {
                        error.hint = Some(format!(
                            "to append the item when it is missing, mark it optional: '{}'",
                            path.with_optional_at(i)
                        ));
                    }
                    return Err(error);
                }
                if is_last {
                    let at = concrete_insertion(
                        i64::try_from(found[0]).unwrap_or(0),
                        modifiers,
                        items.len(),
                        &here,
                        &span,
                    )?;
                    if at.insert {
                        items.insert(at.position, value.clone());
                    } else {
                        items[at.position] = value.clone();
                    }
                    return Ok(doc);
                }
                let position = concrete_index(
                    i64::try_from(found[0]).unwrap_or(0),
                    modifiers,
                    items.len(),
                    &here,
                    &span,
                )?;
                current = &mut items[position];
            }
            Token::Key { key, optional } => {
                let span = current.span.clone();
                let map = map_mut(current, &here)?;
                let found = map.get(key).is_some();
                if !found && !optional {
                    let mut error = missing_key(key, &here, map, &span);
                    error.hint = Some(format!(
                        "to create it, mark it optional: '{}'",
                        path.with_optional_at(i)
                    ));
                    return Err(error);
                }
                if is_last {
                    map.insert(Node::string(key.clone(), value.span.clone()), value.clone());
                    return Ok(doc);
                }
                if !found {
                    let empty = match &tokens[i + 1] {
                        Token::AfterLast | Token::Matching { .. } => Value::Seq(Vec::new()),
                        Token::Key { .. } => Value::Map(Map::new()),
                        Token::Index { .. } => {
                            return Err(PatchError::new(
                                format!(
                                    "expected to find key, matching index or after last index token at path '{}'",
                                    path.prefix(i + 2)
                                ),
                                None,
                            ));
                        }
                    };
                    map.insert(
                        Node::string(key.clone(), value.span.clone()),
                        Node::new(empty, value.span.clone()),
                    );
                }
                current = map
                    .get_mut(key)
                    .expect("the key was found or inserted above");
            }
        }
    }
    Ok(doc)
}

/// Removes the value at `path`; optional parts that are missing leave the document as it is.
fn remove(mut doc: Node, path: &Pointer) -> Result<Node, PatchError> {
    let tokens = path.tokens();
    if tokens.is_empty() {
        return Err(PatchError::new(
            "cannot remove the entire document".to_string(),
            None,
        ));
    }
    let mut current = &mut doc;
    for (i, token) in tokens.iter().enumerate() {
        let is_last = i + 1 == tokens.len();
        let here = path.prefix(i + 1);
        match token {
            Token::Index { index, modifiers } => {
                let span = current.span.clone();
                let items = seq_mut(current, &here)?;
                let position = concrete_index(*index, modifiers, items.len(), &here, &span)?;
                if is_last {
                    items.remove(position);
                    return Ok(doc);
                }
                current = &mut items[position];
            }
            Token::Matching {
                key,
                value,
                optional,
                modifiers,
            } => {
                let span = current.span.clone();
                let items = seq_mut(current, &here)?;
                let found = matching_indices(items, key, value);
                if *optional && found.is_empty() {
                    return Ok(doc);
                }
                if found.len() != 1 {
                    return Err(not_exactly_one(&here, found.len(), &span));
                }
                let position = concrete_index(
                    i64::try_from(found[0]).unwrap_or(0),
                    modifiers,
                    items.len(),
                    &here,
                    &span,
                )?;
                if is_last {
                    items.remove(position);
                    return Ok(doc);
                }
                current = &mut items[position];
            }
            Token::Key { key, optional } => {
                let span = current.span.clone();
                let map = map_mut(current, &here)?;
                if map.get(key).is_none() {
                    if *optional {
                        return Ok(doc);
                    }
                    return Err(missing_key(key, &here, map, &span));
                }
                if is_last {
                    map.remove(key);
                    return Ok(doc);
                }
                current = map.get_mut(key).expect("the key was found above");
            }
            Token::AfterLast => {
                return Err(PatchError::new(
                    format!(
                        "expected not to find the after-last-index token '-' in path '{here}' of a remove"
                    ),
                    None,
                ));
            }
        }
    }
    Ok(doc)
}

/// Finds the value at `path`; `Ok(None)` when an optional part is missing.
pub(crate) fn find<'a>(doc: &'a Node, path: &Pointer) -> Result<Option<&'a Node>, PatchError> {
    let mut current = doc;
    for (i, token) in path.tokens().iter().enumerate() {
        let here = path.prefix(i + 1);
        match token {
            Token::Index { index, modifiers } => {
                let Value::Seq(items) = &current.value else {
                    return Err(mismatch("an array", &here, current));
                };
                let position =
                    concrete_index(*index, modifiers, items.len(), &here, &current.span)?;
                current = &items[position];
            }
            Token::Matching {
                key,
                value,
                optional,
                modifiers,
            } => {
                let Value::Seq(items) = &current.value else {
                    return Err(mismatch("an array", &here, current));
                };
                let found = matching_indices(items, key, value);
                if *optional && found.is_empty() {
                    return Ok(None);
                }
                if found.len() != 1 {
                    return Err(not_exactly_one(&here, found.len(), &current.span));
                }
                let position = concrete_index(
                    i64::try_from(found[0]).unwrap_or(0),
                    modifiers,
                    items.len(),
                    &here,
                    &current.span,
                )?;
                current = &items[position];
            }
            Token::Key { key, optional } => {
                let Value::Map(map) = &current.value else {
                    return Err(mismatch("a map", &here, current));
                };
                match map.get(key) {
                    Some(next) => current = next,
                    None if *optional => return Ok(None),
                    None => return Err(missing_key(key, &here, map, &current.span)),
                }
            }
            Token::AfterLast => {
                return Err(PatchError::new(
                    format!("expected not to find the after-last-index token '-' in path '{here}'"),
                    None,
                ));
            }
        }
    }
    Ok(Some(current))
}

/// Finds the value at `path` for `--path` and `((var.sub.key))` lookups.
pub fn find_value<'a>(doc: &'a Node, path: &Pointer) -> Result<Option<&'a Node>, String> {
    find(doc, path).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::{emit, parse};

    fn check(doc: &str, ops: &str, expected: &str) {
        let doc = parse(doc, "doc.yml").unwrap();
        let ops = Ops::from_node(&parse(ops, "ops.yml").unwrap()).unwrap();
        let result = ops
            .apply(doc)
            .map(|n| emit(&n))
            .unwrap_or_else(|e| format!("error: {e}"));
        assert_eq!(result, expected);
    }

    #[test]
    fn replace_creates_optional_parts() {
        check(
            "a: {}\n",
            "- {type: replace, path: /a/b?/c, value: 1}\n",
            "a:\n  b:\n    c: 1\n",
        );
        check(
            "a: []\n",
            "- {type: replace, path: /a/name=x?/v, value: 1}\n",
            "a:\n- name: x\n  v: 1\n",
        );
        check(
            "a: {}\n",
            "- {type: replace, path: /a/list?/-, value: 1}\n",
            "a:\n  list:\n  - 1\n",
        );
    }

    #[test]
    fn replace_inserts_with_before_and_after() {
        check(
            "a: [1, 2, 3]\n",
            "- {type: replace, path: /a/1:before, value: x}\n",
            "a:\n- 1\n- x\n- 2\n- 3\n",
        );
        check(
            "a: [1, 2, 3]\n",
            "- {type: replace, path: /a/1:after, value: x}\n",
            "a:\n- 1\n- 2\n- x\n- 3\n",
        );
        check(
            "a: [1, 2, 3]\n",
            "- {type: replace, path: /a/-1, value: x}\n",
            "a:\n- 1\n- 2\n- x\n",
        );
        check(
            "a: [{name: p}, {name: q}]\n",
            "- {type: replace, path: /a/name=q:prev, value: {name: r}}\n",
            "a:\n- name: r\n- name: q\n",
        );
    }

    #[test]
    fn remove_ignores_missing_optional_parts() {
        check(
            "a: {b: 1}\n",
            "- {type: remove, path: /a/c?}\n",
            "a:\n  b: 1\n",
        );
        check(
            "a: [{name: x}]\n",
            "- {type: remove, path: /a/name=y?}\n",
            "a:\n- name: x\n",
        );
        check(
            "a: [{name: x}, {name: z}]\n",
            "- {type: remove, path: /a/name=x}\n",
            "a:\n- name: z\n",
        );
    }

    #[test]
    fn errors_name_the_op_and_the_path() {
        check(
            "a: {b: 1, c: 2}\n",
            "- {type: replace, path: /a/d/e, value: 1}\n",
            "error: ops.yml:1:3: operation [0] (replace /a/d/e): expected to find a map key 'd' for path '/a/d' (found map keys: 'b', 'c') (the value there is from doc.yml:1:4); to create it, mark it optional: '/a/d?/e'",
        );
        check(
            "a: [{name: x}, {name: x}]\n",
            "- {type: remove, path: /a/name=x}\n",
            "error: ops.yml:1:3: operation [0] (remove /a/name=x): expected to find exactly one matching array item for path '/a/name=x' but found 2 (the value there is from doc.yml:1:4)",
        );
        check(
            "a: 1\n",
            "- {type: replace, path: /a/b, value: 1}\n",
            "error: ops.yml:1:3: operation [0] (replace /a/b): expected to find a map at path '/a' (to follow '/a/b') but found an integer (the value there is from doc.yml:1:4)",
        );
    }

    #[test]
    fn test_ops_check_values() {
        check("a: 1\n", "- {type: test, path: /a, value: 1}\n", "a: 1\n");
        check(
            "a: 1\n",
            "- {type: test, path: /b, absent: true}\n",
            "a: 1\n",
        );
        check(
            "a: 1\n",
            "- {type: test, path: /a, value: 2, error: a must be 2}\n",
            "error: ops.yml:1:3: operation [0] (test /a): a must be 2: found a value at '/a' that does not match the expected value",
        );
    }

    #[test]
    fn a_null_value_is_no_value_as_in_go_patch() {
        let ops = parse(
            "- {type: replace, path: /a, value: null}\n- type: replace\n  path: /b\n  value:\n- {type: test, path: /c, value: ~}\n",
            "ops.yml",
        )
        .unwrap();
        assert_eq!(
            Ops::from_node(&ops).unwrap_err().to_string(),
            "ops.yml:1:36: [0] (replace): missing value: go-patch reads 'value: null' as no value (to delete the key, use type: remove)\n\
             ops.yml:4:8: [1] (replace): missing value: go-patch reads 'value: null' as no value (to delete the key, use type: remove)\n\
             ops.yml:5:3: [2] (test): missing value (or absent: true)"
        );
        // A remove may carry a null value (go-patch sees none); a test may pair it with absent.
        check(
            "a: 1\nb: 2\n",
            "- {type: remove, path: /a, value: null}\n- {type: test, path: /c, value: null, absent: true}\n",
            "b: 2\n",
        );
    }

    #[test]
    fn malformed_ops_are_all_reported() {
        let ops = parse(
            "- {type: replace, path: /a}\n- {type: nope, path: /a}\n- {type: remove, path: a}\n",
            "ops.yml",
        )
        .unwrap();
        let errors = Ops::from_node(&ops).unwrap_err();
        assert_eq!(
            errors.to_string(),
            "ops.yml:1:3: [0] (replace): missing value\n\
             ops.yml:2:10: [1].type: unknown operation type \"nope\" (expected 'replace', 'remove' or 'test')\n\
             ops.yml:3:24: [2].path: invalid path \"a\": expected the path to start with '/'"
        );
    }
}
