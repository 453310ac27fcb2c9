//! Draining an instance's jobs before they stop (BOSH's drain contract): the agent runs the
//! jobs' drain scripts; a negative answer is a dynamic drain, asked again (`drain status`)
//! after that many seconds, until it answers zero or more.
//!
//! One loop serves every caller (the updater, stop/restart/recreate, deleting instances),
//! and it is bounded: dynamic drains get a deadline (the director's agent task timeout,
//! `Timeouts::agent_task`, one hour by default, as BOSH bounds a drain by its own agent
//! task wait) and the loop checks for cancellation between polls. What a drain past its
//! deadline means is the caller's: the updater fails the instance, deleting an instance
//! warns and stops it anyway (as BOSH does).

use std::future::Future;
use std::time::Duration;

use serde_json::Value as Json;
use tokio_util::sync::CancellationToken;

use director_bus::BusError;

/// Why drain was given: the jobs stop for an update, or for good (the VM or its persistent
/// disk goes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainKind {
    /// `update`: the instance comes back with a new spec.
    Update,
    /// `shutdown`: the VM is deleted or recreated, or the persistent disk changes.
    Shutdown,
}

impl DrainKind {
    /// The first argument of the agent's `drain`.
    pub fn as_str(self) -> &'static str {
        match self {
            DrainKind::Update => "update",
            DrainKind::Shutdown => "shutdown",
        }
    }
}

/// Why draining or stopping an instance's jobs failed.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// The agent failed the call or did not answer.
    #[error("{source}")]
    Agent {
        /// The agent method (`drain`, `stop`).
        method: &'static str,
        /// Why.
        source: Box<BusError>,
    },
    /// A dynamic drain still asked for more time at its deadline.
    #[error("the drain script did not finish within {}", director_bus::human_duration(*deadline))]
    DeadlineExceeded {
        /// The deadline it was given.
        deadline: Duration,
    },
    /// The task was cancelled while waiting for the drain script.
    #[error("task cancelled")]
    Cancelled,
    /// The next apply spec handed to the drain scripts could not be serialized.
    #[error("{source}")]
    NextSpec {
        /// Why.
        source: serde_json::Error,
    },
}

/// An agent's long-running tasks (`drain`, `stop`), as the drain loop calls them: the bus
/// in the director, a fake in tests.
pub trait AgentTasks {
    /// Runs `method` with `arguments` as an agent task and answers its value.
    fn run_task(
        &self,
        method: &'static str,
        arguments: Vec<Json>,
    ) -> impl Future<Output = Result<Json, BusError>> + Send;
}

/// How long a drain may take and what stops it early.
#[derive(Clone, Debug)]
pub struct DrainLimits {
    /// The longest a dynamic drain is waited for, from the first `drain` call.
    pub deadline: Duration,
    /// The task's cancellation, checked between polls.
    pub cancellation: CancellationToken,
}

async fn call<A: AgentTasks>(
    agent: &A,
    method: &'static str,
    arguments: Vec<Json>,
) -> Result<Json, DrainError> {
    agent
        .run_task(method, arguments)
        .await
        .map_err(|source| DrainError::Agent {
            method,
            source: Box::new(source),
        })
}

/// Runs the drain scripts (`kind`, with the next apply spec when there is one) and waits
/// for dynamic drains, polling `drain status` as the agent asks, until they finish, the
/// deadline passes ([`DrainError::DeadlineExceeded`]) or the task is cancelled.
pub async fn drain<A: AgentTasks>(
    agent: &A,
    kind: DrainKind,
    next: Option<Json>,
    limits: &DrainLimits,
) -> Result<(), DrainError> {
    let started = tokio::time::Instant::now();
    let mut arguments = vec![Json::from(kind.as_str())];
    arguments.extend(next);
    let mut answer = call(agent, "drain", arguments).await?;
    // Negative: a dynamic drain; ask again after that many seconds.
    while let Some(seconds) = answer.as_i64().filter(|seconds| *seconds < 0) {
        let waited = started.elapsed();
        if waited >= limits.deadline {
            return Err(DrainError::DeadlineExceeded {
                deadline: limits.deadline,
            });
        }
        let pause = Duration::from_secs(seconds.unsigned_abs()).min(limits.deadline - waited);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = limits.cancellation.cancelled() => return Err(DrainError::Cancelled),
        }
        answer = call(agent, "drain", vec![Json::from("status")]).await?;
    }
    Ok(())
}

/// Stops the jobs of an instance that is being deleted: drains them (unless `skip_drain`),
/// then stops them. A drain past its deadline does not keep the instance: the jobs are
/// stopped anyway and the answer is a warning saying so.
pub async fn stop_for_delete<A: AgentTasks>(
    agent: &A,
    skip_drain: bool,
    limits: &DrainLimits,
) -> Result<Option<String>, DrainError> {
    let mut warning = None;
    if !skip_drain {
        match drain(agent, DrainKind::Shutdown, None, limits).await {
            Ok(()) => {}
            Err(timed_out @ DrainError::DeadlineExceeded { .. }) => {
                warning = Some(format!("{timed_out}; stopping the jobs anyway"));
            }
            Err(other) => return Err(other),
        }
    }
    call(agent, "stop", vec![]).await?;
    Ok(warning)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An agent whose dynamic drain never finishes: every `drain` answers -1.
    #[derive(Default)]
    struct EndlessDrain {
        calls: Mutex<Vec<String>>,
    }

    impl AgentTasks for EndlessDrain {
        fn run_task(
            &self,
            method: &'static str,
            arguments: Vec<Json>,
        ) -> impl Future<Output = Result<Json, BusError>> + Send {
            let first = arguments
                .first()
                .and_then(Json::as_str)
                .map(|a| format!(" {a}"))
                .unwrap_or_default();
            self.calls
                .lock()
                .expect("the call log")
                .push(format!("{method}{first}"));
            let answer = if method == "drain" {
                Json::from(-1)
            } else {
                Json::Null
            };
            async move { Ok(answer) }
        }
    }

    fn limits(deadline: Duration) -> DrainLimits {
        DrainLimits {
            deadline,
            cancellation: CancellationToken::new(),
        }
    }

    #[tokio::test]
    async fn deleting_an_instance_whose_drain_never_finishes_stops_it_at_the_deadline() {
        let agent = EndlessDrain::default();
        let started = std::time::Instant::now();
        // Without a deadline the loop would ask `drain status` forever.
        let warning = tokio::time::timeout(
            Duration::from_secs(20),
            stop_for_delete(&agent, false, &limits(Duration::from_secs(2))),
        )
        .await
        .expect("the drain loop ends at its deadline")
        .expect("a drain past its deadline is not an error when deleting");
        assert!(started.elapsed() >= Duration::from_secs(2));
        assert_eq!(
            warning.as_deref(),
            Some("the drain script did not finish within 2 s; stopping the jobs anyway")
        );
        let calls = agent.calls.lock().expect("the call log").clone();
        assert_eq!(calls.first().map(String::as_str), Some("drain shutdown"));
        assert_eq!(calls.last().map(String::as_str), Some("stop"));
        assert!(calls.iter().any(|c| c == "drain status"), "{calls:?}");
    }

    #[tokio::test]
    async fn an_update_drain_past_its_deadline_is_an_error() {
        let agent = EndlessDrain::default();
        let outcome = tokio::time::timeout(
            Duration::from_secs(20),
            drain(
                &agent,
                DrainKind::Update,
                None,
                &limits(Duration::from_secs(1)),
            ),
        )
        .await
        .expect("the drain loop ends at its deadline");
        assert!(
            matches!(outcome, Err(DrainError::DeadlineExceeded { .. })),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn cancelling_the_task_ends_a_dynamic_drain_between_polls() {
        let agent = EndlessDrain::default();
        let limits = limits(Duration::from_secs(3600));
        let cancellation = limits.cancellation.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            cancellation.cancel();
        });
        let outcome = tokio::time::timeout(
            Duration::from_secs(20),
            drain(&agent, DrainKind::Shutdown, None, &limits),
        )
        .await
        .expect("cancelling ends the drain loop");
        assert!(matches!(outcome, Err(DrainError::Cancelled)), "{outcome:?}");
    }
}
