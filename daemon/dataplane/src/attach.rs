//! Attaching the programs to interfaces and finding what is attached: TCX links pinned
//! under `links/` where the kernel has TCX, else a netlink clsact filter with a marker
//! directory; and detaching what is no longer wanted.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::PathBuf;

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle};
use aya::programs::{LinkOrder, ProgramError, SchedClassifier, TcAttachType};
use tracing::{info, warn};

use crate::*;

/// TC priority and handle used by the netlink (clsact) fallback.
pub(crate) const NETLINK_PRIORITY: u16 = 0x5200;

pub(crate) const NETLINK_HANDLE: TcHandle = TcHandle::new(0x5244, 1);

/// The four attachable programs, by framing and direction.
pub(crate) const ATTACHABLE: [(Framing, Direction, &str); 4] = [
    (Framing::L2, Direction::Ingress, programs::L2_INGRESS),
    (Framing::L2, Direction::Egress, programs::L2_EGRESS),
    (Framing::L3, Direction::Ingress, programs::L3_INGRESS),
    (Framing::L3, Direction::Egress, programs::L3_EGRESS),
];

pub(crate) fn program_for(framing: Framing, direction: Direction) -> &'static str {
    match (framing, direction) {
        (Framing::L2, Direction::Ingress) => programs::L2_INGRESS,
        (Framing::L2, Direction::Egress) => programs::L2_EGRESS,
        (Framing::L3, Direction::Ingress) => programs::L3_INGRESS,
        (Framing::L3, Direction::Egress) => programs::L3_EGRESS,
    }
}

pub(crate) fn tc_attach_type(direction: Direction) -> TcAttachType {
    match direction {
        Direction::Ingress => TcAttachType::Ingress,
        Direction::Egress => TcAttachType::Egress,
    }
}

pub(crate) fn tcx_supported() -> bool {
    use aya::util::KernelVersion;
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

pub(crate) fn parse_link_name(
    name: &str,
) -> Option<(&'static str, u32, Direction, Option<String>)> {
    let parse_dir = |s: &str| match s {
        "ingress" => Some(Direction::Ingress),
        "egress" => Some(Direction::Egress),
        _ => None,
    };
    if let Some(rest) = name.strip_prefix("nl-") {
        let mut parts = rest.splitn(3, '-');
        let ifindex = parts.next()?.parse().ok()?;
        let direction = parse_dir(parts.next()?)?;
        let ifname = parts.next()?.to_owned();
        return Some(("netlink", ifindex, direction, Some(ifname)));
    }
    let (ifindex, direction) = name.split_once('-')?;
    Some(("tcx", ifindex.parse().ok()?, parse_dir(direction)?, None))
}

impl Dataplane {
    /// Attaches the right program to one hook unless it is already there. Returns true
    /// when it attached something.
    pub(crate) fn ensure_attached(
        &mut self,
        ifname: &str,
        ifindex: u32,
        direction: Direction,
        framing: Framing,
    ) -> Result<bool, DataplaneError> {
        let name = program_for(framing, direction);
        match self.mode {
            AttachMode::Netlink => self.ensure_attached_netlink(name, ifname, ifindex, direction),
            AttachMode::Tcx | AttachMode::Auto => {
                self.ensure_attached_tcx(name, ifname, ifindex, direction)
            }
        }
    }

    pub(crate) fn ensure_attached_tcx(
        &mut self,
        name: &'static str,
        ifname: &str,
        ifindex: u32,
        direction: Direction,
    ) -> Result<bool, DataplaneError> {
        let attach_type = tc_attach_type(direction);
        let our_id = self.program_id(name)?;
        let attach_err = |source: ProgramError| DataplaneError::AttachFailed {
            program: name,
            interface: ifname.to_owned(),
            direction,
            source: Box::new(source),
        };
        let (_, attached) = SchedClassifier::query_tcx(ifname, attach_type).map_err(attach_err)?;
        let pin = self.layout.tcx_link(ifindex, direction);
        if attached.iter().any(|p| p.id() == our_id) && pin.exists() {
            return Ok(false);
        }
        let program = self
            .programs
            .get_mut(name)
            .ok_or_else(|| not_loaded(name))?;
        // A live link of ours that runs another program (an upgrade): swap the program
        // atomically. A dead one (the interface was recreated): replace the link.
        let mut link_id = None;
        if pin.exists() {
            if let Ok(old) = PinnedLink::from_pin(&pin)
                && let Ok(link) = SchedClassifierLink::try_from(FdLink::from(old))
            {
                link_id = program.attach_to_link(link).ok();
            }
            if link_id.is_none() {
                remove_pin(&pin)?;
            }
        }
        let link_id = match link_id {
            Some(id) => id,
            None => program
                // First in the hook's chain: a program before ours that passes a packet
                // would otherwise take it past the border.
                .attach_with_options(
                    ifname,
                    attach_type,
                    TcAttachOptions::TcxOrder(LinkOrder::first()),
                )
                .map_err(attach_err)?,
        };
        let link = program.take_link(link_id).map_err(attach_err)?;
        let fd_link = FdLink::try_from(link).map_err(|e| DataplaneError::Link {
            path: pin.clone(),
            reason: e.to_string(),
        })?;
        if pin.exists() {
            remove_pin(&pin)?;
        }
        fd_link.pin(&pin).map_err(|e| DataplaneError::Link {
            path: pin.clone(),
            reason: e.to_string(),
        })?;
        info!(interface = ifname, %direction, program = name, "attached (tcx)");
        Ok(true)
    }

    pub(crate) fn ensure_attached_netlink(
        &mut self,
        name: &'static str,
        ifname: &str,
        ifindex: u32,
        direction: Direction,
    ) -> Result<bool, DataplaneError> {
        let marker = self.layout.netlink_marker(ifindex, direction, ifname);
        let attach_err = |source: ProgramError| DataplaneError::AttachFailed {
            program: name,
            interface: ifname.to_owned(),
            direction,
            source: Box::new(source),
        };
        if marker.exists() {
            if !self.upgraded || self.swapped.contains(&(ifindex, direction)) {
                return Ok(false);
            }
            // Another build's program runs in our filter: replace it in place (the same
            // priority and handle; the kernel swaps the filter's program).
            match self.swap_netlink(name, ifname, direction) {
                Ok(()) => {
                    self.swapped.insert((ifindex, direction));
                    info!(interface = ifname, %direction, program = name, "moved to this build's program (netlink)");
                    return Ok(true);
                }
                Err(e) => {
                    // Our filter is gone (the qdisc was removed, say): attach anew.
                    warn!(interface = ifname, %direction, error = %e, "our filter is gone; attaching anew");
                    std::fs::remove_dir(&marker).map_err(pin_dir_err(&marker))?;
                }
            }
        }
        // The clsact qdisc may already exist (ours or someone else's): that is fine.
        let _ = aya::programs::tc::qdisc_add_clsact(ifname);
        let program = self
            .programs
            .get_mut(name)
            .ok_or_else(|| not_loaded(name))?;
        let options = NlOptions {
            priority: NETLINK_PRIORITY,
            handle: NETLINK_HANDLE,
            ..NlOptions::default()
        };
        let link_id = program
            .attach_with_options(
                ifname,
                tc_attach_type(direction),
                TcAttachOptions::Netlink(options),
            )
            .map_err(attach_err)?;
        let link = program.take_link(link_id).map_err(attach_err)?;
        // A netlink filter outlives the process by itself; dropping the handle would
        // detach it.
        std::mem::forget(link);
        std::fs::create_dir_all(&marker).map_err(pin_dir_err(&marker))?;
        info!(interface = ifname, %direction, program = name, "attached (netlink)");
        Ok(true)
    }

    /// Puts program `name` into our existing netlink filter on `ifname`, in place.
    fn swap_netlink(
        &mut self,
        name: &'static str,
        ifname: &str,
        direction: Direction,
    ) -> Result<(), String> {
        let program = self
            .programs
            .get_mut(name)
            .ok_or_else(|| format!("program {name} not loaded"))?;
        let link = SchedClassifierLink::attached(
            ifname,
            tc_attach_type(direction),
            NETLINK_PRIORITY,
            NETLINK_HANDLE,
            None,
        )
        .map_err(|e| format!("finding our filter: {e}"))?;
        let link_id = program
            .attach_to_link(link)
            .map_err(|e| format!("replacing its program: {e}"))?;
        // A netlink filter outlives the process by itself; dropping the handle would
        // detach it.
        std::mem::forget(
            program
                .take_link(link_id)
                .map_err(|e| format!("taking the link: {e}"))?,
        );
        Ok(())
    }

    /// Detaches every managed attachment whose (ifindex, direction) is not in `keep`.
    pub(crate) fn detach_except(
        &mut self,
        keep: &BTreeSet<(u32, Direction)>,
    ) -> Result<usize, DataplaneError> {
        let mut detached = 0;
        // Names are not needed here: TCX links go by pin path, netlink markers carry
        // their interface name.
        for (path, attachment) in self.pinned_attachments(&BTreeMap::new())? {
            if keep.contains(&(attachment.ifindex, attachment.direction)) {
                continue;
            }
            if attachment.mechanism == "netlink" {
                if let Ok(link) = SchedClassifierLink::attached(
                    &attachment.interface,
                    tc_attach_type(attachment.direction),
                    NETLINK_PRIORITY,
                    NETLINK_HANDLE,
                    None,
                ) {
                    // Detaches on drop; a vanished interface took the filter with it.
                    drop(link);
                }
                std::fs::remove_dir(&path).map_err(pin_dir_err(&path))?;
            } else {
                remove_pin(&path)?;
            }
            info!(ifindex = attachment.ifindex, direction = %attachment.direction, "detached");
            detached += 1;
        }
        Ok(detached)
    }

    /// Managed attachments from the links directory; TCX ones are named from `by_index`.
    pub(crate) fn pinned_attachments(
        &self,
        by_index: &BTreeMap<u32, String>,
    ) -> Result<Vec<(PathBuf, Attachment)>, DataplaneError> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.layout.links) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(pin_dir_err(&self.layout.links)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(pin_dir_err(&self.layout.links))?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let Some(parsed) = parse_link_name(&file_name) else {
                warn!(path = %entry.path().display(), "unexpected entry in links directory");
                continue;
            };
            let (mechanism, ifindex, direction, ifname) = parsed;
            let interface = ifname
                .or_else(|| by_index.get(&ifindex).cloned())
                .unwrap_or_default();
            out.push((
                entry.path(),
                Attachment {
                    interface,
                    ifindex,
                    direction,
                    mechanism,
                },
            ));
        }
        out.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::PinLayout;
    use std::path::Path;

    #[test]
    fn link_names_round_trip() {
        let layout = PinLayout::new(Path::new("/x"));
        let tcx = layout.tcx_link(12, Direction::Egress);
        let name = tcx.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            parse_link_name(name),
            Some(("tcx", 12, Direction::Egress, None))
        );
        let nl = layout.netlink_marker(3, Direction::Ingress, "wg-a-b");
        let name = nl.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            parse_link_name(name),
            Some(("netlink", 3, Direction::Ingress, Some("wg-a-b".into())))
        );
        assert_eq!(parse_link_name("garbage"), None);
    }
}
