#!/usr/bin/env bash
# Builds the mongoferry OCI image without a Docker daemon: an OCI archive under target/image/.
#
#   e2e/scripts/build-image.sh                      release build (static glibc: crt-static)
#   e2e/scripts/build-image.sh --binary PATH        pack this binary instead (tests pack the
#                                                   debug build; a dynamic binary gets exactly
#                                                   the shared libraries ldd lists)
#   options: --out FILE  --tag TAG  --version V  --user UID:GID  --strip  --quiet
#   (the release build is always packed without its debug info: objcopy --strip-debug)
#
# Layout (the same as deploy/Dockerfile): FROM scratch; /usr/local/bin/mongoferry; /etc/passwd
# and /etc/group with root and nonroot (65532); /etc/ssl/certs/ca-certificates.crt; /tmp;
# user 65532:65532; entrypoint /usr/local/bin/mongoferry, cmd --help; OCI labels (title,
# version, revision, source, licenses, created).
#
# Reproducible: every file time, the image's creation time and its history are
# SOURCE_DATE_EPOCH (default: the commit time of HEAD), owners are 0:0, and umoci's layer
# tar and gzip stream depend only on the files; so one commit gives the same layer digests.
# Prints the archive's path and the manifest digest as its last two lines.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

BINARY=""; OUT=""; TAG=""; VERSION=""; USER_SPEC="65532:65532"; QUIET=0; STRIP=0
while (($#)); do
    case "$1" in
        --binary) BINARY=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --tag) TAG=$2; shift 2 ;;
        --version) VERSION=$2; shift 2 ;;
        --user) USER_SPEC=$2; shift 2 ;;
        --quiet) QUIET=1; shift ;;
        --strip) STRIP=1; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
say() { ((QUIET)) || echo "$@" >&2; }

VERSION=${VERSION:-$(awk -F'"' '/^version *=/ { print $2; exit }' Cargo.toml)}
TAG=${TAG:-$VERSION}
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
CREATED=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
SOURCE_URL="https://github.com/mongoferry/mongoferry"
LICENSE=$(awk -F'"' '/^license *=/ { print $2; exit }' Cargo.toml)
LICENSE=${LICENSE:-Apache-2.0}

e2e/scripts/install-container-tools.sh

start=$SECONDS
if [[ -z "$BINARY" ]]; then
    # The release binary, statically linked against glibc (crt-static). RUSTFLAGS apply to
    # the target only (build scripts and proc macros stay dynamic) because --target is given.
    host=$(rustc -vV | awk '/^host:/ { print $2 }')
    say "building the release binary ($host, crt-static)..."
    # The paths of this checkout and of the cargo home are remapped, so the binary does not
    # depend on where the clone lives.
    cargo_home=${CARGO_HOME:-$HOME/.cargo}
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static --remap-path-prefix=$ROOT=/src --remap-path-prefix=$cargo_home=/cargo" \
        nice cargo build --release --locked -p mongoferry --bin mongoferry --target "$host" >&2
    BINARY="target/$host/release/mongoferry"
    OUT=${OUT:-target/image/mongoferry-$TAG.oci.tar}
    STRIP=1
    say "binary built in $((SECONDS - start)) s"
fi
[[ -x "$BINARY" ]] || { echo "no executable at $BINARY" >&2; exit 1; }
OUT=${OUT:-target/image/mongoferry-dev.oci.tar}
mkdir -p "$(dirname "$OUT")"
OUT=$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")

# Skip the work when the same inputs made this archive already.
exec 8>"$OUT.lock"
flock 8
stamp=$( { sha256sum "$BINARY" | cut -d' ' -f1; sha256sum "$0" | cut -d' ' -f1
           echo "$TAG $VERSION $REVISION $SOURCE_DATE_EPOCH $USER_SPEC $STRIP"; } | sha256sum | cut -d' ' -f1)
if [[ -f "$OUT" && -f "$OUT.stamp" && "$(cat "$OUT.stamp")" == "$stamp" ]]; then
    say "image unchanged: $OUT"
    echo "$OUT"; cat "$OUT.digest"; exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/mongoferry-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
mkdir -p "$rootfs"/{usr/local/bin,etc/ssl/certs,tmp,home/nonroot}
install -m 0755 "$BINARY" "$rootfs/usr/local/bin/mongoferry"
# The release profile keeps line tables (for profiling); the image does not need them.
((STRIP)) && objcopy --strip-debug "$rootfs/usr/local/bin/mongoferry"
# A dynamic binary: exactly the libraries ldd resolves, and the loader, at their paths.
if ldd "$BINARY" >/dev/null 2>&1; then
    for lib in $(ldd "$BINARY" | awk '/=> \// { print $3 } /^\t\// { print $1 }'); do
        mkdir -p "$rootfs$(dirname "$lib")"
        cp -L "$lib" "$rootfs$lib"
        chmod 0755 "$rootfs$lib"
    done
fi
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
    >"$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
fi
chmod 0644 "$rootfs"/etc/passwd "$rootfs"/etc/group "$rootfs"/etc/nsswitch.conf
chmod 1777 "$rootfs/tmp"
chown -R 0:0 "$rootfs"
chown 65532:65532 "$rootfs/home/nonroot"
chmod 0755 "$rootfs/home/nonroot"
find "$rootfs" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

layout="$work/layout"
umoci init --layout "$layout"
umoci new --image "$layout:$TAG"
umoci insert --image "$layout:$TAG" --history.created "$CREATED" \
    --history.created_by "e2e/scripts/build-image.sh" "$rootfs" /
umoci config --image "$layout:$TAG" --created "$CREATED" --history.created "$CREATED" \
    --history.created_by "e2e/scripts/build-image.sh (config)" \
    --os linux --architecture "$(go env GOARCH 2>/dev/null || dpkg --print-architecture)" \
    --config.user "$USER_SPEC" \
    --config.env "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --config.entrypoint /usr/local/bin/mongoferry --config.cmd --help \
    --config.workingdir / \
    --config.label "org.opencontainers.image.title=mongoferry" \
    --config.label "org.opencontainers.image.description=Live, zero-downtime MongoDB migrations: replication engine and Kubernetes operator" \
    --config.label "org.opencontainers.image.version=$VERSION" \
    --config.label "org.opencontainers.image.revision=$REVISION" \
    --config.label "org.opencontainers.image.created=$CREATED" \
    --config.label "org.opencontainers.image.source=$SOURCE_URL" \
    --config.label "org.opencontainers.image.licenses=$LICENSE"
umoci gc --layout "$layout"
# An oci-archive is a tar of the layout; sorted, fixed times and owners.
tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
    -C "$layout" -cf "$OUT.tmp" .
mv "$OUT.tmp" "$OUT"
digest=$(sed -E 's/.*"digest":"(sha256:[0-9a-f]{64})".*/\1/' "$layout/index.json")
echo "$digest" >"$OUT.digest"
echo "$stamp" >"$OUT.stamp"
say "image $OUT ($(du -h "$OUT" | cut -f1)) built in $((SECONDS - start)) s"
echo "$OUT"
echo "$digest"
