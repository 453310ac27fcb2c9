//! Director-wide settings an operator changes at run time, by name (BOSH's
//! `director_attributes`): `resurrection_paused`.

use super::sql::{Columns, Conn, params};
use super::{State, StateError, now};

/// A recorded setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribute {
    pub value: String,
    /// When it was last set (Unix seconds).
    pub updated_at: i64,
}

/// Director attributes; see [`State::attributes`].
#[derive(Clone, Copy, Debug)]
pub struct Attributes<'a> {
    pub(super) state: &'a State,
}

impl Attributes<'_> {
    /// The setting `name`, if it was ever set.
    pub async fn get(&self, name: &str) -> Result<Option<Attribute>, StateError> {
        on_pool!(
            self.state,
            format!("reading director attribute '{name}'"),
            |pool| {
                let mut conn = pool.acquire().await?;
                let row = conn
                    .maybe_row(
                        "SELECT value, updated_at FROM director_attributes WHERE name = $1",
                        params![name],
                    )
                    .await?;
                Ok(row
                    .map(|row| {
                        Ok::<_, sqlx::Error>(Attribute {
                            value: row.text("value")?,
                            updated_at: row.int("updated_at")?,
                        })
                    })
                    .transpose()?)
            }
        )
    }

    /// Sets `name` to `value` (now).
    pub async fn set(&self, name: &str, value: &str) -> Result<Attribute, StateError> {
        let time = now();
        on_pool!(
            self.state,
            format!("setting director attribute '{name}'"),
            |pool| {
                let mut conn = pool.acquire().await?;
                conn.run(
                    "INSERT INTO director_attributes (name, value, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value, \
                 updated_at = excluded.updated_at",
                    params![name, value, time],
                )
                .await?;
                Ok(Attribute {
                    value: value.to_string(),
                    updated_at: time,
                })
            }
        )
    }
}
