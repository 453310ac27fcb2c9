//! Templates as the command line hands them over: a YAML file plus ops files, variable flags
//! and a vars store. This is the one place that reads those files, so every verb that takes
//! `-o`, `-v`, `-l`, `--var-file`, `--vars-env` and `--vars-store` (interpolate, validate,
//! diff, later deploy) behaves the same.

use std::path::{Path, PathBuf};

use crate::diagnostics::{Diagnostic, Diagnostics};
use crate::interpolate::{self, Expectations, Ops, Pointer, VarFlags, VarSources};
use crate::variables::VarsStore;
use crate::yaml::{self, Node};

/// Reads and parses one YAML file; errors name the file.
pub fn read_yaml(path: &Path) -> Result<Node, Diagnostic> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| Diagnostic::general(format!("cannot read {shown}: {e}")))?;
    yaml::parse(&text, &shown)
}

/// Reads ops files in order; every malformed op of every file is reported.
pub fn read_ops_files(paths: &[PathBuf]) -> Result<Ops, Diagnostics> {
    let mut ops = Ops::new();
    let mut diagnostics = Diagnostics::new();
    for path in paths {
        match read_yaml(path) {
            Ok(node) => match Ops::from_node(&node) {
                Ok(more) => ops.extend(more),
                Err(errors) => diagnostics.extend(errors),
            },
            Err(e) => diagnostics.push(e),
        }
    }
    if diagnostics.has_errors() {
        Err(diagnostics)
    } else {
        Ok(ops)
    }
}

/// Everything besides the template itself that interpolation takes.
#[derive(Clone, Debug, Default)]
pub struct TemplateInputs {
    /// `-o` files, applied in order.
    pub ops_files: Vec<PathBuf>,
    /// `-v`, `--var-file`, `-l`, `--vars-env`.
    pub var_flags: VarFlags,
    /// `--vars-store`.
    pub vars_store: Option<PathBuf>,
    /// `--var-errs` / `--var-errs-unused`.
    pub expectations: Expectations,
}

/// Prepared inputs: ops parsed, variable files read.
pub struct Prepared {
    ops: Ops,
    sources: VarSources,
    store: Option<VarsStore>,
    expectations: Expectations,
}

impl TemplateInputs {
    /// Reads the ops files, vars files and the vars store.
    pub fn prepare(&self) -> Result<Prepared, Diagnostics> {
        let ops = read_ops_files(&self.ops_files);
        let environment: Vec<(String, String)> = std::env::vars().collect();
        let sources = VarSources::from_flags(&self.var_flags, environment.into_iter(), &|p| {
            std::fs::read_to_string(p)
        });
        let store = self.vars_store.as_deref().map(VarsStore::load).transpose();
        let mut diagnostics = Diagnostics::new();
        if let Err(e) = &ops {
            diagnostics.extend(e.clone());
        }
        if let Err(e) = &sources {
            diagnostics.push(e.clone());
        }
        if let Err(e) = &store {
            diagnostics.push(e.clone());
        }
        match (ops, sources, store) {
            (Ok(ops), Ok(sources), Ok(store)) => Ok(Prepared {
                ops,
                sources,
                store,
                expectations: self.expectations,
            }),
            _ => Err(diagnostics),
        }
    }
}

impl Prepared {
    /// Applies the ops and variables to `doc` (generating into the vars store, if any).
    pub fn evaluate(&mut self, doc: Node) -> Result<Node, Diagnostics> {
        interpolate::evaluate(
            doc,
            &self.ops,
            &self.sources,
            self.store.as_mut(),
            self.expectations,
        )
    }

    /// Drops the `variables` definitions of an evaluated `doc` whose values the variable
    /// flags or the vars store settled, as bosh-cli does to what it prints (`interpolate`)
    /// and sends to a director (`deploy`). `validate` and `diff` keep them: there they are
    /// part of what the user wrote and a reviewer reads.
    pub fn drop_settled_definitions(&self, doc: Node) -> Node {
        interpolate::drop_found_definitions(doc, &self.sources, self.store.as_ref())
    }

    /// Interpolates only variables (no ops, no generation), for configs given beside a manifest.
    pub fn evaluate_vars_only(&self, doc: Node) -> Result<Node, Diagnostics> {
        interpolate::interpolate_vars(doc, &self.sources)
    }

    /// Writes the vars store if variables were generated.
    pub fn save_store(&self) -> Result<(), Diagnostic> {
        match &self.store {
            Some(store) => store
                .save()
                .map_err(|e| Diagnostic::general(format!("cannot write the vars store: {e}"))),
            None => Ok(()),
        }
    }
}

/// What `interpolate --path` extracts: a string prints raw (as bosh-cli does), anything else
/// as YAML.
pub fn extract_path(doc: &Node, path: &str) -> Result<String, Diagnostic> {
    let pointer =
        Pointer::parse(path).map_err(|e| Diagnostic::general(format!("--path {path:?}: {e}")))?;
    let found = interpolate::find_value(doc, &pointer)
        .map_err(|e| Diagnostic::general(format!("--path {path}: {e}")))?;
    Ok(match found {
        Some(node) => match node.as_str() {
            Some(text) => format!("{text}\n"),
            None => yaml::emit(node),
        },
        None => "null\n".to_string(),
    })
}
