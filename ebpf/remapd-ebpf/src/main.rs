//! remapd's dataplane: stateless IPv4 prefix translation on TC ingress and egress, and
//! the border check on a tunnel's ingress.
//!
//! One program per framing (with or without an Ethernet header) and direction. Each
//! reads its hook's [`HookConfig`] (two inlined array lookups, no helper call), looks the
//! packet's source and destination up among the hook's rules (inline, longest prefix
//! first; the LPM trie only for hooks with many rules), and rewrites the matched prefix,
//! keeping host bits. ICMP errors also get the packet they quote translated (RFC 5508),
//! so path-MTU discovery and traceroute work across the remap.
//!
//! Two paths, one answer: the common packet (IPv4 without options, not a fragment, TCP
//! or UDP, no trace on the interface) is handled by the fast path
//! (`fast.rs`), inline in the program; everything else by the general path, its own BPF
//! function. The fast path declines before it writes or counts anything, so the general
//! path always starts from the packet as it arrived. `bpf_border`'s
//! `the_fast_and_the_general_path_agree` runs the same packets through both.
//!
//! A hook with `mss_clamp` set (a peering's `tunnel.mss_clamp`, on both directions of
//! its tunnel) lowers the MSS option of TCP SYNs and SYN-ACKs to that value, so paths
//! that drop oversized packets without sending ICMP still carry TCP.
//!
//! What passes and what is dropped (`TC_ACT_SHOT`, counted per hook and reason):
//! - egress: packets that match no rule pass untouched; a packet that matches a rule but
//!   cannot be translated exactly (truncated, inconsistent, a tiny first fragment, an ICMP
//!   error whose quote cannot be parsed) is dropped, never sent with half its addresses;
//! - a border hook (a tunnel's ingress) is default deny: after translation a packet
//!   passes only if its source is in the peer's allowed sources and its destination in
//!   what this cluster exported; anything unparseable is dropped. IPv6 takes its own
//!   path (`ipv6.rs`), which says what it lets through untranslated.
//!
//! Every other packet is returned with `TC_ACT_UNSPEC` so programs attached after this
//! one still run.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod csum;
mod fast;
mod icmp;
mod ipv6;
mod lookup;
mod trace;

use aya_ebpf::{
    bindings::{__sk_buff, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::{classifier, map},
    maps::{Array, LpmTrie, PerCpuArray},
    programs::TcContext,
};
use remapd_common::{
    DIRECTION_EGRESS, DIRECTION_INGRESS, FIELD_DESTINATION, FIELD_SOURCE, HOOK_ENFORCE,
    HOOK_PROBES, HOOK_SLOTS, HookConfig, HookCounters, MAX_RULES, RuleCounters, RuleKey, RuleValue,
    csum_apply, csum_diff4, csum_fold64, drop_reason, hook_probe,
};

use crate::icmp::QuotedRewrite;
use crate::lookup::{Rewrite, allowed, lookup};
use crate::trace::Seen;

#[map(name = "REMAPD_RULES")]
static RULES: LpmTrie<RuleKey, RuleValue> = LpmTrie::with_max_entries(MAX_RULES, 0);

#[map(name = "REMAPD_ALLOW")]
static ALLOW: LpmTrie<RuleKey, u32> = LpmTrie::with_max_entries(MAX_RULES, 0);

#[map(name = "REMAPD_COUNTERS")]
static COUNTERS: PerCpuArray<RuleCounters> = PerCpuArray::with_max_entries(MAX_RULES, 0);

#[map(name = "REMAPD_HOOK_INDEX")]
static HOOK_INDEX: Array<u32> = Array::with_max_entries(HOOK_SLOTS, 0);

#[map(name = "REMAPD_HOOK_CONFIG")]
static HOOK_CONFIG: Array<HookConfig> = Array::with_max_entries(2 * HOOK_SLOTS, 0);

#[map(name = "REMAPD_HOOK_COUNTERS")]
static HOOK_COUNTERS: PerCpuArray<HookCounters> = PerCpuArray::with_max_entries(HOOK_SLOTS, 0);

pub(crate) const ETH_HLEN: usize = 14;
pub(crate) const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
pub(crate) const IPV4_MIN_HLEN: usize = 20;
pub(crate) const IPPROTO_ICMP: u8 = 1;
pub(crate) const IPPROTO_TCP: u8 = 6;
pub(crate) const IPPROTO_UDP: u8 = 17;
pub(crate) const IPPROTO_DCCP: u8 = 33;
pub(crate) const IPPROTO_UDPLITE: u8 = 136;
pub(crate) const TCP_CSUM_OFF: usize = 16;
const TCP_MIN_HLEN: usize = 20;
pub(crate) const TCP_FLAG_SYN: u8 = 0x02;
const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_MSS: u8 = 2;
/// TCP options fill at most 40 bytes; each step of the option walk consumes at least one.
const TCP_MAX_OPTION_STEPS: usize = 40;
/// UDP, UDP-Lite and DCCP all keep their checksum at offset 6.
pub(crate) const UDP_CSUM_OFF: usize = 6;
/// Link header + the longest IPv4 header + a TCP header up to its checksum: what the
/// fast path reads with direct packet access, pulled into the linear area when needed.
const FAST_PATH_PULL: usize = ETH_HLEN + 60 + 20;

#[classifier]
pub fn remapd_l2_ingress(ctx: TcContext) -> i32 {
    run::<true, DIRECTION_INGRESS>(&ctx)
}

#[classifier]
pub fn remapd_l2_egress(ctx: TcContext) -> i32 {
    run::<true, DIRECTION_EGRESS>(&ctx)
}

#[classifier]
pub fn remapd_l3_ingress(ctx: TcContext) -> i32 {
    run::<false, DIRECTION_INGRESS>(&ctx)
}

#[classifier]
pub fn remapd_l3_egress(ctx: TcContext) -> i32 {
    run::<false, DIRECTION_EGRESS>(&ctx)
}

/// Why a packet is dropped: an index into [`HookCounters::dropped`].
pub(crate) type Drop = usize;

/// [`handle`]'s outcome bit: an address was rewritten.
pub(crate) const TRANSLATED: u8 = 1;
/// [`handle`]'s outcome bit: a SYN's MSS option was lowered.
pub(crate) const MSS_CLAMPED: u8 = 2;

/// Finds the packet's hook and handles the packet: on the fast path (inline here, no
/// function call) when no trace wants this interface and the packet has the common
/// shape, else on the general path.
#[inline(always)]
fn run<const L2: bool, const DIRECTION: u8>(ctx: &TcContext) -> i32 {
    // SAFETY: reading a field of the context the kernel handed us.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // The hook's slot: its home slot, or one of the next ones when another hook holds
    // that; another hook's configuration is never ours to apply.
    let mut found = None;
    for probe in 0..HOOK_PROBES {
        let slot = hook_probe(ifindex, DIRECTION, probe);
        if let Some(config) = hook_config(slot)
            && config.ifindex == ifindex
            && config.direction == u32::from(DIRECTION)
        {
            found = Some((slot, config));
            break;
        }
    }
    let Some((slot, config)) = found else {
        return TC_ACT_UNSPEC;
    };
    let Some(counters) = HOOK_COUNTERS.get_ptr_mut(slot) else {
        return TC_ACT_UNSPEC;
    };
    // The trace (off: one inlined array lookup) sees every packet of its interface on
    // the general path, which records what it did.
    if trace::control(ifindex).is_none() {
        let action = fast::fast_path::<L2>(ctx, config, counters, ifindex, DIRECTION);
        if action != fast::DECLINED {
            return action;
        }
    }
    if ip_version::<L2>(ctx) == Some(6) {
        let decided = ipv6::path::<L2>(ctx.skb.skb, config, ifindex, DIRECTION);
        let hook = u64::from(ifindex) | u64::from(DIRECTION) << 32;
        return ipv6::finish::<L2>(ctx.skb.skb, config, counters, hook, decided);
    }
    general_path::<L2, DIRECTION>(ctx.skb.skb, config, counters, ifindex)
}

/// Every packet the fast path declines: all framings, versions, protocols, fragments,
/// options, ICMP errors, malformed packets, SYNs to clamp and traced interfaces.
/// Its own BPF function, so the fast path's few values never share its frame, and the
/// verifier walks it once per program.
#[inline(never)]
fn general_path<const L2: bool, const DIRECTION: u8>(
    skb: *mut __sk_buff,
    config: &HookConfig,
    counters: *mut HookCounters,
    ifindex: u32,
) -> i32 {
    let ctx = &TcContext::new(skb);
    let direction = DIRECTION;
    // The trace: the addresses as the packet arrived. Only plain numbers stay live
    // across `handle`: a pointer-or-null would split every state the verifier walks
    // there in two (it cannot prune a pointer against a null).
    let before = if trace::control(ifindex).is_some() {
        trace::addresses::<L2>(ctx)
    } else {
        (0, 0)
    };
    let mut seen = Seen::NOTHING;
    // The MSS clamp runs after the translation, once the packet is known to pass, on
    // a fresh read of the headers: none of the translation's state is live here, so
    // the verifier walks the option loop for a handful of states rather than once per
    // path through the translation (which took it within 2% of its budget).
    let result = handle::<L2>(ctx, config, ifindex, direction, &mut seen).and_then(|outcome| {
        if config.mss_clamp == 0 {
            return Ok(outcome);
        }
        Ok(outcome | clamp_syn::<L2>(ctx, config.mss_clamp as u16)?)
    });
    let (action, reason, outcome) = count_verdict(counters, ctx.len(), result);
    // A trace that started while this packet was handled reports it with no
    // addresses before (0.0.0.0 both; user space shows them as unknown). Checking a
    // flag here instead would have the verifier walk `handle` once per value of it.
    trace::record::<L2>(
        ctx, ifindex, direction, action, reason, outcome, before, &seen,
    );
    action
}

/// The live configuration of a hook slot, if it has one.
#[inline(always)]
fn hook_config(slot: u32) -> Option<&'static HookConfig> {
    let live = *HOOK_INDEX.get(slot)?;
    if live == 0 || live > 2 {
        return None;
    }
    HOOK_CONFIG.get(slot * 2 + live - 1)
}

/// IPv4 header with its natural field widths (values in network order), so a field is
/// one load or store. Packet pointers may be misaligned (the IP header after a 14-byte
/// Ethernet header): the verifier allows that on the architectures the kernel marks as
/// having efficient unaligned access (x86-64, arm64), which is where remapd runs.
#[repr(C)]
pub(crate) struct Ipv4Header {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_len: u16,
    pub id: u16,
    pub frag: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check: u16,
    pub src: u32,
    pub dst: u32,
}

/// Returns a pointer to a `T` at `offset` if the whole `T` is in the linear packet area.
#[inline(always)]
pub(crate) fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Makes `want` bytes (or the whole packet, if shorter) readable with direct access.
#[inline(always)]
pub(crate) fn pull(ctx: &TcContext, want: usize) -> bool {
    let len = ctx.len() as usize;
    let want = if len < want { len } else { want };
    ctx.pull_data(want as u32).is_ok()
}

/// [`ip_version`]'s answer for ARP (on an Ethernet device).
const ARP: u8 = 0x0a;

/// Which IP version the packet carries, from the ethertype (L2) or the first nibble (L3):
/// 4, 6, [`ARP`], or `None` for anything else (VLAN and QinQ tags, MPLS, LLDP, garbage)
/// or a packet too short to say.
#[inline(always)]
pub(crate) fn ip_version<const L2: bool>(ctx: &TcContext) -> Option<u8> {
    if L2 {
        let proto = ptr_at::<u16>(ctx, 12)?;
        // SAFETY: bounds checked by ptr_at.
        return match u16::from_be(unsafe { *proto }) {
            ETH_P_IP => Some(4),
            ETH_P_IPV6 => Some(6),
            ETH_P_ARP => Some(ARP),
            _ => None,
        };
    }
    // Direct access proves a whole IPv4 header; shorter packets (rare, and never valid
    // IPv4) are read through the helper. (A one-byte bounds check at offset 0 compiles
    // to a comparison the verifier does not accept as a range proof.)
    if (ctx.len() as usize) < IPV4_MIN_HLEN {
        return ctx.load::<u8>(0).ok().map(|b| b >> 4);
    }
    if ptr_at::<Ipv4Header>(ctx, 0).is_none() && !pull(ctx, FAST_PATH_PULL) {
        return None;
    }
    let header = ptr_at::<Ipv4Header>(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at.
    Some(unsafe { (*header).version_ihl } >> 4)
}

/// Handles one packet on a configured hook: `Ok(outcome)` to pass it ([`TRANSLATED`]
/// and [`MSS_CLAMPED`] say what was changed, 0 nothing), `Err(reason)` to drop it.
#[inline(always)]
fn handle<const L2: bool>(
    ctx: &TcContext,
    config: &HookConfig,
    ifindex: u32,
    direction: u8,
    seen: &mut Seen,
) -> Result<u8, Drop> {
    let border = config.flags & HOOK_ENFORCE != 0;
    let l3 = if L2 { ETH_HLEN } else { 0 };
    match ip_version::<L2>(ctx) {
        Some(4) => {}
        // IPv6 took its own path before this one (`run`).
        // ARP on an Ethernet device is not IP and carries nothing past the link.
        Some(ARP) => return Ok(0),
        // On a border, anything else (VLAN/QinQ-tagged frames hiding IP, MPLS, garbage
        // on a layer-3 device) is not something the allow-list can judge.
        _ if border => return Err(drop_reason::UNSUPPORTED),
        // IPv6 or non-IP on a hook that only translates: not ours.
        _ => return Ok(0),
    }

    let skb_len = ctx.len() as usize;
    if skb_len < l3 + IPV4_MIN_HLEN {
        return if border {
            Err(drop_reason::MALFORMED)
        } else {
            Ok(0)
        };
    }
    if ptr_at::<Ipv4Header>(ctx, l3).is_none() && !pull(ctx, FAST_PATH_PULL) {
        return Err(drop_reason::MALFORMED);
    }
    let ip = ptr_at::<Ipv4Header>(ctx, l3).ok_or(drop_reason::MALFORMED)?;
    // SAFETY: bounds checked by ptr_at (see Ipv4Header on alignment).
    let (version_ihl, frag, protocol, src, dst, total_len) = unsafe {
        (
            (*ip).version_ihl,
            u16::from_be((*ip).frag),
            (*ip).protocol,
            u32::from_be((*ip).src),
            u32::from_be((*ip).dst),
            u16::from_be((*ip).total_len) as usize,
        )
    };

    let src_rw = lookup(config, ifindex, direction, FIELD_SOURCE, src);
    let dst_rw = lookup(config, ifindex, direction, FIELD_DESTINATION, dst);
    seen.src_rule = src_rw.rule_id;
    seen.dst_rule = dst_rw.rule_id;
    // A packet we must understand completely: one we rewrite, or one crossing a border.
    let strict = border || src_rw.hit() || dst_rw.hit();

    let ihl = ((version_ihl & 0x0f) as usize) << 2;
    if version_ihl >> 4 != 4 || ihl < IPV4_MIN_HLEN || total_len < ihl || l3 + total_len > skb_len {
        return if strict {
            Err(drop_reason::MALFORMED)
        } else {
            Ok(0)
        };
    }
    // IP options on a border: nothing between pods needs them, and source-route options
    // could steer a packet past the allow-list on a gateway that honours them.
    if border && ihl != IPV4_MIN_HLEN {
        return Err(drop_reason::IP_OPTIONS);
    }
    let l4 = l3 + ihl;
    let packet_end = l3 + total_len;
    // Only the first fragment carries the transport header; later ones need only L3.
    let first_fragment = frag & 0x1fff == 0;
    let more_fragments = frag & 0x2000 != 0;

    // Decide everything before writing anything, so a dropped packet is never modified.
    let mut l4_check_off = 0usize;
    let mut l4_flags = 0u64;
    let mut quoted = QuotedRewrite::NONE;
    if first_fragment {
        match protocol {
            IPPROTO_TCP => {
                l4_check_off = l4 + TCP_CSUM_OFF;
                l4_flags = BPF_F_PSEUDO_HDR as u64;
            }
            // A zero UDP checksum means "none" and must stay zero (MARK_MANGLED_0 also
            // turns a computed zero into 0xffff). UDP-Lite forbids a zero checksum, so
            // the same flags leave an invalid packet invalid and fix every valid one.
            IPPROTO_UDP | IPPROTO_UDPLITE => {
                l4_check_off = l4 + UDP_CSUM_OFF;
                l4_flags = (BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0) as u64;
            }
            IPPROTO_DCCP => {
                l4_check_off = l4 + UDP_CSUM_OFF;
                l4_flags = BPF_F_PSEUDO_HDR as u64;
            }
            IPPROTO_ICMP => {
                match icmp::quoted_rewrite(ctx, config, direction, ifindex, border, l4, packet_end)
                {
                    Ok(q) => quoted = q,
                    Err(reason) if strict => return Err(reason),
                    // Not ours, and nothing we can read: pass it as it is.
                    Err(_) => return Ok(0),
                }
            }
            _ => {}
        }
    }
    let rewrites = src_rw.hit() || dst_rw.hit();
    if l4_check_off != 0 && l4_check_off + 2 > packet_end {
        if rewrites {
            return Err(if more_fragments {
                drop_reason::TINY_FRAGMENT
            } else {
                drop_reason::MALFORMED
            });
        }
        // Nothing to rewrite: the checksum is not ours to fix.
        l4_check_off = 0;
    }

    if border {
        let new_src = if src_rw.hit() { src_rw.to } else { src };
        let new_dst = if dst_rw.hit() { dst_rw.to } else { dst };
        if !allowed(config, ifindex, FIELD_SOURCE, new_src) {
            return Err(drop_reason::SOURCE_NOT_ALLOWED);
        }
        if !allowed(config, ifindex, FIELD_DESTINATION, new_dst) {
            return Err(drop_reason::NOT_EXPORTED);
        }
    }
    if !rewrites && !quoted.active() {
        return Ok(0);
    }

    // quoted_rewrite may have pulled data: take a fresh pointer.
    let ip = ptr_at::<Ipv4Header>(ctx, l3).ok_or(drop_reason::MALFORMED)?;
    let l4_diff = rewrite_addresses(ip, src, dst, &src_rw, &dst_rw);
    if l4_check_off != 0 && rewrites {
        update_l4_checksum(ctx, l4_check_off, l4_diff, l4_flags)?;
    }
    if quoted.active() {
        icmp::write_quoted(ctx, l4, &quoted).map_err(|_| drop_reason::HELPER_FAILED)?;
        seen.flags = remapd_common::TRACE_FLAG_QUOTE;
    }
    // One count per packet per rule: an ICMP error's outer and quoted rewrite often
    // use the same rule.
    count_rules(
        [
            src_rw.rule_id,
            dst_rw.rule_id,
            quoted.src.rule_id,
            quoted.dst.rule_id,
        ],
        ctx.len(),
    );
    Ok(TRANSLATED)
}

/// [`clamp_mss`] for the packet in `ctx` if it is an IPv4 TCP first fragment whose
/// headers are consistent (anything else: 0, untouched).
#[inline(always)]
fn clamp_syn<const L2: bool>(ctx: &TcContext, clamp: u16) -> Result<u8, Drop> {
    let l3 = if L2 { ETH_HLEN } else { 0 };
    if ip_version::<L2>(ctx) != Some(4) {
        return Ok(0);
    }
    let (Ok(version_ihl), Ok(total_len), Ok(frag), Ok(protocol)) = (
        ctx.load::<u8>(l3),
        ctx.load::<u16>(l3 + 2),
        ctx.load::<u16>(l3 + 6),
        ctx.load::<u8>(l3 + 9),
    ) else {
        return Ok(0);
    };
    let ihl = usize::from(version_ihl & 0x0f) << 2;
    let total_len = usize::from(u16::from_be(total_len));
    if version_ihl >> 4 != 4
        || ihl < IPV4_MIN_HLEN
        || total_len < ihl
        || l3 + total_len > ctx.len() as usize
        || protocol != IPPROTO_TCP
        || u16::from_be(frag) & 0x1fff != 0
    {
        return Ok(0);
    }
    clamp_mss(ctx, l3 + ihl, l3 + total_len, clamp)
}

/// Lowers the MSS option of a TCP SYN (or SYN-ACK) at `l4` to `clamp` when it is
/// larger: [`MSS_CLAMPED`] when it did, 0 otherwise (not a SYN, no MSS option, already
/// small enough, or options it cannot walk — those pass as they are: clamping is a
/// courtesy, the border's checks are elsewhere). Reads through `bpf_skb_load_bytes`
/// (variable offsets; SYNs are rare) and fixes the TCP checksum with
/// `bpf_l4_csum_replace` without the pseudo-header flag: for CHECKSUM_PARTIAL skbs the
/// device computes the checksum over the new bytes, and otherwise the field is updated
/// by the 16-bit difference, which also keeps a CHECKSUM_COMPLETE skb->csum valid.
#[inline(always)]
pub(crate) fn clamp_mss(
    ctx: &TcContext,
    l4: usize,
    packet_end: usize,
    clamp: u16,
) -> Result<u8, Drop> {
    if l4 + TCP_MIN_HLEN > packet_end {
        return Ok(0);
    }
    let (Ok(doff), Ok(flags)) = (ctx.load::<u8>(l4 + 12), ctx.load::<u8>(l4 + 13)) else {
        return Ok(0);
    };
    let hlen = usize::from(doff >> 4) * 4;
    if flags & TCP_FLAG_SYN == 0 || hlen < TCP_MIN_HLEN || l4 + hlen > packet_end {
        return Ok(0);
    }
    let end = l4 + hlen;
    let mut off = l4 + TCP_MIN_HLEN;
    for _ in 0..TCP_MAX_OPTION_STEPS {
        if off >= end {
            break;
        }
        let Ok(kind) = ctx.load::<u8>(off) else {
            break;
        };
        if kind == TCPOPT_EOL {
            break;
        }
        if kind == TCPOPT_NOP {
            off += 1;
            continue;
        }
        let Ok(len) = ctx.load::<u8>(off + 1) else {
            break;
        };
        if len < 2 || off + usize::from(len) > end {
            break;
        }
        if kind == TCPOPT_MSS && len == 4 {
            // Raw bytes, network order: compared as numbers after from_be, passed to
            // the checksum helper as they are in the packet.
            let Ok(raw) = ctx.load::<u16>(off + 2) else {
                break;
            };
            if u16::from_be(raw) <= clamp {
                return Ok(0);
            }
            let new = clamp.to_be();
            ctx.store(off + 2, &new, 0)
                .map_err(|_| drop_reason::HELPER_FAILED)?;
            // A 16-bit word at an odd offset of the segment counts byte-swapped in the
            // one's-complement sum (after one NOP, say). Rotating by 0 or 8 bits keeps
            // this branch-free: every branch here is verified once per option step.
            let swap = ((off + 2 - l4) as u32 & 1) * 8;
            let (from, to) = (raw.rotate_left(swap), new.rotate_left(swap));
            ctx.l4_csum_replace(l4 + TCP_CSUM_OFF, u64::from(from), u64::from(to), 2)
                .map_err(|_| drop_reason::HELPER_FAILED)?;
            return Ok(MSS_CLAMPED);
        }
        off += usize::from(len);
    }
    Ok(0)
}

/// Writes the translated addresses and the IP header checksum of the header at `ip`,
/// and returns the one's-complement difference of the address changes (memory byte
/// order), for the transport checksum.
///
/// Written directly: the IP checksum is never offloaded, and a change that keeps the
/// header's one's-complement sum leaves a CHECKSUM_COMPLETE skb->csum valid, exactly as
/// `bpf_l3_csum_replace` would.
#[inline(always)]
pub(crate) fn rewrite_addresses(
    ip: *mut Ipv4Header,
    src: u32,
    dst: u32,
    src_rw: &Rewrite,
    dst_rw: &Rewrite,
) -> u32 {
    // Memory-order words throughout: the checksum is byte-order independent, and the
    // new addresses are stored in that order anyway.
    let mut diff = 0u64;
    // SAFETY: the caller bounds checked `ip` (see Ipv4Header on alignment).
    unsafe {
        if src_rw.hit() {
            let to = src_rw.to.to_be();
            diff += csum_diff4(src.to_be(), to);
            (*ip).src = to;
        }
        if dst_rw.hit() {
            let to = dst_rw.to.to_be();
            diff += csum_diff4(dst.to_be(), to);
            (*ip).dst = to;
        }
        let diff = csum_fold64(diff);
        (*ip).check = csum_apply((*ip).check, u64::from(diff));
        u32::from(diff)
    }
}

/// Moves the transport checksum at `off` by `diff` (from [`rewrite_addresses`]): a
/// direct write where the skb's checksum state allows it (csum.rs says why each state
/// is safe), else the helper, which also fixes skb->csum for CHECKSUM_COMPLETE. Size 0
/// passes all address changes as one precomputed difference: one call.
#[inline(always)]
pub(crate) fn update_l4_checksum(
    ctx: &TcContext,
    off: usize,
    diff: u32,
    flags: u64,
) -> Result<(), Drop> {
    if csum::l4_update_direct(ctx, off, diff, flags & BPF_F_MARK_MANGLED_0 as u64 != 0) {
        return Ok(());
    }
    ctx.l4_csum_replace(off, 0, diff as u64, flags)
        .map(|_| ())
        .map_err(|_| drop_reason::HELPER_FAILED)
}

/// Counts a packet by what was decided for it (`Ok(outcome)`: passed, `Err(reason)`:
/// dropped) and returns the TC action, the drop reason (0 when passed) and the outcome
/// (0 when dropped), for the trace.
#[inline(always)]
pub(crate) fn count_verdict(
    counters: *mut HookCounters,
    len: u32,
    result: Result<u8, Drop>,
) -> (i32, Drop, u8) {
    match result {
        Ok(outcome) => {
            count_pass(counters, len, outcome);
            (TC_ACT_UNSPEC, 0, outcome)
        }
        Err(reason) => {
            count_drop(counters, reason);
            (TC_ACT_SHOT, reason, 0)
        }
    }
}

/// Counts a packet the hook let through; `outcome` as [`handle`] returns it.
#[inline(always)]
pub(crate) fn count_pass(counters: *mut HookCounters, len: u32, outcome: u8) {
    // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
    unsafe {
        (*counters).packets += 1;
        (*counters).bytes += u64::from(len);
        (*counters).translated += u64::from(outcome & TRANSLATED);
        (*counters).mss_clamped += u64::from((outcome & MSS_CLAMPED) >> 1);
    }
}

/// Counts a packet the hook dropped, by reason.
#[inline(always)]
pub(crate) fn count_drop(counters: *mut HookCounters, reason: Drop) {
    if reason < drop_reason::COUNT {
        // SAFETY: per-CPU slot as above; the index is bounds checked.
        unsafe { (*counters).dropped[reason] += 1 };
    }
}

/// Counts `len` bytes once on every distinct rule in `ids`.
#[inline(always)]
pub(crate) fn count_rules<const N: usize>(ids: [u32; N], len: u32) {
    for i in 0..N {
        let id = ids[i];
        if id == lookup::NO_RULE {
            continue;
        }
        let mut seen = false;
        for j in 0..i {
            seen |= ids[j] == id;
        }
        if seen {
            continue;
        }
        if let Some(counters) = COUNTERS.get_ptr_mut(id) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
            unsafe {
                (*counters).packets += 1;
                (*counters).bytes += u64::from(len);
            }
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
