//! What the BPF packet tests share: the program for a framing and direction, the seed
//! split rules, test packets by address, and the three outcomes a test asserts (passed
//! as an exact expected packet, passed untouched, dropped unmodified).

use std::net::Ipv4Addr;

use remapd::dataplane::{AddressField, Direction};
use remapd_common::{drop_reason, programs};

use crate::bpf::{BpfHarness, VERDICT_DROP, VERDICT_NEXT};
use crate::packet::{Framing, Ipv4, tcp, udp, verify_checksums};

/// Both framings, for tests that run every case on each.
pub const BOTH: [Framing; 2] = [Framing::L2, Framing::L3];
/// A drop-counter array with nothing dropped.
pub const NO_DROPS: [u64; drop_reason::COUNT] = [0; drop_reason::COUNT];

/// The production program for a framing and direction.
pub fn program(framing: Framing, direction: Direction) -> &'static str {
    match (framing, direction) {
        (Framing::L2, Direction::Ingress) => programs::L2_INGRESS,
        (Framing::L2, Direction::Egress) => programs::L2_EGRESS,
        (Framing::L3, Direction::Ingress) => programs::L3_INGRESS,
        (Framing::L3, Direction::Egress) => programs::L3_EGRESS,
    }
}

/// An IPv4 address from text.
pub fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("test address")
}

/// Bytes as spaced hex, so a failed comparison shows where packets differ.
pub fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A TCP packet (ports 40000 -> 80) with correct checksums.
pub fn tcp_packet(src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
    Ipv4::new(src, dst, 6).with_payload(&tcp(ip(src), ip(dst), 40000, 80, payload))
}

/// A UDP packet (ports 5353 -> 9999), with or without a checksum.
pub fn udp_packet(src: &str, dst: &str, payload: &[u8], with_checksum: bool) -> Vec<u8> {
    Ipv4::new(src, dst, 17).with_payload(&udp(ip(src), ip(dst), 5353, 9999, payload, with_checksum))
}

/// The split strategy on gateway 1 of the seed (both clusters on 40.0.0.0/24, cluster 1
/// sees cluster 2 at 30.0.0.0/24): egress dst 30/24 -> 40/24, ingress src 40/24 -> 30/24.
/// Returns the (egress, ingress) counter slots.
pub fn split_gw1(h: &mut BpfHarness) -> (u32, u32) {
    let egress = h.add_rule(
        Direction::Egress,
        AddressField::Destination,
        "30.0.0.0/24",
        "40.0.0.0/24",
    );
    let ingress = h.add_rule(
        Direction::Ingress,
        AddressField::Source,
        "40.0.0.0/24",
        "30.0.0.0/24",
    );
    (egress, ingress)
}

/// Gateway 2's ingress in both-on-2 for the seed (gateway 2 does every rewrite): dst
/// 30/24 -> 40/24 (how cluster 1 sees us -> our real), src 40/24 -> 60/24 (cluster 1's
/// real -> our view of it). Returns the (destination, source) counter slots.
pub fn both_on_2_gw2_ingress(h: &mut BpfHarness) -> (u32, u32) {
    let dst = h.add_rule(
        Direction::Ingress,
        AddressField::Destination,
        "30.0.0.0/24",
        "40.0.0.0/24",
    );
    let src = h.add_rule(
        Direction::Ingress,
        AddressField::Source,
        "40.0.0.0/24",
        "60.0.0.0/24",
    );
    (dst, src)
}

/// [`split_gw1`] with its tunnel's ingress border: after translation the source must be
/// in 30.0.0.0/24 and the destination in cluster 1's 40.0.0.0/24.
pub fn split_gw1_with_border(h: &mut BpfHarness) -> (u32, u32) {
    let slots = split_gw1(h);
    h.set_border(&["30.0.0.0/24"], &["40.0.0.0/24"]);
    slots
}

/// Runs `input` (an IP packet) through the program for `direction` and asserts it passes
/// as `expected`, byte for byte (the Ethernet header untouched), with valid checksums.
pub fn expect_pass(
    h: &mut BpfHarness,
    framing: Framing,
    direction: Direction,
    input: &[u8],
    expected: &[u8],
) {
    let frame = framing.frame(input);
    let run = h.run(program(framing, direction), &frame);
    assert_eq!(
        run.verdict, VERDICT_NEXT,
        "{framing:?} {direction}: must pass"
    );
    let got = &run.packet[framing.l3_offset()..];
    assert_eq!(
        &run.packet[..framing.l3_offset()],
        &frame[..framing.l3_offset()],
        "Ethernet header untouched"
    );
    assert_eq!(
        hex(got),
        hex(expected),
        "{framing:?} {direction}: packet differs from the expected one"
    );
    verify_checksums(got);
}

/// Asserts the program leaves `frame` (already framed) exactly as it was.
pub fn expect_untouched(h: &mut BpfHarness, framing: Framing, direction: Direction, frame: &[u8]) {
    let run = h.run(program(framing, direction), frame);
    assert_eq!(run.verdict, VERDICT_NEXT, "verdict");
    assert_eq!(
        hex(&run.packet),
        hex(frame),
        "{framing:?} {direction}: packet must pass untouched"
    );
}

/// Runs `frame` (already framed) and asserts it is dropped unmodified.
pub fn expect_drop(
    h: &mut BpfHarness,
    framing: Framing,
    direction: Direction,
    frame: &[u8],
    what: &str,
) {
    let run = h.run(program(framing, direction), frame);
    assert_eq!(
        run.verdict, VERDICT_DROP,
        "{framing:?} {direction}: {what} must be dropped"
    );
    assert_eq!(
        hex(&run.packet),
        hex(frame),
        "{framing:?}: {what} is dropped unmodified"
    );
}
