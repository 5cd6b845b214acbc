#!/usr/bin/env bash
# Creates .venv and installs autotimm-deploy with its test extras, the real AutoTimm (the reference of the
# parity-vs-AutoTimm tests; the package never imports it) and the serve extra, plus a real tritonserver for the
# serving tests (below). Idempotent; a fresh machine needs nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import autotimm_deploy, onnxruntime, polygraphy, onnx_graphsurgeon, pytest, pycocotools, tritonclient.grpc, importlib.util as u; assert u.find_spec('autotimm')" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[test,autotimm,serve]'
  touch .venv/.installed
fi
# Triton Inference Server 2.51 with its Python backend, from the nvidia-pytriton wheel, into .venv/triton without its
# dependencies (it pins numpy<2, which would downgrade the project's numpy); its Python-backend stub needs numpy<2,
# kept apart in .venv/triton/numpy1 (autotimm_deploy/serve/server.py says how the server is given it)
if [ ! -x .venv/triton/pytriton/tritonserver/bin/tritonserver ] || [ ! -d .venv/triton/numpy1/numpy ]; then
  .venv/bin/python -m pip install --quiet --no-deps --target .venv/triton 'nvidia-pytriton==0.7.0'
  .venv/bin/python -m pip install --quiet --no-deps --target .venv/triton/numpy1 'numpy==1.26.4'
fi
