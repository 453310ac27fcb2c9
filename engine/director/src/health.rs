//! The health monitor: what BOSH's `health_monitor` does, inside the director.
//!
//! It listens to agents' heartbeats (`hm.agent.heartbeat.<agent_id>`, through
//! [`director_bus::Bus::heartbeats`]) and, every `analyze_interval`, judges every instance
//! that has a VM, deployment by deployment (a deployment a task holds locked is left
//! alone until the lock goes):
//!
//! - **unresponsive agent**: nothing heard from the agent (no heartbeat, no reply) for
//!   `agent_timeout` (60 s by default), counted from the VM's creation or the monitor's start
//!   when it never spoke; when the CPI then says the VM does not exist, **missing vm**;
//! - **failing**: the agent's last heartbeat says a process of a started instance fails;
//! - otherwise **healthy**.
//!
//! A change of an instance's health is an event (`director events`, user `hm`), as is a
//! rogue agent: one heartbeating in two analyses in a row that no instance or recorded VM
//! of this director has. The judgements are kept in memory ([`HealthView`]), and `GET
//! /deployments/{name}/instances` shows them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use agent_protocol::Heartbeat;
use director_api::tasks::TaskState;
use director_api::{ConfigKind, StateChange};
use director_core::manifest::ResurrectionConfig;
use director_state::{Instance, InstanceId, NewEvent, NewTask, StateError, TaskId};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ops::Services;
use crate::ops::verbs::Selection;
use crate::tasks::TaskRunner;

/// The user health events are recorded under (BOSH's health monitor's).
pub const USER: &str = "hm";
/// The director attribute `director update-resurrection` sets (`true` or `false`).
pub const RESURRECTION_PAUSED: &str = "resurrection_paused";

/// `health_monitor` in `director.yml`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSettings {
    /// Whether the monitor runs.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Seconds an agent may stay silent before it is unresponsive (BOSH's 60).
    #[serde(default = "default_agent_timeout")]
    pub agent_timeout: u64,
    /// Seconds between two analyses.
    #[serde(default = "default_analyze_interval")]
    pub analyze_interval: u64,
    /// What is done about unresponsive agents and missing VMs.
    #[serde(default)]
    pub resurrector: ResurrectorSettings,
}

impl Default for HealthSettings {
    fn default() -> HealthSettings {
        HealthSettings {
            enabled: true,
            agent_timeout: default_agent_timeout(),
            analyze_interval: default_analyze_interval(),
            resurrector: ResurrectorSettings::default(),
        }
    }
}

/// `health_monitor.resurrector`: BOSH's resurrector plugin and its meltdown protection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResurrectorSettings {
    /// Whether instances whose agents stop answering are recreated.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Meltdown needs at least this many instances of a deployment down…
    #[serde(default = "default_minimum_down_jobs")]
    pub minimum_down_jobs: u32,
    /// …and at least this fraction of them (0.2 is 20 %)…
    #[serde(default = "default_percent_threshold")]
    pub percent_threshold: Fraction,
    /// …gone down within this many seconds.
    #[serde(default = "default_time_threshold")]
    pub time_threshold: u64,
}

impl Default for ResurrectorSettings {
    fn default() -> ResurrectorSettings {
        ResurrectorSettings {
            enabled: true,
            minimum_down_jobs: default_minimum_down_jobs(),
            percent_threshold: default_percent_threshold(),
            time_threshold: default_time_threshold(),
        }
    }
}

/// A fraction between 0 and 1 (`percent_threshold: 0.2`).
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(transparent)]
pub struct Fraction(f64);

impl Fraction {
    /// Its value.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl PartialEq for Fraction {
    fn eq(&self, other: &Fraction) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Fraction {}

impl<'de> Deserialize<'de> for Fraction {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Fraction, D::Error> {
        let value = f64::deserialize(deserializer)?;
        if (0.0..=1.0).contains(&value) {
            Ok(Fraction(value))
        } else {
            Err(serde::de::Error::custom(format!(
                "expected a fraction from 0 to 1 (0.2 is 20 %), got {value}"
            )))
        }
    }
}

fn default_minimum_down_jobs() -> u32 {
    5
}
fn default_percent_threshold() -> Fraction {
    Fraction(0.2)
}
fn default_time_threshold() -> u64 {
    600
}

fn yes() -> bool {
    true
}
fn default_agent_timeout() -> u64 {
    60
}
fn default_analyze_interval() -> u64 {
    10
}

/// What the monitor concluded about an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Health {
    Healthy,
    /// Its agent has been silent for longer than `agent_timeout`.
    Unresponsive,
    /// Its agent is silent and the CPI says its VM does not exist.
    MissingVm,
    /// A process the agent supervises is failing.
    Failing,
}

impl Health {
    /// As `director instances` and events show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Unresponsive => "unresponsive agent",
            Health::MissingVm => "missing vm",
            Health::Failing => "failing",
        }
    }
}

/// An instance's current judgement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The agent judged (a new VM starts a new judgement).
    pub agent_id: String,
    pub health: Health,
    /// When it was first judged so (Unix seconds).
    pub since: i64,
}

/// What a health event says of an instance (`context` of the event).
#[derive(Serialize)]
struct FindingContext<'a> {
    health: &'static str,
    agent_id: &'a str,
    vm_cid: &'a str,
    /// The judgement before, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    was: Option<&'static str>,
    /// How long the agent had been silent (unresponsive or missing).
    #[serde(skip_serializing_if = "Option::is_none")]
    silent_for_s: Option<u64>,
    /// The failing processes, `job/process`.
    #[serde(skip_serializing_if = "Option::is_none")]
    failing: Option<Vec<String>>,
}

/// The last heartbeat of an agent.
#[derive(Clone, Debug)]
struct Beat {
    at: Instant,
    heartbeat: Heartbeat,
}

/// What the monitor knows; clones share it.
#[derive(Clone, Default)]
pub struct HealthView {
    enabled: bool,
    inner: Arc<Mutex<Known>>,
}

#[derive(Default)]
struct Known {
    beats: HashMap<String, Beat>,
    findings: HashMap<InstanceId, Finding>,
    /// Agents unknown in the last analysis, with when that analysis began.
    unknown: HashSet<String>,
    last_analysis: Option<Instant>,
    /// Rogue agents already reported.
    reported_rogues: HashSet<String>,
}

impl HealthView {
    /// An empty view; `enabled` says whether a monitor fills it.
    pub fn new(enabled: bool) -> HealthView {
        HealthView {
            enabled,
            inner: Arc::default(),
        }
    }

    /// Whether a monitor runs.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The judgement of instance `id` whose VM's agent is `agent_id`, if there is one yet.
    pub fn finding(&self, id: InstanceId, agent_id: &str) -> Option<Finding> {
        self.known()
            .findings
            .get(&id)
            .filter(|finding| finding.agent_id == agent_id)
            .cloned()
    }

    fn known(&self) -> MutexGuard<'_, Known> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The job state the last heartbeat of agent `agent_id` reported.
    pub fn job_state(&self, agent_id: &str) -> Option<String> {
        let known = self.known();
        let beat = known.beats.get(agent_id)?;
        Some(beat.heartbeat.job_state.clone())
    }

    /// Records a heartbeat; answers whether it reports another job state than the agent's
    /// previous one (or is its first).
    fn record(&self, agent_id: String, heartbeat: Heartbeat) -> bool {
        let mut known = self.known();
        let changed = known
            .beats
            .get(&agent_id)
            .is_none_or(|previous| previous.heartbeat.job_state != heartbeat.job_state);
        let beat = Beat {
            at: Instant::now(),
            heartbeat,
        };
        known.beats.insert(agent_id, beat);
        changed
    }
}

/// Starts the monitor (when enabled): one task records heartbeats, one analyses every
/// `analyze_interval` and has `runner` run the resurrector's tasks. Both end when the bus
/// closes or `stop` fires.
pub fn spawn(
    services: Arc<Services>,
    runner: TaskRunner,
    settings: HealthSettings,
    stop: tokio_util::sync::CancellationToken,
) {
    if !settings.enabled {
        return;
    }
    let view = services.health.clone();
    let dns = services.dns.clone();
    let mut heartbeats = Box::pin(services.bus.heartbeats());
    let listening = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = listening.cancelled() => return,
                next = heartbeats.next() => match next {
                    Some((agent_id, heartbeat)) => {
                        if view.record(agent_id, heartbeat) {
                            dns.changed();
                        }
                    }
                    None => return,
                },
            }
        }
    });
    tokio::spawn(async move {
        let mut monitor = Monitor {
            started: Instant::now(),
            agent_timeout: Duration::from_secs(settings.agent_timeout.max(1)),
            resurrector: settings.resurrector,
            runner,
            meltdowns: HashSet::new(),
            fixing: HashMap::new(),
            failures: HashMap::new(),
        };
        let interval = Duration::from_secs(settings.analyze_interval.max(1));
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            if let Err(error) = monitor.analyze(&services).await {
                eprintln!("health monitor: {error}");
            }
        }
    });
}

struct Monitor {
    started: Instant,
    agent_timeout: Duration,
    resurrector: ResurrectorSettings,
    runner: TaskRunner,
    /// Deployments in meltdown (announced once).
    meltdowns: HashSet<String>,
    /// The resurrector's task of each deployment.
    fixing: HashMap<String, TaskId>,
    /// The scan and fix tasks of each deployment that failed in a row, and when the last
    /// one was seen ended.
    failures: HashMap<String, (u32, Instant)>,
}

/// How long after `failed` scan and fix tasks in a row the next one starts: 30 s, doubling
/// with each failure, at most 10 minutes.
pub fn retry_after(failed: u32) -> Duration {
    let doublings = failed.saturating_sub(1).min(5);
    Duration::from_secs(30 * (1 << doublings)).min(Duration::from_secs(600))
}

/// What one instance's analysis looks at.
#[derive(Clone, Copy, Debug)]
pub struct Observation<'a> {
    /// How long since the agent was last heard from (heartbeat or reply), if ever.
    pub silent_for: Option<Duration>,
    /// How long the VM has existed, or the monitor has run, whichever is shorter.
    pub watched_for: Duration,
    /// The last heartbeat's `job_state`.
    pub job_state: Option<&'a str>,
    /// `started`, `stopped` or `detached`.
    pub instance_state: &'a str,
}

/// What an observation says before the CPI is asked: `None` while the agent is silent
/// (unresponsive, or its VM missing: the CPI tells).
pub fn judge(observation: &Observation<'_>, agent_timeout: Duration) -> Option<Health> {
    let silent = observation.silent_for.unwrap_or(observation.watched_for);
    if silent > agent_timeout {
        return None;
    }
    match (observation.instance_state, observation.job_state) {
        ("started", Some("failing")) => Some(Health::Failing),
        _ => Some(Health::Healthy),
    }
}

/// The resurrection config's rules (none when it is not set; a stored config that no longer
/// reads, which its validation at update prevents, counts as none and is said).
async fn resurrection_rules(
    state: &director_state::State,
) -> Result<ResurrectionConfig, StateError> {
    let stored = state
        .instances()
        .config(
            ConfigKind::Resurrection,
            crate::ops::prepare::DEFAULT_CONFIG,
        )
        .await?;
    let Some((_, text)) = stored else {
        return Ok(ResurrectionConfig::default());
    };
    let checked = director_core::yaml::parse(&text, "resurrection config")
        .map_err(|d| d.to_string())
        .and_then(|node| {
            director_core::manifest::validate_resurrection_config(&node).map_err(|d| d.to_string())
        });
    match checked {
        Ok((rules, _)) => Ok(rules),
        Err(error) => {
            eprintln!(
                "health monitor: the resurrection config does not read, no rules apply: {error}"
            );
            Ok(ResurrectionConfig::default())
        }
    }
}

/// BOSH's meltdown rule: at least `minimum_down_jobs` instances **and** at least
/// `percent_threshold` of the deployment's instances went down within the window.
pub fn meltdown(settings: &ResurrectorSettings, down: usize, instances: usize) -> bool {
    let enough = u32::try_from(down).unwrap_or(u32::MAX) >= settings.minimum_down_jobs;
    // Counts far below 2^52 are exact as f64.
    #[allow(clippy::cast_precision_loss)]
    let share = down as f64 >= settings.percent_threshold.get() * instances as f64;
    enough && share
}

impl Monitor {
    async fn analyze(&mut self, services: &Arc<Services>) -> Result<(), StateError> {
        let view = &services.health;
        let began = Instant::now();
        // Heartbeats first: a VM is recorded before it is created, so every agent heard
        // from by now is in the state read after.
        let beats = view.known().beats.clone();
        let state = &services.state;
        let switch = state.attributes().get(RESURRECTION_PAUSED).await?;
        // Paused: nothing is recreated. Resumed: meltdown counts from then on.
        let resurrection = match &switch {
            Some(set) if set.value == "true" => None,
            Some(set) => Some(set.updated_at),
            None => Some(i64::MIN),
        };
        let rules = resurrection_rules(state).await?;
        let locked: HashSet<String> = state
            .locks()
            .list()
            .await?
            .into_iter()
            .filter_map(|lock| {
                lock.name
                    .strip_prefix("lock:deployment:")
                    .map(str::to_string)
            })
            .collect();
        let mut known_agents: HashSet<String> = state
            .vm_records()
            .list()
            .await?
            .into_iter()
            .map(|record| record.agent_id)
            .collect();
        for deployment in state.deployments().list().await? {
            let instances = state.instances().list_without_specs(deployment.id).await?;
            known_agents.extend(
                instances
                    .iter()
                    .filter_map(|instance| instance.vm.as_ref().map(|vm| vm.agent_id.clone())),
            );
            if locked.contains(&deployment.name) {
                continue;
            }
            self.analyze_deployment(services, &deployment.name, &instances, &beats)
                .await;
            if let Some(resumed_at) = resurrection {
                self.resurrect(services, &deployment.name, &instances, resumed_at, &rules)
                    .await?;
            }
        }
        self.report_rogues(services, &beats, &known_agents, began)
            .await;
        Ok(())
    }

    async fn analyze_deployment(
        &self,
        services: &Services,
        deployment: &str,
        instances: &[Instance],
        beats: &HashMap<String, Beat>,
    ) {
        let now = director_state::now();
        for instance in instances {
            let Some(vm) = &instance.vm else { continue };
            let beat = beats.get(&vm.agent_id);
            let silent_for = services
                .bus
                .last_contact(&vm.agent_id)
                .map(|at| at.elapsed());
            let vm_age = Duration::from_secs(u64::try_from(now - vm.created_at).unwrap_or(0));
            let observation = Observation {
                silent_for,
                watched_for: vm_age.min(self.started.elapsed()),
                job_state: beat.map(|beat| beat.heartbeat.job_state.as_str()),
                instance_state: &instance.state,
            };
            let health = match judge(&observation, self.agent_timeout) {
                Some(health) => health,
                None => {
                    let cid = vm.cid.clone();
                    match services.cpi_call(move |cpi| cpi.has_vm(&cid)).await {
                        Ok(false) => Health::MissingVm,
                        // The CPI not answering is no proof the VM is gone.
                        Ok(true) | Err(_) => Health::Unresponsive,
                    }
                }
            };
            let previous = services.health.finding(instance.id, &vm.agent_id);
            if previous.as_ref().map(|finding| finding.health) == Some(health) {
                continue;
            }
            services.health.known().findings.insert(
                instance.id,
                Finding {
                    agent_id: vm.agent_id.clone(),
                    health,
                    since: now,
                },
            );
            services.dns.changed();
            // A first judgement of healthy is no news.
            if previous.is_none() && health == Health::Healthy {
                continue;
            }
            let silent = matches!(health, Health::Unresponsive | Health::MissingVm);
            let context = FindingContext {
                health: health.as_str(),
                agent_id: &vm.agent_id,
                vm_cid: &vm.cid,
                was: previous.as_ref().map(|previous| previous.health.as_str()),
                silent_for_s: silent
                    .then(|| silent_for.unwrap_or(observation.watched_for).as_secs()),
                failing: (health == Health::Failing).then(|| {
                    beat.iter()
                        .flat_map(|beat| &beat.heartbeat.processes)
                        .filter(|process| process.state == "failing")
                        .map(|process| format!("{}/{}", process.job, process.name))
                        .collect()
                }),
            };
            let context = serde_json::to_value(&context).unwrap_or(Value::Null);
            let action = match health {
                Health::Healthy => "recover",
                Health::Unresponsive => "unresponsive agent",
                Health::MissingVm => "missing vm",
                Health::Failing => "failing",
            };
            record(
                services,
                action,
                "instance",
                Some(format!("{}/{}", instance.instance_group, instance.uuid)),
                Some(deployment.to_string()),
                context,
            )
            .await;
        }
    }

    /// Recreates the deployment's instances whose agents stopped answering or whose VMs are
    /// missing (one `scan and fix` task at a time), unless too many went down too fast.
    async fn resurrect(
        &mut self,
        services: &Arc<Services>,
        deployment: &str,
        instances: &[Instance],
        resumed_at: i64,
        rules: &ResurrectionConfig,
    ) -> Result<(), StateError> {
        if !self.resurrector.enabled {
            return Ok(());
        }
        let down: Vec<(&Instance, Finding)> = instances
            .iter()
            .filter_map(|instance| {
                let vm = instance.vm.as_ref()?;
                let finding = services.health.finding(instance.id, &vm.agent_id)?;
                matches!(finding.health, Health::Unresponsive | Health::MissingVm)
                    .then_some((instance, finding))
            })
            .collect();
        if down.is_empty() {
            self.meltdowns.remove(deployment);
            return Ok(());
        }
        if let Some(task) = self.fixing.get(deployment) {
            let ended = services.state.tasks().get(*task).await?.map(|t| t.state);
            if ended.is_some_and(|state| TaskState::RUNNING.contains(&state)) {
                return Ok(());
            }
            self.fixing.remove(deployment);
            if ended == Some(TaskState::Done) {
                self.failures.remove(deployment);
            } else {
                let failed = self
                    .failures
                    .entry(deployment.to_string())
                    .or_insert((0, Instant::now()));
                *failed = (failed.0 + 1, Instant::now());
            }
        }
        // A scan and fix that failed is tried again later and later, not every analysis.
        if let Some((failed, at)) = self.failures.get(deployment)
            && at.elapsed() < retry_after(*failed)
        {
            return Ok(());
        }
        let with_vms = instances.iter().filter(|i| i.vm.is_some()).count();
        let since = director_state::now()
            .saturating_sub(i64::try_from(self.resurrector.time_threshold).unwrap_or(i64::MAX))
            .max(resumed_at);
        let recent = down
            .iter()
            .filter(|(_, finding)| finding.since >= since)
            .count();
        if meltdown(&self.resurrector, recent, with_vms) {
            if self.meltdowns.insert(deployment.to_string()) {
                let context = json!({
                    "down": recent,
                    "instances": with_vms,
                    "minimum_down_jobs": self.resurrector.minimum_down_jobs,
                    "percent_threshold": self.resurrector.percent_threshold.get(),
                    "time_threshold_s": self.resurrector.time_threshold,
                    "why": format!(
                        "{recent} of {with_vms} instances went down within {} s: at least {} and {} % is a meltdown; nothing is recreated until fewer are down within the window",
                        self.resurrector.time_threshold,
                        self.resurrector.minimum_down_jobs,
                        self.resurrector.percent_threshold.get() * 100.0,
                    ),
                });
                record_deployment(services, "meltdown", deployment, context).await;
            }
            return Ok(());
        }
        self.meltdowns.remove(deployment);
        // The resurrection config decides which of them are recreated (meltdown counts all).
        let down: Vec<(&Instance, Finding)> = down
            .into_iter()
            .filter(|(instance, _)| rules.enabled(deployment, &instance.instance_group))
            .collect();
        if down.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = down
            .iter()
            .map(|(instance, _)| instance.uuid.clone())
            .collect();
        let names: Vec<String> = down
            .iter()
            .map(|(instance, finding)| {
                format!(
                    "{}/{} ({})",
                    instance.instance_group,
                    instance.uuid,
                    finding.health.as_str()
                )
            })
            .collect();
        let task = NewTask {
            description: "scan and fix".to_string(),
            deployment: Some(deployment.to_string()),
            user: USER.to_string(),
            context: json!({"instances": names}),
            director: None,
        };
        let (fixing, name) = (services.clone(), deployment.to_string());
        let submitted = self
            .runner
            .submit(task, move |context| async move {
                crate::ops::verbs::change_state(
                    &fixing,
                    &context,
                    &name,
                    StateChange::Recreate,
                    Selection::Unresponsive(&ids),
                    false,
                )
                .await
            })
            .await;
        match submitted {
            Ok(task) => {
                self.fixing.insert(deployment.to_string(), task.id);
                let context = json!({"instances": names, "task": task.id.0});
                record_deployment(services, "resurrect", deployment, context).await;
            }
            Err(error) => {
                eprintln!("health monitor: cannot start a scan and fix of {deployment}: {error}")
            }
        }
        Ok(())
    }

    /// Agents heartbeating now and in the analysis before that no VM of this director has.
    async fn report_rogues(
        &self,
        services: &Services,
        beats: &HashMap<String, Beat>,
        known_agents: &HashSet<String>,
        began: Instant,
    ) {
        let view = &services.health;
        let (previous_unknown, previous_analysis) = {
            let known = view.known();
            (known.unknown.clone(), known.last_analysis)
        };
        let unknown: HashSet<String> = beats
            .keys()
            .filter(|agent_id| !known_agents.contains(*agent_id))
            .cloned()
            .collect();
        let mut rogues = Vec::new();
        for agent_id in &unknown {
            let beat = &beats[agent_id];
            let still_beating = previous_analysis.is_some_and(|at| beat.at > at);
            let fresh = beat.at.elapsed() <= self.agent_timeout;
            if previous_unknown.contains(agent_id) && still_beating && fresh {
                rogues.push((agent_id.clone(), beat.heartbeat.clone()));
            }
        }
        {
            let mut known = view.known();
            known.unknown = unknown;
            known.last_analysis = Some(began);
            // Heartbeats of agents long silent (deleted VMs) are forgotten.
            let horizon = self.agent_timeout * 10;
            known.beats.retain(|_, beat| beat.at.elapsed() <= horizon);
            let live: HashSet<&String> = known_agents.iter().collect();
            known
                .findings
                .retain(|_, finding| live.contains(&finding.agent_id));
            rogues.retain(|(agent_id, _)| known.reported_rogues.insert(agent_id.clone()));
        }
        for (agent_id, heartbeat) in rogues {
            let context = json!({
                "agent_id": agent_id,
                "says_deployment": heartbeat.deployment,
                "says_instance": format!("{}/{} ({})", heartbeat.job, heartbeat.node_id, heartbeat.index),
            });
            record(services, "rogue agent", "vm", Some(agent_id), None, context).await;
        }
    }
}

/// Records a resurrector decision about a whole deployment.
async fn record_deployment(services: &Services, action: &str, deployment: &str, context: Value) {
    let name = Some(deployment.to_string());
    record(services, action, "deployment", name.clone(), name, context).await;
}

async fn record(
    services: &Services,
    action: &str,
    object_type: &str,
    object_name: Option<String>,
    deployment: Option<String>,
    context: Value,
) {
    let event = NewEvent {
        user: USER.to_string(),
        action: action.to_string(),
        object_type: object_type.to_string(),
        object_name,
        deployment,
        task: None,
        context,
        error: None,
    };
    if let Err(error) = services.state.events().insert(&event).await {
        eprintln!("health monitor: cannot record a '{action}' event: {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(60);

    fn observation<'a>(
        silent_for: Option<u64>,
        watched_for: u64,
        job_state: Option<&'a str>,
        instance_state: &'a str,
    ) -> Observation<'a> {
        Observation {
            silent_for: silent_for.map(Duration::from_secs),
            watched_for: Duration::from_secs(watched_for),
            job_state,
            instance_state,
        }
    }

    #[test]
    fn an_agent_heard_from_within_the_timeout_is_judged_by_its_processes() {
        let running = observation(Some(5), 600, Some("running"), "started");
        assert_eq!(judge(&running, TIMEOUT), Some(Health::Healthy));
        let failing = observation(Some(5), 600, Some("failing"), "started");
        assert_eq!(judge(&failing, TIMEOUT), Some(Health::Failing));
    }

    #[test]
    fn a_stopped_instance_is_not_failing() {
        let stopped = observation(Some(5), 600, Some("failing"), "stopped");
        assert_eq!(judge(&stopped, TIMEOUT), Some(Health::Healthy));
    }

    #[test]
    fn silence_past_the_timeout_leaves_the_verdict_to_the_cpi() {
        assert_eq!(
            judge(
                &observation(Some(61), 600, Some("running"), "started"),
                TIMEOUT
            ),
            None
        );
        assert_eq!(
            judge(
                &observation(Some(60), 600, Some("running"), "started"),
                TIMEOUT
            ),
            Some(Health::Healthy)
        );
    }

    #[test]
    fn failed_fixes_are_retried_later_and_later() {
        let waits: Vec<u64> = (1..=7).map(|n| retry_after(n).as_secs()).collect();
        assert_eq!(waits, [30, 60, 120, 240, 480, 600, 600]);
    }

    #[test]
    fn meltdown_needs_both_the_count_and_the_share() {
        let boshs = ResurrectorSettings::default();
        // 5 of 25 is 20 %: both thresholds reached.
        assert!(meltdown(&boshs, 5, 25));
        // 4 of 10 is 40 %, but fewer than 5.
        assert!(!meltdown(&boshs, 4, 10));
        // 5 of 100 is 5 %: enough instances, too small a share.
        assert!(!meltdown(&boshs, 5, 100));
        assert!(meltdown(&boshs, 6, 6));
    }

    #[test]
    fn settings_default_to_boshs_and_refuse_a_percentage_written_as_a_number_above_one() {
        let settings: HealthSettings = serde_yaml::from_str("{}").unwrap();
        assert_eq!(settings, HealthSettings::default());
        assert_eq!(settings.agent_timeout, 60);
        assert_eq!(settings.resurrector.minimum_down_jobs, 5);
        assert_eq!(settings.resurrector.time_threshold, 600);
        let error = serde_yaml::from_str::<HealthSettings>("resurrector: {percent_threshold: 20}")
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("expected a fraction from 0 to 1"),
            "{error}"
        );
    }

    #[test]
    fn an_agent_never_heard_from_is_given_the_timeout_from_when_watching_began() {
        assert_eq!(
            judge(&observation(None, 30, None, "started"), TIMEOUT),
            Some(Health::Healthy)
        );
        assert_eq!(
            judge(&observation(None, 90, None, "started"), TIMEOUT),
            None
        );
    }
}
