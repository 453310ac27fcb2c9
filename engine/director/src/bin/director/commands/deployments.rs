//! Configs and deployed deployments: `update-cloud-config`, `cloud-config`,
//! `update-runtime-config`, `runtime-config`, `deployments`, `instances`, `vms`,
//! `manifest`, `events`, `start|stop|restart|recreate`, `run-errand`, `delete-deployment`,
//! `orphaned-disks`.

use std::io::BufRead;

use director::client::Client;
use director_core::diff::{self, DiffOptions};
use director_core::interpolate::Expectations;
use director_core::yaml::{self, Node, Value};
use serde_json::{Value as Json, json};

use super::director::{connect, fail, follow, follow_to_end, percent_encode, runtime};
use crate::cli::{
    ConfigArgs, DeleteDeploymentArgs, DeleteDiskArgs, ErrandArgs, EventsArgs, GlobalArgs,
    InstancesArgs, LogsArgs, TargetArgs, VmsArgs,
};
use crate::ui::{Ui, columns, utc};

fn deployment_name(global: &GlobalArgs, ui: &mut Ui) -> Result<String, u8> {
    global.deployment.clone().ok_or_else(|| {
        fail(
            ui,
            "which deployment? give it with -d NAME (or set DIRECTOR_DEPLOYMENT)",
        )
    })
}

fn print_json(ui: &mut Ui, value: &Json) {
    ui.data(&format!(
        "{}\n",
        serde_json::to_string_pretty(value).unwrap_or_default()
    ));
}

/// Runs `body` with a connected client.
fn with_client(
    global: &GlobalArgs,
    ui: &mut Ui,
    body: impl AsyncFnOnce(&Client, &mut Ui) -> u8,
) -> u8 {
    runtime().block_on(async {
        let client = match connect(global, ui).await {
            Ok(client) => client,
            Err(e) => return fail(ui, e),
        };
        body(&client, ui).await
    })
}

fn confirm() -> bool {
    eprint!("Continue? [yN]: ");
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        return false;
    }
    matches!(line.trim().to_lowercase().as_str(), "y" | "yes")
}

/// `director update-cloud-config|update-runtime-config FILE [-o…] [-v…]`.
pub fn update_config(global: &GlobalArgs, kind: &str, args: ConfigArgs, ui: &mut Ui) -> u8 {
    let inputs = super::template_inputs(&args.ops, &args.vars, None, Expectations::default());
    let mut prepared = match inputs.prepare() {
        Ok(p) => p,
        Err(diagnostics) => {
            ui.diagnostics(&diagnostics);
            return 1;
        }
    };
    let doc = match director_core::template::read_yaml(&args.file).map_err(|e| vec![e]) {
        Ok(doc) => doc,
        Err(e) => {
            ui.diagnostic(&e[0]);
            return 1;
        }
    };
    let doc = match prepared.evaluate(doc) {
        Ok(doc) => doc,
        Err(diagnostics) => {
            ui.diagnostics(&diagnostics);
            return 1;
        }
    };
    let checked = if kind == "cloud" {
        director_core::manifest::validate_cloud_config(&doc).map(|(_, warnings)| warnings)
    } else {
        director_core::manifest::validate_runtime_config(&doc).map(|(_, warnings)| warnings)
    };
    match checked {
        Ok(warnings) => {
            if !warnings.is_empty() {
                ui.diagnostics(&warnings);
            }
        }
        Err(diagnostics) => {
            ui.diagnostics(&diagnostics);
            return 1;
        }
    }
    let text = yaml::emit(&doc);
    with_client(global, ui, async |client, ui| {
        let current = match client.get_optional(&format!("/configs/{kind}")).await {
            Ok(found) => found.and_then(|c| c["content"].as_str().map(str::to_string)),
            Err(e) => return fail(ui, e),
        };
        let old = current
            .as_deref()
            .and_then(|t| yaml::parse(t, &format!("current {kind} config")).ok())
            .unwrap_or_else(|| {
                Node::new(Value::Map(yaml::Map::new()), yaml::Span::synthetic("none"))
            });
        let changes = diff::diff(&old, &doc, &DiffOptions { redact: true });
        if changes.is_empty() && current.is_some() {
            ui.say(&format!("the {kind} config is unchanged"));
            return 0;
        }
        ui.data(&changes.render_text(ui.color_stdout));
        if !global.non_interactive && !confirm() {
            ui.say("not updated");
            return 1;
        }
        match client.put_text(&format!("/configs/{kind}"), &text).await {
            Ok(answer) => {
                ui.say(&format!(
                    "updated the {kind} config (version {})",
                    answer["id"]
                ));
                0
            }
            Err(e) => fail(ui, e),
        }
    })
}

/// `director cloud-config|runtime-config`.
pub fn config(global: &GlobalArgs, kind: &str, ui: &mut Ui) -> u8 {
    with_client(global, ui, async |client, ui| {
        match client.get(&format!("/configs/{kind}")).await {
            Ok(answer) => {
                if ui.json {
                    print_json(ui, &answer);
                } else {
                    ui.data(answer["content"].as_str().unwrap_or(""));
                }
                0
            }
            Err(e) => fail(ui, e),
        }
    })
}

fn names(list: &Json) -> String {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            format!(
                "{}/{}",
                r["name"].as_str().unwrap_or(""),
                r["version"].as_str().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `director deployments`.
pub fn deployments(global: &GlobalArgs, ui: &mut Ui) -> u8 {
    with_client(global, ui, async |client, ui| {
        let list = match client.get("/deployments").await {
            Ok(list) => list,
            Err(e) => return fail(ui, e),
        };
        if ui.json {
            print_json(ui, &list);
            return 0;
        }
        let mut rows = vec![vec![
            "Name".to_string(),
            "Release(s)".to_string(),
            "Stemcell(s)".to_string(),
            "Instances".to_string(),
        ]];
        for d in list.as_array().into_iter().flatten() {
            rows.push(vec![
                d["name"].as_str().unwrap_or("").to_string(),
                names(&d["releases"]),
                names(&d["stemcells"]),
                d["instances"].to_string(),
            ]);
        }
        ui.data(&columns(&rows));
        ui.say(&format!("{} deployment(s)", rows.len() - 1));
        0
    })
}

fn instance_name(i: &Json) -> String {
    format!(
        "{}/{}",
        i["instance_group"].as_str().unwrap_or(""),
        i["id"].as_str().unwrap_or("")
    )
}

fn process_state(i: &Json) -> String {
    if i["vm_cid"].is_null() {
        return "-".to_string();
    }
    if i["state"] == "stopped" {
        return "stopped".to_string();
    }
    i["agent"]["job_state"].as_str().unwrap_or("-").to_string()
}

fn ips(i: &Json) -> String {
    i["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Json::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

fn text(value: &Json) -> String {
    match value {
        Json::Null => "-".to_string(),
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

async fn instances_of(
    client: &Client,
    name: &str,
    live: bool,
) -> Result<Json, director::client::ClientError> {
    client
        .get(&format!(
            "/deployments/{}/instances?live={live}",
            percent_encode(name)
        ))
        .await
}

/// `director instances [--ps] [--details]`.
pub fn instances(global: &GlobalArgs, args: InstancesArgs, ui: &mut Ui) -> u8 {
    let name = match deployment_name(global, ui) {
        Ok(name) => name,
        Err(code) => return code,
    };
    with_client(global, ui, async |client, ui| {
        let list = match instances_of(client, &name, true).await {
            Ok(list) => list,
            Err(e) => return fail(ui, e),
        };
        if ui.json {
            print_json(ui, &list);
            return 0;
        }
        let mut header = vec!["Instance", "Process State", "AZ", "IPs"];
        if args.ps {
            header.insert(1, "Process");
        }
        if args.details {
            header.extend(["VM CID", "Agent ID", "Index", "Bootstrap", "Disk CID"]);
        }
        let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
        for i in list.as_array().into_iter().flatten() {
            let mut row = vec![instance_name(i), process_state(i), text(&i["az"]), ips(i)];
            if args.ps {
                row.insert(1, String::new());
            }
            if args.details {
                row.extend([
                    text(&i["vm_cid"]),
                    text(&i["agent_id"]),
                    text(&i["index"]),
                    if i["bootstrap"] == true {
                        "true".to_string()
                    } else {
                        "false".to_string()
                    },
                    text(&i["disk_cid"]),
                ]);
            }
            rows.push(row);
            if args.ps {
                for p in i["agent"]["processes"].as_array().into_iter().flatten() {
                    let mut row = vec![
                        String::new(),
                        format!(
                            "{}/{}",
                            p["job"].as_str().unwrap_or(""),
                            p["name"].as_str().unwrap_or("")
                        ),
                        p["state"].as_str().unwrap_or("").to_string(),
                        String::new(),
                        String::new(),
                    ];
                    if args.details {
                        row.extend(std::iter::repeat_n(String::new(), 5));
                    }
                    rows.push(row);
                }
            }
        }
        ui.data(&columns(&rows));
        let count = list.as_array().map_or(0, Vec::len);
        ui.say(&format!("{count} instance(s)"));
        0
    })
}

/// `director vms [--vitals]`.
pub fn vms(global: &GlobalArgs, args: VmsArgs, ui: &mut Ui) -> u8 {
    let name = match deployment_name(global, ui) {
        Ok(name) => name,
        Err(code) => return code,
    };
    with_client(global, ui, async |client, ui| {
        let list = match instances_of(client, &name, true).await {
            Ok(list) => list,
            Err(e) => return fail(ui, e),
        };
        let with_vm: Vec<&Json> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| !i["vm_cid"].is_null())
            .collect();
        if ui.json {
            print_json(ui, &json!(with_vm));
            return 0;
        }
        let mut header = vec![
            "Instance",
            "Process State",
            "AZ",
            "IPs",
            "VM CID",
            "VM Type",
        ];
        if args.vitals {
            header.extend([
                "VM Created At",
                "Uptime",
                "Load (1m, 5m, 15m)",
                "CPU User",
                "CPU Sys",
                "CPU Wait",
                "Memory Usage",
                "Swap Usage",
                "System Disk",
                "Ephemeral Disk",
                "Persistent Disk",
            ]);
        }
        let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
        for i in &with_vm {
            let mut row = vec![
                instance_name(i),
                process_state(i),
                text(&i["az"]),
                ips(i),
                text(&i["vm_cid"]),
                text(&i["vm_type"]),
            ];
            if args.vitals {
                let v = &i["agent"]["vitals"];
                let percent = |value: &Json| {
                    value
                        .as_str()
                        .map(|p| format!("{p}%"))
                        .unwrap_or_else(|| "-".to_string())
                };
                let memory = |value: &Json| match (value["percent"].as_str(), value["kb"].as_str())
                {
                    (Some(p), Some(kb)) => {
                        format!("{p}% ({} MB)", kb.parse::<u64>().unwrap_or(0) / 1024)
                    }
                    _ => "-".to_string(),
                };
                let uptime = v["uptime"]["secs"].as_u64().map_or_else(
                    || "-".to_string(),
                    |s| {
                        format!(
                            "{}d {}h {}m {}s",
                            s / 86400,
                            s / 3600 % 24,
                            s / 60 % 60,
                            s % 60
                        )
                    },
                );
                row.extend([
                    i["vm_created_at"]
                        .as_i64()
                        .map(utc)
                        .unwrap_or_else(|| "-".to_string()),
                    uptime,
                    v["load"]
                        .as_array()
                        .map(|l| {
                            l.iter()
                                .filter_map(Json::as_str)
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_else(|| "-".to_string()),
                    percent(&v["cpu"]["user"]),
                    percent(&v["cpu"]["sys"]),
                    percent(&v["cpu"]["wait"]),
                    memory(&v["mem"]),
                    memory(&v["swap"]),
                    percent(&v["disk"]["system"]["percent"]),
                    percent(&v["disk"]["ephemeral"]["percent"]),
                    percent(&v["disk"]["persistent"]["percent"]),
                ]);
            }
            rows.push(row);
        }
        ui.data(&columns(&rows));
        ui.say(&format!("{} vm(s)", with_vm.len()));
        0
    })
}

/// `director manifest`.
pub fn manifest(global: &GlobalArgs, ui: &mut Ui) -> u8 {
    let name = match deployment_name(global, ui) {
        Ok(name) => name,
        Err(code) => return code,
    };
    with_client(global, ui, async |client, ui| {
        match client
            .get(&format!("/deployments/{}", percent_encode(&name)))
            .await
        {
            Ok(answer) => {
                if ui.json {
                    print_json(ui, &answer);
                } else {
                    ui.data(answer["manifest"].as_str().unwrap_or(""));
                }
                0
            }
            Err(e) => fail(ui, e),
        }
    })
}

/// `director events [--limit N]` (with -d, that deployment's).
pub fn events(global: &GlobalArgs, args: EventsArgs, ui: &mut Ui) -> u8 {
    let mut path = format!("/events?limit={}", args.limit);
    if let Some(d) = &global.deployment {
        path.push_str(&format!("&deployment={}", percent_encode(d)));
    }
    with_client(global, ui, async |client, ui| {
        let list = match client.get(&path).await {
            Ok(list) => list,
            Err(e) => return fail(ui, e),
        };
        if ui.json {
            print_json(ui, &list);
            return 0;
        }
        let mut rows = vec![
            [
                "ID",
                "Time",
                "User",
                "Action",
                "Object Type",
                "Object Name",
                "Task ID",
                "Deployment",
                "Context",
                "Error",
            ]
            .map(str::to_string)
            .to_vec(),
        ];
        for e in list.as_array().into_iter().flatten() {
            let context = match e["context"].get("changes").and_then(Json::as_array) {
                Some(changes) if !changes.is_empty() => changes
                    .iter()
                    .map(|c| {
                        format!(
                            "{}: {}",
                            c["instance"].as_str().unwrap_or(""),
                            c["action"].as_str().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
                _ => String::new(),
            };
            rows.push(vec![
                text(&e["id"]),
                e["time"].as_i64().map(utc).unwrap_or_default(),
                text(&e["user"]),
                text(&e["action"]),
                text(&e["object_type"]),
                text(&e["object_name"]),
                text(&e["task"]),
                text(&e["deployment"]),
                context,
                e["error"]
                    .as_str()
                    .map(|s| s.lines().next().unwrap_or("").to_string())
                    .unwrap_or_default(),
            ]);
        }
        ui.data(&columns(&rows));
        ui.say(&format!("{} event(s)", rows.len() - 1));
        0
    })
}

/// `director start|stop|restart|recreate [GROUP[/ID]]`.
pub fn change_state(global: &GlobalArgs, state: &str, args: TargetArgs, ui: &mut Ui) -> u8 {
    let name = match deployment_name(global, ui) {
        Ok(name) => name,
        Err(code) => return code,
    };
    with_client(global, ui, async |client, ui| {
        let body = json!({"state": state, "target": args.target, "skip_drain": args.skip_drain});
        match client
            .post(
                &format!("/deployments/{}/state", percent_encode(&name)),
                &body,
            )
            .await
        {
            Ok(answer) => follow(client, &answer["task"], ui).await,
            Err(e) => fail(ui, e),
        }
    })
}

/// `director run-errand NAME`.
pub fn run_errand(global: &GlobalArgs, args: ErrandArgs, ui: &mut Ui) -> u8 {
    let name = match deployment_name(global, ui) {
        Ok(name) => name,
        Err(code) => return code,
    };
    with_client(global, ui, async |client, ui| {
        let path = format!(
            "/deployments/{}/errands/{}/runs",
            percent_encode(&name),
            percent_encode(&args.name)
        );
        let runs = match listing_task(client, ui, &path, &json!({})).await {
            Ok((runs, _)) => runs,
            Err(code) => return code,
        };
        if ui.json {
            print_json(ui, &Json::from(runs.clone()));
        } else {
            ui.data(&errand_runs(&runs));
        }
        let failed: Vec<i64> = runs
            .iter()
            .filter_map(|r| r["exit_code"].as_i64())
            .filter(|code| *code != 0)
            .collect();
        match failed.first() {
            None => {
                ui.say(&format!("Errand '{}' completed successfully", args.name));
                0
            }
            Some(code) => {
                ui.say(&format!(
                    "Errand '{}' completed with error (exit code {code})",
                    args.name
                ));
                1
            }
        }
    })
}

/// Posts `body` to `path`, follows the task it starts and answers the JSON list its result
/// holds, with the ended task (`Err`: the exit code, the failure already said).
async fn listing_task(
    client: &Client,
    ui: &mut Ui,
    path: &str,
    body: &Json,
) -> Result<(Vec<Json>, Json), u8> {
    let answer = client.post(path, body).await.map_err(|e| fail(ui, e))?;
    let ended = follow_to_end(client, &answer["task"], ui, false).await?;
    let result = ended["result"].as_str().unwrap_or("");
    if ended["state"] != "done" {
        ui.say(&format!(
            "Task {} {}: {result}",
            answer["task"]["id"],
            text(&ended["state"])
        ));
        return Err(1);
    }
    let list = serde_json::from_str(result).map_err(|e| {
        fail(
            ui,
            format!(
                "task {}: its result is not the list expected ({e}): {result}",
                answer["task"]["id"]
            ),
        )
    })?;
    Ok((list, ended))
}

/// Each run as BOSH prints it: Instance, Exit Code, Stdout, Stderr (multi-line values
/// indented under the first line).
fn errand_runs(runs: &[Json]) -> String {
    let mut out = String::new();
    for run in runs {
        let fields = [
            ("Instance", text(&run["instance"])),
            ("Exit Code", run["exit_code"].to_string()),
            ("Stdout", text(&run["stdout"])),
            ("Stderr", text(&run["stderr"])),
        ];
        for (label, value) in fields {
            let value = value.trim_end();
            let mut lines = value.lines();
            let first = lines.next().filter(|l| !l.is_empty()).unwrap_or("-");
            out.push_str(&format!("{label:<11}{first}\n"));
            for line in lines {
                out.push_str(&format!("{:<11}{line}\n", ""));
            }
        }
        out.push('\n');
    }
    out
}

/// `director delete-deployment [--force]`.
pub fn delete_deployment(global: &GlobalArgs, args: DeleteDeploymentArgs, ui: &mut Ui) -> u8 {
    let name = match deployment_name(global, ui) {
        Ok(name) => name,
        Err(code) => return code,
    };
    if !global.non_interactive {
        ui.say(&format!(
            "deleting deployment '{name}': its VMs go, its persistent disks are orphaned"
        ));
        if !confirm() {
            ui.say("not deleted");
            return 1;
        }
    }
    with_client(global, ui, async |client, ui| {
        match client
            .delete(&format!(
                "/deployments/{}?force={}",
                percent_encode(&name),
                args.force
            ))
            .await
        {
            Ok(answer) => follow(client, &answer["task"], ui).await,
            Err(e) => fail(ui, e),
        }
    })
}

/// `director orphaned-disks`.
pub fn orphaned_disks(global: &GlobalArgs, ui: &mut Ui) -> u8 {
    with_client(global, ui, async |client, ui| {
        let list = match client.get("/disks?orphaned=true").await {
            Ok(list) => list,
            Err(e) => return fail(ui, e),
        };
        if ui.json {
            print_json(ui, &list);
            return 0;
        }
        let mut rows = vec![
            ["Disk CID", "Size", "Orphaned At"]
                .map(str::to_string)
                .to_vec(),
        ];
        for d in list.as_array().into_iter().flatten() {
            rows.push(vec![
                text(&d["cid"]),
                format!("{} MiB", d["size"]),
                d["orphaned_at"].as_i64().map(utc).unwrap_or_default(),
            ]);
        }
        ui.data(&columns(&rows));
        ui.say(&format!("{} orphaned disk(s)", rows.len() - 1));
        0
    })
}

/// `director delete-disk CID`.
pub fn delete_disk(global: &GlobalArgs, args: DeleteDiskArgs, ui: &mut Ui) -> u8 {
    if !global.non_interactive {
        ui.say(&format!(
            "deleting orphaned disk '{}': its data is gone for good",
            args.cid
        ));
        if !confirm() {
            ui.say("not deleted");
            return 1;
        }
    }
    with_client(global, ui, async |client, ui| {
        match client
            .delete(&format!("/disks/{}", percent_encode(&args.cid)))
            .await
        {
            Ok(answer) => follow(client, &answer["task"], ui).await,
            Err(e) => fail(ui, e),
        }
    })
}

/// `director logs [GROUP[/ID]] [--dir DIR]`: the agents upload their `sys/log` as tarballs
/// (a task), then each is downloaded, checked, to `DIR/DEPLOYMENT.GROUP.INDEX-TIME.tgz`.
pub fn logs(global: &GlobalArgs, args: LogsArgs, ui: &mut Ui) -> u8 {
    let name = match deployment_name(global, ui) {
        Ok(name) => name,
        Err(code) => return code,
    };
    if !args.dir.is_dir() {
        return fail(ui, format!("{}: no such directory", args.dir.display()));
    }
    with_client(global, ui, async |client, ui| {
        let path = format!("/deployments/{}/logs", percent_encode(&name));
        let (blobs, ended) =
            match listing_task(client, ui, &path, &json!({"target": args.target})).await {
                Ok(listed) => listed,
                Err(code) => return code,
            };
        let stamp: String = utc(ended["ended_at"].as_i64().unwrap_or_default())
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        let stamp = format!(
            "{}-{}",
            &stamp[..8.min(stamp.len())],
            &stamp[8.min(stamp.len())..]
        );
        let mut written = Vec::new();
        for blob in &blobs {
            let file = args.dir.join(format!(
                "{name}.{}.{}-{stamp}.tgz",
                text(&blob["group"]),
                blob["index"]
            ));
            let id = text(&blob["blob_id"]);
            let digest = format!("sha256:{id}");
            if let Err(e) =
                super::export_release::download(client, global, &id, &digest, &file).await
            {
                return fail(ui, e);
            }
            ui.say(&format!(
                "Logs of {} written to {}",
                text(&blob["instance"]),
                file.display()
            ));
            written.push(json!({"instance": blob["instance"], "file": file.display().to_string(), "size": blob["size"]}));
        }
        if ui.json {
            print_json(ui, &Json::from(written));
        }
        0
    })
}
