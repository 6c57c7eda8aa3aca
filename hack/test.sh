#!/usr/bin/env bash
# `make test`: the environment, the real binaries, the images, lint and the whole suite, each
# phase timed, ending with a table of the phases and pytest's slowest tests.
#
# The one-time phases overlap where they use different resources: creating the venv, the eval
# image's venv and building the trainer image are mostly downloads, building the Go test
# binaries is compile work; lint runs as soon as the venv exists. On a warm machine every build phase is a
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
# Free disk where the caches live (images, node store, eval venv: tens of GB cold): a shared
# disk that fills up stalls the node's pods, so the summary says how much was left.
free_gib() { df --output=avail -BG "${XDG_CACHE_HOME:-$HOME/.cache}" 2>/dev/null | tail -n 1 | tr -dc 0-9; }
free_at_start="$(free_gib)"
if ((${free_at_start:-0} < 15)); then
  echo "make test: warning: ${free_at_start:-?} GiB free for the caches; a warm run takes up to" \
    "~15 GiB (a clone's venv, a rebuilt image and its import), a cold one ~60 GiB"
fi

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
  echo "disk free for the caches: ${free_at_start} GiB at the start, $(free_gib) GiB at the end"
}

fail() { summary; echo "make test: FAILED in phase $1"; exit 1; }

# Debian packages first (apt holds a lock; the image build needs buildah from it).
phase node-deps bash hack/install-node-deps.sh || fail node-deps
phase venv make --no-print-directory venv VENV="$venv" & venv_pid=$!
phase testbin bash hack/build-testbin.sh & testbin_pid=$!
# The images' stdout (one `REF ARCHIVE` line each) is for scripts; their log says it all.
phase images bash -c 'bash hack/build-images.sh > /dev/null' & images_pid=$!

lint_rc=0 evalenv_rc=1
if wait "$venv_pid"; then
  # The eval image's venv (tests/harness/eval_env.py: ~8 min and ~11 GB cold, nothing when
  # the lock is unchanged) is downloads and unpacking: synced beside the compiles, not in
  # the middle of pytest.
  phase eval-env env PYTHONPATH=tests "$venv/bin/python" -m harness.eval_env &
  evalenv_pid=$!
  phase lint make --no-print-directory lint VENV="$venv" || lint_rc=$?
  wait "$evalenv_pid"; evalenv_rc=$?
else
  lint_rc=1
fi
wait "$testbin_pid"; testbin_rc=$?
wait "$images_pid"; images_rc=$?
((lint_rc == 0)) || fail "venv or lint"
((evalenv_rc == 0)) || fail eval-env
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
# Last, each failure's first lines: a CI log may keep only the output's tail, where
# pytest's own report of them has scrolled away.
for case in suites.iter("testcase"):
    for problem in (*case.findall("failure"), *case.findall("error")):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        lines = (problem.get("message") or problem.text or "").strip().splitlines()
        print(f"  {problem.tag.upper()} {name}")
        for line in lines[:4]:
            print(f"    {line[:240]}")
PY
exit "$pytest_rc"
