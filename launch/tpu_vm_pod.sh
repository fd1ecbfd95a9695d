#!/usr/bin/env bash
# Run maskjax on every worker of a Cloud TPU VM pod slice.
#
#   launch/tpu_vm_pod.sh my-v4-32 us-central2-b --config=configs/mala.py --workdir=gs://my-bucket/runs/mala
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_vm_pod.sh -- --config=... --workdir=...
#
# Runs `python -m maskjax.main <args>` on all workers at once
# (`gcloud compute tpus tpu-vm ssh --worker=all`). No coordinator flags are
# needed: on TPU VMs jax.distributed.initialize() discovers the pod itself
# (maskjax.mesh.maybe_initialize_distributed sees TPU_WORKER_HOSTNAMES).
# The workdir must be shared by all workers (a gs:// bucket or an NFS path):
# Orbax writes each worker's shards of the checkpoint there.
#
# Optional: REPO_DIR (checkout on the workers, default ~/maskjax),
# VENV (virtualenv to activate on the workers, default $REPO_DIR/.venv),
# PROJECT (gcloud project), SETUP (a command run first on every worker,
# e.g. "cd ~/maskjax && git pull && pip install -e .").
set -euo pipefail

if [[ $# -ge 2 && "$1" != -* && "$2" != -* ]]; then
  TPU_NAME="$1"; ZONE="$2"; shift 2
fi
if [[ -z "${TPU_NAME:-}" || -z "${ZONE:-}" ]]; then
  echo "usage: $0 TPU_NAME ZONE [--] <maskjax.main arguments>" >&2
  echo "   or: TPU_NAME=... ZONE=... $0 [--] <maskjax.main arguments>" >&2
  exit 2
fi
if [[ "${1:-}" == "--" ]]; then shift; fi
REPO_DIR="${REPO_DIR:-~/maskjax}"
VENV="${VENV:-$REPO_DIR/.venv}"
ARGS="$(printf ' %q' "$@")"
REMOTE="set -e; cd $REPO_DIR; ${SETUP:+$SETUP; }if [ -f $VENV/bin/activate ]; then . $VENV/bin/activate; fi; python -m maskjax.main$ARGS"

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" ${PROJECT:+--project="$PROJECT"} \
  --worker=all --command="$REMOTE"
