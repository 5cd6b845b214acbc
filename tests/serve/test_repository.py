"""Generated Triton repositories without a server: every config.pbtxt parses into Triton's own ModelConfig message
with the values the manifest implies, the Python steps compute what the local Predictor computes, and wrong
requests are refused with one line."""

import json
import shutil

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from autotimm_deploy.cli.triton import main as triton_main
from autotimm_deploy.demo.shapes import render_classification_sample, render_detection_sample
from autotimm_deploy.engines import load
from autotimm_deploy.engines.predictor import ArtifactInfo
from autotimm_deploy.errors import AutotimmError
from autotimm_deploy.serve import steps
from autotimm_deploy.serve.pbtxt import validate_config
from autotimm_deploy.serve.repository import TritonOptions, write_repository


def parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def detection_images():
    """Demo images of several sizes and aspect ratios (the letterbox pads them differently)."""
    a = render_detection_sample(2_000_000, size=128)[0]
    b = render_detection_sample(2_000_001, size=192)[0][:, :120]
    c = render_detection_sample(2_000_002, size=160)[0][:90]
    d = render_detection_sample(2_000_003, size=96)[0]
    return [a, b, c, d]


@pytest.mark.parametrize("kind", ["detector", "classifier"])
@pytest.mark.parametrize("network", ["python", "onnxruntime"])
def test_every_config_is_a_valid_model_config_with_the_manifests_values(demo_exports, tmp_path, kind, network):
    export = demo_exports[kind]
    manifest = json.loads((export / "manifest.json").read_text())
    summary = write_repository(export, tmp_path / "repo", TritonOptions(network=network, max_queue_delay_us=250,
                                                                      instances=2, step_instances=3))
    name = summary["name"]
    assert name == f"demo_{kind}" and len(summary["models"]) == 6
    configs = {m: parse(tmp_path / "repo" / m / "config.pbtxt") for m in summary["models"]}
    art = next(a for a in manifest["artifacts"] if a["file"] == summary["artifact"])
    net = configs[f"{name}_network"]
    assert net.max_batch_size == manifest["batch"][2] == 8
    assert [(i.name, list(i.dims)) for i in net.input] == [("images", [3, *manifest["input_size"]])]
    assert [(o.name, list(o.dims)) for o in net.output] == [(o["name"], o["shape"][1:]) for o in art["outputs"]]
    assert list(net.dynamic_batching.preferred_batch_size) == [8]
    assert net.dynamic_batching.max_queue_delay_microseconds == 250
    assert net.instance_group[0].count == 2
    assert {configs[f"{name}_{s}"].instance_group[0].count for s in ("preprocess", "preprocess_uint8", "postprocess")} == {3}
    if network == "python":
        assert net.backend == "python" and net.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
        assert summary["artifact"] == "model.onnx"  # FP32 on CPU
        assert (tmp_path / "repo" / f"{name}_network" / "1" / "model.onnx").read_bytes() == (export / "model.onnx").read_bytes()
    else:
        assert net.platform == "onnxruntime_onnx" and net.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        assert summary["artifact"] == "model.fp16.onnx"  # FP16 on a GPU by default
        assert (tmp_path / "repo" / f"{name}_network" / "1" / "model.onnx").read_bytes() == (export / "model.fp16.onnx").read_bytes()
    ens = configs[name]
    assert ens.platform == "ensemble" and [s.model_name for s in ens.ensemble_scheduling.step] == [
        f"{name}_preprocess", f"{name}_network", f"{name}_postprocess"]
    assert ens.input[0].data_type == model_config_pb2.TYPE_STRING
    uint8 = configs[f"{name}_uint8"]
    assert uint8.input[0].data_type == model_config_pb2.TYPE_UINT8 and list(uint8.input[0].dims) == [-1, -1, 3]
    labels = (tmp_path / "repo" / name / "labels.txt").read_text().splitlines()
    assert labels == manifest["class_names"]
    outs = {o.name: o for o in ens.output}
    if kind == "detector":
        assert list(outs) == ["boxes", "scores", "labels", "num_detections"] and list(outs["boxes"].dims) == [-1, 4]
    else:
        assert list(outs) == ["probs", "top_labels", "top_scores"]
        assert list(outs["probs"].dims) == [len(labels)] and outs["probs"].label_filename == "labels.txt"
        assert list(outs["top_labels"].dims) == [min(5, len(labels))]
    post = configs[f"{name}_postprocess"]
    assert dict((k, v.string_value) for k, v in post.parameters.items())["step"] == "postprocess"


def test_tensorrt_plan_network_from_a_full_tensorrt_engine(demo_exports, tmp_path):
    """Config generation only (no engine runs here): the manifest of an export whose engine full TensorRT built."""
    export = tmp_path / "export"
    shutil.copytree(demo_exports["detector"], export)
    (export / "model.fp16.engine").write_bytes(b"plan bytes")
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["artifacts"].append({"role": "engine", "file": "model.fp16.engine", "precision": "fp16",
                                  "library": "tensorrt", "library_version": "10.13.0",
                                  "targets": {"compute_capabilities": ["SM90"]}, "source_onnx": "model.fp16.onnx"})
    (export / "manifest.json").write_text(json.dumps(manifest))
    summary = write_repository(export, tmp_path / "repo")
    assert summary["network"] == "tensorrt"
    cfg_text = (tmp_path / "repo" / "demo_detector_network" / "config.pbtxt").read_text()
    cfg = text_format.Parse(cfg_text, model_config_pb2.ModelConfig())
    assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == "model.plan"
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert "tensorrt 10.13.0, precision fp16, compute capability SM90" in cfg_text
    assert (tmp_path / "repo" / "demo_detector_network" / "1" / "model.plan").read_bytes() == b"plan bytes"
    with pytest.raises(AutotimmError, match="runs on a GPU only"):
        write_repository(export, tmp_path / "repo", TritonOptions(network="tensorrt", kind="cpu"))


def test_refusals_are_one_line_and_write_nothing(demo_exports, tmp_path, capsys):
    repo = tmp_path / "repo"
    det = str(demo_exports["detector"])
    cases = [
        (["--network", "tensorrt"], "built by tensorrt-rtx"),  # not an engine Triton's TensorRT backend loads
        (["--network", "tensorrt", "--export-is-classifier"], "has no engine"),
        (["--precision", "int8"], "no INT8 ONNX"),
        (["--max-batch", "16"], "above the export's largest batch 8"),
        (["--name", "bad name"], "model name 'bad name'"),
        (["--instances", "0"], "instances must be at least 1"),
    ]
    for args, message in cases:
        export = str(demo_exports["classifier"]) if "--export-is-classifier" in args else det
        args = [a for a in args if a != "--export-is-classifier"]
        assert triton_main([export, str(repo), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert triton_main([str(tmp_path), str(repo)]) == 2
    assert "not an export directory" in capsys.readouterr().err
    assert not repo.exists() or not any(repo.iterdir())
    with pytest.raises(AutotimmError, match="not a valid Triton ModelConfig"):
        validate_config('name: "x"\nmax_batch_size: "eight"')


def test_static_batch_export_is_refused(tmp_path):
    from autotimm_deploy.demo import demo_model_path
    from autotimm_deploy.exporters.pipeline import ExportOptions, export_model

    for batch, message in (((4, 4, 4), "smallest batch is 4"), ((1, 1, 1), "static batch dimension")):
        export_model(demo_model_path("classifier"), tmp_path / "e", ExportOptions(batch=batch, engine="none", check=False))
        with pytest.raises(AutotimmError, match=message):
            write_repository(tmp_path / "e", tmp_path / "repo")


def test_steps_compute_what_the_predictor_computes(demo_exports):
    """preprocess -> ONNX Runtime -> postprocess, each request batched with others, equals Predictor.predict."""
    predictor = load(demo_exports["detector"])
    info = predictor.info
    images = detection_images()
    encoded = [np.frombuffer(b, np.uint8).tobytes() for b in map(_png, images)]
    decoded = steps.decode_images(encoded)
    assert all((a == b).all() for a, b in zip(decoded, images))
    batch, rows = steps.preprocess(decoded, info, np.float32)
    ref_batch, _ = predictor.preprocess(images, info.input_size)
    np.testing.assert_array_equal(batch, ref_batch)
    out = predictor.backend.infer({"images": batch})
    padded = steps.postprocess(out, rows, info)
    expected = predictor.predict(images)
    n = [len(e.scores) for e in expected]
    assert sum(n) >= 4
    for i, e in enumerate(expected):
        np.testing.assert_allclose(padded["boxes"][i, :n[i]], e.boxes, atol=1e-4)
        np.testing.assert_array_equal(padded["labels"][i, :n[i]], e.labels)
    assert padded["boxes"].shape == (4, max(n), 4) and padded["num_detections"][:, 0].tolist() == n
    assert (padded["labels"][np.arange(max(n))[None] >= np.array(n)[:, None]] == -1).all()

    cls = load(demo_exports["classifier"])
    cimgs = [render_classification_sample(i)[0] for i in range(3)]
    x, rows = steps.preprocess(cimgs, cls.info, np.float32)
    res = steps.postprocess(cls.backend.infer({"images": x}), rows, cls.info, 2)
    for p, t, e in zip(res["probs"], res["top_labels"], cls.predict(cimgs)):
        np.testing.assert_allclose(p, e.probs, atol=1e-6)
        assert [cls.info.class_names[i] for i in t] == [name for name, _ in e.top(2)]


@pytest.mark.parametrize("decode", ["raw", "activations"])
def test_steps_follow_what_the_graph_left_undecoded(tmp_path, decode):
    """Per-level raw outputs or activations: the post-processing step decodes them as the runtime does."""
    from autotimm_deploy.demo import demo_model_path
    from autotimm_deploy.exporters.pipeline import ExportOptions, export_model

    export_model(demo_model_path("detector"), tmp_path / "e", ExportOptions(decode=decode, engine="none", check=False))
    summary = write_repository(tmp_path / "e", tmp_path / "repo", TritonOptions(network="python"))
    post = parse(tmp_path / "repo" / "demo_detector_postprocess" / "config.pbtxt")
    assert [i.name for i in post.input][:2] == ["cls_p3", "cls_p4"] and post.input[-1].name == "letterbox"
    assert len(post.input) == 16 and summary["artifact"] == "model.onnx"
    predictor = load(tmp_path / "e")
    images = detection_images()
    batch, rows = steps.preprocess(images, predictor.info, np.float32)
    padded = steps.postprocess(predictor.backend.infer({"images": batch}), rows, predictor.info)
    expected = predictor.predict(images)
    assert sum(len(e.scores) for e in expected) >= 4
    for i, e in enumerate(expected):
        n = int(padded["num_detections"][i, 0])
        np.testing.assert_allclose(padded["boxes"][i, :n], e.boxes, atol=1e-4)
        np.testing.assert_array_equal(padded["labels"][i, :n], e.labels)


def test_step_errors_name_the_bad_item():
    with pytest.raises(AutotimmError, match=r"image 1: not a readable image \(4 bytes"):
        steps.decode_images([_png(np.zeros((4, 4, 3), np.uint8)), b"junk"])
    with pytest.raises(AutotimmError, match="image 0: empty bytes"):
        steps.decode_images([b""])
    with pytest.raises(AutotimmError, match=r"expected uint8 images of shape \(batch, H, W, 3\), got float32"):
        steps.check_uint8_images(np.zeros((1, 4, 4, 3), np.float32))
    with pytest.raises(AutotimmError, match="empty image batch"):
        steps.check_uint8_images(np.zeros((1, 0, 4, 3), np.uint8))
    info = ArtifactInfo("classification", ["a"], (8, 8), (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(AutotimmError, match="empty image batch"):
        steps.preprocess([], info, np.float32)


def _png(image):
    from autotimm_deploy.serve.client import encode_image

    return encode_image(image)


def test_export_writes_a_repository_with_triton_repo(tmp_path, capsys):
    from autotimm_deploy.cli.export import main
    from autotimm_deploy.demo import demo_model_path

    repo = tmp_path / "repo"
    code = main([str(demo_model_path("classifier")), "--out", str(tmp_path / "e"), "--engine", "none",
                 "--triton-repo", str(repo), "--triton-network", "python", "--triton-top-k", "2"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((repo / "demo_classifier" / "autotimm-deploy.json").read_text())
    assert summary["network"] == "python" and summary["options"]["top_k"] == 2
    assert "models: demo_classifier, demo_classifier_uint8" in capsys.readouterr().out
    assert main([str(demo_model_path("classifier")), "--triton-repo", str(repo), "--triton-instances", "0"]) == 2
    assert "instances must be at least 1" in capsys.readouterr().err
