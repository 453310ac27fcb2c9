//! The state module against both backends.
//!
//! Every behaviour is one `check_*` function, written once and run twice by
//! `on_both_backends!`: on SQLite (a file in a temporary directory) and on PostgreSQL (a
//! database created for the test through `DIRECTOR_TEST_POSTGRES_URL` and dropped after it,
//! so tests run in parallel without sharing rows). Without that variable the PostgreSQL
//! variants fail, saying how to set it: a skipped backend must not look like a passing one.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use director_state::{
    Archive, Backend, DeleteError, LATEST_SCHEMA_VERSION, NewBlob, NewCompiledPackage, NewEvent,
    NewInstance, NewJob, NewPackage, NewReleaseVersion, NewSlot, NewStemcell, NewTask, NewVmRecord,
    Object, ReleaseVersion, State, StateError, Taken, TaskFilter, TaskId, TaskState, Vm, VmPurpose,
    VmRecordState,
};
use futures::FutureExt;
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::Connection;

const POSTGRES_URL_VARIABLE: &str = "DIRECTOR_TEST_POSTGRES_URL";

macro_rules! on_both_backends {
    (state: [$($state_check:ident),* $(,)?], url: [$($url_check:ident),* $(,)?] $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $state_check() {
                super::with_state(super::Backend::Sqlite, super::$state_check).await;
            })*
            $(#[tokio::test]
            async fn $url_check() {
                super::with_url(super::Backend::Sqlite, super::$url_check).await;
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $state_check() {
                super::with_state(super::Backend::Postgres, super::$state_check).await;
            })*
            $(#[tokio::test]
            async fn $url_check() {
                super::with_url(super::Backend::Postgres, super::$url_check).await;
            })*
        }
    };
}

on_both_backends! {
    state: [
        check_release_versions_round_trip_and_share_unchanged_packages,
        check_duplicate_release_version_already_exists,
        check_release_version_in_use_is_not_deleted,
        check_failed_upload_leaves_no_rows,
        check_compiled_packages_are_unique_per_stemcell_and_dependencies,
        check_stemcells_are_unique,
        check_task_life_cycle,
        check_task_lists_filter_and_order,
        check_orphaned_tasks_are_failed_and_their_locks_freed,
        check_lock_contention,
        check_expired_lock_is_taken_over,
        check_unreferenced_blobs,
        check_held_blobs_are_kept_until_released_or_expired,
        check_upload_slots_are_taken_once_and_filled_once,
        check_deployments_and_manifest_history,
        check_events_round_trip,
        check_director_attributes_are_set_and_read_back,
        check_instances_vms_disks_and_addresses,
        check_configs_credentials_and_links,
        check_vm_records_hold_addresses_until_the_vm_is_gone,
        check_a_disowned_vm_stays_recorded,
    ],
    url: [check_migrations_apply_once],
}

// The harness.

/// Runs `check` on a freshly opened state of `backend`, then closes it.
async fn with_state(backend: Backend, check: impl AsyncFnOnce(&State)) {
    with_url(backend, async move |url: &str| {
        let state = State::open(url).await.expect("the state opens");
        assert_eq!(state.backend(), backend);
        check(&state).await;
        state.close().await;
    })
    .await;
}

/// Runs `check` with the URL of an empty database of `backend`, removed afterwards.
async fn with_url(backend: Backend, check: impl AsyncFnOnce(&str)) {
    match backend {
        Backend::Sqlite => {
            let directory = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}/state.db", directory.path().display());
            check(&url).await;
        }
        Backend::Postgres => {
            let admin_url = std::env::var(POSTGRES_URL_VARIABLE).unwrap_or_else(|_| {
                panic!(
                    "{POSTGRES_URL_VARIABLE} is not set, so the PostgreSQL variant of this test \
                     cannot run. Point it at a server where the role may create databases, e.g. \
                     `export {POSTGRES_URL_VARIABLE}=postgres://director:director@127.0.0.1:5432/director_test` \
                     (.ci/run shows how CI installs and starts PostgreSQL and creates that role)"
                )
            });
            let database = format!("director_test_{}", uuid::Uuid::new_v4().simple());
            let mut admin = sqlx::PgConnection::connect(&admin_url)
                .await
                .unwrap_or_else(|error| {
                    panic!("connecting to {POSTGRES_URL_VARIABLE} to create a database: {error}")
                });
            sqlx::raw_sql(&format!("CREATE DATABASE {database}"))
                .execute(&mut admin)
                .await
                .unwrap_or_else(|error| panic!("creating database {database}: {error}"));
            let url = with_database(&admin_url, &database);
            let outcome = AssertUnwindSafe(check(&url)).catch_unwind().await;
            let dropped = sqlx::raw_sql(&format!("DROP DATABASE {database} WITH (FORCE)"))
                .execute(&mut admin)
                .await;
            admin.close().await.ok();
            if let Err(panic) = outcome {
                std::panic::resume_unwind(panic);
            }
            dropped.unwrap_or_else(|error| panic!("dropping database {database}: {error}"));
        }
    }
}

/// `url` with its database (the path) replaced by `database`, query parameters kept.
fn with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// url");
    let (location, query) = match rest.split_once('?') {
        Some((location, query)) => (location, format!("?{query}")),
        None => (rest, String::new()),
    };
    let authority = location.split('/').next().unwrap_or(location);
    format!("{scheme}://{authority}/{database}{query}")
}

// Fixtures.

fn sha256(seed: &str) -> String {
    Sha256::digest(seed.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn archive(seed: &str) -> Archive {
    let blob_id = sha256(seed);
    Archive {
        digest: format!("sha256:{blob_id}"),
        blob_id,
    }
}

fn job(name: &str, fingerprint: &str, packages: &[&str]) -> NewJob {
    NewJob {
        name: name.to_string(),
        version: fingerprint.to_string(),
        fingerprint: fingerprint.to_string(),
        archive: archive(&format!("job {name} {fingerprint}")),
        spec: json!({"name": name, "templates": {"ctl.tera": "bin/ctl"}, "packages": packages}),
    }
}

fn package(name: &str, fingerprint: &str, dependencies: &[&str]) -> NewPackage {
    NewPackage {
        name: name.to_string(),
        version: fingerprint.to_string(),
        fingerprint: fingerprint.to_string(),
        archive: Some(archive(&format!("package {name} {fingerprint}"))),
        dependencies: dependencies.iter().map(|name| name.to_string()).collect(),
    }
}

fn release(version: &str, jobs: Vec<NewJob>, packages: Vec<NewPackage>) -> NewReleaseVersion {
    NewReleaseVersion {
        name: "hello".to_string(),
        version: version.to_string(),
        commit_hash: Some("0a1b2c3d".to_string()),
        uncommitted_changes: version.contains("dev"),
        manifest: format!("name: hello\nversion: \"{version}\"\n"),
        jobs,
        packages,
    }
}

/// `hello/<version>`: job `web` on packages `app` (fingerprint `app_fingerprint`) and
/// `ruby` (unchanged across versions).
fn hello(version: &str, app_fingerprint: &str) -> NewReleaseVersion {
    release(
        version,
        vec![job("web", "web1", &["app", "ruby"])],
        vec![
            package("ruby", "ruby1", &[]),
            package("app", app_fingerprint, &["ruby"]),
        ],
    )
}

/// Records the blobs of every archive of `release`, as an upload stores them first.
async fn store_blobs(state: &State, release: &NewReleaseVersion) {
    let archives = release.jobs.iter().map(|job| &job.archive).chain(
        release
            .packages
            .iter()
            .filter_map(|package| package.archive.as_ref()),
    );
    for archive in archives {
        store_blob(state, &archive.blob_id).await;
    }
}

async fn store_blob(state: &State, id: &str) {
    state
        .blobs()
        .insert(&NewBlob {
            id: id.to_string(),
            size: 1024,
        })
        .await
        .unwrap();
}

async fn upload(state: &State, release: &NewReleaseVersion) -> ReleaseVersion {
    store_blobs(state, release).await;
    state.releases().insert(release).await.unwrap()
}

fn stemcell(version: &str) -> NewStemcell {
    NewStemcell {
        name: "bosh-warden-boshlite-ubuntu-jammy-go_agent".to_string(),
        operating_system: "ubuntu-jammy".to_string(),
        version: version.to_string(),
        sha256: sha256(&format!("image {version}")),
        api_version: 3,
        cloud_properties: json!({"infrastructure": "warden", "disk": 3072, "z": [1, 2]}),
        formats: vec!["warden-tar".to_string()],
        cid: format!("stemcell-cid-{version}"),
        image_blob_id: None,
    }
}

fn new_task(description: &str, deployment: Option<&str>) -> NewTask {
    NewTask {
        description: description.to_string(),
        deployment: deployment.map(str::to_string),
        user: "admin".to_string(),
        context: json!({"context_id": "abc"}),
        director: None,
    }
}

fn owned_task(description: &str, director: &str) -> NewTask {
    NewTask {
        director: Some(director.to_string()),
        ..new_task(description, None)
    }
}

// The checks.

async fn check_migrations_apply_once(url: &str) {
    let state = State::open(url).await.unwrap();
    assert_eq!(state.schema_version().await.unwrap(), LATEST_SCHEMA_VERSION);
    state.deployments().create("cf").await.unwrap();
    state.close().await;

    let state = State::open(url)
        .await
        .expect("a migrated database opens again");
    assert_eq!(state.schema_version().await.unwrap(), LATEST_SCHEMA_VERSION);
    let deployment = state.deployments().find("cf").await.unwrap();
    assert_eq!(
        deployment.map(|deployment| deployment.name).as_deref(),
        Some("cf")
    );
    state.close().await;

    let state = State::open(url).await.expect("and again");
    assert_eq!(state.deployments().list().await.unwrap().len(), 1);
    state.close().await;
}

async fn check_release_versions_round_trip_and_share_unchanged_packages(state: &State) {
    let first = upload(state, &hello("0+dev.1", "app1")).await;
    assert_eq!(first.name, "hello");
    assert_eq!(first.version, "0+dev.1");
    assert_eq!(first.commit_hash.as_deref(), Some("0a1b2c3d"));
    assert!(first.uncommitted_changes);
    assert_eq!(first.manifest, "name: hello\nversion: \"0+dev.1\"\n");
    assert!(first.deployments.is_empty());
    let job_names: Vec<&str> = first.jobs.iter().map(|job| job.name.as_str()).collect();
    assert_eq!(job_names, ["web"]);
    assert_eq!(first.jobs[0].archive, archive("job web web1"));
    assert_eq!(
        first.jobs[0].spec,
        json!({"name": "web", "templates": {"ctl.tera": "bin/ctl"}, "packages": ["app", "ruby"]})
    );
    let package_names: Vec<&str> = first.packages.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(package_names, ["app", "ruby"], "sorted by name");
    assert_eq!(first.packages[0].dependencies, ["ruby"]);
    assert_eq!(first.packages[0].archive, Some(archive("package app app1")));
    assert_eq!(first.packages[1].fingerprint, "ruby1");

    let found = state.releases().find("hello", "0+dev.1").await.unwrap();
    assert_eq!(found.as_ref(), Some(&first), "what was stored reads back");
    assert_eq!(
        state.releases().find("hello", "0+dev.9").await.unwrap(),
        None
    );
    assert_eq!(
        state.releases().find("other", "0+dev.1").await.unwrap(),
        None
    );

    let second = upload(state, &hello("0+dev.2", "app2")).await;
    let id_of = |release: &ReleaseVersion, name: &str| {
        release
            .packages
            .iter()
            .find(|package| package.name == name)
            .map(|package| package.id)
            .unwrap()
    };
    assert_eq!(
        id_of(&second, "ruby"),
        id_of(&first, "ruby"),
        "unchanged: shared"
    );
    assert_ne!(
        id_of(&second, "app"),
        id_of(&first, "app"),
        "changed: new row"
    );
    assert_eq!(second.jobs[0].id, first.jobs[0].id, "unchanged job: shared");

    let versions: Vec<(String, String)> = state
        .releases()
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|summary| (summary.name, summary.version))
        .collect();
    assert_eq!(
        versions,
        [
            ("hello".to_string(), "0+dev.1".to_string()),
            ("hello".to_string(), "0+dev.2".to_string())
        ]
    );

    // The shared package is one row, so its blob has one reference.
    let blobs = state.blobs().list().await.unwrap();
    let references = |seed: &str| {
        let id = sha256(seed);
        blobs.iter().find(|blob| blob.id == id).unwrap().references
    };
    assert_eq!(references("package ruby ruby1"), 1);
    assert_eq!(references("job web web1"), 1);
    assert_eq!(references("package app app2"), 1);
}

async fn check_duplicate_release_version_already_exists(state: &State) {
    upload(state, &hello("1", "app1")).await;
    let error = state
        .releases()
        .insert(&hello("1", "app2"))
        .await
        .expect_err("a version is recorded once");
    assert!(
        matches!(
            &error,
            StateError::AlreadyExists { object: Object::ReleaseVersion { name, version } }
                if name == "hello" && version == "1"
        ),
        "{error:?}"
    );
    assert_eq!(error.to_string(), "release 'hello/1' already exists");
    assert_eq!(state.releases().list().await.unwrap().len(), 1);
    let stored = state.releases().find("hello", "1").await.unwrap().unwrap();
    assert_eq!(
        stored.packages[0].fingerprint, "app1",
        "the first upload stays"
    );

    let twice = release(
        "2",
        vec![job("web", "web1", &[]), job("web", "web2", &[])],
        Vec::new(),
    );
    let error = state.releases().insert(&twice).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "release 'hello/2': job 'web' is listed twice"
    );
}

async fn check_release_version_in_use_is_not_deleted(state: &State) {
    let first = upload(state, &hello("1", "app1")).await;
    let second = upload(state, &hello("2", "app2")).await;
    let deployment = state.deployments().create("cf").await.unwrap();
    state
        .deployments()
        .set_uses(deployment.id, &[first.id], &[])
        .await
        .unwrap();
    let used = state.releases().find("hello", "1").await.unwrap().unwrap();
    assert_eq!(used.deployments, ["cf"]);

    let error = state.releases().delete("hello", "1").await.unwrap_err();
    assert!(
        matches!(&error, StateError::InUse { deployments, .. } if deployments == &["cf"]),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "release 'hello/1' is in use by deployment 'cf'"
    );

    // The unused version goes, with the package only it had; the shared ones stay.
    state.releases().delete("hello", "2").await.unwrap();
    assert_eq!(state.releases().find("hello", "2").await.unwrap(), None);
    let remaining = state.releases().find("hello", "1").await.unwrap().unwrap();
    assert_eq!(remaining.packages, first.packages);
    assert_eq!(remaining.jobs, first.jobs);
    let orphaned: Vec<String> = state
        .blobs()
        .unreferenced(i64::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|blob| blob.id)
        .collect();
    assert_eq!(orphaned, [sha256("package app app2")]);
    assert_ne!(second.id, first.id);

    // Once the deployment stops using it, it can go, and the release with it.
    state
        .deployments()
        .set_uses(deployment.id, &[], &[])
        .await
        .unwrap();
    state.releases().delete("hello", "1").await.unwrap();
    assert!(state.releases().list().await.unwrap().is_empty());
    let error = state.releases().delete("hello", "1").await.unwrap_err();
    assert_eq!(error.to_string(), "release 'hello/1' does not exist");
    let orphaned = state.blobs().unreferenced(i64::MAX).await.unwrap();
    assert_eq!(orphaned.len(), 4, "every blob of the release: {orphaned:?}");

    // A release name can be used again after all its versions went.
    upload(state, &hello("1", "app1")).await;
}

async fn check_failed_upload_leaves_no_rows(state: &State) {
    let mut broken = hello("1", "app1");
    broken.packages.push(package("nginx", "nginx1", &[]));
    // Store every blob but the last package's: its row violates the foreign key to blobs.
    let missing = broken.packages[2].archive.clone().unwrap().blob_id;
    broken.packages[2].archive = None;
    store_blobs(state, &broken).await;
    broken.packages[2].archive = Some(archive("package nginx nginx1"));

    let error = state.releases().insert(&broken).await.unwrap_err();
    assert!(
        matches!(&error, StateError::NotFound { object: Object::Blob { id } } if id == &missing),
        "{error:?}"
    );
    assert_eq!(error.to_string(), format!("blob {missing} does not exist"));
    assert!(state.releases().list().await.unwrap().is_empty());
    assert_eq!(state.releases().find("hello", "1").await.unwrap(), None);
    for blob in state.blobs().list().await.unwrap() {
        assert_eq!(
            blob.references, 0,
            "no job or package row is left: {blob:?}"
        );
    }

    // Nothing half-written is in the way of the retry.
    store_blob(state, &missing).await;
    let stored = state.releases().insert(&broken).await.unwrap();
    assert_eq!(stored.packages.len(), 3);
}

async fn check_compiled_packages_are_unique_per_stemcell_and_dependencies(state: &State) {
    let release = upload(state, &hello("1", "app1")).await;
    let app = release.packages.iter().find(|p| p.name == "app").unwrap();
    let compiled = state.compiled_packages();
    assert_eq!(
        compiled
            .next_build(app.id, "ubuntu-jammy", "1.406")
            .await
            .unwrap(),
        1
    );
    let blob = sha256("compiled app");
    store_blob(state, &blob).await;
    let new = NewCompiledPackage {
        package_id: app.id,
        stemcell_os: "ubuntu-jammy".to_string(),
        stemcell_version: "1.406".to_string(),
        dependency_key: r#"[["ruby","ruby1"]]"#.to_string(),
        build: 1,
        archive: Archive {
            digest: format!("sha256:{blob}"),
            blob_id: blob.clone(),
        },
    };
    let stored = compiled.insert(&new).await.unwrap();
    let found = compiled
        .find(app.id, "ubuntu-jammy", "1.406", r#"[["ruby","ruby1"]]"#)
        .await
        .unwrap();
    assert_eq!(found.as_ref(), Some(&stored));
    assert_eq!(
        compiled
            .find(app.id, "ubuntu-jammy", "1.407", r#"[["ruby","ruby1"]]"#)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        compiled
            .next_build(app.id, "ubuntu-jammy", "1.406")
            .await
            .unwrap(),
        2
    );

    let error = compiled.insert(&new).await.unwrap_err();
    assert!(
        matches!(error, StateError::AlreadyExists { .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "compiled package 'app/app1' for ubuntu-jammy/1.406 (dependency key [[\"ruby\",\"ruby1\"]]) \
         already exists"
    );
    let other_dependencies = NewCompiledPackage {
        dependency_key: r#"[["ruby","ruby2"]]"#.to_string(),
        build: 2,
        ..new.clone()
    };
    compiled.insert(&other_dependencies).await.unwrap();

    let missing_package = NewCompiledPackage {
        package_id: director_state::PackageId(i64::MAX),
        ..new.clone()
    };
    let error = compiled.insert(&missing_package).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("package {} does not exist", i64::MAX)
    );

    // Deleting the release drops the compiled builds; their blob is then unreferenced.
    state.releases().delete("hello", "1").await.unwrap();
    let orphaned = state.blobs().unreferenced(i64::MAX).await.unwrap();
    assert!(orphaned.iter().any(|orphan| orphan.id == blob));
}

async fn check_stemcells_are_unique(state: &State) {
    let stemcells = state.stemcells();
    let first = stemcells.insert(&stemcell("1.406")).await.unwrap();
    let error = stemcells.insert(&stemcell("1.406")).await.unwrap_err();
    assert!(
        matches!(error, StateError::AlreadyExists { .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "stemcell 'bosh-warden-boshlite-ubuntu-jammy-go_agent/1.406' already exists"
    );
    let second = stemcells.insert(&stemcell("1.407")).await.unwrap();

    let found = stemcells
        .find("bosh-warden-boshlite-ubuntu-jammy-go_agent", "1.406")
        .await
        .unwrap();
    assert_eq!(found.as_ref(), Some(&first));
    let first = found.unwrap();
    assert_eq!(
        first.cloud_properties,
        json!({"infrastructure": "warden", "disk": 3072, "z": [1, 2]})
    );
    assert_eq!(first.formats, ["warden-tar"]);
    assert_eq!(first.api_version, 3);
    let versions: Vec<String> = stemcells
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|stemcell| stemcell.version)
        .collect();
    assert_eq!(versions, ["1.406", "1.407"]);

    let deployment = state.deployments().create("cf").await.unwrap();
    state
        .deployments()
        .set_uses(deployment.id, &[], &[first.id])
        .await
        .unwrap();
    let error = stemcells
        .delete("bosh-warden-boshlite-ubuntu-jammy-go_agent", "1.406")
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "stemcell 'bosh-warden-boshlite-ubuntu-jammy-go_agent/1.406' is in use by deployment 'cf'"
    );
    let listed = stemcells.list().await.unwrap();
    assert_eq!(listed[0].deployments, ["cf"]);
    assert!(listed[1].deployments.is_empty());

    stemcells
        .delete("bosh-warden-boshlite-ubuntu-jammy-go_agent", "1.407")
        .await
        .unwrap();
    assert_eq!(
        stemcells
            .find("bosh-warden-boshlite-ubuntu-jammy-go_agent", "1.407")
            .await
            .unwrap(),
        None
    );
    // A deleted stemcell can be uploaded again.
    let again = stemcells.insert(&stemcell("1.407")).await.unwrap();
    assert_ne!(again.id, second.id, "ids are never reused");
}

async fn check_task_life_cycle(state: &State) {
    let tasks = state.tasks();
    let task = tasks
        .create(&new_task("create deployment", Some("cf")))
        .await
        .unwrap();
    assert_eq!(task.state, TaskState::Queued);
    assert_eq!(task.description, "create deployment");
    assert_eq!(task.deployment.as_deref(), Some("cf"));
    assert_eq!(task.user, "admin");
    assert_eq!(task.context, json!({"context_id": "abc"}));
    assert_eq!(
        (task.started_at, task.ended_at, &task.result),
        (None, None, &None)
    );
    assert_eq!(tasks.get(task.id).await.unwrap().as_ref(), Some(&task));

    let processing = tasks
        .set_state(task.id, TaskState::Processing, None)
        .await
        .unwrap();
    assert_eq!(processing.state, TaskState::Processing);
    assert!(processing.started_at.unwrap() >= task.created_at);
    assert_eq!(processing.ended_at, None);

    let event_log = std::path::Path::new("/var/director/tasks/1/event");
    let debug_log = std::path::Path::new("/var/director/tasks/1/debug");
    tasks.set_logs(task.id, event_log, debug_log).await.unwrap();

    state
        .locks()
        .acquire("lock:deployment:cf", task.id, Duration::from_secs(60))
        .await
        .unwrap();
    let done = tasks
        .set_state(task.id, TaskState::Done, Some("/deployments/cf"))
        .await
        .unwrap();
    assert_eq!(done.state, TaskState::Done);
    assert_eq!(done.started_at, processing.started_at);
    assert!(done.ended_at.unwrap() >= done.started_at.unwrap());
    assert_eq!(done.result.as_deref(), Some("/deployments/cf"));
    assert_eq!(done.event_log.as_deref(), Some(event_log));
    assert_eq!(done.debug_log.as_deref(), Some(debug_log));
    assert!(
        state.locks().list().await.unwrap().is_empty(),
        "a finished task holds no lock"
    );
    assert_eq!(tasks.get(task.id).await.unwrap(), Some(done.clone()));

    let error = tasks
        .set_state(task.id, TaskState::Processing, None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            StateError::TaskTransition {
                from: TaskState::Done,
                to: TaskState::Processing,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!("task {} cannot go from 'done' to 'processing'", task.id)
    );

    // Cancellation: queued → processing → cancelling → cancelled.
    let cancelled = tasks
        .create(&new_task("delete deployment", Some("cf")))
        .await
        .unwrap();
    tasks
        .set_state(cancelled.id, TaskState::Processing, None)
        .await
        .unwrap();
    let cancelling = tasks
        .set_state(cancelled.id, TaskState::Cancelling, None)
        .await
        .unwrap();
    assert_eq!(cancelling.ended_at, None);
    let cancelled = tasks
        .set_state(cancelled.id, TaskState::Cancelled, None)
        .await
        .unwrap();
    assert_eq!(cancelled.state, TaskState::Cancelled);
    assert!(cancelled.ended_at.is_some());

    // A queued task cannot be done without processing.
    let queued = tasks
        .create(&new_task("upload release", None))
        .await
        .unwrap();
    let error = tasks
        .set_state(queued.id, TaskState::Done, None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, StateError::TaskTransition { .. }),
        "{error:?}"
    );

    let missing = TaskId(i64::MAX);
    assert_eq!(tasks.get(missing).await.unwrap(), None);
    let error = tasks
        .set_state(missing, TaskState::Processing, None)
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("task {} does not exist", i64::MAX)
    );
}

async fn check_task_lists_filter_and_order(state: &State) {
    let tasks = state.tasks();
    let mut ids = Vec::new();
    for (description, deployment) in [
        ("create deployment", Some("a")),
        ("create deployment", Some("b")),
        ("upload stemcell", None),
        ("update deployment", Some("a")),
    ] {
        ids.push(
            tasks
                .create(&new_task(description, deployment))
                .await
                .unwrap()
                .id,
        );
    }
    tasks
        .set_state(ids[0], TaskState::Processing, None)
        .await
        .unwrap();
    tasks
        .set_state(ids[0], TaskState::Error, Some("boom"))
        .await
        .unwrap();
    tasks
        .set_state(ids[1], TaskState::Processing, None)
        .await
        .unwrap();

    let listed = |tasks: Vec<director_state::Task>| -> Vec<TaskId> {
        tasks.into_iter().map(|task| task.id).collect()
    };
    assert_eq!(
        listed(tasks.list(&TaskFilter::recent(10)).await.unwrap()),
        [ids[3], ids[2], ids[1], ids[0]],
        "newest first"
    );
    assert_eq!(
        listed(tasks.list(&TaskFilter::recent(2)).await.unwrap()),
        [ids[3], ids[2]]
    );
    assert_eq!(
        listed(
            tasks
                .list(&TaskFilter::recent(10).deployment("a"))
                .await
                .unwrap()
        ),
        [ids[3], ids[0]]
    );
    assert_eq!(
        listed(
            tasks
                .list(&TaskFilter::recent(10).states(&[TaskState::Queued, TaskState::Processing]))
                .await
                .unwrap()
        ),
        [ids[3], ids[2], ids[1]]
    );
    assert_eq!(
        listed(
            tasks
                .list(
                    &TaskFilter::recent(10)
                        .deployment("a")
                        .states(&[TaskState::Error])
                )
                .await
                .unwrap()
        ),
        [ids[0]]
    );
    assert!(
        tasks
            .list(&TaskFilter::recent(10).deployment("nope"))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn check_orphaned_tasks_are_failed_and_their_locks_freed(state: &State) {
    let (tasks, locks, directors) = (state.tasks(), state.locks(), state.directors());
    let minute = Duration::from_secs(60);
    directors.register("a").await.unwrap();
    directors.register("b").await.unwrap();
    // Director a's tasks: queued, processing with two locks, done.
    let queued = tasks
        .create(&owned_task("upload release", "a"))
        .await
        .unwrap();
    let processing = tasks
        .create(&owned_task("create deployment", "a"))
        .await
        .unwrap();
    tasks
        .set_state(processing.id, TaskState::Processing, None)
        .await
        .unwrap();
    for lock in ["deployment:cf", "release:hello"] {
        locks.acquire(lock, processing.id, minute).await.unwrap();
    }
    let done = tasks
        .create(&owned_task("upload stemcell", "a"))
        .await
        .unwrap();
    tasks
        .set_state(done.id, TaskState::Processing, None)
        .await
        .unwrap();
    let done = tasks
        .set_state(done.id, TaskState::Done, Some("ok"))
        .await
        .unwrap();
    assert_eq!(done.director.as_deref(), Some("a"));
    // Director b's cancelling task with its lock; a task no director owns.
    let others = tasks
        .create(&owned_task("delete deployment", "b"))
        .await
        .unwrap();
    tasks
        .set_state(others.id, TaskState::Cancelling, None)
        .await
        .unwrap();
    locks
        .acquire("deployment:x", others.id, minute)
        .await
        .unwrap();
    let unowned = tasks
        .create(&new_task("create deployment", Some("y")))
        .await
        .unwrap();
    assert_eq!(locks.list().await.unwrap().len(), 3);

    // Director a restarts: its previous run's tasks and the unowned one fail; b's stays.
    let failed = directors
        .start("a", "director restarted", minute)
        .await
        .unwrap();
    assert_eq!(failed, [queued.id, processing.id, unowned.id]);
    for id in &failed {
        let task = tasks.get(*id).await.unwrap().unwrap();
        assert_eq!(task.state, TaskState::Error);
        assert_eq!(task.result.as_deref(), Some("director restarted"));
        assert!(task.ended_at.is_some());
    }
    assert_eq!(
        tasks.get(done.id).await.unwrap(),
        Some(done),
        "finished tasks stay"
    );
    let held: Vec<String> = locks
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(held, ["deployment:x"], "b's lock stays");
    assert_eq!(
        tasks.get(others.id).await.unwrap().unwrap().state,
        TaskState::Cancelling
    );

    // A's new task survives a's periodic sweep while a beats; b's fails once b is silent.
    let next = tasks
        .create(&owned_task("create deployment", "a"))
        .await
        .unwrap();
    assert!(
        directors
            .fail_orphaned_tasks("director gone", minute)
            .await
            .unwrap()
            .is_empty()
    );
    // Heartbeats are whole seconds: after two, a bound of one second finds b silent.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    directors.beat("a").await.unwrap();
    assert_eq!(
        directors
            .fail_orphaned_tasks("director gone", Duration::from_secs(1))
            .await
            .unwrap(),
        [others.id]
    );
    assert!(locks.list().await.unwrap().is_empty());
    assert_eq!(
        tasks.get(next.id).await.unwrap().unwrap().state,
        TaskState::Queued
    );
}

async fn check_lock_contention(state: &State) {
    let tasks = state.tasks();
    let locks = state.locks();
    let minute = Duration::from_secs(60);
    let first = tasks
        .create(&new_task("deploy", Some("cf")))
        .await
        .unwrap()
        .id;
    let second = tasks
        .create(&new_task("deploy", Some("cf")))
        .await
        .unwrap()
        .id;

    let lock = locks
        .acquire("lock:deployment:cf", first, minute)
        .await
        .unwrap();
    assert_eq!(lock.task_id, first);
    let error = locks
        .acquire("lock:deployment:cf", second, minute)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StateError::Locked { name, by_task } if name == "lock:deployment:cf" && *by_task == first),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!("lock 'lock:deployment:cf' is held by task {first}")
    );
    // Other names are independent; the holder may acquire again (extending it).
    locks
        .acquire("lock:deployment:other", second, minute)
        .await
        .unwrap();
    locks
        .acquire("lock:deployment:cf", first, minute)
        .await
        .unwrap();

    let error = locks
        .renew("lock:deployment:cf", second, minute)
        .await
        .unwrap_err();
    assert!(matches!(error, StateError::LockLost { .. }), "{error:?}");
    locks
        .renew("lock:deployment:cf", first, minute)
        .await
        .unwrap();
    assert!(!locks.release("lock:deployment:cf", second).await.unwrap());
    assert!(locks.release("lock:deployment:cf", first).await.unwrap());
    assert!(!locks.release("lock:deployment:cf", first).await.unwrap());

    locks
        .acquire("lock:deployment:cf", second, minute)
        .await
        .unwrap();
    let held: Vec<(String, TaskId)> = locks
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|lock| (lock.name, lock.task_id))
        .collect();
    assert_eq!(
        held,
        [
            ("lock:deployment:cf".to_string(), second),
            ("lock:deployment:other".to_string(), second)
        ]
    );
    assert_eq!(locks.release_all_for_task(second).await.unwrap(), 2);
    assert!(locks.list().await.unwrap().is_empty());

    let error = locks
        .acquire("lock:deployment:cf", TaskId(i64::MAX), minute)
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("task {} does not exist", i64::MAX)
    );

    // Many tasks racing for one lock: exactly one wins.
    let mut racers = Vec::new();
    for _ in 0..8 {
        racers.push(
            tasks
                .create(&new_task("deploy", Some("race")))
                .await
                .unwrap()
                .id,
        );
    }
    let attempts = racers
        .iter()
        .map(|task| locks.acquire("lock:deployment:race", *task, minute));
    let outcomes = futures::future::join_all(attempts).await;
    let winners: Vec<TaskId> = outcomes
        .iter()
        .filter_map(|outcome| outcome.as_ref().ok().map(|lock| lock.task_id))
        .collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    for outcome in &outcomes {
        if let Err(error) = outcome {
            assert!(
                matches!(error, StateError::Locked { by_task, .. } if *by_task == winners[0]),
                "{error:?}"
            );
        }
    }
}

async fn check_expired_lock_is_taken_over(state: &State) {
    let tasks = state.tasks();
    let locks = state.locks();
    let stalled = tasks
        .create(&new_task("deploy", Some("cf")))
        .await
        .unwrap()
        .id;
    let next = tasks
        .create(&new_task("deploy", Some("cf")))
        .await
        .unwrap()
        .id;

    // A lock with no time left is expired at once.
    locks
        .acquire("lock:deployment:cf", stalled, Duration::ZERO)
        .await
        .unwrap();
    assert!(
        locks.list().await.unwrap().is_empty(),
        "expired locks are not listed"
    );
    let taken = locks
        .acquire("lock:deployment:cf", next, Duration::from_secs(60))
        .await
        .expect("an expired lock is taken over");
    assert_eq!(taken.task_id, next);
    let error = locks
        .renew("lock:deployment:cf", stalled, Duration::from_secs(60))
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("lock 'lock:deployment:cf' is no longer held by task {stalled}")
    );
    let error = locks
        .acquire("lock:deployment:cf", stalled, Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(
        matches!(error, StateError::Locked { by_task, .. } if by_task == next),
        "{error:?}"
    );
}

async fn check_unreferenced_blobs(state: &State) {
    let blobs = state.blobs();
    let release = hello("1", "app1");
    let used = upload(state, &release).await;
    let loose = sha256("uploaded, never referenced");
    let stored = blobs
        .insert(&NewBlob {
            id: loose.clone(),
            size: 7,
        })
        .await
        .unwrap();
    assert_eq!((stored.size, stored.references), (7, 0));
    // Recording the same blob again is a no-op; with another size it is a mistake.
    assert_eq!(
        blobs
            .insert(&NewBlob {
                id: loose.clone(),
                size: 7
            })
            .await
            .unwrap(),
        stored
    );
    let error = blobs
        .insert(&NewBlob {
            id: loose.clone(),
            size: 8,
        })
        .await
        .unwrap_err();
    assert!(matches!(error, StateError::Invalid { .. }), "{error:?}");
    let error = blobs
        .insert(&NewBlob {
            id: "ABC".to_string(),
            size: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "blob ABC: a blob id is the lowercase hex sha256 of its content"
    );

    assert_eq!(blobs.list().await.unwrap().len(), 4);
    let unreferenced = blobs.unreferenced(i64::MAX).await.unwrap();
    assert_eq!(unreferenced.as_slice(), std::slice::from_ref(&stored));
    assert!(
        blobs
            .unreferenced(stored.created_at)
            .await
            .unwrap()
            .is_empty(),
        "blobs younger than the grace period are kept"
    );

    let job_blob = &used.jobs[0].archive.blob_id;
    let error = blobs.delete(job_blob).await.unwrap_err();
    assert!(matches!(error, StateError::Referenced { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!("blob {job_blob} is still referenced")
    );
    assert!(blobs.delete(&loose).await.unwrap());
    assert!(!blobs.delete(&loose).await.unwrap());
    assert!(blobs.unreferenced(i64::MAX).await.unwrap().is_empty());
}

fn slot(seed: &str, max_bytes: Option<u64>, expires_in: i64, held_for: i64) -> NewSlot {
    let now = director_state::now();
    NewSlot {
        nonce: sha256(seed)[..32].to_string(),
        purpose: format!("the test's {seed}"),
        task_id: None,
        max_bytes,
        expires_at: now + expires_in,
        held_until: now + held_for,
    }
}

fn ids(blobs: Vec<director_state::Blob>) -> Vec<String> {
    blobs.into_iter().map(|blob| blob.id).collect()
}

async fn check_held_blobs_are_kept_until_released_or_expired(state: &State) {
    let blobs = state.blobs();
    let held = NewBlob {
        id: sha256("rendered templates of web/0"),
        size: 3,
    };
    let hold = slot("hold", None, 600, 600);
    let recorded = blobs.hold(&held, &hold).await.unwrap();
    assert_eq!((recorded.size, recorded.references), (3, 1));
    assert!(
        blobs.unreferenced(i64::MAX).await.unwrap().is_empty(),
        "a held blob is not clean-up's to take"
    );
    let error = blobs.delete(&held.id).await.unwrap_err();
    assert!(matches!(error, StateError::Referenced { .. }), "{error:?}");
    let error = blobs
        .delete_with(&held.id, || async {
            panic!("the content of a held blob must not be removed")
        })
        .await
        .map(|_: bool| ())
        .map_err(|error: DeleteError<std::io::Error>| error)
        .unwrap_err();
    assert!(
        matches!(error, DeleteError::State(StateError::Referenced { .. })),
        "{error:?}"
    );

    // An expired hold keeps its blob until clean-up removes the slot; a live one stays.
    let stale = NewBlob {
        id: sha256("logs of a task long gone"),
        size: 5,
    };
    blobs
        .hold(&stale, &slot("stale", None, -20, -10))
        .await
        .unwrap();
    assert!(blobs.unreferenced(i64::MAX).await.unwrap().is_empty());
    assert_eq!(
        blobs
            .remove_expired_slots(director_state::now())
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        ids(blobs.unreferenced(i64::MAX).await.unwrap()),
        std::slice::from_ref(&stale.id)
    );

    // A download link holds a recorded blob; an unrecorded one is not held.
    assert!(
        blobs
            .hold_recorded(&stale.id, &slot("link", None, 60, 60))
            .await
            .unwrap()
    );
    assert!(blobs.unreferenced(i64::MAX).await.unwrap().is_empty());
    assert!(
        !blobs
            .hold_recorded(&sha256("never stored"), &slot("link 2", None, 60, 60))
            .await
            .unwrap()
    );

    // Released, the blobs are clean-up's again; its deletion runs the content's removal
    // inside, and a failed removal keeps the row.
    assert!(blobs.release_slot(&hold.nonce).await.unwrap());
    assert!(!blobs.release_slot(&hold.nonce).await.unwrap());
    assert!(
        blobs
            .release_slot(&slot("link", None, 60, 60).nonce)
            .await
            .unwrap()
    );
    let mut unreferenced = vec![held.id.clone(), stale.id.clone()];
    unreferenced.sort();
    assert_eq!(
        ids(blobs.unreferenced(i64::MAX).await.unwrap()),
        unreferenced
    );
    let error = blobs
        .delete_with(&held.id, || async {
            Err(std::io::Error::other("the store is down"))
        })
        .await
        .unwrap_err();
    assert!(matches!(error, DeleteError::Remove(_)), "{error:?}");
    assert_eq!(
        ids(blobs.unreferenced(i64::MAX).await.unwrap()),
        unreferenced
    );
    let mut removed = false;
    assert!(
        blobs
            .delete_with(&held.id, || async {
                removed = true;
                Ok::<(), std::io::Error>(())
            })
            .await
            .unwrap()
    );
    assert!(removed);
    assert_eq!(
        ids(blobs.unreferenced(i64::MAX).await.unwrap()),
        std::slice::from_ref(&stale.id)
    );

    let error = blobs
        .hold(&held, &slot("bad", None, 60, 30))
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "blob slot for the test's bad: a slot must hold its blob at least until it expires"
    );
}

async fn check_upload_slots_are_taken_once_and_filled_once(state: &State) {
    let blobs = state.blobs();
    let upload = slot("compiled package", Some(100), 60, 120);
    let opened = blobs.open_slot(&upload).await.unwrap();
    assert_eq!(
        (opened.max_bytes, opened.taken_at, opened.blob_id.clone()),
        (Some(100), None, None)
    );
    let Taken::Slot(taken) = blobs.take_slot(&upload.nonce).await.unwrap() else {
        panic!("a fresh slot can be taken");
    };
    assert_eq!(taken.purpose, "the test's compiled package");
    assert!(taken.taken_at.is_some());
    assert_eq!(
        blobs.take_slot(&upload.nonce).await.unwrap(),
        Taken::AlreadyTaken
    );
    // A PUT that failed before storing gives the slot back.
    blobs.give_back_slot(&upload.nonce).await.unwrap();
    assert!(matches!(
        blobs.take_slot(&upload.nonce).await.unwrap(),
        Taken::Slot(_)
    ));
    let received = NewBlob {
        id: sha256("the compiled package"),
        size: 42,
    };
    let recorded = blobs.fill_slot(&upload.nonce, &received).await.unwrap();
    assert_eq!(recorded.references, 1);
    assert_eq!(
        blobs.slot(&upload.nonce).await.unwrap().unwrap().blob_id,
        Some(received.id.clone())
    );
    let error = blobs
        .fill_slot(
            &upload.nonce,
            &NewBlob {
                id: sha256("another"),
                size: 1,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "blob slot for an upload: the upload slot is gone or was filled already"
    );
    // Once filled, giving back changes nothing: the URL is used up.
    blobs.give_back_slot(&upload.nonce).await.unwrap();
    assert_eq!(
        blobs.take_slot(&upload.nonce).await.unwrap(),
        Taken::AlreadyTaken
    );
    assert!(
        blobs
            .unreferenced(i64::MAX)
            .await
            .unwrap()
            .iter()
            .all(|b| b.id != received.id)
    );

    assert_eq!(
        blobs.take_slot(&sha256("unknown")[..32]).await.unwrap(),
        Taken::Unknown
    );
    let late = slot("late", Some(100), -1, 0);
    blobs.open_slot(&late).await.unwrap();
    assert_eq!(blobs.take_slot(&late.nonce).await.unwrap(), Taken::Expired);
    // A hold is no upload slot.
    let hold = slot("a hold", None, 60, 60);
    blobs
        .hold(
            &NewBlob {
                id: sha256("held"),
                size: 1,
            },
            &hold,
        )
        .await
        .unwrap();
    assert_eq!(blobs.take_slot(&hold.nonce).await.unwrap(), Taken::Unknown);
}

async fn check_deployments_and_manifest_history(state: &State) {
    let deployments = state.deployments();
    let cf = deployments.create("cf").await.unwrap();
    let error = deployments.create("cf").await.unwrap_err();
    assert_eq!(error.to_string(), "deployment 'cf' already exists");
    deployments.create("another").await.unwrap();
    let names: Vec<String> = deployments
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|deployment| deployment.name)
        .collect();
    assert_eq!(names, ["another", "cf"]);
    assert_eq!(deployments.find("cf").await.unwrap(), Some(cf.clone()));
    assert_eq!(deployments.find("nope").await.unwrap(), None);

    deployments.add_manifest(cf.id, "name: cf\n").await.unwrap();
    let second = deployments
        .add_manifest(cf.id, "name: cf\ninstance_groups: []\n")
        .await
        .unwrap();
    let history = deployments.manifests(cf.id).await.unwrap();
    let texts: Vec<&str> = history
        .iter()
        .map(|manifest| manifest.text.as_str())
        .collect();
    assert_eq!(texts, ["name: cf\ninstance_groups: []\n", "name: cf\n"]);
    assert_eq!(history[0], second);

    let error = deployments
        .set_uses(cf.id, &[director_state::ReleaseVersionId(i64::MAX)], &[])
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("release version {} does not exist", i64::MAX)
    );
}

async fn check_director_attributes_are_set_and_read_back(state: &State) {
    let attributes = state.attributes();
    assert_eq!(attributes.get("resurrection_paused").await.unwrap(), None);
    attributes.set("resurrection_paused", "true").await.unwrap();
    let set = attributes
        .set("resurrection_paused", "false")
        .await
        .unwrap();
    let read = attributes
        .get("resurrection_paused")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read, set);
    assert_eq!(read.value, "false");
}

async fn check_events_round_trip(state: &State) {
    let task = state
        .tasks()
        .create(&new_task("deploy", Some("cf")))
        .await
        .unwrap();
    let events = state.events();
    let first = events
        .insert(&NewEvent {
            user: "admin".to_string(),
            action: "create".to_string(),
            object_type: "deployment".to_string(),
            object_name: Some("cf".to_string()),
            deployment: Some("cf".to_string()),
            task: Some(task.id),
            context: json!({"new name": "cf"}),
            error: None,
        })
        .await
        .unwrap();
    let second = events
        .insert(&NewEvent {
            user: "admin".to_string(),
            action: "delete".to_string(),
            object_type: "release".to_string(),
            object_name: Some("hello/1".to_string()),
            deployment: None,
            task: None,
            context: json!({}),
            error: Some("release 'hello/1' is in use by deployment 'cf'".to_string()),
        })
        .await
        .unwrap();
    assert_eq!(events.list(10).await.unwrap(), [second.clone(), first]);
    assert_eq!(events.list(1).await.unwrap(), [second]);
}

// Opening.

#[tokio::test]
async fn unsupported_urls_are_refused() {
    let error = State::open("mysql://root@localhost/director")
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "database url 'mysql://<redacted>@localhost/director' is not supported: \
         expected sqlite://PATH or postgres://…"
    );
    let error = State::open("sqlite://:memory:").await.unwrap_err();
    assert!(
        matches!(error, StateError::UnsupportedUrl { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_sqlite_file_that_cannot_be_created_names_the_database() {
    let directory = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}/missing/dir/state.db",
        directory.path().display()
    );
    let error = State::open(&url).await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("database at {url}: ")),
        "{message}"
    );
}

#[tokio::test]
async fn a_sqlite_file_is_created_in_wal_mode() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("state.db");
    let state = State::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    assert_eq!(state.backend().as_str(), "sqlite");
    state.deployments().create("cf").await.unwrap();
    assert!(path.exists());
    assert!(
        directory.path().join("state.db-wal").exists(),
        "the write-ahead log sits beside the database"
    );
    state.close().await;
}

#[tokio::test]
async fn postgres_errors_do_not_show_the_password() {
    let admin_url = std::env::var(POSTGRES_URL_VARIABLE).unwrap_or_else(|_| {
        panic!("{POSTGRES_URL_VARIABLE} is not set; see the PostgreSQL variants' message")
    });
    let (scheme, rest) = admin_url.split_once("://").unwrap();
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let url = format!("{scheme}://director:not-the-password-xyzzy@{host}");
    let error = State::open(&url).await.unwrap_err();
    let message = error.to_string();
    assert!(!message.contains("xyzzy"), "{message}");
    assert!(
        message.starts_with(&format!("database at {scheme}://director:<redacted>@")),
        "{message}"
    );
}

async fn check_instances_vms_disks_and_addresses(state: &State) {
    let deployment = state.deployments().create("web").await.unwrap();
    let other = state.deployments().create("db").await.unwrap();
    let rows = state.instances();
    let new = |index: u32| NewInstance {
        deployment_id: deployment.id,
        instance_group: "web".to_string(),
        uuid: format!("uuid-{index}"),
        index,
        az: Some("z1".to_string()),
        bootstrap: index == 0,
    };
    let first = rows.create(&new(0)).await.unwrap();
    let second = rows.create(&new(1)).await.unwrap();
    assert!(matches!(
        rows.create(&new(1)).await,
        Err(StateError::AlreadyExists { .. })
    ));

    rows.set_ips(
        deployment.id,
        first,
        &[("default".to_string(), "10.0.0.10".to_string(), false)],
    )
    .await
    .unwrap();
    let taken = rows
        .set_ips(
            deployment.id,
            second,
            &[("default".to_string(), "10.0.0.10".to_string(), false)],
        )
        .await;
    assert!(
        matches!(taken, Err(StateError::AlreadyExists { .. })),
        "{taken:?}"
    );
    rows.reserve_address(other.id, "default", "10.0.0.20")
        .await
        .unwrap();
    assert!(matches!(
        rows.reserve_address(other.id, "default", "10.0.0.10").await,
        Err(StateError::AlreadyExists { .. })
    ));
    assert_eq!(
        rows.addresses_outside(Some(deployment.id)).await.unwrap(),
        vec![("default".to_string(), "10.0.0.20".to_string())]
    );
    assert_eq!(rows.all_addresses().await.unwrap().len(), 2);
    rows.release_address("default", "10.0.0.20").await.unwrap();

    let vm = Vm {
        cid: "vm-1".to_string(),
        agent_id: "agent-1".to_string(),
        created_at: 7,
        env: json!({"a": 1}),
    };
    rows.set_vm(first, &vm).await.unwrap();
    rows.add_disk(first, "disk-1", 1024, &json!({}), true)
        .await
        .unwrap();
    rows.set_observed(first, &json!({"stemcell": {"version": "1"}}), true)
        .await
        .unwrap();
    store_blob(state, &sha256("rendered")).await;
    rows.set_rendered(first, &[("web".to_string(), sha256("rendered"))])
        .await
        .unwrap();
    let listed = rows.list(deployment.id).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].vm.as_ref(), Some(&vm));
    assert_eq!(listed[0].disk.as_ref().map(|d| d.size), Some(1024));
    assert_eq!(
        listed[0].ips,
        vec![("default".to_string(), "10.0.0.10".to_string(), false)]
    );
    assert!(listed[0].update_completed);
    assert_eq!(
        listed[0].observed,
        Some(json!({"stemcell": {"version": "1"}}))
    );
    assert!(
        !listed[1].update_completed,
        "new instances start unfinished"
    );

    rows.set_update_completed(first, false).await.unwrap();
    rows.set_state(first, "stopped", true).await.unwrap();
    let listed = rows.list(deployment.id).await.unwrap();
    assert_eq!(
        (listed[0].state.as_str(), listed[0].update_completed),
        ("stopped", false)
    );

    // A disk migration: the new disk is recorded inactive (the instance keeps using the
    // old one), then switched to in one step that orphans the old one.
    rows.add_disk(first, "disk-2", 2048, &json!({"type": "ssd"}), false)
        .await
        .unwrap();
    let listed = rows.list(deployment.id).await.unwrap();
    assert_eq!(
        listed[0].disk.as_ref().map(|d| d.cid.as_str()),
        Some("disk-1")
    );
    let inactive = rows.inactive_disks(first).await.unwrap();
    assert_eq!(
        inactive
            .iter()
            .map(|d| (d.cid.as_str(), d.size))
            .collect::<Vec<_>>(),
        vec![("disk-2", 2048)]
    );
    rows.activate_disk(first, "disk-2").await.unwrap();
    let listed = rows.list(deployment.id).await.unwrap();
    let disk = listed[0].disk.as_ref().unwrap();
    assert_eq!((disk.cid.as_str(), disk.size), ("disk-2", 2048));
    assert_eq!(disk.cloud_properties, json!({"type": "ssd"}));
    assert!(rows.inactive_disks(first).await.unwrap().is_empty());
    let orphaned = rows.orphaned_disks().await.unwrap();
    assert_eq!(
        orphaned.iter().map(|d| d.cid.as_str()).collect::<Vec<_>>(),
        vec!["disk-1"]
    );
    rows.delete_disk("disk-1").await.unwrap();

    rows.clear_vm(first).await.unwrap();
    rows.orphan_disk("disk-2").await.unwrap();
    assert_eq!(rows.orphaned_disks().await.unwrap().len(), 1);
    rows.delete(first).await.unwrap();
    rows.delete(second).await.unwrap();
    assert!(rows.list(deployment.id).await.unwrap().is_empty());
    assert!(
        rows.all_addresses().await.unwrap().is_empty(),
        "addresses go with their instances"
    );
    state
        .deployments()
        .add_uses(deployment.id, &[], &[])
        .await
        .unwrap();
    state.deployments().delete(deployment.id).await.unwrap();
    assert!(state.deployments().find("web").await.unwrap().is_none());
    assert_eq!(
        rows.orphaned_disks().await.unwrap().len(),
        1,
        "orphaned disks outlive their deployment"
    );
}

async fn check_configs_credentials_and_links(state: &State) {
    let rows = state.instances();
    assert_eq!(
        rows.config(director_api::ConfigKind::Cloud, "default")
            .await
            .unwrap(),
        None
    );
    let first = rows
        .set_config(director_api::ConfigKind::Cloud, "default", "azs: []")
        .await
        .unwrap();
    let second = rows
        .set_config(
            director_api::ConfigKind::Cloud,
            "default",
            "azs: [{name: z1}]",
        )
        .await
        .unwrap();
    assert!(second > first);
    assert_eq!(
        rows.config(director_api::ConfigKind::Cloud, "default")
            .await
            .unwrap(),
        Some((second, "azs: [{name: z1}]".to_string()))
    );
    assert_eq!(
        rows.config(director_api::ConfigKind::Runtime, "default")
            .await
            .unwrap(),
        None
    );

    let deployment = state.deployments().create("web").await.unwrap();
    assert!(
        rows.put_credential(deployment.id, "password", &json!("s3cret"))
            .await
            .unwrap()
    );
    assert!(
        !rows
            .put_credential(deployment.id, "password", &json!("other"))
            .await
            .unwrap(),
        "kept"
    );
    assert_eq!(
        rows.credential(deployment.id, "password").await.unwrap(),
        Some(json!("s3cret"))
    );
    assert_eq!(
        rows.credentials(deployment.id).await.unwrap(),
        vec![("password".to_string(), json!("s3cret"))]
    );

    assert_eq!(rows.links(deployment.id).await.unwrap(), None);
    rows.set_links(deployment.id, &json!([{"alias": "db"}]))
        .await
        .unwrap();
    rows.set_links(deployment.id, &json!([{"alias": "http"}]))
        .await
        .unwrap();
    assert_eq!(
        rows.links(deployment.id).await.unwrap(),
        Some(json!([{"alias": "http"}]))
    );
}

/// A VM is recorded before `create_vm`, given its id after, and forgotten when deleted or
/// owned by an instance; a compilation VM's address is released only with its record, and
/// a director that starts sees the records no running task holds.
async fn check_vm_records_hold_addresses_until_the_vm_is_gone(state: &State) {
    let deployment = state.deployments().create("web").await.unwrap();
    let rows = state.instances();
    let records = state.vm_records();
    let running = state
        .tasks()
        .create(&new_task("create deployment", Some("web")))
        .await
        .unwrap();
    state
        .tasks()
        .set_state(running.id, TaskState::Processing, None)
        .await
        .unwrap();
    let address = || vec![("default".to_string(), "10.0.0.30".to_string())];

    // A compilation VM: its address reserved, then recorded as the VM's own.
    rows.reserve_address(deployment.id, "default", "10.0.0.30")
        .await
        .unwrap();
    let compilation = NewVmRecord {
        agent_id: "agent-c".to_string(),
        purpose: VmPurpose::Compilation,
        label: "the compilation VM for package 'x'".to_string(),
        deployment: Some(deployment.id),
        instance: None,
        task: Some(running.id),
        addresses: address(),
    };
    records.begin(&compilation, &address()).await.unwrap();
    assert!(matches!(
        records.begin(&compilation, &[]).await,
        Err(StateError::AlreadyExists { .. })
    ));
    // An address that is not a free reservation of the deployment cannot be held.
    let stray = NewVmRecord {
        agent_id: "agent-s".to_string(),
        ..compilation.clone()
    };
    let error = records
        .begin(&stray, &[("default".to_string(), "10.0.0.99".to_string())])
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            StateError::NotFound {
                object: Object::Address { .. }
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        records.list().await.unwrap().len(),
        1,
        "nothing of it stays"
    );

    // Held: neither a deploy's clean-up nor a release frees it, and the deployment's own
    // placement sees it as taken.
    assert_eq!(
        rows.release_unowned_addresses(deployment.id).await.unwrap(),
        0
    );
    rows.release_address("default", "10.0.0.30").await.unwrap();
    assert!(
        rows.addresses_outside(Some(deployment.id))
            .await
            .unwrap()
            .contains(&("default".to_string(), "10.0.0.30".to_string()))
    );

    records.set_cid("agent-c", "vm-c").await.unwrap();
    let listed = records.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    let recorded = &listed[0];
    assert_eq!(
        (
            recorded.agent_id.as_str(),
            recorded.cid.as_deref(),
            recorded.state,
            recorded.purpose,
            recorded.deployment,
            recorded.task,
            &recorded.addresses
        ),
        (
            "agent-c",
            Some("vm-c"),
            VmRecordState::Created,
            VmPurpose::Compilation,
            Some(deployment.id),
            Some(running.id),
            &address()
        )
    );
    // Its task still runs: not abandoned. Once the task failed, it is.
    assert!(records.abandoned().await.unwrap().is_empty());
    state
        .directors()
        .fail_orphaned_tasks("director restarted", Duration::from_secs(60))
        .await
        .unwrap();
    let abandoned = records.abandoned().await.unwrap();
    assert_eq!(abandoned, listed);
    assert!(matches!(
        records.set_unknown("agent-c").await,
        Err(StateError::NotFound { .. })
    ));

    // Deleted with its VM: the address is free again.
    records.remove("agent-c").await.unwrap();
    records.remove("agent-c").await.unwrap();
    assert!(records.list().await.unwrap().is_empty());
    assert!(rows.all_addresses().await.unwrap().is_empty());

    // An instance's VM: unknown when the CPI cannot find it, gone once the instance owns it.
    let instance = rows
        .create(&NewInstance {
            deployment_id: deployment.id,
            instance_group: "web".to_string(),
            uuid: "uuid-vm".to_string(),
            index: 0,
            az: None,
            bootstrap: true,
        })
        .await
        .unwrap();
    let for_instance = NewVmRecord {
        agent_id: "agent-i".to_string(),
        purpose: VmPurpose::Instance,
        label: "web/uuid-vm (0)".to_string(),
        deployment: Some(deployment.id),
        instance: Some(instance),
        task: None,
        addresses: Vec::new(),
    };
    records.begin(&for_instance, &[]).await.unwrap();
    assert_eq!(
        records.abandoned().await.unwrap().len(),
        1,
        "no task holds it"
    );
    records.set_unknown("agent-i").await.unwrap();
    assert_eq!(
        records.of_deployment(deployment.id).await.unwrap()[0].state,
        VmRecordState::Unknown
    );
    records.set_cid("agent-i", "vm-i").await.unwrap();
    rows.set_vm(
        instance,
        &Vm {
            cid: "vm-i".to_string(),
            agent_id: "agent-i".to_string(),
            created_at: 1,
            env: json!({}),
        },
    )
    .await
    .unwrap();
    assert!(records.list().await.unwrap().is_empty());
    assert!(matches!(
        records.set_cid("agent-i", "vm-x").await,
        Err(StateError::NotFound { .. })
    ));
}

/// cck's `delete_vm_reference`: the instance forgets its VM, which stays recorded (no
/// instance, the deployment's, made by the task) until it is deleted.
async fn check_a_disowned_vm_stays_recorded(state: &State) {
    let deployment = state.deployments().create("web").await.unwrap();
    let rows = state.instances();
    let id = rows
        .create(&NewInstance {
            deployment_id: deployment.id,
            instance_group: "web".to_string(),
            uuid: "uuid-0".to_string(),
            index: 0,
            az: None,
            bootstrap: true,
        })
        .await
        .unwrap();
    let vm = Vm {
        cid: "vm-1".to_string(),
        agent_id: "agent-1".to_string(),
        created_at: 7,
        env: json!({}),
    };
    rows.set_vm(id, &vm).await.unwrap();
    let task = state
        .tasks()
        .create(&new_task("apply resolutions", Some("web")))
        .await
        .unwrap();
    rows.disown_vm(id, "the former VM of web/uuid-0 (0)", Some(task.id))
        .await
        .unwrap();
    assert_eq!(rows.list(deployment.id).await.unwrap()[0].vm, None);
    let light = rows.list_without_specs(deployment.id).await.unwrap();
    assert_eq!((light.len(), light[0].observed.clone()), (1, None));
    let records = state
        .vm_records()
        .of_deployment(deployment.id)
        .await
        .unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].agent_id, "agent-1");
    assert_eq!(records[0].cid.as_deref(), Some("vm-1"));
    assert_eq!(records[0].state, VmRecordState::Created);
    assert_eq!(records[0].instance, None);
    assert_eq!(records[0].task, Some(task.id));
    assert!(matches!(
        rows.disown_vm(id, "again", None).await,
        Err(StateError::NotFound { .. })
    ));
}
