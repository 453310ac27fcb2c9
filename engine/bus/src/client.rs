//! The director's bus client: requests to agents, long calls polled with `get_task`, and
//! heartbeats.
//!
//! One subscription, `director.<director_id>.>`, receives every reply: a request registers
//! its id and a oneshot before it is published, and the router task hands each reply to
//! the request whose id ends its subject, when the agent in the subject is the one asked.
//! A second subscription, `hm.agent.heartbeat.*`, feeds [`Bus::heartbeats`]. Both also
//! record when each agent was last heard from, which timeouts report. The router is the
//! only task; it lives in the bus's `JoinSet` and ends with the last clone of the bus.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use agent_protocol::{Heartbeat, PROTOCOL_VERSION, Reply, Request, TaskHandle, agent_subject};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::Value;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::accounts::check_agent_id;
use crate::error::BusError;
use crate::limits::MAX_MESSAGE_BYTES;

/// How long one request waits for its answer unless told otherwise (BOSH's 45 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(45);
/// The first wait before polling a long call's task (later waits double, up to the poll).
const FIRST_POLL: Duration = Duration::from_millis(20);
/// How long a `cancel_task` after a timed-out long call may take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);
/// Heartbeats a slow reader of [`Bus::heartbeats`] may fall behind before it skips some.
const HEARTBEAT_BUFFER: usize = 4096;
const HEARTBEAT_PREFIX: &str = "hm.agent.heartbeat.";

/// The director's connection to the bus. Clones share it.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    director_id: String,
    /// The bus URL without credentials, for messages.
    url: Arc<str>,
    state: Arc<State>,
    heartbeats: broadcast::Sender<(String, Heartbeat)>,
    /// The router; dropping the set (with the last clone) stops it.
    tasks: Mutex<JoinSet<()>>,
}

#[derive(Default)]
struct State {
    pending: Mutex<HashMap<String, Pending>>,
    contacts: Mutex<HashMap<String, Instant>>,
}

struct Pending {
    agent_id: String,
    reply: oneshot::Sender<Bytes>,
}

impl State {
    fn touch(&self, agent_id: &str) {
        lock(&self.contacts).insert(agent_id.to_string(), Instant::now());
    }
}

/// Removes a request's pending entry however the request ends (answer, timeout, or the
/// caller dropping the future).
struct PendingGuard<'a> {
    state: &'a State,
    request_id: String,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.state.pending).remove(&self.request_id);
    }
}

impl Bus {
    /// Connects as `user` and subscribes to the director's replies and to heartbeats.
    /// `director_id` (letters, digits, `-`, `_`) names this director's reply subjects.
    pub async fn connect(
        url: &str,
        user: &str,
        password: &str,
        director_id: &str,
    ) -> Result<Bus, BusError> {
        check_agent_id(director_id)?;
        let shown_url = secrets::redact_urls(url);
        let failed = |reason: String| BusError::Connect {
            url: shown_url.clone(),
            user: user.to_string(),
            reason,
        };
        let client =
            async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
                .name(format!("director {director_id}"))
                .connection_timeout(Duration::from_secs(10))
                .connect(url)
                .await
                .map_err(|error| failed(describe_connect_error(&error)))?;
        let replies = client
            .subscribe(format!("director.{director_id}.>"))
            .await
            .map_err(|e| failed(secrets::redact_urls(&e.to_string())))?;
        let heartbeat_subscription = client
            .subscribe(format!("{HEARTBEAT_PREFIX}*"))
            .await
            .map_err(|e| failed(secrets::redact_urls(&e.to_string())))?;
        // A broker handles one connection's operations in order, so every request published
        // after this already finds the reply subscription in place.
        client
            .flush()
            .await
            .map_err(|e| failed(secrets::redact_urls(&e.to_string())))?;
        let state = Arc::new(State::default());
        let (heartbeats, _) = broadcast::channel(HEARTBEAT_BUFFER);
        let mut tasks = JoinSet::new();
        tasks.spawn(route(
            state.clone(),
            replies,
            heartbeat_subscription,
            heartbeats.clone(),
        ));
        Ok(Bus {
            inner: Arc::new(Inner {
                client,
                director_id: director_id.to_string(),
                url: Arc::from(shown_url),
                state,
                heartbeats,
                tasks: Mutex::new(tasks),
            }),
        })
    }

    /// Sends `method` with `arguments` to agent `agent_id` and waits up to `timeout` for its
    /// answer: the value, or the agent's exception as [`BusError::Agent`].
    pub async fn request(
        &self,
        agent_id: &str,
        method: &str,
        arguments: Vec<Value>,
        timeout: Duration,
    ) -> Result<Value, BusError> {
        check_agent_id(agent_id)?;
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        let request = Request {
            protocol: PROTOCOL_VERSION,
            method: method.to_string(),
            arguments,
            reply_to: format!(
                "director.{}.{agent_id}.{request_id}",
                self.inner.director_id
            ),
        };
        let send_error = |detail: String| BusError::Send {
            agent_id: agent_id.to_string(),
            method: method.to_string(),
            detail,
        };
        let payload = serde_json::to_vec(&request).map_err(|e| send_error(e.to_string()))?;
        if payload.len() > MAX_MESSAGE_BYTES {
            return Err(BusError::TooLarge {
                agent_id: agent_id.to_string(),
                method: method.to_string(),
                size: payload.len(),
                limit: MAX_MESSAGE_BYTES,
            });
        }
        let (sender, receiver) = oneshot::channel();
        let state = &self.inner.state;
        lock(&state.pending).insert(
            request_id.clone(),
            Pending {
                agent_id: agent_id.to_string(),
                reply: sender,
            },
        );
        let _guard = PendingGuard { state, request_id };
        self.inner
            .client
            .publish(agent_subject(agent_id), payload.into())
            .await
            .map_err(|e| send_error(secrets::redact_urls(&e.to_string())))?;
        match tokio::time::timeout(timeout, receiver).await {
            Ok(Ok(answer)) => parse_reply(agent_id, method, &answer),
            Ok(Err(_)) => Err(send_error(
                "the director's bus connection was closed".to_string(),
            )),
            Err(_) => Err(self.timeout_error(agent_id, method, timeout, None)),
        }
    }

    /// Pings agent `agent_id` until it answers, as BOSH's `wait_until_ready` does after
    /// creating a VM: an agent that just subscribed may miss a request sent at the same
    /// moment, a ping repeated does not. The first tries wait 100 ms, each next one twice
    /// as long up to a second, so a ping lost to a booting agent costs little.
    pub async fn wait_until_ready(
        &self,
        agent_id: &str,
        timeout: Duration,
    ) -> Result<(), BusError> {
        let started = Instant::now();
        let mut attempt = Duration::from_millis(100);
        loop {
            let remaining = timeout.saturating_sub(started.elapsed());
            let this_attempt = remaining.min(attempt);
            attempt = (attempt * 2).min(Duration::from_secs(1));
            match self.request(agent_id, "ping", vec![], this_attempt).await {
                Ok(_) => return Ok(()),
                Err(BusError::Timeout { .. }) if started.elapsed() < timeout => {}
                Err(BusError::Timeout { .. }) => {
                    return Err(self.timeout_error(agent_id, "ping", timeout, None));
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Like [`Bus::request`] for a long call (`apply`, `drain`, `stop`, `compile_package`,
    /// …): when the agent answers with a task handle, polls `get_task` (after 20 ms, then
    /// waiting twice as long each time, up to `poll`) until a
    /// plain value or an exception comes back. Past `timeout` (for the whole call), asks the
    /// agent to `cancel_task` and fails with [`BusError::Timeout`].
    pub async fn run_task(
        &self,
        agent_id: &str,
        method: &str,
        arguments: Vec<Value>,
        poll: Duration,
        timeout: Duration,
    ) -> Result<Value, BusError> {
        self.run_task_until(
            agent_id,
            method,
            arguments,
            poll,
            timeout,
            &CancellationToken::new(),
        )
        .await
    }

    /// [`Bus::run_task`] that also ends when `cancel` fires: a long call the agent is
    /// running is then asked to `cancel_task` (best effort) and the answer is
    /// [`BusError::Cancelled`]. A short call in flight is waited for (it is bounded).
    pub async fn run_task_until(
        &self,
        agent_id: &str,
        method: &str,
        arguments: Vec<Value>,
        poll: Duration,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<Value, BusError> {
        let cancelled = || BusError::Cancelled {
            agent_id: agent_id.to_string(),
            method: method.to_string(),
        };
        if cancel.is_cancelled() {
            return Err(cancelled());
        }
        let started = Instant::now();
        let deadline = started + timeout;
        let remaining = || deadline.saturating_duration_since(Instant::now());
        let first = self
            .request(
                agent_id,
                method,
                arguments,
                remaining().min(REQUEST_TIMEOUT),
            )
            .await?;
        let Some(task) = running_task(&first) else {
            return Ok(first);
        };
        // Short tasks are the common case: the first polls come quickly, then each waits
        // twice as long as the one before, up to `poll`.
        let mut wait = poll.min(FIRST_POLL);
        loop {
            let this_wait = wait.min(remaining());
            wait = (wait * 2).min(poll);
            tokio::select! {
                () = tokio::time::sleep(this_wait) => {}
                () = cancel.cancelled() => {
                    self.cancel_agent_task(agent_id, &task).await;
                    return Err(cancelled());
                }
            }
            if remaining().is_zero() {
                return Err(self.give_up(agent_id, method, timeout, &task).await);
            }
            let polled = self
                .request(
                    agent_id,
                    "get_task",
                    vec![Value::from(task.agent_task_id.clone())],
                    remaining().min(REQUEST_TIMEOUT),
                )
                .await;
            match polled {
                Ok(value) if running_task(&value).is_some() => {}
                Ok(value) => return Ok(value),
                Err(BusError::Agent { message, .. }) => {
                    return Err(BusError::Agent {
                        agent_id: agent_id.to_string(),
                        method: method.to_string(),
                        message,
                    });
                }
                // A lost poll: the next one asks again, the deadline bounds the retries.
                Err(BusError::Timeout { .. }) if !remaining().is_zero() => {}
                Err(BusError::Timeout { .. }) => {
                    return Err(self.give_up(agent_id, method, timeout, &task).await);
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The director's heartbeats, as `(agent_id, heartbeat)`, from now on. Heartbeats that
    /// are not valid JSON are skipped (they still count as contact); a reader that falls
    /// more than 4096 behind skips the oldest.
    pub fn heartbeats(&self) -> impl Stream<Item = (String, Heartbeat)> + Send + 'static {
        let receiver = self.inner.heartbeats.subscribe();
        futures::stream::unfold(receiver, |mut receiver| async move {
            loop {
                match receiver.recv().await {
                    Ok(item) => return Some((item, receiver)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }

    /// When agent `agent_id` last answered or sent a heartbeat (since this bus connected).
    pub fn last_contact(&self, agent_id: &str) -> Option<Instant> {
        lock(&self.inner.state.contacts).get(agent_id).copied()
    }

    /// Forgets an agent's last contact (its VM is gone).
    pub fn forget_agent(&self, agent_id: &str) {
        lock(&self.inner.state.contacts).remove(agent_id);
    }

    /// The bus URL, without credentials.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Stops the router and closes the connection (for every clone).
    pub async fn close(&self) {
        lock(&self.inner.tasks).abort_all();
        let _ = self.inner.client.drain().await;
    }

    async fn give_up(
        &self,
        agent_id: &str,
        method: &str,
        timeout: Duration,
        task: &TaskHandle,
    ) -> BusError {
        // Best effort: the agent may be gone, which the timeout error says anyway.
        self.cancel_agent_task(agent_id, task).await;
        self.timeout_error(agent_id, method, timeout, Some(task.agent_task_id.clone()))
    }

    /// Asks the agent to stop its long task (best effort: the agent may be gone).
    async fn cancel_agent_task(&self, agent_id: &str, task: &TaskHandle) {
        let _ = self
            .request(
                agent_id,
                "cancel_task",
                vec![Value::from(task.agent_task_id.clone())],
                CANCEL_TIMEOUT,
            )
            .await;
    }

    fn timeout_error(
        &self,
        agent_id: &str,
        method: &str,
        waited: Duration,
        agent_task_id: Option<String>,
    ) -> BusError {
        BusError::Timeout {
            agent_id: agent_id.to_string(),
            method: method.to_string(),
            waited: round_to_millis(waited),
            last_contact: self
                .last_contact(agent_id)
                .map(|at| round_to_millis(at.elapsed())),
            agent_task_id,
            bus_url: Arc::clone(&self.inner.url),
        }
    }
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("url", &self.inner.url)
            .field("director_id", &self.inner.director_id)
            .finish()
    }
}

async fn route(
    state: Arc<State>,
    mut replies: async_nats::Subscriber,
    mut heartbeat_subscription: async_nats::Subscriber,
    heartbeats: broadcast::Sender<(String, Heartbeat)>,
) {
    loop {
        tokio::select! {
            message = replies.next() => {
                let Some(message) = message else { break };
                // director.<director_id>.<agent_id>.<request_id>
                let tokens: Vec<&str> = message.subject.split('.').collect();
                let [_, _, agent_id, request_id] = tokens[..] else { continue };
                state.touch(agent_id);
                let mut pending = lock(&state.pending);
                if pending.get(request_id).is_some_and(|p| p.agent_id == agent_id) {
                    if let Some(waiting) = pending.remove(request_id) {
                        let _ = waiting.reply.send(message.payload);
                    }
                }
            }
            message = heartbeat_subscription.next() => {
                let Some(message) = message else { break };
                let Some(agent_id) = message.subject.strip_prefix(HEARTBEAT_PREFIX) else {
                    continue;
                };
                state.touch(agent_id);
                if let Ok(heartbeat) = serde_json::from_slice::<Heartbeat>(&message.payload) {
                    let _ = heartbeats.send((agent_id.to_string(), heartbeat));
                }
            }
        }
    }
}

fn parse_reply(agent_id: &str, method: &str, payload: &[u8]) -> Result<Value, BusError> {
    match serde_json::from_slice::<Reply>(payload) {
        Ok(Reply::Value(value)) => Ok(value),
        Ok(Reply::Exception(exception)) => Err(BusError::Agent {
            agent_id: agent_id.to_string(),
            method: method.to_string(),
            message: exception.message,
        }),
        Err(error) => Err(BusError::InvalidReply {
            agent_id: agent_id.to_string(),
            method: method.to_string(),
            detail: format!(
                "{error} (it begins with {:?})",
                String::from_utf8_lossy(&payload[..payload.len().min(80)])
            ),
        }),
    }
}

/// A long call's answer while it runs: `{"agent_task_id": …, "state": "running"}`.
fn running_task(value: &Value) -> Option<TaskHandle> {
    if value.as_object()?.len() != 2 {
        return None;
    }
    let task: TaskHandle = serde_json::from_value(value.clone()).ok()?;
    (task.state == "running").then_some(task)
}

fn describe_connect_error(error: &async_nats::ConnectError) -> String {
    match error.kind() {
        async_nats::ConnectErrorKind::AuthorizationViolation => {
            "the bus refused the user and password (authorization violation): check mbus.user and mbus.password"
                .to_string()
        }
        async_nats::ConnectErrorKind::TimedOut => {
            "timed out: check that the bus runs there and that this host reaches it".to_string()
        }
        _ => secrets::redact_urls(&error.to_string()),
    }
}

fn round_to_millis(duration: Duration) -> Duration {
    Duration::from_millis(duration.as_millis().try_into().unwrap_or(u64::MAX))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_running_tasks_only() {
        let running = serde_json::json!({"agent_task_id": "t1", "state": "running"});
        assert_eq!(running_task(&running).unwrap().agent_task_id, "t1");
        for not_running in [
            serde_json::json!({"agent_task_id": "t1", "state": "done"}),
            serde_json::json!({"agent_task_id": "t1", "state": "running", "x": 1}),
            serde_json::json!("applied"),
            serde_json::json!(null),
        ] {
            assert!(running_task(&not_running).is_none(), "{not_running}");
        }
    }

    #[test]
    fn replies_become_values_or_errors() {
        assert_eq!(
            parse_reply("a", "ping", br#"{"value":"pong"}"#).unwrap(),
            Value::from("pong")
        );
        let error = parse_reply("a", "apply", br#"{"exception":{"message":"boom"}}"#)
            .unwrap_err()
            .to_string();
        assert_eq!(error, "agent 'a' failed 'apply': boom");
        let error = parse_reply("a", "apply", b"nonsense")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(
                "agent 'a' answered 'apply' with something that is not an agent reply"
            ),
            "{error}"
        );
    }
}
