//! ICMP errors (destination unreachable, time exceeded, parameter problem) quote the
//! packet they are about; the quote travels the other way, so its source is the host our
//! *destination* rules describe and its destination the host our *source* rules describe.
//! Translating the quote too (RFC 5508) keeps path-MTU discovery and traceroute working.
//!
//! The quote is rewritten with plain stores (no checksum helper) and every change is
//! folded into the ICMP checksum by hand. That is safe in every skb checksum state: ICMP is never
//! CHECKSUM_PARTIAL (its checksum is always computed in software), and each change is
//! compensated inside the ICMP message, so the message's one's-complement sum — all a
//! CHECKSUM_COMPLETE skb->csum depends on — does not change.

use aya_ebpf::programs::TcContext;
use remapd_common::{
    FIELD_DESTINATION, FIELD_SOURCE, HookConfig, csum_replace2, csum_replace4, drop_reason,
};

use crate::lookup::{Rewrite, allowed_by_trie, lookup};
use crate::{IPPROTO_DCCP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE, Ipv4Header};

const ICMP_HLEN: usize = 8;
const ICMP_CSUM_OFF: usize = 2;
const IP_CSUM_OFF: usize = 10;
const IP_SRC_OFF: usize = 12;
const IP_DST_OFF: usize = 16;
const TCP_CSUM_OFF: usize = 16;
const UDP_CSUM_OFF: usize = 6;
const IPV4_MIN_HLEN: usize = 20;

/// What an ICMP error's quoted packet needs, computed before anything is written.
#[derive(Clone, Copy)]
pub(crate) struct QuotedRewrite {
    /// Offset of the quoted IPv4 header; 0 when there is nothing to rewrite.
    l3: usize,
    pub src: Rewrite,
    pub dst: Rewrite,
    src_old: u32,
    dst_old: u32,
    /// The quoted header's checksum before and after.
    ip_check_old: u16,
    ip_check_new: u16,
    /// Offset (0: none in the quote), old and new value of the quoted L4 checksum.
    l4_check_off: usize,
    l4_check_old: u16,
    l4_check_new: u16,
}

impl QuotedRewrite {
    pub(crate) const NONE: Self = Self {
        l3: 0,
        src: Rewrite::MISS,
        dst: Rewrite::MISS,
        src_old: 0,
        dst_old: 0,
        ip_check_old: 0,
        ip_check_new: 0,
        l4_check_off: 0,
        l4_check_old: 0,
        l4_check_new: 0,
    };

    #[inline(always)]
    pub(crate) fn active(&self) -> bool {
        self.l3 != 0
    }
}

/// Works out how an ICMP message's quoted packet changes. `Ok(NONE)` for ICMP that is
/// not an error or whose quote matches no rule; `Err` when an error's quote cannot be
/// parsed (the caller drops it only if it is one we must understand).
/// On a border, source quench and redirects are refused: they quote a packet but have
/// no business crossing between clusters.
#[inline(always)]
pub(crate) fn quoted_rewrite(
    ctx: &TcContext,
    config: &HookConfig,
    direction: u8,
    ifindex: u32,
    border: bool,
    l4: usize,
    packet_end: usize,
) -> Result<QuotedRewrite, usize> {
    let icmp_type: u8 = ctx.load(l4).map_err(|_| drop_reason::MALFORMED)?;
    if border && (icmp_type == 4 || icmp_type == 5) {
        return Err(drop_reason::UNSUPPORTED);
    }
    if icmp_type != 3 && icmp_type != 11 && icmp_type != 12 {
        return Ok(QuotedRewrite::NONE);
    }
    let l3 = l4 + ICMP_HLEN;
    if l3 + IPV4_MIN_HLEN > packet_end {
        return Err(drop_reason::MALFORMED);
    }
    let inner: Ipv4Header = ctx.load(l3).map_err(|_| drop_reason::MALFORMED)?;
    if inner.version_ihl >> 4 != 4 {
        return Err(drop_reason::MALFORMED);
    }
    let ihl = ((inner.version_ihl & 0x0f) as usize) << 2;
    if ihl < IPV4_MIN_HLEN || l3 + ihl > packet_end {
        return Err(drop_reason::MALFORMED);
    }
    let inner_src = u32::from_be(inner.src);
    let inner_dst = u32::from_be(inner.dst);
    let src = lookup(config, ifindex, direction, FIELD_DESTINATION, inner_src);
    let dst = lookup(config, ifindex, direction, FIELD_SOURCE, inner_dst);
    // On a border the quote must be a packet this peering could have carried out: from
    // an address this cluster exported to one the peer may use (both after
    // translation, the quote's fields swapped against the outer packet's). Anything
    // else would let the peer act on connections that are not its own.
    if border {
        let quoted_src = if src.hit() { src.to } else { inner_src };
        let quoted_dst = if dst.hit() { dst.to } else { inner_dst };
        if !allowed_by_trie(ifindex, FIELD_DESTINATION, quoted_src)
            || !allowed_by_trie(ifindex, FIELD_SOURCE, quoted_dst)
        {
            return Err(drop_reason::QUOTE_NOT_ALLOWED);
        }
    }
    if !src.hit() && !dst.hit() {
        return Ok(QuotedRewrite::NONE);
    }

    let mut out = QuotedRewrite::NONE;
    out.l3 = l3;
    out.src = src;
    out.dst = dst;
    out.src_old = inner_src;
    out.dst_old = inner_dst;
    out.ip_check_old = u16::from_be(inner.check);
    out.ip_check_new = out.ip_check_old;
    if src.hit() {
        out.ip_check_new = csum_replace4(out.ip_check_new, inner_src, src.to);
    }
    if dst.hit() {
        out.ip_check_new = csum_replace4(out.ip_check_new, inner_dst, dst.to);
    }

    let inner_l4 = l3 + ihl;
    let inner_first_fragment = u16::from_be(inner.frag) & 0x1fff == 0;
    // Every transport whose checksum covers the pseudo-header.
    let (csum_off, zero_means_none) = match inner.protocol {
        IPPROTO_TCP => (inner_l4 + TCP_CSUM_OFF, false),
        IPPROTO_UDP | IPPROTO_UDPLITE => (inner_l4 + UDP_CSUM_OFF, true),
        IPPROTO_DCCP => (inner_l4 + UDP_CSUM_OFF, false),
        _ => (0, false),
    };
    // The quote may stop before the transport checksum; then there is nothing to fix.
    if inner_first_fragment && csum_off != 0 && csum_off + 2 <= packet_end {
        let old = u16::from_be_bytes(
            ctx.load::<[u8; 2]>(csum_off)
                .map_err(|_| drop_reason::MALFORMED)?,
        );
        // A zero UDP checksum means "none" and stays zero.
        if !(zero_means_none && old == 0) {
            let mut new = old;
            if src.hit() {
                new = csum_replace4(new, inner_src, src.to);
            }
            if dst.hit() {
                new = csum_replace4(new, inner_dst, dst.to);
            }
            if zero_means_none && new == 0 {
                new = 0xffff;
            }
            out.l4_check_off = csum_off;
            out.l4_check_old = old;
            out.l4_check_new = new;
        }
    }
    Ok(out)
}

/// Writes the quoted packet's new addresses and checksums and folds every change into
/// the ICMP checksum (which has no pseudo-header): one load and one store of it.
#[inline(always)]
pub(crate) fn write_quoted(ctx: &TcContext, icmp: usize, q: &QuotedRewrite) -> Result<(), ()> {
    let check_off = icmp + ICMP_CSUM_OFF;
    let mut check = u16::from_be_bytes(ctx.load::<[u8; 2]>(check_off).map_err(|_| ())?);
    if q.src.hit() {
        ctx.store(q.l3 + IP_SRC_OFF, &q.src.to.to_be_bytes(), 0)
            .map_err(|_| ())?;
        check = csum_replace4(check, q.src_old, q.src.to);
    }
    if q.dst.hit() {
        ctx.store(q.l3 + IP_DST_OFF, &q.dst.to.to_be_bytes(), 0)
            .map_err(|_| ())?;
        check = csum_replace4(check, q.dst_old, q.dst.to);
    }
    ctx.store(q.l3 + IP_CSUM_OFF, &q.ip_check_new.to_be_bytes(), 0)
        .map_err(|_| ())?;
    check = csum_replace2(check, q.ip_check_old, q.ip_check_new);
    if q.l4_check_off != 0 {
        ctx.store(q.l4_check_off, &q.l4_check_new.to_be_bytes(), 0)
            .map_err(|_| ())?;
        check = csum_replace2(check, q.l4_check_old, q.l4_check_new);
    }
    ctx.store(check_off, &check.to_be_bytes(), 0)
        .map_err(|_| ())
}
