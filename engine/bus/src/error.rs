//! Everything that can go wrong on the bus, as [`BusError`], and how durations read in its
//! messages.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::limits::MAX_AGENT_ID;

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
    /// The director's task was cancelled while it waited for the agent (a long call was
    /// asked to cancel on the agent too).
    #[error("stopped waiting for agent '{agent_id}' to finish '{method}': the task was cancelled")]
    Cancelled {
        /// The agent.
        agent_id: String,
        /// The method asked for.
        method: String,
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
    /// The `bus_limits` settings cannot work.
    #[error("bus_limits: {0}")]
    Limits(#[from] crate::limits::LimitsError),
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

#[cfg(test)]
mod tests {
    use super::*;

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
