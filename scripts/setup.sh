#!/usr/bin/env bash
# Creates .venv and installs autotimm-deploy with its test extras and the real AutoTimm (the reference of the
# parity-vs-AutoTimm tests; the package never imports it). Idempotent; a fresh machine needs nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import autotimm_deploy, onnxruntime, polygraphy, onnx_graphsurgeon, pytest, pycocotools, importlib.util as u; assert u.find_spec('autotimm')" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[test,autotimm]'
  touch .venv/.installed
fi
