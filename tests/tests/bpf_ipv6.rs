//! Packet tests (BPF_PROG_TEST_RUN) of IPv6 prefix translation: two clusters both on
//! fd00:10:244::/56, cluster 1 seeing cluster 2 at fd00:30::/56 (split: destination on the
//! way out, source on the way in). Exact bytes against packets built independently, with
//! the upper-layer checksums recomputed by the test's own code and etherparse; every case
//! on L2 and L3 framing. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv6Addr;

use remapd::dataplane::{AddressField, Direction};
use remapd_common::drop_reason;
use remapd_tests::bpf::{BpfHarness, VERDICT_DROP, VERDICT_NEXT};
use remapd_tests::cases::{BOTH, hex, program};
use remapd_tests::packet::{
    Extension, Framing, frame6, icmp6, ipv6_packet, tcp6, udp6, verify_checksums6,
};

const REAL: &str = "fd00:10:244::/56";
const VIEW: &str = "fd00:30::/56";

fn a(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// An upper-layer message of each checksummed kind between two addresses, with its
/// checksum: (protocol, builder).
type Segment = (u8, fn(Ipv6Addr, Ipv6Addr) -> Vec<u8>);

fn segments() -> [Segment; 3] {
    [
        (6, |s, d| tcp6(s, d, 40000, 80, b"hello over v6")),
        (17, |s, d| udp6(s, d, 5353, 53, b"query", true)),
        (58, |s, d| icmp6(s, d, 128, 0, [0, 7, 0, 1], b"ping")),
    ]
}

/// Gateway 1 in split: egress destination view -> real, ingress source real -> view.
/// Returns the (egress, ingress) counter slots.
fn split_gw1(h: &mut BpfHarness) -> (u32, u32) {
    (
        h.add_rule6(Direction::Egress, AddressField::Destination, VIEW, REAL),
        h.add_rule6(Direction::Ingress, AddressField::Source, REAL, VIEW),
    )
}

/// Runs `input` and asserts it passes as `expected`, byte for byte after the link
/// header, with valid checksums (unless `fragment`).
fn expect6(
    h: &mut BpfHarness,
    framing: Framing,
    direction: Direction,
    input: &[u8],
    expected: &[u8],
) {
    let frame = frame6(framing, input);
    let run = h.run(program(framing, direction), &frame);
    assert_eq!(
        run.verdict, VERDICT_NEXT,
        "{framing:?} {direction}: must pass"
    );
    let l3 = framing.l3_offset();
    assert_eq!(&run.packet[..l3], &frame[..l3], "link header untouched");
    assert_eq!(
        hex(&run.packet[l3..]),
        hex(expected),
        "{framing:?} {direction}: packet differs from the expected one"
    );
}

fn expect_drop6(
    h: &mut BpfHarness,
    framing: Framing,
    direction: Direction,
    input: &[u8],
    reason: usize,
    what: &str,
) {
    let before = h.dropped(direction)[reason];
    let frame = frame6(framing, input);
    let run = h.run(program(framing, direction), &frame);
    assert_eq!(
        run.verdict, VERDICT_DROP,
        "{framing:?}: {what} must be dropped"
    );
    assert_eq!(
        run.packet, frame,
        "{what}: a dropped packet is not modified"
    );
    assert_eq!(
        h.dropped(direction)[reason],
        before + 1,
        "{framing:?}: {what} counted as {}",
        drop_reason::NAMES[reason]
    );
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn tcp_udp_and_icmpv6_echo_are_translated_both_ways() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        let (egress, ingress) = split_gw1(&mut h);
        let pod1 = a("fd00:10:244::5");
        let seen = a("fd00:30::7");
        let pod2 = a("fd00:10:244::7");
        // Out: the destination (cluster 2 as cluster 1 sees it) becomes the real one.
        let cases = segments();
        for (proto, segment) in &cases {
            let input = ipv6_packet(pod1, seen, &[], *proto, &segment(pod1, seen));
            let expected = ipv6_packet(pod1, pod2, &[], *proto, &segment(pod1, pod2));
            expect6(&mut h, framing, Direction::Egress, &input, &expected);
            verify_checksums6(&expected);
            // Back in: the source (cluster 2's real address) becomes the view.
            let reply = ipv6_packet(pod2, pod1, &[], *proto, &segment(pod2, pod1));
            let translated = ipv6_packet(seen, pod1, &[], *proto, &segment(seen, pod1));
            expect6(&mut h, framing, Direction::Ingress, &reply, &translated);
        }
        assert_eq!(h.counters(egress).0, 3, "{framing:?}: egress rule");
        assert_eq!(h.counters(ingress).0, 3, "{framing:?}: ingress rule");
        let hook = h.hook_counters(Direction::Egress);
        assert_eq!((hook.packets, hook.translated), (3, 3));
        // An address no rule covers passes untouched, and so does link-local traffic
        // (neighbour discovery) even when its other address matches.
        let other = ipv6_packet(
            pod1,
            a("2001:db8::1"),
            &[],
            6,
            &tcp6(pod1, a("2001:db8::1"), 1, 2, b"x"),
        );
        expect6(&mut h, framing, Direction::Egress, &other, &other);
        let ns = ipv6_packet(
            a("fe80::1"),
            seen,
            &[],
            58,
            &icmp6(a("fe80::1"), seen, 135, 0, [0; 4], &seen.octets()),
        );
        expect6(&mut h, framing, Direction::Egress, &ns, &ns);
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn extension_headers_are_walked_to_the_transport_header() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        split_gw1(&mut h);
        let (pod1, seen, pod2) = (a("fd00:10:244::5"), a("fd00:30::7"), a("fd00:10:244::7"));
        let chain = [Extension::HopByHop, Extension::DestinationOptions];
        let input = ipv6_packet(pod1, seen, &chain, 6, &tcp6(pod1, seen, 1, 2, b"chained"));
        let expected = ipv6_packet(pod1, pod2, &chain, 6, &tcp6(pod1, pod2, 1, 2, b"chained"));
        expect6(&mut h, framing, Direction::Egress, &input, &expected);
        verify_checksums6(&expected);

        // Fragments: the first one's UDP checksum covers the whole datagram; later ones
        // carry no transport header and change at the IP layer only.
        let datagram = |d: Ipv6Addr| udp6(pod1, d, 7, 9, &[0xab; 40], true);
        let first = |d: Ipv6Addr| {
            ipv6_packet(
                pod1,
                d,
                &[Extension::Fragment {
                    offset: 0,
                    more: true,
                }],
                17,
                &datagram(d)[..24],
            )
        };
        expect6(
            &mut h,
            framing,
            Direction::Egress,
            &first(seen),
            &first(pod2),
        );
        let later = |d: Ipv6Addr| {
            ipv6_packet(
                pod1,
                d,
                &[Extension::Fragment {
                    offset: 3,
                    more: false,
                }],
                17,
                &datagram(d)[24..],
            )
        };
        // The later fragment's bytes are the same datagram's, so only addresses differ.
        let mut want = later(seen);
        want[24..40].copy_from_slice(&pod2.octets());
        expect6(&mut h, framing, Direction::Egress, &later(seen), &want);
        // A later fragment's payload is not headers, whatever its bytes look like: here
        // "destination options of 240 bytes" under next header 60.
        let odd = |d: Ipv6Addr| {
            ipv6_packet(
                pod1,
                d,
                &[Extension::Fragment {
                    offset: 3,
                    more: false,
                }],
                60,
                &[17, 29, 0, 0, 0, 0, 0, 0],
            )
        };
        let mut want = odd(seen);
        want[24..40].copy_from_slice(&pod2.octets());
        expect6(&mut h, framing, Direction::Egress, &odd(seen), &want);
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn matching_packets_that_cannot_be_translated_exactly_are_dropped() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        let (egress, _) = split_gw1(&mut h);
        let (pod1, seen) = (a("fd00:10:244::5"), a("fd00:30::7"));
        let zero = ipv6_packet(
            pod1,
            seen,
            &[],
            17,
            &udp6(pod1, seen, 1, 2, b"no checksum", false),
        );
        expect_drop6(
            &mut h,
            framing,
            Direction::Egress,
            &zero,
            drop_reason::MALFORMED,
            "UDP with a zero checksum",
        );
        // A hop-by-hop header that claims more than the packet holds.
        let mut cut = ipv6_packet(
            pod1,
            seen,
            &[Extension::HopByHop],
            6,
            &tcp6(pod1, seen, 1, 2, b"x"),
        );
        cut[41] = 20;
        expect_drop6(
            &mut h,
            framing,
            Direction::Egress,
            &cut,
            drop_reason::MALFORMED,
            "a chain cut short",
        );
        // A first fragment too short for the UDP checksum.
        let tiny = ipv6_packet(
            pod1,
            seen,
            &[Extension::Fragment {
                offset: 0,
                more: true,
            }],
            17,
            &udp6(pod1, seen, 1, 2, b"tiny", true)[..4],
        );
        expect_drop6(
            &mut h,
            framing,
            Direction::Egress,
            &tiny,
            drop_reason::TINY_FRAGMENT,
            "a tiny first fragment",
        );
        // An ICMPv6 error whose quote is not an IPv6 header.
        let error = ipv6_packet(
            pod1,
            seen,
            &[],
            58,
            &icmp6(pod1, seen, 1, 4, [0; 4], &[0x45; 40]),
        );
        expect_drop6(
            &mut h,
            framing,
            Direction::Egress,
            &error,
            drop_reason::MALFORMED,
            "an ICMPv6 error quoting garbage",
        );
        // An ICMPv6 error type that does not exist.
        let odd = ipv6_packet(pod1, seen, &[], 58, &icmp6(pod1, seen, 7, 0, [0; 4], b"x"));
        expect_drop6(
            &mut h,
            framing,
            Direction::Egress,
            &odd,
            drop_reason::UNSUPPORTED,
            "an unassigned ICMPv6 error type",
        );
        // A payload length past the end of the packet.
        let mut long = ipv6_packet(pod1, seen, &[], 6, &tcp6(pod1, seen, 1, 2, b"x"));
        long[5] += 8;
        expect_drop6(
            &mut h,
            framing,
            Direction::Egress,
            &long,
            drop_reason::MALFORMED,
            "a payload length past the end",
        );
        // None of these count on a rule or as passed.
        let hook = h.hook_counters(Direction::Egress);
        assert_eq!((hook.packets, hook.translated), (0, 0));
        assert_eq!(h.counters(egress), (0, 0), "{framing:?}: the egress rule");
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn an_ipv6_border_passes_the_peering_and_drops_everything_else() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        split_gw1(&mut h);
        // After translation: sources in the view of cluster 2, destinations in ours.
        h.set_border_dual(&["30.0.0.0/24"], &["40.0.0.0/24"], &[VIEW], &[REAL]);
        let (pod1, pod2) = (a("fd00:10:244::5"), a("fd00:10:244::7"));
        let seen = a("fd00:30::7");
        let reply = ipv6_packet(pod2, pod1, &[], 6, &tcp6(pod2, pod1, 80, 40000, b"ok"));
        let translated = ipv6_packet(seen, pod1, &[], 6, &tcp6(seen, pod1, 80, 40000, b"ok"));
        expect6(&mut h, framing, Direction::Ingress, &reply, &translated);
        verify_checksums6(&translated);
        // Neighbour discovery (hop limit 255) from a global source to the
        // solicited-node group passes untranslated; the same with another hop limit
        // (not from this link), and anything else to link-scoped addresses, does not.
        let hop_limit = |mut p: Vec<u8>, limit: u8| {
            p[7] = limit;
            p
        };
        let solicit = |dst: Ipv6Addr, chain: &[Extension]| {
            let message = icmp6(pod2, dst, 135, 0, [0; 4], &pod1.octets());
            hop_limit(ipv6_packet(pod2, dst, chain, 58, &message), 255)
        };
        let ns = solicit(a("ff02::1:ff00:5"), &[]);
        expect6(&mut h, framing, Direction::Ingress, &ns, &ns);
        let (node, stranger) = (a("fd00:99::5"), a("2001:db8::9"));
        let (mdns, node_ll, site) = (a("ff02::fb"), a("fe80::1"), a("ff05::2"));
        let udp_to =
            |d: Ipv6Addr| ipv6_packet(pod2, d, &[], 17, &udp6(pod2, d, 5353, 5353, b"x", true));
        let drops = [
            (udp_to(node), drop_reason::NOT_EXPORTED, "to a node address"),
            (
                ipv6_packet(stranger, pod1, &[], 6, &tcp6(stranger, pod1, 1, 2, b"x")),
                drop_reason::SOURCE_NOT_ALLOWED,
                "from an address the peer may not use",
            ),
            (
                ipv6_packet(
                    pod2,
                    pod1,
                    &[Extension::Routing],
                    6,
                    &tcp6(pod2, pod1, 1, 2, b"x"),
                ),
                drop_reason::IP_OPTIONS,
                "a routing header",
            ),
            (
                hop_limit(ns.clone(), 64),
                drop_reason::UNSUPPORTED,
                "ND that crossed a router",
            ),
            (
                udp_to(mdns),
                drop_reason::UNSUPPORTED,
                "UDP to a link-scope group",
            ),
            (
                ipv6_packet(pod2, node_ll, &[], 6, &tcp6(pod2, node_ll, 1, 22, b"x")),
                drop_reason::UNSUPPORTED,
                "TCP to a link-local address",
            ),
            // A routing header behind a link-local destination is still one.
            (
                solicit(node_ll, &[Extension::Routing]),
                drop_reason::IP_OPTIONS,
                "a routing header to a link-local address",
            ),
            (
                udp_to(site),
                drop_reason::UNSUPPORTED,
                "site-scope multicast",
            ),
        ];
        for (packet, reason, what) in &drops {
            expect_drop6(&mut h, framing, Direction::Ingress, packet, *reason, what);
        }
        let hook = h.hook_counters(Direction::Ingress);
        assert_eq!((hook.packets, hook.translated), (2, 1));
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn a_hook_without_ipv6_rules_leaves_ipv6_alone() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        // IPv4 rules only.
        remapd_tests::cases::split_gw1(&mut h);
        let (pod1, seen) = (a("fd00:10:244::5"), a("fd00:30::7"));
        let p = ipv6_packet(pod1, seen, &[], 17, &udp6(pod1, seen, 1, 2, b"x", false));
        expect6(&mut h, framing, Direction::Egress, &p, &p);
        // Even one the IPv6 path would drop.
        let mut bad = p.clone();
        bad[5] += 8;
        expect6(&mut h, framing, Direction::Egress, &bad, &bad);
    }
}

/// Both addresses of one packet translated: the UDP checksum follows both changes, and
/// one that comes out as zero is sent as 0xffff (zero means "none", invalid in IPv6).
#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn udp_checksum_is_exact_after_translation_of_both_addresses() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        let (s, d, s2, d2) = translate_both(&mut h);
        let segment = |s, d| udp6(s, d, 9, 9, &[7; 33], true);
        let input = ipv6_packet(s, d, &[], 17, &segment(s, d));
        let expected = ipv6_packet(s2, d2, &[], 17, &segment(s2, d2));
        expect6(&mut h, framing, Direction::Ingress, &input, &expected);
        verify_checksums6(&expected);
        let (input, expected) = zero_sum_udp(s, d, s2, d2);
        assert_eq!(&expected[46..48], &[0xff, 0xff]);
        expect6(&mut h, framing, Direction::Ingress, &input, &expected);
    }
}

/// Ingress rules that translate both addresses of one packet (source real -> view,
/// destination fd00:60::/56 -> real); returns a source and destination before and after.
fn translate_both(h: &mut BpfHarness) -> (Ipv6Addr, Ipv6Addr, Ipv6Addr, Ipv6Addr) {
    h.add_rule6(Direction::Ingress, AddressField::Source, REAL, VIEW);
    h.add_rule6(
        Direction::Ingress,
        AddressField::Destination,
        "fd00:60::/56",
        REAL,
    );
    (
        a("fd00:10:244::1:2"),
        a("fd00:60::ff:1"),
        a("fd00:30::1:2"),
        a("fd00:10:244::ff:1"),
    )
}

/// A UDP datagram from `s` to `d` whose checksum, once translated to `s2` -> `d2`, sums
/// to zero (so is sent as 0xffff): (input, expected) IPv6 packets.
fn zero_sum_udp(s: Ipv6Addr, d: Ipv6Addr, s2: Ipv6Addr, d2: Ipv6Addr) -> (Vec<u8>, Vec<u8>) {
    let word = (0..=u16::MAX)
        .find(|w| {
            let segment = udp6(s2, d2, 9, 9, &w.to_be_bytes(), false);
            let mut all = remapd_tests::packet::pseudo_header6(s2, d2, 17, segment.len());
            all.extend_from_slice(&segment);
            remapd_tests::packet::inet_checksum(&all) == 0
        })
        .expect("some payload word makes the sum zero");
    let payload = word.to_be_bytes();
    (
        ipv6_packet(s, d, &[], 17, &udp6(s, d, 9, 9, &payload, true)),
        ipv6_packet(s2, d2, &[], 17, &udp6(s2, d2, 9, 9, &payload, true)),
    )
}

/// On a CHECKSUM_COMPLETE skb (`skb->csum` seeded by the test run over the IPv6 header
/// and everything after it, and checked afterwards: `EBADMSG` when stale) the address
/// change and the transport checksum's change cancel out, so `skb->csum` must stay as
/// it was — which the helper would break if it were told the change was to the
/// pseudo-header. Ethernet framing only (see bpf_checksum_complete.rs on why).
#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn checksum_complete_skbs_stay_consistent() {
    let mut h = BpfHarness::new();
    let (s, d, s2, d2) = translate_both(&mut h);
    let cases = segments();
    for (proto, segment) in &cases {
        let input = frame6(Framing::L2, &ipv6_packet(s, d, &[], *proto, &segment(s, d)));
        let expected = frame6(
            Framing::L2,
            &ipv6_packet(s2, d2, &[], *proto, &segment(s2, d2)),
        );
        let run = h
            .run_checksum_complete(program(Framing::L2, Direction::Ingress), &input)
            .unwrap_or_else(|e| panic!("protocol {proto}: {e} — skb->csum left stale"));
        assert_eq!(run.verdict, VERDICT_NEXT, "protocol {proto}");
        assert_eq!(hex(&run.packet), hex(&expected), "protocol {proto}");
    }
    // A checksum that comes out as zero, and a later fragment (no checksum field moves:
    // skb->csum takes the address change).
    let (input, expected) = zero_sum_udp(s, d, s2, d2);
    let datagram = |s, d| udp6(s, d, 7, 9, &[0xab; 40], true);
    let later = |s, d| {
        ipv6_packet(
            s,
            d,
            &[Extension::Fragment {
                offset: 3,
                more: false,
            }],
            17,
            &datagram(s, d)[24..],
        )
    };
    let mut later_expected = later(s, d);
    later_expected[8..24].copy_from_slice(&s2.octets());
    later_expected[24..40].copy_from_slice(&d2.octets());
    for (what, input, expected) in [
        ("zero sum", input, expected),
        ("later fragment", later(s, d), later_expected),
    ] {
        let run = h
            .run_checksum_complete(
                program(Framing::L2, Direction::Ingress),
                &frame6(Framing::L2, &input),
            )
            .unwrap_or_else(|e| panic!("{what}: {e} — skb->csum left stale"));
        assert_eq!(run.verdict, VERDICT_NEXT, "{what}");
        assert_eq!(
            hex(&run.packet),
            hex(&frame6(Framing::L2, &expected)),
            "{what}"
        );
    }
}

/// ICMPv6 errors crossing the remap get their quote translated, so path-MTU discovery
/// (packet too big) and traceroute (time exceeded) work: the quote's addresses, its
/// transport checksum and the ICMPv6 checksum, byte for byte. On a border the quote
/// must be a packet the peering could have carried.
#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn icmpv6_errors_have_their_quote_translated() {
    for framing in BOTH {
        let mut h = BpfHarness::new();
        let (egress, ingress) = split_gw1(&mut h);
        h.set_border_dual(&["30.0.0.0/24"], &["40.0.0.0/24"], &[VIEW], &[REAL]);
        let (pod1, pod2, seen) = (a("fd00:10:244::5"), a("fd00:10:244::7"), a("fd00:30::7"));
        // Pod 1 sent pod 2 (as fd00:30::7) a TCP segment; gateway 1 translated its
        // destination. Pod 2's side answers with an error: outer from pod 2's real
        // address, quoting pod 1 -> pod 2 (real).
        let sent = |d: Ipv6Addr| ipv6_packet(pod1, d, &[], 6, &tcp6(pod1, d, 40000, 443, &[9; 64]));
        for (icmp_type, rest) in [(2u8, [0, 0, 5, 0]), (3, [0; 4]), (1, [0; 4])] {
            let error = ipv6_packet(
                pod2,
                pod1,
                &[],
                58,
                &icmp6(pod2, pod1, icmp_type, 0, rest, &sent(pod2)),
            );
            let expected = ipv6_packet(
                seen,
                pod1,
                &[],
                58,
                &icmp6(seen, pod1, icmp_type, 0, rest, &sent(seen)),
            );
            expect6(&mut h, framing, Direction::Ingress, &error, &expected);
            verify_checksums6(&expected);
        }
        // A quote with extension headers before its transport header: the quote's
        // checksum is found past them and moved too.
        let sent_with_options = |d: Ipv6Addr| {
            ipv6_packet(
                pod1,
                d,
                &[Extension::HopByHop, Extension::DestinationOptions],
                6,
                &tcp6(pod1, d, 40000, 443, &[9; 64]),
            )
        };
        let error = ipv6_packet(
            pod2,
            pod1,
            &[],
            58,
            &icmp6(pod2, pod1, 2, 0, [0, 0, 5, 0], &sent_with_options(pod2)),
        );
        let expected = ipv6_packet(
            seen,
            pod1,
            &[],
            58,
            &icmp6(seen, pod1, 2, 0, [0, 0, 5, 0], &sent_with_options(seen)),
        );
        expect6(&mut h, framing, Direction::Ingress, &error, &expected);
        verify_checksums6(&expected);
        // Each error counts once on the ingress rule (outer and quote both use it).
        assert_eq!(h.counters(ingress).0, 4, "{framing:?}");
        // The other way: pod 1 sends pod 2 an error about pod 2's packet, quoting it as
        // pod 1 saw it (from fd00:30::7): the quote's source goes back to pod 2's real
        // address on egress.
        let reply =
            |s: Ipv6Addr| ipv6_packet(s, pod1, &[], 17, &udp6(s, pod1, 53, 5353, b"answer", true));
        let error = ipv6_packet(
            pod1,
            seen,
            &[],
            58,
            &icmp6(pod1, seen, 1, 4, [0; 4], &reply(seen)),
        );
        let expected = ipv6_packet(
            pod1,
            pod2,
            &[],
            58,
            &icmp6(pod1, pod2, 1, 4, [0; 4], &reply(pod2)),
        );
        expect6(&mut h, framing, Direction::Egress, &error, &expected);
        verify_checksums6(&expected);
        assert_eq!(h.counters(egress).0, 1, "{framing:?}");
        // On the border: an error about a connection that is not the peering's (the
        // quote's destination is no peer address).
        let stranger = a("fd00:99::1");
        let foreign = ipv6_packet(pod1, stranger, &[], 6, &tcp6(pod1, stranger, 1, 2, b"x"));
        let error = ipv6_packet(
            pod2,
            pod1,
            &[],
            58,
            &icmp6(pod2, pod1, 2, 0, [0, 0, 5, 0], &foreign),
        );
        expect_drop6(
            &mut h,
            framing,
            Direction::Ingress,
            &error,
            drop_reason::QUOTE_NOT_ALLOWED,
            "an error about another connection",
        );
    }
}

/// A view whose 16-bit words sum to the same one's-complement value as [`REAL`]'s
/// (fd00 + 0030 + 0224 = fd00 + 0010 + 0244): RFC 6296's checksum-neutral mapping.
const NEUTRAL_VIEW: &str = "fd00:30:224::/56";

/// With a checksum-neutral pair of prefixes only the addresses change: every transport
/// checksum is already right for the new addresses, so the upper-layer bytes leave
/// exactly as they came (and the programs skip the checksum helper), on both framings
/// and with a CHECKSUM_COMPLETE skb, whose `skb->csum` must stay as it was.
#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn a_checksum_neutral_mapping_changes_only_the_addresses() {
    let (remote, local, remote_view) = (
        a("fd00:10:244::1:2"),
        a("fd00:10:244::ff:1"),
        a("fd00:30:224::1:2"),
    );
    let cases = segments();
    for framing in BOTH {
        let mut h = BpfHarness::new();
        h.add_rule6(
            Direction::Egress,
            AddressField::Destination,
            NEUTRAL_VIEW,
            REAL,
        );
        h.add_rule6(Direction::Ingress, AddressField::Source, REAL, NEUTRAL_VIEW);
        for (proto, segment) in &cases {
            for (direction, (s, d), (s2, d2)) in [
                (Direction::Egress, (local, remote_view), (local, remote)),
                (Direction::Ingress, (remote, local), (remote_view, local)),
            ] {
                let input = ipv6_packet(s, d, &[], *proto, &segment(s, d));
                let expected = ipv6_packet(s2, d2, &[], *proto, &segment(s2, d2));
                assert_eq!(
                    hex(&input[40..]),
                    hex(&expected[40..]),
                    "protocol {proto}: the pair is checksum-neutral"
                );
                expect6(&mut h, framing, direction, &input, &expected);
                verify_checksums6(&expected);
                if framing == Framing::L2 {
                    let run = h
                        .run_checksum_complete(
                            program(framing, direction),
                            &frame6(framing, &input),
                        )
                        .unwrap_or_else(|e| panic!("protocol {proto}: {e} — skb->csum moved"));
                    assert_eq!(run.verdict, VERDICT_NEXT, "protocol {proto}");
                    assert_eq!(hex(&run.packet), hex(&frame6(framing, &expected)));
                }
            }
        }
    }
}

/// The MSS clamp on IPv6: a SYN's and a SYN-ACK's MSS option is lowered to the hook's
/// clamp less 20 (IPv6's header is 20 bytes longer than IPv4's, for which the clamp is
/// set), with the translation on the same packet and past extension headers; smaller
/// values, non-SYNs and later fragments pass as they are, and the hook counts what it
/// lowered.
#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn mss_of_ipv6_syns_is_clamped_to_20_less() {
    let (local, remote, remote_view) = (
        a("fd00:10:244::ff:1"),
        a("fd00:10:244::1:2"),
        a("fd00:30::1:2"),
    );
    let syn = |s, d, flags, mss, chain: &[Extension]| {
        ipv6_packet(
            s,
            d,
            chain,
            6,
            &remapd_tests::packet::tcp6_with_options(
                s,
                d,
                flags,
                &remapd_tests::packet::syn_options(mss),
            ),
        )
    };
    let options = [Extension::DestinationOptions];
    // The same SYN bytes (checksummed for the untranslated pair) as a later fragment.
    let segment = remapd_tests::packet::tcp6_with_options(
        local,
        remote_view,
        0x02,
        &remapd_tests::packet::syn_options(1460),
    );
    let later_fragment = |s, d| {
        ipv6_packet(
            s,
            d,
            &[Extension::Fragment {
                offset: 3,
                more: false,
            }],
            6,
            &segment,
        )
    };
    for framing in BOTH {
        let mut h = BpfHarness::new();
        split_gw1(&mut h);
        h.set_mss_clamp(1360);
        let cases: [(Direction, Vec<u8>, Vec<u8>); 6] = [
            // Egress SYN: destination translated, MSS 1460 -> 1340.
            (
                Direction::Egress,
                syn(local, remote_view, 0x02, 1460, &[]),
                syn(local, remote, 0x02, 1340, &[]),
            ),
            // Ingress SYN-ACK behind a destination-options header.
            (
                Direction::Ingress,
                syn(remote, local, 0x12, 8940, &options),
                syn(remote_view, local, 0x12, 1340, &options),
            ),
            // Already small enough; not a SYN.
            (
                Direction::Egress,
                syn(local, remote_view, 0x02, 1300, &[]),
                syn(local, remote, 0x02, 1300, &[]),
            ),
            (
                Direction::Egress,
                syn(local, remote_view, 0x10, 1460, &[]),
                syn(local, remote, 0x10, 1460, &[]),
            ),
            // A SYN that matches no rule: still the tunnel's to clamp.
            (
                Direction::Egress,
                syn(local, a("fd00:99::1"), 0x02, 1460, &[]),
                syn(local, a("fd00:99::1"), 0x02, 1340, &[]),
            ),
            // A later fragment whose bytes look like a SYN: payload, not a header.
            (
                Direction::Egress,
                later_fragment(local, remote_view),
                later_fragment(local, remote),
            ),
        ];
        for (i, (direction, input, expected)) in cases.iter().enumerate() {
            expect6(&mut h, framing, *direction, input, expected);
            if i + 1 < cases.len() {
                verify_checksums6(expected);
            }
        }
        let egress = h.hook_counters(Direction::Egress);
        assert_eq!(
            (egress.packets, egress.translated, egress.mss_clamped),
            (5, 4, 2),
            "{framing:?}: egress"
        );
        let ingress = h.hook_counters(Direction::Ingress);
        assert_eq!(
            (ingress.packets, ingress.translated, ingress.mss_clamped),
            (1, 1, 1),
            "{framing:?}: ingress"
        );
    }
}
