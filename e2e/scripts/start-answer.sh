#!/usr/bin/env bash
# How long `POST /start` (with its preflight) takes to be answered on a large source with a
# long oplog: issue 15's "start" goal, which peerbench cannot show (it copies before it writes
# its apply load, so its starts see a short oplog). Not part of any test run.
#
#   e2e/scripts/start-answer.sh SOURCE_DATA_DIR 'db.*' [ROUNDS]
#
# SOURCE_DATA_DIR: a SecantusDB data directory, e.g. one kept by peerbench (`-keep`):
#   ../shared/peers/run.sh 1024 0 -tools mongoferry -apply-tools mongoferry \
#       -apply-modes drain -apply-inserts 500000 -apply-updates 500000 -keep
#   e2e/scripts/start-answer.sh "$WORK/source/data" 'regular.*' 2
# It starts that source, a fresh empty target and a worker (MONGOFERRY_BIN, default the
# release build), sends one start per round for the namespaces given, prints the time to the
# answer and the preflight's oplog and estimate verdicts, and stops everything again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
DATA="${1:?usage: start-answer.sh SOURCE_DATA_DIR NAMESPACE_PATTERN [ROUNDS]}"
NS="${2:?usage: start-answer.sh SOURCE_DATA_DIR NAMESPACE_PATTERN [ROUNDS]}"
ROUNDS="${3:-1}"
SERVER="${SECANTUSD_RS:-$(e2e/scripts/install-secantus.sh | tail -n 1)}"
BIN="${MONGOFERRY_BIN:-$PWD/target/release/mongoferry}"
[[ -x "$BIN" ]] || { echo "no worker binary at $BIN (cargo build --release --bin mongoferry)"; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 1 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1 after 30 s" >&2
    return 1
}

WORK="$(mktemp -d "${TMPDIR:-/tmp}/mongoferry-start-answer.XXXXXX")"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

server() { # data-dir port log
    "$SERVER" --host 127.0.0.1 --port "$2" --storage-path "$1" --oplog-max-entries 5000000 \
        --cache-size 512M --log-file-max 32MB >"$3" 2>&1 &
    PIDS+=($!)
}
SP="$(free_port)"
server "$DATA" "$SP" "$WORK/source.log"
wait_port "$SP"

for round in $(seq 1 "$ROUNDS"); do
    TP="$(free_port)" WP="$(free_port)"
    mkdir -p "$WORK/target$round"
    server "$WORK/target$round" "$TP" "$WORK/target$round.log"
    wait_port "$TP"
    printf 'tok%s' "$RANDOM$RANDOM" >"$WORK/token"
    "$BIN" worker --source "mongodb://127.0.0.1:$SP/" --target "mongodb://127.0.0.1:$TP/" \
        --listen "127.0.0.1:$WP" --api-token-file "$WORK/token" >"$WORK/worker$round.log" 2>&1 &
    WPID=$!
    PIDS+=("$WPID")
    for _ in $(seq 1 300); do
        curl -sf "http://127.0.0.1:$WP/readyz" >/dev/null && break
        sleep 0.1
    done
    curl -s -o "$WORK/start.json" -w "round $round: POST /start ($NS) answered %{http_code} in %{time_total} s\n" \
        -H "Authorization: Bearer $(cat "$WORK/token")" -H 'Content-Type: application/json' \
        -d "{\"includeNamespaces\":[\"$NS\"]}" "http://127.0.0.1:$WP/start"
    python3 - "$WORK/start.json" <<'EOF'
import json, sys
p = json.load(open(sys.argv[1])).get("preflight", {})
for c in p.get("checks", []):
    if c["name"] in ("oplogWindow", "estimate"):
        print(f"  {c['name']}: {c['status']}: {c['reason']}")
EOF
    # The copy that started is not wanted: stop the worker and the target.
    kill "$WPID" 2>/dev/null || true
    wait "$WPID" 2>/dev/null || true
    kill "${PIDS[-2]}" 2>/dev/null || true
done
