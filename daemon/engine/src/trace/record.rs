//! What a trace streams: one [`TraceItem`] per line (NDJSON) or SSE event.

use std::net::Ipv4Addr;

use serde::Serialize;
use utoipa::ToSchema;

use remapd_model::rule::{AddressField, Direction};

/// What the dataplane did with a traced packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TraceVerdict {
    /// An address (or the quoted packet of an ICMP error, or a SYN's MSS) was rewritten
    /// and the packet passed.
    Translated,
    /// The packet was dropped (`reason` says why).
    Dropped,
}

/// A packet's addresses and ports at one point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct PacketAddresses {
    /// Source address.
    #[schema(value_type = String, example = "10.244.1.5")]
    pub src: Ipv4Addr,
    /// Destination address.
    #[schema(value_type = String, example = "100.64.1.7")]
    pub dst: Ipv4Addr,
    /// Source port (TCP, UDP, UDP-Lite, DCCP first fragments).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_port: Option<u16>,
    /// Destination port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
}

/// ICMP header fields of a traced ICMP packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct IcmpFields {
    /// ICMP type (0 echo reply, 3 unreachable, 8 echo request, 11 time exceeded, ...).
    #[serde(rename = "type")]
    pub icmp_type: u8,
    /// ICMP code.
    pub code: u8,
    /// Echo identifier (echo request and reply).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u16>,
}

/// A rule that matched the packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct FiredRule {
    /// The rule's counter slot (as in `/v1/status` and the metrics).
    pub id: u32,
    /// The address it rewrites.
    pub field: AddressField,
    /// The prefix it matched (absent when the slot no longer holds a rule of this
    /// interface, hook and field: the rules changed since the packet).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub from: Option<ipnet::IpNet>,
    /// The prefix it rewrote into.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub to: Option<ipnet::IpNet>,
}

/// One packet the dataplane translated or dropped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct TraceRecord {
    /// When the program ran (RFC 3339, microseconds).
    pub time: String,
    /// The interface (a tunnel).
    pub interface: String,
    /// The peering whose tunnel it is, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peering: Option<String>,
    /// The hook.
    pub direction: Direction,
    /// `tcp`, `udp`, `icmp`, `udplite`, `dccp`, or the protocol number; `other` for
    /// what is not IPv4.
    pub protocol: String,
    /// The IP protocol number (0 when not IPv4).
    #[serde(skip)]
    pub protocol_number: u8,
    /// `bpf_ktime_get_ns` of the event (CLOCK_MONOTONIC), to tell it from events
    /// written before a trace started.
    #[serde(skip)]
    pub ktime_ns: u64,
    /// Translated or dropped.
    pub verdict: TraceVerdict,
    /// Why it was dropped (`not_exported`, `source_not_allowed`, `malformed`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Addresses as the packet arrived at the hook (absent when not IPv4, or for a
    /// packet the programs were handling when the trace started).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<PacketAddresses>,
    /// Addresses as it left (translated packets only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<PacketAddresses>,
    /// ICMP fields, for ICMP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp: Option<IcmpFields>,
    /// The rules that matched (for a dropped packet: the rules that would have applied).
    pub rules: Vec<FiredRule>,
    /// The packet quoted in an ICMP error was translated too.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub quote_translated: bool,
    /// A SYN's MSS option was lowered.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub mss_clamped: bool,
    /// Packet length in bytes (the whole skb).
    pub bytes: u32,
}

/// Why events a trace matched were not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LostCause {
    /// The kernel's ring buffer was full (counted for every running trace).
    BufferFull = 0,
    /// Over the trace's `rate`.
    RateCap = 1,
    /// The client read too slowly.
    SlowReader = 2,
}

/// How a trace ended, with its totals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct TraceEnd {
    /// `count` or `duration` (its limits), `teardown` (everything remapd made was
    /// removed), `shutdown` (the daemon is stopping), or `stopped` (the trace could not
    /// go on: its queue was full at the end, or the daemon stopped draining).
    pub reason: String,
    /// Events sent.
    pub events: u64,
    /// Events lost to a full kernel buffer while the trace ran.
    pub lost_buffer_full: u64,
    /// Events not sent because of the rate cap.
    pub lost_rate_cap: u64,
    /// Events lost because the client read too slowly.
    pub lost_slow_reader: u64,
}

/// One item of a trace stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum TraceItem {
    /// A packet.
    Event(Box<TraceRecord>),
    /// Matching events that were not sent (reported at most once a second per cause).
    Lost {
        /// Why.
        cause: LostCause,
        /// How many since the last report.
        events: u64,
    },
    /// The last item.
    End(TraceEnd),
    /// Nothing else to send for a while (NDJSON only: sent after 15 s without another
    /// item, so a client that went away is noticed and its trace ends; SSE sends
    /// comments instead). Carries nothing.
    Keepalive,
}

impl TraceItem {
    /// The SSE event name of this item.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Event(_) => "event",
            Self::Lost { .. } => "lost",
            Self::End(_) => "end",
            Self::Keepalive => "keepalive",
        }
    }
}

/// Protocols by name, as queries and records spell them.
const PROTOCOLS: [(&str, u8); 5] = [
    ("icmp", 1),
    ("tcp", 6),
    ("udp", 17),
    ("dccp", 33),
    ("udplite", 136),
];

/// The name of an IP protocol (its number when it has none here).
pub fn protocol_name(number: u8) -> String {
    PROTOCOLS
        .iter()
        .find(|(_, n)| *n == number)
        .map_or_else(|| number.to_string(), |(name, _)| (*name).to_owned())
}

/// The number of a protocol given by name or number.
pub fn protocol_number(text: &str) -> Option<u8> {
    PROTOCOLS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(text))
        .map(|(_, n)| *n)
        .or_else(|| text.parse().ok())
}
