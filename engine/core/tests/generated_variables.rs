//! Generated variables checked by the real tools that will consume them: `openssl verify`
//! must accept the certificate chains, and `ssh-keygen` must load the SSH keys and derive the
//! same public key. Both binaries are required: a missing one fails the test, because a
//! silently skipped check would hide a broken format.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use director_core::variables::generate;
use director_core::yaml::{self, Node};

/// Runs a tool, failing with a clear message when it is not installed.
fn run(program: &str, args: &[&str], dir: &Path) -> Output {
    match Command::new(program).args(args).current_dir(dir).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{program}` is not installed (or not on PATH): this test needs it to check generated \
             variables; install it (e.g. apt-get install openssl openssh-client)"
        ),
        Err(e) => panic!("cannot run `{program}`: {e}"),
    }
}

/// Runs a tool that must succeed, returning its stdout.
fn run_ok(program: &str, args: &[&str], dir: &Path) -> String {
    let output = run(program, args, dir);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "`{program} {}` failed ({}):\nstdout: {stdout}\nstderr: {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn options(text: &str) -> Node {
    yaml::parse(text, "opts.yml").expect("options parse")
}

fn certificate(name: &str, opts: &str, ca: Option<&Node>) -> Node {
    let opts = options(opts);
    generate(name, "certificate", Some(&opts), ca)
        .unwrap_or_else(|e| panic!("generating {name}: {e}"))
}

fn field<'a>(node: &'a Node, key: &str) -> &'a str {
    node.get(key)
        .and_then(Node::as_str)
        .unwrap_or_else(|| panic!("generated value has no string {key}"))
}

fn write(dir: &Path, name: &str, text: &str, mode: u32) {
    let path = dir.join(name);
    fs::write(&path, text).expect("write file");
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn openssl_verifies_generated_certificate_chains() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();

    let root = certificate("root_ca", "is_ca: true\ncommon_name: root-ca\n", None);
    let leaf = certificate(
        "leaf",
        "ca: root_ca\ncommon_name: web.internal\n\
         alternative_names: [10.244.0.10, web.internal, \"*.web.internal\"]\n\
         extended_key_usage: [server_auth]\n",
        Some(&root),
    );
    let intermediate = certificate(
        "intermediate_ca",
        "ca: root_ca\nis_ca: true\ncommon_name: intermediate-ca\n",
        Some(&root),
    );
    let deep = certificate(
        "deep",
        "ca: intermediate_ca\ncommon_name: deep.internal\nalternative_names: [deep.internal]\n",
        Some(&intermediate),
    );

    write(dir, "ca.pem", field(&root, "certificate"), 0o644);
    write(dir, "leaf.pem", field(&leaf, "certificate"), 0o644);
    write(
        dir,
        "intermediate.pem",
        field(&intermediate, "certificate"),
        0o644,
    );
    write(dir, "deep.pem", field(&deep, "certificate"), 0o644);
    write(dir, "leaf-ca.pem", field(&leaf, "ca"), 0o644);

    let out = run_ok("openssl", &["verify", "-CAfile", "ca.pem", "leaf.pem"], dir);
    assert_eq!(out.trim(), "leaf.pem: OK");
    // The leaf's `ca` field is the CA it was signed with.
    let out = run_ok(
        "openssl",
        &["verify", "-CAfile", "leaf-ca.pem", "leaf.pem"],
        dir,
    );
    assert_eq!(out.trim(), "leaf.pem: OK");
    // The purpose check uses the extended key usage and the SANs' host check.
    let out = run_ok(
        "openssl",
        &[
            "verify",
            "-CAfile",
            "ca.pem",
            "-purpose",
            "sslserver",
            "-verify_ip",
            "10.244.0.10",
            "leaf.pem",
        ],
        dir,
    );
    assert_eq!(out.trim(), "leaf.pem: OK");
    let out = run_ok(
        "openssl",
        &[
            "verify",
            "-CAfile",
            "ca.pem",
            "-verify_hostname",
            "api.web.internal",
            "leaf.pem",
        ],
        dir,
    );
    assert_eq!(out.trim(), "leaf.pem: OK");
    // A name the certificate does not carry is refused, so the checks above mean something.
    let refused = run(
        "openssl",
        &[
            "verify",
            "-CAfile",
            "ca.pem",
            "-verify_hostname",
            "other.internal",
            "leaf.pem",
        ],
        dir,
    );
    assert!(!refused.status.success(), "other.internal must not verify");

    let out = run_ok(
        "openssl",
        &["verify", "-CAfile", "ca.pem", "intermediate.pem"],
        dir,
    );
    assert_eq!(out.trim(), "intermediate.pem: OK");
    let out = run_ok(
        "openssl",
        &[
            "verify",
            "-CAfile",
            "ca.pem",
            "-untrusted",
            "intermediate.pem",
            "deep.pem",
        ],
        dir,
    );
    assert_eq!(out.trim(), "deep.pem: OK");

    // The private keys are PKCS#1 and belong to their certificates.
    write(dir, "leaf.key", field(&leaf, "private_key"), 0o600);
    let key_modulus = run_ok(
        "openssl",
        &["rsa", "-in", "leaf.key", "-noout", "-modulus"],
        dir,
    );
    let cert_modulus = run_ok(
        "openssl",
        &["x509", "-in", "leaf.pem", "-noout", "-modulus"],
        dir,
    );
    assert_eq!(key_modulus, cert_modulus);
    let text = run_ok(
        "openssl",
        &["x509", "-in", "leaf.pem", "-noout", "-text"],
        dir,
    );
    assert!(text.contains("IP Address:10.244.0.10"), "{text}");
    assert!(text.contains("DNS:web.internal"), "{text}");
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
    assert!(text.contains("Public-Key: (3072 bit)"), "{text}");
}

#[test]
fn ssh_keygen_loads_generated_ssh_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let value = generate("jumpbox_ssh", "ssh", None, None).expect("ssh key");
    let public_key = field(&value, "public_key");
    let fingerprint = field(&value, "public_key_fingerprint");

    write(dir, "id_rsa", field(&value, "private_key"), 0o600);
    write(dir, "id_rsa.pub", &format!("{public_key}\n"), 0o644);

    let private_listing = run_ok("ssh-keygen", &["-l", "-f", "id_rsa"], dir);
    let public_listing = run_ok("ssh-keygen", &["-l", "-f", "id_rsa.pub"], dir);
    assert!(
        private_listing.starts_with("2048 SHA256:"),
        "{private_listing}"
    );
    assert!(
        public_listing.starts_with("2048 SHA256:"),
        "{public_listing}"
    );
    let sha256 = |listing: &str| listing.split_whitespace().nth(1).map(str::to_string);
    assert_eq!(sha256(&private_listing), sha256(&public_listing));

    let derived = run_ok("ssh-keygen", &["-y", "-f", "id_rsa"], dir);
    assert_eq!(derived.trim_end(), public_key);

    // bosh-cli's fingerprint is the legacy MD5 one, as `ssh-keygen -E md5` shows it.
    let md5_listing = run_ok("ssh-keygen", &["-E", "md5", "-l", "-f", "id_rsa.pub"], dir);
    let shown = md5_listing
        .split_whitespace()
        .nth(1)
        .expect("ssh-keygen listing has a fingerprint");
    assert_eq!(shown, format!("MD5:{fingerprint}"));
}

#[test]
fn openssl_loads_generated_rsa_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let value = generate("signing_key", "rsa", None, None).expect("rsa key");
    write(dir, "key.pem", field(&value, "private_key"), 0o600);
    write(dir, "pub.pem", field(&value, "public_key"), 0o644);
    run_ok(
        "openssl",
        &["rsa", "-in", "key.pem", "-check", "-noout"],
        dir,
    );
    let derived = run_ok("openssl", &["rsa", "-in", "key.pem", "-pubout"], dir);
    assert_eq!(derived, field(&value, "public_key"));
}
