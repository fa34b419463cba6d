//! Packet tests of the TC programs with BPF_PROG_TEST_RUN: make packet, fill maps, run,
//! compare the exact bytes with an independently built expected packet, and re-verify
//! every checksum with etherparse. Each case runs on L2 (Ethernet) and L3 (tun/WireGuard)
//! framing. Needs root (loads BPF programs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use remapd::dataplane::{AddressField, Direction};
use remapd_common::drop_reason;
use remapd_common::programs;
use remapd_tests::bpf::{BpfHarness, VERDICT_DROP, VERDICT_NEXT};
use remapd_tests::cases::{
    BOTH, NO_DROPS, both_on_2_gw2_ingress, expect_pass, expect_untouched, hex, ip, program,
    split_gw1, tcp_packet, udp_packet,
};
use remapd_tests::packet::{self, Framing, Ipv4, icmp, inet_checksum, tcp, udp};

/// Headroom under the verifier's budget (1,000,000 instructions walked per program): a
/// change that nears it fails here with the figures, rather than as E2BIG on some
/// kernel whose verifier walks a little more.
#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn every_program_verifies_well_within_the_kernels_budget() {
    let h = BpfHarness::new();
    let counts: Vec<(&str, u32)> = [
        programs::L2_INGRESS,
        programs::L2_EGRESS,
        programs::L3_INGRESS,
        programs::L3_EGRESS,
    ]
    .into_iter()
    .map(|p| (p, h.verified_instructions(p)))
    .collect();
    println!("verified instructions: {counts:?}");
    for (program, n) in counts {
        assert!(
            n < 700_000,
            "{program}: the verifier walked {n} instructions"
        );
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn tcp_destination_is_rewritten_on_egress() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        let (egress, _) = split_gw1(&mut h);
        let input = tcp_packet("40.0.0.1", "30.0.0.1", b"hello, cluster two");
        let expected = tcp_packet("40.0.0.1", "40.0.0.1", b"hello, cluster two");
        expect_pass(&mut h, framing, Direction::Egress, &input, &expected);
        let len = framing.frame(&input).len() as u64;
        assert_eq!(h.counters(egress), (1, len), "counters of the egress rule");
        let hook = h.hook_counters(Direction::Egress);
        assert_eq!((hook.packets, hook.bytes, hook.translated), (1, len, 1));
        assert_eq!(hook.dropped, NO_DROPS);
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn udp_source_is_rewritten_on_ingress() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        let (egress, ingress) = split_gw1(&mut h);
        let input = udp_packet("40.0.0.1", "40.0.0.1", b"reply from pod2", true);
        let expected = udp_packet("30.0.0.1", "40.0.0.1", b"reply from pod2", true);
        expect_pass(&mut h, framing, Direction::Ingress, &input, &expected);
        assert_eq!(h.counters(ingress).0, 1);
        assert_eq!(
            h.counters(egress).0,
            0,
            "the egress rule must not fire on ingress"
        );
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn udp_zero_checksum_stays_zero() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        split_gw1(&mut h);
        let input = udp_packet("40.0.0.9", "30.0.0.7", b"no checksum here", false);
        let expected = udp_packet("40.0.0.9", "40.0.0.7", b"no checksum here", false);
        expect_pass(&mut h, framing, Direction::Egress, &input, &expected);
        let run = h.run(program(framing, Direction::Egress), &framing.frame(&input));
        let l4 = framing.l3_offset() + 20;
        assert_eq!(
            &run.packet[l4 + 6..l4 + 8],
            &[0, 0],
            "UDP checksum 0 must stay 0"
        );
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn icmp_echo_is_rewritten() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        split_gw1(&mut h);
        let echo = icmp(8, 0, [0x12, 0x34, 0, 1], b"ping payload 0123456789");
        let input = Ipv4::new("40.0.0.1", "30.0.0.1", 1).with_payload(&echo);
        let expected = Ipv4::new("40.0.0.1", "40.0.0.1", 1).with_payload(&echo);
        expect_pass(&mut h, framing, Direction::Egress, &input, &expected);
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn both_addresses_are_rewritten_when_both_rules_match() {
    // both-on-2, gateway 2 ingress: dst 30/24 -> 40/24 and src 40/24 -> 60/24.
    for framing in BOTH {
        let mut h = BpfHarness::new();
        let (dst, src) = both_on_2_gw2_ingress(&mut h);
        let input = tcp_packet("40.0.0.1", "30.0.0.1", b"both");
        let expected = tcp_packet("60.0.0.1", "40.0.0.1", b"both");
        expect_pass(&mut h, framing, Direction::Ingress, &input, &expected);
        assert_eq!(h.counters(dst).0, 1);
        assert_eq!(h.counters(src).0, 1);
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn longest_prefix_wins_and_host_bits_are_kept() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        let wide = h.add_rule(
            Direction::Egress,
            AddressField::Destination,
            "172.20.0.0/16",
            "10.1.0.0/16",
        );
        let narrow = h.add_rule(
            Direction::Egress,
            AddressField::Destination,
            "172.20.7.0/24",
            "10.9.9.0/24",
        );
        let odd = h.add_rule(
            Direction::Egress,
            AddressField::Destination,
            "192.168.128.0/17",
            "10.2.0.0/17",
        );
        // Host bits across a /16.
        let input = tcp_packet("10.1.3.5", "172.20.200.17", b"x");
        let expected = tcp_packet("10.1.3.5", "10.1.200.17", b"x");
        expect_pass(&mut h, framing, Direction::Egress, &input, &expected);
        // The /24 inside the /16 wins.
        let input = tcp_packet("10.1.3.5", "172.20.7.200", b"y");
        let expected = tcp_packet("10.1.3.5", "10.9.9.200", b"y");
        expect_pass(&mut h, framing, Direction::Egress, &input, &expected);
        // A /17: 192.168.255.254 keeps 15 host bits -> 10.2.127.254.
        let input = udp_packet("10.1.3.5", "192.168.255.254", b"z", true);
        let expected = udp_packet("10.1.3.5", "10.2.127.254", b"z", true);
        expect_pass(&mut h, framing, Direction::Egress, &input, &expected);
        assert_eq!(
            (h.counters(wide).0, h.counters(narrow).0, h.counters(odd).0),
            (1, 1, 1)
        );
    }
}

/// An ICMP error as gateway 1 receives it from cluster 2 on ingress, about a packet
/// pod1 sent to 30.0.0.1 (which left gateway 1 with destination 40.0.0.1).
fn icmp_error(outer_src: &str, icmp_type: u8, code: u8, rest: [u8; 4], quote: &[u8]) -> Vec<u8> {
    Ipv4::new(outer_src, "40.0.0.1", 1).with_payload(&icmp(icmp_type, code, rest, quote))
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn icmp_frag_needed_quoting_tcp_is_translated_inside_and_out() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        split_gw1(&mut h);
        // Original: pod1 40.0.0.1 -> pod2 real 40.0.0.1 (after gw1 egress). Error from pod2.
        let original = tcp_packet("40.0.0.1", "40.0.0.1", b"a long segment payload!");
        let quote = &original[..original.len().min(20 + 20 + 8)];
        let input = icmp_error("40.0.0.1", 3, 4, [0, 0, 0x05, 0x00], quote);
        // After ingress: outer src 30.0.0.1; the quote's destination 40.0.0.1 -> 30.0.0.1.
        let translated = tcp_packet("40.0.0.1", "30.0.0.1", b"a long segment payload!");
        let expected = icmp_error(
            "30.0.0.1",
            3,
            4,
            [0, 0, 0x05, 0x00],
            &translated[..quote.len()],
        );
        expect_pass(&mut h, framing, Direction::Ingress, &input, &expected);
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn icmp_time_exceeded_from_a_router_translates_only_the_quote() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        split_gw1(&mut h);
        // A router (not in any rule) reports TTL expiry of a UDP probe pod1 -> 30.0.0.1.
        let original = udp_packet("40.0.0.1", "40.0.0.1", b"traceroute probe", true);
        let input = icmp_error("198.18.0.2", 11, 0, [0; 4], &original);
        let translated = udp_packet("40.0.0.1", "30.0.0.1", b"traceroute probe", true);
        let expected = icmp_error("198.18.0.2", 11, 0, [0; 4], &translated);
        expect_pass(&mut h, framing, Direction::Ingress, &input, &expected);
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn icmp_parameter_problem_quoting_udp_is_translated() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        split_gw1(&mut h);
        let original = udp_packet("40.0.0.1", "40.0.0.1", b"bad option", true);
        let input = icmp_error("40.0.0.1", 12, 0, [20, 0, 0, 0], &original);
        let translated = udp_packet("40.0.0.1", "30.0.0.1", b"bad option", true);
        let expected = icmp_error("30.0.0.1", 12, 0, [20, 0, 0, 0], &translated);
        expect_pass(&mut h, framing, Direction::Ingress, &input, &expected);
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn icmp_error_with_a_short_quote_translates_the_quoted_header() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        split_gw1(&mut h);
        // RFC 792 minimum: IP header + 8 bytes; the TCP checksum is not in the quote.
        let original = tcp_packet("40.0.0.1", "40.0.0.1", b"payload");
        let input = icmp_error("40.0.0.1", 3, 3, [0; 4], &original[..28]);
        let translated = tcp_packet("40.0.0.1", "30.0.0.1", b"payload");
        let expected = icmp_error("30.0.0.1", 3, 3, [0; 4], &translated[..28]);
        expect_pass(&mut h, framing, Direction::Ingress, &input, &expected);
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn icmp_error_in_both_on_2_translates_both_quoted_addresses() {
    // Gateway 2 ingress (both-on-2): dst 30->40, src 40->60. Pod1 reports port
    // unreachable for a UDP packet pod2 sent (it left gw2 as 30.0.0.1 -> 40.0.0.1).
    for framing in BOTH {
        let mut h = BpfHarness::new();
        both_on_2_gw2_ingress(&mut h);
        let original = udp_packet("30.0.0.1", "40.0.0.1", b"to a closed port", true);
        let input =
            Ipv4::new("40.0.0.1", "30.0.0.1", 1).with_payload(&icmp(3, 3, [0; 4], &original));
        let translated = udp_packet("40.0.0.1", "60.0.0.1", b"to a closed port", true);
        let expected =
            Ipv4::new("60.0.0.1", "40.0.0.1", 1).with_payload(&icmp(3, 3, [0; 4], &translated));
        expect_pass(&mut h, framing, Direction::Ingress, &input, &expected);
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn fragments_first_gets_l4_later_gets_only_ip() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        split_gw1(&mut h);
        let payload: Vec<u8> = (0..64u8).collect();
        let whole = udp(ip("40.0.0.1"), ip("30.0.0.1"), 1000, 2000, &payload, true);
        let translated_whole = udp(ip("40.0.0.1"), ip("40.0.0.1"), 1000, 2000, &payload, true);
        let (first, rest) = whole.split_at(32);
        let (first_t, rest_t) = translated_whole.split_at(32);
        let mut head = Ipv4::new("40.0.0.1", "30.0.0.1", 17);
        head.flags_frag = 0x2000; // MF, offset 0
        let mut head_t = head.clone();
        head_t.dst = ip("40.0.0.1");
        expect_pass(
            &mut h,
            framing,
            Direction::Egress,
            &head.with_payload(first),
            &head_t.with_payload(first_t),
        );
        let mut tail = Ipv4::new("40.0.0.1", "30.0.0.1", 17);
        tail.flags_frag = 32 / 8; // offset 32 bytes, last fragment
        let mut tail_t = tail.clone();
        tail_t.dst = ip("40.0.0.1");
        assert_eq!(rest, rest_t, "the tail carries no addresses");
        // A later fragment whose payload happens to look like a UDP header must not be
        // touched beyond the IP header.
        expect_pass(
            &mut h,
            framing,
            Direction::Egress,
            &tail.with_payload(rest),
            &tail_t.with_payload(rest),
        );
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn ip_options_shift_the_transport_header() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        split_gw1(&mut h);
        let options = vec![0x07, 0x07, 0x04, 0, 0, 0, 0, 0x01, 0x01, 0x01, 0x01, 0x00];
        let mut hdr = Ipv4::new("40.0.0.1", "30.0.0.3", 6);
        hdr.options = options.clone();
        let input = hdr.with_payload(&tcp(ip("40.0.0.1"), ip("30.0.0.3"), 40000, 80, b"opts"));
        let mut hdr_t = hdr.clone();
        hdr_t.dst = ip("40.0.0.3");
        let expected = hdr_t.with_payload(&tcp(ip("40.0.0.1"), ip("40.0.0.3"), 40000, 80, b"opts"));
        expect_pass(&mut h, framing, Direction::Egress, &input, &expected);
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn non_matching_packets_pass_untouched() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        let (egress, ingress) = split_gw1(&mut h);
        for input in [
            tcp_packet("40.0.0.1", "31.0.0.1", b"other cluster"),
            udp_packet("40.0.0.1", "30.0.1.1", b"just outside the /24", true),
            // A source rule does not match destinations and vice versa.
            tcp_packet("30.0.0.1", "8.8.8.8", b"src in the dst rule"),
        ] {
            expect_untouched(&mut h, framing, Direction::Egress, &framing.frame(&input));
        }
        assert_eq!(h.counters(egress), (0, 0));
        assert_eq!(h.counters(ingress), (0, 0));
        let hook = h.hook_counters(Direction::Egress);
        assert_eq!(
            (hook.packets, hook.translated),
            (3, 0),
            "passed, untranslated"
        );
        assert_eq!(hook.dropped, NO_DROPS);
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn non_ipv4_passes_untouched() {
    // An IPv6 packet whose bytes would match a rule if misread as IPv4.
    let mut ipv6 = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
    ipv6.extend_from_slice(&[30, 0, 0, 1].repeat(4));
    ipv6.extend_from_slice(&[30, 0, 0, 1].repeat(4));
    ipv6.extend_from_slice(&[0, 1, 0, 2, 0, 8, 0, 0]);
    let arp = [
        0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 30, 0, 0, 1, 0, 0, 0, 0, 0, 0, 30, 0, 0, 2,
    ];
    let mut h = BpfHarness::new();
    split_gw1(&mut h);
    for direction in Direction::ALL {
        expect_untouched(
            &mut h,
            Framing::L2,
            direction,
            &packet::ethernet(0x86dd, &ipv6),
        );
        expect_untouched(
            &mut h,
            Framing::L2,
            direction,
            &packet::ethernet(0x0806, &arp),
        );
        // An IPv4 packet behind an ethertype that is not IPv4 is not ours either.
        let v4 = tcp_packet("40.0.0.1", "30.0.0.1", b"vlan?");
        expect_untouched(
            &mut h,
            Framing::L2,
            direction,
            &packet::ethernet(0x8100, &v4),
        );
        expect_untouched(&mut h, Framing::L3, direction, &ipv6);
    }
    assert_eq!(h.dropped(Direction::Egress), NO_DROPS);
    assert_eq!(
        h.dropped(Direction::Ingress),
        NO_DROPS,
        "no border: nothing dropped"
    );
}

/// Matching packets that cannot be translated exactly, as a peer (or a local pod) might
/// send them: each must be dropped unmodified and counted once as malformed.
fn malformed_matching(src: &str, dst: &str) -> Vec<(&'static str, Vec<u8>)> {
    let good = tcp_packet(src, dst, b"payload bytes");
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // Total length claims more than the packet has.
    let mut long = Ipv4::new(src, dst, 6);
    long.total_len = Some(400);
    cases.push((
        "total length beyond the packet",
        long.with_payload(&good[20..]),
    ));
    // IHL below 5.
    let mut bad_ihl = good.clone();
    bad_ihl[0] = 0x44;
    cases.push(("IHL 4", bad_ihl));
    // IHL beyond the packet.
    let mut huge_ihl = good[..24].to_vec();
    huge_ihl[0] = 0x4f;
    huge_ihl[2..4].copy_from_slice(&24u16.to_be_bytes());
    cases.push(("IHL beyond the packet", huge_ihl));
    // TCP header cut before its checksum (an unfragmented packet).
    let cut = Ipv4::new(src, dst, 6).with_payload(&good[20..30]);
    cases.push(("TCP cut before the checksum", cut));
    // UDP, UDP-Lite and DCCP headers cut before their checksum.
    for (what, proto) in [
        ("UDP cut before the checksum", 17),
        ("UDP-Lite cut before the checksum", 136),
        ("DCCP cut before the checksum", 33),
    ] {
        cases.push((
            what,
            Ipv4::new(src, dst, proto).with_payload(&[0x13, 0x88, 0x27]),
        ));
    }
    // ICMP error whose quote is not IPv4.
    let mut bad_quote = tcp_packet("40.0.0.1", "40.0.0.1", b"q");
    bad_quote[0] = 0x65;
    let err = Ipv4::new(src, dst, 1).with_payload(&icmp(3, 1, [0; 4], &bad_quote));
    cases.push(("ICMP error quoting a non-IPv4 header", err));
    // ICMP error whose quote is shorter than an IP header.
    let short = Ipv4::new(src, dst, 1).with_payload(&icmp(3, 1, [0; 4], &bad_quote[..12]));
    cases.push(("ICMP error with a 12-byte quote", short));
    // ICMP error quoting nothing at all.
    let empty = Ipv4::new(src, dst, 1).with_payload(&icmp(11, 0, [0; 4], &[]));
    cases.push(("ICMP error quoting nothing", empty));
    cases
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn malformed_matching_packets_are_dropped_on_egress() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        let (egress, _) = split_gw1(&mut h);
        let cases = malformed_matching("40.0.0.1", "30.0.0.1");
        for (what, input) in &cases {
            let frame = framing.frame(input);
            let run = h.run(program(framing, Direction::Egress), &frame);
            assert_eq!(
                run.verdict, VERDICT_DROP,
                "{framing:?}: {what} must be dropped"
            );
            assert_eq!(
                hex(&run.packet),
                hex(&frame),
                "{framing:?}: {what} is dropped unmodified"
            );
        }
        assert_eq!(
            h.counters(egress),
            (0, 0),
            "no rule counted a malformed packet"
        );
        let hook = h.hook_counters(Direction::Egress);
        assert_eq!(
            hook.dropped[drop_reason::MALFORMED],
            cases.len() as u64,
            "each malformed packet is counted once"
        );
        assert_eq!(hook.packets, 0);
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn malformed_packets_that_match_nothing_pass_on_egress_uncounted() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        split_gw1(&mut h);
        // The same garbage, but to an address no rule covers: not ours.
        for (what, input) in malformed_matching("40.0.0.1", "31.0.0.1") {
            let frame = framing.frame(&input);
            let run = h.run(program(framing, Direction::Egress), &frame);
            assert_eq!(run.verdict, VERDICT_NEXT, "{framing:?}: {what}");
            assert_eq!(hex(&run.packet), hex(&frame), "{framing:?}: {what}");
        }
        assert_eq!(h.dropped(Direction::Egress), NO_DROPS);
        // Shorter than an IPv4 header: not ours, not counted. (With an Ethernet header
        // and the IPv4 ethertype the kernel itself refuses to build such a test skb.)
        if framing == Framing::L3 {
            let good = tcp_packet("40.0.0.1", "30.0.0.1", b"payload bytes");
            let tiny = framing.frame(&good[..16]);
            let run = h.run(program(framing, Direction::Egress), &tiny);
            assert_eq!(run.verdict, VERDICT_NEXT);
            assert_eq!(hex(&run.packet), hex(&tiny));
            assert_eq!(h.dropped(Direction::Egress), NO_DROPS);
        }
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn a_rule_only_fires_on_its_own_interface() {
    // Rules for another ifindex never match test runs on loopback.
    let mut h = BpfHarness::new();
    let input = tcp_packet("40.0.0.1", "30.0.0.1", b"elsewhere");
    let other = h.add_rule_on(
        999,
        Direction::Egress,
        AddressField::Destination,
        "30.0.0.0/24",
        "40.0.0.0/24",
    );
    for framing in BOTH {
        expect_untouched(&mut h, framing, Direction::Egress, &framing.frame(&input));
    }
    // Sanity: the same packet is rewritten once a loopback rule exists.
    h.add_rule(
        Direction::Egress,
        AddressField::Destination,
        "30.0.0.0/24",
        "40.0.0.0/24",
    );
    let run = h.run(programs::L3_EGRESS, &input);
    assert_eq!(packet::addresses(&run.packet).1, ip("40.0.0.1"));
    assert_eq!(h.counters(other), (0, 0));
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn hooks_sharing_a_home_slot_each_run_their_own_rules() {
    // Interface indexes 2048 apart share a home slot: the interface configured first
    // keeps it, the test interface's hook takes the next slot, and each hook runs only
    // its own rules (interface and direction checked).
    let mut h = BpfHarness::new();
    let wrap = remapd_common::HOOK_SLOTS / 2;
    let collider = h.add_rule_on(
        remapd_tests::bpf::TEST_RUN_IFINDEX + wrap,
        Direction::Egress,
        AddressField::Destination,
        "30.0.0.0/24",
        "50.0.0.0/24",
    );
    let input = tcp_packet("40.0.0.1", "30.0.0.1", b"collide");
    for framing in BOTH {
        expect_untouched(&mut h, framing, Direction::Egress, &framing.frame(&input));
    }
    let ours = h.add_rule(
        Direction::Egress,
        AddressField::Destination,
        "30.0.0.0/24",
        "40.0.0.0/24",
    );
    let run = h.run(programs::L3_EGRESS, &input);
    assert_eq!(
        packet::addresses(&run.packet).1,
        ip("40.0.0.1"),
        "our rule, not the collider's"
    );
    assert_eq!(h.counters(ours).0, 1);
    assert_eq!(h.counters(collider), (0, 0));
    assert_eq!(h.hook_counters(Direction::Egress).translated, 1);
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn checksum_helpers_agree_with_a_full_recompute() {
    // Guard the test's own checksum code: a known header (RFC 1071 example values).
    let hdr = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];
    assert_eq!(inet_checksum(&hdr), 0);
}

fn syn(src: &str, dst: &str, flags: u8, mss: u16) -> Vec<u8> {
    Ipv4::new(src, dst, 6).with_payload(&packet::tcp_with_options(
        ip(src),
        ip(dst),
        flags,
        &packet::syn_options(mss),
    ))
}

/// The MSS clamp (a peering's `tunnel.mss_clamp`): a SYN's and a SYN-ACK's MSS option
/// lowered, with the destination rewrite of split on the same packet; smaller MSS
/// values, non-SYN segments and SYNs on a hook without the clamp pass as they are.
#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn mss_of_syns_is_clamped_in_both_directions() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        split_gw1(&mut h);
        // Without the clamp: only the address.
        expect_pass(
            &mut h,
            framing,
            Direction::Egress,
            &syn("40.0.0.1", "30.0.0.1", 0x02, 1460),
            &syn("40.0.0.1", "40.0.0.1", 0x02, 1460),
        );
        h.set_mss_clamp(1360);
        // Egress SYN: address and MSS, one checksum fix each.
        expect_pass(
            &mut h,
            framing,
            Direction::Egress,
            &syn("40.0.0.1", "30.0.0.1", 0x02, 1460),
            &syn("40.0.0.1", "40.0.0.1", 0x02, 1360),
        );
        // Ingress SYN-ACK: source translated, MSS clamped.
        expect_pass(
            &mut h,
            framing,
            Direction::Ingress,
            &syn("40.0.0.1", "40.0.0.1", 0x12, 8960),
            &syn("30.0.0.1", "40.0.0.1", 0x12, 1360),
        );
        // Already small enough, or not a SYN: untouched but for the address.
        expect_pass(
            &mut h,
            framing,
            Direction::Egress,
            &syn("40.0.0.1", "30.0.0.1", 0x02, 1200),
            &syn("40.0.0.1", "40.0.0.1", 0x02, 1200),
        );
        expect_pass(
            &mut h,
            framing,
            Direction::Egress,
            &syn("40.0.0.1", "30.0.0.1", 0x10, 1460),
            &syn("40.0.0.1", "40.0.0.1", 0x10, 1460),
        );
        // A SYN that matches no rule is still clamped (the clamp is the tunnel's).
        expect_pass(
            &mut h,
            framing,
            Direction::Egress,
            &syn("40.0.0.1", "50.0.0.1", 0x02, 1460),
            &syn("40.0.0.1", "50.0.0.1", 0x02, 1360),
        );
        // The MSS value at an odd offset (after one NOP): the checksum update is
        // byte-swapped there.
        let odd = |mss: u16| {
            let mut o = vec![1, 2, 4];
            o.extend_from_slice(&mss.to_be_bytes());
            Ipv4::new("40.0.0.1", "50.0.0.1", 6).with_payload(&packet::tcp_with_options(
                ip("40.0.0.1"),
                ip("50.0.0.1"),
                0x02,
                &o,
            ))
        };
        expect_pass(&mut h, framing, Direction::Egress, &odd(1460), &odd(1360));
        let egress = h.hook_counters(Direction::Egress);
        assert_eq!(
            (egress.packets, egress.translated, egress.mss_clamped),
            (6, 4, 3)
        );
        let ingress = h.hook_counters(Direction::Ingress);
        assert_eq!(
            (ingress.packets, ingress.translated, ingress.mss_clamped),
            (1, 1, 1)
        );
        assert_eq!(egress.dropped, NO_DROPS);
    }
}

/// Options the walk cannot follow (a zero length, a length past the header) leave the
/// SYN as it is: clamping is a courtesy, never a reason to drop.
#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn a_syn_with_broken_options_passes_unclamped() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        h.set_mss_clamp(1360);
        for options in [
            vec![1, 5, 0, 2, 4, 5, 0xb4],
            vec![1, 1, 3, 40, 2, 4, 5, 0xb4],
        ] {
            let input = Ipv4::new("40.0.0.1", "50.0.0.1", 6).with_payload(
                &packet::tcp_with_options(ip("40.0.0.1"), ip("50.0.0.1"), 0x02, &options),
            );
            expect_pass(&mut h, framing, Direction::Egress, &input, &input);
        }
        assert_eq!(h.hook_counters(Direction::Egress).mss_clamped, 0);
    }
}
