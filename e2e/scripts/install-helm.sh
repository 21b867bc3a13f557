#!/usr/bin/env bash
# Idempotent installer for Helm v3, built from its Go module (needs only Go and the module
# proxy). The binary goes to the repository's ignored .tools/helm-<version>/helm, is reused
# when present, and is built once even when several tests ask at the same time (flock).
# Prints the path of the helm binary on the last line.
#
#   HELM_VERSION  Helm release to build (default below; a 3.x whose k8s.io modules match
#                 the test control plane's Kubernetes minor, 1.33)
#   REPO          repository root (default: two levels above this script)
set -euo pipefail

VERSION="${HELM_VERSION:-v3.18.6}"
# Helm's Makefile stamps the Kubernetes version its k8s.io modules implement (client-go
# v0.33.x of helm v3.18 → 1.33); without it `helm template` and `helm lint` assume 1.20.
K8S_MAJOR=1
K8S_MINOR=33
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="${REPO:-$(cd "$SCRIPT_DIR/../.." && pwd)}"
DIR="$REPO/.tools/helm-$VERSION"
BIN="$DIR/helm"

log() { echo "install-helm: $*" >&2; }

installed() {
    [[ -x "$BIN" ]] && "$BIN" version --template '{{.Version}}' 2>/dev/null | grep -qx "$VERSION"
}

if installed; then
    echo "$BIN"
    exit 0
fi

command -v go >/dev/null || { log "error: Go is required to build helm (https://go.dev/dl/)"; exit 1; }
mkdir -p "$REPO/.tools"
exec 9>"$REPO/.tools/helm-$VERSION.lock"
flock 9
# Another process may have built it while this one waited for the lock.
if installed; then
    echo "$BIN"
    exit 0
fi

log "building helm $VERSION from helm.sh/helm/v3/cmd/helm (first build: a few minutes)"
start=$SECONDS
tmp="$DIR.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
ldflags="-s -w"
ldflags+=" -X helm.sh/helm/v3/internal/version.version=$VERSION"
ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X $pkg.k8sVersionMajor=$K8S_MAJOR -X $pkg.k8sVersionMinor=$K8S_MINOR"
done
CP="$REPO/e2e/controlplane"
if [[ "$VERSION" == "$(cd "$CP" && go list -m -f '{{.Version}}' helm.sh/helm/v3 2>/dev/null)" ]]; then
    # Helm is a tool of the control plane's module (go.mod `tool`): one module graph, the
    # same compiler flags as cpctl's build, so the k8s.io packages both use (client-go,
    # apimachinery, api, apiextensions) are compiled once: ~0.7 CPU-min after cpctl instead
    # of ~5.4 on its own.
    (cd "$CP" && GOFLAGS=-buildvcs=false nice -n 10 \
        go build -gcflags=all=-dwarf=false -ldflags "$ldflags" -o "$tmp/helm" helm.sh/helm/v3/cmd/helm) >&2
else
    # Another version: outside any module, so the repository's go.mod files play no part.
    (cd / && GOBIN="$tmp" CGO_ENABLED=0 GOFLAGS=-buildvcs=false nice -n 10 \
        go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$VERSION") >&2
fi
rm -rf "$DIR"
mv "$tmp" "$DIR"
if ! installed; then
    log "error: $BIN was not produced or reports another version"
    exit 1
fi
log "built $BIN in $((SECONDS - start))s"
echo "$BIN"
