//! The task runner on a real (SQLite) state database: tasks end done, error or cancelled,
//! write BOSH-shaped event logs, hold locks that a second task cannot take, and release
//! them whatever happens.

use std::sync::Arc;
use std::time::Duration;

use director::tasks::{CancelOutcome, LockKey, OutputKind, TaskError, TaskRunner};
use director_state::{NewTask, State, TaskId, TaskState};

async fn runner() -> (tempfile::TempDir, TaskRunner, Arc<State>) {
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(
        State::open(&format!(
            "sqlite://{}",
            dir.path().join("state.db").display()
        ))
        .await
        .unwrap(),
    );
    let runner = TaskRunner::new(state.clone(), "test", dir.path().join("tasks"), 3);
    (dir, runner, state)
}

fn task(description: &str) -> NewTask {
    NewTask {
        description: description.to_string(),
        deployment: None,
        user: "admin".to_string(),
        context: serde_json::json!({}),
        director: None,
    }
}

async fn wait_for_end(state: &State, id: TaskId) -> director_state::Task {
    for _ in 0..500 {
        let task = state.tasks().get(id).await.unwrap().unwrap();
        if !task.state.is_running() {
            return task;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("task {id} did not end");
}

#[tokio::test]
async fn a_task_runs_and_logs_events() {
    let (_dir, runner, state) = runner().await;
    let queued = runner
        .submit(task("upload release"), |context| async move {
            let stage = context.log.stage("Uploading release", vec![], 1);
            stage.started("hello/0+dev.1", 1);
            context.checkpoint()?;
            stage.finished("hello/0+dev.1", 1);
            Ok("uploaded release hello/0+dev.1".to_string())
        })
        .await
        .unwrap();
    assert_eq!(queued.state, TaskState::Queued);
    let ended = wait_for_end(&state, queued.id).await;
    assert_eq!(ended.state, TaskState::Done);
    assert_eq!(
        ended.result.as_deref(),
        Some("uploaded release hello/0+dev.1")
    );
    let (events, _) = runner
        .files(queued.id)
        .read_from(OutputKind::Event, 0)
        .unwrap();
    let lines: Vec<serde_json::Value> = events
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["stage"], "Uploading release");
    assert_eq!(lines[0]["state"], "started");
    assert_eq!(lines[1]["state"], "finished");
    let (result, _) = runner
        .files(queued.id)
        .read_from(OutputKind::Result, 0)
        .unwrap();
    assert_eq!(result, "uploaded release hello/0+dev.1");
}

#[tokio::test]
async fn a_failing_task_records_its_error() {
    let (_dir, runner, state) = runner().await;
    let queued = runner
        .submit(task("delete release"), |_| async {
            Err(TaskError::Failed("release 'x' is in use".into()))
        })
        .await
        .unwrap();
    let ended = wait_for_end(&state, queued.id).await;
    assert_eq!(
        (ended.state, ended.result.as_deref()),
        (TaskState::Error, Some("release 'x' is in use"))
    );
    let (events, _) = runner
        .files(queued.id)
        .read_from(OutputKind::Event, 0)
        .unwrap();
    assert!(
        events.contains("\"error\":{\"code\":100,\"message\":\"release 'x' is in use\"}"),
        "{events}"
    );
}

#[tokio::test]
async fn locks_keep_a_second_task_out_and_are_released() {
    let (_dir, runner, state) = runner().await;
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (finish_tx, finish_rx) = tokio::sync::oneshot::channel::<()>();
    let first = runner
        .submit(task("upload release"), move |context| async move {
            context.lock(&LockKey::Release("hello".to_string())).await?;
            let _ = started_tx.send(());
            let _ = finish_rx.await;
            Ok("done".to_string())
        })
        .await
        .unwrap();
    started_rx.await.unwrap();
    let second = runner
        .submit(task("upload release"), |context| async move {
            context.lock(&LockKey::Release("hello".to_string())).await?;
            Ok("should not get here".to_string())
        })
        .await
        .unwrap();
    let ended = wait_for_end(&state, second.id).await;
    assert_eq!(ended.state, TaskState::Error);
    assert_eq!(
        ended.result.unwrap(),
        format!(
            "release 'hello' is locked by task {}: wait for it to finish, or stop it with `director cancel-task {}`",
            first.id, first.id
        )
    );
    finish_tx.send(()).unwrap();
    assert_eq!(wait_for_end(&state, first.id).await.state, TaskState::Done);
    assert!(
        state.locks().list().await.unwrap().is_empty(),
        "locks are released when the task ends"
    );
}

#[tokio::test]
async fn cancelling_stops_a_task_at_its_next_checkpoint() {
    let (_dir, runner, state) = runner().await;
    let queued = runner
        .submit(task("long task"), |context| async move {
            context
                .lock(&LockKey::Deployment("shop".to_string()))
                .await?;
            loop {
                context.checkpoint()?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        runner.cancel(queued.id).await.unwrap(),
        CancelOutcome::Cancelling
    );
    let ended = wait_for_end(&state, queued.id).await;
    assert_eq!(ended.state, TaskState::Cancelled);
    assert!(state.locks().list().await.unwrap().is_empty());
    assert!(matches!(
        runner.cancel(queued.id).await.unwrap(),
        CancelOutcome::AlreadyEnded(TaskState::Cancelled)
    ));
}

/// A runner whose locks last 1.5 s without renewal (renewed every 0.5 s).
async fn runner_with_short_locks() -> (tempfile::TempDir, TaskRunner, Arc<State>) {
    let (dir, _, state) = runner().await;
    let runner = TaskRunner::with_lock_ttl(
        state.clone(),
        "test",
        dir.path().join("tasks"),
        3,
        Duration::from_millis(1500),
    );
    (dir, runner, state)
}

#[tokio::test]
async fn a_cancelled_task_keeps_its_locks_until_it_has_stopped() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (_dir, runner, state) = runner_with_short_locks().await;
    let stopped = Arc::new(AtomicBool::new(false));
    let (locked_tx, locked_rx) = tokio::sync::oneshot::channel();
    let first = runner
        .submit(task("create deployment"), {
            let stopped = stopped.clone();
            move |context| async move {
                context
                    .lock(&LockKey::Deployment("shop".to_string()))
                    .await?;
                let _ = locked_tx.send(());
                context.cancellation().cancelled().await;
                // Winding down (a CPI call that cannot be interrupted) for twice the TTL.
                tokio::time::sleep(Duration::from_secs(3)).await;
                stopped.store(true, Ordering::SeqCst);
                Err(TaskError::Cancelled)
            }
        })
        .await
        .unwrap();
    locked_rx.await.unwrap();
    assert_eq!(
        runner.cancel(first.id).await.unwrap(),
        CancelOutcome::Cancelling
    );
    // A second task queued at once waits for the first to stop, then takes the lock.
    let second = runner
        .submit(task("create deployment"), {
            let stopped = stopped.clone();
            move |context| async move {
                context
                    .lock(&LockKey::Deployment("shop".to_string()))
                    .await?;
                Ok(format!(
                    "took the lock; the first task had stopped: {}",
                    stopped.load(Ordering::SeqCst)
                ))
            }
        })
        .await
        .unwrap();
    let second = wait_for_end(&state, second.id).await;
    assert_eq!(second.state, TaskState::Done, "{:?}", second.result);
    assert_eq!(
        second.result.as_deref(),
        Some("took the lock; the first task had stopped: true")
    );
    assert_eq!(
        wait_for_end(&state, first.id).await.state,
        TaskState::Cancelled
    );
}

#[tokio::test]
async fn a_lock_held_by_a_running_task_is_refused_at_once() {
    let (_dir, runner, state) = runner_with_short_locks().await;
    let (locked_tx, locked_rx) = tokio::sync::oneshot::channel();
    let first = runner
        .submit(task("create deployment"), move |context| async move {
            context
                .lock(&LockKey::Deployment("shop".to_string()))
                .await?;
            let _ = locked_tx.send(());
            context.cancellation().cancelled().await;
            Err(TaskError::Cancelled)
        })
        .await
        .unwrap();
    locked_rx.await.unwrap();
    let second = runner
        .submit(task("create deployment"), |context| async move {
            context
                .lock(&LockKey::Deployment("shop".to_string()))
                .await?;
            Ok("took the lock".to_string())
        })
        .await
        .unwrap();
    let second = wait_for_end(&state, second.id).await;
    assert_eq!(second.state, TaskState::Error);
    assert_eq!(
        second.result.unwrap(),
        format!(
            "deployment 'shop' is locked by task {}: wait for it to finish, or stop it with `director cancel-task {}`",
            first.id, first.id
        )
    );
    runner.cancel(first.id).await.unwrap();
    wait_for_end(&state, first.id).await;
}

#[tokio::test]
async fn a_task_that_loses_its_lock_stops_with_an_error() {
    let (_dir, runner, state) = runner_with_short_locks().await;
    let (locked_tx, locked_rx) = tokio::sync::oneshot::channel();
    let queued = runner
        .submit(task("create deployment"), move |context| async move {
            context
                .lock(&LockKey::Deployment("shop".to_string()))
                .await?;
            let _ = locked_tx.send(());
            for _ in 0..200 {
                context.checkpoint()?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok("ran to the end".to_string())
        })
        .await
        .unwrap();
    locked_rx.await.unwrap();
    // Another hand frees the lock behind the task's back.
    assert!(
        state
            .locks()
            .release("deployment:shop", queued.id)
            .await
            .unwrap()
    );
    let ended = wait_for_end(&state, queued.id).await;
    assert_eq!(ended.state, TaskState::Error);
    assert_eq!(
        ended.result.unwrap(),
        format!(
            "task {} lost its lock deployment:shop (it expired or was taken while the task ran) and stopped: what it changed may be incomplete; run it again",
            queued.id
        )
    );
}

#[tokio::test]
async fn tasks_record_the_director_that_runs_them() {
    let (_dir, runner, state) = runner().await;
    let queued = runner
        .submit(task("upload release"), |_| async { Ok(String::new()) })
        .await
        .unwrap();
    assert_eq!(queued.director.as_deref(), Some("test"));
    wait_for_end(&state, queued.id).await;
}
