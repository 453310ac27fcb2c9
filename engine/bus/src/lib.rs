//! The bus between the director and its agents (decision 2: one bus protocol, NATS).
//!
//! **Invariant:** only this module knows NATS subjects and the agents' message JSON; every
//! other module calls [`Bus::request`] / [`Bus::run_task`] with a method name and
//! arguments, reads [`Bus::heartbeats`], and gets Rust values and [`BusError`]s back.
//!
//! - [`client`]: the director's side, [`Bus`]: requests with `reply_to =
//!   director.<director_id>.<agent_id>.<request_id>`, `get_task` polling for long calls,
//!   heartbeats, and when each agent was last heard from.
//! - [`broker`]: an embedded NATS broker for dev directors (no `mbus` configured).
//! - [`nats_server`]: agent accounts on a real nats-server, through an authorization file
//!   the director rewrites and a reload signal.
//! - this file: the credentials policy. Each agent gets its own user and random password
//!   when its VM is created, and may only subscribe `agent.<agent_id>` and publish its
//!   heartbeats, alerts and shutdown notices (`hm.agent.{heartbeat,alert,shutdown}.<id>`) and
//!   replies to the director (`director.*.<agent_id>.*`). So an agent can neither read
//!   another agent's orders, nor give them, nor answer in its name. The director's user
//!   may do everything.
//!
//! Passwords never reach a log line or an error: URLs in messages go through [`secrets::redact_urls`].

pub mod broker;
pub mod client;
pub mod nats_server;
mod subject;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;

pub use broker::{Broker, BrokerEvent, BrokerHandle, BrokerOptions, Operation};
pub use client::Bus;
pub use nats_server::NatsServerAccounts;

use serde::Deserialize;

/// The largest message the bus carries (nats-server's default `max_payload`, and the cap
/// BOSH's agent puts on its answers).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// The longest agent id accepted (ids are subject tokens and user names).
const MAX_AGENT_ID: usize = 128;

/// `mbus`: the nats-server the director and its agents share. The director writes agent
/// users into `authorization_file` (which `nats-server.conf` includes) and signals the
/// process in `pid_file` to reload it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MbusConfig {
    /// Where the director connects: `nats://host:4222`.
    pub url: String,
    /// What agents are told, when they reach the bus at another address (default `url`).
    #[serde(default)]
    pub agent_url: Option<String>,
    /// The director's user.
    pub user: String,
    /// The director's password.
    pub password: String,
    /// The users file the director owns; nats-server must be able to read it (a new file is
    /// 0600, a replaced one keeps its mode and group, never readable by others).
    pub authorization_file: PathBuf,
    /// nats-server's `pid_file`.
    pub pid_file: PathBuf,
}

impl std::fmt::Debug for MbusConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MbusConfig")
            .field("url", &secrets::redact_urls(&self.url))
            .field(
                "agent_url",
                &self.agent_url.as_deref().map(secrets::redact_urls),
            )
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("authorization_file", &self.authorization_file)
            .field("pid_file", &self.pid_file)
            .finish()
    }
}

/// What a bus user may do. `None` allows everything; a list allows the subjects its
/// patterns cover (`*` one token, `>` the rest), as nats-server's `allow` lists do.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Permissions {
    /// Subjects it may publish to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish: Option<Vec<String>>,
    /// Subjects it may subscribe to (a subscription with wildcards must stay inside one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<Vec<String>>,
}

impl Permissions {
    /// Everything: the director's user.
    pub fn all() -> Permissions {
        Permissions::default()
    }

    /// Whether publishing to the literal `subject` is allowed.
    pub fn may_publish(&self, subject: &str) -> bool {
        self.publish.as_ref().is_none_or(|allowed| {
            allowed
                .iter()
                .any(|pattern| subject::matches(pattern, subject))
        })
    }

    /// Whether subscribing to `subject` (wildcards allowed) is allowed.
    pub fn may_subscribe(&self, subject: &str) -> bool {
        self.subscribe.as_ref().is_none_or(|allowed| {
            allowed
                .iter()
                .any(|pattern| subject::is_subset(subject, pattern))
        })
    }
}

/// The permissions of agent `agent_id`: its own orders in, its own reports out.
pub fn agent_permissions(agent_id: &str) -> Permissions {
    Permissions {
        publish: Some(vec![
            agent_protocol::heartbeat_subject(agent_id),
            agent_protocol::alert_subject(agent_id),
            format!("hm.agent.shutdown.{agent_id}"),
            format!("director.*.{agent_id}.*"),
        ]),
        subscribe: Some(vec![agent_protocol::agent_subject(agent_id)]),
    }
}

/// The bus user of agent `agent_id`.
pub fn agent_user(agent_id: &str) -> String {
    format!("agent-{agent_id}")
}

/// What an agent needs to reach the bus; the CPI puts [`AgentCredentials::mbus_url`] in
/// the agent's settings.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentCredentials {
    /// Its user (`agent-<agent_id>`).
    pub user: String,
    /// Its password (random, 256 bits).
    pub password: String,
    /// The bus, without credentials: `nats://host:port`.
    pub url: String,
}

impl AgentCredentials {
    /// `nats://user:password@host:port`, the agent's `mbus` setting.
    pub fn mbus_url(&self) -> String {
        let rest = self.url.strip_prefix("nats://").unwrap_or(&self.url);
        format!("nats://{}:{}@{rest}", self.user, self.password)
    }
}

impl fmt::Debug for AgentCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentCredentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("url", &self.url)
            .finish()
    }
}

/// Gives agents their bus accounts: one per agent, made when its VM is created and removed
/// with the VM. Removing an account disconnects the agent.
pub trait AgentAccounts: Send + Sync {
    /// Creates (or renews, with a new password) the account of `agent_id`.
    fn add_agent<'a>(
        &'a self,
        agent_id: &'a str,
    ) -> BoxFuture<'a, Result<AgentCredentials, BusError>>;

    /// Removes the account of `agent_id`; removing an unknown agent is not an error.
    fn remove_agent<'a>(&'a self, agent_id: &'a str) -> BoxFuture<'a, Result<(), BusError>>;
}

impl AgentAccounts for BrokerHandle {
    fn add_agent<'a>(
        &'a self,
        agent_id: &'a str,
    ) -> BoxFuture<'a, Result<AgentCredentials, BusError>> {
        Box::pin(async move {
            check_agent_id(agent_id)?;
            let credentials = AgentCredentials {
                user: agent_user(agent_id),
                password: generate_password(),
                url: self.url(),
            };
            self.add_user(
                &credentials.user,
                &credentials.password,
                agent_permissions(agent_id),
            );
            Ok(credentials)
        })
    }

    fn remove_agent<'a>(&'a self, agent_id: &'a str) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            check_agent_id(agent_id)?;
            self.remove_user(&agent_user(agent_id));
            Ok(())
        })
    }
}

/// Agent accounts on the embedded broker, kept in a file (mode 0600) beside the broker's
/// port, so that a restarted dev director's broker listens where its agents reconnect and
/// lets them back in: running VMs survive `stop-server`.
pub struct PersistentBroker {
    broker: BrokerHandle,
    file: PathBuf,
    /// Agent id → password. The lock is held from the change until the file holds it, so
    /// saves land in the order of the changes: VMs are created in parallel, and a save of an
    /// older map landing last would lose an agent's account across a restart.
    accounts: Arc<tokio::sync::Mutex<std::collections::BTreeMap<String, String>>>,
}

impl PersistentBroker {
    /// Applies `change` to the accounts and writes them to the file, holding the lock until
    /// the file is written. The write runs on a blocking thread (it syncs the file and its
    /// directory), which owns the lock: a caller that gives up waiting cannot let another
    /// save overtake this one.
    async fn change_and_save(
        &self,
        change: impl FnOnce(&mut std::collections::BTreeMap<String, String>) -> bool,
    ) -> Result<(), BusError> {
        let mut accounts = self.accounts.clone().lock_owned().await;
        if !change(&mut accounts) {
            return Ok(());
        }
        let file = self.file.clone();
        let written = tokio::task::spawn_blocking(move || {
            let text = serde_json::to_string(&*accounts).unwrap_or_default();
            secrets::write_private(&file, text.as_bytes())
        })
        .await
        .unwrap_or_else(|join_error| Err(std::io::Error::other(join_error.to_string())));
        written.map_err(|e| {
            BusError::Settings(format!(
                "cannot record the agents' bus accounts in {}: {e}",
                self.file.display()
            ))
        })
    }
}

impl AgentAccounts for PersistentBroker {
    fn add_agent<'a>(
        &'a self,
        agent_id: &'a str,
    ) -> BoxFuture<'a, Result<AgentCredentials, BusError>> {
        Box::pin(async move {
            let credentials = self.broker.add_agent(agent_id).await?;
            self.change_and_save(|accounts| {
                accounts.insert(agent_id.to_string(), credentials.password.clone());
                true
            })
            .await?;
            Ok(credentials)
        })
    }

    fn remove_agent<'a>(&'a self, agent_id: &'a str) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            self.broker.remove_agent(agent_id).await?;
            self.change_and_save(|accounts| accounts.remove(agent_id).is_some())
                .await
        })
    }
}

/// The director's bus: the client, the accounts of its agents, and the embedded broker
/// when there is no `mbus` in `director.yml`.
pub struct DirectorBus {
    /// Requests and heartbeats.
    pub bus: Bus,
    /// Agent accounts on the broker in use.
    pub accounts: Arc<dyn AgentAccounts>,
    broker: Option<BrokerHandle>,
}

impl DirectorBus {
    /// Connects to the configured nats-server, or starts the embedded broker on
    /// `127.0.0.1` (a free port) with a random password for the director.
    pub async fn start(
        mbus: Option<&MbusConfig>,
        director_id: &str,
    ) -> Result<DirectorBus, BusError> {
        match mbus {
            Some(config) => {
                let accounts = NatsServerAccounts::open(config).await?;
                let bus =
                    Bus::connect(&config.url, &config.user, &config.password, director_id).await?;
                Ok(DirectorBus {
                    bus,
                    accounts: Arc::new(accounts),
                    broker: None,
                })
            }
            None => {
                let broker = Broker::start("127.0.0.1:0").await?;
                let password = generate_password();
                broker.add_user("director", &password, Permissions::all());
                let bus = Bus::connect(&broker.url(), "director", &password, director_id).await?;
                Ok(DirectorBus {
                    bus,
                    accounts: Arc::new(broker.clone()),
                    broker: Some(broker),
                })
            }
        }
    }

    /// The embedded broker for a director whose state lives in `dir`: on the port it had
    /// before (a free one when that is taken), with the agent accounts it had (see
    /// [`PersistentBroker`]).
    pub async fn start_embedded(
        dir: &std::path::Path,
        director_id: &str,
    ) -> Result<DirectorBus, BusError> {
        let port_file = dir.join("bus.port");
        let previous = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|p| p.trim().parse::<u16>().ok());
        let broker = match previous {
            Some(port) => match Broker::start(&format!("127.0.0.1:{port}")).await {
                Ok(broker) => broker,
                Err(_) => Broker::start("127.0.0.1:0").await?,
            },
            None => Broker::start("127.0.0.1:0").await?,
        };
        let _ = std::fs::write(&port_file, broker.local_addr().port().to_string());
        let file = dir.join("bus-agents.json");
        let accounts: std::collections::BTreeMap<String, String> = std::fs::read_to_string(&file)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        for (agent_id, password) in &accounts {
            if check_agent_id(agent_id).is_ok() {
                broker.add_user(&agent_user(agent_id), password, agent_permissions(agent_id));
            }
        }
        let password = generate_password();
        broker.add_user("director", &password, Permissions::all());
        let bus = Bus::connect(&broker.url(), "director", &password, director_id).await?;
        Ok(DirectorBus {
            bus,
            accounts: Arc::new(PersistentBroker {
                broker: broker.clone(),
                file,
                accounts: Arc::new(tokio::sync::Mutex::new(accounts)),
            }),
            broker: Some(broker),
        })
    }

    /// The embedded broker, when there is one (for its events).
    pub fn broker(&self) -> Option<&BrokerHandle> {
        self.broker.as_ref()
    }

    /// Closes the client and stops the embedded broker.
    pub async fn shutdown(self) {
        self.bus.close().await;
        if let Some(broker) = self.broker {
            broker.shutdown().await;
        }
    }
}

/// Everything that can go wrong on the bus. Messages name the agent and the method and say
/// what to check; they never hold a password.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The embedded broker could not listen.
    #[error("cannot listen for the bus on {address}: {source}")]
    Listen {
        /// The address asked for.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The director could not connect to the bus.
    #[error("cannot connect to the bus at {url} as '{user}': {reason}")]
    Connect {
        /// The bus URL, redacted.
        url: String,
        /// The user.
        user: String,
        /// Why, and what to check.
        reason: String,
    },
    /// An agent did not answer in time.
    #[error("{}", timeout_message(agent_id, method, *waited, *last_contact, agent_task_id.as_deref(), bus_url))]
    Timeout {
        /// The agent.
        agent_id: String,
        /// The method asked for.
        method: String,
        /// How long the director waited.
        waited: Duration,
        /// How long ago the agent was last heard from (a reply or a heartbeat).
        last_contact: Option<Duration>,
        /// The agent's task, for a long call that did not finish (it was asked to cancel).
        agent_task_id: Option<String>,
        /// The bus, redacted.
        bus_url: Arc<str>,
    },
    /// The agent answered with an exception.
    #[error("agent '{agent_id}' failed '{method}': {message}")]
    Agent {
        /// The agent.
        agent_id: String,
        /// The method asked for.
        method: String,
        /// The agent's message.
        message: String,
    },
    /// A request larger than the bus carries.
    #[error(
        "the '{method}' request for agent '{agent_id}' is {size} bytes, more than the bus carries ({limit} bytes): send large data as a blob"
    )]
    TooLarge {
        /// The agent.
        agent_id: String,
        /// The method.
        method: String,
        /// The request's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The answer was not an agent reply.
    #[error(
        "agent '{agent_id}' answered '{method}' with something that is not an agent reply: {detail}"
    )]
    InvalidReply {
        /// The agent.
        agent_id: String,
        /// The method.
        method: String,
        /// What was wrong with it.
        detail: String,
    },
    /// The request could not be sent.
    #[error("cannot send '{method}' to agent '{agent_id}': {detail}")]
    Send {
        /// The agent.
        agent_id: String,
        /// The method.
        method: String,
        /// Why.
        detail: String,
    },
    /// An id that cannot be an agent's (or the director's) subject token.
    #[error(
        "'{id}' cannot be an agent or director id on the bus: use letters, digits, '-' and '_' (at most {MAX_AGENT_ID})"
    )]
    InvalidId {
        /// The id.
        id: String,
    },
    /// The `mbus` settings cannot work.
    #[error("mbus: {0}")]
    Settings(String),
    /// The authorization file could not be read or written.
    #[error("cannot {action} the bus authorization file {path}: {detail}")]
    AuthorizationFile {
        /// `read` or `write`.
        action: &'static str,
        /// `mbus.authorization_file`.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// nats-server could not be told to reload.
    #[error("cannot make nats-server reload its authorization ({pid_file}): {detail}")]
    Reload {
        /// `mbus.pid_file`.
        pid_file: PathBuf,
        /// Why, and what to check.
        detail: String,
    },
}

fn timeout_message(
    agent_id: &str,
    method: &str,
    waited: Duration,
    last_contact: Option<Duration>,
    agent_task_id: Option<&str>,
    bus_url: &str,
) -> String {
    let waited = human_duration(waited);
    let contact = match last_contact {
        Some(ago) => format!("last contact: {} ago", human_duration(ago)),
        None => format!(
            "never heard from it: check that its VM is running and reaches the bus at {bus_url}"
        ),
    };
    match agent_task_id {
        None => format!(
            "timed out after {waited} waiting for agent '{agent_id}' to answer '{method}' ({contact})"
        ),
        Some(task) => format!(
            "timed out after {waited} waiting for agent '{agent_id}' to finish '{method}' (agent task '{task}', asked to cancel; {contact})"
        ),
    }
}

/// `45 s`, `1.5 s`, `300 ms`.
pub fn human_duration(duration: Duration) -> String {
    if duration >= Duration::from_secs(1) {
        if duration.subsec_millis() == 0 {
            format!("{} s", duration.as_secs())
        } else {
            format!("{:.1} s", duration.as_secs_f64())
        }
    } else {
        format!("{} ms", duration.as_millis())
    }
}

/// Checks that `id` can be a subject token and part of a user name.
pub fn check_agent_id(id: &str) -> Result<(), BusError> {
    let valid = !id.is_empty()
        && id.len() <= MAX_AGENT_ID
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(BusError::InvalidId { id: id.to_string() })
    }
}

/// 256 random bits as hex.
fn generate_password() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_may_only_touch_their_own_subjects() {
        let permissions = agent_permissions("a1");
        assert!(permissions.may_subscribe("agent.a1"));
        assert!(!permissions.may_subscribe("agent.a2"));
        assert!(!permissions.may_subscribe("agent.*"));
        assert!(!permissions.may_subscribe(">"));
        assert!(permissions.may_publish("hm.agent.heartbeat.a1"));
        assert!(permissions.may_publish("hm.agent.alert.a1"));
        assert!(permissions.may_publish("hm.agent.shutdown.a1"));
        assert!(permissions.may_publish("director.d1.a1.r1"));
        assert!(!permissions.may_publish("director.d1.a2.r1"));
        assert!(!permissions.may_publish("hm.agent.heartbeat.a2"));
        assert!(!permissions.may_publish("agent.a2"));
        assert!(Permissions::all().may_publish("agent.a2"));
        assert!(Permissions::all().may_subscribe(">"));
    }

    #[test]
    fn agent_ids_are_single_tokens() {
        assert!(check_agent_id("5f0c0a1e-3b1d-4c55-9a63-0d3c2f6c6f10").is_ok());
        for bad in ["", "a.b", "a*", "a b", "ä", &"x".repeat(129)] {
            assert!(check_agent_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn credentials_hide_the_password() {
        let credentials = AgentCredentials {
            user: "agent-a1".into(),
            password: "secret".into(),
            url: "nats://127.0.0.1:4222".into(),
        };
        assert_eq!(
            credentials.mbus_url(),
            "nats://agent-a1:secret@127.0.0.1:4222"
        );
        assert!(!format!("{credentials:?}").contains("secret"));
    }

    #[tokio::test]
    async fn without_mbus_the_director_embeds_its_broker() {
        let director = DirectorBus::start(None, "d1").await.unwrap();
        let broker = director.broker().unwrap().clone();
        assert!(broker.url().starts_with("nats://127.0.0.1:"));
        assert_eq!(broker.user_connection_count("director"), 1);
        let credentials = director.accounts.add_agent("a1").await.unwrap();
        assert_eq!(credentials.url, broker.url());
        assert_eq!(credentials.password.len(), 64);
        director.shutdown().await;
        assert_eq!(broker.connection_count(), 0);
    }

    #[test]
    fn timeouts_say_what_to_check() {
        let error = BusError::Timeout {
            agent_id: "x".into(),
            method: "get_state".into(),
            waited: Duration::from_secs(45),
            last_contact: Some(Duration::from_secs(12)),
            agent_task_id: None,
            bus_url: Arc::from("nats://127.0.0.1:4222"),
        };
        assert_eq!(
            error.to_string(),
            "timed out after 45 s waiting for agent 'x' to answer 'get_state' (last contact: 12 s ago)"
        );
        assert_eq!(human_duration(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(human_duration(Duration::from_millis(300)), "300 ms");
    }
}
