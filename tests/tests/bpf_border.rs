//! Packet tests (BPF_PROG_TEST_RUN) of dataplane v2: the tunnel ingress border
//! (default deny outside the allow-list) per strategy, malformed packets from a peer,
//! UDP-Lite and DCCP checksums (also inside ICMP error quotes), tiny first fragments,
//! exact per-rule and per-hook counters, and the trie paths for large hooks.
//! Exact bytes against independently built packets; checksums re-verified by the test's
//! own parser. Every case on L2 and L3 framing. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;

use remapd::dataplane::trace::{KernelTraceFilter, TraceTap};
use remapd::dataplane::{AddressField, Direction};
use remapd_common::{drop_reason, programs};
use remapd_tests::bpf::{BpfHarness, VERDICT_NEXT};
use remapd_tests::cases::{
    BOTH, NO_DROPS, both_on_2_gw2_ingress, expect_drop, expect_pass, hex, ip, program,
    split_gw1_with_border, tcp_packet, udp_packet,
};
use remapd_tests::packet::{
    self, Framing, Ipv4, dccp, icmp, pseudo_header_checksum_ok, tcp, udplite,
};

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn split_border_passes_the_peering_and_drops_everything_else() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        let (_, ingress) = split_gw1_with_border(&mut h);
        // The real thing: pod2 (40.0.0.1 in cluster 2) to pod1 (40.0.0.1 here).
        expect_pass(
            &mut h,
            framing,
            Direction::Ingress,
            &tcp_packet("40.0.0.1", "40.0.0.1", b"hello"),
            &tcp_packet("30.0.0.1", "40.0.0.1", b"hello"),
        );
        // What a peer that widened its allowed-ips and routes might send.
        let cases = [
            (
                "to the node network",
                tcp_packet("40.0.0.1", "10.0.0.5", b"x"),
                drop_reason::NOT_EXPORTED,
            ),
            (
                "to the gateway's underlay address",
                udp_packet("40.0.0.1", "192.0.2.1", b"x", true),
                drop_reason::NOT_EXPORTED,
            ),
            (
                "to an unexported local CIDR",
                tcp_packet("40.0.0.1", "40.0.1.9", b"x"),
                drop_reason::NOT_EXPORTED,
            ),
            (
                "to loopback",
                tcp_packet("40.0.0.1", "127.0.0.1", b"x"),
                drop_reason::NOT_EXPORTED,
            ),
            (
                "from outside the peer's CIDRs",
                tcp_packet("50.0.0.1", "40.0.0.1", b"x"),
                drop_reason::SOURCE_NOT_ALLOWED,
            ),
            (
                "from a local-looking address",
                udp_packet("40.0.1.1", "40.0.0.1", b"x", true),
                drop_reason::SOURCE_NOT_ALLOWED,
            ),
        ];
        for (what, input, _) in &cases {
            expect_drop(
                &mut h,
                framing,
                Direction::Ingress,
                &framing.frame(input),
                what,
            );
        }
        let hook = h.hook_counters(Direction::Ingress);
        assert_eq!((hook.packets, hook.translated), (1, 1));
        for reason in [drop_reason::NOT_EXPORTED, drop_reason::SOURCE_NOT_ALLOWED] {
            let expected = cases.iter().filter(|c| c.2 == reason).count() as u64;
            assert_eq!(
                hook.dropped[reason],
                expected,
                "{}",
                drop_reason::NAMES[reason]
            );
        }
        // The rule counted only the packet it delivered: the dropped "to the node
        // network" packet matched it too, but was not translated.
        assert_eq!(h.counters(ingress).0, 1);
        // Egress has no border: a packet to anywhere passes.
        let run = h.run(
            program(framing, Direction::Egress),
            &framing.frame(&tcp_packet("40.0.0.1", "8.8.8.8", b"out")),
        );
        assert_eq!(run.verdict, VERDICT_NEXT);
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn both_on_local_border_checks_after_both_rewrites() {
    // Gateway 2 does every rewrite (both-on-2): ingress dst 30/24 -> 40/24 (how cluster 1
    // sees us -> our real), src 40/24 -> 60/24 (cluster 1's real -> our view of it).
    for framing in BOTH {
        let mut h = BpfHarness::new();
        both_on_2_gw2_ingress(&mut h);
        h.set_border(&["60.0.0.0/24"], &["40.0.0.0/24"]);
        expect_pass(
            &mut h,
            framing,
            Direction::Ingress,
            &udp_packet("40.0.0.1", "30.0.0.7", b"both", true),
            &udp_packet("60.0.0.1", "40.0.0.7", b"both", true),
        );
        for (what, input) in [
            (
                "to the node network",
                tcp_packet("40.0.0.1", "10.1.2.3", b"x"),
            ),
            (
                "to the gateway itself",
                tcp_packet("40.0.0.1", "192.0.2.2", b"x"),
            ),
        ] {
            expect_drop(
                &mut h,
                framing,
                Direction::Ingress,
                &framing.frame(&input),
                what,
            );
        }
        let drops = h.dropped(Direction::Ingress);
        assert_eq!(drops[drop_reason::NOT_EXPORTED], 2);
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn both_on_remote_border_has_no_rules_and_still_denies() {
    // Gateway 1 in both-on-2 only routes; the peer did every rewrite, so what arrives
    // already has its source in our view (30/24) and its destination real (40/24).
    for framing in BOTH {
        let mut h = BpfHarness::new();
        h.set_border(&["30.0.0.0/24"], &["40.0.0.0/24"]);
        let ok = tcp_packet("30.0.0.1", "40.0.0.1", b"routed only");
        expect_pass(&mut h, framing, Direction::Ingress, &ok, &ok);
        for (what, input, reason) in [
            (
                "a local-looking source",
                tcp_packet("40.0.0.9", "40.0.0.1", b"x"),
                drop_reason::SOURCE_NOT_ALLOWED,
            ),
            (
                "a node address",
                tcp_packet("30.0.0.1", "10.0.0.1", b"x"),
                drop_reason::NOT_EXPORTED,
            ),
        ] {
            expect_drop(
                &mut h,
                framing,
                Direction::Ingress,
                &framing.frame(&input),
                what,
            );
            assert!(h.dropped(Direction::Ingress)[reason] > 0, "{what}");
        }
        let hook = h.hook_counters(Direction::Ingress);
        assert_eq!((hook.packets, hook.translated), (1, 0));
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn malformed_packets_from_the_peer_never_cross_the_border() {
    // Finding: truncated TCP/UDP and ICMP errors quoting a non-IPv4 header or nothing
    // kept the peer's real (overlapping) source. Now each is dropped and counted.
    for framing in BOTH {
        let mut h = BpfHarness::new();
        split_gw1_with_border(&mut h);
        let good = tcp_packet("40.0.0.1", "40.0.0.1", b"payload bytes");
        let mut bad_quote = good.clone();
        bad_quote[0] = 0x65;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "truncated TCP",
                Ipv4::new("40.0.0.1", "40.0.0.1", 6).with_payload(&good[20..30]),
            ),
            (
                "truncated UDP",
                Ipv4::new("40.0.0.1", "40.0.0.1", 17).with_payload(&[1, 2, 3]),
            ),
            (
                "ICMP error quoting a non-IPv4 header",
                Ipv4::new("40.0.0.1", "40.0.0.1", 1).with_payload(&icmp(3, 1, [0; 4], &bad_quote)),
            ),
            (
                "ICMP error quoting nothing",
                Ipv4::new("40.0.0.1", "40.0.0.1", 1).with_payload(&icmp(3, 1, [0; 4], &[])),
            ),
            ("IHL 4", {
                let mut p = good.clone();
                p[0] = 0x44;
                p
            }),
        ];
        for (what, input) in &cases {
            expect_drop(
                &mut h,
                framing,
                Direction::Ingress,
                &framing.frame(input),
                what,
            );
        }
        let drops = h.dropped(Direction::Ingress);
        assert_eq!(drops[drop_reason::MALFORMED], cases.len() as u64);
        assert_eq!(h.hook_counters(Direction::Ingress).packets, 0);
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn ipv6_and_non_ip_on_a_border() {
    let mut h = BpfHarness::new();
    split_gw1_with_border(&mut h);
    let ipv6 = |dst: [u8; 16]| {
        let mut p = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
        p.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8].repeat(4));
        p.extend_from_slice(&dst);
        p.extend_from_slice(&[0, 1, 0, 2, 0, 8, 0, 0]);
        p
    };
    let global = ipv6([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    // Neighbour solicitations (hop limit 255) to a link-local and to a solicited-node
    // address.
    let solicitation = |dst: &str| {
        let (src, dst): (std::net::Ipv6Addr, std::net::Ipv6Addr) =
            ("2001:db8::7".parse().unwrap(), dst.parse().unwrap());
        let mut p = packet::ipv6_packet(
            src,
            dst,
            &[],
            58,
            &packet::icmp6(
                src,
                dst,
                135,
                0,
                [0; 4],
                &[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            ),
        );
        p[7] = 255;
        p
    };
    let link_local = solicitation("fe80::1");
    let multicast = solicitation("ff02::1:ff00:1");
    // Global IPv6 outside the border's IPv6 allow-list (empty here) cannot cross it.
    expect_drop(
        &mut h,
        Framing::L2,
        Direction::Ingress,
        &packet::ethernet(0x86dd, &global),
        "global IPv6",
    );
    expect_drop(
        &mut h,
        Framing::L3,
        Direction::Ingress,
        &global,
        "global IPv6",
    );
    // Neighbour discovery and other link-local/multicast control traffic passes.
    for p in [&link_local, &multicast] {
        let frame = packet::ethernet(0x86dd, p);
        assert_eq!(h.run(programs::L2_INGRESS, &frame).verdict, VERDICT_NEXT);
    }
    // ARP is not IP: it passes on an Ethernet border.
    let arp = [
        0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 40, 0, 0, 1, 0, 0, 0, 0, 0, 0, 40, 0, 0, 2,
    ];
    assert_eq!(
        h.run(programs::L2_INGRESS, &packet::ethernet(0x0806, &arp))
            .verdict,
        VERDICT_NEXT
    );
    // On a layer-3 device anything that is not IP is garbage.
    expect_drop(
        &mut h,
        Framing::L3,
        Direction::Ingress,
        &[0x10; 40],
        "a non-IP packet on L3",
    );
    // Link-local IPv6 passes on a layer-3 border too; wider-scope multicast does not.
    assert_eq!(
        h.run(programs::L3_INGRESS, &link_local).verdict,
        VERDICT_NEXT
    );
    let site_multicast = ipv6([0xff, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    expect_drop(
        &mut h,
        Framing::L3,
        Direction::Ingress,
        &site_multicast,
        "site-scope multicast",
    );
    // A VLAN- or QinQ-tagged frame could hide an IPv4 packet from the allow-list.
    let inner = tcp_packet("40.0.0.1", "10.0.0.5", b"tagged");
    for tpid in [0x8100u16, 0x88a8] {
        let mut tagged = vec![0, 0x2a];
        tagged.extend_from_slice(&0x0800u16.to_be_bytes());
        tagged.extend_from_slice(&inner);
        expect_drop(
            &mut h,
            Framing::L2,
            Direction::Ingress,
            &packet::ethernet(tpid, &tagged),
            "a tagged frame",
        );
    }
    let drops = h.dropped(Direction::Ingress);
    assert_eq!(drops[drop_reason::SOURCE_NOT_ALLOWED], 2, "global IPv6");
    assert_eq!(drops[drop_reason::UNSUPPORTED], 4);
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn udplite_and_dccp_checksums_follow_the_rewrite() {
    // Finding: UDP-Lite (136) and DCCP (33) left with stale checksums.
    for framing in BOTH {
        let mut h = BpfHarness::new();
        split_gw1_with_border(&mut h);
        let payload = b"lite and dccp payload bytes";
        for (name, proto, build) in [
            (
                "UDP-Lite",
                136u8,
                udplite as fn(Ipv4Addr, Ipv4Addr, u16, u16, &[u8]) -> Vec<u8>,
            ),
            ("DCCP", 33u8, dccp),
        ] {
            // Egress: dst 30.0.0.1 -> 40.0.0.1.
            let input = Ipv4::new("40.0.0.1", "30.0.0.1", proto).with_payload(&build(
                ip("40.0.0.1"),
                ip("30.0.0.1"),
                4000,
                5000,
                payload,
            ));
            let expected = Ipv4::new("40.0.0.1", "40.0.0.1", proto).with_payload(&build(
                ip("40.0.0.1"),
                ip("40.0.0.1"),
                4000,
                5000,
                payload,
            ));
            assert_ne!(
                input[26..28],
                expected[26..28],
                "{name}: the checksum must change"
            );
            expect_pass(&mut h, framing, Direction::Egress, &input, &expected);
            // Ingress: src 40.0.0.1 -> 30.0.0.1, through the border.
            let input = Ipv4::new("40.0.0.1", "40.0.0.1", proto).with_payload(&build(
                ip("40.0.0.1"),
                ip("40.0.0.1"),
                5000,
                4000,
                payload,
            ));
            let expected = Ipv4::new("30.0.0.1", "40.0.0.1", proto).with_payload(&build(
                ip("30.0.0.1"),
                ip("40.0.0.1"),
                5000,
                4000,
                payload,
            ));
            expect_pass(&mut h, framing, Direction::Ingress, &input, &expected);
            assert!(pseudo_header_checksum_ok(
                ip("30.0.0.1"),
                ip("40.0.0.1"),
                proto,
                &expected[20..]
            ));
        }
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn icmp_error_quoting_udplite_is_translated_and_counted_once() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        let (_, ingress) = split_gw1_with_border(&mut h);
        // pod1 sent UDP-Lite to 30.0.0.1; it left as 40.0.0.1 -> 40.0.0.1; pod2's host
        // answers port unreachable, quoting the whole datagram.
        let original = Ipv4::new("40.0.0.1", "40.0.0.1", 136).with_payload(&udplite(
            ip("40.0.0.1"),
            ip("40.0.0.1"),
            4000,
            5000,
            b"lite",
        ));
        let input =
            Ipv4::new("40.0.0.1", "40.0.0.1", 1).with_payload(&icmp(3, 3, [0; 4], &original));
        let translated = Ipv4::new("40.0.0.1", "30.0.0.1", 136).with_payload(&udplite(
            ip("40.0.0.1"),
            ip("30.0.0.1"),
            4000,
            5000,
            b"lite",
        ));
        let expected =
            Ipv4::new("30.0.0.1", "40.0.0.1", 1).with_payload(&icmp(3, 3, [0; 4], &translated));
        expect_pass(&mut h, framing, Direction::Ingress, &input, &expected);
        // The quoted UDP-Lite checksum is right for the quoted addresses.
        let quote = &expected[28..];
        assert!(pseudo_header_checksum_ok(
            ip("40.0.0.1"),
            ip("30.0.0.1"),
            136,
            &quote[20..]
        ));
        // Outer source and quoted destination used the same rule: one packet, one count.
        let len = framing.frame(&input).len() as u64;
        assert_eq!(h.counters(ingress), (1, len));
        let hook = h.hook_counters(Direction::Ingress);
        assert_eq!((hook.packets, hook.translated), (1, 1));
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn counters_count_packets_not_rule_hits() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        let (dst, src) = both_on_2_gw2_ingress(&mut h);
        h.set_border(&["60.0.0.0/24"], &["40.0.0.0/24"]);
        let sent = 5u64;
        let input = tcp_packet("40.0.0.1", "30.0.0.1", b"twice translated");
        for _ in 0..sent {
            let run = h.run(program(framing, Direction::Ingress), &framing.frame(&input));
            assert_eq!(run.verdict, VERDICT_NEXT);
        }
        // Two rules fired on every packet: each counts every packet once, and the hook
        // (what the per-peering metric sums) counts the packets, not the rule hits.
        assert_eq!(h.counters(dst).0, sent);
        assert_eq!(h.counters(src).0, sent);
        let hook = h.hook_counters(Direction::Ingress);
        assert_eq!((hook.packets, hook.translated), (sent, sent));
        assert_eq!(hook.dropped, NO_DROPS);
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn tiny_first_fragments_are_dropped() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        let (egress, _) = split_gw1_with_border(&mut h);
        // A first fragment (MF set, offset 0) carrying only 8 bytes of TCP: the checksum
        // is in the next fragment, where nothing can fix it.
        let whole = tcp(
            ip("40.0.0.1"),
            ip("30.0.0.1"),
            40000,
            80,
            b"0123456789abcdef",
        );
        let mut head = Ipv4::new("40.0.0.1", "30.0.0.1", 6);
        head.flags_frag = 0x2000;
        let frame = framing.frame(&head.with_payload(&whole[..8]));
        expect_drop(
            &mut h,
            framing,
            Direction::Egress,
            &frame,
            "a tiny first fragment",
        );
        assert_eq!(h.dropped(Direction::Egress)[drop_reason::TINY_FRAGMENT], 1);
        assert_eq!(h.counters(egress).0, 0);
        // A first fragment that holds the checksum is translated as usual.
        let mut head_t = head.clone();
        head_t.dst = ip("40.0.0.1");
        let whole_t = tcp(
            ip("40.0.0.1"),
            ip("40.0.0.1"),
            40000,
            80,
            b"0123456789abcdef",
        );
        expect_pass(
            &mut h,
            framing,
            Direction::Egress,
            &head.with_payload(&whole[..24]),
            &head_t.with_payload(&whole_t[..24]),
        );
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn large_hooks_use_the_trie_and_agree_with_inline() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        split_gw1_with_border(&mut h);
        // 50 more egress destination rules: the hook's lookups move to the trie.
        h.add_filler_rules(Direction::Egress, AddressField::Destination, 50);
        expect_pass(
            &mut h,
            framing,
            Direction::Egress,
            &tcp_packet("40.0.0.1", "30.0.0.9", b"trie"),
            &tcp_packet("40.0.0.1", "40.0.0.9", b"trie"),
        );
        // A filler rule (64.0.3.0/24 -> 198.18.0.0/24) fires too.
        expect_pass(
            &mut h,
            framing,
            Direction::Egress,
            &udp_packet("40.0.0.1", "64.0.3.77", b"filler", true),
            &udp_packet("40.0.0.1", "198.18.0.77", b"filler", true),
        );
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn long_allow_lists_use_the_trie() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        let sources: Vec<String> = (0..20).map(|i| format!("30.{}.0.0/24", i * 2)).collect();
        let refs: Vec<&str> = sources.iter().map(String::as_str).collect();
        h.set_border(&refs, &["40.0.0.0/24"]);
        let ok = tcp_packet("30.38.0.1", "40.0.0.1", b"last source");
        expect_pass(&mut h, framing, Direction::Ingress, &ok, &ok);
        let frame = framing.frame(&tcp_packet("30.1.0.1", "40.0.0.1", b"between"));
        expect_drop(
            &mut h,
            framing,
            Direction::Ingress,
            &frame,
            "a source between the allowed ones",
        );
        assert_eq!(
            h.dropped(Direction::Ingress)[drop_reason::SOURCE_NOT_ALLOWED],
            1
        );
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn icmp_time_exceeded_from_a_remote_router_crosses_the_border() {
    // traceroute across the remap: a router inside cluster 2 (40.0.0.254) reports TTL
    // expiry of a probe pod1 sent to 30.0.0.1. Outer source and quote are translated;
    // the translated source is in the border's allowed sources.
    for framing in BOTH {
        let mut h = BpfHarness::new();
        split_gw1_with_border(&mut h);
        let probe = udp_packet("40.0.0.1", "40.0.0.1", b"probe", true);
        let input =
            Ipv4::new("40.0.0.254", "40.0.0.1", 1).with_payload(&icmp(11, 0, [0; 4], &probe));
        let probe_t = udp_packet("40.0.0.1", "30.0.0.1", b"probe", true);
        let expected =
            Ipv4::new("30.0.0.254", "40.0.0.1", 1).with_payload(&icmp(11, 0, [0; 4], &probe_t));
        expect_pass(&mut h, framing, Direction::Ingress, &input, &expected);
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn icmp_errors_about_connections_that_are_not_the_peers_are_dropped() {
    // An allowed peer source (a router in cluster 2) sends errors to pod1 that quote
    // packets this peering never carried: they would let the peer cut or shrink (PMTU)
    // connections of other peerings or of the node. Only quotes from an exported local
    // address to an address the peer may use pass.
    for framing in BOTH {
        let mut h = BpfHarness::new();
        split_gw1_with_border(&mut h);
        let error_about = |quote: &[u8]| {
            Ipv4::new("40.0.0.254", "40.0.0.1", 1).with_payload(&icmp(3, 4, [0, 0, 5, 0], quote))
        };
        let cases = [
            (
                "pod1's connection to the internet",
                tcp_packet("40.0.0.1", "8.8.8.8", b"q"),
            ),
            (
                "pod1's connection to another peering's view",
                udp_packet("40.0.0.1", "50.0.0.9", b"q", true),
            ),
            (
                "the node's connection to the peer",
                tcp_packet("10.0.0.5", "40.0.0.1", b"q"),
            ),
        ];
        for (what, quote) in &cases {
            expect_drop(
                &mut h,
                framing,
                Direction::Ingress,
                &framing.frame(&error_about(quote)),
                what,
            );
        }
        assert_eq!(
            h.dropped(Direction::Ingress)[drop_reason::QUOTE_NOT_ALLOWED],
            cases.len() as u64
        );
        // The error about pod1's own connection to pod2 passes, translated.
        let quote = tcp_packet("40.0.0.1", "40.0.0.1", b"q");
        let translated = tcp_packet("40.0.0.1", "30.0.0.1", b"q");
        let expected = Ipv4::new("30.0.0.254", "40.0.0.1", 1).with_payload(&icmp(
            3,
            4,
            [0, 0, 5, 0],
            &translated,
        ));
        expect_pass(
            &mut h,
            framing,
            Direction::Ingress,
            &error_about(&quote),
            &expected,
        );
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn redirects_and_source_quench_do_not_cross_a_border() {
    // They quote a packet like other ICMP errors but have no business crossing between
    // clusters: a redirect would steer this gateway's routing.
    for framing in BOTH {
        let mut h = BpfHarness::new();
        split_gw1_with_border(&mut h);
        let error = |icmp_type: u8, code: u8, quote: &[u8]| {
            Ipv4::new("40.0.0.1", "40.0.0.1", 1).with_payload(&icmp(
                icmp_type,
                code,
                [0, 0, 5, 0],
                quote,
            ))
        };
        let quote = tcp_packet("40.0.0.1", "40.0.0.1", b"q");
        for (what, input) in [
            ("a redirect", error(5, 1, &quote)),
            ("a source quench", error(4, 0, &quote)),
        ] {
            expect_drop(
                &mut h,
                framing,
                Direction::Ingress,
                &framing.frame(&input),
                what,
            );
        }
        assert_eq!(h.dropped(Direction::Ingress)[drop_reason::UNSUPPORTED], 2);
        // The legitimate error about pod1's packet to pod2 still passes, translated.
        let translated = tcp_packet("40.0.0.1", "30.0.0.1", b"q");
        let expected = Ipv4::new("30.0.0.1", "40.0.0.1", 1).with_payload(&icmp(
            3,
            4,
            [0, 0, 5, 0],
            &translated,
        ));
        expect_pass(
            &mut h,
            framing,
            Direction::Ingress,
            &error(3, 4, &quote),
            &expected,
        );
        // Off a border (egress), a redirect is not ours to judge.
        let out = Ipv4::new("40.0.0.1", "8.8.8.8", 1).with_payload(&icmp(5, 1, [0; 4], &quote));
        assert_eq!(
            h.run(program(framing, Direction::Egress), &framing.frame(&out))
                .verdict,
            VERDICT_NEXT
        );
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn ip_options_are_dropped_on_a_border_only() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        split_gw1_with_border(&mut h);
        // Loose source route (131) towards a node address, addressed to an exported pod.
        let mut hdr = Ipv4::new("40.0.0.1", "40.0.0.1", 6);
        hdr.options = vec![131, 7, 4, 10, 0, 0, 5, 0];
        let input = hdr.with_payload(&tcp(ip("40.0.0.1"), ip("40.0.0.1"), 40000, 80, b"lsrr"));
        expect_drop(
            &mut h,
            framing,
            Direction::Ingress,
            &framing.frame(&input),
            "a source-routed packet",
        );
        assert_eq!(h.dropped(Direction::Ingress)[drop_reason::IP_OPTIONS], 1);
        // Egress is not a border: options are translated around.
        let mut out = Ipv4::new("40.0.0.1", "30.0.0.1", 6);
        out.options = vec![0x01, 0x01, 0x01, 0x00];
        let mut out_t = out.clone();
        out_t.dst = ip("40.0.0.1");
        expect_pass(
            &mut h,
            framing,
            Direction::Egress,
            &out.with_payload(&tcp(ip("40.0.0.1"), ip("30.0.0.1"), 1, 2, b"o")),
            &out_t.with_payload(&tcp(ip("40.0.0.1"), ip("40.0.0.1"), 1, 2, b"o")),
        );
    }
}

/// A TCP segment with `flags` carrying an MSS option of 1460.
fn syn(src: &str, dst: &str, flags: u8) -> Vec<u8> {
    Ipv4::new(src, dst, 6).with_payload(&packet::tcp_with_options(
        ip(src),
        ip(dst),
        flags,
        &[2, 4, 0x05, 0xb4],
    ))
}

/// The fast path (the common packet while no trace runs) and the general path (the same
/// packet while a trace wants the interface, which sends every packet there) agree on
/// every packet: verdict, bytes, hook counters and drop reasons, rule counters. The
/// packets cover each decision the fast path makes — translate one or both addresses,
/// UDP with and without a checksum, untouched, each allow-list drop, a translated
/// destination outside the allow-list (a rule the daemon could not mark as translating
/// into it, so the program looks it up) — and packets it must leave to the general
/// path; once with the hook's rules and allow-lists inline, once in the tries, and once
/// on hooks that clamp the MSS (whose SYNs the fast path must leave to the general
/// path, which clamps them).
#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn the_fast_and_the_general_path_agree() {
    let setup = |h: &mut BpfHarness, tries: bool| -> Vec<u32> {
        let (egress, ingress) = split_gw1_with_border(h);
        // Destination rules on the border: one into the exported 40.0.0.0/24, one out
        // of it (never emitted by a plan, but a border must hold anyway).
        let inside = h.add_rule(
            Direction::Ingress,
            AddressField::Destination,
            "51.0.0.0/24",
            "40.0.0.0/24",
        );
        let outside = h.add_rule(
            Direction::Ingress,
            AddressField::Destination,
            "50.0.0.0/24",
            "40.0.1.0/24",
        );
        if tries {
            for (direction, field) in [
                (Direction::Ingress, AddressField::Source),
                (Direction::Ingress, AddressField::Destination),
                (Direction::Egress, AddressField::Destination),
            ] {
                h.add_filler_rules(direction, field, 20);
            }
            // Allow-lists too long to be inline, holding the same addresses.
            let padding: Vec<String> = (0..20).map(|i| format!("100.{i}.0.0/16")).collect();
            let mut sources = vec!["30.0.0.0/24"];
            let mut destinations = vec!["40.0.0.0/24"];
            sources.extend(padding.iter().map(String::as_str));
            destinations.extend(padding.iter().map(String::as_str));
            h.set_border(&sources, &destinations);
        }
        vec![egress, ingress, inside, outside]
    };
    let mut options = Ipv4::new("40.0.0.1", "40.0.0.1", 6);
    options.options = vec![1, 1, 1, 0];
    let mut fragment = Ipv4::new("40.0.0.1", "40.0.0.1", 17);
    fragment.flags_frag = 0x2000;
    let mut short = Ipv4::new("40.0.0.1", "40.0.0.1", 6);
    short.total_len = Some(30);
    let cases: Vec<(&str, Direction, Vec<u8>)> = vec![
        (
            "src translated",
            Direction::Ingress,
            tcp_packet("40.0.0.1", "40.0.0.1", b"a"),
        ),
        (
            "both translated",
            Direction::Ingress,
            udp_packet("40.0.0.2", "51.0.0.9", b"b", true),
        ),
        (
            "udp, no checksum",
            Direction::Ingress,
            udp_packet("40.0.0.3", "51.0.0.9", b"c", false),
        ),
        (
            "untouched, allowed",
            Direction::Ingress,
            tcp_packet("30.0.0.5", "40.0.0.1", b"d"),
        ),
        (
            "not exported",
            Direction::Ingress,
            tcp_packet("40.0.0.1", "10.0.0.5", b"e"),
        ),
        (
            "translated, not exported",
            Direction::Ingress,
            tcp_packet("40.0.0.1", "50.0.0.1", b"f"),
        ),
        (
            "source not allowed",
            Direction::Ingress,
            udp_packet("41.0.0.1", "40.0.0.1", b"g", true),
        ),
        (
            "ip options",
            Direction::Ingress,
            options.with_payload(&tcp(ip("40.0.0.1"), ip("40.0.0.1"), 1, 2, b"h")),
        ),
        (
            "fragment",
            Direction::Ingress,
            fragment.with_payload(&packet::udp(
                ip("40.0.0.1"),
                ip("40.0.0.1"),
                1,
                2,
                b"i",
                true,
            )),
        ),
        (
            "truncated",
            Direction::Ingress,
            short.with_payload(&tcp(
                ip("40.0.0.1"),
                ip("40.0.0.1"),
                1,
                2,
                b"jjjjjjjjjjjjjjjj",
            )),
        ),
        (
            "egress translated",
            Direction::Egress,
            tcp_packet("40.0.0.1", "30.0.0.1", b"k"),
        ),
        (
            "egress untouched",
            Direction::Egress,
            udp_packet("40.0.0.1", "8.8.8.8", b"l", true),
        ),
        (
            "syn, translated",
            Direction::Ingress,
            syn("40.0.0.1", "40.0.0.1", 0x02),
        ),
        (
            "egress syn-ack",
            Direction::Egress,
            syn("40.0.0.1", "30.0.0.1", 0x12),
        ),
        (
            "egress ack",
            Direction::Egress,
            syn("40.0.0.1", "30.0.0.1", 0x10),
        ),
    ];
    // One harness per path, the same packets in the same order: counters are compared
    // after every packet.
    for (tries, clamp) in [(false, false), (true, false), (false, true)] {
        let mut outcomes = [Vec::new(), Vec::new()];
        for (traced, outcomes) in [false, true].into_iter().zip(&mut outcomes) {
            let mut h = BpfHarness::new();
            let rules = setup(&mut h, tries);
            if clamp {
                h.set_mss_clamp(1360);
            }
            if traced {
                h.trace().set(Some(&KernelTraceFilter::default())).unwrap();
            }
            for framing in BOTH {
                for (what, direction, input) in &cases {
                    let run = h.run(program(framing, *direction), &framing.frame(input));
                    if !traced {
                        assert!(h.trace_events().is_empty(), "{what}: no trace, no events");
                    }
                    let counters: Vec<(u64, u64)> = rules.iter().map(|r| h.counters(*r)).collect();
                    outcomes.push((
                        format!("{framing:?} {what}"),
                        run.verdict,
                        hex(&run.packet),
                        h.hook_counters(*direction),
                        counters,
                    ));
                }
            }
        }
        for (fast, general) in outcomes[0].iter().zip(&outcomes[1]) {
            assert_eq!(
                fast, general,
                "{} (tries: {tries}, clamp: {clamp}): fast vs general path",
                fast.0
            );
        }
        assert_eq!(outcomes[0].len(), 2 * cases.len());
        if clamp {
            // The egress hook's counters after the last case: the SYN-ACKs (one per
            // framing) were clamped, with no trace running too.
            let (_, _, _, egress, _) = outcomes[0].last().expect("cases ran");
            assert_eq!(egress.mss_clamped, 2, "SYN-ACKs clamped on the fast run");
        }
    }
}
