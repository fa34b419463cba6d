//! Map key and value types shared by remapd's TC programs and the daemon.
//!
//! Everything here is `#[repr(C)]`, `Copy`, and padded explicitly so the byte layout the
//! kernel sees is the layout both sides compile. The daemon enables the `user` feature to
//! get `aya::Pod` implementations; the eBPF crate uses the types as they are.
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
/// Name of the per-CPU array that counts packets passed untouched for an exceptional reason.
pub const EXCEPTIONS_MAP: &str = "REMAPD_EXCEPTIONS";

/// Name of the array that says, per hook, which address fields have rules at all, so
/// the program skips trie lookups that cannot match (an array lookup is inlined by the
/// verifier; a trie lookup is a helper call).
pub const HOOKS_MAP: &str = "REMAPD_HOOKS";
/// Number of slots in [`HOOKS_MAP`]; hooks that share a slot share its bits, which only
/// costs a lookup that finds nothing.
pub const HOOK_SLOTS: u32 = 4096;
/// Bit in a [`HOOKS_MAP`] value: the hook has source rules.
pub const HOOK_HAS_SOURCE: u32 = 1 << FIELD_SOURCE;
/// Bit in a [`HOOKS_MAP`] value: the hook has destination rules.
pub const HOOK_HAS_DESTINATION: u32 = 1 << FIELD_DESTINATION;

/// The [`HOOKS_MAP`] slot of an interface and direction.
#[inline(always)]
pub const fn hook_slot(ifindex: u32, direction: u8) -> u32 {
    ((ifindex << 1) | (direction as u32 & 1)) & (HOOK_SLOTS - 1)
}

/// Index in [`EXCEPTIONS_MAP`]: a matching packet was truncated or malformed and passed untouched.
pub const EXCEPTION_MALFORMED: u32 = 0;
/// Index in [`EXCEPTIONS_MAP`]: a kernel helper failed while rewriting; the packet may be partial.
pub const EXCEPTION_HELPER_FAILED: u32 = 1;
/// Index in [`EXCEPTIONS_MAP`]: a rule pointed at a counter slot outside the counter array.
pub const EXCEPTION_BAD_RULE_ID: u32 = 2;
/// Number of exception counters.
pub const EXCEPTION_COUNT: u32 = 4;

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
    /// A program that does nothing; the baseline for the per-packet cost benchmark.
    pub const BENCH_NOOP: &str = "remapd_bench_noop";
    /// A program that makes one cheap helper call; shows the machine's helper-call cost.
    pub const BENCH_ONE_HELPER: &str = "remapd_bench_one_helper";
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

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data: repr(C), Copy, explicit padding, no pointers.
    unsafe impl aya::Pod for super::RuleKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RuleValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RuleCounters {}
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
