//! IP prefixes as the tables use them: an address and a prefix length, host bits zero.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 prefix such as `10.244.1.0/24`. Host bits are always zero: a prefix
/// written with host bits set is rejected rather than silently masked, because it is almost
/// always a typo for a different network.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

/// Why a text or an (address, length) pair is not a prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("invalid prefix {0:?}: expected ADDRESS/LENGTH such as 10.244.1.0/24 or fd00::/64")]
    Syntax(String),
    #[error("prefix length {len} is too long for {addr} (at most {max})")]
    Length { addr: IpAddr, len: u8, max: u8 },
    #[error("{addr}/{len} has host bits set; did you mean {network}/{len}?")]
    HostBits { addr: IpAddr, len: u8, network: IpAddr },
}

fn mask128(len: u8) -> u128 {
    if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) }
}

impl Cidr {
    pub fn new(addr: IpAddr, len: u8) -> Result<Cidr, CidrError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(CidrError::Length { addr, len, max });
        }
        let cidr = Cidr { addr, len };
        let network = cidr.network_addr();
        if network != addr {
            return Err(CidrError::HostBits { addr, len, network });
        }
        Ok(cidr)
    }

    /// The host prefix of one address: /32 or /128.
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr { addr, len: if addr.is_ipv4() { 32 } else { 128 } }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn len(&self) -> u8 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// The address left-aligned in 128 bits (IPv4 in the top 32), the LPM's key space.
    pub fn key(&self) -> u128 {
        key_of(self.addr)
    }

    /// The prefix length in the 128-bit key space (an IPv4 /24 covers the top 24 bits too).
    fn network_addr(&self) -> IpAddr {
        let masked = key_of(self.addr) & mask128(self.len);
        match self.addr {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from((masked >> 96) as u32)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(masked)),
        }
    }

    /// True when `ip` is in this prefix (and of the same family).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && (key_of(ip) & mask128(self.len)) == self.key()
    }

    /// True when `other` is this prefix or a more specific one inside it.
    pub fn contains_cidr(&self, other: &Cidr) -> bool {
        other.len >= self.len && self.contains(other.addr)
    }

    /// True when the two prefixes share any address (prefixes either nest or are disjoint).
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains_cidr(other) || other.contains_cidr(self)
    }

    /// First and last address as IPv4 integers; `None` for IPv6.
    pub fn v4_range(&self) -> Option<(u32, u32)> {
        match self.addr {
            IpAddr::V4(a) => {
                let start = u32::from(a);
                let host = u32::MAX.checked_shr(u32::from(self.len)).unwrap_or(0);
                Some((start, start | host))
            }
            IpAddr::V6(_) => None,
        }
    }

    /// First and last address as IPv6 integers; `None` for IPv4.
    pub fn v6_range(&self) -> Option<(u128, u128)> {
        match self.addr {
            IpAddr::V6(a) => {
                let start = u128::from(a);
                let host = u128::MAX.checked_shr(u32::from(self.len)).unwrap_or(0);
                Some((start, start | host))
            }
            IpAddr::V4(_) => None,
        }
    }
}

/// An address left-aligned in 128 bits: IPv4 in the top 32 bits, IPv6 as is.
pub fn key_of(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)) << 96,
        IpAddr::V6(a) => u128::from(a),
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `ADDRESS/LENGTH`; a bare address is its host prefix.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || CidrError::Syntax(s.to_owned());
        match s.split_once('/') {
            Some((addr, len)) => {
                let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
                let len: u8 = len.parse().map_err(|_| syntax())?;
                Cidr::new(addr, len)
            }
            None => Ok(Cidr::host(s.parse().map_err(|_| syntax())?)),
        }
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_contain() {
        let c: Cidr = "10.244.1.0/24".parse().unwrap();
        assert!(c.contains("10.244.1.77".parse().unwrap()));
        assert!(!c.contains("10.244.2.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert_eq!(c.v4_range(), Some((0x0af4_0100, 0x0af4_01ff)));
        assert!(c.contains_cidr(&"10.244.1.64/26".parse().unwrap()));
        assert!(!c.contains_cidr(&"10.244.0.0/16".parse().unwrap()));
        assert!(c.overlaps(&"10.244.0.0/16".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert_eq!(all.v4_range(), Some((0, u32::MAX)));
        let v6: Cidr = "fd00:10:244:1::/64".parse().unwrap();
        assert!(v6.contains("fd00:10:244:1::5".parse().unwrap()));
        assert_eq!("10.0.0.1".parse::<Cidr>().unwrap().len(), 32);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let e = "10.244.1.5/24".parse::<Cidr>().unwrap_err();
        assert_eq!(e.to_string(), "10.244.1.5/24 has host bits set; did you mean 10.244.1.0/24?");
        assert!(matches!("10.0.0.0/33".parse::<Cidr>(), Err(CidrError::Length { .. })));
        assert!(matches!("10.0.0/8".parse::<Cidr>(), Err(CidrError::Syntax(_))));
        assert!(matches!("fd00::/129".parse::<Cidr>(), Err(CidrError::Length { .. })));
    }
}
