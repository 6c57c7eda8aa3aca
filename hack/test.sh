#!/usr/bin/env bash
# `make test`: the environment, the real binaries, the images, lint and the whole suite, each
# phase timed, ending with a table of the phases and pytest's slowest tests.
#
# The one-time phases overlap where they use different resources: creating the venv and
# building the trainer image are mostly downloads, building the Go test binaries is compile
# work; lint runs as soon as the venv exists. On a warm machine every build phase is a
# no-op of a few seconds. Each phase's output goes to the terminal with its name in front.
#
#   hack/test.sh [PYTEST-ARGS...]      (VENV=.venv by default)
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="${VENV:-.venv}"
out=.medsft/make-test
mkdir -p "$out"
phases="$out/phases.tsv"
: > "$phases"
started=$SECONDS

# phase NAME CMD... : runs CMD with its output prefixed by [NAME], records its time and status.
phase() {
  local name="$1"; shift
  local start=$SECONDS
  printf '>> %s: %s\n' "$name" "$*"
  "$@" 2>&1 | sed -u "s/^/[$name] /"
  local rc=${PIPESTATUS[0]}
  printf '%s\t%s\t%s\n' "$name" "$((SECONDS - start))" "$rc" >> "$phases"
  printf '>> %s: %s in %ss\n' "$name" "$( ((rc == 0)) && echo ok || echo "FAILED (exit $rc)")" \
    "$((SECONDS - start))"
  return "$rc"
}

summary() {
  echo
  echo "make test: phases (wall-clock seconds; overlapping phases ran at the same time)"
  printf '  %-10s %8s  %s\n' PHASE SECONDS STATUS
  while IFS=$'\t' read -r name secs rc; do
    printf '  %-10s %8s  %s\n' "$name" "$secs" "$( ((rc == 0)) && echo ok || echo "exit $rc")"
  done < "$phases"
  printf '  %-10s %8s\n' total "$((SECONDS - started))"
}

fail() { summary; echo "make test: FAILED in phase $1"; exit 1; }

# Debian packages first (apt holds a lock; the image build needs buildah from it).
phase node-deps bash hack/install-node-deps.sh || fail node-deps
phase venv make --no-print-directory venv VENV="$venv" & venv_pid=$!
phase testbin bash hack/build-testbin.sh & testbin_pid=$!
# The images' stdout (one `REF ARCHIVE` line each) is for scripts; their log says it all.
phase images bash -c 'bash hack/build-images.sh > /dev/null' & images_pid=$!

lint_rc=0
if wait "$venv_pid"; then
  phase lint make --no-print-directory lint VENV="$venv" || lint_rc=$?
else
  lint_rc=1
fi
wait "$testbin_pid"; testbin_rc=$?
wait "$images_pid"; images_rc=$?
((lint_rc == 0)) || fail "venv or lint"
((testbin_rc == 0)) || fail testbin
((images_rc == 0)) || fail images

# Two workers (pytest-xdist): much of the suite waits on servers, pods and polls rather than
# computing, so two share the two cores; the real node's tests stay on one worker
# (tests/conftest.py). MEDSFT_TEST_WORKERS=0 runs in one process. pytest prints its 25
# slowest tests itself (--durations); the JUnit file gives the counts the last line repeats.
workers="${MEDSFT_TEST_WORKERS:-2}"
parallel=()
((workers > 0)) && parallel=(-n "$workers" --dist loadgroup)
phase pytest "$venv/bin/pytest" "${parallel[@]}" --durations=25 --junitxml="$out/pytest.xml" "$@"
pytest_rc=$(tail -n 1 "$phases" | cut -f3)
summary
"$venv/bin/python" - "$out/pytest.xml" <<'PY'
import sys
import xml.etree.ElementTree as ET

try:
    suites = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError) as exc:
    print(f"pytest: no results ({exc})")
    sys.exit(0)
total = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
for suite in suites.iter("testsuite"):
    for key in total:
        total[key] += int(suite.get(key, 0))
failed = total["failures"] + total["errors"]
passed = total["tests"] - failed - total["skipped"]
print(f"pytest: {passed} passed, {failed} failed, {total['skipped']} skipped")
PY
exit "$pytest_rc"
