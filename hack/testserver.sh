#!/usr/bin/env bash
# Builds kube-testserver and starts it with N realistic nodes (default 100) over HTTPS.
# Usage: hack/testserver.sh [N]    — prints the kubeconfig paths; Ctrl-C stops it.
# State (kubeconfigs, ca.crt, server.json) goes to a fresh temp dir, or $STATE_DIR if set.
set -euo pipefail
cd "$(dirname "$0")/.."
nodes="${1:-100}"
[[ "$nodes" =~ ^[0-9]+$ ]] || { echo "usage: $0 [N]  (N = number of nodes)" >&2; exit 2; }
cargo build --quiet --release --bin kube-testserver
state_dir="${STATE_DIR:-$(mktemp -d -t kube-testserver.XXXXXX)}"
echo "state dir: $state_dir    try: kubectl --kubeconfig $state_dir/kubeconfig-admin get nodes" >&2
exec target/release/kube-testserver --tls --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
  --state-dir "$state_dir" --nodes "$nodes" --realistic
