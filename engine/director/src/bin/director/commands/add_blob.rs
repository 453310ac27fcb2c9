//! `director add-blob PATH NAME [--dir DIR]`: copies a file to `blobs/NAME` and records its
//! size and digest in `config/blobs.yml`.

use director_core::release::blobs;
use serde_json::json;

use super::inspect_release::report;
use crate::cli::AddBlobArgs;
use crate::ui::Ui;

pub fn run(args: AddBlobArgs, ui: &mut Ui) -> u8 {
    match blobs::add_blob(&args.dir, &args.path, &args.name) {
        Ok(blob) => {
            ui.say(&format!(
                "added blob {} ({} bytes, {})",
                blob.path, blob.size, blob.sha
            ));
            if ui.json {
                ui.data(&format!(
                    "{}\n",
                    serde_json::to_string_pretty(&json!(blob)).unwrap_or_default()
                ));
            }
            0
        }
        Err(e) => {
            report(ui, &e);
            1
        }
    }
}
