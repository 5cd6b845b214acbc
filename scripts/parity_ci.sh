#!/usr/bin/env bash
# Export a model and gate on autotimm-parity: exits non-zero when the export fails (2) or any parity
# level fails (1).  Usage:
#
#   scripts/parity_ci.sh MODEL DATA_DIR OUT_DIR [autotimm-export flags...]
#
#   MODEL     the PyTorch model file (.pt / .safetensors)
#   DATA_DIR  annotated image folder (COCO annotations.json, per-image JSON, annotations.csv or class folders)
#   OUT_DIR   receives export/ (the artifacts) and parity/ (parity.json, parity.md, junit.xml)
#
# Environment: AUTOTIMM_BIN (folder with the autotimm-* commands; default: where autotimm-parity is on PATH, else .venv/bin),
# PARITY_FLAGS (extra autotimm-parity flags, e.g. "--map-tol 0.5 --strict"), GITHUB_STEP_SUMMARY (appended to
# when set, as GitHub Actions does).
set -euo pipefail
if [ $# -lt 3 ]; then
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
model=$1 data=$2 out=$3
shift 3
bin=${AUTOTIMM_BIN:-}
if [ -z "$bin" ]; then
    if command -v autotimm-parity >/dev/null 2>&1; then bin=$(dirname "$(command -v autotimm-parity)")
    else bin="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin"; fi
fi
summary=()
[ -n "${GITHUB_STEP_SUMMARY:-}" ] && summary=(--summary "$GITHUB_STEP_SUMMARY")
echo "== export: $model -> $out/export $*"
"$bin/autotimm-export" "$model" --out "$out/export" "$@"
echo "== parity: $out/export vs $model on $data"
# shellcheck disable=SC2086
"$bin/autotimm-parity" "$model" "$out/export" --data "$data" \
    --report "$out/parity" --junit "$out/parity/junit.xml" "${summary[@]}" ${PARITY_FLAGS:-}
