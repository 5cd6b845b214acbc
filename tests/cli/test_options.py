"""Options are checked before any work: one line naming the flag, exit 2, and nothing written to --out
(issue 13, item 8); a reused --out keeps no stale artifact of an earlier export."""

import json
import time

import pytest
from PIL import Image

from autotimm_deploy.cli.export import main as export_main
from autotimm_deploy.cli.infer import main as infer_main
from autotimm_deploy.demo import demo_model_path

DET = str(demo_model_path("detector"))


@pytest.mark.parametrize("argv, message", [
    (["--topk", "0"], "--topk must be >= 1, got 0"),
    (["--topk", "5", "--decode", "raw"], "--topk needs --decode boxes (got --decode raw)"),
    (["--target-cc", "foo"], "--target-cc: FOO is not a TensorRT-RTX target"),
    (["--target-cc", "SM86,sm90"], "--target-cc: SM90 is not a TensorRT-RTX target"),
    (["--workspace", "-5"], "--workspace must be >= 1 MiB, got -5"),
    (["--opset", "9"], "--opset must be between 13 and 20"),
    (["--opset", "25"], "--opset must be between 13 and 20"),
    (["--input-size", "0", "0"], "--input-size needs two positive numbers H W, got 0 0"),
    (["--dynamic-hw", "--max-size", "0", "64"], "--max-size needs two positive numbers H W"),
    (["--fp32-ops", "Softmaxx"], "--fp32-ops: Softmaxx is not an ONNX op type (did you mean Softmax"),
    (["--cache-dir", "{file}/cache"], "--cache-dir .*/cache cannot be written"),
    (["--int8"], "--int8 needs --calib DIR (calibration images) and --int8-eval DIR"),
    (["--int8", "--calib", "{dir}", "--int8-eval", "{file}"], "--int8-eval .*/file: not a folder"),
    (["--int8", "--calib", "{dir}", "--int8-eval", "{dir}", "--calib-count", "0"], "--calib-count must be >= 1, got 0"),
    (["--int8", "--calib", "{dir}", "--int8-eval", "{dir}", "--int8-max-drop", "-1"], "--int8-max-drop must be >= 0"),
    (["--int8", "--calib", "{dir}", "--int8-eval", "{dir}", "--no-check"], "--int8 is gated on accuracy; it cannot"),
    (["--calib", "{dir}"], "--calib and --int8-eval apply to --int8"),
    (["--int8", "--calib", "{empty}", "--int8-eval", "{dir}"], "--calib .*/empty: no images in the folder"),
    (["--int8", "--calib", "{dir}", "--int8-eval", "{empty}"], "--int8-eval .*/empty: no images in the folder"),
])
def test_bad_options_fail_up_front_naming_the_flag(tmp_path, capsys, argv, message):
    import re

    (tmp_path / "file").write_text("a file, not a folder")
    (tmp_path / "dir").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "dir" / "a.png")  # a folder with an image: the next check speaks
    (tmp_path / "empty").mkdir()
    argv = [a.replace("{file}", str(tmp_path / "file")).replace("{dir}", str(tmp_path / "dir"))
            .replace("{empty}", str(tmp_path / "empty")) for a in argv]
    out = tmp_path / "out"
    start = time.perf_counter()
    assert export_main([DET, "--out", str(out), *argv]) == 2
    assert time.perf_counter() - start < 5  # before any export work (the export itself takes 10 s)
    err = capsys.readouterr().err.strip().splitlines()
    assert re.search(re.escape(message).replace(r"\.\*", ".*"), err[-1]), err[-1]
    assert sum("error" in line for line in err) == 1 and not out.exists()


def test_reused_out_keeps_no_stale_artifacts(tmp_path):
    out = tmp_path / "out"
    assert export_main([DET, "--out", str(out), "--fp16"]) == 0
    assert (out / "model.fp16.onnx").exists() and (out / "model.fp16.engine").exists()
    assert export_main([DET, "--out", str(out), "--engine", "none", "--no-check"]) == 0
    listed = {a["file"] for a in json.loads((out / "manifest.json").read_text())["artifacts"]}
    assert sorted(p.name for p in out.iterdir()) == sorted(listed | {"manifest.json"})
    assert not (out / "model.fp16.onnx").exists() and not (out / "parity.json").exists()


@pytest.mark.parametrize("argv, message", [
    (["--score-thr", "1.5"], "--score-thr must be in [0, 1], got 1.5"),
    (["--iou-thr", "0"], "--iou-thr must be in (0, 1], got 0.0"),
    (["--max-det", "0"], "--max-det must be >= 1, got 0"),
])
def test_infer_thresholds_name_themselves(tmp_path, capsys, argv, message):
    assert infer_main([DET, DET, "--out", str(tmp_path / "o"), *argv]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message)


def test_infer_precision_on_a_single_onnx_is_refused(tmp_path, capsys):
    assert export_main([DET, "--out", str(tmp_path / "e"), "--engine", "none", "--no-check"]) == 0
    assert infer_main([str(tmp_path / "e" / "model.onnx"), DET, "--precision", "fp16", "--out", str(tmp_path / "o")]) == 2
    assert "--precision chooses between an export directory's FP32, FP16 and INT8 ONNX" in capsys.readouterr().err
