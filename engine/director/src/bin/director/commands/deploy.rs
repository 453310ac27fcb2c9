//! `director deploy MANIFEST [-o…] [-v…] [-l…] [--vars-store F] [--recreate] [--skip-drain]
//! [--fix] [--dry-run] [--canaries N] [--max-in-flight N|P%] [--no-redact]`.
//!
//! Interpolates the manifest here (ops files, variables, vars store), creates and uploads
//! what `releases[].url` / `stemcells[].url` name on this machine, asks the director for
//! the plan, shows the manifest diff (redacted) and the instance-level plan, asks, then runs
//! the deploy task and follows it.

use std::io::{BufRead, IsTerminal};
use std::path::Path;

use director::client::{self as cli_client, Client, UploadKind};
use director_api::ConfigKind;
use director_api::deployments::DeployQuery;
use director_core::deploy::{Action, GroupPlan, Plan};
use director_core::diff::{self, DiffOptions};
use director_core::interpolate::Expectations;
use director_core::release::{self, CreateOptions};
use director_core::yaml::{self, Node, Value};
use serde::Serialize;

use super::LocalError;
use super::director::{connect, fail, follow, runtime};
use crate::cli::{DeployArgs, GlobalArgs};
use crate::ui::{Ui, columns};

/// The name and version in a `release.MF` or `stemcell.MF` inside a tarball.
fn tarball_identity(path: &Path, manifest: &str) -> Result<(String, String), LocalError> {
    let shown = path.display().to_string();
    let bytes = director_core::archive::read_file_named(
        path,
        &shown,
        &director_core::archive::Limits::default(),
        manifest,
    )?
    .ok_or_else(|| LocalError::Manifest {
        file: shown.clone(),
        problem: format!("it has no {manifest}"),
    })?;
    let doc = yaml::parse(
        &String::from_utf8_lossy(&bytes),
        &format!("{shown}/{manifest}"),
    )
    .map_err(|d| LocalError::Manifest {
        file: format!("{shown}/{manifest}"),
        problem: d.to_string(),
    })?;
    let field = |key: &str| doc.get(key).and_then(Node::scalar_text);
    match (field("name"), field("version")) {
        (Some(name), Some(version)) => Ok((name, version)),
        _ => Err(LocalError::Manifest {
            file: shown,
            problem: format!("its {manifest} names no name and version"),
        }),
    }
}

/// The local path a `url: file://…` names; relative paths are relative to the manifest.
fn file_url(node: &Node, base: &Path) -> Option<std::path::PathBuf> {
    let path = node
        .get("url")
        .and_then(Node::as_str)
        .and_then(|url| url.strip_prefix("file://"))?;
    Some(base.join(path))
}

/// Builds the agent-only `local` stemcell for a recipe directory (`stemcells/<os>`), with
/// the `bosh-agent` built beside this `director` binary. Its version follows the agent's
/// modification time, so an unchanged agent makes the same stemcell.
fn build_local_stemcell(recipe: &Path) -> Result<(std::path::PathBuf, String, String), LocalError> {
    let exe = std::env::current_exe().map_err(LocalError::io("cannot find this program"))?;
    let agent = exe.with_file_name("bosh-agent");
    let modified = std::fs::metadata(&agent)
        .and_then(|m| m.modified())
        .map_err(LocalError::io(format!(
            "{} (build it with `cargo build --workspace`)",
            agent.display()
        )))?;
    let seconds = modified
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let os = recipe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| LocalError::Manifest {
            file: recipe.display().to_string(),
            problem: "not a stemcell recipe directory".to_string(),
        })?;
    let agent_json = recipe.join("agent.json");
    let build = director_core::stemcell::local::AgentStemcell {
        agent,
        agent_json: agent_json.is_file().then_some(agent_json),
        os,
        version: format!("0.{seconds}"),
    };
    let out = director::config::data_dir()
        .join("built-stemcells")
        .join(format!("{}-{}.tgz", build.name(), build.version));
    if !out.is_file() {
        build.write(&out)?;
    }
    Ok((out, build.name(), build.version.clone()))
}

fn set_version(item: &mut Node, version: &str) {
    let span = item.span.clone();
    if let Some(map) = item.as_map_mut() {
        map.insert(
            Node::string("version", span.clone()),
            Node::string(version, span),
        );
    }
}

/// Creates and uploads what `releases[].url` and `stemcells[].url` name with `file://`.
async fn upload_local(client: &Client, doc: &mut Node, base: &Path, ui: &mut Ui) -> Result<(), u8> {
    let uploaded_releases = client.releases().await.map_err(|e| fail(ui, e))?;
    let has_release = |name: &str, version: &str| {
        uploaded_releases
            .iter()
            .any(|r| r.name == name && r.release_versions.iter().any(|v| v.version == version))
    };
    let mut uploads = Vec::new();
    if let Some(items) = doc
        .as_map_mut()
        .and_then(|m| m.get_mut("releases"))
        .and_then(Node::as_seq_mut)
    {
        for item in items.iter_mut() {
            let Some(path) = file_url(item, base) else {
                continue;
            };
            let (tarball, name, version) = if path.is_dir() {
                let created = release::create_release(&CreateOptions {
                    dir: path.clone(),
                    name: None,
                    version: None,
                    final_release: false,
                    force: false,
                    tarball: None,
                })
                .map_err(|e| fail(ui, format!("releases[].url {}: {e}", path.display())))?;
                if !created.reused {
                    ui.say(&format!(
                        "created release {}/{}",
                        created.manifest.name, created.manifest.version
                    ));
                }
                (
                    created.tarball,
                    created.manifest.name,
                    created.manifest.version,
                )
            } else {
                let (name, version) = tarball_identity(&path, "release.MF")
                    .map_err(|e| fail(ui, format!("releases[].url: {e}")))?;
                (path.clone(), name, version)
            };
            let asked = item.get("version").and_then(Node::scalar_text);
            if path.is_dir() || matches!(asked.as_deref(), None | Some("create")) {
                set_version(item, &version);
            }
            if !has_release(&name, &version) {
                uploads.push((
                    UploadKind::Release,
                    tarball,
                    format!("release {name}/{version}"),
                ));
            }
        }
    }
    let stemcells = client.stemcells().await.map_err(|e| fail(ui, e))?;
    if let Some(items) = doc
        .as_map_mut()
        .and_then(|m| m.get_mut("stemcells"))
        .and_then(Node::as_seq_mut)
    {
        for item in items.iter_mut() {
            let Some(path) = file_url(item, base) else {
                continue;
            };
            let (path, name, version) = if path.is_dir() {
                let built = build_local_stemcell(&path)
                    .map_err(|e| fail(ui, format!("stemcells[].url: {e}")))?;
                set_version(item, &built.2);
                built
            } else {
                let (name, version) = tarball_identity(&path, "stemcell.MF")
                    .map_err(|e| fail(ui, format!("stemcells[].url: {e}")))?;
                (path, name, version)
            };
            let present = stemcells
                .iter()
                .any(|s| s.name == name && s.version == version);
            if !present {
                uploads.push((
                    UploadKind::Stemcell,
                    path,
                    format!("stemcell {name}/{version}"),
                ));
            }
        }
    }
    for (kind, file, what) in uploads {
        ui.say(&format!("uploading {what}"));
        let task = cli_client::upload(client, kind, &file, None, false)
            .await
            .map_err(|e| fail(ui, e))?;
        let code = follow(client, &task, ui).await;
        if code != 0 {
            return Err(code);
        }
    }
    Ok(())
}

fn short_id(id: &str) -> String {
    id.chars().take(8).collect()
}

/// The instance-level plan as a table, with a summary line.
pub fn render_plan(plan: &Plan) -> String {
    let mut out = String::new();
    let mut rows = vec![vec![
        "Instance".to_string(),
        "AZ".to_string(),
        "Action".to_string(),
        "Batch".to_string(),
        "Why".to_string(),
    ]];
    for instance in plan.all_instances() {
        rows.push(vec![
            format!(
                "{}/{} ({})",
                instance.group,
                // A new instance's id is made when the deploy runs.
                if instance.action == Action::Create {
                    "(new)".to_string()
                } else {
                    short_id(&instance.id)
                },
                instance.index
            ),
            instance.az.clone().unwrap_or_else(|| "-".to_string()),
            instance.action.word().to_string(),
            instance.batch.clone().unwrap_or_else(|| "-".to_string()),
            instance.reasons.join("; "),
        ]);
    }
    out.push_str(&columns(&rows));
    let rollouts: Vec<String> = plan
        .groups
        .iter()
        .filter(|g| !g.phases.is_empty() && !g.errand)
        .map(|g| format!("  {}: {}", g.name, rollout(g)))
        .collect();
    if !rollouts.is_empty() {
        out.push_str("\nRollout (a slot frees, the next instance starts):\n");
        out.push_str(&rollouts.join("\n"));
        out.push('\n');
    }
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for instance in plan.all_instances() {
        if instance.action != Action::NoOp {
            *counts.entry(instance.action.word()).or_default() += 1;
        }
    }
    if !plan.variables_to_generate.is_empty() {
        out.push_str(&format!(
            "\nVariables the director will generate: {}\n",
            plan.variables_to_generate.join(", ")
        ));
    }
    let total = plan.all_instances().count();
    if counts.is_empty() {
        out.push_str(&format!(
            "\nNo instance changes ({total} instance(s) as they are).\n"
        ));
    } else {
        let parts: Vec<String> = counts.iter().map(|(w, n)| format!("{n} {w}")).collect();
        out.push_str(&format!(
            "\n{} of {total} instance(s) change: {}.\n",
            counts.values().sum::<usize>(),
            parts.join(", ")
        ));
    }
    out
}

/// A group's phases in words: `1 canary; then z1: 2 instances, 2 at a time; then z2: 1`.
fn rollout(group: &GroupPlan) -> String {
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    group
        .phases
        .iter()
        .map(|phase| {
            let n = phase.instances.len();
            let az = phase
                .instances
                .first()
                .and_then(|id| group.instances.iter().find(|i| &i.id == id))
                .and_then(|i| i.az.clone());
            let what = if phase.canary {
                plural(n, "canary", "canaries")
            } else {
                let where_ = az.map(|az| format!("{az}: ")).unwrap_or_default();
                format!("{where_}{}", plural(n, "instance", "instances"))
            };
            if n > 1 {
                format!("{what}, {} at a time", phase.max_in_flight)
            } else {
                what
            }
        })
        .collect::<Vec<_>>()
        .join("; then ")
}

fn confirm(ui: &mut Ui) -> bool {
    eprint!("Continue? [yN]: ");
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        return false;
    }
    let _ = ui;
    matches!(line.trim().to_lowercase().as_str(), "y" | "yes")
}

fn query(args: &DeployArgs) -> DeployQuery {
    DeployQuery {
        recreate: args.recreate,
        skip_drain: args.skip_drain,
        fix: args.fix,
        canaries: args.canaries.clone(),
        max_in_flight: args.max_in_flight.clone(),
    }
}

/// `director deploy --dry-run --json`: the plan, and the manifest diff it comes from.
#[derive(Serialize)]
struct DryRun<'a> {
    deployment: &'a str,
    changes: bool,
    diff: serde_json::Value,
    plan: &'a Plan,
}

/// `director deploy`.
pub fn run(global: &GlobalArgs, args: DeployArgs, ui: &mut Ui) -> u8 {
    let inputs = super::template_inputs(
        &args.ops,
        &args.vars,
        args.vars_store.clone(),
        Expectations::default(),
    );
    let mut prepared = match inputs.prepare() {
        Ok(p) => p,
        Err(diagnostics) => {
            ui.diagnostics(&diagnostics);
            return 1;
        }
    };
    let doc = match director_core::template::read_yaml(&args.manifest) {
        Ok(doc) => doc,
        Err(e) => {
            ui.diagnostic(&e);
            return 1;
        }
    };
    let mut doc = match prepared.evaluate(doc) {
        Ok(doc) => prepared.drop_settled_definitions(doc),
        Err(diagnostics) => {
            ui.diagnostics(&diagnostics);
            return 1;
        }
    };
    if let Err(e) = prepared.save_store() {
        ui.diagnostic(&e);
        return 1;
    }
    if !matches!(doc.value, Value::Map(_)) {
        return fail(
            ui,
            format!(
                "{}: expected a deployment manifest (a map)",
                args.manifest.display()
            ),
        );
    }
    runtime().block_on(async {
        let client = match connect(global, ui).await {
            Ok(client) => client,
            Err(e) => return fail(ui, e),
        };
        // Also for a dry run: the plan needs the releases and stemcells on the director
        // (uploading them changes no deployment).
        let base = args.manifest.parent().map(Path::to_path_buf).unwrap_or_default();
        if let Err(code) = upload_local(&client, &mut doc, &base, ui).await {
            return code;
        }
        // Check here first: problems then point into the user's own files.
        let cloud = match client.config(ConfigKind::Cloud).await {
            Ok(found) => found.map(|config| config.content),
            Err(e) => return fail(ui, e),
        };
        let runtime_config = match client.config(ConfigKind::Runtime).await {
            Ok(found) => found.map(|config| config.content),
            Err(e) => return fail(ui, e),
        };
        let Some(cloud) = cloud else {
            return fail(ui, "the director has no cloud config: set one with `director update-cloud-config FILE`");
        };
        let cloud_doc = yaml::parse(&cloud, "cloud config (on the director)").ok();
        let runtime_doc = runtime_config.and_then(|text| yaml::parse(&text, "runtime config (on the director)").ok());
        if let Err(diagnostics) = director_core::manifest::validate(director_core::manifest::Documents {
            manifest: Some(&doc),
            cloud_config: cloud_doc.as_ref(),
            runtime_config: runtime_doc.as_ref(),
        }) {
            ui.diagnostics(&diagnostics);
            return 1;
        }
        let text = yaml::emit(&doc);
        let query = query(&args);
        let answer = match client.plan(&text, &query).await {
            Ok(answer) => answer,
            Err(e) => return fail(ui, e),
        };
        let plan = &answer.plan;
        let previous = answer
            .previous_manifest
            .as_deref()
            .and_then(|text| yaml::parse(text, "deployed manifest").ok())
            .unwrap_or_else(|| Node::new(Value::Map(director_core::yaml::Map::new()), director_core::yaml::Span::synthetic("none")));
        let manifest_diff = diff::diff(&previous, &doc, &DiffOptions { redact: !args.no_redact });
        if ui.json && args.dry_run {
            let out = DryRun {
                deployment: &answer.deployment,
                changes: plan.has_changes(),
                diff: manifest_diff.to_json(),
                plan,
            };
            ui.data(&format!("{}\n", serde_json::to_string_pretty(&out).unwrap_or_default()));
            return if plan.has_changes() { 2 } else { 0 };
        }
        let shown_to = |ui: &mut Ui, text: &str| {
            if ui.json {
                eprint!("{text}");
            } else {
                ui.data(text);
            }
        };
        shown_to(ui, &format!("Using deployment '{}'\n\n", answer.deployment));
        if manifest_diff.is_empty() {
            shown_to(ui, "Manifest: no changes\n\n");
        } else {
            shown_to(ui, &manifest_diff.render_text(ui.color_stdout && !ui.json));
            shown_to(ui, "\n");
        }
        shown_to(ui, &render_plan(plan));
        if args.dry_run {
            return if plan.has_changes() { 2 } else { 0 };
        }
        if !global.non_interactive && plan.has_changes() {
            if !std::io::stdin().is_terminal() {
                ui.say("(not a terminal: give -n to deploy without asking)");
            }
            if !confirm(ui) {
                ui.say("not deployed");
                return 1;
            }
        }
        let task = match client.deploy(&text, &query).await {
            Ok(task) => task,
            Err(e) => return fail(ui, e),
        };
        follow(&client, &task, ui).await
    })
}
