#!/usr/bin/env bash
# The check of the README's two commands from scratch (issue 27, "What must be shown"):
#   1. a copy of the repository (its files as they are now: tracked and untracked, not the ignored)
#      and, as the Python on the PATH, a fresh virtual environment with no site packages; empty pip
#      and dataset caches: a machine with Python, git and a C++ compiler, and nothing else;
#   2. ./run.sh, then ./run.sh test there: each sets up what is missing (.venv in the copy) and runs;
#   3. both again: nothing may be installed, built or downloaded (no file of .venv or of the pip
#      cache changes), and the main job must start within seconds.
# Prints the wall time of each run and the first and last lines each showed; exit 0 when all holds.
#
#   DETECTRON2_SRC=/path/to/detectron2 PANOPTICAPI_SRC=/path/to/panopticapi \
#       tools/check_fresh_setup.sh [WORKDIR]
#
# DETECTRON2_SRC / PANOPTICAPI_SRC: local checkouts that stand in for the git repositories (left
# unset, run.sh clones them from GitHub). WORKDIR (default: a new folder in /tmp) is kept.
# CHECK_JOB_ARGS: arguments of the main job (default none: the whole job, ~3.5 min on 2 cores);
# CHECK_TEST_ARGS: arguments of the test command (default none: the whole suite, ~7 min), e.g.
# "tests/test_configs.py tests/test_model_zoo.py" for a part; CHECK_RERUN_TEST_ARGS: those of the
# second run (default: the same); CHECK_TEST_PREFIX: a command to run the test command under (e.g.
# "flock /tmp/tests.lock" on a machine shared with others). Takes ~25 min on 2 cores with the
# whole suite (the set-up ~5 of them); CI runs it only when asked (.ci/run: CHECK_FRESH_SETUP=1).
set -uo pipefail

SRC_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-$(mktemp -d /tmp/panet_fresh_setup.XXXXXX)}"
mkdir -p "$WORK" || exit 1
WORK="$(cd "$WORK" && pwd)"
REPO="$WORK/repo"
JOB_ARGS="${CHECK_JOB_ARGS:-}"
TEST_ARGS="${CHECK_TEST_ARGS:-}"
RERUN_TEST_ARGS="${CHECK_RERUN_TEST_ARGS-$TEST_ARGS}"
FAILED=""

say() { printf '[check] %s\n' "$*"; }
fail() {
  FAILED="$FAILED
  - $*"
  printf '[check] FAILED: %s\n' "$*"
}
dur() { printf '%d min %d s' $(($1 / 60)) $(($1 % 60)); }

[ ! -e "$REPO" ] || { echo "ERROR: $REPO exists: give a new WORKDIR" >&2; exit 1; }
for v in DETECTRON2_SRC PANOPTICAPI_SRC; do
  if [ -n "${!v:-}" ]; then
    [ -d "${!v}" ] || { echo "ERROR: $v=${!v} is not a folder" >&2; exit 1; }
    export "${v?}"
  else
    say "$v is not set: run.sh will clone from GitHub"
  fi
done

# 1. the clean environment
say "work folder: $WORK"
mkdir -p "$REPO"
if git -C "$SRC_ROOT" rev-parse --git-dir >/dev/null 2>&1; then  # the files git does not ignore
  (cd "$SRC_ROOT" && git ls-files -z -co --exclude-standard | while IFS= read -r -d '' f; do
    [ -e "$f" ] && printf '%s\0' "$f"
  done | tar --null -T - -cf -) | tar -C "$REPO" -xf -
else  # not a git checkout (an unpacked archive): all but what runs make
  tar -C "$SRC_ROOT" --exclude=./.venv --exclude=./output --exclude=./datasets --exclude=./build \
    --exclude='*.egg-info' --exclude=__pycache__ --exclude=./panet_d2/model_zoo/configs -cf - . \
    | tar -C "$REPO" -xf -
fi || { echo "ERROR: copying the repository failed" >&2; exit 1; }
python3 -m venv "$WORK/bare" || { echo "ERROR: python3 -m venv failed" >&2; exit 1; }
export PATH="$WORK/bare/bin:$PATH"
unset VIRTUAL_ENV PYTHONPATH PYTHONHOME PANET_D2_PYTHON PANET_D2_VENV PANET_D2_SETUP CONDA_PREFIX
export PIP_CACHE_DIR="$WORK/pip-cache" PANET_D2_DATASETS="$WORK/datasets" PYTHONUNBUFFERED=1
say "python3 on the PATH: $(command -v python3) ($(python3 -c 'import sys; print(sys.version.split()[0])'), no site packages); $(nproc) CPU cores; $(uname -sr)"
python3 -c 'import torch' 2>/dev/null && fail "the fresh virtual environment imports torch"

run() {  # run NAME ARGS...: ./run.sh ARGS in the copy; the output shown and kept with times
  local name=$1 t0 rc prefix=()
  shift
  [ "${1:-}" != test ] || read -r -a prefix <<<"${CHECK_TEST_PREFIX:-}"
  say "---- $name: ./run.sh $* ----"
  t0=$EPOCHREALTIME
  (cd "$REPO" && "${prefix[@]}" ./run.sh "$@") 2>&1 | while IFS= read -r line; do
    printf '%s\n' "$line"
    printf '%7.1f %s\n' "$(bc <<<"$EPOCHREALTIME - $t0")" "$line" >>"$WORK/$name.log"
  done
  rc=${PIPESTATUS[0]}
  WALL=$(bc <<<"($EPOCHREALTIME - $t0) / 1" | cut -d. -f1)
  say "---- $name: exit $rc after $(dur "${WALL:-0}") ----"
  [ "$rc" -eq 0 ] || fail "$name: ./run.sh $* exited $rc (log: $WORK/$name.log)"
  printf '%s %s %s\n' "$name" "$rc" "${WALL:-0}" >>"$WORK/times"
}
first_at() {  # first_at NAME PATTERN: seconds into the run when PATTERN first showed
  grep -m1 -E "^ *[0-9.]+ .*$2" "$WORK/$1.log" | awk '{ print $1 }'
}
venv_state() {  # every file of .venv (but byte code and the lock) and of the pip cache, with times
  (cd "$REPO" && find .venv "$PIP_CACHE_DIR" -path '*/__pycache__' -prune -o -name lock -prune \
    -o -type f -printf '%p %s %T@\n' 2>/dev/null | sort)
}

# 2. from scratch
# shellcheck disable=SC2086  # the arguments: words
run 1-job $JOB_ARGS
grep -q '^ *[0-9.]* \[setup 6/6\]' "$WORK/1-job.log" || fail "1-job did not set up .venv"
# shellcheck disable=SC2086
run 2-test test $TEST_ARGS
grep -q '\[setup [0-9]/6\]' "$WORK/2-test.log" && fail "2-test set something up again"
venv_state >"$WORK/state-before"

# 3. again: nothing installed
# shellcheck disable=SC2086
run 3-job-again $JOB_ARGS
# shellcheck disable=SC2086
run 4-test-again test $RERUN_TEST_ARGS
venv_state >"$WORK/state-after"
for name in 3-job-again 4-test-again; do
  grep -q '\[setup [0-9]/6\]' "$WORK/$name.log" && fail "$name ran a set-up step"
  grep -q 'nothing to install' "$WORK/$name.log" || fail "$name did not say 'nothing to install'"
done
if ! diff -q "$WORK/state-before" "$WORK/state-after" >/dev/null; then
  fail "files of .venv or of the pip cache changed in the second runs: diff $WORK/state-before $WORK/state-after"
fi
start="$(first_at 3-job-again 'Command Line Args')"
[ -n "$start" ] && [ "$(bc <<<"$start < 15")" = 1 ] || fail "the main job started after ${start:-?} s the second time (more than 15 s)"
[ -f "$REPO/output/quick_schedules/panoptic_panet_R_18_synth/model_final.pth" ] || fail "no checkpoint model_final.pth"

# 4. what was seen
say "==== summary ($(nproc) CPU cores; torch: $(grep -m1 -o '[0-9]* CPU threads' "$WORK/1-job.log" || echo '? threads')) ===="
while read -r name rc wall; do
  say "$(printf '%-14s exit %s  %s' "$name" "$rc" "$(dur "$wall")")"
done <"$WORK/times"
say "set-up steps (from scratch):"
grep -E '\[setup [0-9]/6\]' "$WORK/1-job.log" | cut -c9- | sed 's/^/    /'
say "the main job started (train_net.py's first line) after $(first_at 1-job 'Command Line Args') s from scratch, $start s the second time"
for name in 1-job 2-test 3-job-again 4-test-again; do
  say "$name, first and last lines:"
  head -n 3 "$WORK/$name.log" | cut -c9- | cut -c1-200 | sed 's/^/    /'
  echo "    ..."
  tail -n 4 "$WORK/$name.log" | cut -c9- | cut -c1-200 | sed 's/^/    /'
done
if [ -n "$FAILED" ]; then
  say "FAILED:$FAILED"
  exit 1
fi
say "PASSED: both commands from scratch in a clean environment, then again with nothing installed (logs in $WORK)"
