//! The eBPF dataplane: loads (or adopts) remapd's TC programs and maps, pinned under a
//! bpffs directory, attaches them to interfaces, and applies a full desired rule set by
//! diffing it against what the maps hold.
//!
//! Everything the kernel needs to keep forwarding lives in bpffs: maps, programs and TCX
//! links. A daemon that stops (or is killed) leaves translation running; the next one
//! adopts the pinned objects instead of loading new ones, so programs keep their ids,
//! counters keep counting, and no packet sees a gap. Applying is idempotent: the same
//! desired set applied twice writes nothing the second time.
//!
//! Pin layout (`<pin_dir>/v2/`): `maps/<MAP>`, `progs/<program>`, `links/<ifindex>-<dir>`
//! (TCX links), and for the netlink fallback empty marker directories
//! `links/nl-<ifindex>-<dir>-<ifname>`. The `v2` component is the map schema version;
//! a daemon that finds an older layout detaches and removes it when it loads its own.
#![deny(missing_docs)]

pub mod applier;
pub mod hooks;
pub mod interfaces;
pub mod kctx;
pub mod rules;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::Pod;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, Map, MapData, MapError, PerCpuArray, PerCpuValues};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle};
use aya::programs::{LinkOrder, ProgramError, SchedClassifier, TcAttachType};
use ipnet::Ipv4Net;
use remapd_common::{
    ALLOW_MAP, COUNTERS_MAP, HOOK_CONFIG_MAP, HOOK_COUNTERS_MAP, HOOK_ENFORCE, HOOK_INDEX_MAP,
    HookConfig, HookCounters, RULES_MAP, RuleCounters, RuleKey, RuleValue, drop_reason, hook_slot,
    programs,
};
use serde::Serialize;
use tracing::{debug, info, warn};

pub use applier::{DataplaneApplier, DataplaneStatusReader, FakeDataplane, KernelDataplane};
pub use hooks::IngressBorder;
use hooks::ResolvedBorder;
pub use interfaces::Framing;
pub use rules::{AddressField, Direction, RuleError, TranslationRule};
use rules::{MapKey, Target};

/// The compiled eBPF object, built by `build.rs` with aya-build (empty when the build
/// was skipped with `AYA_BUILD_SKIP=1`, e.g. for `cargo check` without bpf-linker).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/remapd-ebpf"));

/// The benchmark-only object (no-op, one-helper and reference programs). The daemon
/// never loads it; benchmarks and tests do, through [`load_bench_object`].
static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/remapd-bench-ebpf"));

/// Map schema version; part of the pin path so an incompatible layout is never adopted.
pub const PIN_LAYOUT_VERSION: &str = "v2";

/// Layouts of earlier versions, retired when this version loads.
const OLDER_PIN_LAYOUTS: [&str; 1] = ["v1"];

/// Every map the programs use, pinned under `maps/`.
const MAPS: [&str; 6] = [
    RULES_MAP,
    ALLOW_MAP,
    COUNTERS_MAP,
    HOOK_INDEX_MAP,
    HOOK_CONFIG_MAP,
    HOOK_COUNTERS_MAP,
];

/// Default bpffs directory for pinned objects.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/remapd";

/// TC priority and handle used by the netlink (clsact) fallback.
const NETLINK_PRIORITY: u16 = 0x5200;
const NETLINK_HANDLE: TcHandle = TcHandle::new(0x5244, 1);

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
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            attach_mode: AttachMode::Auto,
        }
    }
}

/// Errors of the dataplane layer, each with the object it concerns.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The desired rule set is invalid; nothing was changed.
    #[error(transparent)]
    InvalidRules(#[from] RuleError),
    /// A rule names an interface that does not exist in this network namespace.
    #[error("interface {interface:?} not found (rule `{rule}`)")]
    InterfaceNotFound {
        /// Interface name.
        interface: String,
        /// The rule, as text.
        rule: String,
    },
    /// A rule names an interface whose link type remapd cannot parse.
    #[error("interface {interface:?} has link type {link_type}, which remapd does not support")]
    UnsupportedLinkType {
        /// Interface name.
        interface: String,
        /// ARPHRD_* value.
        link_type: u16,
    },
    /// Listing interfaces failed.
    #[error("listing interfaces: {0}")]
    ListInterfaces(#[source] nix::Error),
    /// This binary carries no eBPF object.
    #[error(
        "this remapd binary was built without its eBPF object (AYA_BUILD_SKIP); rebuild with bpf-linker installed"
    )]
    ObjectMissing,
    /// A test fake was told to fail.
    #[error("injected failure: {0}")]
    Injected(String),
    /// A test fake's lock was poisoned.
    #[error("fake dataplane: lock poisoned")]
    FakePoisoned,
    /// The pin directory is unusable.
    #[error("bpffs directory {path}: {source}")]
    PinDir {
        /// Directory.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The pin directory holds nothing to adopt.
    #[error("no remapd dataplane is pinned under {path}")]
    NotPinned {
        /// Directory.
        path: PathBuf,
    },
    /// The embedded eBPF object could not be prepared for loading.
    #[error("the embedded eBPF object: {0}")]
    BadObject(String),
    /// The eBPF object did not load.
    #[error("loading the eBPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program operation failed.
    #[error("program {name}: {source}")]
    Program {
        /// Program name.
        name: String,
        /// Cause.
        source: Box<ProgramError>,
    },
    /// A map operation failed.
    #[error("map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// Cause.
        source: Box<MapError>,
    },
    /// Attaching a program failed.
    #[error("attaching {program} to {interface} {direction}: {source}")]
    AttachFailed {
        /// Program name.
        program: &'static str,
        /// Interface name.
        interface: String,
        /// Hook.
        direction: Direction,
        /// Cause.
        source: Box<ProgramError>,
    },
    /// A pinned link could not be opened, pinned or removed.
    #[error("link {path}: {reason}")]
    Link {
        /// Pin path.
        path: PathBuf,
        /// Cause.
        reason: String,
    },
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |source| DataplaneError::Map {
        name,
        source: Box::new(source),
    }
}

fn prog_err(name: &str) -> impl Fn(ProgramError) -> DataplaneError + '_ {
    move |source| DataplaneError::Program {
        name: name.to_owned(),
        source: Box::new(source),
    }
}

/// The error for a program missing from the object or the pins.
fn not_loaded(name: &str) -> DataplaneError {
    DataplaneError::Program {
        name: name.to_owned(),
        source: Box::new(ProgramError::NotLoaded),
    }
}

fn pin_dir_err(path: &Path) -> impl Fn(io::Error) -> DataplaneError + '_ {
    move |source| DataplaneError::PinDir {
        path: path.to_owned(),
        source,
    }
}

/// The four attachable programs, by framing and direction.
const ATTACHABLE: [(Framing, Direction, &str); 4] = [
    (Framing::L2, Direction::Ingress, programs::L2_INGRESS),
    (Framing::L2, Direction::Egress, programs::L2_EGRESS),
    (Framing::L3, Direction::Ingress, programs::L3_INGRESS),
    (Framing::L3, Direction::Egress, programs::L3_EGRESS),
];

fn program_for(framing: Framing, direction: Direction) -> &'static str {
    match (framing, direction) {
        (Framing::L2, Direction::Ingress) => programs::L2_INGRESS,
        (Framing::L2, Direction::Egress) => programs::L2_EGRESS,
        (Framing::L3, Direction::Ingress) => programs::L3_INGRESS,
        (Framing::L3, Direction::Egress) => programs::L3_EGRESS,
    }
}

fn tc_attach_type(direction: Direction) -> TcAttachType {
    match direction {
        Direction::Ingress => TcAttachType::Ingress,
        Direction::Egress => TcAttachType::Egress,
    }
}

/// Paths of the pinned objects.
#[derive(Clone, Debug)]
struct PinLayout {
    root: PathBuf,
    maps: PathBuf,
    progs: PathBuf,
    links: PathBuf,
}

impl PinLayout {
    fn new(pin_dir: &Path) -> Self {
        let root = pin_dir.join(PIN_LAYOUT_VERSION);
        Self {
            maps: root.join("maps"),
            progs: root.join("progs"),
            links: root.join("links"),
            root,
        }
    }

    fn map(&self, name: &str) -> PathBuf {
        self.maps.join(name)
    }

    fn prog(&self, name: &str) -> PathBuf {
        self.progs.join(name)
    }

    fn tcx_link(&self, ifindex: u32, direction: Direction) -> PathBuf {
        self.links.join(format!("{ifindex}-{direction}"))
    }

    fn netlink_marker(&self, ifindex: u32, direction: Direction, ifname: &str) -> PathBuf {
        self.links
            .join(format!("nl-{ifindex}-{direction}-{ifname}"))
    }

    fn is_complete(&self) -> bool {
        MAPS.iter().all(|m| self.map(m).exists())
            && ATTACHABLE.iter().all(|(_, _, p)| self.prog(p).exists())
    }
}

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
}

impl Dataplane {
    /// Opens the dataplane under `config.pin_dir`: adopts the pinned objects when a
    /// complete set is there, otherwise loads the embedded object (reusing any pinned
    /// maps, so rules and counters survive) and pins what it loaded.
    pub fn open(config: &DataplaneConfig) -> Result<Self, DataplaneError> {
        let started = std::time::Instant::now();
        let layout = PinLayout::new(&config.pin_dir);
        let adopted = layout.is_complete();
        if !adopted {
            load_and_pin(&layout)?;
        }
        let mut dataplane = Self::adopt(layout, config.attach_mode)?;
        dataplane.adopted = adopted;
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
        })
    }

    /// Whether this handle adopted pinned objects (true) or loaded them (false).
    pub fn adopted(&self) -> bool {
        self.adopted
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
                MapKey::ipv4(ifindex, rule.direction, rule.field, rule.from),
                Target { to: rule.to },
            );
            hooks.insert((ifindex, rule.direction), (framing, rule.interface.clone()));
        }
        let mut borders = Vec::new();
        for border in &desired.borders {
            let what = format!("ingress border of {}", border.interface);
            let (ifindex, framing) = resolve(&border.interface, &what)?;
            borders.push(ResolvedBorder {
                ifindex,
                sources: border.sources.clone(),
                destinations: border.destinations.clone(),
            });
            hooks.insert(
                (ifindex, Direction::Ingress),
                (framing, border.interface.clone()),
            );
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
        // Slot collisions are refused here, before anything is written.
        let plan = hooks::plan(&final_rules, &borders)?;
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

        for ((ifindex, direction), config) in &plan.configs {
            if self.write_hook(hook_slot(*ifindex, direction.wire()), config)? {
                report.hooks_written += 1;
            }
        }

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

        // Hooks managed before (attached, or holding rules) and not any more.
        let wanted_slots: BTreeSet<u32> = plan
            .configs
            .keys()
            .map(|(i, d)| hook_slot(*i, d.wire()))
            .collect();
        let mut stale_slots: BTreeSet<u32> = current
            .keys()
            .map(|k| hook_slot(k.data.ifindex, k.data.direction))
            .collect();
        for (_, attachment) in self.pinned_attachments(&BTreeMap::new())? {
            stale_slots.insert(hook_slot(attachment.ifindex, attachment.direction.wire()));
        }
        for slot in stale_slots.difference(&wanted_slots) {
            if self.clear_hook(*slot)? {
                report.hooks_cleared += 1;
            }
        }

        let keep: BTreeSet<(u32, Direction)> = hooks.keys().copied().collect();
        report.detached = self.detach_except(&keep)?;
        retire_older_layouts(&self.layout);
        if report.is_noop() {
            debug!(rules = report.unchanged, "dataplane already as desired");
        } else {
            info!(?report, "dataplane applied");
        }
        Ok(report)
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

    /// Attaches the right program to one hook unless it is already there. Returns true
    /// when it attached something.
    fn ensure_attached(
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

    fn ensure_attached_tcx(
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

    fn ensure_attached_netlink(
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
            return Ok(false);
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

    /// Detaches every managed attachment whose (ifindex, direction) is not in `keep`.
    fn detach_except(
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
    fn pinned_attachments(
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

    /// Rules, counters, attachments and program ids as the kernel holds them now.
    pub fn status(&self) -> Result<DataplaneStatus, DataplaneError> {
        let by_index: BTreeMap<u32, String> = interfaces::list()
            .map_err(DataplaneError::ListInterfaces)?
            .into_iter()
            .map(|(name, i)| (i.ifindex, name))
            .collect();
        let mut installed = Vec::new();
        for (key, value) in self.read_rules()? {
            let Some(from) = key.ipv4_prefix() else {
                continue;
            };
            let [a, b, c, d, ..] = value.to_addr;
            let (Ok(to), Some(direction), Some(field)) = (
                Ipv4Net::new(Ipv4Addr::new(a, b, c, d), value.prefix_len),
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
        let mut hooks = Vec::new();
        for attachment in &attachments {
            let slot = hook_slot(attachment.ifindex, attachment.direction.wire());
            let border = match self.live_hook(slot)? {
                Some((_, config)) if config.ifindex == attachment.ifindex => {
                    config.flags & HOOK_ENFORCE != 0
                }
                _ => false,
            };
            let per_cpu = self
                .hook_counters
                .get(&slot, 0)
                .map_err(map_err(HOOK_COUNTERS_MAP))?;
            let mut status = HookStatus {
                interface: attachment.interface.clone(),
                ifindex: attachment.ifindex,
                direction: attachment.direction,
                border,
                packets: 0,
                bytes: 0,
                translated: 0,
                dropped: BTreeMap::new(),
            };
            let mut dropped = [0u64; drop_reason::COUNT];
            for c in per_cpu.iter() {
                status.packets += c.packets;
                status.bytes += c.bytes;
                status.translated += c.translated;
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

    fn counters_of(&self, rule_id: u32) -> Result<(u64, u64), DataplaneError> {
        let values = self
            .counters
            .get(&rule_id, 0)
            .map_err(map_err(COUNTERS_MAP))?;
        Ok(values
            .iter()
            .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes)))
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

fn parse_link_name(name: &str) -> Option<(&'static str, u32, Direction, Option<String>)> {
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

fn remove_pin(path: &Path) -> Result<(), DataplaneError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DataplaneError::Link {
            path: path.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// Whether this binary carries its eBPF object (not built with `AYA_BUILD_SKIP`).
pub fn object_embedded() -> bool {
    !EBPF_OBJECT.is_empty()
}

fn tcx_supported() -> bool {
    use aya::util::KernelVersion;
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// Loads the embedded object, reusing pinned maps when present, and pins the programs.
fn load_and_pin(layout: &PinLayout) -> Result<(), DataplaneError> {
    if EBPF_OBJECT.is_empty() {
        return Err(DataplaneError::ObjectMissing);
    }
    for dir in [&layout.maps, &layout.progs, &layout.links] {
        std::fs::create_dir_all(dir).map_err(pin_dir_err(dir))?;
    }
    let pins: Vec<(&str, PathBuf)> = MAPS.iter().map(|m| (*m, layout.map(m))).collect();
    let mut ebpf = load_production(&pins)?;
    for (_, _, name) in ATTACHABLE {
        let program: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or_else(|| not_loaded(name))?
            .try_into()
            .map_err(prog_err(name))?;
        program.load().map_err(prog_err(name))?;
        let pin = layout.prog(name);
        remove_pin(&pin)?;
        program.pin(&pin).map_err(|e| DataplaneError::Link {
            path: pin.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

/// Removes the pins of older layout versions under the same pin directory: unpinning
/// their TCX links detaches their programs (this version's are attached by then), and
/// their maps go with the last reference. Failures are logged, never fatal.
fn retire_older_layouts(layout: &PinLayout) {
    let Some(pin_dir) = layout.root.parent() else {
        return;
    };
    for old in OLDER_PIN_LAYOUTS {
        let root = pin_dir.join(old);
        if !root.exists() {
            continue;
        }
        match std::fs::remove_dir_all(&root) {
            Ok(()) => info!(path = %root.display(), "retired an older dataplane layout"),
            Err(e) => {
                warn!(path = %root.display(), error = %e, "could not retire an older dataplane layout")
            }
        }
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

/// Loads the benchmark-only object (no-op, one helper call, reference rewrite).
pub fn load_bench_object() -> Result<aya::Ebpf, DataplaneError> {
    if BENCH_OBJECT.is_empty() {
        return Err(DataplaneError::ObjectMissing);
    }
    aya::Ebpf::load(BENCH_OBJECT).map_err(|e| DataplaneError::Load(Box::new(e)))
}

/// Loads the production object with `loader`, its kfunc marker calls patched for the
/// running kernel (see [`kctx`]): with the kernel's BTF the programs write transport
/// checksums directly where the skb's checksum state allows it; without, they use the
/// checksum helper for every packet.
fn load_production(pins: &[(&str, PathBuf)]) -> Result<aya::Ebpf, DataplaneError> {
    if EBPF_OBJECT.is_empty() {
        return Err(DataplaneError::ObjectMissing);
    }
    let ctx = match kctx::probe() {
        Ok(ctx) => Some(ctx),
        Err(e) => {
            warn!(error = %e, "transport checksums go through the kernel helper for every packet");
            None
        }
    };
    match load_patched(pins, ctx.as_ref()) {
        Err(e) if ctx.is_some() => {
            // Never lose the dataplane over the fast path: without the kfunc the programs
            // are the same, with the helper for every checksum.
            warn!(error = %e, "loading with direct checksum writes failed; loading without");
            load_patched(pins, None)
        }
        other => other,
    }
}

/// Loads the production object with its marker calls patched for `ctx` (see [`kctx`]).
fn load_patched(
    pins: &[(&str, PathBuf)],
    ctx: Option<&kctx::KernelCtx>,
) -> Result<aya::Ebpf, DataplaneError> {
    let (object, patched) = kctx::patch_object(EBPF_OBJECT, ctx)
        .map_err(|e| DataplaneError::BadObject(e.to_string()))?;
    let ready = u32::from(ctx.is_some() && patched > 0);
    let (offset, shift) = ctx.map_or((0, 0), |c| (c.ip_summed_offset, c.ip_summed_shift));
    debug!(patched, ready, offset, shift, "kfunc calls prepared");
    let mut loader = aya::EbpfLoader::new();
    for (name, pin) in pins {
        loader.map_pin_path(name, pin.as_path());
    }
    loader
        .override_global(kctx::globals::READY, &ready, true)
        .override_global(kctx::globals::IP_SUMMED_OFFSET, &offset, true)
        .override_global(kctx::globals::IP_SUMMED_SHIFT, &shift, true)
        .load(kctx::words_as_bytes(&object)[..EBPF_OBJECT.len()].as_ref())
        .map_err(|e| DataplaneError::Load(Box::new(e)))
}

/// Loads the embedded object without pinning anything, for packet tests and benchmarks
/// (`BPF_PROG_TEST_RUN`). The returned object owns private maps.
pub fn load_unpinned() -> Result<aya::Ebpf, DataplaneError> {
    load_production(&[])
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
