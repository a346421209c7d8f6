#!/usr/bin/env bash
# Builds the CNI plugin the way it ships (release, statically linked, non-PIE: a plugin is
# exec'd once per pod operation and a static binary starts in about half the time of a
# dynamically linked PIE), builds bench-cni, and runs it. Arguments go to bench-cni.
# Needs root (network namespaces); everything it creates is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo rustc --release --bin flannel -- -C target-feature=+crt-static -C relocation-model=static
cargo build --release --bin bench-cni
exec ./target/release/bench-cni --plugin ./target/release/flannel "$@"
