//! The cloud config (AZs, VM types, VM extensions, disk types, networks, compilation) and
//! the runtime config (releases and addons applied to every matching deployment).

use std::net::IpAddr;

use super::decode::{Cx, MapView, Spanned, has_placeholder, undefined};
use super::deployment::{Addon, ReleaseRef, decode_addon, decode_release};
use super::ip::{Cidr, IpSet, parse_ip_entry};
use crate::yaml::{Node, Span, YamlPath};

/// A cloud config.
#[derive(Clone, Debug, Default)]
pub struct CloudConfig {
    /// `azs`.
    pub azs: Vec<Named>,
    /// `vm_types`.
    pub vm_types: Vec<Named>,
    /// `vm_extensions`.
    pub vm_extensions: Vec<Named>,
    /// `disk_types`.
    pub disk_types: Vec<DiskType>,
    /// `networks`.
    pub networks: Vec<Network>,
    /// `compilation`.
    pub compilation: Option<Compilation>,
}

/// Something with a name and cloud properties (an AZ, a VM type, a VM extension).
#[derive(Clone, Debug)]
pub struct Named {
    /// `name`.
    pub name: Spanned<String>,
    /// `cloud_properties`.
    pub cloud_properties: Option<Node>,
}

/// `disk_types[]`.
#[derive(Clone, Debug)]
pub struct DiskType {
    /// `name`.
    pub name: Spanned<String>,
    /// `disk_size` in MB.
    pub disk_size: Option<u64>,
    /// `cloud_properties`.
    pub cloud_properties: Option<Node>,
}

/// `networks[].type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkKind {
    /// The director assigns IPs from subnets.
    Manual,
    /// The IaaS assigns IPs.
    Dynamic,
    /// Public IPs given as static IPs.
    Vip,
}

/// `networks[]`.
#[derive(Clone, Debug)]
pub struct Network {
    /// `name`.
    pub name: Spanned<String>,
    /// `type`.
    pub kind: NetworkKind,
    /// `subnets`.
    pub subnets: Vec<Subnet>,
}

/// `networks[].subnets[]`.
#[derive(Clone, Debug)]
pub struct Subnet {
    /// Where the subnet was written.
    pub span: Span,
    /// Its path.
    pub path: YamlPath,
    /// `range` (manual networks).
    pub range: Option<Cidr>,
    /// `gateway`.
    pub gateway: Option<IpAddr>,
    /// `dns`.
    pub dns: Vec<IpAddr>,
    /// `reserved`.
    pub reserved: IpSet,
    /// `static`.
    pub static_ips: IpSet,
    /// `az` / `azs`.
    pub azs: Vec<Spanned<String>>,
    /// `cloud_properties`.
    pub cloud_properties: Option<Node>,
}

/// `compilation`.
#[derive(Clone, Debug)]
pub struct Compilation {
    /// Where it was written.
    pub span: Span,
    /// `workers`.
    pub workers: Option<u64>,
    /// `reuse_compilation_vms`.
    pub reuse_compilation_vms: bool,
    /// `az`.
    pub az: Option<Spanned<String>>,
    /// `vm_type`.
    pub vm_type: Option<Spanned<String>>,
    /// `vm_resources` was given.
    pub has_vm_resources: bool,
    /// `network`.
    pub network: Option<Spanned<String>>,
}

impl CloudConfig {
    /// The network called `name`.
    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name.value == name)
    }
}

const CLOUD_KEYS: &[&str] = &[
    "azs",
    "vm_types",
    "vm_extensions",
    "disk_types",
    "networks",
    "compilation",
];

/// Decodes and checks a cloud config on its own (names unique, references to its own AZs,
/// subnet ranges, gateways and IP lists consistent).
pub(crate) fn decode_cloud(cx: &mut Cx, doc: &Node) -> Option<CloudConfig> {
    let root = YamlPath::root();
    let m = cx.map(doc, &root, "a cloud config")?;
    m.unknown_keys(cx, CLOUD_KEYS);
    let azs = named_list(
        cx,
        &m,
        "azs",
        "availability zones",
        &["name", "cpi", "cloud_properties"],
    );
    let vm_types = named_list(
        cx,
        &m,
        "vm_types",
        "VM types",
        &["name", "cloud_properties"],
    );
    let vm_extensions = named_list(
        cx,
        &m,
        "vm_extensions",
        "VM extensions",
        &["name", "cloud_properties"],
    );

    let (items, path) = m.list(cx, "disk_types", "disk types");
    let mut disk_types = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(d) = cx.map(item, &path.index(i), "a disk type (name, disk_size)") else {
            continue;
        };
        d.unknown_keys(cx, &["name", "disk_size", "cloud_properties"]);
        let name = d.req_string(cx, "name", "the disk type name");
        let disk_size = d.req_uint(cx, "disk_size", "the size in MB");
        if let Some(size) = &disk_size {
            if size.value == 0 {
                cx.error(
                    &size.span,
                    &size.path,
                    "expected a disk size of at least 1 MB, found 0",
                );
            }
        }
        if let Some(name) = name {
            disk_types.push(DiskType {
                name,
                disk_size: disk_size.map(|s| s.value),
                cloud_properties: d.tree(cx, "cloud_properties"),
            });
        }
    }
    check_unique(cx, "disk type", disk_types.iter().map(|d| &d.name));

    let az_names: Vec<&str> = azs.iter().map(|a| a.name.value.as_str()).collect();
    let (items, path) = m.list(cx, "networks", "networks");
    let mut networks = Vec::new();
    for (i, item) in items.iter().enumerate() {
        if let Some(network) = decode_network(cx, item, &path.index(i), &az_names) {
            networks.push(network);
        }
    }
    check_unique(cx, "network", networks.iter().map(|n| &n.name));

    let compilation = m.get("compilation").and_then(|node| {
        let c = cx.map(node, &m.at("compilation"), "compilation settings")?;
        c.unknown_keys(
            cx,
            &[
                "workers",
                "reuse_compilation_vms",
                "az",
                "vm_type",
                "vm_resources",
                "vm_extensions",
                "cloud_properties",
                "network",
                "orphan_workers",
                "env",
            ],
        );
        let workers = c.req_uint(cx, "workers", "the most compilation VMs at once");
        if let Some(w) = &workers {
            if w.value == 0 {
                cx.error(
                    &w.span,
                    &w.path,
                    "expected at least 1 compilation worker, found 0",
                );
            }
        }
        let az = c.req_string(cx, "az", "the availability zone for compilation VMs");
        let network = c.req_string(cx, "network", "the network for compilation VMs");
        let vm_type = c.opt_string(cx, "vm_type");
        let has_vm_resources = c.get("vm_resources").is_some();
        if vm_type.is_none()
            && !has_vm_resources
            && c.get("cloud_properties").is_none()
            && c.get("vm_type").is_none()
        {
            cx.error(
                &node.span,
                &m.at("compilation"),
                "missing required key 'vm_type' (or vm_resources) for compilation VMs",
            );
        }
        if let Some(az) = &az {
            if !az_names.is_empty() && !az_names.contains(&az.value.as_str()) {
                cx.error(
                    &az.span,
                    &az.path,
                    undefined("availability zone", &az.value, &az_names, "in azs"),
                );
            }
        }
        Some(Compilation {
            span: node.span.clone(),
            workers: workers.map(|w| w.value),
            reuse_compilation_vms: c.opt_bool(cx, "reuse_compilation_vms").unwrap_or(false),
            az,
            vm_type,
            has_vm_resources,
            network,
        })
    });
    let config = CloudConfig {
        azs,
        vm_types,
        vm_extensions,
        disk_types,
        networks,
        compilation,
    };
    if let Some(c) = &config.compilation {
        if let Some(vm_type) = &c.vm_type {
            let names: Vec<&str> = config
                .vm_types
                .iter()
                .map(|v| v.name.value.as_str())
                .collect();
            if !names.contains(&vm_type.value.as_str()) {
                cx.error(
                    &vm_type.span,
                    &vm_type.path,
                    undefined("vm_type", &vm_type.value, &names, "in vm_types"),
                );
            }
        }
        if let Some(network) = &c.network {
            let names: Vec<&str> = config
                .networks
                .iter()
                .map(|n| n.name.value.as_str())
                .collect();
            if !names.contains(&network.value.as_str()) {
                cx.error(
                    &network.span,
                    &network.path,
                    undefined("network", &network.value, &names, "in networks"),
                );
            }
        }
    }
    Some(config)
}

fn named_list(cx: &mut Cx, m: &MapView<'_>, key: &str, what: &str, known: &[&str]) -> Vec<Named> {
    let (items, path) = m.list(cx, key, what);
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(entry) = cx.map(item, &path.index(i), "an entry with a name") else {
            continue;
        };
        entry.unknown_keys(cx, known);
        let name = entry.req_string(cx, "name", "its name");
        let cloud_properties = entry.tree(cx, "cloud_properties");
        if let Some(name) = name {
            out.push(Named {
                name,
                cloud_properties,
            });
        }
    }
    let singular = what.trim_end_matches('s');
    check_unique(cx, singular, out.iter().map(|n| &n.name));
    out
}

pub(crate) fn check_unique<'a>(
    cx: &mut Cx,
    what: &str,
    names: impl Iterator<Item = &'a Spanned<String>>,
) {
    let mut seen: Vec<&Spanned<String>> = Vec::new();
    for name in names {
        if let Some(first) = seen.iter().find(|s| s.value == name.value) {
            cx.error(
                &name.span,
                &name.path,
                format!(
                    "{what} '{}' is defined twice (first at {})",
                    name.value, first.span
                ),
            );
        } else {
            seen.push(name);
        }
    }
}

fn decode_network(cx: &mut Cx, node: &Node, path: &YamlPath, az_names: &[&str]) -> Option<Network> {
    let m = cx.map(node, path, "a network")?;
    m.unknown_keys(
        cx,
        &[
            "name",
            "type",
            "subnets",
            "dns",
            "cloud_properties",
            "managed",
        ],
    );
    let name = m.req_string(cx, "name", "the network name");
    let kind = match m.opt_string(cx, "type") {
        None => NetworkKind::Manual,
        Some(t) => match t.value.as_str() {
            "manual" => NetworkKind::Manual,
            "dynamic" => NetworkKind::Dynamic,
            "vip" => NetworkKind::Vip,
            other => {
                cx.error(
                    &t.span,
                    &t.path,
                    format!("expected a network type (manual, dynamic or vip), found {other:?}"),
                );
                NetworkKind::Manual
            }
        },
    };
    let (items, subnets_path) = m.list(cx, "subnets", "subnets");
    if kind == NetworkKind::Manual && m.get("subnets").is_none() {
        cx.error(&node.span, path, "missing required key 'subnets' (a manual network needs at least one subnet with a range and a gateway)");
    }
    let mut subnets = Vec::new();
    for (i, item) in items.iter().enumerate() {
        if let Some(subnet) = decode_subnet(cx, item, &subnets_path.index(i), kind, az_names) {
            subnets.push(subnet);
        }
    }
    Some(Network {
        name: name?,
        kind,
        subnets,
    })
}

fn ip_list(cx: &mut Cx, m: &MapView<'_>, key: &str, v4: bool, range: Option<&Cidr>) -> IpSet {
    let mut set = IpSet::new(v4);
    for entry in m.strings(cx, key, "IP addresses or ranges") {
        if has_placeholder(&entry.value) {
            continue;
        }
        match parse_ip_entry(&entry.value) {
            Ok((first, last)) => {
                if let Some(range) = range {
                    if !range.contains(first) || !range.contains(last) {
                        cx.error(
                            &entry.span,
                            &entry.path,
                            format!("{} is outside the subnet range {range}", entry.value),
                        );
                        continue;
                    }
                }
                if first.is_ipv4() != v4 {
                    cx.error(
                        &entry.span,
                        &entry.path,
                        format!("{} is not of the subnet's IP family", entry.value),
                    );
                    continue;
                }
                set.add(first, last);
            }
            Err(message) => cx.error(&entry.span, &entry.path, message),
        }
    }
    set
}

fn decode_subnet(
    cx: &mut Cx,
    node: &Node,
    path: &YamlPath,
    kind: NetworkKind,
    az_names: &[&str],
) -> Option<Subnet> {
    let m = cx.map(node, path, "a subnet")?;
    m.unknown_keys(
        cx,
        &[
            "range",
            "gateway",
            "dns",
            "reserved",
            "static",
            "az",
            "azs",
            "cloud_properties",
            "prefix",
            "name",
        ],
    );
    let mut range = None;
    if kind == NetworkKind::Manual {
        if let Some(text) = m.req_string(cx, "range", "the subnet's CIDR range, e.g. 10.0.0.0/24") {
            if !has_placeholder(&text.value) {
                match Cidr::parse(&text.value) {
                    Ok(cidr) => range = Some(cidr),
                    Err(message) => cx.error(&text.span, &text.path, message),
                }
            }
        }
    }
    let mut gateway = None;
    let gateway_text = if kind == NetworkKind::Manual {
        m.req_string(cx, "gateway", "the subnet's gateway IP")
    } else {
        m.opt_string(cx, "gateway")
    };
    if let Some(text) = gateway_text.filter(|t| !has_placeholder(&t.value)) {
        match text.value.parse::<IpAddr>() {
            Ok(ip) => {
                if let Some(range) = &range {
                    if !range.contains(ip) {
                        cx.error(
                            &text.span,
                            &text.path,
                            format!("gateway {ip} is outside the subnet range {range}"),
                        );
                    }
                }
                gateway = Some(ip);
            }
            Err(_) => cx.error(
                &text.span,
                &text.path,
                format!("expected an IP address, found {:?}", text.value),
            ),
        }
    }
    let mut dns = Vec::new();
    for entry in m.strings(cx, "dns", "DNS server IPs") {
        if has_placeholder(&entry.value) {
            continue;
        }
        match entry.value.parse::<IpAddr>() {
            Ok(ip) => dns.push(ip),
            Err(_) => cx.error(
                &entry.span,
                &entry.path,
                format!(
                    "expected the IP address of a DNS server, found {:?}",
                    entry.value
                ),
            ),
        }
    }
    let v4 = range.is_none_or(|r| r.network.is_ipv4());
    let reserved = ip_list(cx, &m, "reserved", v4, range.as_ref());
    let static_ips = ip_list(cx, &m, "static", v4, range.as_ref());
    if let Some(both) = static_ips.first_common(&reserved) {
        let at = m.get("static").unwrap_or(node);
        cx.error(
            &at.span,
            &m.at("static"),
            format!("{both} is both static and reserved: reserved IPs are never assigned"),
        );
    }
    if let (Some(gateway), false) = (gateway, static_ips.is_empty()) {
        if static_ips.contains(gateway) {
            let at = m.get("static").unwrap_or(node);
            cx.error(
                &at.span,
                &m.at("static"),
                format!("the gateway {gateway} cannot be a static IP"),
            );
        }
    }
    let mut azs = Vec::new();
    if let Some(az) = m.opt_string(cx, "az") {
        azs.push(az);
    }
    if m.get("az").is_some() && m.get("azs").is_some() {
        cx.error(&node.span, path, "give either az or azs, not both");
    }
    azs.extend(m.strings(cx, "azs", "availability zone names"));
    for az in &azs {
        if !az_names.contains(&az.value.as_str()) {
            cx.error(
                &az.span,
                &az.path,
                undefined("availability zone", &az.value, az_names, "in azs"),
            );
        }
    }
    Some(Subnet {
        span: node.span.clone(),
        path: path.clone(),
        range,
        gateway,
        dns,
        reserved,
        static_ips,
        azs,
        cloud_properties: m.tree(cx, "cloud_properties"),
    })
}

/// A runtime config.
#[derive(Clone, Debug, Default)]
pub struct RuntimeConfig {
    /// `releases`.
    pub releases: Vec<ReleaseRef>,
    /// `addons`.
    pub addons: Vec<Addon>,
    /// `tags`.
    pub tags: Option<Node>,
}

/// Decodes and checks a runtime config on its own.
pub(crate) fn decode_runtime(cx: &mut Cx, doc: &Node) -> Option<RuntimeConfig> {
    let root = YamlPath::root();
    let m = cx.map(doc, &root, "a runtime config")?;
    m.unknown_keys(cx, &["releases", "addons", "tags", "variables"]);
    let (items, path) = m.list(cx, "releases", "releases");
    let releases: Vec<ReleaseRef> = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| decode_release(cx, item, &path.index(i)))
        .collect();
    for release in &releases {
        if let Some(version) = &release.version {
            if version.value == "latest" {
                cx.error(
                    &version.span,
                    &version.path,
                    "a runtime config must name an exact release version, not 'latest'",
                );
            }
        }
    }
    check_unique(cx, "release", releases.iter().map(|r| &r.name));
    let (items, path) = m.list(cx, "addons", "addons");
    let addons: Vec<Addon> = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| decode_addon(cx, item, &path.index(i)))
        .collect();
    let release_names: Vec<&str> = releases.iter().map(|r| r.name.value.as_str()).collect();
    for addon in &addons {
        for job in &addon.jobs {
            if let Some(release) = &job.release {
                if !release_names.contains(&release.value.as_str()) {
                    cx.error(
                        &release.span,
                        &release.path,
                        undefined(
                            "release",
                            &release.value,
                            &release_names,
                            "in the runtime config's releases",
                        ),
                    );
                }
            }
        }
    }
    check_unique(cx, "addon", addons.iter().filter_map(|a| a.name.as_ref()));
    Some(RuntimeConfig {
        releases,
        addons,
        tags: m.tree(cx, "tags"),
    })
}
