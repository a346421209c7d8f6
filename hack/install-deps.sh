#!/usr/bin/env bash
# Installs what building, testing and the demo need on a fresh Debian machine (run as root).
# Idempotent: does nothing when everything is already there.
set -euo pipefail

need=()
command -v ip >/dev/null || need+=(iproute2)
command -v bridge >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
command -v iptables >/dev/null || need+=(iptables)
command -v nft >/dev/null || need+=(nftables)
command -v tcpdump >/dev/null || need+=(tcpdump)
command -v curl >/dev/null || need+=(curl)
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] || need+=(containernetworking-plugins)
command -v kubectl >/dev/null || need+=(kubernetes-client)
# promtool checks /metrics in the tests (tests/netns/daemon_probes.rs).
command -v promtool >/dev/null || need+=(prometheus)
# The image (hack/image.sh) and the manifest's end-to-end test (tests/netns/deploy_e2e.rs).
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)

if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-deps: need root to install: ${need[*]}" >&2
        exit 1
    fi
    echo "install-deps: installing ${need[*]}"
    # The packages install; their services do not start (prometheus, wanted only for promtool,
    # would listen on :9090): a policy-rc.d that refuses, for the length of the install.
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
    echo "install-deps: cargo not found; install a Rust toolchain (rustup) first" >&2
    exit 1
fi
