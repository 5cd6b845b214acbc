import json

import pytest
import torch

from autotimm_deploy.cli.export import main
from autotimm_deploy.demo import demo_model_path

pytestmark = pytest.mark.system


def test_export_demo_detector(tmp_path, capsys):
    out = tmp_path / "det"
    assert main([str(demo_model_path("detector")), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    roles = {a["role"]: a for a in manifest["artifacts"]}
    assert roles["onnx"]["file"] == "model.onnx" and roles["onnx"]["parity"] == "pass"
    assert [o["name"] for o in roles["onnx"]["outputs"]] == ["boxes", "scores"]
    assert roles["onnx"]["outputs"][0]["shape"] == ["batch", 341, 4]
    assert [o["name"] for o in roles["onnx-raw"]["outputs"]][:3] == ["cls_p3", "cls_p4", "cls_p5"]
    assert manifest["class_names"] == ["rectangle", "ellipse", "triangle", "cross"]
    parity = manifest["parity"]
    assert parity["passed"] and [r["artifact"] for r in parity["reports"]] == ["model.onnx"]
    det = parity["reports"][0]["detections"]
    assert det["reference"] >= 4 and det["matched"] == det["reference"]  # real detections, all matched
    assert all((out / f).exists() for f in ("parity.md", "inputs.json", "pytorch_outputs.json", "model.raw.onnx"))
    assert not list(out.glob(".autotimm-tmp-*"))
    printed = capsys.readouterr()
    assert "parity: PASS" in printed.out and "[4/5] parity" in printed.err and "[5/5] building FP32 engine" in printed.err


def test_export_dynamic_hw_checks_second_shape(tmp_path):
    out = tmp_path / "dyn"
    assert main([str(demo_model_path("detector")), "--out", str(out), "--dynamic-hw", "--batch", "1:1:2",
                 "--decode", "boxes", "--topk", "50"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert any("second shape 2x3x160x192" in s for s in manifest["parity"]["reports"][0]["inputs"])
    onnx_art = [a for a in manifest["artifacts"] if a["role"] == "onnx"][0]
    assert onnx_art["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    assert [o["name"] for o in onnx_art["outputs"]] == ["boxes", "scores", "indices"]


def test_export_classifier(tmp_path):
    out = tmp_path / "cls"
    assert main([str(demo_model_path("classifier")), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parity"]["passed"] and manifest["parity"]["reports"][0]["outputs"][0]["name"] == "logits"


@pytest.mark.parametrize("argv, message", [
    (["--input-size", "100", "128"], "nearest valid height: 96 or 128"),
    (["--batch", "4:2:8"], "1 <= MIN <= OPT <= MAX"),
])
def test_usage_errors_exit_2(tmp_path, capsys, argv, message):
    assert main([str(demo_model_path("detector")), "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_files_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "missing.pt")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    assert main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not a model file" in err and "Traceback" not in err


def test_output_path_that_is_a_file_exits_2(tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("x")
    assert main([str(demo_model_path("detector")), "--out", str(target)]) == 2
    err = capsys.readouterr().err  # it used to say only "File exists: ..." (issue 13, item 8)
    assert f"--out {target} is an existing file, not a folder" in err and "Traceback" not in err


def test_parity_failure_exits_1(tmp_path, monkeypatch, capsys):
    import autotimm_deploy.parity.check as check

    original = check.run_parity

    def perturbed(model, *args, **kwargs):
        with torch.no_grad():
            model.head.cls_subnet[-1].bias += 1.0  # the PyTorch model drifts from the exported graph
        return original(model, *args, **kwargs)

    monkeypatch.setattr(check, "run_parity", perturbed)
    out = tmp_path / "fail"
    assert main([str(demo_model_path("detector")), "--out", str(out)]) == 1
    assert "parity: FAIL" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["parity"]["passed"] is False


def test_fp16_cli_reports_both_verdicts(tmp_path, capsys):
    out = tmp_path / "fp16"
    assert main([str(demo_model_path("detector")), "--out", str(out), "--fp16", "--fp16-input", "--engine", "none"]) == 0
    printed = capsys.readouterr()
    assert "parity model.onnx: PASS" in printed.out and "parity model.fp16.onnx: PASS" in printed.out
    assert "[4/5] FP16 ONNX: FP32 islands InstanceNormalization" in printed.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["engine"] is None and not list(out.glob("*.engine"))
    art = [a for a in manifest["artifacts"] if a["role"] == "onnx-fp16"][0]
    assert art["inputs"][0]["dtype"] == "float16" and art["outputs"][0]["dtype"] == "float32"
    assert manifest["fp16"]["fp16_nodes"] > 50 and manifest["fp16"]["overflow_kept_fp32"] == []


@pytest.mark.parametrize("argv, message", [
    (["--min-size", "64", "64"], "need --dynamic-hw"),
    (["--fp16-input"], "--fp16-input needs --fp16"),
    (["--dynamic-hw", "--min-size", "256", "256"], "must lie within --min-size 256x256"),
    (["--fp16", "--fp32-ops", "+Sigmoid", "--fp32-nodes", "nope*", "--engine", "tensorrt"], "pypi.nvidia.com"),
])
def test_fp16_and_engine_usage_errors(tmp_path, capsys, argv, message, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # full TensorRT absent, as on these machines
    assert main([str(demo_model_path("detector")), "--out", str(tmp_path / "o"), "--no-check", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def _strict(path):
    def refuse(constant):
        raise ValueError(f"{path.name}: {constant} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_every_json_file_written_is_strict_json(tmp_path):
    """parity.json and manifest.json held a bare NaN (``"unmatched_best_iou": NaN`` when every detection matched),
    which strict parsers such as JavaScript's reject (issue 13, item 1)."""
    from autotimm_deploy.cli.infer import main as infer_main
    from autotimm_deploy.cli.parity import main as parity_main
    from autotimm_deploy.demo.shapes import write_detection_split

    out = tmp_path / "det"
    assert main([str(demo_model_path("detector")), "--out", str(out), "--fp16"]) == 0
    data = write_detection_split(tmp_path / "data", "test", 4)
    assert infer_main([str(out), *map(str, sorted(data.glob("*.png"))), "--out", str(tmp_path / "inf")]) == 0
    assert parity_main([str(demo_model_path("detector")), str(out), "--data", str(data), "--report",
                        str(tmp_path / "rep"), "-q"]) == 0
    files = sorted(out.glob("*.json")) + [tmp_path / "inf" / "detections.json", tmp_path / "rep" / "parity.json"]
    assert {"manifest.json", "parity.json", "model.fp16.engine.json"} <= {p.name for p in files}
    docs = {str(p.relative_to(tmp_path)): _strict(p) for p in files}
    det = docs["det/parity.json"]["reports"][0]["detections"]
    assert det["matched"] == det["reference"] and det["unmatched_best_iou"] is None  # missing, not NaN
