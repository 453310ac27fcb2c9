//! Cross-checks of a deployment manifest, against itself and against a cloud config: names
//! unique, references defined, update settings complete, networks and static IPs sound.

use std::collections::HashMap;
use std::net::IpAddr;

use super::cloud::{CloudConfig, NetworkKind, check_unique};
use super::decode::{Cx, Spanned, undefined};
use super::deployment::{DeploymentManifest, InstanceGroup, NetworkRef, UpdatePolicy};
use super::ip::parse_ip_entry;
use crate::yaml::YamlPath;

fn group_name(group: &InstanceGroup) -> String {
    group
        .name
        .as_ref()
        .map_or_else(|| group.path.to_string(), |n| format!("'{}'", n.value))
}

/// Checks that need only the manifest.
pub(crate) fn check_manifest(cx: &mut Cx, manifest: &DeploymentManifest) {
    check_names_are_unique(cx, manifest);
    let declared = DeclaredNames::of(manifest);
    for addon in &manifest.addons {
        for job in &addon.jobs {
            declared.check_release(cx, &job.release);
        }
    }
    check_update_settings(cx, manifest);
    let mut static_ips_seen = StaticIpsSeen::new();
    for group in &manifest.instance_groups {
        check_instance_group(cx, group, &declared, &mut static_ips_seen);
    }
    check_certificate_variables(cx, manifest);
}

/// Each static IP given alone, by network, with where it was first assigned.
type StaticIpsSeen = HashMap<(String, IpAddr), YamlPath>;

/// The releases and stemcell aliases the manifest declares, which jobs and instance groups
/// refer to.
struct DeclaredNames<'a> {
    releases: Vec<&'a str>,
    stemcell_aliases: Vec<&'a str>,
}

impl<'a> DeclaredNames<'a> {
    fn of(manifest: &'a DeploymentManifest) -> DeclaredNames<'a> {
        DeclaredNames {
            releases: manifest
                .releases
                .iter()
                .map(|r| r.name.value.as_str())
                .collect(),
            stemcell_aliases: manifest
                .stemcells
                .iter()
                .map(|s| s.alias.value.as_str())
                .collect(),
        }
    }

    /// A job's `release`, when given, names a declared release.
    fn check_release(&self, cx: &mut Cx, release: &Option<Spanned<String>>) {
        if let Some(release) = release {
            if !self.releases.contains(&release.value.as_str()) {
                cx.error(
                    &release.span,
                    &release.path,
                    undefined("release", &release.value, &self.releases, "in releases"),
                );
            }
        }
    }

    /// An instance group names a declared stemcell alias.
    fn check_stemcell(&self, cx: &mut Cx, group: &InstanceGroup) {
        let aliases = &self.stemcell_aliases;
        match &group.stemcell {
            Some(stemcell) if !aliases.contains(&stemcell.value.as_str()) => {
                cx.error(
                    &stemcell.span,
                    &stemcell.path,
                    undefined("stemcell alias", &stemcell.value, aliases, "in stemcells"),
                );
            }
            Some(_) => {}
            None => cx.error(
                &group.span,
                &group.path,
                format!(
                    "missing required key 'stemcell' (the alias of one of the stemcells: {})",
                    aliases.join(", ")
                ),
            ),
        }
    }
}

/// Releases, stemcell aliases, instance groups, variables and addons are named once each.
fn check_names_are_unique(cx: &mut Cx, manifest: &DeploymentManifest) {
    check_unique(cx, "release", manifest.releases.iter().map(|r| &r.name));
    check_unique(
        cx,
        "stemcell alias",
        manifest.stemcells.iter().map(|s| &s.alias),
    );
    check_unique(
        cx,
        "instance group",
        manifest
            .instance_groups
            .iter()
            .filter_map(|g| g.name.as_ref()),
    );
    check_unique(
        cx,
        "variable",
        manifest.variables.iter().filter_map(|v| v.name.as_ref()),
    );
    check_unique(
        cx,
        "addon",
        manifest.addons.iter().filter_map(|a| a.name.as_ref()),
    );
}

/// The update settings every instance group needs, from its own update block or the
/// top-level one. A setting no group has is reported once, at the top-level block.
fn check_update_settings(cx: &mut Cx, manifest: &DeploymentManifest) {
    let top_update = manifest.update.clone().unwrap_or_default();
    let mut missing_everywhere: Vec<&str> = Vec::new();
    for field in [
        "canaries",
        "max_in_flight",
        "canary_watch_time",
        "update_watch_time",
    ] {
        // A key that was written but invalid has been reported already.
        let lacking = |policy: &UpdatePolicy| !policy.written.iter().any(|k| k == field);
        if !lacking(&top_update) {
            continue;
        }
        let groups_lacking: Vec<&InstanceGroup> = manifest
            .instance_groups
            .iter()
            .filter(|g| g.update.as_ref().is_none_or(&lacking))
            .collect();
        if groups_lacking.is_empty() {
            continue;
        }
        if groups_lacking.len() == manifest.instance_groups.len() {
            missing_everywhere.push(field);
        } else {
            for group in groups_lacking {
                cx.error(
                    &group.span,
                    &group.update_path,
                    format!(
                        "missing {field}: set it in this instance group's update block or in the top-level update block"
                    ),
                );
            }
        }
    }
    if !missing_everywhere.is_empty() {
        report_update_settings_missing_everywhere(cx, manifest, &missing_everywhere);
    }
}

fn report_update_settings_missing_everywhere(
    cx: &mut Cx,
    manifest: &DeploymentManifest,
    missing_everywhere: &[&str],
) {
    let (span, path) = match &manifest.update_span {
        Some(span) => (span.clone(), YamlPath::root().key("update")),
        None => (manifest.span.clone(), YamlPath::root()),
    };
    let what = if manifest.update.is_some() {
        format!(
            "missing {} in the top-level update block",
            missing_everywhere.join(", ")
        )
    } else {
        format!(
            "missing required key 'update' (every instance group needs {}; e.g. update: {{canaries: 1, max_in_flight: 1, canary_watch_time: 1000-30000, update_watch_time: 1000-30000}})",
            missing_everywhere.join(", ")
        )
    };
    cx.error(&span, &path, what);
}

/// One instance group: its jobs, AZs, stemcell, VM, disk and networks.
fn check_instance_group(
    cx: &mut Cx,
    group: &InstanceGroup,
    declared: &DeclaredNames<'_>,
    static_ips_seen: &mut StaticIpsSeen,
) {
    check_unique(cx, "job", group.jobs.iter().filter_map(|j| j.name.as_ref()));
    check_unique(cx, "availability zone", group.azs.iter());
    for job in &group.jobs {
        declared.check_release(cx, &job.release);
    }
    declared.check_stemcell(cx, group);
    check_vm_and_disk(cx, group);
    check_group_networks(cx, group);
    for network in &group.networks {
        check_static_ips(cx, group, network, static_ips_seen);
    }
}

/// Exactly one of `vm_type` and `vm_resources`; not both kinds of persistent disk.
fn check_vm_and_disk(cx: &mut Cx, group: &InstanceGroup) {
    match (&group.vm_type, &group.vm_resources) {
        (Some(_), Some(_)) => cx.error(&group.span, &group.path, "give either vm_type or vm_resources, not both"),
        (None, None) => cx.error(
            &group.span,
            &group.path,
            "missing required key 'vm_type' (a VM type from the cloud config, or vm_resources: {cpu, ram, ephemeral_disk_size})",
        ),
        _ => {}
    }
    if let (Some(size), Some(kind)) = (&group.persistent_disk, &group.persistent_disk_type) {
        cx.error(
            &kind.span,
            &kind.path,
            format!(
                "give either persistent_disk ({}) or persistent_disk_type, not both",
                size.value
            ),
        );
    }
}

/// At least one network, each once; with several, one default for DNS and for the gateway.
fn check_group_networks(cx: &mut Cx, group: &InstanceGroup) {
    if group.networks.is_empty() {
        cx.error(
            &group.span,
            &group.path,
            "missing required key 'networks' (at least one network from the cloud config)",
        );
    }
    check_unique(
        cx,
        "network",
        group.networks.iter().filter_map(|n| n.name.as_ref()),
    );
    if group.networks.len() <= 1 {
        return;
    }
    let mut unassigned = Vec::new();
    for role in ["dns", "gateway"] {
        let providers: Vec<&Spanned<String>> = group
            .networks
            .iter()
            .flat_map(|n| n.default.iter())
            .filter(|d| d.value == role)
            .collect();
        match providers.len() {
            1 => {}
            0 => unassigned.push(role),
            _ => cx.error(
                &providers[1].span,
                &providers[1].path,
                format!("only one network can be the default for {role}"),
            ),
        }
    }
    if !unassigned.is_empty() {
        cx.error(
            &group.span,
            &group.path.key("networks"),
            format!(
                "instance group {} has more than one network: mark the one that provides them with default: [{}]",
                group_name(group),
                unassigned.join(", ")
            ),
        );
    }
}

/// The static IPs of one network of a group: readable, none assigned twice on the network
/// (across groups), one per instance.
fn check_static_ips(
    cx: &mut Cx,
    group: &InstanceGroup,
    network: &NetworkRef,
    static_ips_seen: &mut StaticIpsSeen,
) {
    if network.static_ips.is_empty() && !network.static_ips_deferred {
        return;
    }
    let Some(network_name) = &network.name else {
        return;
    };
    let mut count: u128 = 0;
    let mut unreadable = false;
    for entry in &network.static_ips {
        match parse_ip_entry(&entry.value) {
            Ok((first, last)) => {
                count += range_len(first, last);
                if first == last {
                    let key = (network_name.value.clone(), first);
                    if let Some(previous) = static_ips_seen.get(&key) {
                        cx.error(
                            &entry.span,
                            &entry.path,
                            format!("static IP {first} is also assigned at {previous}"),
                        );
                    } else {
                        static_ips_seen.insert(key, entry.path.clone());
                    }
                }
            }
            Err(message) => {
                unreadable = true;
                cx.error(&entry.span, &entry.path, message);
            }
        }
    }
    if let (Some(instances), false) = (&group.instances, unreadable || network.static_ips_deferred)
    {
        if count != u128::from(instances.value) {
            cx.error(
                &instances.span,
                &instances.path,
                format!(
                    "instance group {} has {} but {} on network '{}': give one static IP per instance",
                    group_name(group),
                    counted(u128::from(instances.value), "instance"),
                    counted(count, "static IP"),
                    network_name.value
                ),
            );
        }
    }
}

/// A certificate variable names a CA (warned about when it is not declared) or is one.
fn check_certificate_variables(cx: &mut Cx, manifest: &DeploymentManifest) {
    let declared: Vec<&str> = manifest
        .variables
        .iter()
        .filter_map(|v| v.name.as_ref())
        .map(|n| n.value.as_str())
        .collect();
    for variable in &manifest.variables {
        let (Some(kind), Some(options)) = (&variable.kind, &variable.options) else {
            continue;
        };
        if kind.value != "certificate" {
            continue;
        }
        if let Some(ca) = options.get("ca") {
            if let Some(name) = ca.as_str() {
                if !declared.contains(&name) && !super::decode::is_placeholder(ca) {
                    cx.warning(
                        &ca.span,
                        &variable.options_path.key("ca"),
                        format!("CA variable '{name}' is not declared in variables: it must come from a vars file or the config server"),
                    );
                }
            }
        }
        let is_ca = matches!(
            options.get("is_ca").map(|n| &n.value),
            Some(crate::yaml::Value::Bool(true))
        );
        if options.get("ca").is_none() && !is_ca {
            cx.error(
                &options.span,
                &variable.options_path,
                "a certificate needs options.ca (the name of a CA variable) or options.is_ca: true",
            );
        }
    }
}

fn counted(n: u128, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn range_len(first: IpAddr, last: IpAddr) -> u128 {
    let n = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    };
    n(last).saturating_sub(n(first)).saturating_add(1)
}

/// Checks of the manifest's references into a cloud config.
pub(crate) fn check_against_cloud(cx: &mut Cx, manifest: &DeploymentManifest, cloud: &CloudConfig) {
    let azs: Vec<&str> = cloud.azs.iter().map(|a| a.name.value.as_str()).collect();
    let vm_types: Vec<&str> = cloud
        .vm_types
        .iter()
        .map(|a| a.name.value.as_str())
        .collect();
    let vm_extensions: Vec<&str> = cloud
        .vm_extensions
        .iter()
        .map(|a| a.name.value.as_str())
        .collect();
    let disk_types: Vec<&str> = cloud
        .disk_types
        .iter()
        .map(|a| a.name.value.as_str())
        .collect();
    let networks: Vec<&str> = cloud
        .networks
        .iter()
        .map(|a| a.name.value.as_str())
        .collect();
    let reference =
        |cx: &mut Cx, kind: &str, name: &Spanned<String>, defined: &[&str], section: &str| {
            if !defined.contains(&name.value.as_str()) {
                cx.error(
                    &name.span,
                    &name.path,
                    undefined(
                        kind,
                        &name.value,
                        defined,
                        &format!("in the cloud config's {section}"),
                    ),
                );
            }
        };
    let mut dynamic_demand: HashMap<String, u128> = HashMap::new();
    for group in &manifest.instance_groups {
        let label = group_name(group);
        for az in &group.azs {
            reference(cx, "availability zone", az, &azs, "azs");
        }
        if let Some(vm_type) = &group.vm_type {
            reference(cx, "vm_type", vm_type, &vm_types, "vm_types");
        }
        for extension in &group.vm_extensions {
            reference(
                cx,
                "vm_extension",
                extension,
                &vm_extensions,
                "vm_extensions",
            );
        }
        if let Some(disk_type) = &group.persistent_disk_type {
            reference(cx, "disk type", disk_type, &disk_types, "disk_types");
        }
        for network_ref in &group.networks {
            let Some(name) = &network_ref.name else {
                continue;
            };
            reference(cx, "network", name, &networks, "networks");
            let Some(network) = cloud.network(&name.value) else {
                continue;
            };
            let subnet_azs: Vec<&str> = network
                .subnets
                .iter()
                .flat_map(|s| s.azs.iter().map(|a| a.value.as_str()))
                .collect();
            if !subnet_azs.is_empty() && group.azs.is_empty() {
                cx.error(
                    &group.span,
                    &group.path,
                    format!(
                        "instance group {label} needs azs: the subnets of network '{}' are in availability zones {}",
                        name.value,
                        dedup(&subnet_azs).join(", ")
                    ),
                );
            }
            for az in &group.azs {
                let covered = network
                    .subnets
                    .iter()
                    .any(|s| s.azs.is_empty() || s.azs.iter().any(|a| a.value == az.value));
                if azs.contains(&az.value.as_str()) && !covered {
                    cx.error(
                        &az.span,
                        &az.path,
                        format!(
                            "network '{}' has no subnet in availability zone '{}'",
                            name.value, az.value
                        ),
                    );
                }
            }
            if network.kind == NetworkKind::Dynamic && !network_ref.static_ips.is_empty() {
                cx.error(
                    &network_ref.static_ips[0].span,
                    &network_ref.static_ips[0].path,
                    format!("network '{}' is dynamic: the IaaS assigns its IPs, so it cannot have static IPs", name.value),
                );
                continue;
            }
            if network.kind != NetworkKind::Manual {
                continue;
            }
            let in_group_azs = |subnet: &super::cloud::Subnet| {
                group.azs.is_empty()
                    || subnet.azs.is_empty()
                    || subnet
                        .azs
                        .iter()
                        .any(|a| group.azs.iter().any(|g| g.value == a.value))
            };
            if network.subnets.iter().any(|s| s.range.is_none()) {
                // A subnet whose range could not be read was reported; checking IPs
                // against it would only repeat that.
                continue;
            }
            for entry in &network_ref.static_ips {
                let Ok((first, last)) = parse_ip_entry(&entry.value) else {
                    continue;
                };
                for ip in [first, last] {
                    let subnet = network
                        .subnets
                        .iter()
                        .find(|s| s.range.is_some_and(|r| r.contains(ip)));
                    let message = match subnet {
                        None => Some(format!(
                            "static IP {ip} is not in any subnet of network '{}'",
                            name.value
                        )),
                        Some(s) if s.reserved.contains(ip) => Some(format!(
                            "static IP {ip} is reserved in network '{}'; reserved IPs are never assigned",
                            name.value
                        )),
                        Some(s) if s.gateway == Some(ip) => Some(format!(
                            "static IP {ip} is the gateway of network '{}'",
                            name.value
                        )),
                        Some(s) if !s.static_ips.contains(ip) => Some(format!(
                            "static IP {ip} is not in the static range of its subnet in network '{}' (add it to the subnet's static list)",
                            name.value
                        )),
                        Some(s) if !in_group_azs(s) => Some(format!(
                            "static IP {ip} is in a subnet of network '{}' whose availability zones ({}) are not among the instance group's",
                            name.value,
                            s.azs
                                .iter()
                                .map(|a| a.value.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )),
                        Some(_) => None,
                    };
                    if let Some(message) = message {
                        cx.error(&entry.span, &entry.path, message);
                        break;
                    }
                }
            }
            if network_ref.static_ips.is_empty() && !network_ref.static_ips_deferred {
                if let Some(instances) = &group.instances {
                    *dynamic_demand.entry(name.value.clone()).or_default() +=
                        u128::from(instances.value);
                }
            }
        }
    }
    for (network_name, demand) in dynamic_demand {
        let Some(network) = cloud.network(&network_name) else {
            continue;
        };
        if network.subnets.iter().any(|s| s.range.is_none()) {
            continue;
        }
        let capacity: u128 = network
            .subnets
            .iter()
            .map(|s| {
                let Some(range) = s.range else { return 0 };
                let mut size = range.size();
                if range.network.is_ipv4() && range.prefix <= 30 {
                    size = size.saturating_sub(2);
                }
                size.saturating_sub(s.reserved.len())
                    .saturating_sub(s.static_ips.len())
                    .saturating_sub(u128::from(s.gateway.is_some()))
            })
            .fold(0u128, u128::saturating_add);
        if demand > capacity {
            let span = network.name.span.clone();
            cx.error(
                &span,
                &network.name.path,
                format!(
                    "network '{network_name}' has room for {capacity} dynamic IPs (range minus reserved, static and gateway) but instance groups need {demand}"
                ),
            );
        }
    }
}

fn dedup<'a>(names: &[&'a str]) -> Vec<&'a str> {
    let mut out: Vec<&str> = names.to_vec();
    out.sort_unstable();
    out.dedup();
    out
}
