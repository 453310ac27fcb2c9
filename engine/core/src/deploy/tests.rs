//! The planning pipeline end to end on a small deployment: a `web` group whose `server` job
//! provides an `http` link, and a `client` group whose `probe` job consumes it.

use std::collections::BTreeMap;

use serde_json::json;

use super::plan::phases;
use super::*;
use crate::manifest::{Count, Documents};
use crate::render::PropertyDecl;

const CLOUD: &str = "
azs: [{name: z1}, {name: z2}]
vm_types: [{name: small, cloud_properties: {cpu: 1}}, {name: large, cloud_properties: {cpu: 4}}]
networks:
- name: default
  type: manual
  subnets:
  - range: 127.0.20.0/24
    gateway: 127.0.20.1
    reserved: [127.0.20.2-127.0.20.9]
    azs: [z1, z2]
compilation: {workers: 2, network: default, az: z1, vm_type: small}
";

fn manifest(web_instances: u32, greeting: &str, stemcell_version: &str) -> String {
    format!(
        "
name: demo
releases: [{{name: hello, version: latest}}]
stemcells: [{{alias: default, os: debian-bookworm, version: '{stemcell_version}'}}]
update: {{canaries: 1, max_in_flight: 2, canary_watch_time: 1000, update_watch_time: 1000}}
instance_groups:
- name: web
  instances: {web_instances}
  azs: [z1, z2]
  vm_type: small
  stemcell: default
  networks: [{{name: default}}]
  jobs:
  - name: server
    release: hello
    properties: {{greeting: {greeting}, port: 8080}}
- name: client
  instances: 1
  azs: [z1]
  vm_type: small
  stemcell: default
  networks: [{{name: default}}]
  persistent_disk: 1024
  jobs:
  - name: probe
    release: hello
"
    )
}

fn validated(manifest: &str) -> ValidatedManifest {
    let doc = crate::yaml::parse(manifest, "manifest.yml").unwrap();
    let cloud = crate::yaml::parse(CLOUD, "cloud.yml").unwrap();
    crate::manifest::validate(Documents {
        manifest: Some(&doc),
        cloud_config: Some(&cloud),
        runtime_config: None,
    })
    .unwrap_or_else(|d| panic!("{d:?}"))
}

fn catalog(stemcell_version: &str, server_fingerprint: &str) -> Catalog {
    let job = |name: &str, fingerprint: &str, properties: Vec<PropertyDecl>, provides, consumes| {
        ReleaseJob {
            release: "hello".into(),
            name: name.into(),
            fingerprint: fingerprint.into(),
            templates: vec![("config.tera".into(), "config/app.conf".into())],
            properties,
            packages: vec!["app".into()],
            provides,
            consumes,
        }
    };
    let server = job(
        "server",
        server_fingerprint,
        vec![
            PropertyDecl {
                name: "greeting".into(),
                default: Some(json!("hi")),
            },
            PropertyDecl {
                name: "port".into(),
                default: Some(json!(80)),
            },
        ],
        vec![LinkDecl {
            name: "http".into(),
            link_type: "http".into(),
            optional: false,
            properties: vec!["port".into()],
        }],
        vec![],
    );
    let probe = job(
        "probe",
        "probe-fp",
        vec![],
        vec![],
        vec![LinkDecl {
            name: "target".into(),
            link_type: "http".into(),
            optional: false,
            properties: vec![],
        }],
    );
    let package = |name: &str, deps: &[&str]| {
        (
            name.to_string(),
            ReleasePackage {
                name: name.into(),
                fingerprint: format!("{name}-fp"),
                dependencies: deps.iter().map(|d| d.to_string()).collect(),
            },
        )
    };
    Catalog {
        releases: [(
            "hello".to_string(),
            ReleaseFacts {
                name: "hello".into(),
                version: "1.0".into(),
                jobs: [("server".to_string(), server), ("probe".to_string(), probe)]
                    .into_iter()
                    .collect(),
                packages: [package("app", &["lib"]), package("lib", &[])]
                    .into_iter()
                    .collect(),
            },
        )]
        .into_iter()
        .collect(),
        stemcells: [(
            "default".to_string(),
            StemcellFacts {
                name: "bosh-local-debian-bookworm".into(),
                os: "debian-bookworm".into(),
                version: stemcell_version.into(),
                cid: format!("stemcell-{stemcell_version}"),
            },
        )]
        .into_iter()
        .collect(),
    }
}

fn sources() -> BTreeMap<String, BTreeMap<String, String>> {
    let server = "greeting={{ p(name=\"greeting\") }} port={{ p(name=\"port\") }} ip={{ spec.ip }}";
    let probe = "{% set t = link(name=\"target\") %}target={{ t.address }}:{{ t.properties.port }} n={{ t.instances | length }}";
    let mut map = BTreeMap::new();
    for fp in ["server-fp", "server-fp2"] {
        map.insert(
            fp.to_string(),
            [("config.tera".to_string(), server.to_string())].into(),
        );
    }
    map.insert(
        "probe-fp".to_string(),
        [("config.tera".to_string(), probe.to_string())].into(),
    );
    map
}

/// Ids for new instances (later deploys in these tests create at most one, named apart).
fn uuids() -> impl FnMut() -> String {
    let mut n = 0;
    move || {
        n += 1;
        format!("uuid-{n}")
    }
}

/// What the director would record after applying everything in `prepared`.
fn applied(prepared: &Prepared) -> Surroundings {
    let mut surroundings = Surroundings {
        sources: sources(),
        ..Surroundings::default()
    };
    for (uuid, work) in &prepared.planned.work {
        surroundings
            .existing
            .entry(work.group.clone())
            .or_default()
            .push(ExistingInstance {
                uuid: uuid.clone(),
                index: work.placed.index,
                az: work.placed.az.clone(),
                bootstrap: work.placed.bootstrap,
                ips: work
                    .placed
                    .networks
                    .iter()
                    .filter_map(|(n, s)| Some((n.clone(), (s.ip?, s.is_static))))
                    .collect(),
            });
        surroundings
            .observed
            .entry(work.group.clone())
            .or_default()
            .push(ObservedInstance {
                uuid: uuid.clone(),
                index: work.placed.index,
                az: work.placed.az.clone(),
                spec: Some(work.spec.clone()),
                has_vm: true,
                update_completed: true,
                state: "started".into(),
                disk_size: work.spec.persistent_disk.as_ref().map(|d| d.size),
            });
    }
    surroundings
}

fn summary(plan: &Plan) -> Vec<String> {
    plan.all_instances()
        .map(|i| {
            format!(
                "{}/{} {} {} [{}] {}",
                i.group,
                i.index,
                i.az.as_deref().unwrap_or("-"),
                i.action.word(),
                i.batch.as_deref().unwrap_or(""),
                i.reasons.join("; ")
            )
        })
        .collect()
}

fn prepare_with(
    manifest_text: &str,
    catalog: &Catalog,
    surroundings: &Surroundings,
    options: &PlanOptions,
) -> Prepared {
    prepare(
        &validated(manifest_text),
        catalog,
        surroundings,
        options,
        &mut uuids(),
    )
    .unwrap_or_else(|e| panic!("{}", e.join("\n")))
}

fn first_deploy() -> Prepared {
    let surroundings = Surroundings {
        sources: sources(),
        ..Surroundings::default()
    };
    prepare_with(
        &manifest(3, "hello", "1"),
        &catalog("1", "server-fp"),
        &surroundings,
        &PlanOptions::default(),
    )
}

#[test]
fn a_first_deploy_creates_everything_canary_first_and_links_the_consumer() {
    let prepared = first_deploy();
    assert_eq!(
        summary(&prepared.planned.plan),
        vec![
            "web/0 z1 create [canary] new instance",
            "web/1 z2 create [batch 3] new instance",
            "web/2 z1 create [batch 2] new instance",
            "client/0 z1 create [canary] new instance",
        ]
    );
    let web = &prepared.planned.plan.groups[0];
    // The canary in z1, then z1's rest through its pool, then z2's.
    assert_eq!(
        phase_shape(&web.phases),
        vec![
            (true, 1, vec!["uuid-1"]),
            (false, 1, vec!["uuid-3"]),
            (false, 1, vec!["uuid-2"]),
        ]
    );
    let client = prepared
        .planned
        .work
        .values()
        .find(|w| w.group == "client")
        .unwrap();
    assert_eq!(
        String::from_utf8(client.rendered[0].files["config/app.conf"].clone()).unwrap(),
        "target=127.0.20.10:8080 n=3"
    );
    let web0 = prepared
        .planned
        .work
        .values()
        .find(|w| w.group == "web" && w.placed.index == 0)
        .unwrap();
    assert_eq!(
        String::from_utf8(web0.rendered[0].files["config/app.conf"].clone()).unwrap(),
        "greeting=hello port=8080 ip=127.0.20.10"
    );
    assert_eq!(
        client.spec.packages.keys().collect::<Vec<_>>(),
        vec!["app", "lib"]
    );
    assert!(prepared.planned.plan.has_changes());
}

#[test]
fn the_same_manifest_again_is_a_no_op() {
    let first = first_deploy();
    let again = prepare_with(
        &manifest(3, "hello", "1"),
        &catalog("1", "server-fp"),
        &applied(&first),
        &PlanOptions::default(),
    );
    assert!(
        !again.planned.plan.has_changes(),
        "{:#?}",
        summary(&again.planned.plan)
    );
    assert!(
        again
            .planned
            .plan
            .groups
            .iter()
            .all(|g| g.phases.is_empty())
    );
}

#[test]
fn a_property_change_restarts_only_the_instances_whose_templates_changed() {
    let first = first_deploy();
    let next = prepare_with(
        &manifest(3, "bonjour", "1"),
        &catalog("1", "server-fp"),
        &applied(&first),
        &PlanOptions::default(),
    );
    assert_eq!(
        summary(&next.planned.plan),
        vec![
            "web/0 z1 restart [canary] rendered templates changed: server (config/app.conf)",
            "web/1 z2 restart [batch 3] rendered templates changed: server (config/app.conf)",
            "web/2 z1 restart [batch 2] rendered templates changed: server (config/app.conf)",
            "client/0 z1 no change [] ",
        ]
    );
    let overridden = prepare_with(
        &manifest(3, "bonjour", "1"),
        &catalog("1", "server-fp"),
        &applied(&first),
        &PlanOptions {
            canaries: Some(Count::Absolute(0)),
            max_in_flight: Some(Count::Percent(100)),
            ..PlanOptions::default()
        },
    );
    let web = &overridden.planned.plan.groups[0];
    assert_eq!(
        web.phases
            .iter()
            .map(|p| (p.canary, p.max_in_flight, p.instances.len()))
            .collect::<Vec<_>>(),
        vec![(false, 2, 2), (false, 1, 1)],
        "one pool per AZ, as wide as the AZ, no canary"
    );
}

#[test]
fn fix_recreates_only_the_instances_whose_agents_do_not_answer() {
    let first = first_deploy();
    let silent = first.planned.plan.groups[0].instances[1].id.clone();
    let fixed = prepare_with(
        &manifest(3, "hello", "1"),
        &catalog("1", "server-fp"),
        &applied(&first),
        &PlanOptions {
            unresponsive: [silent.clone()].into(),
            ..PlanOptions::default()
        },
    );
    let changed: Vec<(String, Action, Vec<String>)> = fixed
        .planned
        .plan
        .all_instances()
        .filter(|i| i.action != Action::NoOp)
        .map(|i| (i.id.clone(), i.action, i.reasons.clone()))
        .collect();
    assert_eq!(
        changed,
        vec![(
            silent,
            Action::Recreate,
            vec!["its agent does not answer (--fix)".to_string()]
        )]
    );
}

#[test]
fn scaling_out_and_back_touches_only_the_extra_instance_and_keeps_ips() {
    let first = prepare_with(
        &manifest(2, "hello", "1"),
        &catalog("1", "server-fp"),
        &Surroundings {
            sources: sources(),
            ..Default::default()
        },
        &PlanOptions::default(),
    );
    let ips = |p: &Prepared| -> BTreeMap<String, String> {
        p.planned
            .work
            .iter()
            .map(|(u, w)| (u.clone(), w.placed.address()))
            .collect()
    };
    let mut new_ids = || "uuid-new".to_string();
    let three = prepare(
        &validated(&manifest(3, "hello", "1")),
        &catalog("1", "server-fp"),
        &applied(&first),
        &PlanOptions::default(),
        &mut new_ids,
    )
    .unwrap();
    let plan = summary(&three.planned.plan);
    assert_eq!(plan[0], "web/0 z1 no change [] ");
    assert_eq!(plan[1], "web/1 z2 no change [] ");
    assert_eq!(plan[2], "web/2 z1 create [canary] new instance");
    // The consumer sees one more provider instance: its rendered link changed.
    assert!(
        plan[3].starts_with("client/0 z1 restart [canary] rendered templates changed: probe"),
        "{}",
        plan[3]
    );
    for (uuid, ip) in ips(&first) {
        assert_eq!(ips(&three)[&uuid], ip, "{uuid} kept its IP");
    }
    let back = prepare_with(
        &manifest(2, "hello", "1"),
        &catalog("1", "server-fp"),
        &applied(&three),
        &PlanOptions::default(),
    );
    let plan = summary(&back.planned.plan);
    assert_eq!(plan[0], "web/0 z1 no change [] ");
    assert_eq!(plan[1], "web/1 z2 no change [] ");
    assert!(
        plan[2].starts_with("web/2 z1 delete [] not needed any more (instances: 3 → 2)"),
        "{}",
        plan[2]
    );
}

#[test]
fn a_new_stemcell_recreates_every_vm_and_a_new_job_version_updates_in_place() {
    let first = first_deploy();
    let recreate = prepare_with(
        &manifest(3, "hello", "2"),
        &catalog("2", "server-fp"),
        &applied(&first),
        &PlanOptions::default(),
    );
    assert!(
        recreate
            .planned
            .plan
            .all_instances()
            .all(|i| i.action == Action::Recreate)
    );
    assert!(
        recreate.planned.plan.groups[0].instances[0].reasons[0].starts_with(
            "stemcell changed (bosh-local-debian-bookworm/1 → bosh-local-debian-bookworm/2)"
        )
    );
    let update = prepare_with(
        &manifest(3, "hello", "1"),
        &catalog("1", "server-fp2"),
        &applied(&first),
        &PlanOptions::default(),
    );
    assert_eq!(
        update.planned.plan.groups[0].instances[0].action,
        Action::Update
    );
    assert_eq!(
        update.planned.plan.groups[1].instances[0].action,
        Action::NoOp
    );
}

#[test]
fn an_unfinished_update_or_missing_vm_is_redone() {
    let first = first_deploy();
    let mut surroundings = applied(&first);
    surroundings.observed.get_mut("web").unwrap()[0].update_completed = false;
    surroundings.observed.get_mut("web").unwrap()[1].has_vm = false;
    let next = prepare_with(
        &manifest(3, "hello", "1"),
        &catalog("1", "server-fp"),
        &surroundings,
        &PlanOptions::default(),
    );
    let web = &next.planned.plan.groups[0].instances;
    let find = |uuid: &str| web.iter().find(|i| i.id == uuid).unwrap();
    let dirty = find(&surroundings.observed["web"][0].uuid);
    assert_eq!(
        (dirty.action, dirty.reasons.clone()),
        (
            Action::Update,
            vec!["its previous update did not finish".to_string()]
        )
    );
    assert_eq!(
        find(&surroundings.observed["web"][1].uuid).action,
        Action::Recreate
    );
}

#[test]
fn problems_are_reported_with_boshs_link_messages() {
    let mut catalog = catalog("1", "server-fp");
    catalog
        .releases
        .get_mut("hello")
        .unwrap()
        .jobs
        .get_mut("server")
        .unwrap()
        .provides
        .clear();
    let surroundings = Surroundings {
        sources: sources(),
        ..Surroundings::default()
    };
    let errors = prepare(
        &validated(&manifest(1, "x", "1")),
        &catalog,
        &surroundings,
        &PlanOptions::default(),
        &mut uuids(),
    )
    .unwrap_err();
    assert_eq!(
        errors,
        vec![
            "Failed to resolve link 'target' with alias 'target' and type 'http' from job 'probe' in instance group 'client'. Details below:\n  - No link providers found"
        ]
    );
}

#[test]
fn a_missing_job_in_the_release_names_the_manifest_path() {
    let text = manifest(1, "x", "1").replace("name: probe", "name: prober");
    let errors = prepare(
        &validated(&text),
        &catalog("1", "server-fp"),
        &Surroundings::default(),
        &PlanOptions::default(),
        &mut uuids(),
    )
    .unwrap_err();
    assert_eq!(
        errors,
        vec![
            "instance_groups[1].jobs[0]: release 'hello/1.0' has no job 'prober' (it has: probe, server)"
        ]
    );
}

#[test]
fn runtime_config_addons_join_matching_groups_and_render_like_any_job() {
    let runtime = "
releases: [{name: hello, version: '1.0'}]
addons:
- name: probes
  include: {jobs: [{name: server, release: hello}]}
  jobs: [{name: probe, release: hello}]
";
    let manifest_text = manifest(1, "hello", "1");
    let doc = crate::yaml::parse(&manifest_text, "manifest.yml").unwrap();
    let cloud = crate::yaml::parse(CLOUD, "cloud.yml").unwrap();
    let runtime = crate::yaml::parse(runtime, "runtime.yml").unwrap();
    let validated = crate::manifest::validate(Documents {
        manifest: Some(&doc),
        cloud_config: Some(&cloud),
        runtime_config: Some(&runtime),
    })
    .unwrap_or_else(|d| panic!("{d:?}"));
    let surroundings = Surroundings {
        sources: sources(),
        ..Surroundings::default()
    };
    let prepared = prepare(
        &validated,
        &catalog("1", "server-fp"),
        &surroundings,
        &PlanOptions::default(),
        &mut uuids(),
    )
    .unwrap_or_else(|e| panic!("{}", e.join("\n")));
    let web = prepared
        .desired
        .groups
        .iter()
        .find(|g| g.name == "web")
        .unwrap();
    let jobs: Vec<&str> = web.jobs.iter().map(|j| j.job.name.as_str()).collect();
    assert_eq!(
        jobs,
        vec!["server", "probe"],
        "the addon joins the group that runs hello/server"
    );
    let client = prepared
        .desired
        .groups
        .iter()
        .find(|g| g.name == "client")
        .unwrap();
    assert_eq!(
        client.jobs.len(),
        1,
        "the client runs no hello/server: no addon"
    );
    let web0 = prepared
        .planned
        .work
        .values()
        .find(|w| w.group == "web")
        .unwrap();
    assert_eq!(web0.rendered.len(), 2);
    assert_eq!(
        String::from_utf8(web0.rendered[1].files["config/app.conf"].clone()).unwrap(),
        "target=127.0.20.10:8080 n=1"
    );
}

#[test]
fn links_from_another_deployment_need_shared_providers() {
    let provider_text = manifest(2, "hello", "1").replace(
        "    properties: {greeting: hello, port: 8080}",
        "    properties: {greeting: hello, port: 8080}\n    provides: {http: {shared: true}}",
    );
    let provider = prepare_with(
        &provider_text,
        &catalog("1", "server-fp"),
        &Surroundings {
            sources: sources(),
            ..Default::default()
        },
        &PlanOptions::default(),
    );
    let shared = provider.links.provided.clone();
    assert!(shared.iter().any(|l| l.alias == "http" && l.shared));

    // A consumer deployment without its own provider takes `http` from deployment `demo`.
    let consumer_text = manifest(1, "hello", "1")
        .replace("name: demo", "name: other")
        .replace("  - name: probe\n    release: hello\n", "  - name: probe\n    release: hello\n    consumes: {target: {from: http, deployment: demo}}\n");
    let mut consumer_catalog = catalog("1", "server-fp");
    consumer_catalog
        .releases
        .get_mut("hello")
        .unwrap()
        .jobs
        .get_mut("server")
        .unwrap()
        .provides
        .clear();
    let surroundings = Surroundings {
        sources: sources(),
        external_links: [("demo".to_string(), shared.clone())].into(),
        ..Surroundings::default()
    };
    let consumer = prepare_with(
        &consumer_text,
        &consumer_catalog,
        &surroundings,
        &PlanOptions::default(),
    );
    let link = &consumer.links.consumed[&("client".to_string(), "probe".to_string())]["target"];
    assert_eq!(
        (link.deployment_name.as_str(), link.instances.len()),
        ("demo", 2)
    );

    // Not shared: refused with BOSH's message.
    let unshared: Vec<ProvidedLink> = shared
        .into_iter()
        .map(|l| ProvidedLink { shared: false, ..l })
        .collect();
    let surroundings = Surroundings {
        sources: sources(),
        external_links: [("demo".to_string(), unshared)].into(),
        ..Surroundings::default()
    };
    let errors = prepare(
        &validated(&consumer_text),
        &consumer_catalog,
        &surroundings,
        &PlanOptions::default(),
        &mut uuids(),
    )
    .unwrap_err();
    assert!(
        errors[0].contains("deployment 'demo' provides 'http' but does not share it"),
        "{errors:?}"
    );
}

/// (canary, pool size, instance ids) of each phase.
fn phase_shape(phases: &[Phase]) -> Vec<(bool, usize, Vec<&str>)> {
    phases
        .iter()
        .map(|p| {
            (
                p.canary,
                p.max_in_flight,
                p.instances.iter().map(String::as_str).collect(),
            )
        })
        .collect()
}

fn changed(index: u32, az: &str) -> InstancePlan {
    InstancePlan {
        group: "web".into(),
        id: format!("id-{index}"),
        index,
        az: Some(az.into()),
        bootstrap: index == 0,
        action: Action::Restart,
        reasons: vec!["rendered templates changed".into()],
        batch: None,
    }
}

#[test]
fn canaries_open_the_first_az_then_each_az_runs_through_its_own_pool() {
    let mut instances: Vec<InstancePlan> = (0..7)
        .map(|i| changed(i, if i < 5 { "z1" } else { "z2" }))
        .collect();
    instances[6].action = Action::NoOp;
    let azs = vec!["z1".to_string(), "z2".to_string()];
    let (phases, canaries) = phases(
        &mut instances,
        &azs,
        Count::Absolute(2),
        Count::Absolute(2),
        false,
    );
    assert_eq!(canaries, 2);
    assert_eq!(
        phase_shape(&phases),
        vec![
            (true, 2, vec!["id-0", "id-1"]),
            (false, 2, vec!["id-2", "id-3", "id-4"]),
            (false, 1, vec!["id-5"]),
        ]
    );
    let labels: Vec<Option<&str>> = instances.iter().map(|i| i.batch.as_deref()).collect();
    assert_eq!(
        labels,
        vec![
            Some("canary"),
            Some("canary"),
            Some("batch 2"),
            Some("batch 2"),
            Some("batch 3"),
            Some("batch 4"),
            None,
        ]
    );
}

#[test]
fn a_percentage_sizes_each_pool_by_its_az_and_never_below_one() {
    let mut instances: Vec<InstancePlan> = (0..3).map(|i| changed(i, "z1")).collect();
    let (phases, canaries) = phases(
        &mut instances,
        &["z1".to_string()],
        Count::Absolute(0),
        Count::Percent(10),
        false,
    );
    assert_eq!(canaries, 0);
    assert_eq!(phases.len(), 1);
    assert_eq!(
        phases[0].max_in_flight, 1,
        "10% of 3 is no slot; a pool has at least one"
    );
    assert!(!phases[0].canary);
}
