//! The policy host against built-in and hostile policies: every misbehaviour ends in a
//! clear error within a bounded time, nothing invalid gets through, and the engine keeps
//! working afterwards. The hostile components are built here from `tests/policies/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use remapd::model::{Capabilities, LocalCluster, Mapping, PolicyInput, RemoteCluster, Strategy};
use remapd::policy::{
    PolicyEngine, PolicyError, PolicyLimits, PolicyRegistry, RegistryError, builtin,
};

fn n(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn seed_input() -> PolicyInput {
    PolicyInput {
        local: LocalCluster {
            name: "cluster-1".into(),
            pod_cidrs: vec![n("40.0.0.0/24")],
            service_cidrs: vec![],
            reserved_cidrs: vec![],
            remap_pool: vec![n("30.0.0.0/16")],
        },
        local_capabilities: Capabilities {
            nat_dataplane: true,
        },
        allocated: vec![n("30.0.7.0/24")],
        remote: RemoteCluster {
            name: "cluster-2".into(),
            pod_cidrs: vec![n("40.0.0.0/24")],
            service_cidrs: vec![],
            capabilities: Capabilities {
                nat_dataplane: true,
            },
            view_of_local: None,
        },
        settings: Default::default(),
    }
}

fn component(dir: &str) -> Vec<u8> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("policy-components");
    remapd_policy_build::build_policy(&root.join(dir), &target)
        .unwrap_or_else(|e| panic!("building {dir}: {e:#}"))
}

fn hostile() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| component("tests/policies/hostile"))
}

fn registry() -> PolicyRegistry {
    registry_with_timeout(Duration::from_millis(300))
}

fn registry_with_timeout(timeout: Duration) -> PolicyRegistry {
    let limits = PolicyLimits {
        timeout,
        ..PolicyLimits::default()
    };
    PolicyRegistry::with_builtins(Arc::new(PolicyEngine::new(limits).unwrap())).unwrap()
}

fn with_mode(mode: &str) -> PolicyInput {
    let mut input = seed_input();
    input.settings.insert("mode".into(), mode.into());
    input
}

#[test]
fn builtin_auto_decides_the_seed_like_its_native_build() {
    let reg = registry();
    let input = seed_input();
    let eval = reg.decide("auto", &input).unwrap();
    assert_eq!(eval.decision.strategy, Strategy::Split);
    assert_eq!(
        eval.decision.mappings,
        vec![Mapping {
            real: n("40.0.0.0/24"),
            remapped: n("30.0.0.0/24")
        }]
    );
    assert!(
        eval.log.iter().any(|l| l.contains("auto with cluster-2")),
        "{:?}",
        eval.log
    );
    // The same input always gives the same decision.
    for _ in 0..5 {
        assert_eq!(reg.decide("auto", &input).unwrap().decision, eval.decision);
    }
    // And the wasm build agrees with the same code compiled natively.
    use remapd_policy_sdk::{Policy, testing};
    let native = remapd_policy_auto::Auto::decide(&testing::input(
        &["40.0.0.0/24"],
        &["30.0.0.0/16"],
        &["40.0.0.0/24"],
    ));
    assert_eq!(
        native.unwrap().mappings[0].remapped.to_string(),
        "30.0.0.0/24"
    );
}

#[test]
fn builtins_cover_every_strategy() {
    let reg = registry();
    let mut disjoint = seed_input();
    disjoint.remote.pod_cidrs = vec![n("50.0.0.0/24")];
    assert_eq!(
        reg.decide("auto", &disjoint).unwrap().decision.strategy,
        Strategy::None
    );
    let mut no_nat = seed_input();
    no_nat.remote.capabilities.nat_dataplane = false;
    assert_eq!(
        reg.decide("auto", &no_nat).unwrap().decision.strategy,
        Strategy::BothOnLocal
    );
    assert_eq!(
        reg.decide("both-on-2", &seed_input())
            .unwrap()
            .decision
            .strategy,
        Strategy::BothOnRemote
    );
    assert_eq!(
        reg.decide("split", &seed_input())
            .unwrap()
            .decision
            .strategy,
        Strategy::Split
    );
    let err = reg.decide("split", &no_nat).unwrap_err().to_string();
    assert!(err.contains("cannot run the NAT dataplane"), "{err}");
}

/// Runs the hostile policy in `mode`, checks the error and the time it took, and that
/// the engine still works afterwards.
fn expect_failure(
    reg: &PolicyRegistry,
    mode: &str,
    check: impl Fn(&PolicyError) -> bool,
    text: &str,
) {
    let started = Instant::now();
    let err = match reg.decide("hostile", &with_mode(mode)) {
        Err(RegistryError::Policy(e)) => e,
        Err(other) => panic!("{mode}: unexpected error {other}"),
        Ok(eval) => panic!(
            "{mode}: the hostile policy was accepted: {:?}",
            eval.decision
        ),
    };
    let elapsed = started.elapsed();
    assert!(check(&err), "{mode}: unexpected error kind: {err:?}");
    assert!(
        err.to_string().contains(text),
        "{mode}: {text:?} not in {err}"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "{mode}: took {elapsed:?}"
    );
    // Still healthy.
    assert_eq!(
        reg.decide("auto", &seed_input()).unwrap().decision.strategy,
        Strategy::Split
    );
}

#[test]
fn hostile_policies_fail_cleanly() {
    let reg = registry();
    reg.put("hostile", hostile()).unwrap();
    // Behaving, it passes.
    assert_eq!(
        reg.decide("hostile", &with_mode("behave"))
            .unwrap()
            .decision
            .strategy,
        Strategy::Split
    );

    expect_failure(
        &reg,
        "loop",
        |e| {
            matches!(
                e,
                PolicyError::OutOfFuel { .. } | PolicyError::Timeout { .. }
            )
        },
        "",
    );
    expect_failure(
        &reg,
        "memory",
        |e| matches!(e, PolicyError::Trap { .. }),
        "trapped",
    );
    expect_failure(
        &reg,
        "panic",
        |e| matches!(e, PolicyError::Trap { .. }),
        "deliberate panic in the hostile policy",
    );
    expect_failure(
        &reg,
        "huge-output",
        |e| matches!(e, PolicyError::Malformed(_) | PolicyError::Trap { .. }),
        "",
    );
    expect_failure(
        &reg,
        "huge-error",
        |e| matches!(e, PolicyError::Refused(m) if m.len() <= 1024),
        "refused",
    );
    expect_failure(
        &reg,
        "hijack",
        |e| matches!(e, PolicyError::Rejected(_)),
        "overlaps local pod CIDR 40.0.0.0/24",
    );
    expect_failure(
        &reg,
        "collide",
        |e| matches!(e, PolicyError::Rejected(_)),
        "held by another peering",
    );
    expect_failure(
        &reg,
        "bad-prefix",
        |e| matches!(e, PolicyError::Malformed(_)),
        "prefix length 40",
    );
    expect_failure(
        &reg,
        "bad-prefix6",
        |e| matches!(e, PolicyError::Malformed(_)),
        "prefix length 130 is not valid for IPv6 (0-128)",
    );

    // A log flood is cut at the limit but the decision stands. 100,000 host calls
    // take about the 300 ms above in a debug build on a slow machine: what is tested
    // here is the cap, not the speed, so this call gets room.
    let reg = registry_with_timeout(Duration::from_secs(30));
    reg.put("hostile", hostile()).unwrap();
    let eval = reg.decide("hostile", &with_mode("log-flood")).unwrap();
    let bytes: usize = eval.log.iter().map(String::len).sum();
    assert!(
        bytes <= reg.engine().limits().log_bytes,
        "{bytes} log bytes kept"
    );
}

#[test]
fn fuel_bounds_a_loop_even_without_the_deadline() {
    let limits = PolicyLimits {
        fuel: 5_000_000,
        timeout: Duration::from_secs(60),
        ..PolicyLimits::default()
    };
    let reg = PolicyRegistry::with_builtins(Arc::new(PolicyEngine::new(limits).unwrap())).unwrap();
    reg.put("hostile", hostile()).unwrap();
    let err = reg
        .decide("hostile", &with_mode("loop"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("used up its fuel"), "{err}");
}

/// Limits by name: the same component under two names runs under each name's limits
/// (a pinned reference `name@sha256:...` under its name's), the rest under the defaults.
#[test]
fn a_policy_named_in_the_limits_runs_under_its_own() {
    let tight = PolicyLimits {
        fuel: 1_000,
        ..PolicyLimits::default()
    };
    let engine = PolicyEngine::new(PolicyLimits::default())
        .unwrap()
        .with_limits_by_name([("tight".to_owned(), tight)].into());
    let reg = PolicyRegistry::with_builtins(Arc::new(engine)).unwrap();
    let tight = reg.put("tight", builtin::SPLIT).unwrap();
    reg.put("roomy", builtin::SPLIT).unwrap();
    let input = seed_input();
    let err = reg.decide("tight", &input).unwrap_err().to_string();
    assert!(err.contains("used up its fuel (1000 units)"), "{err}");
    let pinned = format!("tight@sha256:{}", tight.compiled.sha256);
    assert_eq!(reg.engine().limits_for(&pinned).fuel, 1_000);
    let roomy = reg.decide("roomy", &input).unwrap();
    assert!(
        roomy.fuel_used > 1_000,
        "the defaults let it finish: {roomy:?}"
    );
    reg.decide("split", &input).unwrap();
}

#[test]
fn the_deadline_bounds_a_loop_when_fuel_is_plenty() {
    let limits = PolicyLimits {
        fuel: u64::MAX / 2,
        timeout: Duration::from_millis(100),
        ..PolicyLimits::default()
    };
    let reg = PolicyRegistry::with_builtins(Arc::new(PolicyEngine::new(limits).unwrap())).unwrap();
    reg.put("hostile", hostile()).unwrap();
    let started = Instant::now();
    let err = reg
        .decide("hostile", &with_mode("loop"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("time limit"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn components_that_are_not_ours_are_refused_at_upload() {
    let reg = registry();
    let wrong = component("tests/policies/wrong-version");
    let err = reg.put("future", &wrong).unwrap_err().to_string();
    assert!(
        err.contains("built for remap:policy@0.9.0")
            && err.contains("speaks remap:policy@0.2.0 and remap:policy@0.1.0"),
        "{err}"
    );

    let err = reg
        .put("garbage", b"this is not wasm at all")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a WebAssembly binary"), "{err}");
    let err = reg.put("core", b"\0asm\x01\0\0\0").unwrap_err().to_string();
    assert!(
        err.contains("core WebAssembly module, not a component"),
        "{err}"
    );
    let err = reg
        .put("native", b"\x7fELF\x02\x01\x01\0rest")
        .unwrap_err()
        .to_string();
    assert!(err.contains("precompiled native artifact"), "{err}");
    let err = reg.put("Bad_Name", builtin::AUTO).unwrap_err().to_string();
    assert!(err.contains("not valid"), "{err}");
    let err = reg.put("auto", hostile()).unwrap_err().to_string();
    assert!(err.contains("built in"), "{err}");
    // None of that changed anything.
    let names: Vec<String> = reg.list().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["auto", "both-on-2", "split"]);
}

#[test]
fn replacing_a_policy_is_atomic_for_calls_in_flight() {
    let reg = Arc::new(registry());
    reg.put("mine", builtin::SPLIT).unwrap();
    let before = reg.get("mine").unwrap();
    // A call holding the old policy finishes on it after the replacement lands.
    reg.put("mine", builtin::BOTH_ON_2).unwrap();
    let old = reg
        .engine()
        .decide(&before.compiled, &seed_input())
        .unwrap();
    assert_eq!(old.decision.strategy, Strategy::Split);
    let new = reg.decide("mine", &seed_input()).unwrap();
    assert_eq!(new.decision.strategy, Strategy::BothOnRemote);
    // A failed replacement keeps the old one.
    assert!(reg.put("mine", b"junk").is_err());
    assert_eq!(
        reg.decide("mine", &seed_input()).unwrap().decision.strategy,
        Strategy::BothOnRemote
    );
    reg.remove("mine").unwrap();
    assert!(reg.get("mine").is_none());
    assert!(reg.remove("auto").is_err());
}
