//! The thin layer that lets one query text run on both native drivers.
//!
//! Repository code is written once, generic over [`Conn`] (a SQLite or PostgreSQL
//! connection, usually inside a transaction), passes its parameters as [`Param`]s and reads
//! rows through [`Columns`]. Unlike `sqlx::Any`, each backend keeps its own driver: its
//! connection options, type checks and error codes.

use std::future::Future;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{PgConnection, PgPool, Row, SqliteConnection, SqlitePool, Transaction};

/// A bound parameter: the few types the schema uses.
#[derive(Clone, Copy, Debug)]
pub(super) enum Param<'a> {
    Int(i64),
    OptInt(Option<i64>),
    Text(&'a str),
    OptText(Option<&'a str>),
    Bool(bool),
}

impl From<i64> for Param<'_> {
    fn from(value: i64) -> Self {
        Param::Int(value)
    }
}

impl From<Option<i64>> for Param<'_> {
    fn from(value: Option<i64>) -> Self {
        Param::OptInt(value)
    }
}

impl<'a> From<&'a str> for Param<'a> {
    fn from(value: &'a str) -> Self {
        Param::Text(value)
    }
}

impl<'a> From<&'a String> for Param<'a> {
    fn from(value: &'a String) -> Self {
        Param::Text(value)
    }
}

impl<'a> From<Option<&'a str>> for Param<'a> {
    fn from(value: Option<&'a str>) -> Self {
        Param::OptText(value)
    }
}

impl<'a> From<&'a Option<String>> for Param<'a> {
    fn from(value: &'a Option<String>) -> Self {
        Param::OptText(value.as_deref())
    }
}

impl From<bool> for Param<'_> {
    fn from(value: bool) -> Self {
        Param::Bool(value)
    }
}

/// `params![a, b, c]` is `&[Param::from(a), Param::from(b), Param::from(c)]`.
macro_rules! params {
    ($($value:expr),* $(,)?) => {
        &[$($crate::sql::Param::from($value)),*]
    };
}

pub(super) use params;

/// A connection of either backend.
pub(super) trait Conn: Send {
    type Row: Columns + Send;

    /// Every row the query returns.
    fn rows(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> impl Future<Output = Result<Vec<Self::Row>, sqlx::Error>> + Send;

    /// The first row, if any.
    fn maybe_row(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> impl Future<Output = Result<Option<Self::Row>, sqlx::Error>> + Send;

    /// Exactly one row (`RowNotFound` otherwise).
    fn row(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> impl Future<Output = Result<Self::Row, sqlx::Error>> + Send;

    /// Runs a statement; returns the number of rows it changed.
    fn run(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;
}

macro_rules! impl_conn {
    ($connection:ty, $database:ty, $row:ty) => {
        impl Conn for $connection {
            type Row = $row;

            async fn rows(
                &mut self,
                sql: &str,
                params: &[Param<'_>],
            ) -> Result<Vec<$row>, sqlx::Error> {
                bind::<$database>(sql, params).fetch_all(self).await
            }

            async fn maybe_row(
                &mut self,
                sql: &str,
                params: &[Param<'_>],
            ) -> Result<Option<$row>, sqlx::Error> {
                bind::<$database>(sql, params).fetch_optional(self).await
            }

            async fn row(&mut self, sql: &str, params: &[Param<'_>]) -> Result<$row, sqlx::Error> {
                bind::<$database>(sql, params).fetch_one(self).await
            }

            async fn run(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, sqlx::Error> {
                let done = bind::<$database>(sql, params).execute(self).await?;
                Ok(done.rows_affected())
            }
        }
    };
}

impl_conn!(SqliteConnection, sqlx::Sqlite, SqliteRow);
impl_conn!(PgConnection, sqlx::Postgres, PgRow);

fn bind<'q, DB>(
    sql: &'q str,
    params: &[Param<'q>],
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    bool: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    params
        .iter()
        .fold(sqlx::query::<DB>(sql), |query, param| match *param {
            Param::Int(value) => query.bind(value),
            Param::OptInt(value) => query.bind(value),
            Param::Text(value) => query.bind(value),
            Param::OptText(value) => query.bind(value),
            Param::Bool(value) => query.bind(value),
        })
}

/// Opening transactions the way each backend needs them.
pub(super) trait Begin {
    type Database: sqlx::Database;

    /// A transaction that will write. SQLite takes the write lock up front (`BEGIN
    /// IMMEDIATE`), so two writers queue on the busy timeout instead of one failing when it
    /// upgrades from reading to writing.
    fn begin_write(
        &self,
    ) -> impl Future<Output = Result<Transaction<'static, Self::Database>, sqlx::Error>> + Send;

    /// A read-only transaction that sees one snapshot across its statements.
    fn begin_read(
        &self,
    ) -> impl Future<Output = Result<Transaction<'static, Self::Database>, sqlx::Error>> + Send;
}

impl Begin for SqlitePool {
    type Database = sqlx::Sqlite;

    async fn begin_write(&self) -> Result<Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }

    async fn begin_read(&self) -> Result<Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        // A deferred transaction in WAL mode keeps the snapshot of its first read.
        self.begin().await
    }
}

impl Begin for PgPool {
    type Database = sqlx::Postgres;

    async fn begin_write(&self) -> Result<Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.begin().await
    }

    async fn begin_read(&self) -> Result<Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
    }
}

/// Typed column access, the same for both backends' rows.
pub(super) trait Columns {
    fn int(&self, column: &str) -> Result<i64, sqlx::Error>;
    fn opt_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error>;
    fn text(&self, column: &str) -> Result<String, sqlx::Error>;
    fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error>;
    fn flag(&self, column: &str) -> Result<bool, sqlx::Error>;

    /// A JSON document stored as text.
    fn json<T: DeserializeOwned>(&self, column: &str) -> Result<T, sqlx::Error> {
        let text = self.text(column)?;
        serde_json::from_str(&text).map_err(|error| sqlx::Error::ColumnDecode {
            index: column.to_string(),
            source: Box::new(error),
        })
    }

    /// A non-negative integer (sizes).
    fn size(&self, column: &str) -> Result<u64, sqlx::Error> {
        let value = self.int(column)?;
        u64::try_from(value).map_err(|error| sqlx::Error::ColumnDecode {
            index: column.to_string(),
            source: Box::new(error),
        })
    }

    /// A value stored in its `Display` form and read back with `FromStr` (task states).
    fn parsed<T>(&self, column: &str) -> Result<T, sqlx::Error>
    where
        T: FromStr,
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        let text = self.text(column)?;
        text.parse()
            .map_err(|error: T::Err| sqlx::Error::ColumnDecode {
                index: column.to_string(),
                source: Box::new(error),
            })
    }
}

macro_rules! impl_columns {
    ($($row:ty),*) => {$(
        impl Columns for $row {
            fn int(&self, column: &str) -> Result<i64, sqlx::Error> {
                self.try_get(column)
            }
            fn opt_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error> {
                self.try_get(column)
            }
            fn text(&self, column: &str) -> Result<String, sqlx::Error> {
                self.try_get(column)
            }
            fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
                self.try_get(column)
            }
            fn flag(&self, column: &str) -> Result<bool, sqlx::Error> {
                self.try_get(column)
            }
        }
    )*};
}

impl_columns!(SqliteRow, PgRow);

/// Placeholders `$first, $first+1, …` for `count` values of an `IN (…)` list.
pub(super) fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|index| format!("${index}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_from_the_first() {
        assert_eq!(placeholders(3, 3), "$3, $4, $5");
        assert_eq!(placeholders(1, 1), "$1");
    }
}
