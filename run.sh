#!/usr/bin/env bash
# panet_d2's two commands (README, quick start):
#   ./run.sh        set up what is missing, then the main job: train and evaluate panoptic PANet on
#                   the generated dataset, print the metrics, the checkpoint and the demo command
#   ./run.sh test   set up what is missing, then the whole test suite: lint + python3 -m pytest -q tests
#                   (in pytest-xdist workers, one per core, where it is installed)
# ./run.sh --help says more. Manual installation: docs/install.md.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${PANET_D2_VENV:-$ROOT/.venv}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac  # relative to where run.sh was called from
cd "$ROOT" || exit 1

JOB_CONFIG="configs/quick_schedules/panoptic_panet_R_18_synth.yaml"
JOB_OUTPUT_DIR="output/quick_schedules/panoptic_panet_R_18_synth"  # the config's OUTPUT_DIR
EXTRAS="cityscapes,export,dev"
# what each command imports (import names); "test" also needs the extras (tests and lint)
RUNTIME_MODULES="torch torchvision detectron2 panopticapi fvcore iopath pycocotools cv2 numpy PIL"
RUNTIME_MODULES="$RUNTIME_MODULES yaml tqdm matplotlib psutil pkg_resources"
TEST_MODULES="$RUNTIME_MODULES pytest cityscapesscripts shapely onnx onnxruntime openvino"
TEST_MODULES="$TEST_MODULES black isort flake8"
MIN_PYTHON="3.10"

SETUP_DIR="$VENV/.setup"  # one marker per set-up step (its key inside) and each step's log
SETUP_MODE="${PANET_D2_SETUP:-auto}"

usage() {
  cat <<EOF
Usage:
  ./run.sh [ARGS...]        the main job: train panoptic PANet (ResNet-18, from scratch) on the
                            generated dataset, evaluate it (PQ, box AP, mask AP, mIoU), then print
                            the metrics, the checkpoint and the demo command. ARGS go to
                            train_net.py (options and config keys), e.g.  ./run.sh SOLVER.MAX_ITER 20
  ./run.sh test [ARGS...]   the whole test suite: lint (isort, black -l 100, flake8), then
                            python -m pytest -q tests [ARGS], e.g.  ./run.sh test -k merge
                            (without ARGS: in pytest-xdist workers, one per core, where installed)
  ./run.sh setup            only the set-up
  ./run.sh help             this text

The main job is: train_net.py --config-file $JOB_CONFIG --num-gpus 1

Set-up, before each command: the Python on the PATH (python3, or an active virtual environment)
is used as it is, and nothing is installed, when it imports all that the command needs.
Otherwise a virtual environment is made in the repository ($(rel "$VENV")), once: torch and
torchvision (requirements/torch.txt), Detectron2 and panopticapi from their repositories at
pinned commits (requirements/git.txt) compiled against that torch, then this project with its
extras. Needs Linux, Python >= $MIN_PYTHON, git, a C++ compiler, network access and about 10 GB
of free disk; takes ~5 minutes on 2 CPU cores (4 of them compiling Detectron2) plus downloading
~3 GB (torch with its CUDA libraries). Each step is done once (a marker in $(rel "$SETUP_DIR")); an interrupted set-up goes on where it stopped.
Manual installation: docs/install.md.

Environment variables:
  PANET_D2_PYTHON=python3.12  the Python to use (when it has everything) or to make the venv with
  DETECTRON2_SRC=DIR          a local Detectron2 checkout to clone instead of GitHub's repository
  PANOPTICAPI_SRC=DIR         a local panopticapi checkout to clone instead of GitHub's repository
  TORCH_INDEX_URL=URL         where torch comes from, e.g. https://download.pytorch.org/whl/cpu
  PANET_D2_VENV=DIR           where the virtual environment goes (default: .venv in the repository)
  PANET_D2_SETUP=never        install nothing: fail, naming what is missing (CI uses this)
  PANET_D2_MIN_FREE_GB=N      the free disk space the set-up asks for (default: what it needs)
  PANET_D2_DATASETS=DIR       where the generated dataset goes (default: ~/.cache/panet_d2)
  MAX_JOBS=N                  parallel compile jobs for Detectron2 (default: all cores)
EOF
}

# ---- output --------------------------------------------------------------------------------------
say() { printf '%s\n' "$*"; }
die() {  # one line: what is missing and how to get it
  printf 'ERROR: %s\n' "$*" >&2
  exit 1
}
dur() {  # seconds -> "42 s" / "3 min 7 s"
  local s=$1
  if [ "$s" -lt 60 ]; then printf '%d s' "$s"; else printf '%d min %d s' $((s / 60)) $((s % 60)); fi
}
rel() {  # a path relative to the repository when inside it
  case "$1" in "$ROOT"/*) printf '%s' "${1#"$ROOT"/}" ;; *) printf '%s' "$1" ;; esac
}

# ---- the probe: does a Python have what a command imports? ------------------------------------
# Prints "python VERSION EXE", then "missing MOD..." (exit 1), "d2c ERROR" (detectron2._C does not
# load: built against another torch; exit 2), or "torch VERSION THREADS" (exit 0).
PROBE_PY='
import importlib.util as u, sys
print("python %d.%d.%d %s" % (sys.version_info[:3] + (sys.executable,)))
missing = [m for m in sys.argv[1:] if u.find_spec(m) is None]
if missing:
    print("missing " + " ".join(missing))
    sys.exit(1)
try:
    from detectron2 import _C  # noqa
except Exception as e:
    print("d2c " + ((str(e).splitlines() or [type(e).__name__])[0]))
    sys.exit(2)
import torch
print("torch %s %d" % (torch.__version__, torch.get_num_threads()))
'
PROBE_OUT=""
probe() {  # probe PYTHON MODULES...; sets PROBE_OUT, returns the probe's exit code
  local py=$1
  shift
  PROBE_OUT="$("$py" -c "$PROBE_PY" "$@" 2>&1)"
}
probe_field() { printf '%s\n' "$PROBE_OUT" | sed -n "s/^$1 //p" | head -n 1; }

pip_name() {  # import name -> what to pip install
  case "$1" in
    cv2) printf 'opencv-python-headless' ;;
    PIL) printf 'Pillow' ;;
    yaml) printf 'PyYAML' ;;
    pkg_resources) printf "'setuptools<81'" ;;
    *) printf '%s' "$1" ;;
  esac
}
what_lacks() {  # one phrase for a failed probe
  local missing d2c
  missing="$(probe_field missing)"
  d2c="$(probe_field d2c)"
  if [ -n "$missing" ]; then
    # shellcheck disable=SC2086  # one word each
    set -- $missing
    if [ $# -gt 5 ]; then
      printf 'cannot import %s, %s, %s and %d more' "$1" "$2" "$3" $(($# - 3))
    else
      printf 'cannot import %s' "$(printf '%s' "$missing" | sed 's/ /, /g')"
    fi
  elif [ -n "$d2c" ]; then
    printf 'has a Detectron2 whose compiled extension does not load (built against another torch? detectron2._C: %s)' "$d2c"
  else
    printf 'does not run (%s)' "$(printf '%s' "$PROBE_OUT" | tail -n 1)"
  fi
}
fix_for() {  # how to get what a failed probe lacks, into Python $1
  local py=$1 missing names="" repos="" m
  missing="$(probe_field missing)"
  if [ -n "$missing" ]; then
    for m in $missing; do
      case "$m" in
        detectron2 | panopticapi) repos="$repos${repos:+ and }$m" ;;
        *) names="$names $(pip_name "$m")" ;;
      esac
    done
    [ -z "$names" ] || printf '%s -m pip install%s' "$py" "$names"
    [ -z "$names" ] || [ -z "$repos" ] || printf ', then '
    [ -z "$repos" ] || printf '%s (pip install --no-build-isolation -r requirements/git.txt, as docs/install.md says)' "$repos"
  elif [ -n "$(probe_field d2c)" ]; then
    printf 'rebuild Detectron2 against the installed torch: %s -m pip install --no-build-isolation --force-reinstall --no-deps <detectron2 checkout>' "$py"
  else
    printf 'see docs/install.md'
  fi
}

# ---- set-up checks -------------------------------------------------------------------------------
check_base_python() {  # Python >= 3.10 with venv, for making .venv
  local py=$1 version
  command -v "$py" >/dev/null 2>&1 \
    || die "no Python found ($py): install Python >= $MIN_PYTHON (Debian/Ubuntu: sudo apt install python3 python3-venv python3-dev), or name one: PANET_D2_PYTHON=/path/to/python3 ./run.sh"
  version="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)"
  "$py" -c "import sys; sys.exit(sys.version_info[:2] < (${MIN_PYTHON/./, }))" 2>/dev/null \
    || die "Python $version ($(command -v "$py")) is too old: Python >= $MIN_PYTHON is needed; install one (e.g. sudo apt install python3.12 python3.12-venv python3.12-dev, or pyenv) and run: PANET_D2_PYTHON=python3.12 ./run.sh"
  "$py" -c 'import venv, ensurepip' >/dev/null 2>&1 \
    || die "Python $version ($(command -v "$py")) cannot make virtual environments (no venv/ensurepip): install them (Debian/Ubuntu: sudo apt install python$version-venv)"
}
check_compiler() {  # a C++ compiler that works, and Python's headers (Detectron2 compiles C++)
  local cxx="${CXX:-c++}" include
  command -v "$cxx" >/dev/null 2>&1 \
    || die "no C++ compiler ($cxx) to compile Detectron2: install one (Debian/Ubuntu: sudo apt install build-essential; Fedora: sudo dnf install gcc-c++), or name it: CXX=/path/to/g++ ./run.sh"
  printf 'int main() { return 0; }\n' | "$cxx" -x c++ - -o /dev/null >/dev/null 2>&1 \
    || die "the C++ compiler ($cxx) cannot compile a one-line program: repair or reinstall it (Debian/Ubuntu: sudo apt install build-essential)"
  include="$("$1" -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null)"
  [ -f "$include/Python.h" ] \
    || die "Python's C headers ($include/Python.h) are missing, Detectron2 compiles against them: install them (Debian/Ubuntu: sudo apt install python3-dev, or python3.X-dev for your version)"
}
check_git() {  # check_git NAME
  command -v git >/dev/null 2>&1 \
    || die "git is missing (to fetch $1): install it (Debian/Ubuntu: sudo apt install git), or give a local checkout (${1^^}_SRC=/path/to/$1 ./run.sh)"
}
check_disk() {  # check_disk GB WHAT: free space where .venv goes
  local need="${PANET_D2_MIN_FREE_GB:-$1}" dir free_kb
  dir="$(dirname "$VENV")"
  free_kb="$(df -Pk "$dir" 2>/dev/null | awk 'NR == 2 { print $4 }')"
  [ -n "$free_kb" ] || return 0
  if [ "$free_kb" -lt $((need * 1024 * 1024)) ]; then
    die "not enough free disk space in $dir for $2: $(awk -v k="$free_kb" 'BEGIN { printf "%.1f", k / 1048576 }') GB free, about $need GB needed: free some space or put the repository (or PANET_D2_VENV) on a larger disk"
  fi
}

# ---- set-up steps --------------------------------------------------------------------------------
VPY="$VENV/bin/python"
TORCH_KEY="$(grep -v '^#' requirements/torch.txt 2>/dev/null | tr -s ' \n' ' ')${TORCH_INDEX_URL:+ index $TORCH_INDEX_URL}"
git_pin() {  # git_pin NAME -> "URL COMMIT" from requirements/git.txt
  sed -n "s/^$1 @ git+\(.*\)@\([0-9a-f]\{40\}\)[[:space:]]*\$/\1 \2/p" requirements/git.txt | head -n 1
}
read -r D2_URL D2_COMMIT <<<"$(git_pin detectron2)"
read -r PANOPTICAPI_URL PANOPTICAPI_COMMIT <<<"$(git_pin panopticapi)"
PROJECT_KEY="$(cksum <setup.py | cut -d' ' -f1) $EXTRAS"
STEP_NAMES=(venv tools torch detectron2 panopticapi project)

step_key() {  # what a step's marker holds: a step is redone when its key changes
  case "$1" in
    venv) printf 'python %s' "$BASE_VERSION" ;;
    tools) printf 'setuptools<81 wheel ninja' ;;
    torch) printf '%s' "$TORCH_KEY" ;;
    detectron2) printf '%s %s (%s)' "$D2_COMMIT" "${DETECTRON2_SRC:-$D2_URL}" "$TORCH_KEY" ;;
    panopticapi) printf '%s %s' "$PANOPTICAPI_COMMIT" "${PANOPTICAPI_SRC:-$PANOPTICAPI_URL}" ;;
    project) printf '%s' "$PROJECT_KEY" ;;
  esac
}
step_done() { [ -f "$SETUP_DIR/$1.done" ] && [ "$(cat "$SETUP_DIR/$1.done")" = "$(step_key "$1")" ]; }
step_title() {
  case "$1" in
    venv) printf 'virtual environment %s (Python %s)' "$(rel "$VENV")" "$BASE_VERSION" ;;
    tools) printf 'build tools (pip, setuptools<81, wheel, ninja)' ;;
    torch) printf '%s (requirements/torch.txt)' "$(grep -v '^#' requirements/torch.txt | paste -sd' ')" ;;
    detectron2) printf 'Detectron2 %s, compiled against that torch (~4 min on 2 cores)' "${D2_COMMIT:0:7}" ;;
    panopticapi) printf 'panopticapi %s' "${PANOPTICAPI_COMMIT:0:7}" ;;
    project) printf 'panet_d2 and its extras (pip install -e .[%s])' "$EXTRAS" ;;
  esac
}

vpip() { "$VPY" -m pip "$@"; }
do_venv() {  # (anew: the steps after it are redone)
  find "$SETUP_DIR" -name '*.done' -delete
  rm -rf "${VENV:?}/bin" "${VENV:?}/lib" "${VENV:?}/lib64" "${VENV:?}/include" "${VENV:?}/pyvenv.cfg"
  "$BASE_PY" -m venv "$VENV" && "$VPY" -c 'import sys; print(sys.version)'
}
do_tools() {  # the first download: a short timeout, so that no network is said at once
  vpip install --timeout 15 --retries 1 --upgrade 'pip>=23' 'setuptools<81' wheel ninja
}
do_torch() { vpip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} -r requirements/torch.txt; }
fetch_source() {  # fetch_source NAME URL COMMIT SRC -> prints the folder to build
  local name=$1 url=$2 commit=$3 src=$4 dir="$VENV/src/$1"
  if [ -n "$src" ] && ! git -C "$src" rev-parse --git-dir >/dev/null 2>&1; then
    [ -d "$src" ] || { echo "no such folder: $src" >&2; return 1; }
    echo "$src is not a git checkout: building it as it is" >&2
    printf '%s' "$src"
    return 0
  fi
  if [ "$(git -C "$dir" rev-parse HEAD 2>/dev/null)" != "$commit" ]; then
    rm -rf "$dir"
    if [ -n "$src" ]; then  # a local checkout stands in for the repository: clone it (hard links)
      git clone -q --no-checkout "$src" "$dir" >&2 || return 1
    else  # only the pinned commit, else the whole history
      mkdir -p "$dir" && git -C "$dir" init -q && git -C "$dir" remote add origin "$url" || return 1
      git -C "$dir" fetch -q --depth 1 origin "$commit" >&2 || git -C "$dir" fetch -q origin >&2 || return 1
    fi
    git -C "$dir" -c advice.detachedHead=false checkout -q "$commit" >&2 \
      || { echo "MISSING COMMIT $commit in ${src:-$url}" >&2; return 1; }
  fi
  echo "$name at $(git -C "$dir" rev-parse HEAD) in $dir" >&2
  printf '%s' "$dir"
}
do_detectron2() {
  local dir
  dir="$(fetch_source detectron2 "$D2_URL" "$D2_COMMIT" "${DETECTRON2_SRC:-}")" || return 1
  vpip install --no-build-isolation "$dir" || return 1
  "$VPY" -c 'from detectron2 import _C; print("detectron2._C loads")' || { echo "D2C IMPORT FAILED"; return 1; }
}
do_panopticapi() {
  local dir
  dir="$(fetch_source panopticapi "$PANOPTICAPI_URL" "$PANOPTICAPI_COMMIT" "${PANOPTICAPI_SRC:-}")" || return 1
  vpip install --no-build-isolation "$dir"
}
do_project() { vpip install --no-build-isolation -e ".[$EXTRAS]"; }

diagnose() {  # diagnose STEP LOG: one line saying what went wrong and how to get it right
  local step=$1 log=$2 where index
  where="(log: $(rel "$log"))"
  index="${PIP_INDEX_URL:-$(vpip config get global.index-url 2>/dev/null || echo https://pypi.org/simple)}"
  if grep -qiE 'No space left on device' "$log"; then
    die "the disk is full ($(dirname "$VENV")): free some space and run ./run.sh again $where"
  elif grep -qiE 'Failed to establish a new connection|Temporary failure in name resolution|Name or service not known|Network is unreachable|ConnectTimeoutError|Read timed out|ProxyError|SSLError|Could not fetch URL' "$log"; then
    die "no network: pip cannot reach the package index ($index): connect to the internet, or point pip to a mirror (PIP_INDEX_URL=...) or a folder of wheels (PIP_FIND_LINKS=...), then run ./run.sh again $where"
  elif grep -qE 'Could not resolve host|unable to access|Could not read from remote' "$log"; then
    die "git cannot reach ${step}'s repository: connect to the internet, or give a local checkout: ${step^^}_SRC=/path/to/$step ./run.sh $where"
  elif grep -q 'MISSING COMMIT' "$log"; then
    die "$(grep 'MISSING COMMIT' "$log" | head -n 1 | sed 's/MISSING COMMIT/the pinned commit/; s/ in / is not in /'): update that checkout (git fetch) or give another $where"
  elif grep -q 'Python.h: No such file' "$log"; then
    die "Python's C headers are missing: install them (Debian/Ubuntu: sudo apt install python3-dev) $where"
  elif grep -qE 'No matching distribution found for (torch|torchvision)' "$log"; then
    die "no $(grep -oE 'No matching distribution found for [^ ]+' "$log" | head -n 1 | sed 's/.* for //') for Python $BASE_VERSION on this machine: use a Python that torch supports (PANET_D2_PYTHON=python3.12 ./run.sh) or change requirements/torch.txt $where"
  elif grep -q 'D2C IMPORT FAILED' "$log"; then
    die "Detectron2 was compiled but detectron2._C does not load against the installed torch: rm -rf $(rel "$VENV")/src/detectron2/build and run ./run.sh again $where"
  elif grep -qE 'Killed signal terminated program|fatal error: Killed|internal compiler error: Killed' "$log"; then
    die "the compiler ran out of memory: compile with fewer jobs: MAX_JOBS=1 ./run.sh $where"
  fi
  say "---- the last lines of $(rel "$log") ----" >&2
  tail -n 25 "$log" >&2
  die "set-up step '$step' failed $where: fix what the lines above say and run ./run.sh again (the steps done are kept)"
}

run_step() {  # run_step NUMBER NAME
  local n=$1 name=$2 key log t0 marker
  key="$(step_key "$name")"
  marker="$SETUP_DIR/$name.done"
  log="$SETUP_DIR/$name.log"
  if step_done "$name"; then
    say "[setup $n/${#STEP_NAMES[@]}] $(step_title "$name"): done before"
    return 0
  fi
  rm -f "$marker"
  printf '[setup %d/%d] %s ... ' "$n" "${#STEP_NAMES[@]}" "$(step_title "$name")"
  t0=$SECONDS
  if "do_$name" >"$log" 2>&1; then
    printf '%s\n' "$key" >"$marker"
    say "$(dur $((SECONDS - t0)))"
  else
    say "FAILED after $(dur $((SECONDS - t0)))"
    diagnose "$name" "$log"
  fi
}

setup_venv() {  # set up .venv step by step (each once)
  local i name t0=$SECONDS need=0
  BASE_PY="$(command -v "$BASE_PY" 2>/dev/null || printf '%s' "$BASE_PY")"
  check_base_python "$BASE_PY"
  BASE_VERSION="$("$BASE_PY" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
  mkdir -p "$SETUP_DIR" || die "cannot write $SETUP_DIR: run from a writable copy of the repository, or set PANET_D2_VENV=DIR"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$SETUP_DIR/lock"
    LOCKED=1
    flock -n 9 || { say "[setup] another ./run.sh is setting up $(rel "$VENV"): waiting for it"; flock 9; }
  fi
  [ -n "$D2_COMMIT" ] && [ -n "$PANOPTICAPI_COMMIT" ] \
    || die "requirements/git.txt does not pin Detectron2 and panopticapi (NAME @ git+URL@COMMIT): restore it (git checkout requirements/git.txt)"
  if [ -f "$SETUP_DIR/venv.done" ] && ! step_done venv; then
    say "[setup] $(rel "$VENV") was made with another Python ($(cat "$SETUP_DIR/venv.done")): making it anew"
    find "$SETUP_DIR" -name '*.done' -delete
  fi
  # check everything the remaining steps need before the first of them starts
  step_done torch || need=$((need + 7))
  step_done detectron2 || need=$((need + 2))
  step_done project || need=$((need + 1))
  [ "$need" -eq 0 ] || check_disk "$need" "the set-up (torch with its CUDA libraries ~7 GB, Detectron2's build ~2 GB, the rest ~1 GB)"
  if ! step_done detectron2; then
    check_compiler "$BASE_PY"
    [ -n "${DETECTRON2_SRC:-}" ] && [ ! -e "$DETECTRON2_SRC/.git" ] || check_git detectron2
  fi
  if ! step_done panopticapi; then
    [ -n "${PANOPTICAPI_SRC:-}" ] && [ ! -e "$PANOPTICAPI_SRC/.git" ] || check_git panopticapi
  fi
  step_done torch \
    || say "[setup] once: ~5 min on 2 CPU cores and ~3 GB to download, ~7 GB of disk (each step's log: $(rel "$SETUP_DIR")/STEP.log)"
  for i in "${!STEP_NAMES[@]}"; do
    name="${STEP_NAMES[$i]}"
    [ "$name" = detectron2 ] && ! step_done detectron2 && check_disk 2 "compiling Detectron2"
    run_step $((i + 1)) "$name"
  done
  [ -z "${LOCKED:-}" ] || exec 9>&-  # the lock, for the set-up only
  say "[setup] $(rel "$VENV") is set up ($(dur $((SECONDS - t0))))"
}

invalidate_for() {  # a set-up .venv that lacks something: redo the steps that install it
  local missing m
  missing="$(probe_field missing)"
  [ -n "$(probe_field d2c)" ] && rm -f "$SETUP_DIR/detectron2.done"
  for m in $missing; do
    case "$m" in
      torch | torchvision) rm -f "$SETUP_DIR/torch.done" "$SETUP_DIR/detectron2.done" ;;
      detectron2 | panopticapi) rm -f "$SETUP_DIR/$m.done" ;;
      pkg_resources) rm -f "$SETUP_DIR/tools.done" ;;
      *) rm -f "$SETUP_DIR/project.done" ;;
    esac
  done
  [ -n "$missing$(probe_field d2c)" ] || rm -f "$SETUP_DIR"/*.done
}

# PY: the Python that runs the command (after the set-up); PY_SHOWN: how to type it
choose_python() {  # choose_python MODULES...
  local cand t0=$SECONDS i
  if [ -n "${PANET_D2_PYTHON:-}" ]; then
    cand="$PANET_D2_PYTHON"
  elif [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
    cand="$VIRTUAL_ENV/bin/python"
  else
    cand=python3
  fi
  BASE_PY="$cand"
  if command -v "$cand" >/dev/null 2>&1 && probe "$cand" "$@"; then
    PY="$(command -v "$cand")"
    PY_SHOWN="$cand"
    [ "$PY" = "$VPY" ] && PY_SHOWN="$(rel "$VPY")"
    say "[setup] nothing to install: $PY_SHOWN ($(probe_field python | cut -d' ' -f2), Python $(probe_field python | cut -d' ' -f1), torch $(probe_field torch | cut -d' ' -f1)) has everything ($(dur $((SECONDS - t0))))"
    return 0
  fi
  local lacks
  if command -v "$cand" >/dev/null 2>&1; then lacks="$(what_lacks)"; else lacks="is not installed"; fi
  if [ "$SETUP_MODE" = never ]; then
    die "$cand ($(command -v "$cand" || echo 'not found')) $lacks; PANET_D2_SETUP=never: nothing is installed. Install it: $(fix_for "$cand"), or run ./run.sh without PANET_D2_SETUP=never to set up $(rel "$VENV")"
  fi
  if [ "$(command -v "$cand")" != "$VPY" ]; then
    if [ -x "$VPY" ] && step_done project && probe "$VPY" "$@"; then
      PY="$VPY"
      PY_SHOWN="$(rel "$VPY")"
      say "[setup] nothing to install: $PY_SHOWN is set up (Python $(probe_field python | cut -d' ' -f1), torch $(probe_field torch | cut -d' ' -f1)) ($(dur $((SECONDS - t0))))"
      return 0
    fi
    if [ -x "$VPY" ] && step_done project; then
      say "[setup] $cand ($(command -v "$cand" || echo 'not found')) $lacks: using $(rel "$VENV") instead"
    else
      say "[setup] $cand ($(command -v "$cand" || echo 'not found')) $lacks: setting up $(rel "$VENV") instead"
    fi
  else
    BASE_PY="$(sed -n 's/^home = //p' "$VENV/pyvenv.cfg" 2>/dev/null)/python3"
  fi
  if [ -x "$VPY" ] && step_done project; then  # set up before, but something broke since
    probe "$VPY" "$@"
    say "[setup] $(rel "$VPY") $(what_lacks): redoing the steps that install it"
    invalidate_for
  fi
  setup_venv
  for i in 1 2; do
    probe "$VPY" "$@" && break
    [ "$i" = 2 ] && die "$(rel "$VPY") $(what_lacks) after the set-up: $(fix_for "$(rel "$VPY")")"
    invalidate_for
    setup_venv
  done
  PY="$VPY"
  PY_SHOWN="$(rel "$VPY")"
  say "[setup] using $PY_SHOWN (Python $(probe_field python | cut -d' ' -f1), torch $(probe_field torch | cut -d' ' -f1))"
}

# ---- the commands --------------------------------------------------------------------------------
SUMMARY_PY='
import json, math, os, sys
out = sys.argv[1]
rec = {}
try:
    with open(os.path.join(out, "metrics.json")) as f:
        for line in f:
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if any(k.split("/")[0] in ("panoptic_seg", "bbox", "segm", "sem_seg") for k in d):
                rec = d
except OSError:
    pass
def v(k):
    x = rec.get(k)
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else "%.1f" % x
parts = []
if "panoptic_seg/PQ" in rec:
    parts.append("PQ %s (things %s, stuff %s)" % tuple(v("panoptic_seg/PQ" + s) for s in ("", "_th", "_st")))
for key, name in (("bbox/AP", "box AP"), ("segm/AP", "mask AP"), ("sem_seg/mIoU", "mIoU")):
    if key in rec:
        parts.append("%s %s" % (name, v(key)))
dataset, images = "?", ""
try:
    import yaml
    with open(os.path.join(out, "config.yaml")) as f:
        dataset = yaml.safe_load(f)["DATASETS"]["TEST"][0]
    import logging
    logging.disable(logging.WARNING)
    import panet_d2  # noqa: registers the generated dataset
    from detectron2.data import MetadataCatalog
    images = MetadataCatalog.get(dataset).get("image_root", "")
except Exception:
    pass
print("metrics on %s (iteration %s): %s" % (dataset, rec.get("iteration", "?"), ", ".join(parts) or "none found in metrics.json"))
print("images: " + images)
'

job_output_dir() {  # the OUTPUT_DIR of the job's arguments, else the config's
  local dir="$JOB_OUTPUT_DIR" prev="" a
  for a in "$@"; do
    [ "$prev" = OUTPUT_DIR ] && dir="$a"
    prev="$a"
  done
  printf '%s' "$dir"
}

run_job() {
  local out rc t0 summary images weights
  out="$(job_output_dir "$@")"
  say "[job] $PY_SHOWN train_net.py --config-file $JOB_CONFIG --num-gpus 1${*:+ $*}"
  say "[job] training, then evaluation; its log also goes to $out/log.txt"
  t0=$SECONDS
  "$PY" train_net.py --config-file "$JOB_CONFIG" --num-gpus 1 "$@"
  rc=$?
  if [ "$rc" -ne 0 ]; then
    printf 'ERROR: the main job stopped (exit %s) after %s: its messages are above and in %s/log.txt\n' \
      "$rc" "$(dur $((SECONDS - t0)))" "$out" >&2
    exit "$rc"
  fi
  summary="$("$PY" -c "$SUMMARY_PY" "$out" 2>/dev/null)"
  images="$(printf '%s\n' "$summary" | sed -n 's/^images: //p')"
  [ -n "$images" ] || images="${PANET_D2_DATASETS:-~/.cache/panet_d2}/v1_val_seed7_n16_192x192/images"
  weights="$out/model_final.pth"
  [ -f "$weights" ] || weights="$out/$(cat "$out/last_checkpoint" 2>/dev/null)"
  say ""
  say "==== the main job: done in $(dur $((SECONDS - t0))) ($(probe_field torch | cut -d' ' -f2) CPU threads, torch $(probe_field torch | cut -d' ' -f1)) ===="
  printf '%s\n' "$summary" | grep '^metrics' || say "metrics: see $out/log.txt"
  say "checkpoint: $weights  (log.txt, metrics.json beside it)"
  say "demo on it: $PY_SHOWN demo.py --config-file $JOB_CONFIG --input $images/ --output output/demo/ --opts MODEL.WEIGHTS $weights"
}

run_tests() {
  local rc t0=$SECONDS lint_rc=0 a default=tests
  say "[test] lint: isort, black -l 100, flake8 (settings in setup.cfg)"
  "$PY" -m isort --check-only --diff --extend-skip .venv . || lint_rc=1
  "$PY" -m black --check -l 100 --extend-exclude '(/\.venv/|\.ipynb$)' . || lint_rc=1
  "$PY" -m flake8 --extend-exclude .venv . || lint_rc=1
  if [ "$lint_rc" -ne 0 ]; then
    die "lint failed (fix with: $PY_SHOWN -m isort . && $PY_SHOWN -m black -l 100 . && $PY_SHOWN -m flake8)"
  fi
  for a in "$@"; do  # a test file or folder given: only that
    case "$a" in tests/* | ./tests/*) [ -e "${a%%::*}" ] && default="" ;; esac
  done
  # the whole suite in worker processes, one per core (at most 4), where pytest-xdist is installed
  # (the dev extra): each test file in one worker, one's waits for its commands overlap the other's
  if [ -n "$default" ] && [ $# -eq 0 ] && "$PY" -c "import xdist" 2>/dev/null; then
    a="$(nproc 2>/dev/null || echo 1)"
    [ "$a" -gt 4 ] && a=4
    [ "$a" -ge 2 ] && set -- -n "$a" --dist loadfile
  fi
  say "[test] $PY_SHOWN -m pytest -q${default:+ $default}${*:+ $*}"
  "$PY" -m pytest -q ${default:+"$default"} "$@"
  rc=$?
  if [ "$rc" -eq 5 ]; then
    die "pytest collected no tests"
  elif [ "$rc" -ne 0 ]; then
    die "the test suite failed (pytest exit $rc, after $(dur $((SECONDS - t0)))): the failures are listed above"
  fi
  say "[test] lint and tests passed in $(dur $((SECONDS - t0)))"
}

main() {
  local cmd=job
  case "${1:-}" in
    help | -h | --help) usage; return 0 ;;
    test | setup | job) cmd=$1; shift ;;
    [a-z]*) die "unknown command '$1': ./run.sh [TRAIN_NET_ARGS], ./run.sh test [PYTEST_ARGS], ./run.sh setup" ;;
  esac
  case "$SETUP_MODE" in auto | never) ;; *) die "PANET_D2_SETUP=$SETUP_MODE: use auto (the default) or never" ;; esac
  # shellcheck disable=SC2086  # (the module lists: one word each)
  if [ "$cmd" = test ] || [ "$cmd" = setup ]; then choose_python $TEST_MODULES; else choose_python $RUNTIME_MODULES; fi
  case "$cmd" in
    job) run_job "$@" ;;
    test) run_tests "$@" ;;
    setup) say "set up: run the main job with ./run.sh, the tests with ./run.sh test" ;;
  esac
}

main "$@"
