//! `create_vm`'s `cloud_properties` for a container: memory and CPU limits, published
//! ports and privileged mode, read into [`VmProperties`] and put on the container's
//! `HostConfig` (and its exposed ports). Pure: no engine here.
//!
//! Ports are written as in bosh-docker-cpi and `docker run -p`:
//! `[host_ip:][host_port:]container_port[/protocol]` (`"8080:80/tcp"`, `"2379/tcp"`,
//! `"127.0.0.1:8080:80"`, `"127.0.0.1::80"`, `"[::1]:8080:80"`); without a host port the
//! engine picks a free one, without a protocol it is `tcp`. Port ranges are refused.

use std::collections::HashMap;
use std::net::IpAddr;

use bollard::models::{HostConfig, PortBinding};
use serde_json::Value;

use crate::{CpiError, ErrorKind, Result};

/// The keys `create_vm`'s `cloud_properties` may hold for the Docker CPI.
pub const VM_CLOUD_PROPERTIES: [&str; 4] = ["memory", "cpus", "ports", "privileged"];

/// What a VM's `cloud_properties` ask of its container.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VmProperties {
    /// `memory`: the memory limit in MiB.
    pub memory_mib: Option<u64>,
    /// `cpus`: the CPU limit in billionths of a CPU (`0.5` is 500,000,000).
    pub nano_cpus: Option<i64>,
    /// `ports`: the ports published on the host.
    pub ports: Vec<PublishedPort>,
    /// `privileged`: a privileged container.
    pub privileged: bool,
}

/// One published port: `container_port/protocol` reachable at `host_ip:host_port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedPort {
    /// The host address to listen on; every address when `None`.
    pub host_ip: Option<IpAddr>,
    /// The host port; one the engine picks when `None`.
    pub host_port: Option<u16>,
    /// The container's port.
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
}

impl PublishedPort {
    /// The engine's name of the container's port: `<port>/<protocol>`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.container_port, self.protocol)
    }
}

impl VmProperties {
    /// Reads `cloud_properties` (an object, or null for none). Unknown keys and values of
    /// the wrong type are refused, naming the key and what was expected.
    pub fn parse(cloud_properties: &Value) -> Result<VmProperties> {
        let properties = match cloud_properties {
            Value::Null => return Ok(VmProperties::default()),
            Value::Object(properties) => properties,
            other => {
                return Err(invalid(format!(
                    "cloud_properties must be a map, got {}",
                    kind_of(other)
                )));
            }
        };
        let mut parsed = VmProperties::default();
        for (key, value) in properties {
            match key.as_str() {
                "memory" => parsed.memory_mib = Some(memory_mib(value)?),
                "cpus" => parsed.nano_cpus = Some(nano_cpus(value)?),
                "ports" => parsed.ports = ports(value)?,
                "privileged" => {
                    parsed.privileged = value.as_bool().ok_or_else(|| {
                        wrong_type("privileged", "a boolean (true or false)", value)
                    })?;
                }
                other => {
                    return Err(invalid(format!(
                        "cloud_properties.{other} is not a Docker CPI VM property (accepted: {})",
                        VM_CLOUD_PROPERTIES.join(", ")
                    )));
                }
            }
        }
        Ok(parsed)
    }

    /// Puts the limits, port bindings and privileged mode on `host_config`.
    pub fn apply(&self, host_config: &mut HostConfig) -> Result<()> {
        if let Some(mib) = self.memory_mib {
            let bytes = mib
                .checked_mul(1024 * 1024)
                .and_then(|bytes| i64::try_from(bytes).ok())
                .ok_or_else(|| {
                    invalid(format!("cloud_properties.memory: {mib} MiB is too large"))
                })?;
            host_config.memory = Some(bytes);
        }
        if let Some(nano_cpus) = self.nano_cpus {
            host_config.nano_cpus = Some(nano_cpus);
        }
        if self.privileged {
            host_config.privileged = Some(true);
        }
        if !self.ports.is_empty() {
            let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
            for port in &self.ports {
                bindings
                    .entry(port.key())
                    .or_default()
                    .get_or_insert_with(Vec::new)
                    .push(PortBinding {
                        host_ip: port.host_ip.map(|ip| ip.to_string()),
                        host_port: Some(port.host_port.map(|p| p.to_string()).unwrap_or_default()),
                    });
            }
            host_config.port_bindings = Some(bindings);
        }
        Ok(())
    }

    /// The container's ports to expose (each published port's key, once).
    pub fn exposed_ports(&self) -> Option<Vec<String>> {
        let mut keys: Vec<String> = self.ports.iter().map(PublishedPort::key).collect();
        keys.sort();
        keys.dedup();
        (!keys.is_empty()).then_some(keys)
    }
}

/// `memory`: a positive whole number of MiB.
fn memory_mib(value: &Value) -> Result<u64> {
    match value.as_u64() {
        Some(mib) if mib > 0 => Ok(mib),
        _ => Err(wrong_type(
            "memory",
            "a positive whole number of MiB (e.g. 512)",
            value,
        )),
    }
}

/// `cpus`: a positive number of CPUs, in billionths.
fn nano_cpus(value: &Value) -> Result<i64> {
    let expected = "a positive number of CPUs (e.g. 0.5 or 2)";
    let cpus = value
        .as_f64()
        .filter(|cpus| cpus.is_finite() && *cpus > 0.0 && *cpus <= 1_000_000.0)
        .ok_or_else(|| wrong_type("cpus", expected, value))?;
    // Rounded to whole billionths through text: no float-to-integer cast.
    let nanos: i64 = format!("{:.0}", cpus * 1e9)
        .parse()
        .map_err(|_| wrong_type("cpus", expected, value))?;
    if nanos < 1 {
        return Err(wrong_type("cpus", expected, value));
    }
    Ok(nanos)
}

/// `ports`: a list of port strings.
fn ports(value: &Value) -> Result<Vec<PublishedPort>> {
    let expected = "a list of ports like \"8080:80/tcp\"";
    let list = value
        .as_array()
        .ok_or_else(|| wrong_type("ports", expected, value))?;
    list.iter()
        .enumerate()
        .map(|(index, entry)| {
            let text = entry.as_str().ok_or_else(|| {
                wrong_type(
                    &format!("ports[{index}]"),
                    "a string like \"8080:80/tcp\", \"2379/tcp\" or \"127.0.0.1:8080:80\"",
                    entry,
                )
            })?;
            parse_port(text).map_err(|reason| {
                invalid(format!(
                    "cloud_properties.ports[{index}]: '{text}' {reason} (expected \
                     [host_ip:][host_port:]container_port[/tcp|udp|sctp])"
                ))
            })
        })
        .collect()
}

/// One port string; the error says what is wrong with it.
fn parse_port(text: &str) -> std::result::Result<PublishedPort, String> {
    let (address, protocol) = match text.rsplit_once('/') {
        Some((address, protocol)) => (address, protocol),
        None => (text, "tcp"),
    };
    if !matches!(protocol, "tcp" | "udp" | "sctp") {
        return Err(format!("has protocol '{protocol}', not tcp, udp or sctp"));
    }
    // An IPv6 host address is bracketed: `[::1]:8080:80`.
    let (host_ip, ports) = match address.strip_prefix('[') {
        Some(rest) => {
            let (ip, ports) = rest
                .split_once("]:")
                .ok_or("has an unclosed '[' or no port after the address")?;
            (Some(ip), vec_of(ports))
        }
        None => {
            let parts = vec_of(address);
            match parts.len() {
                3 => (Some(parts[0]), parts[1..].to_vec()),
                1 | 2 => (None, parts),
                _ => return Err("has too many ':'".to_string()),
            }
        }
    };
    let host_ip = host_ip
        .map(|ip| {
            ip.parse::<IpAddr>()
                .map_err(|_| format!("has host address '{ip}', not an IP address"))
        })
        .transpose()?;
    let (host_port, container_port) = match ports.as_slice() {
        [container] => (None, *container),
        [host, container] => (Some(*host).filter(|host| !host.is_empty()), *container),
        _ => return Err("has too many ':'".to_string()),
    };
    let number = |what: &str, port: &str| -> std::result::Result<u16, String> {
        if port.contains('-') {
            return Err("has a port range; publish each port on its own".to_string());
        }
        match port.parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(format!("has {what} '{port}', not a port number 1-65535")),
        }
    };
    Ok(PublishedPort {
        host_ip,
        host_port: host_port
            .map(|port| number("host port", port))
            .transpose()?,
        container_port: number("container port", container_port)?,
        protocol: protocol.to_string(),
    })
}

fn vec_of(text: &str) -> Vec<&str> {
    text.split(':').collect()
}

fn invalid(message: String) -> CpiError {
    CpiError::new(ErrorKind::CpiError, message)
}

fn wrong_type(key: &str, expected: &str, value: &Value) -> CpiError {
    invalid(format!(
        "cloud_properties.{key} must be {expected}, got {}",
        kind_of(value)
    ))
}

/// A value's JSON kind and, for scalars, the value itself.
fn kind_of(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(flag) => format!("the boolean {flag}"),
        Value::Number(number) => format!("the number {number}"),
        Value::String(text) => format!("the string '{text}'"),
        Value::Array(_) => "a list".to_string(),
        Value::Object(_) => "a map".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn port(
        host_ip: Option<&str>,
        host_port: Option<u16>,
        container: u16,
        protocol: &str,
    ) -> PublishedPort {
        PublishedPort {
            host_ip: host_ip.map(|ip| ip.parse().unwrap()),
            host_port,
            container_port: container,
            protocol: protocol.to_string(),
        }
    }

    #[test]
    fn every_property_is_read() {
        let properties = VmProperties::parse(&json!({
            "memory": 512, "cpus": 0.5, "privileged": true,
            "ports": ["8080:80/tcp", "2379/tcp", "127.0.0.1:8080:80", "127.0.0.1::53/udp",
                      "[::1]:9000:90/sctp", "443"],
        }))
        .unwrap();
        assert_eq!(
            properties,
            VmProperties {
                memory_mib: Some(512),
                nano_cpus: Some(500_000_000),
                privileged: true,
                ports: vec![
                    port(None, Some(8080), 80, "tcp"),
                    port(None, None, 2379, "tcp"),
                    port(Some("127.0.0.1"), Some(8080), 80, "tcp"),
                    port(Some("127.0.0.1"), None, 53, "udp"),
                    port(Some("::1"), Some(9000), 90, "sctp"),
                    port(None, None, 443, "tcp"),
                ],
            }
        );
        assert_eq!(
            VmProperties::parse(&json!({})).unwrap(),
            VmProperties::default()
        );
        assert_eq!(
            VmProperties::parse(&Value::Null).unwrap(),
            VmProperties::default()
        );
        assert_eq!(
            VmProperties::parse(&json!({"cpus": 2})).unwrap().nano_cpus,
            Some(2_000_000_000)
        );
    }

    #[test]
    fn the_host_config_gets_limits_bindings_and_privileged() {
        let properties = VmProperties::parse(&json!({
            "memory": 64, "cpus": 1.25, "privileged": true,
            "ports": ["8080:80", "127.0.0.1:8081:80", "2379/udp"],
        }))
        .unwrap();
        let mut host_config = HostConfig::default();
        properties.apply(&mut host_config).unwrap();
        assert_eq!(host_config.memory, Some(64 * 1024 * 1024));
        assert_eq!(host_config.nano_cpus, Some(1_250_000_000));
        assert_eq!(host_config.privileged, Some(true));
        let bindings = host_config.port_bindings.unwrap();
        assert_eq!(
            bindings["80/tcp"],
            Some(vec![
                PortBinding {
                    host_ip: None,
                    host_port: Some("8080".to_string())
                },
                PortBinding {
                    host_ip: Some("127.0.0.1".to_string()),
                    host_port: Some("8081".to_string())
                },
            ])
        );
        assert_eq!(
            bindings["2379/udp"],
            Some(vec![PortBinding {
                host_ip: None,
                host_port: Some(String::new())
            }])
        );
        assert_eq!(
            properties.exposed_ports(),
            Some(vec!["2379/udp".to_string(), "80/tcp".to_string()])
        );

        let mut untouched = HostConfig::default();
        VmProperties::default().apply(&mut untouched).unwrap();
        assert_eq!(untouched, HostConfig::default());
        assert_eq!(VmProperties::default().exposed_ports(), None);
    }

    /// Parses `properties`, which must fail; answers the message.
    fn refused(properties: Value) -> String {
        let error = VmProperties::parse(&properties).unwrap_err();
        assert_eq!(error.kind, ErrorKind::CpiError);
        error.message
    }

    #[test]
    fn unknown_keys_are_named_with_the_accepted_ones() {
        assert_eq!(
            refused(json!({"memory": 1, "disk": 10})),
            "cloud_properties.disk is not a Docker CPI VM property (accepted: memory, cpus, \
             ports, privileged)"
        );
        assert_eq!(
            refused(json!(["memory"])),
            "cloud_properties must be a map, got a list"
        );
    }

    #[test]
    fn wrong_types_are_named_with_what_was_expected() {
        assert_eq!(
            refused(json!({"memory": "512M"})),
            "cloud_properties.memory must be a positive whole number of MiB (e.g. 512), got \
             the string '512M'"
        );
        assert!(refused(json!({"memory": 1.5})).contains("got the number 1.5"));
        assert!(refused(json!({"memory": 0})).contains("positive whole number"));
        assert_eq!(
            refused(json!({"cpus": "2"})),
            "cloud_properties.cpus must be a positive number of CPUs (e.g. 0.5 or 2), got the \
             string '2'"
        );
        assert!(refused(json!({"cpus": 0})).contains("cloud_properties.cpus"));
        assert!(refused(json!({"cpus": -1})).contains("cloud_properties.cpus"));
        assert_eq!(
            refused(json!({"privileged": "yes"})),
            "cloud_properties.privileged must be a boolean (true or false), got the string 'yes'"
        );
        assert_eq!(
            refused(json!({"ports": "80"})),
            "cloud_properties.ports must be a list of ports like \"8080:80/tcp\", got the \
             string '80'"
        );
        assert!(
            refused(json!({"ports": ["80", 81]}))
                .starts_with("cloud_properties.ports[1] must be a string like \"8080:80/tcp\"")
        );
    }

    #[test]
    fn bad_ports_say_what_is_wrong() {
        let cases = [
            ("80/icmp", "has protocol 'icmp', not tcp, udp or sctp"),
            ("8000-8010:80", "has a port range"),
            (
                "localhost:80:80",
                "has host address 'localhost', not an IP address",
            ),
            ("1:2:3:4", "has too many ':'"),
            ("[::1:80:80", "has an unclosed '['"),
            ("0", "has container port '0', not a port number 1-65535"),
            (
                "70000:80",
                "has host port '70000', not a port number 1-65535",
            ),
            ("", "has container port '', not a port number 1-65535"),
        ];
        for (text, reason) in cases {
            let message = refused(json!({"ports": ["80", text]}));
            assert!(
                message.starts_with(&format!("cloud_properties.ports[1]: '{text}' {reason}")),
                "{text}: {message}"
            );
            assert!(
                message.ends_with("(expected [host_ip:][host_port:]container_port[/tcp|udp|sctp])")
            );
        }
    }
}
