//! DNS names of instances and groups, as BOSH DNS spells them, and the records the director
//! pushes to agents (`sync_dns`), which answer queries for them.
//!
//! - an instance: `<id>.<group>.<network>.<deployment>.bosh` (also `<index>.…`);
//! - a group, healthy instances only: `q-s0.<group>.<network>.<deployment>.bosh`.
//!
//! Labels are canonical: lowercase, `_` and anything else outside `[a-z0-9-]` become `-`.
//!
//! Invariant: pure.

use serde_json::{Value as Json, json};

use super::placement::PlacedInstance;

/// The top-level domain of every name.
pub const DOMAIN: &str = "bosh";

/// The keys of each record in [`records_json`], in order.
pub const RECORD_KEYS: [&str; 10] = [
    "id",
    "instance_group",
    "az",
    "network",
    "deployment",
    "ip",
    "domain",
    "agent_id",
    "instance_index",
    "healthy",
];

/// `label` as a DNS label: lowercase, every character outside `[a-z0-9-]` turned into `-`.
pub fn canonical(label: &str) -> String {
    label
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-') => c,
            _ => '-',
        })
        .collect()
}

/// The name of one instance (`id` or index) of `group` on `network`.
pub fn instance_name(id: &str, group: &str, network: &str, deployment: &str) -> String {
    format!(
        "{}.{}.{}.{}.{DOMAIN}",
        canonical(id),
        canonical(group),
        canonical(network),
        canonical(deployment)
    )
}

/// The name that answers the healthy instances of `group` on `network` (BOSH's smart
/// query, `q-s0`).
pub fn group_query(group: &str, network: &str, deployment: &str) -> String {
    instance_name("q-s0", group, network, deployment)
}

/// The network an instance's address is on: the default-gateway network with an IP, else
/// the first with one (as [`PlacedInstance::address`]), else the first.
pub fn address_network(instance: &PlacedInstance) -> Option<&str> {
    instance
        .networks
        .iter()
        .find(|(_, n)| n.default.iter().any(|d| d == "gateway") && n.ip.is_some())
        .or_else(|| instance.networks.iter().find(|(_, n)| n.ip.is_some()))
        .or_else(|| instance.networks.iter().next())
        .map(|(name, _)| name.as_str())
}

/// One instance's record on one network.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DnsRecord {
    /// The instance's id.
    pub id: String,
    /// Its group.
    pub group: String,
    /// Its AZ.
    pub az: Option<String>,
    /// The network.
    pub network: String,
    /// Its deployment.
    pub deployment: String,
    /// Its IP on the network.
    pub ip: String,
    /// Its agent.
    pub agent_id: String,
    /// Its index.
    pub index: u32,
    /// Whether the health monitor finds it healthy (unknown counts as healthy).
    pub healthy: bool,
}

/// The records file agents load (BOSH DNS's `records.json` shape: `record_keys` and one
/// `record_infos` row per record), with its version.
pub fn records_json(version: u64, records: &[DnsRecord]) -> Json {
    let domain = format!("{DOMAIN}.");
    let infos: Vec<Json> = records
        .iter()
        .map(|r| {
            json!([
                r.id,
                canonical(&r.group),
                r.az,
                canonical(&r.network),
                canonical(&r.deployment),
                r.ip,
                domain,
                r.agent_id,
                r.index,
                r.healthy
            ])
        })
        .collect();
    json!({"version": version, "record_keys": RECORD_KEYS, "record_infos": infos})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_canonical_bosh_dns_names() {
        assert_eq!(canonical("Web_Server.1"), "web-server-1");
        assert_eq!(
            instance_name("6F1C", "my_group", "default", "dns-test"),
            "6f1c.my-group.default.dns-test.bosh"
        );
        assert_eq!(
            group_query("greeter", "private", "Data_Dep"),
            "q-s0.greeter.private.data-dep.bosh"
        );
    }

    #[test]
    fn records_follow_the_keys() {
        let record = DnsRecord {
            id: "abc".into(),
            group: "web_1".into(),
            az: Some("z1".into()),
            network: "default".into(),
            deployment: "d".into(),
            ip: "10.0.0.5".into(),
            agent_id: "agent-abc".into(),
            index: 2,
            healthy: false,
        };
        let json = records_json(7, &[record]);
        assert_eq!(json["version"], 7);
        assert_eq!(json["record_keys"].as_array().map(Vec::len), Some(10));
        assert_eq!(
            json["record_infos"][0],
            json!([
                "abc",
                "web-1",
                "z1",
                "default",
                "d",
                "10.0.0.5",
                "bosh.",
                "agent-abc",
                2,
                false
            ])
        );
    }
}
