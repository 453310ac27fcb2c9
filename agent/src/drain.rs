//! The drain script contract (`docs:drain.md`), as pure functions: the arguments a job's
//! `bin/drain` gets, its environment, and how its output is read.
//!
//! `bin/drain <job_change> <hash_change>` with `BOSH_JOB_STATE` and `BOSH_JOB_NEXT_STATE`
//! (`{"persistent_disk": <MB>}`) prints one integer: `n ≥ 0` asks the agent to wait `n`
//! seconds, `n < 0` says "call me again with `job_check_status` in `|n|` seconds". The agent
//! waits static values itself and answers `0`; a negative value is answered as is and the
//! director calls `drain ["status"]` until it gets `0`.
//!
//! **Invariant:** pure.

use serde_json::json;

use agent_protocol::ApplySpec;

/// What the director asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainKind {
    /// `update`: the instance changes.
    Update,
    /// `shutdown`: the instance stops or goes away.
    Shutdown,
    /// `status`: ask dynamic drain scripts again.
    Status,
}

impl DrainKind {
    /// `update`, `shutdown`, `status`.
    pub fn parse(text: &str) -> Option<DrainKind> {
        match text {
            "update" => Some(DrainKind::Update),
            "shutdown" => Some(DrainKind::Shutdown),
            "status" => Some(DrainKind::Status),
            _ => None,
        }
    }
}

/// The two arguments `bin/drain` of `job` gets, as BOSH's agent computes them:
/// `job_shutdown`/`job_check_status`, or `job_new`, `job_unchanged`, `job_changed` for an
/// update (the job's rendered digest and its packages compared); `hash_new`,
/// `hash_unchanged`, `hash_changed` from the configuration hash.
pub fn script_args(
    kind: DrainKind,
    job: &str,
    current: &ApplySpec,
    next: Option<&ApplySpec>,
) -> [&'static str; 2] {
    match kind {
        DrainKind::Shutdown => ["job_shutdown", "hash_unchanged"],
        DrainKind::Status => ["job_check_status", "hash_unchanged"],
        DrainKind::Update => {
            let Some(next) = next else {
                return ["job_unchanged", "hash_unchanged"];
            };
            let job_change = if current.jobs.is_empty() {
                "job_new"
            } else if job_unchanged(job, current, next) {
                "job_unchanged"
            } else {
                "job_changed"
            };
            let hash_change = if current.configuration_hash.is_empty() {
                "hash_new"
            } else if current.configuration_hash == next.configuration_hash {
                "hash_unchanged"
            } else {
                "hash_changed"
            };
            [job_change, hash_change]
        }
    }
}

/// Whether `job` is installed the same way in both specs: same rendered archive, same
/// packages at the same versions.
pub fn job_unchanged(job: &str, current: &ApplySpec, next: &ApplySpec) -> bool {
    let find = |spec: &ApplySpec| spec.jobs.iter().find(|j| j.name == job).cloned();
    let (Some(old), Some(new)) = (find(current), find(next)) else {
        return false;
    };
    let versions = |spec: &ApplySpec, names: &[String]| {
        names
            .iter()
            .map(|p| spec.packages.get(p).map(|p| p.blob.id.clone()))
            .collect::<Vec<_>>()
    };
    old.rendered.id == new.rendered.id
        && old.packages == new.packages
        && versions(current, &old.packages) == versions(next, &new.packages)
}

/// `BOSH_JOB_STATE` / `BOSH_JOB_NEXT_STATE` for a spec (`{"persistent_disk":0}` when there
/// is none: the instance is going away).
pub fn state_env(spec: Option<&ApplySpec>) -> String {
    json!({"persistent_disk": spec.map(|s| s.persistent_disk).unwrap_or(0)}).to_string()
}

/// Reads a drain script's stdout: one integer, surrounding whitespace allowed.
pub fn parse_output(stdout: &str) -> Result<i64, String> {
    let text = stdout.trim();
    text.parse::<i64>().map_err(|_| {
        if text.is_empty() {
            "printed nothing, expected an integer".to_string()
        } else {
            format!("printed {text:?}, expected an integer")
        }
    })
}

/// Combines the values of several jobs' drain scripts: the longest static wait, and the
/// soonest recheck among dynamic ones (`-1` beats `-5`: the director asks again after 1 s).
pub fn combine(values: &[i64]) -> (u64, Option<i64>) {
    let wait = values
        .iter()
        .filter(|v| **v >= 0)
        .max()
        .copied()
        .unwrap_or(0) as u64;
    let dynamic = values.iter().filter(|v| **v < 0).max().copied();
    (wait, dynamic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_protocol::{BlobRef, JobSpec, PackageSpec};

    fn spec(rendered: &str, package_blob: &str, hash: &str) -> ApplySpec {
        let mut spec = ApplySpec {
            configuration_hash: hash.to_string(),
            ..ApplySpec::default()
        };
        spec.jobs.push(JobSpec {
            name: "web".to_string(),
            version: "1".to_string(),
            rendered: BlobRef {
                id: rendered.to_string(),
                url: String::new(),
            },
            packages: vec!["nginx".to_string()],
        });
        spec.packages.insert(
            "nginx".to_string(),
            PackageSpec {
                name: "nginx".to_string(),
                version: "1.1".to_string(),
                blob: BlobRef {
                    id: package_blob.to_string(),
                    url: String::new(),
                },
            },
        );
        spec
    }

    #[test]
    fn output_is_one_integer() {
        assert_eq!(parse_output("5\n"), Ok(5));
        assert_eq!(parse_output("  -3 "), Ok(-3));
        assert_eq!(parse_output("0"), Ok(0));
        assert_eq!(
            parse_output("draining\n5\n"),
            Err("printed \"draining\\n5\", expected an integer".to_string())
        );
        assert_eq!(
            parse_output(""),
            Err("printed nothing, expected an integer".to_string())
        );
        assert!(parse_output("1.5").is_err());
    }

    #[test]
    fn arguments_follow_boshs_agent() {
        let current = spec("r1", "p1", "h1");
        assert_eq!(
            script_args(DrainKind::Shutdown, "web", &current, None),
            ["job_shutdown", "hash_unchanged"]
        );
        assert_eq!(
            script_args(DrainKind::Status, "web", &current, None),
            ["job_check_status", "hash_unchanged"]
        );
        let same = spec("r1", "p1", "h1");
        assert_eq!(
            script_args(DrainKind::Update, "web", &current, Some(&same)),
            ["job_unchanged", "hash_unchanged"]
        );
        let new_package = spec("r1", "p2", "h2");
        assert_eq!(
            script_args(DrainKind::Update, "web", &current, Some(&new_package)),
            ["job_changed", "hash_changed"]
        );
        let new_templates = spec("r2", "p1", "h1");
        assert_eq!(
            script_args(DrainKind::Update, "web", &current, Some(&new_templates)),
            ["job_changed", "hash_unchanged"]
        );
        assert_eq!(
            script_args(DrainKind::Update, "web", &ApplySpec::default(), Some(&same)),
            ["job_new", "hash_new"]
        );
    }

    #[test]
    fn values_combine() {
        assert_eq!(combine(&[]), (0, None));
        assert_eq!(combine(&[1, 3, 0]), (3, None));
        assert_eq!(combine(&[2, -5, -1]), (2, Some(-1)));
    }

    #[test]
    fn state_env_names_the_disk() {
        let next = ApplySpec {
            persistent_disk: 2048,
            ..ApplySpec::default()
        };
        assert_eq!(state_env(Some(&next)), r#"{"persistent_disk":2048}"#);
        assert_eq!(state_env(None), r#"{"persistent_disk":0}"#);
    }
}
