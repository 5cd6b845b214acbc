"""The Python runtime: every backend's detections agree with the PyTorch reference predictor."""

import json
import threading

import numpy as np
import pytest
from PIL import Image

from autotimm_deploy.cli.export import main as export_main
from autotimm_deploy.cli.infer import main as infer_main
from autotimm_deploy.demo import demo_model_path
from autotimm_deploy.demo.shapes import SPLIT_SEEDS, render_classification_sample, render_detection_sample
from autotimm_deploy.engines import load
from autotimm_deploy.engines.library import gpu_info
from autotimm_deploy.errors import AutotimmError, EngineIncompatible
from autotimm_deploy.parity.check import match_detections

N = 12


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    det = str(demo_model_path("detector"))
    runs = {"boxes": ["--fp16"], "raw": ["--decode", "raw", "--engine", "none"],
            "topk": ["--topk", "100", "--engine", "none", "--dynamic-hw"],
            "static2": ["--batch", "2", "--engine", "none"]}
    for name, extra in runs.items():
        assert export_main([det, "--out", str(root / name), "--no-check", *extra]) == 0
    assert export_main([str(demo_model_path("classifier")), "--out", str(root / "cls"), "--no-check",
                        "--engine", "none"]) == 0
    return root


@pytest.fixture(scope="module")
def images():
    return [render_detection_sample(SPLIT_SEEDS["test"] + k, size=128)[0] for k in range(N)]


@pytest.fixture(scope="module")
def reference(images):
    return load(demo_model_path("detector")).predict(images, score_thresh=0.3)


def _as_dicts(results):
    return [{"boxes": r.boxes, "scores": r.scores, "labels": r.labels} for r in results]


def test_export_dir_picks_a_backend_and_says_why(exports):
    p = load(exports / "boxes")
    if gpu_info() is None:
        assert p.backend.name == "onnxruntime (CPU)" and p.source.endswith("model.onnx")
        assert p.why.startswith("engine not runnable here (no CUDA GPU")
        with pytest.raises(EngineIncompatible, match="cannot run here: no CUDA GPU"):
            load(exports / "boxes", backend="tensorrt")
    p16 = load(exports / "boxes" / "manifest.json", precision="fp16")
    assert p16.source.endswith("model.fp16.onnx") and "FP16 ONNX" in p16.why
    assert load(exports / "boxes", backend="pytorch").backend.name.startswith("pytorch")


@pytest.mark.parametrize("variant, precision", [("boxes", "fp32"), ("boxes", "fp16"), ("raw", None), ("topk", None),
                                                ("static2", None)])
def test_every_backend_agrees_with_the_pytorch_predictor(exports, images, reference, variant, precision):
    p = load(exports / variant, backend="onnxruntime", precision=precision)
    got = p.predict(images, score_thresh=0.3)
    ref_d, got_d = _as_dicts(reference), _as_dicts(got)
    assert sum(len(r["boxes"]) for r in ref_d) >= N  # real detections on every image on average
    agree = match_detections(ref_d, got_d, score_thr=0.3, iou_thr=0.9)
    assert agree.matched == agree.reference == agree.candidate, (variant, agree)
    if precision != "fp16":  # FP32 graphs: the same boxes to a thousandth of a pixel
        for r, g in zip(reference, got):
            assert np.array_equal(r.labels, g.labels)
            np.testing.assert_allclose(g.boxes, r.boxes, atol=1e-3)
            np.testing.assert_allclose(g.scores, r.scores, atol=1e-5)


def test_boxes_come_back_in_original_image_pixels(images, reference):
    p = load(demo_model_path("detector"))
    big = [np.asarray(Image.fromarray(im).resize((256, 256), Image.BILINEAR)) for im in images[:4]]
    wide = [np.concatenate([im, np.full((128, 64, 3), 127, np.uint8)], axis=1) for im in images[:4]]  # 192x128
    # the 2x upscaled image is letterboxed back to 128x128 (slightly blurred): confident detections
    # (score >= 0.5) are found again, at twice the coordinates
    confident = 0
    for r, g in zip(reference[:4], p.predict(big, score_thresh=0.05)):
        assert (g.width, g.height) == (256, 256)
        agree = match_detections(_as_dicts([r]), [{"boxes": g.boxes / 2, "scores": g.scores, "labels": g.labels}],
                                 score_thr=0.5, iou_thr=0.8)
        assert agree.matched == agree.reference
        confident += agree.reference
    assert confident >= 3
    for g in p.predict(wide, score_thresh=0.3):
        assert (g.width, g.height) == (192, 128)
        assert (g.boxes[:, 2] <= 192).all() and (g.boxes[:, 3] <= 128).all()


def test_classifier_probabilities(exports):
    imgs, labels = zip(*(render_classification_sample(SPLIT_SEEDS["test"] + k, size=64)[:2] for k in range(16)))
    ref = load(demo_model_path("classifier")).predict(list(imgs))
    got = load(exports / "cls").predict(list(imgs))
    acc = np.mean([int(np.argmax(r.probs)) == int(l) for r, l in zip(ref, labels)])
    assert acc >= 0.9
    for r, g in zip(ref, got):
        assert abs(float(g.probs.sum()) - 1) < 1e-5
        np.testing.assert_allclose(g.probs, r.probs, atol=1e-5)
    assert got[0].top(1)[0][0] in ("rectangle", "ellipse", "triangle", "cross")


def test_threads_with_their_own_backend_match_single_thread(exports, images):
    p = load(exports / "boxes", backend="onnxruntime")
    single = [p.infer({"images": np.stack([_norm(p, im)])})["scores"] for im in images[:6]]
    results = {}

    def work(t):
        mine = load(exports / "boxes", backend="onnxruntime")  # one session per thread
        results[t] = [mine.infer({"images": np.stack([_norm(mine, im)])})["scores"] for im in images[:6]]

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for t in range(4):
        for a, b in zip(single, results[t]):
            np.testing.assert_array_equal(a, b)


def _norm(p, im):
    batch, _ = p.preprocess([im], (128, 128))
    return batch[0]


def test_load_errors(tmp_path):
    with pytest.raises(AutotimmError, match="no such file"):
        load(tmp_path / "nope.onnx")
    (tmp_path / "x.bin").write_bytes(b"x")
    with pytest.raises(AutotimmError, match="unknown artifact type"):
        load(tmp_path / "x.bin")
    with pytest.raises(AutotimmError, match="not an export directory"):
        load(tmp_path)
    with pytest.raises(AutotimmError, match="HxWx3"):
        load(demo_model_path("detector")).predict(np.zeros((4, 4, 7), np.uint8))


def test_infer_cli_writes_json_and_pictures_and_survives_bad_files(exports, images, tmp_path, capsys):
    paths = []
    for k, im in enumerate(images[:3]):
        paths.append(tmp_path / f"img{k}.png")
        Image.fromarray(im).save(paths[-1])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    code = infer_main([str(exports / "boxes"), str(paths[0]), str(tmp_path / "broken.png"), str(tmp_path / "gone.jpg"),
                       *map(str, paths[1:]), "--out", str(out)])
    assert code == 2  # two inputs failed, the three good ones still ran
    captured = capsys.readouterr()
    assert "broken.png: not a readable image" in captured.err and "gone.jpg: no such image file" in captured.err
    assert "Traceback" not in captured.err and "3 ok, 2 failed" in captured.out
    doc = json.loads((out / "detections.json").read_text())
    ok = [r for r in doc["images"] if "error" not in r]
    ref = load(demo_model_path("detector")).predict([images[0]], score_thresh=0.3)[0]
    assert len(ok) == 3 and len(ok[0]["detections"]) == len(ref.boxes)
    assert ok[0]["detections"][0]["class_name"] == ref.class_names[0]
    np.testing.assert_allclose(ok[0]["detections"][0]["box"], ref.boxes[0], atol=1e-2)
    picture = np.asarray(Image.open(out / "img0.png"))
    assert picture.shape == (128, 128, 3) and not np.array_equal(picture, images[0])  # boxes were drawn
    assert infer_main([str(exports / "cls"), str(paths[0]), "--out", str(tmp_path / "c")]) == 0
    assert json.loads((tmp_path / "c" / "classifications.json").read_text())["images"][0]["top"][0]["prob"] > 0


def test_export_folder_finds_its_model_from_anywhere_and_when_moved_with_it(tmp_path, monkeypatch):
    """The manifest used to keep the model path as typed (relative to where the export ran): the PyTorch backend
    of an export folder then worked only from that directory (issue 13, item 10)."""
    import shutil

    from autotimm_deploy.exporters.pipeline import ExportOptions, export_model

    work = tmp_path / "project"
    work.mkdir()
    shutil.copyfile(demo_model_path("classifier"), work / "cls.pt")
    monkeypatch.chdir(work)
    export_model("cls.pt", "out", ExportOptions(engine="none", check=False), progress=None)
    monkeypatch.chdir(tmp_path)  # elsewhere
    image = np.zeros((64, 64, 3), np.uint8)
    first = load(work / "out", backend="pytorch").predict(image)[0].probs
    shutil.move(str(work), str(tmp_path / "moved"))  # the folder and the model file, together
    again = load(tmp_path / "moved" / "out", backend="pytorch")
    assert again.source == str(tmp_path / "moved" / "cls.pt")
    np.testing.assert_array_equal(again.predict(image)[0].probs, first)
    (tmp_path / "moved" / "cls.pt").unlink()
    with pytest.raises(AutotimmError, match="source model file is gone"):
        load(tmp_path / "moved" / "out", backend="pytorch")


def test_one_resize_policy_for_every_backend(tmp_path):
    """A --dynamic-hw export ran images up to twice the trained size at native resolution by default, so its
    detections differed from the model file's on the same image (issue 13, item 12): by default every backend
    fits the image into the model's input size; resize="native" is the same opt-in everywhere."""
    from autotimm_deploy.exporters.pipeline import ExportOptions, export_model

    export_model(demo_model_path("detector"), tmp_path / "dyn", ExportOptions(dynamic_hw=True, engine="none",
                                                                                 check=False), progress=None)
    image = np.asarray(Image.fromarray(render_detection_sample(SPLIT_SEEDS["test"] + 3, size=128)[0]).resize((230, 180)))
    onnx_pred, torch_pred = load(tmp_path / "dyn", backend="onnxruntime"), load(demo_model_path("detector"))
    sizes = []
    orig = onnx_pred.backend.infer
    onnx_pred.backend.infer = lambda feed: sizes.append(feed["images"].shape[-2:]) or orig(feed)
    for resize, size in (("fit", (128, 128)), ("native", (256, 256))):
        a = onnx_pred.predict(image, score_thresh=0.3, resize=resize)[0]
        b = torch_pred.predict(image, score_thresh=0.3, resize=resize)[0]
        assert sizes[-1] == size and len(b.labels) >= 1
        assert a.labels.tolist() == b.labels.tolist()
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-2)
    with pytest.raises(AutotimmError, match="resize must be 'fit' or 'native'"):
        torch_pred.predict(image, resize="stretch")
