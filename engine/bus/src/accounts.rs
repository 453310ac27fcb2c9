//! The credentials policy. Each agent gets its own user and random password when its VM is
//! created, and may only subscribe `agent.<agent_id>` and publish its heartbeats, alerts and
//! shutdown notices (`hm.agent.{heartbeat,alert,shutdown}.<id>`) and replies to the director
//! (`director.*.<agent_id>.*`). So an agent can neither read another agent's orders, nor
//! give them, nor answer in its name. The director's user may do everything.
//!
//! Both brokers apply it: the embedded one (`broker`, through `embedded_accounts`)
//! and nats-server (`nats_server`).

use std::fmt;

use futures::future::BoxFuture;
use serde::Serialize;

use crate::error::BusError;
use crate::limits::MAX_AGENT_ID;
use crate::subject;

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
pub(crate) fn generate_password() -> String {
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
}
