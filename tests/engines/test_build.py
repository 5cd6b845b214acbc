"""Real TensorRT-RTX builds (ahead of time, no GPU needed), sidecars, cache and load checks."""

import hashlib
import json
import shutil
import sys

import onnx
import pytest
from onnx import TensorProto, helper

from autotimm_deploy.cli.export import main
from autotimm_deploy.demo import demo_model_path
from autotimm_deploy.engines import (BuildConfig, EngineCache, check_engine, engine_from_onnx, engine_runnable,
                                     import_library, select_library, static_profile)
from autotimm_deploy.engines.library import gpu_info
from autotimm_deploy.engines.sidecar import CACHE_KEY_FIELDS, cache_key, read_sidecar
from autotimm_deploy.errors import EngineBuildError, EngineCorrupt, EngineError, EngineIncompatible

import tensorrt_rtx  # a core dependency: builds engines ahead of time on this GPU-less machine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rtx():
    return import_library("tensorrt-rtx")


@pytest.fixture(scope="module")
def detector_export(tmp_path_factory):
    """autotimm-export demo_detector --fp16 with a dynamic batch 1:2:4 profile (static H/W)."""
    out = tmp_path_factory.mktemp("det16")
    cache = tmp_path_factory.mktemp("cache")
    assert main([str(demo_model_path("detector")), "--out", str(out), "--fp16", "--batch", "1:2:4",
                 "--cache-dir", str(cache)]) == 0
    return out, cache


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fp16_detector_engine_and_sidecar(detector_export):
    out, _ = detector_export
    engine = out / "model.fp16.engine"
    side = json.loads((out / "model.fp16.engine.json").read_text())
    assert engine.read_bytes()[:4] == b"vtrt"
    assert side["library"] == {"name": "tensorrt-rtx", "module": "tensorrt_rtx", "version": tensorrt_rtx.__version__}
    assert side["precision"] == "fp16" and side["strongly_typed"] is True
    assert side["onnx"] == {"file": "model.fp16.onnx", "sha256": _sha(out / "model.fp16.onnx")}
    assert side["engine"]["sha256"] == _sha(engine) and side["engine"]["bytes"] == engine.stat().st_size
    assert side["profiles"] == [{"images": {"min": [1, 3, 128, 128], "opt": [2, 3, 128, 128], "max": [4, 3, 128, 128]}}]
    assert side["io"]["inputs"] == [{"name": "images", "dtype": "float32", "shape": [-1, 3, 128, 128]}]
    assert side["io"]["outputs"] == [{"name": "boxes", "dtype": "float32", "shape": [-1, 341, 4]},
                                     {"name": "scores", "dtype": "float32", "shape": [-1, 341, 4]}]
    expected_targets = [gpu_info()["sm"]] if gpu_info() and gpu_info()["sm"] in side["targets"]["compute_capabilities"] \
        else ["SM75", "SM80", "SM86", "SM89", "SM120", "SM121"]
    assert side["targets"]["compute_capabilities"] == expected_targets
    assert side["build"]["seconds"] > 0 and side["cache"] == "miss" and len(side["cache_key"]) == 64
    assert side["fp32_islands"]["op_types"][0] == "InstanceNormalization"
    assert check_engine(engine)["cache_key"] == side["cache_key"]


def test_manifest_says_whether_the_engine_ran(detector_export):
    out, _ = detector_export
    manifest = json.loads((out / "manifest.json").read_text())
    roles = {a["role"]: a for a in manifest["artifacts"]}
    assert roles["onnx-fp16"]["parity"] == "pass" and roles["engine"]["file"] == "model.fp16.engine"
    reports = {r["artifact"]: r for r in manifest["parity"]["reports"]}
    fp16 = reports["model.fp16.onnx"]
    assert fp16["passed"] and fp16["detections"]["matched_fraction"] >= 0.99
    errs = {o["name"]: o["max_abs"] for o in fp16["outputs"]}
    assert 1e-3 < errs["boxes"] < 0.5 and errs["scores"] < 5e-3
    assert manifest["engine"]["selected_because"].startswith(("auto: tensorrt is not installed", "auto: tensorrt "))
    if gpu_info() is None:
        assert manifest["engine"]["parity"]["status"] == "not executed"
        assert manifest["engine"]["parity"]["summary"].startswith("engine built, not executed: no CUDA GPU")
        assert roles["engine"]["parity"] == "not executed" and "model.fp16.engine" not in reports
    else:  # executed, or refused with the reason (e.g. H100 is SM90, not a TensorRT-RTX target)
        assert manifest["engine"]["parity"]["status"] in ("pass", "not executed")


def test_fp16_detector_dynamic_hw_engine(tmp_path):
    out = tmp_path / "dyn"
    assert main([str(demo_model_path("detector")), "--out", str(out), "--fp16", "--dynamic-hw", "--batch", "1:1:2",
                 "--min-size", "64", "96", "--max-size", "256", "256", "--topk", "100", "--no-cache"]) == 0
    side = read_sidecar(out / "model.fp16.engine")
    assert side["profiles"] == [{"images": {"min": [1, 3, 64, 96], "opt": [1, 3, 128, 128], "max": [2, 3, 256, 256]}}]
    assert side["io"]["inputs"][0]["shape"] == [-1, 3, -1, -1]
    assert [o["name"] for o in side["io"]["outputs"]] == ["boxes", "scores", "indices"]
    assert side["io"]["outputs"][2]["dtype"] == "int64"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parity"]["passed"] and len(manifest["parity"]["reports"]) == 2


def test_cache_hit_and_every_change_rebuilds(detector_export, tmp_path):
    out, cache = detector_export
    base = [str(demo_model_path("detector")), "--fp16", "--cache-dir", str(cache), "--no-check"]
    again = tmp_path / "again"
    assert main(base + ["--out", str(again), "--batch", "1:2:4"]) == 0
    side = read_sidecar(again / "model.fp16.engine")
    first = read_sidecar(out / "model.fp16.engine")
    assert side["cache"] == "hit" and side["cache_key"] == first["cache_key"]
    assert (again / "model.fp16.engine").read_bytes() == (out / "model.fp16.engine").read_bytes()
    for label, extra in [("profile", ["--batch", "1:1:4"]), ("onnx", ["--batch", "1:2:4", "--topk", "20"]),
                         ("targets", ["--batch", "1:2:4", "--target-cc", "SM86"]),
                         ("islands", ["--batch", "1:2:4", "--fp32-ops", "+Sigmoid"])]:
        d = tmp_path / label
        assert main(base + ["--out", str(d), *extra]) == 0
        s = read_sidecar(d / "model.fp16.engine")
        assert s["cache"] == "miss" and s["cache_key"] != first["cache_key"], label
    off = tmp_path / "off"
    assert main(base + ["--out", str(off), "--batch", "1:2:4", "--no-cache"]) == 0
    assert read_sidecar(off / "model.fp16.engine")["cache"] == "off"


def test_cache_key_covers_each_field_alone():
    fields = {"onnx_sha256": "a" * 64, "library": "tensorrt-rtx", "library_version": "1.7.1.116", "precision": "fp16",
              "profiles": [{"images": {"min": [1, 3, 8, 8], "opt": [1, 3, 8, 8], "max": [1, 3, 8, 8]}}],
              "targets": ["SM86"], "workspace_mib": None, "fp32_islands": {"op_types": ["Exp"], "node_names": []},
              "builder": {"fp32_layers": [], "strongly_typed": True}}
    changed = {"onnx_sha256": "b" * 64, "library": "tensorrt", "library_version": "1.8.0.1", "precision": "fp32",
               "profiles": [], "targets": ["SM89"], "workspace_mib": 512, "fp32_islands": None,
               "builder": {"fp32_layers": ["x"], "strongly_typed": True}}
    assert set(changed) == set(CACHE_KEY_FIELDS)
    base = cache_key(fields)
    for f, v in changed.items():
        assert cache_key({**fields, f: v}) != base, f
    with pytest.raises(ValueError, match="missing"):
        cache_key({k: v for k, v in fields.items() if k != "targets"})


def test_damaged_cache_entry_is_a_miss(tmp_path, rtx):
    cache = EngineCache(tmp_path / "c")
    cache.put("a" * 64, b"vtrt-bytes", {"cache_key": "a" * 64, "engine": {"sha256": hashlib.sha256(b"vtrt-bytes").hexdigest()}})
    assert cache.get("a" * 64)[0] == b"vtrt-bytes"
    (tmp_path / "c" / "engines" / ("a" * 64 + ".engine")).write_bytes(b"vtrt-bytez")
    assert cache.get("a" * 64) is None
    with pytest.raises(ValueError):
        cache.get("../../etc/passwd")


@pytest.fixture(scope="module")
def classifier_engines(tmp_path_factory):
    out = tmp_path_factory.mktemp("cls")
    assert main([str(demo_model_path("classifier")), "--out", str(out / "fp16"), "--fp16", "--batch", "2",
                 "--no-cache"]) == 0
    assert main([str(demo_model_path("classifier")), "--out", str(out / "fp32"), "--dynamic-hw", "--batch", "1:4:8",
                 "--no-cache"]) == 0
    return out


def test_classifier_fp16_and_dynamic_fp32_engines(classifier_engines):
    s16 = read_sidecar(classifier_engines / "fp16" / "model.fp16.engine")
    assert s16["precision"] == "fp16" and s16["io"]["outputs"] == [{"name": "logits", "dtype": "float32", "shape": [2, 4]}]
    assert s16["profiles"] == [{"images": {"min": [2, 3, 64, 64], "opt": [2, 3, 64, 64], "max": [2, 3, 64, 64]}}]
    s32 = read_sidecar(classifier_engines / "fp32" / "model.engine")
    assert s32["precision"] == "fp32" and s32["onnx"]["file"] == "model.onnx"
    assert s32["profiles"] == [{"images": {"min": [1, 3, 32, 32], "opt": [4, 3, 64, 64], "max": [8, 3, 128, 128]}}]
    assert s32["io"]["inputs"][0]["shape"] == [-1, 3, -1, -1]
    if gpu_info() is None:
        # TensorRT-RTX cannot compile an FP32 GEMM for Turing: SM75 is dropped from the *default* targets, and said so
        assert "SM75" in s32["dropped_targets"] and "Gemm" in s32["dropped_targets"]["SM75"]
        assert "SM75" not in s32["targets"]["compute_capabilities"]
        assert s16["dropped_targets"] == {} and "SM75" in s16["targets"]["compute_capabilities"]


def test_named_target_that_cannot_compile_is_an_error(classifier_engines, tmp_path, rtx):
    cfg = BuildConfig(profiles=[static_profile("images", (1, 3, 64, 64))], targets=("SM75",))
    with pytest.raises(EngineBuildError, match=r"SM75.*\[ONNX node '/model/head/fc/Gemm', op Gemm\]"):
        engine_from_onnx(classifier_engines / "fp32" / "model.onnx", tmp_path / "x.engine", rtx, cfg, progress=None)
    assert not (tmp_path / "x.engine").exists()


def test_strongly_typed_fp16_needs_the_fp16_onnx(classifier_engines, tmp_path, rtx):
    cfg = BuildConfig(profiles=[static_profile("images", (1, 3, 64, 64))], precision="fp16", targets=("SM86",))
    with pytest.raises(EngineError, match="strongly typed.*no float16 tensor"):
        engine_from_onnx(classifier_engines / "fp32" / "model.onnx", tmp_path / "x.engine", rtx, cfg, progress=None)


def _tiny(tmp_path, node, name):
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 10, 4]),
                                       helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 1, 10])],
                          [helper.make_tensor_value_info("o", TensorProto.INT64, [None, 3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)], ir_version=9)
    onnx.save(m, tmp_path / name)
    return tmp_path / name


def test_parse_and_build_errors_name_node_and_op(tmp_path, rtx):
    cfg = BuildConfig(targets=("SM86",))
    bad = _tiny(tmp_path, helper.make_node("FooBar", ["b", "s"], ["o"], name="my_foo", domain="custom"), "foo.onnx")
    with pytest.raises(EngineBuildError, match=r"could not parse foo.onnx: node 0 'my_foo' \(FooBar\)"):
        engine_from_onnx(bad, tmp_path / "foo.engine", rtx, cfg, progress=None)
    nms = _tiny(tmp_path, helper.make_node("NonMaxSuppression", ["b", "s"], ["o"], name="my_nms"), "nms.onnx")
    with pytest.raises(EngineBuildError, match=r"failed to build nms.onnx: .*\[ONNX node 'my_nms', op NonMaxSuppression\]"):
        engine_from_onnx(nms, tmp_path / "nms.engine", rtx, cfg, progress=None)


def test_build_config_validation(tmp_path):
    with pytest.raises(EngineError, match="SM90, i.e. H100/H200, is not a TensorRT-RTX target"):
        BuildConfig(targets=("SM90",))
    with pytest.raises(EngineError, match="min <= opt <= max"):
        BuildConfig(profiles=[{"images": ((4, 3, 8, 8), (1, 3, 8, 8), (8, 3, 8, 8))}])
    out = tmp_path / "o"  # tests write only to temporary folders (this one used to default next to the demo model)
    assert main([str(demo_model_path("classifier")), "--target-cc", "SM90", "--no-check", "--out", str(out)]) == 2
    assert not out.exists()


@pytest.fixture
def engine_copy(classifier_engines, tmp_path):
    src = classifier_engines / "fp16" / "model.fp16.engine"
    dst = tmp_path / "model.fp16.engine"
    shutil.copy(src, dst)
    shutil.copy(src.with_name(src.name + ".json"), dst.with_name(dst.name + ".json"))
    return dst


def test_load_checks_refuse_damaged_and_foreign_files(engine_copy, classifier_engines):
    side = check_engine(engine_copy)
    data = engine_copy.read_bytes()
    engine_copy.write_bytes(data[: len(data) // 2])
    with pytest.raises(EngineCorrupt, match="truncated"):
        check_engine(engine_copy)
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0x01
    engine_copy.write_bytes(bytes(flipped))
    with pytest.raises(EngineCorrupt, match="SHA-256 .* does not match"):
        check_engine(engine_copy)
    # an ONNX file renamed .engine, with a sidecar that matches its bytes: caught by the magic check
    onnx_bytes = (classifier_engines / "fp16" / "model.fp16.onnx").read_bytes()
    engine_copy.write_bytes(onnx_bytes)
    sc = engine_copy.with_name(engine_copy.name + ".json")
    sc.write_text(json.dumps({**side, "engine": {**side["engine"], "bytes": len(onnx_bytes),
                                                  "sha256": hashlib.sha256(onnx_bytes).hexdigest()}}))
    with pytest.raises(EngineCorrupt, match=r"not a tensorrt-rtx engine \(probably an ONNX file\)"):
        check_engine(engine_copy)
    # an intact engine whose sidecar names another library version
    engine_copy.write_bytes(data)
    sc.write_text(json.dumps({**side, "library": {**side["library"], "version": "0.9.0.1"}}))
    with pytest.raises(EngineIncompatible, match=r"built with tensorrt-rtx 0.9.0.1, this machine has"):
        check_engine(engine_copy)
    sc.unlink()
    with pytest.raises(EngineIncompatible, match="no sidecar"):
        check_engine(engine_copy)


def test_runnable_reason_matches_this_machine(engine_copy):
    side = check_engine(engine_copy)
    ok, why = engine_runnable(side)
    gpu = gpu_info()
    if gpu is None:
        assert not ok and why.startswith("no CUDA GPU")
    else:
        assert ok == (gpu["sm"] in side["targets"]["compute_capabilities"]), why
    ok, why = engine_runnable({**side, "targets": {"compute_capabilities": ["SM121"]}})
    assert not ok and ("no CUDA GPU" in why or "not among the engine's targets SM121" in why)


def test_library_selection(monkeypatch):
    lib, why = select_library("none")
    assert lib is None and "no engine" in why
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on machines without full TensorRT
    lib, why = select_library("auto")
    assert lib.name == "tensorrt-rtx" and why.startswith("auto: tensorrt is not installed")
    with pytest.raises(EngineError, match="pip install tensorrt --extra-index-url https://pypi.nvidia.com"):
        select_library("tensorrt")
    with pytest.raises(EngineError, match="must be one of"):
        select_library("onnx")


def test_module_example_builds_an_engine_ahead_of_time(tmp_path):
    """engines/build.py's example (doctests build no engine: it runs here)."""
    from autotimm_deploy.demo import demo_model_path
    from autotimm_deploy.engines.build import BuildConfig, engine_from_onnx, static_profile
    from autotimm_deploy.engines.library import import_library
    from autotimm_deploy.exporters.onnx_export import ExportConfig, export_onnx
    from autotimm_deploy.models.readers import load_model_file

    (tmp_path / "m.onnx").write_bytes(export_onnx(load_model_file(demo_model_path("classifier")),
                                                  ExportConfig(input_size=(64, 64))).SerializeToString())
    side = engine_from_onnx(tmp_path / "m.onnx", tmp_path / "m.engine", import_library("tensorrt-rtx"),
                            BuildConfig(profiles=[static_profile("images", (1, 3, 64, 64))], targets=("SM86",)),
                            cache=None, progress=None)
    assert (side["library"]["name"], side["precision"], side["io"]["outputs"][0]["name"], side["cache"]) == \
        ("tensorrt-rtx", "fp32", "logits", "off")
    assert (tmp_path / "m.engine").stat().st_size == side["engine"]["bytes"] > 100_000
