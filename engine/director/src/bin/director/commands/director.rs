//! Verbs that talk to the director: `serve`, `status`, `stop-server`, uploads, listings,
//! deletions, tasks and `clean-up`. Each finds the director (starting a dev director when
//! there is none), makes one call, and follows the task it started.

use std::path::Path;
use std::time::Duration;

use director::client::{Client, ClientError, EventRenderer, ProgressRenderer, TargetFlags};
use director::config::{self, DirectorConfig};
use director_core::diagnostics::Diagnostic;
use director_core::release::{self, CreateOptions};
use serde_json::{Value as Json, json};

use crate::cli::{
    CancelTaskArgs, CleanUpArgs, DeleteArgs, GlobalArgs, ServeArgs, TaskArgs, TasksArgs, UploadArgs,
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
    Client::connect(&flags(global), &mut say).await
}

/// `director serve [--config director.yml] [--dev]`.
pub fn serve(args: ServeArgs, ui: &mut Ui) -> u8 {
    let config = match (&args.config, args.dev) {
        (Some(path), _) => match DirectorConfig::load(path) {
            Ok(config) => config,
            Err(e) => return fail(ui, e),
        },
        (None, true) => DirectorConfig::dev(&config::data_dir()),
        (None, false) => {
            return fail(
                ui,
                "give --config director.yml, or --dev for a dev director under $XDG_DATA_HOME/director",
            );
        }
    };
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
                    let mut doc = serde_json::to_value(&info).unwrap_or_default();
                    doc["url"] = json!(client.url());
                    ui.data(&format!(
                        "{}\n",
                        serde_json::to_string_pretty(&doc).unwrap_or_default()
                    ));
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

/// `director stop-server`: stops the dev director (and only a dev director).
pub fn stop_server(global: &GlobalArgs, ui: &mut Ui) -> u8 {
    runtime().block_on(async {
        let client = if global.director.is_some() {
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
            match Client::new(&record.url, Some(record.token), None) {
                Ok(client) => client,
                Err(e) => return fail(ui, e),
            }
        };
        if let Err(e) = client.post("/shutdown", &json!({})).await {
            if matches!(e, ClientError::Unreachable { .. }) {
                ui.say("no dev director is running");
                return 0;
            }
            return fail(ui, e);
        }
        // Stopped: it no longer answers, and it removed its record (it does that last, after
        // its tasks and its bus have shut down).
        let data_dir = config::data_dir();
        for _ in 0..200 {
            let record_gone = global.director.is_some()
                || director::api::DevRecord::load(&data_dir).is_none_or(|r| r.url != client.url());
            if client.info().await.is_err() && record_gone {
                ui.say(&format!("stopped the dev director at {}", client.url()));
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

/// Follows a queued task to its end; prints its events (or raw JSON lines with `--json`) and
/// its result; exit 0 when done, 1 otherwise.
pub(crate) async fn follow(client: &Client, task: &Json, ui: &mut Ui) -> u8 {
    match follow_to_end(client, task, ui, true).await {
        Ok(ended) => {
            let id = task["id"].as_i64().unwrap_or_default();
            let state = ended["state"].as_str().unwrap_or("");
            let result = ended["result"].as_str().unwrap_or("");
            ui.say(&format!("Task {id} {state}: {result}"));
            if state == "done" { 0 } else { 1 }
        }
        Err(code) => code,
    }
}

/// Follows a task's events until it ends and answers the ended task; the caller says how
/// it ended. With `--json` the events go to stdout when `json_events`. An error reaching
/// the director is reported (`Err` carries the exit code).
pub(crate) async fn follow_to_end(
    client: &Client,
    task: &Json,
    ui: &mut Ui,
    json_events: bool,
) -> Result<Json, u8> {
    let id = task["id"].as_i64().unwrap_or_default();
    ui.say(&format!(
        "Task {id} ({})",
        task["description"].as_str().unwrap_or("")
    ));
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
    let followed = client.follow(id, "event", &mut sink).await;
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
pub fn upload(global: &GlobalArgs, endpoint: &str, args: UploadArgs, ui: &mut Ui) -> u8 {
    let remote = args.source.starts_with("http://") || args.source.starts_with("https://");
    let local = args
        .source
        .strip_prefix("file://")
        .unwrap_or(&args.source)
        .to_string();
    // A release directory is created first, as `bosh upload-release DIR` does.
    let tarball = if !remote && endpoint == "/releases" && Path::new(&local).is_dir() {
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
                .upload_remote(endpoint, &args.source, args.sha256.as_deref(), args.fix)
                .await
        } else {
            client
                .upload(endpoint, &tarball, args.sha256.as_deref(), args.fix, true)
                .await
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
        let list = match client.get("/releases").await {
            Ok(list) => list,
            Err(e) => return fail(ui, e),
        };
        if ui.json {
            ui.data(&format!(
                "{}\n",
                serde_json::to_string_pretty(&list).unwrap_or_default()
            ));
            return 0;
        }
        let mut rows = vec![vec![
            "Name".to_string(),
            "Version".to_string(),
            "Commit Hash".to_string(),
            "Deployments".to_string(),
        ]];
        for release in list.as_array().into_iter().flatten() {
            for version in release["release_versions"].as_array().into_iter().flatten() {
                let dirty = if version["uncommitted_changes"].as_bool() == Some(true) {
                    "+"
                } else {
                    ""
                };
                let deployments: Vec<&str> = version["deployments"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Json::as_str)
                    .collect();
                rows.push(vec![
                    release["name"].as_str().unwrap_or("").to_string(),
                    format!(
                        "{}{}",
                        version["version"].as_str().unwrap_or(""),
                        if deployments.is_empty() { "" } else { "*" }
                    ),
                    format!("{}{dirty}", version["commit_hash"].as_str().unwrap_or("")),
                    deployments.join(", "),
                ]);
            }
        }
        ui.data(&columns(&rows));
        ui.say(&format!(
            "{} release version(s); (*) in use, (+) uncommitted changes",
            rows.len() - 1
        ));
        0
    })
}

/// `director stemcells`.
pub fn stemcells(global: &GlobalArgs, ui: &mut Ui) -> u8 {
    runtime().block_on(async {
        let client = match connect(global, ui).await {
            Ok(client) => client,
            Err(e) => return fail(ui, e),
        };
        let list = match client.get("/stemcells").await {
            Ok(list) => list,
            Err(e) => return fail(ui, e),
        };
        if ui.json {
            ui.data(&format!(
                "{}\n",
                serde_json::to_string_pretty(&list).unwrap_or_default()
            ));
            return 0;
        }
        let mut rows = vec![vec![
            "Name".to_string(),
            "Version".to_string(),
            "OS".to_string(),
            "Formats".to_string(),
            "Deployments".to_string(),
        ]];
        for stemcell in list.as_array().into_iter().flatten() {
            let deployments: Vec<&str> = stemcell["deployments"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Json::as_str)
                .collect();
            let formats: Vec<&str> = stemcell["formats"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Json::as_str)
                .collect();
            rows.push(vec![
                stemcell["name"].as_str().unwrap_or("").to_string(),
                format!(
                    "{}{}",
                    stemcell["version"].as_str().unwrap_or(""),
                    if deployments.is_empty() { "" } else { "*" }
                ),
                stemcell["operating_system"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                formats.join(", "),
                deployments.join(", "),
            ]);
        }
        ui.data(&columns(&rows));
        ui.say(&format!("{} stemcell(s); (*) in use", rows.len() - 1));
        0
    })
}

pub(crate) fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// `director delete-release NAME[/VERSION] [--force]`.
pub fn delete_release(global: &GlobalArgs, args: DeleteArgs, ui: &mut Ui) -> u8 {
    let path = match args.name.split_once('/') {
        Some((name, version)) => format!(
            "/releases/{}?version={}&force={}",
            percent_encode(name),
            percent_encode(version),
            args.force
        ),
        None => format!(
            "/releases/{}?force={}",
            percent_encode(&args.name),
            args.force
        ),
    };
    delete(global, &path, ui)
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
    delete(
        global,
        &format!(
            "/stemcells/{}/{}?force={}",
            percent_encode(name),
            percent_encode(version),
            args.force
        ),
        ui,
    )
}

fn delete(global: &GlobalArgs, path: &str, ui: &mut Ui) -> u8 {
    runtime().block_on(async {
        let client = match connect(global, ui).await {
            Ok(client) => client,
            Err(e) => return fail(ui, e),
        };
        match client.delete(path).await {
            Ok(answer) => match answer.get("task") {
                Some(task) => follow(&client, task, ui).await,
                None => fail(ui, format!("unexpected answer: {answer}")),
            },
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
            Some(n) => format!("/tasks?limit={n}"),
            None => "/tasks?limit=1000&state=queued,processing,cancelling".to_string(),
        };
        if let (Some(deployment), false) = (&global.deployment, args.all) {
            query.push_str(&format!("&deployment={}", percent_encode(deployment)));
        }
        let list = match client.get(&query).await {
            Ok(list) => list,
            Err(e) => return fail(ui, e),
        };
        if ui.json {
            ui.data(&format!(
                "{}\n",
                serde_json::to_string_pretty(&list).unwrap_or_default()
            ));
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
        for task in list.as_array().into_iter().flatten() {
            rows.push(vec![
                task["id"].to_string(),
                task["state"].as_str().unwrap_or("").to_string(),
                task["started_at"]
                    .as_i64()
                    .map(crate::ui::utc)
                    .unwrap_or_else(|| "-".to_string()),
                task["deployment"].as_str().unwrap_or("-").to_string(),
                task["description"].as_str().unwrap_or("").to_string(),
                task["result"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(80)
                    .collect(),
            ]);
        }
        ui.data(&columns(&rows));
        ui.say(&format!("{} task(s)", rows.len() - 1));
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
        let task = match client.get(&format!("/tasks/{}", args.id)).await {
            Ok(task) => task,
            Err(e) => return fail(ui, e),
        };
        if !args.debug && !args.result {
            return follow(&client, &task, ui).await;
        }
        let kind = if args.debug { "debug" } else { "result" };
        let mut text = String::new();
        let mut sink = |chunk: &str| text.push_str(chunk);
        let ended = match client.follow(args.id, kind, &mut sink).await {
            Ok(ended) => ended,
            Err(e) => return fail(ui, e),
        };
        ui.data(&text);
        if kind == "result" && !text.ends_with('\n') && !text.is_empty() {
            ui.data("\n");
        }
        if ended["state"] == "done" { 0 } else { 1 }
    })
}

/// `director cancel-task N`.
pub fn cancel_task(global: &GlobalArgs, args: CancelTaskArgs, ui: &mut Ui) -> u8 {
    runtime().block_on(async {
        let client = match connect(global, ui).await {
            Ok(client) => client,
            Err(e) => return fail(ui, e),
        };
        match client.delete(&format!("/tasks/{}", args.id)).await {
            Ok(answer) => {
                ui.say(answer["message"].as_str().unwrap_or("cancelling"));
                0
            }
            Err(e) => fail(ui, e),
        }
    })
}

/// `director clean-up [--all]`.
pub fn clean_up(global: &GlobalArgs, args: CleanUpArgs, ui: &mut Ui) -> u8 {
    runtime().block_on(async {
        let client = match connect(global, ui).await {
            Ok(client) => client,
            Err(e) => return fail(ui, e),
        };
        match client.post("/cleanup", &json!({ "all": args.all })).await {
            Ok(answer) => match answer.get("task") {
                Some(task) => follow(&client, task, ui).await,
                None => fail(ui, format!("unexpected answer: {answer}")),
            },
            Err(e) => fail(ui, e),
        }
    })
}
