//! Interpolation: what `bosh interpolate` does to a template.
//!
//! Order, as bosh-cli: apply the ops files (go-patch) in order, then read the `variables`
//! section and resolve every typed definition (the vars store generates the missing ones),
//! then replace every `((placeholder))` in keys and values. A placeholder that is a whole
//! value keeps the variable's type (a map stays a map); inside a larger string only strings
//! and integers may go. Unknown variables are left as they are, unless the caller asks for
//! all of them (`--var-errs`).
//!
//! Invariant: pure apart from the vars store it is handed; the caller saves the store.

mod ops;
mod pointer;
mod vars;

pub use ops::{Op, OpKind, Ops, find_value};
pub use pointer::{Modifier, Pointer, Token};
pub use vars::{Placeholder, VarFlags, VarSource, VarSources, placeholders};

use std::collections::{BTreeSet, HashSet};

use crate::diagnostics::{Diagnostic, Diagnostics};
use crate::variables::{self, VariableDefinition, VarsStore};
use crate::yaml::{Node, PathSegment, Span, Value, YamlPath};

/// What the caller expects of the variables.
#[derive(Clone, Copy, Debug, Default)]
pub struct Expectations {
    /// Fail when a placeholder has no value (`--var-errs`).
    pub all_found: bool,
    /// Fail when a variable given on the command line is not used (`--var-errs-unused`).
    pub all_used: bool,
}

/// Applies `ops` to `doc`, then resolves its variables from `sources` and `store`.
pub fn evaluate(
    doc: Node,
    ops: &Ops,
    sources: &VarSources,
    store: Option<&mut VarsStore>,
    expectations: Expectations,
) -> Result<Node, Diagnostics> {
    let doc = ops.apply(doc)?;
    let definitions = variables::definitions(&doc);
    let mut resolver = Resolver {
        sources,
        store,
        definitions: &definitions,
        used: HashSet::new(),
        missing: BTreeSet::new(),
        diagnostics: Diagnostics::new(),
    };
    for definition in &definitions {
        if definition.kind.is_some() {
            let mut visiting = Vec::new();
            if let Err(e) = resolver.get(&definition.name, &mut visiting) {
                resolver.diagnostics.push(e);
            }
        }
    }
    let mut path = Vec::new();
    let doc = resolver.interpolate(doc, &mut path);
    let mut diagnostics = resolver.diagnostics;
    if expectations.all_found && !resolver.missing.is_empty() {
        let names: Vec<&str> = resolver.missing.iter().map(String::as_str).collect();
        diagnostics.push(Diagnostic::general(format!(
            "expected to find variables: {} (give them with -v, -l, --var-file or --vars-env, or declare them in variables with a --vars-store)",
            names.join(", ")
        )));
    }
    if expectations.all_used {
        let unused: Vec<String> = sources
            .names()
            .into_iter()
            .filter(|name| !resolver.used.contains(name))
            .collect();
        if !unused.is_empty() {
            diagnostics.push(Diagnostic::general(format!(
                "expected to use variables: {} (given but never referenced)",
                unused.join(", ")
            )));
        }
    }
    if diagnostics.has_errors() {
        Err(diagnostics)
    } else {
        Ok(doc)
    }
}

/// Removes from `doc`'s `variables` section every definition whose value is known: given by
/// `sources`, or held in `store` (where evaluation may just have generated it). This is what
/// bosh-cli's `Template.Evaluate` does after interpolating (`varsTracker.FoundVars` in
/// `director/template/template.go`), so that a director does not generate a second value
/// under a name the command line already settled. Definitions still to be generated stay; a
/// section left empty stays, as `variables: []`.
pub fn drop_found_definitions(
    mut doc: Node,
    sources: &VarSources,
    store: Option<&VarsStore>,
) -> Node {
    let found = |name: &str| {
        sources.get(name).is_some() || store.is_some_and(|store| store.get(name).is_some())
    };
    if let Some(items) = doc
        .as_map_mut()
        .and_then(|map| map.get_mut("variables"))
        .and_then(Node::as_seq_mut)
    {
        items.retain(|item| !item.get("name").and_then(Node::as_str).is_some_and(found));
    }
    doc
}

/// Interpolates only the variables of `doc` (no ops, no definitions), e.g. for a cloud config.
pub fn interpolate_vars(doc: Node, sources: &VarSources) -> Result<Node, Diagnostics> {
    evaluate(doc, &Ops::new(), sources, None, Expectations::default())
}

struct Resolver<'a> {
    sources: &'a VarSources,
    store: Option<&'a mut VarsStore>,
    definitions: &'a [VariableDefinition],
    used: HashSet<String>,
    missing: BTreeSet<String>,
    diagnostics: Diagnostics,
}

impl Resolver<'_> {
    /// The value of variable `name`, generating it into the store when it is declared with a
    /// type. `visiting` detects definitions whose options refer to themselves.
    fn get(&mut self, name: &str, visiting: &mut Vec<String>) -> Result<Option<Node>, Diagnostic> {
        let definition = self.definitions.iter().find(|d| d.name == name);
        if visiting.iter().any(|v| v == name) {
            visiting.push(name.to_string());
            let span = definition.map_or_else(|| Span::synthetic("variables"), |d| d.span.clone());
            return Err(Diagnostic::error(
                &span,
                "variables",
                format!(
                    "variable definitions refer to each other in a cycle: {}",
                    visiting.join(" -> ")
                ),
            ));
        }
        if let Some(value) = self.sources.get(name) {
            self.used.insert(name.to_string());
            return Ok(Some(value.clone()));
        }
        if let Some(value) = self.store.as_ref().and_then(|s| s.get(name)) {
            return Ok(Some(value.clone()));
        }
        let (Some(definition), true) = (definition, self.store.is_some()) else {
            self.missing.insert(name.to_string());
            return Ok(None);
        };
        let Some(kind) = definition.kind.clone() else {
            self.missing.insert(name.to_string());
            return Ok(None);
        };
        visiting.push(name.to_string());
        let options = match &definition.options {
            None => None,
            Some(options) => {
                let before = self.missing.len();
                let mut path = Vec::new();
                let options = self.interpolate_scoped(options.clone(), &mut path, visiting);
                if self.missing.len() > before {
                    visiting.pop();
                    self.missing.insert(name.to_string());
                    return Ok(None);
                }
                Some(options)
            }
        };
        let ca = match options
            .as_ref()
            .and_then(|o| o.get("ca"))
            .and_then(Node::as_str)
        {
            Some(ca_name) if kind == "certificate" => match self.get(ca_name, visiting)? {
                Some(ca) => Some(ca),
                None => {
                    visiting.pop();
                    return Err(Diagnostic::error(
                        &definition.span,
                        format!("variables ({name})"),
                        format!(
                            "cannot generate certificate: its CA variable '{ca_name}' is neither given nor declared with a type"
                        ),
                    ));
                }
            },
            _ => None,
        };
        visiting.pop();
        let generated =
            variables::generate(name, &kind, options.as_ref(), ca.as_ref()).map_err(|message| {
                Diagnostic::error(&definition.span, format!("variables ({name})"), message)
            })?;
        if let Some(store) = self.store.as_mut() {
            store.put(name, generated.clone());
        }
        Ok(Some(generated))
    }

    fn interpolate(&mut self, node: Node, path: &mut Vec<PathSegment>) -> Node {
        let mut visiting = Vec::new();
        self.interpolate_scoped(node, path, &mut visiting)
    }

    fn interpolate_scoped(
        &mut self,
        mut node: Node,
        path: &mut Vec<PathSegment>,
        visiting: &mut Vec<String>,
    ) -> Node {
        match node.value {
            Value::Seq(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    path.push(PathSegment::Index(i));
                    out.push(self.interpolate_scoped(item, path, visiting));
                    path.pop();
                }
                node.value = Value::Seq(out);
                node
            }
            Value::Map(map) => {
                let mut out = crate::yaml::Map::new();
                for (key, value) in map.into_entries() {
                    let label = key.scalar_text().unwrap_or_default();
                    path.push(PathSegment::Key(label));
                    let value = self.interpolate_scoped(value, path, visiting);
                    let key = self.interpolate_scoped(key, path, visiting);
                    path.pop();
                    out.insert(key, value);
                }
                node.value = Value::Map(out);
                node
            }
            Value::Str(ref text) if text.contains("((") => {
                let found = placeholders(text);
                if found.is_empty() {
                    return node;
                }
                let whole = found.len() == 1 && found[0].start == 0 && found[0].end == text.len();
                if whole {
                    return match self.lookup(&found[0].name, &node.span, path, visiting) {
                        Some(mut value) => {
                            value.respan(&node.span);
                            value.mark_from_variable();
                            value
                        }
                        None => node,
                    };
                }
                let mut out = String::with_capacity(text.len());
                let mut last = 0;
                let mut replaced = false;
                for placeholder in &found {
                    out.push_str(&text[last..placeholder.start]);
                    last = placeholder.end;
                    match self.lookup(&placeholder.name, &node.span, path, visiting) {
                        None => out.push_str(&text[placeholder.start..placeholder.end]),
                        Some(value) => match &value.value {
                            Value::Str(s) => {
                                out.push_str(s);
                                replaced = true;
                            }
                            Value::Int(i) => {
                                out.push_str(&i.to_string());
                                replaced = true;
                            }
                            _ => {
                                self.diagnostics.error(
                                    &node.span,
                                    YamlPath::from_segments(path),
                                    format!(
                                        "variable (({})) is {}, but only strings and integers can be placed inside a larger string",
                                        placeholder.name,
                                        value.kind()
                                    ),
                                );
                                out.push_str(&text[placeholder.start..placeholder.end]);
                            }
                        },
                    }
                }
                out.push_str(&text[last..]);
                node.value = Value::Str(out);
                if replaced {
                    node.from_variable = true;
                }
                node
            }
            _ => node,
        }
    }

    /// Resolves `name` or `name.sub.key`; records what is missing.
    fn lookup(
        &mut self,
        full_name: &str,
        span: &Span,
        path: &[PathSegment],
        visiting: &mut Vec<String>,
    ) -> Option<Node> {
        let mut parts = full_name.split('.');
        let name = parts.next().unwrap_or_default();
        let value = match self.get(name, visiting) {
            Ok(value) => value?,
            Err(e) => {
                self.diagnostics.push(e);
                return None;
            }
        };
        let keys: Vec<&str> = parts.collect();
        if keys.is_empty() {
            return Some(value);
        }
        match find_sub_value(&value, &keys) {
            Ok(found) => Some(found.clone()),
            Err(message) => {
                self.diagnostics.error(
                    span,
                    YamlPath::from_segments(path),
                    format!("variable (({full_name})): {message}"),
                );
                None
            }
        }
    }
}

/// Follows `.sub.key` parts into a variable's value: map keys, or indexes into arrays.
fn find_sub_value<'a>(value: &'a Node, keys: &[&str]) -> Result<&'a Node, String> {
    let mut current = value;
    let mut walked = String::new();
    for key in keys {
        walked.push('/');
        walked.push_str(key);
        current = match &current.value {
            Value::Seq(items) => match key.parse::<usize>() {
                Ok(i) if i < items.len() => &items[i],
                _ => {
                    return Err(format!(
                        "expected to find array index '{key}' but found array of length '{}' for path '{walked}'",
                        items.len()
                    ));
                }
            },
            Value::Map(map) => match map.get(key).or_else(|| {
                key.parse::<i64>()
                    .ok()
                    .and_then(|i| map.get_node(&Node::new(Value::Int(i), current.span.clone())))
            }) {
                Some(next) => next,
                None => {
                    let mut siblings: Vec<&str> = map.string_keys().collect();
                    siblings.sort_unstable();
                    return Err(format!(
                        "expected to find a map key '{key}' for path '{walked}' (found map keys: '{}')",
                        siblings.join("', '")
                    ));
                }
            },
            _ => {
                return Err(format!(
                    "expected to find a map at path '{walked}' but found {}",
                    current.kind()
                ));
            }
        };
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::{Map, emit, parse};

    fn sources(vars: &str) -> VarSources {
        let mut sources = VarSources::new();
        if let Value::Map(values) = parse(vars, "vars.yml").unwrap().value {
            sources.push(VarSource {
                origin: "-l vars.yml".into(),
                values,
            });
        }
        sources
    }

    fn check(doc: &str, vars: &str, expected: &str) {
        let doc = parse(doc, "doc.yml").unwrap();
        let result = evaluate(
            doc,
            &Ops::new(),
            &sources(vars),
            None,
            Expectations {
                all_found: true,
                all_used: false,
            },
        )
        .map(|n| emit(&n))
        .unwrap_or_else(|e| format!("error: {e}"));
        assert_eq!(result, expected);
    }

    #[test]
    fn whole_values_keep_their_type() {
        check(
            "a: ((m))\nb: ((k))\n",
            "m: {x: 1}\nk: 3\n",
            "a:\n  x: 1\nb: 3\n",
        );
    }

    #[test]
    fn parts_of_strings_take_strings_and_integers() {
        check(
            "url: https://((host)):((port))/\n",
            "host: h\nport: 80\n",
            "url: https://h:80/\n",
        );
        check(
            "url: x((m))\n",
            "m: {a: 1}\n",
            "error: doc.yml:1:6: url: variable ((m)) is a map, but only strings and integers can be placed inside a larger string",
        );
    }

    #[test]
    fn sub_keys_and_missing_variables() {
        check(
            "a: ((c.certificate))\n",
            "c: {certificate: PEM}\n",
            "a: PEM\n",
        );
        check(
            "a: ((c.nope))\n",
            "c: {certificate: PEM}\n",
            "error: doc.yml:1:4: a: variable ((c.nope)): expected to find a map key 'nope' for path '/nope' (found map keys: 'certificate')",
        );
        check(
            "a: ((x))\nb: ((y))\n",
            "",
            "error: expected to find variables: x, y (give them with -v, -l, --var-file or --vars-env, or declare them in variables with a --vars-store)",
        );
    }

    #[test]
    fn definitions_whose_values_are_known_are_dropped() {
        let doc = parse(
            "a: ((given))\nvariables:\n- {name: given, type: password}\n- {name: stored}\n- {name: later, type: password}\n",
            "doc.yml",
        )
        .unwrap();
        let mut store = VarsStore::in_memory(Map::new());
        store.put("stored", Node::string("s", Span::synthetic("store")));
        let out = drop_found_definitions(doc.clone(), &sources("given: g\n"), Some(&store));
        assert_eq!(
            emit(&out),
            "a: ((given))\nvariables:\n- name: later\n  type: password\n"
        );
        let out = drop_found_definitions(doc, &sources("given: g\nlater: l\n"), Some(&store));
        assert_eq!(emit(&out), "a: ((given))\nvariables: []\n");
    }

    #[test]
    fn keys_are_interpolated_and_unknown_vars_stay() {
        let doc = parse("((k)): ((v))\nother: ((missing))\n", "doc.yml").unwrap();
        let out = evaluate(
            doc,
            &Ops::new(),
            &sources("k: key\nv: value\n"),
            None,
            Expectations::default(),
        )
        .unwrap();
        assert_eq!(emit(&out), "key: value\nother: ((missing))\n");
        assert!(out.get("key").unwrap().from_variable);
    }
}
