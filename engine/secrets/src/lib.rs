//! How bytes and text that may hold secrets leave a process. Every crate of the workspace
//! (director, agent, CPI, stemcell builder) writes files and redacts URLs through this one
//! crate, so there is one behaviour to get right:
//!
//! - [`write_atomic`] / [`write_atomic_with`]: a file appears whole or not at all, under a
//!   temporary name nobody can predict or pre-create, with the mode asked for from the start;
//! - [`redact_urls`]: passwords and signatures inside any URL in a text are hidden;
//! - [`Redacted`]: a value whose `Debug` and `Display` print `<redacted>`.
//!
//! **Invariant:** nothing here logs, and nothing here returns a secret it was given in an
//! error message (errors name paths, never contents).

mod file;
mod url;

pub use file::{AtomicFile, write_atomic, write_atomic_with, write_private};
pub use url::redact_urls;

/// A value that prints as `<redacted>` (`Debug` and `Display`): wrap passwords, tokens and
/// keys in configuration structs so that a `{:?}` of the struct shows none of them.
#[derive(Clone, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(transparent)
)]
pub struct Redacted<T>(pub T);

impl<T> Redacted<T> {
    /// The secret itself, for the one place that must use it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> std::fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<T> std::fmt::Display for Redacted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redacted_value_never_prints() {
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Config {
            user: String,
            password: Redacted<String>,
        }
        let config = Config {
            user: "admin".into(),
            password: Redacted("s3cret".into()),
        };
        let shown = format!("{config:?} {}", config.password);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("admin"), "{shown}");
        assert_eq!(config.password.expose(), "s3cret");
    }
}
