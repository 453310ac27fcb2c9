//! Bad release tarballs, each crafted here, each refused by the release reader with an exact
//! message (an `insta` snapshot), and none leaving anything in the staging parent directory.

use std::fs;
use std::io::Write;
use std::path::Path;

use director_core::archive::{Limits, TgzEntry, TgzSource, write_tgz};
use director_core::release::digest::sha256_string;
use director_core::release::{ReleaseError, read_archive_in};
use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};
use tar::{EntryType, Header};
use tempfile::TempDir;

/// One raw tar entry: name, type, content, link name. Names are written into the header as
/// bytes, so `..` and absolute paths get through (the tar crate's own API refuses them).
struct Raw<'a> {
    name: &'a str,
    kind: EntryType,
    data: Vec<u8>,
    link: &'a str,
}

fn file(name: &str, data: impl Into<Vec<u8>>) -> Raw<'_> {
    Raw {
        name,
        kind: EntryType::Regular,
        data: data.into(),
        link: "",
    }
}

fn link<'a>(name: &'a str, kind: EntryType, target: &'a str) -> Raw<'a> {
    Raw {
        name,
        kind,
        data: Vec::new(),
        link: target,
    }
}

fn tar_bytes(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = Header::new_gnu();
        header.as_old_mut().name[..entry.name.len()].copy_from_slice(entry.name.as_bytes());
        header.as_old_mut().linkname[..entry.link.len()].copy_from_slice(entry.link.as_bytes());
        header.set_entry_type(entry.kind);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_size(entry.data.len() as u64);
        header.set_cksum();
        builder.append(&header, entry.data.as_slice()).unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzBuilder::new().write(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A small valid job archive whose `job.MF` names `name`.
fn job_tgz(name: &str) -> Vec<u8> {
    write_tgz(
        Vec::new(),
        vec![TgzEntry {
            path: "job.MF".into(),
            source: TgzSource::Bytes {
                data: format!("name: {name}\ntemplates: {{}}\n").into_bytes(),
                executable: false,
            },
        }],
    )
    .unwrap()
}

fn package_tgz() -> Vec<u8> {
    write_tgz(
        Vec::new(),
        vec![TgzEntry {
            path: "packaging".into(),
            source: TgzSource::Bytes {
                data: b"make\n".to_vec(),
                executable: false,
            },
        }],
    )
    .unwrap()
}

/// A `release.MF` for job `web` (needing `packages`) and packages (name, dependencies), with
/// the digests of the archives `job_tgz`/`package_tgz` make.
fn manifest(job_packages: &[&str], packages: &[(&str, &[&str])]) -> String {
    let list = |items: &[&str]| format!("[{}]", items.join(", "));
    let mut text = format!(
        "name: demo\nversion: 0+dev.1\ncommit_hash: abc1234\nuncommitted_changes: false\n\
         jobs:\n- name: web\n  version: f1\n  fingerprint: f1\n  sha1: {}\n  packages: {}\n",
        sha256_string(&job_tgz("web")),
        list(job_packages)
    );
    if !packages.is_empty() {
        text.push_str("packages:\n");
        for (name, dependencies) in packages {
            text.push_str(&format!(
                "- name: {name}\n  version: p1\n  fingerprint: p1\n  sha1: {}\n  dependencies: {}\n",
                sha256_string(&package_tgz()),
                list(dependencies)
            ));
        }
    }
    text
}

/// A release tarball with `release.MF` = `manifest`, the job archive, one archive per
/// package of `packages`, and the `extra` entries.
fn release(manifest: &str, packages: &[&str], extra: Vec<Raw<'_>>) -> Vec<u8> {
    let mut entries = vec![
        file("release.MF", manifest),
        file("jobs/web.tgz", job_tgz("web")),
    ];
    let names: Vec<String> = packages
        .iter()
        .map(|p| format!("packages/{p}.tgz"))
        .collect();
    for name in &names {
        entries.push(file(name, package_tgz()));
    }
    entries.extend(extra);
    gzip(&tar_bytes(&entries))
}

/// Reads `bytes` as a release tarball, expects a refusal, checks the staging parent is left
/// empty, and returns the message with the temporary directory shown as `<tmp>`.
fn refusal(bytes: &[u8]) -> String {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("bad.tgz");
    fs::write(&path, bytes).unwrap();
    let staging = dir.path().join("staging");
    fs::create_dir(&staging).unwrap();
    let error = read_archive_in(&path, &Limits::default(), &staging)
        .expect_err("the reader refuses the tarball");
    let left: Vec<_> = fs::read_dir(&staging).unwrap().collect();
    assert!(left.is_empty(), "staging left behind: {left:?}");
    let outside: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        outside.len(),
        2,
        "nothing written next to the tarball: {outside:?}"
    );
    error
        .to_string()
        .replace(&dir.path().display().to_string(), "<tmp>")
}

fn good_manifest() -> String {
    manifest(&["app"], &[("app", &[])])
}

mod bad_release_archives {
    use super::*;

    #[test]
    fn a_good_one_is_accepted_and_staged() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("good.tgz");
        fs::write(&path, release(&good_manifest(), &["app"], vec![])).unwrap();
        let archive = read_archive_in(&path, &Limits::default(), dir.path()).unwrap();
        assert_eq!(archive.manifest.version, "0+dev.1");
        assert!(archive.job_archive("web").is_file());
        assert!(archive.package_archive("app").is_file());
        let staging = archive.dir().to_path_buf();
        drop(archive);
        assert!(
            !staging.exists(),
            "the staging directory goes with the archive"
        );
    }

    #[test]
    fn parent_dir_entry() {
        let text = refusal(&release(
            &good_manifest(),
            &["app"],
            vec![file("../evil", "x")],
        ));
        insta::assert_snapshot!(text);
    }

    #[test]
    fn absolute_entry() {
        let text = refusal(&release(
            &good_manifest(),
            &["app"],
            vec![file("/etc/evil", "x")],
        ));
        insta::assert_snapshot!(text);
    }

    #[test]
    fn symlink_pointing_outside() {
        let text = refusal(&release(
            &good_manifest(),
            &["app"],
            vec![link(
                "jobs/passwd",
                EntryType::Symlink,
                "../../../etc/passwd",
            )],
        ));
        insta::assert_snapshot!(text);
    }

    #[test]
    fn hard_link_pointing_outside() {
        let text = refusal(&release(
            &good_manifest(),
            &["app"],
            vec![link("jobs/passwd", EntryType::Link, "../etc/passwd")],
        ));
        insta::assert_snapshot!(text);
    }

    #[test]
    fn device_file() {
        let text = refusal(&release(
            &good_manifest(),
            &["app"],
            vec![Raw {
                name: "jobs/tty",
                kind: EntryType::Char,
                data: Vec::new(),
                link: "",
            }],
        ));
        insta::assert_snapshot!(text);
    }

    #[test]
    fn duplicate_entry() {
        let text = refusal(&release(
            &good_manifest(),
            &["app"],
            vec![file("./jobs/web.tgz", job_tgz("web"))],
        ));
        insta::assert_snapshot!(text);
    }

    #[test]
    fn entry_missing_from_the_archive() {
        let text = refusal(&release(&good_manifest(), &[], vec![]));
        insta::assert_snapshot!(text);
    }

    #[test]
    fn entry_not_in_release_mf() {
        let text = refusal(&release(
            &good_manifest(),
            &["app"],
            vec![file("packages/stowaway.tgz", package_tgz())],
        ));
        insta::assert_snapshot!(text);
    }

    #[test]
    fn digest_mismatch() {
        let text = refusal(&gzip(&tar_bytes(&[
            file("release.MF", good_manifest()),
            file("jobs/web.tgz", job_tgz("not-web")),
            file("packages/app.tgz", package_tgz()),
        ])));
        insta::assert_snapshot!(text);
    }

    #[test]
    fn truncated_gzip() {
        let whole = release(&good_manifest(), &["app"], vec![]);
        let text = refusal(&whole[..whole.len() / 2]);
        insta::assert_snapshot!(text);
        // Only the gzip trailer (CRC and length) missing: the tar stream is complete, but the
        // archive is still refused.
        let text = refusal(&whole[..whole.len() - 4]);
        assert!(text.contains("truncated or corrupt gzip data"), "{text}");
    }

    #[test]
    fn gzip_bomb() {
        // 64 MiB of zeros, about 64 KiB compressed: far past 20 times its size.
        let zeros = vec![0u8; 64 << 20];
        let mut tar = tar_bytes(&[file("release.MF", zeros)]);
        tar.extend_from_slice(&[0u8; 1024]);
        let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
        encoder.write_all(&tar).unwrap();
        let text = refusal(&encoder.finish().unwrap());
        insta::assert_snapshot!(text);
    }

    #[test]
    fn release_mf_not_yaml() {
        let text = refusal(&release(
            "name: demo\njobs: [unclosed\nversion: 1\n",
            &["app"],
            vec![],
        ));
        insta::assert_snapshot!(text);
    }

    #[test]
    fn package_cycle() {
        let text = refusal(&release(
            &manifest(&["a"], &[("a", &["b"]), ("b", &["c"]), ("c", &["a"])]),
            &["a", "b", "c"],
            vec![],
        ));
        insta::assert_snapshot!(text);
    }

    #[test]
    fn job_naming_an_unknown_package() {
        let text = refusal(&release(
            &manifest(&["app", "nginx"], &[("app", &[])]),
            &["app"],
            vec![],
        ));
        insta::assert_snapshot!(text);
    }

    #[test]
    fn job_archive_for_another_job() {
        // Digests match, but the job archive's job.MF names another job.
        let inner = job_tgz("db");
        let manifest =
            good_manifest().replace(&sha256_string(&job_tgz("web")), &sha256_string(&inner));
        let text = refusal(&gzip(&tar_bytes(&[
            file("release.MF", manifest),
            file("jobs/web.tgz", inner),
            file("packages/app.tgz", package_tgz()),
        ])));
        insta::assert_snapshot!(text);
    }

    #[test]
    fn every_refusal_is_a_typed_error() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("x.tgz");
        fs::write(&path, release("name: [", &[], vec![])).unwrap();
        let error = read_archive_in(&path, &Limits::default(), dir.path()).unwrap_err();
        assert!(matches!(error, ReleaseError::Invalid(_)), "{error:?}");
        assert!(Path::new(&path).exists());
    }
}

/// A small compiled package archive (the install target: an executable).
fn compiled_tgz() -> Vec<u8> {
    write_tgz(
        Vec::new(),
        vec![TgzEntry {
            path: "bin/app".into(),
            source: TgzSource::Bytes {
                data: b"#!/bin/sh\necho app\n".to_vec(),
                executable: true,
            },
        }],
    )
    .unwrap()
}

/// A compiled release's `release.MF`: job `web` needing `app`, and compiled packages
/// (name, dependencies) for `debian-bookworm/1`, with the digest `compiled_tgz` makes.
fn compiled_manifest(packages: &[(&str, &[&str])]) -> String {
    let list = |items: &[&str]| format!("[{}]", items.join(", "));
    let mut text = format!(
        "name: demo\nversion: 0+dev.1\ncommit_hash: abc1234\nuncommitted_changes: false\n\
         jobs:\n- name: web\n  version: f1\n  fingerprint: f1\n  sha1: {}\n  packages: [app]\n\
         compiled_packages:\n",
        sha256_string(&job_tgz("web")),
    );
    for (name, dependencies) in packages {
        text.push_str(&format!(
            "- name: {name}\n  version: p{name}.2\n  fingerprint: p{name}\n  sha1: {}\n  \
             stemcell: debian-bookworm/1\n  dependencies: {}\n",
            sha256_string(&compiled_tgz()),
            list(dependencies)
        ));
    }
    text
}

/// A compiled release tarball: `release.MF`, the job archive, one compiled archive per
/// package of `packages`, and the `extra` entries.
fn compiled_release(manifest: &str, packages: &[&str], extra: Vec<Raw<'_>>) -> Vec<u8> {
    let mut entries = vec![
        file("release.MF", manifest),
        file("jobs/web.tgz", job_tgz("web")),
    ];
    let names: Vec<String> = packages
        .iter()
        .map(|p| format!("compiled_packages/{p}.tgz"))
        .collect();
    for name in &names {
        entries.push(file(name, compiled_tgz()));
    }
    entries.extend(extra);
    gzip(&tar_bytes(&entries))
}

fn good_compiled_manifest() -> String {
    compiled_manifest(&[("app", &["lib"]), ("lib", &[])])
}

mod compiled_release_archives {
    use super::*;
    use director_core::release::archive::write_release_tarball;

    #[test]
    fn a_compiled_release_is_accepted_and_staged() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("compiled.tgz");
        fs::write(
            &path,
            compiled_release(&good_compiled_manifest(), &["app", "lib"], vec![]),
        )
        .unwrap();
        let archive = read_archive_in(&path, &Limits::default(), dir.path()).unwrap();
        assert!(archive.manifest.packages.is_empty());
        let names: Vec<String> = archive
            .compiled_packages
            .iter()
            .map(|p| {
                let (os, version) = p.stemcell_os_version();
                format!(
                    "{} {} {:?} {os} {version}",
                    p.name,
                    p.fingerprint,
                    p.build()
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                "app papp Some(2) debian-bookworm 1",
                "lib plib Some(2) debian-bookworm 1",
            ]
        );
        assert_eq!(archive.compiled_packages[0].dependencies, vec!["lib"]);
        assert_eq!(
            fs::read(archive.compiled_package_archive("app")).unwrap(),
            compiled_tgz()
        );
        let staging = archive.dir().to_path_buf();
        drop(archive);
        assert!(!staging.exists());
    }

    #[test]
    fn compiled_digest_mismatch() {
        let text = refusal(&gzip(&tar_bytes(&[
            file("release.MF", good_compiled_manifest()),
            file("jobs/web.tgz", job_tgz("web")),
            file("compiled_packages/app.tgz", compiled_tgz()),
            file("compiled_packages/lib.tgz", package_tgz()),
        ])));
        insta::assert_snapshot!(text);
    }

    #[test]
    fn compiled_package_missing_from_the_archive() {
        let text = refusal(&compiled_release(
            &good_compiled_manifest(),
            &["app"],
            vec![],
        ));
        insta::assert_snapshot!(text);
    }

    #[test]
    fn compiled_package_also_listed_as_source() {
        let manifest = format!(
            "{}packages:\n- name: app\n  version: p1\n  fingerprint: p1\n  sha1: {}\n  dependencies: []\n",
            compiled_manifest(&[("app", &[])]),
            sha256_string(&package_tgz())
        );
        let text = refusal(&compiled_release(
            &manifest,
            &["app"],
            vec![file("packages/app.tgz", package_tgz())],
        ));
        insta::assert_snapshot!(text);
    }

    #[test]
    fn compiled_package_with_an_unknown_dependency() {
        let text = refusal(&compiled_release(
            &compiled_manifest(&[("app", &["nowhere"])]),
            &["app"],
            vec![],
        ));
        insta::assert_snapshot!(text);
    }

    #[test]
    fn compiled_package_with_a_bad_stemcell() {
        let manifest = good_compiled_manifest().replace("debian-bookworm/1", "debian-bookworm");
        let text = refusal(&compiled_release(&manifest, &["app", "lib"], vec![]));
        insta::assert_snapshot!(text);
    }

    #[test]
    fn the_writer_makes_the_same_bytes_and_the_reader_takes_them_back() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("compiled.tgz");
        fs::write(
            &path,
            compiled_release(&good_compiled_manifest(), &["app", "lib"], vec![]),
        )
        .unwrap();
        let read = read_archive_in(&path, &Limits::default(), dir.path()).unwrap();
        let first = write_release_tarball(
            &read.manifest,
            &read.compiled_packages,
            read.dir(),
            Vec::new(),
        )
        .unwrap();
        let second = write_release_tarball(
            &read.manifest,
            &read.compiled_packages,
            read.dir(),
            Vec::new(),
        )
        .unwrap();
        assert_eq!(first, second, "the same archives give the same bytes");

        // Its entries: release.MF, the archives byte for byte, their folders; modes and
        // times fixed.
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(first.as_slice()));
        let mut entries = Vec::new();
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            let header = entry.header().clone();
            let mut content = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut content).unwrap();
            let name = entry.path().unwrap().display().to_string();
            entries.push((
                name,
                header.mode().unwrap(),
                header.mtime().unwrap(),
                content,
            ));
        }
        let names: Vec<(&str, u32, u64)> = entries
            .iter()
            .map(|(n, mode, mtime, _)| (n.as_str(), *mode, *mtime))
            .collect();
        assert_eq!(
            names,
            vec![
                ("compiled_packages/", 0o755, 0),
                ("compiled_packages/app.tgz", 0o644, 0),
                ("compiled_packages/lib.tgz", 0o644, 0),
                ("jobs/", 0o755, 0),
                ("jobs/web.tgz", 0o644, 0),
                ("release.MF", 0o644, 0),
            ]
        );
        assert_eq!(entries[1].3, compiled_tgz());
        assert_eq!(entries[4].3, job_tgz("web"));
        let written_manifest = String::from_utf8(entries[5].3.clone()).unwrap();
        assert_eq!(
            written_manifest,
            read.manifest.to_compiled_yaml(&read.compiled_packages)
        );

        // Read back, it is the same release.
        let again = dir.path().join("again.tgz");
        fs::write(&again, &first).unwrap();
        let back = read_archive_in(&again, &Limits::default(), dir.path()).unwrap();
        assert_eq!(back.manifest, read.manifest);
        assert_eq!(back.compiled_packages, read.compiled_packages);

        // A source release too.
        let source = dir.path().join("source.tgz");
        fs::write(&source, release(&good_manifest(), &["app"], vec![])).unwrap();
        let source = read_archive_in(&source, &Limits::default(), dir.path()).unwrap();
        let written =
            write_release_tarball(&source.manifest, &[], source.dir(), Vec::new()).unwrap();
        let again = dir.path().join("source-again.tgz");
        fs::write(&again, &written).unwrap();
        let back = read_archive_in(&again, &Limits::default(), dir.path()).unwrap();
        assert_eq!(back.manifest, source.manifest);
        assert!(back.compiled_packages.is_empty());
    }

    #[test]
    fn the_writer_refuses_a_missing_archive() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("compiled.tgz");
        fs::write(
            &path,
            compiled_release(&good_compiled_manifest(), &["app", "lib"], vec![]),
        )
        .unwrap();
        let read = read_archive_in(&path, &Limits::default(), dir.path()).unwrap();
        fs::remove_file(read.compiled_package_archive("lib")).unwrap();
        let error = write_release_tarball(
            &read.manifest,
            &read.compiled_packages,
            read.dir(),
            Vec::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.ends_with("compiled_packages/lib.tgz: the archive to write as 'compiled_packages/lib.tgz' is missing"),
            "{error}"
        );
    }
}
