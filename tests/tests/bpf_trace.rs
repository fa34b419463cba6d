//! The trace's kernel side with BPF_PROG_TEST_RUN: what the programs report for each
//! packet while a trace runs (and that they report nothing otherwise), the filters
//! they apply, and the count of events lost to a full buffer. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use remapd::dataplane::Direction;
use remapd::dataplane::trace::{KernelTraceFilter, TraceTap};
use remapd_common::{
    DIRECTION_EGRESS, DIRECTION_INGRESS, TRACE_DROPPED, TRACE_FLAG_IPV4, TRACE_FLAG_QUOTE,
    TRACE_RING_BYTES, TRACE_TRANSLATED, drop_reason,
};
use remapd_tests::bpf::{BpfHarness, TEST_RUN_IFINDEX, VERDICT_DROP, VERDICT_NEXT};
use remapd_tests::cases::{
    BOTH, program, split_gw1, split_gw1_with_border, tcp_packet, udp_packet,
};
use remapd_tests::packet::{Ipv4, icmp};

fn be(a: &str) -> u32 {
    u32::from(a.parse::<std::net::Ipv4Addr>().unwrap())
}

fn trace_all(h: &mut BpfHarness) {
    h.trace().set(Some(&KernelTraceFilter::default())).unwrap();
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn nothing_is_reported_while_no_trace_runs() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        split_gw1(&mut h);
        let input = framing.frame(&tcp_packet("40.0.0.1", "30.0.0.1", b"hi"));
        assert_eq!(
            h.run(program(framing, Direction::Egress), &input).verdict,
            VERDICT_NEXT
        );
        assert!(h.trace_events().is_empty());
        // And after a trace ends.
        trace_all(&mut h);
        h.trace().set(None).unwrap();
        h.run(program(framing, Direction::Egress), &input);
        assert!(h.trace_events().is_empty());
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn a_translated_packet_is_reported_before_and_after_with_its_rule() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        let (egress, ingress) = split_gw1(&mut h);
        trace_all(&mut h);
        let input = framing.frame(&tcp_packet("40.0.0.1", "30.0.0.7", b"hello"));
        assert_eq!(
            h.run(program(framing, Direction::Egress), &input).verdict,
            VERDICT_NEXT
        );
        let events = h.trace_events();
        assert_eq!(events.len(), 1, "{framing:?}");
        let e = events[0];
        assert_eq!(
            (e.ifindex, e.direction),
            (TEST_RUN_IFINDEX, DIRECTION_EGRESS)
        );
        assert_eq!(
            (e.src_before, e.dst_before),
            (be("40.0.0.1"), be("30.0.0.7"))
        );
        assert_eq!((e.src_after, e.dst_after), (be("40.0.0.1"), be("40.0.0.7")));
        assert_eq!((e.src_rule, e.dst_rule), (u32::MAX, egress));
        assert_eq!((e.protocol, e.src_port, e.dst_port), (6, 40000, 80));
        assert_eq!(e.verdict, TRACE_TRANSLATED as u8);
        assert_eq!(e.flags, TRACE_FLAG_IPV4);
        assert_eq!(e.len as usize, input.len());
        assert!(e.time_ns > 0);

        // The reply on ingress: the source rule.
        let reply = framing.frame(&udp_packet("40.0.0.7", "40.0.0.1", b"back", true));
        h.run(program(framing, Direction::Ingress), &reply);
        let e = h.trace_events()[0];
        assert_eq!(e.direction, DIRECTION_INGRESS);
        assert_eq!(
            (e.src_before, e.src_after),
            (be("40.0.0.7"), be("30.0.0.7"))
        );
        assert_eq!((e.src_rule, e.dst_rule), (ingress, u32::MAX));
        assert_eq!((e.protocol, e.src_port, e.dst_port), (17, 5353, 9999));
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn a_dropped_packet_is_reported_with_its_reason_and_untouched_ones_are_not() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        let (_, ingress) = split_gw1_with_border(&mut h);
        trace_all(&mut h);
        // From the peer to a local address the cluster did not export.
        let input = framing.frame(&udp_packet("40.0.0.7", "10.1.2.3", b"x", true));
        assert_eq!(
            h.run(program(framing, Direction::Ingress), &input).verdict,
            VERDICT_DROP
        );
        let events = h.trace_events();
        assert_eq!(events.len(), 1);
        let e = events[0];
        assert_eq!(e.verdict, TRACE_DROPPED as u8);
        assert_eq!(usize::from(e.reason), drop_reason::NOT_EXPORTED);
        assert_eq!(e.src_rule, ingress, "the rule that would have applied");
        // Nothing was written: after is as before.
        assert_eq!((e.src_after, e.dst_after), (be("40.0.0.7"), be("10.1.2.3")));
        // A packet egress passes untouched (no rule) is not an event.
        let other = framing.frame(&tcp_packet("40.0.0.1", "8.8.8.8", b"x"));
        assert_eq!(
            h.run(program(framing, Direction::Egress), &other).verdict,
            VERDICT_NEXT
        );
        assert!(h.trace_events().is_empty());
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn an_icmp_error_is_reported_once_with_its_quote_flag() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        split_gw1(&mut h);
        trace_all(&mut h);
        // Pod 2 (real 40.0.0.7) answers pod 1's UDP with port unreachable.
        let quoted = udp_packet("40.0.0.1", "40.0.0.7", b"q", true);
        let error = Ipv4::new("40.0.0.7", "40.0.0.1", 1).with_payload(&icmp(3, 3, [0; 4], &quoted));
        h.run(program(framing, Direction::Ingress), &framing.frame(&error));
        let events = h.trace_events();
        assert_eq!(events.len(), 1);
        let e = events[0];
        assert_eq!(e.flags & TRACE_FLAG_QUOTE, TRACE_FLAG_QUOTE);
        assert_eq!((e.protocol, e.src_port >> 8, e.src_port & 0xff), (1, 3, 3));
        assert_eq!(e.src_after, be("30.0.0.7"));
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn the_programs_apply_the_kernel_filters() {
    let framing = BOTH[1];
    let mut h = BpfHarness::new();
    split_gw1_with_border(&mut h);
    let tcp = framing.frame(&tcp_packet("40.0.0.1", "30.0.0.7", b"x"));
    let udp = framing.frame(&udp_packet("40.0.0.1", "30.0.0.8", b"x", true));
    let drop = framing.frame(&udp_packet("40.0.0.7", "10.1.2.3", b"x", true));
    let egress = program(framing, Direction::Egress);
    let ingress = program(framing, Direction::Ingress);
    let seen = |h: &mut BpfHarness, filter: KernelTraceFilter| {
        h.trace().set(Some(&filter)).unwrap();
        h.run(egress, &tcp);
        h.run(egress, &udp);
        h.run(ingress, &drop);
        let events = h.trace_events();
        events
            .iter()
            .map(|e| (e.protocol, e.verdict))
            .collect::<Vec<_>>()
    };
    let t = TRACE_TRANSLATED as u8;
    let d = TRACE_DROPPED as u8;
    assert_eq!(
        seen(&mut h, KernelTraceFilter::default()),
        [(6, t), (17, t), (17, d)]
    );
    let udp_only = KernelTraceFilter {
        protocol: Some(17),
        ..Default::default()
    };
    assert_eq!(seen(&mut h, udp_only), [(17, t), (17, d)]);
    let drops = KernelTraceFilter {
        translated: Some(false),
        ..Default::default()
    };
    assert_eq!(seen(&mut h, drops), [(17, d)]);
    // The prefix matches before or after: 30.0.0.7 only before, 40.0.0.8 only after.
    let before = KernelTraceFilter {
        prefix: Some("30.0.0.7/32".parse().unwrap()),
        ..Default::default()
    };
    assert_eq!(seen(&mut h, before), [(6, t)]);
    let after = KernelTraceFilter {
        prefix: Some("40.0.0.8/32".parse().unwrap()),
        ..Default::default()
    };
    assert_eq!(seen(&mut h, after), [(17, t)]);
    let elsewhere = KernelTraceFilter {
        ifindex: Some(TEST_RUN_IFINDEX + 1000),
        ..Default::default()
    };
    assert_eq!(seen(&mut h, elsewhere), []);
    // One in a million: with three packets, almost surely none (a fixed seed is not
    // possible: the kernel's PRNG), so only check it never exceeds the unsampled run.
    let sampled = KernelTraceFilter {
        sample: 1_000_000,
        ..Default::default()
    };
    assert!(seen(&mut h, sampled).len() <= 3);
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn events_that_do_not_fit_the_buffer_are_counted_lost() {
    let framing = BOTH[0];
    let mut h = BpfHarness::new();
    split_gw1_with_border(&mut h);
    trace_all(&mut h);
    // A dropped packet is never modified, so every repetition is dropped and traced.
    let drop = framing.frame(&udp_packet("40.0.0.7", "10.1.2.3", b"x", true));
    let capacity = TRACE_RING_BYTES as usize / 64;
    let runs = capacity as u32 + 5000;
    h.run_repeat(program(framing, Direction::Ingress), &drop, runs);
    let delivered = h.trace_events().len() as u64;
    let lost = h.trace().lost().unwrap();
    assert!(
        delivered > 0 && lost > 0,
        "delivered {delivered}, lost {lost}"
    );
    assert_eq!(
        delivered + lost,
        u64::from(runs),
        "every event delivered or counted lost"
    );
    assert_eq!(
        h.hook_counters(Direction::Ingress).dropped[drop_reason::NOT_EXPORTED],
        u64::from(runs)
    );
}
