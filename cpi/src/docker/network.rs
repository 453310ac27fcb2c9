//! Addresses: the manual networks of `create_vm` and the host's address on Docker's
//! default bridge (where containers reach the director). Pure but for
//! [`host_address_on`], which asks the kernel's routing table (no packet is sent).

use std::net::{Ipv4Addr, UdpSocket};

use serde_json::Value;

use crate::{CpiError, ErrorKind, Result};

/// A manual network of `create_vm`'s `networks`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ManualNetwork {
    pub(super) ip: Ipv4Addr,
    pub(super) subnet: Ipv4Addr,
    pub(super) prefix_length: u32,
    pub(super) gateway: Option<Ipv4Addr>,
}

impl ManualNetwork {
    pub(super) fn parse(name: &str, spec: &Value) -> Result<ManualNetwork> {
        // The agent's own network type: what create_vm's `networks` hold.
        let spec: agent_protocol::NetworkSpec =
            serde_json::from_value(spec.clone()).map_err(|error| {
                CpiError::new(
                    ErrorKind::CpiError,
                    format!("network '{name}' is not a network spec: {error}"),
                )
            })?;
        let kind = if spec.kind.is_empty() {
            "manual"
        } else {
            spec.kind.as_str()
        };
        if kind != "manual" {
            return Err(CpiError::new(
                ErrorKind::NotSupported,
                format!(
                    "network '{name}' is of type {kind}; the Docker CPI supports manual networks only"
                ),
            ));
        }
        let address = |field: &str, text: &str| -> Result<Option<Ipv4Addr>> {
            if text.is_empty() {
                return Ok(None);
            }
            text.parse().map(Some).map_err(|_| {
                CpiError::new(
                    ErrorKind::CpiError,
                    format!("network '{name}': {field} '{text}' is not an IPv4 address"),
                )
            })
        };
        let missing = |field: &str| {
            CpiError::new(
                ErrorKind::CpiError,
                format!("network '{name}' has no {field} (a manual network needs ip and netmask)"),
            )
        };
        let ip = address("ip", &spec.ip)?.ok_or_else(|| missing("ip"))?;
        let netmask =
            u32::from(address("netmask", &spec.netmask)?.ok_or_else(|| missing("netmask"))?);
        if netmask.leading_ones() + netmask.trailing_zeros() != 32 {
            return Err(CpiError::new(
                ErrorKind::CpiError,
                format!(
                    "network '{name}': netmask {} is not contiguous",
                    Ipv4Addr::from(netmask)
                ),
            ));
        }
        Ok(ManualNetwork {
            ip,
            subnet: Ipv4Addr::from(u32::from(ip) & netmask),
            prefix_length: netmask.leading_ones(),
            gateway: address("gateway", &spec.gateway)?,
        })
    }
}

/// An IPv4 subnet, `a.b.c.d/len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Subnet {
    pub(super) network: Ipv4Addr,
    pub(super) prefix_length: u32,
}

impl Subnet {
    /// `a.b.c.d/len` (IPv4 only); `None` for anything else.
    pub(super) fn parse(text: &str) -> Option<Subnet> {
        let (address, length) = text.split_once('/')?;
        let address: Ipv4Addr = address.parse().ok()?;
        let prefix_length: u32 = length.parse().ok().filter(|length| *length <= 32)?;
        Some(Subnet {
            network: Ipv4Addr::from(u32::from(address) & mask(prefix_length)),
            prefix_length,
        })
    }

    pub(super) fn contains(&self, address: Ipv4Addr) -> bool {
        u32::from(address) & mask(self.prefix_length) == u32::from(self.network)
    }

    /// The subnet's last address below its broadcast address (or its only one).
    fn last_host(&self) -> Ipv4Addr {
        let broadcast = u32::from(self.network) | !mask(self.prefix_length);
        Ipv4Addr::from(match self.prefix_length {
            31 | 32 => broadcast,
            _ => broadcast - 1,
        })
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}/{}", self.network, self.prefix_length)
    }
}

fn mask(prefix_length: u32) -> u32 {
    u32::MAX.checked_shl(32 - prefix_length).unwrap_or(0)
}

/// This host's own address on `subnet`: the source address the kernel picks for a packet
/// to the subnet (a UDP socket is connected, nothing is sent), which must lie in the
/// subnet (else the host has no address there and the route leads elsewhere).
pub(super) fn host_address_on(subnet: Subnet) -> std::result::Result<Ipv4Addr, String> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .map_err(|error| format!("cannot open a UDP socket: {error}"))?;
    socket
        .connect((subnet.last_host(), 9))
        .map_err(|error| format!("this host has no route to {subnet}: {error}"))?;
    let local = socket
        .local_addr()
        .map_err(|error| format!("cannot read the socket's address: {error}"))?;
    match local.ip() {
        std::net::IpAddr::V4(address) if subnet.contains(address) => Ok(address),
        other => Err(format!(
            "this host has no address on {subnet} (its route there leaves from {other})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_manual_network_gives_its_subnet() {
        let spec = json!({"type": "manual", "ip": "10.244.3.7", "netmask": "255.255.255.0",
            "gateway": "10.244.3.1"});
        assert_eq!(
            ManualNetwork::parse("default", &spec).unwrap(),
            ManualNetwork {
                ip: Ipv4Addr::new(10, 244, 3, 7),
                subnet: Ipv4Addr::new(10, 244, 3, 0),
                prefix_length: 24,
                gateway: Some(Ipv4Addr::new(10, 244, 3, 1)),
            }
        );
    }

    #[test]
    fn other_networks_are_refused_with_their_name() {
        let error = ManualNetwork::parse("public", &json!({"type": "dynamic"})).unwrap_err();
        assert_eq!(error.kind, ErrorKind::NotSupported);
        assert!(error.message.contains("'public'"), "{}", error.message);
        let error = ManualNetwork::parse(
            "default",
            &json!({"ip": "10.0.0.2", "netmask": "255.0.255.0"}),
        )
        .unwrap_err();
        assert!(
            error.message.contains("not contiguous"),
            "{}",
            error.message
        );
        let error = ManualNetwork::parse("default", &json!({"netmask": "255.0.0.0"})).unwrap_err();
        assert!(error.message.contains("no ip"), "{}", error.message);
    }

    #[test]
    fn subnets_are_read_and_hold_their_addresses() {
        let subnet = Subnet::parse("172.17.3.9/16").unwrap();
        assert_eq!(subnet.to_string(), "172.17.0.0/16");
        assert!(subnet.contains(Ipv4Addr::new(172, 17, 255, 1)));
        assert!(!subnet.contains(Ipv4Addr::new(172, 18, 0, 1)));
        assert_eq!(subnet.last_host(), Ipv4Addr::new(172, 17, 255, 254));
        assert_eq!(
            Subnet::parse("0.0.0.0/0").unwrap().last_host(),
            Ipv4Addr::new(255, 255, 255, 254)
        );
        assert_eq!(
            Subnet::parse("10.0.0.7/32").unwrap().last_host(),
            Ipv4Addr::new(10, 0, 0, 7)
        );
        for bad in ["fd00::/64", "10.0.0.0", "10.0.0.0/33", "x/8"] {
            assert_eq!(Subnet::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_hosts_address_on_a_subnet_is_its_own_or_none() {
        // Loopback: every host has an address there.
        let loopback = Subnet::parse("127.0.0.0/8").unwrap();
        assert!(loopback.contains(host_address_on(loopback).unwrap()));
        // Documentation addresses (RFC 5737): no host has one.
        let error = host_address_on(Subnet::parse("203.0.113.0/24").unwrap()).unwrap_err();
        assert!(error.contains("203.0.113.0/24"), "{error}");
    }
}
