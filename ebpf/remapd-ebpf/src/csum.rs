//! The transport checksum after an address rewrite: direct writes where the skb's
//! checksum state allows them, the `bpf_l4_csum_replace` helper where it does not.
//!
//! The state (`skb->ip_summed`) is read through the `bpf_cast_to_kern_ctx` kfunc, which
//! the verifier inlines into a register move, and one load at a constant offset. Our
//! loader cannot relocate kfunc calls yet, so the call is emitted as a call to a marker
//! id that the daemon rewrites before loading (`daemon/src/dataplane/kctx.rs`), together
//! with the read-only globals below. When it could not (no kernel BTF),
//! `REMAPD_KCTX_READY` is 0, the verifier sees a constant, and every packet takes the
//! helper path.
//!
//! Why each path is safe:
//! - CHECKSUM_NONE / UNNECESSARY: the field holds the real checksum; an incremental
//!   update (RFC 1624) keeps it right, exactly what the helper does for these states.
//! - CHECKSUM_PARTIAL: the field holds the folded, uncomplemented pseudo-header sum that
//!   the device (or software fallback) completes; an address change moves that sum the
//!   other way — the helper's `~csum_fold(diff + field)` — and nothing else changes.
//! - CHECKSUM_COMPLETE: `skb->csum` covers the transport bytes, so changing the field
//!   needs `skb->csum` fixed too; only the helper can write it. Helper path.

use aya_ebpf::programs::TcContext;
use remapd_common::csum_l4_update;

use crate::ptr_at;

#[unsafe(no_mangle)]
static REMAPD_KCTX_READY: u32 = 0;
#[unsafe(no_mangle)]
static REMAPD_IP_SUMMED_OFFSET: u32 = 0;
#[unsafe(no_mangle)]
static REMAPD_IP_SUMMED_SHIFT: u32 = 0;

const CHECKSUM_UNNECESSARY: u8 = 1;
const CHECKSUM_PARTIAL: u8 = 3;
const CHECKSUM_NONE: u8 = 0;

/// `bpf_cast_to_kern_ctx(ctx)`, emitted as a call to the marker the daemon patches.
#[inline(always)]
unsafe fn cast_to_kern_ctx(ctx: *mut core::ffi::c_void) -> *const u8 {
    let kctx: *const u8;
    // SAFETY: a call with the BPF calling convention: r1 in, r0 out, r1-r5 clobbered.
    unsafe {
        core::arch::asm!(
            "call 1801846785",
            inlateout("r1") ctx => _,
            lateout("r0") kctx,
            lateout("r2") _,
            lateout("r3") _,
            lateout("r4") _,
            lateout("r5") _,
            options(nostack),
        );
    }
    kctx
}

/// The skb's `ip_summed`, or `None` when the programs were loaded without the kfunc.
#[inline(always)]
fn ip_summed(ctx: &TcContext) -> Option<u8> {
    // SAFETY: read-only globals the loader set; volatile so the compiler keeps the load
    // (the verifier then knows the value).
    let ready = unsafe { core::ptr::read_volatile(&REMAPD_KCTX_READY) };
    if ready == 0 {
        return None;
    }
    // SAFETY: as above; the kfunc returns the kernel's sk_buff for this context, and the
    // load at a constant offset inside it is checked by the verifier against BTF.
    unsafe {
        let offset = core::ptr::read_volatile(&REMAPD_IP_SUMMED_OFFSET) as usize;
        let shift = core::ptr::read_volatile(&REMAPD_IP_SUMMED_SHIFT);
        let kctx = cast_to_kern_ctx(ctx.skb.skb.cast());
        let byte = core::ptr::read_volatile(kctx.add(offset));
        Some((byte >> shift) & 3)
    }
}

/// Updates the transport checksum at `off` for address changes whose one's-complement
/// difference is `diff` (in memory byte order), directly where the checksum state allows
/// it. `zero_is_none`: a zero checksum means "none" (UDP) and stays zero, and a computed
/// zero is written as 0xffff. Returns false when the caller must use the helper.
#[inline(always)]
pub(crate) fn l4_update_direct(ctx: &TcContext, off: usize, diff: u32, zero_is_none: bool) -> bool {
    let partial = match ip_summed(ctx) {
        Some(CHECKSUM_NONE) | Some(CHECKSUM_UNNECESSARY) => false,
        Some(CHECKSUM_PARTIAL) => true,
        _ => return false,
    };
    let Some(field) = ptr_at::<u16>(ctx, off) else {
        return false;
    };
    // SAFETY: bounds checked by ptr_at (misaligned access: see Ipv4Header).
    unsafe { *field = csum_l4_update(*field, diff, partial, zero_is_none) };
    true
}
