//! `director diff OLD NEW [-o…] [-v…] [-l…] [--no-redact] [--format F] [--exit-code]`.

use director_core::diff::{self, DiffOptions};
use director_core::interpolate::Expectations;
use director_core::template;

use crate::cli::{DiffArgs, DiffFormat};
use crate::ui::Ui;

pub fn run(args: DiffArgs, ui: &mut Ui) -> u8 {
    let inputs = super::template_inputs(&args.ops, &args.vars, None, Expectations::default());
    let mut prepared = match inputs.prepare() {
        Ok(p) => p,
        Err(diagnostics) => {
            ui.diagnostics(&diagnostics);
            return 1;
        }
    };
    let mut load = |path: &std::path::Path| -> Option<director_core::yaml::Node> {
        let doc = match template::read_yaml(path) {
            Ok(doc) => doc,
            Err(e) => {
                ui.diagnostic(&e);
                return None;
            }
        };
        match prepared.evaluate(doc) {
            Ok(doc) => Some(doc),
            Err(diagnostics) => {
                ui.diagnostics(&diagnostics);
                None
            }
        }
    };
    let (Some(old), Some(new)) = (load(&args.old), load(&args.new)) else {
        return 1;
    };
    let result = diff::diff(
        &old,
        &new,
        &DiffOptions {
            redact: !args.no_redact,
        },
    );
    let format = if ui.json {
        DiffFormat::Json
    } else {
        args.format
    };
    let output = match format {
        DiffFormat::Text => result.render_text(ui.color_stdout),
        DiffFormat::Markdown => result.render_markdown(),
        DiffFormat::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&result.to_json()).unwrap_or_default()
        ),
    };
    if format == DiffFormat::Text && result.is_empty() {
        ui.say("no changes");
    }
    ui.data(&output);
    if args.exit_code && !result.is_empty() {
        2
    } else {
        0
    }
}
