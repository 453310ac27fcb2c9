//! Who holds an address on this host: the sockets bound to one IP address, from
//! `/proc/net/{tcp,tcp6,udp,udp6}`, and the processes that own them, from the `socket:[inode]`
//! links in `/proc/<pid>/fd`.
//!
//! A local VM's address is a loopback address that nothing configures, so two VMs (of two
//! directors, or a deployment left running by a stopped dev director) can be given the same
//! one; the second one's jobs then fail with "address already in use". `create_vm` asks
//! [`holders`] first and names who holds the address instead.
//!
//! Counted: TCP sockets listening on the address and UDP sockets bound to it, owned by a
//! process (inode not 0: a `TIME_WAIT` left by a deleted VM does not count). Sockets on the
//! wildcard address do not hold a particular address and are left out.

use std::collections::HashMap;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `st` of a listening TCP socket in `/proc/net/tcp`.
const TCP_LISTEN: &str = "0A";

/// A socket bound to the address asked about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Socket {
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// The port.
    pub port: u16,
    /// The socket's inode.
    pub inode: u64,
}

/// A socket and the process holding it, when one could be seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The socket.
    pub socket: Socket,
    /// Its owner's pid and command name.
    pub process: Option<(u32, String)>,
}

/// The sockets bound to `ip` on this host and their processes, by port. Unreadable files
/// count as holding nothing.
pub fn holders(ip: IpAddr) -> Vec<Holder> {
    let mut sockets = Vec::new();
    for (file, protocol) in [
        ("/proc/net/tcp", "tcp"),
        ("/proc/net/tcp6", "tcp"),
        ("/proc/net/udp", "udp"),
        ("/proc/net/udp6", "udp"),
    ] {
        if let Ok(table) = fs::read_to_string(file) {
            sockets.extend(bound_to(&table, protocol, ip));
        }
    }
    sockets.sort_by_key(|socket| (socket.port, socket.protocol, socket.inode));
    sockets.dedup();
    if sockets.is_empty() {
        return Vec::new();
    }
    let owners = socket_owners();
    sockets
        .into_iter()
        .map(|socket| Holder {
            process: owners.get(&socket.inode).cloned(),
            socket,
        })
        .collect()
}

/// The sockets of one `/proc/net/{tcp,udp}[6]` table bound to `ip` (listening, for TCP) and
/// owned by a process.
pub fn bound_to(table: &str, protocol: &'static str, ip: IpAddr) -> Vec<Socket> {
    let mut sockets = Vec::new();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode …
        if fields.len() < 10 {
            continue;
        }
        if protocol == "tcp" && fields[3] != TCP_LISTEN {
            continue;
        }
        let Some((address, port)) = parse_address(fields[1]) else {
            continue;
        };
        let Ok(inode) = fields[9].parse::<u64>() else {
            continue;
        };
        if inode != 0 && same_address(address, ip) {
            sockets.push(Socket {
                protocol,
                port,
                inode,
            });
        }
    }
    sockets
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): the kernel prints each 32-bit
/// word of the address in host byte order.
fn parse_address(field: &str) -> Option<(IpAddr, u16)> {
    let (address, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // The bytes of one word as they are in memory (network order).
    let word = |hex: &str| u32::from_str_radix(hex, 16).ok().map(u32::to_ne_bytes);
    let address = match address.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(address)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for (index, chunk) in bytes.chunks_mut(4).enumerate() {
                let hex = address.get(index * 8..index * 8 + 8)?;
                chunk.copy_from_slice(&word(hex)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some((address, port))
}

/// Whether a socket's address is `ip`, an IPv4 address also as `::ffff:a.b.c.d`.
fn same_address(socket: IpAddr, ip: IpAddr) -> bool {
    let canonical = |address: IpAddr| match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    canonical(socket) == canonical(ip)
}

/// Socket inodes to the pid and command name of a process holding them (the first found).
fn socket_owners() -> HashMap<u64, (u32, String)> {
    let mut owners = HashMap::new();
    let Ok(processes) = fs::read_dir("/proc") else {
        return owners;
    };
    for process in processes.flatten() {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(descriptors) = fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        for descriptor in descriptors.flatten() {
            let Ok(target) = fs::read_link(descriptor.path()) else {
                continue;
            };
            if let Some(inode) = socket_inode(&target.to_string_lossy())
                && !owners.contains_key(&inode)
            {
                let command = fs::read_to_string(process.path().join("comm"))
                    .map(|name| name.trim().to_string())
                    .unwrap_or_default();
                owners.insert(inode, (pid, command));
            }
        }
    }
    owners
}

/// `socket:[12345]` → 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// `127.0.10.51:8080 (tcp) is already in use on this host by pid 4242 (hello-server)`, or
/// `… by a process this user cannot see (socket inode 991)`.
pub fn describe(ip: IpAddr, holder: &Holder) -> String {
    let address = match ip {
        IpAddr::V4(v4) => format!("{v4}:{}", holder.socket.port),
        IpAddr::V6(v6) => format!("[{v6}]:{}", holder.socket.port),
    };
    let by = match &holder.process {
        Some((pid, command)) if command.is_empty() => format!("pid {pid}"),
        Some((pid, command)) => format!("pid {pid} ({command})"),
        None => format!(
            "a process this user cannot see (socket inode {})",
            holder.socket.inode
        ),
    };
    format!(
        "{address} ({}) is already in use on this host by {by}",
        holder.socket.protocol
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 330A007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4711 1 0000000000000000 100 0 0 10 0
   1: 330A007F:1F91 340A007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 4712 1 0000000000000000 20 4 30 10 -1
   2: 340A007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4713 1 0000000000000000 100 0 0 10 0
   3: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4714 1 0000000000000000 100 0 0 10 0
   4: 330A007F:1F92 340A007F:D432 06 00000000:00000000 03:00000A2B 00000000     0        0 0 3 0000000000000000
";

    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF0000330A007F:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5001 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:0051 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5002 1 0000000000000000 100 0 0 10 0
";

    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  7: 330A007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 6001 2 0000000000000000 0
";

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn addresses_are_read_in_host_byte_order() {
        assert_eq!(
            parse_address("330A007F:1F90"),
            Some((ip("127.0.10.51"), 8080))
        );
        assert_eq!(
            parse_address("00000000000000000000000001000000:0051"),
            Some((ip("::1"), 81))
        );
        assert_eq!(parse_address("zz:1"), None);
        assert_eq!(socket_inode("socket:[4711]"), Some(4711));
        assert_eq!(socket_inode("pipe:[4711]"), None);
    }

    #[test]
    fn only_listening_or_bound_sockets_with_an_owner_count() {
        let socket = |protocol, port, inode| Socket {
            protocol,
            port,
            inode,
        };
        assert_eq!(
            bound_to(TCP, "tcp", ip("127.0.10.51")),
            [socket("tcp", 8080, 4711)],
            "not the connection, not the TIME_WAIT, not the wildcard"
        );
        assert_eq!(
            bound_to(TCP6, "tcp", ip("127.0.10.51")),
            [socket("tcp", 80, 5001)],
            "an IPv4-mapped listener"
        );
        assert_eq!(bound_to(TCP6, "tcp", ip("::1")), [socket("tcp", 81, 5002)]);
        assert_eq!(
            bound_to(UDP, "udp", ip("127.0.10.51")),
            [socket("udp", 53, 6001)]
        );
        assert!(bound_to(TCP, "tcp", ip("127.0.10.53")).is_empty());
    }

    #[test]
    fn holders_are_described_with_their_process() {
        let holder = |process| Holder {
            socket: Socket {
                protocol: "tcp",
                port: 8080,
                inode: 4711,
            },
            process,
        };
        assert_eq!(
            describe(
                ip("127.0.10.51"),
                &holder(Some((4242, "hello-server".to_string())))
            ),
            "127.0.10.51:8080 (tcp) is already in use on this host by pid 4242 (hello-server)"
        );
        assert_eq!(
            describe(ip("::1"), &holder(None)),
            "[::1]:8080 (tcp) is already in use on this host by a process this user cannot see \
             (socket inode 4711)"
        );
    }

    #[test]
    fn a_listener_of_this_process_is_found_with_its_pid() {
        let listener = std::net::TcpListener::bind("127.0.45.7:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let found = holders(ip("127.0.45.7"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].socket.port, port);
        assert_eq!(
            found[0].process.as_ref().map(|(pid, _)| *pid),
            Some(std::process::id())
        );
        drop(listener);
        assert!(holders(ip("127.0.45.7")).is_empty());
    }
}
