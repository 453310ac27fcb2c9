//! Two directors on one PostgreSQL database: the second one starting does not fail the
//! first one's running task (each task records its director, directors beat, and only the
//! tasks of a silent director, or a director's own previous run, are failed).

use std::process::Command;

use director_api::client::Client;
use director_api::deployments::DeployQuery;
use director_api::tasks::{OutputKind, TaskState};
use tests::User;
use tests::hello::{
    Hello, deploy, manifest_for_api, set_cloud_config, until_an_update_starts, upload_stemcell,
    write_manifest,
};

/// A database of the test's own on the server `DIRECTOR_TEST_POSTGRES_URL` names (what
/// `.ci/run` sets up), dropped when the value is dropped.
struct Database {
    admin_url: String,
    name: String,
}

impl Database {
    fn create() -> Database {
        let admin_url = std::env::var("DIRECTOR_TEST_POSTGRES_URL").expect(
            "DIRECTOR_TEST_POSTGRES_URL names a PostgreSQL server where the role may create \
             databases (.ci/run sets it up)",
        );
        let name = format!("director_two_{}", std::process::id());
        let database = Database { admin_url, name };
        database.psql(&format!("CREATE DATABASE {}", database.name));
        database
    }

    fn url(&self) -> String {
        let (authority, _) = self.admin_url.rsplit_once('/').unwrap();
        format!("{authority}/{}", self.name)
    }

    fn psql(&self, sql: &str) {
        let out = Command::new("psql")
            .args([&self.admin_url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        self.psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

#[test]
fn a_second_director_on_the_same_database_leaves_the_first_ones_task_running() {
    let database = Database::create();
    let db = format!("db: {{url: '{}'}}", database.url());
    let first = User::with_director_config(&db);
    set_cloud_config(&first, 30);
    upload_stemcell(&first, "1", None);
    let release = first.hello_release();
    let slow = Hello {
        drain_seconds: 15,
        ..Hello::default()
    };
    let (code, _, stderr) = deploy(&first, &write_manifest(&first, &release, &slow), &[]);
    assert_eq!(code, 0, "{stderr}");
    let changed = write_manifest(
        &first,
        &release,
        &Hello {
            greeting: "bonjour",
            drain_seconds: 0,
            ..slow
        },
    );
    let client: Client = first.api();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let task = client
            .deploy(&manifest_for_api(&changed), &DeployQuery::default())
            .await
            .unwrap();
        // The canary drains for 15 s: the second director starts meanwhile.
        until_an_update_starts(&client, task.id).await;
        let second = User::with_director_config(&db);
        let log = std::fs::read_to_string(second.home.path().join("director.log")).unwrap();
        assert!(!log.contains("marked"), "{log}");
        let running = client.task(task.id).await.unwrap();
        assert!(running.state.is_running(), "{running:?}");
        let mut sink = |_: &str| {};
        let ended = client
            .follow(task.id, OutputKind::Event, &mut sink)
            .await
            .unwrap();
        assert_eq!(ended.state, TaskState::Done, "{ended:?}");
        // The second director sees the first one's task as it ended.
        let seen = second.api().task(task.id).await.unwrap();
        assert_eq!(seen.state, TaskState::Done);
    });
    let out = first.run(&["-d", "hello", "delete-deployment", "-n"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}
