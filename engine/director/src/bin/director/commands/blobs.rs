//! `director blobs [--dir DIR]`: the blobs of `config/blobs.yml` with size, digest and
//! whether each is uploaded (has an `object_id`) or only local.

use director_core::release::blobs;
use serde_json::json;

use super::inspect_release::{columns, report};
use crate::cli::BlobsArgs;
use crate::ui::Ui;

pub fn run(args: BlobsArgs, ui: &mut Ui) -> u8 {
    let list = match blobs::read_blobs(&args.dir) {
        Ok(list) => list,
        Err(e) => {
            report(ui, &e);
            return 1;
        }
    };
    let present = |path: &str| args.dir.join("blobs").join(path).is_file();
    if ui.json {
        let items: Vec<serde_json::Value> = list
            .iter()
            .map(|b| {
                json!({
                    "path": b.path,
                    "size": b.size,
                    "digest": b.sha,
                    "object_id": b.object_id,
                    "uploaded": b.object_id.is_some(),
                    "local": present(&b.path),
                })
            })
            .collect();
        ui.data(&format!(
            "{}\n",
            serde_json::to_string_pretty(&items).unwrap_or_default()
        ));
        return 0;
    }
    if list.is_empty() {
        ui.say("no blobs (config/blobs.yml is empty or missing)");
        return 0;
    }
    let mut rows = vec![vec![
        "Path".to_string(),
        "Size".to_string(),
        "Digest".to_string(),
        "Status".to_string(),
    ]];
    for blob in &list {
        let status = match (&blob.object_id, present(&blob.path)) {
            (Some(id), true) => format!("uploaded ({id})"),
            (Some(id), false) => format!("uploaded ({id}), not in blobs/"),
            (None, true) => "local only".to_string(),
            (None, false) => "missing: not uploaded and not in blobs/".to_string(),
        };
        rows.push(vec![
            blob.path.clone(),
            blob.size.to_string(),
            blob.sha.clone(),
            status,
        ]);
    }
    ui.data(&columns(&rows));
    0
}
