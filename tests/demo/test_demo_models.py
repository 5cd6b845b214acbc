import json

import numpy as np

from autotimm_deploy import load_model_file
from autotimm_deploy.demo import WEIGHTS_DIR, demo_model_path
from autotimm_deploy.demo.shapes import CLASSES, detection_split, render_detection_sample, write_detection_split
from autotimm_deploy.demo.train import evaluate_classifier, evaluate_detector


def test_shapes_are_deterministic_and_valid():
    a = render_detection_sample(123)
    b = render_detection_sample(123)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])
    assert not np.array_equal(a[0], render_detection_sample(124)[0])
    for img, boxes, labels in detection_split("val", 50):
        assert img.shape == (128, 128, 3) and len(boxes) == len(labels) >= 1
        assert (boxes[:, 2:] > boxes[:, :2]).all() and boxes.min() >= 0 and boxes.max() <= 128
        assert set(labels.tolist()) <= set(range(len(CLASSES)))


def test_write_split_coco(tmp_path):
    write_detection_split(tmp_path, "val", 3)
    coco = json.loads((tmp_path / "annotations.json").read_text())
    assert len(coco["images"]) == 3 and len(coco["annotations"]) >= 3
    assert (tmp_path / coco["images"][0]["file_name"]).exists()


def test_demo_models_are_small():
    for kind in ("detector", "classifier"):
        assert demo_model_path(kind).stat().st_size < 10 * 1024 * 1024


def test_demo_detector_accuracy_held_out():
    loaded = load_model_file(demo_model_path("detector"))
    assert loaded.metadata["input_size"] == [128, 128] and loaded.metadata["class_names"] == list(CLASSES)
    m = evaluate_detector(loaded.model, "val", count=200)
    assert m["map50"] >= 0.7, m
    recorded = json.loads((WEIGHTS_DIR / "metrics.json").read_text())["detector"]
    assert recorded["map50"] >= 0.7 and abs(recorded["map50"] - m["map50"]) < 0.05


def test_demo_classifier_accuracy_held_out():
    loaded = load_model_file(demo_model_path("classifier"))
    acc = evaluate_classifier(loaded.model, "val", count=400)
    assert acc >= 0.9
