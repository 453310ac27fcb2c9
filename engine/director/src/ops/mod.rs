//! The director's side of deploys: preparing a plan from its state ([`prepare`]), making
//! and removing VMs through the CPI and the bus ([`vms`]), compiling packages
//! ([`compile`]), updating instances ([`update`], draining them through [`drain`]), giving
//! stemcells to the CPI ([`stemcells`]), and the deploy task ([`deploy`]) and the
//! day-to-day verbs around it ([`verbs`]).
//!
//! The modules depend one way: `deploy` and `verbs` use `update`, which uses `compile`
//! (the builds), `drain`, `stemcells` and `vms`; `compile` uses `stemcells` and `vms`.

pub mod catalog;
pub mod cloudcheck;
pub mod compile;
pub mod deploy;
pub mod drain;
pub mod prepare;
pub mod stemcells;
pub mod update;
pub mod verbs;
pub mod vms;

use std::sync::Arc;
use std::time::Duration;

use crate::blobstore::slots::{Purpose, UploadSlot};
use crate::blobstore::{BlobId, Blobstore};
use director_bus::{AgentAccounts, Bus};
use director_state::State;
use director_state::TaskId;

pub use catalog::TemplateCache;

/// How long agents may take.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// From `create_vm` until the agent answers a ping (BOSH's `agent_wait_timeout`).
    pub agent_wait: Duration,
    /// One agent task (apply, stop, compile…): a bound, not an expectation.
    pub agent_task: Duration,
    /// How often agents send heartbeats (seconds).
    pub heartbeat_interval: u64,
    /// How long signed blob URLs handed to agents stay valid (`GET`s of packages and
    /// rendered templates; upload URLs live `agent_task`).
    pub blob_url: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            agent_wait: Duration::from_secs(600),
            agent_task: Duration::from_secs(3600),
            heartbeat_interval: 30,
            blob_url: Duration::from_secs(6 * 3600),
        }
    }
}

/// What deploys use: state, blobs, the CPI, the bus and agent accounts.
#[derive(Clone)]
pub struct Services {
    /// The state database.
    pub state: Arc<State>,
    /// The blobstore.
    pub blobstore: Blobstore,
    /// The CPI.
    pub cpi: Arc<dyn cpi::Cpi>,
    /// Requests to agents.
    pub bus: Bus,
    /// Agent accounts on the bus.
    pub accounts: Arc<dyn AgentAccounts>,
    /// The director's URL as agents reach it (for signed blob URLs): the agent endpoint,
    /// on `agent.address` (see `api::serve`).
    pub agent_url: String,
    /// A CA certificate agents trust for that URL.
    pub ca_cert: Option<String>,
    /// Template sources.
    pub templates: TemplateCache,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// What the health monitor concluded about each instance.
    pub health: crate::health::HealthView,
    /// Tells the DNS publisher the records may have changed.
    pub dns: crate::dns::DnsChanges,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("agent_url", &self.agent_url)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

impl Services {
    /// A URL an agent GETs blob `id` from.
    pub fn blob_url(&self, id: &BlobId) -> String {
        format!(
            "{}{}",
            self.agent_url,
            self.blobstore.signed_path(id, self.timeouts.blob_url)
        )
    }

    /// A URL an agent PUTs one new blob to, for `purpose` in `task`: recorded as an upload
    /// slot that takes one upload of at most the purpose's size, accepted while the
    /// director waits for the agent's answer (`timeouts.agent_task`). Check what the agent
    /// reports with [`Blobstore::accept_upload`].
    pub async fn upload_url(
        &self,
        purpose: Purpose,
        task: Option<TaskId>,
    ) -> Result<UploadSlot, director_state::StateError> {
        self.blobstore
            .open_upload(
                &self.state,
                &self.agent_url,
                purpose,
                task,
                self.timeouts.agent_task,
            )
            .await
    }

    /// A blob reference for the agent protocol.
    pub fn blob_ref(&self, id: &BlobId) -> agent_protocol::BlobRef {
        agent_protocol::BlobRef {
            id: id.as_str().to_string(),
            url: self.blob_url(id),
        }
    }

    /// Runs a CPI call on a blocking thread.
    pub async fn cpi_call<T, F>(&self, call: F) -> Result<T, cpi::CpiError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn cpi::Cpi) -> Result<T, cpi::CpiError> + Send + 'static,
    {
        let cpi = self.cpi.clone();
        tokio::task::spawn_blocking(move || call(cpi.as_ref()))
            .await
            .unwrap_or_else(|e| {
                Err(cpi::CpiError::new(
                    cpi::ErrorKind::Unknown,
                    format!("the CPI call panicked: {e}"),
                ))
            })
    }
}

/// One step of [`run_steps`] that failed: its label and its error.
#[derive(Debug, thiserror::Error)]
#[error("{label}: {source}")]
pub struct StepFailure {
    /// The step (`web/0 (6f1c…)`).
    pub label: String,
    /// Why it failed.
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Every step of a [`run_steps`] call that failed, one a line.
#[derive(Debug)]
pub struct StepsFailed {
    /// The failures, in the order they ended.
    pub failures: Vec<StepFailure>,
}

impl std::fmt::Display for StepsFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (n, failure) in self.failures.iter().enumerate() {
            if n > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{failure}")?;
        }
        Ok(())
    }
}

impl std::error::Error for StepsFailed {
    /// The first failure (the others are in [`StepsFailed::failures`]).
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.failures
            .first()
            .map(|failure| failure as &(dyn std::error::Error + 'static))
    }
}

/// Runs `steps` (a label and its work, given its step index, each) as steps of `stage`, at most `parallel` at a
/// time: as one ends the next starts (BOSH's thread pools). After a failure, or once the
/// task is cancelled, no new step starts; the ones running finish. Step indexes come from
/// `started`, so several calls can share one stage. Answers every failure, `label: error`,
/// one a line ([`StepsFailed`]); a task cancelled meanwhile ends cancelled.
pub async fn run_steps<W, F, E>(
    context: &crate::tasks::TaskContext,
    stage: &crate::tasks::Stage,
    steps: Vec<(String, W)>,
    parallel: usize,
    started: &std::sync::atomic::AtomicU32,
) -> Result<(), crate::tasks::TaskError>
where
    W: FnOnce(u32) -> F,
    F: std::future::Future<Output = Result<(), E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    use futures::stream::{self, StreamExt};
    use std::sync::atomic::{AtomicBool, Ordering};

    let stop = AtomicBool::new(false);
    let guarded: Vec<_> = steps
        .into_iter()
        .map(|(label, work)| {
            let stop = &stop;
            async move {
                if stop.load(Ordering::SeqCst) || context.checkpoint().is_err() {
                    return Ok(());
                }
                let index = started.fetch_add(1, Ordering::SeqCst) + 1;
                stage.started(&label, index);
                match work(index).await {
                    Ok(()) => {
                        stage.finished(&label, index);
                        Ok(())
                    }
                    Err(error) => {
                        stop.store(true, Ordering::SeqCst);
                        stage.failed(&label, index, &error.to_string());
                        Err(StepFailure {
                            label,
                            source: Box::new(error),
                        })
                    }
                }
            }
        })
        .collect();
    let results: Vec<Result<(), StepFailure>> = stream::iter(guarded)
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    let failures: Vec<StepFailure> = results.into_iter().filter_map(Result::err).collect();
    if !failures.is_empty() {
        // A drain interrupted by the cancel fails its step; the task was cancelled.
        context.checkpoint()?;
        return Err(crate::tasks::TaskError::failed(StepsFailed { failures }));
    }
    // A cancel skips what had not started; say so rather than finish quietly.
    context.checkpoint()
}
