//! The deployment manifest v2: names, releases, stemcells, update policy, instance groups,
//! addons, variables, features and tags, as BOSH defines them.

use super::decode::{Cx, MapView, Spanned};
use crate::yaml::{Node, YamlPath};

/// A deployment manifest as written (types checked, references not yet).
#[derive(Clone, Debug)]
pub struct DeploymentManifest {
    /// Where the document starts.
    pub span: crate::yaml::Span,
    /// Where the top-level `update` block is, if any.
    pub update_span: Option<crate::yaml::Span>,
    /// `name`.
    pub name: Option<Spanned<String>>,
    /// `releases`.
    pub releases: Vec<ReleaseRef>,
    /// `stemcells`.
    pub stemcells: Vec<StemcellRef>,
    /// The top-level `update` block.
    pub update: Option<UpdatePolicy>,
    /// `instance_groups`, in deploy order.
    pub instance_groups: Vec<InstanceGroup>,
    /// `addons`.
    pub addons: Vec<Addon>,
    /// `variables`.
    pub variables: Vec<VariableDecl>,
    /// `features`.
    pub features: Features,
    /// `tags`.
    pub tags: Option<Node>,
    /// The deprecated global `properties`.
    pub properties: Option<Node>,
}

/// `releases[]`.
#[derive(Clone, Debug)]
pub struct ReleaseRef {
    /// `name`.
    pub name: Spanned<String>,
    /// `version` (`latest`, `create`, or a version).
    pub version: Option<Spanned<String>>,
    /// `url`.
    pub url: Option<Spanned<String>>,
    /// `sha1` (a digest, `sha256:…` or bare SHA-1).
    pub sha1: Option<Spanned<String>>,
    /// `stemcell` of a compiled release: (os, version).
    pub stemcell: Option<(Spanned<String>, Spanned<String>)>,
}

/// `stemcells[]`.
#[derive(Clone, Debug)]
pub struct StemcellRef {
    /// `alias`, what instance groups name.
    pub alias: Spanned<String>,
    /// `os`.
    pub os: Option<Spanned<String>>,
    /// `name`.
    pub name: Option<Spanned<String>>,
    /// `version` (`latest`, `621.latest`, or a version).
    pub version: Option<Spanned<String>>,
}

/// `canaries` and `max_in_flight`: a number or a percentage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Count {
    /// A number of instances.
    Absolute(u64),
    /// A percentage of the instances being updated.
    Percent(u64),
}

impl Count {
    /// Resolves against `size` instances as BOSH does: `min(floor(pct * size / 100), size)`.
    pub fn of(self, size: u64) -> u64 {
        match self {
            Count::Absolute(n) => n,
            Count::Percent(p) => (p.saturating_mul(size) / 100).min(size),
        }
    }
}

/// A watch time in milliseconds: `30000` or `1000-30000`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchTime {
    /// The first check after this long.
    pub min_ms: u64,
    /// Give up after this long.
    pub max_ms: u64,
}

/// `update` (top level or per instance group); fields missing at one level come from the other.
#[derive(Clone, Debug, Default)]
pub struct UpdatePolicy {
    /// `canaries`.
    pub canaries: Option<Count>,
    /// `max_in_flight`.
    pub max_in_flight: Option<Count>,
    /// `canary_watch_time`.
    pub canary_watch_time: Option<WatchTime>,
    /// `update_watch_time`.
    pub update_watch_time: Option<WatchTime>,
    /// `serial` (default true).
    pub serial: Option<bool>,
    /// `vm_strategy`: `delete-create` or `create-swap-delete`.
    pub vm_strategy: Option<String>,
    /// `initial_deploy_az_update_strategy`: `serial` or `parallel`.
    pub initial_deploy_az_update_strategy: Option<String>,
    /// The keys that were written (also when their value was invalid and reported).
    pub written: Vec<String>,
}

impl UpdatePolicy {
    /// This policy with gaps filled from `defaults`.
    pub fn merged_over(&self, defaults: &UpdatePolicy) -> UpdatePolicy {
        UpdatePolicy {
            canaries: self.canaries.or(defaults.canaries),
            max_in_flight: self.max_in_flight.or(defaults.max_in_flight),
            canary_watch_time: self.canary_watch_time.or(defaults.canary_watch_time),
            update_watch_time: self.update_watch_time.or(defaults.update_watch_time),
            serial: self.serial.or(defaults.serial),
            vm_strategy: self
                .vm_strategy
                .clone()
                .or_else(|| defaults.vm_strategy.clone()),
            initial_deploy_az_update_strategy: self
                .initial_deploy_az_update_strategy
                .clone()
                .or_else(|| defaults.initial_deploy_az_update_strategy.clone()),
            written: self
                .written
                .iter()
                .chain(&defaults.written)
                .cloned()
                .collect(),
        }
    }
}

/// `lifecycle`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Lifecycle {
    /// Long-running (the default).
    #[default]
    Service,
    /// Run on demand with `run-errand`.
    Errand,
}

/// `instance_groups[]`.
#[derive(Clone, Debug)]
pub struct InstanceGroup {
    /// Where the instance group was written.
    pub path: YamlPath,
    /// Its span.
    pub span: crate::yaml::Span,
    /// `name`.
    pub name: Option<Spanned<String>>,
    /// `azs`.
    pub azs: Vec<Spanned<String>>,
    /// `instances`.
    pub instances: Option<Spanned<u64>>,
    /// `lifecycle`.
    pub lifecycle: Lifecycle,
    /// `jobs`.
    pub jobs: Vec<JobRef>,
    /// `vm_type`.
    pub vm_type: Option<Spanned<String>>,
    /// `vm_resources` was given.
    pub vm_resources: Option<VmResources>,
    /// `vm_extensions`.
    pub vm_extensions: Vec<Spanned<String>>,
    /// `stemcell` alias.
    pub stemcell: Option<Spanned<String>>,
    /// `persistent_disk` in MB.
    pub persistent_disk: Option<Spanned<u64>>,
    /// `persistent_disk_type`.
    pub persistent_disk_type: Option<Spanned<String>>,
    /// `networks`.
    pub networks: Vec<NetworkRef>,
    /// `update` overrides.
    pub update: Option<UpdatePolicy>,
    /// Where the `update` block was written (for messages about missing fields).
    pub update_path: YamlPath,
    /// `migrated_from`.
    pub migrated_from: Vec<(Spanned<String>, Option<Spanned<String>>)>,
    /// `env`.
    pub env: Option<Node>,
    /// `properties` (instance-group level, for jobs without their own).
    pub properties: Option<Node>,
}

/// `vm_resources`.
#[derive(Clone, Debug)]
pub struct VmResources {
    /// `cpu`.
    pub cpu: Option<u64>,
    /// `ram` in MB.
    pub ram: Option<u64>,
    /// `ephemeral_disk_size` in MB.
    pub ephemeral_disk_size: Option<u64>,
}

/// `instance_groups[].jobs[]` and `addons[].jobs[]`.
#[derive(Clone, Debug)]
pub struct JobRef {
    /// `name`.
    pub name: Option<Spanned<String>>,
    /// `release`.
    pub release: Option<Spanned<String>>,
    /// `properties`.
    pub properties: Option<Node>,
    /// `consumes`: link name → `None` when blocked (`nil`) or the spec.
    pub consumes: Vec<(Spanned<String>, Option<Node>)>,
    /// `provides`: link name → `None` when blocked or the spec.
    pub provides: Vec<(Spanned<String>, Option<Node>)>,
}

/// `instance_groups[].networks[]`.
#[derive(Clone, Debug)]
pub struct NetworkRef {
    /// `name`.
    pub name: Option<Spanned<String>>,
    /// `static_ips`, each entry as written (single IPs or ranges).
    pub static_ips: Vec<Spanned<String>>,
    /// Some static IPs are still `((variables))`: they cannot be counted or checked yet.
    pub static_ips_deferred: bool,
    /// `default`: which of `dns`, `gateway`, `addressable` this network provides.
    pub default: Vec<Spanned<String>>,
}

/// `addons[]` of a manifest or runtime config.
#[derive(Clone, Debug)]
pub struct Addon {
    /// `name`.
    pub name: Option<Spanned<String>>,
    /// `jobs`.
    pub jobs: Vec<JobRef>,
    /// `include`.
    pub include: Option<Placement>,
    /// `exclude`.
    pub exclude: Option<Placement>,
}

/// A job rule of `include`/`exclude`: (name, release).
pub type JobRule = (Option<Spanned<String>>, Option<Spanned<String>>);

/// `include` / `exclude` rules of an addon.
#[derive(Clone, Debug, Default)]
pub struct Placement {
    /// `deployments`.
    pub deployments: Vec<Spanned<String>>,
    /// `jobs` (name + release).
    pub jobs: Vec<JobRule>,
    /// `instance_groups`.
    pub instance_groups: Vec<Spanned<String>>,
    /// `stemcell[].os`.
    pub stemcell_os: Vec<Spanned<String>>,
    /// `networks`.
    pub networks: Vec<Spanned<String>>,
    /// `teams`.
    pub teams: Vec<Spanned<String>>,
    /// `lifecycle`.
    pub lifecycle: Option<Lifecycle>,
}

/// `variables[]`.
#[derive(Clone, Debug)]
pub struct VariableDecl {
    /// `name`.
    pub name: Option<Spanned<String>>,
    /// `type`.
    pub kind: Option<Spanned<String>>,
    /// `options`.
    pub options: Option<Node>,
    /// Path of `options`.
    pub options_path: YamlPath,
}

/// `features`.
#[derive(Clone, Debug, Default)]
pub struct Features {
    /// `use_dns_addresses`.
    pub use_dns_addresses: Option<bool>,
    /// `use_short_dns_addresses`.
    pub use_short_dns_addresses: Option<bool>,
    /// `randomize_az_placement`.
    pub randomize_az_placement: Option<bool>,
    /// `converge_variables`.
    pub converge_variables: Option<bool>,
    /// `use_tmpfs_config`.
    pub use_tmpfs_config: Option<bool>,
}

const MANIFEST_KEYS: &[&str] = &[
    "name",
    "director_uuid",
    "features",
    "releases",
    "stemcells",
    "update",
    "instance_groups",
    "addons",
    "properties",
    "variables",
    "tags",
];

const INSTANCE_GROUP_KEYS: &[&str] = &[
    "name",
    "azs",
    "instances",
    "lifecycle",
    "jobs",
    "vm_type",
    "vm_resources",
    "vm_extensions",
    "stemcell",
    "persistent_disk",
    "persistent_disk_type",
    "persistent_disk_pool",
    "networks",
    "update",
    "migrated_from",
    "env",
    "properties",
    "tags",
];

/// Decodes a deployment manifest, recording every type error.
pub(crate) fn decode(cx: &mut Cx, doc: &Node) -> Option<DeploymentManifest> {
    let root = YamlPath::root();
    let m = cx.map(doc, &root, "a deployment manifest")?;
    m.unknown_keys(cx, MANIFEST_KEYS);
    let name = m.req_string(cx, "name", "the deployment name");

    let (items, path) = m.list(cx, "releases", "releases");
    let releases = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| decode_release(cx, item, &path.index(i)))
        .collect();

    let (items, path) = m.list(cx, "stemcells", "stemcells");
    let stemcells = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| decode_stemcell(cx, item, &path.index(i)))
        .collect();

    let update = m
        .get("update")
        .and_then(|node| decode_update(cx, node, &m.at("update")));

    let (items, path) = m.list(cx, "instance_groups", "instance groups");
    let instance_groups = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| decode_instance_group(cx, item, &path.index(i)))
        .collect();

    let (items, path) = m.list(cx, "addons", "addons");
    let addons = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| decode_addon(cx, item, &path.index(i)))
        .collect();

    let (items, path) = m.list(cx, "variables", "variable definitions");
    let variables = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| decode_variable(cx, item, &path.index(i)))
        .collect();

    let features = m
        .get("features")
        .map(|node| decode_features(cx, node, &m.at("features")))
        .unwrap_or_default();
    let tags = m.tree(cx, "tags");
    let properties = m.tree(cx, "properties");
    Some(DeploymentManifest {
        span: doc.span.clone(),
        update_span: m.get("update").map(|n| n.span.clone()),
        name,
        releases,
        stemcells,
        update,
        instance_groups,
        addons,
        variables,
        features,
        tags,
        properties,
    })
}

pub(crate) fn decode_release(cx: &mut Cx, node: &Node, path: &YamlPath) -> Option<ReleaseRef> {
    let m = cx.map(node, path, "a release")?;
    m.unknown_keys(
        cx,
        &[
            "name",
            "version",
            "url",
            "sha1",
            "stemcell",
            "exported_from",
        ],
    );
    let name = m.req_string(cx, "name", "the release name");
    let version = m.req_text(cx, "version", "a release version, 'latest' or 'create'");
    let url = m.opt_string(cx, "url");
    let sha1 = m.opt_string(cx, "sha1");
    let stemcell = m.get("stemcell").and_then(|node| {
        let s = cx.map(node, &m.at("stemcell"), "a stemcell (os and version)")?;
        s.unknown_keys(cx, &["os", "version"]);
        let os = s.req_string(cx, "os", "the stemcell operating system");
        let version = s.req_text(cx, "version", "the stemcell version");
        Some((os?, version?))
    });
    Some(ReleaseRef {
        name: name?,
        version,
        url,
        sha1,
        stemcell,
    })
}

fn decode_stemcell(cx: &mut Cx, node: &Node, path: &YamlPath) -> Option<StemcellRef> {
    let m = cx.map(node, path, "a stemcell")?;
    m.unknown_keys(cx, &["alias", "os", "name", "version"]);
    let alias = m.req_string(
        cx,
        "alias",
        "the name instance groups use for this stemcell",
    );
    let os = m.opt_string(cx, "os");
    let name = m.opt_string(cx, "name");
    if m.get("os").is_some() && m.get("name").is_some() {
        cx.error(&node.span, path, "give either os or name, not both");
    } else if m.get("os").is_none() && m.get("name").is_none() {
        cx.error(&node.span, path, "missing required key 'os' (or 'name'): the stemcell's operating system, e.g. ubuntu-jammy");
    }
    let version = m.req_text(cx, "version", "a stemcell version or 'latest'");
    Some(StemcellRef {
        alias: alias?,
        os,
        name,
        version,
    })
}

fn parse_count(cx: &mut Cx, node: &Node, path: &YamlPath) -> Option<Count> {
    match &node.value {
        crate::yaml::Value::Int(n) if *n >= 0 => Some(Count::Absolute(n.unsigned_abs())),
        crate::yaml::Value::Str(s) => {
            let parsed = s
                .trim()
                .strip_suffix('%')
                .and_then(|p| p.trim().parse::<u64>().ok());
            match parsed {
                Some(p) if p <= 100 => Some(Count::Percent(p)),
                _ if super::decode::is_placeholder(node) => None,
                _ => {
                    cx.error(
                        &node.span,
                        path,
                        format!(
                            "expected a number or a percentage such as 25%, found {}",
                            node.describe()
                        ),
                    );
                    None
                }
            }
        }
        _ => {
            cx.error(
                &node.span,
                path,
                format!(
                    "expected a number or a percentage such as 25%, found {}",
                    node.describe()
                ),
            );
            None
        }
    }
}

fn parse_watch_time(cx: &mut Cx, node: &Node, path: &YamlPath) -> Option<WatchTime> {
    let expected = "expected milliseconds such as 30000 or a range such as 1000-30000";
    match &node.value {
        crate::yaml::Value::Int(n) if *n >= 0 => Some(WatchTime {
            min_ms: n.unsigned_abs(),
            max_ms: n.unsigned_abs(),
        }),
        crate::yaml::Value::Str(s) => {
            let bounds = match s.split_once('-') {
                Some((low, high)) => low
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .zip(high.trim().parse::<u64>().ok()),
                None => s.trim().parse::<u64>().ok().map(|n| (n, n)),
            };
            match bounds {
                Some((min_ms, max_ms)) if min_ms <= max_ms => Some(WatchTime { min_ms, max_ms }),
                Some((min_ms, max_ms)) => {
                    cx.error(
                        &node.span,
                        path,
                        format!("the watch time range {min_ms}-{max_ms} ends before it starts"),
                    );
                    None
                }
                None if super::decode::is_placeholder(node) => None,
                None => {
                    cx.error(
                        &node.span,
                        path,
                        format!("{expected}, found {}", node.describe()),
                    );
                    None
                }
            }
        }
        _ => {
            cx.error(
                &node.span,
                path,
                format!("{expected}, found {}", node.describe()),
            );
            None
        }
    }
}

pub(crate) fn decode_update(cx: &mut Cx, node: &Node, path: &YamlPath) -> Option<UpdatePolicy> {
    let m = cx.map(node, path, "an update policy")?;
    m.unknown_keys(
        cx,
        &[
            "canaries",
            "max_in_flight",
            "canary_watch_time",
            "update_watch_time",
            "serial",
            "vm_strategy",
            "initial_deploy_az_update_strategy",
        ],
    );
    let canaries = m
        .get("canaries")
        .and_then(|n| parse_count(cx, n, &m.at("canaries")));
    let max_in_flight = m
        .get("max_in_flight")
        .and_then(|n| parse_count(cx, n, &m.at("max_in_flight")));
    if max_in_flight == Some(Count::Absolute(0)) || max_in_flight == Some(Count::Percent(0)) {
        let n = m.get("max_in_flight").unwrap_or(node);
        cx.warning(
            &n.span,
            &m.at("max_in_flight"),
            "max_in_flight of 0 is treated as 1",
        );
    }
    let canary_watch_time = m
        .get("canary_watch_time")
        .and_then(|n| parse_watch_time(cx, n, &m.at("canary_watch_time")));
    let update_watch_time = m
        .get("update_watch_time")
        .and_then(|n| parse_watch_time(cx, n, &m.at("update_watch_time")));
    let serial = m.opt_bool(cx, "serial");
    let vm_strategy = one_of(
        cx,
        &m,
        "vm_strategy",
        &["delete-create", "create-swap-delete"],
    );
    let initial_deploy_az_update_strategy = one_of(
        cx,
        &m,
        "initial_deploy_az_update_strategy",
        &["serial", "parallel"],
    );
    Some(UpdatePolicy {
        canaries,
        max_in_flight,
        canary_watch_time,
        update_watch_time,
        serial,
        vm_strategy,
        initial_deploy_az_update_strategy,
        written: m.map.string_keys().map(str::to_string).collect(),
    })
}

fn one_of(cx: &mut Cx, m: &MapView<'_>, key: &str, allowed: &[&str]) -> Option<String> {
    let value = m.opt_string(cx, key)?;
    if allowed.contains(&value.value.as_str()) {
        Some(value.value)
    } else {
        cx.error(
            &value.span,
            &value.path,
            format!(
                "expected one of {}, found {:?}",
                allowed.join(", "),
                value.value
            ),
        );
        None
    }
}

fn decode_lifecycle(cx: &mut Cx, m: &MapView<'_>) -> Lifecycle {
    match one_of(cx, m, "lifecycle", &["service", "errand"]).as_deref() {
        Some("errand") => Lifecycle::Errand,
        _ => Lifecycle::Service,
    }
}

fn decode_instance_group(cx: &mut Cx, node: &Node, path: &YamlPath) -> Option<InstanceGroup> {
    let m = cx.map(node, path, "an instance group")?;
    m.unknown_keys(cx, INSTANCE_GROUP_KEYS);
    let name = m.req_string(cx, "name", "the instance group name");
    let azs = m.strings(cx, "azs", "availability zone names");
    if let Some(azs_node) = m.get("azs") {
        if azs_node.as_seq().is_some_and(<[Node]>::is_empty) {
            cx.error(
                &azs_node.span,
                &m.at("azs"),
                "expected at least one availability zone (or leave azs out)",
            );
        }
    }
    let instances = m.req_uint(cx, "instances", "the number of instances");
    let lifecycle = decode_lifecycle(cx, &m);

    let (items, jobs_path) = m.list(cx, "jobs", "jobs");
    if m.get("jobs").is_none() {
        cx.error(
            &node.span,
            path,
            "missing required key 'jobs' (the release jobs to run on each instance)",
        );
    }
    let jobs = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| decode_job(cx, item, &jobs_path.index(i)))
        .collect();

    let vm_type = m.opt_string(cx, "vm_type");
    let vm_resources = m.get("vm_resources").and_then(|n| {
        let r = cx.map(
            n,
            &m.at("vm_resources"),
            "VM resources (cpu, ram, ephemeral_disk_size)",
        )?;
        r.unknown_keys(cx, &["cpu", "ram", "ephemeral_disk_size"]);
        Some(VmResources {
            cpu: r.req_uint(cx, "cpu", "the number of CPUs").map(|s| s.value),
            ram: r.req_uint(cx, "ram", "memory in MB").map(|s| s.value),
            ephemeral_disk_size: r
                .req_uint(cx, "ephemeral_disk_size", "ephemeral disk size in MB")
                .map(|s| s.value),
        })
    });
    let vm_extensions = m.strings(cx, "vm_extensions", "VM extension names");
    let stemcell = m.opt_string(cx, "stemcell");
    let persistent_disk = m.opt_uint(cx, "persistent_disk");
    let persistent_disk_type = m.opt_string(cx, "persistent_disk_type");

    let (items, networks_path) = m.list(cx, "networks", "networks");
    let networks = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| decode_network_ref(cx, item, &networks_path.index(i)))
        .collect();

    let update_path = m.at("update");
    let update = m
        .get("update")
        .and_then(|n| decode_update(cx, n, &update_path));

    let (items, migrated_path) = m.list(cx, "migrated_from", "instance groups this one replaces");
    let migrated_from = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let mm = cx.map(
                item,
                &migrated_path.index(i),
                "a migrated_from entry (name and az)",
            )?;
            mm.unknown_keys(cx, &["name", "az"]);
            let name = mm.req_string(cx, "name", "the old instance group name")?;
            Some((name, mm.opt_string(cx, "az")))
        })
        .collect();

    let env = m.tree(cx, "env");
    let properties = m.tree(cx, "properties");
    Some(InstanceGroup {
        path: path.clone(),
        span: node.span.clone(),
        name,
        azs,
        instances,
        lifecycle,
        jobs,
        vm_type,
        vm_resources,
        vm_extensions,
        stemcell,
        persistent_disk,
        persistent_disk_type,
        networks,
        update,
        update_path,
        migrated_from,
        env,
        properties,
    })
}

fn decode_links(cx: &mut Cx, m: &MapView<'_>, key: &str) -> Vec<(Spanned<String>, Option<Node>)> {
    let Some(node) = m.get(key) else {
        return Vec::new();
    };
    let path = m.at(key);
    let Some(links) = cx.map(node, &path, &format!("{key} (link name to link options)")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (link_key, value) in links.map.iter() {
        let Some(link_name) = link_key.as_str() else {
            continue;
        };
        let link_path = path.key(link_name);
        let spec = match &value.value {
            crate::yaml::Value::Null => None,
            crate::yaml::Value::Str(s) if s == "nil" => None,
            crate::yaml::Value::Map(_) => Some(value.clone()),
            _ => {
                cx.error(
                    &value.span,
                    &link_path,
                    format!(
                        "expected link options (a map) or nil, found {}",
                        value.describe()
                    ),
                );
                None
            }
        };
        out.push((
            Spanned::new(link_name.to_string(), link_key, link_path),
            spec,
        ));
    }
    out
}

pub(crate) fn decode_job(cx: &mut Cx, node: &Node, path: &YamlPath) -> Option<JobRef> {
    let m = cx.map(node, path, "a job (name and release)")?;
    m.unknown_keys(
        cx,
        &[
            "name",
            "release",
            "properties",
            "consumes",
            "provides",
            "custom_provider_definitions",
        ],
    );
    let name = m.req_string(cx, "name", "the job name from the release");
    let release = m.req_string(cx, "release", "the name of the release that has the job");
    let properties = m.tree(cx, "properties");
    let consumes = decode_links(cx, &m, "consumes");
    let provides = decode_links(cx, &m, "provides");
    Some(JobRef {
        name,
        release,
        properties,
        consumes,
        provides,
    })
}

fn decode_network_ref(cx: &mut Cx, node: &Node, path: &YamlPath) -> Option<NetworkRef> {
    let m = cx.map(node, path, "a network (name, static_ips, default)")?;
    m.unknown_keys(cx, &["name", "static_ips", "default", "nic_group"]);
    let name = m.req_string(cx, "name", "the network name from the cloud config");
    let mut static_ips = m.strings(cx, "static_ips", "IP addresses");
    let before = static_ips.len();
    static_ips.retain(|ip| !super::decode::has_placeholder(&ip.value));
    let static_ips_deferred = static_ips.len() != before
        || m.get("static_ips")
            .is_some_and(super::decode::is_placeholder);
    let default = m.strings(cx, "default", "dns, gateway or addressable");
    for entry in &default {
        if !["dns", "gateway", "addressable"].contains(&entry.value.as_str()) {
            cx.error(
                &entry.span,
                &entry.path,
                format!(
                    "expected dns, gateway or addressable, found {:?}",
                    entry.value
                ),
            );
        }
    }
    Some(NetworkRef {
        name,
        static_ips,
        static_ips_deferred,
        default,
    })
}

pub(crate) fn decode_addon(cx: &mut Cx, node: &Node, path: &YamlPath) -> Option<Addon> {
    let m = cx.map(node, path, "an addon (name and jobs)")?;
    m.unknown_keys(cx, &["name", "jobs", "include", "exclude", "properties"]);
    let name = m.req_string(cx, "name", "the addon name");
    let (items, jobs_path) = m.list(cx, "jobs", "jobs");
    let jobs = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| decode_job(cx, item, &jobs_path.index(i)))
        .collect();
    let include = m
        .get("include")
        .and_then(|n| decode_placement(cx, n, &m.at("include")));
    let exclude = m
        .get("exclude")
        .and_then(|n| decode_placement(cx, n, &m.at("exclude")));
    Some(Addon {
        name,
        jobs,
        include,
        exclude,
    })
}

fn decode_placement(cx: &mut Cx, node: &Node, path: &YamlPath) -> Option<Placement> {
    let m = cx.map(node, path, "placement rules")?;
    m.unknown_keys(
        cx,
        &[
            "deployments",
            "jobs",
            "instance_groups",
            "stemcell",
            "networks",
            "teams",
            "lifecycle",
        ],
    );
    let (items, jobs_path) = m.list(cx, "jobs", "jobs (name and release)");
    let jobs = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let jm = cx.map(item, &jobs_path.index(i), "a job (name and release)")?;
            jm.unknown_keys(cx, &["name", "release"]);
            Some((
                jm.req_string(cx, "name", "the job name"),
                jm.req_string(cx, "release", "the job's release"),
            ))
        })
        .collect();
    let (items, stemcell_path) = m.list(cx, "stemcell", "stemcells (os)");
    let stemcell_os = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let sm = cx.map(item, &stemcell_path.index(i), "a stemcell rule (os)")?;
            sm.unknown_keys(cx, &["os"]);
            sm.req_string(cx, "os", "the stemcell operating system")
        })
        .collect();
    Some(Placement {
        deployments: m.strings(cx, "deployments", "deployment names"),
        jobs,
        instance_groups: m.strings(cx, "instance_groups", "instance group names"),
        stemcell_os,
        networks: m.strings(cx, "networks", "network names"),
        teams: m.strings(cx, "teams", "team names"),
        lifecycle: m.get("lifecycle").map(|_| decode_lifecycle(cx, &m)),
    })
}

fn decode_variable(cx: &mut Cx, node: &Node, path: &YamlPath) -> Option<VariableDecl> {
    let m = cx.map(node, path, "a variable definition (name, type, options)")?;
    m.unknown_keys(
        cx,
        &[
            "name",
            "type",
            "options",
            "update_mode",
            "update",
            "consumes",
        ],
    );
    let name = m.req_string(cx, "name", "the variable name");
    let kind = m.opt_string(cx, "type");
    if let Some(kind) = &kind {
        const TYPES: &[&str] = &[
            "password",
            "certificate",
            "rsa",
            "ssh",
            "user",
            "json",
            "value",
        ];
        if !TYPES.contains(&kind.value.as_str()) {
            cx.error(
                &kind.span,
                &kind.path,
                format!(
                    "expected a variable type ({}), found {:?}",
                    TYPES.join(", "),
                    kind.value
                ),
            );
        }
    }
    one_of(
        cx,
        &m,
        "update_mode",
        &["no-overwrite", "overwrite", "converge"],
    );
    let options_path = m.at("options");
    let options = m.tree(cx, "options");
    Some(VariableDecl {
        name,
        kind,
        options,
        options_path,
    })
}

fn decode_features(cx: &mut Cx, node: &Node, path: &YamlPath) -> Features {
    let Some(m) = cx.map(node, path, "features") else {
        return Features::default();
    };
    m.unknown_keys(
        cx,
        &[
            "use_dns_addresses",
            "use_short_dns_addresses",
            "randomize_az_placement",
            "converge_variables",
            "use_tmpfs_config",
            "use_link_dns_names",
        ],
    );
    Features {
        use_dns_addresses: m.opt_bool(cx, "use_dns_addresses"),
        use_short_dns_addresses: m.opt_bool(cx, "use_short_dns_addresses"),
        randomize_az_placement: m.opt_bool(cx, "randomize_az_placement"),
        converge_variables: m.opt_bool(cx, "converge_variables"),
        use_tmpfs_config: m.opt_bool(cx, "use_tmpfs_config"),
    }
}
