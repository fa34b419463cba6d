//! Loading and pinning: the pin layout under `<pin_dir>/<version>/`, loading the
//! embedded object (with the kfunc patch where the kernel has it) and pinning its maps
//! and programs, retiring older layouts, and the unpinned and benchmark loads for tests.

use std::io;
use std::path::{Path, PathBuf};

use aya::maps::MapData;
use aya::programs::SchedClassifier;
use tracing::{debug, info, warn};

use crate::*;

/// Paths of the pinned objects.
#[derive(Clone, Debug)]
pub(crate) struct PinLayout {
    pub(crate) root: PathBuf,
    pub(crate) maps: PathBuf,
    pub(crate) progs: PathBuf,
    pub(crate) links: PathBuf,
}

impl PinLayout {
    pub(crate) fn new(pin_dir: &Path) -> Self {
        let root = pin_dir.join(PIN_LAYOUT_VERSION);
        Self {
            maps: root.join("maps"),
            progs: root.join("progs"),
            links: root.join("links"),
            root,
        }
    }

    pub(crate) fn map(&self, name: &str) -> PathBuf {
        self.maps.join(name)
    }

    pub(crate) fn prog(&self, name: &str) -> PathBuf {
        self.progs.join(name)
    }

    pub(crate) fn tcx_link(&self, ifindex: u32, direction: Direction) -> PathBuf {
        self.links.join(format!("{ifindex}-{direction}"))
    }

    pub(crate) fn netlink_marker(
        &self,
        ifindex: u32,
        direction: Direction,
        ifname: &str,
    ) -> PathBuf {
        self.links
            .join(format!("nl-{ifindex}-{direction}-{ifname}"))
    }

    pub(crate) fn is_complete(&self) -> bool {
        MAPS.iter().all(|m| self.map(m).exists())
            && ATTACHABLE.iter().all(|(_, _, p)| self.prog(p).exists())
    }
}

pub(crate) fn remove_pin(path: &Path) -> Result<(), DataplaneError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DataplaneError::Link {
            path: path.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// What identifies the programs a dataplane loads: a digest of this binary's eBPF object
/// and the load-time variant. Recorded in `<layout>/object` by whoever pinned the
/// programs; a different one means another build's programs run there.
pub(crate) fn object_identity(trace: bool) -> String {
    use sha2::Digest as _;
    let digest = hex_digest(&sha2::Sha256::digest(EBPF_OBJECT));
    if trace {
        digest
    } else {
        format!("{digest}+without-trace")
    }
}

fn hex_digest(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Prefix of the directory recording the pinned programs' identity: bpffs holds only
/// directories and pinned objects, so the identity is a directory name,
/// `<layout>/object-<identity>`.
const IDENTITY_PREFIX: &str = "object-";

impl PinLayout {
    /// The identity of the programs pinned here (`None`: not recorded).
    pub(crate) fn pinned_identity(&self) -> Option<String> {
        std::fs::read_dir(&self.root)
            .ok()?
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix(IDENTITY_PREFIX))
                    .map(str::to_owned)
            })
            .next()
    }

    /// Forgets which build pinned the programs: done before any program pin is
    /// replaced, so a crash half-way leaves no identity and the next start loads again.
    pub(crate) fn clear_identity(&self) -> Result<(), DataplaneError> {
        while let Some(old) = self.pinned_identity() {
            let path = self.root.join(format!("{IDENTITY_PREFIX}{old}"));
            std::fs::remove_dir(&path).map_err(pin_dir_err(&path))?;
        }
        Ok(())
    }

    /// Records which build's programs run here: after every link runs them.
    pub(crate) fn record_identity(&self, identity: &str) -> Result<(), DataplaneError> {
        self.clear_identity()?;
        let path = self.root.join(format!("{IDENTITY_PREFIX}{identity}"));
        std::fs::create_dir(&path).map_err(pin_dir_err(&path))
    }
}

/// One map's definition, as the kernel and the object describe it.
#[derive(Debug, PartialEq, Eq)]
struct MapShape {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
}

impl std::fmt::Display for MapShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "type {} key {} B value {} B max {} flags {:#x}",
            self.map_type, self.key_size, self.value_size, self.max_entries, self.flags
        )
    }
}

/// Refuses (changing nothing) when a pinned map's definition differs from the one this
/// binary's programs expect. Maps not pinned yet are fine: they are created.
pub(crate) fn check_map_layouts(layout: &PinLayout) -> Result<(), DataplaneError> {
    let object = aya_obj::Object::parse(EBPF_OBJECT)
        .map_err(|e| DataplaneError::BadObject(e.to_string()))?;
    for name in MAPS {
        let path = layout.map(name);
        if !path.exists() {
            continue;
        }
        let Some(def) = object.maps.get(name) else {
            continue;
        };
        let embedded = MapShape {
            map_type: def.map_type(),
            key_size: def.key_size(),
            value_size: def.value_size(),
            max_entries: def.max_entries(),
            flags: def.map_flags(),
        };
        let info = MapData::from_pin(&path)
            .and_then(|m| m.info())
            .map_err(map_err(name))?;
        let pinned = MapShape {
            map_type: info.map_type().map_err(map_err(name))? as u32,
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        };
        if pinned != embedded {
            return Err(DataplaneError::MapLayoutChanged {
                map: name,
                embedded: embedded.to_string(),
                pinned: pinned.to_string(),
            });
        }
    }
    Ok(())
}

/// Whether this binary carries its eBPF object (not built with `AYA_BUILD_SKIP`).
pub fn object_embedded() -> bool {
    !EBPF_OBJECT.is_empty()
}

/// Loads the embedded object, reusing pinned maps when present, and pins the programs
/// (replacing the pins of programs another build left: links keep running those until
/// they are moved to these). The identity of what is pinned is forgotten first; the
/// dataplane records it again once an apply has moved every link
/// (see `Dataplane::apply`).
pub(crate) fn load_and_pin(layout: &PinLayout, trace: bool) -> Result<(), DataplaneError> {
    if EBPF_OBJECT.is_empty() {
        return Err(DataplaneError::ObjectMissing);
    }
    for dir in [&layout.maps, &layout.progs, &layout.links] {
        std::fs::create_dir_all(dir).map_err(pin_dir_err(dir))?;
    }
    layout.clear_identity()?;
    let pins: Vec<(&str, PathBuf)> = MAPS.iter().map(|m| (*m, layout.map(m))).collect();
    let mut ebpf = load_production_with(&pins, trace)?;
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

/// Removes the pins of older layout versions under the same pin directory: their
/// netlink filters are detached (they sit at the priority and handle this version
/// attaches at, which the kernel would refuse to take twice), unpinning their TCX links
/// detaches those, and their maps go with the last reference. Called just before this
/// version attaches, so the old and new programs never both run on a hook (which would
/// translate twice). Failures are logged, never fatal.
pub(crate) fn retire_older_layouts(layout: &PinLayout) {
    let Some(pin_dir) = layout.root.parent() else {
        return;
    };
    for old in OLDER_PIN_LAYOUTS {
        let root = pin_dir.join(old);
        if !root.exists() {
            continue;
        }
        if let Ok(entries) = std::fs::read_dir(root.join("links")) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(("netlink", _, direction, Some(ifname))) =
                    crate::attach::parse_link_name(&name)
                    && let Ok(link) = aya::programs::tc::SchedClassifierLink::attached(
                        &ifname,
                        crate::attach::tc_attach_type(direction),
                        crate::attach::NETLINK_PRIORITY,
                        crate::attach::NETLINK_HANDLE,
                        None,
                    )
                {
                    // Detaches on drop.
                    drop(link);
                    info!(interface = %ifname, %direction, layout = old, "detached an older layout's filter");
                }
            }
        }
        match std::fs::remove_dir_all(&root) {
            Ok(()) => info!(path = %root.display(), "retired an older dataplane layout"),
            Err(e) => {
                warn!(path = %root.display(), error = %e, "could not retire an older dataplane layout")
            }
        }
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
pub(crate) fn load_production(pins: &[(&str, PathBuf)]) -> Result<aya::Ebpf, DataplaneError> {
    load_production_with(pins, true)
}

fn load_production_with(
    pins: &[(&str, PathBuf)],
    trace: bool,
) -> Result<aya::Ebpf, DataplaneError> {
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
    match load_patched(pins, ctx.as_ref(), trace) {
        Err(e) if ctx.is_some() => {
            // Never lose the dataplane over the fast path: without the kfunc the programs
            // are the same, with the helper for every checksum.
            warn!(error = %e, "loading with direct checksum writes failed; loading without");
            load_patched(pins, None, trace)
        }
        other => other,
    }
}

/// Loads the production object with its marker calls patched for `ctx` (see [`kctx`]).
pub(crate) fn load_patched(
    pins: &[(&str, PathBuf)],
    ctx: Option<&kctx::KernelCtx>,
    trace: bool,
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
        .override_global(kctx::globals::TRACE_BUILT, &u32::from(trace), true)
        .load(kctx::words_as_bytes(&object)[..EBPF_OBJECT.len()].as_ref())
        .map_err(|e| DataplaneError::Load(Box::new(e)))
}

/// Loads the embedded object without pinning anything, for packet tests and benchmarks
/// (`BPF_PROG_TEST_RUN`). The returned object owns private maps.
pub fn load_unpinned() -> Result<aya::Ebpf, DataplaneError> {
    load_production(&[])
}

/// [`load_unpinned`] with the trace compiled out at load time (the verifier removes it),
/// for benchmarks measuring what the trace costs while none runs.
pub fn load_unpinned_without_trace() -> Result<aya::Ebpf, DataplaneError> {
    load_production_with(&[], false)
}
