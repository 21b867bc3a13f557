#!/usr/bin/env bash
# The demo: a real live migration, the way users run one. Installs what it needs (SecantusDB
# servers, the local Kubernetes control plane built from Go modules, helm), builds mongoferry,
# starts two local MongoDB-protocol servers with a sample dataset and live writes, installs
# the operator with Helm, applies a MigrationJob and patches it through pause, resume and
# finalize, prints the verification and cleans up.
#
#   e2e/scripts/demo.sh [--documents N]     through Kubernetes (the README's main command)
#   e2e/scripts/demo.sh --standalone [...]  the worker alone, driven over its HTTP API
#
# First run on a fresh machine: ~25-30 min of building (SecantusDB, kube-apiserver, helm);
# later runs start in seconds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT="$PWD"
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)"; exit 1; }
echo "== installing the local MongoDB-protocol servers (SecantusDB)"
SECANTUSD_RS="$(e2e/scripts/install-secantus.sh | tail -n 1)"
export SECANTUSD_RS
echo "== building mongoferry"
cargo build --bin mongoferry 2>&1 | tail -1
BIN="$ROOT/target/debug/mongoferry"

if [[ "${1:-}" == "--standalone" ]]; then
    shift
    exec "$BIN" demo "$@"
fi

command -v kubectl >/dev/null || { echo "kubectl is required"; exit 1; }
echo "== installing helm (built from its Go module)"
HELM="$(e2e/scripts/install-helm.sh | tail -n 1)"
echo "== building the image (e2e/scripts/build-image.sh: this build, no Docker daemon)"
IMAGE="$(e2e/scripts/build-image.sh --quiet --binary "$BIN" | tail -n 2 | paste -sd' ')"
echo "   $IMAGE"
echo "== starting the local Kubernetes control plane (kube-apiserver + etcd + pod runner)"
STATE="$(mktemp -d "${TMPDIR:-/tmp}/mongoferry-demo-cp.XXXXXX")"
export CONTROLPLANE_STATE_DIR="$STATE" MONGOFERRY_BIN="$BIN" MONGOFERRY_IMAGE="${IMAGE%% *}"
cleanup() {
    e2e/scripts/controlplane.sh down >/dev/null 2>&1 || true
    rm -rf "$STATE"
}
trap cleanup EXIT
e2e/scripts/controlplane.sh up >/dev/null
echo "   ready: KUBECONFIG=$STATE/kubeconfig"
# The chart's default image (ghcr.io/mongoferry/mongoferry) is that OCI archive: the local
# pod runner runs the operator and worker pods from it under runc.
"$BIN" demo --kubeconfig "$STATE/kubeconfig" --helm "$HELM" --chart "$ROOT/charts/mongoferry" "$@"
