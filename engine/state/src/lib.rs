//! The director's state: the database of releases, stemcells, deployments, instances, VMs,
//! disks, IP reservations, variables, tasks, events, locks and blobs.
//!
//! [`State::open`] takes `sqlite://PATH` (the dev default: the file is created if missing,
//! WAL journal, foreign keys on, a busy timeout) or `postgres://…` (production, decision 5),
//! and applies the pending migrations before returning. Migrations are forward-only: the
//! numbered files under `engine/state/migrations/sqlite/` and `engine/state/migrations/postgres/` are
//! embedded at compile time, recorded with their checksum in `_sqlx_migrations`, and an edited
//! or unknown migration makes `open` fail instead of guessing (see `migrations`).
//!
//! The repository is split by subject, each a cheap handle borrowed from the [`State`]:
//! [`State::releases`], [`State::compiled_packages`], [`State::stemcells`],
//! [`State::deployments`], [`State::tasks`], [`State::events`], [`State::locks`] and
//! [`State::blobs`]. They take and return typed values; every write that touches more than
//! one row runs in one transaction, so a failed upload or a failed transition leaves nothing
//! behind, and unique or foreign-key violations come back as typed [`StateError`]s naming the
//! object.
//!
//! **Invariant:** only this module writes SQL; the rest of the engine sees Rust types. Both
//! backends run the same query text (`$1`-style parameters, `ON CONFLICT`, `RETURNING`;
//! integers, text and booleans only). Repository code is written once, generic over
//! `sql::Conn`, and `on_pool!` instantiates it for the native sqlx driver of the backend at
//! hand, so each backend keeps its own connection options, type checks and error codes
//! (rather than `sqlx::Any`'s common subset). Times are seconds since the Unix epoch (BOSH's
//! API speaks them too); JSON documents are stored as text exactly as serde_json wrote them.
//!
//! Several directors may share a database: each task records the director that runs it,
//! directors beat ([`State::directors`]), and only the tasks of a director that stopped
//! beating (or of the starting director's own previous run) are failed as orphaned.

/// Runs `$body` against whichever pool the state has, with `$pool` bound to the native pool
/// (`&SqlitePool` or `&PgPool`). The body is written once and compiled for each backend; it
/// evaluates to `Result<T, Failure>`, and a database error is reported with the state's URL
/// and `$action` (evaluated only on failure).
macro_rules! on_pool {
    ($state:expr, $action:expr, |$pool:ident| $body:expr) => {{
        let state: &$crate::State = $state;
        let outcome = match &state.pool {
            $crate::Pool::Sqlite($pool) => $crate::attempt(async { $body }).await,
            $crate::Pool::Postgres($pool) => $crate::attempt(async { $body }).await,
        };
        outcome.map_err(|failure| failure.in_context(state, || $action))
    }};
}

mod attributes;
mod blobs;
mod deployments;
mod directors;
mod error;
mod events;
mod instances;
mod locks;
mod migrations;
mod releases;
mod sql;
mod stemcells;
mod tasks;
mod vms;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

use sql::{Columns, Conn, params};

pub use attributes::{Attribute, Attributes};
pub use blobs::{Blob, Blobs, DeleteError, NewBlob, NewSlot, Slot, Taken};
pub use deployments::{Deployment, DeploymentManifest, Deployments};
pub use directors::Directors;
pub use error::{Object, StateError};
pub use events::{Event, Events, NewEvent};
pub use instances::{Disk, Instance, InstanceId, Instances, NewInstance, Vm};
pub use locks::{Lock, Locks};
pub use migrations::LATEST_SCHEMA_VERSION;
pub use releases::{
    Archive, CompiledPackage, CompiledPackages, Job, NewCompiledPackage, NewJob, NewPackage,
    NewReleaseVersion, Package, ReleaseVersion, ReleaseVersionSummary, Releases,
};
pub use stemcells::{NewStemcell, Stemcell, Stemcells};
pub use tasks::{NewTask, Task, TaskFilter, TaskState, Tasks, UnknownTaskState};
pub use vms::{NewVmRecord, VmPurpose, VmRecord, VmRecordState, VmRecords};

/// How long a SQLite connection waits for another writer before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);
const SQLITE_MAX_CONNECTIONS: u32 = 8;
const POSTGRES_MAX_CONNECTIONS: u32 = 16;

/// An open state database with its schema up to date.
#[derive(Debug)]
pub struct State {
    pool: Pool,
    /// The URL with any password replaced by `***`: what error messages show.
    url: String,
}

#[derive(Debug)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Which database a [`State`] runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// `"sqlite"` or `"postgres"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl State {
    /// Runs one statement on a pooled connection; `action` names it in errors.
    async fn execute(
        &self,
        action: impl FnOnce() -> String,
        sql: &str,
        params: &[sql::Param<'_>],
    ) -> Result<(), StateError> {
        on_pool!(self, action(), |pool| {
            let mut conn = pool.acquire().await?;
            conn.run(sql, params).await?;
            Ok(())
        })
    }

    /// Opens (creating a SQLite file if missing) the database at `url` and applies the
    /// pending migrations.
    ///
    /// `url` is `sqlite://PATH` (`sqlite:///var/lib/director/state.db`, or a relative path
    /// after `sqlite://`) or `postgres://USER:PASSWORD@HOST:PORT/DATABASE` (also
    /// `postgresql://`, with libpq-style query parameters such as `sslmode`).
    pub async fn open(url: &str) -> Result<State, StateError> {
        let shown = redact_url(url);
        let pool = if let Some(path) = url.strip_prefix("sqlite://") {
            Pool::Sqlite(open_sqlite(path, &shown).await?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(POSTGRES_MAX_CONNECTIONS)
                .connect(url)
                .await
                .map_err(|source| StateError::Open {
                    url: shown.clone(),
                    source,
                })?;
            Pool::Postgres(pool)
        } else {
            return Err(StateError::UnsupportedUrl {
                url: shown,
                reason: "expected sqlite://PATH or postgres://…",
            });
        };
        let state = State { pool, url: shown };
        migrations::run(&state).await?;
        Ok(state)
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// The database URL with its password (if any) replaced by `***`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The highest migration applied to this database (equal to [`LATEST_SCHEMA_VERSION`]
    /// once `open` has returned).
    pub async fn schema_version(&self) -> Result<i64, StateError> {
        migrations::applied_version(self).await
    }

    /// Closes every connection, waiting for the ones in use to be returned.
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(pool) => pool.close().await,
            Pool::Postgres(pool) => pool.close().await,
        }
    }

    /// Release versions with their jobs and packages.
    pub fn releases(&self) -> Releases<'_> {
        Releases { state: self }
    }

    /// The compiled-package cache.
    pub fn compiled_packages(&self) -> CompiledPackages<'_> {
        CompiledPackages { state: self }
    }

    /// Uploaded stemcells.
    pub fn stemcells(&self) -> Stemcells<'_> {
        Stemcells { state: self }
    }

    /// Deployments, their manifest history and what they use.
    pub fn deployments(&self) -> Deployments<'_> {
        Deployments { state: self }
    }

    /// Tasks and their states.
    pub fn tasks(&self) -> Tasks<'_> {
        Tasks { state: self }
    }

    /// The audit trail.
    pub fn events(&self) -> Events<'_> {
        Events { state: self }
    }

    /// Director-wide settings changed at run time (`resurrection_paused`).
    pub fn attributes(&self) -> Attributes<'_> {
        Attributes { state: self }
    }

    /// Named locks held by tasks.
    pub fn locks(&self) -> Locks<'_> {
        Locks { state: self }
    }

    /// The directors using this database and the tasks each runs.
    pub fn directors(&self) -> Directors<'_> {
        Directors { state: self }
    }

    /// The blobstore's index, for clean-up.
    pub fn blobs(&self) -> Blobs<'_> {
        Blobs { state: self }
    }

    /// Instances with their VMs, disks and IPs; configs; deployment variables.
    pub fn instances(&self) -> Instances<'_> {
        Instances { state: self }
    }

    /// Records of VMs no instance owns (yet): being created, compilation and errand VMs.
    pub fn vm_records(&self) -> VmRecords<'_> {
        VmRecords { state: self }
    }
}

async fn open_sqlite(path: &str, shown: &str) -> Result<SqlitePool, StateError> {
    if path.is_empty() || path.contains(":memory:") || path.contains('?') {
        return Err(StateError::UnsupportedUrl {
            url: shown.to_string(),
            reason: "expected sqlite://PATH naming a file, without query parameters",
        });
    }
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(SQLITE_BUSY_TIMEOUT);
    SqlitePoolOptions::new()
        .max_connections(SQLITE_MAX_CONNECTIONS)
        .connect_with(options)
        .await
        .map_err(|source| StateError::Open {
            url: shown.to_string(),
            source,
        })
}

/// `postgres://user:secret@host/db?password=secret` →
/// `postgres://user:<redacted>@host/db?password=<redacted>`.
fn redact_url(url: &str) -> String {
    secrets::redact_urls(url)
}

/// Why a repository call failed before the state's URL and the action are attached: a
/// driver error, or a typed error that already says everything.
#[derive(Debug)]
enum Failure {
    Sql(sqlx::Error),
    State(Box<StateError>),
}

impl From<sqlx::Error> for Failure {
    fn from(error: sqlx::Error) -> Failure {
        Failure::Sql(error)
    }
}

impl From<StateError> for Failure {
    fn from(error: StateError) -> Failure {
        Failure::State(Box::new(error))
    }
}

impl Failure {
    fn in_context(self, state: &State, action: impl FnOnce() -> String) -> StateError {
        match self {
            Failure::Sql(source) => StateError::Database {
                url: state.url.clone(),
                action: action(),
                source,
            },
            Failure::State(error) => *error,
        }
    }
}

/// Awaits `body`; exists so that `?` inside `on_pool!` bodies knows its error type.
async fn attempt<T>(body: impl Future<Output = Result<T, Failure>>) -> Result<T, Failure> {
    body.await
}

/// Maps a constraint violation of one statement to the typed error it means there.
trait Violation<T> {
    /// A unique violation means `object` already exists.
    fn exists_as(self, object: impl FnOnce() -> Object) -> Result<T, Failure>;
    /// A foreign-key violation means `object` (what the row refers to) does not exist.
    fn missing_as(self, object: impl FnOnce() -> Object) -> Result<T, Failure>;
}

impl<T> Violation<T> for Result<T, sqlx::Error> {
    fn exists_as(self, object: impl FnOnce() -> Object) -> Result<T, Failure> {
        self.map_err(|error| match &error {
            sqlx::Error::Database(database) if database.is_unique_violation() => {
                StateError::AlreadyExists { object: object() }.into()
            }
            _ => error.into(),
        })
    }

    fn missing_as(self, object: impl FnOnce() -> Object) -> Result<T, Failure> {
        self.map_err(|error| match &error {
            sqlx::Error::Database(database) if database.is_foreign_key_violation() => {
                StateError::NotFound { object: object() }.into()
            }
            _ => error.into(),
        })
    }
}

impl<T> Violation<T> for Result<T, Failure> {
    fn exists_as(self, object: impl FnOnce() -> Object) -> Result<T, Failure> {
        match self {
            Err(Failure::Sql(error)) => Err(error).exists_as(object),
            other => other,
        }
    }

    fn missing_as(self, object: impl FnOnce() -> Object) -> Result<T, Failure> {
        match self {
            Err(Failure::Sql(error)) => Err(error).missing_as(object),
            other => other,
        }
    }
}

/// A foreign-key violation while deleting: something recorded meanwhile refers to the row.
fn referenced(error: sqlx::Error, object: Object) -> Failure {
    match &error {
        sqlx::Error::Database(database) if database.is_foreign_key_violation() => {
            StateError::Referenced { object }.into()
        }
        _ => error.into(),
    }
}

/// The `name` column of every row.
fn names(rows: Vec<impl Columns>) -> Result<Vec<String>, sqlx::Error> {
    rows.iter().map(|row| row.text("name")).collect()
}

/// Deployment names by the `id` of what they use, from a query returning `id, name`.
async fn usage<C: Conn>(conn: &mut C, sql: &str) -> Result<BTreeMap<i64, Vec<String>>, Failure> {
    let mut users: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for row in conn.rows(sql, params![]).await? {
        users
            .entry(row.int("id")?)
            .or_default()
            .push(row.text("name")?);
    }
    Ok(users)
}

/// Declares an id newtype: ids of different tables cannot be mixed up.
macro_rules! id_type {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
            serde::Serialize, serde::Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}

id_type! {
    /// A task's number, as the CLI shows it (`Task 417`).
    TaskId;
    /// A row of `release_versions`.
    ReleaseVersionId;
    /// A row of `jobs`.
    JobId;
    /// A row of `packages`.
    PackageId;
    /// A row of `compiled_packages`.
    CompiledPackageId;
    /// A row of `stemcells`.
    StemcellId;
    /// A row of `deployments`.
    DeploymentId;
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    i64::try_from(seconds).unwrap_or(i64::MAX)
}

/// A duration in whole seconds, rounded up (a lock never expires early).
fn seconds_ceil(duration: Duration) -> i64 {
    let seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    i64::try_from(seconds).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_urls() {
        let cases = [
            (
                "postgres://director:director@127.0.0.1:5432/director_test",
                "postgres://director:<redacted>@127.0.0.1:5432/director_test",
            ),
            (
                "postgresql://u:p@ss@db/x?sslmode=require",
                "postgresql://u:<redacted>@db/x?sslmode=require",
            ),
            // A user info without a password may be a token: hidden too.
            ("postgres://user@db/x", "postgres://<redacted>@db/x"),
            ("postgres://u:a/b@db/x", "postgres://u:<redacted>@db/x"),
            (
                "postgres://db/x?user=u&password=secret&sslmode=require",
                "postgres://db/x?user=u&password=<redacted>&sslmode=require",
            ),
            ("sqlite:///var/lib/state.db", "sqlite:///var/lib/state.db"),
            ("nonsense", "nonsense"),
        ];
        for (url, expected) in cases {
            assert_eq!(redact_url(url), expected, "{url}");
        }
    }

    /// The director awaits these futures in spawned tasks and HTTP handlers: they must be
    /// `Send`. Compiling this function is the test.
    #[allow(dead_code, clippy::let_underscore_future)]
    fn repository_futures_are_send(state: &State) {
        fn send<T: Send>(_: T) {}
        let release = NewReleaseVersion {
            name: String::new(),
            version: String::new(),
            commit_hash: None,
            uncommitted_changes: false,
            manifest: String::new(),
            jobs: Vec::new(),
            packages: Vec::new(),
        };
        send(State::open(""));
        send(state.schema_version());
        send(state.releases().insert(&release));
        send(state.releases().find("", ""));
        send(state.releases().list());
        send(state.releases().delete("", ""));
        send(state.compiled_packages().next_build(PackageId(0), "", ""));
        send(state.stemcells().list());
        send(state.deployments().set_uses(DeploymentId(0), &[], &[]));
        send(state.tasks().set_state(TaskId(0), TaskState::Done, None));
        send(state.tasks().list(&TaskFilter::recent(1)));
        send(state.directors().fail_orphaned_tasks("", Duration::ZERO));
        send(state.locks().acquire("", TaskId(0), Duration::ZERO));
        send(state.blobs().unreferenced(0));
        send(state.events().list(1));
    }

    #[test]
    fn durations_round_up_to_whole_seconds() {
        assert_eq!(seconds_ceil(Duration::ZERO), 0);
        assert_eq!(seconds_ceil(Duration::from_millis(1)), 1);
        assert_eq!(seconds_ceil(Duration::from_secs(30)), 30);
        assert_eq!(seconds_ceil(Duration::from_millis(30_001)), 31);
    }
}
