#!/usr/bin/env bash
# Runs every test of mongoferry on this machine, installing what they need first:
# formatting and lints, unit tests, the engine's end-to-end suites against real SecantusDB
# servers, and the Kubernetes suites against a real kube-apiserver built from Go modules.
#
#   MONGOFERRY_TEST_FILTER  run only cargo tests whose name contains this
#   MONGOFERRY_SKIP_KUBE=1  skip the control-plane, operator and Helm chart suites
# Ends with one line "N passed, M failed".
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT="$PWD"
LOGS="$ROOT/target/test-logs"
mkdir -p "$LOGS"
passed=0
failed=0
failures=()

step() { echo; echo "=== $* === (at $SECONDS s)"; }
tally_cargo() { # log file
    local p f
    p=$(grep -E '^test result:' "$1" | sed -E 's/.* ([0-9]+) passed.*/\1/' | paste -sd+ | bc 2>/dev/null || echo 0)
    f=$(grep -E '^test result:' "$1" | sed -E 's/.* ([0-9]+) failed.*/\1/' | paste -sd+ | bc 2>/dev/null || echo 0)
    passed=$((passed + ${p:-0}))
    failed=$((failed + ${f:-0}))
}
stamp() { while IFS= read -r l; do printf '%(%s)T %s\n' -1 "$l"; done; } # epoch seconds per line
test_times() { # stamped log: the three longest tests, "name N s"
    # A test's "test NAME ... " line is complete (so stamped) when it ends: its time is the
    # gap to the line before (the "running N tests" line for the first).
    awk '$2 == "running" { s = $1 }
         $2 == "test" && $4 == "..." { print $3, $1 - s; s = $1 }' "$1" |
        sort -k2 -nr | head -3 | awk '{ printf "%s%s %d s", (NR > 1 ? ", " : ""), $1, $2 }'
}
fail_step() { failed=$((failed + 1)); failures+=("$1"); }
show_failures() { # log file: the failed tests' names and panic messages (CI keeps only this output)
    grep -qE '^test result: FAILED' "$1" || return 0
    echo "  failed tests:"
    sed -n '/^failures:$/,/^test result:/p' "$1" | grep -E '^    [a-z_0-9:]+$' | sort -u | sed 's/^ */    /'
    grep -E -A12 "panicked at" "$1" | grep -vE '^ +[0-9]+: |^ +at |^stack backtrace:|^note: ' |
        head -80 | sed 's/^/  | /'
}

command -v cargo >/dev/null || { echo "cargo is required (rustup)"; exit 1; }
command -v bc >/dev/null || apt-get install -y -qq bc >/dev/null 2>&1 || true

# The test servers and the control plane are built (first time only) in the background while
# the lints and the Rust build run: on 2 cores their build steps fill each other's idle gaps.
step "building the test tools in the background (SecantusDB; the control plane)"
e2e/scripts/install-secantus.sh >"$LOGS/secantus.out" 2>"$LOGS/secantus-install.log" &
secantus_pid=$!
cp_build_pid=""
if [[ -z "${MONGOFERRY_SKIP_KUBE:-}" && -x e2e/scripts/controlplane.sh ]] && command -v go >/dev/null; then
    e2e/scripts/controlplane.sh build >"$LOGS/controlplane-build.log" 2>&1 &
    cp_build_pid=$!
fi

step "formatting and lints"
if cargo fmt --all -- --check >"$LOGS/fmt.log" 2>&1; then passed=$((passed + 1)); else cat "$LOGS/fmt.log"; fail_step "cargo fmt"; fi
if cargo clippy --workspace --all-targets -- -D warnings >"$LOGS/clippy.log" 2>&1; then passed=$((passed + 1)); else tail -50 "$LOGS/clippy.log"; fail_step "cargo clippy"; fi

step "build"
cargo build --workspace --bins 2>&1 | tail -2
export MONGOFERRY_BIN="$ROOT/target/debug/mongoferry"
if [[ -z "${MONGOFERRY_SKIP_KUBE:-}" ]]; then
    # The image the Kubernetes suites run (the debug binary and its shared libraries, packed
    # by build-image.sh without a daemon; runc runs it). Cached by the binary's hash.
    img_start=$SECONDS
    if e2e/scripts/build-image.sh --binary "$MONGOFERRY_BIN" >"$LOGS/image.log" 2>&1; then
        echo "image: $(tail -n 2 "$LOGS/image.log" | paste -sd' ') in $((SECONDS - img_start)) s"
    else
        tail -20 "$LOGS/image.log"; fail_step "build-image.sh"
    fi
fi

step "unit tests"
cargo test --workspace --lib --bins 2>&1 | tee "$LOGS/unit.log" | grep -E '^test result:|FAILED|panicked' || true
tally_cargo "$LOGS/unit.log"
show_failures "$LOGS/unit.log"

step "waiting for the test tools"
if ! wait "$secantus_pid"; then
    cat "$LOGS/secantus-install.log"; echo "cannot install SecantusDB"; exit 1
fi
SECANTUSD_RS="$(tail -n 1 "$LOGS/secantus.out")"
export SECANTUSD_RS
echo "secantusd-rs: $SECANTUSD_RS"
if [[ -n "$cp_build_pid" ]] && ! wait "$cp_build_pid"; then
    # Not fatal here: the suites that need it build it again and report their own failure.
    tail -20 "$LOGS/controlplane-build.log"
fi
echo "tools ready at $SECONDS s"

step "end-to-end suites (real SecantusDB servers)"
for t in $(ls e2e/tests/*.rs | xargs -n1 basename | sed 's/\.rs$//'); do
    if [[ -n "${MONGOFERRY_SKIP_KUBE:-}" && ( "$t" == operator* || "$t" == chart || "$t" == containers ) ]]; then continue; fi
    echo "--- $t"
    suite_start=$SECONDS
    cargo test -p mongoferry-e2e --test "$t" -- --test-threads=1 --nocapture ${MONGOFERRY_TEST_FILTER:-} \
        2>&1 | stamp >"$LOGS/e2e-$t.ts.log"
    cut -d' ' -f2- "$LOGS/e2e-$t.ts.log" >"$LOGS/e2e-$t.log"
    echo "    ($t: $((SECONDS - suite_start)) s; longest: $(test_times "$LOGS/e2e-$t.ts.log"))"
    grep -E '^test |^test result:|^(copy|workload|1 MB|failed|paused|caught)' "$LOGS/e2e-$t.log" || true
    tally_cargo "$LOGS/e2e-$t.log"
    show_failures "$LOGS/e2e-$t.log"
    if ! grep -q '^test result:' "$LOGS/e2e-$t.log"; then tail -40 "$LOGS/e2e-$t.log"; fail_step "e2e $t did not run"; fi
done

step "demo (the README's main command: Helm + MigrationJob on the local control plane)"
demo_mode=()
if [[ -n "${MONGOFERRY_SKIP_KUBE:-}" ]]; then demo_mode=(--standalone); fi
if e2e/scripts/demo.sh "${demo_mode[@]}" --documents 5000 >"$LOGS/demo.log" 2>&1; then
    passed=$((passed + 1)); grep -E "operator running|paused in|verification|documents:|done in" "$LOGS/demo.log"
else
    tail -20 "$LOGS/demo.log"; fail_step "demo"
fi

step "benchmark smoke (bench --quick: measures, asserts no threshold)"
# The debug bench and worker built above (no release build here): the figures are a smoke
# test only. Results go to target/bench-quick (never docs/). One step: passed if it exits 0.
bench_start=$SECONDS
if target/debug/bench --quick --out "$ROOT/target/bench-quick" >"$LOGS/bench-quick.log" 2>&1; then
    passed=$((passed + 1))
else
    tail -20 "$LOGS/bench-quick.log"; fail_step "bench --quick"
fi
grep -E '^summary:' "$LOGS/bench-quick.log" || true
echo "bench --quick: $((SECONDS - bench_start)) s (results in target/bench-quick/bench.json)"

if [[ -z "${MONGOFERRY_SKIP_KUBE:-}" && -x e2e/controlplane/test.sh ]]; then
    step "Kubernetes control plane (kube-apiserver + etcd + GC built from Go modules)"
    e2e/controlplane/test.sh 2>&1 | tee "$LOGS/controlplane.log" | tail -25
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$LOGS/controlplane.log" | tail -1)
    if [[ -n "$line" ]]; then
        passed=$((passed + $(echo "$line" | cut -d' ' -f1)))
        failed=$((failed + $(echo "$line" | cut -d' ' -f3)))
    else
        fail_step "control plane suite did not report"
    fi
fi

echo
if [[ ${#failures[@]} -gt 0 ]]; then echo "failed steps: ${failures[*]}"; fi
echo "logs: $LOGS"
echo "took $SECONDS s"
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
