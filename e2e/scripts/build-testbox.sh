#!/usr/bin/env bash
# Builds the control-plane tests' small image "mongoferry/testbox" (an OCI archive,
# target/image/testbox.oci.tar): busybox-static with its applets, and kubectl. It runs as
# root (image user 0), so it also serves the runAsNonRoot refusal test. Cached: rebuilt only
# when its inputs change. Prints the archive's path.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${1:-$ROOT/target/image/testbox.oci.tar}
"$ROOT/e2e/scripts/install-container-tools.sh"
BUSYBOX=/bin/busybox
KUBECTL=$(readlink -f "$(command -v kubectl)")
# The Google Cloud SDK's kubectl is a dispatcher; take the real 1.33 binary beside it.
[[ -x "$(dirname "$KUBECTL")/kubectl.1.33" ]] && KUBECTL="$(dirname "$KUBECTL")/kubectl.1.33"
mkdir -p "$(dirname "$OUT")"
exec 8>"$OUT.lock"
flock 8
stamp=$(sha256sum "$BUSYBOX" "$KUBECTL" "$0" | cut -d' ' -f1 | sha256sum | cut -d' ' -f1)
if [[ -f "$OUT" && "$(cat "$OUT.stamp" 2>/dev/null)" == "$stamp" ]]; then echo "$OUT"; exit 0; fi
work=$(mktemp -d "${TMPDIR:-/tmp}/mongoferry-testbox.XXXXXX")
trap 'rm -rf "$work"' EXIT
r="$work/rootfs"
mkdir -p "$r"/{bin,usr/local/bin,etc,tmp,root}
cp "$BUSYBOX" "$r/bin/busybox"
for applet in $("$BUSYBOX" --list); do [[ -e "$r/bin/$applet" ]] || ln -s busybox "$r/bin/$applet"; done
ldd "$KUBECTL" >/dev/null 2>&1 && { echo "kubectl must be static" >&2; exit 1; }
cp "$KUBECTL" "$r/usr/local/bin/kubectl"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$r/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$r/etc/group"
chmod 1777 "$r/tmp"
find "$r" -exec touch -h -d @0 {} +
L="$work/layout"
umoci init --layout "$L"
umoci new --image "$L:test"
umoci insert --image "$L:test" --history.created 1970-01-01T00:00:00Z "$r" /
umoci config --image "$L:test" --created 1970-01-01T00:00:00Z --history.created 1970-01-01T00:00:00Z \
    --config.env "PATH=/usr/local/bin:/bin" --config.entrypoint /bin/sh --config.workingdir /
umoci gc --layout "$L"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$L" -cf "$OUT.tmp" .
mv "$OUT.tmp" "$OUT"
echo "$stamp" >"$OUT.stamp"
echo "$OUT"
