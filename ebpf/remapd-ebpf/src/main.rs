//! remapd's dataplane: stateless IPv4 prefix translation on TC ingress and egress.
//!
//! One program per framing (with or without an Ethernet header) and direction. Each looks
//! the packet's source and destination up in one LPM trie keyed by (interface, direction,
//! field, address) and rewrites the matched prefix, keeping host bits. Checksums are
//! updated incrementally with the kernel helpers, which keep the skb's checksum state
//! (`CHECKSUM_PARTIAL`/`COMPLETE`) right. ICMP errors also get the packet they quote
//! translated (RFC 5508), so path-MTU discovery and traceroute work across the remap.
//!
//! The programs never drop: anything that is not IPv4, matches no rule, or is truncated
//! or malformed goes on untouched, and every program returns `TC_ACT_UNSPEC` so other
//! programs attached after it still run.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_UNSPEC},
    macros::{classifier, map},
    maps::{Array, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::TcContext,
};
use remapd_common::{
    DIRECTION_EGRESS, DIRECTION_INGRESS, EXCEPTION_BAD_RULE_ID, EXCEPTION_COUNT,
    EXCEPTION_HELPER_FAILED, EXCEPTION_MALFORMED, FAMILY_IPV4, FIELD_DESTINATION, FIELD_SOURCE,
    HOOK_HAS_DESTINATION, HOOK_HAS_SOURCE, HOOK_SLOTS, MAX_RULES, RULE_KEY_SELECTOR_BITS,
    RuleCounters, RuleKey, RuleValue, csum_add, csum_replace4, hook_slot, translate_ipv4,
};

#[map(name = "REMAPD_RULES")]
static RULES: LpmTrie<RuleKey, RuleValue> = LpmTrie::with_max_entries(MAX_RULES, 0);

#[map(name = "REMAPD_COUNTERS")]
static COUNTERS: PerCpuArray<RuleCounters> = PerCpuArray::with_max_entries(MAX_RULES, 0);

#[map(name = "REMAPD_HOOKS")]
static HOOKS: Array<u32> = Array::with_max_entries(HOOK_SLOTS, 0);

#[map(name = "REMAPD_EXCEPTIONS")]
static EXCEPTIONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EXCEPTION_COUNT, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP_WIRE: [u8; 2] = [0x08, 0x00];
const IPV4_MIN_HLEN: usize = 20;
const ICMP_HLEN: usize = 8;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const TCP_CSUM_OFF: usize = 16;
const UDP_CSUM_OFF: usize = 6;
const ICMP_CSUM_OFF: usize = 2;
const IP_CSUM_OFF: usize = 10;
const IP_SRC_OFF: usize = 12;
const IP_DST_OFF: usize = 16;
/// Link header + the longest IPv4 header + a TCP header up to its checksum: what the
/// fast path reads with direct packet access, pulled into the linear area when needed.
const FAST_PATH_PULL: usize = ETH_HLEN + 60 + 20;

#[classifier]
pub fn remapd_l2_ingress(ctx: TcContext) -> i32 {
    run::<true>(&ctx, DIRECTION_INGRESS)
}

#[classifier]
pub fn remapd_l2_egress(ctx: TcContext) -> i32 {
    run::<true>(&ctx, DIRECTION_EGRESS)
}

#[classifier]
pub fn remapd_l3_ingress(ctx: TcContext) -> i32 {
    run::<false>(&ctx, DIRECTION_INGRESS)
}

#[classifier]
pub fn remapd_l3_egress(ctx: TcContext) -> i32 {
    run::<false>(&ctx, DIRECTION_EGRESS)
}

/// Baseline for the per-packet cost benchmark: the same hook, no work.
#[classifier]
pub fn remapd_bench_noop(_ctx: TcContext) -> i32 {
    TC_ACT_OK as i32
}

/// Benchmark reference: one cheap helper call (`bpf_skb_load_bytes` of 4 bytes), to show
/// what a helper call costs on the machine the benchmark runs on.
#[classifier]
pub fn remapd_bench_one_helper(ctx: TcContext) -> i32 {
    let _ = ctx.load::<u32>(0);
    TC_ACT_OK as i32
}

/// Why a packet went on untouched (or only partly rewritten, for `HelperFailed`).
enum Pass {
    /// Not IPv4, or no rule matched: not ours.
    NotOurs,
    /// A rule matched but the packet is too short or inconsistent to rewrite safely.
    Malformed,
    /// A kernel helper refused a rewrite.
    HelperFailed,
}

#[inline(always)]
fn run<const L2: bool>(ctx: &TcContext, direction: u8) -> i32 {
    match translate::<L2>(ctx, direction) {
        Ok(()) | Err(Pass::NotOurs) => {}
        Err(Pass::Malformed) => count_exception(EXCEPTION_MALFORMED),
        Err(Pass::HelperFailed) => count_exception(EXCEPTION_HELPER_FAILED),
    }
    TC_ACT_UNSPEC
}

#[inline(always)]
fn count_exception(index: u32) {
    if let Some(slot) = EXCEPTIONS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *slot += 1 };
    }
}

/// IPv4 header as bytes, so references into the packet never need alignment.
#[repr(C)]
struct Ipv4Header {
    version_ihl: u8,
    tos: u8,
    total_len: [u8; 2],
    id: [u8; 2],
    frag: [u8; 2],
    ttl: u8,
    protocol: u8,
    check: [u8; 2],
    src: [u8; 4],
    dst: [u8; 4],
}

/// Returns a pointer to a `T` at `offset` if the whole `T` is in the linear packet area.
#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// A lookup result: where to count it and what the address becomes. Every field is
/// always initialised (no `Option` payloads): the verifier rejects programs that spill
/// uninitialised registers, which is what LLVM makes of a `None`'s undefined payload.
#[derive(Clone, Copy)]
struct Rewrite {
    /// Counter slot, or [`NO_RULE`] when nothing matched.
    rule_id: u32,
    from: u32,
    to: u32,
}

const NO_RULE: u32 = u32::MAX;

impl Rewrite {
    const MISS: Self = Self {
        rule_id: NO_RULE,
        from: 0,
        to: 0,
    };

    #[inline(always)]
    fn hit(&self) -> bool {
        self.rule_id != NO_RULE
    }
}

/// Looks `addr` (on-wire byte order) up among the rules for this interface, direction and
/// field, unless the hook summary `fields` says the hook has no rules for that field.
#[inline(always)]
fn lookup(fields: u32, ifindex: u32, direction: u8, field: u8, addr: [u8; 4]) -> Rewrite {
    if fields & (1 << field) == 0 {
        return Rewrite::MISS;
    }
    let mut key_addr = [0u8; 16];
    key_addr[0] = addr[0];
    key_addr[1] = addr[1];
    key_addr[2] = addr[2];
    key_addr[3] = addr[3];
    let key = Key::new(
        RULE_KEY_SELECTOR_BITS + 32,
        RuleKey {
            ifindex,
            direction,
            field,
            family: FAMILY_IPV4,
            _pad: 0,
            addr: key_addr,
        },
    );
    let Some(rule) = RULES.get(&key) else {
        return Rewrite::MISS;
    };
    if rule.family != FAMILY_IPV4 || rule.rule_id == NO_RULE {
        return Rewrite::MISS;
    }
    let host = u32::from_be_bytes(addr);
    let to_prefix = u32::from_be_bytes([
        rule.to_addr[0],
        rule.to_addr[1],
        rule.to_addr[2],
        rule.to_addr[3],
    ]);
    let translated = translate_ipv4(host, to_prefix, rule.prefix_len);
    Rewrite {
        rule_id: rule.rule_id,
        from: host,
        to: translated,
    }
}

#[inline(always)]
fn count_rule(rw: &Rewrite, len: u32) {
    if rw.hit() {
        match COUNTERS.get_ptr_mut(rw.rule_id) {
            Some(counters) => {
                // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
                unsafe {
                    (*counters).packets += 1;
                    (*counters).bytes += len as u64;
                }
            }
            None => count_exception(EXCEPTION_BAD_RULE_ID),
        }
    }
}

/// What an ICMP error's quoted packet needs, computed before anything is written.
#[derive(Clone, Copy)]
struct QuotedRewrite {
    /// Offset of the quoted IPv4 header; 0 when there is nothing to rewrite.
    l3: usize,
    src: Rewrite,
    dst: Rewrite,
    /// The quoted header's checksum before and after.
    ip_check_old: u16,
    ip_check_new: u16,
    /// Offset (0: none in the quote), old and new value of the quoted TCP/UDP checksum.
    l4_check_off: usize,
    l4_check_old: u16,
    l4_check_new: u16,
}

impl QuotedRewrite {
    const NONE: Self = Self {
        l3: 0,
        src: Rewrite::MISS,
        dst: Rewrite::MISS,
        ip_check_old: 0,
        ip_check_new: 0,
        l4_check_off: 0,
        l4_check_old: 0,
        l4_check_new: 0,
    };

    #[inline(always)]
    fn active(&self) -> bool {
        self.l3 != 0
    }
}

#[inline(always)]
fn translate<const L2: bool>(ctx: &TcContext, direction: u8) -> Result<(), Pass> {
    let l3 = if L2 { ETH_HLEN } else { 0 };
    // SAFETY: reading a field of the context the kernel handed us.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // Hooks without rules (or without rules for one field) skip the trie entirely.
    let fields = match HOOKS.get(hook_slot(ifindex, direction)) {
        Some(bits) => *bits & (HOOK_HAS_SOURCE | HOOK_HAS_DESTINATION),
        None => 0,
    };
    if fields == 0 {
        return Err(Pass::NotOurs);
    }
    let skb_len = ctx.len() as usize;
    if ptr_at::<Ipv4Header>(ctx, l3).is_none() {
        if skb_len < l3 + IPV4_MIN_HLEN {
            return Err(Pass::NotOurs);
        }
        let want = if skb_len < FAST_PATH_PULL {
            skb_len
        } else {
            FAST_PATH_PULL
        };
        ctx.pull_data(want as u32).map_err(|_| Pass::NotOurs)?;
    }
    if L2 {
        let proto = ptr_at::<[u8; 2]>(ctx, 12).ok_or(Pass::NotOurs)?;
        // SAFETY: bounds checked by ptr_at.
        if unsafe { *proto } != ETH_P_IP_WIRE {
            return Err(Pass::NotOurs);
        }
    }
    let ip = ptr_at::<Ipv4Header>(ctx, l3).ok_or(Pass::NotOurs)?;
    // SAFETY: bounds checked by ptr_at; Ipv4Header has alignment 1.
    let (version_ihl, frag, protocol, src, dst, total_len) = unsafe {
        (
            (*ip).version_ihl,
            u16::from_be_bytes((*ip).frag),
            (*ip).protocol,
            (*ip).src,
            (*ip).dst,
            u16::from_be_bytes((*ip).total_len) as usize,
        )
    };
    if version_ihl >> 4 != 4 {
        return Err(Pass::NotOurs);
    }

    let src_rw = lookup(fields, ifindex, direction, FIELD_SOURCE, src);
    let dst_rw = lookup(fields, ifindex, direction, FIELD_DESTINATION, dst);

    let ihl = ((version_ihl & 0x0f) as usize) << 2;
    if ihl < IPV4_MIN_HLEN || total_len < ihl || l3 + total_len > skb_len {
        return if src_rw.hit() || dst_rw.hit() {
            Err(Pass::Malformed)
        } else {
            Err(Pass::NotOurs)
        };
    }
    let l4 = l3 + ihl;
    // Only the first fragment carries the transport header; later ones need only L3.
    let first_fragment = frag & 0x1fff == 0;

    // Decide everything before writing anything, so a malformed packet stays untouched.
    let mut l4_check_off = 0usize;
    let mut l4_flags = 0u64;
    let mut quoted = QuotedRewrite::NONE;
    if first_fragment {
        match protocol {
            IPPROTO_TCP => {
                l4_check_off = l4 + TCP_CSUM_OFF;
                l4_flags = BPF_F_PSEUDO_HDR as u64;
            }
            IPPROTO_UDP => {
                l4_check_off = l4 + UDP_CSUM_OFF;
                l4_flags = (BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0) as u64;
            }
            IPPROTO_ICMP => {
                quoted = quoted_rewrite(ctx, fields, direction, ifindex, l4, l3 + total_len)?;
            }
            _ => {}
        }
    }
    if !src_rw.hit() && !dst_rw.hit() && !quoted.active() {
        return Err(Pass::NotOurs);
    }
    if l4_check_off != 0 && l4_check_off + 2 > l3 + total_len {
        return Err(Pass::Malformed);
    }

    // Addresses and the IP header checksum are written directly (the IP checksum is
    // never offloaded, and a change that keeps the header's sum leaves a
    // CHECKSUM_COMPLETE skb->csum valid, exactly as bpf_l3_csum_replace would).
    // The pull above may have moved the data: take a fresh pointer.
    let ip = ptr_at::<Ipv4Header>(ctx, l3).ok_or(Pass::Malformed)?;
    // One's-complement difference of all address changes, for the transport checksum.
    let mut l4_diff = 0u32;
    // SAFETY: bounds checked by ptr_at; Ipv4Header has alignment 1.
    unsafe {
        let mut check = u16::from_be_bytes((*ip).check);
        if src_rw.hit() {
            let new = src_rw.to.to_be_bytes();
            l4_diff = csum_add(
                csum_add(l4_diff, !u32::from_ne_bytes((*ip).src)),
                u32::from_ne_bytes(new),
            );
            check = csum_replace4(check, src_rw.from, src_rw.to);
            (*ip).src = new;
        }
        if dst_rw.hit() {
            let new = dst_rw.to.to_be_bytes();
            l4_diff = csum_add(
                csum_add(l4_diff, !u32::from_ne_bytes((*ip).dst)),
                u32::from_ne_bytes(new),
            );
            check = csum_replace4(check, dst_rw.from, dst_rw.to);
            (*ip).dst = new;
        }
        (*ip).check = check.to_be_bytes();
    }
    // The transport checksum goes through the helper, which knows the skb's checksum
    // state (CHECKSUM_PARTIAL holds a pseudo-header sum, COMPLETE needs skb->csum fixed).
    // Size 0 passes all address changes as one precomputed difference: one call.
    if l4_check_off != 0 && (src_rw.hit() || dst_rw.hit()) {
        ctx.l4_csum_replace(l4_check_off, 0, l4_diff as u64, l4_flags)
            .map_err(|_| Pass::HelperFailed)?;
    }
    if quoted.active() {
        write_quoted(ctx, l4, &quoted)?;
        count_rule(&quoted.src, ctx.len());
        count_rule(&quoted.dst, ctx.len());
    }
    count_rule(&src_rw, ctx.len());
    count_rule(&dst_rw, ctx.len());
    Ok(())
}

/// For an ICMP error (destination unreachable, time exceeded, parameter problem), works
/// out how the quoted packet changes. The quote travels the other way: its source is the
/// host our *destination* rules describe, and its destination the host our *source*
/// rules describe.
#[inline(always)]
fn quoted_rewrite(
    ctx: &TcContext,
    fields: u32,
    direction: u8,
    ifindex: u32,
    l4: usize,
    packet_end: usize,
) -> Result<QuotedRewrite, Pass> {
    let icmp_type: u8 = ctx.load(l4).map_err(|_| Pass::Malformed)?;
    if icmp_type != 3 && icmp_type != 11 && icmp_type != 12 {
        return Ok(QuotedRewrite::NONE);
    }
    let l3 = l4 + ICMP_HLEN;
    if l3 + IPV4_MIN_HLEN > packet_end {
        return Err(Pass::Malformed);
    }
    let inner: Ipv4Header = ctx.load(l3).map_err(|_| Pass::Malformed)?;
    if inner.version_ihl >> 4 != 4 {
        return Err(Pass::Malformed);
    }
    let ihl = ((inner.version_ihl & 0x0f) as usize) << 2;
    if ihl < IPV4_MIN_HLEN || l3 + ihl > packet_end {
        return Err(Pass::Malformed);
    }
    let src = lookup(fields, ifindex, direction, FIELD_DESTINATION, inner.src);
    let dst = lookup(fields, ifindex, direction, FIELD_SOURCE, inner.dst);
    if !src.hit() && !dst.hit() {
        return Ok(QuotedRewrite::NONE);
    }

    let mut out = QuotedRewrite::NONE;
    out.l3 = l3;
    out.src = src;
    out.dst = dst;
    out.ip_check_old = u16::from_be_bytes(inner.check);
    out.ip_check_new = out.ip_check_old;
    for rw in [&src, &dst] {
        if rw.hit() {
            out.ip_check_new = csum_replace4(out.ip_check_new, rw.from, rw.to);
        }
    }

    let inner_l4 = l3 + ihl;
    let inner_first_fragment = u16::from_be_bytes(inner.frag) & 0x1fff == 0;
    let csum_off = match inner.protocol {
        IPPROTO_TCP => inner_l4 + TCP_CSUM_OFF,
        IPPROTO_UDP => inner_l4 + UDP_CSUM_OFF,
        _ => 0,
    };
    // The quote may stop before the transport checksum; then there is nothing to fix.
    if inner_first_fragment && csum_off != 0 && csum_off + 2 <= packet_end {
        let old = u16::from_be_bytes(ctx.load::<[u8; 2]>(csum_off).map_err(|_| Pass::Malformed)?);
        // A zero UDP checksum means "none" and stays zero.
        if !(inner.protocol == IPPROTO_UDP && old == 0) {
            let mut new = old;
            for rw in [&src, &dst] {
                if rw.hit() {
                    new = csum_replace4(new, rw.from, rw.to);
                }
            }
            if inner.protocol == IPPROTO_UDP && new == 0 {
                new = 0xffff;
            }
            out.l4_check_off = csum_off;
            out.l4_check_old = old;
            out.l4_check_new = new;
        }
    }
    Ok(out)
}

/// Writes the quoted packet's new addresses and checksums, and folds every change into
/// the ICMP checksum (which has no pseudo-header).
#[inline(always)]
fn write_quoted(ctx: &TcContext, icmp: usize, q: &QuotedRewrite) -> Result<(), Pass> {
    let icmp_check = icmp + ICMP_CSUM_OFF;
    if q.src.hit() {
        replace4(ctx, q.l3 + IP_SRC_OFF, icmp_check, q.src.from, q.src.to)?;
    }
    if q.dst.hit() {
        replace4(ctx, q.l3 + IP_DST_OFF, icmp_check, q.dst.from, q.dst.to)?;
    }
    replace2(
        ctx,
        q.l3 + IP_CSUM_OFF,
        icmp_check,
        q.ip_check_old,
        q.ip_check_new,
    )?;
    if q.l4_check_off != 0 {
        replace2(
            ctx,
            q.l4_check_off,
            icmp_check,
            q.l4_check_old,
            q.l4_check_new,
        )?;
    }
    Ok(())
}

#[inline(always)]
fn replace4(ctx: &TcContext, off: usize, check_off: usize, from: u32, to: u32) -> Result<(), Pass> {
    ctx.store(off, &to.to_be_bytes(), 0)
        .map_err(|_| Pass::HelperFailed)?;
    ctx.l4_csum_replace(check_off, u32::to_be(from) as u64, u32::to_be(to) as u64, 4)
        .map_err(|_| Pass::HelperFailed)
}

#[inline(always)]
fn replace2(ctx: &TcContext, off: usize, check_off: usize, from: u16, to: u16) -> Result<(), Pass> {
    ctx.store(off, &to.to_be_bytes(), 0)
        .map_err(|_| Pass::HelperFailed)?;
    ctx.l4_csum_replace(check_off, u16::to_be(from) as u64, u16::to_be(to) as u64, 2)
        .map_err(|_| Pass::HelperFailed)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
