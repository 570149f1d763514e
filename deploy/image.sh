#!/usr/bin/env bash
# Builds slotline's container image without Docker or a registry: an OCI archive at
# target/slotline-VERSION.oci.tar, from the release binary, with Debian's buildah (no daemon, no base
# image to pull). The image holds the stripped binary, the shared libraries it links and nothing
# else of the system but CA certificates and passwd/group entries for the non-root user 65532: no
# shell, no package manager. The same layout as deploy/Dockerfile's (distroless/cc nonroot).
#
#   deploy/image.sh                  # cargo build --release, then the image
#   BINARY=path deploy/image.sh      # an already built binary instead
#
# Load it with `podman load -i target/slotline-VERSION.oci.tar`, push it with
# `skopeo copy oci-archive:target/slotline-VERSION.oci.tar docker://REGISTRY/slotline:VERSION`, or
# for Docker: `skopeo copy oci-archive:... docker-archive:slotline.tar:slotline:VERSION` then
# `docker load -i slotline.tar`.
#
# Reproducible: file times and the image's creation time are the last commit's (SOURCE_DATE_EPOCH
# overrides), files are owned by root, and buildah's own storage is a temporary directory; the same
# binary gives the same layer digest. Needs root (buildah's vfs storage), buildah, binutils (strip).
set -euo pipefail

cd "$(dirname "$0")/.."
for tool in buildah strip; do
    command -v "$tool" >/dev/null || { echo "image.sh: $tool not found (apt-get install buildah binutils)" >&2; exit 1; }
done
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
binary=${BINARY:-}
if [ -z "$binary" ]; then
    cargo build --release --locked --quiet --bin slotline
    binary=target/release/slotline
fi
out=target/slotline-$version.oci.tar

work=$(mktemp -d /tmp/slotline-image.XXXXXX)
container=""
cleanup() {
    [ -n "$container" ] && buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs rm "$container" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

root=$work/rootfs
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs"
strip -o "$root/usr/local/bin/slotline" "$binary"
# The shared libraries the binary links (and the loader), at the paths it looks for them.
for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
# For backend TLS with the system roots.
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
echo 'nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin' >"$root/etc/passwd"
echo 'nonroot:x:65532:' >"$root/etc/group"
chmod -R u=rwX,go=rX "$root"
chmod 0755 "$root/usr/local/bin/slotline"
find "$root" -exec touch -h -d "@$epoch" {} +

b() { buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs "$@"; }
container=$(b from scratch)
b copy --chown 0:0 "$container" "$root/" / >/dev/null
b config \
    --user 65532:65532 \
    --entrypoint '["/usr/local/bin/slotline"]' \
    --cmd '["--config", "/etc/slotline/slotline.yml", "--log-format", "json"]' \
    --port 6379 --port 9121 \
    --env PATH=/usr/local/bin \
    --label org.opencontainers.image.title=slotline \
    --label "org.opencontainers.image.version=$version" \
    --label org.opencontainers.image.source=https://github.com/slotline/slotline \
    --label org.opencontainers.image.licenses=Apache-2.0 \
    --label "org.opencontainers.image.description=A Redis proxy for Kubernetes" \
    "$container"
mkdir -p target
rm -f "$out"
b commit --quiet --timestamp "$epoch" --format oci "$container" "oci-archive:$out:slotline:$version" >/dev/null
echo "$out ($(du -k "$root" | tail -n 1 | cut -f1) KiB unpacked)"
