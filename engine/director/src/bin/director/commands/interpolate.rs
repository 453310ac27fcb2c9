//! `director interpolate FILE [-o OPS]… [-v K=V]… [-l VARS]… [--vars-store F] [--path P]`.

use director_core::interpolate::Expectations;
use director_core::template;
use director_core::yaml;

use crate::cli::InterpolateArgs;
use crate::ui::Ui;

pub fn run(args: InterpolateArgs, ui: &mut Ui) -> u8 {
    let expectations = Expectations {
        all_found: args.var_errs,
        all_used: args.var_errs_unused,
    };
    let inputs =
        super::template_inputs(&args.ops, &args.vars, args.vars_store.clone(), expectations);
    let mut prepared = match inputs.prepare() {
        Ok(p) => p,
        Err(diagnostics) => {
            ui.diagnostics(&diagnostics);
            return 1;
        }
    };
    let doc = match template::read_yaml(&args.file) {
        Ok(doc) => doc,
        Err(e) => {
            ui.diagnostic(&e);
            return 1;
        }
    };
    let result = match prepared.evaluate(doc) {
        Ok(result) => prepared.drop_settled_definitions(result),
        Err(diagnostics) => {
            ui.diagnostics(&diagnostics);
            return 1;
        }
    };
    let output = match &args.path {
        Some(path) => match template::extract_path(&result, path) {
            Ok(text) => text,
            Err(e) => {
                ui.diagnostic(&e);
                return 1;
            }
        },
        None => yaml::emit(&result),
    };
    if let Err(e) = prepared.save_store() {
        ui.diagnostic(&e);
        return 1;
    }
    ui.data(&output);
    0
}
