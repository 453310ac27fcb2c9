//! Running tasks: a task row is queued, waits for one of the director's worker slots, takes
//! its locks, runs its job with a [`TaskContext`] (event log, debug log, cancellation), and
//! ends `done`, `error` or `cancelled`; its locks are released whatever happens.
//!
//! Locks cannot lapse under a running job: they are renewed until the job's future has
//! returned (a cancelled job keeps them while it winds down), and a job whose lock was lost
//! anyway (expired while the database was unreachable and taken by another task, or
//! released behind its back) is cancelled and ends `error`, saying which lock it lost.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::log::{TaskFiles, TaskLog};
use director_state::{NewTask, Object, State, StateError, Task, TaskId, TaskState};

/// How long a lock lasts without renewal (renewed every third of it while the task runs),
/// so the lock of a director that died frees itself.
const LOCK_TTL: Duration = Duration::from_secs(60);

/// How often a task waiting for a cancelling task's lock tries again.
const LOCK_RETRY: Duration = Duration::from_millis(500);

/// Why a task's job stopped without a result.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// `cancel-task` asked it to stop.
    #[error("task cancelled")]
    Cancelled,
    /// Another task holds a lock this one needs.
    #[error(
        "{what} is locked by task {by_task}: wait for it to finish, or stop it with `director cancel-task {by_task}`"
    )]
    Locked {
        /// What the lock protects, for the message (`release 'hello'`).
        what: String,
        /// The holder.
        by_task: TaskId,
    },
    /// The job failed: its error (with its sources) says why; its message is what the user
    /// reads.
    #[error("{0}")]
    Failed(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl TaskError {
    /// A failure that is only a message (no error underneath).
    pub fn message(message: impl Into<String>) -> TaskError {
        TaskError::Failed(message.into().into())
    }

    /// A failure of the job, keeping `error` and its sources.
    pub fn failed(error: impl std::error::Error + Send + Sync + 'static) -> TaskError {
        TaskError::Failed(Box::new(error))
    }
}

impl From<StateError> for TaskError {
    fn from(error: StateError) -> TaskError {
        TaskError::failed(error)
    }
}

/// What a task locks: one deployment, release, stemcell or disk, or the clean-up.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LockKey {
    /// A deployment, by name (deploys and the day-to-day verbs).
    Deployment(String),
    /// A release, by name (uploads, exports, deletes of any of its versions).
    Release(String),
    /// One stemcell version.
    Stemcell(director_core::stemcell::StemcellKey),
    /// An orphaned disk, by CPI id.
    Disk(String),
    /// `clean-up`.
    Cleanup,
}

impl LockKey {
    /// The lock's name in the state (`deployment:shop`, `stemcell:NAME:VERSION`).
    pub fn name(&self) -> String {
        match self {
            LockKey::Deployment(name) => format!("deployment:{name}"),
            LockKey::Release(name) => format!("release:{name}"),
            LockKey::Stemcell(key) => format!("stemcell:{}:{}", key.name, key.version),
            LockKey::Disk(cid) => format!("disk:{cid}"),
            LockKey::Cleanup => "cleanup".to_string(),
        }
    }

    /// What the lock protects, for the user (`deployment 'shop'`).
    pub fn description(&self) -> String {
        match self {
            LockKey::Deployment(name) => format!("deployment '{name}'"),
            LockKey::Release(name) => format!("release '{name}'"),
            LockKey::Stemcell(key) => format!("stemcell '{key}'"),
            LockKey::Disk(cid) => format!("disk '{cid}'"),
            LockKey::Cleanup => "clean-up".to_string(),
        }
    }
}

/// Why a task could not be queued or cancelled.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The state database failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The task's log files could not be created.
    #[error("creating the logs of task {id}: {source}")]
    Logs {
        /// The task.
        id: TaskId,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What a task's job gets: its id, its logs, its cancellation and its locks.
pub struct TaskContext {
    /// The task.
    pub id: TaskId,
    /// Its event and debug logs.
    pub log: TaskLog,
    cancel: CancellationToken,
    state: Arc<State>,
    locks: Arc<Mutex<Vec<String>>>,
    lock_ttl: Duration,
}

impl TaskContext {
    /// Returns `Err(Cancelled)` when the task was asked to stop; jobs call it between steps.
    pub fn checkpoint(&self) -> Result<(), TaskError> {
        if self.cancel.is_cancelled() {
            Err(TaskError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// A token that fires when the task is cancelled, for waits that should end early.
    pub fn cancellation(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Takes the lock `key` (`release:hello`). A lock held by a task that is being cancelled
    /// is waited for (the user cancelled it to run this one: it is taken once that task has
    /// stopped touching what the lock protects); a lock another running task holds fails
    /// with [`TaskError::Locked`] naming it for the user (`release 'hello'`).
    pub async fn lock(&self, key: &LockKey) -> Result<(), TaskError> {
        let name = key.name();
        let mut waiting_for = None;
        loop {
            match self
                .state
                .locks()
                .acquire(&name, self.id, self.lock_ttl)
                .await
            {
                Ok(_) => {
                    self.log.debug(format!("acquired lock {name}"));
                    if let Ok(mut locks) = self.locks.lock() {
                        locks.push(name);
                    }
                    return Ok(());
                }
                Err(StateError::Locked { by_task, .. }) => {
                    let holder = self.state.tasks().get(by_task).await?;
                    if holder.is_none_or(|task| task.state != TaskState::Cancelling) {
                        return Err(TaskError::Locked {
                            what: key.description(),
                            by_task,
                        });
                    }
                    if waiting_for != Some(by_task) {
                        self.log.debug(format!(
                            "waiting for task {by_task} (cancelling) to release lock {name}"
                        ));
                        waiting_for = Some(by_task);
                    }
                    tokio::select! {
                        () = tokio::time::sleep(LOCK_RETRY) => {}
                        () = self.cancel.cancelled() => return Err(TaskError::Cancelled),
                    }
                }
                Err(other) => return Err(other.into()),
            }
        }
    }

    /// The state database.
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }
}

/// What `cancel` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The task will stop at its next checkpoint.
    Cancelling,
    /// The task had already ended.
    AlreadyEnded(TaskState),
}

struct Inner {
    state: Arc<State>,
    /// The director running the tasks (recorded on each, see `director_state::Directors`).
    director: String,
    lock_ttl: Duration,
    tasks_dir: PathBuf,
    workers: Arc<Semaphore>,
    running: Mutex<HashMap<i64, CancellationToken>>,
    join_set: tokio::sync::Mutex<JoinSet<()>>,
    shutdown: CancellationToken,
    /// See [`TaskRunner::ended`].
    ended: Arc<tokio::sync::Notify>,
}

/// Starts and tracks tasks.
#[derive(Clone)]
pub struct TaskRunner {
    inner: Arc<Inner>,
}

impl TaskRunner {
    /// A runner for director `director` that keeps task logs under `tasks_dir` and runs at
    /// most `workers` tasks at once.
    pub fn new(
        state: Arc<State>,
        director: &str,
        tasks_dir: PathBuf,
        workers: usize,
    ) -> TaskRunner {
        TaskRunner::with_lock_ttl(state, director, tasks_dir, workers, LOCK_TTL)
    }

    /// [`TaskRunner::new`] with locks that last `lock_ttl` without renewal (tests shorten it).
    pub fn with_lock_ttl(
        state: Arc<State>,
        director: &str,
        tasks_dir: PathBuf,
        workers: usize,
        lock_ttl: Duration,
    ) -> TaskRunner {
        TaskRunner {
            inner: Arc::new(Inner {
                state,
                director: director.to_string(),
                lock_ttl,
                tasks_dir,
                workers: Arc::new(Semaphore::new(workers.max(1))),
                running: Mutex::new(HashMap::new()),
                join_set: tokio::sync::Mutex::new(JoinSet::new()),
                shutdown: CancellationToken::new(),
                ended: Arc::new(tokio::sync::Notify::new()),
            }),
        }
    }

    /// Fires (one stored permit) each time a task ends: what watches the state a task
    /// changes (the DNS records) looks again.
    pub fn ended(&self) -> Arc<tokio::sync::Notify> {
        self.inner.ended.clone()
    }

    /// Where task `id`'s logs are.
    pub fn files(&self, id: TaskId) -> TaskFiles {
        TaskFiles::new(&self.inner.tasks_dir, id.0)
    }

    /// Queues a task and returns its row at once; `job` runs in the background.
    pub async fn submit<F, Fut>(&self, task: NewTask, job: F) -> Result<Task, RunnerError>
    where
        F: FnOnce(TaskContext) -> Fut + Send + 'static,
        Fut: Future<Output = Result<String, TaskError>> + Send + 'static,
    {
        let inner = self.inner.clone();
        let task = NewTask {
            director: Some(inner.director.clone()),
            ..task
        };
        let created = inner.state.tasks().create(&task).await?;
        let files = TaskFiles::new(&inner.tasks_dir, created.id.0);
        let log = files.create().map_err(|source| RunnerError::Logs {
            id: created.id,
            source,
        })?;
        inner
            .state
            .tasks()
            .set_logs(
                created.id,
                &files.path(super::OutputKind::Event),
                &files.path(super::OutputKind::Debug),
            )
            .await?;
        let cancel = inner.shutdown.child_token();
        if let Ok(mut running) = inner.running.lock() {
            running.insert(created.id.0, cancel.clone());
        }
        let id = created.id;
        let runner = inner.clone();
        inner.join_set.lock().await.spawn(async move {
            run(runner, id, log, cancel, job).await;
        });
        Ok(created)
    }

    /// Asks a task to stop at its next checkpoint.
    pub async fn cancel(&self, id: TaskId) -> Result<CancelOutcome, StateError> {
        let Some(task) = self.inner.state.tasks().get(id).await? else {
            return Err(StateError::NotFound {
                object: Object::Task { id },
            });
        };
        if !task.state.is_running() {
            return Ok(CancelOutcome::AlreadyEnded(task.state));
        }
        self.inner
            .state
            .tasks()
            .set_state(id, TaskState::Cancelling, None)
            .await?;
        let token = self
            .inner
            .running
            .lock()
            .ok()
            .and_then(|running| running.get(&id.0).cloned());
        if let Some(token) = token {
            token.cancel();
        }
        Ok(CancelOutcome::Cancelling)
    }

    /// Cancels every task and waits for them to stop (on director shutdown).
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        let mut join_set = self.inner.join_set.lock().await;
        while join_set.join_next().await.is_some() {}
    }
}

async fn run<F, Fut>(inner: Arc<Inner>, id: TaskId, log: TaskLog, cancel: CancellationToken, job: F)
where
    F: FnOnce(TaskContext) -> Fut + Send + 'static,
    Fut: Future<Output = Result<String, TaskError>> + Send + 'static,
{
    let tasks = inner.state.tasks();
    let permit = tokio::select! {
        permit = inner.workers.clone().acquire_owned() => permit.ok(),
        () = cancel.cancelled() => None,
    };
    let locks = Arc::new(Mutex::new(Vec::new()));
    let outcome = match permit {
        None => Err(TaskError::Cancelled),
        Some(_permit) => {
            if let Err(e) = tasks.set_state(id, TaskState::Processing, None).await {
                log.debug(format!("cannot mark task {id} processing: {e}"));
            }
            let context = TaskContext {
                id,
                log: log.clone(),
                cancel: cancel.clone(),
                state: inner.state.clone(),
                locks: locks.clone(),
                lock_ttl: inner.lock_ttl,
            };
            // Renewal outlives the cancel: it stops only once the job has returned.
            let finished = CancellationToken::new();
            let renewing = tokio::spawn(renew_locks(
                inner.state.clone(),
                id,
                locks.clone(),
                inner.lock_ttl,
                cancel.clone(),
                finished.clone(),
            ));
            // Fires when the job returns, and also if it panics (renewal must not outlive it).
            let stop_renewing = finished.drop_guard();
            let outcome = job(context).await;
            drop(stop_renewing);
            match renewing.await {
                Ok(Some(lost)) => Err(TaskError::message(lost)),
                _ => outcome,
            }
        }
    };
    let (state, result) = match outcome {
        Ok(result) => (TaskState::Done, result),
        Err(TaskError::Cancelled) => (TaskState::Cancelled, "task cancelled".to_string()),
        Err(error) => {
            let message = error.to_string();
            log.error(100, &message);
            (TaskState::Error, message)
        }
    };
    let _ = log.result(&result);
    if let Err(e) = inner.state.locks().release_all_for_task(id).await {
        log.debug(format!("cannot release the locks of task {id}: {e}"));
    }
    if let Err(e) = tasks.set_state(id, state, Some(&result)).await {
        log.debug(format!("cannot record the end of task {id}: {e}"));
    }
    if let Ok(mut running) = inner.running.lock() {
        running.remove(&id.0);
    }
    inner.ended.notify_one();
}

/// Renews the task's locks every third of `ttl` until `finished` fires. A lock the task no
/// longer holds cancels the task (through `cancel`) and is answered as the reason it failed.
async fn renew_locks(
    state: Arc<State>,
    id: TaskId,
    locks: Arc<Mutex<Vec<String>>>,
    ttl: Duration,
    cancel: CancellationToken,
    finished: CancellationToken,
) -> Option<String> {
    loop {
        tokio::select! {
            () = tokio::time::sleep(ttl / 3) => {}
            () = finished.cancelled() => return None,
        }
        let names: Vec<String> = locks.lock().map(|l| l.clone()).unwrap_or_default();
        for name in names {
            match state.locks().renew(&name, id, ttl).await {
                Ok(_) => {}
                Err(StateError::LockLost { .. }) => {
                    cancel.cancel();
                    finished.cancelled().await;
                    return Some(format!(
                        "task {id} lost its lock {name} (it expired or was taken while the task \
                         ran) and stopped: what it changed may be incomplete; run it again"
                    ));
                }
                // The database may be back before the lock expires: try again next round.
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use director_core::stemcell::StemcellKey;

    #[test]
    fn lock_keys_keep_their_names_and_descriptions() {
        let cases = [
            (
                LockKey::Deployment("shop".to_string()),
                "deployment:shop",
                "deployment 'shop'",
            ),
            (
                LockKey::Release("hello".to_string()),
                "release:hello",
                "release 'hello'",
            ),
            (
                LockKey::Stemcell(StemcellKey::new("bosh-local", "1.2")),
                "stemcell:bosh-local:1.2",
                "stemcell 'bosh-local/1.2'",
            ),
            (
                LockKey::Disk("disk-1".to_string()),
                "disk:disk-1",
                "disk 'disk-1'",
            ),
            (LockKey::Cleanup, "cleanup", "clean-up"),
        ];
        for (key, name, description) in cases {
            assert_eq!(
                (key.name().as_str(), key.description().as_str()),
                (name, description)
            );
        }
    }

    #[test]
    fn a_failed_task_reads_as_its_error_and_keeps_the_source() {
        #[derive(Debug, thiserror::Error)]
        #[error("attaching disk d to VM v failed: {source}")]
        struct Attach {
            source: std::io::Error,
        }
        let error = TaskError::failed(Attach {
            source: std::io::Error::other("no such VM"),
        });
        assert_eq!(
            error.to_string(),
            "attaching disk d to VM v failed: no such VM"
        );
        let failed = std::error::Error::source(&error).expect("the job's error");
        let cause = failed.source().expect("its source");
        assert_eq!(cause.to_string(), "no such VM");
    }
}
