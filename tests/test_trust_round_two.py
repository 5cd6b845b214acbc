"""Wrong answers a new user's trial found (issue 23), each fixed at its cause: inverted YOLOX boxes, an INT8 gate
that passed without measuring, drawings that hid labels or wrote outside --out, checks that came late, AutoTimm's
own annotation layouts refused, a TorchScript failure with no dynamo fallback, two exports into one folder."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autotimm_deploy.cli.export import main as export_main
from autotimm_deploy.cli.infer import main as infer_main
from autotimm_deploy.demo import demo_model_path
from autotimm_deploy.demo.shapes import render_detection_sample, write_detection_split
from autotimm_deploy.errors import ExportError
from autotimm_deploy.exporters.options import ExportOptions
from autotimm_deploy.parity.data import load_dataset
from autotimm_deploy.tasks.detection import Detections, DetectionTask

EXPORT = [sys.executable, "-m", "autotimm_deploy.cli.export"]


@pytest.mark.slow
def test_yolox_boxes_inside_out_are_ordered_and_drawn(tmp_path, autotimm_checkpoint, capsys):
    """AutoTimm's YOLOX head regresses unconstrained distances: l + r < 0 turns a box inside out.  AutoTimm's own
    predict() returns such boxes; autotimm-infer drew them with a traceback.  Results now hold ordered corners."""
    ckpt = torch.load(autotimm_checkpoint("yolox_detector"), map_location="cpu", weights_only=True)
    bias = next(k for k in ckpt["state_dict"] if k.endswith("head.reg_pred.bias"))
    ckpt["state_dict"][bias] = -ckpt["state_dict"][bias] - 30.0  # every distance negative: every box inside out
    path = tmp_path / "inside_out.ckpt"
    torch.save(ckpt, path)
    image = tmp_path / "a.png"
    Image.fromarray(render_detection_sample(7, size=128)[0]).save(image)
    assert infer_main([str(path), str(image), "--out", str(tmp_path / "out")]) == 0
    rec = json.loads((tmp_path / "out" / "detections.json").read_text())["images"][0]
    boxes = np.array([d["box"] for d in rec["detections"]])
    assert len(boxes) >= 3 and (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert (tmp_path / "out" / rec["picture"]).is_file()


def test_drawn_labels_stronger_over_weaker_and_many_detections_readable(tmp_path):
    from autotimm_deploy.drawing import font_for

    task = DetectionTask()
    img = Image.new("RGB", (200, 200), (128, 128, 128))
    # two overlapping boxes: the stronger's label (class 1, green) must be the one on top at the shared corner
    dets = Detections(np.array([[20.0, 60, 120, 150], [20.0, 60, 110, 140]], np.float32), np.array([0.9, 0.4]),
                      np.array([1, 0]), ["b", "a"], 200, 200)
    task.draw(img, dets, 2, font_for(2))
    assert tuple(np.asarray(img)[58, 21]) == (60, 180, 75)  # the label box above (20, 60): the 0.9 detection's
    many = Detections(np.tile(np.array([[10.0, 30, 60, 90]], np.float32), (100, 1)) + np.arange(100)[:, None],
                      np.linspace(0.99, 0.1, 100), np.zeros(100, int), ["x"] * 100, 200, 200)
    img2 = Image.new("RGB", (200, 200), (128, 128, 128))
    task.draw(img2, many, 2, font_for(2))
    assert not (np.asarray(img2) == 128).all()  # drawn, with 25 labels and a count of the rest


def test_the_same_image_twice_gets_two_pictures_inside_out(tmp_path):
    image = tmp_path / "a.png"
    Image.fromarray(render_detection_sample(5, size=128)[0]).save(image)
    out = tmp_path / "out"
    assert infer_main([str(demo_model_path("detector")), str(image.resolve()), str(image.resolve()), "--out",
                       str(out)]) == 0
    records = json.loads((out / "detections.json").read_text())["images"]
    assert [r["picture"] for r in records] == ["a.png", "a_2.png"]
    assert all((out / r["picture"]).is_file() for r in records)  # both written, inside --out


def test_int8_needs_annotations_or_an_explicit_opt_out(tmp_path, capsys):
    calib = write_detection_split(tmp_path / "calib", "train", 8)
    bare = tmp_path / "bare"
    bare.mkdir()
    for p in Path(calib).glob("*.png"):  # images without annotations
        (bare / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"
    start = time.monotonic()
    rc = export_main([str(demo_model_path("detector")), "--out", str(out), "--engine", "none", "--int8", "--calib",
                      str(calib), "--int8-eval", str(bare)])
    err = capsys.readouterr().err
    assert rc == 2 and "--int8-eval" in err and "no annotations" in err and "--int8-no-task-gate" in err
    assert not out.exists() and time.monotonic() - start < 30  # refused before any work
    rc = export_main([str(demo_model_path("detector")), "--out", str(out), "--engine", "none", "--int8", "--calib",
                      str(calib), "--int8-eval", str(bare), "--int8-no-task-gate"])
    text = capsys.readouterr().out
    assert rc == 0 and "NOT measured (--int8-no-task-gate)" in text


def test_empty_calibration_and_evaluation_folders_are_refused_at_once(tmp_path):
    empty, other = tmp_path / "empty", write_detection_split(tmp_path / "d", "test", 2)
    empty.mkdir()
    for kw in (dict(calib=str(empty), int8_eval=str(other)), dict(calib=str(other), int8_eval=str(empty))):
        start = time.monotonic()
        with pytest.raises(ExportError, match="no images in the folder"):
            ExportOptions(int8=True, **kw)
        assert time.monotonic() - start < 1.0


def test_autotimm_csv_headers_and_class_folders_of_an_unnamed_model(tmp_path):
    root = tmp_path / "det"
    root.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "a.png")
    (root / "annotations.csv").write_text("image_path,x_min,y_min,x_max,y_max,label\na.png,1,2,11,12,dog\n"
                                          "a.png,3,3,9,9,cat\n")
    ds = load_dataset(root, ["class_0", "class_1"], "detection")  # AutoTimm numbers the sorted names: cat 0, dog 1
    assert ds.samples[0].labels.tolist() == [1, 0] and "AutoTimm's order" in ds.notes[0]
    ds = load_dataset(root, ["dog", "cat"], "detection")  # named classes: by name, no note
    assert ds.samples[0].labels.tolist() == [0, 1] and not ds.notes
    for name in ("rectangle", "ellipse"):
        (tmp_path / "cls" / name).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "cls" / name / "x.png")
    ds = load_dataset(tmp_path / "cls", ["class_0", "class_1"], "classification")  # ImageFolder's sorted order
    assert ds.format == "folders" and sorted((s.path.parent.name, s.label) for s in ds.samples) == \
        [("ellipse", 0), ("rectangle", 1)]
    (tmp_path / "ccsv").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ccsv" / "x.png")
    (tmp_path / "ccsv" / "annotations.csv").write_text("image_path,label\nx.png,zebra\n")
    assert load_dataset(tmp_path / "ccsv", ["class_0", "class_1"], "classification").samples[0].label == 0


def test_a_torchscript_failure_falls_back_to_the_dynamo_exporter(tmp_path, monkeypatch, small_classifier):
    """Any TorchScript exporter failure (volo_d1_384's col2im at opset 18: "'NoneType' object is not
    subscriptable") now tries the dynamo exporter, which exports it."""
    from autotimm_deploy.exporters import onnx_export
    from autotimm_deploy.exporters.onnx_export import ExportConfig, export_onnx
    from autotimm_deploy.models.loaded import LoadedModel

    def broken(*a, **k):
        raise TypeError("'NoneType' object is not subscriptable \n(Occurred when translating col2im).")

    monkeypatch.setattr(onnx_export, "_export_torchscript", broken)
    loaded = LoadedModel(small_classifier, "classification", small_classifier.config,
                         {"class_names": None, "mean": [0.5] * 3, "std": [0.25] * 3}, "0" * 64, None)
    model = export_onnx(loaded, ExportConfig((64, 64), opset=18))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["exporter"].startswith("dynamo exporter") and "col2im" in meta["exporter"]


@pytest.mark.slow
def test_volo_exports_at_opset_18(tmp_path):
    from autotimm_deploy import ImageClassifier, save_model
    from autotimm_deploy.exporters.pipeline import export_model

    torch.manual_seed(0)
    save_model(ImageClassifier("volo_d1_384", num_classes=3), tmp_path / "volo.pt", input_size=(384, 384))
    manifest = export_model(tmp_path / "volo.pt", tmp_path / "out", ExportOptions(opset=18, engine="none"),
                            progress=None)
    assert manifest["parity"]["passed"] and manifest["onnx_exporter"]["path"] == "dynamo"
    assert "col2im" in manifest["onnx_exporter"]["why"]


def test_an_export_into_a_folder_another_export_holds_is_refused(tmp_path, capsys):
    from autotimm_deploy._atomic import folder_lock

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("the other export's")
    with folder_lock(out):  # what a running export holds
        rc = export_main([str(demo_model_path("classifier")), "--out", str(out), "--engine", "none"])
    assert rc == 2 and "another autotimm-export is writing into this folder" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]  # nothing written, nothing removed


@pytest.mark.system
def test_an_export_is_refused_while_another_process_holds_the_folder_and_runs_after(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(  # another process, as a running autotimm-export holds it
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\nfrom autotimm_deploy._atomic import folder_lock\n"
         "with folder_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n    sys.stdin.readline()\n", str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        cmd = EXPORT + [str(demo_model_path("detector")), "--out", str(out), "--engine", "none"]
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2 and "another autotimm-export is writing into this folder" in second.stderr
        assert list(out.iterdir()) == []  # refused before writing anything
    finally:
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(timeout=60)
    third = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # the lock went with its holder
    assert third.returncode == 0, third.stderr
    listed = {a["file"] for a in json.loads((out / "manifest.json").read_text())["artifacts"]} | {"manifest.json"}
    assert {p.name for p in out.iterdir()} == listed  # nothing unlisted
