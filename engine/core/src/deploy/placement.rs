//! Placement: which instances a group keeps, which it deletes and which it creates, in which
//! AZ, with which index and which IP on each network.
//!
//! The rules are BOSH's where BOSH has one, and least-disruption everywhere:
//! - instances spread evenly over the group's AZs (no two AZs differ by more than one);
//!   scaling keeps existing instances where the balance allows and removes the highest
//!   indexes of the fullest AZ first;
//! - with static IPs an instance keeps its IP while the manifest still lists it, and new
//!   instances take the unused ones in order, in the AZ of their subnet;
//! - a dynamic (director-assigned) IP on a manual network stays with its instance for as long
//!   as it is still valid for the instance's AZ; new ones are the lowest free address of a
//!   matching subnet (not the network, broadcast or gateway address, not reserved, not in the
//!   static range, not held by anyone else);
//! - new instances take the lowest index no instance of the group holds; the bootstrap
//!   instance stays bootstrap while it exists.
//!
//! Invariant: pure; the caller passes what is taken and how to make ids.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use serde::Serialize;
use serde_json::Value as Json;

use super::desired::{DesiredGroup, GroupNetwork};
use crate::manifest::ip::{from_number, to_number};
use crate::manifest::{CloudConfig, Network, NetworkKind, Subnet};

/// An instance of the group as the director recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExistingInstance {
    /// Its id.
    pub uuid: String,
    /// Its index.
    pub index: u32,
    /// Its AZ.
    pub az: Option<String>,
    /// Whether it is the bootstrap instance.
    pub bootstrap: bool,
    /// Its addresses: network → (IP, static).
    pub ips: BTreeMap<String, (IpAddr, bool)>,
}

/// One network of a placed instance: what the agent's settings and `spec.networks` say.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InstanceNetwork {
    /// `manual`, `dynamic` or `vip`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The IP (none on a dynamic network before the VM exists).
    pub ip: Option<IpAddr>,
    /// Whether the IP is one of the group's static IPs.
    #[serde(skip)]
    pub is_static: bool,
    /// Netmask.
    pub netmask: String,
    /// Gateway.
    pub gateway: String,
    /// DNS servers.
    pub dns: Vec<String>,
    /// `dns`, `gateway` when this network provides the defaults.
    pub default: Vec<String>,
    /// The subnet's cloud properties.
    pub cloud_properties: Json,
}

/// An instance the group will have after the deploy.
#[derive(Clone, Debug, PartialEq)]
pub struct PlacedInstance {
    /// Its id (new ones get a fresh one).
    pub uuid: String,
    /// Its index.
    pub index: u32,
    /// Its AZ.
    pub az: Option<String>,
    /// Whether it is the group's bootstrap instance.
    pub bootstrap: bool,
    /// Whether the director has no record of it yet.
    pub is_new: bool,
    /// Its networks by name, in the group's order.
    pub networks: BTreeMap<String, InstanceNetwork>,
}

impl PlacedInstance {
    /// The instance's address: the IP on its default-gateway network, else the first IP.
    pub fn address(&self) -> String {
        self.networks
            .values()
            .find(|n| n.default.iter().any(|d| d == "gateway") && n.ip.is_some())
            .or_else(|| self.networks.values().find(|n| n.ip.is_some()))
            .and_then(|n| n.ip)
            .map(|ip| ip.to_string())
            .unwrap_or_default()
    }
}

/// Where a group's instances go.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupPlacement {
    /// Every instance after the deploy, by index.
    pub instances: Vec<PlacedInstance>,
    /// Existing instances to delete (their uuids).
    pub obsolete: Vec<String>,
}

/// Why placement failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("instance group '{group}': {message}")]
pub struct PlacementError {
    /// The group.
    pub group: String,
    /// What went wrong.
    pub message: String,
}

fn subnet_serves(subnet: &Subnet, az: Option<&str>) -> bool {
    match az {
        None => subnet.azs.is_empty(),
        Some(az) => subnet.azs.is_empty() || subnet.azs.iter().any(|a| a.value == az),
    }
}

/// Whether the director may hand out `ip` dynamically from `subnet`.
fn assignable(subnet: &Subnet, ip: IpAddr) -> bool {
    let Some(range) = subnet.range else {
        return false;
    };
    if !range.contains(ip) || subnet.reserved.contains(ip) || subnet.static_ips.contains(ip) {
        return false;
    }
    if subnet.gateway == Some(ip) {
        return false;
    }
    let n = to_number(ip);
    // The network address, and for IPv4 ranges larger than /31 the broadcast address.
    if n == range.first() || (ip.is_ipv4() && range.prefix < 31 && n == range.last()) {
        return false;
    }
    true
}

fn network_settings(
    network: &Network,
    subnet: Option<&Subnet>,
    group_network: &GroupNetwork,
    ip: Option<IpAddr>,
    is_static: bool,
) -> InstanceNetwork {
    let kind = match network.kind {
        NetworkKind::Manual => "manual",
        NetworkKind::Dynamic => "dynamic",
        NetworkKind::Vip => "vip",
    };
    InstanceNetwork {
        kind: kind.to_string(),
        ip,
        is_static,
        netmask: subnet
            .and_then(|s| s.range)
            .map(|r| r.netmask())
            .unwrap_or_default(),
        gateway: subnet
            .and_then(|s| s.gateway)
            .map(|g| g.to_string())
            .unwrap_or_default(),
        dns: subnet
            .map(|s| s.dns.iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
        default: group_network.default.clone(),
        cloud_properties: subnet
            .and_then(|s| s.cloud_properties.as_ref())
            .map(crate::yaml::Node::to_json)
            .filter(|j| !j.is_null())
            .unwrap_or_else(|| Json::Object(serde_json::Map::new())),
    }
}

/// The AZ in which a static IP lives: the first of its subnet's AZs the group uses.
fn az_of_static(network: &Network, ip: IpAddr, azs: &[String]) -> Option<Option<String>> {
    let subnet = network
        .subnets
        .iter()
        .find(|s| s.range.is_some_and(|r| r.contains(ip)) || s.static_ips.contains(ip))?;
    if azs.is_empty() {
        return Some(None);
    }
    subnet
        .azs
        .iter()
        .map(|a| a.value.clone())
        .find(|a| azs.contains(a))
        .map(Some)
}

/// Decides the AZ of every instance: `(existing kept, in their AZ)` and the AZs of the new
/// ones, balanced.
fn balance(
    group: &DesiredGroup,
    existing: &[ExistingInstance],
) -> (Vec<usize>, Vec<Option<String>>) {
    let azs: Vec<Option<String>> = if group.azs.is_empty() {
        vec![None]
    } else {
        group.azs.iter().cloned().map(Some).collect()
    };
    // Existing instances per AZ, lowest index first; those in AZs the group left are dropped.
    let mut per_az: Vec<Vec<usize>> = vec![Vec::new(); azs.len()];
    let mut order: Vec<usize> = (0..existing.len()).collect();
    order.sort_by_key(|&i| existing[i].index);
    for i in order {
        if let Some(slot) = azs.iter().position(|az| *az == existing[i].az) {
            per_az[slot].push(i);
        }
    }
    let mut counts = vec![0usize; azs.len()];
    let mut kept = Vec::new();
    let mut new_azs = Vec::new();
    for _ in 0..group.instances {
        let least = counts.iter().copied().min().unwrap_or(0);
        let candidates: Vec<usize> = (0..azs.len()).filter(|&a| counts[a] == least).collect();
        let slot = candidates
            .iter()
            .copied()
            .find(|&a| counts[a] < per_az[a].len())
            .unwrap_or(candidates[0]);
        if counts[slot] < per_az[slot].len() {
            kept.push(per_az[slot][counts[slot]]);
        } else {
            new_azs.push(azs[slot].clone());
        }
        counts[slot] += 1;
    }
    (kept, new_azs)
}

/// Places one group. `taken` holds `(network, ip)` pairs that belong to someone else (other
/// deployments, other groups); `new_uuid` makes ids for new instances.
pub fn place_group(
    group: &DesiredGroup,
    cloud: &CloudConfig,
    existing: &[ExistingInstance],
    taken: &BTreeSet<(String, IpAddr)>,
    new_uuid: &mut dyn FnMut() -> String,
) -> Result<GroupPlacement, PlacementError> {
    let fail = |message: String| PlacementError {
        group: group.name.clone(),
        message,
    };
    let static_network = group.networks.iter().find(|n| !n.static_ips.is_empty());

    // Which existing instances stay, and where the new ones go.
    let (kept, new_azs, mut new_statics): (Vec<usize>, Vec<Option<String>>, Vec<IpAddr>) =
        match static_network {
            Some(net) => {
                if net.static_ips.len() != group.instances as usize {
                    return Err(fail(format!(
                        "network '{}' lists {} static IPs for {} instances; give one per instance",
                        net.name,
                        net.static_ips.len(),
                        group.instances
                    )));
                }
                let network = cloud.network(&net.name).ok_or_else(|| {
                    fail(format!("network '{}' is not in the cloud config", net.name))
                })?;
                let holder: HashMap<IpAddr, usize> = existing
                    .iter()
                    .enumerate()
                    .rev()
                    .filter_map(|(i, e)| e.ips.get(&net.name).map(|(held, _)| (*held, i)))
                    .collect();
                let mut kept = Vec::new();
                let mut unused: Vec<IpAddr> = Vec::new();
                for ip in &net.static_ips {
                    match holder.get(ip) {
                        Some(&i) => kept.push(i),
                        None => unused.push(*ip),
                    }
                }
                let mut azs = Vec::new();
                for ip in &unused {
                    let az = az_of_static(network, *ip, &group.azs).ok_or_else(|| {
                        fail(format!(
                            "static IP {ip} of network '{}' is in no subnet of the group's AZs ({})",
                            net.name,
                            group.azs.join(", ")
                        ))
                    })?;
                    azs.push(az);
                }
                (kept, azs, unused)
            }
            None => {
                let (kept, azs) = balance(group, existing);
                (kept, azs, Vec::new())
            }
        };

    let kept_set: HashSet<usize> = kept.iter().copied().collect();
    let obsolete: Vec<String> = existing
        .iter()
        .enumerate()
        .filter(|(i, _)| !kept_set.contains(i))
        .map(|(_, e)| e.uuid.clone())
        .collect();

    let mut used_indexes: BTreeSet<u32> = existing.iter().map(|e| e.index).collect();
    let mut instances: Vec<PlacedInstance> = kept
        .iter()
        .map(|&i| PlacedInstance {
            uuid: existing[i].uuid.clone(),
            index: existing[i].index,
            az: existing[i].az.clone(),
            bootstrap: existing[i].bootstrap,
            is_new: false,
            networks: BTreeMap::new(),
        })
        .collect();
    let mut statics_for_new = Vec::new();
    new_statics.reverse();
    // The lowest free index only grows: indexes are only ever taken here.
    let mut next_index = 0u32;
    for az in new_azs {
        while used_indexes.contains(&next_index) {
            next_index += 1;
        }
        let index = next_index;
        used_indexes.insert(index);
        instances.push(PlacedInstance {
            uuid: new_uuid(),
            index,
            az,
            bootstrap: false,
            is_new: true,
            networks: BTreeMap::new(),
        });
        if let Some(ip) = new_statics.pop() {
            statics_for_new.push(ip);
        }
    }
    instances.sort_by_key(|i| i.index);
    if !instances.iter().any(|i| i.bootstrap) {
        if let Some(first) = instances.first_mut() {
            first.bootstrap = true;
        }
    } else {
        // Only one bootstrap, the lowest-index one that had it.
        let mut seen = false;
        for instance in &mut instances {
            if instance.bootstrap && seen {
                instance.bootstrap = false;
            }
            seen |= instance.bootstrap;
        }
    }

    // Addresses, network by network.
    let by_uuid: HashMap<&str, &ExistingInstance> =
        existing.iter().map(|e| (e.uuid.as_str(), e)).collect();
    for net in &group.networks {
        let network = cloud
            .network(&net.name)
            .ok_or_else(|| fail(format!("network '{}' is not in the cloud config", net.name)))?;
        let taken: HashSet<IpAddr> = taken
            .iter()
            .filter(|(name, _)| *name == net.name)
            .map(|(_, ip)| *ip)
            .collect();
        // This group's addresses on the network so far.
        let mut mine: HashSet<IpAddr> = HashSet::new();
        let mut allocator = Allocator::new(network, existing);
        let mut new_seen = 0usize;
        for instance in &mut instances {
            let previous = by_uuid
                .get(instance.uuid.as_str())
                .and_then(|e| e.ips.get(&net.name))
                .map(|(ip, _)| *ip);
            let (ip, is_static) = if !net.static_ips.is_empty() {
                let ip = match previous.filter(|ip| net.static_ips.contains(ip)) {
                    Some(ip) => ip,
                    None if static_network.is_some_and(|s| s.name == net.name)
                        && instance.is_new =>
                    {
                        let ip = statics_for_new[new_seen];
                        new_seen += 1;
                        ip
                    }
                    None => {
                        // A second static network: the first unused IP of its list.
                        *net.static_ips
                            .iter()
                            .find(|ip| !mine.contains(*ip))
                            .ok_or_else(|| {
                                fail(format!("network '{}' has no static IP left", net.name))
                            })?
                    }
                };
                (Some(ip), true)
            } else if network.kind == NetworkKind::Manual {
                let valid_previous = previous.filter(|ip| {
                    network
                        .subnets
                        .iter()
                        .any(|s| subnet_serves(s, instance.az.as_deref()) && assignable(s, *ip))
                        && !mine.contains(ip)
                });
                let ip = match valid_previous {
                    Some(ip) => ip,
                    None => allocator.allocate(instance.az.as_deref(), &taken, &mine)
                        .ok_or_else(|| {
                            fail(format!(
                                "no free IP on network '{}'{} for instance {}: every address of its subnets is reserved, static or in use",
                                net.name,
                                instance.az.as_ref().map(|a| format!(" in AZ '{a}'")).unwrap_or_default(),
                                instance.index
                            ))
                        })?,
                };
                (Some(ip), false)
            } else {
                (None, false)
            };
            if let Some(ip) = ip {
                if taken.contains(&ip) {
                    return Err(fail(format!(
                        "IP {ip} on network '{}' is already used by another instance or deployment",
                        net.name
                    )));
                }
                mine.insert(ip);
            }
            let subnet = ip
                .and_then(|ip| {
                    network.subnets.iter().find(|s| {
                        s.range.is_some_and(|r| r.contains(ip)) || s.static_ips.contains(ip)
                    })
                })
                .or_else(|| {
                    network
                        .subnets
                        .iter()
                        .find(|s| subnet_serves(s, instance.az.as_deref()))
                });
            instance.networks.insert(
                net.name.clone(),
                network_settings(network, subnet, net, ip, is_static),
            );
        }
    }
    Ok(GroupPlacement {
        instances,
        obsolete,
    })
}

/// Hands out a network's free addresses, lowest first. Addresses that instances of this
/// group held before are kept free for them where possible (they are handed out last).
///
/// Incremental: within a deploy, addresses only ever become unavailable (the group takes
/// them, or they were never assignable), so each subnet keeps a cursor below which nothing is
/// left to find, and a whole group is placed in one pass over its subnets.
struct Allocator<'a> {
    network: &'a Network,
    /// Addresses the group's existing instances held on this network.
    held: HashSet<IpAddr>,
    /// Per subnet: below this number no address is free and unheld.
    cursors: Vec<u128>,
    /// Per subnet: below this number no address is free at all.
    fallback_cursors: Vec<u128>,
}

impl<'a> Allocator<'a> {
    fn new(network: &'a Network, existing: &[ExistingInstance]) -> Self {
        let name = network.name.value.as_str();
        let starts: Vec<u128> = network
            .subnets
            .iter()
            .map(|s| s.range.map(|r| r.first()).unwrap_or(0))
            .collect();
        Allocator {
            network,
            held: existing
                .iter()
                .filter_map(|e| e.ips.get(name).map(|(ip, _)| *ip))
                .collect(),
            cursors: starts.clone(),
            fallback_cursors: starts,
        }
    }

    /// The lowest free address for an instance in `az`: unheld ones first, then the lowest
    /// one another instance of the group held before.
    fn allocate(
        &mut self,
        az: Option<&str>,
        taken: &HashSet<IpAddr>,
        mine: &HashSet<IpAddr>,
    ) -> Option<IpAddr> {
        let free = |subnet: &Subnet, ip: IpAddr| {
            assignable(subnet, ip) && !taken.contains(&ip) && !mine.contains(&ip)
        };
        for prefer_unheld in [true, false] {
            for (i, subnet) in self.network.subnets.iter().enumerate() {
                if !subnet_serves(subnet, az) {
                    continue;
                }
                let Some(range) = subnet.range else { continue };
                let v4 = range.network.is_ipv4();
                // Bounded scan: ranges can be huge (IPv6), but a free address is near the start.
                let last = range.last().min(range.first().saturating_add(1 << 20));
                let cursor = if prefer_unheld {
                    &mut self.cursors[i]
                } else {
                    &mut self.fallback_cursors[i]
                };
                while *cursor <= last {
                    let ip = from_number(*cursor, v4);
                    if free(subnet, ip) && !(prefer_unheld && self.held.contains(&ip)) {
                        return Some(ip);
                    }
                    *cursor += 1;
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::catalog::StemcellFacts;
    use crate::deploy::desired::Rollout;
    use crate::manifest::{Count, Lifecycle, WatchTime};

    fn cloud(text: &str) -> CloudConfig {
        let doc = crate::yaml::parse(text, "cloud.yml").unwrap();
        crate::manifest::validate_cloud_config(&doc).unwrap().0
    }

    const CLOUD: &str = "
azs: [{name: z1}, {name: z2}]
vm_types: [{name: default}]
networks:
- name: default
  type: manual
  subnets:
  - range: 127.0.10.0/24
    gateway: 127.0.10.1
    reserved: [127.0.10.2-127.0.10.9]
    static: [127.0.10.200-127.0.10.210]
    azs: [z1, z2]
";

    fn group(instances: u32, azs: &[&str], static_ips: &[&str]) -> DesiredGroup {
        DesiredGroup {
            name: "web".into(),
            lifecycle: Lifecycle::Service,
            instances,
            azs: azs.iter().map(|a| a.to_string()).collect(),
            jobs: vec![],
            stemcell: StemcellFacts {
                name: "s".into(),
                os: "o".into(),
                version: "1".into(),
                cid: "c".into(),
            },
            vm_type: "default".into(),
            vm_cloud_properties: Json::Null,
            persistent_disk: None,
            networks: vec![GroupNetwork {
                name: "default".into(),
                static_ips: static_ips.iter().map(|s| s.parse().unwrap()).collect(),
                default: vec!["dns".into(), "gateway".into()],
            }],
            rollout: Rollout {
                canaries: Count::Absolute(1),
                max_in_flight: Count::Absolute(1),
                canary_watch: WatchTime {
                    min_ms: 1,
                    max_ms: 2,
                },
                update_watch: WatchTime {
                    min_ms: 1,
                    max_ms: 2,
                },
                serial: true,
                initial_parallel: false,
            },
            env: Json::Null,
        }
    }

    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("new-{n}")
        }
    }

    fn as_existing(placement: &GroupPlacement) -> Vec<ExistingInstance> {
        placement
            .instances
            .iter()
            .map(|i| ExistingInstance {
                uuid: i.uuid.clone(),
                index: i.index,
                az: i.az.clone(),
                bootstrap: i.bootstrap,
                ips: i
                    .networks
                    .iter()
                    .filter_map(|(n, s)| Some((n.clone(), (s.ip?, s.is_static))))
                    .collect(),
            })
            .collect()
    }

    fn summary(placement: &GroupPlacement) -> Vec<String> {
        placement
            .instances
            .iter()
            .map(|i| {
                format!(
                    "{}/{} {} {}{}",
                    i.uuid,
                    i.index,
                    i.az.as_deref().unwrap_or("-"),
                    i.address(),
                    if i.bootstrap { " bootstrap" } else { "" }
                )
            })
            .collect()
    }

    #[test]
    fn first_placement_balances_azs_and_skips_reserved_addresses() {
        let cloud = cloud(CLOUD);
        let placement = place_group(
            &group(3, &["z1", "z2"], &[]),
            &cloud,
            &[],
            &BTreeSet::new(),
            &mut ids(),
        )
        .unwrap();
        assert_eq!(
            summary(&placement),
            vec![
                "new-1/0 z1 127.0.10.10 bootstrap",
                "new-2/1 z2 127.0.10.11",
                "new-3/2 z1 127.0.10.12"
            ]
        );
        let network = &placement.instances[0].networks["default"];
        assert_eq!(network.netmask, "255.255.255.0");
        assert_eq!(network.gateway, "127.0.10.1");
    }

    #[test]
    fn scaling_up_and_down_touches_only_the_extra_instance() {
        let cloud = cloud(CLOUD);
        let mut new_uuid = ids();
        let two = place_group(
            &group(2, &["z1", "z2"], &[]),
            &cloud,
            &[],
            &BTreeSet::new(),
            &mut new_uuid,
        )
        .unwrap();
        let three = place_group(
            &group(3, &["z1", "z2"], &[]),
            &cloud,
            &as_existing(&two),
            &BTreeSet::new(),
            &mut new_uuid,
        )
        .unwrap();
        assert!(three.obsolete.is_empty());
        assert_eq!(
            summary(&three),
            vec![
                "new-1/0 z1 127.0.10.10 bootstrap",
                "new-2/1 z2 127.0.10.11",
                "new-3/2 z1 127.0.10.12"
            ]
        );
        let back = place_group(
            &group(2, &["z1", "z2"], &[]),
            &cloud,
            &as_existing(&three),
            &BTreeSet::new(),
            &mut new_uuid,
        )
        .unwrap();
        assert_eq!(back.obsolete, vec!["new-3"]);
        assert_eq!(summary(&back), summary(&two));
    }

    #[test]
    fn addresses_taken_elsewhere_are_skipped_and_kept_ones_survive_new_reservations() {
        let cloud = cloud(CLOUD);
        let taken: BTreeSet<(String, IpAddr)> =
            [("default".to_string(), "127.0.10.10".parse().unwrap())].into();
        let placement =
            place_group(&group(1, &["z1"], &[]), &cloud, &[], &taken, &mut ids()).unwrap();
        assert_eq!(placement.instances[0].address(), "127.0.10.11");
    }

    #[test]
    fn static_ips_stay_with_their_instances() {
        let cloud = cloud(CLOUD);
        let mut new_uuid = ids();
        let first = place_group(
            &group(2, &["z1"], &["127.0.10.200", "127.0.10.201"]),
            &cloud,
            &[],
            &BTreeSet::new(),
            &mut new_uuid,
        )
        .unwrap();
        assert_eq!(
            summary(&first),
            vec![
                "new-1/0 z1 127.0.10.200 bootstrap",
                "new-2/1 z1 127.0.10.201"
            ]
        );
        // Replace .200 by .205: instance 1 keeps .201 and becomes bootstrap, instance 0 goes,
        // a new one (with a fresh index) gets .205.
        let second = place_group(
            &group(2, &["z1"], &["127.0.10.205", "127.0.10.201"]),
            &cloud,
            &as_existing(&first),
            &BTreeSet::new(),
            &mut new_uuid,
        )
        .unwrap();
        assert_eq!(second.obsolete, vec!["new-1"]);
        assert_eq!(
            summary(&second),
            vec![
                "new-2/1 z1 127.0.10.201 bootstrap",
                "new-3/2 z1 127.0.10.205"
            ]
        );
        let error = place_group(
            &group(3, &["z1"], &["127.0.10.205"]),
            &cloud,
            &[],
            &BTreeSet::new(),
            &mut new_uuid,
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("lists 1 static IPs for 3 instances"),
            "{error}"
        );
    }

    #[test]
    fn a_full_network_is_a_clear_error() {
        let cloud = cloud(
            "
networks:
- name: default
  type: manual
  subnets:
  - range: 127.0.11.0/29
    gateway: 127.0.11.1
    reserved: [127.0.11.2-127.0.11.5]
",
        );
        let error = place_group(
            &group(2, &[], &[]),
            &cloud,
            &[],
            &BTreeSet::new(),
            &mut ids(),
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "instance group 'web': no free IP on network 'default' for instance 1: every address of its subnets is reserved, static or in use"
        );
    }
}
