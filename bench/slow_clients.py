#!/usr/bin/env python3
"""Slow and idle clients against a running remapd: /healthz latency while N connections
that send nothing, or trickle their request head at 1 byte/s, are held open, next to the
same measurement with none held (the floor); and how long the server takes to close
them; then more idle connections than the server's connection limit, to show what a
client sees then. Prints Markdown rows. Usage: slow_clients.py HOST:PORT [N [OVER]]"""
import asyncio
import resource
import statistics
import sys
import time

ADDR, _, PORT = sys.argv[1].rpartition(":")
PORT = int(PORT)
N = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
OVER = int(sys.argv[3]) if len(sys.argv) > 3 else 4500
PROBES = 200


async def healthz_ms():
    start = time.perf_counter()
    r, w = await asyncio.open_connection(ADDR, PORT)
    w.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    try:
        data = await r.read()
    except (ConnectionError, OSError):
        data = b""
    w.close()
    if not data.startswith(b"HTTP/1.1 200"):
        return None
    return (time.perf_counter() - start) * 1000


async def probe(label):
    samples = []
    failed = 0
    for _ in range(PROBES):
        ms = await healthz_ms()
        if ms is None:
            failed += 1
        else:
            samples.append(ms)
        await asyncio.sleep(0.005)
    samples.sort()
    if samples:
        p50 = statistics.median(samples)
        p99 = samples[max(int(len(samples) * 0.99) - 1, 0)]
        cells = f"{p50:.2f} ms | {p99:.2f} ms | {samples[-1]:.2f} ms"
    else:
        cells = "– | – | –"
    print(f"| {label} | {PROBES} | {failed} | {cells} |", flush=True)


async def hold(kind, n, closed):
    """Opens n connections of `kind` ('idle' or 'trickle'); records when each closes."""
    opened = time.perf_counter()

    async def one():
        r, w = await asyncio.open_connection(ADDR, PORT)
        try:
            if kind == "trickle":
                w.write(b"GET /healthz HTTP/1.1\r\n")
                while True:
                    w.write(b"x")
                    await w.drain()
                    try:
                        if await asyncio.wait_for(r.read(1), 1.0) == b"":
                            break
                    except asyncio.TimeoutError:
                        continue
            else:
                await r.read()
        except (ConnectionError, OSError):
            pass
        closed.append(time.perf_counter() - opened)
        w.close()

    tasks = []
    for _ in range(n):
        tasks.append(asyncio.create_task(one()))
        await asyncio.sleep(0)
    await asyncio.sleep(0.5)
    return tasks


async def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print("| held open while probing | probes | closed unanswered | /healthz p50 | p99 | max |")
    print("|---|---:|---:|---:|---:|---:|")
    await probe("nothing (the floor)")
    for kinds, n in ((["idle"], N), (["trickle"], N), (["idle", "trickle"], N), (["idle"], OVER)):
        closed = []
        tasks = []
        for kind in kinds:
            tasks += await hold(kind, n, closed)
        label = " + ".join(
            f"{n:,} {'idle' if k == 'idle' else '1-byte/s'} connections" for k in kinds
        )
        await probe(label)
        done, pending = await asyncio.wait(tasks, timeout=60)
        for t in pending:
            t.cancel()
        print(
            f"|   ↳ {len(closed):,} of {len(tasks):,} closed by the server after | | | "
            f"{min(closed):.1f} s (first) | | {max(closed):.1f} s (last) |",
            flush=True,
        )


asyncio.run(main())
