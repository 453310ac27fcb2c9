//! Health-aware DNS records: what every agent serves (BOSH DNS's records, pushed as BOSH's
//! director does with `sync_dns`).
//!
//! One task keeps agents' records current. It looks again when told something changed
//! ([`DnsChanges::changed`]: a VM created, a health judgement changed, an agent's heartbeat
//! reported another job state), when a task ends, and every [`RETRY`] in any case. Each look
//! builds the records of every instance of every deployment that has an IP, healthy when it
//! is started, its agent's last heartbeat says its jobs run and the health monitor has not
//! judged it otherwise (see [`healthy`]). When they differ from the last published ones they
//! become a new version: a blob in the blobstore, held against clean-up while published and
//! deleted one version later, numbered by the clock so a restarted director never goes back
//! (with no instance anywhere there is no blob). Every agent is then sent `sync_dns [url,
//! sha256, version]`, in the background so that an agent that does not answer holds up
//! nothing; agents that did not answer are tried again after [`RETRY`], one that has the
//! version is not asked again, one that answered for a version since replaced is asked at
//! once for the new one.
//!
//! Invariant: agents hold at most one version; they ignore versions older than theirs.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use director_core::deploy::dns::{DnsRecord, records_json};
use director_state::{InstanceId, StateError};
use serde_json::json;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::blobstore::slots::Purpose;
use crate::blobstore::{BlobId, BlobstoreError, RecordedError};
use crate::health::{Health, HealthView};
use crate::ops::Services;

/// How long an agent gets to fetch and load records (BOSH's `sync_dns` timeout).
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);
/// Agents asked at once.
const PARALLEL: usize = 64;
/// How often records are looked at without news, and how long an agent that did not
/// answer waits before it is asked again.
const RETRY: Duration = Duration::from_secs(30);
/// How long published records' blob is held against clean-up.
const HOLD: Duration = Duration::from_secs(24 * 60 * 60);
/// Records this old are published again (a new version and blob, a fresh hold).
const REPUBLISH: Duration = Duration::from_secs(12 * 60 * 60);
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
///
/// Agents are asked in the background: an agent that does not answer (its VM just died,
/// say) holds up neither the next look nor the other agents' records.
pub fn spawn(services: Arc<Services>, tasks_ended: Arc<Notify>, stop: CancellationToken) {
    let news = services.dns.0.clone();
    tokio::spawn(async move {
        let mut publisher = Publisher::default();
        let mut syncs = JoinSet::new();
        loop {
            match publisher.look(&services).await {
                Ok(()) => publisher.send(&services, &mut syncs),
                Err(error) => eprintln!("dns: {error}"),
            }
            let next_look = tokio::time::Instant::now() + RETRY;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = news.notified() => break,
                    () = tasks_ended.notified() => break,
                    () = tokio::time::sleep_until(next_look) => break,
                    Some(joined) = syncs.join_next_with_id(), if !syncs.is_empty() => {
                        if publisher.answered(joined) {
                            publisher.send(&services, &mut syncs);
                        }
                    }
                }
            }
            tokio::time::sleep(SETTLE).await;
        }
    });
}

/// Records published: what they say, their version, their blob and the hold that keeps the
/// blob from clean-up.
struct Published {
    records: Vec<DnsRecord>,
    version: u64,
    blob: BlobId,
    hold: String,
    at: Instant,
}

/// What one `sync_dns` request came to: the agent, the version it was sent, and whether it
/// answered.
struct Sync {
    agent: String,
    version: u64,
    answered: bool,
}

struct Publisher {
    published: Option<Published>,
    /// The version before (its blob and hold), forgotten when the next one is published
    /// (agents still fetching it have had time to finish).
    previous: Option<(BlobId, String)>,
    /// The agents of every instance's VM at the last look, but those found silent.
    agents: HashSet<String>,
    /// Agents that hold the published version.
    synced: HashSet<String>,
    /// Agents that did not answer for the published version, and when they were asked.
    failed: HashMap<String, Instant>,
    /// Agents being asked (whichever version), by the task asking them.
    asking: HashMap<tokio::task::Id, String>,
    /// The requests allowed at once, [`PARALLEL`].
    permits: Arc<Semaphore>,
}

impl Default for Publisher {
    fn default() -> Self {
        Publisher {
            published: None,
            previous: None,
            agents: HashSet::new(),
            synced: HashSet::new(),
            failed: HashMap::new(),
            asking: HashMap::new(),
            permits: Arc::new(Semaphore::new(PARALLEL)),
        }
    }
}

impl Publisher {
    /// Builds the records and publishes them when they changed (or are old).
    async fn look(&mut self, services: &Services) -> Result<(), DnsError> {
        let (records, agents) = collect(services).await?;
        self.agents = agents;
        if records.is_empty() {
            // No instance, so no agent to tell: keep no blob either.
            if let Some(published) = self.published.take() {
                forget(services, self.previous.take()).await;
                forget(services, Some((published.blob, published.hold))).await;
            }
            return Ok(());
        }
        let current = self.published.as_ref().is_some_and(|published| {
            published.records == records && published.at.elapsed() < REPUBLISH
        });
        if current {
            return Ok(());
        }
        let last = self.published.as_ref().map(|published| published.version);
        let version = next_version(last);
        let body =
            serde_json::to_vec(&records_json(version, &records)).unwrap_or_else(|_| b"{}".to_vec());
        let (stored, hold) = services
            .blobstore
            .put_bytes_held(
                &services.state,
                Bytes::from(body),
                Purpose::DnsRecords,
                None,
                HOLD,
            )
            .await
            .map_err(|error| match error {
                RecordedError::Store(error) => DnsError::Blob(error),
                RecordedError::Record(error) => DnsError::State(error),
            })?;
        forget(services, self.previous.take()).await;
        self.previous = self
            .published
            .take()
            .map(|published| (published.blob, published.hold));
        self.published = Some(Published {
            records,
            version,
            blob: stored.id,
            hold,
            at: Instant::now(),
        });
        self.synced.clear();
        self.failed.clear();
        Ok(())
    }

    /// Asks every agent that lacks the published version, is not being asked already and
    /// has not just failed to answer for it.
    fn send(&mut self, services: &Arc<Services>, syncs: &mut JoinSet<Sync>) {
        let Some(published) = &self.published else {
            return;
        };
        self.synced.retain(|agent| self.agents.contains(agent));
        let asking: HashSet<&String> = self.asking.values().collect();
        let due: Vec<String> = self
            .agents
            .iter()
            .filter(|agent| !self.synced.contains(*agent) && !asking.contains(agent))
            .filter(|agent| {
                self.failed
                    .get(*agent)
                    .is_none_or(|at| at.elapsed() >= RETRY)
            })
            .cloned()
            .collect();
        let arguments = vec![
            json!(services.blob_url(&published.blob)),
            json!(published.blob.as_str()),
            json!(published.version),
        ];
        for agent in due {
            let services = services.clone();
            let arguments = arguments.clone();
            let version = published.version;
            let permits = self.permits.clone();
            let name = agent.clone();
            let task = syncs.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let answer = services
                    .bus
                    .request(&name, "sync_dns", arguments, SYNC_TIMEOUT)
                    .await;
                Sync {
                    agent: name,
                    version,
                    answered: answer.is_ok(),
                }
            });
            self.asking.insert(task.id(), agent);
        }
    }

    /// Takes in one request's outcome; answers whether agents should be asked again now (an
    /// agent's request was for a version since replaced).
    fn answered(
        &mut self,
        joined: Result<(tokio::task::Id, Sync), tokio::task::JoinError>,
    ) -> bool {
        let (task, sync) = match joined {
            Ok(joined) => joined,
            Err(error) => {
                self.asking.remove(&error.id());
                return false;
            }
        };
        self.asking.remove(&task);
        let current = self
            .published
            .as_ref()
            .is_some_and(|published| published.version == sync.version);
        if !current {
            return true;
        }
        if sync.answered {
            self.failed.remove(&sync.agent);
            self.synced.insert(sync.agent);
        } else {
            self.failed.insert(sync.agent, Instant::now());
        }
        false
    }
}

/// Releases a records blob's hold and deletes the blob unless something else refers to it
/// (the same records stored by another director); a failure leaves it to clean-up.
async fn forget(services: &Services, blob: Option<(BlobId, String)>) {
    let Some((blob, hold)) = blob else { return };
    if services
        .blobstore
        .release(&services.state, &hold)
        .await
        .is_err()
    {
        return;
    }
    let _ = services
        .state
        .blobs()
        .delete_with(blob.as_str(), || services.blobstore.delete(&blob))
        .await;
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
