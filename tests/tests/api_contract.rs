//! The director's API answers every route in its contract type (`director_api`): a real dev
//! director with a deployed deployment, called through the typed client, which decodes each
//! answer into the route's type and each error into `ApiError`. `GET /openapi.json` is the
//! document checked in as `docs/openapi.json`.

use std::path::Path;
use std::time::{Duration, Instant};

use director_api::client::{Client, ClientError, task_result};
use director_api::deployments::{
    DeployQuery, ErrandRun, EventsQuery, LogTarball, LogsRequest, StateChangeRequest,
};
use director_api::releases::{ExportRequest, ExportedRelease};
use director_api::tasks::{OutputKind, TasksQuery};
use director_api::{ConfigKind, ErrorCode, StateChange, Task, TaskState};
use tests::User;
use tests::hello::{Hello, deploy, set_cloud_config, upload_stemcell, write_manifest};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn ended(client: &Client, task: &Task) -> Task {
    let mut sink = |_: &str| {};
    let ended = client
        .follow(task.id, OutputKind::Event, &mut sink)
        .await
        .unwrap();
    assert!(!ended.state.is_running(), "{ended:?}");
    ended
}

async fn done(client: &Client, task: Task) -> Task {
    let ended = ended(client, &task).await;
    assert_eq!(ended.state, TaskState::Done, "{ended:?}");
    ended
}

fn checked_in_openapi() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json"))
        .unwrap()
}

#[test]
fn every_route_answers_its_contract_type() {
    let user = User::new();
    set_cloud_config(&user, 28);
    upload_stemcell(&user, "1", None);
    let release = user.hello_release();
    let manifest = write_manifest(
        &user,
        &release,
        &Hello {
            errand: true,
            ..Hello::default()
        },
    );
    let (code, _, stderr) = deploy(&user, &manifest, &[]);
    assert_eq!(code, 0, "{stderr}");
    let client = user.api();
    // What the CLI sends: the release as uploaded, not `version: create` with its source.
    let as_sent = |path: &Path, version: &str| {
        let text = std::fs::read_to_string(path).unwrap();
        let line = text
            .lines()
            .find(|l| l.contains("version: create"))
            .unwrap()
            .to_string();
        text.replace(&line, &format!("- {{name: hello, version: '{version}'}}"))
    };

    runtime().block_on(async {
        // The director and its document.
        let info = client.info().await.unwrap();
        assert!(info.dev);
        let served = client.openapi().await.unwrap();
        let checked_in: serde_json::Value = serde_json::from_str(&checked_in_openapi()).unwrap();
        assert_eq!(served, checked_in, "GET /openapi.json is docs/openapi.json");

        // Listings.
        let releases = client.releases().await.unwrap();
        assert_eq!(releases[0].name, "hello");
        assert!(releases[0].release_versions[0].currently_deployed);
        let stemcells = client.stemcells().await.unwrap();
        assert_eq!(stemcells[0].deployments, ["hello"]);
        let cloud = client.config(ConfigKind::Cloud).await.unwrap().unwrap();
        assert_eq!(cloud.kind, ConfigKind::Cloud);
        assert!(client.config(ConfigKind::Runtime).await.unwrap().is_none());
        let deployments = client.deployments().await.unwrap();
        assert_eq!(deployments[0].name, "hello");
        assert_eq!(deployments[0].releases[0].name, "hello");
        let deployed = client.deployment("hello").await.unwrap();
        assert!(deployed.manifest.contains("hello-server"));
        let version = releases[0].release_versions[0].version.clone();
        let plan = client
            .plan(&as_sent(&manifest, &version), &DeployQuery::default())
            .await
            .unwrap();
        assert_eq!(plan.deployment, "hello");
        assert!(
            plan.plan
                .all_instances()
                .all(|i| i.action == director_core::deploy::Action::NoOp),
            "{plan:?}"
        );
        assert!(plan.previous_manifest.is_some());
        let instances = client.instances("hello", true).await.unwrap();
        let server = instances
            .iter()
            .find(|i| i.instance_group == "hello-server")
            .unwrap();
        let agent = server.agent.as_ref().unwrap();
        assert_eq!(agent.job_state, "running");
        assert!(!agent.processes.is_empty());
        assert!(server.vm_type.is_some() && server.stemcell.is_some());
        assert!(
            client.instances("hello", false).await.unwrap()[0]
                .agent
                .is_none()
        );
        // After a deploy, no VM is left that no instance owns.
        assert_eq!(client.recorded_vms("hello").await.unwrap(), vec![]);
        let events = client
            .events(&EventsQuery {
                deployment: Some("hello".to_string()),
                limit: Some(50),
            })
            .await
            .unwrap();
        assert!(events.iter().any(|e| e.object_type == "deployment"));
        assert!(client.orphaned_disks().await.unwrap().is_empty());
        let tasks = client
            .tasks(&TasksQuery {
                limit: Some(5),
                ..TasksQuery::default()
            })
            .await
            .unwrap();
        let last = client.task(tasks[0].id).await.unwrap();
        assert_eq!(last, tasks[0]);
        let output = client
            .task_output(last.id, OutputKind::Event, 0)
            .await
            .unwrap();
        assert!(output.next_offset > 0 && output.state == Some(last.state));
        assert!(
            client
                .cancel_task(last.id)
                .await
                .unwrap()
                .message
                .contains("already ended")
        );

        // Tasks with typed results.
        let restart = client
            .change_state(
                "hello",
                &StateChangeRequest {
                    state: StateChange::Restart,
                    target: Some("hello-client".to_string()),
                    skip_drain: false,
                },
            )
            .await
            .unwrap();
        assert_eq!(restart.description, "restart instances");
        done(&client, restart).await;
        let errand = done(
            &client,
            client.run_errand("hello", "smoke-test").await.unwrap(),
        )
        .await;
        let runs: Vec<ErrandRun> = task_result(&errand).unwrap();
        assert_eq!(runs[0].exit_code, 0, "{runs:?}");
        let logs = done(
            &client,
            client
                .fetch_logs(
                    "hello",
                    &LogsRequest {
                        target: Some("hello-server".to_string()),
                    },
                )
                .await
                .unwrap(),
        )
        .await;
        let tarballs: Vec<LogTarball> = task_result(&logs).unwrap();
        assert_eq!(tarballs.len(), 2);
        let link = client.blob_link(&tarballs[0].blob_id).await.unwrap();
        assert_eq!(link.size, tarballs[0].size);
        let download = client.download(&link.path).await.unwrap();
        assert_eq!(download.bytes().await.unwrap().len() as u64, link.size);
        let stemcell = &stemcells[0];
        let export = done(
            &client,
            client
                .export_release(&ExportRequest {
                    release_name: "hello".to_string(),
                    release_version: releases[0].release_versions[0].version.clone(),
                    stemcell_os: stemcell.operating_system.clone(),
                    stemcell_version: stemcell.version.clone(),
                })
                .await
                .unwrap(),
        )
        .await;
        let exported: ExportedRelease = task_result(&export).unwrap();
        assert_eq!(
            client.blob_link(&exported.blob_id).await.unwrap().sha256,
            exported.sha256
        );

        // Errors are the one shape, with the status's code.
        let missing = client.task(999_999).await.unwrap_err();
        assert_eq!(missing.code(), Some(ErrorCode::NotFound), "{missing}");
        assert_eq!(missing.to_string(), "task 999999 not found");
        let bad = client
            .update_config(ConfigKind::Cloud, "azs: 7\n")
            .await
            .unwrap_err();
        assert_eq!(bad.code(), Some(ErrorCode::Invalid), "{bad}");
        let unknown = client.deployment("nope").await.unwrap_err();
        assert_eq!(unknown.code(), Some(ErrorCode::NotFound), "{unknown}");
        let wrong_token = Client::new(client.url(), Some("wrong".to_string()), None)
            .unwrap()
            .releases()
            .await
            .unwrap_err();
        assert_eq!(wrong_token.code(), Some(ErrorCode::Unauthorized));

        // A deploy while another holds the deployment's lock: 409 naming the holder.
        let slow = as_sent(
            &write_manifest(
                &user,
                &release,
                &Hello {
                    errand: true,
                    drain_seconds: 4,
                    greeting: "salut",
                    ..Hello::default()
                },
            ),
            &version,
        );
        let first = client.deploy(&slow, &DeployQuery::default()).await.unwrap();
        let started = Instant::now();
        loop {
            let debug = client
                .task_output(first.id, OutputKind::Debug, 0)
                .await
                .unwrap();
            if debug.text.contains("acquired lock deployment:hello") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{}",
                debug.text
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match client.deploy(&slow, &DeployQuery::default()).await {
            Err(ClientError::Api(error)) => {
                assert_eq!(error.code, ErrorCode::Locked, "{error:?}");
                let holder = error.details.and_then(|d| d.lock).unwrap();
                assert_eq!(
                    (holder.name.as_str(), holder.task),
                    ("deployment:hello", first.id)
                );
                assert!(
                    error
                        .description
                        .contains(&format!("is locked by task {}", first.id))
                );
            }
            other => panic!("expected 409 locked, got {other:?}"),
        }
        done(&client, first).await;

        // Setting the same config again changes nothing.
        let same = client
            .update_config(ConfigKind::Cloud, &cloud.content)
            .await
            .unwrap();
        assert_eq!((same.id, same.changed), (cloud.id, false));

        // Deleting: the deployment (its disks are orphaned), a disk, the release, the
        // stemcell, clean-up, and finally the dev director itself.
        done(
            &client,
            client.delete_deployment("hello", false).await.unwrap(),
        )
        .await;
        let orphaned = client.orphaned_disks().await.unwrap();
        assert!(!orphaned.is_empty());
        done(&client, client.delete_disk(&orphaned[0].cid).await.unwrap()).await;
        done(
            &client,
            client.delete_release("hello", None, false).await.unwrap(),
        )
        .await;
        done(
            &client,
            client
                .delete_stemcell(&stemcell.name, &stemcell.version, false)
                .await
                .unwrap(),
        )
        .await;
        let cleanup = done(
            &client,
            client
                .cleanup(&director_api::releases::CleanupRequest { all: true })
                .await
                .unwrap(),
        )
        .await;
        assert!(cleanup.result.unwrap_or_default().contains("orphaned disk"));
        assert!(client.releases().await.unwrap().is_empty());
        assert_eq!(client.shutdown().await.unwrap().message, "stopping");
    });
}
