//! The trace: while the daemon has a trace running ([`TraceControl::active`]), each
//! packet a hook translated or dropped is reported to user space as one [`TraceEvent`]
//! in a ring buffer. While no trace runs, a packet costs one inlined array lookup and a
//! branch more (no helper call).
//!
//! Everything here reads the packet through `bpf_skb_load_bytes` and runs outside
//! [`crate::handle`]: the translation's verified paths stay as they are, and the trace
//! adds a handful of straight-line states.

use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
    programs::TcContext,
};
use remapd_common::{
    TRACE_DROPPED, TRACE_FLAG_IPV4, TRACE_FLAG_MSS, TRACE_RING_BYTES, TRACE_TRANSLATED,
    TraceControl, TraceEvent,
};

use crate::{
    ETH_HLEN, ETH_P_IP, IPPROTO_DCCP, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE,
};

/// 1 in every program the daemon loads. Benchmarks load the object with 0 to measure
/// the programs without the trace: the verifier sees a constant and removes every trace
/// instruction, control lookup included (the build without the trace, side by side).
#[unsafe(no_mangle)]
static REMAPD_TRACE_BUILT: u32 = 1;

#[map(name = "REMAPD_TRACE_CONTROL")]
static TRACE_CONTROL: Array<TraceControl> = Array::with_max_entries(1, 0);

#[map(name = "REMAPD_TRACE_EVENTS")]
static TRACE_EVENTS: RingBuf = RingBuf::with_byte_size(TRACE_RING_BYTES, 0);

/// Where [`record`] builds an event (see there why it is not on the stack).
#[map(name = "REMAPD_TRACE_SCRATCH")]
static TRACE_SCRATCH: PerCpuArray<TraceEvent> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "REMAPD_TRACE_LOST")]
static TRACE_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// What [`crate::handle`] found, for the trace: the rules that matched and whether an
/// ICMP error's quote was translated.
#[derive(Clone, Copy)]
pub(crate) struct Seen {
    pub src_rule: u32,
    pub dst_rule: u32,
    pub flags: u8,
}

impl Seen {
    pub(crate) const NOTHING: Self = Self {
        src_rule: u32::MAX,
        dst_rule: u32::MAX,
        flags: 0,
    };
}

/// The running trace's control if there is one and it wants packets of `ifindex`.
#[inline(always)]
pub(crate) fn control(ifindex: u32) -> Option<&'static TraceControl> {
    // SAFETY: a read of a global the loader may override (.rodata).
    if unsafe { core::ptr::read_volatile(&REMAPD_TRACE_BUILT) } == 0 {
        return None;
    }
    let control = TRACE_CONTROL.get(0)?;
    if control.active == 0 || (control.ifindex != 0 && control.ifindex != ifindex) {
        return None;
    }
    Some(control)
}

/// Source and destination of an IPv4 packet (0, 0 for anything else).
#[inline(always)]
pub(crate) fn addresses<const L2: bool>(ctx: &TcContext) -> (u32, u32) {
    match ipv4_offset::<L2>(ctx) {
        Some(l3) => addresses_at(ctx, l3),
        None => (0, 0),
    }
}

/// Source and destination of the IPv4 header at `l3` (0, 0 if unreadable).
#[inline(always)]
fn addresses_at(ctx: &TcContext, l3: usize) -> (u32, u32) {
    match (ctx.load::<u32>(l3 + 12), ctx.load::<u32>(l3 + 16)) {
        (Ok(src), Ok(dst)) => (u32::from_be(src), u32::from_be(dst)),
        _ => (0, 0),
    }
}

#[inline(always)]
fn ipv4_offset<const L2: bool>(ctx: &TcContext) -> Option<usize> {
    if L2 {
        let proto = ctx.load::<u16>(12).ok()?;
        if u16::from_be(proto) != ETH_P_IP {
            return None;
        }
        return Some(ETH_HLEN);
    }
    let first = ctx.load::<u8>(0).ok()?;
    if first >> 4 == 4 { Some(0) } else { None }
}

/// Reports the packet `handle` passed with `outcome` (`action` `TC_ACT_UNSPEC`) or
/// dropped for `reason` (`TC_ACT_SHOT`), if a trace is running and wants it.
///
/// The event is first stored in a per-CPU scratch slot and then read back with
/// volatile loads: every path through the translation arrives here with different
/// known values, and reading them back as unknown numbers lets the verifier walk the
/// filters below once instead of once per path (it otherwise ran out of budget).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn record<const L2: bool>(
    ctx: &TcContext,
    ifindex: u32,
    direction: u8,
    action: i32,
    reason: usize,
    outcome: u8,
    before: (u32, u32),
    seen: &Seen,
) {
    let Some(control) = control(ifindex) else {
        return;
    };
    let verdict = if action == TC_ACT_SHOT {
        TRACE_DROPPED
    } else if outcome != 0 {
        TRACE_TRANSLATED
    } else {
        return;
    };
    let Some(event) = TRACE_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let mss = if outcome & crate::MSS_CLAMPED != 0 {
        TRACE_FLAG_MSS
    } else {
        0
    };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
    unsafe {
        (*event).ifindex = ifindex;
        (*event).direction = direction;
        (*event).verdict = verdict as u8;
        (*event).reason = reason as u8;
        (*event).src_before = before.0;
        (*event).dst_before = before.1;
        (*event).src_rule = seen.src_rule;
        (*event).dst_rule = seen.dst_rule;
        (*event).flags = seen.flags | mss;
    }
    emit::<L2>(ctx, control, event);
}

/// Completes the scratch `event` from the packet, applies the trace's filters, and
/// writes it to the ring buffer (or counts it lost).
#[inline(always)]
fn emit<const L2: bool>(ctx: &TcContext, control: &TraceControl, event: *mut TraceEvent) {
    // SAFETY: `event` is the per-CPU scratch slot (see `record`); volatile reads make
    // the verifier see what is in map memory, not what was just stored.
    let (verdict, src_before, dst_before) = unsafe {
        (
            core::ptr::read_volatile(&(*event).verdict),
            core::ptr::read_volatile(&(*event).src_before),
            core::ptr::read_volatile(&(*event).dst_before),
        )
    };
    if control.verdicts != 0 && control.verdicts & u32::from(verdict) == 0 {
        return;
    }
    let (mut src_after, mut dst_after, mut protocol) = (0u32, 0u32, 0u8);
    let (mut src_port, mut dst_port, mut flags) = (0u16, 0u16, 0u8);
    if let Some(l3) = ipv4_offset::<L2>(ctx) {
        (src_after, dst_after) = addresses_at(ctx, l3);
        flags = TRACE_FLAG_IPV4;
        if let (Ok(version_ihl), Ok(proto), Ok(frag)) = (
            ctx.load::<u8>(l3),
            ctx.load::<u8>(l3 + 9),
            ctx.load::<u16>(l3 + 6),
        ) {
            protocol = proto;
            let l4 = l3 + (usize::from(version_ihl & 0x0f) << 2);
            let first_fragment = u16::from_be(frag) & 0x1fff == 0;
            let ports = matches!(
                proto,
                IPPROTO_TCP | IPPROTO_UDP | IPPROTO_UDPLITE | IPPROTO_DCCP | IPPROTO_ICMP
            );
            if first_fragment
                && ports
                && let Ok(words) = ctx.load::<[u16; 3]>(l4)
            {
                src_port = u16::from_be(words[0]);
                // ICMP: type and code, then the echo identifier after the checksum.
                dst_port = u16::from_be(if proto == IPPROTO_ICMP {
                    words[2]
                } else {
                    words[1]
                });
            }
        }
    }
    if control.protocol != 0 && control.protocol != u32::from(protocol) + 1 {
        return;
    }
    if control.prefix_mask != 0 {
        let (addr, mask) = (control.prefix_addr, control.prefix_mask);
        let hit = src_before & mask == addr
            || dst_before & mask == addr
            || src_after & mask == addr
            || dst_after & mask == addr;
        if !hit {
            return;
        }
    }
    // SAFETY: helpers without arguments or preconditions.
    if control.sample > 1 && unsafe { bpf_get_prandom_u32() } % control.sample != 0 {
        return;
    }
    // SAFETY: as in `record`.
    unsafe {
        (*event).time_ns = bpf_ktime_get_ns();
        (*event).len = ctx.len();
        (*event).src_after = src_after;
        (*event).dst_after = dst_after;
        (*event).protocol = protocol;
        (*event).src_port = src_port;
        (*event).dst_port = dst_port;
        (*event).flags |= flags;
        if TRACE_EVENTS.output::<TraceEvent>(&*event, 0).is_err()
            && let Some(lost) = TRACE_LOST.get_ptr_mut(0)
        {
            *lost += 1;
        }
    }
}
