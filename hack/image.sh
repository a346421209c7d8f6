#!/usr/bin/env bash
# Builds the OCI image localhost/flannel-rs:<version> from this repo and Debian's package
# archive only (no registry pulls): a minimal Debian rootfs made by mmdebstrap (iptables and
# nftables, what the masquerade code execs, with their libraries, dash, grep and coreutils for
# the backend chooser, iproute2 and ping for operators; no apt, no dpkg, no perl), our two binaries, and an iptables
# backend chooser; imported with podman. Run as root.
#
#   hack/image.sh                 # dist profile (what ships); prints the image's size
#   FRS_IMAGE_PROFILE=release hack/image.sh   # quicker build, same layout
#   FRS_IMAGE_REBUILD_ROOTFS=1 hack/image.sh  # fetch the Debian packages again
#
# Layout (the manifest's paths): /opt/bin/flanneld, /opt/bin/flannel (the CNI plugin,
# static, and `flannel install`), /opt/bin/install-conf -> flannel (upstream's tool name),
# /flannel -> /opt/bin/flannel (where upstream's plugin image keeps it, for its `cp -f`).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "hack/image.sh: needs root (mmdebstrap and podman run as root here)" >&2
    exit 1
fi

need=()
command -v podman >/dev/null || need+=(podman)
command -v crun >/dev/null || need+=(crun)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
if [ "${#need[@]}" -gt 0 ]; then
    echo "hack/image.sh: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
image="localhost/flannel-rs:${version}"
profile="${FRS_IMAGE_PROFILE:-dist}"
suite=bookworm

echo "== building binaries (profile $profile)"
cargo build --locked -p flannel-rs --profile "$profile" --bin flanneld
# The plugin is copied onto hosts of any distro: static, non-PIE (see hack/bench-cni.sh).
cargo rustc --locked -p flannel-rs --profile "$profile" --bin flannel -- \
    -C target-feature=+crt-static -C relocation-model=static
bindir="target/$profile"
[ "$profile" = dev ] && bindir=target/debug
if ldd "$bindir/flannel" >/dev/null 2>&1; then
    echo "hack/image.sh: $bindir/flannel is dynamically linked; expected a static binary" >&2
    exit 1
fi

work="target/image"
mkdir -p "$work"
# The base rootfs depends only on the package list and the suite: kept between runs.
# Unpacked, not installed (variant extract): nothing in the image runs maintainer scripts, and
# Essential's dpkg/perl/apt would triple the size.
# iproute2 as in upstream's image, iputils-ping for diagnosis (the e2e test's containers use it).
packages="iptables,nftables,dash,grep,coreutils,libc-bin,base-files,iproute2,iputils-ping"
rootfs_tar="$work/rootfs-${suite}-$(echo "$packages" | md5sum | cut -c1-12).tar"
if [ ! -s "$rootfs_tar" ] || [ -n "${FRS_IMAGE_REBUILD_ROOTFS:-}" ]; then
    echo "== mmdebstrap $suite ($packages)"
    mmdebstrap --quiet --format=tar --variant=extract --include="$packages" \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        "$suite" "$rootfs_tar.tmp"
    mv "$rootfs_tar.tmp" "$rootfs_tar"
fi

stage=$(mktemp -d "${TMPDIR:-/tmp}/frs-image-XXXXXX")
trap 'rm -rf "$stage"' EXIT
tar -C "$stage" -xf "$rootfs_tar"
# libc-bin's postinst did not run: build the loader cache it would have.
ldconfig -r "$stage"
install -d -m 0755 "$stage/opt/bin"
install -m 0755 "$bindir/flanneld" "$stage/opt/bin/flanneld"
install -m 0755 "$bindir/flannel" "$stage/opt/bin/flannel"
ln -sf flannel "$stage/opt/bin/install-conf"
ln -sf /opt/bin/flannel "$stage/flannel"
install -m 0755 hack/image/iptables-wrapper "$stage/usr/sbin/iptables-wrapper"
# Every iptables entry point goes through the wrapper until it has picked a backend.
for tool in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -sf iptables-wrapper "$stage/usr/sbin/$tool"
done
# Caches and logs of the bootstrap are not part of the image.
rm -rf "$stage"/var/cache/apt/* "$stage"/var/lib/apt/lists/* "$stage"/var/log/*

# The image this build replaces, removed after the import so rebuilds leave no untagged copies.
previous=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
echo "== podman import $image"
tar -C "$stage" --numeric-owner -cf - . | podman import --quiet \
    --change 'CMD ["/opt/bin/flanneld"]' \
    --change "LABEL org.opencontainers.image.title=flannel-rs" \
    --change "LABEL org.opencontainers.image.version=${version}" \
    - "$image" >/dev/null

current=$(podman image inspect --format '{{.Id}}' "$image")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
    podman rmi "$previous" >/dev/null 2>&1 || true  # still used by a container: kept
fi
size=$(podman image inspect --format '{{.Size}}' "$image")
echo "image $image: $((size / 1024 / 1024)) MiB ($size bytes, uncompressed)"
