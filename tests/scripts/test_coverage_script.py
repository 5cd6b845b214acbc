"""scripts/coverage.py: one cheap backbone through the whole pipeline, and a backbone that cannot work
recorded as a failure with its reason (not a crash)."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "coverage.py"


@pytest.fixture(scope="module")
def coverage():
    spec = importlib.util.spec_from_file_location("coverage_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve the module's annotations through sys.modules
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


def test_lists_cover_the_required_families(coverage):
    families = {b.family for b in coverage.BACKBONES}
    required = {"resnet", "resnext", "seresnext", "efficientnet", "mobilenetv3", "mobilenetv4", "convnext", "regnet",
                "densenet", "cspdarknet", "ghostnet", "repvgg", "hrnet"}
    assert required <= families
    assert sum(b.kind != "CNN" and b.expect == "pass" for b in coverage.BACKBONES) >= 2
    assert len([b for b in coverage.BACKBONES if b.expect == "pass"]) >= 15
    ci = coverage.select("ci", None)
    assert any(b.kind != "CNN" and b.expect == "pass" for b in ci)
    assert all(b.size % 32 == 0 for b in coverage.BACKBONES)
    assert all(b.note for b in coverage.BACKBONES if b.expect == "fail")  # a known failure says why


def test_resnet18_passes_export_parity_and_engine_build(coverage, tmp_path):
    bb = coverage.Backbone("resnet", "resnet18", size=64)
    res = coverage.run_backbone(bb, tmp_path)
    assert res["reason"] is None, res["reason"]
    assert res["ok"] and res["export_ok"] and res["stage"] == "done"
    assert 11 < res["params_m"] < 13
    assert res["fp32"]["passed"] and res["fp32"]["boxes_err"] < 1e-2 and res["fp32"]["scores_err"] < 1e-4
    assert res["fp16"]["passed"] and res["fp16"]["boxes_err"] < 1.0
    eng = res["engine"]
    assert eng["built"] and eng["bytes"] > 0 and eng["build_s"] > 0
    assert (tmp_path / "export" / eng["file"]).stat().st_size == eng["bytes"]
    assert eng["status"] in ("not executed", "pass")
    assert coverage.verdict(res) == "pass"
    cell = coverage._engine_cell(eng)
    assert cell.startswith("built, ")


def test_backbone_without_stride8_level_is_a_recorded_failure(coverage, tmp_path):
    bb = coverage.Backbone("vit", "vit_tiny_patch16_224", size=224, kind="transformer")
    res = coverage.run_backbone(bb, tmp_path)  # must not raise
    assert not res["ok"] and not res["export_ok"]
    assert res["stage"] == "build"
    assert "strides" in res["reason"] and "ValueError" in res["reason"]
    assert coverage.verdict(res) == "FAIL"
    assert coverage.verdict({**res, "expect": "fail"}) == "known failure"
    md = coverage.render([res], {"date": "today", "command": "test", "machine": "m", "versions": {}, "timeout_s": 1,
                                 "selection": "test", "wall_s": 1.0, "gpu": None})
    assert "strides" in md and "## Failures" in md and "0 passed / 1" in md
