#!/usr/bin/env bash
# The main job on an embedded default. Until the local multi-node cluster lands
# (hack/cluster), it builds everything and runs the netlink benchmark: our typed netlink
# layer programming flannel peers vs the kernel's own floor (`ip -batch`), all inside
# throwaway network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "hack/demo.sh needs root (it creates network namespaces); run: sudo hack/demo.sh" >&2
    exit 1
fi
hack/install-deps.sh

echo "== building (release)"
cargo build --release --locked --bins
ls -l target/release/flanneld target/release/flannel

echo "== netlink benchmark: program N flannel peers (route + neighbour + FDB each)"
target/release/bench-netlink "${@:-1000 5000}"
