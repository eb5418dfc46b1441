#!/usr/bin/env bash
# install_horovod.sh - build and install Horovod 0.28.1 into the current Python
# environment ($PYTHON, else `python` on PATH) against the TensorFlow already
# installed there (tested with TensorFlow 2.21 / Keras 3).
#
# PyPI only has a Horovod source distribution, and it does not build as is:
#   * pip's cmake 4.x rejects the bundled gloo, so CMAKE_POLICY_VERSION_MINIMUM=3.5;
#   * horovod/tensorflow/xla_mpi_ops.cc (GPU-only XLA custom-call ops, unused
#     unless HOROVOD_ENABLE_XLA_OPS=1) no longer compiles against TF >= 2.21,
#     so it is removed from TF_SOURCES in the unpacked sdist.
# Always builds TensorFlow + Gloo; MPI and NCCL are auto-detected (below).
# Idempotent: exits 0 without building when a working Horovod with TensorFlow,
# Gloo (and whatever else was selected) is already installed. At the end it
# checks `horovodrun --check-build` and runs a 2-rank Gloo allreduce on loopback.
#
# Environment knobs:
#   PYTHON                      interpreter to install into (default: python)
#   DIST_AE_HOROVOD_VERSION     Horovod version (default: 0.28.1)
#   DIST_AE_HOROVOD_WITH_MPI    1/0: force MPI on/off (default: on iff mpicxx
#                               or mpicc is on PATH)
#   DIST_AE_HOROVOD_WITH_NCCL   1/0: force NCCL GPU ops on/off (default: on iff
#                               CUDA is present AND nccl.h + libnccl are found)
#   HOROVOD_NCCL_HOME           NCCL install prefix (include/nccl.h, lib/libnccl*)
#   DIST_AE_HOROVOD_FORCE       1: rebuild even if Horovod already works
#   DIST_AE_HOROVOD_JOBS        parallel compile jobs (default: nproc); ignored
#                               if MAKEFLAGS is set
#   DIST_AE_HOROVOD_SKIP_CHECKS 1: after building, skip the run-time checks
#                               (hvd.init(), horovodrun --check-build, the 2-rank
#                               smoke test), for builds where Horovod cannot run
#                               yet, e.g. `docker build` of an NCCL image on a
#                               host without a GPU driver (default: 0, check)
#
# GPU users: install CUDA + NCCL, then e.g.
#   HOROVOD_NCCL_HOME=/usr/local/nccl DIST_AE_HOROVOD_WITH_NCCL=1 \
#     launch/install_horovod.sh
# which builds with HOROVOD_GPU_OPERATIONS=NCCL (pass DIST_AE_HOROVOD_FORCE=1
# to replace an existing CPU-only build).
set -euo pipefail

log() { echo "install_horovod: $*"; }
die() {
    echo "install_horovod: ERROR: $*" >&2
    exit 1
}

PY="${PYTHON:-python}"
HVD_VERSION="${DIST_AE_HOROVOD_VERSION:-0.28.1}"

command -v "$PY" >/dev/null 2>&1 || die "python interpreter '$PY' not found (set PYTHON)"
PY_EXE="$("$PY" -c 'import sys; print(sys.executable)')" || die "cannot run '$PY'"
log "python: $PY_EXE ($("$PY_EXE" -c 'import platform; print(platform.python_version())'))"

# One interpreter start (TensorFlow takes seconds to import): TF's version, then
# whether an installed Horovod imports and initialises.
PROBE_PY='
import tensorflow as tf
print("tf=" + tf.__version__, flush=True)
try:
    import horovod
    import horovod.tensorflow as hvd
    hvd.init()
    print("hvd=" + horovod.__version__, flush=True)
except Exception:
    print("hvd=", flush=True)
'
PROBE="$("$PY_EXE" -c "$PROBE_PY" 2>/dev/null || true)"
TF_VERSION="$(sed -n 's/^tf=//p' <<<"$PROBE")"
HVD_INSTALLED="$(sed -n 's/^hvd=//p' <<<"$PROBE")"
[[ -n "$TF_VERSION" ]] || die "TensorFlow is not importable with $PY_EXE; install tensorflow first"
log "tensorflow: $TF_VERSION; working horovod.tensorflow: ${HVD_INSTALLED:-none}"

# horovodrun is installed next to the interpreter's scripts; fall back to PATH.
find_horovodrun() {
    local scripts
    scripts="$("$PY_EXE" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
    if [[ -x "$scripts/horovodrun" ]]; then
        echo "$scripts/horovodrun"
    elif command -v horovodrun >/dev/null 2>&1; then
        command -v horovodrun
    else
        return 1
    fi
}

bool_knob() { # bool_knob NAME VALUE -> prints 0/1/auto
    case "$2" in
        "") echo auto ;;
        0 | 1) echo "$2" ;;
        *) die "$1 must be 0 or 1, got '$2'" ;;
    esac
}

# ---------------------------------------------------------------- options ---
WANT_MPI="$(bool_knob DIST_AE_HOROVOD_WITH_MPI "${DIST_AE_HOROVOD_WITH_MPI:-}")"
if [[ "$WANT_MPI" == auto ]]; then
    if command -v mpicxx >/dev/null 2>&1 || command -v mpicc >/dev/null 2>&1; then
        WANT_MPI=1
    else
        WANT_MPI=0
    fi
fi

cuda_present() {
    command -v nvcc >/dev/null 2>&1 || [[ -n "${CUDA_HOME:-}" && -d "${CUDA_HOME:-}" ]] \
        || [[ -d /usr/local/cuda ]]
}

# Prints the directory holding nccl.h if both the header and a linkable libnccl
# (libnccl.so or libnccl_static.a, what Horovod's FindNCCL.cmake looks for) exist.
find_nccl() {
    local d inc="" lib=""
    local cuda_root="${CUDA_HOME:-/usr/local/cuda}"
    for d in ${HOROVOD_NCCL_INCLUDE:+"$HOROVOD_NCCL_INCLUDE"} \
        ${HOROVOD_NCCL_HOME:+"$HOROVOD_NCCL_HOME/include"} \
        "$cuda_root/include" /usr/local/cuda/include /usr/local/include /usr/include; do
        if [[ -f "$d/nccl.h" ]]; then
            inc="$d"
            break
        fi
    done
    for d in ${HOROVOD_NCCL_LIB:+"$HOROVOD_NCCL_LIB"} \
        ${HOROVOD_NCCL_HOME:+"$HOROVOD_NCCL_HOME/lib"} \
        ${HOROVOD_NCCL_HOME:+"$HOROVOD_NCCL_HOME/lib64"} \
        "$cuda_root/lib64" "$cuda_root/lib" /usr/local/cuda/lib64 \
        /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64 /usr/lib /usr/local/lib; do
        if [[ -e "$d/libnccl.so" || -e "$d/libnccl_static.a" ]]; then
            lib="$d"
            break
        fi
    done
    [[ -n "$inc" && -n "$lib" ]] || return 1
    echo "$inc (lib: $lib)"
}

WANT_NCCL="$(bool_knob DIST_AE_HOROVOD_WITH_NCCL "${DIST_AE_HOROVOD_WITH_NCCL:-}")"
NCCL_WHY=""
if [[ "$WANT_NCCL" == auto ]]; then
    if ! cuda_present; then
        WANT_NCCL=0
        NCCL_WHY="no CUDA toolkit found"
    elif nccl_loc="$(find_nccl)"; then
        WANT_NCCL=1
        NCCL_WHY="CUDA present, nccl.h in $nccl_loc"
    else
        WANT_NCCL=0
        NCCL_WHY="CUDA present but no nccl.h + libnccl found (set HOROVOD_NCCL_HOME)"
    fi
else
    NCCL_WHY="forced by DIST_AE_HOROVOD_WITH_NCCL=$WANT_NCCL"
fi

SKIP_CHECKS="$(bool_knob DIST_AE_HOROVOD_SKIP_CHECKS "${DIST_AE_HOROVOD_SKIP_CHECKS:-}")"
if [[ "$SKIP_CHECKS" == auto ]]; then SKIP_CHECKS=0; fi

REQUIRED_FEATURES=(TensorFlow Gloo)
if [[ "$WANT_MPI" == 1 ]]; then REQUIRED_FEATURES+=(MPI); fi
if [[ "$WANT_NCCL" == 1 ]]; then REQUIRED_FEATURES+=(NCCL); fi

log "options: TensorFlow=1 Gloo=1 MPI=$WANT_MPI NCCL=$WANT_NCCL ($NCCL_WHY)"

# ----------------------------------------------------------------- checks ---
CHECK_OUT=""
# check_build: runs `horovodrun --check-build`, stores output in CHECK_OUT and
# succeeds iff every feature in REQUIRED_FEATURES is marked [X].
check_build() {
    local hvdrun feature missing=()
    hvdrun="$(find_horovodrun)" || {
        CHECK_OUT="horovodrun not found"
        return 1
    }
    CHECK_OUT="$("$hvdrun" --check-build 2>&1)" || return 1
    for feature in "${REQUIRED_FEATURES[@]}"; do
        grep -Eq "^[[:space:]]*\[X\] ${feature}\$" <<<"$CHECK_OUT" || missing+=("$feature")
    done
    if ((${#missing[@]})); then
        CHECK_OUT+=$'\n'"missing: ${missing[*]}"
        return 1
    fi
}

already_installed() {
    [[ -n "$HVD_INSTALLED" ]] && check_build
}

SMOKE_PY='
import horovod.tensorflow as hvd
import tensorflow as tf
hvd.init()
size, rank = hvd.size(), hvd.rank()
assert size == 2, "expected 2 ranks, got %d" % size
out = hvd.allreduce(tf.constant([float(rank), 1.0]), op=hvd.Sum).numpy().tolist()
want = [float(sum(range(size))), float(size)]
assert out == want, "rank %d: allreduce gave %s, want %s" % (rank, out, want)
print("install_horovod: smoke rank %d/%d allreduce(Sum) -> %s OK" % (rank, size, out))
'

smoke_test() {
    local hvdrun out rc=0
    hvdrun="$(find_horovodrun)" || die "horovodrun not found after install"
    log "smoke test: horovodrun -np 2 -H localhost:2 --gloo (2 ranks on loopback)"
    out="$(timeout 600 "$hvdrun" -np 2 -H localhost:2 --gloo "$PY_EXE" -c "$SMOKE_PY" 2>&1)" || rc=$?
    if ((rc != 0)) || [[ "$(grep -c 'allreduce(Sum) .* OK$' <<<"$out")" != 2 ]]; then
        echo "$out" >&2
        die "2-rank smoke test failed (exit $rc; full output above)"
    fi
    # TensorFlow's start-up chatter is dropped; the ranks' own lines are kept.
    grep 'install_horovod: smoke' <<<"$out"
    log "smoke test passed"
}

if [[ "${DIST_AE_HOROVOD_FORCE:-0}" != 1 ]] && already_installed; then
    log "Horovod $HVD_INSTALLED is already installed with ${REQUIRED_FEATURES[*]}; nothing to do"
    exit 0
fi

# ------------------------------------------------------------------ build ---
WORK="$(mktemp -d "${TMPDIR:-/tmp}/install_horovod.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
BUILD_LOG="$WORK/pip-build.log"

log "installing build tools (cmake wheel setuptools packaging)"
"$PY_EXE" -m pip install -q cmake wheel setuptools packaging >"$WORK/pip-tools.log" 2>&1 || {
    tail -n 40 "$WORK/pip-tools.log" >&2
    die "pip install of build tools failed"
}
command -v g++ >/dev/null 2>&1 || command -v c++ >/dev/null 2>&1 \
    || die "no C++ compiler (g++) on PATH; apt-get install g++"

log "downloading horovod==$HVD_VERSION sdist"
"$PY_EXE" -m pip download -q --no-deps --no-binary :all: "horovod==$HVD_VERSION" -d "$WORK/dl" \
    >"$WORK/pip-download.log" 2>&1 || {
    tail -n 40 "$WORK/pip-download.log" >&2
    die "pip download horovod==$HVD_VERSION failed"
}
SDIST="$WORK/dl/horovod-$HVD_VERSION.tar.gz"
[[ -f "$SDIST" ]] || die "expected $SDIST after download, got: $(ls "$WORK/dl")"
tar -xzf "$SDIST" -C "$WORK"
SRC="$WORK/horovod-$HVD_VERSION"
[[ -d "$SRC" ]] || die "unpacked sdist has no $SRC"

# Drop xla_mpi_ops.cc (GPU XLA custom-call ops; does not compile against TF 2.21).
TF_CMAKE="$SRC/horovod/tensorflow/CMakeLists.txt"
# shellcheck disable=SC2016 # literal CMake text, ${...} must not expand
XLA_LINE='list(APPEND TF_SOURCES "${PROJECT_SOURCE_DIR}/horovod/tensorflow/xla_mpi_ops.cc")'
[[ -f "$TF_CMAKE" ]] || die "$TF_CMAKE not found in sdist"
n="$(grep -cxF "$XLA_LINE" "$TF_CMAKE" || true)"
[[ "$n" == 1 ]] || die "expected exactly one line '$XLA_LINE' in $TF_CMAKE, found $n; the patch needs updating for horovod $HVD_VERSION"
grep -vxF "$XLA_LINE" "$TF_CMAKE" >"$TF_CMAKE.new"
mv "$TF_CMAKE.new" "$TF_CMAKE"
if grep -q 'xla_mpi_ops\.cc' "$TF_CMAKE"; then
    die "xla_mpi_ops.cc still referenced in $TF_CMAKE after patching"
fi
log "patched $TF_CMAKE: removed xla_mpi_ops.cc from TF_SOURCES"

BUILD_ENV=(
    CMAKE_POLICY_VERSION_MINIMUM=3.5
    HOROVOD_WITH_TENSORFLOW=1
    HOROVOD_WITH_GLOO=1
    HOROVOD_WITHOUT_PYTORCH=1
    HOROVOD_WITHOUT_MXNET=1
)
if [[ "$WANT_MPI" == 1 ]]; then
    BUILD_ENV+=(HOROVOD_WITH_MPI=1)
else
    BUILD_ENV+=(HOROVOD_WITHOUT_MPI=1)
fi
if [[ "$WANT_NCCL" == 1 ]]; then
    BUILD_ENV+=(HOROVOD_GPU_OPERATIONS=NCCL)
    if [[ -n "${HOROVOD_NCCL_HOME:-}" ]]; then
        BUILD_ENV+=("HOROVOD_NCCL_HOME=$HOROVOD_NCCL_HOME")
    fi
fi
if [[ -z "${MAKEFLAGS:-}" ]]; then
    BUILD_ENV+=("MAKEFLAGS=-j${DIST_AE_HOROVOD_JOBS:-$(nproc)}")
fi

log "building horovod $HVD_VERSION with: ${BUILD_ENV[*]}"
log "build log: $BUILD_LOG (takes a few minutes)"
start=$SECONDS
# Horovod feature variables from the caller's environment are dropped so they
# cannot contradict the options chosen above.
if ! env -u HOROVOD_GPU_OPERATIONS -u HOROVOD_WITH_MPI -u HOROVOD_WITHOUT_MPI \
    -u HOROVOD_WITHOUT_GLOO -u HOROVOD_WITHOUT_TENSORFLOW "${BUILD_ENV[@]}" \
    "$PY_EXE" -m pip install -v --no-build-isolation --no-cache-dir "$SRC" \
    >"$BUILD_LOG" 2>&1; then
    echo "install_horovod: ---- last 60 lines of $BUILD_LOG ----" >&2
    tail -n 60 "$BUILD_LOG" >&2
    cp "$BUILD_LOG" "${TMPDIR:-/tmp}/install_horovod-build.log" 2>/dev/null \
        && echo "install_horovod: full log kept at ${TMPDIR:-/tmp}/install_horovod-build.log" >&2
    die "building horovod $HVD_VERSION failed after $((SECONDS - start)) s"
fi
log "built and installed horovod $HVD_VERSION in $((SECONDS - start)) s"

# ----------------------------------------------------------------- verify ---
if [[ "$SKIP_CHECKS" == 1 ]]; then
    log "DIST_AE_HOROVOD_SKIP_CHECKS=1: skipped hvd.init(), horovodrun --check-build and the smoke test"
    log "done: horovod $HVD_VERSION installed into $PY_EXE (unchecked)"
    exit 0
fi
if ! out="$("$PY_EXE" -c 'import horovod.tensorflow as hvd; hvd.init()' 2>&1)"; then
    echo "$out" >&2
    die "'import horovod.tensorflow as hvd; hvd.init()' fails after install"
fi
if ! check_build; then
    echo "$CHECK_OUT" >&2
    die "horovodrun --check-build does not show [X] for all of: ${REQUIRED_FEATURES[*]}"
fi
# Print the check-build table without TensorFlow's start-up log lines.
sed -n '/^Horovod v/,$p' <<<"$CHECK_OUT"
log "check-build shows ${REQUIRED_FEATURES[*]}"
smoke_test
log "done: horovod $HVD_VERSION installed into $PY_EXE"
