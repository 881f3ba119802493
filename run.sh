#!/usr/bin/env bash
# The two commands of a fresh machine:
#   bash run.sh          set up .venv if needed, then run the default job (workdirs/default)
#   bash run.sh test     set up .venv if needed, then run the whole test suite
# Extra arguments after `test` go to pytest; after `main`, the first is the workdir.
set -euo pipefail
cd "$(dirname "$0")"

VENV="${CGH_VENV:-.venv}"
PY="${CGH_PYTHON:-python3}"
stamp="$VENV/.cgh-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"

if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "Setting up $VENV (one time, about two minutes)..." >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".[test]"
  echo "$want" > "$stamp"
fi

export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
mode="${1:-main}"
[ $# -gt 0 ] && shift
case "$mode" in
  main)
    exec "$VENV/bin/python" -m cgh_jax.main --config=configs/default.py \
      --workdir="${1:-workdirs/default}"
    ;;
  test)
    export CGH_NOTEBOOK_SIZE="${CGH_NOTEBOOK_SIZE:-ci}"
    exec "$VENV/bin/python" -m pytest tests "$@"
    ;;
  *)
    echo "usage: bash run.sh [main [WORKDIR] | test [PYTEST_ARGS...]]" >&2
    exit 2
    ;;
esac
