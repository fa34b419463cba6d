// Test policy: tries what a JavaScript program may reach — the clock, randomness,
// fetch, Node's process and require — logs what it got, and lets what it got change
// its answer: with nothing seen it routes the peer as-is (strategy none); with a
// running clock or Node's process it refuses, naming what it saw. (StarlingMonkey
// always defines `fetch`; built without wasi:http, calling it traps — the call ends
// as a policy error — and a decision cannot wait for a promise anyway.) remapd's deny-everything
// WASI must leave it nothing to see, and the same input must give the same log and
// answer on every call.
import log from "log";

function attempt(what, f) {
  try {
    return `${what}: got ${JSON.stringify(f())}`;
  } catch (e) {
    return `${what}: refused (${e && e.name ? e.name : typeof e})`;
  }
}

export function decide(input) {
  const bytes = new Uint8Array(8);
  const lines = [
    `time: ${Date.now()}`,
    `monotonic: ${performance.now()}`,
    attempt("random", () => Math.random()),
    attempt("getRandomValues", () => Array.from(crypto.getRandomValues(bytes))),
    `fetch: ${typeof fetch}`,
    `process: ${typeof process}`,
    `require: ${typeof require}`,
  ];
  for (const line of lines) log(line);
  const seen = [];
  if (Date.now() > 0 || performance.now() > 0) seen.push("a running clock");
  if (typeof process !== "undefined") seen.push("process");
  if (seen.length) throw `saw ${seen.join(", ")}`;
  const mappings = [...input.remote.podCidrs, ...input.remote.serviceCidrs].map((real) => ({
    real,
    remapped: real,
  }));
  return { strategy: "none", mappings };
}
