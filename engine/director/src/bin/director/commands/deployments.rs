//! Configs and deployed deployments: `update-cloud-config`, `cloud-config`,
//! `update-runtime-config`, `runtime-config`, `deployments`, `instances`, `vms`,
//! `manifest`, `events`, `start|stop|restart|recreate`, `run-errand`, `delete-deployment`,
//! `orphaned-disks`.

use std::collections::BTreeMap;
use std::io::BufRead;

use director::client::{Client, printable};
use director_api::client::{ClientError as CallError, task_result};
use director_api::deployments::{
    ErrandRun, Event, EventsQuery, Instance, LogTarball, LogsRequest, NameVersion, Problem,
    ProblemResolved, ResolveRequest, StateChangeRequest,
};
use director_api::tasks::{Task, TaskState};
use director_api::{ConfigKind, StateChange};
use director_core::diff::{self, DiffOptions};
use director_core::interpolate::Expectations;
use director_core::yaml::{self, Node, Value};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::director::{connect, fail, follow_to_end, print_json, run_task, runtime, say_ended};
use crate::cli::{
    CloudCheckArgs, ConfigArgs, DeleteDeploymentArgs, DeleteDiskArgs, ErrandArgs, EventsArgs,
    GlobalArgs, InstancesArgs, LogsArgs, TargetArgs, VmsArgs,
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
pub fn update_config(global: &GlobalArgs, kind: ConfigKind, args: ConfigArgs, ui: &mut Ui) -> u8 {
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
    let checked = match kind {
        ConfigKind::Cloud => {
            director_core::manifest::validate_cloud_config(&doc).map(|(_, warnings)| warnings)
        }
        ConfigKind::Runtime => {
            director_core::manifest::validate_runtime_config(&doc).map(|(_, warnings)| warnings)
        }
        ConfigKind::Resurrection => director_core::manifest::validate_resurrection_config(&doc)
            .map(|(_, warnings)| warnings),
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
        let current = match client.config(kind).await {
            Ok(found) => found.map(|config| config.content),
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
        match client.update_config(kind, &text).await {
            Ok(updated) => {
                ui.say(&format!(
                    "updated the {kind} config (version {})",
                    updated.id
                ));
                0
            }
            Err(e) => fail(ui, e),
        }
    })
}

/// `director cloud-config|runtime-config`.
pub fn config(global: &GlobalArgs, kind: ConfigKind, ui: &mut Ui) -> u8 {
    with_client(global, ui, async |client, ui| {
        match client.required_config(kind).await {
            Ok(config) => {
                if ui.json {
                    print_json(ui, &config);
                } else {
                    ui.data(&config.content);
                }
                0
            }
            Err(e) => fail(ui, e),
        }
    })
}

fn names(list: &[NameVersion]) -> String {
    list.iter()
        .map(|r| format!("{}/{}", r.name, r.version))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `director deployments`.
pub fn deployments(global: &GlobalArgs, ui: &mut Ui) -> u8 {
    with_client(global, ui, async |client, ui| {
        let list = match client.deployments().await {
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
        for d in &list {
            rows.push(vec![
                d.name.clone(),
                names(&d.releases),
                names(&d.stemcells),
                d.instances.to_string(),
            ]);
        }
        ui.data(&columns(&rows));
        ui.say(&format!("{} deployment(s)", list.len()));
        0
    })
}

fn instance_name(i: &Instance) -> String {
    format!("{}/{}", i.instance_group, i.id)
}

fn process_state(i: &Instance) -> String {
    if i.vm_cid.is_none() {
        return "-".to_string();
    }
    if i.state == "stopped" {
        return "stopped".to_string();
    }
    i.agent
        .as_ref()
        .map_or_else(|| "-".to_string(), |agent| agent.job_state.clone())
}

/// An optional value, `-` when absent.
fn text(value: Option<&str>) -> String {
    value.unwrap_or("-").to_string()
}

/// `director instances [--ps] [--details]`.
pub fn instances(global: &GlobalArgs, args: InstancesArgs, ui: &mut Ui) -> u8 {
    let name = match deployment_name(global, ui) {
        Ok(name) => name,
        Err(code) => return code,
    };
    with_client(global, ui, async |client, ui| {
        let list = match client.instances(&name, true).await {
            Ok(list) => list,
            Err(e) => return fail(ui, e),
        };
        if ui.json {
            print_json(ui, &list);
            return 0;
        }
        let mut header = vec!["Instance", "Process State", "Health", "AZ", "IPs"];
        if args.ps {
            header.insert(1, "Process");
        }
        if args.details {
            header.extend(["VM CID", "Agent ID", "Index", "Bootstrap", "Disk CID"]);
        }
        let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
        for i in &list {
            let mut row = vec![
                instance_name(i),
                process_state(i),
                text(i.health.as_ref().map(|health| health.state.as_str())),
                text(i.az.as_deref()),
                i.ips.join(", "),
            ];
            if args.ps {
                row.insert(1, String::new());
            }
            if args.details {
                row.extend([
                    text(i.vm_cid.as_deref()),
                    text(i.agent_id.as_deref()),
                    i.index.to_string(),
                    i.bootstrap.to_string(),
                    text(i.disk_cid.as_deref()),
                ]);
            }
            rows.push(row);
            if args.ps {
                for p in i.agent.iter().flat_map(|agent| &agent.processes) {
                    let mut row = vec![
                        String::new(),
                        printable(&format!("{}/{}", p.job, p.name)),
                        printable(&p.state),
                        String::new(),
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
        ui.say(&format!("{} instance(s)", list.len()));
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
        let list = match client.instances(&name, true).await {
            Ok(list) => list,
            Err(e) => return fail(ui, e),
        };
        let with_vm: Vec<&Instance> = list.iter().filter(|i| i.vm_cid.is_some()).collect();
        if ui.json {
            print_json(ui, &with_vm);
            return 0;
        }
        // VMs no instance owns: being made, compiling, running an errand, or left unknown
        // by a director that stopped (their addresses stay reserved).
        let recorded = match client.recorded_vms(&name).await {
            Ok(recorded) => recorded,
            Err(e) => return fail(ui, e),
        };
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
                text(i.az.as_deref()),
                i.ips.join(", "),
                text(i.vm_cid.as_deref()),
                text(i.vm_type.as_deref()),
            ];
            if args.vitals {
                row.push(i.vm_created_at.map(utc).unwrap_or_else(|| "-".to_string()));
                row.extend(vitals(i.agent.as_ref().map(|agent| &agent.vitals)));
            }
            rows.push(row);
        }
        for vm in &recorded {
            let mut row = vec![
                printable(&vm.label),
                format!("{} ({} VM, agent {})", vm.state, vm.purpose, vm.agent_id),
                "-".to_string(),
                vm.ips.join(", "),
                text(vm.vm_cid.as_deref()),
                "-".to_string(),
            ];
            if args.vitals {
                row.push(utc(vm.created_at));
                row.extend(vitals(None));
            }
            rows.push(row);
        }
        ui.data(&columns(&rows));
        ui.say(&format!("{} vm(s)", with_vm.len()));
        if !recorded.is_empty() {
            ui.say(&format!(
                "{} more VM(s) no instance owns; those 'unknown' were being made when a director \
                 stopped and the CPI cannot look them up: their addresses stay reserved",
                recorded.len()
            ));
        }
        0
    })
}

/// The vitals columns of `vms --vitals`: uptime, load, CPU, memory, swap and disks (`-`
/// for what the agent did not say).
fn vitals(vitals: Option<&agent_protocol::Vitals>) -> Vec<String> {
    let dash = || "-".to_string();
    let percent = |value: Option<&String>| value.map_or_else(dash, |p| format!("{p}%"));
    let memory = |value: Option<&std::collections::BTreeMap<String, String>>| match value
        .map(|m| (m.get("percent"), m.get("kb")))
    {
        Some((Some(p), Some(kb))) => {
            format!("{p}% ({} MB)", kb.parse::<u64>().unwrap_or(0) / 1024)
        }
        _ => dash(),
    };
    let disk = |name: &str| percent(vitals.and_then(|v| v.disk.get(name)?.get("percent")));
    let cpu = |name: &str| percent(vitals.and_then(|v| v.cpu.get(name)));
    let uptime = vitals
        .and_then(|v| v.uptime.get("secs"))
        .map_or_else(dash, |s| {
            format!(
                "{}d {}h {}m {}s",
                s / 86400,
                s / 3600 % 24,
                s / 60 % 60,
                s % 60
            )
        });
    vec![
        uptime,
        vitals.map_or_else(dash, |v| v.load.join(", ")),
        cpu("user"),
        cpu("sys"),
        cpu("wait"),
        memory(vitals.map(|v| &v.mem)),
        memory(vitals.map(|v| &v.swap)),
        disk("system"),
        disk("ephemeral"),
        disk("persistent"),
    ]
}

/// `director manifest`.
pub fn manifest(global: &GlobalArgs, ui: &mut Ui) -> u8 {
    let name = match deployment_name(global, ui) {
        Ok(name) => name,
        Err(code) => return code,
    };
    with_client(global, ui, async |client, ui| {
        match client.deployment(&name).await {
            Ok(deployment) => {
                if ui.json {
                    print_json(ui, &deployment);
                } else {
                    ui.data(&deployment.manifest);
                }
                0
            }
            Err(e) => fail(ui, e),
        }
    })
}

/// What a deploy event's `context` says: the instances it changed.
#[derive(Default, Deserialize)]
struct EventContext {
    #[serde(default)]
    changes: Vec<InstanceChange>,
}

/// One changed instance in an [`EventContext`].
#[derive(Deserialize)]
struct InstanceChange {
    #[serde(default)]
    instance: String,
    #[serde(default)]
    action: String,
}

/// `instance: action; …` for a deploy event, empty for others.
fn changes(event: &Event) -> String {
    let context = EventContext::deserialize(&event.context).unwrap_or_default();
    context
        .changes
        .iter()
        .map(|c| format!("{}: {}", c.instance, c.action))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `director events [--limit N]` (with -d, that deployment's).
pub fn events(global: &GlobalArgs, args: EventsArgs, ui: &mut Ui) -> u8 {
    let query = EventsQuery {
        deployment: global.deployment.clone(),
        limit: Some(args.limit),
    };
    with_client(global, ui, async |client, ui| {
        let list = match client.events(&query).await {
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
        for e in &list {
            rows.push(vec![
                e.id.to_string(),
                utc(e.time),
                e.user.clone(),
                e.action.clone(),
                e.object_type.clone(),
                text(e.object_name.as_deref()),
                e.task
                    .map_or_else(|| "-".to_string(), |task| task.to_string()),
                text(e.deployment.as_deref()),
                changes(e),
                e.error
                    .as_deref()
                    .map(|s| s.lines().next().unwrap_or("").to_string())
                    .unwrap_or_default(),
            ]);
        }
        ui.data(&columns(&rows));
        ui.say(&format!("{} event(s)", list.len()));
        0
    })
}

/// `director start|stop|restart|recreate [GROUP[/ID]]`.
pub fn change_state(global: &GlobalArgs, state: StateChange, args: TargetArgs, ui: &mut Ui) -> u8 {
    let name = match deployment_name(global, ui) {
        Ok(name) => name,
        Err(code) => return code,
    };
    let request = StateChangeRequest {
        state,
        target: args.target,
        skip_drain: args.skip_drain,
    };
    run_task(global, ui, async |client| {
        client.change_state(&name, &request).await
    })
}

/// `director run-errand NAME`.
pub fn run_errand(global: &GlobalArgs, args: ErrandArgs, ui: &mut Ui) -> u8 {
    let name = match deployment_name(global, ui) {
        Ok(name) => name,
        Err(code) => return code,
    };
    with_client(global, ui, async |client, ui| {
        let started = client.run_errand(&name, &args.name).await;
        let runs: Vec<ErrandRun> = match listing_task(client, ui, started).await {
            Ok((runs, _)) => runs,
            Err(code) => return code,
        };
        if ui.json {
            print_json(ui, &runs);
        } else {
            ui.data(&errand_runs(&runs));
        }
        match runs.iter().map(|r| r.exit_code).find(|code| *code != 0) {
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

/// `director cloud-check|cck [--auto | --resolution NAME | --report]`: scans the deployment
/// (a task holding its lock) and lists the problems, then applies resolutions: chosen one by
/// one (the default), each problem's default (`--auto`), or one resolution for every problem
/// that offers it (`--resolution`). `--report` only lists, and exits 2 while problems exist.
pub fn cloud_check(global: &GlobalArgs, args: CloudCheckArgs, ui: &mut Ui) -> u8 {
    let name = match deployment_name(global, ui) {
        Ok(name) => name,
        Err(code) => return code,
    };
    let interactive = !args.auto && args.resolution.is_none() && !args.report;
    if interactive && global.non_interactive {
        return fail(
            ui,
            "cloud-check: say how to resolve problems without prompts: --auto, --resolution NAME or --report",
        );
    }
    with_client(global, ui, async |client, ui| {
        let started = client.scan(&name).await;
        let problems: Vec<Problem> = match listing_task(client, ui, started).await {
            Ok((problems, _)) => problems,
            Err(code) => return code,
        };
        if !ui.json && !problems.is_empty() {
            ui.data(&problem_table(&problems));
        }
        ui.say(&format!("{} problem(s)", problems.len()));
        if problems.is_empty() || args.report {
            if ui.json {
                let report = CloudCheckReport {
                    problems,
                    resolved: Vec::new(),
                };
                print_json(ui, &report);
                return if report.problems.is_empty() { 0 } else { 2 };
            }
            return if problems.is_empty() { 0 } else { 2 };
        }
        let chosen: BTreeMap<String, String> = if args.auto {
            problems
                .iter()
                .filter_map(|p| Some((p.id.clone(), p.resolutions.first()?.name.clone())))
                .collect()
        } else if let Some(wanted) = &args.resolution {
            let (offering, not): (Vec<&Problem>, Vec<&Problem>) = problems
                .iter()
                .partition(|p| p.resolutions.iter().any(|r| &r.name == wanted));
            for problem in not {
                ui.say(&format!(
                    "left as it is (it offers no '{wanted}'): {}",
                    printable(&problem.description)
                ));
            }
            offering
                .into_iter()
                .map(|p| (p.id.clone(), wanted.clone()))
                .collect()
        } else {
            match choose_resolutions(&problems) {
                Some(chosen) => chosen,
                None => {
                    ui.say("no resolution applied");
                    return 1;
                }
            }
        };
        if chosen.is_empty() {
            ui.say("no resolution to apply");
            return 1;
        }
        let request = ResolveRequest {
            resolutions: chosen,
        };
        let started = client.resolve_problems(&name, &request).await;
        let outcomes: Vec<ProblemResolved> = match listing_task(client, ui, started).await {
            Ok((outcomes, _)) => outcomes,
            Err(code) => return code,
        };
        if ui.json {
            let report = CloudCheckReport {
                problems,
                resolved: outcomes.clone(),
            };
            print_json(ui, &report);
        } else {
            ui.data(&outcome_table(&outcomes));
        }
        let failed = outcomes.iter().filter(|o| o.error.is_some()).count();
        if failed > 0 {
            ui.say(&format!("{failed} resolution(s) failed"));
            return 1;
        }
        ui.say(&format!("applied {} resolution(s)", outcomes.len()));
        0
    })
}

/// What `cloud-check --json` prints: the problems found and what resolving did.
#[derive(Serialize)]
struct CloudCheckReport {
    problems: Vec<Problem>,
    resolved: Vec<ProblemResolved>,
}

/// `#`, `Type`, `Description`: BOSH's problem listing.
fn problem_table(problems: &[Problem]) -> String {
    let mut rows = vec![["#", "Type", "Description"].map(str::to_string).to_vec()];
    for (n, problem) in problems.iter().enumerate() {
        rows.push(vec![
            (n + 1).to_string(),
            problem.kind.as_str().to_string(),
            printable(&problem.description),
        ]);
    }
    columns(&rows)
}

fn outcome_table(outcomes: &[ProblemResolved]) -> String {
    let mut rows = vec![
        ["Problem", "Resolution", "Result"]
            .map(str::to_string)
            .to_vec(),
    ];
    for outcome in outcomes {
        rows.push(vec![
            outcome.problem.clone(),
            outcome.resolution.clone(),
            outcome.error.as_deref().map_or_else(
                || "done".to_string(),
                |e| format!("failed: {}", printable(e)),
            ),
        ]);
    }
    columns(&rows)
}

/// Asks for each problem's resolution on the terminal (the default: the first), then for a
/// confirmation; `None` when the operator declines or input ends.
fn choose_resolutions(problems: &[Problem]) -> Option<BTreeMap<String, String>> {
    let mut chosen = BTreeMap::new();
    let mut input = std::io::stdin().lock();
    for (n, problem) in problems.iter().enumerate() {
        eprintln!(
            "\nProblem {} of {}: {}",
            n + 1,
            problems.len(),
            printable(&problem.description)
        );
        for (i, resolution) in problem.resolutions.iter().enumerate() {
            eprintln!("  {}: {}", i + 1, resolution.plan);
        }
        loop {
            eprint!("Resolution [1]: ");
            let mut line = String::new();
            if input.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let answer = line.trim();
            let picked = if answer.is_empty() {
                Some(0)
            } else {
                answer
                    .parse::<usize>()
                    .ok()
                    .filter(|k| (1..=problem.resolutions.len()).contains(k))
                    .map(|k| k - 1)
            };
            match picked {
                Some(k) => {
                    chosen.insert(problem.id.clone(), problem.resolutions[k].name.clone());
                    break;
                }
                None => eprintln!("expected a number from 1 to {}", problem.resolutions.len()),
            }
        }
    }
    eprintln!();
    for (id, resolution) in &chosen {
        eprintln!("  {id}: {resolution}");
    }
    eprint!("Apply resolutions? [yN]: ");
    let mut line = String::new();
    input.read_line(&mut line).ok()?;
    matches!(line.trim().to_lowercase().as_str(), "y" | "yes").then_some(chosen)
}

/// Follows the task `started` (when it did start) and answers the list its result holds,
/// with the ended task (`Err`: the exit code, the failure already said).
async fn listing_task<T: DeserializeOwned>(
    client: &Client,
    ui: &mut Ui,
    started: Result<Task, CallError>,
) -> Result<(Vec<T>, Task), u8> {
    let task = started.map_err(|e| fail(ui, e))?;
    let ended = follow_to_end(client, &task, ui, false).await?;
    if ended.state != TaskState::Done {
        say_ended(ui, &ended);
        return Err(1);
    }
    let list = task_result(&ended).map_err(|e| fail(ui, e))?;
    Ok((list, ended))
}

/// Each run as BOSH prints it: Instance, Exit Code, Stdout, Stderr (multi-line values
/// indented under the first line).
fn errand_runs(runs: &[ErrandRun]) -> String {
    let mut out = String::new();
    for run in runs {
        // An errand's output is the job's: escaped, so it cannot drive the terminal.
        let fields = [
            ("Instance", printable(&run.instance)),
            ("Exit Code", run.exit_code.to_string()),
            ("Stdout", printable(&run.stdout)),
            ("Stderr", printable(&run.stderr)),
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
    run_task(global, ui, async |client| {
        client.delete_deployment(&name, args.force).await
    })
}

/// `director orphaned-disks`.
pub fn orphaned_disks(global: &GlobalArgs, ui: &mut Ui) -> u8 {
    with_client(global, ui, async |client, ui| {
        let list = match client.orphaned_disks().await {
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
        for d in &list {
            rows.push(vec![
                d.cid.clone(),
                format!("{} MiB", d.size),
                d.orphaned_at.map(utc).unwrap_or_default(),
            ]);
        }
        ui.data(&columns(&rows));
        ui.say(&format!("{} orphaned disk(s)", list.len()));
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
    run_task(global, ui, async |client| {
        client.delete_disk(&args.cid).await
    })
}

/// A downloaded log tarball, as `logs --json` lists it.
#[derive(Serialize)]
struct WrittenLogs {
    instance: String,
    file: String,
    size: u64,
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
    let request = LogsRequest {
        target: args.target.clone(),
    };
    with_client(global, ui, async |client, ui| {
        let started = client.fetch_logs(&name, &request).await;
        let (tarballs, ended): (Vec<LogTarball>, Task) =
            match listing_task(client, ui, started).await {
                Ok(listed) => listed,
                Err(code) => return code,
            };
        let stamp: String = utc(ended.ended_at.unwrap_or_default())
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        let stamp = format!(
            "{}-{}",
            &stamp[..8.min(stamp.len())],
            &stamp[8.min(stamp.len())..]
        );
        let mut written = Vec::new();
        for tarball in tarballs {
            let file = args.dir.join(format!(
                "{name}.{}.{}-{stamp}.tgz",
                tarball.group, tarball.index
            ));
            let digest = format!("sha256:{}", tarball.blob_id);
            if let Err(e) =
                super::export_release::download(client, &tarball.blob_id, &digest, &file).await
            {
                return fail(ui, e);
            }
            ui.say(&format!(
                "Logs of {} written to {}",
                tarball.instance,
                file.display()
            ));
            written.push(WrittenLogs {
                instance: tarball.instance,
                file: file.display().to_string(),
                size: tarball.size,
            });
        }
        if ui.json {
            print_json(ui, &written);
        }
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errand_output_cannot_drive_the_terminal() {
        let text = errand_runs(&[ErrandRun {
            instance: "smoke/0".to_string(),
            exit_code: 1,
            stdout: "ok\u{1b}[2J\u{1b}]0;title\u{7}\n".to_string(),
            stderr: "bad\rworse".to_string(),
        }]);
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}') && !text.contains('\r'),
            "{text:?}"
        );
        assert!(text.contains("ok\\x1b[2J\\x1b]0;title\\x07"), "{text}");
        assert!(text.contains("bad\\rworse"), "{text}");
    }
}
