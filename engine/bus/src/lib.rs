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
//! - `accounts`: the credentials policy both brokers apply: one user and random password
//!   per agent, allowed only its own subjects.
//! - `embedded_accounts`: agent accounts on the embedded broker, recorded in a file for a
//!   dev director ([`PersistentBroker`]).
//! - `error`: [`BusError`].
//! - `limits`: the largest message and [`BusLimits`] (`bus_limits` in `director.yml`), what
//!   the embedded broker allows its agents.
//! - this file: [`DirectorBus`], the bus a director starts with (its client, its agents'
//!   accounts, and the embedded broker when there is no `mbus`, whose events it logs).
//!
//! The modules depend one way: `subject` and `limits` at the bottom, then `error`, then
//! `accounts`, then `broker`, `client` and `nats_server`, then `embedded_accounts`, then this
//! file; none of them imports from this file.
//!
//! Passwords never reach a log line or an error: URLs in messages go through [`secrets::redact_urls`].

mod accounts;
pub mod broker;
pub mod client;
mod embedded_accounts;
mod error;
mod limits;
pub mod nats_server;
mod subject;

use std::sync::Arc;

use tokio::sync::broadcast;
use tokio::task::JoinHandle;

pub use accounts::{
    AgentAccounts, AgentCredentials, Permissions, agent_permissions, agent_user, check_agent_id,
};
pub use broker::{Broker, BrokerEvent, BrokerHandle, BrokerOptions, Operation};
pub use client::Bus;
pub use embedded_accounts::PersistentBroker;
pub use error::{BusError, human_duration};
pub use limits::{BusLimits, LimitsError, MAX_MESSAGE_BYTES, PublishRate};
pub use nats_server::{MbusConfig, NatsServerAccounts};

use accounts::generate_password;

/// The director's bus: the client, the accounts of its agents, and the embedded broker
/// when there is no `mbus` in `director.yml`.
pub struct DirectorBus {
    /// Requests and heartbeats.
    pub bus: Bus,
    /// Agent accounts on the broker in use.
    pub accounts: Arc<dyn AgentAccounts>,
    broker: Option<BrokerHandle>,
    /// Writes the embedded broker's events to the director's log.
    logger: Option<JoinHandle<()>>,
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
                    logger: None,
                })
            }
            None => {
                let broker = Broker::start("127.0.0.1:0").await?;
                let logger = log_events(&broker);
                let password = generate_password();
                broker.add_user("director", &password, Permissions::all());
                let bus = Bus::connect(&broker.url(), "director", &password, director_id).await?;
                Ok(DirectorBus {
                    bus,
                    accounts: Arc::new(broker.clone()),
                    broker: Some(broker),
                    logger: Some(logger),
                })
            }
        }
    }

    /// The embedded broker for a director whose state lives in `dir`, listening on `host`
    /// (where agents reach the director): on the port it had before (a free one when that
    /// is taken), with the agent accounts it had (see [`PersistentBroker`]) and `limits` on
    /// what its agents may do. Its events (refusals, agents over a limit) go to the
    /// director's log, stderr.
    pub async fn start_embedded(
        dir: &std::path::Path,
        host: std::net::IpAddr,
        director_id: &str,
        limits: BusLimits,
    ) -> Result<DirectorBus, BusError> {
        let port_file = dir.join("bus.port");
        let previous = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|p| p.trim().parse::<u16>().ok());
        let options = BrokerOptions {
            limits,
            ..BrokerOptions::default()
        };
        let any_port = std::net::SocketAddr::new(host, 0).to_string();
        let broker = match previous {
            Some(port) => {
                let before = std::net::SocketAddr::new(host, port).to_string();
                match Broker::start_with(&before, options.clone()).await {
                    Ok(broker) => broker,
                    Err(BusError::Listen { .. }) => Broker::start_with(&any_port, options).await?,
                    Err(other) => return Err(other),
                }
            }
            None => Broker::start_with(&any_port, options).await?,
        };
        let logger = log_events(&broker);
        let _ = std::fs::write(&port_file, broker.local_addr().port().to_string());
        let accounts = PersistentBroker::open(broker.clone(), dir.join("bus-agents.json"));
        let password = generate_password();
        broker.add_user("director", &password, Permissions::all());
        let bus = Bus::connect(&broker.url(), "director", &password, director_id).await?;
        Ok(DirectorBus {
            bus,
            accounts: Arc::new(accounts),
            broker: Some(broker),
            logger: Some(logger),
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
        if let Some(logger) = self.logger {
            logger.abort();
            let _ = logger.await;
        }
    }
}

/// Writes each of the broker's events to stderr, the director's log, as `bus: …`.
fn log_events(broker: &BrokerHandle) -> JoinHandle<()> {
    let mut events = broker.watch_events();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(event) => eprintln!("bus: {event}"),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    eprintln!("bus: {missed} more events not logged");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
