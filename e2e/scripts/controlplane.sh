#!/usr/bin/env bash
# Start/stop the test Kubernetes control plane (etcd + kube-apiserver +
# controllers + pod runner, one process: e2e/controlplane, see its README).
#
#   controlplane.sh up       build cpctl if its sources changed, start it in
#                            the background, wait until ready, print usage
#   controlplane.sh down     stop it (process group) and any leftover container
#   controlplane.sh status   running? ready?
#   controlplane.sh env      print `export KUBECONFIG=...`
#   controlplane.sh build    only build
#
# Environment:
#   CONTROLPLANE_STATE_DIR  state directory (default e2e/controlplane/.state)
#   MONGOFERRY_IMAGE        OCI archive of the image "mongoferry" (any registry/tag)
#                           (default: build-image.sh packs MONGOFERRY_BIN into
#                           target/image/mongoferry-dev.oci.tar, cached)
#   MONGOFERRY_BIN          binary packed when MONGOFERRY_IMAGE is unset
#                           (default target/debug/mongoferry)
#   CONTROLPLANE_IMAGES     extra images "repo=/path/a.oci.tar repo2=/path/b.oci.tar"
#   CONTROLPLANE_PORT       apiserver port (default: a free one)
#   CONTROLPLANE_FRESH=1    wipe the state directory before `up`
#   CONTROLPLANE_TIMEOUT    seconds to wait for readiness (default 180)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CP="$ROOT/e2e/controlplane"
BUILD="$CP/.build"
BIN="$BUILD/cpctl"
STATE_DIR=${CONTROLPLANE_STATE_DIR:-$CP/.state}
MONGOFERRY_BIN=${MONGOFERRY_BIN:-$ROOT/target/debug/mongoferry}
PIDFILE="$STATE_DIR/cpctl.pid"
LOG="$STATE_DIR/cpctl.log"

# build: rebuild only when go.mod, go.sum, a .go file or the Go version
# changed (hash stamp); serialised with flock for parallel test runs.
build() {
  mkdir -p "$BUILD"
  exec 9>"$BUILD/.lock"
  flock 9
  local hash
  hash=$(cd "$CP" && { go version; find . -path ./.build -prune -o -path ./.state -prune -o \
          \( -name '*.go' -o -name go.mod -o -name go.sum \) -type f -print | LC_ALL=C sort | xargs sha256sum; } | sha256sum | cut -d' ' -f1)
  if [[ -x "$BIN" && -f "$BIN.stamp" && "$(cat "$BIN.stamp")" == "$hash" ]]; then
    flock -u 9; return 0
  fi
  echo "building cpctl (first build of kube-apiserver takes several minutes)..." >&2
  local start=$SECONDS
  # Stamp the Kubernetes version as the official build does (kubectl
  # version, /version and the node's kubelet version show it).
  local kver ldflags=""
  kver=$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$CP/go.mod")
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$kver -X $pkg.gitMajor=1 -X $pkg.gitMinor=$(cut -d. -f2 <<<"$kver")"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  done
  # No DWARF (compiler and linker): ~20% less CPU on a cold build; panics keep their
  # stacks. install-helm.sh builds Helm from this module with the same -gcflags, so the
  # k8s.io packages the two share are compiled once.
  (cd "$CP" && nice -n 10 go build -gcflags=all=-dwarf=false -ldflags "-s -w $ldflags" -o "$BIN.tmp" .)
  mv "$BIN.tmp" "$BIN"
  echo "$hash" > "$BIN.stamp"
  echo "built $BIN in $((SECONDS - start))s" >&2
  flock -u 9
}

alive() { [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

up() {
  if alive; then
    echo "control plane already running (pid $(cat "$PIDFILE"))"; print_env; return 0
  fi
  build
  "$ROOT/e2e/scripts/install-container-tools.sh"
  local image=${MONGOFERRY_IMAGE:-}
  if [[ -z "$image" && -x "$MONGOFERRY_BIN" ]]; then
    image=$("$ROOT/e2e/scripts/build-image.sh" --quiet --binary "$MONGOFERRY_BIN" | tail -n 2 | head -n 1)
  fi
  [[ "${CONTROLPLANE_FRESH:-0}" == 1 ]] && rm -rf "$STATE_DIR"
  mkdir -p "$STATE_DIR"
  local args=(serve --state-dir "$STATE_DIR")
  [[ -n "$image" ]] && args+=(--image "mongoferry=$image")
  for m in ${CONTROLPLANE_IMAGES:-}; do args+=(--image "$m"); done
  [[ -n "${CONTROLPLANE_PORT:-}" ]] && args+=(--port "$CONTROLPLANE_PORT")
  rm -f "$STATE_DIR/ready"
  # setsid: cpctl leads its own process group, so `down` can signal it whole.
  setsid "$BIN" "${args[@]}" >>"$LOG" 2>&1 </dev/null &
  echo $! > "$PIDFILE"
  local deadline=$((SECONDS + ${CONTROLPLANE_TIMEOUT:-180}))
  while [[ ! -f "$STATE_DIR/ready" ]]; do
    if ! alive; then
      echo "control plane exited during startup; last log lines ($LOG):" >&2
      tail -n 30 "$LOG" >&2; rm -f "$PIDFILE"; return 1
    fi
    if (( SECONDS > deadline )); then
      echo "control plane not ready after ${CONTROLPLANE_TIMEOUT:-180}s; see $LOG" >&2
      down; return 1
    fi
    sleep 0.2
  done
  echo "control plane ready at $(cat "$STATE_DIR/ready") (pid $(cat "$PIDFILE"), log $LOG)"
  print_env
}

down() {
  if alive; then
    local pid; pid=$(cat "$PIDFILE")
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  # Containers left behind only if cpctl could not stop them: kill their init
  # (the pid files runc wrote), delete them, unmount their root filesystems
  # and remove their cgroups.
  shopt -s nullglob
  for f in "$STATE_DIR"/pods/*/*.pid; do
    kill -KILL "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
  if [[ -d "$STATE_DIR/runc" ]] && command -v runc >/dev/null; then
    for id in $(runc --root "$STATE_DIR/runc" list -q 2>/dev/null); do
      runc --root "$STATE_DIR/runc" delete --force "$id" >/dev/null 2>&1 || true
    done
  fi
  awk -v d="$STATE_DIR/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null || true; done
  if [[ -f "$STATE_DIR/cgroup-parent" ]]; then
    local cg; cg=$(cat "$STATE_DIR/cgroup-parent")
    [[ -n "$cg" ]] && for h in /sys/fs/cgroup/*/; do
      [[ -d "$h${cg#/}" ]] && find "$h${cg#/}" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
  fi
  rm -f "$PIDFILE" "$STATE_DIR/ready"
  echo "control plane stopped"
}

status() {
  if alive; then
    echo "running (pid $(cat "$PIDFILE")), state $STATE_DIR"
    KUBECONFIG="$STATE_DIR/kubeconfig" kubectl get --raw /readyz && echo
  else
    echo "not running"; return 1
  fi
}

print_env() {
  echo "export KUBECONFIG=$STATE_DIR/kubeconfig"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  env) print_env ;;
  build) build ;;
  *) echo "usage: $0 up|down|status|env|build" >&2; exit 2 ;;
esac
