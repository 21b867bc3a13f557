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
# the Rust build runs: on 2 cores their build steps fill each other's idle gaps.
step "building the test tools in the background (SecantusDB; the control plane and Helm)"
e2e/scripts/install-secantus.sh >"$LOGS/secantus.out" 2>"$LOGS/secantus-install.log" &
secantus_pid=$!
if [[ -z "${MONGOFERRY_SKIP_KUBE:-}" && -x e2e/scripts/controlplane.sh ]] && command -v go >/dev/null; then
    # Not waited for: a failed build shows in the Kubernetes suites, which build it again
    # (both scripts take a lock, so a suite that needs a tool first waits for this build).
    { e2e/scripts/controlplane.sh build && e2e/scripts/install-helm.sh; } >"$LOGS/controlplane-build.log" 2>&1 &
fi

step "build"
cargo build --workspace --bins 2>&1 | tail -2
export MONGOFERRY_BIN="$ROOT/target/debug/mongoferry"

step "building the test executables"
# The end-to-end suites and the unit tests, built once here; the suites then run as plain
# executables (cwd e2e/, as cargo would) so that the lanes below run side by side without
# cargo's build lock between them. `--workspace`, as the build above: a build of one package
# resolves its dependencies' features on their own, and rebuilt the driver and the runtime.
declare -A suite_exe=()
if cargo test --workspace --no-run >"$LOGS/e2e-build.log" 2>&1; then
    while read -r name exe; do [[ "$exe" == /* ]] || exe="$ROOT/$exe"; suite_exe[$name]=$exe; done < <(
        sed -nE 's/^ *Executable tests\/([a-z_0-9]+)\.rs \((.*)\)$/\1 \2/p' "$LOGS/e2e-build.log")
    echo "${#suite_exe[@]} suites built at $SECONDS s"
else
    tail -40 "$LOGS/e2e-build.log"; fail_step "e2e build"
fi
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

# Lane C: the formatting check, the lints and the unit tests need no server. They run beside
# the wait for SecantusDB (a cold build takes minutes) and then beside the suites, which spend
# much of their time waiting on leases and restarts. Their results are tallied at the end.
run_checks() {
    local start=$SECONDS
    if cargo fmt --all -- --check >"$LOGS/fmt.log" 2>&1; then echo "fmt ok"; else echo "fmt failed"; fi >"$LOGS/checks.summary"
    if cargo clippy --workspace --all-targets -- -D warnings >"$LOGS/clippy.log" 2>&1; then
        echo "clippy ok"; else echo "clippy failed"; fi >>"$LOGS/checks.summary"
    # Every unit-test binary runs, even after one fails, so the counts stay whole.
    cargo test --workspace --lib --bins --no-fail-fast >"$LOGS/unit.log" 2>&1
    echo "lints and unit tests: $((SECONDS - start)) s (at $start s)" >>"$LOGS/checks.summary"
}
rm -f "$LOGS"/*.summary
run_checks &
checks_pid=$!

step "waiting for SecantusDB"
if ! wait "$secantus_pid"; then
    cat "$LOGS/secantus-install.log"; echo "cannot install SecantusDB"; exit 1
fi
SECANTUSD_RS="$(tail -n 1 "$LOGS/secantus.out")"
export SECANTUSD_RS
echo "secantusd-rs: $SECANTUSD_RS (ready at $SECONDS s)"
# The control plane's build (if still running) is not waited for here: the Kubernetes suites
# come last in their lane, and controlplane.sh serialises on the build's lock.

# Each step of a lane writes its log and a summary file (result lines, time, longest tests,
# failures); the summaries are printed and tallied in a fixed order once both lanes are done.
run_suite() { # name
    local t=$1 start=$SECONDS sum="$LOGS/e2e-$1.summary"
    (cd "$ROOT/e2e" && "${suite_exe[$t]}" --test-threads=1 --nocapture ${MONGOFERRY_TEST_FILTER:-}) \
        2>&1 | stamp >"$LOGS/e2e-$t.ts.log"
    cut -d' ' -f2- "$LOGS/e2e-$t.ts.log" >"$LOGS/e2e-$t.log"
    {
        echo "--- $t (at $start s: $((SECONDS - start)) s; longest: $(test_times "$LOGS/e2e-$t.ts.log"))"
        grep -E '^test |^test result:|^(copy|workload|1 MB|failed|paused|caught)' "$LOGS/e2e-$t.log" || true
        show_failures "$LOGS/e2e-$t.log"
        grep -q '^test result:' "$LOGS/e2e-$t.log" || tail -40 "$LOGS/e2e-$t.log"
    } >"$sum"
}
run_demo() {
    local start=$SECONDS mode=()
    [[ -n "${MONGOFERRY_SKIP_KUBE:-}" ]] && mode=(--standalone)
    if e2e/scripts/demo.sh "${mode[@]}" --documents 5000 >"$LOGS/demo.log" 2>&1; then
        { echo ok; grep -E "operator running|paused in|verification|documents:|done in" "$LOGS/demo.log"; } >"$LOGS/demo.summary"
    else
        { echo failed; tail -20 "$LOGS/demo.log"; } >"$LOGS/demo.summary"
    fi
    echo "demo: $((SECONDS - start)) s (at $start s)" >>"$LOGS/demo.summary"
}
run_bench() {
    # The debug bench and worker built above (no release build here): the figures are a smoke
    # test only. Results go to target/bench-quick (never docs/). Passed if it exits 0.
    local start=$SECONDS
    if target/debug/bench --quick --out "$ROOT/target/bench-quick" >"$LOGS/bench-quick.log" 2>&1; then
        echo ok >"$LOGS/bench.summary"
    else
        { echo failed; tail -20 "$LOGS/bench-quick.log"; } >"$LOGS/bench.summary"
    fi
    { grep -E '^summary:' "$LOGS/bench-quick.log" || true
      echo "bench --quick: $((SECONDS - start)) s (at $start s; results in target/bench-quick/bench.json)"; } >>"$LOGS/bench.summary"
}
run_controlplane() {
    local start=$SECONDS
    e2e/controlplane/test.sh >"$LOGS/controlplane.log" 2>&1
    { tail -25 "$LOGS/controlplane.log"; echo "control plane suite: $((SECONDS - start)) s (at $start s)"; } >"$LOGS/controlplane.summary"
}

# Lanes A and B run the suites side by side on the two cores: lane A the data-heavy suites,
# the benchmark, then the demo and the control plane's own tests; lane B the suites that
# mostly wait (leases, restarts), then the Kubernetes ones (last, so that a cold control-plane
# build has time to finish). A suite not named in lane A runs in lane B. The demo and the
# control plane's tests end lane A because it finishes first (docs/development.md).
lane_a=(engine finalize reliability reverse recovery preflight harness docs)
kube_step() { [[ -z "${MONGOFERRY_SKIP_KUBE:-}" ]]; }
is_kube_suite() { [[ "$1" == operator* || "$1" == chart || "$1" == containers ]]; }
lane_b=()
lane_b_kube=()
for t in $(printf '%s\n' "${!suite_exe[@]}" | sort); do
    if [[ " ${lane_a[*]} " == *" $t "* ]]; then continue; fi
    if is_kube_suite "$t"; then kube_step && lane_b_kube+=("$t"); else lane_b+=("$t"); fi
done
lane_b+=("${lane_b_kube[@]}")
step "end-to-end suites, three lanes: A ${lane_a[*]} + bench + demo + control plane; B ${lane_b[*]}; C lints + unit tests"
(
    for t in "${lane_a[@]}"; do [[ -n "${suite_exe[$t]:-}" ]] && run_suite "$t"; done
    run_bench
    run_demo
    if kube_step && [[ -x e2e/controlplane/test.sh ]]; then run_controlplane; fi
) &
lane_a_pid=$!
(
    for t in "${lane_b[@]}"; do run_suite "$t"; done
) &
lane_b_pid=$!
wait "$lane_a_pid" "$lane_b_pid" "$checks_pid"
echo "all lanes done at $SECONDS s"

step "formatting, lints and unit tests (lane C)"
cat "$LOGS/checks.summary" 2>/dev/null
if grep -qx "fmt ok" "$LOGS/checks.summary" 2>/dev/null; then passed=$((passed + 1)); else cat "$LOGS/fmt.log"; fail_step "cargo fmt"; fi
if grep -qx "clippy ok" "$LOGS/checks.summary" 2>/dev/null; then passed=$((passed + 1)); else tail -50 "$LOGS/clippy.log"; fail_step "cargo clippy"; fi
grep -E '^test result:|FAILED|panicked' "$LOGS/unit.log"
grep -q '^test result:' "$LOGS/unit.log" || { tail -30 "$LOGS/unit.log"; fail_step "unit tests did not run"; }
tally_cargo "$LOGS/unit.log"
show_failures "$LOGS/unit.log"

step "end-to-end suites"

for t in $(printf '%s\n' "${!suite_exe[@]}" | sort); do
    [[ -f "$LOGS/e2e-$t.summary" ]] || continue
    cat "$LOGS/e2e-$t.summary"
    tally_cargo "$LOGS/e2e-$t.log"
    grep -q '^test result:' "$LOGS/e2e-$t.log" || fail_step "e2e $t did not run"
done

step "demo (the README's main command: Helm + MigrationJob on the local control plane)"
if [[ "$(head -1 "$LOGS/demo.summary" 2>/dev/null)" == ok ]]; then passed=$((passed + 1)); else fail_step "demo"; fi
tail -n +2 "$LOGS/demo.summary" 2>/dev/null

step "benchmark smoke (bench --quick: measures, asserts no threshold)"
if [[ "$(head -1 "$LOGS/bench.summary" 2>/dev/null)" == ok ]]; then passed=$((passed + 1)); else fail_step "bench --quick"; fi
tail -n +2 "$LOGS/bench.summary" 2>/dev/null

if kube_step && [[ -x e2e/controlplane/test.sh ]]; then
    step "Kubernetes control plane (kube-apiserver + etcd + GC built from Go modules)"
    cat "$LOGS/controlplane.summary" 2>/dev/null
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
