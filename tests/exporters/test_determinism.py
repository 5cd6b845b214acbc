"""Exports are reproducible and say where they came from.

- The same model file and flags, exported in two fresh processes with different ``PYTHONHASHSEED``,
  different working directories, output folders and a relative vs an absolute model path, give
  byte-identical ``model.raw.onnx``, ``model.onnx`` and ``model.fp16.onnx``.
- Provenance (the source file's SHA-256, the versions of torch/timm/onnx/... and autotimm-deploy, and the
  CLI flags) is in every ONNX file's metadata, in the engine sidecar and in the manifest.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import timm
import torch

from autotimm_deploy import __version__
from autotimm_deploy.cli import export as export_cli
from autotimm_deploy.demo import demo_model_path
from autotimm_deploy.exporters.pipeline import NOT_IN_ONNX, ExportOptions, export_model

ROOT = Path(__file__).resolve().parents[2]
ONNX_FILES = ("model.raw.onnx", "model.onnx", "model.fp16.onnx")
VERSION_KEYS = {"autotimm_deploy", "python", "torch", "timm", "onnx", "onnx_graphsurgeon", "onnxruntime", "numpy"}


def _exe() -> str:
    exe = Path(sys.executable).with_name("autotimm-export")
    return str(exe if exe.exists() else ROOT / ".venv" / "bin" / "autotimm-export")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_export_is_byte_identical_across_processes(tmp_path, reliability_record):
    model = Path(demo_model_path("detector")).resolve()
    runs = [  # (PYTHONHASHSEED, cwd, model argument, output folder)
        ("1", ROOT, os.path.relpath(model, ROOT), tmp_path / "a" / "out"),
        ("2", tmp_path, str(model), tmp_path / "b" / "deeper" / "export"),
    ]
    digests = []
    for seed, cwd, model_arg, out in runs:
        env = dict(os.environ, PYTHONHASHSEED=seed)
        proc = subprocess.run([_exe(), model_arg, "--fp16", "--engine", "none", "--no-check", "--out", str(out)],
                              cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        digests.append({name: _sha(out / name) for name in ONNX_FILES})
    print("sha256:", json.dumps(digests[0], indent=1))
    assert digests[0] == digests[1]
    assert len(set(digests[0].values())) == 3
    reliability_record("determinism", {"runs": len(runs), "pythonhashseeds": [r[0] for r in runs],
                                       "identical": True, "sha256": digests[0]})


def test_verification_and_engine_flags_leave_the_onnx_bytes_unchanged(tmp_path):
    """``--no-check``, another ``--engine``, ``--workspace``, ``--no-cache``... change no ONNX file, so a
    re-export with them gives the same bytes (and the same engine cache key); a graph option does not."""
    runs = {"a": ExportOptions(engine="none", check=False),
            "b": ExportOptions(engine="none", check=True, random_inputs=1, demo_images=1, workspace_mib=64,
                               cache=False, target_cc=("SM86",)),
            "graph option changed": ExportOptions(engine="none", check=False, batch=(1, 2, 8))}
    digests = {}
    for name, opts in runs.items():
        export_model(demo_model_path("classifier"), tmp_path / name, opts, progress=None)
        digests[name] = [_sha(tmp_path / name / f) for f in ("model.raw.onnx", "model.onnx")]
    assert digests["a"] == digests["b"]
    assert all(x != y for x, y in zip(digests["a"], digests["graph option changed"]))


def _provenance(meta: dict) -> dict:
    return json.loads(meta["autotimm_deploy.provenance"])


@pytest.fixture(scope="module")
def rtx_export(tmp_path_factory):
    """One export with a TensorRT-RTX engine (built ahead of time; no GPU needed)."""
    out = tmp_path_factory.mktemp("prov") / "out"
    rc = export_cli.main([str(demo_model_path("detector")), "--engine", "tensorrt-rtx", "--no-check", "--fp16",
                          "--decode", "boxes", "--topk", "50", "--target-cc", "SM86", "--no-cache", "--out", str(out)])
    assert rc == 0
    return out


def test_provenance_in_onnx_metadata(rtx_export):
    source_sha = _sha(Path(demo_model_path("detector")))
    seen = []
    for name in ONNX_FILES:
        meta = {p.key: p.value for p in onnx.load(str(rtx_export / name), load_external_data=False).metadata_props}
        assert meta["source_sha256"] == source_sha
        assert meta["autotimm_deploy.version"] == __version__
        prov = _provenance(meta)
        assert set(prov["versions"]) >= VERSION_KEYS and all(prov["versions"][k] for k in VERSION_KEYS - {"python"})
        assert prov["versions"]["autotimm_deploy"] == __version__
        assert prov["versions"]["torch"] == torch.__version__ and prov["versions"]["timm"] == timm.__version__
        assert prov["versions"]["onnx"] == onnx.__version__
        opts = prov["options"]
        assert opts["fp16"] is True and opts["topk"] == 50 and opts["decode"] == "boxes" and opts["batch"] == [1, 1, 8]
        # verification and engine flags shape no ONNX file: recorded in the sidecar and manifest instead
        assert not set(opts) & set(NOT_IN_ONNX) and "cache_dir" not in opts
        text = meta["autotimm_deploy.provenance"]
        assert str(rtx_export) not in text and "/tmp" not in text  # no paths in the ONNX
        seen.append(prov)
    assert seen[0] == seen[1] == seen[2]


def test_provenance_in_engine_sidecar_and_manifest(rtx_export):
    sidecar = json.loads((rtx_export / "model.fp16.engine.json").read_text())
    onnx_meta = {p.key: p.value for p in onnx.load(str(rtx_export / "model.fp16.onnx"),
                                                    load_external_data=False).metadata_props}
    prov = sidecar["provenance"]
    assert prov["source_sha256"] == _sha(Path(demo_model_path("detector")))
    assert prov["autotimm_deploy"] == __version__ and prov["onnx_file"] == "model.fp16.onnx"
    assert prov["versions"] == _provenance(onnx_meta)["versions"]
    onnx_opts = _provenance(onnx_meta)["options"]
    assert prov["options"] == {**onnx_opts, **{k: prov["options"][k] for k in NOT_IN_ONNX}}  # the ONNX's + the rest
    assert prov["options"]["engine"] == "tensorrt-rtx" and prov["options"]["target_cc"] == ["SM86"]
    assert prov["options"]["cache"] is False and prov["options"]["check"] is False and "cache_dir" not in prov["options"]
    assert sidecar["model"]["autotimm_deploy.provenance"] == onnx_meta["autotimm_deploy.provenance"]
    assert sidecar["onnx"]["sha256"] == _sha(rtx_export / "model.fp16.onnx")
    assert sidecar["library"]["name"] == "tensorrt-rtx" and sidecar["library"]["version"]
    manifest = json.loads((rtx_export / "manifest.json").read_text())
    assert manifest["provenance"] == {"versions": prov["versions"], "options": prov["options"]}
