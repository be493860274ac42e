#!/usr/bin/env bash
# Runs every test against one build folder: the C unit tests (Criterion) and
# the Python checks (tests/python, run with Debian's python3 which has numpy,
# torch, sentencepiece and PIL as independent references).
# Usage: tests/run.sh BUILD_DIR   (the README's `make test` calls it)
set -u
build=${1:-build}
root=$(cd "$(dirname "$0")/.." && pwd)
export VLFT_BIN="$root/$build/vlft"
export VLFT_BUILD="$root/$build"
export VLFT_ROOT="$root"
py=/usr/bin/python3
passed=0
failed=0

echo "== C unit tests ($build/unit_tests)"
log=$(mktemp)
"$root/$build/unit_tests" --jobs 2 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
line=$(grep -a 'Synthesis:' "$log" | tail -1)
tested=$(echo "$line" | sed -n 's/.*Tested: \([0-9]*\).*/\1/p')
passing=$(echo "$line" | sed -n 's/.*Passing: \([0-9]*\).*/\1/p')
if [ -z "$tested" ]; then
    echo "unit tests did not report a synthesis (exit $rc)"
    failed=$((failed + 1))
else
    passed=$((passed + passing))
    failed=$((failed + tested - passing))
    [ "$rc" -ne 0 ] && [ "$tested" -eq "$passing" ] && failed=$((failed + 1))
fi
rm -f "$log"

echo "== Python checks (tests/python)"
log=$(mktemp)
"$py" "$root/tests/python/runner.py" "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
line=$(grep -a '^python: ' "$log" | tail -1)
p=$(echo "$line" | sed -n 's/^python: \([0-9]*\) passed.*/\1/p')
f=$(echo "$line" | sed -n 's/.* \([0-9]*\) failed.*/\1/p')
if [ -z "$p" ] || [ -z "$f" ]; then
    echo "python checks did not report (exit $rc)"
    failed=$((failed + 1))
else
    passed=$((passed + p))
    failed=$((failed + f))
    skipped=$(echo "$line" | sed -n 's/.* \([0-9]*\) skipped.*/\1/p')
fi
rm -f "$log"

echo
if [ "${skipped:-0}" -gt 0 ]; then
    echo "$passed passed, $failed failed, $skipped skipped (they need a GPU: see the SKIP lines)"
else
    echo "$passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]
