#!/usr/bin/env bash
# The test command: unit tests, namespace integration tests, fidelity tests — everything.
# Needs root (network namespaces); installs missing system packages first.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "hack/test.sh: the network-namespace tests need root; run it as root (sudo hack/test.sh)" >&2
    exit 1
fi
hack/install-deps.sh

leaks_before=$(ip netns list | grep -c '^frs-' || true)
files_before=$(find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'frs-*' | wc -l)
daemons() { { pgrep -x flanneld || true; pgrep -x kube-testserver || true; } | wc -l; }
containers() {
    { podman ps -a --format '{{.Names}}' 2>/dev/null; podman pod ps --format '{{.Name}}' 2>/dev/null; } |
        grep -c '^frs-' || true
}
containers_before=$(containers)
procs_before=$(daemons)
cargo build --workspace --all-targets --locked
# The image the manifest's end-to-end test runs (release binaries: quicker to build than dist).
FRS_IMAGE_PROFILE="${FRS_IMAGE_PROFILE:-release}" hack/image.sh
cargo test --workspace --all-targets --locked -- --test-threads="${TEST_THREADS:-4}" "$@"
# The chaos soak, 2 minutes on the debug build just made (hack/soak.sh; 10 minutes by default).
FRS_SOAK_PROFILE=dev hack/soak.sh --minutes "${SOAK_MINUTES:-2}"

# A leftover namespace is a bug: fail loudly.
leaks_after=$(ip netns list | grep -c '^frs-' || true)
if [ "$leaks_after" -gt "$leaks_before" ]; then
    echo "hack/test.sh: tests leaked network namespaces:" >&2
    ip netns list | grep '^frs-' >&2
    exit 1
fi
# ... and so is a leftover temp dir or daemon.
files_after=$(find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'frs-*' | wc -l)
if [ "$files_after" -gt "$files_before" ]; then
    echo "hack/test.sh: tests left files behind:" >&2
    find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'frs-*' >&2
    exit 1
fi
if [ "$(containers)" -gt "$containers_before" ]; then
    echo "hack/test.sh: tests left podman containers or pods behind:" >&2
    { podman ps -a --format '{{.Names}}'; podman pod ps --format '{{.Name}}'; } | grep '^frs-' >&2
    exit 1
fi
procs_after=$(daemons)
if [ "$procs_after" -gt "$procs_before" ]; then
    echo "hack/test.sh: tests left processes running:" >&2
    pgrep -a -x flanneld >&2 || true
    pgrep -a -x kube-testserver >&2 || true
    exit 1
fi
