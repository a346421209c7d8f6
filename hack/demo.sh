#!/usr/bin/env bash
# The main job: a local flannel-rs cluster in network namespaces, and the incident this
# project exists for. Builds the binaries (release), then `cluster demo`: 3 nodes × 2 pods
# (the real flanneld per node against an HTTPS test API server, pods wired by the real
# flannel CNI plugin with the stock kube-flannel conflist), the pod-to-pod ping matrix, a
# stale unconditional update that drops node-2's flannel annotations while pods keep
# pinging node-2's pods, the heal, `kubectl get events` for node-2 (the Event flanneld wrote),
# `flanneld explain`, and tear-down. Everything lives in
# namespaces frs-demo-* and /tmp/frs-cluster-demo/ and is removed at the end, on Ctrl-C, and
# (if a previous run was killed hard) at the start.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$#" -gt 0 ]; then
    echo "hack/demo.sh takes no arguments (the cluster CLI does: target/release/cluster --help)" >&2
    exit 2
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "hack/demo.sh needs root (it creates network namespaces); run: sudo hack/demo.sh" >&2
    exit 1
fi
hack/install-deps.sh

echo "== building (release)"
cargo build --release --locked --bin cluster --bin flanneld --bin flannel --bin kube-testserver

echo "== demo"
exec target/release/cluster demo
