#!/usr/bin/env bash
# Idempotent installer for the SecantusDB test servers (third-party, GPL: run as separate
# processes only, never linked). Prints the path of secantusd-rs on the last line.
#
#   MONGOFERRY_TOOLS  install root (default: $HOME/.cache/mongoferry)
#   REPO              repository root (default: two levels above this script)
set -euo pipefail

VERSION="0.5.3-beta.196"
PY_VERSION="0.7.0b3"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="${REPO:-$(cd "$SCRIPT_DIR/../.." && pwd)}"
TOOLS="${MONGOFERRY_TOOLS:-$HOME/.cache/mongoferry}"
ROOT="$TOOLS/secantus-$VERSION"
BIN="$ROOT/bin/secantusd-rs"

log() { echo "install-secantus: $*" >&2; }

if ! command -v secantusd-py >/dev/null 2>&1; then
    log "installing SecantusDB==$PY_VERSION (secantusd-py) with pip"
    if ! python3 -m pip install --quiet "SecantusDB==$PY_VERSION" >&2; then
        log "warning: pip install SecantusDB==$PY_VERSION failed; Python-server tests will be skipped"
    fi
fi

if [[ -x "$BIN" ]]; then
    echo "$BIN"
    exit 0
fi

mkdir -p "$ROOT/bin"
PREBUILT="$REPO/.tools/secantus/bin/secantusd-rs"
if [[ -x "$PREBUILT" ]]; then
    log "copying prebuilt $PREBUILT"
    cp "$PREBUILT" "$BIN.tmp"
    mv "$BIN.tmp" "$BIN"
else
    # The crate's release profile (codegen-units 1, thin LTO) builds its largest crates on one
    # core; 16 units without LTO built it cold in 7m52s on 2 cores, and the server ran within
    # ~10% of the default build's speed (timed inserts, updates, transactions and scans).
    export CARGO_PROFILE_RELEASE_CODEGEN_UNITS="${CARGO_PROFILE_RELEASE_CODEGEN_UNITS:-16}"
    export CARGO_PROFILE_RELEASE_LTO="${CARGO_PROFILE_RELEASE_LTO:-off}"
    log "building secantus-mdb $VERSION with cargo install (about 8 minutes on 2 cores)"
    cargo install secantus-mdb --version "$VERSION" --ignore-rust-version --locked \
        --root "$ROOT" >&2 ||
        cargo install secantus-mdb --version "$VERSION" --ignore-rust-version --root "$ROOT" >&2
fi

if [[ ! -x "$BIN" ]]; then
    log "error: $BIN was not produced"
    exit 1
fi
echo "$BIN"
