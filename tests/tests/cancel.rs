//! Cancelling a deploy and deploying again at once, through the real binaries: the second
//! deploy is queued (not refused) while the first is being cancelled, takes the
//! deployment's lock only once the first has stopped touching instances, and converges.

use std::time::Duration;

use director_api::Task;
use director_api::client::Client;
use director_api::deployments::DeployQuery;
use director_api::tasks::{OutputKind, TaskState};
use serde_json::Value;
use tests::User;
use tests::hello::{
    Hello, deploy, instances, manifest_for_api, set_cloud_config, until_an_update_starts,
    upload_stemcell, write_manifest,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn events(client: &Client, id: i64) -> Vec<Value> {
    let chunk = client.task_output(id, OutputKind::Event, 0).await.unwrap();
    chunk
        .text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

async fn ended(client: &Client, id: i64) -> Task {
    let mut sink = |_: &str| {};
    client
        .follow(id, OutputKind::Event, &mut sink)
        .await
        .unwrap()
}

#[test]
fn a_deploy_started_while_another_is_cancelled_waits_for_it_to_stop() {
    let user = User::new();
    set_cloud_config(&user, 29);
    upload_stemcell(&user, "1", None);
    let release = user.hello_release();
    // Servers drain for 30 s: an update of the canary stays in its drain until cancelled.
    let slow = Hello {
        drain_seconds: 30,
        ..Hello::default()
    };
    let first = write_manifest(&user, &release, &slow);
    let (code, _, stderr) = deploy(&user, &first, &[]);
    assert_eq!(code, 0, "{stderr}");
    let changed = write_manifest(
        &user,
        &release,
        &Hello {
            greeting: "bonjour",
            ..slow.clone()
        },
    );
    let last = write_manifest(
        &user,
        &release,
        &Hello {
            greeting: "hola",
            ..Hello::default()
        },
    );
    let client = user.api();
    runtime().block_on(async {
        let query = DeployQuery::default();
        let text = manifest_for_api;
        let updating = client.deploy(&text(&changed), &query).await.unwrap();
        // The canary's update has started (it then drains for 30 s).
        until_an_update_starts(&client, updating.id).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        client.cancel_task(updating.id).await.unwrap();
        // At once: queued, not refused, although the first may still hold the lock.
        let next = client
            .deploy(
                &text(&last),
                &DeployQuery {
                    skip_drain: true,
                    ..DeployQuery::default()
                },
            )
            .await
            .expect("a deploy started while another is cancelled is queued");
        let cancelled = ended(&client, updating.id).await;
        assert_eq!(cancelled.state, TaskState::Cancelled, "{cancelled:?}");
        let done = ended(&client, next.id).await;
        assert_eq!(done.state, TaskState::Done, "{done:?}");
        // The second touched instances only after the first had ended.
        let stopped_at = cancelled.ended_at.unwrap();
        for event in events(&client, next.id).await {
            if event["stage"] == "Updating instance" {
                assert!(
                    event["time"].as_i64().unwrap() >= stopped_at,
                    "{event} before the cancelled task ended at {stopped_at}"
                );
            }
        }
        // The cancelled task stopped waiting for the 30 s drain.
        assert!(
            cancelled.ended_at.unwrap() - cancelled.started_at.unwrap() < 30,
            "{cancelled:?}"
        );
    });
    let list = instances(&user);
    assert!(tests::hello::all_running(&list), "{list:#?}");
    let out = user.run(&["-d", "hello", "delete-deployment", "-n"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}
