//! The pure part of the WireGuard applier: a tunnel spec parsed and checked
//! ([`Desired`]), and the update that brings a device to it ([`plan_update`]), sending
//! only what differs. No I/O; unit-tested in the parent module.

#![allow(clippy::wildcard_imports)]

use super::*;

/// A spec with its keys and names parsed, checked before anything is touched.
pub(super) struct Desired<'a> {
    pub(super) spec: &'a TunnelSpec,
    pub(super) name: InterfaceName,
    pub(super) private_key: Key,
    /// `None` while bootstrapping (no peer key known yet): the interface runs without
    /// a peer.
    pub(super) peer: Option<Key>,
    pub(super) allowed_ips: BTreeSet<(IpAddr, u8)>,
}

pub(super) fn parse_name(interface: &str) -> Result<InterfaceName, NetError> {
    interface.parse().map_err(|e| NetError::WireGuard {
        interface: interface.to_owned(),
        reason: format!("invalid interface name: {e}"),
    })
}

pub(super) fn parse(spec: &TunnelSpec) -> Result<Desired<'_>, NetError> {
    let bad_key = || NetError::BadKey {
        interface: spec.interface.clone(),
    };
    Ok(Desired {
        spec,
        name: parse_name(&spec.interface)?,
        private_key: Key::from_base64(spec.private_key.trim()).map_err(|_| bad_key())?,
        peer: match spec.peer_public_key.trim() {
            "" => None,
            key => Some(Key::from_base64(key).map_err(|_| bad_key())?),
        },
        // WireGuard stores allowed-ips masked; compare like with like.
        allowed_ips: spec
            .allowed_ips
            .iter()
            .map(|n| {
                let n = n.trunc();
                (n.network(), n.prefix_len())
            })
            .collect(),
    })
}

/// What a device is configured with, as far as remapd cares.
pub(super) struct Current<'a> {
    pub(super) private_key: Option<&'a Key>,
    pub(super) listen_port: Option<u16>,
    pub(super) peers: &'a [PeerInfo],
}

impl<'a> From<&'a Device> for Current<'a> {
    fn from(device: &'a Device) -> Self {
        Self {
            private_key: device.private_key.as_ref(),
            listen_port: device.listen_port,
            peers: &device.peers,
        }
    }
}

/// The update that makes `device` match `want`, with what it changes (for logs; never
/// key material), or `None` when it already does. Only differing fields are sent: the
/// desired peer is updated in place rather than re-created, which keeps its session.
pub(super) fn plan_update(
    device: &Current<'_>,
    want: &Desired<'_>,
) -> Option<(DeviceUpdate, Vec<&'static str>)> {
    let mut update = DeviceUpdate::new();
    let mut what = Vec::new();
    if device.private_key != Some(&want.private_key) {
        update = update.set_private_key(want.private_key.clone());
        what.push("private key");
    }
    // Port 0 asks for a random port: any port then satisfies it.
    if want.spec.listen_port != 0 && device.listen_port != Some(want.spec.listen_port) {
        update = update.set_listen_port(want.spec.listen_port);
        what.push("listen port");
    }
    let mut others = false;
    for peer in device.peers {
        if Some(&peer.config.public_key) != want.peer.as_ref() {
            update = update.remove_peer_by_key(&peer.config.public_key);
            others = true;
        }
    }
    if others {
        what.push("other peers");
    }
    let Some(want_peer) = want.peer.as_ref() else {
        return if what.is_empty() {
            None
        } else {
            Some((update, what))
        };
    };
    let keepalive = want.spec.keepalive.unwrap_or(0);
    let current = device
        .peers
        .iter()
        .find(|p| &p.config.public_key == want_peer);
    let peer_ok = current.is_some_and(|p| {
        let allowed: BTreeSet<(IpAddr, u8)> = p
            .config
            .allowed_ips
            .iter()
            .map(|a| (a.address, a.cidr))
            .collect();
        allowed == want.allowed_ips
            // No endpoint wanted: keep whatever the peer roamed to.
            && want.spec.endpoint.is_none_or(|e| p.config.endpoint == Some(e))
            && p.config.persistent_keepalive_interval.unwrap_or(0) == keepalive
    });
    if !peer_ok {
        let mut peer = PeerConfigBuilder::new(want_peer)
            .replace_allowed_ips()
            .set_persistent_keepalive_interval(keepalive);
        if let Some(endpoint) = want.spec.endpoint {
            peer = peer.set_endpoint(endpoint);
        }
        for (address, cidr) in &want.allowed_ips {
            peer = peer.add_allowed_ip(*address, *cidr);
        }
        update = update.add_peer(peer);
        what.push(if current.is_some() {
            "peer"
        } else {
            "new peer"
        });
    }
    if what.is_empty() {
        None
    } else {
        Some((update, what))
    }
}
