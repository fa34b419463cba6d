//! The WASM policy host: compiles policy components once (keyed by sha256), and runs each
//! decision in a fresh, bounded store — fuel, an epoch deadline, a memory limit, a cap on
//! what the policy may log and return — with nothing imported but the contract's `log`
//! and, for components that import it, a WASI that grants nothing (`sandbox.rs`).
//! The same input always gives the same decision: no clock, randomness, filesystem or
//! network, and NaNs canonicalised.
//!
//! Every answer goes through [`validate::validate`] before anyone else sees it.
//!
//! This file is the engine (compile, sandbox, decide); `convert.rs` maps the model to
//! and from the WIT contract; `registry.rs` binds names to compiled components.
#![deny(missing_docs)]

pub use remapd_model::validate;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::{debug, warn};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store, StoreLimitsBuilder};

use remapd_model::model::{Decision, PolicyInput};

/// `remap:policy@0.2.0`, the contract new policies are built against.
mod bindings {
    wasmtime::component::bindgen!({
        path: "../../policy-sdk/wit",
        world: "policy",
    });
}

/// `remap:policy@0.1.0` (IPv4 only), still run: its world imports the same `log` as
/// 0.2.0's, which the one linker provides, so only its exports are bound here.
mod bindings_v1 {
    wasmtime::component::bindgen!({
        path: "../../policy-sdk/wit-0.1.0",
        world: "policy",
    });
}

use bindings::remap::policy::types::{Decision as WitDecision, DecisionInput as WitInput};

mod compiled_cache;
mod convert;
mod registry;
mod sandbox;
mod tail_pipe;

pub use compiled_cache::{CompiledCache, MIN_CACHED_BYTES};

pub use registry::{NamedPolicy, PolicyRegistry, RegistryError, parse_reference};
use sandbox::{CallLimits, HostState};

/// The contract version policies are built against: IPv4 and IPv6.
pub const CONTRACT: &str = "remap:policy@0.2.0";

/// The earlier contract version, still run: IPv4 only. remapd gives such a policy the
/// IPv4 part of its input and refuses peerings whose remote has IPv6 CIDRs.
pub const CONTRACT_V1: &str = "remap:policy@0.1.0";

/// A component's contract, bound for calls.
enum Pre {
    /// `remap:policy@0.2.0`.
    V2(bindings::PolicyPre<HostState>),
    /// `remap:policy@0.1.0`.
    V1(bindings_v1::PolicyPre<HostState>),
}

impl Pre {
    fn instance_pre(&self) -> &wasmtime::component::InstancePre<HostState> {
        match self {
            Self::V2(pre) => pre.instance_pre(),
            Self::V1(pre) => pre.instance_pre(),
        }
    }

    fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<Instance> {
        Ok(match self {
            Self::V2(pre) => Instance::V2(pre.instantiate(store)?),
            Self::V1(pre) => Instance::V1(pre.instantiate(store)?),
        })
    }
}

/// An instance of either contract, called in `remap:policy@0.2.0`'s types.
enum Instance {
    V2(bindings::Policy),
    V1(bindings_v1::Policy),
}

impl Instance {
    /// Calls `decide`; a 0.1.0 component through the adapter (see
    /// [`convert::ipv4_only_refusal`] for what it must not be asked).
    fn decide(
        &self,
        store: &mut Store<HostState>,
        input: &WitInput,
    ) -> wasmtime::Result<Result<WitDecision, String>> {
        match self {
            Self::V2(instance) => instance.call_decide(store, input),
            Self::V1(instance) => Ok(instance
                .call_decide(store, &convert::v1::input(input))?
                .map(convert::v1::decision)),
        }
    }
}

/// Limits on one policy call.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyLimits {
    /// Fuel (roughly, wasm instructions) per call.
    pub fuel: u64,
    /// Wall-clock budget per call.
    pub timeout: Duration,
    /// Linear memory a policy may grow to, in bytes: all its memories together.
    pub memory_bytes: usize,
    /// Bytes of log output kept per call; the rest is dropped (and counted).
    pub log_bytes: usize,
    /// Size of an uploaded component.
    pub component_bytes: usize,
}

impl Default for PolicyLimits {
    fn default() -> Self {
        Self {
            fuel: 200_000_000,
            timeout: Duration::from_millis(500),
            memory_bytes: 64 << 20,
            log_bytes: 16 << 10,
            component_bytes: 32 << 20,
        }
    }
}

/// Why a policy could not be loaded or did not give a usable decision.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The bytes are not WebAssembly.
    #[error("not a WebAssembly binary (expected the \\0asm magic)")]
    NotWasm,
    /// A precompiled artifact: native code is never accepted.
    #[error(
        "this looks like a precompiled native artifact (.cwasm/ELF); upload the .wasm component instead"
    )]
    NativeCode,
    /// A core module rather than a component.
    #[error(
        "this is a core WebAssembly module, not a component; build it with remapd-policy-build (wasm32-unknown-unknown + wit-component)"
    )]
    CoreModule,
    /// Too large.
    #[error("component is {size} bytes, more than the {max} allowed")]
    TooLarge {
        /// Size.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// The component implements no contract version this host speaks.
    #[error("the component does not implement {CONTRACT} (or {CONTRACT_V1}): {reason}")]
    WrongContract {
        /// What is off.
        reason: String,
    },
    /// Compilation failed.
    #[error("compiling the component: {0:#}")]
    Compile(wasmtime::Error),
    /// The call ran out of fuel.
    #[error("the policy used up its fuel ({fuel} units): it ran too long (an endless loop?)")]
    OutOfFuel {
        /// Fuel granted.
        fuel: u64,
    },
    /// The call hit the wall-clock deadline.
    #[error("the policy exceeded its {timeout:?} time limit")]
    Timeout {
        /// Limit.
        timeout: Duration,
    },
    /// The policy trapped (panic, memory limit, unreachable, ...).
    #[error("the policy trapped: {trap}{}", last_log.as_deref().map(|l| format!(" (last log line: {l})")).unwrap_or_default())]
    Trap {
        /// Trap description.
        trap: String,
        /// The last thing it logged (a panic message, with the SDK's hook).
        last_log: Option<String>,
    },
    /// A `remap:policy@0.1.0` policy was asked about a peering with IPv6 CIDRs, which
    /// that contract cannot carry.
    #[error(
        "the policy implements remap:policy@0.1.0, which carries IPv4 only, and the remote has the IPv6 CIDR {cidr}: use a policy built against remap:policy@0.2.0 (the built-ins are)"
    )]
    Ipv4OnlyContract {
        /// The first IPv6 CIDR the policy would have had to map.
        cidr: ipnet::IpNet,
    },
    /// The policy returned an error.
    #[error("the policy refused: {0}")]
    Refused(String),
    /// The policy returned something unusable before validation (e.g. a malformed CIDR).
    #[error("the policy returned a malformed decision: {0}")]
    Malformed(String),
    /// The decision broke a validation rule.
    #[error("the decision was rejected: {0}")]
    Rejected(#[from] validate::DecisionError),
}

/// A compiled policy, ready to instantiate.
pub struct CompiledPolicy {
    /// sha256 of the component bytes, hex.
    pub sha256: String,
    /// Size of the component in bytes.
    pub size: usize,
    /// The contract version it implements (checked when it was compiled): [`CONTRACT`]
    /// or [`CONTRACT_V1`].
    pub contract: &'static str,
    /// It implements [`CONTRACT_V1`], which carries IPv4 only: it is given the IPv4 part
    /// of its input, and a peering whose remote has IPv6 CIDRs is refused.
    pub ipv4_only: bool,
    /// The source language its toolchain recorded (the `producers` custom section:
    /// `Rust`, `Python`, `JavaScript`...), if it says; a hint, not checked.
    pub language: Option<String>,
    /// It imports WASI (toolchains for interpreted languages always do): it gets the
    /// deny-everything WASI of [`sandbox`] and each call runs on a thread of its own.
    pub imports_wasi: bool,
    pre: Pre,
}

impl CompiledPolicy {
    /// The address families it decides: `ipv4` and `ipv6`, or `ipv4` alone for a
    /// [`CONTRACT_V1`] component.
    pub fn families(&self) -> &'static [&'static str] {
        if self.ipv4_only {
            &["ipv4"]
        } else {
            &["ipv4", "ipv6"]
        }
    }

    /// Refuses an input this policy's contract cannot carry: a remote with IPv6 CIDRs
    /// for a [`CONTRACT_V1`] component.
    fn can_decide(&self, input: &PolicyInput) -> Result<(), PolicyError> {
        match convert::ipv4_only_refusal(input).filter(|_| self.ipv4_only) {
            Some(cidr) => Err(PolicyError::Ipv4OnlyContract { cidr }),
            None => Ok(()),
        }
    }

    /// How remapd adapts its contract to the current one, when it does.
    pub fn adaptation(&self) -> Option<String> {
        self.ipv4_only.then(|| {
            format!(
                "built against {CONTRACT_V1} (IPv4 only): it is given the IPv4 part of each peering, and a peering whose remote has IPv6 CIDRs is refused; rebuild it against {CONTRACT} to decide IPv6"
            )
        })
    }
}

/// A decision with what the policy logged.
#[derive(Clone, Debug, Serialize)]
pub struct Evaluation {
    /// The validated decision.
    pub decision: Decision,
    /// Log lines.
    pub log: Vec<String>,
    /// How long the call took.
    pub elapsed: Duration,
    /// Fuel the call used.
    pub fuel_used: u64,
}

/// The source language of a component, as a hint: what the component's own (outermost)
/// `producers` section names (componentize-js says `JavaScript`); else `Python` when a
/// module exports CPython's `Py_Initialize` (componentize-py records no language);
/// else the languages its modules' sections name (`Rust` for ours), joined with `, `.
fn source_language(bytes: &[u8]) -> Option<String> {
    let mut outer: Vec<String> = Vec::new();
    let mut nested: Vec<String> = Vec::new();
    let mut cpython = false;
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else { break };
        match payload {
            wasmparser::Payload::Version { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ExportSection(exports) => {
                cpython |= exports
                    .into_iter()
                    .flatten()
                    .any(|e| e.name == "Py_Initialize");
            }
            wasmparser::Payload::CustomSection(section) => {
                let wasmparser::KnownCustom::Producers(producers) = section.as_known() else {
                    continue;
                };
                let list = if depth <= 1 { &mut outer } else { &mut nested };
                for field in producers.into_iter().flatten() {
                    if field.name != "language" {
                        continue;
                    }
                    for value in field.values.into_iter().flatten() {
                        if !list.iter().any(|l| l == value.name) {
                            list.push(value.name.to_owned());
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if !outer.is_empty() {
        Some(outer.join(", "))
    } else if cpython {
        Some("Python".into())
    } else {
        (!nested.is_empty()).then(|| nested.join(", "))
    }
}

/// One call of a policy, before validation.
#[derive(Clone, Debug, Serialize)]
pub struct Call {
    /// The decision as the policy returned it (not validated).
    pub decision: Decision,
    /// Log lines.
    pub log: Vec<String>,
    /// How long the call took (fresh store, instantiation and the call).
    pub elapsed: Duration,
    /// Fuel the call used (roughly, wasm instructions).
    pub fuel_used: u64,
}

/// The engine and the compile cache.
pub struct PolicyEngine {
    engine: Engine,
    linker: Linker<HostState>,
    limits: PolicyLimits,
    /// Compilations by SHA-256 of their bytes, held weakly: one stays while a name in
    /// the registry, a kept previous version or a running call holds it, and its code
    /// is freed with the last of those (an upload that is deleted leaves nothing).
    cache: RwLock<BTreeMap<String, Weak<CompiledPolicy>>>,
    /// Compiled components kept on disk across restarts, if configured.
    on_disk: Option<CompiledCache>,
    /// Limits for policies by name, where they differ from `limits`.
    by_name: BTreeMap<String, PolicyLimits>,
    ticker_stop: Arc<AtomicBool>,
}

/// Core instances, tables and linear memories one call may create. A Rust policy
/// needs one or two of each; an interpreter built by componentize-py links a dozen
/// modules (libc, the interpreter, WASI adapters). Each memory is bounded by
/// [`PolicyLimits::memory_bytes`], and all of them together too ([`CallLimits`]); only
/// the main one grows in practice.
const MAX_INSTANCES: usize = 64;
const MAX_TABLES: usize = 64;
const MAX_MEMORIES: usize = 8;

/// How often the epoch advances; deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(5);

impl PolicyEngine {
    /// Creates an engine with deterministic, bounded settings and starts its epoch ticker.
    pub fn new(limits: PolicyLimits) -> Result<Self, PolicyError> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .cranelift_nan_canonicalization(true)
            .parallel_compilation(false);
        let engine = Engine::new(&config).map_err(PolicyError::Compile)?;
        let mut linker = Linker::new(&engine);
        bindings::Policy::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(PolicyError::Compile)?;
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(PolicyError::Compile)?;
        sandbox::add_timers_due_at_once(&mut linker).map_err(PolicyError::Compile)?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let stop = ticker_stop.clone();
        std::thread::Builder::new()
            .name("policy-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| PolicyError::Compile(wasmtime::Error::msg(e.to_string())))?;
        Ok(Self {
            engine,
            linker,
            limits,
            cache: RwLock::new(BTreeMap::new()),
            on_disk: None,
            by_name: BTreeMap::new(),
            ticker_stop,
        })
    }

    /// Keeps compiled components of [`MIN_CACHED_BYTES`] or more in `cache` and loads
    /// them from there instead of compiling again.
    pub fn with_compiled_cache(mut self, cache: CompiledCache) -> Self {
        self.on_disk = Some(cache);
        self
    }

    /// Gives the policies named in `by_name` limits of their own (an interpreter-based
    /// policy may need more than the defaults; a simple one can be held to less).
    /// Size limits (`component_bytes`, `log_bytes`) stay the engine's.
    pub fn with_limits_by_name(mut self, by_name: BTreeMap<String, PolicyLimits>) -> Self {
        self.by_name = by_name;
        self
    }

    /// The limits a policy called `name` (or `name@sha256:...`) runs under.
    pub fn limits_for(&self, name: &str) -> &PolicyLimits {
        let base = parse_reference(name).map_or(name, |(base, _)| base);
        self.by_name.get(base).unwrap_or(&self.limits)
    }

    /// The on-disk cache of compiled components, if any.
    pub fn compiled_cache(&self) -> Option<&CompiledCache> {
        self.on_disk.as_ref()
    }

    /// The limits calls run under.
    pub fn limits(&self) -> &PolicyLimits {
        &self.limits
    }

    /// Checks and compiles a component (or returns the cached compilation of the same
    /// bytes). Never accepts precompiled native code.
    pub fn compile(&self, bytes: &[u8]) -> Result<Arc<CompiledPolicy>, PolicyError> {
        if bytes.len() > self.limits.component_bytes {
            return Err(PolicyError::TooLarge {
                size: bytes.len(),
                max: self.limits.component_bytes,
            });
        }
        if bytes.starts_with(b"\x7fELF") {
            return Err(PolicyError::NativeCode);
        }
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(PolicyError::NotWasm);
        }
        if bytes[4..8] == [1, 0, 0, 0] {
            return Err(PolicyError::CoreModule);
        }
        let sha256 = hex::encode(Sha256::digest(bytes));
        if let Some(hit) = self
            .cache
            .read()
            .ok()
            .and_then(|c| c.get(&sha256).and_then(Weak::upgrade))
        {
            return Ok(hit);
        }
        let on_disk = self
            .on_disk
            .as_ref()
            .filter(|_| bytes.len() >= MIN_CACHED_BYTES);
        let (component, compiled_now) = match on_disk.and_then(|c| c.load(&self.engine, &sha256)) {
            Some(component) => (component, false),
            None => (
                Component::new(&self.engine, bytes).map_err(PolicyError::Compile)?,
                true,
            ),
        };
        let (imports_wasi, declared) = check_contract(&self.engine, &component)?;
        let instance_pre =
            self.linker
                .instantiate_pre(&component)
                .map_err(|e| PolicyError::WrongContract {
                    reason: format!("{e:#}"),
                })?;
        let wrong = |e: wasmtime::Error| PolicyError::WrongContract {
            reason: format!("{e:#}"),
        };
        // The types it imports say which version it was built for; a component that
        // imports none (its `decide` uses only types it defines itself) is tried as
        // 0.2.0, then as 0.1.0.
        let pre = match declared {
            Some(CONTRACT_V1) => Pre::V1(bindings_v1::PolicyPre::new(instance_pre).map_err(wrong)?),
            Some(_) => Pre::V2(bindings::PolicyPre::new(instance_pre).map_err(wrong)?),
            None => match bindings::PolicyPre::new(instance_pre.clone()) {
                Ok(pre) => Pre::V2(pre),
                Err(v2) => Pre::V1(bindings_v1::PolicyPre::new(instance_pre).map_err(|v1| {
                    PolicyError::WrongContract {
                        reason: format!("as {CONTRACT}: {v2:#}; as {CONTRACT_V1}: {v1:#}"),
                    }
                })?),
            },
        };
        let (contract, ipv4_only) = match pre {
            Pre::V2(_) => (CONTRACT, false),
            Pre::V1(_) => (CONTRACT_V1, true),
        };
        if let Some(c) = on_disk.filter(|_| compiled_now) {
            c.store(&sha256, pre.instance_pre().component());
        }
        let compiled = Arc::new(CompiledPolicy {
            sha256: sha256.clone(),
            size: bytes.len(),
            contract,
            ipv4_only,
            language: source_language(bytes),
            imports_wasi,
            pre,
        });
        if let Ok(mut cache) = self.cache.write() {
            cache.retain(|_, weak| weak.strong_count() > 0);
            cache.insert(sha256, Arc::downgrade(&compiled));
        }
        Ok(compiled)
    }

    /// How many compilations are alive (held by a name, a kept version or a call).
    pub fn compiled_alive(&self) -> usize {
        self.cache
            .read()
            .map(|c| c.values().filter(|w| w.strong_count() > 0).count())
            .unwrap_or(0)
    }

    /// Asks `policy` for a decision and validates it. Bounded in fuel, time and memory;
    /// a misbehaving policy gives an error, never a panic or a hang.
    pub fn decide(
        &self,
        policy: &CompiledPolicy,
        input: &PolicyInput,
    ) -> Result<Evaluation, PolicyError> {
        self.decide_within(policy, input, &self.limits)
    }

    /// [`PolicyEngine::decide`] under `limits` (e.g. [`PolicyEngine::limits_for`]).
    pub fn decide_within(
        &self,
        policy: &CompiledPolicy,
        input: &PolicyInput,
        limits: &PolicyLimits,
    ) -> Result<Evaluation, PolicyError> {
        let call = self.call_within(policy, input, limits)?;
        validate::validate(input, &call.decision)?;
        debug!(strategy = %call.decision.strategy, elapsed = ?call.elapsed, "policy decided");
        Ok(Evaluation {
            decision: call.decision,
            log: call.log,
            elapsed: call.elapsed,
            fuel_used: call.fuel_used,
        })
    }

    /// What `policy` imports and exports, by name (for authors' tools).
    pub fn interface(&self, policy: &CompiledPolicy) -> (Vec<String>, Vec<String>) {
        let ty = policy.pre.instance_pre().component().component_type();
        (
            ty.imports(&self.engine)
                .map(|(name, _)| name.to_owned())
                .collect(),
            ty.exports(&self.engine)
                .map(|(name, _)| name.to_owned())
                .collect(),
        )
    }

    /// Calls `policy` under the same limits as [`PolicyEngine::decide`] and returns its
    /// decision *unvalidated*, with what it logged and the fuel it used: for authors'
    /// tools that show a decision next to the reason it is rejected.
    pub fn call(&self, policy: &CompiledPolicy, input: &PolicyInput) -> Result<Call, PolicyError> {
        self.call_within(policy, input, &self.limits)
    }

    /// [`PolicyEngine::call`] under `limits`.
    pub fn call_within(
        &self,
        policy: &CompiledPolicy,
        input: &PolicyInput,
        limits: &PolicyLimits,
    ) -> Result<Call, PolicyError> {
        policy.can_decide(input)?;
        if !policy.imports_wasi {
            return self.call_here(policy, input, limits);
        }
        // WASI's synchronous host functions block on a Tokio runtime, which panics on a
        // thread that is already driving one; a thread of its own has none (and the
        // cost, tens of microseconds, is small next to an interpreter's instantiation).
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("policy-call".into())
                .spawn_scoped(scope, || self.call_here(policy, input, limits))
                .map_err(|e| PolicyError::Trap {
                    trap: format!("starting the policy's thread: {e}"),
                    last_log: None,
                })?
                .join()
                .unwrap_or_else(|_| {
                    Err(PolicyError::Trap {
                        trap: "the policy's host thread panicked".into(),
                        last_log: None,
                    })
                })
        })
    }

    /// [`PolicyEngine::call`] on this thread.
    fn call_here(
        &self,
        policy: &CompiledPolicy,
        input: &PolicyInput,
        limits: &PolicyLimits,
    ) -> Result<Call, PolicyError> {
        let started = Instant::now();
        let mut store = Store::new(
            &self.engine,
            HostState::new(
                CallLimits::new(
                    StoreLimitsBuilder::new()
                        .memory_size(limits.memory_bytes)
                        .instances(MAX_INSTANCES)
                        .tables(MAX_TABLES)
                        .memories(MAX_MEMORIES)
                        .trap_on_grow_failure(true)
                        .build(),
                    limits.memory_bytes,
                    true,
                ),
                self.limits.log_bytes,
            ),
        );
        store.limiter(|s| &mut s.limits);
        store.set_fuel(limits.fuel).map_err(PolicyError::Compile)?;
        let ticks = (limits.timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();

        let wit_input = convert::to_wit(input);
        let outcome = policy
            .pre
            .instantiate(&mut store)
            .and_then(|instance| instance.decide(&mut store, &wit_input));
        let elapsed = started.elapsed();
        let log = std::mem::take(&mut store.data_mut().log);
        if store.data().log_dropped > 0 {
            warn!(
                dropped = store.data().log_dropped,
                "policy log over its limit; lines dropped"
            );
        }
        let answer = match outcome {
            Ok(answer) => answer,
            Err(error) => {
                let trap = error.downcast_ref::<wasmtime::Trap>().copied();
                return Err(match trap {
                    Some(wasmtime::Trap::OutOfFuel) => PolicyError::OutOfFuel { fuel: limits.fuel },
                    Some(wasmtime::Trap::Interrupt) => PolicyError::Timeout {
                        timeout: limits.timeout,
                    },
                    _ => PolicyError::Trap {
                        trap: format!("{error:#}"),
                        last_log: store.data().stderr_tail().or_else(|| log.last().cloned()),
                    },
                });
            }
        };
        let decision = match answer {
            Ok(decision) => convert::from_wit(decision).map_err(PolicyError::Malformed)?,
            Err(message) => {
                let mut message = message;
                message.truncate(1024);
                return Err(PolicyError::Refused(message));
            }
        };
        let fuel_used = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        Ok(Call {
            decision,
            log,
            elapsed,
            fuel_used,
        })
    }
}

impl PolicyEngine {
    /// For benchmarks: instantiates once and times `calls` calls in that one instance,
    /// separating the per-call cost of the policy from the cost of a fresh store and
    /// instance (which [`PolicyEngine::decide`] pays every time, on purpose).
    #[doc(hidden)]
    pub fn time_calls_in_one_instance(
        &self,
        policy: &CompiledPolicy,
        input: &PolicyInput,
        calls: u32,
    ) -> Result<(Duration, Duration), PolicyError> {
        let mut store = Store::new(
            &self.engine,
            HostState::new(
                CallLimits::new(
                    StoreLimitsBuilder::new()
                        .memory_size(self.limits.memory_bytes)
                        .build(),
                    self.limits.memory_bytes,
                    false,
                ),
                usize::MAX,
            ),
        );
        store.limiter(|s| &mut s.limits);
        store.set_fuel(u64::MAX).map_err(PolicyError::Compile)?;
        store.set_epoch_deadline(u64::MAX / 2);
        let trap = |e: wasmtime::Error| PolicyError::Trap {
            trap: format!("{e:#}"),
            last_log: None,
        };
        policy.can_decide(input)?;
        let wit_input = convert::to_wit(input);
        let started = Instant::now();
        let instance = policy.pre.instantiate(&mut store).map_err(trap)?;
        let instantiate = started.elapsed();
        let started = Instant::now();
        for _ in 0..calls {
            store.data_mut().log.clear();
            let answer = instance.decide(&mut store, &wit_input).map_err(trap)?;
            std::hint::black_box(answer.map_err(PolicyError::Refused)?);
        }
        Ok((instantiate, started.elapsed() / calls.max(1)))
    }
}

impl std::fmt::Debug for CompiledPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPolicy")
            .field("sha256", &self.sha256)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Drop for PolicyEngine {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// Names the contract mismatch precisely: a version of our package this host does not
/// speak, imports the host does not provide (anything but the contract and the empty
/// WASI 0.2 of [`sandbox`]), or a missing `decide` export. Answers whether it imports
/// WASI, and the contract version its imported types name, if they do.
fn check_contract(
    engine: &Engine,
    component: &Component,
) -> Result<(bool, Option<&'static str>), PolicyError> {
    let ty = component.component_type();
    let (package, _) = CONTRACT.split_once('@').unwrap_or((CONTRACT, ""));
    let mut imports_wasi = false;
    let mut declared = None;
    for (name, _) in ty.imports(engine) {
        if name == "log" {
            continue;
        }
        if let Some(contract) = [CONTRACT, CONTRACT_V1]
            .into_iter()
            .find(|c| name == c.replacen(":policy@", ":policy/types@", 1))
        {
            declared = Some(contract);
            continue;
        }
        if sandbox::is_allowed_wasi(name) {
            imports_wasi = true;
            continue;
        }
        if name.starts_with(package) {
            let version = name
                .rsplit_once('@')
                .map(|(_, v)| v)
                .unwrap_or("an unknown version");
            return Err(PolicyError::WrongContract {
                reason: format!(
                    "it was built for {package}@{version} (it imports {name:?}), this remapd speaks {CONTRACT} and {CONTRACT_V1}"
                ),
            });
        }
        return Err(PolicyError::WrongContract {
            reason: format!(
                "it imports {name:?}, which remapd does not provide (a policy gets the contract's `log` and a WASI 0.2 that grants nothing: {})",
                sandbox::WASI_PACKAGES
                    .map(|p| p.trim_end_matches('/'))
                    .join(", ")
            ),
        });
    }
    if !ty.exports(engine).any(|(name, _)| name == "decide") {
        return Err(PolicyError::WrongContract {
            reason: "it does not export `decide`".into(),
        });
    }
    Ok((imports_wasi, declared))
}

/// The policies remapd ships, as components built from `policies/` by `build.rs`.
pub mod builtin {
    /// `split`: always split.
    pub const SPLIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/policy-split.wasm"));
    /// `both-on-2`: one side does every rewrite.
    pub const BOTH_ON_2: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/policy-both-on-2.wasm"));
    /// `auto` (default): none, both-on-local or split, as the clusters allow.
    pub const AUTO: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/policy-auto.wasm"));
    /// Name of the default policy.
    pub const DEFAULT: &str = remapd_model::model::DEFAULT_POLICY;
    /// All built-ins by name.
    pub const ALL: [(&str, &[u8]); 3] =
        [("split", SPLIT), ("both-on-2", BOTH_ON_2), ("auto", AUTO)];
}
