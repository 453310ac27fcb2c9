//! `director create-release [DIR] [--tarball OUT] [--final] [--version V] [--force]
//! [--name N]`: builds the release, records its version, writes the tarball; prints the
//! release as `inspect-release` does.

use director_core::release::{self, CreateOptions, display_path};
use serde_json::json;

use super::inspect_release::{View, print, report};
use crate::cli::CreateReleaseArgs;
use crate::ui::Ui;

pub fn run(args: CreateReleaseArgs, ui: &mut Ui) -> u8 {
    let options = CreateOptions {
        dir: args.dir,
        name: args.name,
        version: args.version,
        final_release: args.final_release,
        force: args.force,
        tarball: args.tarball,
    };
    let created = match release::create_release(&options) {
        Ok(created) => created,
        Err(e) => {
            report(ui, &e);
            return 1;
        }
    };
    ui.diagnostics(&created.warnings);
    let manifest = &created.manifest;
    let tarball = display_path(&created.tarball);
    if created.reused {
        ui.say(&format!(
            "release {}/{} is unchanged (no job or package changed); its tarball is {tarball}",
            manifest.name, manifest.version
        ));
    } else {
        ui.say(&format!(
            "created release {}/{}: {tarball}",
            manifest.name, manifest.version
        ));
    }
    print(
        ui,
        &View::of(manifest),
        json!({ "tarball": tarball, "created": !created.reused }),
    );
    0
}
