//! The eBPF dataplane: loads (or adopts) remapd's TC programs and maps, pinned under a
//! bpffs directory, attaches them to interfaces, and applies a full desired rule set by
//! diffing it against what the maps hold.
//!
//! Everything the kernel needs to keep forwarding lives in bpffs: maps, programs and TCX
//! links. A daemon that stops (or is killed) leaves translation running; the next one
//! adopts the pinned objects instead of loading new ones, so programs keep their ids,
//! counters keep counting, and no packet sees a gap. A daemon of another build (its
//! object's digest differs from the one recorded at `object-<digest>`) loads its own
//! programs over the pinned maps, after checking every pinned map has the shape its
//! programs expect, and moves each link to them atomically at its first apply. Applying
//! is idempotent: the same desired set applied twice writes nothing the second time.
//!
//! Pin layout (`<pin_dir>/v5/`): `maps/<MAP>`, `progs/<program>`, `links/<ifindex>-<dir>`
//! (TCX links), for the netlink fallback empty marker directories
//! `links/nl-<ifindex>-<dir>-<ifname>`, and `object-<digest>` (which build pinned the
//! programs). The `v5` component is the map schema version; a daemon that finds an
//! older layout detaches and removes it when it loads its own.
//!
//! By concern: this file opens/adopts the dataplane and applies a desired set to the
//! maps; `load.rs` loads and pins (and retires older layouts); `attach.rs` attaches
//! and detaches programs; `status.rs` reads everything back; `rules.rs` and `hooks.rs`
//! turn rules and borders into map entries and hook configurations (pure);
//! `applier.rs` is the trait the reconciler uses, with its fake; `error.rs` the errors.
#![deny(missing_docs)]

pub mod applier;
mod attach;
mod error;
pub mod hooks;
pub mod interfaces;
pub mod kctx;
mod load;
pub mod rules;
mod status;
pub mod trace;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::PathBuf;

use aya::Pod;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, Map, MapData, MapError, PerCpuArray, PerCpuValues};
use aya::programs::SchedClassifier;
use remapd_common::{
    ALLOW_MAP, COUNTERS_MAP, HOOK_CONFIG_MAP, HOOK_COUNTERS_MAP, HOOK_ENFORCE, HOOK_INDEX_MAP,
    HOOK_PROBES, HookConfig, HookCounters, RULES_MAP, RuleCounters, RuleKey, RuleValue,
    TRACE_CONTROL_MAP, TRACE_EVENTS_MAP, TRACE_LOST_MAP, drop_reason, hook_probe, programs,
};
use serde::Serialize;
use tracing::{debug, info};

pub use applier::{DataplaneApplier, DataplaneStatusReader, FakeDataplane, KernelDataplane};
use attach::{ATTACHABLE, tcx_supported};
pub use error::DataplaneError;
use error::{map_err, not_loaded, pin_dir_err, prog_err};
pub use hooks::IngressBorder;
use hooks::ResolvedBorder;
pub use interfaces::Framing;
use load::{PinLayout, load_and_pin, remove_pin, retire_older_layouts};
pub use load::{load_bench_object, load_unpinned, load_unpinned_without_trace, object_embedded};
pub use rules::{AddressField, Direction, RuleError, TranslationRule};
use rules::{MapKey, Target};
pub use status::{Attachment, DataplaneStatus, HookStatus, InstalledRule};

/// The compiled eBPF object, built by `build.rs` with aya-build (empty when the build
/// was skipped with `AYA_BUILD_SKIP=1`, e.g. for `cargo check` without bpf-linker).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/remapd-ebpf"));

/// The benchmark-only object (no-op, one-helper and reference programs). The daemon
/// never loads it; benchmarks and tests do, through [`load_bench_object`].
static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/remapd-bench-ebpf"));

/// Map schema version; part of the pin path so an incompatible layout is never adopted.
pub const PIN_LAYOUT_VERSION: &str = "v5";

/// Layouts of earlier versions, retired when this version loads.
const OLDER_PIN_LAYOUTS: [&str; 4] = ["v1", "v2", "v3", "v4"];

/// Every map the programs use, pinned under `maps/`.
const MAPS: [&str; 9] = [
    RULES_MAP,
    ALLOW_MAP,
    COUNTERS_MAP,
    HOOK_INDEX_MAP,
    HOOK_CONFIG_MAP,
    HOOK_COUNTERS_MAP,
    TRACE_CONTROL_MAP,
    TRACE_EVENTS_MAP,
    TRACE_LOST_MAP,
];

/// Default bpffs directory for pinned objects.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/remapd";

/// How programs are attached to interfaces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// TCX links where the kernel has them (6.6+), netlink clsact filters otherwise.
    #[default]
    Auto,
    /// TCX links, pinned in bpffs.
    Tcx,
    /// Classic clsact qdisc + direct-action filters via netlink.
    Netlink,
}

/// Where the dataplane keeps its pinned objects and how it attaches.
#[derive(Clone, Debug)]
pub struct DataplaneConfig {
    /// bpffs directory for maps, programs and links.
    pub pin_dir: PathBuf,
    /// Attachment mechanism.
    pub attach_mode: AttachMode,
    /// Load the programs with their trace code removed (tests and benchmarks: a build
    /// whose programs differ from the daemon's). Always false in the daemon.
    pub without_trace: bool,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            attach_mode: AttachMode::Auto,
            without_trace: false,
        }
    }
}

/// The dataplane's whole desired state: every translation rule and every ingress
/// border. [`Dataplane::apply`] makes the kernel hold exactly this.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredDataplane {
    /// Translation rules.
    #[serde(default)]
    pub rules: Vec<TranslationRule>,
    /// Ingress borders (one per tunnel).
    #[serde(default)]
    pub borders: Vec<IngressBorder>,
}

/// What one `apply` changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    /// Rules added.
    pub inserted: usize,
    /// Rules whose target changed.
    pub updated: usize,
    /// Rules removed.
    pub removed: usize,
    /// Rules left as they were.
    pub unchanged: usize,
    /// Program attachments made.
    pub attached: usize,
    /// Program attachments removed.
    pub detached: usize,
    /// Hook configurations written (rules or borders changed on a hook).
    pub hooks_written: usize,
    /// Hook configurations cleared (the hook is no longer managed).
    pub hooks_cleared: usize,
}

impl ApplyReport {
    /// True when the apply wrote nothing.
    pub fn is_noop(&self) -> bool {
        self.inserted == 0
            && self.updated == 0
            && self.removed == 0
            && self.attached == 0
            && self.detached == 0
            && self.hooks_written == 0
            && self.hooks_cleared == 0
    }
}

/// A handle on the pinned dataplane.
pub struct Dataplane {
    layout: PinLayout,
    rules: LpmTrie<MapData, RuleKey, RuleValue>,
    allow: LpmTrie<MapData, RuleKey, u32>,
    counters: PerCpuArray<MapData, RuleCounters>,
    hook_index: Array<MapData, u32>,
    hook_config: Array<MapData, HookConfig>,
    hook_counters: PerCpuArray<MapData, HookCounters>,
    programs: BTreeMap<&'static str, SchedClassifier>,
    mode: AttachMode,
    adopted: bool,
    nr_cpus: usize,
    /// The slot of every hook this process configured (see `live_slots`).
    hook_slots: BTreeMap<(u32, Direction), u32>,
    /// This handle loaded its programs over another build's (see [`Dataplane::open`]):
    /// netlink filters are moved to them once each (TCX links by program id).
    upgraded: bool,
    /// Netlink hooks moved to this handle's programs since it opened.
    swapped: BTreeSet<(u32, Direction)>,
    /// The identity of the programs this handle loaded, recorded under the pin
    /// directory once an apply has put them on every link (until then a restart
    /// loads and moves them again).
    pending_identity: Option<String>,
}

impl Dataplane {
    /// Opens the dataplane under `config.pin_dir`: adopts the pinned objects when a
    /// complete set is there, otherwise loads the embedded object (reusing any pinned
    /// maps, so rules and counters survive) and pins what it loaded.
    pub fn open(config: &DataplaneConfig) -> Result<Self, DataplaneError> {
        let started = std::time::Instant::now();
        let layout = PinLayout::new(&config.pin_dir);
        let trace = !config.without_trace;
        let identity = load::object_identity(trace);
        let complete = layout.is_complete();
        // Programs of another build pinned under this layout: load ours over the same
        // maps (refusing, with nothing changed, if a map's layout differs) and move the
        // links to them at the next apply, atomically (`bpf_link_update` for TCX, an
        // in-place filter replace for netlink), so no packet goes untranslated.
        let upgrade = complete && layout.pinned_identity().as_deref() != Some(identity.as_str());
        if !complete || upgrade {
            // Whatever maps are pinned (all of them, or what a crash left) must fit.
            load::check_map_layouts(&layout)?;
        }
        if upgrade {
            info!(
                pinned = layout.pinned_identity().unwrap_or_default(),
                this = %identity,
                "another build's programs are pinned: replacing them, keeping the maps"
            );
        }
        if !complete || upgrade {
            load_and_pin(&layout, trace)?;
        }
        let adopted = complete && !upgrade;
        let mut dataplane = Self::adopt(layout, config.attach_mode)?;
        dataplane.adopted = adopted;
        dataplane.upgraded = upgrade;
        // Recorded after the first apply has moved every link to these programs.
        dataplane.pending_identity = (!adopted).then_some(identity);
        info!(
            pin_dir = %config.pin_dir.display(),
            adopted,
            // Loading is bounded by the kernel verifier: seconds, varying with the CPU.
            took = ?started.elapsed(),
            mode = ?dataplane.mode,
            "dataplane open"
        );
        Ok(dataplane)
    }

    /// Opens an existing pinned dataplane without ever loading anything.
    pub fn open_existing(config: &DataplaneConfig) -> Result<Self, DataplaneError> {
        let layout = PinLayout::new(&config.pin_dir);
        if !layout.is_complete() {
            return Err(DataplaneError::NotPinned {
                path: config.pin_dir.clone(),
            });
        }
        let mut dataplane = Self::adopt(layout, config.attach_mode)?;
        dataplane.adopted = true;
        Ok(dataplane)
    }

    fn adopt(layout: PinLayout, mode: AttachMode) -> Result<Self, DataplaneError> {
        let open_map =
            |name: &'static str| MapData::from_pin(layout.map(name)).map_err(map_err(name));
        let rules =
            LpmTrie::try_from(Map::LpmTrie(open_map(RULES_MAP)?)).map_err(map_err(RULES_MAP))?;
        let allow =
            LpmTrie::try_from(Map::LpmTrie(open_map(ALLOW_MAP)?)).map_err(map_err(ALLOW_MAP))?;
        let counters = PerCpuArray::try_from(Map::PerCpuArray(open_map(COUNTERS_MAP)?))
            .map_err(map_err(COUNTERS_MAP))?;
        let hook_index = Array::try_from(Map::Array(open_map(HOOK_INDEX_MAP)?))
            .map_err(map_err(HOOK_INDEX_MAP))?;
        let hook_config = Array::try_from(Map::Array(open_map(HOOK_CONFIG_MAP)?))
            .map_err(map_err(HOOK_CONFIG_MAP))?;
        let hook_counters = PerCpuArray::try_from(Map::PerCpuArray(open_map(HOOK_COUNTERS_MAP)?))
            .map_err(map_err(HOOK_COUNTERS_MAP))?;
        let mut loaded = BTreeMap::new();
        for (_, _, name) in ATTACHABLE {
            let program = SchedClassifier::from_pin(layout.prog(name)).map_err(prog_err(name))?;
            loaded.insert(name, program);
        }
        let mode = match mode {
            AttachMode::Auto if tcx_supported() => AttachMode::Tcx,
            AttachMode::Auto => AttachMode::Netlink,
            explicit => explicit,
        };
        let nr_cpus = aya::util::nr_cpus().map_err(|(path, source)| DataplaneError::PinDir {
            path: PathBuf::from(path),
            source,
        })?;
        Ok(Self {
            layout,
            rules,
            allow,
            counters,
            hook_index,
            hook_config,
            hook_counters,
            programs: loaded,
            mode,
            adopted: false,
            nr_cpus,
            hook_slots: BTreeMap::new(),
            upgraded: false,
            swapped: BTreeSet::new(),
            pending_identity: None,
        })
    }

    /// Whether this handle adopted pinned objects (true) or loaded them (false).
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// Whether this handle replaced another build's pinned programs (see
    /// [`Dataplane::open`]).
    pub fn upgraded(&self) -> bool {
        self.upgraded
    }

    /// Makes the kernel hold exactly `desired`: validates it, resolves interfaces in the
    /// current network namespace, then upserts rules and allow-list entries, writes each
    /// hook's configuration, attaches programs where hooks now exist, removes stale rules
    /// and entries, clears hooks no longer managed and detaches their programs — in that
    /// order, so traffic never sees a hook without its rules or a border without its
    /// allow-list. On a validation or resolution error nothing is changed.
    pub fn apply(&mut self, desired: &DesiredDataplane) -> Result<ApplyReport, DataplaneError> {
        rules::validate(&desired.rules)?;
        rules::validate_borders(&desired.borders)?;
        let interfaces = interfaces::list().map_err(DataplaneError::ListInterfaces)?;
        let resolve = |name: &str, what: &dyn std::fmt::Display| {
            let iface = interfaces
                .get(name)
                .ok_or_else(|| DataplaneError::InterfaceNotFound {
                    interface: name.to_owned(),
                    rule: what.to_string(),
                })?;
            let framing = iface
                .framing
                .ok_or_else(|| DataplaneError::UnsupportedLinkType {
                    interface: name.to_owned(),
                    link_type: iface.link_type,
                })?;
            Ok::<_, DataplaneError>((iface.ifindex, framing))
        };
        let mut wanted: BTreeMap<MapKey, Target> = BTreeMap::new();
        let mut hooks: BTreeMap<(u32, Direction), (Framing, String)> = BTreeMap::new();
        for rule in &desired.rules {
            let (ifindex, framing) = resolve(&rule.interface, rule)?;
            wanted.insert(
                MapKey::of(ifindex, rule.direction, rule.field, rule.from),
                Target { to: rule.to },
            );
            hooks.insert((ifindex, rule.direction), (framing, rule.interface.clone()));
        }
        let mut borders = Vec::new();
        for border in &desired.borders {
            let what = format!("ingress border of {}", border.interface);
            let (ifindex, framing) = resolve(&border.interface, &what)?;
            borders.push(ResolvedBorder::new(ifindex, border));
            hooks.insert(
                (ifindex, Direction::Ingress),
                (framing, border.interface.clone()),
            );
            if border.mss_clamp.is_some() {
                hooks.insert(
                    (ifindex, Direction::Egress),
                    (framing, border.interface.clone()),
                );
            }
        }

        let current = self.read_rules()?;
        let diff = rules::diff(&current, &wanted, rules::CAPACITY)?;
        // The rule entries once the diff has run, with their counter slots: what the
        // hook configurations must describe.
        let mut final_rules = current.clone();
        for (key, value) in diff.insert.iter().chain(&diff.update) {
            final_rules.insert(*key, *value);
        }
        for key in &diff.remove {
            final_rules.remove(key);
        }
        let plan = hooks::plan(&final_rules, &borders)?;
        // Where each hook's configuration lives: hooks that hold a slot keep it; a hook
        // with no free slot is refused here, before anything is written. Candidates for
        // a live slot: the wanted hooks, and those with rules or attachments now.
        let mut candidates: BTreeSet<(u32, Direction)> = plan.configs.keys().copied().collect();
        for key in current.keys() {
            if let Some(direction) = Direction::from_wire(key.data.direction) {
                candidates.insert((key.data.ifindex, direction));
            }
        }
        for (_, attachment) in self.pinned_attachments(&BTreeMap::new())? {
            candidates.insert((attachment.ifindex, attachment.direction));
        }
        let live = self.live_slots(&candidates)?;
        let first_live: BTreeMap<(u32, Direction), u32> = live
            .iter()
            .filter_map(|(hook, slots)| slots.first().map(|s| (*hook, *s)))
            .collect();
        let wanted_hooks: BTreeSet<(u32, Direction)> = plan.configs.keys().copied().collect();
        let slots = hooks::assign_slots(&wanted_hooks, &first_live)?;
        let current_allow = self.read_allow()?;

        let mut report = ApplyReport {
            inserted: diff.insert.len(),
            updated: diff.update.len(),
            removed: diff.remove.len(),
            unchanged: diff.unchanged,
            ..ApplyReport::default()
        };

        for (key, value) in &diff.insert {
            let zero = PerCpuValues::try_from(vec![RuleCounters::default(); self.nr_cpus])
                .map_err(|e| map_err(COUNTERS_MAP)(MapError::from(e)))?;
            self.counters
                .set(value.rule_id, zero, 0)
                .map_err(map_err(COUNTERS_MAP))?;
            self.rules
                .insert(&Key::new(key.prefix_len, key.data), *value, 0)
                .map_err(map_err(RULES_MAP))?;
        }
        for (key, value) in &diff.update {
            self.rules
                .insert(&Key::new(key.prefix_len, key.data), *value, 0)
                .map_err(map_err(RULES_MAP))?;
        }
        for key in plan.allow.difference(&current_allow) {
            self.allow
                .insert(&Key::new(key.prefix_len, key.data), 1, 0)
                .map_err(map_err(ALLOW_MAP))?;
        }

        for (hook, config) in &plan.configs {
            let Some(&slot) = slots.get(hook) else {
                continue;
            };
            if self.write_hook(slot, config)? {
                report.hooks_written += 1;
            }
        }

        // An older layout's programs go just before this one's attach: never both on a
        // hook (they would translate twice).
        retire_older_layouts(&self.layout);
        for ((ifindex, direction), (framing, name)) in &hooks {
            if self.ensure_attached(name, *ifindex, *direction, *framing)? {
                report.attached += 1;
            }
        }

        for key in &diff.remove {
            remove_key(&mut self.rules, key, RULES_MAP)?;
        }
        for key in current_allow.difference(&plan.allow) {
            remove_key(&mut self.allow, key, ALLOW_MAP)?;
        }

        // Slots held before by hooks not managed any more (or by a second copy): cleared,
        // unless a wanted hook was just given that slot (its write replaced it).
        let assigned: BTreeSet<u32> = slots.values().copied().collect();
        self.hook_slots = slots.clone();
        for (hook, held) in &live {
            for slot in held {
                if slots.get(hook) == Some(slot) || assigned.contains(slot) {
                    continue;
                }
                if self.clear_hook(*slot)? {
                    report.hooks_cleared += 1;
                }
            }
        }

        let keep: BTreeSet<(u32, Direction)> = hooks.keys().copied().collect();
        report.detached = self.detach_except(&keep)?;
        // Every managed link now runs this handle's programs.
        if let Some(identity) = self.pending_identity.take()
            && let Err(e) = self.layout.record_identity(&identity)
        {
            // Not fatal: a restart then loads and moves the programs again.
            tracing::warn!(error = %e, "recording which build's programs are pinned");
        }
        if report.is_noop() {
            debug!(rules = report.unchanged, "dataplane already as desired");
        } else {
            info!(?report, "dataplane applied");
        }
        Ok(report)
    }

    /// The slots whose live configuration belongs to each of `hooks` (normally one; none
    /// for a hook without a configuration). A hook this process configured is checked
    /// at its slot only: it never wrote a hook to two slots, so there is no other copy
    /// to find. Others (an adopted pin set, a new hook) are looked for in every probe
    /// slot, which also finds copies an older process left.
    pub(crate) fn live_slots(
        &self,
        hooks: &BTreeSet<(u32, Direction)>,
    ) -> Result<BTreeMap<(u32, Direction), Vec<u32>>, DataplaneError> {
        let mut out = BTreeMap::new();
        for &(ifindex, direction) in hooks {
            if let Some(&slot) = self.hook_slots.get(&(ifindex, direction))
                && let Some((_, config)) = self.live_hook(slot)?
                && config.ifindex == ifindex
                && config.direction == u32::from(direction.wire())
            {
                out.insert((ifindex, direction), vec![slot]);
                continue;
            }
            let mut held = Vec::new();
            for probe in 0..HOOK_PROBES {
                let slot = hook_probe(ifindex, direction.wire(), probe);
                if let Some((_, config)) = self.live_hook(slot)?
                    && config.ifindex == ifindex
                    && config.direction == u32::from(direction.wire())
                {
                    held.push(slot);
                }
            }
            if !held.is_empty() {
                out.insert((ifindex, direction), held);
            }
        }
        Ok(out)
    }

    /// The live configuration of a hook slot, if it has one.
    fn live_hook(&self, slot: u32) -> Result<Option<(u32, HookConfig)>, DataplaneError> {
        let live = self
            .hook_index
            .get(&slot, 0)
            .map_err(map_err(HOOK_INDEX_MAP))?;
        if !(1..=2).contains(&live) {
            return Ok(None);
        }
        let config = self
            .hook_config
            .get(&(slot * 2 + live - 1), 0)
            .map_err(map_err(HOOK_CONFIG_MAP))?;
        Ok(Some((live, config)))
    }

    /// Makes `config` the live configuration of `slot`: writes the idle copy, then flips
    /// the index (one 4-byte write), so a packet sees either the old or the new
    /// configuration, never a mix. A hook new to the slot starts with zero counters.
    /// Returns false when the slot already held exactly `config`.
    fn write_hook(&mut self, slot: u32, config: &HookConfig) -> Result<bool, DataplaneError> {
        let live = self.live_hook(slot)?;
        let (idle, same_hook) = match live {
            Some((_, current)) if current == *config => return Ok(false),
            Some((index, current)) => (3 - index, current.ifindex == config.ifindex),
            None => (1, false),
        };
        if !same_hook {
            let zero = PerCpuValues::try_from(vec![HookCounters::default(); self.nr_cpus])
                .map_err(|e| map_err(HOOK_COUNTERS_MAP)(MapError::from(e)))?;
            self.hook_counters
                .set(slot, zero, 0)
                .map_err(map_err(HOOK_COUNTERS_MAP))?;
        }
        self.hook_config
            .set(slot * 2 + idle - 1, *config, 0)
            .map_err(map_err(HOOK_CONFIG_MAP))?;
        self.hook_index
            .set(slot, idle, 0)
            .map_err(map_err(HOOK_INDEX_MAP))?;
        Ok(true)
    }

    /// Marks `slot` as unmanaged; its programs (until detached) pass everything.
    fn clear_hook(&mut self, slot: u32) -> Result<bool, DataplaneError> {
        if self.live_hook(slot)?.is_none() {
            return Ok(false);
        }
        self.hook_index
            .set(slot, 0, 0)
            .map_err(map_err(HOOK_INDEX_MAP))?;
        Ok(true)
    }

    fn read_allow(&self) -> Result<BTreeSet<MapKey>, DataplaneError> {
        let mut out = BTreeSet::new();
        for key in self.allow.keys() {
            let key = key.map_err(map_err(ALLOW_MAP))?;
            out.insert(MapKey {
                prefix_len: key.prefix_len(),
                data: key.data(),
            });
        }
        Ok(out)
    }

    fn read_rules(&self) -> Result<BTreeMap<MapKey, RuleValue>, DataplaneError> {
        let mut out = BTreeMap::new();
        for entry in self.rules.iter() {
            let (key, value) = entry.map_err(map_err(RULES_MAP))?;
            out.insert(
                MapKey {
                    prefix_len: key.prefix_len(),
                    data: key.data(),
                },
                value,
            );
        }
        Ok(out)
    }

    fn program_id(&self, name: &'static str) -> Result<u32, DataplaneError> {
        let program = self.programs.get(name).ok_or_else(|| not_loaded(name))?;
        Ok(program.info().map_err(prog_err(name))?.id())
    }

    /// Removes every rule and attachment and unpins everything: translation stops.
    pub fn teardown(mut self) -> Result<(), DataplaneError> {
        self.detach_except(&BTreeSet::new())?;
        let root = self.layout.root.clone();
        drop(self);
        match std::fs::remove_dir_all(&root) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(pin_dir_err(&root)(e)),
        }
        info!(pin_dir = %root.display(), "dataplane torn down");
        Ok(())
    }
}

/// Removes one key from an LPM trie; a key already gone is fine.
fn remove_key<V: Pod>(
    map: &mut LpmTrie<MapData, RuleKey, V>,
    key: &MapKey,
    name: &'static str,
) -> Result<(), DataplaneError> {
    match map.remove(&Key::new(key.prefix_len, key.data)) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(map_err(name)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_production_object_carries_the_kfunc_markers() {
        // Empty when built with AYA_BUILD_SKIP; otherwise every program reads ip_summed
        // through the patched call, and a changed marker encoding must fail here rather
        // than silently fall back to the helper.
        if EBPF_OBJECT.is_empty() {
            return;
        }
        let (_, patched) = kctx::patch_object(EBPF_OBJECT, None).unwrap();
        assert!(patched >= 4, "{patched} marker calls in the object");
    }
}
