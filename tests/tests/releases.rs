//! Releases through the real binary: `create-release` on a copy of `releases/hello` in a
//! fresh git repository (reproducible tarballs, dev versions that move only when a
//! fingerprint changes, final versions), `inspect-release` of the tarball and of the
//! directory, `add-blob` and `blobs`, a truncated tarball refused without leftovers, and the
//! example packages compiled with the real C compiler and served.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use director_core::archive::{self, Limits};
use director_core::release::read_archive;
use serde_json::Value;
use tempfile::TempDir;
use tests::{director, run};

/// The example release in the repository.
fn hello_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../releases/hello")
}

/// Build outputs a developer may have left in the example release; never copied.
const LEFTOVERS: &[&str] = &[
    "dev_releases",
    ".dev_builds",
    "releases",
    ".final_builds",
    "blobs",
    ".blobstore",
];

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if from == hello_source() && LEFTOVERS.iter().any(|l| name == *l) {
            continue;
        }
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_dir(&entry.path(), &to.join(&name));
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path()).unwrap(), to.join(&name))
                .unwrap();
        } else {
            fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A copy of `releases/hello` in a fresh git repository with one commit.
fn hello_repo() -> (TempDir, PathBuf) {
    let temp = TempDir::new().unwrap();
    let dir = temp.path().join("hello");
    copy_dir(&hello_source(), &dir);
    git(&dir, &["init", "-q"]);
    git(&dir, &["add", "-A"]);
    git(&dir, &["commit", "-q", "-m", "hello release"]);
    (temp, dir)
}

/// `director --json ARGS` in `dir`, expecting success; the JSON document.
fn json(dir: &Path, args: &[&str]) -> Value {
    let out = run(director().current_dir(dir).arg("--json").args(args));
    assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", out.stdout))
}

/// name → fingerprint of the `jobs` or `packages` of a release document.
fn fingerprints(doc: &Value, kind: &str) -> BTreeMap<String, String> {
    doc[kind]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            (
                item["name"].as_str().unwrap().to_string(),
                item["fingerprint"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn create_release_is_reproducible_and_counts_up_only_on_change() {
    let (_temp, dir) = hello_repo();
    let first = json(&dir, &["create-release"]);
    assert_eq!(first["version"], "0+dev.1");
    assert_eq!(first["created"], true);
    assert_eq!(first["uncommitted_changes"], false);
    assert_eq!(first["tarball"], "dev_releases/hello/hello-0+dev.1.tgz");
    let tarball = dir.join("dev_releases/hello/hello-0+dev.1.tgz");
    let bytes = fs::read(&tarball).unwrap();

    // Nothing changed: the same version, the same bytes, nothing new recorded.
    let second = json(&dir, &["create-release"]);
    assert_eq!(second["version"], "0+dev.1");
    assert_eq!(second["created"], false);
    assert_eq!(fs::read(&tarball).unwrap(), bytes);
    let elsewhere = dir.join("../copy.tgz");
    json(
        &dir,
        &["create-release", "--tarball", elsewhere.to_str().unwrap()],
    );
    assert_eq!(
        fs::read(&elsewhere).unwrap(),
        bytes,
        "--tarball writes the same bytes"
    );
    let index = fs::read_to_string(dir.join("dev_releases/hello/index.yml")).unwrap();
    assert_eq!(index.matches("    version: ").count(), 1, "{index}");
    assert!(index.ends_with("format-version: \"2\"\n"), "{index}");

    // One source file of hello-lib changes: only hello-lib's fingerprint moves. hello-server
    // depends on hello-lib by name, so its fingerprint stays.
    let source = dir.join("src/hello-lib/hello.c");
    let mut text = fs::read_to_string(&source).unwrap();
    text.push_str("\n/* a change */\n");
    fs::write(&source, text).unwrap();
    let third = json(&dir, &["create-release"]);
    assert_eq!(third["version"], "0+dev.2");
    assert_eq!(third["uncommitted_changes"], true);
    let (before, after) = (
        fingerprints(&first, "packages"),
        fingerprints(&third, "packages"),
    );
    assert_ne!(before["hello-lib"], after["hello-lib"]);
    assert_eq!(before["hello-server"], after["hello-server"]);
    assert_eq!(fingerprints(&first, "jobs"), fingerprints(&third, "jobs"));

    // A final release refuses uncommitted changes, then is version 1 once they are committed.
    let dirty = run(director()
        .current_dir(&dir)
        .args(["create-release", "--final"]));
    assert_eq!(dirty.code, 1);
    assert!(
        dirty.stderr.contains("has uncommitted changes"),
        "{}",
        dirty.stderr
    );
    assert!(
        dirty.stderr.contains("src/hello-lib/hello.c"),
        "{}",
        dirty.stderr
    );
    git(&dir, &["commit", "-q", "-am", "change hello-lib"]);
    let fin = json(&dir, &["create-release", "--final"]);
    assert_eq!(fin["version"], "1");
    assert_eq!(fin["tarball"], "releases/hello/hello-1.tgz");
    assert!(dir.join("releases/hello/hello-1.yml").is_file());
    assert!(
        dir.join(".final_builds/packages/hello-lib/index.yml")
            .is_file()
    );
    let again =
        run(director()
            .current_dir(&dir)
            .args(["create-release", "--final", "--version", "1"]));
    assert_eq!(again.code, 1);
    assert_eq!(
        again.stderr.trim(),
        "error: release 'hello' version '1' already exists"
    );

    // Unchanged since the final release: that is the version.
    let after_final = json(&dir, &["create-release"]);
    assert_eq!(after_final["version"], "1");
    assert_eq!(after_final["created"], false);
    // A change after a final release counts from it.
    fs::write(dir.join("jobs/hello-client/monit"), "# no monit\n").unwrap();
    let next = json(&dir, &["create-release"]);
    assert_eq!(next["version"], "1+dev.1");
    let forced = json(&dir, &["create-release", "--final", "--force"]);
    assert_eq!(forced["version"], "2");
    assert_eq!(forced["uncommitted_changes"], true);
}

#[test]
fn inspect_release_of_the_tarball_and_of_the_directory() {
    let (_temp, dir) = hello_repo();
    let created = json(&dir, &["create-release"]);
    let tarball = json(
        &dir,
        &["inspect-release", "dev_releases/hello/hello-0+dev.1.tgz"],
    );
    for key in [
        "name",
        "version",
        "commit_hash",
        "jobs",
        "packages",
        "license",
    ] {
        assert_eq!(tarball[key], created[key], "{key}");
    }
    let renamed = json(&dir, &["create-release", "--name", "hello-copy"]);
    assert_eq!(renamed["name"], "hello-copy");
    assert_eq!(renamed["version"], "0+dev.1");
    assert_eq!(
        renamed["tarball"],
        "dev_releases/hello-copy/hello-copy-0+dev.1.tgz"
    );
    assert_eq!(renamed["packages"], created["packages"]);
    let directory = json(&dir, &["inspect-release", "."]);
    assert_eq!(directory["jobs"], created["jobs"]);
    assert_eq!(directory["packages"], created["packages"]);
    assert_eq!(directory["version"], Value::Null);
    let jobs = fingerprints(&created, "jobs");
    assert_eq!(
        jobs.keys().collect::<Vec<_>>(),
        ["hello-client", "hello-server", "hello-smoke-test"]
    );
    let packages = &created["packages"];
    assert_eq!(packages[0]["name"], "hello-lib");
    assert_eq!(packages[1]["name"], "hello-server");
    assert_eq!(
        packages[1]["dependencies"],
        serde_json::json!(["hello-lib"])
    );
    assert!(
        packages[0]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{packages}"
    );

    // The table, for people.
    let table = run(director()
        .current_dir(&dir)
        .args(["inspect-release", "dev_releases/hello/hello-0+dev.1.tgz"]));
    assert_eq!(table.code, 0, "{}", table.stderr);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines[0], "Name     hello");
    assert_eq!(lines[1], "Version  0+dev.1");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("hello-server  ") && l.ends_with("  hello-lib")),
        "{}",
        table.stdout
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("Job ") && l.contains("Fingerprint") && l.contains("Digest"))
    );
}

#[test]
fn add_blob_and_list_blobs() {
    let (temp, dir) = hello_repo();
    let empty = run(director().args(["blobs", "--dir"]).arg(&dir));
    assert_eq!(empty.code, 0, "{}", empty.stderr);
    assert_eq!(empty.stdout, "");
    let input = temp.path().join("greetings.txt");
    fs::write(&input, "data").unwrap();
    let added = run(director()
        .args(["add-blob"])
        .arg(&input)
        .args(["greetings/greetings.txt", "--dir"])
        .arg(&dir));
    assert_eq!(added.code, 0, "{}", added.stderr);
    assert_eq!(
        fs::read_to_string(dir.join("blobs/greetings/greetings.txt")).unwrap(),
        "data"
    );
    // printf data | sha256sum
    let sha = "sha256:3a6eb0790f39ac87c94f3856b2dd2c5d110e6811602261a9a923d3bb23adc8b7";
    assert_eq!(
        fs::read_to_string(dir.join("config/blobs.yml")).unwrap(),
        format!("greetings/greetings.txt:\n  size: 4\n  sha: {sha}\n")
    );
    let listed = json(&dir, &["blobs"]);
    assert_eq!(
        listed,
        serde_json::json!([{
            "path": "greetings/greetings.txt",
            "size": 4,
            "digest": sha,
            "object_id": null,
            "uploaded": false,
            "local": true,
        }])
    );
    let table = run(director().current_dir(&dir).arg("blobs"));
    assert_eq!(
        table.stdout,
        format!(
            "Path                     Size  Digest{}  Status\ngreetings/greetings.txt  4     {sha}  local only\n",
            " ".repeat(sha.len() - "Digest".len())
        )
    );
    // A blob that no longer matches its record stops create-release.
    fs::write(dir.join("blobs/greetings/greetings.txt"), "changed").unwrap();
    let refused = run(director().current_dir(&dir).arg("create-release"));
    assert_eq!(refused.code, 1);
    assert!(
        refused
            .stderr
            .contains("blobs/greetings/greetings.txt has digest sha256:"),
        "{}",
        refused.stderr
    );
    let escaping = run(director()
        .current_dir(&dir)
        .arg("add-blob")
        .arg(&input)
        .arg("../x"));
    assert_eq!(escaping.code, 1);
}

#[test]
fn a_truncated_tarball_is_refused_without_leftovers() {
    let (temp, dir) = hello_repo();
    json(&dir, &["create-release"]);
    let whole = fs::read(dir.join("dev_releases/hello/hello-0+dev.1.tgz")).unwrap();
    fs::write(temp.path().join("cut.tgz"), &whole[..whole.len() * 2 / 3]).unwrap();
    let staging = temp.path().join("tmp");
    fs::create_dir(&staging).unwrap();
    let out = run(director()
        .current_dir(temp.path())
        .env("TMPDIR", &staging)
        .args(["inspect-release", "cut.tgz"]));
    assert_eq!(out.code, 1);
    assert_eq!(out.stdout, "");
    insta::assert_snapshot!(out.stderr);
    assert_eq!(
        fs::read_dir(&staging).unwrap().count(),
        0,
        "staging left behind"
    );
}

/// Runs a package's `packaging` as a compilation VM would: its archive unpacked in the
/// compile directory, `BOSH_INSTALL_TARGET` and `BOSH_COMPILE_TARGET` set, dependencies
/// under `BOSH_PACKAGES_DIR`.
fn compile(archive_path: &Path, name: &str, work: &Path) -> PathBuf {
    let unpacked = archive::extract(archive_path, &Limits::default(), work).unwrap();
    let install = work.join("packages").join(name);
    fs::create_dir_all(&install).unwrap();
    let out = Command::new("bash")
        .arg("packaging")
        .current_dir(unpacked.dir())
        .env("BOSH_COMPILE_TARGET", unpacked.dir())
        .env("BOSH_INSTALL_TARGET", &install)
        .env("BOSH_PACKAGES_DIR", work.join("packages"))
        .env("BOSH_PACKAGE_NAME", name)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "packaging of {name}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    install
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn get(address: &str, path: &str, header: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\n{header}\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn the_hello_packages_compile_and_serve() {
    let missing: Vec<&str> = ["cc", "make", "bash"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    assert!(
        missing.is_empty(),
        "{missing:?} not installed: the hello packages compile from source (.ci/run installs gcc, make)"
    );
    let (temp, dir) = hello_repo();
    json(&dir, &["create-release"]);
    let release = read_archive(
        &dir.join("dev_releases/hello/hello-0+dev.1.tgz"),
        &Limits::default(),
    )
    .unwrap();
    let work = temp.path().join("vm");
    fs::create_dir_all(&work).unwrap();
    // Dependencies first, as the director compiles them.
    compile(&release.package_archive("hello-lib"), "hello-lib", &work);
    let server = compile(
        &release.package_archive("hello-server"),
        "hello-server",
        &work,
    );

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let config = temp.path().join("hello-server.conf");
    let drain = temp.path().join("draining");
    fs::write(
        &config,
        format!(
            "address=127.0.0.1\nport={port}\ngreeting=hello\nadmin_password=s3cret\ndrain_file={}\n",
            drain.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(server.join("bin/hello-server"))
        .arg(&config)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let address = format!("127.0.0.1:{port}");
    let started = Instant::now();
    while TcpStream::connect(&address).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "hello-server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let greeting = get(&address, "/", "");
    let health = get(&address, "/healthz", "");
    let refused = get(&address, "/admin", "X-Admin-Password: wrong\r\n");
    let admin = get(&address, "/admin", "X-Admin-Password: s3cret\r\n");
    fs::write(&drain, "").unwrap();
    let draining = get(&address, "/healthz", "");
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let status = child.wait().unwrap();
    assert!(greeting.starts_with("HTTP/1.0 200 OK"), "{greeting}");
    assert!(greeting.ends_with("\r\n\r\nhello, world!\n"), "{greeting}");
    assert!(health.ends_with("\r\n\r\nok\n"), "{health}");
    assert!(refused.starts_with("HTTP/1.0 401"), "{refused}");
    assert!(admin.ends_with("requests served: 4\n"), "{admin}");
    assert!(draining.starts_with("HTTP/1.0 503"), "{draining}");
    assert!(status.success(), "SIGTERM stops it cleanly: {status}");
}
