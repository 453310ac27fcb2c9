//! Snapshot tests: each snapshot is what a reviewer reads for a pair of manifests.

use insta::assert_snapshot;

use super::*;
use crate::interpolate::{Expectations, Ops, VarSource, VarSources, evaluate};
use crate::yaml::{Value, parse};

fn doc(text: &str, file: &str) -> Node {
    parse(text, file).unwrap()
}

fn diff_with(old: &str, new: &str, redact: bool) -> ManifestDiff {
    diff(
        &doc(old, "old.yml"),
        &doc(new, "new.yml"),
        &DiffOptions { redact },
    )
}

fn text(old: &str, new: &str) -> String {
    diff_with(old, new, true).render_text(false)
}

/// Evaluates `template` with the variables of `vars` (a YAML map), as `-l vars.yml` would.
fn evaluated(template: &str, vars: &str) -> Node {
    let mut sources = VarSources::new();
    if let Value::Map(values) = doc(vars, "vars.yml").value {
        sources.push(VarSource {
            origin: "-l vars.yml".into(),
            values,
        });
    }
    evaluate(
        doc(template, "manifest.yml"),
        &Ops::new(),
        &sources,
        None,
        Expectations::default(),
    )
    .unwrap()
}

const SHOP_OLD: &str = r#"
name: shop
releases:
- name: shop
  version: "1.4.0"
  url: https://ci:hunter2@releases.example.com/shop-1.4.0.tgz
  sha1: 0123abcd
- name: bpm
  version: "1.1.21"
stemcells:
- alias: default
  os: ubuntu-jammy
  version: "1.406"
update:
  canaries: 1
  max_in_flight: 2
  canary_watch_time: 1000-30000
  update_watch_time: 1000-30000
instance_groups:
- name: db
  instances: 1
  azs: [z1]
  vm_type: large
  stemcell: default
  persistent_disk_type: 10GB
  networks:
  - name: default
  jobs:
  - name: postgres
    release: shop
    properties:
      port: 5432
      admin_password: ((db_admin_password))
- name: web
  instances: 2
  azs: [z1, z2]
  vm_type: small
  stemcell: default
  networks:
  - name: default
  jobs:
  - name: shop-web
    release: shop
    properties:
      listen_port: 8080
      db:
        host: db.shop.internal
  - name: bpm
    release: bpm
variables:
- name: db_admin_password
  type: password
"#;

const SHOP_NEW: &str = r#"
name: shop
releases:
- name: shop
  version: "1.5.0"
  url: https://ci:hunter2@releases.example.com/shop-1.5.0.tgz
  sha1: 4567ef01
- name: bpm
  version: "1.1.21"
stemcells:
- alias: default
  os: ubuntu-jammy
  version: "1.445"
update:
  canaries: 1
  max_in_flight: 1
  canary_watch_time: 1000-30000
  update_watch_time: 1000-30000
instance_groups:
- name: db
  instances: 1
  azs: [z1]
  vm_type: large
  stemcell: default
  persistent_disk_type: 20GB
  networks:
  - name: default
  jobs:
  - name: postgres
    release: shop
    properties:
      port: 5432
      admin_password: ((db_admin_password))
- name: web
  instances: 3
  azs: [z1, z2, z3]
  vm_type: small
  stemcell: default
  networks:
  - name: default
  jobs:
  - name: shop-web
    release: shop
    properties:
      listen_port: 8443
      db:
        host: db.shop.internal
      tls:
        certificate: ((shop_tls.certificate))
  - name: bpm
    release: bpm
variables:
- name: db_admin_password
  type: password
- name: shop_tls
  type: certificate
  options:
    ca: shop_ca
    common_name: shop.example.com
"#;

#[test]
fn realistic_pair_as_text() {
    assert_snapshot!("realistic_text", text(SHOP_OLD, SHOP_NEW));
}

#[test]
fn realistic_pair_as_markdown() {
    assert_snapshot!(
        "realistic_markdown",
        diff_with(SHOP_OLD, SHOP_NEW, true).render_markdown()
    );
}

#[test]
fn realistic_pair_as_json() {
    let json = diff_with(SHOP_OLD, SHOP_NEW, true).to_json();
    assert_snapshot!(
        "realistic_json",
        serde_json::to_string_pretty(&json).unwrap()
    );
}

#[test]
fn colored_text_marks_added_green_and_removed_red() {
    let out = diff_with("a: {b: 1}\n", "a: {b: 2}\n", true).render_text(true);
    assert_eq!(
        out,
        "  a:\n\x1b[31m-   b: 1\x1b[0m\n\x1b[32m+   b: 2\x1b[0m\n"
    );
}

#[test]
fn added_and_removed_instance_groups() {
    let old = r#"
instance_groups:
- name: web
  instances: 2
  jobs: [{name: nginx, release: nginx}]
- name: worker
  instances: 1
  jobs: [{name: sidekiq, release: app}]
"#;
    let new = r#"
instance_groups:
- name: web
  instances: 2
  jobs: [{name: nginx, release: nginx}]
- name: scheduler
  instances: 1
  azs: [z1]
  jobs: [{name: cron, release: app, properties: {schedule: "*/5 * * * *"}}]
"#;
    assert_snapshot!("added_and_removed_instance_groups", text(old, new));
}

const PROPS_OLD: &str = r#"
instance_groups:
- name: redis
  jobs:
  - name: redis-server
    properties:
      port: 6379
      password: old-pass
      persistence: {enabled: true, interval: 60}
  env:
    bosh:
      password: $6$old
    persistent_disk_fs: ext4
"#;

const PROPS_NEW: &str = r#"
instance_groups:
- name: redis
  jobs:
  - name: redis-server
    properties:
      port: 6380
      password: new-pass
      persistence: {enabled: true, interval: 30}
      maxmemory: 2gb
  env:
    bosh:
      password: $6$new
    persistent_disk_fs: xfs
"#;

#[test]
fn changed_properties_are_redacted() {
    assert_snapshot!("properties_redacted", text(PROPS_OLD, PROPS_NEW));
}

#[test]
fn changed_properties_without_redaction() {
    assert_snapshot!(
        "properties_not_redacted",
        diff_with(PROPS_OLD, PROPS_NEW, false).render_text(false)
    );
}

const VARS_TEMPLATE: &str = r#"
name: app
instance_groups:
- name: web
  instances: 2
  jobs:
  - name: app
    release: app
    properties:
      db_password: ((db_password))
tags:
  api_token: ((api_token))
  region: ((region))
  endpoint: https://((region)).api.example.com
  team: web
"#;

#[test]
fn changed_variable_values_are_redacted() {
    let old = evaluated(
        VARS_TEMPLATE,
        "db_password: first-secret\napi_token: tok-1\nregion: eu-1\n",
    );
    let new = evaluated(
        VARS_TEMPLATE,
        "db_password: second-secret\napi_token: tok-2\nregion: eu-1\n",
    );
    assert!(
        old.get("tags")
            .unwrap()
            .get("api_token")
            .unwrap()
            .from_variable
    );
    let out = diff(&old, &new, &DiffOptions::default());
    // region is from a variable too but the same in both: not shown.
    assert_snapshot!("variables_redacted", out.render_text(false));

    let region_changed = evaluated(
        VARS_TEMPLATE,
        "db_password: first-secret\napi_token: tok-1\nregion: eu-2\n",
    );
    let out = diff(&old, &region_changed, &DiffOptions::default());
    assert_snapshot!("variable_inside_string_redacted", out.render_text(false));
}

#[test]
fn changed_variables_section_is_shown_plainly() {
    let old = r#"
variables:
- name: shop_ca
  type: certificate
  options: {is_ca: true, common_name: shop-ca}
- name: shop_tls
  type: certificate
  options:
    ca: shop_ca
    common_name: shop.example.com
    alternative_names: [shop.example.com]
- name: legacy_password
  type: password
"#;
    let new = r#"
variables:
- name: shop_ca
  type: certificate
  options: {is_ca: true, common_name: shop-ca}
- name: shop_tls
  type: certificate
  options:
    ca: shop_ca
    common_name: www.shop.example.com
    alternative_names: [shop.example.com, www.shop.example.com]
    duration: 365
- name: admin_password
  type: password
  options: {length: 40}
"#;
    assert_snapshot!("variables_section", text(old, new));
}

#[test]
fn reordered_scalar_array_shows() {
    let old = "instance_groups:\n- name: web\n  azs: [z1, z2]\n";
    let new = "instance_groups:\n- name: web\n  azs: [z2, z1]\n";
    assert_snapshot!("reordered_scalars", text(old, new));
}

#[test]
fn reordered_instance_groups_show_as_moved() {
    let old = r#"
instance_groups:
- name: db
  instances: 1
- name: web
  instances: 2
- name: worker
  instances: 1
"#;
    let new = r#"
instance_groups:
- name: web
  instances: 2
- name: worker
  instances: 1
- name: db
  instances: 3
"#;
    let out = diff_with(old, new, true);
    assert_snapshot!("reordered_instance_groups", out.render_text(false));
    assert_snapshot!(
        "reordered_instance_groups_json",
        serde_json::to_string_pretty(&out.to_json()["changes"]).unwrap()
    );
}

#[test]
fn url_credentials_are_redacted() {
    let old = r#"
releases:
- name: shop
  version: "1"
  url: https://deploy:old-token@artifacts.example.com/shop-1.tgz
"#;
    let new = r#"
releases:
- name: shop
  version: "1"
  url: https://deploy:new-token@artifacts.example.com/shop-1.tgz
- name: extra
  version: "2"
  url: https://bot@artifacts.example.com/extra-2.tgz
"#;
    let out = diff_with(old, new, true);
    assert_snapshot!("url_credentials", out.render_text(false));
    let json = out.to_json().to_string();
    assert!(!json.contains("token") && !json.contains("bot@"), "{json}");
}

#[test]
fn identical_documents_have_no_changes() {
    let out = diff_with(SHOP_OLD, SHOP_OLD, true);
    assert!(out.is_empty());
    assert_eq!(out.render_text(false), "");
    assert_eq!(out.render_text(true), "");
    assert_eq!(out.render_markdown(), "No changes.\n");
    assert_eq!(
        out.to_json(),
        serde_json::json!({"changed": false, "lines": [], "changes": []})
    );
    // Key order inside a map is not a change.
    let reordered = diff_with("a: {x: 1, y: 2}\n", "a: {y: 2, x: 1}\n", true);
    assert!(reordered.is_empty());
}

#[test]
fn kind_change_shows_whole_values() {
    let old = r#"
instance_groups:
- name: web
  persistent_disk: 1024
  networks:
  - name: default
"#;
    let new = r#"
instance_groups:
- name: web
  persistent_disk:
    size: 2048
    type: ssd
  networks: default
"#;
    assert_snapshot!("kind_change", text(old, new));
}

#[test]
fn multi_line_strings_are_block_scalars() {
    let old = "addons:\n- name: motd\n  include: {stemcell: [{os: ubuntu-jammy}]}\n  jobs:\n  - name: motd\n    release: os-conf\n    properties: {message: hi}\ndescription: |\n  line one\n  line two\n";
    let new = "addons:\n- name: motd\n  include: {stemcell: [{os: ubuntu-jammy}]}\n  jobs:\n  - name: motd\n    release: os-conf\n    properties: {message: \"hello\\n\\nworld\\n\"}\ndescription: |\n  line one\n\n  line three\n";
    assert_snapshot!("multi_line_redacted", text(old, new));
    assert_snapshot!(
        "multi_line_not_redacted",
        diff_with(old, new, false).render_text(false)
    );
}

#[test]
fn section_and_key_order() {
    // Sections in BOSH's order whatever the documents' order, other keys after them;
    // a removed key stays where it was relative to the keys kept.
    let old = "tags: {a: 1}\nname: x\nupdate: {canaries: 1, serial: true, max_in_flight: 2}\nold_key: 1\nazs: [z1]\n";
    let new = "features: {use_dns_addresses: true}\nname: x2\nupdate: {max_in_flight: 3, canaries: 2}\nazs: [z1]\ntags: {a: 2}\n";
    assert_snapshot!("section_order", text(old, new));
}

#[test]
fn first_deploy_from_an_empty_document() {
    assert_snapshot!(
        "from_empty",
        text("", "name: x\nreleases:\n- name: r\n  version: latest\n")
    );
}

#[test]
fn no_secret_reaches_any_output() {
    let template = r#"
name: secretive
releases:
- name: app
  version: "1"
  url: https://deploy:SECRET-url-password@artifacts.example.com/app.tgz
instance_groups:
- name: keep
  jobs:
  - name: app
    properties:
      password: SECRET-property
      users:
      - name: admin
        password: SECRET-listed
      nested: {deep: [SECRET-in-array]}
  env:
    bosh:
      password: SECRET-env-bosh
- name: gone
  jobs:
  - name: app
    properties: {token: SECRET-removed-group}
  tags: {token: ((token))}
tags:
  token: ((token))
  dsn: postgres://app:((token))@db:5432/app
"#;
    let changed = r#"
name: secretive
releases:
- name: app
  version: "2"
  url: https://deploy:SECRET-url-password-2@artifacts.example.com/app.tgz
instance_groups:
- name: added
  jobs:
  - name: app
    properties: {token: SECRET-added-group, list: [SECRET-added-item]}
  env: {bosh: {password: SECRET-env-bosh-added}}
- name: keep
  jobs:
  - name: app
    properties:
      password:
        SECRET-kind: SECRET-kind-change
      users:
      - name: admin
        password: SECRET-listed-2
      - name: SECRET-new-user
        password: SECRET-new-user-password
      nested: {deep: [SECRET-in-array-2, SECRET-in-array]}
  env:
    bosh:
      password: SECRET-env-bosh-2
tags:
  token: ((token))
  dsn: postgres://app:((token))@db:5432/app
"#;
    let old = evaluated(template, "token: SECRET-variable-1\n");
    let new = evaluated(changed, "token: SECRET-variable-2\n");
    let out = diff(&old, &new, &DiffOptions::default());
    assert!(!out.is_empty());
    assert_snapshot!("secrets_redacted", out.render_text(false));
    let outputs = [
        out.render_text(false),
        out.render_text(true),
        out.render_markdown(),
        out.to_json().to_string(),
    ];
    for output in &outputs {
        // Keys stay visible (`SECRET-kind` is a key), values never.
        let leaked: Vec<&str> = output
            .split(|c: char| !(c.is_alphanumeric() || c == '-'))
            .filter(|w| w.starts_with("SECRET") && *w != "SECRET-kind")
            .collect();
        assert!(leaked.is_empty(), "leaked {leaked:?} in:\n{output}");
    }
    // Without redaction the same diff shows them (the check above is not vacuous).
    let plain = diff(&old, &new, &DiffOptions { redact: false }).render_text(false);
    assert!(plain.contains("SECRET-property") && plain.contains("SECRET-variable-2"));
}
