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

pytestmark = pytest.mark.slow

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


# -- instance masks and semantic segmentation: the C++ post-processing of the other tasks, on the same outputs ------
def _letterbox_dict(lb):
    return {"width": lb.width, "height": lb.height, "scale": lb.scale, "pad_x": lb.pad_x, "pad_y": lb.pad_y,
            "scale_y": lb.scale_y}


def _placed(sizes, net, preprocess):
    """Where images of these (h, w) go in a net-sized input, as the Python runtime places them."""
    from autotimm_deploy.images import letterbox_images

    return [letterbox_images([np.zeros((h, w, 3), np.uint8)], net, (0.5,) * 3, (0.25,) * 3, preprocess)[1][0]
            for h, w in sizes]


def _run(build, d, *extra):
    res = subprocess.run([str(build / "autotimm_postprocess"), str(d), *map(str, extra)], capture_output=True,
                         text=True, check=False)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)["images"]


def _random_boxes(rng, n, h, w):
    """Boxes of every kind a mask is pasted into: inside, across and beyond the border, below one pixel, flipped."""
    xy = rng.uniform(-20, [w + 10, h + 10], (n, 2))
    wh = rng.uniform(0.05, [w / 2, h / 2], (n, 2)) * rng.choice([1.0, 0.02, -0.3], (n, 1), p=[0.8, 0.15, 0.05])
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def _mask_probs(rng, n, m, near=None):
    """Half uniform noise, half smooth blobs; or (``near``) within a few float32 steps of that threshold, where
    every rounding of the resize decides pixels."""
    if near is not None:
        return (np.float32(near) + rng.integers(-4, 5, (n, m, m)) * np.float32(2 ** -25)).astype(np.float32)
    noise = rng.uniform(0, 1, (n, m, m))
    yy, xx = np.mgrid[0:m, 0:m] / (m - 1)
    c = rng.uniform(0, 1, (n, 2, 1, 1))
    blob = np.exp(-((yy - c[:, 0]) ** 2 + (xx - c[:, 1]) ** 2) / rng.uniform(0.02, 0.3, (n, 1, 1)))
    return np.where(np.arange(n)[:, None, None] % 2 == 0, noise, blob).astype(np.float32)


@pytest.mark.parametrize("m, threshold, near", [(28, 0.5, False), (14, 0.4, False), (28, 0.5, True)])
def test_cpp_paste_masks_equal_python(build, tmp_path, m, threshold, near):
    """autotimm_paste (C++ paste_masks) against autotimm_deploy.models.masks.paste_masks on the same probabilities and
    boxes: every pixel equal (the same float32 / float64 operations in the same order), also where every
    probability lies within a few float32 steps of the threshold."""
    from autotimm_deploy.models.masks import paste_masks

    rng = np.random.default_rng(m + near)
    n, h, w = 400, 96, 128
    probs, boxes = _mask_probs(rng, n, m, threshold if near else None), _random_boxes(rng, n, h, w)
    probs.tofile(tmp_path / "p.f32")
    boxes.tofile(tmp_path / "b.f32")
    args = [tmp_path / "p.f32", tmp_path / "b.f32", n, m, h, w, repr(threshold), tmp_path / "out.u8"]
    res = subprocess.run([str(build / "autotimm_paste"), *map(str, args)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    cpp = np.fromfile(tmp_path / "out.u8", np.uint8).reshape(n, h, w).astype(bool)
    py = paste_masks(probs, boxes, h, w, threshold)
    assert py.sum() > 30_000
    assert int((cpp != py).sum()) == 0, f"{int((cpp != py).sum())} of {py.size} pixels differ"


class _MaskNetwork:
    """The mask network's stand-in: the probabilities of masks.f32, handed out in order (one call per image, or one
    for the batch), so that the Python runtime gets for each final detection what the C++ dump holds for it."""

    def __init__(self, probs):
        self.probs, self.start = probs, 0

    def infer(self, feed):
        n = len(feed["boxes"] if "boxes" in feed else feed["rois"])
        self.start += n
        assert self.start <= len(self.probs)
        return {"masks": self.probs[self.start - n:self.start]}


def test_cpp_instances_equal_python(build, tmp_path):
    """Instance segmentation on the same outputs: the C++ runs the family's detection rule (the dump carries the
    family declaration: argmax, no pre-NMS top-k, IoU 0.5), then pastes masks.f32 (the probabilities the Python
    runtime's mask network returned for its final detections, in order) into its own detections; detections equal,
    every mask's RLE string equal to InstanceSegmentationTask.postprocess's (stretch and centred letterbox)."""
    from dataclasses import replace

    from pycocotools import mask as mask_utils

    from autotimm_deploy.artifact import ArtifactInfo
    from autotimm_deploy.models.families import AUTOTIMM_INSTANCE
    from autotimm_deploy.tasks.instance import InstanceSegmentationTask

    rng = np.random.default_rng(7)
    net, b, n, c = (96, 128), 3, 1500, 3
    xy = rng.uniform(-8, [net[1], net[0]], (b, n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.3, 50, (b, n, 2))], axis=2).astype(np.float32)
    scores = ((rng.permutation(b * n * c).reshape(b, n, c) + 1) / (b * n * c)).astype(np.float32) ** 6
    family = AUTOTIMM_INSTANCE
    lbs = (_placed([(300, 200), (50, 75)], net, family.preprocess)
           + _placed([(120, 300)], net, replace(family.preprocess, resize="letterbox", align="center")))
    assert lbs[0].scale_y is not None and lbs[2].pad_y > 0
    names = [f"c{i}" for i in range(c)]
    info = ArtifactInfo("instance_segmentation", names, net, (0.5,) * 3, (0.25,) * 3, decode="boxes", family=family)
    task = InstanceSegmentationTask()
    outputs = {"boxes": boxes, "scores": scores, "mask_features": np.zeros((b, 1, 1, 1), np.float32)}
    total = sum(len(d["boxes"]) for d in task.detections(outputs, info, net))
    probs = _mask_probs(rng, total, family.masks.mask_size)
    mask_network = _MaskNetwork(probs)
    py = [r.to_dict() for r in task.postprocess(outputs, info, net, lbs, networks={"mask": mask_network})]
    assert mask_network.start == total

    d = tmp_path / "inst"
    d.mkdir()
    boxes.tofile(d / "boxes.f32")
    scores.tofile(d / "scores.f32")
    probs.tofile(d / "masks.f32")
    (d / "meta.json").write_text(json.dumps({
        "task": "instance_segmentation", "batch": b, "num_candidates": n, "num_classes": c, "class_names": names,
        "net_size": list(net), "num_masks": total, "family": family.to_dict(),
        "images": [_letterbox_dict(lb) for lb in lbs]}))
    cpp = _run(build, d)
    assert total > 150 and len(cpp) == b
    differing = 0
    for ci, pi in zip(cpp, py):
        assert (ci["width"], ci["height"]) == (pi["width"], pi["height"])
        assert [x["label"] for x in ci["detections"]] == [x["label"] for x in pi["detections"]]
        for cd, pd in zip(ci["detections"], pi["detections"]):
            np.testing.assert_allclose(cd["box"], pd["box"], atol=1.5e-3)
            assert abs(cd["score"] - pd["score"]) <= 1.5e-6 and cd["class_name"] == pd["class_name"]
            assert cd["mask"]["size"] == pd["mask"]["size"] == [pi["height"], pi["width"]]
            if cd["mask"]["counts"] != pd["mask"]["counts"]:
                dec = [mask_utils.decode({"size": x["mask"]["size"], "counts": x["mask"]["counts"].encode()})
                       for x in (cd, pd)]
                differing += int((dec[0] != dec[1]).sum())
            assert cd["area"] == pd["area"]
    assert differing == 0, f"{differing} mask pixels differ"
    assert sum(x["area"] for i in py for x in i["detections"]) > 10_000


def _segmentation_case(build, d, outputs, lbs, net, names):
    """The C++ label maps and records of one dump against SegmentationTask.postprocess on the same outputs."""
    from autotimm_deploy.artifact import ArtifactInfo
    from autotimm_deploy.models.families import AUTOTIMM_SEGMENTOR
    from autotimm_deploy.tasks.segmentation import SegmentationTask

    info = ArtifactInfo("segmentation", names, net, (0.5,) * 3, (0.25,) * 3, decode="raw", family=AUTOTIMM_SEGMENTOR)
    py = SegmentationTask().postprocess(outputs, info, net, lbs)
    d.mkdir()
    (name, arr), = outputs.items()
    arr.tofile(d / ("labels.i64" if name == "labels" else "logits.f32"))
    (d / "meta.json").write_text(json.dumps({
        "task": "segmentation", "batch": len(lbs), "class_names": names, "net_size": list(net),
        f"{name}_shape": list(arr.shape), "images": [_letterbox_dict(lb) for lb in lbs]}))
    (d / "maps").mkdir()
    cpp = _run(build, d, "--label-maps", d / "maps")
    for ci, pi in zip(cpp, py):
        expected = json.loads(json.dumps(pi.to_dict()))
        file = ci.pop("label_map")
        assert ci == expected
        dtype = np.uint8 if file.endswith(".u8") else np.int32
        labels = np.fromfile(d / "maps" / file, dtype).reshape(pi.height, pi.width)
        assert int((labels != pi.labels).sum()) == 0, f"{int((labels != pi.labels).sum())} pixels differ"
    return py


@pytest.mark.parametrize("placement", ["stretch", "letterbox"])
def test_cpp_segmentation_equal_python(build, tmp_path, placement):
    """Semantic segmentation on the same outputs: raw logits at a quarter of the input and at a non-integer ratio
    (resized bilinearly, then argmax; integer logits make ties, the first class wins), logits at the input size, and
    label outputs (--decode labels at the head's resolution, labels-full): the C++ label maps in image pixels equal
    SegmentationTask.postprocess's pixel for pixel, and its records equal Segmentation.to_dict()."""
    from autotimm_deploy.models.families import AUTOTIMM_SEGMENTOR
    from autotimm_deploy.models.family import Preprocess

    rng = np.random.default_rng(11 if placement == "stretch" else 12)
    net, c = (64, 80), 5
    pre = AUTOTIMM_SEGMENTOR.preprocess if placement == "stretch" else Preprocess(align="center")
    lbs = _placed([(100, 50), (37, 91), (64, 80)], net, pre)
    assert placement == "letterbox" or lbs[0].scale_y is not None
    names = ["background"] + [f"c{i}" for i in range(1, c)]
    cases = {
        "quarter": {"logits": rng.normal(0, 1, (3, c, 16, 20)).astype(np.float32)},
        "odd": {"logits": rng.integers(0, 3, (3, c, 13, 17)).astype(np.float32)},
        "full": {"logits": rng.normal(0, 1, (3, c, 64, 80)).astype(np.float32)},
        "labels": {"labels": rng.integers(0, c, (3, 16, 20)).astype(np.int64)},
        "labels_full": {"labels": rng.integers(0, 300, (3, 64, 80)).astype(np.int64)},  # int32 label map file
    }
    for key, outputs in cases.items():
        py = _segmentation_case(build, tmp_path / key, outputs, lbs, net, names)
        assert len({int(v) for p in py for v in np.unique(p.labels)}) >= min(c, 5)
