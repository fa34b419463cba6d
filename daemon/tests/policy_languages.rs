//! Policies written in Python (componentize-py) and JavaScript (componentize-js) in the
//! policy host: they decide exactly like the Rust built-in they re-implement, over many
//! inputs; they get a WASI that grants nothing; a component importing anything beyond
//! that WASI is refused, naming the import. The components are built by
//! `scripts/build-policies.sh` (`make policies`; `make test` runs it first).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net};
use remapd::model::{Capabilities, LocalCluster, PolicyInput, RemoteCluster};
use remapd::policy::{PolicyEngine, PolicyError, PolicyLimits, builtin};

fn language_policy(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/policies")
        .join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run `bash scripts/build-policies.sh` (make policies; make test runs it)",
            path.display()
        )
    })
}

/// A small deterministic generator (no dependency, same inputs every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u32) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as u32) % below
    }
}

fn net(rng: &mut Lcg, first_octets: &[u8], lens: &[u8]) -> IpNet {
    let len = lens[rng.next(lens.len() as u32) as usize];
    let a = first_octets[rng.next(first_octets.len() as u32) as usize];
    let addr = u32::from_be_bytes([a, rng.next(4) as u8 * 64, rng.next(2) as u8 * 128, 0]);
    Ipv4Net::new(addr.into(), len).unwrap().trunc().into()
}

/// Inputs that exercise every branch of `split`: overlapping and disjoint remote CIDRs,
/// services, reserved space and held views in the pool's way, pools too small, and
/// remotes without the NAT dataplane. Inputs the daemon itself would refuse (a pool
/// overlapping the cluster) are skipped, as the daemon never asks a policy about them.
fn inputs() -> Vec<PolicyInput> {
    let mut rng = Lcg(7);
    let mut out = Vec::new();
    while out.len() < 60 {
        let local_pods = vec![net(&mut rng, &[10, 40], &[16, 20, 24])];
        let pool = vec![net(&mut rng, &[100], &[10, 16, 22])];
        let allocated = (0..rng.next(3))
            .map(|_| net(&mut rng, &[100], &[20, 24]))
            .filter(|a| pool.iter().any(|p| p.contains(a)))
            .collect::<Vec<_>>();
        let remote_pods = (0..1 + rng.next(2))
            .map(|_| net(&mut rng, &[10, 40, 50], &[16, 24]))
            .collect::<Vec<_>>();
        let remote_services = (0..rng.next(2))
            .map(|_| net(&mut rng, &[10, 50], &[12, 24]))
            .collect::<Vec<_>>();
        let overlap = |a: &IpNet, b: &IpNet| a.contains(&b.network()) || b.contains(&a.network());
        let all_remote: Vec<_> = remote_pods.iter().chain(&remote_services).collect();
        if pool
            .iter()
            .any(|p| local_pods.iter().any(|l| overlap(p, l)))
            || all_remote
                .iter()
                .enumerate()
                .any(|(i, a)| all_remote[i + 1..].iter().any(|b| overlap(a, b)))
        {
            continue;
        }
        out.push(PolicyInput {
            local: LocalCluster {
                name: "cluster-1".into(),
                pod_cidrs: local_pods,
                service_cidrs: vec![],
                reserved_cidrs: vec![],
                remap_pool: pool,
            },
            local_capabilities: Capabilities {
                nat_dataplane: true,
            },
            allocated,
            remote: RemoteCluster {
                name: format!("cluster-{}", out.len() + 2),
                pod_cidrs: remote_pods,
                service_cidrs: remote_services,
                capabilities: Capabilities {
                    nat_dataplane: rng.next(8) != 0,
                },
                view_of_local: None,
            },
            settings: Default::default(),
        });
    }
    out
}

/// What a call answered, comparable across languages: the decision, or the refusal.
fn answer(
    engine: &PolicyEngine,
    policy: &remapd::policy::CompiledPolicy,
    input: &PolicyInput,
) -> String {
    match engine.call(policy, input) {
        Ok(call) => format!("{:?} {:?}", call.decision, call.log),
        Err(PolicyError::Refused(message)) => format!("refused: {message}"),
        Err(other) => panic!("{other} for {input:?}"),
    }
}

#[test]
fn python_and_javascript_split_decide_exactly_like_the_rust_builtin() {
    let engine = Arc::new(PolicyEngine::new(PolicyLimits::default()).unwrap());
    let rust = engine.compile(builtin::SPLIT).unwrap();
    let python = engine.compile(&language_policy("split-py")).unwrap();
    let javascript = engine.compile(&language_policy("split-js")).unwrap();
    assert!(!rust.imports_wasi && python.imports_wasi && javascript.imports_wasi);
    let (mut decided, mut refused) = (0, 0);
    for input in inputs() {
        let want = answer(&engine, &rust, &input);
        if want.starts_with("refused") {
            refused += 1;
        } else {
            decided += 1;
        }
        assert_eq!(answer(&engine, &python, &input), want, "Python, {input:?}");
        assert_eq!(
            answer(&engine, &javascript, &input),
            want,
            "JavaScript, {input:?}"
        );
    }
    // The generator must reach both outcomes, or the comparison proves little.
    assert!(
        decided >= 20 && refused >= 5,
        "decided {decided}, refused {refused}"
    );
}

#[test]
fn a_component_importing_more_than_the_empty_wasi_is_refused_naming_the_import() {
    let engine = PolicyEngine::new(PolicyLimits::default()).unwrap();
    for import in [
        "wasi:http/types@0.2.0",
        "wasi:cli/environment@0.3.0",
        "acme:secrets/vault@1.0.0",
    ] {
        let mut builder = wasm_encoder::ComponentBuilder::default();
        let instance = builder.type_instance(None, &wasm_encoder::InstanceType::new());
        builder.import(import, wasm_encoder::ComponentTypeRef::Instance(instance));
        let err = engine.compile(&builder.finish()).unwrap_err().to_string();
        assert!(err.contains(import), "{err}");
        assert!(err.contains("a WASI 0.2 that grants nothing"), "{err}");
    }
}

#[test]
fn interpreters_fit_the_default_limits_with_room_to_spare() {
    // The defaults are documented as sized for an interpreter: one decision of each
    // language's policy must use well under them (half), so ordinary policy logic fits.
    let limits = PolicyLimits::default();
    let engine = PolicyEngine::new(limits.clone()).unwrap();
    let input = &inputs()[0];
    for name in ["split-py", "split-js"] {
        let bytes = language_policy(name);
        assert!(
            bytes.len() < limits.component_bytes / 2 + limits.component_bytes / 4,
            "{name}: {} bytes",
            bytes.len()
        );
        let policy = engine.compile(&bytes).unwrap();
        let call = engine.call(&policy, input).unwrap();
        assert!(
            call.fuel_used < limits.fuel / 2,
            "{name}: fuel {}",
            call.fuel_used
        );
    }
}

#[test]
fn compiled_components_are_kept_on_disk_reused_and_replaced_when_damaged() {
    use remapd::policy::CompiledCache;
    let dir = std::env::temp_dir().join(format!("remapd-compiled-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let engine = || {
        PolicyEngine::new(PolicyLimits::default())
            .unwrap()
            .with_compiled_cache(CompiledCache::open(&dir).unwrap())
    };
    let bytes = language_policy("split-js");
    let input = &inputs()[0];
    let first = engine();
    let policy = first.compile(&bytes).unwrap();
    first.compile(builtin::SPLIT).unwrap();
    let entries = || {
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
    };
    // Only the interpreter-sized component is kept (the built-in compiles in ms).
    let entry = format!("{}.cwasm", policy.sha256);
    assert_eq!(entries(), vec![entry.clone()]);
    let want = answer(&first, &policy, input);

    // A new engine (a restart) decides the same with what it loads from the cache.
    let second = engine();
    assert_eq!(
        answer(&second, &second.compile(&bytes).unwrap(), input),
        want
    );

    // A damaged entry is compiled again and replaced, never trusted.
    std::fs::write(dir.join(&entry), b"garbage").unwrap();
    let third = engine();
    assert_eq!(answer(&third, &third.compile(&bytes).unwrap(), input), want);
    assert!(std::fs::metadata(dir.join(&entry)).unwrap().len() > 1 << 20);

    // What no policy uses any more is removed.
    third.compiled_cache().unwrap().retain(&[]);
    assert!(entries().is_empty());

    // A directory another user owns is refused: its files would run as our code.
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let err = CompiledCache::open(&dir).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A policy that sleeps for an hour (Python's `time.sleep`, a WASI timer) neither holds
/// the host — fuel and deadlines only count while wasm runs, so a host call that waited
/// would hold the daemon's reconciler — nor learns the time: its timers are due at once.
#[test]
fn a_sleeping_policy_does_not_hold_the_host() {
    let engine = Arc::new(PolicyEngine::new(PolicyLimits::default()).unwrap());
    let policy = engine.compile(&language_policy("snoop-py")).unwrap();
    let input = inputs()[0].clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = engine.clone();
    std::thread::spawn(move || {
        let _ = tx.send(worker.call(&policy, &input).map(|c| c.log));
    });
    // A liveness bound (the sleep asked for an hour), not a performance check.
    let log = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the policy's sleep held the host")
        .unwrap();
    assert!(
        log.iter().any(|l| l == "sleep: None then monotonic 0"),
        "{log:?}"
    );
}
