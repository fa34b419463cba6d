// remapd policy `split`, written in JavaScript: the same logic as the Rust built-in
// (policies/split): always split, each remote CIDR seen as itself when it is free
// locally, else as the first free block of the same length in the remap pool.
//
// Built with componentize-js (jco) against policy-sdk/wit-0.1.0 (remap:policy@0.1.0,
// IPv4 only: remapd gives it the IPv4 part of each peering; see the Makefile's
// `policies` target). remapd runs it with a deny-everything WASI: no files,
// environment, network or sockets, a fixed clock and seeded randomness.
//
// Addresses are host-order u32 numbers; JavaScript numbers hold them exactly, but
// bitwise operators would make them signed, so this file uses arithmetic.
import log from "log";

const size = (c) => 2 ** (32 - c.prefixLen);
const last = (c) => c.addr + size(c) - 1;
const overlaps = (a, b) => a.addr <= last(b) && b.addr <= last(a);
const show = (c) =>
  [24, 16, 8, 0].map((s) => Math.floor(c.addr / 2 ** s) % 256).join(".") + "/" + c.prefixLen;

// The first block of `prefixLen` in `pool` (pool order, lowest first) that overlaps
// nothing in `used`.
function allocate(pool, prefixLen, used) {
  for (const range of pool) {
    if (prefixLen < range.prefixLen || prefixLen > 32) continue;
    const step = 2 ** (32 - prefixLen);
    let addr = range.addr;
    const end = range.addr + size(range);
    while (addr < end) {
      const candidate = { addr, prefixLen };
      const blockers = used.filter((u) => overlaps(u, candidate)).map(last);
      if (blockers.length === 0) return candidate;
      // Skip past whatever blocks the candidate, not one step at a time.
      const next = Math.ceil((Math.max(...blockers) + 1) / step) * step;
      addr = Math.max(next, addr + step);
    }
  }
  return null;
}

function allocateViews(input) {
  const l = input.local;
  const used = [...l.podCidrs, ...l.serviceCidrs, ...l.reservedCidrs, ...l.allocated];
  const out = [];
  for (const real of [...input.remote.podCidrs, ...input.remote.serviceCidrs]) {
    let remapped = real;
    if (used.some((u) => overlaps(real, u))) {
      remapped = allocate(l.remapPool, real.prefixLen, used);
      if (remapped === null) {
        throw `no free /${real.prefixLen} left in the remap pool for remote CIDR ${show(real)}`;
      }
    }
    used.push(remapped);
    out.push({ real, remapped });
  }
  return out;
}

export function decide(input) {
  if (!input.remote.capabilities.natDataplane) {
    throw (
      `split needs both gateways to translate, and ${input.remote.name} ` +
      "cannot run the NAT dataplane; use both-on-2 or auto"
    );
  }
  const mappings = allocateViews(input);
  log(`split with ${input.remote.name}: ${mappings.length} mapping(s)`);
  return { strategy: "split", mappings };
}
