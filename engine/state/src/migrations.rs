//! The schema's history: forward-only migrations, one list per backend.
//!
//! Each backend has its own directory (`engine/state/migrations/sqlite/`,
//! `engine/state/migrations/postgres/`) because the DDL is honestly different (identity columns,
//! `BOOLEAN`, `STRICT` tables, regular-expression checks), while the tables, columns and
//! constraints are the same, so that the repository's queries are one text for both. Every
//! migration exists in both directories under the same `NNNN_description.sql` name.
//!
//! The files are embedded with `include_str!` (cargo rebuilds when one changes) and handed
//! to sqlx's `Migrator` through its public `MigrationSource` trait. The result is what
//! `sqlx::migrate!` would produce (same `_sqlx_migrations` table, versions, descriptions and
//! SHA-384 checksums, so the two are interchangeable) without enabling sqlx's `macros`
//! feature, which would build both database drivers, bundled SQLite included, a second time
//! for the proc-macro. The unit tests below check that the lists match the directories.
//!
//! Forward-only is enforced twice: sqlx refuses to open a database whose applied migration
//! has a different checksum (an edited file) or that has a migration this build does not
//! know (a newer director), and the `released_migrations_are_never_edited` test pins the
//! SHA-256 of every released file.

use std::borrow::Cow;

use futures::future::BoxFuture;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

use super::sql::{Columns, Conn, params};
use super::{Pool, State, StateError};

/// One embedded migration file.
#[derive(Debug)]
struct Embedded {
    version: i64,
    /// The file name without the version and `.sql`, underscores as spaces (sqlx's rule).
    description: &'static str,
    sql: &'static str,
}

macro_rules! embedded {
    ($backend:literal: $($version:literal $file:literal $description:literal,)*) => {
        &[$(Embedded {
            version: $version,
            description: $description,
            sql: include_str!(concat!("../migrations/", $backend, "/", $file)),
        },)*]
    };
}

/// The migrations of SQLite, in order.
const SQLITE: &[Embedded] = embedded!("sqlite":
    1 "0001_initial.sql" "initial",
    2 "0002_deploy.sql" "deploy",
    3 "0003_blob_slots.sql" "blob slots",
    4 "0004_vm_records.sql" "vm records",
    5 "0005_task_owners.sql" "task owners",
    6 "0006_resurrection.sql" "resurrection",
);

/// The migrations of PostgreSQL, in order; the same versions as [`SQLITE`].
const POSTGRES: &[Embedded] = embedded!("postgres":
    1 "0001_initial.sql" "initial",
    2 "0002_deploy.sql" "deploy",
    3 "0003_blob_slots.sql" "blob slots",
    4 "0004_vm_records.sql" "vm records",
    5 "0005_task_owners.sql" "task owners",
    6 "0006_resurrection.sql" "resurrection",
);

/// The schema version a freshly opened database has.
pub const LATEST_SCHEMA_VERSION: i64 = 6;

#[derive(Debug)]
struct Source(&'static [Embedded]);

impl MigrationSource<'static> for Source {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        let migrations = self
            .0
            .iter()
            .map(|embedded| {
                Migration::new(
                    embedded.version,
                    Cow::Borrowed(embedded.description),
                    MigrationType::Simple,
                    Cow::Borrowed(embedded.sql),
                    false,
                )
            })
            .collect();
        Box::pin(async move { Ok(migrations) })
    }
}

/// Applies the pending migrations (each in its own transaction; on PostgreSQL under an
/// advisory lock, so two directors starting together do not both migrate).
pub(super) async fn run(state: &State) -> Result<(), StateError> {
    let failed = |source| StateError::Migrate {
        url: state.url.clone(),
        source,
    };
    match &state.pool {
        Pool::Sqlite(pool) => {
            let migrator = Migrator::new(Source(SQLITE)).await.map_err(failed)?;
            migrator.run(pool).await.map_err(failed)
        }
        Pool::Postgres(pool) => {
            let migrator = Migrator::new(Source(POSTGRES)).await.map_err(failed)?;
            migrator.run(pool).await.map_err(failed)
        }
    }
}

pub(super) async fn applied_version(state: &State) -> Result<i64, StateError> {
    on_pool!(state, "reading the schema version".to_string(), |pool| {
        let mut conn = pool.acquire().await?;
        let row = conn
            .row(
                "SELECT MAX(version) AS version FROM _sqlx_migrations WHERE success",
                params![],
            )
            .await?;
        Ok(row.opt_int("version")?.unwrap_or(0))
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use sha2::{Digest, Sha256};

    use super::*;

    /// Every migration that has been released, with the SHA-256 of its file. A released
    /// file is never edited: change the schema with a new migration and add it here.
    const RELEASED: &[(&str, &str)] = &[
        (
            "sqlite/0001_initial.sql",
            "ee60aca9e346f52748ee3a495d3bb995a02151a74375cf42404d205953597e68",
        ),
        (
            "postgres/0001_initial.sql",
            "bc8ccb8aeb84ed084a7ffe1e20cd5778ea018a377c30e4f0220019e24e383be9",
        ),
        (
            "sqlite/0002_deploy.sql",
            "54691b945cdc67d372d0d46ae27cec9643b3d99fc7f2ae5afed966194262329c",
        ),
        (
            "postgres/0002_deploy.sql",
            "a3e3b000c26700c8f04970c7c8f8a2eb2b8be9f47f99fb9d53913bcb0552988f",
        ),
        (
            "sqlite/0003_blob_slots.sql",
            "861afb69df4579e72d1f069514813e712fa8afdb5a2ad2ae267145b254683996",
        ),
        (
            "postgres/0003_blob_slots.sql",
            "3c4c061380925c73b1725083df2714bf13f50eff07c464b83856990e3954f749",
        ),
        (
            "sqlite/0004_vm_records.sql",
            "7f4075634fee7fb8888929042d72a2ae9f7e7397e4dd38ece4f4225d584123b1",
        ),
        (
            "postgres/0004_vm_records.sql",
            "51175a4896237a5f4a4d2c905f8a5227b5ec5e0cb0e29079e57161bd5565d787",
        ),
        (
            "sqlite/0005_task_owners.sql",
            "1e53711e9af1c80e6c517cf60786ec8571d387ea44f28085d4d1d714698029ed",
        ),
        (
            "postgres/0005_task_owners.sql",
            "11bb80149aa066a0c51f6e5facbf7d63c5d3bc87fc0515881348656ddae2ecdf",
        ),
        (
            "sqlite/0006_resurrection.sql",
            "50a74e3b5fc828f351dba20ec6a5a80dcdec915f7f8bfcba6b201d0f8f04ffd7",
        ),
        (
            "postgres/0006_resurrection.sql",
            "9165445af1adce9f4375f417b02bfe8bac498c3a7eeead2fa3ffd81ee5a3a1fc",
        ),
    ];

    fn migrations_dir() -> &'static Path {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
    }

    fn files_in(backend: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(migrations_dir().join(backend))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn check_list(backend: &str, list: &[Embedded]) {
        let files = files_in(backend);
        assert_eq!(
            files.len(),
            list.len(),
            "engine/state/migrations/{backend}/ has {files:?}, but migrations.rs embeds {} files: \
             add the new file to the list",
            list.len()
        );
        for (file, embedded) in files.iter().zip(list) {
            let (version, rest) = file.split_once('_').unwrap();
            assert_eq!(version.parse::<i64>().unwrap(), embedded.version, "{file}");
            assert_eq!(
                rest.trim_end_matches(".sql").replace('_', " "),
                embedded.description,
                "{file}"
            );
            let text = std::fs::read_to_string(migrations_dir().join(backend).join(file));
            assert_eq!(text.unwrap(), embedded.sql, "{file}");
        }
        assert_eq!(list.last().unwrap().version, LATEST_SCHEMA_VERSION);
    }

    #[test]
    fn embedded_lists_match_the_directories() {
        check_list("sqlite", SQLITE);
        check_list("postgres", POSTGRES);
        assert_eq!(
            files_in("sqlite"),
            files_in("postgres"),
            "every migration exists for both backends under the same name"
        );
    }

    /// Opens a fresh SQLite state, changes its migration history with `sql`, and returns
    /// the error of opening it again.
    async fn reopen_after(sql: &str) -> String {
        let directory = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/state.db", directory.path().display());
        let state = State::open(&url).await.unwrap();
        let Pool::Sqlite(pool) = &state.pool else {
            unreachable!("a sqlite url opens sqlite");
        };
        pool.acquire()
            .await
            .unwrap()
            .run(sql, params![])
            .await
            .unwrap();
        state.close().await;
        State::open(&url).await.unwrap_err().to_string()
    }

    #[tokio::test]
    async fn an_edited_migration_is_refused() {
        let message =
            reopen_after("UPDATE _sqlx_migrations SET checksum = X'00' WHERE version = 1").await;
        assert!(message.contains("migrating the schema"), "{message}");
        assert!(
            message.contains("migration 1 was previously applied but has been modified"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_database_of_a_newer_director_is_refused() {
        let message = reopen_after(
            "INSERT INTO _sqlx_migrations \
             (version, description, success, checksum, execution_time) \
             VALUES (9999, 'from the future', 1, X'00', 0)",
        )
        .await;
        assert!(
            message.contains("migration 9999 was previously applied but is missing"),
            "{message}"
        );
    }

    #[test]
    fn released_migrations_are_never_edited() {
        for (file, expected) in RELEASED {
            let text = std::fs::read(migrations_dir().join(file)).unwrap();
            let actual: String = Sha256::digest(&text)
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect();
            assert_eq!(
                &actual, expected,
                "{file} was edited after its release; revert it and add a new migration"
            );
        }
    }
}
