//! Interface discovery in the calling thread's network namespace: index and framing.

use std::collections::BTreeMap;

/// How packets look at TC on an interface, which decides the program variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// An Ethernet header precedes the IP header (veth, NICs, loopback).
    L2,
    /// The packet starts at the IP header (tun, WireGuard, other L3 tunnels).
    L3,
}

/// An interface as the dataplane needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Kernel interface index.
    pub ifindex: u32,
    /// ARPHRD_* link type.
    pub link_type: u16,
    /// Framing derived from the link type, when remapd supports it.
    pub framing: Option<Framing>,
}

const ARPHRD_ETHER: u16 = 1;
const ARPHRD_LOOPBACK: u16 = 772;
const ARPHRD_NONE: u16 = 0xfffe;
const ARPHRD_PPP: u16 = 512;
const ARPHRD_TUNNEL: u16 = 768;
const ARPHRD_IPGRE: u16 = 778;
const ARPHRD_RAWIP: u16 = 519;

/// Framing for an ARPHRD link type, or `None` when remapd does not know it.
pub fn framing_of(link_type: u16) -> Option<Framing> {
    match link_type {
        ARPHRD_ETHER | ARPHRD_LOOPBACK => Some(Framing::L2),
        ARPHRD_NONE | ARPHRD_PPP | ARPHRD_TUNNEL | ARPHRD_IPGRE | ARPHRD_RAWIP => Some(Framing::L3),
        _ => None,
    }
}

/// Lists the interfaces of the current network namespace by name.
pub fn list() -> Result<BTreeMap<String, Interface>, nix::Error> {
    let mut out = BTreeMap::new();
    for entry in nix::ifaddrs::getifaddrs()? {
        let Some(link) = entry.address.as_ref().and_then(|a| a.as_link_addr()) else {
            continue;
        };
        let Ok(ifindex) = u32::try_from(link.ifindex()) else {
            continue;
        };
        let link_type = link.hatype();
        out.insert(
            entry.interface_name,
            Interface {
                ifindex,
                link_type,
                framing: framing_of(link_type),
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_by_link_type() {
        assert_eq!(framing_of(ARPHRD_ETHER), Some(Framing::L2));
        assert_eq!(framing_of(ARPHRD_NONE), Some(Framing::L3));
        assert_eq!(framing_of(0x1234), None);
    }

    #[test]
    fn loopback_is_listed() {
        let all = list().unwrap();
        let lo = all.get("lo").expect("every namespace has lo");
        assert_eq!(lo.framing, Some(Framing::L2));
    }
}
