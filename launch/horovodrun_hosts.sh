#!/usr/bin/env bash
# horovodrun_hosts.sh - run `dist-ae train --strategy horovod` on the hosts of a
# host file, with horovodrun (default) or Open MPI's mpirun (--mpirun).
#
# Usage:
#   launch/horovodrun_hosts.sh [options] [--] [dist-ae train arguments...]
#
# Options:
#   -f, --hostfile FILE   host file (default: $HOSTFILE, else ./hostfile)
#   -n, -np, --np N       number of ranks (default: $NP, else the sum of slots)
#   --mpirun              launch with mpirun instead of horovodrun
#   --gloo                horovodrun only: use Gloo, no MPI needed
#   --launcher-arg ARG    one more option for horovodrun/mpirun (repeatable)
#   --dry-run             print the command instead of running it (DRY_RUN=1)
#   -h, --help            this text
# Everything else (or everything after `--`) goes to `dist-ae train`; --strategy
# is always horovod and must not be given.
#
# Host file: one host a line, `host slots=N` (Open MPI's form), `host:N`
# (horovodrun -H's form) or a bare `host` (1 slot); `#` starts a comment, blank
# lines are ignored. Slots are ranks, normally one per GPU. horovodrun and
# mpirun only read `host slots=N` lines, so a file in any other form is passed
# to them as a normalized copy (a temporary file, removed after the run; kept
# and named on stderr with --dry-run).
#
# What runs (N = sum of slots, F = the host file):
#   horovodrun -np N -hostfile F dist-ae train --strategy horovod ARGS...
#   mpirun -np N -hostfile F -bind-to none -map-by slot -x NCCL_DEBUG=INFO \
#     -x LD_LIBRARY_PATH -x PATH -mca pml ob1 -mca btl ^openib \
#     dist-ae train --strategy horovod ARGS...
# --dry-run prints the first (or, with --mpirun, the second) on stdout, and the
# other as a `#` comment after it. Rank 0 alone writes to --logdir.
#
# Every host needs: passwordless ssh from this host, dist-ae and Horovod at the
# same path (the same venv, e.g. on shared storage), and for mpirun the same
# Open MPI. Put --logdir on storage all hosts share if you want to resume from
# any host; only rank 0 writes it.
#
# Environment: HOSTFILE, NP, DRY_RUN=1, HOROVODRUN (default horovodrun),
# MPIRUN (default mpirun), DIST_AE (default dist-ae), NCCL_DEBUG (default INFO,
# for mpirun's -x NCCL_DEBUG=...).
#
# Exit status: 2 with a one-line message for a usage error (bad option, missing
# or malformed host file, -np larger than the slots); 127 if the launcher is not
# installed; otherwise the launcher's own status.
set -euo pipefail

PROG="${0##*/}"

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

die_usage() {
    echo "$PROG: error: $*" >&2
    exit 2
}

# Quote one argument for a shell only when it needs it, so printed command lines
# stay readable and can be pasted back into a shell.
shell_quote() {
    local arg="$1"
    if [[ -n "$arg" && "$arg" =~ ^[A-Za-z0-9_@%+=:,./^-]+$ ]]; then
        printf '%s' "$arg"
    else
        printf "'%s'" "${arg//\'/\'\\\'\'}"
    fi
}

print_command() { # print_command PREFIX ARGS... -> one line
    local prefix="$1" first=1 arg
    shift
    printf '%s' "$prefix"
    for arg in "$@"; do
        if ((first)); then first=0; else printf ' '; fi
        shell_quote "$arg"
    done
    printf '\n'
}

HOSTFILE_ARG="${HOSTFILE:-}"
NP_ARG="${NP:-}"
USE_MPIRUN=0
USE_GLOO=0
DRY="${DRY_RUN:-0}"
LAUNCHER_ARGS=()
TRAIN_ARGS=()

need_value() { # need_value OPTION NUMBER_OF_REMAINING_ARGS
    (($2 >= 2)) || die_usage "$1 needs a value (see $PROG --help)"
}

while (($#)); do
    case "$1" in
        -f | --hostfile | -hostfile)
            need_value "$1" $#
            HOSTFILE_ARG="$2"
            shift 2
            ;;
        --hostfile=*) HOSTFILE_ARG="${1#*=}" && shift ;;
        -n | -np | --np)
            need_value "$1" $#
            NP_ARG="$2"
            shift 2
            ;;
        --np=*) NP_ARG="${1#*=}" && shift ;;
        --mpirun) USE_MPIRUN=1 && shift ;;
        --gloo) USE_GLOO=1 && shift ;;
        --launcher-arg)
            need_value "$1" $#
            LAUNCHER_ARGS+=("$2")
            shift 2
            ;;
        --launcher-arg=*) LAUNCHER_ARGS+=("${1#*=}") && shift ;;
        --dry-run) DRY=1 && shift ;;
        -h | --help)
            usage
            exit 0
            ;;
        --)
            shift
            TRAIN_ARGS+=("$@")
            break
            ;;
        *)
            TRAIN_ARGS+=("$1")
            shift
            ;;
    esac
done

case "$DRY" in
    0 | "") DRY=0 ;;
    1) ;;
    *) die_usage "DRY_RUN must be 0 or 1, got '$DRY'" ;;
esac
if ((USE_MPIRUN && USE_GLOO)); then
    die_usage "--gloo is a horovodrun option; mpirun always uses MPI (drop --gloo or --mpirun)"
fi
for arg in ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"}; do
    case "$arg" in
        --strategy | --strategy=*)
            die_usage "do not pass --strategy: this script always runs dist-ae train --strategy horovod"
            ;;
    esac
done

# -------------------------------------------------------------- host file ---
HOSTFILE_PATH="${HOSTFILE_ARG:-hostfile}"
if [[ ! -e "$HOSTFILE_PATH" ]]; then
    die_usage "host file '$HOSTFILE_PATH' not found (pass --hostfile FILE with lines 'host slots=N' or 'host:N')"
fi
if [[ ! -f "$HOSTFILE_PATH" || ! -r "$HOSTFILE_PATH" ]]; then
    die_usage "host file '$HOSTFILE_PATH' is not a readable file"
fi

HOSTS=()
SLOTS=()
CANONICAL=1 # every line already `host slots=N`, as horovodrun and mpirun read it
lineno=0
while IFS= read -r line || [[ -n "$line" ]]; do
    lineno=$((lineno + 1))
    raw="$line"
    line="${line%%#*}"
    read -r -a words <<<"$line" || true
    if ((${#words[@]} == 0)); then
        CANONICAL=0
        continue
    fi
    [[ "$raw" == "$line" ]] || CANONICAL=0
    host="${words[0]}"
    slots=""
    if ((${#words[@]} == 1)) && [[ "$host" == *:* ]]; then
        slots="${host##*:}"
        host="${host%:*}"
        CANONICAL=0
    elif ((${#words[@]} == 1)); then
        slots=1
        CANONICAL=0
    elif ((${#words[@]} == 2)) && [[ "${words[1]}" == slots=* ]]; then
        slots="${words[1]#slots=}"
        [[ "$raw" == "$host slots=$slots" ]] || CANONICAL=0
    else
        die_usage "host file '$HOSTFILE_PATH' line $lineno: '$raw' is not 'host slots=N', 'host:N' or 'host'"
    fi
    if [[ ! "$host" =~ ^[A-Za-z0-9_.-]+$ ]]; then
        die_usage "host file '$HOSTFILE_PATH' line $lineno: '$host' is not a host name or address"
    fi
    if [[ ! "$slots" =~ ^[0-9]+$ ]] || ((10#$slots < 1)); then
        die_usage "host file '$HOSTFILE_PATH' line $lineno: slots must be a positive integer, got '$slots'"
    fi
    HOSTS+=("$host")
    SLOTS+=("$((10#$slots))")
done <"$HOSTFILE_PATH"

((${#HOSTS[@]})) || die_usage "host file '$HOSTFILE_PATH' lists no hosts"

TOTAL_SLOTS=0
for s in "${SLOTS[@]}"; do TOTAL_SLOTS=$((TOTAL_SLOTS + s)); done

if [[ -z "$NP_ARG" ]]; then
    NP_VALUE="$TOTAL_SLOTS"
elif [[ "$NP_ARG" =~ ^[0-9]+$ ]] && ((10#$NP_ARG >= 1)); then
    NP_VALUE="$((10#$NP_ARG))"
    if ((NP_VALUE > TOTAL_SLOTS)); then
        die_usage "-np $NP_VALUE is more than the $TOTAL_SLOTS slots in '$HOSTFILE_PATH'"
    fi
else
    die_usage "-np must be a positive integer, got '$NP_ARG'"
fi

LAUNCH_HOSTFILE="$HOSTFILE_PATH"
NORMALIZED=""
if ((!CANONICAL)); then
    NORMALIZED="$(mktemp "${TMPDIR:-/tmp}/dist-ae-hostfile.XXXXXX")"
    for i in "${!HOSTS[@]}"; do
        printf '%s slots=%s\n' "${HOSTS[$i]}" "${SLOTS[$i]}"
    done >"$NORMALIZED"
    LAUNCH_HOSTFILE="$NORMALIZED"
    if ((DRY)); then
        echo "$PROG: dry run: '$HOSTFILE_PATH' normalized to $NORMALIZED (kept)" >&2
    else
        trap 'rm -f "$NORMALIZED"' EXIT
    fi
fi

# --------------------------------------------------------------- commands ---
HOROVODRUN_BIN="${HOROVODRUN:-horovodrun}"
MPIRUN_BIN="${MPIRUN:-mpirun}"
TRAIN=("${DIST_AE:-dist-ae}" train --strategy horovod ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"})

HVD_CMD=("$HOROVODRUN_BIN" -np "$NP_VALUE" -hostfile "$LAUNCH_HOSTFILE")
((USE_GLOO)) && HVD_CMD+=(--gloo)
MPI_CMD=("$MPIRUN_BIN" -np "$NP_VALUE" -hostfile "$LAUNCH_HOSTFILE" -bind-to none -map-by slot
    -x "NCCL_DEBUG=${NCCL_DEBUG:-INFO}" -x LD_LIBRARY_PATH -x PATH -mca pml ob1 -mca btl '^openib')
if ((USE_MPIRUN)); then
    CMD=("${MPI_CMD[@]}" ${LAUNCHER_ARGS[@]+"${LAUNCHER_ARGS[@]}"} "${TRAIN[@]}")
    OTHER=("${HVD_CMD[@]}" "${TRAIN[@]}")
    OTHER_NOTE="# the same run with horovodrun: "
else
    CMD=("${HVD_CMD[@]}" ${LAUNCHER_ARGS[@]+"${LAUNCHER_ARGS[@]}"} "${TRAIN[@]}")
    OTHER=("${MPI_CMD[@]}" "${TRAIN[@]}")
    OTHER_NOTE="# the same run with Open MPI: "
fi

if ((DRY)); then
    print_command "" "${CMD[@]}"
    print_command "$OTHER_NOTE" "${OTHER[@]}"
    exit 0
fi

if ! command -v "${CMD[0]}" >/dev/null 2>&1; then
    if ((USE_MPIRUN)); then
        echo "$PROG: error: '${CMD[0]}' not found (install Open MPI, or set MPIRUN to its path)" >&2
    else
        echo "$PROG: error: '${CMD[0]}' not found (run launch/install_horovod.sh, or set HOROVODRUN to its path)" >&2
    fi
    exit 127
fi
echo "$PROG: $NP_VALUE ranks on ${#HOSTS[@]} host(s): $(print_command "" "${CMD[@]}")" >&2
status=0
"${CMD[@]}" || status=$?
exit "$status"
