//! IPv6 prefix translation, stateless like IPv4's: the matched prefix of the source or
//! destination is replaced, host bits kept, and the transport checksum moved by the
//! address change (every IPv6 transport checksum covers the pseudo-header: TCP, UDP,
//! UDP-Lite, DCCP and ICMPv6). IPv6 has no header checksum.
//!
//! A checksum-neutral mapping (RFC 6296 section 3.2: the two prefixes' 16-bit words sum
//! to the same one's-complement value, which the allocator can arrange when it chooses
//! the remapped prefix) changes no checksum: the rewrite is then the address writes
//! alone, with no checksum helper call.
//!
//! ICMPv6 errors (destination unreachable, packet too big, time exceeded, parameter
//! problem) get their quoted packet translated too, so path-MTU discovery and
//! traceroute work across the remap; on a border the quote must be one the peering
//! could have carried.
//!
//! IPv6 rules live in the LPM trie only (a hook with any sets [`HOOK_RULES6`]); allow-lists
//! in the allow trie. The extension-header chain is walked with a bounded loop to find the
//! transport header: only a first fragment holds it; later fragments are translated at
//! the IP layer alone.
//!
//! What passes and what is dropped follows IPv4:
//! - link-local addresses (fe80::/10) and multicast are never translated; where no
//!   border is they pass untouched; a border lets through only neighbour discovery
//!   (hop limit 255) and multicast listener discovery (link-local or unspecified
//!   source) to link-local or link-local-scope multicast destinations, and drops the
//!   rest;
//! - a packet that matches a rule (or crosses a border) but cannot be translated exactly
//!   is dropped: a chain longer than [`MAX_EXTENSION_HEADERS`] or cut short, a first
//!   fragment without its transport checksum, a UDP datagram whose checksum is zero
//!   (invalid in IPv6), ESP/AH (the transport header is out of reach), ICMPv6 errors
//!   other than types 1-4 or whose quote is not an IPv6 header;
//! - on a border a routing header is dropped (it could steer the packet past the
//!   allow-list, like IPv4 source routing).
//!
//! This path is its own BPF function, reached only by IPv6 packets, so IPv4 packets pay
//! nothing for it and the verifier walks it once.

use aya_ebpf::{
    bindings::{__sk_buff, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    macros::map,
    maps::{PerCpuArray, lpm_trie::Key},
    programs::TcContext,
};
use remapd_common::{
    DIRECTION_INGRESS, FAMILY_IPV6, FIELD_DESTINATION, FIELD_SOURCE, HOOK_ENFORCE, HOOK_RULES6,
    HookConfig, HookCounters, RULE_KEY_SELECTOR_BITS, RuleKey, csum_diff4, csum_fold64,
    csum_l4_update, drop_reason,
};

use crate::lookup::NO_RULE;
use crate::trace::{self, Seen};
use crate::{
    ALLOW, Drop, ETH_HLEN, IPPROTO_DCCP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE, RULES,
    TCP_CSUM_OFF, TRANSLATED, UDP_CSUM_OFF, clamp_mss, count_rules, count_verdict, ptr_at, pull,
};

const IPV6_HLEN: usize = 40;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_ESP: u8 = 50;
const NEXTHDR_AH: u8 = 51;
const NEXTHDR_ICMPV6: u8 = 58;
const NEXTHDR_NONE: u8 = 59;
const NEXTHDR_DEST: u8 = 60;
/// Extension headers walked before giving up on finding the transport header.
pub(crate) const MAX_EXTENSION_HEADERS: usize = 8;
const ICMPV6_CSUM_OFF: usize = 2;
/// `bpf_l4_csum_replace` flag (Linux 6.16): the pseudo-header change is an IPv6 one, so
/// a CHECKSUM_COMPLETE skb->csum is left alone (see the write in [`handle`]).
const BPF_F_IPV6: u64 = 1 << 7;
/// ICMPv6 types below 128 are errors (RFC 4443), quoting the packet they are about.
const ICMPV6_INFO_MIN: u8 = 128;

/// The IPv6 header with natural field widths (addresses as memory-order words).
#[repr(C)]
pub(crate) struct Ipv6Header {
    pub vtc_flow: u32,
    pub payload_len: u16,
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

/// An IPv6 lookup result: the counter slot ([`NO_RULE`] on a miss) and the translated
/// address (memory-order words; the address itself on a miss).
#[derive(Clone, Copy)]
struct Rewrite6 {
    rule_id: u32,
    to: [u32; 4],
}

impl Rewrite6 {
    #[inline(always)]
    fn hit(&self) -> bool {
        self.rule_id != NO_RULE
    }
}

#[inline(always)]
fn key6(ifindex: u32, direction: u8, field: u8, addr: &[u32; 4]) -> Key<RuleKey> {
    let mut bytes = [0u8; 16];
    for i in 0..4 {
        let w = addr[i].to_ne_bytes();
        bytes[4 * i] = w[0];
        bytes[4 * i + 1] = w[1];
        bytes[4 * i + 2] = w[2];
        bytes[4 * i + 3] = w[3];
    }
    Key::new(
        RULE_KEY_SELECTOR_BITS + 128,
        RuleKey {
            ifindex,
            direction,
            field,
            family: FAMILY_IPV6,
            _pad: 0,
            addr: bytes,
        },
    )
}

/// Looks `addr` up among the hook's IPv6 rules for `field` (the trie).
#[inline(always)]
fn lookup6(ifindex: u32, direction: u8, field: u8, addr: &[u32; 4]) -> Rewrite6 {
    let miss = Rewrite6 {
        rule_id: NO_RULE,
        to: *addr,
    };
    let Some(rule) = RULES.get(&key6(ifindex, direction, field, addr)) else {
        return miss;
    };
    if rule.family != FAMILY_IPV6 || rule.rule_id == NO_RULE || rule.prefix_len > 128 {
        return miss;
    }
    let mut to = [0u32; 4];
    for i in 0..4 {
        // This word's share of the prefix, as a host-order mask, then in memory order.
        let bits = i32::from(rule.prefix_len) - 32 * i as i32;
        let mask = if bits >= 32 {
            u32::MAX
        } else if bits <= 0 {
            0
        } else {
            u32::MAX << (32 - bits)
        }
        .to_be();
        let prefix = u32::from_ne_bytes([
            rule.to_addr[4 * i],
            rule.to_addr[4 * i + 1],
            rule.to_addr[4 * i + 2],
            rule.to_addr[4 * i + 3],
        ]);
        to[i] = (prefix & mask) | (addr[i] & !mask);
    }
    Rewrite6 {
        rule_id: rule.rule_id,
        to,
    }
}

/// [`lookup6`] when `translate`, else a miss that leaves `addr` as it is.
#[inline(always)]
fn lookup6_if(
    translate: bool,
    ifindex: u32,
    direction: u8,
    field: u8,
    addr: &[u32; 4],
) -> Rewrite6 {
    if translate {
        lookup6(ifindex, direction, field, addr)
    } else {
        Rewrite6 {
            rule_id: NO_RULE,
            to: *addr,
        }
    }
}

/// Whether `addr` (after translation) is in the border's IPv6 allow-list for `field`.
#[inline(always)]
fn allowed6(ifindex: u32, field: u8, addr: &[u32; 4]) -> bool {
    ALLOW
        .get(&key6(ifindex, DIRECTION_INGRESS, field, addr))
        .is_some()
}

/// A per-CPU slot that values pass through to become numbers the verifier knows
/// nothing about (see [`handle`]).
#[map(name = "REMAPD_OPAQUE")]
static OPAQUE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `value`, stored in [`OPAQUE`] and read back: the same number at run time, an unknown
/// one to the verifier. `None` only if the slot is missing, which cannot happen.
#[inline(always)]
fn opaque(value: u64) -> Option<u64> {
    let slot = OPAQUE.get_ptr_mut(0)?;
    // SAFETY: a per-CPU slot of this program's own map; nothing else runs on this CPU
    // between the write and the read.
    unsafe {
        core::ptr::write_volatile(slot, value);
        Some(core::ptr::read_volatile(slot))
    }
}

/// Link-local unicast (fe80::/10) or any multicast (ff00::/8): never translated.
#[inline(always)]
fn link_scoped(addr: &[u32; 4]) -> bool {
    let first = u32::from_be(addr[0]);
    first >> 22 == 0x3fa || first >> 24 == 0xff
}

/// Link-local unicast, or link-local-scope multicast (ff02::/16): what a border lets
/// through untranslated.
#[inline(always)]
fn link_local_control(addr: &[u32; 4]) -> bool {
    let first = u32::from_be(addr[0]);
    first >> 22 == 0x3fa || first >> 16 == 0xff02
}

/// Where the upper-layer header is.
struct Transport {
    /// Its protocol (next-header value).
    protocol: u8,
    /// Its offset.
    offset: usize,
    /// Not a later fragment: the upper-layer header is here.
    first_fragment: bool,
    /// A fragment with more to come.
    more_fragments: bool,
    /// The chain holds a routing header.
    routing: bool,
}

/// How much less an IPv6 TCP segment may carry than an IPv4 one in a packet of the same
/// size: the fixed header is 40 bytes against IPv4's 20. A hook's `mss_clamp` is the
/// IPv4 value (the tunnel MTU minus 40), so IPv6 SYNs are clamped to that minus this.
const IPV6_MSS_SHORTFALL: u32 = 20;

/// [`clamp_mss`] for an IPv6 TCP SYN at `l3` (the first fragment, past any extension
/// headers), to the hook's `clamp` less [`IPV6_MSS_SHORTFALL`]; anything else: 0,
/// untouched (clamping is a courtesy: what cannot be walked passes as it is).
#[inline(always)]
fn clamp_syn(ctx: &TcContext, l3: usize, clamp: u32) -> Result<u8, Drop> {
    let (Ok(payload_len), Ok(next)) = (ctx.load::<u16>(l3 + 4), ctx.load::<u8>(l3 + 6)) else {
        return Ok(0);
    };
    let packet_end = l3 + IPV6_HLEN + usize::from(u16::from_be(payload_len));
    if packet_end > ctx.len() as usize {
        return Ok(0);
    }
    let l4 = match walk_chain(ctx, l3, next, packet_end) {
        Ok(t) if t.first_fragment && t.protocol == IPPROTO_TCP => t.offset,
        _ => return Ok(0),
    };
    // One unknown offset instead of one per path through the walk, so the verifier
    // walks the option loop once, not once per walk (which costs it ~290k
    // instructions; see `handle`).
    let l4 = opaque(l4 as u64).ok_or(drop_reason::HELPER_FAILED)? as usize;
    clamp_mss(
        ctx,
        l4,
        packet_end,
        clamp.saturating_sub(IPV6_MSS_SHORTFALL) as u16,
    )
}

/// Walks the extension-header chain from the fixed header at `l3` (whose next-header
/// field is `first`) to the upper-layer header: at most [`MAX_EXTENSION_HEADERS`]
/// headers, and no further than a later fragment's header (what follows it is payload).
#[inline(always)]
fn walk_chain(ctx: &TcContext, l3: usize, first: u8, packet_end: usize) -> Result<Transport, Drop> {
    let mut next = first;
    let mut off = l3 + IPV6_HLEN;
    let mut out = Transport {
        protocol: NEXTHDR_NONE,
        offset: 0,
        first_fragment: true,
        more_fragments: false,
        routing: false,
    };
    // One step per extension header, and one for the upper-layer header.
    for _ in 0..=MAX_EXTENSION_HEADERS {
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let hdr: [u8; 2] = ctx.load(off).map_err(|_| drop_reason::MALFORMED)?;
                out.routing |= next == NEXTHDR_ROUTING;
                next = hdr[0];
                off += (usize::from(hdr[1]) + 1) * 8;
            }
            NEXTHDR_FRAGMENT => {
                let hdr: [u8; 4] = ctx.load(off).map_err(|_| drop_reason::MALFORMED)?;
                let offset_flags = u16::from_be_bytes([hdr[2], hdr[3]]);
                out.more_fragments = offset_flags & 1 != 0;
                next = hdr[0];
                off += 8;
                if offset_flags & 0xfff8 != 0 {
                    out.first_fragment = false;
                    break;
                }
            }
            _ => break,
        }
        if off > packet_end {
            return Err(drop_reason::MALFORMED);
        }
    }
    if off > packet_end {
        return Err(drop_reason::MALFORMED);
    }
    if out.first_fragment
        && matches!(
            next,
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_FRAGMENT
        )
    {
        // Longer than any chain a pod sends: nothing we can judge.
        return Err(drop_reason::UNSUPPORTED);
    }
    out.protocol = next;
    out.offset = off;
    Ok(out)
}

/// Translates an IPv6 packet on a hook ([`handle`]): its answer, encoded for a BPF
/// function's one return register by [`encode`]. Its own BPF function, called from the
/// program itself, so its frame never stacks on the general path's; [`finish`] clamps,
/// counts and traces after it has returned, so their frames never stack either
/// (together they would pass the 512 bytes a BPF call chain may use).
#[inline(never)]
pub(crate) fn path<const L2: bool>(
    skb: *mut __sk_buff,
    config: &HookConfig,
    ifindex: u32,
    direction: u8,
) -> u64 {
    let ctx = TcContext::new(skb);
    let l3 = if L2 { ETH_HLEN } else { 0 };
    encode(handle(&ctx, config, ifindex, direction, l3))
}

/// What [`path`] decided (`decided`, from [`encode`]) for the packet on the hook
/// `hook` (interface in the low 32 bits, direction above): the MSS clamp for a packet
/// that passes, the counters and the trace. The TC action.
#[inline(never)]
pub(crate) fn finish<const L2: bool>(
    skb: *mut __sk_buff,
    config: &HookConfig,
    counters: *mut HookCounters,
    hook: u64,
    decided: u64,
) -> i32 {
    let ctx = TcContext::new(skb);
    let l3 = if L2 { ETH_HLEN } else { 0 };
    let (ifindex, direction) = (hook as u32, (hook >> 32) as u8);
    let result = decode(decided);
    // The MSS clamp after the translation, once the packet is known to pass, on a fresh
    // walk of the headers (as IPv4's: none of the translation's state is live).
    let result = result.and_then(|outcome| {
        if config.mss_clamp == 0 {
            return Ok(outcome);
        }
        Ok(outcome | clamp_syn(&ctx, l3, config.mss_clamp)?)
    });
    let (action, reason, outcome) = count_verdict(counters, ctx.len(), result);
    // Without addresses for now: the trace's events carry IPv4 ones.
    trace::record::<L2>(
        &ctx,
        ifindex,
        direction,
        action,
        reason,
        outcome,
        (0, 0),
        &Seen::NOTHING,
    );
    action
}

/// [`handle`]'s answer as one number: the outcome, or the drop reason with bit 32 set.
#[inline(always)]
fn encode(result: Result<u8, Drop>) -> u64 {
    match result {
        Ok(outcome) => u64::from(outcome),
        Err(reason) => 1 << 32 | (reason as u64 & 0xffff_ffff),
    }
}

/// The inverse of [`encode`].
#[inline(always)]
fn decode(decided: u64) -> Result<u8, Drop> {
    if decided >> 32 == 0 {
        Ok(decided as u8)
    } else {
        Err((decided & 0xffff_ffff) as Drop)
    }
}

#[inline(always)]
fn handle(
    ctx: &TcContext,
    config: &HookConfig,
    ifindex: u32,
    direction: u8,
    l3: usize,
) -> Result<u8, Drop> {
    let border = config.flags & HOOK_ENFORCE != 0;
    let has_rules = config.flags & HOOK_RULES6 != 0;
    if !border && !has_rules {
        return Ok(0);
    }
    let skb_len = ctx.len() as usize;
    if ptr_at::<Ipv6Header>(ctx, l3).is_none() && !pull(ctx, l3 + IPV6_HLEN) {
        return if border {
            Err(drop_reason::MALFORMED)
        } else {
            Ok(0)
        };
    }
    let ip = ptr_at::<Ipv6Header>(ctx, l3).ok_or(drop_reason::MALFORMED)?;
    // SAFETY: bounds checked by ptr_at (misaligned access: see Ipv4Header).
    let (vtc, payload_len, next, hop_limit, src, dst) = unsafe {
        (
            (*ip).vtc_flow,
            usize::from(u16::from_be((*ip).payload_len)),
            (*ip).next_header,
            (*ip).hop_limit,
            (*ip).src,
            (*ip).dst,
        )
    };
    // Link-local and multicast traffic is never translated, and passes untouched where
    // no border is (neighbour discovery between the gateway and its neighbours).
    let link = link_scoped(&src) || link_scoped(&dst);
    if link && !border {
        return Ok(0);
    }
    let translate = has_rules && !link;
    let src_rw = lookup6_if(translate, ifindex, direction, FIELD_SOURCE, &src);
    let dst_rw = lookup6_if(translate, ifindex, direction, FIELD_DESTINATION, &dst);
    let rewrites = src_rw.hit() || dst_rw.hit();
    let strict = border || rewrites;
    let packet_end = l3 + IPV6_HLEN + payload_len;
    // Version 6, and a payload length the skb holds (jumbograms, with length 0 and a
    // hop-by-hop option, are not something pods exchange across clusters).
    if u32::from_be(vtc) >> 28 != 6 || payload_len == 0 || packet_end > skb_len {
        return if strict {
            Err(drop_reason::MALFORMED)
        } else {
            Ok(0)
        };
    }
    let transport = match walk_chain(ctx, l3, next, packet_end) {
        Ok(t) => t,
        Err(reason) if strict => return Err(reason),
        Err(_) => return Ok(0),
    };
    // Every path through the chain and the checks above arrives here with its own known
    // values, and each later branch on them would keep the paths apart (the verifier
    // walked the rest once per combination). As numbers it knows nothing about, they
    // are one path again.
    let packed = opaque(
        u64::from(transport.protocol)
            | (transport.offset as u64 & 0xffff) << 8
            | u64::from(transport.first_fragment) << 24
            | u64::from(transport.more_fragments) << 25
            | u64::from(transport.routing) << 26
            | u64::from(link) << 27
            | u64::from(border) << 28
            | u64::from(strict) << 29,
    )
    .ok_or(drop_reason::HELPER_FAILED)?;
    let transport = Transport {
        protocol: packed as u8,
        offset: (packed >> 8) as usize & 0xffff,
        first_fragment: packed & 1 << 24 != 0,
        more_fragments: packed & 1 << 25 != 0,
        routing: packed & 1 << 26 != 0,
    };
    let (link, border, strict) = (
        packed & 1 << 27 != 0,
        packed & 1 << 28 != 0,
        packed & 1 << 29 != 0,
    );
    // Routing headers could steer a packet past the allow-list (like IPv4 source routes).
    if border && transport.routing {
        return Err(drop_reason::IP_OPTIONS);
    }
    let icmp_type = if transport.first_fragment
        && transport.protocol == NEXTHDR_ICMPV6
        && transport.offset < packet_end
    {
        ctx.load::<u8>(transport.offset).ok()
    } else {
        None
    };
    if link {
        // A border lets through, untranslated, only what the link itself needs:
        // neighbour discovery (hop limit 255, RFC 4861) and multicast listener
        // discovery (from a link-local or unspecified source, RFC 3810).
        let nd = matches!(icmp_type, Some(133..=137)) && hop_limit == 255;
        let mld = matches!(icmp_type, Some(130..=132 | 143))
            && (u32::from_be(src[0]) >> 22 == 0x3fa || src == [0; 4]);
        return if (nd || mld) && link_local_control(&dst) {
            Ok(0)
        } else {
            Err(drop_reason::UNSUPPORTED)
        };
    }
    // The transport checksum: where it is.
    let mut check_off = 0usize;
    let mut quote = false;
    let mut flags = BPF_F_PSEUDO_HDR as u64 | BPF_F_IPV6;
    if transport.first_fragment {
        match transport.protocol {
            IPPROTO_TCP | IPPROTO_DCCP => {
                check_off = transport.offset
                    + if transport.protocol == IPPROTO_TCP {
                        TCP_CSUM_OFF
                    } else {
                        UDP_CSUM_OFF
                    };
            }
            IPPROTO_UDP | IPPROTO_UDPLITE => {
                check_off = transport.offset + UDP_CSUM_OFF;
                // A translated checksum that comes out as zero is sent as 0xffff.
                flags |= BPF_F_MARK_MANGLED_0 as u64;
            }
            NEXTHDR_ICMPV6 => {
                match icmp_type {
                    Some(t) if t >= ICMPV6_INFO_MIN => {}
                    // Destination unreachable, packet too big, time exceeded, parameter
                    // problem: the quote is translated too (below).
                    Some(1..=4) => {
                        match quoted_rewrite(
                            ctx,
                            config,
                            ifindex,
                            direction,
                            border,
                            transport.offset,
                            packet_end,
                        ) {
                            Ok(active) => quote = active,
                            Err(reason) if strict => return Err(reason),
                            Err(_) => return Ok(0),
                        }
                    }
                    // Other errors (types 0 and 5-127 are unassigned) and unreadable
                    // types: nothing we can translate exactly.
                    _ if strict => return Err(drop_reason::UNSUPPORTED),
                    _ => return Ok(0),
                }
                check_off = transport.offset + ICMPV6_CSUM_OFF;
            }
            NEXTHDR_ESP | NEXTHDR_AH if strict => return Err(drop_reason::UNSUPPORTED),
            _ => {}
        }
    }
    if rewrites && check_off != 0 {
        if check_off + 2 > packet_end {
            return Err(if transport.more_fragments {
                drop_reason::TINY_FRAGMENT
            } else {
                drop_reason::MALFORMED
            });
        }
        // A zero UDP checksum is invalid in IPv6 (RFC 8200): not something to carry on.
        if transport.protocol == IPPROTO_UDP {
            let check: u16 = ctx.load(check_off).map_err(|_| drop_reason::MALFORMED)?;
            if check == 0 {
                return Err(drop_reason::MALFORMED);
            }
        }
    }
    if border {
        if !allowed6(ifindex, FIELD_SOURCE, &src_rw.to) {
            return Err(drop_reason::SOURCE_NOT_ALLOWED);
        }
        if !allowed6(ifindex, FIELD_DESTINATION, &dst_rw.to) {
            return Err(drop_reason::NOT_EXPORTED);
        }
    }
    if !rewrites && !quote {
        return Ok(0);
    }
    // The pulls above may have moved the data: a fresh pointer.
    let ip = ptr_at::<Ipv6Header>(ctx, l3).ok_or(drop_reason::MALFORMED)?;
    let mut diff = 0u64;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        for i in 0..4 {
            diff += csum_diff4(src[i], src_rw.to[i]) + csum_diff4(dst[i], dst_rw.to[i]);
            (*ip).src[i] = src_rw.to[i];
            (*ip).dst[i] = dst_rw.to[i];
        }
    }
    let (mut quote_src_rule, mut quote_dst_rule) = (NO_RULE, NO_RULE);
    if quote {
        let (quote_diff, src_rule, dst_rule) = write_quote(ctx)?;
        diff += quote_diff;
        (quote_src_rule, quote_dst_rule) = (src_rule, dst_rule);
    }
    let diff = csum_fold64(diff);
    if diff == 0 || diff == 0xffff {
        // A checksum-neutral change (RFC 6296 section 3.2: prefixes whose 16-bit words
        // sum to the same one's-complement value): the transport checksum, the
        // pseudo-header seed of a CHECKSUM_PARTIAL skb and a CHECKSUM_COMPLETE
        // skb->csum all stay right as they are, so no helper runs.
    } else if check_off != 0 {
        // The helper in every checksum state, with BPF_F_IPV6: for CHECKSUM_COMPLETE
        // the addresses (+diff) and the checksum field (-diff) cancel out in skb->csum,
        // which covers both, so it must stay as it is (IPv4's header checksum does that
        // cancelling there, which is why the flag exists); for CHECKSUM_PARTIAL the
        // pseudo-header seed moves; otherwise the field.
        ctx.l4_csum_replace(check_off, 0, u64::from(diff), flags)
            .map_err(|_| drop_reason::HELPER_FAILED)?;
    } else {
        // Nothing cancels the address change (a later fragment, a protocol without a
        // checksum): a CHECKSUM_COMPLETE skb->csum takes it (the helper does nothing
        // in other states).
        // SAFETY: the helper takes the context's skb and a checksum difference.
        unsafe { aya_ebpf::helpers::bpf_csum_update(ctx.skb.skb, u32::from(diff)) };
    }
    count_rules(
        [
            src_rw.rule_id,
            dst_rw.rule_id,
            quote_src_rule,
            quote_dst_rule,
        ],
        ctx.len(),
    );
    Ok(TRANSLATED)
}

/// What an ICMPv6 error's quoted packet needs, decided before anything is written. Kept
/// in a per-CPU slot, not on the stack: with the outer packet's addresses, rewrites and
/// trie keys, the stack would not hold it (512 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
struct Quote6 {
    /// Offset of the quoted IPv6 header.
    l3: u64,
    /// Offset of the quote's transport checksum (0: not in the quote).
    check_off: u64,
    src_rule: u32,
    dst_rule: u32,
    old_src: [u32; 4],
    old_dst: [u32; 4],
    new_src: [u32; 4],
    new_dst: [u32; 4],
    check_old: u16,
    check_new: u16,
    _pad: u32,
}

#[map(name = "REMAPD_QUOTE6")]
static QUOTE6: PerCpuArray<Quote6> = PerCpuArray::with_max_entries(1, 0);

/// Works out how an ICMPv6 error's quoted packet changes (what RFC 5508 asks of IPv4
/// NATs, for IPv6: the quote travels the other way, so its source is what our
/// destination rules describe and its destination what our source rules describe), and
/// leaves it in [`QUOTE6`]: `Ok(true)` when the quote is to be rewritten. On a border the
/// quote must be a packet this peering could have carried out: from an exported address
/// to one the peer may use, after translation.
#[inline(always)]
fn quoted_rewrite(
    ctx: &TcContext,
    config: &HookConfig,
    ifindex: u32,
    direction: u8,
    border: bool,
    icmp: usize,
    packet_end: usize,
) -> Result<bool, Drop> {
    let l3 = icmp + 8;
    if l3 + IPV6_HLEN > packet_end {
        return Err(drop_reason::MALFORMED);
    }
    let first: u32 = ctx.load(l3).map_err(|_| drop_reason::MALFORMED)?;
    let next: u8 = ctx.load(l3 + 6).map_err(|_| drop_reason::MALFORMED)?;
    if u32::from_be(first) >> 28 != 6 {
        return Err(drop_reason::MALFORMED);
    }
    let q = QUOTE6.get_ptr_mut(0).ok_or(drop_reason::HELPER_FAILED)?;
    let old_src: [u32; 4] = ctx.load(l3 + 8).map_err(|_| drop_reason::MALFORMED)?;
    let old_dst: [u32; 4] = ctx.load(l3 + 24).map_err(|_| drop_reason::MALFORMED)?;
    let has_rules = config.flags & HOOK_RULES6 != 0;
    let translate = has_rules && !link_scoped(&old_src) && !link_scoped(&old_dst);
    // SAFETY: a per-CPU slot of this program's own map, written and read within this
    // run.
    unsafe {
        (*q).l3 = l3 as u64;
        (*q).check_off = 0;
        (*q).old_src = old_src;
        (*q).old_dst = old_dst;
        let src = lookup6_if(translate, ifindex, direction, FIELD_DESTINATION, &old_src);
        (*q).src_rule = src.rule_id;
        (*q).new_src = src.to;
        let dst = lookup6_if(translate, ifindex, direction, FIELD_SOURCE, &old_dst);
        (*q).dst_rule = dst.rule_id;
        (*q).new_dst = dst.to;
    }
    // SAFETY: as above.
    let (new_src, new_dst, hit) = unsafe {
        (
            (*q).new_src,
            (*q).new_dst,
            (*q).src_rule != NO_RULE || (*q).dst_rule != NO_RULE,
        )
    };
    if border
        && (!allowed6(ifindex, FIELD_DESTINATION, &new_src)
            || !allowed6(ifindex, FIELD_SOURCE, &new_dst))
    {
        return Err(drop_reason::QUOTE_NOT_ALLOWED);
    }
    if !hit {
        return Ok(false);
    }
    // The quoted transport checksum, past the quote's extension headers, when the
    // quote holds it (a quote cut short, or of a later fragment, has none to move:
    // receivers read only the ports of a quote). A quote with a routing header is left
    // as it is: while segments are left its checksum covers the routing header's final
    // destination, not the address field translated here (RFC 8200 section 8.1).
    let (protocol, l4) = match walk_chain(ctx, l3, next, packet_end) {
        Ok(t) if t.first_fragment && !t.routing => (t.protocol, t.offset),
        _ => return Ok(true),
    };
    // Unknown numbers to the verifier from here, whatever path the walk took (see
    // `handle`).
    let packed = opaque(u64::from(protocol) | (l4 as u64 & 0xffff) << 8)
        .ok_or(drop_reason::HELPER_FAILED)?;
    let (protocol, l4) = (packed as u8, (packed >> 8) as usize & 0xffff);
    let field = match protocol {
        IPPROTO_TCP => TCP_CSUM_OFF,
        IPPROTO_UDP | IPPROTO_UDPLITE | IPPROTO_DCCP => UDP_CSUM_OFF,
        NEXTHDR_ICMPV6 => ICMPV6_CSUM_OFF,
        _ => return Ok(true),
    };
    let check_off = l4 + field;
    if check_off + 2 > packet_end {
        return Ok(true);
    }
    let check: u16 = ctx.load(check_off).map_err(|_| drop_reason::MALFORMED)?;
    let diff = quote_diff(q);
    // SAFETY: as above.
    unsafe {
        (*q).check_off = check_off as u64;
        (*q).check_old = check;
        (*q).check_new = csum_l4_update(
            check,
            u32::from(csum_fold64(diff)),
            false,
            protocol == IPPROTO_UDP,
        );
    }
    Ok(true)
}

/// The one's-complement difference the quote's address changes make.
#[inline(always)]
fn quote_diff(q: *mut Quote6) -> u64 {
    let mut diff = 0u64;
    for i in 0..4 {
        // SAFETY: the caller's per-CPU slot.
        unsafe {
            diff += csum_diff4((*q).old_src[i], (*q).new_src[i])
                + csum_diff4((*q).old_dst[i], (*q).new_dst[i]);
        }
    }
    diff
}

/// Writes the quote's new addresses and transport checksum from [`QUOTE6`]; returns the
/// difference they make to the ICMPv6 message's sum (all of it is message bytes) and
/// the quote's rule slots.
#[inline(always)]
fn write_quote(ctx: &TcContext) -> Result<(u64, u32, u32), Drop> {
    let q = QUOTE6.get_ptr_mut(0).ok_or(drop_reason::HELPER_FAILED)?;
    let mut diff = quote_diff(q);
    // SAFETY: the per-CPU slot `quoted_rewrite` filled in this run.
    unsafe {
        let l3 = (*q).l3 as usize;
        ctx.store(l3 + 8, &(*q).new_src, 0)
            .map_err(|_| drop_reason::HELPER_FAILED)?;
        ctx.store(l3 + 24, &(*q).new_dst, 0)
            .map_err(|_| drop_reason::HELPER_FAILED)?;
        let check_off = (*q).check_off as usize;
        if check_off != 0 {
            ctx.store(check_off, &(*q).check_new, 0)
                .map_err(|_| drop_reason::HELPER_FAILED)?;
            // A 16-bit word at an even offset of the message (8 + 40 + an even field
            // offset), so it adds as it is.
            diff += u64::from(!(*q).check_old) + u64::from((*q).check_new);
        }
        Ok((diff, (*q).src_rule, (*q).dst_rule))
    }
}
