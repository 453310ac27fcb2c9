//! The director server through the real binaries: the dev director starts on demand, uploads
//! are tasks that are idempotent and atomic, bad tarballs change nothing, a director killed
//! during an upload leaves no half-written release and no stuck lock, stemcells upload, and
//! the API needs its token (and speaks TLS when configured).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{User, run};

#[test]
fn the_dev_director_starts_on_demand_and_stops() {
    let user = User::new();
    let out = user.run(&["status"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .starts_with("Started a dev director at http://127.0.0.1:"),
        "{}",
        out.stderr
    );
    assert_eq!(
        out.stderr.lines().count(),
        1,
        "one line says so: {}",
        out.stderr
    );
    assert!(out.stdout.contains("State      sqlite"), "{}", out.stdout);
    // /info answers without a token: it names kinds, never paths.
    let info = user.json(&["status"]);
    assert_eq!(
        (&info["blobstore"], &info["cpi"]),
        (&"local".into(), &"local".into())
    );
    assert!(
        !info
            .to_string()
            .contains(&user.home.path().display().to_string()),
        "{info}"
    );
    // The director's files are its own: the data directory is 0700 and nothing in it is
    // readable or writable by group or others (state.db, token, signing key, logs, blobs).
    {
        use std::os::unix::fs::PermissionsExt;
        let data = user.data_dir();
        assert_eq!(
            std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let mut open_to_others = Vec::new();
        let mut pending = vec![data];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let entry = entry.unwrap();
                let meta = entry.metadata().unwrap();
                if meta.permissions().mode() & 0o077 != 0 && !meta.file_type().is_symlink() {
                    open_to_others.push(entry.path());
                }
                if meta.is_dir() {
                    pending.push(entry.path());
                }
            }
        }
        assert!(open_to_others.is_empty(), "{open_to_others:?}");
    }
    let config = user.home.path().join("config/director/config.yml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains("url: http://127.0.0.1:")
            && text.contains("token: ")
            && text.contains("dev: true"),
        "{text}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&config).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // Running again finds it: no second start.
    let again = user.run(&["status"]);
    assert_eq!((again.code, again.stderr.as_str()), (0, ""));
    // Every request but /info needs the token.
    let url = text
        .lines()
        .find_map(|l| l.strip_prefix("url: "))
        .unwrap()
        .trim()
        .to_string();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let anonymous = director_api::client::Client::new(&url, None, None).unwrap();
    assert!(runtime.block_on(anonymous.info()).is_ok());
    let refused = runtime
        .block_on(anonymous.releases())
        .unwrap_err()
        .to_string();
    assert!(refused.starts_with("missing or wrong token"), "{refused}");
    let wrong = director_api::client::Client::new(&url, Some("wrong".into()), None).unwrap();
    assert!(
        runtime
            .block_on(wrong.tasks(&director_api::tasks::TasksQuery::default()))
            .is_err()
    );

    let stop = user.run(&["stop-server"]);
    assert_eq!(stop.code, 0, "{}", stop.stderr);
    assert!(
        stop.stderr.starts_with("stopped the dev director"),
        "{}",
        stop.stderr
    );
    assert!(user.dev_pid().is_none());
}

#[test]
fn uploads_are_tasks_idempotent_and_deletable() {
    let user = User::new();
    let tarball = user.hello_tarball();
    let first = user.run(&["upload-release", tarball.to_str().unwrap()]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert!(
        first
            .stderr
            .contains("done: uploaded release hello/0+dev.1"),
        "{}",
        first.stderr
    );
    let blobs = user.blob_count();
    assert_eq!(
        blobs, 5,
        "three jobs and two packages are stored by content"
    );

    let second = user.run(&["upload-release", tarball.to_str().unwrap()]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert!(
        second
            .stderr
            .contains("release hello/0+dev.1 is already uploaded; nothing changed"),
        "{}",
        second.stderr
    );
    assert_eq!(user.blob_count(), blobs);

    let releases = user.json(&["releases"]);
    assert_eq!(releases[0]["name"], "hello");
    assert_eq!(releases[0]["release_versions"][0]["version"], "0+dev.1");

    let tasks = user.json(&["tasks", "--recent"]);
    assert_eq!(tasks.as_array().unwrap().len(), 2);
    let events = user.run(&["task", &tasks[1]["id"].to_string(), "--json"]);
    let first_event: Value = serde_json::from_str(events.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(first_event["stage"], "Extracting release");

    let deleted = user.run(&["delete-release", "hello/0+dev.1"]);
    assert_eq!(deleted.code, 0, "{}", deleted.stderr);
    assert_eq!(user.json(&["releases"]), serde_json::json!([]));
    assert_eq!(
        user.blob_count(),
        0,
        "the blobs of a deleted release go too"
    );
    let missing = user.run(&["delete-release", "hello"]);
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("release 'hello' is not uploaded"),
        "{}",
        missing.stderr
    );
}

/// Leaves nothing behind: no release rows, no blobs, no staged files.
fn assert_untouched(user: &User) {
    assert_eq!(user.json(&["releases"]), serde_json::json!([]));
    assert_eq!(user.blob_count(), 0);
    let uploads = std::fs::read_dir(user.data_dir().join("uploads"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(uploads, 0, "staged uploads are removed");
    let staging = std::fs::read_dir(user.data_dir().join("staging"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(staging, 0, "unpacked archives are removed");
}

#[test]
fn bad_tarballs_and_digests_change_nothing() {
    let user = User::new();
    let good = user.hello_tarball();
    let dir = user.home.path();

    // A truncated gzip stream.
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(dir.join("truncated.tgz"), &bytes[..bytes.len() / 2]).unwrap();
    let out = user.run(&["upload-release", "truncated.tgz"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("truncated or corrupt gzip data"),
        "{}",
        out.stderr
    );
    assert_untouched(&user);

    // An entry that climbs out of the staging directory.
    std::fs::create_dir_all(dir.join("inner")).unwrap();
    std::fs::write(dir.join("escape"), "x").unwrap();
    let status = Command::new("tar")
        .args(["-czPf", "escape.tgz", "inner/../escape"])
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(status.success());
    let out = user.run(&["upload-release", "escape.tgz"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains(".."), "{}", out.stderr);
    assert_untouched(&user);

    // A digest that does not match is refused before any task runs.
    let out = user.run(&[
        "upload-release",
        good.to_str().unwrap(),
        "--sha256",
        &"0".repeat(64),
    ]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("sha256 mismatch: expected sha256:0000"),
        "{}",
        out.stderr
    );
    assert_untouched(&user);

    // Not a tarball at all.
    std::fs::write(dir.join("notes.txt"), "release notes").unwrap();
    let out = user.run(&["upload-release", "notes.txt"]);
    assert_eq!(out.code, 1);
    assert_untouched(&user);
}

fn wait_for(mut condition: impl FnMut() -> bool, what: &str) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(120) {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn a_director_killed_during_an_upload_leaves_nothing_half_written() {
    let user = User::new();
    // A release with two big packages, so the upload task is still storing the second
    // while the first is already in the blobstore.
    let release = user.hello_release();
    for (package, seed) in [
        ("hello-lib", 0x2545_f491_4f6c_dd1du64),
        ("hello-server", 0x9e37_79b9_7f4a_7c15),
    ] {
        let mut random = vec![0u8; 48 << 20];
        let mut state = seed;
        for chunk in random.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let bytes = state.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        std::fs::write(release.join(format!("src/{package}/padding.bin")), random).unwrap();
        let spec = release.join(format!("packages/{package}/spec"));
        let text = std::fs::read_to_string(&spec).unwrap();
        assert!(text.contains("files:\n"), "{text}");
        std::fs::write(
            &spec,
            text.replace("files:\n", &format!("files:\n- {package}/padding.bin\n")),
        )
        .unwrap();
    }
    let out = user.run(&[
        "create-release",
        release.to_str().unwrap(),
        "--force",
        "--tarball",
        "big.tgz",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);

    assert_eq!(user.run(&["status"]).code, 0);
    let pid = user.dev_pid().expect("the dev director is running");
    let mut upload = user
        .director()
        .args(["upload-release", "big.tgz"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once the first package is stored but before the release is recorded.
    wait_for(
        || user.blob_count() > 0,
        "the first package to reach the blobstore",
    );
    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let _ = upload.wait();

    // The next command starts a new dev director, which cleans up after the old one.
    let tasks = user.json(&["tasks", "--recent"]);
    let task = &tasks[0];
    assert_eq!(tasks.as_array().unwrap().len(), 1, "{tasks}");
    assert_eq!(
        (task["state"].as_str(), task["result"].as_str()),
        (Some("error"), Some("director restarted")),
        "{tasks}"
    );
    assert_untouched(&user);
    // No stuck lock: the same release uploads now.
    let again = user.run(&["upload-release", "big.tgz"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again.stderr.contains("done: uploaded release hello/"),
        "{}",
        again.stderr
    );
}

/// A `local` stemcell whose image is a root file system holding only an "agent" made of
/// `agent_content` (the local CPI takes the agent out of the image at upload).
fn stemcell_tarball(dir: &Path, name: &str, version: &str, agent_content: &[u8]) -> PathBuf {
    let work = dir.join(format!("stemcell-{version}"));
    let root = work.join("root");
    std::fs::create_dir_all(root.join("var/vcap/bosh/bin")).unwrap();
    std::fs::write(root.join("var/vcap/bosh/bin/bosh-agent"), agent_content).unwrap();
    let status = Command::new("tar")
        .args(["-czf", "../image", "."])
        .current_dir(&root)
        .status()
        .unwrap();
    assert!(status.success());
    stemcell_tarball_of(dir, &work, name, version, "local")
}

/// A stemcell tarball of `work/image` as it is, for `format`.
fn stemcell_tarball_of(
    dir: &Path,
    work: &Path,
    name: &str,
    version: &str,
    format: &str,
) -> PathBuf {
    let digest = Command::new("sha256sum")
        .arg("image")
        .current_dir(work)
        .output()
        .unwrap();
    let digest = String::from_utf8(digest.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    std::fs::write(
        work.join("stemcell.MF"),
        format!(
            "name: {name}\nversion: '{version}'\napi_version: 3\noperating_system: debian-bookworm\nsha1: sha256:{digest}\nstemcell_formats: [{format}]\ncloud_properties: {{}}\n"
        ),
    )
    .unwrap();
    let tarball = dir.join(format!("{name}-{version}.tgz"));
    let status = Command::new("tar")
        .args(["-czf", tarball.to_str().unwrap(), "stemcell.MF", "image"])
        .current_dir(work)
        .status()
        .unwrap();
    assert!(status.success());
    tarball
}

#[test]
fn a_stemcell_the_cpi_cannot_take_fails_its_upload_and_leaves_nothing() {
    let user = User::new();
    let work = user.home.path().join("broken");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("image"), b"not a gzipped tar").unwrap();
    let tarball = stemcell_tarball_of(
        user.home.path(),
        &work,
        "bosh-local-debian-bookworm",
        "1.0",
        "local",
    );
    let out = user.run(&["upload-stemcell", tarball.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "the CPI could not take stemcell bosh-local-debian-bookworm/1.0: cannot read stemcell image"
        ),
        "{}",
        out.stderr
    );
    assert_eq!(user.json(&["stemcells"]), serde_json::json!([]));
    assert_eq!(user.blob_count(), 0, "nothing was stored");

    // A stemcell of a format the CPI does not take is refused by name.
    stemcell_tarball(
        user.home.path(),
        "bosh-docker-debian-bookworm",
        "2.0",
        b"agent",
    );
    let docker_only = stemcell_tarball_of(
        user.home.path(),
        &user.home.path().join("stemcell-2.0"),
        "bosh-docker-debian-bookworm",
        "2.0",
        "docker-rootfs",
    );
    let out = user.run(&["upload-stemcell", docker_only.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "stemcell bosh-docker-debian-bookworm/2.0 is made for docker-rootfs and this director's CPI takes local"
        ),
        "{}",
        out.stderr
    );
    assert_eq!(user.json(&["stemcells"]), serde_json::json!([]));
}

#[test]
fn stemcells_upload_once_and_list() {
    let user = User::new();
    let tarball = stemcell_tarball(
        user.home.path(),
        "bosh-local-debian-bookworm",
        "12.8.20261126",
        b"rootfs image bytes",
    );
    let out = user.run(&["upload-stemcell", tarball.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("uploaded stemcell bosh-local-debian-bookworm/12.8.20261126"),
        "{}",
        out.stderr
    );
    let again = user.run(&["upload-stemcell", tarball.to_str().unwrap()]);
    assert_eq!(again.code, 0);
    assert!(
        again
            .stderr
            .contains("is already uploaded; nothing changed"),
        "{}",
        again.stderr
    );
    assert_eq!(user.blob_count(), 1, "the image is stored once");
    let list = user.json(&["stemcells"]);
    assert_eq!(list[0]["version"], "12.8.20261126");
    assert_eq!(list[0]["formats"], serde_json::json!(["local"]));

    // Same version, other image: refused.
    let other = stemcell_tarball(
        &user.home.path().join("other"),
        "bosh-local-debian-bookworm",
        "12.8.20261126",
        b"another image",
    );
    let out = user.run(&["upload-stemcell", other.to_str().unwrap()]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("already uploaded with another image"),
        "{}",
        out.stderr
    );

    let deleted = user.run(&[
        "delete-stemcell",
        "bosh-local-debian-bookworm/12.8.20261126",
    ]);
    assert_eq!(deleted.code, 0, "{}", deleted.stderr);
    assert_eq!(user.json(&["stemcells"]), serde_json::json!([]));
    assert_eq!(user.blob_count(), 0);
}

#[test]
fn clean_up_keeps_the_two_newest_unless_all() {
    let user = User::new();
    for version in ["1.1", "1.2", "1.3"] {
        let tarball = stemcell_tarball(
            user.home.path(),
            "bosh-local-debian-bookworm",
            version,
            version.as_bytes(),
        );
        assert_eq!(
            user.run(&["upload-stemcell", tarball.to_str().unwrap()])
                .code,
            0
        );
    }
    let out = user.run(&["clean-up"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("removed stemcell bosh-local-debian-bookworm/1.1"),
        "{}",
        out.stderr
    );
    let versions: Vec<String> = user
        .json(&["stemcells"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["version"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(versions.len(), 2, "{versions:?}");
    let out = user.run(&["clean-up", "--all"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(user.json(&["stemcells"]), serde_json::json!([]));
    assert_eq!(user.blob_count(), 0);
}

#[test]
fn the_api_speaks_tls_when_configured() {
    let user = User::new();
    let dir = user.home.path();
    // A CA and a certificate it signs for 127.0.0.1, as an operator would have.
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    for args in [
        "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=test-ca",
        "req -newkey rsa:2048 -nodes -keyout key.pem -out director.csr -subj /CN=127.0.0.1",
        "x509 -req -in director.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem -days 1 -extfile san.ext",
    ] {
        let status = Command::new("openssl")
            .args(args.split(' '))
            .current_dir(dir)
            .stderr(Stdio::null())
            .status()
            .expect("openssl is installed");
        assert!(status.success(), "openssl {args}");
    }
    std::fs::write(
        dir.join("director.yml"),
        format!(
            "listen: 127.0.0.1:0\ndata_dir: {0}/tls-director\ntls:\n  certificate: {0}/cert.pem\n  private_key: {0}/key.pem\n",
            dir.display()
        ),
    )
    .unwrap();
    let mut server = user
        .director()
        .args(["serve", "--config", "director.yml"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(server.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("https://"))
        .expect("the listening line names the URL")
        .to_string();
    let token = std::fs::read_to_string(dir.join("tls-director/token"))
        .unwrap()
        .trim()
        .to_string();
    // A client that connects and never starts its TLS handshake delays nobody: the
    // handshake runs beside the accept loop, under a timeout.
    let silent = std::net::TcpStream::connect(url.trim_start_matches("https://")).unwrap();
    let mut status = user
        .director()
        .args(["--director", &url, "status"])
        .env("DIRECTOR_TOKEN", &token)
        .env("DIRECTOR_CA_CERT", dir.join("ca.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let answered = loop {
        if let Some(exit) = status.try_wait().unwrap() {
            break exit.success();
        }
        if started.elapsed() > std::time::Duration::from_secs(8) {
            let _ = status.kill();
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(
        answered,
        "status answers while a client holds a silent connection"
    );
    drop(silent);
    let with_ca = run(user
        .director()
        .args(["--director", &url, "status"])
        .env("DIRECTOR_TOKEN", &token)
        .env("DIRECTOR_CA_CERT", dir.join("ca.pem")));
    let without_ca = run(user
        .director()
        .args(["--director", &url, "status"])
        .env("DIRECTOR_TOKEN", &token));
    // A director that is not this user's dev director gets uploads streamed over HTTPS, and
    // refuses to read the user's files itself.
    let stemcell = stemcell_tarball(dir, "bosh-local-debian-bookworm", "1.0", b"streamed image");
    let streamed = run(user
        .director()
        .args([
            "--director",
            &url,
            "upload-stemcell",
            stemcell.to_str().unwrap(),
        ])
        .env("DIRECTOR_TOKEN", &token)
        .env("DIRECTOR_CA_CERT", dir.join("ca.pem")));
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(with_ca.code, 0, "{}", with_ca.stderr);
    assert!(with_ca.stdout.contains(&url), "{}", with_ca.stdout);
    assert_eq!(without_ca.code, 1);
    assert_eq!(streamed.code, 0, "{}", streamed.stderr);
    assert!(
        streamed
            .stderr
            .contains("uploaded stemcell bosh-local-debian-bookworm/1.0"),
        "{}",
        streamed.stderr
    );
    assert!(stemcell.exists(), "the user's file stays");
    assert!(
        without_ca.stderr.contains("certificate"),
        "{}",
        without_ca.stderr
    );
}

#[test]
fn a_director_keeps_its_blobs_in_s3_when_configured() {
    let user = User::new();
    let dir = user.home.path();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut moto = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server is not installed: pip install 'moto[server]' (.ci/run does)");
    let endpoint = format!("http://127.0.0.1:{port}");
    let bucket = format!("{endpoint}/blobs");
    wait_for(
        || {
            Command::new("curl")
                .args(["-sf", "-X", "PUT", &bucket])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        },
        "moto to accept the bucket",
    );
    std::fs::write(
        dir.join("director.yml"),
        format!(
            "listen: 127.0.0.1:0\ndata_dir: {}/s3-director\nblobstore:\n  provider: s3\n  bucket: blobs\n  endpoint: {endpoint}\n  access_key_id: test\n  secret_access_key: test\n  path_style: true\n",
            dir.display()
        ),
    )
    .unwrap();
    let mut server = user
        .director()
        .args(["serve", "--config", "director.yml"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(server.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("the listening line names the URL")
        .to_string();
    let token = std::fs::read_to_string(dir.join("s3-director/token"))
        .unwrap()
        .trim()
        .to_string();
    let at = |args: &[&str]| {
        run(user
            .director()
            .args(["--director", &url])
            .args(args)
            .env("DIRECTOR_TOKEN", &token))
    };

    let status = at(&["status"]);
    let tarball = user.hello_tarball();
    let upload = at(&["upload-release", tarball.to_str().unwrap()]);
    let listing = Command::new("curl")
        .args(["-sf", &format!("{bucket}?list-type=2")])
        .output()
        .unwrap();
    let objects = String::from_utf8_lossy(&listing.stdout)
        .matches("<Key>blobs/")
        .count();
    let delete = at(&["delete-release", "hello"]);
    let after = Command::new("curl")
        .args(["-sf", &format!("{bucket}?list-type=2")])
        .output()
        .unwrap();
    let remaining = String::from_utf8_lossy(&after.stdout)
        .matches("<Key>")
        .count();
    let _ = server.kill();
    let _ = server.wait();
    let _ = moto.kill();
    let _ = moto.wait();

    assert_eq!(status.code, 0, "{}", status.stderr);
    assert!(
        status.stdout.contains("Blobstore  s3://blobs"),
        "{}",
        status.stdout
    );
    assert_eq!(upload.code, 0, "{}", upload.stderr);
    assert_eq!(objects, 5, "three jobs and two packages in the bucket");
    assert_eq!(delete.code, 0, "{}", delete.stderr);
    assert_eq!(remaining, 0, "deleting the release empties the bucket");
}

#[test]
fn a_dead_dev_directors_port_taken_by_another_director_is_not_used() {
    let user = User::new();
    assert_eq!(user.run(&["status"]).code, 0);
    let record = std::fs::read_to_string(user.data_dir().join("dev.yml")).unwrap();
    let url = record
        .lines()
        .find_map(|l| l.strip_prefix("url: "))
        .unwrap()
        .trim()
        .trim_matches(|c| c == '\'' || c == '"')
        .to_string();
    let port = url.rsplit(':').next().unwrap().to_string();
    let pid = user.dev_pid().unwrap();
    assert!(
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    // Another director (someone else's: another data dir, another token) takes the port.
    let other = tempfile::tempdir().unwrap();
    let config = other.path().join("director.yml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\ndata_dir: {}\n",
            other.path().join("data").display()
        ),
    )
    .unwrap();
    let mut foreign = tests::serve(&config, &other.path().join("director.log"));
    wait_for(
        || {
            std::fs::read_to_string(other.path().join("director.log"))
                .is_ok_and(|l| l.contains("listening on"))
        },
        "the other director to listen on the dead one's port",
    );

    // The user's next command sees that the director there cannot prove it holds its token
    // (and does not send it there), says so, and starts its own again, elsewhere.
    let out = user.run(&["tasks"]);
    let _ = foreign.kill();
    let _ = foreign.wait();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.starts_with(&format!(
            "the listener at {url} is not the dev director this CLI started"
        )) && out.stderr.contains("Started a dev director at")
            && !out
                .stderr
                .contains(&format!("Started a dev director at {url} ")),
        "{}",
        out.stderr
    );
}

#[test]
fn a_director_reachable_from_other_hosts_needs_tls_or_insecure_http() {
    let user = User::new();
    let dir = user.home.path();
    std::fs::write(
        dir.join("director.yml"),
        format!(
            "listen: 0.0.0.0:0\ndata_dir: {}/public-director\n",
            dir.display()
        ),
    )
    .unwrap();
    let refused = user.run(&["serve", "--config", "director.yml"]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("listen: 0.0.0.0:0 without tls would send the director's token in clear"),
        "{}",
        refused.stderr
    );
    assert!(
        !dir.join("public-director/state.db").exists(),
        "nothing started"
    );

    let mut server = user
        .director()
        .args(["serve", "--config", "director.yml", "--insecure-http"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(server.stderr.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut first).unwrap();
    let mut second = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut second).unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        first.starts_with("WARNING: serving plain HTTP on 0.0.0.0:0"),
        "{first}"
    );
    assert!(second.contains("listening on http://0.0.0.0:"), "{second}");
}
