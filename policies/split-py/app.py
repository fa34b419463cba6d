"""remapd policy `split`, written in Python: the same logic as the Rust built-in
(policies/split): always split, each remote CIDR seen as itself when it is free
locally, else as the first free block of the same length in the remap pool.

Built with componentize-py against policy-sdk/wit-0.1.0 (remap:policy@0.1.0, IPv4
only: remapd gives it the IPv4 part of each peering; see the Makefile's `policies`
target). remapd runs it with a deny-everything WASI: no files, environment, network
or sockets, a fixed clock and seeded randomness.
"""

import wit_world
from wit_world.imports.types import Decision, DecisionInput, Mapping, Cidr, Strategy
from componentize_py_types import Err


def size(c: Cidr) -> int:
    return 1 << (32 - c.prefix_len)


def last(c: Cidr) -> int:
    return c.addr + size(c) - 1


def overlaps(a: Cidr, b: Cidr) -> bool:
    return a.addr <= last(b) and b.addr <= last(a)


def show(c: Cidr) -> str:
    a = c.addr
    return f"{a >> 24 & 255}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}/{c.prefix_len}"


def allocate(pool, prefix_len: int, used):
    """The first block of `prefix_len` in `pool` (pool order, lowest first) that
    overlaps nothing in `used`."""
    for r in pool:
        if prefix_len < r.prefix_len or prefix_len > 32:
            continue
        step = 1 << (32 - prefix_len)
        addr, end = r.addr, r.addr + size(r)
        while addr < end:
            candidate = Cidr(addr, prefix_len)
            blockers = [last(u) for u in used if overlaps(u, candidate)]
            if not blockers:
                return candidate
            # Skip past whatever blocks the candidate, not one step at a time.
            nxt = -(-(max(blockers) + 1) // step) * step
            addr = max(nxt, addr + step)
    return None


def allocate_views(i: DecisionInput):
    local = i.local
    used = local.pod_cidrs + local.service_cidrs + local.reserved_cidrs + local.allocated
    out = []
    for real in i.remote.pod_cidrs + i.remote.service_cidrs:
        if not any(overlaps(real, u) for u in used):
            remapped = real
        else:
            remapped = allocate(local.remap_pool, real.prefix_len, used)
            if remapped is None:
                raise Err(
                    f"no free /{real.prefix_len} left in the remap pool for remote CIDR {show(real)}"
                )
        used.append(remapped)
        out.append(Mapping(real, remapped))
    return out


class WitWorld(wit_world.WitWorld):
    def decide(self, input: DecisionInput) -> Decision:
        if not input.remote.capabilities.nat_dataplane:
            raise Err(
                f"split needs both gateways to translate, and {input.remote.name} "
                "cannot run the NAT dataplane; use both-on-2 or auto"
            )
        mappings = allocate_views(input)
        wit_world.log(f"split with {input.remote.name}: {len(mappings)} mapping(s)")
        return Decision(Strategy.SPLIT, mappings)
