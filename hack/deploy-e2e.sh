#!/usr/bin/env bash
# Runs deploy/kube-flannel-rs.yml for real: builds the image (hack/image.sh), then the
# end-to-end tests that start the manifest's DaemonSet pod with podman on namespace nodes of a
# lab (tests/netns/deploy_e2e.rs) and the manifest checks (tests/deploy). hack/test.sh runs the
# same tests as part of the whole suite. Root; everything it creates is removed on exit.
#   FRS_IMAGE_PROFILE=dist hack/deploy-e2e.sh     # test the shipped build (default: release)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "hack/deploy-e2e.sh: needs root (network namespaces, podman)" >&2
    exit 1
fi
hack/install-deps.sh
FRS_IMAGE_PROFILE="${FRS_IMAGE_PROFILE:-release}" hack/image.sh
cargo test --locked -p flannel-rs --test deploy
cargo test --locked -p flannel-rs --test netns -- --test-threads=1 --nocapture deploy_ "$@"
