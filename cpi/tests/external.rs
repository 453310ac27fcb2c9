//! `ExternalCpi` and the `cpi` binary: the JSON envelope on the wire (checked with fake CPI
//! scripts), and conformance: `ExternalCpi` in front of the `cpi` binary behaves as
//! `LocalCpi` called directly.

mod common;

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use common::*;
use cpi::{Cpi, CpiError, ErrorKind, ExternalCpi, LocalCpi};
use serde_json::{Map, Value, json};

const CPI_BINARY: &str = env!("CARGO_BIN_EXE_cpi");
const DIRECTOR_UUID: &str = "8d2a8b7c-0000-4000-8000-000000000001";

/// `ExternalCpi` running our `cpi` binary, with its root passed as `context.root`.
fn external(root: &Path) -> ExternalCpi {
    let mut context = Map::new();
    context.insert("root".into(), Value::from(root.to_str().unwrap()));
    ExternalCpi::new(CPI_BINARY, DIRECTOR_UUID).with_context(context)
}

/// A fake CPI: a shell script that saves its request and environment beside itself and
/// prints `answer`, then exits with `status`.
fn fake_cpi(dir: &Path, answer: &str, status: i32) -> PathBuf {
    let script = dir.join("fake-cpi");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat > {dir}/request.json\nenv > {dir}/env.txt\necho 'cpi says hello' >&2\n\
             cat <<'EOF'\n{answer}\nEOF\nexit {status}\n",
            dir = dir.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// Runs the `cpi` binary on raw input.
fn run_binary(arguments: &[&str], input: &[u8]) -> (Value, bool) {
    let mut child = Command::new(CPI_BINARY)
        .args(arguments)
        .env_remove("DIRECTOR_LOCAL_CPI_ROOT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let output = child.wait_with_output().unwrap();
    (
        serde_json::from_slice(&output.stdout).unwrap(),
        output.status.success(),
    )
}

fn without_cid(error: CpiError, cid: &str) -> (ErrorKind, String, bool) {
    (
        error.kind,
        error.message.replace(cid, "<cid>"),
        error.ok_to_retry,
    )
}

#[test]
fn the_cpi_binary_behaves_as_the_local_cpi() {
    let dir = tempfile::tempdir().unwrap();
    let _vms = (
        DeleteVmsOnDrop(dir.path().join("local")),
        DeleteVmsOnDrop(dir.path().join("external")),
    );
    let local = LocalCpi::new(dir.path().join("local"));
    let external_root = dir.path().join("external");
    let external = external(&external_root);
    let through_binary = LocalCpi::new(external_root.clone());
    let image = stemcell_image(dir.path(), "image.tgz", FAKE_AGENT);
    let bad_image = dir.path().join("bad.tgz");
    fs::write(&bad_image, tgz(&[("etc/hostname", 0o644, b"x\n")])).unwrap();

    assert_eq!(external.info().unwrap(), local.info().unwrap());
    assert_eq!(
        external
            .create_stemcell(&bad_image, &json!({}))
            .unwrap_err(),
        local.create_stemcell(&bad_image, &json!({})).unwrap_err(),
    );

    let mut seen = Vec::new();
    for (cpi, view) in [(&local as &dyn Cpi, &local), (&external, &through_binary)] {
        let stemcell = cpi.create_stemcell(&image, &json!({"name": "s"})).unwrap();
        assert!(stemcell.starts_with("stemcell-"), "{stemcell}");
        let (vm, returned) = cpi
            .create_vm(
                "agent-c",
                &stemcell,
                &json!({}),
                &networks("127.0.45.70"),
                &[],
                &environment("agent-c"),
            )
            .unwrap();
        assert_eq!(returned, networks("127.0.45.70"));
        assert!(cpi.has_vm(&vm).unwrap());
        assert_eq!(
            cpi.find_vm_by_agent_id("agent-c").unwrap(),
            Some(vm.clone())
        );
        let vm_dir = view.vm_dir(&vm);
        let mut log = fake_log(&vm_dir);
        assert_eq!(log.settings["vm"]["name"], json!(vm));
        log.settings["vm"]["name"] = json!("<cid>");
        let agent_pid = recorded_pid(&vm_dir, "agent.pid");
        let child_pid = recorded_pid(&vm_dir, "child.pid");
        assert_eq!(cpi.agent_log_tail(&vm, 5).unwrap(), ["fake agent started"]);
        assert_eq!(cpi.get_disks(&vm).unwrap(), Vec::<String>::new());

        cpi.delete_vm(&vm).unwrap();
        assert!(!alive(agent_pid) && !alive(child_pid));
        assert!(!cpi.has_vm(&vm).unwrap());
        assert_eq!(cpi.find_vm_by_agent_id("agent-c").unwrap(), None);
        let missing = without_cid(cpi.delete_vm(&vm).unwrap_err(), &vm);
        let not_found_stemcell = cpi
            .create_vm(
                "a",
                "stemcell-nope",
                &json!({}),
                &Value::Null,
                &[],
                &environment("a"),
            )
            .unwrap_err();
        let no_disk = cpi.delete_disk("disk-nope").unwrap_err();
        seen.push((log.ls, log.settings, missing, not_found_stemcell, no_disk));
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0].2.0, ErrorKind::VmNotFound);
}

#[test]
fn the_cpi_binary_answers_bad_calls_with_the_error_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();

    let (response, success) = run_binary(
        &["--root", root],
        br#"{"method":"resize_disk","arguments":["disk-1",10],"context":{}}"#,
    );
    assert!(success, "the exit code is not how a cpi fails");
    assert_eq!(
        response,
        json!({"result": null, "error": {"type": "InvalidCall",
            "message": "Method is not known, got 'resize_disk'", "ok_to_retry": false}, "log": ""})
    );

    let (response, _) = run_binary(&["--root", root], b"not json");
    assert_eq!(response["error"]["type"], "InvalidCall");
    let message = response["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("Request cannot be deserialized, details: "),
        "{message}"
    );

    let (response, _) = run_binary(
        &["--root", root],
        br#"{"method":"has_vm","arguments":[42],"context":{}}"#,
    );
    assert_eq!(response["error"]["type"], "InvalidCall");
    assert_eq!(
        response["error"]["message"],
        "Arguments are not correct, details: argument 0 of 'has_vm': invalid type: integer \
         `42`, expected a string"
    );

    let (response, _) = run_binary(
        &["--root", root],
        br#"{"method":"delete_vm","arguments":["vm-gone"],"context":{}}"#,
    );
    assert_eq!(
        response["error"],
        json!({"type": "Bosh::Clouds::VMNotFound", "message": "vm 'vm-gone' not found",
            "ok_to_retry": false})
    );

    let (response, _) = run_binary(&[], br#"{"method":"info","arguments":[],"context":{}}"#);
    assert_eq!(response["error"]["type"], "Bosh::Clouds::CpiError");

    let (response, _) = run_binary(
        &[],
        format!(r#"{{"method":"has_vm","arguments":["vm-1"],"context":{{"root":"{root}"}}}}"#)
            .as_bytes(),
    );
    assert_eq!(response, json!({"result": false, "error": null, "log": ""}));

    // Through `ExternalCpi`: an unknown method is NotImplemented, as in BOSH.
    let error = external(dir.path())
        .call("resize_disk", vec![])
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::NotImplemented);
}

/// `cpi --type docker` against this host's engine: the Docker CPI behind the same envelope,
/// bad calls answered with BOSH's errors (not JSON, unknown method, wrong arguments, no
/// director id, an engine that is not there), never a crash.
#[cfg(feature = "docker")]
#[test]
fn the_cpi_binary_serves_the_docker_cpi() {
    let docker = ["--type", "docker"];
    let info = br#"{"method":"info","arguments":[],"context":{"director_uuid":"d-1"}}"#;
    let (response, success) = run_binary(&docker, info);
    assert!(success);
    assert_eq!(
        response,
        json!({"result": {"api_version": 2, "stemcell_formats": ["docker-rootfs"]},
            "error": null, "log": ""})
    );

    let (response, success) = run_binary(&docker, b"not json");
    assert!(success);
    assert_eq!(response["error"]["type"], "InvalidCall");
    let message = response["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("Request cannot be deserialized, details: "),
        "{message}"
    );

    let (response, success) = run_binary(
        &docker,
        br#"{"method":"resize_disk","arguments":["disk-1",10],"context":{"director_uuid":"d-1"}}"#,
    );
    assert!(success);
    assert_eq!(
        response,
        json!({"result": null, "error": {"type": "InvalidCall",
            "message": "Method is not known, got 'resize_disk'", "ok_to_retry": false}, "log": ""})
    );

    let (response, _) = run_binary(
        &docker,
        br#"{"method":"has_vm","arguments":[42],"context":{"director_uuid":"d-1"}}"#,
    );
    assert_eq!(
        response["error"]["message"],
        "Arguments are not correct, details: argument 0 of 'has_vm': invalid type: integer \
         `42`, expected a string"
    );

    let (response, _) = run_binary(&docker, br#"{"method":"info","arguments":[],"context":{}}"#);
    assert_eq!(
        response["error"],
        json!({"type": "Bosh::Clouds::CpiError", "ok_to_retry": false,
            "message": "the docker cpi needs the director's id: context.director_uuid is missing"})
    );

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("no-engine.sock");
    let (response, success) = run_binary(
        &["--type", "docker", "--socket", socket.to_str().unwrap()],
        info,
    );
    assert!(success);
    assert_eq!(response["error"]["type"], "Bosh::Clouds::CloudError");
    let message = response["error"]["message"].as_str().unwrap();
    assert!(message.contains(socket.to_str().unwrap()), "{message}");

    // Through `ExternalCpi`, as a director configured for `cpi --type docker` calls it.
    let external = ExternalCpi::new(CPI_BINARY, DIRECTOR_UUID).with_arguments(["--type", "docker"]);
    assert_eq!(external.info().unwrap().stemcell_formats, ["docker-rootfs"]);
    assert!(!external.has_vm("bosh-vm-not-there").unwrap());
}

#[test]
fn requests_follow_boshs_envelope_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let script = fake_cpi(
        dir.path(),
        r#"{"result": ["vm-7", {"n": {"ip": "10.0.0.7"}}], "error": null, "log": "made vm-7"}"#,
        1,
    );
    let logs = Arc::new(Mutex::new(Vec::new()));
    let sink_logs = logs.clone();
    let mut context = Map::new();
    context.insert("region".into(), json!("eu"));
    let cpi = ExternalCpi::new(&script, DIRECTOR_UUID)
        .with_context(context)
        .with_log_sink(Arc::new(move |call| {
            sink_logs.lock().unwrap().push(format!(
                "{} {} {} {}",
                call.method,
                call.request_id,
                call.stderr.trim(),
                call.log
            ));
        }));
    let (vm, networks) = cpi
        .create_vm(
            "agent-1",
            "stemcell-1",
            &json!({"cpu": 2}),
            &json!({"n": {"type": "dynamic"}}),
            &["disk-1".to_string()],
            &json!({"bosh": {}}),
        )
        .unwrap();
    assert_eq!(vm, "vm-7", "the exit code (1) is ignored");
    assert_eq!(networks, json!({"n": {"ip": "10.0.0.7"}}));

    let request: Value =
        serde_json::from_slice(&fs::read(dir.path().join("request.json")).unwrap()).unwrap();
    let request_id = request["context"]["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        request_id.starts_with("cpi-") && request_id.len() == 10,
        "{request_id}"
    );
    assert_eq!(
        request,
        json!({
            "method": "create_vm",
            "arguments": ["agent-1", "stemcell-1", {"cpu": 2}, {"n": {"type": "dynamic"}},
                ["disk-1"], {"bosh": {}}],
            "context": {"region": "eu", "director_uuid": DIRECTOR_UUID, "request_id": request_id},
            "api_version": 2,
        })
    );
    assert_eq!(
        *logs.lock().unwrap(),
        [format!("create_vm {request_id} cpi says hello made vm-7")]
    );

    let env = fs::read_to_string(dir.path().join("env.txt")).unwrap();
    let mut names: Vec<&str> = env
        .lines()
        .filter_map(|line| line.split_once('=').map(|(name, _)| name))
        .collect();
    names.sort();
    let allowed = ["HOME", "OLDPWD", "PATH", "PWD", "SHLVL", "TMPDIR", "_"];
    assert!(
        names.iter().all(|name| allowed.contains(name)),
        "only PATH, HOME and TMPDIR are passed (and what sh sets): {names:?}"
    );
    assert!(
        env.contains("PATH=/usr/sbin:/usr/bin:/sbin:/bin\n"),
        "{env}"
    );
}

#[test]
fn v1_results_and_error_types_are_read_as_bosh_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let call = |answer: &str| ExternalCpi::new(fake_cpi(dir.path(), answer, 0), DIRECTOR_UUID);

    let (vm, networks) = call(r#"{"result": "i-123", "error": null, "log": ""}"#)
        .create_vm("a", "s", &json!({}), &json!({"n": {}}), &[], &json!({}))
        .unwrap();
    assert_eq!((vm.as_str(), networks), ("i-123", json!({"n": {}})));

    let info = call(r#"{"result": {"stemcell_formats": ["aws-raw"]}, "error": null, "log": ""}"#)
        .info()
        .unwrap();
    assert_eq!(info.api_version, 1, "no api_version is v1");

    let error = call(
        r#"{"result": null, "error": {"type": "Bosh::Clouds::VMCreationFailed",
            "message": "no capacity", "ok_to_retry": true}, "log": ""}"#,
    )
    .create_vm("a", "s", &json!({}), &json!({}), &[], &json!({}))
    .unwrap_err();
    assert_eq!(
        error,
        CpiError {
            kind: ErrorKind::VmCreationFailed,
            message: "no capacity".into(),
            ok_to_retry: true
        }
    );

    let error = call(
        r#"{"result": null, "error": {"type": "InvalidCall",
            "message": "Method is not known, got 'has_disk'", "ok_to_retry": false}, "log": ""}"#,
    )
    .has_disk("d")
    .unwrap_err();
    assert_eq!(error.kind, ErrorKind::NotImplemented);

    let error = call(
        r#"{"result": null, "error": {"type": "Some::Other", "message": "odd", "ok_to_retry": true}, "log": ""}"#,
    )
    .has_disk("d")
    .unwrap_err();
    assert_eq!(
        error,
        CpiError {
            kind: ErrorKind::Unknown,
            message: "cpi error 'Some::Other': odd".into(),
            ok_to_retry: false
        }
    );

    let error = call(r#"{"result": "yes", "error": null, "log": ""}"#)
        .has_vm("vm-1")
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::CpiError);
    assert!(
        error
            .message
            .starts_with("cpi answered 'has_vm' with an unexpected result"),
        "{}",
        error.message
    );
}

#[test]
fn answers_that_are_not_json_are_quoted() {
    let dir = tempfile::tempdir().unwrap();
    let script = fake_cpi(dir.path(), "panic: runtime error: index out of range", 2);
    let error = ExternalCpi::new(&script, DIRECTOR_UUID)
        .has_vm("vm-1")
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::CpiError);
    assert!(
        error.message.starts_with(&format!(
            "cpi {} answered 'has_vm' with something that is not a cpi response",
            script.display()
        )),
        "{}",
        error.message
    );
    assert!(
        error
            .message
            .contains(r#""panic: runtime error: index out of range\n""#),
        "{}",
        error.message
    );
    assert!(
        error
            .message
            .ends_with("; its stderr ends with: cpi says hello"),
        "{}",
        error.message
    );

    let error = ExternalCpi::new(dir.path().join("absent"), DIRECTOR_UUID)
        .has_vm("vm-1")
        .unwrap_err();
    assert!(
        error.message.starts_with("cannot run cpi "),
        "{}",
        error.message
    );
}
