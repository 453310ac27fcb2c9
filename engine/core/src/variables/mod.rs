//! Variables: the `variables` section of a manifest, the vars store file, and generation of
//! passwords, certificates, RSA and SSH keys.
//!
//! The vars store (`--vars-store FILE`) is a YAML map of variable names to values. Values in
//! it are never changed; missing ones whose definition has a type are generated and added.
//! The file is only written when something was added, atomically (temp file, fsync, rename)
//! and with mode 0600, so an interrupted run never leaves half a store and a run that adds
//! nothing leaves the file byte-identical.

mod generate;

pub use generate::generate;

use std::path::{Path, PathBuf};

use crate::diagnostics::Diagnostic;
use crate::yaml::{self, Map, Node, Span, Value};

/// One entry of a manifest's `variables` section.
#[derive(Clone, Debug)]
pub struct VariableDefinition {
    /// `name`.
    pub name: String,
    /// `type` (`password`, `certificate`, `rsa`, `ssh`), if given.
    pub kind: Option<String>,
    /// `options`, not yet interpolated.
    pub options: Option<Node>,
    /// Where the definition was written.
    pub span: Span,
}

/// Reads the `variables` section of a document; entries without a string `name` are
/// skipped here (validation reports them).
pub fn definitions(doc: &Node) -> Vec<VariableDefinition> {
    let Some(items) = doc.get("variables").and_then(Node::as_seq) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let name = item.get("name")?.as_str()?.to_string();
            Some(VariableDefinition {
                name,
                kind: item.get("type").and_then(Node::as_str).map(str::to_string),
                options: item.get("options").filter(|o| !o.is_null()).cloned(),
                span: item.span.clone(),
            })
        })
        .collect()
}

/// The vars store file.
#[derive(Debug)]
pub struct VarsStore {
    path: PathBuf,
    values: Map,
    changed: bool,
    added: Vec<String>,
}

impl VarsStore {
    /// Loads the store at `path`; a file that does not exist yet is an empty store.
    pub fn load(path: &Path) -> Result<VarsStore, Diagnostic> {
        let shown = path.display().to_string();
        let values = match std::fs::read_to_string(path) {
            Ok(text) => {
                let node = yaml::parse(&text, &shown)?;
                match node.value {
                    Value::Map(map) => map,
                    Value::Null => Map::new(),
                    _ => {
                        return Err(Diagnostic::error(
                            &node.span,
                            "",
                            format!(
                                "expected a vars store (a map of variable names to values), found {}",
                                node.kind()
                            ),
                        ));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
            Err(e) => {
                return Err(Diagnostic::general(format!(
                    "--vars-store {shown}: cannot read it: {e}"
                )));
            }
        };
        Ok(VarsStore {
            path: path.to_path_buf(),
            values,
            changed: false,
            added: Vec::new(),
        })
    }

    /// A store that lives in memory (the director's, backed by its database); `save` is a
    /// no-op, the caller persists [`VarsStore::added`].
    pub fn in_memory(values: Map) -> VarsStore {
        VarsStore {
            path: PathBuf::new(),
            values,
            changed: false,
            added: Vec::new(),
        }
    }

    /// Names of the values added since loading, in the order they were generated.
    pub fn added(&self) -> &[String] {
        &self.added
    }

    /// The stored value of a variable.
    pub fn get(&self, name: &str) -> Option<&Node> {
        self.values.get(name)
    }

    /// Adds a generated value (an existing value is never replaced).
    pub fn put(&mut self, name: &str, value: Node) {
        if self.values.get(name).is_none() {
            self.values
                .insert(Node::string(name, value.span.clone()), value);
            self.changed = true;
            self.added.push(name.to_string());
        }
    }

    /// Whether values were added since loading.
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// Writes the store if values were added: to a temporary file in the same directory,
    /// mode 0600, synced, then renamed over the old file.
    pub fn save(&self) -> std::io::Result<()> {
        if !self.changed || self.path.as_os_str().is_empty() {
            return Ok(());
        }
        let text = yaml::emit(&Node::new(
            Value::Map(self.values.clone()),
            Span::synthetic("vars store"),
        ));
        secrets::write_private(&self.path, text.as_bytes())
    }
}
