//! Benchmark (not a test): interpolate and validate a generated manifest of 2,000 instance
//! groups with 200 ops files and variables, and compare the time with a plain `serde_yaml`
//! parse of the same input files. Target: at most 3x. Run with `cargo bench -p director-core --bench
//! interpolate`; it prints the times and the ratio.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use director_core::interpolate::{Expectations, Ops, VarSource, VarSources};
use director_core::manifest::{self, Documents};
use director_core::yaml::{self, Value};

const GROUPS: usize = 2_000;
const OPS_FILES: usize = 200;
const OPS_PER_FILE: usize = 5;

fn manifest() -> String {
    let mut out = String::from(
        "name: big\nreleases:\n- name: app\n  version: 1.0.0\n- name: agent\n  version: 3.2.1\n",
    );
    out.push_str("stemcells:\n- alias: default\n  os: debian-bookworm\n  version: latest\n");
    out.push_str("update:\n  canaries: 1\n  max_in_flight: 10%\n  canary_watch_time: 1000-30000\n  update_watch_time: 1000-30000\n");
    out.push_str("instance_groups:\n");
    for i in 0..GROUPS {
        let _ = write!(
            out,
            "- name: ig-{i}\n  azs: [z1, z2, z3]\n  instances: 2\n  vm_type: small\n  stemcell: default\n  networks:\n  - name: default\n  jobs:\n  - name: server\n    release: app\n    properties:\n      port: {port}\n      password: ((ig_password))\n      peers: [a.internal, b.internal, c.internal]\n      tls:\n        certificate: ((app_tls.certificate))\n        enabled: true\n  - name: monitor\n    release: agent\n    properties:\n      interval: 30\n      endpoint: https://((monitor_host)):8443/v1\n",
            port = 8000 + i
        );
    }
    out.push_str("variables:\n- name: ig_password\n  type: password\n- name: app_tls\n  type: certificate\n  options: {is_ca: true, common_name: app}\n");
    out
}

fn ops_file(file: usize) -> String {
    let mut out = String::new();
    for k in 0..OPS_PER_FILE {
        let target = (file * OPS_PER_FILE + k) * 7 % GROUPS;
        let _ = match k % 5 {
            0 => write!(
                out,
                "- type: replace\n  path: /instance_groups/name=ig-{target}/instances\n  value: 3\n"
            ),
            1 => write!(
                out,
                "- type: replace\n  path: /instance_groups/name=ig-{target}/jobs/name=server/properties/extra?/flag_{file}\n  value: ((flag_value))\n"
            ),
            2 => write!(
                out,
                "- type: replace\n  path: /instance_groups/name=ig-{target}/jobs/-\n  value:\n    name: sidecar\n    release: agent\n    properties: {{mode: fast}}\n"
            ),
            3 => write!(
                out,
                "- type: remove\n  path: /instance_groups/name=ig-{target}/jobs/name=monitor/properties/interval\n"
            ),
            _ => write!(
                out,
                "- type: replace\n  path: /instance_groups/name=ig-{target}/azs\n  value: [z1, z2]\n"
            ),
        };
    }
    out
}

const CLOUD_CONFIG: &str = "azs: [{name: z1}, {name: z2}, {name: z3}]\nvm_types: [{name: small}]\nnetworks:\n- name: default\n  type: manual\n  subnets:\n  - range: 10.0.0.0/16\n    gateway: 10.0.0.1\n    azs: [z1, z2, z3]\ncompilation: {workers: 4, az: z1, vm_type: small, network: default}\n";

fn vars() -> VarSources {
    let text = "ig_password: swordfish\napp_tls: {certificate: PEM, private_key: KEY, ca: PEM}\nmonitor_host: mon.internal\nflag_value: enabled\n";
    let mut sources = VarSources::new();
    if let Value::Map(values) = yaml::parse(text, "vars.yml").unwrap().value {
        sources.push(VarSource {
            origin: "-l vars.yml".into(),
            values,
        });
    }
    sources
}

fn ours(manifest: &str, ops_files: &[String], sources: &VarSources) {
    let doc = yaml::parse(manifest, "manifest.yml").unwrap();
    let mut ops = Ops::new();
    for (i, text) in ops_files.iter().enumerate() {
        ops.extend(Ops::from_node(&yaml::parse(text, &format!("ops-{i}.yml")).unwrap()).unwrap());
    }
    let cloud = yaml::parse(CLOUD_CONFIG, "cloud-config.yml").unwrap();
    let result = director_core::interpolate::evaluate(
        doc,
        &ops,
        sources,
        None,
        Expectations {
            all_found: true,
            all_used: false,
        },
    )
    .unwrap();
    let validated = manifest::validate(Documents {
        manifest: Some(&result),
        cloud_config: Some(&cloud),
        runtime_config: None,
    });
    black_box(validated.unwrap());
}

fn plain_serde_yaml(manifest: &str, ops_files: &[String]) {
    black_box(serde_yaml::from_str::<serde_yaml::Value>(manifest).unwrap());
    for text in ops_files {
        black_box(serde_yaml::from_str::<serde_yaml::Value>(text).unwrap());
    }
    black_box(serde_yaml::from_str::<serde_yaml::Value>(CLOUD_CONFIG).unwrap());
}

/// The best of `runs` timings (the least disturbed by other work on a shared machine).
fn best(runs: usize, mut f: impl FnMut()) -> Duration {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .min()
        .unwrap()
}

fn main() {
    let manifest = manifest();
    let ops_files: Vec<String> = (0..OPS_FILES).map(ops_file).collect();
    let sources = vars();
    let bytes = manifest.len() + ops_files.iter().map(String::len).sum::<usize>();
    // Warm up both, then take the best of several runs.
    ours(&manifest, &ops_files, &sources);
    plain_serde_yaml(&manifest, &ops_files);
    let ours_time = best(7, || ours(&manifest, &ops_files, &sources));
    let serde_time = best(7, || plain_serde_yaml(&manifest, &ops_files));
    let ratio = ours_time.as_secs_f64() / serde_time.as_secs_f64();
    println!(
        "input: {GROUPS} instance groups, {OPS_FILES} ops files ({} ops), {:.1} MiB",
        OPS_FILES * OPS_PER_FILE,
        bytes as f64 / (1024.0 * 1024.0)
    );
    println!(
        "parse + ops + variables + validation: {:>8.1} ms",
        ours_time.as_secs_f64() * 1000.0
    );
    println!(
        "plain serde_yaml parse of the same:   {:>8.1} ms",
        serde_time.as_secs_f64() * 1000.0
    );
    println!(
        "ratio: {ratio:.2}x (target <= 3x) {}",
        if ratio <= 3.0 { "OK" } else { "OVER TARGET" }
    );
}
