"""The whole pipeline on checkpoints real AutoTimm wrote (classifier, FCOS, YOLOX; compiled and not; full and
weights-only saves; a Lightning log directory): autotimm-export --fp16 with the TensorRT-RTX engine and
parity, the decode variants, autotimm-infer, autotimm-parity at the task level, engines.load().predict()."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from autotimm_deploy.cli.export import main as export_main
from autotimm_deploy.cli.infer import main as infer_main
from autotimm_deploy.cli.parity import main as parity_main
from autotimm_deploy.demo.shapes import SPLIT_SEEDS, render_detection_sample, write_classification_split, \
    write_detection_split
from autotimm_deploy.engines import load

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures/autotimm"
INDEX = json.loads((FIXTURES / "fixtures.json").read_text())["fixtures"]
FAMILY = {"detector": {"fcos": "autotimm-fcos", "yolox": "autotimm-yolox"}, "classifier": "autotimm-classifier",
          "multilabel": "autotimm-multilabel"}
CASES = sorted(INDEX) + ["fcos_logdir"]


def _family(name: str) -> str:
    spec = INDEX.get(name, INDEX["fcos_compiled_full"])
    fam = FAMILY[spec["task"]]
    return fam[spec["arch"]] if isinstance(fam, dict) else fam


def _names(name: str) -> list:
    """The class names of the fixture's training data (ImageFolder sorts them: the classifiers' order differs)."""
    return INDEX.get(name, INDEX["fcos_compiled_full"])["class_names"]


def _log_dir(root: Path) -> Path:
    """The Lightning log folder of ``fcos_compiled_full``: its hparams.yaml, and the checkpoint (the fixture's bytes)
    under the name ModelCheckpoint gave it."""
    import shutil

    spec = INDEX["fcos_compiled_full"]
    run = root / "lightning_logs" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copyfile(FIXTURES / spec["logdir"] / "hparams.yaml", run / "hparams.yaml")
    shutil.copyfile(FIXTURES / spec["file"], run / "checkpoints" / spec["logdir_checkpoint"])
    return run


@pytest.fixture(scope="module")
def names_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("names")

    def get(name: str) -> Path:
        path = root / f"{name}.json"
        path.write_text(json.dumps(_names(name)))
        return path

    return get


@pytest.fixture(scope="module")
def fp16_exports(tmp_path_factory, names_file):
    """``autotimm-export CKPT --fp16 --class-names FILE`` (engine: TensorRT-RTX) for every case, once."""
    made = {}

    def get(name: str) -> Path:
        if name not in made:
            out = tmp_path_factory.mktemp(name)
            src = FIXTURES / INDEX[name]["file"] if name in INDEX else _log_dir(tmp_path_factory.mktemp("logs"))
            code = export_main([str(src), "--fp16", "--class-names", str(names_file(name)), "--out", str(out)])
            made[name] = (code, out)
        return made[name]

    return get


@pytest.mark.parametrize("name", CASES)
def test_export_fp16_engine_and_parity(name, fp16_exports):
    code, out = fp16_exports(name)
    manifest = json.loads((out / "manifest.json").read_text())
    assert code == 0 and manifest["parity"]["passed"]
    roles = {a["role"]: a for a in manifest["artifacts"]}
    assert {"onnx-raw", "onnx", "onnx-fp16", "engine", "engine-sidecar"} <= set(roles)
    assert roles["onnx"]["parity"] == roles["onnx-fp16"]["parity"] == "pass"
    assert manifest["family"]["name"] == _family(name)
    assert manifest["class_names"] == _names(name)
    assert manifest["source"]["autotimm"]["compiled"] == (INDEX.get(name, {}).get("compile", True))
    meta = {p.key: p.value for p in onnx.load(str(out / "model.fp16.onnx")).metadata_props}
    assert json.loads(meta["family"])["name"] == _family(name)
    sidecar = json.loads((out / "model.fp16.engine.json").read_text())
    assert sidecar["precision"] == "fp16" and json.loads(sidecar["model"]["family"])["name"] == _family(name)
    raw_outputs = [o["name"] for o in roles["onnx-raw"]["outputs"]]
    if manifest["family"]["name"] == "autotimm-fcos":
        assert raw_outputs == [f"{k}_p{i}" for k in ("cls", "bbox", "ctr") for i in range(3, 8)]
    elif manifest["family"]["name"] == "autotimm-yolox":
        assert raw_outputs == [f"{k}_p{i}" for k in ("cls", "bbox") for i in range(3, 8)]
    else:
        assert raw_outputs == ["logits"]
    for rep in manifest["parity"]["reports"]:
        det = rep.get("detections")
        if det is not None:  # trained detectors: real detections compared, all matched
            assert det["reference"] >= 1 and det["matched"] >= 0.99 * det["reference"]


@pytest.mark.parametrize("name, argv", [
    ("fcos_plain_weights", ["--decode", "activations"]),
    ("yolox_plain_full", ["--decode", "activations"]),
    ("fcos_compiled_full", ["--topk", "50", "--dynamic-hw", "--batch", "1:2:4"]),
    ("yolox_compiled_weights", ["--dynamic-hw", "--input-size", "96", "160"]),
])
def test_decode_variants(name, argv, tmp_path, names_file):
    out = tmp_path / "o"
    assert export_main([str(FIXTURES / INDEX[name]["file"]), "--engine", "none", "--class-names", str(names_file(name)),
                        "--out", str(out), *argv]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parity"]["passed"]
    inputs = manifest["parity"]["reports"][0]["inputs"]
    if "--dynamic-hw" in argv:
        assert any("second shape" in s for s in inputs)


def test_infer_and_predict_use_autotimm_post_processing(fp16_exports, tmp_path):
    from PIL import Image

    _, out = fp16_exports("fcos_compiled_full")
    paths = []
    for k in range(3):
        img = render_detection_sample(SPLIT_SEEDS["test"] + k, size=128)[0]
        if k == 2:  # not square: centred letterbox, boxes mapped back to the original pixels
            img = np.asarray(Image.fromarray(img).resize((200, 128)))
        paths.append(tmp_path / f"im{k}.png")
        Image.fromarray(img).save(paths[-1])
    assert infer_main([str(out), *map(str, paths), "--out", str(tmp_path / "inf")]) == 0
    doc = json.loads((tmp_path / "inf" / "detections.json").read_text())
    assert doc["family"] == "autotimm-fcos"
    assert doc["postprocess"] == {"candidates": "argmax", "pre_nms_top_k": None, "score_thr": 0.05, "iou_thr": 0.5,
                                  "max_det": 100}
    predictor = load(out, backend="onnxruntime")
    for path, rec in zip(paths, doc["images"]):
        res = predictor.predict(path)[0]
        assert len(rec["detections"]) == len(res.boxes) >= 1
        np.testing.assert_allclose([d["box"] for d in rec["detections"]], res.boxes, atol=1e-3)
        assert (rec["width"], rec["height"]) == (res.width, res.height)
        assert {d["class_name"] for d in rec["detections"]} <= set(INDEX["fcos_compiled_full"]["class_names"])
    wide = predictor.predict(paths[2])[0]
    assert wide.width == 200 and wide.boxes[:, 0::2].max() <= 200 and wide.boxes[:, 1::2].max() <= 128
    # the checkpoint itself, and the export's source through the PyTorch backend, give the same detections
    ref = load(out, backend="pytorch").predict(paths[0])[0]
    np.testing.assert_allclose(ref.boxes, predictor.predict(paths[0])[0].boxes, atol=1e-2)
    assert ref.class_names == predictor.predict(paths[0])[0].class_names


@pytest.mark.parametrize("name, task", [("yolox_plain_full", "detection"), ("classifier_plain_weights", "classification")])
def test_autotimm_parity_task_level(name, task, fp16_exports, tmp_path):
    """autotimm-parity CKPT EXPORT --data DIR: class names come from the export; mAP / top-1 computed and equal
    within the FP16 tolerance."""
    _, out = fp16_exports(name)
    data = (write_detection_split(tmp_path / "d", "test", 24) if task == "detection"
            else write_classification_split(tmp_path / "d", "test", 48))
    report = tmp_path / "rep"
    assert parity_main([str(FIXTURES / INDEX[name]["file"]), str(out), "--data", str(data), "--report", str(report),
                        "-q"]) == 0
    result = json.loads((report / "parity.json").read_text())
    for art in result["artifacts"]:
        levels = art["levels"]
        if art["kind"] == "engine":
            assert levels["tensor"]["status"] == "skipped"  # no GPU: said, not faked
            continue
        assert levels["task"]["status"] == "pass", levels["task"]["message"]
        metric = "map50" if task == "detection" else "top1"
        assert art["pytorch_metrics"][metric] > 0.3  # a trained model: the metric measures something
