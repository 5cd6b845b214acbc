#!/usr/bin/env bash
# Device check (issue 14, item 4): on a machine with an NVIDIA GPU, run the GPU-marked tests and the GPU
# benchmark rows (scripts/device_bench.py), each under its own timeout, everything within 10 minutes,
# all results under ONE folder.  On a CPU-only machine: one "no GPU" line, summary.json with gpu null, exit 0.
#
#   scripts/device_check.sh [OUT_DIR]      (default out/device_check; PYTHON=... to choose the interpreter)
#
# OUT_DIR gets: summary.json, device_check.md, nvidia-smi.txt (when nvidia-smi exists), and with a GPU
# gpu-tests.xml + gpu-tests.log (pytest -m gpu), bench.json + bench.md + bench.log (device_bench.py).
# Exit code: 0 when every step that ran passed (or there is no GPU), 1 when a step failed or timed out
# (each step's exit code is in summary.json; the script goes on to the next step either way).
# Worst case: nvidia-smi 2x15 s + torch probe 45 s + 250 s + 250 s (timeouts + 10 s kill grace) < 10 min.
set -euo pipefail

caller_dir=$(pwd)
cd "$(dirname "$0")/.."
OUT=${1:-out/device_check}
if [[ $# -ge 1 && "$OUT" != /* ]]; then OUT="$caller_dir/$OUT"; fi  # relative to where it was called from
PYTHON=${PYTHON:-.venv/bin/python}
PROBE_TIMEOUT=${PROBE_TIMEOUT:-45}
GPU_TESTS_TIMEOUT=${GPU_TESTS_TIMEOUT:-240}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-240}
mkdir -p "$OUT"
rm -f "$OUT/steps.tsv" "$OUT/summary.json" "$OUT/device_check.md"
started=$(date +%s)

# --- GPU detection: nvidia-smi (when present) and torch.cuda.is_available() ---------------------------
smi_query="" smi_note=""
if command -v nvidia-smi >/dev/null 2>&1; then
    if ! smi_query=$(timeout 15 nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader 2>&1); then
        smi_note="nvidia-smi failed: $(echo "$smi_query" | head -n 1)"
        smi_query=""
    fi
    timeout 15 nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
else
    smi_note="nvidia-smi not found"
fi
probe_rc=0
torch_probe=$(timeout "$PROBE_TIMEOUT" "$PYTHON" - <<'EOF' 2>"$OUT/probe.log"
import json
import torch
d = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
if d["cuda_available"]:
    major, minor = torch.cuda.get_device_capability(0)
    d.update(name=torch.cuda.get_device_name(0), compute_capability=f"{major}.{minor}")
print(json.dumps(d))
EOF
) || probe_rc=$?
cuda=false
if [[ $probe_rc -ne 0 ]]; then
    torch_note="torch probe failed (exit $probe_rc, see probe.log)"
elif [[ "$torch_probe" == *'"cuda_available": true'* ]]; then
    cuda=true torch_note=""
else
    torch_note="torch.cuda.is_available() is False"
fi

# --- steps: each under its own timeout; the result goes to steps.tsv ----------------------------------
record() {  # name status rc seconds timeout reason command
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$OUT/steps.tsv"
}
run_step() {  # name timeout_s log command...
    local name=$1 limit=$2 log=$3 t rc status reason
    shift 3
    echo "device_check: $name (timeout ${limit} s): $*"
    t=$(date +%s)
    set +e
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$log"
    rc=${PIPESTATUS[0]}
    set -e
    case $rc in
        0) status=passed reason="" ;;
        124 | 137) status=timeout reason="timed out after ${limit} s (exit $rc)" ;;
        *) status=failed reason="exit $rc (see $log)" ;;
    esac
    echo "device_check: $name $status (exit $rc, $(($(date +%s) - t)) s)"
    [[ $status == passed ]] || failures=$((failures + 1))
    record "$name" "$status" "$rc" "$(($(date +%s) - t))" "$limit" "$reason" "$*"
}

GPU_TESTS_CMD=("$PYTHON" -m pytest -m gpu -q --junitxml="$OUT/gpu-tests.xml")
BENCH_CMD=("$PYTHON" scripts/device_bench.py --out "$OUT" --budget-s "$((BENCH_TIMEOUT - 40))")
failures=0
if [[ $cuda == true ]]; then
    echo "device_check: GPU: ${smi_query:-$torch_probe}"
    run_step gpu-tests "$GPU_TESTS_TIMEOUT" gpu-tests.log "${GPU_TESTS_CMD[@]}"
    run_step bench "$BENCH_TIMEOUT" bench.log "${BENCH_CMD[@]}"
else
    reasons="${smi_note}${smi_note:+ / }${torch_note}"
    record gpu-tests skipped "" "" "$GPU_TESTS_TIMEOUT" "no GPU" "${GPU_TESTS_CMD[*]}"
    record bench skipped "" "" "$BENCH_TIMEOUT" "no GPU" "${BENCH_CMD[*]}"
fi

# --- summary.json and device_check.md (stdlib only) ------------------------------------------------------
export DC_OUT="$OUT" DC_STARTED="$started" DC_CUDA="$cuda" DC_SMI="$smi_query" DC_SMI_NOTE="$smi_note" \
    DC_PROBE="$torch_probe" DC_TORCH_NOTE="$torch_note"
set +e
"$PYTHON" - <<'EOF'
import json, os, time
from pathlib import Path

e = os.environ
out = Path(e["DC_OUT"])
try:
    probe = json.loads(e["DC_PROBE"])
except ValueError:
    probe = None
smi = [[f.strip() for f in line.split(",")] for line in e["DC_SMI"].splitlines() if line.strip()]
gpu = None
if e["DC_CUDA"] == "true":
    gpu = {"name": probe.get("name"), "compute_capability": probe.get("compute_capability"), "driver": None,
           "torch": probe.get("torch"), "torch_cuda": probe.get("torch_cuda"), "count": len(smi) or None}
    if smi and len(smi[0]) == 3:
        gpu.update(name=smi[0][0], compute_capability=smi[0][1], driver=smi[0][2])
    sm = "SM" + (gpu["compute_capability"] or "").replace(".", "")
    gpu["tensorrt_rtx_target"] = sm in ("SM75", "SM80", "SM86", "SM89", "SM120", "SM121")
keys = ("name", "status", "exit_code", "seconds", "timeout_s", "reason", "command")
steps = []
for line in (out / "steps.tsv").read_text().splitlines():
    s = dict(zip(keys, line.split("\t")))
    for k in ("exit_code", "seconds", "timeout_s"):
        s[k] = int(s[k]) if s[k] else None
    s["reason"] = s["reason"] or None
    steps.append(s)
failed = [s["name"] for s in steps if s["status"] in ("failed", "timeout")]
reason = None if gpu else " / ".join(n for n in (e["DC_SMI_NOTE"], e["DC_TORCH_NOTE"]) if n)
summary = {"gpu": gpu, "no_gpu_reason": reason, "nvidia_smi": smi or e["DC_SMI_NOTE"] or None, "torch_probe": probe,
           "steps": steps, "failed_steps": failed, "exit_code": 1 if failed else 0,
           "elapsed_s": int(time.time()) - int(e["DC_STARTED"]), "out_dir": str(out),
           "files": sorted(p.name for p in out.iterdir() if p.name not in ("steps.tsv",)) + ["summary.json", "device_check.md"]}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
md = ["# Device check (scripts/device_check.sh)", ""]
if gpu:
    md.append(f"GPU: {gpu['name']}, compute capability {gpu['compute_capability']}, driver {gpu['driver']}; "
              f"torch {gpu['torch']} (CUDA {gpu['torch_cuda']}); TensorRT-RTX target: "
              f"{'yes' if gpu['tensorrt_rtx_target'] else 'no'}.")
else:
    md.append(f"No GPU ({reason}): nothing was measured.")
md += ["", "| step | status | exit code | seconds | timeout s | reason |", "|---|---|---|---|---|---|"]
md += [f"| {s['name']} | {s['status']} | {s['exit_code'] if s['exit_code'] is not None else '-'} | "
       f"{s['seconds'] if s['seconds'] is not None else '-'} | {s['timeout_s']} | {s['reason'] or ''} |" for s in steps]
if (out / "bench.md").exists():
    md += ["", "#" + (out / "bench.md").read_text()]  # its one heading, one level down
(out / "device_check.md").write_text("\n".join(md) + "\n")
EOF
summary_rc=$?
set -e
rm -f "$OUT/steps.tsv"
[[ $summary_rc -eq 0 ]] || { echo "device_check: could not write $OUT/summary.json (exit $summary_rc)" >&2; exit 2; }

if [[ $cuda != true ]]; then
    echo "device_check: no GPU ($reasons): nothing to measure; wrote $OUT/summary.json"
    exit 0
fi
if [[ $failures -eq 0 ]]; then
    echo "device_check: all steps passed in $(($(date +%s) - started)) s; wrote $OUT/summary.json and $OUT/device_check.md"
    exit 0
fi
echo "device_check: a step failed or timed out (see $OUT/summary.json) after $(($(date +%s) - started)) s"
exit 1
