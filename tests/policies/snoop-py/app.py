"""Test policy: tries every ambient authority a Python program usually has — files,
the environment, the clock, randomness, sockets — logs what it got, and lets what it
got change its answer: with nothing seen it decides like `split`; if it reads a
file, an environment variable, a real time or reaches the network it refuses,
naming what it saw. remapd's deny-everything WASI must leave it nothing to see, and
the same input must give the same log and answer on every call."""

import os
import random
import time

import wit_world
from wit_world.imports.types import Decision, DecisionInput, Mapping, Strategy
from componentize_py_types import Err


def attempt(what, f):
    try:
        return f"{what}: got {f()!r}"
    except BaseException as e:  # noqa: BLE001 - every refusal is an answer here
        return f"{what}: refused ({type(e).__name__})"


def read_file():
    with open("/etc/hostname") as f:
        return f.read()


def list_root():
    return os.listdir("/")


def connect():
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(1)
    s.connect(("127.0.0.1", 22))
    return "connected"


def resolve():
    import socket

    return socket.getaddrinfo("localhost", 80)


class WitWorld(wit_world.WitWorld):
    def decide(self, input: DecisionInput) -> Decision:
        seen = []
        lines = [
            attempt("file", read_file),
            attempt("listdir", list_root),
            f"env: {len(os.environ)} variable(s)",
            f"time: {time.time()}",
            f"monotonic: {time.monotonic_ns()}",
            # A sleep must not hold the host (timers are due at once) nor show time.
            f"sleep: {time.sleep(3600)} then monotonic {time.monotonic_ns()}",
            f"urandom: {os.urandom(8).hex()}",
            f"random: {random.random()}",
            attempt("connect", connect),
            attempt("resolve", resolve),
        ]
        for line in lines:
            wit_world.log(line)
        if lines[0].startswith("file: got") or lines[1].startswith("listdir: got"):
            seen.append("the filesystem")
        if len(os.environ) > 0:
            seen.append("the environment")
        if time.time() > 0 or time.monotonic_ns() > 0:
            seen.append("a running clock")
        if "connected" in lines[8] or "got" in lines[9]:
            seen.append("the network")
        if seen:
            raise Err("saw " + ", ".join(seen))
        mappings = [
            Mapping(real, real) for real in input.remote.pod_cidrs + input.remote.service_cidrs
        ]
        return Decision(Strategy.NONE, mappings)
