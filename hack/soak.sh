#!/usr/bin/env bash
# The chaos soak: `hack/soak.sh [--minutes N] [--seed S]` (default 10 minutes, at most 120).
# A 3-node cluster in network namespaces (the real flanneld per node against the HTTPS test
# API server, one pod per node wired by the real flannel CNI plugin), every pod pinging the
# other nodes' pods every 10 ms, and faults one after another in a seeded random order: API
# 500/429/latency, watch drops, an API restart with compacted history, daemon SIGKILL and
# SIGTERM, flannel.1 deleted, routes/neighbours/FDB flushed, iptables chains flushed, the
# VTEP MAC changed, CNI ADD/DEL storms with plugins SIGKILLed mid-call. Prints the fault
# table (measured repair times, pings lost) and the daemons' RSS/fd slopes, writes them and
# an SVG chart to target/soak/, and exits non-zero naming any fault that failed. Everything
# lives in namespaces frs-soak-* and /tmp/frs-cluster-soak/ and is removed at the end, on
# Ctrl-C, and (after a hard kill) at the next start.
# FRS_SOAK_PROFILE=dev uses the debug build (hack/test.sh has just built it); default release.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "hack/soak.sh needs root (it creates network namespaces); run: sudo hack/soak.sh" >&2
    exit 1
fi
profile="${FRS_SOAK_PROFILE:-release}"
case "$profile" in
    dev) dir=target/debug ;;
    release) dir=target/release ;;
    *) echo "FRS_SOAK_PROFILE=$profile: expected dev or release" >&2; exit 2 ;;
esac
echo "== building ($profile)"
cargo build --profile "$profile" --locked --bin cluster --bin flanneld --bin flannel --bin kube-testserver

exec "$dir/cluster" soak --out target/soak "$@"
