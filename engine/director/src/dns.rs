//! Health-aware DNS records: what every agent serves (BOSH DNS's records, pushed as BOSH's
//! director does with `sync_dns`).
//!
//! One task keeps agents' records current. It looks again when told something changed
//! ([`DnsChanges::changed`]: a VM created, a health judgement changed, an agent's heartbeat
//! reported another job state), when a task ends, and every [`RETRY`] in any case. Each look
//! builds the records of every instance of every deployment that has an IP, healthy when it
//! is started, its agent's last heartbeat says its jobs run and the health monitor has not
//! judged it otherwise (see [`healthy`]); when they differ from the last published ones they become a new
//! version (a blob in the blobstore, numbered by the clock so a restarted director never
//! goes back) and every agent is sent `sync_dns [url, sha256, version]`. Agents that did not
//! answer are tried again after [`RETRY`]; one that has the version is not asked again.
//!
//! Invariant: agents hold at most one version; they ignore versions older than theirs.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use director_core::deploy::dns::{DnsRecord, records_json};
use director_state::{InstanceId, StateError};
use futures::StreamExt;
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::blobstore::{BlobId, BlobstoreError};
use crate::health::{Health, HealthView};
use crate::ops::Services;

/// How long an agent gets to fetch and load records (BOSH's `sync_dns` timeout).
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);
/// Agents asked at once.
const PARALLEL: usize = 32;
/// How often records are looked at without news, and how long an agent that did not
/// answer waits before it is asked again.
const RETRY: Duration = Duration::from_secs(30);
/// News arriving together is one look.
const SETTLE: Duration = Duration::from_millis(200);

/// Tells the DNS publisher to look again; clones share it.
#[derive(Clone, Debug, Default)]
pub struct DnsChanges(Arc<Notify>);

impl DnsChanges {
    /// Something the records show may have changed.
    pub fn changed(&self) {
        self.0.notify_one();
    }
}

/// Why a look failed (it is tried again at the next one).
#[derive(Debug, thiserror::Error)]
enum DnsError {
    #[error("reading the state: {0}")]
    State(#[from] StateError),
    #[error("storing the records: {0}")]
    Blob(#[from] BlobstoreError),
}

/// Starts the publisher; it ends when `stop` fires. `tasks_ended` is the task runner's
/// [`crate::tasks::TaskRunner::ended`].
pub fn spawn(services: Arc<Services>, tasks_ended: Arc<Notify>, stop: CancellationToken) {
    let news = services.dns.0.clone();
    tokio::spawn(async move {
        let mut publisher = Publisher::default();
        loop {
            if let Err(error) = publisher.look(&services).await {
                eprintln!("dns: {error}");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = news.notified() => {}
                () = tasks_ended.notified() => {}
                () = tokio::time::sleep(RETRY) => {}
            }
            tokio::time::sleep(SETTLE).await;
        }
    });
}

#[derive(Default)]
struct Publisher {
    /// The records last published (without version) and their version and blob.
    published: Option<(Vec<DnsRecord>, u64, BlobId)>,
    /// The blob of the version before, deleted when the next one is published (agents
    /// still fetching it have time to finish).
    previous_blob: Option<BlobId>,
    /// Agents that hold the published version.
    synced: HashSet<String>,
    /// Agents that did not answer, and when they were last asked.
    failed: HashMap<String, Instant>,
}

impl Publisher {
    async fn look(&mut self, services: &Services) -> Result<(), DnsError> {
        let (records, agents) = collect(services).await?;
        let unchanged = self
            .published
            .as_ref()
            .is_some_and(|(published, _, _)| *published == records);
        if !unchanged {
            let version = next_version(self.published.as_ref().map(|(_, v, _)| *v));
            let body = serde_json::to_vec(&records_json(version, &records))
                .unwrap_or_else(|_| b"{}".to_vec());
            let stored = services.blobstore.put_bytes(Bytes::from(body)).await?;
            if let Some(old) = self.previous_blob.take() {
                let _ = services.blobstore.delete(&old).await;
            }
            self.previous_blob = self.published.take().map(|(_, _, blob)| blob);
            self.published = Some((records, version, stored.id));
            self.synced.clear();
            self.failed.clear();
        }
        let Some((_, version, blob)) = &self.published else {
            return Ok(());
        };
        self.synced.retain(|agent| agents.contains(agent));
        let due: Vec<String> = agents
            .into_iter()
            .filter(|agent| !self.synced.contains(agent))
            .filter(|agent| {
                self.failed
                    .get(agent)
                    .is_none_or(|at| at.elapsed() >= RETRY)
            })
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let arguments = vec![
            json!(services.blob_url(blob)),
            json!(blob.as_str()),
            json!(version),
        ];
        let mut answers = futures::stream::iter(due)
            .map(|agent| {
                let arguments = arguments.clone();
                async move {
                    let answer = services
                        .bus
                        .request(&agent, "sync_dns", arguments, SYNC_TIMEOUT)
                        .await;
                    (agent, answer)
                }
            })
            .buffer_unordered(PARALLEL);
        while let Some((agent, answer)) = answers.next().await {
            match answer {
                Ok(_) => {
                    self.failed.remove(&agent);
                    self.synced.insert(agent);
                }
                Err(_) => {
                    self.failed.insert(agent, Instant::now());
                }
            }
        }
        Ok(())
    }
}

/// A version above `last` and above every version an earlier director published: the
/// clock in milliseconds.
fn next_version(last: Option<u64>) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    now.max(last.map_or(0, |last| last + 1))
}

/// Every instance's records, sorted, and the agents of every instance's VM.
/// Whether the instance `id` on the VM of agent `agent_id` is healthy for DNS: with a health
/// monitor, its agent's last heartbeat says its jobs run (as BOSH DNS's health) and the
/// monitor has not judged it otherwise; a VM whose agent has not been heard from yet (just
/// created, its jobs not started) is not. Without a monitor there is nothing to go by but
/// the instance's state.
fn healthy(view: &HealthView, id: InstanceId, agent_id: &str) -> bool {
    if !view.enabled() {
        return true;
    }
    view.job_state(agent_id).as_deref() == Some("running")
        && view
            .finding(id, agent_id)
            .is_none_or(|finding| finding.health == Health::Healthy)
}

async fn collect(services: &Services) -> Result<(Vec<DnsRecord>, HashSet<String>), StateError> {
    let state = &services.state;
    let mut records = Vec::new();
    let mut agents = HashSet::new();
    for deployment in state.deployments().list().await? {
        for instance in state.instances().list_without_specs(deployment.id).await? {
            let agent_id = instance
                .vm
                .as_ref()
                .map(|vm| vm.agent_id.clone())
                .unwrap_or_default();
            let healthy = instance.state == "started"
                && instance
                    .vm
                    .as_ref()
                    .is_some_and(|vm| healthy(&services.health, instance.id, &vm.agent_id));
            for (network, ip, _) in &instance.ips {
                records.push(DnsRecord {
                    id: instance.uuid.clone(),
                    group: instance.instance_group.clone(),
                    az: instance.az.clone(),
                    network: network.clone(),
                    deployment: deployment.name.clone(),
                    ip: ip.clone(),
                    agent_id: agent_id.clone(),
                    index: instance.index,
                    healthy,
                });
            }
            // An agent the monitor finds silent cannot answer; its replacement will be asked.
            let silent = instance.vm.as_ref().is_some_and(|vm| {
                services
                    .health
                    .finding(instance.id, &vm.agent_id)
                    .is_some_and(|f| matches!(f.health, Health::Unresponsive | Health::MissingVm))
            });
            if !agent_id.is_empty() && !silent {
                agents.insert(agent_id);
            }
        }
    }
    records.sort();
    Ok((records, agents))
}
