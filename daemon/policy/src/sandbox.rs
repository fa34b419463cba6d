//! What a running policy is given: the contract's `log`, and — for components built by
//! toolchains that always import WASI (componentize-py, componentize-js) — a WASI 0.2
//! that grants nothing.
//!
//! The deny-everything WASI: no preopened directories (every path is "not found"), no
//! environment variables, no arguments, an empty stdin, stdout thrown away, stderr
//! kept (bounded) for the error message when the policy traps, no network: TCP, UDP
//! and name lookups are refused before any address is checked. The wall clock always
//! reads the Unix epoch, the monotonic clock never advances, timers are ready at once
//! (a `sleep` returns immediately: a host call that waits would hold the daemon's
//! reconciler, since fuel and deadlines only count while wasm runs), and "random" bytes
//! are a fixed sequence: a policy cannot make its decision depend on when, where or how
//! often it runs, nor wait. Imports outside WASI 0.2's cli, clocks, filesystem, io, random and
//! sockets packages (e.g. wasi:http) are refused when the component is compiled.

use std::time::Duration;

use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime::{ResourceLimiter, StoreLimits};
use wasmtime_wasi::p2::pipe::SinkOutputStream;
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};
use wasmtime_wasi::{
    Deterministic, HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView,
    WasiView,
};

use crate::bindings;
use crate::bindings::remap::policy::types as wit;
use crate::tail_pipe::TailPipe;

/// The WASI packages a policy may import (each at any 0.2.x version the linker has).
/// Everything in them is present but grants nothing (see the module docs).
pub(crate) const WASI_PACKAGES: [&str; 6] = [
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:filesystem/",
    "wasi:io/",
    "wasi:random/",
    "wasi:sockets/",
];

/// The bytes WASI's random interfaces return, repeated: fixed so a decision never
/// depends on them.
const RANDOM_SEED: &[u8; 32] = b"remapd policy: no randomness :-)";

/// True when `import` (a component import name) is a WASI interface a policy may use.
pub(crate) fn is_allowed_wasi(import: &str) -> bool {
    WASI_PACKAGES.iter().any(|p| import.starts_with(p))
        && import
            .rsplit_once('@')
            .is_some_and(|(_, v)| v.starts_with("0.2."))
}

/// A wall clock stopped at the Unix epoch.
struct EpochClock;

impl HostWallClock for EpochClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

/// A monotonic clock that never advances.
struct StoppedClock;

impl HostMonotonicClock for StoppedClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// The version of `wasi:clocks` wasmtime-wasi's bindings register (components built
/// for any 0.2.x are linked to it).
const WASI_CLOCKS_MONOTONIC: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// A timer that is always due.
struct Due;

#[wasmtime_wasi::async_trait]
impl Pollable for Due {
    async fn ready(&mut self) {}
}

/// Replaces WASI's monotonic-clock timers (`subscribe-duration`, `subscribe-instant`)
/// with timers that are due at once. Called after WASI is added to `linker`.
pub(crate) fn add_timers_due_at_once(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance(WASI_CLOCKS_MONOTONIC)?;
    for name in ["subscribe-duration", "subscribe-instant"] {
        clock.func_wrap(
            name,
            |mut store: wasmtime::StoreContextMut<'_, HostState>,
             (_,): (u64,)|
             -> wasmtime::Result<(Resource<DynPollable>,)> {
                let table = &mut store.data_mut().table;
                let due = table.push(Due)?;
                Ok((subscribe(table, due)?,))
            },
        )?;
    }
    linker.allow_shadowing(false);
    Ok(())
}

/// WASI resources (streams, pollables) one call may hold at once. A policy needs a
/// handful; wasmtime's default (a million) would let a hostile one fill host memory,
/// outside its linear-memory limit, by creating pollables in a loop.
const MAX_RESOURCES: usize = 4096;

/// One call's resource limits: wasmtime's [`StoreLimits`] (each linear memory, each
/// table, and how many instances, tables and memories) plus a cap on all linear
/// memories together. A component may hold several memories (an interpreter links a
/// dozen modules), each within the per-memory limit; without the cap, a hostile one
/// could take that limit once per memory it declares.
pub(crate) struct CallLimits {
    each: StoreLimits,
    /// Bytes of linear memory the call's instances hold now (memories never shrink).
    total: usize,
    max_total: usize,
    /// Whether going over `max_total` traps (as `each` does with
    /// `trap_on_grow_failure`) or only fails the growth (`memory.grow` returns -1).
    trap: bool,
}

impl CallLimits {
    /// `each` per memory and table, and at most `max_total` bytes of memory in all;
    /// `trap`: going over traps, as `each`'s `trap_on_grow_failure` should say too.
    pub(crate) fn new(each: StoreLimits, max_total: usize, trap: bool) -> Self {
        Self {
            each,
            total: 0,
            max_total,
            trap,
        }
    }
}

impl ResourceLimiter for CallLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // The per-memory limit and the memory's declared maximum first: a growth they
        // refuse is not counted.
        if !self.each.memory_growing(current, desired, maximum)? {
            return Ok(false);
        }
        let total = self.total.saturating_add(desired.saturating_sub(current));
        if total > self.max_total {
            if !self.trap {
                return Ok(false);
            }
            wasmtime::bail!(
                "growing a memory to {desired} bytes would take the policy's memories to \
                 {total} bytes in all, over its limit of {}",
                self.max_total
            );
        }
        // Counted once allowed. Should the allocation itself then fail, the call traps
        // (`trap_on_grow_failure`) and its store is dropped with this count.
        self.total = total;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.each.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.each.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.each.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.each.instances()
    }

    fn tables(&self) -> usize {
        self.each.tables()
    }

    fn memories(&self) -> usize {
        self.each.memories()
    }
}

/// Everything one policy call has: its log, limits and (empty) WASI.
pub(crate) struct HostState {
    pub(crate) limits: CallLimits,
    pub(crate) log: Vec<String>,
    pub(crate) log_bytes: usize,
    pub(crate) log_dropped: usize,
    pub(crate) max_log_bytes: usize,
    wasi: WasiCtx,
    table: ResourceTable,
    stderr: TailPipe,
}

impl HostState {
    /// A fresh state for one call: `max_log_bytes` of log (and as much stderr).
    pub(crate) fn new(limits: CallLimits, max_log_bytes: usize) -> Self {
        let stderr = TailPipe::new(max_log_bytes);
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(SinkOutputStream)
            .stderr(stderr.clone())
            .wall_clock(EpochClock)
            .monotonic_clock(StoppedClock)
            .secure_random(Deterministic::new(RANDOM_SEED.to_vec()))
            .insecure_random(Deterministic::new(RANDOM_SEED.to_vec()))
            .insecure_random_seed(0)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }));
        Self {
            limits,
            log: Vec::new(),
            log_bytes: 0,
            log_dropped: 0,
            max_log_bytes,
            wasi: wasi.build(),
            table: {
                let mut table = ResourceTable::new();
                table.set_max_capacity(MAX_RESOURCES);
                table
            },
            stderr,
        }
    }

    /// The last line the policy wrote to stderr (an uncaught exception's message).
    pub(crate) fn stderr_tail(&self) -> Option<String> {
        let bytes = self.stderr.contents();
        let text = String::from_utf8_lossy(&bytes);
        text.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.trim().chars().take(512).collect())
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::PolicyImports for HostState {
    fn log(&mut self, message: String) {
        if self.log_bytes + message.len() > self.max_log_bytes {
            self.log_dropped += 1;
            return;
        }
        self.log_bytes += message.len();
        self.log.push(message);
    }
}

// The `types` interface has no functions; its (empty) host trait is still required.
impl wit::Host for HostState {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wasi_0_2_of_the_listed_packages_is_allowed() {
        assert!(is_allowed_wasi("wasi:cli/environment@0.2.3"));
        assert!(is_allowed_wasi("wasi:sockets/tcp@0.2.0"));
        assert!(!is_allowed_wasi("wasi:http/outgoing-handler@0.2.3"));
        assert!(!is_allowed_wasi("wasi:cli/environment@0.3.0"));
        assert!(!is_allowed_wasi("wasi:cli/environment"));
        assert!(!is_allowed_wasi("evil:cli/environment@0.2.0"));
    }

    const MIB: usize = 1 << 20;

    fn limits(each: usize, total: usize) -> CallLimits {
        CallLimits::new(
            wasmtime::StoreLimitsBuilder::new()
                .memory_size(each)
                .memories(8)
                .trap_on_grow_failure(true)
                .build(),
            total,
            true,
        )
    }

    /// A core module with `n` memories of `mib` MiB each, built and instantiated with
    /// `limits`: whether instantiation was allowed.
    fn instantiate(n: u32, mib: u64, limits: CallLimits) -> Result<(), String> {
        let mut module = wasm_encoder::Module::new();
        let mut memories = wasm_encoder::MemorySection::new();
        for _ in 0..n {
            memories.memory(wasm_encoder::MemoryType {
                minimum: mib * 16,
                maximum: None,
                memory64: false,
                shared: false,
                page_size_log2: None,
            });
        }
        module.section(&memories);
        let engine = wasmtime::Engine::default();
        let module = wasmtime::Module::new(&engine, module.finish()).map_err(|e| e.to_string())?;
        let mut store = wasmtime::Store::new(&engine, limits);
        store.limiter(|l| l);
        wasmtime::Instance::new(&mut store, &module, &[])
            .map(|_| ())
            .map_err(|e| format!("{e:#}"))
    }

    /// Several memories, each within the per-memory limit, cannot add up past the
    /// policy's memory limit: the memory that would cross it traps.
    #[test]
    fn all_memories_together_stay_within_the_limit() {
        // One memory of 40 MiB, or two of 30: within 64 MiB.
        instantiate(1, 40, limits(64 * MIB, 64 * MIB)).unwrap();
        instantiate(2, 30, limits(64 * MIB, 64 * MIB)).unwrap();
        // Three of 30 MiB: each is allowed, together they are not.
        let e = instantiate(3, 30, limits(64 * MIB, 64 * MIB)).unwrap_err();
        assert!(e.contains("over its limit of 67108864"), "{e}");
        // The per-memory limit still holds on its own.
        let e = instantiate(1, 65, limits(64 * MIB, 1024 * MIB)).unwrap_err();
        assert!(e.contains("forcing trap"), "{e}");

        // Growth counts too, and a refused growth is not counted.
        let mut l = limits(64 * MIB, 64 * MIB);
        assert!(l.memory_growing(0, 32 * MIB, None).unwrap());
        assert!(l.memory_growing(0, 16 * MIB, None).unwrap());
        assert!(l.memory_growing(16 * MIB, 40 * MIB, None).is_err());
        assert!(l.memory_growing(16 * MIB, 32 * MIB, None).unwrap());
        assert_eq!(l.total, 64 * MIB);

        // A growth the memory's own maximum refuses is not counted; without trapping,
        // going over the total fails the growth instead.
        let mut l = CallLimits::new(
            wasmtime::StoreLimitsBuilder::new()
                .memory_size(64 * MIB)
                .build(),
            64 * MIB,
            false,
        );
        assert!(!l.memory_growing(0, 32 * MIB, Some(16 * MIB)).unwrap());
        assert_eq!(l.total, 0);
        assert!(l.memory_growing(0, 48 * MIB, None).unwrap());
        assert!(!l.memory_growing(0, 32 * MIB, None).unwrap());
        assert_eq!(l.total, 48 * MIB);
    }

    /// A call's WASI resource table refuses entries past `MAX_RESOURCES`: host memory a
    /// policy can make the host hold is bounded like its own.
    #[test]
    fn a_call_holds_a_bounded_number_of_resources() {
        let mut state = HostState::new(limits(64 * MIB, 64 * MIB), 1024);
        let mut pushed = 0;
        while pushed <= MAX_RESOURCES {
            if state.table.push(Due).is_err() {
                break;
            }
            pushed += 1;
        }
        assert_eq!(pushed, MAX_RESOURCES);
    }
}
