"""autotimm-parity end to end: the demo models pass every level; a perturbed weight, an FP16 overflow planted
in a copy of the graph and a decode without the +0.5 stride offset each fail at the right level, naming the output."""

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from autotimm_deploy.cli.parity import main
from autotimm_deploy.demo import demo_model_path
from autotimm_deploy.demo.shapes import write_classification_split, write_detection_split
from autotimm_deploy.engines.library import gpu_info
from autotimm_deploy.exporters.pipeline import ExportOptions, export_model
from autotimm_deploy.models.io import save_model
from autotimm_deploy.models.readers import load_model_file

pytestmark = pytest.mark.slow

DET = demo_model_path("detector")
CLS = demo_model_path("classifier")
N_IMAGES = 48


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity_cli")
    export_model(DET, root / "det", ExportOptions(fp16=True, engine="tensorrt-rtx"), progress=None)
    export_model(DET, root / "det_raw", ExportOptions(decode="raw", engine="none", check=False), progress=None)
    export_model(CLS, root / "cls", ExportOptions(fp16=True, engine="none", check=False), progress=None)
    write_detection_split(root / "det_test", "test", N_IMAGES)
    write_classification_split(root / "cls_test", "test", N_IMAGES)
    return root


def _run(args, tmp_path, capsys):
    rc = main([*map(str, args), "--report", str(tmp_path / "rep"), "--junit", str(tmp_path / "junit.xml")])
    report = json.loads((tmp_path / "rep" / "parity.json").read_text())
    return rc, report, capsys.readouterr()


def _levels(report, name):
    art = next(a for a in report["artifacts"] if Path(a["path"]).name == name)
    return art["levels"]


def test_demo_detector_passes_every_level_on_the_held_out_split(work, tmp_path, capsys):
    rc, rep, cap = _run([DET, work / "det", "--data", work / "det_test"], tmp_path, capsys)
    assert rc == 0, cap.err
    assert [Path(a["path"]).name for a in rep["artifacts"]] == ["model.onnx", "model.fp16.onnx", "model.fp16.engine"]
    for name, tol in (("model.onnx", 0.1), ("model.fp16.onnx", 0.2)):
        lv = _levels(rep, name)
        assert {k: v["status"] for k, v in lv.items()} == {"tensor": "pass", "detection": "pass", "task": "pass"}
        boxes = next(o for o in lv["tensor"]["details"]["outputs"] if o["name"] == "boxes")
        assert boxes["max_abs"] < (1e-2 if name == "model.onnx" else 1.0) and boxes["nonfinite"] == 0
        det = lv["detection"]["details"]
        assert det["reference"] > N_IMAGES and det["matched"] == det["reference"]
        task = lv["task"]["details"]
        assert task["images"] == N_IMAGES and task["pytorch"]["map50"] > 0.9  # a trained model, real mAP
        assert task["artifact"]["map"] >= task["pytorch"]["map"] - tol / 100
    fp32 = _levels(rep, "model.onnx")["task"]["details"]
    assert fp32["artifact"] == fp32["pytorch"]  # FP32: identical detections, identical mAP
    engine = _levels(rep, "model.fp16.engine")
    if gpu_info() is None:
        assert {v["status"] for v in engine.values()} == {"skipped"}
        assert "no CUDA GPU" in engine["tensor"]["message"]
    else:
        assert {v["status"] for v in engine.values()} == {"pass"}
    # JUnit: one test case per artifact and level
    suites = ET.parse(tmp_path / "junit.xml").getroot()
    assert suites.get("tests") == "9" and suites.get("failures") == "0"
    assert suites.get("skipped") == ("3" if gpu_info() is None else "0")
    cases = [(c.get("classname"), c.get("name")) for c in suites.iter("testcase")]
    assert cases[:3] == [("model.onnx", "tensor"), ("model.onnx", "detection"), ("model.onnx", "task")]
    md = (tmp_path / "rep" / "parity.md").read_text()
    assert "## autotimm-parity: PASS" in md and "| PyTorch FP32 (reference) |" in md


def test_skipped_engine_fails_under_strict(work, tmp_path, capsys):
    if gpu_info() is not None:
        pytest.skip("this machine runs the engine: nothing is skipped")  # pragma: no cover
    rc = main([str(DET), str(work / "det" / "model.fp16.engine"), "--random", "2", "--strict",
               "--junit", str(tmp_path / "j.xml")])
    assert rc == 1
    assert ET.parse(tmp_path / "j.xml").getroot().get("failures") == "3"
    assert "model.fp16.engine tensor" in capsys.readouterr().err


def test_demo_classifier_top1_agreement_and_accuracy(work, tmp_path, capsys):
    rc, rep, cap = _run([CLS, work / "cls", "--data", work / "cls_test"], tmp_path, capsys)
    assert rc == 0, cap.err
    for name in ("model.onnx", "model.fp16.onnx"):
        lv = _levels(rep, name)
        assert set(lv) == {"tensor", "task"}  # no detection level for a classifier
        task = lv["task"]["details"]
        assert task["artifact"]["top1_agreement"] == 1.0 and task["images"] == N_IMAGES
        assert task["pytorch"]["top1"] >= 0.95 and task["artifact"]["top1"] == task["pytorch"]["top1"]


def test_perturbed_weight_fails_the_tensor_level_on_p3_outputs_only(work, tmp_path, capsys):
    loaded = load_model_file(DET)
    with torch.no_grad():
        loaded.model.fpn.lateral_conv3.weight[0, 0] += 0.2  # one weight of the P3 lateral conv
    bad = save_model(loaded.model, tmp_path / "perturbed.pt", **{k: loaded.metadata[k] for k in
                                                                 ("class_names", "input_size", "mean", "std")})
    export_model(bad, tmp_path / "exp", ExportOptions(decode="raw", engine="none", check=False), progress=None)
    rc, rep, cap = _run([DET, tmp_path / "exp" / "model.onnx", "--data", work / "det_test"], tmp_path, capsys)
    assert rc == 1
    lv = _levels(rep, "model.onnx")
    assert lv["tensor"]["status"] == "fail"
    failing = [o["name"] for o in lv["tensor"]["details"]["outputs"] if not o["passed"]]
    assert set(failing) <= {"cls_p3", "bbox_p3", "ctr_p3"} and "cls_p3" in failing
    assert "cls_p3: max abs err" in lv["tensor"]["message"] and "p4" not in lv["tensor"]["message"]
    assert lv["task"]["status"] == "pass"  # too small to move the mAP: only the tensor/score checks see it
    assert "exported from a different model file" in rep["artifacts"][0]["notes"][0]
    assert "model.onnx tensor" in cap.err


def _plant_fp16_overflow(src: Path, dst: Path, prefix: str = "model.head.cls_subnet.0.", k: int = 12) -> None:
    """Scale the first classification-subnet conv (shared by the five levels) by 2^k.  Its output goes
    straight into GroupNorm, which is scale-invariant: the same function in FP32 (up to GroupNorm's eps),
    but in FP16 the conv's output overflows to inf wherever |x| > 65504 / 2^k before the FP32 island."""
    m = onnx.load(str(src))
    n = 0
    for init in m.graph.initializer:
        if init.name.startswith(prefix):
            arr = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array((arr * np.asarray(2.0 ** k, arr.dtype)).astype(arr.dtype), init.name))
            n += 1
    assert n == 2  # weight and bias
    onnx.save(m, str(dst))


def test_planted_fp16_overflow_fails_the_tensor_level_with_nonfinite_outputs(work, tmp_path, capsys):
    _plant_fp16_overflow(work / "det" / "model.fp16.onnx", tmp_path / "overflow.fp16.onnx")
    _plant_fp16_overflow(work / "det" / "model.onnx", tmp_path / "control.onnx")  # FP32: same edit, exact
    rc, rep, cap = _run([DET, tmp_path / "overflow.fp16.onnx", tmp_path / "control.onnx", "--random", "4"],
                        tmp_path, capsys)
    assert rc == 1
    lv = _levels(rep, "overflow.fp16.onnx")
    assert lv["tensor"]["status"] == "fail"
    outs = {o["name"]: o for o in lv["tensor"]["details"]["outputs"]}
    assert outs["boxes"]["nonfinite"] + outs["scores"]["nonfinite"] > 0
    assert "non-finite value(s) (inf/NaN)" in lv["tensor"]["message"]
    assert _levels(rep, "control.onnx")["tensor"]["status"] == "pass"  # the edit itself is harmless in FP32


def _drop_stride_offset(src: Path, dst: Path) -> None:
    """The classic decode bug: anchor points at (j * s, i * s) instead of ((j + 0.5) * s, (i + 0.5) * s)."""
    m = onnx.load(str(src))
    strides = {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}
    n = 0
    for init in m.graph.initializer:
        if init.name.startswith("anchors_"):
            s = strides[init.name.split("/")[0].split("_")[1]]
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) - s / 2, init.name))
            n += 1
    assert n == 5
    onnx.save(m, str(dst))


def test_missing_stride_offset_fails_boxes_detection_and_task(work, tmp_path, capsys):
    _drop_stride_offset(work / "det" / "model.onnx", tmp_path / "no_offset.onnx")
    rc, rep, cap = _run([DET, tmp_path / "no_offset.onnx", "--data", work / "det_test"], tmp_path, capsys)
    assert rc == 1
    lv = _levels(rep, "no_offset.onnx")
    assert {k: v["status"] for k, v in lv.items()} == {"tensor": "fail", "detection": "fail", "task": "fail"}
    outs = {o["name"]: o for o in lv["tensor"]["details"]["outputs"]}
    assert not outs["boxes"]["passed"] and outs["scores"]["passed"]
    assert 3.9 < outs["boxes"]["max_abs"] < 64.01  # s/2 px, less where clipping to the image absorbs it
    assert lv["tensor"]["message"].startswith("boxes: max abs err")
    assert "outputs out of tolerance: boxes" in lv["detection"]["message"]
    task = lv["task"]["details"]
    assert task["artifact"]["map"] < task["pytorch"]["map"] - 0.05  # a real regression, not a rounding effect


def test_tolerances_file_and_map_tol_change_the_rule(work, tmp_path, capsys):
    tol = tmp_path / "tol.json"
    tol.write_text(json.dumps({"fp32": {"task": {"map_points": 0.7}, "tensor": {"atol": {"boxes": 0.5}}}}))
    rc, rep, _ = _run([DET, work / "det" / "model.onnx", "--data", work / "det_test", "--tolerances", tol],
                      tmp_path, capsys)
    assert rc == 0
    assert rep["thresholds"]["fp32"]["task"]["map_points"] == 0.7
    assert rep["thresholds"]["fp32"]["tensor"]["atol"]["boxes"] == 0.5
    assert rep["thresholds"]["fp32"]["tensor"]["atol"][""] == 1e-4  # untouched defaults stay
    assert _levels(rep, "model.onnx")["task"]["details"]["allowed_drop_points"] == 0.7
    tol.write_text(json.dumps({"fp16": {"task": {"map_point": 0.5}}}))
    assert main([str(DET), str(work / "det" / "model.onnx"), "--tolerances", str(tol)]) == 2
    assert "unknown key 'map_point'" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["{det}/model.onnx", "--data", "{root}/nowhere"], "not a directory"),
    (["{root}/nothing.onnx"], "no such artifact file"),
    (["{root}/cls/model.onnx"], "a classification artifact, but"),
    (["{det}/model.onnx", "--random", "0"], "--random needs at least 1"),
    (["{det}/model.onnx", "--random", "2", "--data", "{root}/det_test"], "not allowed with argument"),
    (["{det}/model.onnx", "--annotations", "{root}/x.json"], "--annotations needs --data"),
])
def test_usage_and_input_errors_exit_2_with_one_line(work, capsys, args, message):
    args = [a.format(det=work / "det", root=work) for a in args]
    assert main([str(DET), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_malformed_annotation_names_file_and_entry(work, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(work / "det_test", data)
    coco = json.loads((data / "annotations.json").read_text())
    coco["annotations"][5]["bbox"] = [10, 10, -3, 4]
    (data / "annotations.json").write_text(json.dumps(coco))
    assert main([str(DET), str(work / "det" / "model.onnx"), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert f"{data / 'annotations.json'}: annotations[5] (id {coco['annotations'][5]['id']}): bbox" in err
    assert "width and height must be > 0" in err


def test_console_script_exit_codes(work, tmp_path):
    exe = Path(sys.executable).with_name("autotimm-parity")
    ok = subprocess.run([str(exe), str(DET), str(work / "det_raw"), "--random", "2", "-q"], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("autotimm-parity: PASS"), ok.stderr
    _drop_stride_offset(work / "det" / "model.onnx", tmp_path / "bad.onnx")
    bad = subprocess.run([str(exe), str(DET), str(tmp_path / "bad.onnx"), "--random", "2", "-q"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "FAIL" in bad.stderr and "bad.onnx tensor" in bad.stderr


def test_two_export_folders_in_one_run_have_distinct_junit_names(work, tmp_path, capsys):
    """Both folders hold model.onnx: the suites and cases were named after the file alone, so CI systems
    merged or overwrote them (issue 13, item 11)."""
    rc, report, out = _run([DET, work / "det", work / "det_raw", "--random", "2"], tmp_path, capsys)
    assert rc == 0
    root = ET.parse(tmp_path / "junit.xml").getroot()
    suites = [s.get("name") for s in root.iter("testsuite")]
    cases = [(c.get("classname"), c.get("name")) for c in root.iter("testcase")]
    assert len(suites) == len(set(suites)) == 4 and len(cases) == len(set(cases))
    assert "parity det/model.onnx" in suites and "parity det_raw/model.onnx" in suites
    md = (tmp_path / "rep" / "parity.md").read_text()
    assert "`det/model.onnx`" in md and "`det_raw/model.onnx`" in md
