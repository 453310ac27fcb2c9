//! `director interpolate` of bosh-deployment's director with the docker CPI, jumpbox user,
//! UAA and CredHub, compared with what `bosh interpolate` prints for the same flags (the
//! expected document is derived by hand from the fixtures and go-patch's rules), then the
//! generated credentials checked with openssl and ssh-keygen, and a second run checked to
//! change nothing.

use std::path::Path;
use std::process::Command;

use director_core::yaml::{self, Node, Value};
use tests::{bosh_deployment, director, fixtures, run};

const DOCKER_TLS: &str = "docker_tls:\n  ca: TEST-DOCKER-CA\n  certificate: TEST-DOCKER-CERT\n  private_key: TEST-DOCKER-KEY\n";

fn interpolate(dir: &Path) -> tests::Run {
    let deployment = bosh_deployment();
    let mut command = director();
    command
        .current_dir(dir)
        .arg("interpolate")
        .arg(deployment.join("bosh.yml"))
        .args([
            "-o",
            &deployment.join("docker/cpi.yml").display().to_string(),
        ])
        .args([
            "-o",
            &deployment.join("jumpbox-user.yml").display().to_string(),
        ])
        .args(["-o", &deployment.join("uaa.yml").display().to_string()])
        .args(["-o", &deployment.join("credhub.yml").display().to_string()])
        .args(["--vars-store", "creds.yml"])
        .args(["-v", "director_name=d"])
        .args(["-v", "internal_cidr=10.245.0.0/16"])
        .args(["-v", "internal_gw=10.245.0.1"])
        .args(["-v", "internal_ip=10.245.0.11"])
        .args(["-v", "docker_host=unix:///var/run/docker.sock"])
        .args(["-v", "network=net"])
        .args(["-l", "docker-tls.yml"]);
    run(&mut command)
}

/// Resolves `((name))` and `((name.key))` in the expected document from the vars store,
/// independently of the engine's interpolator.
fn resolve_expected(node: &mut Node, creds: &Node) {
    match &mut node.value {
        Value::Seq(items) => items.iter_mut().for_each(|n| resolve_expected(n, creds)),
        Value::Map(map) => map.iter_mut().for_each(|(_, v)| resolve_expected(v, creds)),
        Value::Str(text) => {
            if let Some(inner) = text.strip_prefix("((").and_then(|t| t.strip_suffix("))")) {
                let mut value = creds.clone();
                for part in inner.split('.') {
                    value = value
                        .get(part)
                        .unwrap_or_else(|| panic!("creds.yml has no {inner}"))
                        .clone();
                }
                *node = value;
            } else if text.contains("((") {
                let mut out = text.clone();
                while let Some(start) = out.find("((") {
                    let end = out[start..].find("))").expect("closed placeholder") + start;
                    let name = out[start + 2..end].to_string();
                    let value = creds
                        .get(&name)
                        .and_then(Node::as_str)
                        .expect("a string variable")
                        .to_string();
                    out.replace_range(start..end + 2, &value);
                }
                *text = out;
            }
        }
        _ => {}
    }
}

/// Semantic equality: maps regardless of key order, sequences in order, scalars by value.
fn assert_same(actual: &Node, expected: &Node, path: &str) {
    match (&actual.value, &expected.value) {
        (Value::Map(a), Value::Map(e)) => {
            let mut a_keys: Vec<String> = a
                .iter()
                .map(|(k, _)| k.scalar_text().unwrap_or_default())
                .collect();
            let mut e_keys: Vec<String> = e
                .iter()
                .map(|(k, _)| k.scalar_text().unwrap_or_default())
                .collect();
            a_keys.sort();
            e_keys.sort();
            assert_eq!(a_keys, e_keys, "keys differ at {path}");
            for (key, value) in e.iter() {
                let other = a
                    .get_node(key)
                    .unwrap_or_else(|| panic!("missing {path}/{}", key.describe()));
                assert_same(
                    other,
                    value,
                    &format!("{path}/{}", key.scalar_text().unwrap_or_default()),
                );
            }
        }
        (Value::Seq(a), Value::Seq(e)) => {
            assert_eq!(a.len(), e.len(), "list lengths differ at {path}");
            for (i, (x, y)) in a.iter().zip(e).enumerate() {
                assert_same(x, y, &format!("{path}/{i}"));
            }
        }
        _ => assert!(
            actual.same_value(expected),
            "values differ at {path}: got {}, expected {}",
            actual.describe(),
            expected.describe()
        ),
    }
}

fn pem(value: &Node, key: &str, label: &str) -> String {
    let text = value
        .get(key)
        .and_then(Node::as_str)
        .unwrap_or_else(|| panic!("{label}.{key} is a string"))
        .to_string();
    assert!(text.starts_with("-----BEGIN "), "{label}.{key} is PEM");
    text
}

fn openssl_verify(dir: &Path, ca_pem: &str, cert_pem: &str, label: &str) {
    std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
    std::fs::write(dir.join("cert.pem"), cert_pem).unwrap();
    let out = Command::new("openssl")
        .args(["verify", "-CAfile", "ca.pem", "cert.pem"])
        .current_dir(dir)
        .output()
        .expect("openssl is installed (.ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("cert.pem: OK"),
        "{label} does not verify: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn matches_bosh_interpolate_and_generates_real_credentials() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("docker-tls.yml"), DOCKER_TLS).unwrap();

    let first = interpolate(dir.path());
    assert_eq!(first.code, 0, "stderr: {}", first.stderr);
    let creds_text = std::fs::read_to_string(dir.path().join("creds.yml")).unwrap();
    let creds = yaml::parse(&creds_text, "creds.yml").unwrap();

    // The document, semantically.
    let actual = yaml::parse(&first.stdout, "stdout").unwrap();
    let expected_text =
        std::fs::read_to_string(fixtures().join("expected/bosh-docker-jumpbox-uaa-credhub.yml"))
            .unwrap();
    let mut expected = yaml::parse(&expected_text, "expected.yml").unwrap();
    resolve_expected(&mut expected, &creds);
    assert_same(&actual, &expected, "");

    // Keys come out sorted as go-yaml sorts them, sequences are not indented, as bosh-cli prints.
    assert!(
        first.stdout.starts_with(
            "cloud_provider:\n  cert:\n    ca: |\n      -----BEGIN CERTIFICATE-----\n"
        )
    );
    assert!(
        first
            .stdout
            .contains("\ninstance_groups:\n- instances: 1\n  jobs:\n  - name: bpm\n")
    );
    assert!(first.stdout.contains("      password: '*'\n"));
    assert!(first.stdout.contains("            scope: \"\"\n"));

    // The vars store: every declared variable, with values of the right shape.
    let names: Vec<String> = creds
        .as_map()
        .unwrap()
        .string_keys()
        .map(str::to_string)
        .collect();
    assert_eq!(names.len(), 29, "{names:?}");
    let store = creds.as_map().unwrap();
    for password in [
        "admin_password",
        "blobstore_director_password",
        "blobstore_agent_password",
        "hm_password",
        "mbus_bootstrap_password",
        "nats_password",
        "nats_sync_password",
        "postgres_password",
        "uaa_admin_client_secret",
        "uaa_encryption_key_1",
        "credhub_cli_user_password",
        "credhub_encryption_password",
        "uaa_clients_director_to_credhub",
        "credhub_admin_client_secret",
    ] {
        let value = store
            .get(password)
            .and_then(Node::as_str)
            .unwrap_or_else(|| panic!("{password}"));
        assert_eq!(value.len(), 20, "{password}");
        assert!(
            value
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
            "{password}"
        );
    }
    for (leaf, ca) in [
        ("mbus_bootstrap_ssl", "default_ca"),
        ("director_ssl", "default_ca"),
        ("uaa_ssl", "default_ca"),
        ("uaa_service_provider_ssl", "default_ca"),
        ("nats_server_tls", "nats_ca"),
        ("nats_clients_director_tls", "nats_ca"),
        ("nats_clients_health_monitor_tls", "nats_ca"),
        ("blobstore_server_tls", "blobstore_ca"),
        ("credhub_tls", "credhub_ca"),
    ] {
        let leaf_value = store.get(leaf).unwrap();
        let ca_value = store.get(ca).unwrap();
        let ca_cert = pem(ca_value, "certificate", ca);
        assert_eq!(
            pem(leaf_value, "ca", leaf),
            ca_cert,
            "{leaf}.ca is {ca}'s certificate"
        );
        pem(leaf_value, "private_key", leaf);
        openssl_verify(
            dir.path(),
            &ca_cert,
            &pem(leaf_value, "certificate", leaf),
            leaf,
        );
    }
    for ca in ["default_ca", "nats_ca", "blobstore_ca", "credhub_ca"] {
        let value = store.get(ca).unwrap();
        openssl_verify(
            dir.path(),
            &pem(value, "certificate", ca),
            &pem(value, "certificate", ca),
            ca,
        );
    }
    let ssh = store.get("jumpbox_ssh").unwrap();
    assert!(
        ssh.get("public_key")
            .and_then(Node::as_str)
            .unwrap()
            .starts_with("ssh-rsa ")
    );
    std::fs::write(
        dir.path().join("jumpbox.pub"),
        format!(
            "{}\n",
            ssh.get("public_key").and_then(Node::as_str).unwrap()
        ),
    )
    .unwrap();
    let out = Command::new("ssh-keygen")
        .args(["-l", "-f", "jumpbox.pub"])
        .current_dir(dir.path())
        .output()
        .expect("ssh-keygen is installed");
    assert!(
        out.status.success(),
        "ssh-keygen -l: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rsa = store.get("uaa_jwt_signing_key").unwrap();
    assert!(
        pem(rsa, "public_key", "uaa_jwt_signing_key").starts_with("-----BEGIN PUBLIC KEY-----")
    );

    // The store is private.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("creds.yml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // A second run with the same store changes nothing and prints the same document.
    let second = interpolate(dir.path());
    assert_eq!(second.code, 0, "stderr: {}", second.stderr);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("creds.yml")).unwrap(),
        creds_text
    );
    assert_eq!(second.stdout, first.stdout);
}

#[test]
fn path_extracts_raw_strings_like_bosh_cli() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("creds.yml"), "ca:\n  certificate: |\n    -----BEGIN CERTIFICATE-----\n    abc\n    -----END CERTIFICATE-----\n").unwrap();
    let out = run(director().current_dir(dir.path()).args([
        "int",
        "creds.yml",
        "--path",
        "/ca/certificate",
    ]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    // bosh-cli prints the raw string and a newline, so a PEM block ends with an empty line.
    assert_eq!(
        out.stdout,
        "-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n\n"
    );
    let out = run(director()
        .current_dir(dir.path())
        .args(["int", "creds.yml", "--path", "/ca"]));
    assert_eq!(
        out.stdout,
        "certificate: |\n  -----BEGIN CERTIFICATE-----\n  abc\n  -----END CERTIFICATE-----\n"
    );
}
