//! IP addresses, CIDR ranges and the IP lists of cloud configs (`reserved`, `static`).
//!
//! Lists accept what BOSH accepts: single addresses, `first - last` ranges (spaces optional)
//! and, for convenience, CIDR blocks. Sets are kept as sorted inclusive ranges of numbers so
//! a /16 or an IPv6 /64 costs nothing to hold.

use std::fmt;
use std::net::IpAddr;

/// An IP as a number (IPv4 in the low 32 bits).
pub fn to_number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// A CIDR block such as `10.245.0.0/16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    /// The first address (the network address).
    pub network: IpAddr,
    /// The prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n` or `x::/n`; the address must be the network address.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (address, prefix) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("expected a CIDR range such as 10.0.0.0/24, found {text:?}"))?;
        let address: IpAddr = address
            .trim()
            .parse()
            .map_err(|_| format!("expected a CIDR range such as 10.0.0.0/24, found {text:?}"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .trim()
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("expected a prefix length from 0 to {max} in {text:?}"))?;
        let cidr = Cidr {
            network: address,
            prefix,
        };
        if to_number(address) != cidr.first() {
            return Err(format!(
                "{text:?} is not a network address: the range starts at {}",
                cidr.first_ip()
            ));
        }
        Ok(cidr)
    }

    fn bits(&self) -> u32 {
        if self.network.is_ipv4() { 32 } else { 128 }
    }

    fn host_mask(&self) -> u128 {
        let host_bits = self.bits() - u32::from(self.prefix);
        if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        }
    }

    /// The first address as a number.
    pub fn first(&self) -> u128 {
        to_number(self.network) & !self.host_mask()
    }

    /// The last address as a number.
    pub fn last(&self) -> u128 {
        self.first() | self.host_mask()
    }

    fn first_ip(&self) -> IpAddr {
        from_number(self.first(), self.network.is_ipv4())
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        same_family(self.network, ip) && (self.first()..=self.last()).contains(&to_number(ip))
    }

    /// The number of addresses.
    pub fn size(&self) -> u128 {
        self.host_mask().saturating_add(1)
    }

    /// The netmask: `255.255.255.0` for IPv4, the prefix length for IPv6.
    pub fn netmask(&self) -> String {
        if self.network.is_ipv4() {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(self.prefix))
                .unwrap_or(0);
            std::net::Ipv4Addr::from(mask).to_string()
        } else {
            self.prefix.to_string()
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The address for a number of the given family.
pub fn from_number(n: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(std::net::Ipv4Addr::from(
            u32::try_from(n).unwrap_or(u32::MAX),
        ))
    } else {
        IpAddr::V6(std::net::Ipv6Addr::from(n))
    }
}

/// A set of addresses of one family, as sorted, merged, inclusive ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpSet {
    ranges: Vec<(u128, u128)>,
    v4: bool,
}

/// One entry of an IP list: `10.0.0.5`, `10.0.0.5-10.0.0.9` or `10.0.0.0/28`.
pub fn parse_ip_entry(text: &str) -> Result<(IpAddr, IpAddr), String> {
    let text = text.trim();
    if text.contains('/') {
        let cidr = Cidr::parse(text)?;
        let v4 = cidr.network.is_ipv4();
        return Ok((from_number(cidr.first(), v4), from_number(cidr.last(), v4)));
    }
    if let Some((first, last)) = text.split_once('-') {
        let first: IpAddr = first.trim().parse().map_err(|_| {
            format!("expected an IP range such as 10.0.0.2-10.0.0.10, found {text:?}")
        })?;
        let last: IpAddr = last.trim().parse().map_err(|_| {
            format!("expected an IP range such as 10.0.0.2-10.0.0.10, found {text:?}")
        })?;
        if !same_family(first, last) {
            return Err(format!("the range {text:?} mixes IPv4 and IPv6"));
        }
        if to_number(first) > to_number(last) {
            return Err(format!("the range {text:?} ends before it starts"));
        }
        return Ok((first, last));
    }
    let ip: IpAddr = text.parse().map_err(|_| {
        format!("expected an IP address, a range a-b or a CIDR block, found {text:?}")
    })?;
    Ok((ip, ip))
}

impl IpSet {
    /// An empty set of the family of `sample`.
    pub fn new(v4: bool) -> IpSet {
        IpSet {
            ranges: Vec::new(),
            v4,
        }
    }

    /// Adds an inclusive range.
    pub fn add(&mut self, first: IpAddr, last: IpAddr) {
        let (a, b) = (to_number(first), to_number(last));
        self.ranges.push((a.min(b), a.max(b)));
        self.ranges.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(self.ranges.len());
        for (start, end) in self.ranges.drain(..) {
            match merged.last_mut() {
                Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        self.ranges = merged;
    }

    /// Whether `ip` is in the set.
    pub fn contains(&self, ip: IpAddr) -> bool {
        if ip.is_ipv4() != self.v4 {
            return false;
        }
        let n = to_number(ip);
        self.ranges.iter().any(|(a, b)| (*a..=*b).contains(&n))
    }

    /// The first address of the set that is also in `other`, if any.
    pub fn first_common(&self, other: &IpSet) -> Option<IpAddr> {
        for (a, b) in &self.ranges {
            for (c, d) in &other.ranges {
                let start = (*a).max(*c);
                if start <= (*b).min(*d) {
                    return Some(from_number(start, self.v4));
                }
            }
        }
        None
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// How many addresses the set holds (saturating).
    pub fn len(&self) -> u128 {
        self.ranges
            .iter()
            .map(|(a, b)| (b - a).saturating_add(1))
            .fold(0u128, u128::saturating_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cidrs_and_ranges() {
        let cidr = Cidr::parse("10.245.0.0/16").unwrap();
        assert!(cidr.contains("10.245.3.4".parse().unwrap()));
        assert!(!cidr.contains("10.246.0.1".parse().unwrap()));
        assert!(Cidr::parse("10.245.0.1/16").is_err());
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert_eq!(Cidr::parse("fd00::/64").unwrap().size(), 1 << 64);

        let (a, b) = parse_ip_entry("10.0.0.2 - 10.0.0.10").unwrap();
        let mut set = IpSet::new(true);
        set.add(a, b);
        set.add("10.0.0.11".parse().unwrap(), "10.0.0.11".parse().unwrap());
        assert_eq!(set.len(), 10);
        assert!(set.contains("10.0.0.11".parse().unwrap()));
        assert!(parse_ip_entry("10.0.0.9-10.0.0.2").is_err());
        assert!(parse_ip_entry("ten").is_err());
    }
}
