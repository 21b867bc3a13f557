#!/usr/bin/env bash
# The demo: installs the local MongoDB-protocol servers if needed, builds mongoferry and runs
# `mongoferry demo` (a real migration on embedded defaults).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)"; exit 1; }
SECANTUSD_RS="$(e2e/scripts/install-secantus.sh | tail -n 1)"
export SECANTUSD_RS
cargo build --bin mongoferry 2>&1 | tail -1
exec target/debug/mongoferry demo "$@"
