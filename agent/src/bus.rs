//! The bus: the only module that knows NATS. Connects with the agent's own credentials,
//! answers requests on `agent.<agent_id>` (each in its own task, so a slow call never holds
//! up `ping`), and sends heartbeats on `hm.agent.heartbeat.<agent_id>` every
//! `heartbeat_interval` seconds, whenever the agent asks for one and when its job state
//! changes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::actions;
use crate::agent::Agent;
use crate::settings::parse_mbus;
use agent_protocol::{Reply, Request, agent_subject, heartbeat_subject};

/// How often the heartbeat loop looks whether the job state changed.
const JOB_STATE_CHECK: Duration = Duration::from_secs(1);

/// The largest reply we send (BOSH's cap, and NATS's default payload limit).
pub const MAX_REPLY: usize = 1024 * 1024;

/// Why the bus stopped.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Connecting failed (only for bad URLs: unreachable servers are retried).
    #[error("connecting to {url}: {reason}")]
    Connect {
        /// The URL, redacted.
        url: String,
        /// Why.
        reason: String,
    },
    /// Subscribing failed.
    #[error("subscribing to {subject}: {reason}")]
    Subscribe {
        /// The subject.
        subject: String,
        /// Why.
        reason: String,
    },
    /// The subscription ended (the client was closed).
    #[error("the subscription to {0} ended")]
    Closed(String),
}

/// Serves the agent on the bus until the connection is closed for good.
pub async fn serve(agent: Arc<Agent>) -> Result<(), BusError> {
    let settings = agent.settings();
    let url = secrets::redact_urls(&settings.mbus);
    let mbus = parse_mbus(&settings.mbus);
    agent_log!("agent {} connecting to {url}", settings.agent_id);
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("bosh-agent {}", settings.agent_id))
        .retry_on_initial_connect()
        .event_callback(|event| async move { agent_log!("bus: {event}") });
    if let (Some(user), Some(password)) = (mbus.user, mbus.password) {
        options = options.user_and_password(user, password);
    }
    let client = options
        .connect(mbus.address.as_str())
        .await
        .map_err(|e| BusError::Connect {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    let subject = agent_subject(&settings.agent_id);
    let mut requests =
        client
            .subscribe(subject.clone())
            .await
            .map_err(|e| BusError::Subscribe {
                subject: subject.clone(),
                reason: e.to_string(),
            })?;
    agent_log!("listening on {subject}");
    tokio::spawn(heartbeats(agent.clone(), client.clone()));
    while let Some(message) = requests.next().await {
        let request: Request = match serde_json::from_slice(&message.payload) {
            Ok(request) => request,
            Err(e) => {
                agent_log!("ignoring a message on {subject} that is no request: {e}");
                continue;
            }
        };
        let (agent, client) = (agent.clone(), client.clone());
        tokio::spawn(async move {
            let reply_to = request.reply_to.clone();
            let method = request.method.clone();
            if method != "get_task" && method != "ping" && method != "get_state" {
                agent_log!("request {method}");
            }
            let reply = actions::handle(&agent, request).await;
            let payload = encode_reply(&reply);
            if let Err(e) = client.publish(reply_to, payload.into()).await {
                agent_log!("cannot answer {method}: {e}");
            }
            let _ = client.flush().await;
        });
    }
    Err(BusError::Closed(subject))
}

/// JSON for `reply`, with an exception's message cut in the middle when the whole would be
/// larger than [`MAX_REPLY`].
pub fn encode_reply(reply: &Reply) -> Vec<u8> {
    let payload = serde_json::to_vec(reply).expect("replies serialize");
    if payload.len() <= MAX_REPLY {
        return payload;
    }
    let message = match reply {
        Reply::Exception(exception) => exception.message.clone(),
        Reply::Value(_) => "the answer is larger than 1 MiB".to_string(),
    };
    let keep = MAX_REPLY / 4;
    let chars: Vec<char> = message.chars().collect();
    let shortened = if chars.len() > 2 * keep {
        let head: String = chars[..keep].iter().collect();
        let tail: String = chars[chars.len() - keep..].iter().collect();
        format!("{head}\n…\n{tail}")
    } else {
        message
    };
    serde_json::to_vec(&Reply::exception(shortened)).expect("replies serialize")
}

/// Heartbeats every `heartbeat_interval`, at once when asked (after `start` and `stop`),
/// and within a second of the job state changing (a process failing or recovering), so the
/// director's health monitor and DNS records follow the jobs closely.
async fn heartbeats(agent: Arc<Agent>, client: async_nats::Client) {
    let subject = heartbeat_subject(&agent.settings().agent_id);
    let mut last: Option<(Instant, &'static str)> = None;
    loop {
        let interval = Duration::from_secs(agent.settings().heartbeat_interval.max(1));
        let job_state = agent.job_state();
        let due = last.is_none_or(|(sent, state)| sent.elapsed() >= interval || state != job_state);
        if due {
            let heartbeat = agent.heartbeat();
            let payload = serde_json::to_vec(&heartbeat).expect("heartbeats serialize");
            if let Err(e) = client.publish(subject.clone(), payload.into()).await {
                agent_log!("cannot send a heartbeat: {e}");
            }
            last = Some((Instant::now(), job_state));
        }
        tokio::select! {
            _ = tokio::time::sleep(JOB_STATE_CHECK.min(interval)) => {}
            _ = agent.heartbeat_requested().notified() => last = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_exceptions_are_cut() {
        let reply = Reply::exception("x".repeat(3 * MAX_REPLY));
        let payload = encode_reply(&reply);
        assert!(payload.len() <= MAX_REPLY);
        let parsed: Reply = serde_json::from_slice(&payload).unwrap();
        let Reply::Exception(exception) = parsed else {
            panic!()
        };
        assert!(exception.message.contains("\n…\n"));
        assert_eq!(
            encode_reply(&Reply::exception("small")),
            br#"{"exception":{"message":"small"}}"#
        );
    }
}
