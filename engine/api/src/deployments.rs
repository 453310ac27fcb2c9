//! Configs, deployments and the verbs that change their instances.

use serde::{Deserialize, Serialize};

/// The kind of a director config (`/configs/{kind}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigKind {
    /// AZs, VM types, disk types, networks, compilation.
    Cloud,
    /// Releases and addons put on every matching instance group.
    Runtime,
}

impl ConfigKind {
    /// `cloud` or `runtime`, as in paths and the state database.
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigKind::Cloud => "cloud",
            ConfigKind::Runtime => "runtime",
        }
    }
}

impl std::fmt::Display for ConfigKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ConfigKind {
    type Err = UnknownValue;

    fn from_str(text: &str) -> Result<ConfigKind, UnknownValue> {
        match text {
            "cloud" => Ok(ConfigKind::Cloud),
            "runtime" => Ok(ConfigKind::Runtime),
            other => Err(UnknownValue {
                what: "config type",
                given: other.to_string(),
                expected: "cloud or runtime",
            }),
        }
    }
}

/// What `POST /deployments/{name}/state` does to the instances it targets (BOSH's
/// `state` parameter of `PUT /deployments/{name}/jobs/…`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StateChange {
    /// `director start`.
    #[serde(rename = "started")]
    Start,
    /// `director stop`.
    #[serde(rename = "stopped")]
    Stop,
    /// `director restart`.
    #[serde(rename = "restart")]
    Restart,
    /// `director recreate`.
    #[serde(rename = "recreate")]
    Recreate,
}

impl StateChange {
    /// The task description: `start instances`, ….
    pub fn description(self) -> &'static str {
        match self {
            StateChange::Start => "start instances",
            StateChange::Stop => "stop instances",
            StateChange::Restart => "restart instances",
            StateChange::Recreate => "recreate instances",
        }
    }
}

/// A value outside an enum of the contract.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {given:?}: expected {expected}")]
pub struct UnknownValue {
    /// What was being read.
    pub what: &'static str,
    /// What was given.
    pub given: String,
    /// What is accepted.
    pub expected: &'static str,
}
