"""Crash-safe outputs: SIGKILL an export at random points; every destination file stays complete.

The kill harness is ``scripts/kill_test.py`` (run here as a subprocess, 50 points: the CI variant;
``python scripts/kill_test.py`` runs 200).  A positive control runs the same harness with files written
in place instead of atomically and must be caught.  The ordering rules the harness relies on (old
manifest removed before the first artifact changes, leftovers removed by the next run, cache
leftovers removed only when old) are tested directly below.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autotimm_deploy._atomic import TMP_PREFIX, atomic_write_bytes, cleanup_tmp
from autotimm_deploy.demo import demo_model_path
from autotimm_deploy.engines.sidecar import TMP_MAX_AGE_S, EngineCache
from autotimm_deploy.exporters import run
from autotimm_deploy.exporters.pipeline import ExportOptions, export_model

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "kill_test.py"
CI_POINTS = 50


def run_harness(tmp_path: Path, name: str, *args: str, timeout: float = 900) -> tuple:
    out = tmp_path / f"{name}.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--json", str(out), "--quiet", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert out.is_file(), f"harness wrote no summary (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc, json.loads(out.read_text())


@pytest.fixture(scope="module")
def control(tmp_path_factory):
    """Positive control: kills mid-write while every file is written in place, as a naive exporter would."""
    proc, res = run_harness(tmp_path_factory.mktemp("kill-control"), "control", "--points", "6", "--scenarios",
                            "classifier", "--event-share", "1", "--stages", "mid-write", "--unsafe-writes")
    return proc, res


def test_sigkill_at_random_points_leaves_every_file_complete(tmp_path, control, reliability_record):
    proc, res = run_harness(tmp_path, "kill", "--points", str(CI_POINTS), "--seed", "0")
    brief = {k: v for k, v in res.items() if k not in ("records", "recoveries")}
    bad = [(r["point"], r["kill"], r["phase"], r["violations"]) for r in res["records"] if r["violations"]]
    bad += [(r["chain"], "recovery", r["violations"]) for r in res["recoveries"] if r["violations"]]
    assert proc.returncode == 0 and res["violations"] == 0 and not bad, (bad[:5], brief)
    assert res["points"] == CI_POINTS and res["survived"] == CI_POINTS
    # the kills really landed inside exports, spread over its steps, and at each stage of a file write
    assert res["killed"] >= 0.6 * CI_POINTS, brief
    assert {"onnx-export", "fp16", "parity", "engine-build"} <= set(res["phases_killed"]), brief
    stages = {k.split(" ")[0] for k in res["event_kills"]}
    assert stages == {"mid-write", "before-rename", "after-rename"}, brief
    assert res["scenarios"].get("detector", 0) >= 1 and res["scenarios"].get("classifier", 0) >= 1, brief
    # some kills left a mix of previous and new files behind: the folder was really mid-update
    assert res["killed_with_mixed_generations"] >= 1, brief
    assert res["recovery_runs"] == res["recovery_ok"] >= CI_POINTS // 2, brief

    cproc, cres = control
    reliability_record("crash_safety", {
        **{k: brief[k] for k in ("points", "killed", "finished_before_kill", "survived", "violations",
                                 "recovery_runs", "recovery_ok", "phases", "phases_killed", "event_kills",
                                 "manifest_at_kill", "killed_with_mixed_generations", "scenarios",
                                 "reference_seconds", "writes_per_run", "wall_s")},
        "out_tmp_removed_by_recovery": sum(r["out_tmp_removed"] for r in res["recoveries"]),
        "cache_tmp_removed_by_recovery": sum(r["cache_tmp_removed"] for r in res["recoveries"]),
        "control": {"points": cres["points"], "caught": cres["points"] - cres["survived"],
                    "violations": cres["violations"],
                    "examples": [r["violations"][0][:160] for r in cres["records"] if r["violations"]][:3]},
        "summary": f"`scripts/kill_test.py --points {CI_POINTS}` in `tests/test_crash_safety.py`, {brief['wall_s']} s"})


def test_positive_control_in_place_writes_are_caught(control):
    proc, res = control
    assert proc.returncode == 1 and res["killed"] == res["points"] == 6, res
    for r in res["records"]:
        # a half-written cache engine has no sidecar (removed before the write): a cache miss, correctly
        # not a violation; every other half-written file must be reported
        in_cache = (r.get("writing") or "").startswith("engines/") and r["writing"].endswith(".engine")
        assert bool(r["violations"]) != in_cache, r
        assert all(v[:3] in ("(a)", "(b)", "(c)") for v in r["violations"]), r
    assert res["survived"] < res["points"]
    # the real code repairs the damage: each recovery run (atomic writes) leaves a clean new export
    assert res["recovery_ok"] == res["recovery_runs"] >= 1, res["recoveries"]


@pytest.fixture
def classifier_export(tmp_path):
    out = tmp_path / "cls"
    export_model(demo_model_path("classifier"), out, ExportOptions(engine="none"), progress=None)
    return out


def test_reexport_removes_the_old_manifest_before_the_first_artifact_changes(classifier_export, monkeypatch):
    out = classifier_export
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "manifest.json" in before and "model.raw.onnx" in before

    def killed(path, data):  # the process "dies" as the first artifact is about to be replaced
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "atomic_write_bytes", killed)
    with pytest.raises(KeyboardInterrupt):
        export_model(demo_model_path("classifier"), out, ExportOptions(engine="none", batch=(1, 2, 4)), progress=None)
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "manifest.json" not in after  # it would describe files about to change
    assert {k: v for k, v in before.items() if k != "manifest.json"} == after  # every other file untouched


def test_next_export_removes_leftover_temporary_files(classifier_export):
    out = classifier_export
    left = [out / f"{TMP_PREFIX}model.onnx.k1", out / f"{TMP_PREFIX}manifest.json.k2"]
    for p in left:
        p.write_bytes(b"partial")
    manifest = export_model(demo_model_path("classifier"), out, ExportOptions(engine="none"), progress=None)
    assert not list(out.glob(TMP_PREFIX + "*"))
    assert json.loads((out / "manifest.json").read_text())["artifacts"] == manifest["artifacts"]


def test_engine_cache_removes_only_old_leftovers(tmp_path):
    edir = tmp_path / "engines"
    edir.mkdir()
    old, fresh = edir / f"{TMP_PREFIX}{'a' * 64}.engine.x", edir / f"{TMP_PREFIX}{'b' * 64}.engine.y"
    for p in (old, fresh):
        p.write_bytes(b"partial engine")
    t = time.time() - TMP_MAX_AGE_S - 60
    os.utime(old, (t, t))
    cache = EngineCache(tmp_path)
    assert cache.removed_tmp == [old] and not old.exists() and fresh.exists()  # a concurrent writer's is kept
    assert cache.cleanup_tmp(None) == [fresh] and not fresh.exists()


def test_atomic_write_leaves_the_old_version_when_interrupted(tmp_path, monkeypatch):
    dest = tmp_path / "model.onnx"
    dest.write_bytes(b"old complete version")

    def killed(*_a, **_k):  # dies after the new bytes are written and fsync'd, before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(dest, b"new version")
    monkeypatch.undo()
    assert dest.read_bytes() == b"old complete version"
    assert not list(tmp_path.glob(TMP_PREFIX + "*"))  # the writer removed its own temporary file
    assert cleanup_tmp(tmp_path) == []
