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
///
/// Names come from `getifaddrs` (netlink, so the calling thread's namespace counts);
/// index and link type are asked per name, because devices without a hardware address
/// (tun, WireGuard) have no link-level entry there.
pub fn list() -> Result<BTreeMap<String, Interface>, nix::Error> {
    let names: std::collections::BTreeSet<String> = nix::ifaddrs::getifaddrs()?
        .map(|entry| entry.interface_name)
        .collect();
    let socket = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let mut out = BTreeMap::new();
    for name in names {
        // An interface can vanish between the listing and the query: skip it.
        let Ok(ifindex) = nix::net::if_::if_nametoindex(name.as_str()) else {
            continue;
        };
        let Ok(link_type) = link_type(&socket, &name) else {
            continue;
        };
        out.insert(
            name,
            Interface {
                ifindex,
                link_type,
                framing: framing_of(link_type),
            },
        );
    }
    Ok(out)
}

/// The ARPHRD_* type of an interface (`SIOCGIFHWADDR` reports it in `sa_family`).
fn link_type(socket: &std::os::fd::OwnedFd, name: &str) -> Result<u16, nix::Error> {
    use std::os::fd::AsRawFd;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(nix::Error::ENAMETOOLONG);
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: valid socket fd and a properly initialised ifreq that outlives the call.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
    if rc != 0 {
        return Err(nix::Error::last());
    }
    // SAFETY: SIOCGIFHWADDR fills the ifru_hwaddr member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_hwaddr.sa_family })
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
