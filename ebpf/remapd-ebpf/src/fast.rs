//! The fast path: the packet almost every hook sees almost all the time — IPv4 without
//! options, not a fragment, TCP or UDP with its header in the linear area, no trace
//! running on the interface — handled start to finish with few live values.
//!
//! It is inline in each program, right after the hook is found; the general path
//! ([`crate::general_path`]) is a BPF function of its own, called only for what the fast
//! path declines. So the common packet makes no BPF-to-BPF call, its values stay in
//! registers instead of sharing a frame with the general path's sixty, and the verifier
//! walks the general path once, from one call site.
//!
//! It declines ([`DECLINED`]) before it has written or counted anything whenever the
//! packet is not exactly that common shape: the general path then does everything from
//! the start, including the drops for malformed packets. So the fast path needs no error
//! handling of its own beyond what it decides for packets it fully understands: the
//! rules (inline or in the trie), the border's allow-list, and the transport checksum
//! helper failing.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_SHOT, TC_ACT_UNSPEC},
    programs::TcContext,
};
use remapd_common::{
    FIELD_DESTINATION, FIELD_SOURCE, HOOK_DST_RULES_ALLOWED, HOOK_ENFORCE, HOOK_SRC_RULES_ALLOWED,
    HookConfig, HookCounters, drop_reason,
};

use crate::lookup::{allowed, lookup};
use crate::{
    ETH_HLEN, ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP, IPV4_MIN_HLEN, Ipv4Header, TCP_CSUM_OFF,
    TCP_FLAG_SYN, TRANSLATED, UDP_CSUM_OFF, count_drop, count_pass, count_rules, rewrite_addresses,
    update_l4_checksum,
};

/// [`fast_path`]'s answer when the packet is not its common shape: run the general path.
/// Not a TC action.
pub(crate) const DECLINED: i32 = i32::MAX;

/// The bytes the fast path reads with direct access: the link header, an IPv4 header
/// without options, and the first 8 bytes of the transport header (UDP's whole header;
/// TCP's checksum is checked for separately).
const FAST_HEADERS: usize = IPV4_MIN_HLEN + 8;

/// Handles the packet in `ctx` on the hook `config` (interface `ifindex`, `direction`)
/// if it has the common shape, counting it in `counters`: a TC action, or [`DECLINED`]
/// with nothing written or counted.
#[inline(always)]
pub(crate) fn fast_path<const L2: bool>(
    ctx: &TcContext,
    config: &HookConfig,
    counters: *mut HookCounters,
    ifindex: u32,
    direction: u8,
) -> i32 {
    let l3 = if L2 { ETH_HLEN } else { 0 };
    let start = ctx.data();
    if start + l3 + FAST_HEADERS > ctx.data_end() {
        return DECLINED;
    }
    // SAFETY: bounds checked just above (see Ipv4Header on alignment).
    let (ip, version_ihl, frag, protocol, total_len, src, dst) = unsafe {
        if L2 && *((start + 12) as *const u16) != ETH_P_IP.to_be() {
            return DECLINED;
        }
        let ip = (start + l3) as *mut Ipv4Header;
        (
            ip,
            (*ip).version_ihl,
            (*ip).frag,
            (*ip).protocol,
            usize::from(u16::from_be((*ip).total_len)),
            u32::from_be((*ip).src),
            u32::from_be((*ip).dst),
        )
    };
    // Version 4 without options; neither a later fragment nor one with more to come
    // (the flags and offset, network order, with DF masked out).
    if version_ihl != 0x45 || frag & 0x3fffu16.to_be() != 0 {
        return DECLINED;
    }
    let (check_off, csum_flags) = match protocol {
        IPPROTO_TCP => (TCP_CSUM_OFF, BPF_F_PSEUDO_HDR as u64),
        // A zero UDP checksum means "none" and stays zero.
        IPPROTO_UDP => (
            UDP_CSUM_OFF,
            (BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0) as u64,
        ),
        _ => return DECLINED,
    };
    // The IP header's length is consistent and the transport checksum lies inside the
    // packet; anything else is the general path's to judge (and drop).
    if total_len < IPV4_MIN_HLEN + check_off + 2 || l3 + total_len > ctx.len() as usize {
        return DECLINED;
    }
    // SYNs on a hook that clamps the MSS: the general path clamps.
    if config.mss_clamp != 0 && protocol == IPPROTO_TCP {
        match ctx.load::<u8>(l3 + IPV4_MIN_HLEN + 13) {
            Ok(tcp_flags) if tcp_flags & TCP_FLAG_SYN == 0 => {}
            _ => return DECLINED,
        }
    }

    let src_rw = lookup(config, ifindex, direction, FIELD_SOURCE, src);
    let dst_rw = lookup(config, ifindex, direction, FIELD_DESTINATION, dst);
    let flags = config.flags;
    if flags & HOOK_ENFORCE != 0 {
        // An address a rule translated is in the allow-list when the daemon marked
        // every rule of that field as translating into it; others are looked up.
        let src_allowed = if src_rw.hit() {
            flags & HOOK_SRC_RULES_ALLOWED != 0 || allowed(config, ifindex, FIELD_SOURCE, src_rw.to)
        } else {
            allowed(config, ifindex, FIELD_SOURCE, src)
        };
        if !src_allowed {
            count_drop(counters, drop_reason::SOURCE_NOT_ALLOWED);
            return TC_ACT_SHOT;
        }
        let dst_allowed = if dst_rw.hit() {
            flags & HOOK_DST_RULES_ALLOWED != 0
                || allowed(config, ifindex, FIELD_DESTINATION, dst_rw.to)
        } else {
            allowed(config, ifindex, FIELD_DESTINATION, dst)
        };
        if !dst_allowed {
            count_drop(counters, drop_reason::NOT_EXPORTED);
            return TC_ACT_SHOT;
        }
    }
    if !src_rw.hit() && !dst_rw.hit() {
        count_pass(counters, ctx.len(), 0);
        return TC_ACT_UNSPEC;
    }
    let l4_diff = rewrite_addresses(ip, src, dst, &src_rw, &dst_rw);
    if let Err(reason) =
        update_l4_checksum(ctx, l3 + IPV4_MIN_HLEN + check_off, l4_diff, csum_flags)
    {
        count_drop(counters, reason);
        return TC_ACT_SHOT;
    }
    let len = ctx.len();
    count_rules([src_rw.rule_id, dst_rw.rule_id], len);
    count_pass(counters, len, TRANSLATED);
    TC_ACT_UNSPEC
}
