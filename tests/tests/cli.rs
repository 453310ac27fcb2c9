//! The `director` command line as users meet it: help, global flags before or after the verb,
//! completions, exit codes, diff formats, variable errors, a closed stdout, and `interpolate`
//! answering as `bosh interpolate` does.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tests::{director, run};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

fn diff(args: &[&str]) -> tests::Run {
    run(director()
        .current_dir(corpus().join("diff"))
        .args(["diff", "old.yml", "new.yml", "-l", "vars.yml"])
        .args(args))
}

#[test]
fn help_lists_only_the_verbs_that_exist() {
    let out = run(director().arg("--help"));
    assert_eq!(out.code, 0);
    insta::assert_snapshot!(out.stdout);
}

#[test]
fn global_flags_go_before_or_after_the_verb() {
    for args in [
        vec![
            "--json",
            "validate",
            "manifest.yml",
            "--cloud-config",
            "cloud-config.yml",
        ],
        vec![
            "validate",
            "manifest.yml",
            "--json",
            "--cloud-config",
            "cloud-config.yml",
        ],
        vec![
            "validate",
            "--no-color",
            "-n",
            "manifest.yml",
            "--cloud-config",
            "cloud-config.yml",
            "--json",
            "-d",
            "shop",
        ],
    ] {
        let out = run(director().current_dir(corpus()).args(&args));
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
        let doc: serde_json::Value =
            serde_json::from_str(&out.stdout).expect("stdout is one JSON document");
        assert_eq!(doc["valid"], true, "{args:?}");
    }
}

#[test]
fn validate_json_lists_every_diagnostic() {
    let out = run(director().current_dir(corpus()).args([
        "validate",
        "manifests/many-problems-at-once.yml",
        "--cloud-config",
        "cloud-config.yml",
        "--json",
    ]));
    assert_eq!(out.code, 1);
    insta::assert_snapshot!(out.stdout);
}

#[test]
fn completions_for_three_shells() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run(director().args(["completion", shell]));
        assert_eq!(out.code, 0, "{shell}: {}", out.stderr);
        for verb in ["interpolate", "validate", "diff"] {
            assert!(out.stdout.contains(verb), "{shell} completion lacks {verb}");
        }
    }
}

#[test]
fn diff_text_is_bosh_style_and_redacted() {
    let out = diff(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    insta::assert_snapshot!(out.stdout);
}

#[test]
fn diff_markdown_for_pull_requests() {
    let out = diff(&["--format", "markdown"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    insta::assert_snapshot!(out.stdout);
}

#[test]
fn diff_json_for_tools() {
    let out = diff(&["--format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    insta::assert_json_snapshot!(doc["changes"]);
    assert_eq!(doc["changed"], true);
    // --json (global) is the same view.
    let global = diff(&["--json"]);
    assert_eq!(global.stdout, out.stdout);
}

#[test]
fn diff_never_prints_secrets_unless_asked() {
    let secrets = [
        "correct-horse-battery-staple",
        "Tr0ub4dor-and-3",
        "hunter2-session",
        "s3cr3t-token",
        "*/5",
    ];
    for format in ["text", "markdown", "json"] {
        let out = diff(&["--format", format]);
        for secret in secrets {
            assert!(
                !out.stdout.contains(secret) && !out.stderr.contains(secret),
                "{format} shows {secret}"
            );
        }
    }
    let out = diff(&["--no-redact"]);
    assert!(
        out.stdout.contains("+         password: Tr0ub4dor-and-3"),
        "{}",
        out.stdout
    );
}

#[test]
fn diff_exit_codes() {
    assert_eq!(diff(&["--exit-code"]).code, 2);
    let same = run(director().current_dir(corpus().join("diff")).args([
        "diff",
        "old.yml",
        "old.yml",
        "-l",
        "vars.yml",
        "--exit-code",
    ]));
    assert_eq!(
        (same.code, same.stdout.as_str(), same.stderr.as_str()),
        (0, "", "no changes\n")
    );
    let broken = run(director().current_dir(corpus()).args([
        "diff",
        "manifest.yml",
        "manifests/unclosed-bracket.yml",
        "--exit-code",
    ]));
    assert_eq!(broken.code, 1);
    assert!(
        broken
            .stderr
            .contains("manifests/unclosed-bracket.yml:33:12:"),
        "{}",
        broken.stderr
    );
}

#[test]
fn variable_errors_name_every_variable() {
    let out =
        run(director()
            .current_dir(corpus())
            .args(["interpolate", "manifest.yml", "--var-errs"]));
    assert_eq!(out.code, 1);
    insta::assert_snapshot!(out.stderr);
    let out = run(director().current_dir(corpus()).args([
        "interpolate",
        "manifest.yml",
        "-v",
        "admin_password=x",
        "-v",
        "unused=y",
        "--var-errs-unused",
    ]));
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr,
        "error: expected to use variables: unused (given but never referenced)\n"
    );
}

#[test]
fn a_closed_stdout_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let big: String = (0..20_000)
        .map(|i| format!("key_{i}: value number {i}\n"))
        .collect();
    std::fs::write(dir.path().join("big.yml"), big).unwrap();
    let mut child = director()
        .current_dir(dir.path())
        .args(["interpolate", "big.yml"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    drop(child.stdout.take());
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "exit {status:?}, stderr: {stderr}");
    assert_eq!(stderr, "");
}

#[test]
fn missing_files_are_named() {
    let out = run(director().args(["interpolate", "does-not-exist.yml"]));
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .starts_with("error: cannot read does-not-exist.yml: "),
        "{}",
        out.stderr
    );
}

/// `director interpolate` in a fresh directory holding `files` (name, text), with `args` and
/// the environment variables `env`.
fn interpolate(files: &[(&str, &str)], env: &[(&str, &str)], args: &[&str]) -> tests::Run {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    run(director()
        .current_dir(dir.path())
        .envs(env.iter().copied())
        .arg("interpolate")
        .args(args))
}

const DEFINITIONS: &str = "\
name: app
password: ((admin_password))
ca: ((default_ca.certificate))
from_env: ((from_env))
from_file: ((from_file))
variables:
- name: admin_password
  type: password
- name: default_ca
  type: certificate
  options: {is_ca: true, common_name: ca}
- name: from_env
  type: password
- name: from_file
  type: password
- name: still_to_generate
  type: password
";

#[test]
fn interpolate_drops_the_definitions_the_command_line_settles() {
    let files = [
        ("manifest.yml", DEFINITIONS),
        ("ca.yml", "default_ca: {certificate: CA-CERT}\n"),
        ("file.txt", "from a file"),
    ];
    let flags = [
        "manifest.yml",
        "-v",
        "admin_password=secret",
        "-l",
        "ca.yml",
        "--vars-env",
        "VARS",
        "--var-file",
        "from_file=file.txt",
    ];
    let out = interpolate(&files, &[("VARS_from_env", "env")], &flags);
    assert_eq!(out.code, 0, "{}", out.stderr);
    insta::assert_snapshot!("interpolate_drops_given_definitions", out.stdout);

    // With a vars store the rest is generated, so found, and dropped too (bosh-cli #389).
    let flags = [&flags[..], &["--vars-store", "creds.yml"]].concat();
    let out = interpolate(&files, &[("VARS_from_env", "env")], &flags);
    assert_eq!(out.code, 0, "{}", out.stderr);
    insta::assert_snapshot!("interpolate_drops_generated_definitions", out.stdout);
}

#[test]
fn interpolate_merges_dotted_v_names_into_maps() {
    let files = [
        ("manifest.yml", "whole: ((a))\npart: ((a.b))\nkept: ((m))\n"),
        ("vars.yml", "m: {k: from-file, other: kept}\n"),
    ];
    let out = interpolate(
        &files,
        &[],
        &[
            "manifest.yml",
            "-v",
            "a.b=x",
            // `y` is YAML 1.1's true, in bosh-cli too: `-v` values are read as YAML.
            "-v",
            "a.c=y",
            "-v",
            "a.d.e=1",
            "-v",
            "m.k=from-v",
            "-l",
            "vars.yml",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    insta::assert_snapshot!(out.stdout);
}

#[test]
fn interpolate_inserts_a_quoted_v_string_as_its_text() {
    let files = [("manifest.yml", "part: x-((v))\nwhole: ((v))\n")];
    let out = interpolate(&files, &[], &["manifest.yml", "-v", r#"v="7""#]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "part: x-7\nwhole: \"7\"\n");
    let out = interpolate(&files, &[], &["manifest.yml", "-v", "v='7'"]);
    assert_eq!(out.stdout, "part: x-7\nwhole: \"7\"\n");
    let out = interpolate(&files, &[], &["manifest.yml", "-v", "v=7"]);
    assert_eq!(out.stdout, "part: x-7\nwhole: 7\n");
}

#[test]
fn interpolate_leaves_placeholders_with_spaces_as_written() {
    let files = [(
        "manifest.yml",
        "both: (( name ))\nleft: (( name))\nright: ((name ))\nnone: ((name))\n",
    )];
    let out = interpolate(
        &files,
        &[],
        &["manifest.yml", "-v", "name=value", "--var-errs"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    insta::assert_snapshot!(out.stdout);
}

#[test]
fn interpolate_refuses_a_replace_with_a_null_value() {
    let files = [
        ("manifest.yml", "a: 1\n"),
        ("ops.yml", "- type: replace\n  path: /a\n  value: null\n"),
    ];
    let out = interpolate(&files, &[], &["manifest.yml", "-o", "ops.yml"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert_eq!(out.stdout, "");
    insta::assert_snapshot!(out.stderr);
}

#[test]
fn interpolate_quotes_strings_yaml_would_read_as_timestamps() {
    let files = [(
        "manifest.yml",
        "\
quoted_date: \"2001-12-14\"
plain_date: 2001-12-14
date_time: \"2001-12-14t21:59:43.10-05:00\"
spaced: \"2001-12-14 21:59:43.10\"
sexagesimal: \"1:20\"
not_a_day: \"2001-02-29\"
not_a_zone: \"2001-12-14 21:59:43.10 -5\"
",
    )];
    let out = interpolate(&files, &[], &["manifest.yml"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    insta::assert_snapshot!(out.stdout);
}
