//! Map key and value types shared by remapd's TC programs and the daemon.
//!
//! Everything here is `#[repr(C)]`, `Copy`, and padded explicitly so the byte layout the
//! kernel sees is the layout both sides compile. The daemon enables the `user` feature to
//! get `aya::Pod` implementations; the eBPF crate uses the types as they are.
//!
//! Each hook (interface + direction) has a [`HookConfig`]: its rules and, on a border
//! (a tunnel's ingress), its allow-lists, inline, so the common case costs two inlined
//! array lookups and no helper call. Hooks with many rules use the LPM trie below.
//!
//! The rule table is one LPM trie. Its key starts with a fixed 64-bit selector
//! (interface, direction, which address field, address family) followed by a 128-bit
//! address slot, so the same key shape carries IPv4 today and IPv6 later: an IPv4 rule
//! matches `RULE_KEY_SELECTOR_BITS + prefix_len` bits and leaves the remaining 96 address
//! bits zero.
#![no_std]

/// Maximum number of translation rules (and counter slots) the dataplane holds.
pub const MAX_RULES: u32 = 1 << 17;

/// Number of key bits before the address: `ifindex` (32), `direction`, `field`,
/// `family` and padding (8 each). Every rule matches all of them exactly.
pub const RULE_KEY_SELECTOR_BITS: u32 = 64;

/// Direction value for a rule that runs on TC ingress (before the local routing decision).
pub const DIRECTION_INGRESS: u8 = 0;
/// Direction value for a rule that runs on TC egress (after routing, before transmit).
pub const DIRECTION_EGRESS: u8 = 1;

/// Field value for a rule that rewrites the source address.
pub const FIELD_SOURCE: u8 = 0;
/// Field value for a rule that rewrites the destination address.
pub const FIELD_DESTINATION: u8 = 1;

/// Address family tag for IPv4 keys and values.
pub const FAMILY_IPV4: u8 = 4;
/// Address family tag reserved for IPv6 keys and values.
pub const FAMILY_IPV6: u8 = 6;

/// Name of the LPM trie that holds the rules.
pub const RULES_MAP: &str = "REMAPD_RULES";
/// Name of the per-CPU array that holds per-rule counters, indexed by `RuleValue::rule_id`.
pub const COUNTERS_MAP: &str = "REMAPD_COUNTERS";
/// Name of the array that says, per hook slot, which of the two [`HOOK_CONFIG_MAP`]
/// entries of that slot is live (0: the slot has no configuration; 1 or 2: entry
/// `2 * slot + value - 1`). Writers fill the idle entry and then flip this 4-byte
/// value, so a packet never reads a half-written configuration.
pub const HOOK_INDEX_MAP: &str = "REMAPD_HOOK_INDEX";
/// Name of the array of [`HookConfig`]s, two entries per hook slot (double buffer).
pub const HOOK_CONFIG_MAP: &str = "REMAPD_HOOK_CONFIG";
/// Name of the per-CPU array of [`HookCounters`], one per hook slot.
pub const HOOK_COUNTERS_MAP: &str = "REMAPD_HOOK_COUNTERS";
/// Name of the LPM trie holding ingress allow-lists too long to be inline in a
/// [`HookConfig`]. Keyed like the rules (`field` says source or destination); the value
/// is unused.
pub const ALLOW_MAP: &str = "REMAPD_ALLOW";
/// Number of hook slots. A hook's home slot is `(ifindex << 1 | direction) %
/// HOOK_SLOTS`; when another hook holds it, the daemon gives the hook the next free
/// slot among its [`HOOK_PROBES`], and the program tries them in order, checking the
/// configuration's `ifindex` and `direction`, so a hook never runs another's rules.
pub const HOOK_SLOTS: u32 = 4096;

/// Slots a hook may occupy: its home slot and the ones after it.
pub const HOOK_PROBES: u32 = 4;

/// The home slot of an interface and direction.
#[inline(always)]
pub const fn hook_slot(ifindex: u32, direction: u8) -> u32 {
    ((ifindex << 1) | (direction as u32 & 1)) & (HOOK_SLOTS - 1)
}

/// The `probe`-th slot (0 = home) a hook may occupy.
#[inline(always)]
pub const fn hook_probe(ifindex: u32, direction: u8, probe: u32) -> u32 {
    (hook_slot(ifindex, direction) + probe) & (HOOK_SLOTS - 1)
}

/// Rules per field kept inline in a [`HookConfig`]; a hook with more rules for a field
/// has the program look that field up in the LPM trie instead.
pub const INLINE_RULES: usize = 8;
/// Allow-list prefixes per field kept inline in a [`HookConfig`]; longer lists go to
/// [`ALLOW_MAP`].
pub const INLINE_ALLOW: usize = 8;

/// [`HookConfig::flags`]: the hook has source rules.
pub const HOOK_SRC_RULES: u32 = 1 << 0;
/// [`HookConfig::flags`]: the hook has destination rules.
pub const HOOK_DST_RULES: u32 = 1 << 1;
/// [`HookConfig::flags`]: source rules are looked up in the trie, not inline.
pub const HOOK_SRC_TRIE: u32 = 1 << 2;
/// [`HookConfig::flags`]: destination rules are looked up in the trie, not inline.
pub const HOOK_DST_TRIE: u32 = 1 << 3;
/// [`HookConfig::flags`]: the hook is a border (a tunnel's ingress): after translation an
/// IP packet passes only if its source is in the source allow-list and its destination in
/// the destination allow-list; everything else is dropped and counted.
pub const HOOK_ENFORCE: u32 = 1 << 4;
/// [`HookConfig::flags`]: the source allow-list is in [`ALLOW_MAP`].
pub const HOOK_ALLOW_SRC_TRIE: u32 = 1 << 5;
/// [`HookConfig::flags`]: the destination allow-list is in [`ALLOW_MAP`].
pub const HOOK_ALLOW_DST_TRIE: u32 = 1 << 6;

/// [`HookConfig::flags`]: on a border, every inline source rule's replacement prefix
/// lies inside the inline source allow-list, so a source a rule translated is allowed
/// without scanning the list. Set by the daemon only after checking that; a shortcut the
/// programs may take, never a different answer.
pub const HOOK_SRC_RULES_ALLOWED: u32 = 1 << 7;
/// [`HookConfig::flags`]: as [`HOOK_SRC_RULES_ALLOWED`], for destination rules and the
/// destination allow-list.
pub const HOOK_DST_RULES_ALLOWED: u32 = 1 << 8;

/// [`HookConfig::flags`]: the hook has IPv6 rules (always in the LPM trie). IPv6 packets
/// on a hook without this flag are looked at only on a border.
pub const HOOK_RULES6: u32 = 1 << 9;

/// One inline IPv4 rule. Addresses and masks are host-order integers of the wire bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InlineRule4 {
    /// Matched prefix (host bits zero).
    pub from: u32,
    /// Netmask of the prefix.
    pub mask: u32,
    /// Replacement prefix (host bits zero).
    pub to: u32,
    /// Counter slot in [`COUNTERS_MAP`].
    pub rule_id: u32,
}

/// One inline IPv4 allow-list prefix (host-order integers).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Prefix4 {
    /// Network address (host bits zero).
    pub addr: u32,
    /// Netmask.
    pub mask: u32,
}

/// Everything one hook (interface + direction) needs, read with two inlined array
/// lookups and no helper call. Inline rules are sorted longest prefix first, so the first
/// match is the longest-prefix match.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HookConfig {
    /// The interface this configuration belongs to (checked against the packet's).
    pub ifindex: u32,
    /// `HOOK_*` flags.
    pub flags: u32,
    /// Used entries of `src_rules` (when not in trie mode).
    pub n_src_rules: u32,
    /// Used entries of `dst_rules`.
    pub n_dst_rules: u32,
    /// Used entries of `allow_src`.
    pub n_allow_src: u32,
    /// Used entries of `allow_dst`.
    pub n_allow_dst: u32,
    /// The hook's direction (`DIRECTION_*`), checked with `ifindex`: a slot may hold
    /// another hook's configuration.
    pub direction: u32,
    /// Clamp the MSS option of TCP SYNs crossing this hook to this value, IPv6 SYNs to
    /// 20 less (0: do not).
    pub mss_clamp: u32,
    /// Source rules, longest prefix first.
    pub src_rules: [InlineRule4; INLINE_RULES],
    /// Destination rules, longest prefix first.
    pub dst_rules: [InlineRule4; INLINE_RULES],
    /// Sources allowed after translation (border hooks).
    pub allow_src: [Prefix4; INLINE_ALLOW],
    /// Destinations allowed after translation (border hooks).
    pub allow_dst: [Prefix4; INLINE_ALLOW],
}

/// Why a packet was dropped; index into [`HookCounters::dropped`].
pub mod drop_reason {
    /// A packet that matched a rule (or arrived on a border) is truncated or inconsistent,
    /// so it cannot be translated exactly; passing it would leak untranslated addresses.
    pub const MALFORMED: usize = 0;
    /// A first fragment too short to hold its transport checksum: the checksum lives in
    /// a later fragment, which carries no header to fix it in (and tiny fragments are a
    /// classic filter evasion, RFC 1858).
    pub const TINY_FRAGMENT: usize = 1;
    /// Border: the destination (after translation) is not something this cluster exported.
    pub const NOT_EXPORTED: usize = 2;
    /// Border: the source (after translation) is not an address the peer may use.
    pub const SOURCE_NOT_ALLOWED: usize = 3;
    /// Border: what the allow-list cannot judge: IPv6 other than link-local and
    /// link-local-scope multicast control traffic, VLAN/QinQ-tagged or other non-IP,
    /// non-ARP frames, anything not IP on a layer-3 device, ICMP source quench and
    /// redirects.
    pub const UNSUPPORTED: usize = 4;
    /// A kernel helper failed half-way through a rewrite; the packet is not sent on.
    pub const HELPER_FAILED: usize = 5;
    /// Border: an IPv4 packet with IP options (source routing could steer it past the
    /// allow-list; nothing between pods needs options).
    pub const IP_OPTIONS: usize = 6;
    /// Border: an ICMP error whose quoted packet (after translation) is not one this
    /// peering could have carried — from an exported local address to an address the
    /// peer may use — so the peer would be steering connections it has no part in
    /// (path MTU, unreachable, time exceeded of another peering's or the node's traffic).
    pub const QUOTE_NOT_ALLOWED: usize = 7;
    /// Number of reason slots.
    pub const COUNT: usize = 8;
    /// Label values, by index (reserved slots are empty).
    pub const NAMES: [&str; COUNT] = [
        "malformed",
        "tiny_fragment",
        "not_exported",
        "source_not_allowed",
        "unsupported",
        "helper_failed",
        "ip_options",
        "quote_not_allowed",
    ];
}

/// Per-hook, per-CPU packet counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HookCounters {
    /// Packets the hook let through (translated or untouched).
    pub packets: u64,
    /// Bytes of those packets (whole skb length).
    pub bytes: u64,
    /// Of those, packets with at least one address rewritten.
    pub translated: u64,
    /// Of those, TCP SYNs whose MSS option was lowered to the hook's `mss_clamp`.
    pub mss_clamped: u64,
    /// Packets dropped, by [`drop_reason`].
    pub dropped: [u64; drop_reason::COUNT],
}

/// Name of the one-entry array holding the [`TraceControl`] the programs read on every
/// packet (an inlined array lookup): while `active` is zero they emit nothing.
pub const TRACE_CONTROL_MAP: &str = "REMAPD_TRACE_CONTROL";
/// Name of the ring buffer the programs write [`TraceEvent`]s to while a trace is active.
pub const TRACE_EVENTS_MAP: &str = "REMAPD_TRACE_EVENTS";
/// Name of the per-CPU one-entry array counting events lost to a full ring buffer.
pub const TRACE_LOST_MAP: &str = "REMAPD_TRACE_LOST";
/// Size of the trace ring buffer in bytes (a power of two, a multiple of the page size):
/// about 16,000 events.
pub const TRACE_RING_BYTES: u32 = 1 << 20;

/// [`TraceControl::verdicts`] / [`TraceEvent::verdict`]: a packet with an address (or its
/// MSS option) rewritten.
pub const TRACE_TRANSLATED: u32 = 1 << 0;
/// [`TraceControl::verdicts`] / [`TraceEvent::verdict`]: a dropped packet.
pub const TRACE_DROPPED: u32 = 1 << 1;

/// What the programs trace. Written by the daemon as a whole (one map update); the
/// programs read it once per packet. Filters left at zero match everything.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TraceControl {
    /// Non-zero while a trace is running.
    pub active: u32,
    /// Only packets on this interface (0: any).
    pub ifindex: u32,
    /// Only packets of this IP protocol, plus one (0: any).
    pub protocol: u32,
    /// Which verdicts (`TRACE_TRANSLATED | TRACE_DROPPED`; 0 means both).
    pub verdicts: u32,
    /// Emit one in `sample` matching packets, chosen at random (0 and 1: all).
    pub sample: u32,
    /// Only packets with an address (before or after translation) in this prefix
    /// (host-order network address; with `prefix_mask` 0, any).
    pub prefix_addr: u32,
    /// Netmask of `prefix_addr`.
    pub prefix_mask: u32,
    /// Always zero.
    pub _pad: u32,
}

/// One packet the dataplane translated or dropped, as the programs report it. Addresses
/// are host-order integers of the wire bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TraceEvent {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when the program ran.
    pub time_ns: u64,
    /// The interface.
    pub ifindex: u32,
    /// Whole skb length.
    pub len: u32,
    /// Source address as the packet arrived at the hook.
    pub src_before: u32,
    /// Destination address as the packet arrived.
    pub dst_before: u32,
    /// Source address as the packet left the hook (dropped: as it arrived).
    pub src_after: u32,
    /// Destination address as the packet left the hook.
    pub dst_after: u32,
    /// Counter slot of the source rule that matched (`u32::MAX`: none).
    pub src_rule: u32,
    /// Counter slot of the destination rule that matched (`u32::MAX`: none).
    pub dst_rule: u32,
    /// TCP/UDP/UDP-Lite/DCCP source port; ICMP type and code (type in the high byte).
    pub src_port: u16,
    /// Destination port; ICMP echo identifier.
    pub dst_port: u16,
    /// `DIRECTION_*`.
    pub direction: u8,
    /// IP protocol (0 when the packet is not IPv4).
    pub protocol: u8,
    /// [`TRACE_TRANSLATED`] or [`TRACE_DROPPED`].
    pub verdict: u8,
    /// Drop reason ([`drop_reason`]) when dropped.
    pub reason: u8,
    /// [`TRACE_FLAG_QUOTE`] | [`TRACE_FLAG_MSS`] | [`TRACE_FLAG_IPV4`].
    pub flags: u8,
    /// Always zero.
    pub _pad: [u8; 7],
}

/// [`TraceEvent::flags`]: the packet quoted in an ICMP error was translated too.
pub const TRACE_FLAG_QUOTE: u8 = 1 << 0;
/// [`TraceEvent::flags`]: a SYN's MSS option was lowered.
pub const TRACE_FLAG_MSS: u8 = 1 << 1;
/// [`TraceEvent::flags`]: the packet is IPv4 and the address fields are meaningful.
pub const TRACE_FLAG_IPV4: u8 = 1 << 2;

/// Program names in the eBPF object, one per framing and direction.
pub mod programs {
    /// TC ingress program for devices with an Ethernet header (veth, physical NICs).
    pub const L2_INGRESS: &str = "remapd_l2_ingress";
    /// TC egress program for devices with an Ethernet header.
    pub const L2_EGRESS: &str = "remapd_l2_egress";
    /// TC ingress program for devices without a link-layer header (tun, WireGuard).
    pub const L3_INGRESS: &str = "remapd_l3_ingress";
    /// TC egress program for devices without a link-layer header.
    pub const L3_EGRESS: &str = "remapd_l3_egress";
}

/// The data part of an LPM trie key (the kernel's `bpf_lpm_trie_key` adds the prefix length).
///
/// Byte order: `ifindex` is in host order (it is always matched exactly); `addr` is in
/// network order, as on the wire, so prefix bits line up with the trie's bit order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleKey {
    /// Interface the rule is attached to.
    pub ifindex: u32,
    /// [`DIRECTION_INGRESS`] or [`DIRECTION_EGRESS`].
    pub direction: u8,
    /// [`FIELD_SOURCE`] or [`FIELD_DESTINATION`].
    pub field: u8,
    /// [`FAMILY_IPV4`] (or, later, [`FAMILY_IPV6`]).
    pub family: u8,
    /// Always zero.
    pub _pad: u8,
    /// The address (IPv4 in the first four bytes, rest zero).
    pub addr: [u8; 16],
}

/// What a matched rule does: replace the first `prefix_len` bits of the address with the
/// same bits of `to_addr`, keeping the host bits (`addr' = to | (addr & host_mask)`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleValue {
    /// Slot in [`COUNTERS_MAP`] for this rule.
    pub rule_id: u32,
    /// Length of the prefix being replaced; equals the key's address prefix length.
    pub prefix_len: u8,
    /// [`FAMILY_IPV4`] (or, later, [`FAMILY_IPV6`]).
    pub family: u8,
    /// Always zero.
    pub _pad: [u8; 2],
    /// The replacement prefix, network order, host bits zero.
    pub to_addr: [u8; 16],
}

/// Per-rule, per-CPU traffic counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RuleCounters {
    /// Packets this rule rewrote.
    pub packets: u64,
    /// Bytes (whole skb length, link-layer header included where there is one) of those packets.
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<RuleKey>() == 24);
const _: () = assert!(core::mem::size_of::<RuleValue>() == 24);
const _: () = assert!(core::mem::size_of::<RuleCounters>() == 16);
const _: () = assert!(core::mem::align_of::<RuleKey>() == 4);
const _: () = assert!(
    core::mem::size_of::<HookConfig>() == 32 + 2 * 16 * INLINE_RULES + 2 * 8 * INLINE_ALLOW
);
const _: () = assert!(core::mem::size_of::<HookCounters>() == 32 + 8 * drop_reason::COUNT);
const _: () = assert!(core::mem::size_of::<TraceControl>() == 32);
const _: () = assert!(core::mem::size_of::<TraceEvent>() == 56);

/// Program names in the benchmark-only object (`remapd-bench-ebpf`), which the daemon
/// never attaches.
pub mod bench_programs {
    /// Does nothing: the per-packet cost floor of any program on the hook.
    pub const NOOP: &str = "bench_noop";
    /// Makes one cheap helper call: what a helper call costs on this machine.
    pub const ONE_HELPER: &str = "bench_one_helper";
    /// The reference rewrite: one LPM lookup of the destination and direct writes of
    /// the address and both checksums, nothing else (no validation, no counters).
    pub const REFERENCE: &str = "bench_reference";
    /// The reference program's map: LPM trie keyed by the IPv4 destination.
    pub const REFERENCE_MAP: &str = "BENCH_REFERENCE_RULES";
}

/// Netmask for an IPv4 prefix length, as a host-order integer (`/24` -> `0xffff_ff00`).
#[inline(always)]
pub const fn ipv4_mask(prefix_len: u8) -> u32 {
    if prefix_len == 0 {
        0
    } else if prefix_len >= 32 {
        u32::MAX
    } else {
        u32::MAX << (32 - prefix_len as u32)
    }
}

/// Applies a rule to an IPv4 address given as a host-order integer.
#[inline(always)]
pub const fn translate_ipv4(addr: u32, to_prefix: u32, prefix_len: u8) -> u32 {
    let mask = ipv4_mask(prefix_len);
    (to_prefix & mask) | (addr & !mask)
}

/// Folds a 32-bit one's-complement accumulator into 16 bits.
#[inline(always)]
pub const fn csum_fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Folds a 64-bit one's-complement accumulator into 16 bits. Summing 32-bit words into
/// a 64-bit accumulator needs no carry handling per addition (a few billion words fit),
/// so a run of changes costs one fold at the end.
#[inline(always)]
pub const fn csum_fold64(sum: u64) -> u16 {
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The one's-complement difference a 32-bit field's change from `from` to `to` makes,
/// as a term for a 64-bit accumulator (RFC 1624: `~m + m'`). Any byte order, as long as
/// the checksum it is applied to is read in the same one.
#[inline(always)]
pub const fn csum_diff4(from: u32, to: u32) -> u64 {
    (!from) as u64 + to as u64
}

/// Applies an accumulated difference (from [`csum_diff4`] terms) to a complete checksum
/// field (RFC 1624, eqn. 3: `~(~HC + ~m + m')`).
#[inline(always)]
pub const fn csum_apply(check: u16, diff: u64) -> u16 {
    !csum_fold64((!check) as u64 + diff)
}

/// Incrementally updates an Internet checksum (RFC 1624, eqn. 3) for a 32-bit field that
/// changed from `from` to `to`. All values are host-order integers of the on-wire bytes.
#[inline(always)]
pub const fn csum_replace4(check: u16, from: u32, to: u32) -> u16 {
    let sum =
        (!check) as u32 + (!(from >> 16) & 0xffff) + (!from & 0xffff) + (to >> 16) + (to & 0xffff);
    !csum_fold(sum)
}

/// One's-complement 32-bit addition with end-around carry (the kernel's `csum_add`).
#[inline(always)]
pub const fn csum_add(a: u32, b: u32) -> u32 {
    let (sum, carry) = a.overflowing_add(b);
    sum.wrapping_add(carry as u32)
}

/// Incrementally updates an Internet checksum for a 16-bit field that changed.
#[inline(always)]
pub const fn csum_replace2(check: u16, from: u16, to: u16) -> u16 {
    let sum = (!check) as u32 + (!from) as u32 + to as u32;
    !csum_fold(sum)
}

/// Updates a transport checksum field for address changes whose one's-complement
/// difference is `diff` (all values in the same byte order as the field in memory), the
/// way the kernel's `inet_proto_csum_replace_by_diff` does for a pseudo-header change:
/// - `partial = false` (CHECKSUM_NONE / UNNECESSARY): the field is a complete checksum,
///   updated incrementally;
/// - `partial = true` (CHECKSUM_PARTIAL): the field holds the folded, uncomplemented
///   pseudo-header sum the device completes, which moves the other way.
///
/// With `zero_is_none` (UDP, UDP-Lite) a zero field means "no checksum" and stays zero,
/// and a computed zero is written as 0xffff.
#[inline(always)]
pub const fn csum_l4_update(field: u16, diff: u32, partial: bool, zero_is_none: bool) -> u16 {
    if zero_is_none && field == 0 {
        return 0;
    }
    let new = if partial {
        csum_fold(csum_add(diff, field as u32))
    } else {
        !csum_fold(csum_add(diff, (!field) as u32))
    };
    if zero_is_none && new == 0 {
        0xffff
    } else {
        new
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data: repr(C), Copy, explicit padding, no pointers.
    unsafe impl aya::Pod for super::RuleKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RuleValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RuleCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::HookConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::HookCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TraceControl {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TraceEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(ipv4_mask(0), 0);
        assert_eq!(ipv4_mask(8), 0xff00_0000);
        assert_eq!(ipv4_mask(24), 0xffff_ff00);
        assert_eq!(ipv4_mask(32), u32::MAX);
    }

    #[test]
    fn translation_keeps_host_bits() {
        // 40.0.0.7/24 -> 30.0.0.7
        assert_eq!(translate_ipv4(0x2800_0007, 0x1e00_0000, 24), 0x1e00_0007);
        // 10.1.3.5 in 10.1.0.0/16 -> 172.21.3.5
        assert_eq!(translate_ipv4(0x0a01_0305, 0xac15_0000, 16), 0xac15_0305);
        // A /32 rule replaces everything; a /0 rule nothing.
        assert_eq!(translate_ipv4(0x0a01_0305, 0x0b00_0001, 32), 0x0b00_0001);
        assert_eq!(translate_ipv4(0x0a01_0305, 0x0b00_0001, 0), 0x0a01_0305);
        // A non-octet boundary: 10.1.0.0/17 -> 192.168.128.0/17 keeps 15 host bits.
        assert_eq!(translate_ipv4(0x0a01_7fff, 0xc0a8_8000, 17), 0xc0a8_ffff);
    }

    /// Full checksum over 16-bit words, the slow way, for comparison.
    fn full_csum(words: &[u16]) -> u16 {
        let mut sum: u32 = 0;
        for w in words {
            sum += *w as u32;
        }
        !csum_fold(sum)
    }

    /// One's-complement sum of 16-bit words, folded, uncomplemented.
    fn sum(words: &[u16]) -> u16 {
        csum_fold(words.iter().map(|w| *w as u32).sum())
    }

    #[test]
    fn l4_update_matches_a_recompute_in_both_checksum_states() {
        // Pseudo-header + a UDP header and payload, as 16-bit words.
        let (src, dst) = (0x2800_0001u32, 0x1e00_0001u32);
        let new_dst = 0x2800_0001u32;
        let body = [0x1388u16, 0x270f, 12, 0, 0x6869, 0x2121];
        let pseudo = |d: u32| {
            [
                (src >> 16) as u16,
                src as u16,
                (d >> 16) as u16,
                d as u16,
                17,
                12,
            ]
        };
        // diff = ~old + new over the changed address.
        let diff = csum_add(csum_add(0, !dst), new_dst);
        // NONE: the field is ~sum(pseudo + body).
        let full = |d: u32| !sum(&[&pseudo(d)[..], &body[..]].concat());
        assert_eq!(csum_l4_update(full(dst), diff, false, false), full(new_dst));
        // PARTIAL: the field is the uncomplemented folded pseudo-header sum.
        let partial = |d: u32| sum(&pseudo(d));
        assert_eq!(
            csum_l4_update(partial(dst), diff, true, false),
            partial(new_dst)
        );
        // UDP's zero stays zero; a computed zero becomes 0xffff.
        assert_eq!(csum_l4_update(0, diff, false, true), 0);
        assert_eq!(csum_l4_update(0xffff, 0, false, true), 0xffff);
    }

    #[test]
    fn accumulated_differences_match_a_full_recompute_in_either_byte_order() {
        // A 20-byte IPv4 header whose two addresses change, over many pseudo-random
        // headers and addresses (xorshift), checked against recomputing the checksum,
        // once on host-order words and once on the raw words of the other byte order
        // (what the programs do with memory-order loads).
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let r = next();
            let (src, dst) = (r as u32, (r >> 32) as u32);
            let r = next();
            let (new_src, new_dst) = (r as u32, (r >> 32) as u32);
            let rest = next();
            let header = |s: u32, d: u32, swap: bool| {
                let words = [
                    0x4500,
                    rest as u16,
                    (rest >> 16) as u16,
                    (rest >> 32) as u16,
                    (rest >> 48) as u16,
                    0,
                    (s >> 16) as u16,
                    s as u16,
                    (d >> 16) as u16,
                    d as u16,
                ];
                words.map(|w: u16| if swap { w.swap_bytes() } else { w })
            };
            for swap in [false, true] {
                let before = full_csum(&header(src, dst, swap));
                let after = full_csum(&header(new_src, new_dst, swap));
                let word = |a: u32| if swap { a.swap_bytes() } else { a };
                let diff =
                    csum_diff4(word(src), word(new_src)) + csum_diff4(word(dst), word(new_dst));
                assert_eq!(csum_apply(before, diff), after, "swap={swap}");
                // The folded difference is what the transport checksum update takes.
                assert_eq!(
                    csum_apply(before, csum_fold64(diff) as u64),
                    after,
                    "folded, swap={swap}"
                );
            }
        }
    }

    #[test]
    fn incremental_checksum_matches_full_recompute() {
        // A 20-byte IPv4 header: 45 00 0054 1234 4000 40 01 [csum] 28000001 1e000001
        let mut words: [u16; 10] = [
            0x4500, 0x0054, 0x1234, 0x4000, 0x4001, 0, 0x2800, 0x0001, 0x1e00, 0x0001,
        ];
        words[5] = full_csum(&words);
        let before = words[5];
        // Rewrite the destination 30.0.0.1 -> 40.0.0.1.
        let updated = csum_replace4(before, 0x1e00_0001, 0x2800_0001);
        words[8] = 0x2800;
        words[5] = 0;
        assert_eq!(updated, full_csum(&words));
        // And a 16-bit change back.
        let back = csum_replace2(updated, 0x2800, 0x1e00);
        words[8] = 0x1e00;
        assert_eq!(back, full_csum(&words));
    }
}
