# agentid — see README.md. The two commands that matter: `make demo` and `make test`.
SHELL := /usr/bin/env bash
CARGO ?= cargo
BIN := .cache/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: all build tools crds cluster-up cluster-down node-up node-down image demo demo-down test unit e2e bench lint bench-cluster bench-pdp bench-pdp-grpc bench-check bench-peers bench-heap fuzz

all: build

build:
	$(CARGO) build --release --locked

## Local control plane binaries (kube-apiserver, kubectl, etcd, helm), cached in .cache/bin
tools:
	e2e/tools/build.sh all

## Regenerate crds/ from the Rust types
crds:
	$(CARGO) run --quiet -- crdgen --out-dir crds
	$(CARGO) run --quiet -- crdgen --out-dir charts/agentid/crds

cluster-up: tools
	e2e/cluster.sh up

cluster-down:
	e2e/cluster.sh down

## The local control plane with a real node (containerd, kubelet, kube-proxy, controller manager,
## scheduler; e2e/node.sh). Installs the Debian packages it needs. node-down restores the host.
node-up: tools
	e2e/tools/node-packages.sh
	AGENTID_NODE=1 e2e/cluster.sh up

node-down:
	e2e/cluster.sh down

## The agentid OCI image from the release binary (.cache/images/agentid.tar, docker-archive), and the
## sample agent's (examples/sample-agent.rs), no registry or engine needed; loaded into the node's
## containerd when a node runs (make node-up)
image: build
	$(CARGO) build --release --locked --example sample-agent
	e2e/tools/node-packages.sh
	e2e/tools/image.sh agentid
	e2e/tools/image.sh sample-agent
	if e2e/node.sh status >/dev/null 2>&1; then e2e/node.sh load agentid sample-agent; fi

## The main job: local control plane + CRDs + operator + sample agents, then a report
demo: tools build
	$(CARGO) build --release --locked --example sample-agent
	e2e/demo.sh

demo-down: cluster-down

## Every test: unit tests, CRD drift, and integration tests on a real kube-apiserver
test: tools
	e2e/test.sh

unit:
	$(CARGO) test --locked

bench:
	$(CARGO) bench --locked

## The decision point under load (AuthZEN over TLS) side by side with OPA on the same grants (bench/opa/)
bench-pdp:
	bench/opa/run.sh

## The same over Envoy ext_authz gRPC, driven by ghz, side by side with OPA's Envoy plugin (bench/opa/envoy.rego)
bench-pdp-grpc:
	bench/opa/run.sh grpc

## `agentid check -` on 10,000 manifests from standard input: wall time and peak RSS (bench/check/run.sh)
bench-check:
	bench/check/run.sh

## agentid side by side with its peers: admission latency vs a ValidatingAdmissionPolicy (own control plane in
## .cache/peers-cluster) and `agentid check` vs conftest on 10,000 manifests (bench/peers/run.sh)
bench-peers:
	bench/peers/run.sh

## Benchmarks against a real local control plane (its own, in .cache/bench-cluster): converge, RSS, token, revocation and admission latency
bench-cluster:
	e2e/bench-cluster.sh

## Where the operator's memory goes: heaptrack at N (default 3,000) agents, grants and tasks, the live heap
## grouped by what holds it (bench/heap/run.sh; its own control plane in .cache/heap-cluster)
bench-heap:
	bench/heap/run.sh

## Every cargo-fuzz target (fuzz/, its own crate) for FUZZ_SECONDS each (default 600), one after the other,
## niced; seeds the corpora from the fixtures first. Needs the nightly toolchain. See fuzz/README.md.
FUZZ_SECONDS ?= 600
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run.sh

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --features e2e -- -D warnings
