//! `director validate MANIFEST [--cloud-config F] [--runtime-config F] [-o…] [-v…] [-l…]`.

use director_core::diagnostics::Diagnostics;
use director_core::interpolate::Expectations;
use director_core::manifest::{self, Documents};
use director_core::template;

use crate::cli::ValidateArgs;
use crate::ui::Ui;

pub fn run(args: ValidateArgs, ui: &mut Ui) -> u8 {
    let inputs = super::template_inputs(
        &args.ops,
        &args.vars,
        args.vars_store.clone(),
        Expectations::default(),
    );
    let mut diagnostics = Diagnostics::new();
    let mut prepared = match inputs.prepare() {
        Ok(p) => Some(p),
        Err(errors) => {
            diagnostics.extend(errors);
            None
        }
    };
    let mut read =
        |path: &std::path::Path, with_ops: bool, prepared: &mut Option<template::Prepared>| {
            let doc = match template::read_yaml(path) {
                Ok(doc) => doc,
                Err(e) => {
                    diagnostics.push(e);
                    return None;
                }
            };
            let prepared = prepared.as_mut()?;
            let result = if with_ops {
                prepared.evaluate(doc)
            } else {
                prepared.evaluate_vars_only(doc)
            };
            match result {
                Ok(doc) => Some(doc),
                Err(errors) => {
                    diagnostics.extend(errors);
                    None
                }
            }
        };
    let manifest_doc = read(&args.manifest, true, &mut prepared);
    let cloud_doc = args
        .cloud_config
        .as_deref()
        .and_then(|p| read(p, false, &mut prepared));
    let runtime_doc = args
        .runtime_config
        .as_deref()
        .and_then(|p| read(p, false, &mut prepared));
    let read_failed = diagnostics.has_errors();
    let outcome = manifest::validate(Documents {
        manifest: manifest_doc.as_ref(),
        cloud_config: cloud_doc.as_ref(),
        runtime_config: runtime_doc.as_ref(),
    });
    let (valid, found) = match outcome {
        Ok(validated) => (!read_failed, validated.warnings),
        Err(found) => (false, found),
    };
    diagnostics.extend(found);
    if ui.json {
        ui.diagnostics_json(valid, &diagnostics);
    } else {
        ui.diagnostics(&diagnostics);
        let errors = diagnostics.iter().filter(|d| d.is_error()).count();
        let warnings = diagnostics.len() - errors;
        let summary = match (errors, warnings) {
            (0, 0) => format!("{} is valid", args.manifest.display()),
            (0, w) => format!(
                "{} is valid ({w} {})",
                args.manifest.display(),
                plural(w, "warning")
            ),
            (e, w) => format!(
                "{}: {e} {}, {w} {}",
                args.manifest.display(),
                plural(e, "error"),
                plural(w, "warning")
            ),
        };
        ui.say(&summary);
    }
    if valid { 0 } else { 1 }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_string()
    } else {
        format!("{word}s")
    }
}
