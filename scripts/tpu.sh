#!/usr/bin/env bash
# Cloud TPU VMs and pod slices for cgh-jax: create, set up, run, read logs, delete.
#
#   bash scripts/tpu.sh [options] create|setup|run|logs|delete [-- extra cgh_jax.main flags]
#
# Options (defaults in brackets; each can also be set by the environment variable named):
#   --name NAME         TPU and queued-resource name        [cgh-tpu]        CGH_TPU_NAME
#   --zone ZONE         zone                                [us-central2-b]  CGH_TPU_ZONE
#   --accelerator TYPE  v4-8, v4-32, v5litepod-16, v5p-8, v6e-8...  [v4-8]   CGH_TPU_TYPE
#   --project PROJECT   Google Cloud project                [gcloud's]       CGH_TPU_PROJECT
#   --version VERSION   TPU runtime image                   [by accelerator type, below]
#   --queued            create through a queued resource (waits for capacity)
#   --spot              spot capacity (preemptible; the run saves and resumes)
#   --data-dir DIR      TFDS data dir, gs://BUCKET/tensorflow_datasets     CGH_TPU_DATA_DIR
#   --workdir DIR       run directory, gs://BUCKET/cgh/RUN                 CGH_TPU_WORKDIR
#   --config CONFIG     config and its arguments                           CGH_TPU_CONFIG
#                       [configs/imagenet_resnet18.py:opt=m3,noise=0.5]
#   --lines N           logs: the last N lines of every worker's log [50]
#   --dry-run           print every command (gcloud, tar) instead of running it
#
# Steps:
#   create  the TPU VM or pod slice (queued: and wait until it is ACTIVE)
#   setup   on every worker: copy this checkout (without .git, .venv, workdirs), create a
#           Python 3.11 environment with uv (the images' python3 is 3.10; jax needs 3.11),
#           then pip install -e '.[tpu]' into it
#   run     start python -m cgh_jax.main on every worker in the background, output in
#           ~/cgh-jax.log (refused where a run is still going); run it again after a
#           preemption to resume from the checkpoint
#   logs    the last lines of ~/cgh-jax.log on every worker
#   delete  the TPU (queued: the queued resource and its TPU)
#
# Runtime images by accelerator type (override with --version):
#   v4-*          tpu-ubuntu2204-base
#   v5litepod-*   v2-alpha-tpuv5-lite
#   v5p-*         v2-alpha-tpuv5
#   v6e-*         v2-alpha-tpuv6e

set -euo pipefail

NAME="${CGH_TPU_NAME:-cgh-tpu}"
ZONE="${CGH_TPU_ZONE:-us-central2-b}"
ACCELERATOR="${CGH_TPU_TYPE:-v4-8}"
PROJECT="${CGH_TPU_PROJECT:-}"
VERSION=""
QUEUED=0
SPOT=0
DATA_DIR="${CGH_TPU_DATA_DIR:-}"
WORKDIR="${CGH_TPU_WORKDIR:-}"
CONFIG="${CGH_TPU_CONFIG:-configs/imagenet_resnet18.py:opt=m3,noise=0.5}"
LINES=50
DRY_RUN=0
STEP=""
EXTRA=()

REMOTE_DIR='~/cgh-jax'
REMOTE_LOG='~/cgh-jax.log'
PYTHON_VERSION=3.11

die() {
  echo "tpu.sh: error: $*" >&2
  exit 2
}

usage() {
  sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'
}

runtime_version() {
  case "$1" in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) die "no runtime image known for accelerator type '$1'; pass --version." ;;
  esac
}

while (($#)); do
  case "$1" in
    --name) NAME="${2:?--name needs a value}"; shift 2 ;;
    --zone) ZONE="${2:?--zone needs a value}"; shift 2 ;;
    --accelerator) ACCELERATOR="${2:?--accelerator needs a value}"; shift 2 ;;
    --project) PROJECT="${2:?--project needs a value}"; shift 2 ;;
    --version) VERSION="${2:?--version needs a value}"; shift 2 ;;
    --data-dir) DATA_DIR="${2:?--data-dir needs a value}"; shift 2 ;;
    --workdir) WORKDIR="${2:?--workdir needs a value}"; shift 2 ;;
    --config) CONFIG="${2:?--config needs a value}"; shift 2 ;;
    --lines) LINES="${2:?--lines needs a value}"; shift 2 ;;
    --queued) QUEUED=1; shift ;;
    --spot) SPOT=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    create | setup | run | logs | delete)
      [[ -z "$STEP" ]] || die "one step at a time (got '$STEP' and '$1')."
      STEP="$1"; shift ;;
    *) die "unknown argument '$1' (see --help)." ;;
  esac
done

[[ -n "$STEP" ]] || die "name a step: create, setup, run, logs or delete (see --help)."
[[ -n "$VERSION" ]] || VERSION="$(runtime_version "$ACCELERATOR")"
[[ "$LINES" =~ ^[0-9]+$ ]] || die "--lines must be a number, got '$LINES'."

# Every command is printed (--dry-run) or run from the same argument list. Printed arguments
# are single-quoted where the shell needs it, so the dry run is a script that can be pasted.
quote() {
  local arg="$1"
  [[ "$arg" != *"'"* ]] || die "single quotes are not supported in arguments: $arg"
  if [[ "$arg" =~ ^[A-Za-z0-9_@%+=:,./-]*$ ]]; then
    printf '%s' "$arg"
  elif [[ "$arg" =~ ^(--[a-z-]+=)(.*)$ ]]; then
    printf "%s'%s'" "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
  else
    printf "'%s'" "$arg"
  fi
}

emit() {
  local line="" arg
  for arg in "$@"; do
    line+="${line:+ }$(quote "$arg")"
  done
  printf '%s\n' "$line"
}

run() {
  if ((DRY_RUN)); then
    emit "$@"
  else
    "$@"
  fi
}

comment() {
  if ((DRY_RUN)); then
    printf '# %s\n' "$*"
  else
    printf 'tpu.sh: %s\n' "$*" >&2
  fi
}

LOCATION=(--zone="$ZONE")
[[ -z "$PROJECT" ]] || LOCATION+=(--project="$PROJECT")
SSH=(gcloud compute tpus tpu-vm ssh "$NAME" "${LOCATION[@]}" --worker=all)

step_create() {
  if ((QUEUED)); then
    local flags=(--node-id="$NAME" "${LOCATION[@]}" --accelerator-type="$ACCELERATOR"
      --runtime-version="$VERSION")
    ((SPOT)) && flags+=(--spot)
    run gcloud compute tpus queued-resources create "$NAME" "${flags[@]}"
    comment "Wait until the queued resource is ACTIVE (it waits for capacity):"
    local describe=(gcloud compute tpus queued-resources describe "$NAME" "${LOCATION[@]}"
      --format='value(state.state)')
    if ((DRY_RUN)); then
      emit "${describe[@]}"
    else
      local state
      while state="$("${describe[@]}")" && [[ "$state" != ACTIVE ]]; do
        [[ "$state" != FAILED && "$state" != SUSPENDED ]] ||
          die "queued resource $NAME is $state; delete it and try another zone or type."
        echo "tpu.sh: $NAME is ${state:-not listed yet}; checking again in 30 s." >&2
        sleep 30
      done
    fi
  else
    local flags=("${LOCATION[@]}" --accelerator-type="$ACCELERATOR" --version="$VERSION")
    ((SPOT)) && flags+=(--spot)
    run gcloud compute tpus tpu-vm create "$NAME" "${flags[@]}"
  fi
}

step_setup() {
  local archive="/tmp/$NAME-cgh-jax.tar.gz"
  comment "Copy this checkout to every worker, without .git, virtual environments or runs:"
  run tar -czf "$archive" --exclude=.git --exclude=.venv --exclude=workdirs \
    --exclude=__pycache__ --exclude='*.egg-info' --exclude=.pytest_cache \
    --exclude=.ipynb_checkpoints -C . .
  run gcloud compute tpus tpu-vm scp "$archive" "$NAME:cgh-jax.tar.gz" "${LOCATION[@]}" \
    --worker=all
  comment "On every worker: Python $PYTHON_VERSION (the image's python3 is 3.10) with uv, then the package:"
  local remote
  remote="set -e; rm -rf $REMOTE_DIR; mkdir -p $REMOTE_DIR; cd $REMOTE_DIR"
  remote+=" && tar -xzf ~/cgh-jax.tar.gz"
  remote+=" && python3 -m pip install --user --upgrade uv"
  remote+=" && ~/.local/bin/uv venv --seed --python $PYTHON_VERSION .venv"
  remote+=" && .venv/bin/python -c \"import sys; assert sys.version_info >= (3, 11), sys.version\""
  remote+=" && .venv/bin/pip install -e \".[tpu]\""
  remote+=" && .venv/bin/python -c \"import jax; print(jax.device_count(), jax.devices()[0].device_kind)\""
  run "${SSH[@]}" --command="$remote"
}

step_run() {
  [[ -n "$DATA_DIR" ]] || die "run needs --data-dir gs://BUCKET/tensorflow_datasets (the prepared TFDS data)."
  [[ -n "$WORKDIR" ]] || die "run needs --workdir gs://BUCKET/... (every worker must see the checkpoints)."
  [[ "$WORKDIR" == gs://* ]] ||
    comment "warning: --workdir $WORKDIR is not on Cloud Storage; pod-slice workers would not share it."
  local args=(--config="$CONFIG" --config.data.data_dir="$DATA_DIR" --workdir="$WORKDIR"
    "${EXTRA[@]}")
  local main=".venv/bin/python -m cgh_jax.main" arg
  for arg in "${args[@]}"; do
    main+=" $(quote "$arg")"
  done
  comment "Start the same command on every worker (in the background; see 'logs'):"
  local remote="cd $REMOTE_DIR || exit 1"
  remote+="; if [ -f run.pid ] && kill -0 \"\$(cat run.pid)\" 2>/dev/null;"
  remote+=" then echo \"a run is still going on \$(hostname)\" >&2; exit 1; fi"
  remote+="; nohup $main > $REMOTE_LOG 2>&1 < /dev/null & echo \$! > run.pid"
  run "${SSH[@]}" --command="$remote"
}

step_logs() {
  run "${SSH[@]}" --command="echo \"== \$(hostname)\"; tail -n $LINES $REMOTE_LOG"
}

step_delete() {
  if ((QUEUED)); then
    comment "--force deletes the queued resource together with its TPU:"
    run gcloud compute tpus queued-resources delete "$NAME" "${LOCATION[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$NAME" "${LOCATION[@]}" --quiet
  fi
}

# Paths in the commands (the archive's ".") are relative to the repository root.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
"step_$STEP"
