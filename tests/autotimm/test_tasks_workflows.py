"""The new tasks' workflows on checkpoints real AutoTimm wrote: autotimm-parity's task level (mIoU, mask mAP) on
annotated folders in AutoTimm's own layouts, the INT8 gate on the task's metric, autotimm-infer's files and
pictures, and the Triton post-processing step."""

import json

import numpy as np
import pytest

from autotimm_deploy.cli.infer import main as infer_main
from autotimm_deploy.cli.parity import main as parity_main
from autotimm_deploy.demo.shapes import (SEGMENTATION_CLASSES, SPLIT_SEEDS, render_detection_sample,
                                         write_instance_split, write_segmentation_split)
from autotimm_deploy.engines import load
from autotimm_deploy.exporters.pipeline import ExportOptions, export_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_segmentation_split(root / "seg", "test", 12)
    write_segmentation_split(root / "seg", "train", 16)
    write_instance_split(root / "inst", "test", 12)
    return root


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    p = tmp_path_factory.mktemp("names") / "classes.txt"
    p.write_text("\n".join(SEGMENTATION_CLASSES) + "\n")
    return p


def _levels(report, artifact):
    """{level: {status, message, details}} of one artifact in autotimm-parity's parity.json."""
    return next(a for a in report["artifacts"] if a["path"].endswith("/" + artifact))["levels"]


def test_parity_task_level_miou_on_autotimm_png_layout(tmp_path, data, names, autotimm_checkpoint, capsys):
    ckpt = autotimm_checkpoint("semantic_fcn")
    out = tmp_path / "export"
    export_model(ckpt, out, ExportOptions(engine="none", fp16=True), progress=None)
    rc = parity_main([str(ckpt), str(out), "--data", str(data / "seg" / "test"), "--report", str(tmp_path / "rep"),
                      "--class-names", str(names)])
    report = json.loads((tmp_path / "rep" / "parity.json").read_text())
    assert rc == 0, capsys.readouterr().out[-3000:]
    for artifact in ("model.onnx", "model.fp16.onnx"):
        lv = _levels(report, artifact)
        assert [*lv] == ["tensor", "pixels", "task"] and all(v["status"] == "pass" for v in lv.values())
        task = lv["task"]["details"]
        assert set(task["artifact"]) >= {"miou", "pixel_accuracy"} and 0.0 < task["pytorch"]["miou"] <= 1.0
        assert abs(task["artifact"]["miou"] - task["pytorch"]["miou"]) <= 0.002
        assert task["images"] == 12 and "mIoU" in lv["task"]["message"]


def test_parity_task_level_mask_map_on_autotimm_coco_layout(tmp_path, data, autotimm_checkpoint):
    ckpt = autotimm_checkpoint("instance")
    out = tmp_path / "export"
    export_model(ckpt, out, ExportOptions(engine="none"), progress=None)
    rc = parity_main([str(ckpt), str(out), "--data", str(data / "inst" / "test"), "--annotations",
                      str(data / "inst" / "annotations" / "instances_test.json"), "--report", str(tmp_path / "rep")])
    report = json.loads((tmp_path / "rep" / "parity.json").read_text())
    lv = _levels(report, "model.onnx")
    assert rc == 0 and lv["task"]["status"] == "pass" and lv["detection"]["status"] == "pass"
    task = lv["task"]["details"]
    assert {"mask_map", "mask_map50", "map", "map50"} <= set(task["artifact"])
    assert task["artifact"]["mask_map"] == pytest.approx(task["pytorch"]["mask_map"], abs=1e-3)


def test_int8_gate_bounds_the_task_metric(tmp_path, data, names, autotimm_checkpoint):
    ckpt = autotimm_checkpoint("semantic_deeplab")
    opts = ExportOptions(engine="none", int8=True, calib=str(data / "seg" / "train"), int8_eval=str(data / "seg" / "test"),
                         class_names=tuple(SEGMENTATION_CLASSES))
    manifest = export_model(ckpt, tmp_path / "int8", opts, progress=None)
    gate = manifest["int8"]["steps"][-1]["gate"]
    for form in ("tensorrt", "cpu"):
        assert gate[form]["levels"]["task"] == "pass" and gate[form]["drop_points"] is not None
        assert gate[form]["drop_points"] <= 1.0  # mIoU points, the task's metric
    assert manifest["parity"]["passed"]


def test_infer_writes_masks_and_label_areas(tmp_path, autotimm_checkpoint):
    from PIL import Image

    img = render_detection_sample(SPLIT_SEEDS["test"], size=128)[0]
    Image.fromarray(img).save(tmp_path / "a.png")
    for kind, file in (("instance", "instances.json"), ("semantic_deeplab", "segmentations.json")):
        out = tmp_path / kind
        export_model(autotimm_checkpoint(kind), out / "export", ExportOptions(engine="none", check=False),
                     progress=None)
        assert infer_main([str(out / "export"), str(tmp_path / "a.png"), "--out", str(out / "infer")]) == 0
        doc = json.loads((out / "infer" / file).read_text())
        rec = doc["images"][0]
        picture = np.asarray(Image.open(out / "infer" / rec["picture"]))
        assert picture.shape == img.shape and (picture != img).mean() > 0.05  # masks or labels drawn over it
        if kind == "instance":
            from pycocotools import mask as mask_utils

            dets = rec["detections"]
            assert dets and all("mask" in d for d in dets)
            m = mask_utils.decode(dict(dets[0]["mask"], counts=dets[0]["mask"]["counts"].encode()))
            assert m.shape == (128, 128) and m.sum() == dets[0]["area"] > 0
        else:
            assert abs(sum(c["fraction"] for c in rec["classes"]) - 1.0) < 1e-4


@pytest.mark.parametrize("kind", ["instance", "semantic_deeplab"])
def test_triton_postprocess_step_equals_predict(kind, tmp_path, autotimm_checkpoint):
    from autotimm_deploy.serve import steps
    from autotimm_deploy.serve.repository import TritonOptions, write_repository
    from autotimm_deploy.tasks import get_task

    export_model(autotimm_checkpoint(kind), tmp_path / "e", ExportOptions(engine="none", check=False), progress=None)
    summary = write_repository(tmp_path / "e", tmp_path / "repo", TritonOptions(network="python"))
    post = next(m for m in summary["models"] if m.endswith("_postprocess"))
    if kind == "instance":  # the mask network runs inside the post-processing step
        assert (tmp_path / "repo" / post / "1" / "mask.onnx").is_file()
    predictor = load(tmp_path / "e")
    images = [render_detection_sample(SPLIT_SEEDS["test"] + k, size=s)[0] for k, s in enumerate((128, 96))]
    batch, rows = steps.preprocess(images, predictor.info, np.float32)
    arrays = steps.postprocess(predictor.backend.infer({"images": batch}), rows, predictor.info,
                               networks=predictor.networks)
    task = get_task(predictor.info.task)
    assert {t.name for t in task.triton_outputs(4, 5)} == set(arrays)
    for i, (im, expected) in enumerate(zip(images, predictor.predict(images))):
        got = task.from_triton(arrays, i, im.shape[1], im.shape[0], predictor.info.class_names)
        if kind == "instance":
            np.testing.assert_allclose(got.boxes, expected.boxes, atol=1e-4)
            np.testing.assert_array_equal(got.masks, expected.masks)
        else:
            np.testing.assert_array_equal(got.labels, expected.labels)
