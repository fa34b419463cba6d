//! Talking to a tunnel device: its UAPI socket (is something there, and who), and its
//! link (up, gone) through the applier's rtnetlink session.

#![allow(clippy::wildcard_imports)]

use super::*;

/// A UAPI socket path, as found.
pub(super) enum Socket {
    Missing,
    /// The file exists but nothing accepts on it (a crashed process).
    Dead,
    /// Something answers; the pid of its server when the kernel says.
    Live {
        pid: Option<u32>,
    },
}

/// How long `remove` waits for a stopped tunnel's device to go.
pub(super) const LINK_GONE_WAIT: Duration = Duration::from_secs(3);

/// Waits until `interface` no longer exists (true), or `timeout` passes (false).
pub(super) fn wait_link_gone(netlink: &NetlinkSession, interface: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let name = interface.to_owned();
        let present = netlink.run("looking for a tunnel device", move |handle| async move {
            Ok(links(&handle).await?.contains_key(&name))
        });
        match present {
            Ok(false) => return true,
            Err(_) | Ok(true) if Instant::now() >= deadline => return false,
            _ => std::thread::sleep(POLL),
        }
    }
}

/// Sets the tunnel's link up (rtnetlink, in the calling thread's namespace); true when
/// it was down.
pub(super) fn bring_up(netlink: &NetlinkSession, interface: &str) -> Result<bool, NetError> {
    let name = interface.to_owned();
    netlink.run("setting a tunnel up", move |handle| async move {
        let links = links(&handle).await?;
        let Some(link) = links.get(&name) else {
            return Err(NetError::WireGuard {
                interface: name,
                reason: "no such interface in this network namespace".into(),
            });
        };
        if link.up {
            return Ok(false);
        }
        set_link_up(&handle, link.index, &name).await?;
        Ok(true)
    })
}

/// What is at a UAPI socket path.
pub(super) fn probe(path: &Path) -> Socket {
    match UnixStream::connect(path) {
        Ok(stream) => Socket::Live {
            pid: getsockopt(&stream, PeerCredentials)
                .ok()
                .and_then(|c| u32::try_from(c.pid()).ok())
                .filter(|p| *p != 0),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Socket::Missing,
        Err(_) => Socket::Dead,
    }
}
