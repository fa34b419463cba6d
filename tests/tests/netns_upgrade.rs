//! Upgrades of the dataplane's programs in place: a build whose programs differ from the
//! pinned ones (here: the same object loaded without its trace code, so the difference
//! is visible — the old programs report packets to a running trace, the new ones do
//! not) replaces them on the live links atomically while a pod pings across the remap
//! every 10 ms, keeping the maps and their counters; and a build whose maps would not
//! fit the pinned ones is refused with nothing changed. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;
use std::time::Duration;

use remapd::dataplane::trace::{KernelTraceFilter, KernelTraceTap, TraceTap};
use remapd::dataplane::{AttachMode, DataplaneError};
use remapd_tests::netns::ping;
use remapd_tests::topology::{Topology, seed_cluster, seed_split};

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// Packets the programs of `gateway` report while pod1 pings pod2 three times.
fn traced_packets(t: &Topology, gateway: u8) -> usize {
    let mut tap = KernelTraceTap::open_pinned(&t.dataplane_config(gateway)).unwrap();
    tap.set(Some(&KernelTraceFilter::default())).unwrap();
    let (_, rx) = ping(&t.pod1, ip("30.0.0.1"), 3, "0.1");
    assert!(rx >= 2, "ping 30.0.0.1: {rx}/3");
    std::thread::sleep(Duration::from_millis(100));
    let mut events = vec![];
    tap.drain(&mut events, usize::MAX);
    tap.set(None).unwrap();
    events.len()
}

fn rule_packets(t: &Topology, gateway: u8) -> Vec<(String, u64)> {
    t.status(gateway)
        .rules
        .iter()
        .map(|r| (r.rule.to_string(), r.packets))
        .collect()
}

fn upgrade_under_a_10ms_ping(mode: AttachMode) {
    let (plan1, plan2) = seed_split();
    let t = Topology::build(&seed_cluster(), &seed_cluster(), &plan1, &plan2);
    t.apply_with(1, &plan1, mode);
    t.apply_with(2, &plan2, mode);
    // The running build traces; count what it did so far.
    assert!(
        traced_packets(&t, 1) >= 4,
        "the pinned programs report to a trace"
    );
    let ids_before = t.status(1).program_ids;
    let counters_before = rule_packets(&t, 1);
    assert!(
        counters_before.iter().all(|(_, n)| *n > 0),
        "{counters_before:?}"
    );

    // 400 pings, one every 10 ms, while both gateways switch builds.
    let (tx, rx) = std::thread::scope(|s| {
        let pinger = s.spawn(|| ping(&t.pod1, ip("30.0.0.1"), 400, "0.01"));
        std::thread::sleep(Duration::from_millis(1000));
        for (gateway, plan) in [(1, &plan1), (2, &plan2)] {
            let mut config = t.dataplane_config(gateway);
            config.attach_mode = mode;
            config.without_trace = true;
            let (_, upgraded) = t.try_apply_config(gateway, plan, config).unwrap();
            assert!(
                upgraded,
                "gateway {gateway}: another build's programs were replaced"
            );
        }
        pinger.join().unwrap()
    });
    assert_eq!(tx, 400);
    assert!(
        tx - rx <= 1,
        "lost {} of {tx} pings during the upgrade",
        tx - rx
    );

    // New programs, on the same links: they no longer report to a trace.
    let ids_after = t.status(1).program_ids;
    for (name, id) in &ids_after {
        assert_ne!(ids_before.get(name), Some(id), "{name} was replaced");
    }
    assert_eq!(traced_packets(&t, 1), 0, "the links run the new programs");
    // The maps were kept: every counter went on from where it was.
    let counters_after = rule_packets(&t, 1);
    for ((rule, before), (rule_after, after)) in counters_before.iter().zip(&counters_after) {
        assert_eq!(rule, rule_after);
        assert!(
            *after >= before + u64::from(rx),
            "{rule}: {before} before, {after} after {rx} pings"
        );
    }
    // Opening again with the same build adopts: nothing is replaced twice.
    let mut config = t.dataplane_config(1);
    config.attach_mode = mode;
    config.without_trace = true;
    let (report, upgraded) = t.try_apply_config(1, &plan1, config).unwrap();
    assert!(!upgraded);
    assert!(report.is_noop(), "{report:?}");
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn a_new_build_replaces_the_programs_on_their_tcx_links_without_losing_a_ping() {
    upgrade_under_a_10ms_ping(AttachMode::Tcx);
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn a_new_build_replaces_the_programs_in_their_netlink_filters_without_losing_a_ping() {
    upgrade_under_a_10ms_ping(AttachMode::Netlink);
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn a_build_whose_maps_do_not_fit_is_refused_and_the_old_programs_keep_running() {
    let (plan1, plan2) = seed_split();
    let t = Topology::build(&seed_cluster(), &seed_cluster(), &plan1, &plan2);
    t.apply(1, &plan1);
    t.apply(2, &plan2);
    let ids_before = t.status(1).program_ids;
    // A map of another shape pinned where a map of ours is (the running programs keep
    // the one they were loaded with).
    let pin = t
        .dataplane_config(1)
        .pin_dir
        .join(remapd::dataplane::PIN_LAYOUT_VERSION)
        .join("maps")
        .join(remapd_common::TRACE_LOST_MAP);
    std::fs::remove_file(&pin).unwrap();
    let bench = remapd::dataplane::load_bench_object().unwrap();
    bench
        .map(remapd_common::bench_programs::REFERENCE_MAP)
        .unwrap()
        .pin(&pin)
        .unwrap();

    let mut config = t.dataplane_config(1);
    config.without_trace = true;
    let err = t.try_apply_config(1, &plan1, config).unwrap_err();
    assert!(
        matches!(err, DataplaneError::MapLayoutChanged { map, .. } if map == remapd_common::TRACE_LOST_MAP),
        "{err}"
    );
    assert!(
        err.to_string().contains("the running programs were kept"),
        "{err}"
    );
    // Nothing changed: the same programs, still translating.
    assert_eq!(t.status(1).program_ids, ids_before);
    let (_, rx) = ping(&t.pod1, ip("30.0.0.1"), 3, "0.2");
    assert!(rx >= 2, "the peering still works: {rx}/3");
}
