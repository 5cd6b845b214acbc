"""The C++ runtime's TensorRT-free part (cpp/): built with CMake, unit-tested with ctest, and its
NMS + mapping compared with the Python runtime on the same network outputs."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autotimm_deploy.cli.export import main as export_main
from autotimm_deploy.demo import demo_model_path
from autotimm_deploy.demo.shapes import SPLIT_SEEDS, render_detection_sample
from autotimm_deploy.engines import load
from autotimm_deploy.engines.predictor import Letterbox
from autotimm_deploy.models.decode import postprocess_outputs
from autotimm_deploy.models.families import AUTOTIMM_FCOS, SEED_FCOS

CPP = Path(__file__).resolve().parents[2] / "cpp"


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    for tool in ("cmake", "c++"):
        assert shutil.which(tool), f"{tool} is needed to build cpp/ (install cmake and a C++17 compiler)"
    b = tmp_path_factory.mktemp("cpp-build")
    cfg = subprocess.run(["cmake", "-S", str(CPP), "-B", str(b), "-DCMAKE_BUILD_TYPE=Release"], capture_output=True,
                         text=True, check=False)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    # CMake says clearly whether the TensorRT runtime is built (its headers are not obtainable on these machines)
    assert "TensorRT runtime NOT built" in cfg.stdout or "TensorRT found" in cfg.stdout
    make = subprocess.run(["cmake", "--build", str(b), "-j2"], capture_output=True, text=True, check=False)
    assert make.returncode == 0, make.stdout[-3000:] + make.stderr[-3000:]
    assert "warning" not in make.stdout + make.stderr
    return b


def test_ctest_unit_tests_pass(build):
    res = subprocess.run(["ctest", "--output-on-failure"], cwd=build, capture_output=True, text=True, check=False)
    assert res.returncode == 0 and "100% tests passed" in res.stdout, res.stdout + res.stderr


def test_require_tensorrt_fails_clearly_when_absent(tmp_path):
    res = subprocess.run(["cmake", "-S", str(CPP), "-B", str(tmp_path), "-DAUTOTIMM_REQUIRE_TENSORRT=ON",
                          "-DTENSORRT_ROOT=/nonexistent"], capture_output=True, text=True, check=False)
    if "TensorRT found" not in res.stdout:
        assert res.returncode != 0 and "NvInfer.h not found" in res.stderr


def _dump(d, boxes, scores, letterboxes, names, score_thr, iou_thr, max_det, agnostic, family):
    d.mkdir(parents=True, exist_ok=True)
    np.ascontiguousarray(boxes, np.float32).tofile(d / "boxes.f32")
    np.ascontiguousarray(scores, np.float32).tofile(d / "scores.f32")
    rule = family.postprocess
    meta = {"batch": boxes.shape[0], "num_candidates": boxes.shape[1], "num_classes": scores.shape[2],
            "score_thresh": score_thr, "iou_thresh": iou_thr, "max_detections": max_det, "class_agnostic": agnostic,
            "argmax": rule.candidates == "argmax", "pre_nms_top_k": rule.pre_nms_top_k or 0, "class_names": names,
            "images": [{"width": lb.width, "height": lb.height, "scale": lb.scale, "pad_x": lb.pad_x,
                        "pad_y": lb.pad_y} for lb in letterboxes]}
    (d / "meta.json").write_text(json.dumps(meta))


def _compare(build, d, boxes, scores, letterboxes, names, score_thr=0.05, iou_thr=0.6, max_det=100, agnostic=False,
             family=SEED_FCOS):
    _dump(d, boxes, scores, letterboxes, names, score_thr, iou_thr, max_det, agnostic, family)
    res = subprocess.run([str(build / "autotimm_postprocess"), str(d)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    cpp = json.loads(res.stdout)["images"]
    py = postprocess_outputs({"boxes": boxes, "scores": scores}, "boxes", (), (0, 0), score_thr, iou_thr, max_det, agnostic,
                             family=family)
    total = 0
    for c, p, lb in zip(cpp, py, letterboxes):
        pb = lb.to_image(p["boxes"].astype(np.float32))
        assert len(c["detections"]) == len(p["labels"])
        assert [x["label"] for x in c["detections"]] == p["labels"].tolist()
        if len(pb):
            np.testing.assert_allclose([x["box"] for x in c["detections"]], pb, atol=1.5e-3)
            np.testing.assert_allclose([x["score"] for x in c["detections"]], p["scores"], atol=1.5e-6)
        assert (c["width"], c["height"]) == (lb.width, lb.height)
        total += len(p["labels"])
    return total


def test_cpp_matches_python_on_the_same_network_outputs(build, tmp_path):
    out = tmp_path / "export"
    assert export_main([str(demo_model_path("detector")), "--out", str(out), "--no-check", "--engine", "none"]) == 0
    predictor = load(out, backend="onnxruntime")
    imgs = [render_detection_sample(SPLIT_SEEDS["test"] + k, size=128)[0] for k in range(6)]
    imgs += [np.asarray(Image.fromarray(imgs[0]).resize((300, 200))), np.asarray(Image.fromarray(imgs[1]).resize((90, 180)))]
    batch, boxes_lb = [], []
    for im in imgs:  # letterboxed by the Python runtime; the same outputs go to both post-processors
        b, lb = predictor.preprocess([im], (128, 128))
        batch.append(b[0])
        boxes_lb += lb
    outs = predictor.infer({"images": np.stack(batch)})
    names = predictor.info.class_names
    n = _compare(build, tmp_path / "d1", outs["boxes"], outs["scores"], boxes_lb, names)
    assert n >= 20  # low threshold: many candidates go through NMS
    _compare(build, tmp_path / "d2", outs["boxes"], outs["scores"], boxes_lb, names, score_thr=0.3, agnostic=True)


def test_cpp_matches_python_on_dense_random_candidates(build, tmp_path):
    rng = np.random.default_rng(0)
    b, n, c = 2, 3000, 5
    xy = rng.uniform(0, 400, (b, n, 2)).astype(np.float32)
    wh = rng.uniform(4, 80, (b, n, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + wh], axis=2)
    scores = rng.uniform(0, 1, (b, n, c)).astype(np.float32) ** 3
    lbs = [Letterbox(0.8, 600, 500), Letterbox(1.0, 480, 480)]
    total = _compare(build, tmp_path / "r", boxes, scores, lbs, [f"c{i}" for i in range(c)], 0.05, 0.5, 300)
    assert total >= 400  # pre-NMS top-1000 and max 300 detections both bite


def test_cpp_matches_python_with_the_autotimm_rule(build, tmp_path):
    """AutoTimm's family: one argmax class per candidate, no pre-NMS top-k (2500 candidates above the threshold all
    reach NMS), NMS IoU 0.5, centred letterbox offsets removed before scaling."""
    rng = np.random.default_rng(1)
    b, n, c = 2, 4000, 4
    xy = rng.uniform(0, 500, (b, n, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(4, 60, (b, n, 2)).astype(np.float32)], axis=2)
    # distinct scores: the order of equal scores after NMS is not specified (torchvision sorts unstably)
    scores = ((rng.permutation(b * n * c).reshape(b, n, c) + 1) / (b * n * c)).astype(np.float32) ** 4
    lbs = [Letterbox(0.5, 1000, 600, 0.0, 100.0), Letterbox(0.8, 500, 700, 120.0, 0.0)]
    rule = AUTOTIMM_FCOS.postprocess
    total = _compare(build, tmp_path / "a", boxes, scores, lbs, [f"c{i}" for i in range(c)], 0.05, rule.iou_thresh,
                     3000, family=AUTOTIMM_FCOS)
    per_location = (scores.max(axis=2) > 0.05).sum()
    assert per_location > 2 * 1000 and total > 1000  # more than a 1000 pre-NMS top-k would let through


@pytest.mark.parametrize("orientation", range(1, 9))
def test_cpp_exif_orientation_matches_pil(build, tmp_path, orientation):
    """The C++ runtime reads PPM (no EXIF): callers decoding JPEGs pass the orientation tag, and the displayed
    picture is PIL's exif_transpose of it, as in the Python runtime (issue 13, item 5)."""
    from PIL import ImageOps

    stored = np.random.default_rng(orientation).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    (tmp_path / "in.ppm").write_bytes(b"P6\n5 3\n255\n" + stored.tobytes())
    res = subprocess.run([str(build / "autotimm_image"), str(tmp_path / "in.ppm"), str(tmp_path / "out.ppm"),
                          "--exif-orientation", str(orientation)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "stored.png", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "stored.png")))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.ppm")), expected)
