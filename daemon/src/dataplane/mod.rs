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
//! Pin layout (`<pin_dir>/v1/`): `maps/<MAP>`, `progs/<program>`, `links/<ifindex>-<dir>`
//! (TCX links), and for the netlink fallback empty marker directories
//! `links/nl-<ifindex>-<dir>-<ifname>`. The `v1` component is the map schema version.

pub mod interfaces;
pub mod rules;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, Map, MapData, MapError, PerCpuArray, PerCpuValues};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle};
use aya::programs::{LinkOrder, ProgramError, SchedClassifier, TcAttachType};
use ipnet::Ipv4Net;
use remapd_common::{
    COUNTERS_MAP, EXCEPTIONS_MAP, HOOKS_MAP, RULES_MAP, RuleCounters, RuleKey, RuleValue,
    hook_slot, programs,
};
use serde::Serialize;
use tracing::{debug, info, warn};

pub use interfaces::Framing;
pub use rules::{AddressField, Direction, RuleError, TranslationRule};
use rules::{MapKey, Target};

/// The compiled eBPF object, built by `build.rs` with aya-build (empty when the build
/// was skipped with `AYA_BUILD_SKIP=1`, e.g. for `cargo check` without bpf-linker).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/remapd-ebpf"));

/// Map schema version; part of the pin path so an incompatible layout is never adopted.
pub const PIN_LAYOUT_VERSION: &str = "v1";

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
        [RULES_MAP, COUNTERS_MAP, EXCEPTIONS_MAP, HOOKS_MAP]
            .iter()
            .all(|m| self.map(m).exists())
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

/// Counts of packets that were passed untouched (or partly rewritten) for exceptional reasons.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExceptionCounters {
    /// Matching packets too short or inconsistent to rewrite.
    pub malformed: u64,
    /// Kernel helper failures while rewriting.
    pub helper_failed: u64,
    /// Rules whose counter slot was out of range.
    pub bad_rule_id: u64,
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
    /// Exceptional pass-through counters.
    pub exceptions: ExceptionCounters,
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
}

impl ApplyReport {
    /// True when the apply wrote nothing.
    pub fn is_noop(&self) -> bool {
        self.inserted == 0
            && self.updated == 0
            && self.removed == 0
            && self.attached == 0
            && self.detached == 0
    }
}

/// A handle on the pinned dataplane.
pub struct Dataplane {
    layout: PinLayout,
    rules: LpmTrie<MapData, RuleKey, RuleValue>,
    counters: PerCpuArray<MapData, RuleCounters>,
    exceptions: PerCpuArray<MapData, u64>,
    hooks: Array<MapData, u32>,
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
        let counters = PerCpuArray::try_from(Map::PerCpuArray(open_map(COUNTERS_MAP)?))
            .map_err(map_err(COUNTERS_MAP))?;
        let exceptions = PerCpuArray::try_from(Map::PerCpuArray(open_map(EXCEPTIONS_MAP)?))
            .map_err(map_err(EXCEPTIONS_MAP))?;
        let hooks =
            Array::try_from(Map::Array(open_map(HOOKS_MAP)?)).map_err(map_err(HOOKS_MAP))?;
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
            counters,
            exceptions,
            hooks,
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
    /// current network namespace, then upserts rules, attaches programs where rules now
    /// exist, removes stale rules and detaches programs no longer needed — in that order.
    /// On a validation or resolution error nothing is changed.
    pub fn apply(&mut self, desired: &[TranslationRule]) -> Result<ApplyReport, DataplaneError> {
        rules::validate(desired)?;
        let interfaces = interfaces::list().map_err(DataplaneError::ListInterfaces)?;
        let mut wanted: BTreeMap<MapKey, Target> = BTreeMap::new();
        let mut hooks: BTreeSet<(u32, Direction, Framing, String)> = BTreeSet::new();
        for rule in desired {
            let iface = interfaces.get(&rule.interface).ok_or_else(|| {
                DataplaneError::InterfaceNotFound {
                    interface: rule.interface.clone(),
                    rule: rule.to_string(),
                }
            })?;
            let framing = iface
                .framing
                .ok_or_else(|| DataplaneError::UnsupportedLinkType {
                    interface: rule.interface.clone(),
                    link_type: iface.link_type,
                })?;
            wanted.insert(
                MapKey::ipv4(iface.ifindex, rule.direction, rule.field, rule.from),
                Target { to: rule.to },
            );
            hooks.insert((
                iface.ifindex,
                rule.direction,
                framing,
                rule.interface.clone(),
            ));
        }

        let current = self.read_rules()?;
        let diff = rules::diff(&current, &wanted, rules::CAPACITY)?;
        let mut report = ApplyReport {
            inserted: diff.insert.len(),
            updated: diff.update.len(),
            removed: diff.remove.len(),
            unchanged: diff.unchanged,
            ..ApplyReport::default()
        };

        // The hook summary must cover every rule the trie holds at any moment: widen it
        // before the upserts, narrow it after the removals.
        let current_hooks = hook_fields(current.keys());
        let wanted_hooks = hook_fields(wanted.keys());
        let mut widened = current_hooks.clone();
        for (slot, bits) in &wanted_hooks {
            *widened.entry(*slot).or_default() |= bits;
        }
        self.write_hooks(&widened, &current_hooks)?;

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

        for (ifindex, direction, framing, name) in &hooks {
            if self.ensure_attached(name, *ifindex, *direction, *framing)? {
                report.attached += 1;
            }
        }

        for key in &diff.remove {
            match self.rules.remove(&Key::new(key.prefix_len, key.data)) {
                Ok(()) => {}
                // Already gone: the goal is reached.
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(RULES_MAP)(e)),
            }
        }

        self.write_hooks(&wanted_hooks, &widened)?;

        let keep: BTreeSet<(u32, Direction)> = hooks.iter().map(|(i, d, _, _)| (*i, *d)).collect();
        report.detached = self.detach_except(&keep)?;
        if report.is_noop() {
            debug!(rules = report.unchanged, "dataplane already as desired");
        } else {
            info!(?report, "dataplane applied");
        }
        Ok(report)
    }

    /// Writes the hook summary `target` for every slot in `target` or `previous` whose
    /// value in the map differs.
    fn write_hooks(
        &mut self,
        target: &BTreeMap<u32, u32>,
        previous: &BTreeMap<u32, u32>,
    ) -> Result<(), DataplaneError> {
        for slot in target.keys().chain(previous.keys()) {
            let want = target.get(slot).copied().unwrap_or(0);
            let have = self.hooks.get(slot, 0).map_err(map_err(HOOKS_MAP))?;
            if have != want {
                self.hooks.set(*slot, want, 0).map_err(map_err(HOOKS_MAP))?;
            }
        }
        Ok(())
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
                .attach_with_options(
                    ifname,
                    attach_type,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
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
            let to = Ipv4Net::new(Ipv4Addr::new(a, b, c, d), value.prefix_len).unwrap_or(from);
            let direction = if key.data.direction == Direction::Ingress.wire() {
                Direction::Ingress
            } else {
                Direction::Egress
            };
            let field = if key.data.field == AddressField::Source.wire() {
                AddressField::Source
            } else {
                AddressField::Destination
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
        let exception = |index: u32| -> Result<u64, DataplaneError> {
            let values = self
                .exceptions
                .get(&index, 0)
                .map_err(map_err(EXCEPTIONS_MAP))?;
            Ok(values.iter().sum())
        };
        Ok(DataplaneStatus {
            adopted: self.adopted,
            program_ids,
            attachments: self
                .pinned_attachments(&by_index)?
                .into_iter()
                .map(|(_, a)| a)
                .collect(),
            rules: installed,
            exceptions: ExceptionCounters {
                malformed: exception(remapd_common::EXCEPTION_MALFORMED)?,
                helper_failed: exception(remapd_common::EXCEPTION_HELPER_FAILED)?,
                bad_rule_id: exception(remapd_common::EXCEPTION_BAD_RULE_ID)?,
            },
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

/// The hook summary for a set of rule keys: slot -> bits of the fields with rules.
fn hook_fields<'a>(keys: impl Iterator<Item = &'a MapKey>) -> BTreeMap<u32, u32> {
    let mut out = BTreeMap::new();
    for key in keys {
        *out.entry(hook_slot(key.data.ifindex, key.data.direction))
            .or_default() |= 1u32 << key.data.field;
    }
    out
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
    let rules_pin = layout.map(RULES_MAP);
    let counters_pin = layout.map(COUNTERS_MAP);
    let exceptions_pin = layout.map(EXCEPTIONS_MAP);
    let hooks_pin = layout.map(HOOKS_MAP);
    let mut ebpf = aya::EbpfLoader::new()
        .map_pin_path(RULES_MAP, rules_pin.as_path())
        .map_pin_path(COUNTERS_MAP, counters_pin.as_path())
        .map_pin_path(EXCEPTIONS_MAP, exceptions_pin.as_path())
        .map_pin_path(HOOKS_MAP, hooks_pin.as_path())
        .load(EBPF_OBJECT)
        .map_err(|e| DataplaneError::Load(Box::new(e)))?;
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

/// Loads the embedded object without pinning anything, for packet tests and benchmarks
/// (`BPF_PROG_TEST_RUN`). The returned object owns private maps.
pub fn load_unpinned() -> Result<aya::Ebpf, DataplaneError> {
    if EBPF_OBJECT.is_empty() {
        return Err(DataplaneError::ObjectMissing);
    }
    aya::Ebpf::load(EBPF_OBJECT).map_err(|e| DataplaneError::Load(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

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
