# remapd — one entry point for set-up, tests, benchmarks and the demo.
# Every target installs what it needs first (scripts/setup.sh is idempotent).
# Run as root on Linux >= 6.6 (eBPF, network namespaces).

export CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS := fallback
# Incremental caches only cost disk on a clean build (CI); developers can override.
export CARGO_INCREMENTAL ?= 0
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo

.PHONY: all setup build policies test lint unit bench demo clean

all: build

setup:
	bash scripts/setup.sh

build: setup
	$(CARGO) build --release

## The Python and JavaScript policies (componentize-py, componentize-js; toolchains
## pinned and installed under target/ on first use) -> target/policies/*.wasm.
policies: setup
	bash scripts/build-policies.sh

## Every test: formatting, lints, unit tests, BPF packet tests, network-namespace tests.
test: setup lint policies
	# Binaries the tests run but cargo test does not build for them.
	$(CARGO) build -p remapd-policy-build --bins
	$(CARGO) test --all-targets -- --test-threads=1

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

## Unit tests only (no root needed, no eBPF build).
unit:
	AYA_BUILD_SKIP=1 REMAPD_POLICY_BUILD_SKIP=1 $(CARGO) test -p remapd -p remapd-engine -p remapd-api -p remapd-model -p remapd-net -p remapd-policy-host -p remapd-dataplane -p remapd-common -p remapd-policy-sdk -p remapd-policy-split -p remapd-policy-both-on-2 -p remapd-policy-auto --lib

## Benchmarks; rewrites BENCHMARKS.md.
bench: setup
	bash scripts/bench.sh


## The two-cluster demo (split and both-on-2 over WireGuard, in namespaces).
STRATEGIES ?= split both-on-2 auto
demo: setup
	KEEP=$(KEEP) STRATEGIES="$(STRATEGIES)" bash scripts/demo.sh

clean:
	$(CARGO) clean
