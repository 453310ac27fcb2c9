//! The corpus of broken manifests, cloud configs, runtime configs and ops files in
//! `tests/corpus/`: each gets a snapshot of the exact error text `director` prints, must
//! fail with exit code 1, and must never panic.

use std::path::{Path, PathBuf};

use tests::{director, run};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

fn check(args: &[&str]) -> String {
    let out = run(director().current_dir(corpus()).args(args));
    assert!(
        !out.stderr.contains("panicked"),
        "{} panicked:\n{}",
        args.join(" "),
        out.stderr
    );
    assert_eq!(
        out.code,
        1,
        "{} should fail:\n{}",
        args.join(" "),
        out.stderr
    );
    format!(
        "$ director {}\nexit code: {}\n{}",
        args.join(" "),
        out.code,
        out.stderr
    )
}

fn relative(path: &Path) -> String {
    path.strip_prefix(corpus())
        .expect("inside the corpus")
        .display()
        .to_string()
}

#[test]
fn the_good_inputs_are_valid() {
    let out = run(director().current_dir(corpus()).args([
        "validate",
        "manifest.yml",
        "--cloud-config",
        "cloud-config.yml",
        "--runtime-config",
        "runtime-config.yml",
    ]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stderr, "manifest.yml is valid\n");
    let out = run(director()
        .current_dir(corpus())
        .args(["interpolate", "base.yml"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn broken_manifests() {
    insta::glob!(
        concat!(env!("CARGO_MANIFEST_DIR"), "/corpus"),
        "manifests/*.yml",
        |path| {
            let file = relative(path);
            insta::assert_snapshot!(check(&[
                "validate",
                &file,
                "--cloud-config",
                "cloud-config.yml"
            ]));
        }
    );
}

#[test]
fn broken_cloud_configs() {
    insta::glob!(
        concat!(env!("CARGO_MANIFEST_DIR"), "/corpus"),
        "cloud-configs/*.yml",
        |path| {
            let file = relative(path);
            insta::assert_snapshot!(check(&[
                "validate",
                "manifest.yml",
                "--cloud-config",
                &file
            ]));
        }
    );
}

#[test]
fn broken_runtime_configs() {
    insta::glob!(
        concat!(env!("CARGO_MANIFEST_DIR"), "/corpus"),
        "runtime-configs/*.yml",
        |path| {
            let file = relative(path);
            insta::assert_snapshot!(check(&[
                "validate",
                "manifest.yml",
                "--runtime-config",
                &file
            ]));
        }
    );
}

#[test]
fn broken_ops_files() {
    insta::glob!(
        concat!(env!("CARGO_MANIFEST_DIR"), "/corpus"),
        "ops/*.yml",
        |path| {
            let file = relative(path);
            insta::assert_snapshot!(check(&["interpolate", "base.yml", "-o", &file]));
        }
    );
}
