//! `remapd policy …`: tools for policy authors that need no daemon, no root and no
//! kernel. They load a component (a `.wasm` file, or a built-in by name) into the same
//! sandbox the daemon uses, with the same limits, and feed it the same JSON the
//! evaluate endpoint (`POST /v1/policies/{name}/evaluate`) takes, with the local
//! cluster (the body of `PUT /v1/cluster`) from a file.
//!
//! - `check`: does the component load (contract version, imports, size)?
//! - `run`: one decision, printed with its validation result, the compiled plan, the
//!   policy's log, the fuel it used and the time it took.
//! - `test`: a directory of cases, each an input and the expected decision (or the
//!   expected error); a readable diff for every mismatch.
//! - `bench`: warm decision latency, as the daemon pays it (a fresh store and instance
//!   per decision).
//!
//! The sandbox limits are the daemon's: those of the configuration given with
//! `--config` (or `REMAPD_CONFIG`), else the defaults — `[policy.by_name.<name>]` where
//! it names the policy (a built-in's name, or the component file's name without
//! `.wasm`: upload it under that name for the daemon to apply the same), else `[policy]`.
//!
//! Exit codes: 0 success; 1 the policy failed (refused, trapped, rejected, a test case
//! did not match); 64 bad usage or input files (what `sysexits.h` calls `EX_USAGE`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{Value, json};

use remapd_api::policies::EvaluateRequest;
use remapd_model::model::{Capabilities, LocalCluster, PolicyInput};
use remapd_model::plan::compile;
use remapd_policy_host::{
    CompiledCache, CompiledPolicy, PolicyEngine, PolicyLimits, PolicyRegistry, validate,
};

/// What `remapd policy` can do.
#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Load a component and say whether the daemon would take it.
    Check {
        /// A `.wasm` component, or the name of a built-in (`split`, `both-on-2`, `auto`).
        policy: String,
    },
    /// Decide one input and print the decision, its validation, the plan, the log, the
    /// fuel used and the time taken (JSON).
    Run {
        /// A `.wasm` component, or the name of a built-in.
        policy: String,
        /// The decision's input.
        #[command(flatten)]
        input: InputArgs,
    },
    /// Run every case (`*.json`) in a directory; exit 1 if any does not match.
    ///
    /// A case: `{"cluster": {...}, "input": {"remote": {...}, "settings": {...}},
    /// "allocated": [...], "expect": {"decision": {...}} | {"error": "text it contains"}}`
    /// (`allocated`, what other peerings hold, is optional).
    Test {
        /// A `.wasm` component, or the name of a built-in.
        policy: String,
        /// The directory of cases.
        dir: PathBuf,
    },
    /// Measure warm decision latency: each decision in a fresh store and instance, as
    /// the daemon runs them.
    Bench {
        /// A `.wasm` component, or the name of a built-in.
        policy: String,
        /// The decision's input.
        #[command(flatten)]
        input: InputArgs,
        /// Decisions to time.
        #[arg(long, default_value_t = 500)]
        calls: u32,
    },
}

/// The input of one decision.
#[derive(Args, Debug)]
pub struct InputArgs {
    /// The local cluster: the JSON body of `PUT /v1/cluster`.
    #[arg(long)]
    cluster: PathBuf,
    /// The peering: the JSON body of the evaluate endpoint (`{"remote": ..., "settings":
    /// ...}`); `-` reads it from standard input.
    input: PathBuf,
    /// Remapped CIDRs other peerings hold (comma-separated).
    #[arg(long, value_delimiter = ',')]
    allocated: Vec<IpNet>,
    /// Decide as for a gateway that cannot translate (no eBPF dataplane).
    #[arg(long)]
    no_nat: bool,
}

const EX_USAGE: u8 = 64;

/// Why a command stopped: bad usage or input (64), or the policy failed (1).
enum Failure {
    Usage(String),
    Policy(String),
}

/// The name whose `[policy.by_name]` limits apply to `command`'s policy: a built-in's
/// name, or the component file's name without its extension.
pub fn limits_name(command: &PolicyCommand) -> String {
    let policy = match command {
        PolicyCommand::Check { policy }
        | PolicyCommand::Run { policy, .. }
        | PolicyCommand::Test { policy, .. }
        | PolicyCommand::Bench { policy, .. } => policy,
    };
    Path::new(policy)
        .file_stem()
        .map_or_else(|| policy.clone(), |s| s.to_string_lossy().into_owned())
}

/// Runs `command` with `limits` (the daemon's, from its configuration, or the
/// defaults); what it prints goes to standard output, errors to standard error.
pub fn run(command: PolicyCommand, limits: PolicyLimits) -> ExitCode {
    let result = match command {
        PolicyCommand::Check { policy } => check(&policy, limits),
        PolicyCommand::Run { policy, input } => run_one(&policy, &input, limits),
        PolicyCommand::Test { policy, dir } => test(&policy, &dir, limits),
        PolicyCommand::Bench {
            policy,
            input,
            calls,
        } => bench(&policy, &input, calls, limits),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("remapd policy: {e}");
            ExitCode::from(EX_USAGE)
        }
        Err(Failure::Policy(e)) => {
            eprintln!("remapd policy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// An engine with `limits`, keeping compiled components of interpreter size in the
/// user's cache (see [`compiled_cache_dir`]) so the next call does not compile again.
fn engine(limits: PolicyLimits) -> Result<Arc<PolicyEngine>, Failure> {
    let engine = PolicyEngine::new(limits)
        .map_err(|e| Failure::Policy(format!("starting the policy engine: {e}")))?;
    let engine = match compiled_cache_dir().map(|dir| (CompiledCache::open(&dir), dir)) {
        Some((Ok(cache), _)) => engine.with_compiled_cache(cache),
        Some((Err(e), dir)) => {
            eprintln!(
                "remapd policy: not caching compiled policies in {}: {e}",
                dir.display()
            );
            engine
        }
        None => engine,
    };
    Ok(Arc::new(engine))
}

/// Where `remapd policy` keeps compiled components: `$REMAPD_POLICY_CACHE`, else
/// `$XDG_CACHE_HOME/remapd/compiled`, else `~/.cache/remapd/compiled`;
/// `REMAPD_POLICY_CACHE=off` keeps nothing.
fn compiled_cache_dir() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    match std::env::var_os("REMAPD_POLICY_CACHE") {
        Some(v) if v == "off" => None,
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|base| base.join("remapd").join("compiled")),
    }
}

/// The component named by `policy`: a file if one exists at that path, else a
/// built-in. Returns where it came from and the compiled component.
fn load(
    engine: &Arc<PolicyEngine>,
    policy: &str,
) -> Result<(String, Arc<CompiledPolicy>), Failure> {
    let path = Path::new(policy);
    if path.exists() {
        let max = engine.limits().component_bytes;
        let size = std::fs::metadata(path)
            .map_err(|e| Failure::Usage(format!("{policy}: {e}")))?
            .len();
        if size > max as u64 {
            return Err(Failure::Policy(format!(
                "{policy}: component is {size} bytes, more than the {max} allowed"
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| Failure::Usage(format!("{policy}: {e}")))?;
        let compiled = engine
            .compile(&bytes)
            .map_err(|e| Failure::Policy(format!("{policy}: {e}")))?;
        return Ok((path.display().to_string(), compiled));
    }
    let registry = PolicyRegistry::with_builtins(engine.clone())
        .map_err(|e| Failure::Policy(e.to_string()))?;
    match registry.get(policy) {
        Some(named) => Ok((format!("built-in {policy}"), named.compiled)),
        None => Err(Failure::Usage(format!(
            "{policy}: no such file, and not a built-in policy (split, both-on-2, auto)"
        ))),
    }
}

fn read_json(path: &Path) -> Result<Value, Failure> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| Failure::Usage(format!("standard input: {e}")))?
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?
    };
    serde_json::from_str(&text).map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))
}

/// Parses `value` as `T` with the API's own rules, naming the offending field.
fn parse<T: serde::de::DeserializeOwned>(value: Value, what: &str) -> Result<T, Failure> {
    serde_path_to_error::deserialize(value)
        .map_err(|e| Failure::Usage(format!("{what}: at {}: {}", e.path(), e.inner())))
}

/// The policy's input, built and checked as the daemon builds and checks it.
fn policy_input(
    cluster: Value,
    request: Value,
    allocated: Vec<IpNet>,
    nat: bool,
) -> Result<(PolicyInput, LocalCluster), Failure> {
    let local: LocalCluster = parse(cluster, "cluster")?;
    remapd_api::cluster::validate_cluster(&local)
        .map_err(|p| Failure::Usage(format!("cluster: {}", problem_text(&p))))?;
    let request: EvaluateRequest = parse(request, "input")?;
    remapd_api::peerings::validate_remote(&request.remote)
        .map_err(|p| Failure::Usage(format!("input: {}", problem_text(&p))))?;
    Ok((
        PolicyInput {
            local: local.clone(),
            local_capabilities: Capabilities { nat_dataplane: nat },
            allocated,
            remote: request.remote,
            settings: request.settings,
        },
        local,
    ))
}

fn problem_text(p: &remapd_api::problem::Problem) -> String {
    match &p.pointer {
        Some(pointer) => format!("{} (at {pointer})", p.detail),
        None => p.detail.clone(),
    }
}

fn check(policy: &str, limits: PolicyLimits) -> Result<(), Failure> {
    let engine = engine(limits)?;
    let started = std::time::Instant::now();
    let (source, compiled) = load(&engine, policy)?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let (imports, exports) = engine.interface(&compiled);
    let report = json!({
        "policy": source,
        "ok": true,
        "contract": compiled.contract,
        "families": compiled.families(),
        "adapted": compiled.adaptation(),
        "size": compiled.size,
        "sha256": compiled.sha256,
        "load_ms": (load_ms * 10.0).round() / 10.0,
        "language": compiled.language,
        "wasi": if compiled.imports_wasi {
            "imported: granted nothing (no files, environment, network; fixed clock and randomness)"
        } else {
            "not imported"
        },
        "imports": imports,
        "exports": exports,
    });
    println!("{}", pretty(&report));
    Ok(())
}

/// One decision: the policy's answer, validated and compiled, as JSON; `Err` (after
/// printing) when the policy failed or its decision was rejected.
fn decide(
    engine: &PolicyEngine,
    compiled: &CompiledPolicy,
    input: &PolicyInput,
    local: &LocalCluster,
) -> (Value, Result<(), String>) {
    let call = match engine.call(compiled, input) {
        Ok(call) => call,
        Err(e) => {
            let report = json!({ "decision": null, "error": e.to_string() });
            return (report, Err(e.to_string()));
        }
    };
    let validation = validate::validate(input, &call.decision).map_err(|e| e.to_string());
    let plan = match &validation {
        Ok(()) => compile(
            local,
            input.local_capabilities,
            &input.remote,
            "rmd-policy-run",
            &call.decision,
        )
        .map_err(|e| e.to_string()),
        Err(e) => Err(e.clone()),
    };
    let report = json!({
        "decision": call.decision,
        "validation": match &validation { Ok(()) => "ok".to_owned(), Err(e) => format!("rejected: {e}") },
        "plan": plan.as_ref().ok(),
        "plan_error": match (&validation, &plan) { (Ok(()), Err(e)) => Some(e.clone()), _ => None },
        "log": call.log,
        "fuel_used": call.fuel_used,
        "elapsed_us": call.elapsed.as_micros() as u64,
    });
    (report, plan.map(|_| ()))
}

fn run_one(policy: &str, args: &InputArgs, limits: PolicyLimits) -> Result<(), Failure> {
    let engine = engine(limits)?;
    let (source, compiled) = load(&engine, policy)?;
    let (input, local) = policy_input(
        read_json(&args.cluster)?,
        read_json(&args.input)?,
        args.allocated.clone(),
        !args.no_nat,
    )?;
    let (mut report, outcome) = decide(&engine, &compiled, &input, &local);
    report["policy"] = json!(source);
    println!("{}", pretty(&report));
    outcome.map_err(Failure::Policy)
}

/// One case of `remapd policy test`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    cluster: Value,
    input: Value,
    #[serde(default)]
    allocated: Vec<IpNet>,
    #[serde(default = "yes")]
    nat: bool,
    expect: Expect,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum Expect {
    /// The decision, exactly.
    Decision(Value),
    /// The policy fails (refuses, traps, or its decision is rejected) with a message
    /// containing this.
    Error(String),
}

fn test(policy: &str, dir: &Path, limits: PolicyLimits) -> Result<(), Failure> {
    let engine = engine(limits)?;
    let (source, compiled) = load(&engine, policy)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Failure::Usage(format!("{}: {e}", dir.display())))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Failure::Usage(format!(
            "{}: no test cases (*.json)",
            dir.display()
        )));
    }
    let mut failed = BTreeMap::new();
    for file in &files {
        let name = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let case: Case = parse(read_json(file)?, &file.display().to_string())?;
        let (input, local) = policy_input(case.cluster, case.input, case.allocated, case.nat)
            .map_err(|f| match f {
                Failure::Usage(e) | Failure::Policy(e) => {
                    Failure::Usage(format!("{}: {e}", file.display()))
                }
            })?;
        let (report, outcome) = decide(&engine, &compiled, &input, &local);
        let mismatch = match (&case.expect, outcome) {
            (Expect::Decision(want), Ok(())) => {
                let got = &report["decision"];
                (got != want).then(|| diff(want, got))
            }
            (Expect::Decision(want), Err(e)) => Some(format!(
                "expected a decision, the policy failed: {e}\n{}",
                diff(want, &Value::Null)
            )),
            (Expect::Error(text), Err(e)) => (!e.contains(text.as_str()))
                .then(|| format!("expected an error containing {text:?}, got: {e}")),
            (Expect::Error(text), Ok(())) => Some(format!(
                "expected an error containing {text:?}, got the decision:\n{}",
                pretty(&report["decision"])
            )),
        };
        match mismatch {
            None => println!("ok   {name}"),
            Some(why) => {
                println!("FAIL {name}");
                for line in why.lines() {
                    println!("     {line}");
                }
                failed.insert(name, why);
            }
        }
    }
    println!(
        "{source}: {} passed, {} failed",
        files.len() - failed.len(),
        failed.len()
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::Policy(format!(
            "{} of {} cases failed: {}",
            failed.len(),
            files.len(),
            failed.keys().cloned().collect::<Vec<_>>().join(", ")
        )))
    }
}

/// A line diff of two JSON values, pretty-printed: `-` expected, `+` got.
fn diff(want: &Value, got: &Value) -> String {
    let (want, got) = (pretty(want), pretty(got));
    let mut out = String::from("--- expected\n+++ got\n");
    for change in similar::TextDiff::from_lines(&want, &got).iter_all_changes() {
        let sign = match change.tag() {
            similar::ChangeTag::Delete => '-',
            similar::ChangeTag::Insert => '+',
            similar::ChangeTag::Equal => ' ',
        };
        out.push(sign);
        out.push_str(change.value());
        if !change.value().ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

fn bench(policy: &str, args: &InputArgs, calls: u32, limits: PolicyLimits) -> Result<(), Failure> {
    if calls == 0 {
        return Err(Failure::Usage("--calls must be at least 1".into()));
    }
    let engine = engine(limits)?;
    let (source, compiled) = load(&engine, policy)?;
    let (input, _) = policy_input(
        read_json(&args.cluster)?,
        read_json(&args.input)?,
        args.allocated.clone(),
        !args.no_nat,
    )?;
    // One decision first: a failing policy is reported, not timed; it also warms up.
    let first = engine
        .decide(&compiled, &input)
        .map_err(|e| Failure::Policy(e.to_string()))?;
    let mut times: Vec<Duration> = Vec::with_capacity(calls as usize);
    for _ in 0..calls {
        let eval = engine
            .decide(&compiled, &input)
            .map_err(|e| Failure::Policy(e.to_string()))?;
        times.push(eval.elapsed);
    }
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{source}: {calls} warm decisions (fresh store and instance each, validation included), strategy {}",
        first.decision.strategy
    );
    println!(
        "min {:.1} µs, median {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        us(times[0]),
        us(at(0.5)),
        us(at(0.99)),
        us(times[times.len() - 1])
    );
    // Where the time goes: one instance, reused (what the daemon does not do).
    let (instantiate, per_call) = engine
        .time_calls_in_one_instance(&compiled, &input, calls)
        .map_err(|e| Failure::Policy(e.to_string()))?;
    println!(
        "breakdown: instantiate {:.1} µs; a call in a live instance {:.1} µs",
        us(instantiate),
        us(per_call)
    );
    Ok(())
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}
