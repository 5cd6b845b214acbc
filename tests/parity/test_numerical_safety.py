"""NaN/Inf validation in the parity step: every output of every artifact (and PyTorch's own) must be finite.

Extreme box-regression logits are made harmless by the clamp before Exp (exp(10) = 22026 px) and the
check proves it; a copy of the graph without the clamp overflows to inf in its distance outputs and is
caught, naming the outputs (with fused boxes the clip to the image absorbs inf, and the check agrees);
a model whose own output is inf fails instead of "matching" an equally broken artifact.
"""

import numpy as np
import onnx
import torch

from autotimm_deploy.exporters.onnx_export import ExportConfig, export_onnx
from autotimm_deploy.exporters.pipeline import level_sizes
from autotimm_deploy.exporters.surgery import apply_decode
from autotimm_deploy.models.loaded import LoadedModel
from autotimm_deploy.parity.check import run_parity

META = {"class_names": None, "mean": [0.5] * 3, "std": [0.25] * 3}


def _export(model, path, decode):
    raw = export_onnx(LoadedModel(model, "detection", model.config, META, "0" * 64, None), ExportConfig((64, 64)))
    onnx.save(apply_decode(raw, decode, model.strides, 4, level_sizes((64, 64), model.strides)), path)
    return path


def _feeds():
    rng = np.random.default_rng(0)
    return [("random", {"images": rng.standard_normal((2, 3, 64, 64), dtype=np.float32)})]


def _without_clamp(src, dst):
    """Bypass every ``Min(x, BBOX_LOG_CLAMP)`` that feeds an Exp: the decode as naively written."""
    m = onnx.load(str(src))
    producers = {o: n for n in m.graph.node for o in n.output}
    removed = 0
    for n in m.graph.node:
        if n.op_type == "Exp" and producers.get(n.input[0]) is not None and producers[n.input[0]].op_type == "Min":
            n.input[0] = producers[n.input[0]].input[0]
            removed += 1
    onnx.save(m, str(dst))
    return removed


def test_extreme_regression_logits_stay_finite_and_an_unclamped_graph_is_caught(small_detector, tmp_path,
                                                                                reliability_record):
    with torch.no_grad():
        small_detector.head.bbox_subnet[3].bias.fill_(200.0)  # exp(200) = 7e86: beyond FP32 (3.4e38)
    figures = {}
    for decode in ("activations", "boxes"):
        path = _export(small_detector, tmp_path / f"{decode}.onnx", decode)
        rep = run_parity(small_detector, path, _feeds(), decode)
        assert rep.passed, rep.summary()  # the clamp: finite, and equal to the reference decoder
        assert all(o.nonfinite == 0 and o.reference_nonfinite == 0 for o in rep.outputs)
        naive = tmp_path / f"{decode}_naive.onnx"
        assert _without_clamp(path, naive) == 5
        bad = run_parity(small_detector, naive, _feeds(), decode)
        failing = {o.name: o for o in bad.outputs if not o.passed}
        figures[decode] = {"clamped": "pass", "unclamped_failing_outputs": sorted(failing)}
        if decode == "activations":  # exp overflows to inf in the distances themselves
            assert set(failing) == {f"bbox_p{l}" for l in range(3, 8)}
            assert all(o.nonfinite > 0 and "non-finite value(s) (inf/NaN)" in o.message() for o in failing.values())
        else:  # fused boxes: clipping to the image maps px -/+ inf to 0 / W exactly as it maps px -/+ 22026
            assert bad.passed and all(o.nonfinite == 0 for o in bad.outputs)
    reliability_record("numerical_safety_extreme_logits", figures)


def test_a_model_whose_own_output_is_inf_fails_instead_of_matching(small_detector, tmp_path):
    with torch.no_grad():
        small_detector.head.cls_subnet[3].bias[1] = float("inf")
    path = _export(small_detector, tmp_path / "raw.onnx", "raw")
    rep = run_parity(small_detector, path, _feeds(), "raw")
    assert not rep.passed
    cls = next(o for o in rep.outputs if o.name == "cls_p3")
    assert cls.reference_nonfinite > 0 and "PyTorch's own output has" in cls.message()
