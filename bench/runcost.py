#!/usr/bin/env python3
"""What one run of remapd's TC programs costs in the real forwarding path, not in
BPF_PROG_TEST_RUN's warm loop: the e2e.py veth topology carries 64-byte UDP from iperf3,
with the kernel's own per-program statistics on (`kernel.bpf_stats_enabled=1`, which
adds run_cnt and run_time_ns to every program), and reports nanoseconds per run of each
remapd program.

The statistics themselves cost two clock reads per run, so the figures are comparable
with each other only, in one run of this script: the row to subtract is a program that
returns at once (build with `git apply bench/knockout.patch`, then
`REMAPD_KNOCKOUT=16 CONFIGS=plain-border`). Other knockout bits (see the patch) remove
one part at a time: 1 returns right after finding the hook, 2 drops the counters.

Configurations (from e2e.py): plain-border (programs and borders, no rules), split,
both-on-2. ROUNDS rounds, configurations interleaved, DUR seconds of traffic each; the
table gives the median and range over the rounds. iperf3 server on CPU 0, client on
CPU 1, where all forwarding runs. Needs root and the release binaries of e2e.py.
Writes Markdown to stdout; the figures of each round go to stderr.
"""
import json
import os
import signal
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e  # noqa: E402
from e2e import build, cleanup, ns, sh, spawn  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "3"))
DUR = int(os.environ.get("DUR", "5"))
CONFIGS = os.environ.get("CONFIGS", "plain-border split both-on-2").split()


def program_stats():
    """run_cnt and run_time_ns of every loaded remapd classifier, by program id."""
    progs = json.loads(sh("bpftool -j prog show", capture=True))
    return {p["id"]: p for p in progs if p.get("name", "").startswith("remapd_")}


def one(cfg):
    """One measurement: {program name: ns per run}, delivered kpps."""
    target = build("veth", cfg)
    server = "50.0.0.1" if target == "50.0.0.1" else "40.0.0.1"
    spawn(f"{ns('pod2')} taskset -c 0 iperf3 -s -p 5201 -B {server}")
    time.sleep(0.5)
    sh(f"{ns('pod1')} ping -c 3 -i 0.2 -W 2 {target}")
    before = program_stats()
    out = sh(f"{ns('pod1')} taskset -c 1 iperf3 -c {target} -p 5201 -t {DUR} -J -u -l 64 -b 0",
             capture=True)
    after = program_stats()
    s = json.loads(out)["end"]["sum"]
    kpps = (s["packets"] - s["lost_packets"]) / s["seconds"] / 1000
    costs = {}
    for pid, p in after.items():
        runs = p.get("run_cnt", 0) - before.get(pid, {}).get("run_cnt", 0)
        ns_total = p.get("run_time_ns", 0) - before.get(pid, {}).get("run_time_ns", 0)
        # The reverse direction carries a handful of packets (ARP, iperf3's control
        # connection): only the programs the flood crosses are reported.
        if runs > 10000:
            costs[p["name"]] = ns_total / runs
    return costs, kpps


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    if not os.path.exists(e2e.AGENT):
        sys.exit(f"{e2e.AGENT} missing: cargo build --release -p remapd -p remapd-tests")
    knockout = os.environ.get("REMAPD_KNOCKOUT", "0")
    sh("sysctl -qw kernel.bpf_stats_enabled=1")
    results = {cfg: [] for cfg in CONFIGS}
    try:
        for n in range(ROUNDS):
            for cfg in CONFIGS:
                cleanup()
                try:
                    got = one(cfg)
                finally:
                    cleanup()
                results[cfg].append(got)
                print(f"round {n + 1}: {cfg}: {got}", file=sys.stderr)
    finally:
        sh("sysctl -qw kernel.bpf_stats_enabled=0")
    print("| configuration | program | ns per run, median (min–max) | UDP 64 B delivered, kpps |")
    print("|---|---|---:|---:|")
    for cfg in CONFIGS:
        names = sorted({name for costs, _ in results[cfg] for name in costs})
        kpps = statistics.median(k for _, k in results[cfg])
        for name in names:
            vals = [costs[name] for costs, _ in results[cfg] if name in costs]
            print(f"| {cfg} | {name} | {statistics.median(vals):.1f} ({min(vals):.1f}–{max(vals):.1f}) "
                  f"| {kpps:.0f} |")
    print()
    print(f"{ROUNDS} rounds of {DUR} s, configurations interleaved; kernel.bpf_stats_enabled=1 "
          f"(two clock reads per run included); REMAPD_KNOCKOUT={knockout}.")


if __name__ == "__main__":
    try:
        main()
    finally:
        cleanup()
