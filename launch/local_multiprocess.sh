#!/usr/bin/env bash
# Run N maskjax processes on this machine (CPU), joined by jax.distributed.
#
#   launch/local_multiprocess.sh N [--] --config=configs/riad.py:demo --workdir=/tmp/riad_mp
#
# Every process runs `python -m maskjax.main <args>` with its own
# --process_id; process 0 is the coordinator on localhost:$PORT (default: a
# free port). Each process owns one CPU device (set MASKJAX_LOCAL_DEVICES to
# simulate more per process). Logs go to $LOGDIR/process_<i>.log
# (default <workdir>/launch_logs or /tmp); process 0 also prints to the terminal.
# The script exits with the first non-zero status of any process.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 N [--] <maskjax.main arguments>" >&2
  exit 2
fi
N="$1"; shift
if [[ "$1" == "--" ]]; then shift; fi
if ! [[ "$N" =~ ^[1-9][0-9]*$ ]]; then
  echo "N must be a positive integer (got '$N')" >&2
  exit 2
fi
PYTHON="${PYTHON:-python}"
PORT="${PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')}"
WORKDIR=""
for a in "$@"; do
  case "$a" in --workdir=*) WORKDIR="${a#--workdir=}";; esac
done
LOGDIR="${LOGDIR:-${WORKDIR:-/tmp}/launch_logs}"
mkdir -p "$LOGDIR"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
if [[ -n "${MASKJAX_LOCAL_DEVICES:-}" ]]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${MASKJAX_LOCAL_DEVICES}"
fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup INT TERM

for ((i = 0; i < N; i++)); do
  cmd=("$PYTHON" -m maskjax.main "$@" --coordinator_address="localhost:${PORT}"
       --num_processes="$N" --process_id="$i")
  if [[ $i -eq 0 ]]; then
    "${cmd[@]}" 2>&1 | tee "$LOGDIR/process_0.log" &
  else
    "${cmd[@]}" > "$LOGDIR/process_${i}.log" 2>&1 &
  fi
  pids+=($!)
done

status=0
for p in "${pids[@]}"; do
  rc=0
  wait "$p" || rc=$?
  if [[ $status -eq 0 && $rc -ne 0 ]]; then status=$rc; fi
done
if [[ $status -ne 0 ]]; then echo "a process failed (status $status); logs in $LOGDIR" >&2; fi
exit $status
