//! The real `bosh-agent` against Debian's `nats-server`, driven as the director drives it.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use agent_protocol::{CompileRequest, CompileResult, Heartbeat, UploadedBlob};
use futures::StreamExt;
use serde_json::{Value, json};
use support::{Harness, alive, eventually, group_members, untgz};

const LOOP: &str = "#!/bin/sh\nwhile true; do echo tick; sleep 0.2; done\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_state_heartbeats_and_unknown_methods() {
    let harness = Harness::start().await;
    let mut heartbeats = harness
        .client
        .subscribe(format!("hm.agent.heartbeat.{}", harness.agent_id))
        .await
        .unwrap();

    assert_eq!(harness.ok("ping", vec![]).await, "pong");
    let state = harness.state().await;
    assert_eq!(state.agent_id, harness.agent_id);
    assert_eq!(state.job_state, "stopped");
    assert!(state.processes.is_empty());
    assert_eq!(state.vitals.load.len(), 3);
    assert!(state.vitals.disk.contains_key("system"));
    assert!(state.vitals.disk.contains_key("ephemeral"));
    assert!(!state.vitals.disk.contains_key("persistent"));

    let message = tokio::time::timeout(Duration::from_secs(5), heartbeats.next())
        .await
        .expect("a heartbeat within 5 s")
        .unwrap();
    let heartbeat: Heartbeat = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(heartbeat.job_state, "stopped");
    assert_eq!(heartbeat.number_of_processes, 0);
    assert!(heartbeat.vitals.mem.contains_key("percent"));

    let error = harness.call("frobnicate", vec![]).await.unwrap_err();
    assert_eq!(error, "bad arguments for frobnicate: unknown method");
    let error = harness
        .call("apply", vec![json!("nope")])
        .await
        .unwrap_err();
    assert!(
        error.starts_with("bad arguments for apply: argument 1:"),
        "{error}"
    );

    // The bus password is never logged.
    let log = harness.agent_log();
    assert!(log.contains("agent-1:<redacted>@127.0.0.1"), "{log}");
    assert!(!log.contains(support::AGENT_PASSWORD), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_start_restart_after_kill_and_stop() {
    let harness = Harness::start().await;
    let root = harness.root.clone();
    let tools = harness.package(
        "tools",
        "f00d.1",
        &[("bin/hello", "#!/bin/sh\necho hi\n", 0o755)],
    );
    let bpm = harness.bpm("web", "server", "server", "");
    let web = harness.job(
        "web",
        &[("bin/server", LOOP, 0o644), ("config/bpm.yml", &bpm, 0o644)],
        &["tools"],
    );
    let spec = harness.spec(vec![web.clone()], vec![tools]);
    // `prepare` downloads and unpacks, switching nothing.
    let prepared = harness
        .ok("prepare", vec![serde_json::to_value(&spec).unwrap()])
        .await;
    assert_eq!(prepared, "prepared");
    assert!(root.join("data/jobs/web").join(&web.rendered.id).is_dir());
    assert!(root.join("data/packages/tools/f00d.1/bin/hello").is_file());
    assert!(!root.join("jobs/web").exists());
    assert!(!root.join("packages/tools").exists());
    harness.apply(&spec).await;

    // BOSH's layout.
    let job_dir = root.join("data/jobs/web").join(&web.rendered.id);
    assert_eq!(std::fs::read_link(root.join("jobs/web")).unwrap(), job_dir);
    assert_eq!(
        std::fs::read_link(root.join("packages/tools")).unwrap(),
        root.join("data/packages/tools/f00d.1")
    );
    assert!(root.join("jobs/web/packages/tools/bin/hello").is_file());
    let mode = std::fs::metadata(root.join("jobs/web/bin/server"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "bin/* is executable");
    for dir in ["data/web/tmp", "sys/log/web", "sys/run/web"] {
        assert!(root.join(dir).is_dir(), "{dir}");
    }
    let recorded: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("bosh/spec.json")).unwrap())
            .unwrap();
    assert_eq!(recorded["jobs"][0]["name"], "web");
    let state = harness.state().await;
    assert_eq!(
        (state.deployment.as_str(), state.configuration_hash.as_str()),
        ("test", "hash-1")
    );

    assert_eq!(harness.ok("start", vec![]).await, "started");
    let pid = harness.running_pid("web", "server").await;
    let state = harness.state().await;
    assert_eq!(state.job_state, "running");
    assert_eq!(state.processes[0].restarts, 0);
    let pid_file = root.join("sys/run/web/server.pid");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        pid.to_string()
    );
    let stdout = root.join("sys/log/web/server.stdout.log");
    eventually("ticks in the stdout log", Duration::from_secs(5), || {
        std::fs::read_to_string(&stdout)
            .unwrap_or_default()
            .contains("tick")
    })
    .await;

    // Killed from outside: restarted after a backoff, counted.
    support::signal(pid, rustix::process::Signal::KILL);
    let state = harness
        .wait_state("a restart", Duration::from_secs(10), |s| {
            s.processes[0].restarts == 1 && s.processes[0].state == "running"
        })
        .await;
    let new_pid = state.processes[0].pid.unwrap();
    assert_ne!(new_pid, pid);
    assert_eq!(
        state.processes[0].last_exit.as_deref(),
        Some("killed by signal 9")
    );
    assert_eq!(state.job_state, "running");

    assert_eq!(harness.ok("stop", vec![]).await, "stopped");
    let state = harness.state().await;
    assert_eq!(state.job_state, "stopped");
    assert_eq!(state.processes[0].state, "stopped");
    assert_eq!(state.processes[0].pid, None);
    assert!(!alive(new_pid));
    assert!(!pid_file.exists());

    // A spec without the job removes it and its packages; logs and data stay.
    harness.apply(&harness.spec(vec![], vec![])).await;
    assert!(!root.join("jobs/web").exists());
    assert!(!root.join("data/jobs/web").exists());
    assert!(!root.join("packages/tools").exists());
    assert!(!root.join("data/packages/tools").exists());
    assert!(stdout.exists());
    assert!(harness.state().await.processes.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_exits_fails_with_its_stderr() {
    let harness = Harness::start().await;
    let script = "#!/bin/sh\necho starting\necho 'line 1' >&2\necho 'config missing: /var/vcap/jobs/web/config/app.yml' >&2\nexit 3\n";
    let bpm = harness.bpm("web", "server", "server", "");
    let web = harness.job(
        "web",
        &[
            ("bin/server", script, 0o755),
            ("config/bpm.yml", &bpm, 0o644),
        ],
        &[],
    );
    harness.apply(&harness.spec(vec![web], vec![])).await;
    harness.ok("start", vec![]).await;
    let state = harness
        .wait_state("failing", Duration::from_secs(10), |s| {
            s.job_state == "failing"
        })
        .await;
    let process = &state.processes[0];
    assert_eq!(process.state, "failing");
    assert_eq!(process.pid, None);
    assert_eq!(process.last_exit.as_deref(), Some("exited with status 3"));
    assert_eq!(
        process.last_stderr.last().map(String::as_str),
        Some("config missing: /var/vcap/jobs/web/config/app.yml")
    );
    assert!(process.last_stderr.contains(&"line 1".to_string()));
    // It keeps being restarted, backing off.
    harness
        .wait_state("a restart", Duration::from_secs(5), |s| {
            s.processes[0].restarts >= 1
        })
        .await;
    harness.ok("stop", vec![]).await;
    assert_eq!(harness.state().await.job_state, "stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_signals_waits_the_grace_then_kills_the_group() {
    let harness = Harness::start().await;
    // Ignores TERM, and has a child in its group that ignores it too.
    let script = "#!/bin/sh\ntrap '' TERM\nsleep 1000 &\nwhile true; do sleep 0.1; done\n";
    let graceful = "#!/bin/sh\ntrap 'echo bye; exit 0' INT\nwhile true; do sleep 0.1; done\n";
    let bpm = format!(
        "{}{}",
        harness.bpm("web", "stubborn", "stubborn", ""),
        harness
            .bpm("web", "polite", "polite", "shutdown_signal: INT")
            .trim_start_matches("processes:\n")
    );
    let web = harness.job(
        "web",
        &[
            ("bin/stubborn", script, 0o755),
            ("bin/polite", graceful, 0o755),
            ("config/bpm.yml", &bpm, 0o644),
        ],
        &[],
    );
    harness.apply(&harness.spec(vec![web], vec![])).await;
    harness.ok("start", vec![]).await;
    let stubborn = harness.running_pid("web", "stubborn").await;
    let polite = harness.running_pid("web", "polite").await;
    eventually("the child in the group", Duration::from_secs(5), || {
        group_members(stubborn).len() >= 2
    })
    .await;
    let members = group_members(stubborn);

    let started = Instant::now();
    harness.ok("stop", vec![]).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "stop waited the grace of 1 s: {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "stop killed after the grace: {took:?}"
    );
    for pid in members {
        assert!(!alive(pid), "{pid} of the group was killed");
    }
    assert!(!alive(polite));
    let state = harness.state().await;
    let by_name = |name: &str| {
        state
            .processes
            .iter()
            .find(|p| p.name == name)
            .unwrap()
            .clone()
    };
    assert_eq!(
        by_name("stubborn").last_exit.as_deref(),
        Some("killed by signal 9")
    );
    assert_eq!(
        by_name("polite").last_exit.as_deref(),
        Some("exited with status 0")
    );
    let log = std::fs::read_to_string(harness.root.join("sys/log/web/polite.stdout.log")).unwrap();
    assert!(log.contains("bye"), "INT reached the polite process: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_get_limits_and_only_their_environment() {
    let harness = Harness::start().await;
    let script = "#!/bin/sh\necho \"nofile=$(ulimit -n) foo=$FOO tmp=$TMPDIR home=$HOME pwd=$(pwd) secret=$AGENT_ONLY_SECRET\"\nwhile true; do sleep 1; done\n";
    let bpm = harness.bpm(
        "web",
        "server",
        "server",
        "env: {FOO: bar}\nlimits: {open_files: 64}",
    );
    let web = harness.job(
        "web",
        &[
            ("bin/server", script, 0o755),
            ("config/bpm.yml", &bpm, 0o644),
        ],
        &[],
    );
    harness.apply(&harness.spec(vec![web], vec![])).await;
    harness.ok("start", vec![]).await;
    harness.running_pid("web", "server").await;
    let stdout = harness.root.join("sys/log/web/server.stdout.log");
    eventually("the process's report", Duration::from_secs(5), || {
        std::fs::read_to_string(&stdout)
            .unwrap_or_default()
            .contains("nofile=")
    })
    .await;
    let root = harness.root.display();
    // The working directory is the job's directory (the shell shows where its link points).
    let job_dir = std::fs::canonicalize(harness.root.join("jobs/web")).unwrap();
    let line = std::fs::read_to_string(&stdout).unwrap();
    assert_eq!(
        line.trim(),
        format!(
            "nofile=64 foo=bar tmp={root}/data/web/tmp home={root}/data/web pwd={} secret=",
            job_dir.display()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_scripts_run_in_parallel_and_failures_name_the_job() {
    let harness = Harness::start().await;
    let out = harness.root.join("data/web/pre-start.out");
    let pre_start = format!(
        "#!/bin/sh\necho 'pre-start ran'\necho \"$GREETING $BOSH_VM_NEXT_STATE\" > {}\n",
        out.display()
    );
    let post_start =
        "#!/bin/sh\necho 'checking'\necho 'post-start: cannot reach the database' >&2\nexit 7\n";
    let web = harness.job(
        "web",
        &[
            ("bin/pre-start", &pre_start, 0o755),
            ("bin/post-start", post_start, 0o755),
        ],
        &[],
    );
    let worker = harness.job(
        "worker",
        &[("bin/pre-start", "#!/bin/sh\nexit 0\n", 0o755)],
        &[],
    );
    harness
        .apply(&harness.spec(vec![web, worker], vec![]))
        .await;

    let answer = harness
        .ok(
            "run_script",
            vec![
                json!("pre-start"),
                json!({"env": {"GREETING": "hello", "BOSH_VM_NEXT_STATE": "keep"}}),
            ],
        )
        .await;
    assert_eq!(answer, json!({}));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "hello keep\n");
    let log = harness.root.join("sys/log/web/pre-start.stdout.log");
    assert_eq!(std::fs::read_to_string(log).unwrap(), "pre-start ran\n");

    let error = harness
        .call("run_script", vec![json!("post-start"), json!({})])
        .await
        .unwrap_err();
    assert_eq!(
        error,
        "post-start script of job 'web' exited with status 7: post-start: cannot reach the database"
    );
    // Jobs without the script are fine; unknown scripts are not.
    assert_eq!(
        harness
            .ok("run_script", vec![json!("post-deploy"), json!({})])
            .await,
        json!({})
    );
    let error = harness
        .call("run_script", vec![json!("rm-rf"), json!({})])
        .await
        .unwrap_err();
    assert!(error.contains("unknown script \"rm-rf\""), "{error}");

    // The logs, archived and uploaded.
    let url = harness.blobs.upload_url("logs");
    let uploaded: UploadedBlob =
        serde_json::from_value(harness.ok("fetch_logs", vec![json!(url)]).await).unwrap();
    let bytes = harness.blobs.uploaded("logs").unwrap();
    assert_eq!(uploaded.blob_id, support::sha256(&bytes));
    let files = untgz(&bytes);
    assert!(
        files.iter().any(
            |(path, content)| path.ends_with("web/post-start.stderr.log")
                && content.contains("cannot reach the database")
        ),
        "{files:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_static_dynamic_and_broken() {
    let harness = Harness::start().await;
    let calls = harness.root.join("data/web/drain.calls");
    let job_with_drain = |drain: &str| harness.job("web", &[("bin/drain", drain, 0o755)], &[]);

    // Static: the agent waits the seconds itself and answers 0.
    let record = format!(
        "echo \"$1 $2 $BOSH_JOB_STATE $BOSH_JOB_NEXT_STATE\" >> {}\n",
        calls.display()
    );
    let static_drain = format!("#!/bin/sh\n{record}echo 1\n");
    let spec = harness.spec(vec![job_with_drain(&static_drain)], vec![]);
    harness.apply(&spec).await;
    let mut next = spec.clone();
    next.configuration_hash = "hash-2".to_string();
    next.persistent_disk = 0;
    let started = Instant::now();
    let answer = harness
        .ok(
            "drain",
            vec![json!("update"), serde_json::to_value(&next).unwrap()],
        )
        .await;
    assert_eq!(answer, 0);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the agent waited 1 s"
    );
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap(),
        "job_unchanged hash_changed {\"persistent_disk\":1024} {\"persistent_disk\":0}\n"
    );

    // Dynamic: -1 is answered, then `status` asks again with job_check_status.
    std::fs::remove_file(&calls).unwrap();
    let dynamic_drain = format!(
        "#!/bin/sh\n{record}if [ \"$1\" = job_check_status ]; then echo 0; else echo -1; fi\n"
    );
    harness
        .apply(&harness.spec(vec![job_with_drain(&dynamic_drain)], vec![]))
        .await;
    assert_eq!(harness.ok("drain", vec![json!("shutdown")]).await, -1);
    assert_eq!(harness.ok("drain", vec![json!("status")]).await, 0);
    let recorded = std::fs::read_to_string(&calls).unwrap();
    let lines: Vec<&str> = recorded.lines().collect();
    assert_eq!(lines.len(), 2, "{recorded}");
    assert!(
        lines[0].starts_with("job_shutdown hash_unchanged"),
        "{recorded}"
    );
    assert!(
        lines[1].starts_with("job_check_status hash_unchanged"),
        "{recorded}"
    );

    // Output that is no integer, and a failing script.
    let chatty = "#!/bin/sh\necho 'draining connections'\n";
    harness
        .apply(&harness.spec(vec![job_with_drain(chatty)], vec![]))
        .await;
    let error = harness
        .call("drain", vec![json!("shutdown")])
        .await
        .unwrap_err();
    assert_eq!(
        error,
        "drain script of job 'web' printed \"draining connections\", expected an integer"
    );
    let failing = "#!/bin/sh\necho 5\necho 'lost the lock' >&2\nexit 2\n";
    harness
        .apply(&harness.spec(vec![job_with_drain(failing)], vec![]))
        .await;
    let error = harness
        .call("drain", vec![json!("shutdown")])
        .await
        .unwrap_err();
    assert_eq!(
        error,
        "drain script of job 'web' exited with status 2, output \"5\": lost the lock"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compile_package_with_a_dependency_and_upload() {
    let harness = Harness::start().await;
    let dependency = harness.package(
        "libgreet",
        "abc.1",
        &[("lib/greeting.txt", "hello from libgreet\n", 0o644)],
    );
    let packaging = "set -e\n\
        mkdir -p \"$BOSH_INSTALL_TARGET/bin\"\n\
        cp \"$BOSH_PACKAGES_DIR/libgreet/lib/greeting.txt\" \"$BOSH_INSTALL_TARGET/greeting.txt\"\n\
        cp src/main.sh \"$BOSH_INSTALL_TARGET/bin/main\"\n\
        echo \"compiled $BOSH_PACKAGE_NAME $BOSH_PACKAGE_VERSION in $(basename $BOSH_COMPILE_TARGET)\"\n";
    let source = harness.blobs.add(support::tgz(&[
        ("packaging", packaging, 0o644),
        ("src/main.sh", "#!/bin/sh\necho main\n", 0o755),
    ]));
    let request = CompileRequest {
        name: "app".to_string(),
        version: "def.1".to_string(),
        source,
        dependencies: [("libgreet".to_string(), dependency.clone())].into(),
        upload_url: harness.blobs.upload_url("app"),
    };
    let result: CompileResult = serde_json::from_value(
        harness
            .ok(
                "compile_package",
                vec![serde_json::to_value(&request).unwrap()],
            )
            .await,
    )
    .unwrap();
    let uploaded = harness
        .blobs
        .uploaded("app")
        .expect("the compiled package was uploaded");
    assert_eq!(result.blob_id, support::sha256(&uploaded));
    assert_eq!(result.size, uploaded.len() as u64);
    assert_eq!(result.log_tail, ["compiled app def.1 in app"]);
    let mut files = untgz(&uploaded);
    files.sort();
    assert_eq!(
        files,
        [
            ("bin/main".to_string(), "#!/bin/sh\necho main\n".to_string()),
            (
                "greeting.txt".to_string(),
                "hello from libgreet\n".to_string()
            ),
        ]
    );
    // The dependency stays installed; the compile and install directories are gone.
    assert!(
        harness
            .root
            .join("packages/libgreet/lib/greeting.txt")
            .is_file()
    );
    assert!(!harness.root.join("data/compile/app").exists());
    assert!(!harness.root.join("packages/app").exists());

    // A failing build reports the end of its output.
    let broken = harness.blobs.add(support::tgz(&[(
        "packaging",
        "echo 'checking for foo.h'\necho 'error: foo.h: No such file or directory' >&2\nexit 4\n",
        0o644,
    )]));
    let request = CompileRequest {
        source: broken,
        dependencies: Default::default(),
        ..request
    };
    let error = harness
        .call(
            "compile_package",
            vec![serde_json::to_value(&request).unwrap()],
        )
        .await
        .unwrap_err();
    assert_eq!(
        error,
        "compiling package 'app': packaging exited with status 4; last 2 lines of its output:\n\
         checking for foo.h\nerror: foo.h: No such file or directory"
    );

    // A blob that does not hash to its id is refused; the signature stays out of the message.
    let mut tampered = dependency.clone();
    tampered.version = "abc.2".to_string();
    tampered.blob.id = "0".repeat(64);
    let request = CompileRequest {
        dependencies: [("libgreet".to_string(), tampered)].into(),
        ..request
    };
    let error = harness
        .call(
            "compile_package",
            vec![serde_json::to_value(&request).unwrap()],
        )
        .await
        .unwrap_err();
    assert!(
        error.starts_with("package 'libgreet': sha256 of the downloaded blob is "),
        "{error}"
    );
    assert!(!error.contains("s3cr3t"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_disk_keeps_its_data_across_unmount_and_mount() {
    let harness = Harness::start().await;
    let disk = harness.dir.path().join("disks/disk-1");
    std::fs::create_dir_all(&disk).unwrap();
    let store = harness.root.join("store");

    let error = harness
        .call("mount_disk", vec![json!("disk-1")])
        .await
        .unwrap_err();
    assert_eq!(
        error,
        "cannot mount disk disk-1: the settings do not name it"
    );
    let answer = harness
        .ok(
            "update_settings",
            vec![json!({"disks": {"persistent": {"disk-1": {"path": disk}}}})],
        )
        .await;
    assert_eq!(answer, "updated");
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(&harness.settings_path).unwrap()).unwrap();
    assert_eq!(saved["disks"]["persistent"]["disk-1"]["path"], json!(disk));
    assert_eq!(saved["agent_id"], json!(harness.agent_id));

    assert_eq!(
        harness.ok("mount_disk", vec![json!("disk-1")]).await,
        "mounted"
    );
    assert_eq!(harness.ok("list_disk", vec![]).await, json!(["disk-1"]));
    assert_eq!(std::fs::read_link(&store).unwrap(), disk);
    std::fs::write(store.join("data.txt"), "precious").unwrap();
    assert!(harness.state().await.vitals.disk.contains_key("persistent"));

    assert_eq!(
        harness.ok("unmount_disk", vec![json!("disk-1")]).await,
        "unmounted"
    );
    assert_eq!(harness.ok("list_disk", vec![]).await, json!([]));
    assert!(store.is_dir() && std::fs::read_dir(&store).unwrap().next().is_none());
    assert_eq!(
        std::fs::read_to_string(disk.join("data.txt")).unwrap(),
        "precious"
    );

    harness.ok("mount_disk", vec![json!("disk-1")]).await;
    assert_eq!(
        std::fs::read_to_string(store.join("data.txt")).unwrap(),
        "precious"
    );
    // Mounting it again is a no-op.
    assert_eq!(
        harness.ok("mount_disk", vec![json!("disk-1")]).await,
        "mounted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_recovers_its_processes() {
    let mut harness = Harness::start().await;
    // Survives its agent: ignores the broken pipe its log writes get then.
    let script = "#!/bin/sh\ntrap '' PIPE\nwhile true; do echo tick 2>/dev/null; sleep 0.2; done\n";
    let bpm = harness.bpm("web", "server", "server", "");
    let web = harness.job(
        "web",
        &[
            ("bin/server", script, 0o755),
            ("config/bpm.yml", &bpm, 0o644),
        ],
        &[],
    );
    harness.apply(&harness.spec(vec![web], vec![])).await;
    harness.ok("start", vec![]).await;
    let old = harness.running_pid("web", "server").await;

    harness.kill_agent();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(alive(old), "the process outlives a killed agent");

    harness.spawn_agent().await;
    let new = harness.running_pid("web", "server").await;
    assert_ne!(new, old);
    assert!(!alive(old), "the new agent stopped the old process");
    let state = harness.state().await;
    assert_eq!(state.deployment, "test", "the applied spec is remembered");
    assert_eq!(state.processes.len(), 1);

    // SIGTERM stops the processes with the agent; the next agent starts them again.
    let status = harness.terminate_agent();
    assert!(status.success(), "{status:?}");
    assert!(!alive(new));
    harness.spawn_agent().await;
    harness.running_pid("web", "server").await;

    // After `stop`, a restarted agent leaves the jobs stopped.
    harness.ok("stop", vec![]).await;
    harness.kill_agent();
    harness.spawn_agent().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let state = harness.state().await;
    assert_eq!(state.job_state, "stopped");
    assert!(state.processes.is_empty());
    assert!(Path::new(&harness.root.join("jobs/web")).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_disk_is_bind_mounted_in_a_private_mount_namespace() {
    let mut harness = Harness::start_in_mount_namespace().await;
    let disk = harness.dir.path().join("disks/disk-1");
    std::fs::create_dir_all(&disk).unwrap();
    std::fs::write(disk.join("data.txt"), "precious").unwrap();
    harness
        .ok(
            "update_settings",
            vec![json!({"disks": {"persistent": {"disk-1": {"path": disk}}}})],
        )
        .await;
    assert_eq!(
        harness.ok("mount_disk", vec![json!("disk-1")]).await,
        "mounted"
    );
    assert_eq!(harness.ok("list_disk", vec![]).await, json!(["disk-1"]));

    // Outside the agent's namespace the store is a plain empty directory; inside it shows
    // the disk.
    let store = harness.root.join("store");
    assert!(std::fs::symlink_metadata(&store).unwrap().is_dir());
    assert!(std::fs::read_dir(&store).unwrap().next().is_none());
    let inside =
        |pid: u32| Path::new(&format!("/proc/{pid}/root")).join(store.strip_prefix("/").unwrap());
    let seen = inside(harness.agent_pid());
    assert_eq!(
        std::fs::read_to_string(seen.join("data.txt")).unwrap(),
        "precious"
    );
    std::fs::write(seen.join("written-inside.txt"), "also kept").unwrap();
    assert!(disk.join("written-inside.txt").is_file());

    assert_eq!(
        harness.ok("unmount_disk", vec![json!("disk-1")]).await,
        "unmounted"
    );
    assert!(!seen.join("data.txt").exists());
    assert_eq!(harness.ok("list_disk", vec![]).await, json!([]));
    assert_eq!(
        std::fs::read_to_string(disk.join("data.txt")).unwrap(),
        "precious"
    );

    // A restarted agent (a new namespace) mounts the disk it had mounted again.
    harness.ok("mount_disk", vec![json!("disk-1")]).await;
    harness.kill_agent();
    harness.spawn_agent().await;
    assert_eq!(harness.ok("list_disk", vec![]).await, json!(["disk-1"]));
    let seen = inside(harness.agent_pid());
    assert_eq!(
        std::fs::read_to_string(seen.join("data.txt")).unwrap(),
        "precious"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_disk_copies_everything_to_the_new_disk_and_mounts_it() {
    let harness = Harness::start_in_mount_namespace().await;
    let old = harness.dir.path().join("disks/disk-old");
    let new = harness.dir.path().join("disks/disk-new");
    std::fs::create_dir_all(old.join("data/nested")).unwrap();
    std::fs::create_dir_all(&new).unwrap();
    std::fs::write(old.join("data/nested/file.txt"), "precious").unwrap();
    std::fs::write(old.join(".hidden"), "dot files too").unwrap();
    std::fs::set_permissions(
        old.join("data/nested/file.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::os::unix::fs::symlink("nested/file.txt", old.join("data/link")).unwrap();
    harness
        .ok(
            "update_settings",
            vec![json!({"disks": {"persistent": {
                "disk-old": {"path": old}, "disk-new": {"path": new}}}})],
        )
        .await;

    // The old disk must be mounted, the new one named by the settings.
    let error = harness
        .call("migrate_disk", vec![json!("disk-old"), json!("disk-new")])
        .await
        .unwrap_err();
    assert!(
        error.starts_with("cannot migrate disk disk-old: it is not mounted at "),
        "{error}"
    );
    harness.ok("mount_disk", vec![json!("disk-old")]).await;
    let error = harness
        .call("migrate_disk", vec![json!("disk-old"), json!("disk-x")])
        .await
        .unwrap_err();
    assert_eq!(
        error,
        "cannot migrate to disk disk-x: the settings do not name it"
    );
    // A new disk that already holds files is never mixed into.
    std::fs::write(new.join("stray"), "x").unwrap();
    let error = harness
        .call("migrate_disk", vec![json!("disk-old"), json!("disk-new")])
        .await
        .unwrap_err();
    assert!(error.ends_with("is not empty"), "{error}");
    assert_eq!(harness.ok("list_disk", vec![]).await, json!(["disk-old"]));
    std::fs::remove_file(new.join("stray")).unwrap();

    assert_eq!(
        harness
            .ok("migrate_disk", vec![json!("disk-old"), json!("disk-new")])
            .await,
        json!({})
    );
    assert_eq!(harness.ok("list_disk", vec![]).await, json!(["disk-new"]));
    let file = new.join("data/nested/file.txt");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::read_link(new.join("data/link")).unwrap(),
        Path::new("nested/file.txt")
    );
    assert_eq!(
        std::fs::read_to_string(new.join(".hidden")).unwrap(),
        "dot files too"
    );
    // The store inside the agent's namespace shows the new disk; the old one is untouched.
    let store = harness.root.join("store");
    let seen = Path::new(&format!("/proc/{}/root", harness.agent_pid()))
        .join(store.strip_prefix("/").unwrap());
    std::fs::write(seen.join("after.txt"), "on the new disk").unwrap();
    assert!(new.join("after.txt").is_file());
    assert!(!old.join("after.txt").exists());
    assert_eq!(
        std::fs::read_to_string(old.join("data/nested/file.txt")).unwrap(),
        "precious"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_errand_answers_the_exit_code_and_what_the_errand_wrote() {
    let harness = Harness::start().await;
    let smoke = harness.job(
        "smoke",
        &[(
            "bin/run",
            "#!/bin/sh\necho \"checking $TARGET\"\necho 'all good' \necho 'a warning' >&2\n",
            0o755,
        )],
        &[],
    );
    let broken = harness.job(
        "broken",
        &[(
            "bin/run",
            "#!/bin/sh\necho 'trying'\necho 'it broke' >&2\nexit 3\n",
            0o755,
        )],
        &[],
    );
    let plain = harness.job("plain", &[("bin/pre-start", "#!/bin/sh\n", 0o755)], &[]);
    harness
        .apply(&harness.spec(vec![smoke, plain, broken], vec![]))
        .await;

    let one = harness
        .ok(
            "run_errand",
            vec![json!("smoke"), json!({"env": {"TARGET": "web"}})],
        )
        .await;
    assert_eq!(
        one,
        json!({"exit_code": 0, "stdout": "checking web\nall good\n", "stderr": "a warning\n"})
    );
    // Run again: only this run's output is answered (the logs keep both).
    let again = harness
        .ok(
            "run_errand",
            vec![json!("smoke"), json!({"env": {"TARGET": "db"}})],
        )
        .await;
    assert_eq!(again["stdout"], "checking db\nall good\n");
    assert_eq!(
        std::fs::read_to_string(harness.root.join("sys/log/smoke/run.stdout.log")).unwrap(),
        "checking web\nall good\nchecking db\nall good\n"
    );

    // Every job with a bin/run, in order; a non-zero exit is a result, not an error.
    let all = harness.ok("run_errand", vec![]).await;
    assert_eq!(all["exit_code"], 3);
    assert_eq!(
        all["stdout"],
        "==> smoke <==\nchecking \nall good\n==> broken <==\ntrying\n"
    );
    assert_eq!(
        all["stderr"],
        "==> smoke <==\na warning\n==> broken <==\nit broke\n"
    );

    let error = harness
        .call("run_errand", vec![json!("web")])
        .await
        .unwrap_err();
    assert!(error.contains("job 'web' is not applied here"), "{error}");
    let error = harness
        .call("run_errand", vec![json!("plain")])
        .await
        .unwrap_err();
    assert!(
        error.ends_with("no errand to run: job 'plain' has no bin/run"),
        "{error}"
    );
    // An errand is not a lifecycle script.
    let error = harness
        .call("run_script", vec![json!("run"), json!({})])
        .await
        .unwrap_err();
    assert!(error.contains("unknown script \"run\""), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_refuses_package_keys_that_are_not_the_packages_names() {
    let harness = Harness::start().await;
    let escaping = harness.package("x", "1", &[("file", "x\n", 0o644)]);
    let web = harness.job("web", &[("bin/pre-start", "#!/bin/sh\n", 0o755)], &[]);
    for (key, expected) in [
        (
            "../../../../escaped",
            "package name \"../../../../escaped\" is not a plain file name",
        ),
        (
            "y",
            "apply spec: package key \"y\" names package \"x\"; a package must be listed under its own name",
        ),
    ] {
        let mut job = web.clone();
        job.packages = vec![key.to_string()];
        let mut spec = harness.spec(vec![job], vec![]);
        spec.packages.insert(key.to_string(), escaping.clone());
        let error = harness
            .call("apply", vec![serde_json::to_value(&spec).unwrap()])
            .await
            .unwrap_err();
        assert_eq!(error, expected);
    }
    assert!(!harness.root.join("jobs/web").exists());
    assert!(!harness.dir.path().join("escaped").exists());
    assert!(!harness.root.join("escaped").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_files_lose_setuid_bits_and_rendered_files_are_private() {
    let harness = Harness::start().await;
    let tool = harness.package(
        "tool",
        "1",
        &[
            ("bin/tool", "#!/bin/sh\n", 0o6755),
            ("share/data", "x\n", 0o644),
        ],
    );
    let web = harness.job(
        "web",
        &[
            ("bin/pre-start", "#!/bin/sh\n", 0o4755),
            ("config/app.yml", "password: s3cr3t\n", 0o644),
        ],
        &["tool"],
    );
    harness.apply(&harness.spec(vec![web], vec![tool])).await;
    let mode = |path: &str| {
        std::fs::metadata(harness.root.join(path))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("packages/tool/bin/tool"), 0o755);
    assert_eq!(mode("packages/tool/share/data"), 0o644);
    assert_eq!(mode("jobs/web/bin/pre-start"), 0o755);
    assert_eq!(mode("jobs/web/config/app.yml"), 0o640);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_errands_and_packaging_do_not_see_the_agents_environment() {
    // The harness starts the agent with AGENT_ONLY_SECRET in its environment.
    let harness = Harness::start().await;
    let report =
        "#!/bin/sh\necho \"secret=$AGENT_ONLY_SECRET path=$PATH home=$HOME given=$GIVEN\"\n";
    let web = harness.job(
        "web",
        &[("bin/pre-start", report, 0o755), ("bin/run", report, 0o755)],
        &[],
    );
    harness.apply(&harness.spec(vec![web], vec![])).await;
    let root = harness.root.display();
    let expected = format!(
        "secret= path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
         home={root}/data/web given=yes\n"
    );

    harness
        .ok(
            "run_script",
            vec![json!("pre-start"), json!({"env": {"GIVEN": "yes"}})],
        )
        .await;
    let log = harness.root.join("sys/log/web/pre-start.stdout.log");
    assert_eq!(std::fs::read_to_string(log).unwrap(), expected);

    let errand = harness
        .ok(
            "run_errand",
            vec![json!("web"), json!({"env": {"GIVEN": "yes"}})],
        )
        .await;
    assert_eq!(errand["stdout"], expected);

    let source = harness.blobs.add(support::tgz(&[(
        "packaging",
        "echo \"secret=$AGENT_ONLY_SECRET name=$BOSH_PACKAGE_NAME\"\n",
        0o644,
    )]));
    let request = CompileRequest {
        name: "app".to_string(),
        version: "1".to_string(),
        source,
        dependencies: Default::default(),
        upload_url: harness.blobs.upload_url("app"),
    };
    let result: CompileResult = serde_json::from_value(
        harness
            .ok(
                "compile_package",
                vec![serde_json::to_value(&request).unwrap()],
            )
            .await,
    )
    .unwrap();
    assert_eq!(result.log_tail, ["secret= name=app"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bpm_settings_the_agent_cannot_apply_are_refused_at_apply() {
    let harness = Harness::start().await;
    let bpm = harness.bpm(
        "web",
        "server",
        "server",
        "capabilities: [NET_BIND_SERVICE]",
    );
    let web = harness.job(
        "web",
        &[("bin/server", LOOP, 0o755), ("config/bpm.yml", &bpm, 0o644)],
        &[],
    );
    let error = harness
        .call(
            "apply",
            vec![serde_json::to_value(harness.spec(vec![web], vec![])).unwrap()],
        )
        .await
        .unwrap_err();
    assert_eq!(
        error,
        "job 'web': config/bpm.yml: processes[0] (server): capabilities [\"NET_BIND_SERVICE\"] \
         are not applied: the agent runs processes without containers, with all of the \
         agent's capabilities; remove the key"
    );
    assert!(!harness.root.join("jobs/web").exists());
}
