//! What the dataplane holds right now, read back from the maps and bpffs: programs,
//! attachments, rules with their counters, and per-hook counters.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use tracing::warn;

use crate::*;

/// One program attachment the dataplane manages.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Attachment {
    /// Interface name (empty when the interface no longer exists).
    pub interface: String,
    /// Interface index at attach time.
    pub ifindex: u32,
    /// Hook.
    pub direction: Direction,
    /// `tcx` or `netlink`.
    pub mechanism: &'static str,
}

/// A rule as found in the map, with its counters summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstalledRule {
    /// The rule (interface name resolved from the index; `if<N>` if it no longer exists).
    #[serde(flatten)]
    pub rule: TranslationRule,
    /// Counter slot.
    pub rule_id: u32,
    /// Packets rewritten by this rule.
    pub packets: u64,
    /// Bytes of those packets.
    pub bytes: u64,
}

/// One hook's packet counters, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HookStatus {
    /// Interface name (empty when the interface no longer exists).
    pub interface: String,
    /// Interface index.
    pub ifindex: u32,
    /// Hook.
    pub direction: Direction,
    /// The hook is a border (default deny outside its allow-lists).
    pub border: bool,
    /// Packets let through (translated or untouched).
    pub packets: u64,
    /// Bytes of those packets.
    pub bytes: u64,
    /// Of those, packets with at least one address rewritten.
    pub translated: u64,
    /// Of those, TCP SYNs whose MSS option was lowered (the peering's `mss_clamp`).
    pub mss_clamped: u64,
    /// Packets dropped, by reason (only reasons with a non-zero count).
    pub dropped: BTreeMap<String, u64>,
}

/// What the dataplane holds right now.
#[derive(Clone, Debug, Serialize)]
pub struct DataplaneStatus {
    /// The pinned objects were adopted from an earlier run rather than loaded.
    pub adopted: bool,
    /// Kernel program ids by program name.
    pub program_ids: BTreeMap<String, u32>,
    /// Program attachments.
    pub attachments: Vec<Attachment>,
    /// Rules with counters.
    pub rules: Vec<InstalledRule>,
    /// Per-hook packet and drop counters.
    pub hooks: Vec<HookStatus>,
}

impl Dataplane {
    /// Rules, counters, attachments and program ids as the kernel holds them now.
    pub fn status(&self) -> Result<DataplaneStatus, DataplaneError> {
        let by_index: BTreeMap<u32, String> = interfaces::list()
            .map_err(DataplaneError::ListInterfaces)?
            .into_iter()
            .map(|(name, i)| (i.ifindex, name))
            .collect();
        let mut installed = Vec::new();
        for (key, value) in self.read_rules()? {
            let (Some(from), Some(to), Some(direction), Some(field)) = (
                key.prefix(),
                crate::rules::target_prefix(&value),
                Direction::from_wire(key.data.direction),
                AddressField::from_wire(key.data.field),
            ) else {
                warn!(
                    ?key,
                    ?value,
                    "rule map entry remapd cannot decode; not listed"
                );
                continue;
            };
            let (packets, bytes) = self.counters_of(value.rule_id)?;
            installed.push(InstalledRule {
                rule: TranslationRule {
                    interface: by_index
                        .get(&key.data.ifindex)
                        .cloned()
                        .unwrap_or_else(|| format!("if{}", key.data.ifindex)),
                    direction,
                    field,
                    from,
                    to,
                },
                rule_id: value.rule_id,
                packets,
                bytes,
            });
        }
        let mut program_ids = BTreeMap::new();
        for (_, _, name) in ATTACHABLE {
            program_ids.insert(name.to_owned(), self.program_id(name)?);
        }
        let attachments: Vec<Attachment> = self
            .pinned_attachments(&by_index)?
            .into_iter()
            .map(|(_, a)| a)
            .collect();
        let held = self.live_slots(
            &attachments
                .iter()
                .map(|a| (a.ifindex, a.direction))
                .collect::<BTreeSet<_>>(),
        )?;
        let mut hooks = Vec::new();
        for attachment in &attachments {
            let hook = (attachment.ifindex, attachment.direction);
            let slot = held.get(&hook).and_then(|s| s.first()).copied();
            let border = match slot {
                Some(slot) => self
                    .live_hook(slot)?
                    .is_some_and(|(_, config)| config.flags & HOOK_ENFORCE != 0),
                None => false,
            };
            // Attached but not configured (yet): nothing counted.
            let per_cpu = match slot {
                Some(slot) => self
                    .hook_counters
                    .get(&slot, 0)
                    .map_err(map_err(HOOK_COUNTERS_MAP))?
                    .iter()
                    .copied()
                    .collect(),
                None => Vec::new(),
            };
            let mut status = HookStatus {
                interface: attachment.interface.clone(),
                ifindex: attachment.ifindex,
                direction: attachment.direction,
                border,
                packets: 0,
                bytes: 0,
                translated: 0,
                mss_clamped: 0,
                dropped: BTreeMap::new(),
            };
            let mut dropped = [0u64; drop_reason::COUNT];
            for c in per_cpu.iter() {
                status.packets += c.packets;
                status.bytes += c.bytes;
                status.translated += c.translated;
                status.mss_clamped += c.mss_clamped;
                for (sum, n) in dropped.iter_mut().zip(c.dropped) {
                    *sum += n;
                }
            }
            status.dropped = drop_reason::NAMES
                .iter()
                .zip(dropped)
                .filter(|(name, n)| !name.is_empty() && *n > 0)
                .map(|(name, n)| ((*name).to_owned(), n))
                .collect();
            hooks.push(status);
        }
        Ok(DataplaneStatus {
            adopted: self.adopted,
            program_ids,
            attachments,
            rules: installed,
            hooks,
        })
    }

    pub(crate) fn counters_of(&self, rule_id: u32) -> Result<(u64, u64), DataplaneError> {
        let values = self
            .counters
            .get(&rule_id, 0)
            .map_err(map_err(COUNTERS_MAP))?;
        Ok(values
            .iter()
            .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes)))
    }
}
