//! `director export-release` end to end: one user deploys the `hello` release (compiling
//! its packages), exports it compiled for the stemcell, and a second user, on a director of
//! their own, uploads that tarball and deploys without compiling anything. A third user's
//! director refuses a tampered copy and adds the compiled builds to the source release.
//!
//! Each user has their own director, bus, CPI root and loopback /24 (127.0.40.0/24 and
//! 127.0.41.0/24).

use std::path::Path;

use serde_json::Value;
use tests::User;
use tests::hello::{
    Hello, all_running, deploy, instances, set_cloud_config, stage_tasks, upload_stemcell,
    write_manifest,
};

/// The events of stage `stage`, whatever their state.
fn stage_events<'a>(events: &'a [Value], stage: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["stage"] == stage).collect()
}

/// The only uploaded version of `hello`.
fn hello_version(user: &User) -> String {
    let releases = user.json(&["releases"]);
    let hello = releases
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "hello")
        .unwrap_or_else(|| panic!("hello is uploaded: {releases:#}"));
    let versions = hello["release_versions"].as_array().unwrap();
    assert_eq!(versions.len(), 1, "{releases:#}");
    versions[0]["version"].as_str().unwrap().to_string()
}

#[test]
fn an_exported_release_deploys_elsewhere_without_compiling() {
    // User A compiles hello by deploying it.
    let a = User::new();
    set_cloud_config(&a, 40);
    upload_stemcell(&a, "1", None);
    let release = a.hello_release();
    let hello = Hello {
        servers: 1,
        ..Hello::default()
    };
    let manifest = write_manifest(&a, &release, &hello);
    let (code, events, stderr) = deploy(&a, &manifest, &[]);
    assert_eq!(code, 0, "{stderr}");
    let compiled = stage_tasks(&events, "Compiling packages", "finished");
    assert_eq!(
        compiled.len(),
        2,
        "hello-lib and hello-server: {compiled:?}"
    );
    let version = hello_version(&a);

    // A stemcell nothing was compiled for cannot be exported for.
    upload_stemcell(&a, "2", None);
    let out_dir = a.home.path().join("exports");
    std::fs::create_dir(&out_dir).unwrap();
    let refused = a.run(&[
        "export-release",
        &format!("hello/{version}"),
        "debian-bookworm/2",
        "--dir",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains(
            "has no compiled build for stemcell debian-bookworm/2 of package(s) hello-lib, \
             hello-server: deploy something that uses it on that stemcell first"
        ),
        "{}",
        refused.stderr
    );
    assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 0);

    // The export, twice: the same builds give the same bytes.
    let export = |dir: &Path| {
        let out = a.run(&[
            "export-release",
            &format!("hello/{version}"),
            "debian-bookworm/1",
            "--dir",
            dir.to_str().unwrap(),
        ]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let tarball = dir.join(format!("hello-{version}-debian-bookworm-1.tgz"));
        assert!(tarball.is_file(), "{}", out.stderr);
        std::fs::read(tarball).unwrap()
    };
    let first = export(&out_dir);
    let again_dir = a.home.path().join("again");
    std::fs::create_dir(&again_dir).unwrap();
    assert_eq!(first, export(&again_dir), "the export is reproducible");
    let tarball = out_dir.join(format!("hello-{version}-debian-bookworm-1.tgz"));
    let listing = std::process::Command::new("tar")
        .arg("-tzf")
        .arg(&tarball)
        .output()
        .unwrap();
    let mut entries: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter(|l| !l.ends_with('/'))
        .map(str::to_string)
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        [
            "compiled_packages/hello-lib.tgz",
            "compiled_packages/hello-server.tgz",
            "jobs/hello-client.tgz",
            "jobs/hello-server.tgz",
            "jobs/hello-smoke-test.tgz",
            "release.MF",
        ],
        "{}",
        String::from_utf8_lossy(&listing.stderr)
    );

    // User B, on a director of their own, uploads the stemcell and the compiled release.
    let b = User::new();
    set_cloud_config(&b, 41);
    upload_stemcell(&b, "1", None);
    let upload = b.run(&["upload-release", tarball.to_str().unwrap()]);
    assert_eq!(upload.code, 0, "{}", upload.stderr);
    assert!(
        upload.stderr.contains(&format!(
            "uploaded release hello/{version} (2 compiled package(s))"
        )),
        "{}",
        upload.stderr
    );
    let again = b.run(&["upload-release", tarball.to_str().unwrap()]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again.stderr.contains(&format!(
            "release hello/{version} is already uploaded; nothing changed"
        )),
        "{}",
        again.stderr
    );

    // A deploy naming that version (no URL) compiles nothing, and every process runs.
    let written = write_manifest(&b, Path::new("/nonexistent"), &hello);
    let text = std::fs::read_to_string(&written).unwrap();
    let url_line = "- {name: hello, version: create, url: 'file:///nonexistent'}";
    assert!(text.contains(url_line), "{text}");
    let text = text.replace(
        url_line,
        &format!("- {{name: hello, version: '{version}'}}"),
    );
    let manifest = b.home.path().join("hello-compiled.yml");
    std::fs::write(&manifest, text).unwrap();
    let (code, events, stderr) = deploy(&b, &manifest, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!events.is_empty(), "{stderr}");
    assert!(
        stage_events(&events, "Compiling packages").is_empty(),
        "nothing is compiled: {events:#?}"
    );
    let list = instances(&b);
    assert_eq!(list.len(), 2, "{list:#?}");
    assert!(
        list.iter().all(|i| i["agent"]["job_state"] == "running"),
        "{list:#?}"
    );
    assert!(all_running(&list), "{list:#?}");

    // User C: a compiled package whose bytes are not what release.MF says is refused, and
    // nothing is recorded.
    let c = User::new();
    let tampered = tamper(&c, &tarball);
    let refused = c.run(&["upload-release", tampered.to_str().unwrap()]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("'compiled_packages/hello-lib.tgz' has digest sha256:"),
        "{}",
        refused.stderr
    );
    assert_eq!(c.json(&["releases"]), serde_json::json!([]));
    assert_eq!(c.blob_count(), 0);

    // The source release first, then the compiled one of the same version: its builds are
    // added (as BOSH allows), and once only.
    let source = c.hello_tarball();
    let out = c.run(&["upload-release", source.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        hello_version(&c),
        version,
        "the same sources, the same version"
    );
    let added = c.run(&["upload-release", tarball.to_str().unwrap()]);
    assert_eq!(added.code, 0, "{}", added.stderr);
    assert!(
        added.stderr.contains(&format!(
            "release hello/{version} is already uploaded; 2 compiled package(s) added"
        )),
        "{}",
        added.stderr
    );
    let again = c.run(&["upload-release", tarball.to_str().unwrap()]);
    assert!(
        again.stderr.contains(&format!(
            "release hello/{version} is already uploaded; nothing changed"
        )),
        "{}",
        again.stderr
    );
}

/// A copy of the compiled release `tarball` whose `compiled_packages/hello-lib.tgz` holds
/// other bytes (those of `hello-server`), its `release.MF` unchanged.
fn tamper(user: &User, tarball: &Path) -> std::path::PathBuf {
    use director_core::archive::{TgzEntry, TgzSource, write_tgz};
    let dir = user.home.path().join("tampered");
    std::fs::create_dir_all(&dir).unwrap();
    let status = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(tarball)
        .arg("-C")
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::copy(
        dir.join("compiled_packages/hello-server.tgz"),
        dir.join("compiled_packages/hello-lib.tgz"),
    )
    .unwrap();
    let mut entries = Vec::new();
    for folder in ["jobs", "compiled_packages"] {
        for entry in std::fs::read_dir(dir.join(folder)).unwrap() {
            let entry = entry.unwrap();
            entries.push(TgzEntry {
                path: format!("{folder}/{}", entry.file_name().to_string_lossy()),
                source: TgzSource::File {
                    path: entry.path(),
                    executable: false,
                },
            });
        }
    }
    entries.push(TgzEntry {
        path: "release.MF".to_string(),
        source: TgzSource::File {
            path: dir.join("release.MF"),
            executable: false,
        },
    });
    let out = user.home.path().join("tampered.tgz");
    write_tgz(std::fs::File::create(&out).unwrap(), entries).unwrap();
    out
}
