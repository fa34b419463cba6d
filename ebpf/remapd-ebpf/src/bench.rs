//! Benchmark-only programs, built into their own object (`remapd-bench-ebpf`) that the
//! daemon never loads or attaches: the floors remapd's per-packet cost is compared with.
//!
//! - `bench_noop`: nothing at all — what any program on the hook costs.
//! - `bench_one_helper`: one cheap helper call — what a helper call costs here.
//! - `bench_reference`: the minimal prefix rewrite on an Ethernet + IPv4 frame: one LPM
//!   lookup of the destination, direct writes of the address, the IP checksum and the
//!   TCP/UDP checksum, nothing else (no validation beyond bounds checks, no counters, no
//!   border, no ICMP, no checksum-state handling). Correct only for CHECKSUM_NONE skbs,
//!   which is what BPF_PROG_TEST_RUN builds.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::TC_ACT_OK,
    macros::{classifier, map},
    maps::{LpmTrie, lpm_trie::Key},
    programs::TcContext,
};
use remapd_common::{csum_replace4, translate_ipv4};

/// Destination prefix -> (replacement prefix, prefix length), host-order integers.
#[map(name = "BENCH_REFERENCE_RULES")]
static REFERENCE_RULES: LpmTrie<u32, [u32; 2]> = LpmTrie::with_max_entries(1 << 17, 0);

#[classifier]
pub fn bench_noop(_ctx: TcContext) -> i32 {
    TC_ACT_OK as i32
}

#[classifier]
pub fn bench_one_helper(ctx: TcContext) -> i32 {
    let _ = ctx.load::<u32>(0);
    TC_ACT_OK as i32
}

#[classifier]
pub fn bench_reference(ctx: TcContext) -> i32 {
    let _ = reference(&ctx);
    TC_ACT_OK as i32
}

#[inline(always)]
fn reference(ctx: &TcContext) -> Option<()> {
    let start = ctx.data();
    let end = ctx.data_end();
    // Ethernet (14) + IPv4 without options (20) + TCP up to its checksum (18).
    if start + 14 + 20 + 18 > end {
        return None;
    }
    let ip = (start + 14) as *mut u8;
    // SAFETY: bounds checked above; misaligned loads and stores are fine for packet
    // pointers where the kernel has efficient unaligned access (x86-64, arm64).
    unsafe {
        let dst_p = ip.add(16) as *mut u32;
        let dst = u32::from_be(*dst_p);
        let rule = REFERENCE_RULES.get(&Key::new(32, dst.to_be()))?;
        let new = translate_ipv4(dst, rule[0], rule[1] as u8);
        *dst_p = new.to_be();
        let ip_check = ip.add(10) as *mut u16;
        *ip_check = csum_replace4(u16::from_be(*ip_check), dst, new).to_be();
        let l4_check_off = match *ip.add(9) {
            6 => 16,
            17 => 6,
            _ => return Some(()),
        };
        let l4_check = ip.add(20 + l4_check_off) as *mut u16;
        let old = u16::from_be(*l4_check);
        if old != 0 {
            *l4_check = csum_replace4(old, dst, new).to_be();
        }
    }
    Some(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
