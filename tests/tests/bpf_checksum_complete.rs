//! The programs on CHECKSUM_COMPLETE skbs (what NICs that checksum whole frames hand
//! up, and what GRO keeps): `skb->csum` covers the packet's bytes, so every rewrite must
//! carry it along. `BPF_F_TEST_SKB_CHECKSUM_COMPLETE` has the kernel seed `skb->csum`
//! from the test packet and fail the run with `EBADMSG` when it no longer matches the
//! packet afterwards. Each translating case runs on Ethernet framing, and the exact
//! output is compared too. (Not on bare IP framing: the test run treats every TC test
//! packet as an Ethernet frame and seeds `skb->csum` from byte 14, the middle of a bare
//! IP header, which no real layer-3 device does; the checksum code is the same for both
//! framings, only the header offset differs.) The reference rewrite of the benchmarks (direct writes, no care for
//! `skb->csum`) is the control: this check catches it. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use remapd::dataplane::Direction;
use remapd_common::bench_programs;
use remapd_tests::bpf::{BpfHarness, VERDICT_NEXT};
use remapd_tests::cases::{
    both_on_2_gw2_ingress, hex, ip, program, split_gw1, split_gw1_with_border, tcp_packet,
    udp_packet,
};
use remapd_tests::packet::{self, Framing, Ipv4, dccp, icmp, udplite};

/// (what, direction, input IP packet, expected IP packet)
type Case = (&'static str, Direction, Vec<u8>, Vec<u8>);

fn split_cases() -> Vec<Case> {
    let echo = icmp(8, 0, [0x12, 0x34, 0, 1], b"ping payload 0123456789");
    let original = tcp_packet("40.0.0.1", "40.0.0.1", b"a long segment payload!");
    let translated = tcp_packet("40.0.0.1", "30.0.0.1", b"a long segment payload!");
    let quote = 20 + 20 + 8;
    let error = |src: &str, q: &[u8]| {
        Ipv4::new(src, "40.0.0.1", 1).with_payload(&icmp(3, 4, [0, 0, 5, 0], &q[..quote]))
    };
    let l4 = |proto: u8, build: fn(_, _, _, _, &[u8]) -> Vec<u8>, dst: &str| {
        Ipv4::new("40.0.0.1", dst, proto).with_payload(&build(
            ip("40.0.0.1"),
            ip(dst),
            4000,
            5000,
            b"lite and dccp payload bytes",
        ))
    };
    vec![
        (
            "TCP, destination",
            Direction::Egress,
            tcp_packet("40.0.0.1", "30.0.0.7", b"hello, cluster two"),
            tcp_packet("40.0.0.1", "40.0.0.7", b"hello, cluster two"),
        ),
        (
            "UDP, source",
            Direction::Ingress,
            udp_packet("40.0.0.7", "40.0.0.1", b"reply from pod2", true),
            udp_packet("30.0.0.7", "40.0.0.1", b"reply from pod2", true),
        ),
        (
            "UDP without a checksum",
            Direction::Egress,
            udp_packet("40.0.0.1", "30.0.0.7", b"no checksum", false),
            udp_packet("40.0.0.1", "40.0.0.7", b"no checksum", false),
        ),
        (
            "ICMP echo",
            Direction::Egress,
            Ipv4::new("40.0.0.1", "30.0.0.1", 1).with_payload(&echo),
            Ipv4::new("40.0.0.1", "40.0.0.1", 1).with_payload(&echo),
        ),
        (
            "ICMP fragmentation needed quoting TCP",
            Direction::Ingress,
            error("40.0.0.1", &original),
            error("30.0.0.1", &translated),
        ),
        (
            "UDP-Lite",
            Direction::Egress,
            l4(136, udplite, "30.0.0.1"),
            l4(136, udplite, "40.0.0.1"),
        ),
        (
            "DCCP",
            Direction::Egress,
            l4(33, dccp, "30.0.0.1"),
            l4(33, dccp, "40.0.0.1"),
        ),
    ]
}

fn syn(dst: &str, mss: u16) -> Vec<u8> {
    let options = [[2u8, 4].as_slice(), &mss.to_be_bytes(), &[1, 1, 4, 2]].concat();
    Ipv4::new("40.0.0.1", dst, 6).with_payload(&packet::tcp_with_options(
        ip("40.0.0.1"),
        ip(dst),
        0x02,
        &options,
    ))
}

fn expect_complete_ok(h: &mut BpfHarness, framing: Framing, case: &Case) {
    let (what, direction, input, expected) = case;
    let run = h
        .run_checksum_complete(program(framing, *direction), &framing.frame(input))
        .unwrap_or_else(|e| panic!("{what} ({framing:?}): {e} — skb->csum left stale"));
    assert_eq!(run.verdict, VERDICT_NEXT, "{what} ({framing:?})");
    assert_eq!(
        hex(&run.packet),
        hex(&framing.frame(expected)),
        "{what} ({framing:?})"
    );
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn every_rewrite_keeps_a_checksum_complete_skb_consistent() {
    {
        let framing = Framing::L2;
        for case in split_cases() {
            let mut h = BpfHarness::new();
            split_gw1_with_border(&mut h);
            expect_complete_ok(&mut h, framing, &case);
        }
        // both-on-2: both addresses on one packet.
        let mut h = BpfHarness::new();
        both_on_2_gw2_ingress(&mut h);
        let case = (
            "both addresses",
            Direction::Ingress,
            tcp_packet("40.0.0.1", "30.0.0.1", b"both"),
            tcp_packet("60.0.0.1", "40.0.0.1", b"both"),
        );
        expect_complete_ok(&mut h, framing, &case);
        // The MSS clamp rewrites a TCP option on top of the address.
        let mut h = BpfHarness::new();
        split_gw1(&mut h);
        h.set_mss_clamp(1360);
        let case = (
            "SYN with its MSS clamped",
            Direction::Egress,
            syn("30.0.0.1", 1460),
            syn("40.0.0.1", 1360),
        );
        expect_complete_ok(&mut h, framing, &case);
    }
}

#[test]
#[cfg_attr(unprivileged, ignore = "needs root: run `make test` as root")]
fn the_check_catches_a_rewrite_that_leaves_skb_csum_stale() {
    let mut h = BpfHarness::new();
    h.add_reference_rule("30.0.0.0/24", "40.0.0.0/24");
    let input = Framing::L2.frame(&tcp_packet("40.0.0.1", "30.0.0.7", b"x"));
    let expected = Framing::L2.frame(&tcp_packet("40.0.0.1", "40.0.0.7", b"x"));
    // As an ordinary skb the reference rewrite is exact...
    assert_eq!(h.run(bench_programs::REFERENCE, &input).packet, expected);
    // ...but it never updates skb->csum, which the kernel notices.
    let err = h
        .run_checksum_complete(bench_programs::REFERENCE, &input)
        .expect_err("a stale skb->csum must fail the run");
    assert_eq!(err.raw_os_error(), Some(libc::EBADMSG), "{err}");
}
