#!/usr/bin/env bash
# Installs the daemonless container tools the image build and the test pod runner use, from
# Debian packages: runc (OCI runtime), umoci (image assembly), skopeo (inspect, copy to a
# registry) and busybox-static (the control-plane tests' small image). Idempotent and quiet.
set -euo pipefail
need=()
command -v runc >/dev/null || need+=(runc)
command -v umoci >/dev/null || need+=(umoci)
command -v skopeo >/dev/null || need+=(skopeo)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
if ((${#need[@]})); then
    echo "installing ${need[*]} (apt-get)" >&2
    if [[ $(id -u) != 0 ]]; then SUDO=sudo; else SUDO=; fi
    export DEBIAN_FRONTEND=noninteractive
    log=$(mktemp)
    $SUDO apt-get update -qq >"$log" 2>&1 || true
    if ! $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >>"$log" 2>&1; then
        cat "$log" >&2; rm -f "$log"; exit 1
    fi
    rm -f "$log"
fi
