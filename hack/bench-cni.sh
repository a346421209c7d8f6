#!/usr/bin/env bash
# Builds the CNI plugin the way it ships (the `dist` profile, statically linked, non-PIE: a plugin is
# exec'd once per pod operation and a static binary starts in about half the time of a
# dynamically linked PIE), builds bench-cni, and runs it. Arguments go to bench-cni.
# Needs root (network namespaces); everything it creates is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo rustc --profile dist --bin flannel -- -C target-feature=+crt-static -C relocation-model=static
cargo build --profile dist --bin bench-cni
exec ./target/dist/bench-cni --plugin ./target/dist/flannel "$@"
