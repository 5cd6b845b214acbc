"""Engine execution: needs a GPU that the engine's library can run on (marked ``gpu``)."""

import json

import numpy as np
import pytest

from autotimm_deploy.cli.export import main
from autotimm_deploy.demo import demo_model_path
from autotimm_deploy.engines import check_engine, engine_runnable
from autotimm_deploy.engines.runner import EngineRunner


@pytest.mark.gpu
def test_fp16_engine_runs_and_matches_pytorch(tmp_path):
    out = tmp_path / "det"
    code = main([str(demo_model_path("detector")), "--out", str(out), "--fp16", "--batch", "1:2:4", "--no-cache"])
    manifest = json.loads((out / "manifest.json").read_text())
    ok, why = engine_runnable(check_engine(out / "model.fp16.engine"))
    if not ok:  # e.g. H100/H200 (SM90) is not a TensorRT-RTX target: the manifest must say so, not pretend
        assert manifest["engine"]["parity"] == {"status": "not executed", "reason": why,
                                                "summary": manifest["engine"]["parity"]["summary"]}
        pytest.skip(f"engine cannot run on this GPU: {why}")
    assert code == 0 and manifest["engine"]["parity"]["status"] == "pass"
    reports = {r["artifact"]: r for r in manifest["parity"]["reports"]}
    assert reports["model.fp16.engine"]["detections"]["matched_fraction"] >= 0.99
    runner = EngineRunner(out / "model.fp16.engine")
    with runner:
        x = np.zeros((2, 3, 128, 128), np.float32)
        res = runner.infer({"images": x})
    assert res["boxes"].shape == (2, 341, 4) and np.isfinite(res["scores"]).all()


@pytest.mark.gpu
def test_engine_predictor_agrees_with_pytorch_and_cuda_graphs_replay(tmp_path):
    from autotimm_deploy.demo.shapes import SPLIT_SEEDS, render_detection_sample
    from autotimm_deploy.engines import load
    from autotimm_deploy.parity.check import match_detections

    out = tmp_path / "det"
    assert main([str(demo_model_path("detector")), "--out", str(out), "--fp16", "--no-check", "--no-cache"]) == 0
    ok, why = engine_runnable(check_engine(out / "model.fp16.engine"))
    if not ok:
        pytest.skip(f"engine cannot run on this GPU: {why}")
    images = [render_detection_sample(SPLIT_SEEDS["test"] + k, size=128)[0] for k in range(12)]
    ref = load(demo_model_path("detector")).predict(images, score_thresh=0.3)
    eng = load(out, backend="tensorrt", cuda_graphs=True)
    assert eng.backend.name.startswith("tensorrt")
    for _ in range(3):  # call 2 captures the CUDA graph, call 3 replays it
        got = eng.predict(images, score_thresh=0.3)
        as_d = lambda rs: [{"boxes": r.boxes, "scores": r.scores, "labels": r.labels} for r in rs]
        agree = match_detections(as_d(ref), as_d(got), score_thr=0.3, iou_thr=0.9)
        assert agree.matched_fraction >= 0.99
    assert eng.backend._graphs  # a graph was captured and replayed
