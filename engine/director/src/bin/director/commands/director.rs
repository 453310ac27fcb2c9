//! Verbs that talk to the director: `serve`, `status`, `stop-server`, uploads, listings,
//! deletions, tasks and `clean-up`. Each finds the director (starting a dev director when
//! there is none), makes one call, and follows the task it started.

use std::path::Path;
use std::time::Duration;

use director::client::{
    self as cli_client, Client, ClientError, EventRenderer, ProgressRenderer, TargetFlags,
    UploadKind,
};
use director::config::{self, DirectorConfig};
use director_api::Info;
use director_api::client::ClientError as CallError;
use director_api::releases::{CleanupRequest, Release, Stemcell};
use director_api::tasks::{OutputKind, Task, TaskState, TasksQuery};
use director_core::diagnostics::Diagnostic;
use director_core::release::{self, CreateOptions};
use serde::Serialize;

use crate::cli::{
    CancelTaskArgs, CleanUpArgs, DeleteArgs, GlobalArgs, ResurrectionArgs, ServeArgs, TaskArgs,
    TasksArgs, UploadArgs,
};
use crate::ui::{Ui, columns};

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime can be built")
}

pub(crate) fn fail(ui: &mut Ui, message: impl std::fmt::Display) -> u8 {
    ui.diagnostic(&Diagnostic::general(message.to_string()));
    1
}

fn flags(global: &GlobalArgs) -> TargetFlags {
    TargetFlags {
        url: global.director.clone(),
        token: std::env::var("DIRECTOR_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
        ca_cert: std::env::var("DIRECTOR_CA_CERT")
            .ok()
            .filter(|t| !t.is_empty()),
    }
}

pub(crate) async fn connect(global: &GlobalArgs, ui: &mut Ui) -> Result<Client, ClientError> {
    let mut say = |line: &str| ui.say(line);
    cli_client::connect(&flags(global), &mut say).await
}

/// Prints `value` as the `--json` view on stdout.
pub(crate) fn print_json(ui: &mut Ui, value: &impl Serialize) {
    ui.data(&format!(
        "{}\n",
        serde_json::to_string_pretty(value).unwrap_or_default()
    ));
}

/// `director status --json`: what `GET /info` says, and where the director is.
#[derive(Serialize)]
struct Status<'a> {
    #[serde(flatten)]
    info: &'a Info,
    url: &'a str,
}

/// Where a dev director listens instead of [`config::DEFAULT_LISTEN`] (`127.0.0.1:0`: a
/// free port).
const DEV_LISTEN_VARIABLE: &str = "DIRECTOR_DEV_LISTEN";

/// `director serve [--config director.yml] [--dev]`.
pub fn serve(args: ServeArgs, ui: &mut Ui) -> u8 {
    let config = match (&args.config, args.dev) {
        (Some(path), _) => match DirectorConfig::load(path) {
            Ok(config) => config,
            Err(e) => return fail(ui, e),
        },
        (None, true) => {
            let mut config = DirectorConfig::dev(&config::data_dir());
            // Tests (and a user running several dev directors) move it off 25555.
            if let Ok(listen) = std::env::var(DEV_LISTEN_VARIABLE) {
                config.listen = listen;
            }
            config
        }
        (None, false) => {
            return fail(
                ui,
                "give --config director.yml, or --dev for a dev director under $XDG_DATA_HOME/director",
            );
        }
    };
    if config.tls.is_none() && !config.listens_on_loopback_only() {
        if !args.insecure_http {
            return fail(
                ui,
                format!(
                    "listen: {} without tls would send the director's token in clear over the network: add `tls` to the config, or pass --insecure-http to do it anyway",
                    config.listen
                ),
            );
        }
        ui.say(&format!(
            "WARNING: serving plain HTTP on {}: the token and every secret crosses the network in clear (--insecure-http)",
            config.listen
        ));
    }
    match runtime().block_on(director::api::serve(config, args.dev)) {
        Ok(()) => 0,
        Err(e) => fail(ui, e),
    }
}

/// `director status`.
pub fn status(global: &GlobalArgs, ui: &mut Ui) -> u8 {
    runtime().block_on(async {
        let client = match connect(global, ui).await {
            Ok(client) => client,
            Err(e) => return fail(ui, e),
        };
        match client.info().await {
            Ok(info) => {
                if ui.json {
                    let status = Status {
                        info: &info,
                        url: client.url(),
                    };
                    print_json(ui, &status);
                } else {
                    let rows = vec![
                        vec![
                            "Target".to_string(),
                            format!("{}{}", client.url(), if info.dev { " (dev)" } else { "" }),
                        ],
                        vec!["Name".to_string(), info.name.clone()],
                        vec!["Version".to_string(), info.version.clone()],
                        vec!["State".to_string(), info.state.clone()],
                        vec!["Blobstore".to_string(), info.blobstore.clone()],
                        vec!["Bus".to_string(), info.bus.clone()],
                        vec!["Agents".to_string(), info.agents.clone()],
                        vec!["CPI".to_string(), info.cpi.clone()],
                        vec!["Auth".to_string(), info.user_authentication.clone()],
                    ];
                    ui.data(&columns(&rows));
                }
                0
            }
            Err(e) => fail(ui, e),
        }
    })
}

/// `director stop-server`: stops the dev director (and only a dev director), and says which
/// deployments' local VMs keep running and how to delete them.
pub fn stop_server(global: &GlobalArgs, ui: &mut Ui) -> u8 {
    runtime().block_on(async {
        let named = global
            .director
            .as_deref()
            .filter(|target| *target != cli_client::DEV_TARGET);
        let client = if named.is_some() {
            match connect(global, ui).await {
                Ok(client) => client,
                Err(e) => return fail(ui, e),
            }
        } else {
            let data_dir = config::data_dir();
            let Some(record) = director::api::DevRecord::load(&data_dir) else {
                ui.say("no dev director is running");
                return 0;
            };
            match cli_client::recorded_dev_director(&record).await {
                Ok(cli_client::DevListener::Ours(client)) => client,
                Ok(cli_client::DevListener::Gone) => {
                    ui.say("no dev director is running");
                    return 0;
                }
                Ok(cli_client::DevListener::Stranger(why)) => {
                    return fail(ui, cli_client::stranger_message(&record.url, &why));
                }
                Err(e) => return fail(ui, e),
            }
        };
        let left_running = local_vms(&client).await;
        if let Err(e) = client.shutdown().await {
            if matches!(e, CallError::Unreachable { .. }) {
                ui.say("no dev director is running");
                return 0;
            }
            return fail(ui, e);
        }
        // Stopped: it no longer answers, and it removed its record (it does that last, after
        // its tasks and its bus have shut down).
        let data_dir = config::data_dir();
        for _ in 0..200 {
            let record_gone = named.is_some()
                || director::api::DevRecord::load(&data_dir).is_none_or(|r| r.url != client.url());
            if client.info().await.is_err() && record_gone {
                ui.say(&format!("stopped the dev director at {}", client.url()));
                for line in still_running(&left_running) {
                    ui.say(&line);
                }
                return 0;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        fail(
            ui,
            format!("the director at {} did not stop within 20 s", client.url()),
        )
    })
}

/// The deployments whose local VMs keep running when the director stops (a director stops
/// without its VMs), with their VM counts; none when its CPI is not the local one or it
/// cannot say.
async fn local_vms(client: &Client) -> Vec<(String, usize)> {
    let Ok(info) = client.info().await else {
        return Vec::new();
    };
    if info.cpi != "local" {
        return Vec::new();
    }
    let Ok(deployments) = client.deployments().await else {
        return Vec::new();
    };
    let mut running = Vec::new();
    for deployment in deployments {
        let Ok(instances) = client.instances(&deployment.name, false).await else {
            continue;
        };
        let vms = instances.iter().filter(|i| i.vm_cid.is_some()).count();
        if vms > 0 {
            running.push((deployment.name, vms));
        }
    }
    running
}

/// What `stop-server` says about the local VMs it leaves running.
fn still_running(deployments: &[(String, usize)]) -> Vec<String> {
    let Some((first, _)) = deployments.first() else {
        return Vec::new();
    };
    let listed: Vec<String> = deployments
        .iter()
        .map(|(name, vms)| {
            let noun = if *vms == 1 { "vm" } else { "vms" };
            format!("{name} ({vms} {noun})")
        })
        .collect();
    vec![
        format!(
            "still running on this host, holding their addresses: the local vms of {}",
            listed.join(", ")
        ),
        format!(
            "the next director command starts the dev director again, which finds them; to \
             delete them, run `director -d {first} delete-deployment` (for each deployment) \
             and then `director stop-server`"
        ),
    ]
}

/// Follows a queued task to its end; prints its events (or raw JSON lines with `--json`) and
/// its result; exit 0 when done, 1 otherwise.
pub(crate) async fn follow(client: &Client, task: &Task, ui: &mut Ui) -> u8 {
    match follow_to_end(client, task, ui, true).await {
        Ok(ended) => {
            say_ended(ui, &ended);
            if ended.state == TaskState::Done { 0 } else { 1 }
        }
        Err(code) => code,
    }
}

/// `Task 12 done: uploaded release hello/0+dev.1`.
pub(crate) fn say_ended(ui: &mut Ui, ended: &Task) {
    // A failed task's result can end with an agent's stderr: escaped.
    ui.say(&director::client::printable(&format!(
        "Task {} {}: {}",
        ended.id,
        ended.state,
        ended.result.as_deref().unwrap_or("")
    )));
}

/// Follows a task's events until it ends and answers the ended task; the caller says how
/// it ended. With `--json` the events go to stdout when `json_events`. An error reaching
/// the director is reported (`Err` carries the exit code).
pub(crate) async fn follow_to_end(
    client: &Client,
    task: &Task,
    ui: &mut Ui,
    json_events: bool,
) -> Result<Task, u8> {
    let id = task.id;
    ui.say(&format!("Task {id} ({})", task.description));
    let json = ui.json;
    // Live bars on a terminal (not under CI, not with --no-color/NO_COLOR); lines otherwise.
    let live = !json && ui.color_stderr && std::env::var_os("CI").is_none();
    let mut renderer = EventRenderer::new(id);
    let mut progress = live.then(|| ProgressRenderer::new(id));
    let mut lines = Vec::new();
    let mut sink = |chunk: &str| {
        if json {
            lines.push(chunk.to_string());
        } else if let Some(progress) = progress.as_mut() {
            progress.render(chunk);
        } else {
            for line in renderer.render(chunk) {
                eprintln!("{line}");
            }
        }
    };
    let followed = client.follow(id, OutputKind::Event, &mut sink).await;
    if let Some(progress) = &progress {
        progress.finish();
    }
    let ended = followed.map_err(|e| fail(ui, e))?;
    if json && json_events {
        ui.data(&lines.concat());
    }
    Ok(ended)
}

/// `director upload-release|upload-stemcell SOURCE [--sha256 D] [--fix]`.
pub fn upload(global: &GlobalArgs, kind: UploadKind, args: UploadArgs, ui: &mut Ui) -> u8 {
    let remote = args.source.starts_with("http://") || args.source.starts_with("https://");
    let local = args
        .source
        .strip_prefix("file://")
        .unwrap_or(&args.source)
        .to_string();
    // A release directory is created first, as `bosh upload-release DIR` does.
    let tarball = if !remote && kind == UploadKind::Release && Path::new(&local).is_dir() {
        let options = CreateOptions {
            dir: local.clone().into(),
            name: None,
            version: None,
            final_release: false,
            force: false,
            tarball: None,
        };
        match release::create_release(&options) {
            Ok(created) => {
                let verb = if created.reused {
                    "release is unchanged:"
                } else {
                    "created release"
                };
                ui.say(&format!(
                    "{verb} {}/{}",
                    created.manifest.name, created.manifest.version
                ));
                created.tarball
            }
            Err(e) => return fail(ui, e),
        }
    } else {
        local.into()
    };
    if !remote && !tarball.is_file() {
        return fail(
            ui,
            format!(
                "{}: no such file (expected a tarball, a release directory or an http(s) URL)",
                tarball.display()
            ),
        );
    }
    runtime().block_on(async {
        let client = match connect(global, ui).await {
            Ok(client) => client,
            Err(e) => return fail(ui, e),
        };
        let task = if remote {
            client
                .upload_remote(kind, &args.source, args.sha256.as_deref(), args.fix)
                .await
        } else {
            cli_client::upload(&client, kind, &tarball, args.sha256.as_deref(), args.fix).await
        };
        match task {
            Ok(task) => follow(&client, &task, ui).await,
            Err(e) => fail(ui, e),
        }
    })
}

/// `director releases`.
pub fn releases(global: &GlobalArgs, ui: &mut Ui) -> u8 {
    runtime().block_on(async {
        let client = match connect(global, ui).await {
            Ok(client) => client,
            Err(e) => return fail(ui, e),
        };
        let list = match client.releases().await {
            Ok(list) => list,
            Err(e) => return fail(ui, e),
        };
        if ui.json {
            print_json(ui, &list);
            return 0;
        }
        ui.data(&columns(&release_rows(&list)));
        let count: usize = list.iter().map(|r| r.release_versions.len()).sum();
        ui.say(&format!(
            "{count} release version(s); (*) in use, (+) uncommitted changes"
        ));
        0
    })
}

fn release_rows(list: &[Release]) -> Vec<Vec<String>> {
    let mut rows = vec![vec![
        "Name".to_string(),
        "Version".to_string(),
        "Commit Hash".to_string(),
        "Deployments".to_string(),
    ]];
    for release in list {
        for version in &release.release_versions {
            let dirty = if version.uncommitted_changes { "+" } else { "" };
            let in_use = if version.deployments.is_empty() {
                ""
            } else {
                "*"
            };
            rows.push(vec![
                release.name.clone(),
                format!("{}{in_use}", version.version),
                format!("{}{dirty}", version.commit_hash.as_deref().unwrap_or("")),
                version.deployments.join(", "),
            ]);
        }
    }
    rows
}

/// `director stemcells`.
pub fn stemcells(global: &GlobalArgs, ui: &mut Ui) -> u8 {
    runtime().block_on(async {
        let client = match connect(global, ui).await {
            Ok(client) => client,
            Err(e) => return fail(ui, e),
        };
        let list = match client.stemcells().await {
            Ok(list) => list,
            Err(e) => return fail(ui, e),
        };
        if ui.json {
            print_json(ui, &list);
            return 0;
        }
        ui.data(&columns(&stemcell_rows(&list)));
        ui.say(&format!("{} stemcell(s); (*) in use", list.len()));
        0
    })
}

fn stemcell_rows(list: &[Stemcell]) -> Vec<Vec<String>> {
    let mut rows = vec![vec![
        "Name".to_string(),
        "Version".to_string(),
        "OS".to_string(),
        "Formats".to_string(),
        "Deployments".to_string(),
    ]];
    for stemcell in list {
        let in_use = if stemcell.deployments.is_empty() {
            ""
        } else {
            "*"
        };
        rows.push(vec![
            stemcell.name.clone(),
            format!("{}{in_use}", stemcell.version),
            stemcell.operating_system.clone(),
            stemcell.formats.join(", "),
            stemcell.deployments.join(", "),
        ]);
    }
    rows
}

/// `director delete-release NAME[/VERSION] [--force]`.
pub fn delete_release(global: &GlobalArgs, args: DeleteArgs, ui: &mut Ui) -> u8 {
    let (name, version) = match args.name.split_once('/') {
        Some((name, version)) => (name, Some(version)),
        None => (args.name.as_str(), None),
    };
    run_task(global, ui, async |client| {
        client.delete_release(name, version, args.force).await
    })
}

/// `director delete-stemcell NAME/VERSION [--force]`.
pub fn delete_stemcell(global: &GlobalArgs, args: DeleteArgs, ui: &mut Ui) -> u8 {
    let Some((name, version)) = args.name.split_once('/') else {
        return fail(
            ui,
            format!(
                "{:?}: expected NAME/VERSION (see `director stemcells`)",
                args.name
            ),
        );
    };
    run_task(global, ui, async |client| {
        client.delete_stemcell(name, version, args.force).await
    })
}

/// Connects, starts a task with `start` and follows it to its end.
pub(crate) fn run_task(
    global: &GlobalArgs,
    ui: &mut Ui,
    start: impl AsyncFnOnce(&Client) -> Result<Task, CallError>,
) -> u8 {
    runtime().block_on(async {
        let client = match connect(global, ui).await {
            Ok(client) => client,
            Err(e) => return fail(ui, e),
        };
        match start(&client).await {
            Ok(task) => follow(&client, &task, ui).await,
            Err(e) => fail(ui, e),
        }
    })
}

/// `director tasks [--recent [N]] [--all]`.
pub fn tasks(global: &GlobalArgs, args: TasksArgs, ui: &mut Ui) -> u8 {
    runtime().block_on(async {
        let client = match connect(global, ui).await {
            Ok(client) => client,
            Err(e) => return fail(ui, e),
        };
        let mut query = match args.recent {
            Some(n) => TasksQuery {
                limit: Some(n),
                ..TasksQuery::default()
            },
            None => TasksQuery {
                limit: Some(1000),
                state: Some("queued,processing,cancelling".to_string()),
                ..TasksQuery::default()
            },
        };
        if !args.all {
            query.deployment = global.deployment.clone();
        }
        let list = match client.tasks(&query).await {
            Ok(list) => list,
            Err(e) => return fail(ui, e),
        };
        if ui.json {
            print_json(ui, &list);
            return 0;
        }
        let mut rows = vec![vec![
            "ID".to_string(),
            "State".to_string(),
            "Started".to_string(),
            "Deployment".to_string(),
            "Description".to_string(),
            "Result".to_string(),
        ]];
        for task in &list {
            rows.push(vec![
                task.id.to_string(),
                task.state.to_string(),
                task.started_at
                    .map(crate::ui::utc)
                    .unwrap_or_else(|| "-".to_string()),
                task.deployment.clone().unwrap_or_else(|| "-".to_string()),
                task.description.clone(),
                task.result
                    .as_deref()
                    .unwrap_or("")
                    .chars()
                    .take(80)
                    .collect(),
            ]);
        }
        ui.data(&columns(&rows));
        ui.say(&format!("{} task(s)", list.len()));
        0
    })
}

/// `director task N [--event|--debug|--result]`: prints the output, following a running task.
pub fn task(global: &GlobalArgs, args: TaskArgs, ui: &mut Ui) -> u8 {
    runtime().block_on(async {
        let client = match connect(global, ui).await {
            Ok(client) => client,
            Err(e) => return fail(ui, e),
        };
        let task = match client.task(args.id).await {
            Ok(task) => task,
            Err(e) => return fail(ui, e),
        };
        if !args.debug && !args.result {
            return follow(&client, &task, ui).await;
        }
        let kind = if args.debug {
            OutputKind::Debug
        } else {
            OutputKind::Result
        };
        let mut text = String::new();
        let mut sink = |chunk: &str| text.push_str(chunk);
        let ended = match client.follow(args.id, kind, &mut sink).await {
            Ok(ended) => ended,
            Err(e) => return fail(ui, e),
        };
        // The debug log quotes agents (stderr, script output): escaped. A result is data.
        if kind == OutputKind::Debug {
            text = director::client::printable(&text);
        }
        ui.data(&text);
        if kind == OutputKind::Result && !text.ends_with('\n') && !text.is_empty() {
            ui.data("\n");
        }
        if ended.state == TaskState::Done { 0 } else { 1 }
    })
}

/// `director cancel-task N`.
pub fn cancel_task(global: &GlobalArgs, args: CancelTaskArgs, ui: &mut Ui) -> u8 {
    runtime().block_on(async {
        let client = match connect(global, ui).await {
            Ok(client) => client,
            Err(e) => return fail(ui, e),
        };
        match client.cancel_task(args.id).await {
            Ok(answer) => {
                ui.say(&answer.message);
                0
            }
            Err(e) => fail(ui, e),
        }
    })
}

/// `director update-resurrection on|off`.
pub fn update_resurrection(global: &GlobalArgs, args: ResurrectionArgs, ui: &mut Ui) -> u8 {
    runtime().block_on(async {
        let client = match connect(global, ui).await {
            Ok(client) => client,
            Err(e) => return fail(ui, e),
        };
        match client.update_resurrection(args.state == "off").await {
            Ok(answer) => {
                ui.say(&answer.message);
                0
            }
            Err(e) => fail(ui, e),
        }
    })
}

/// `director clean-up [--all]`.
pub fn clean_up(global: &GlobalArgs, args: CleanUpArgs, ui: &mut Ui) -> u8 {
    let request = CleanupRequest { all: args.all };
    run_task(global, ui, async |client| client.cleanup(&request).await)
}
