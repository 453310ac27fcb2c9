//! Long calls as tasks: started in the background, answered with a [`TaskHandle`], polled
//! with `get_task`, cancelled with `cancel_task` (which aborts the task; the child processes
//! it started are killed when their handles drop). Finished results are kept for an hour.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::AbortHandle;

use crate::error::Error;
use agent_protocol::{Reply, TaskHandle};

/// How long finished results are kept.
pub const KEEP_RESULTS: Duration = Duration::from_secs(3600);

enum Entry {
    Running(AbortHandle),
    Done { reply: Reply, at: Instant },
}

/// The agent's tasks.
#[derive(Clone, Default)]
pub struct Tasks {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
}

impl Tasks {
    /// No tasks yet.
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// Runs `work` in the background under `method`'s name; returns its handle.
    pub fn spawn<F>(&self, method: &str, work: F) -> TaskHandle
    where
        F: Future<Output = Result<Value, Error>> + Send + 'static,
    {
        let id = uuid::Uuid::new_v4().to_string();
        let entries = self.entries.clone();
        let task_id = id.clone();
        let method = method.to_string();
        let mut guard = self.entries.lock().expect("tasks lock");
        guard.retain(|_, entry| match entry {
            Entry::Done { at, .. } => at.elapsed() < KEEP_RESULTS,
            Entry::Running(_) => true,
        });
        let join = tokio::spawn(async move {
            let reply = match work.await {
                Ok(value) => Reply::Value(value),
                Err(error) => {
                    agent_log!("task {task_id} ({method}) failed: {error}");
                    Reply::exception(error.to_string())
                }
            };
            let mut entries = entries.lock().expect("tasks lock");
            // A cancelled task has its answer already.
            if let Some(Entry::Running(_)) = entries.get(&task_id) {
                entries.insert(
                    task_id,
                    Entry::Done {
                        reply,
                        at: Instant::now(),
                    },
                );
            }
        });
        guard.insert(id.clone(), Entry::Running(join.abort_handle()));
        TaskHandle {
            agent_task_id: id,
            state: "running".to_string(),
        }
    }

    /// What `get_task` answers.
    pub fn get(&self, id: &str) -> Reply {
        let entries = self.entries.lock().expect("tasks lock");
        match entries.get(id) {
            Some(Entry::Running(_)) => Reply::Value(
                serde_json::to_value(TaskHandle {
                    agent_task_id: id.to_string(),
                    state: "running".to_string(),
                })
                .expect("handles serialize"),
            ),
            Some(Entry::Done { reply, .. }) => reply.clone(),
            None => Reply::exception(format!("unknown task {id}")),
        }
    }

    /// Cancels a running task.
    pub fn cancel(&self, id: &str) -> Reply {
        let mut entries = self.entries.lock().expect("tasks lock");
        match entries.get(id) {
            Some(Entry::Running(abort)) => {
                abort.abort();
                entries.insert(
                    id.to_string(),
                    Entry::Done {
                        reply: Reply::exception(Error::Cancelled.to_string()),
                        at: Instant::now(),
                    },
                );
                Reply::Value(Value::from("canceled"))
            }
            Some(Entry::Done { .. }) => Reply::Value(Value::from("finished")),
            None => Reply::exception(format!("unknown task {id}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_finish_fail_and_cancel() {
        let tasks = Tasks::new();
        let done = tasks.spawn("ping", async { Ok(Value::from("pong")) });
        let failed = tasks.spawn("apply", async { Err(Error::Spec("bad".to_string())) });
        let slow = tasks.spawn("stop", async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(Value::Null)
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            tasks.get(&done.agent_task_id),
            Reply::Value(Value::from("pong"))
        );
        assert_eq!(
            tasks.get(&failed.agent_task_id),
            Reply::exception("apply spec: bad")
        );
        let Reply::Value(running) = tasks.get(&slow.agent_task_id) else {
            panic!()
        };
        assert_eq!(running["state"], "running");
        assert_eq!(
            tasks.cancel(&slow.agent_task_id),
            Reply::Value(Value::from("canceled"))
        );
        assert_eq!(
            tasks.get(&slow.agent_task_id),
            Reply::exception("task cancelled")
        );
        assert_eq!(tasks.get("nope"), Reply::exception("unknown task nope"));
    }
}
