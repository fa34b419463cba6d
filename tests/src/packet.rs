//! Test packets built byte by byte (checksums computed here, from first principles), and
//! an independent verifier built on `etherparse`, so no assertion relies on the code
//! under test to say what a correct packet looks like.

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{Icmpv4Slice, Ipv4HeaderSlice, TcpHeaderSlice, UdpHeaderSlice};

/// Internet checksum (RFC 1071) over `data`.
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.push(0);
    p.push(proto);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    p
}

/// Fields of an IPv4 header a test may want to vary.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol number.
    pub proto: u8,
    /// Identification.
    pub id: u16,
    /// Flags and fragment offset (in 8-byte units), as on the wire.
    pub flags_frag: u16,
    /// Options, padded by the caller to a multiple of 4 bytes.
    pub options: Vec<u8>,
    /// Override for the total-length field (to make malformed packets).
    pub total_len: Option<u16>,
}

impl Ipv4 {
    /// A plain header: DF set, TTL 64, no options.
    pub fn new(src: &str, dst: &str, proto: u8) -> Self {
        Self {
            src: src.parse().expect("test address"),
            dst: dst.parse().expect("test address"),
            proto,
            id: 0x1c46,
            flags_frag: 0x4000,
            options: Vec::new(),
            total_len: None,
        }
    }

    /// Serializes the header followed by `payload`, with a correct header checksum.
    pub fn with_payload(&self, payload: &[u8]) -> Vec<u8> {
        assert_eq!(self.options.len() % 4, 0, "options must be padded");
        let ihl = 5 + self.options.len() / 4;
        let total = self.total_len.unwrap_or((ihl * 4 + payload.len()) as u16);
        let mut h = vec![
            (4 << 4) | ihl as u8,
            0,
            (total >> 8) as u8,
            total as u8,
            (self.id >> 8) as u8,
            self.id as u8,
            (self.flags_frag >> 8) as u8,
            self.flags_frag as u8,
            64,
            self.proto,
            0,
            0,
        ];
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        h.extend_from_slice(&self.options);
        let c = inet_checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(payload);
        h
    }
}

/// A TCP segment (20-byte header, ACK|PSH) with its checksum over the pseudo-header.
pub fn tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&0x0102_0304u32.to_be_bytes());
    t.extend_from_slice(&0x0a0b_0c0du32.to_be_bytes());
    t.extend_from_slice(&[0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    let mut sum_input = pseudo_header(src, dst, 6, t.len());
    sum_input.extend_from_slice(&t);
    let c = inet_checksum(&sum_input);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// A TCP segment with `flags` (e.g. 0x02 SYN) and `options` (padded with EOL to a
/// multiple of 4 bytes), no payload, checksum over the pseudo-header.
pub fn tcp_with_options(src: Ipv4Addr, dst: Ipv4Addr, flags: u8, options: &[u8]) -> Vec<u8> {
    let mut opts = options.to_vec();
    while !opts.len().is_multiple_of(4) {
        opts.push(0);
    }
    let doff = (20 + opts.len()) / 4;
    let mut t = Vec::new();
    t.extend_from_slice(&40000u16.to_be_bytes());
    t.extend_from_slice(&80u16.to_be_bytes());
    t.extend_from_slice(&0x0102_0304u32.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes());
    t.extend_from_slice(&[(doff as u8) << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(&opts);
    let mut sum_input = pseudo_header(src, dst, 6, t.len());
    sum_input.extend_from_slice(&t);
    let c = inet_checksum(&sum_input);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// A UDP datagram; `with_checksum = false` leaves the checksum 0 ("none").
pub fn udp(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
    with_checksum: bool,
) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    if with_checksum {
        let mut sum_input = pseudo_header(src, dst, 17, len);
        sum_input.extend_from_slice(&u);
        let mut c = inet_checksum(&sum_input);
        if c == 0 {
            c = 0xffff;
        }
        u[6..8].copy_from_slice(&c.to_be_bytes());
    }
    u
}

/// A UDP-Lite datagram (RFC 3828) with checksum coverage 0 (the whole datagram), its
/// checksum over the pseudo-header (protocol 136).
pub fn udplite(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&[0, 0, 0, 0]); // coverage 0, checksum
    u.extend_from_slice(payload);
    let mut sum_input = pseudo_header(src, dst, 136, u.len());
    sum_input.extend_from_slice(&u);
    let mut c = inet_checksum(&sum_input);
    if c == 0 {
        c = 0xffff;
    }
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

/// A DCCP-Data packet (RFC 4340) with a 16-byte generic header (X = 1), CsCov 0 (the
/// checksum covers the whole packet) and its checksum over the pseudo-header (protocol 33).
pub fn dccp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&sport.to_be_bytes());
    d.extend_from_slice(&dport.to_be_bytes());
    d.push(4); // data offset: 4 words
    d.push(0); // CCVal 0, CsCov 0
    d.extend_from_slice(&[0, 0]); // checksum
    d.push((2 << 1) | 1); // type 2 (Data), X = 1
    d.push(0);
    d.extend_from_slice(&[0, 0, 0, 0, 0x12, 0x34]); // 48-bit sequence number
    d.extend_from_slice(payload);
    let mut sum_input = pseudo_header(src, dst, 33, d.len());
    sum_input.extend_from_slice(&d);
    let c = inet_checksum(&sum_input);
    d[6..8].copy_from_slice(&c.to_be_bytes());
    d
}

/// Whether a transport segment's checksum over the IPv4 pseudo-header and the whole
/// segment is right (the one's-complement sum of everything is all ones).
pub fn pseudo_header_checksum_ok(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> bool {
    let mut sum_input = pseudo_header(src, dst, proto, segment.len());
    sum_input.extend_from_slice(segment);
    inet_checksum(&sum_input) == 0
}

/// An ICMP message: type, code, the 4-byte rest-of-header, payload, checksum.
pub fn icmp(icmp_type: u8, code: u8, rest: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut m = vec![icmp_type, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(payload);
    let c = inet_checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// Prepends an Ethernet header carrying `ethertype`.
pub fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Link framing of a test packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// With an Ethernet header.
    L2,
    /// Starting at the IP header.
    L3,
}

impl Framing {
    /// Frames an IPv4 packet.
    pub fn frame(self, ip_packet: &[u8]) -> Vec<u8> {
        match self {
            Self::L2 => ethernet(0x0800, ip_packet),
            Self::L3 => ip_packet.to_vec(),
        }
    }

    /// Offset of the IP header.
    pub fn l3_offset(self) -> usize {
        match self {
            Self::L2 => 14,
            Self::L3 => 0,
        }
    }
}

/// Checks every checksum in an IPv4 packet (starting at the IP header) with etherparse:
/// the IP header; TCP/UDP over the pseudo-header (first fragments of unfragmented
/// datagrams only, since the checksum covers the whole datagram); ICMP over the message;
/// and for ICMP errors the quoted IP header. Panics with a description on any mismatch.
pub fn verify_checksums(ip_packet: &[u8]) {
    let ip = Ipv4HeaderSlice::from_slice(ip_packet).expect("valid IPv4 header");
    let header = ip.to_header();
    assert_eq!(
        ip.header_checksum(),
        header.calc_header_checksum(),
        "IPv4 header checksum"
    );
    let payload = &ip_packet[ip.slice().len()..ip.total_len() as usize];
    let fragmented = ip.more_fragments() || u16::from(ip.fragments_offset()) != 0;
    if u16::from(ip.fragments_offset()) != 0 {
        return;
    }
    match ip.protocol().0 {
        6 if !fragmented => {
            let tcp = TcpHeaderSlice::from_slice(payload).expect("valid TCP header");
            let data = &payload[tcp.slice().len()..];
            let expect = tcp
                .to_header()
                .calc_checksum_ipv4_raw(ip.source(), ip.destination(), data)
                .expect("checksum computable");
            assert_eq!(tcp.checksum(), expect, "TCP checksum");
        }
        17 if !fragmented => {
            let udp = UdpHeaderSlice::from_slice(payload).expect("valid UDP header");
            if udp.checksum() != 0 {
                let expect = udp
                    .to_header()
                    .calc_checksum_ipv4_raw(ip.source(), ip.destination(), &payload[8..])
                    .expect("checksum computable");
                assert_eq!(udp.checksum(), expect, "UDP checksum");
            }
        }
        33 | 136 if !fragmented => {
            let name = if ip.protocol().0 == 33 {
                "DCCP"
            } else {
                "UDP-Lite"
            };
            assert!(
                pseudo_header_checksum_ok(
                    ip.source_addr(),
                    ip.destination_addr(),
                    ip.protocol().0,
                    payload
                ),
                "{name} checksum over the pseudo-header"
            );
        }
        1 => {
            let icmp = Icmpv4Slice::from_slice(payload).expect("valid ICMP");
            assert_eq!(
                inet_checksum(payload),
                0,
                "ICMP checksum (sum over message)"
            );
            let _ = icmp;
            if matches!(payload[0], 3 | 11 | 12) {
                let quoted = &payload[8..];
                let inner = Ipv4HeaderSlice::from_slice(quoted).expect("quoted IPv4 header");
                assert_eq!(
                    inner.header_checksum(),
                    inner.to_header().calc_header_checksum(),
                    "quoted IPv4 header checksum"
                );
            }
        }
        _ => {}
    }
}

/// Source and destination of an IPv4 packet starting at the IP header.
pub fn addresses(ip_packet: &[u8]) -> (Ipv4Addr, Ipv4Addr) {
    let ip = Ipv4HeaderSlice::from_slice(ip_packet).expect("valid IPv4 header");
    (ip.source_addr(), ip.destination_addr())
}

/// An IPv6 extension header for [`ipv6_packet`]: each is 8 bytes long.
#[derive(Clone, Copy, Debug)]
pub enum Extension {
    /// Hop-by-hop options (PadN only).
    HopByHop,
    /// Destination options (PadN only).
    DestinationOptions,
    /// A segment routing header with no segments left (type 4).
    Routing,
    /// A fragment header: offset in 8-byte units, and the more-fragments flag.
    Fragment { offset: u16, more: bool },
}

impl Extension {
    fn number(self) -> u8 {
        match self {
            Self::HopByHop => 0,
            Self::Routing => 43,
            Self::Fragment { .. } => 44,
            Self::DestinationOptions => 60,
        }
    }

    fn bytes(self, next: u8) -> [u8; 8] {
        match self {
            // PadN of 4 bytes after the 2-byte header... 6 bytes: type 1, length 4.
            Self::HopByHop | Self::DestinationOptions => [next, 0, 1, 4, 0, 0, 0, 0],
            Self::Routing => [next, 0, 4, 0, 0, 0, 0, 0],
            Self::Fragment { offset, more } => {
                let field = (offset << 3) | u16::from(more);
                let [a, b] = field.to_be_bytes();
                [next, 0, a, b, 0x12, 0x34, 0x56, 0x78]
            }
        }
    }
}

/// The IPv6 pseudo-header (RFC 8200 section 8.1) for an upper-layer packet of `len`
/// bytes of protocol `proto`.
pub fn pseudo_header6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&(len as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, proto]);
    p
}

/// `segment` (a TCP, UDP, UDP-Lite, DCCP or ICMPv6 message with its checksum field at
/// `check_off` zero) with the checksum over the IPv6 pseudo-header filled in.
pub fn with_checksum6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    proto: u8,
    mut segment: Vec<u8>,
    check_off: usize,
) -> Vec<u8> {
    segment[check_off..check_off + 2].copy_from_slice(&[0, 0]);
    let mut all = pseudo_header6(src, dst, proto, segment.len());
    all.extend_from_slice(&segment);
    let mut check = inet_checksum(&all);
    if proto == 17 && check == 0 {
        check = 0xffff;
    }
    segment[check_off..check_off + 2].copy_from_slice(&check.to_be_bytes());
    segment
}

/// A TCP segment (ACK|PSH, 20-byte header) between two IPv6 hosts, checksum filled in.
pub fn tcp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[
        1, 2, 3, 4, 10, 11, 12, 13, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0,
    ]);
    t.extend_from_slice(payload);
    with_checksum6(src, dst, 6, t, 16)
}

/// TCP options as Linux sends them on a SYN, with the MSS option in the middle so an
/// option walk has to step over NOPs and a 10-byte timestamp first.
pub fn syn_options(mss: u16) -> Vec<u8> {
    [
        [1u8, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 2, 4].as_slice(),
        &mss.to_be_bytes(),
        &[4, 2, 1, 3, 3, 7],
    ]
    .concat()
}

/// A TCP segment between two IPv6 hosts with `flags` and `options` (padded to a
/// multiple of 4), checksum filled in: [`tcp_with_options`] with IPv6's pseudo-header.
pub fn tcp6_with_options(src: Ipv6Addr, dst: Ipv6Addr, flags: u8, options: &[u8]) -> Vec<u8> {
    let segment = tcp_with_options(Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, flags, options);
    with_checksum6(src, dst, 6, segment, 16)
}

/// A UDP datagram between two IPv6 hosts, checksum filled in (or left zero).
pub fn udp6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
    with_checksum: bool,
) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    if with_checksum {
        with_checksum6(src, dst, 17, u, 6)
    } else {
        u
    }
}

/// An ICMPv6 message (type, code, 4 bytes of rest, payload), checksum filled in.
pub fn icmp6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    icmp_type: u8,
    code: u8,
    rest: [u8; 4],
    payload: &[u8],
) -> Vec<u8> {
    let mut m = vec![icmp_type, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(payload);
    with_checksum6(src, dst, 58, m, 2)
}

/// An IPv6 packet: fixed header, the `chain` of extension headers, then an upper-layer
/// `payload` of protocol `proto`. The payload length is computed.
pub fn ipv6_packet(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    chain: &[Extension],
    proto: u8,
    payload: &[u8],
) -> Vec<u8> {
    let first = chain.first().map_or(proto, |e| e.number());
    let mut p = vec![0x60, 0x01, 0x23, 0x45];
    p.extend_from_slice(&((8 * chain.len() + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[first, 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    for (i, e) in chain.iter().enumerate() {
        let next = chain.get(i + 1).map_or(proto, |n| n.number());
        p.extend_from_slice(&e.bytes(next));
    }
    p.extend_from_slice(payload);
    p
}

/// Frames an IPv6 packet: with an Ethernet header (ethertype 0x86dd) or as it is.
pub fn frame6(framing: Framing, ip_packet: &[u8]) -> Vec<u8> {
    match framing {
        Framing::L2 => ethernet(0x86dd, ip_packet),
        Framing::L3 => ip_packet.to_vec(),
    }
}

/// Checks the upper-layer checksum of an unfragmented IPv6 packet (starting at the IP
/// header) with etherparse for TCP and UDP, and over the pseudo-header from first
/// principles for ICMPv6. Panics with a description on any mismatch.
pub fn verify_checksums6(ip_packet: &[u8]) {
    let ip = etherparse::Ipv6HeaderSlice::from_slice(ip_packet).expect("valid IPv6 header");
    let (src, dst) = (ip.source(), ip.destination());
    let end = 40 + usize::from(ip.payload_length());
    assert_eq!(end, ip_packet.len(), "payload length");
    // Walk the extension headers this module builds (8 bytes each).
    let mut next = ip.next_header().0;
    let mut off = 40;
    while matches!(next, 0 | 43 | 44 | 60) {
        assert_ne!(next, 44, "fragments are checked by the caller");
        next = ip_packet[off];
        off += 8;
    }
    let segment = &ip_packet[off..end];
    match next {
        6 => {
            let tcp = TcpHeaderSlice::from_slice(segment).expect("valid TCP header");
            let expect = tcp
                .to_header()
                .calc_checksum_ipv6_raw(src, dst, &segment[tcp.slice().len()..])
                .expect("checksum computable");
            assert_eq!(tcp.checksum(), expect, "TCP checksum");
        }
        17 => {
            let udp = UdpHeaderSlice::from_slice(segment).expect("valid UDP header");
            let expect = udp
                .to_header()
                .calc_checksum_ipv6_raw(src, dst, &segment[8..])
                .expect("checksum computable");
            assert_eq!(udp.checksum(), expect, "UDP checksum");
        }
        58 => {
            let mut all = pseudo_header6(src.into(), dst.into(), 58, segment.len());
            all.extend_from_slice(segment);
            assert_eq!(inet_checksum(&all), 0, "ICMPv6 checksum");
        }
        other => panic!("no checksum check for protocol {other}"),
    }
}
