"""A real tritonserver (Triton 2.51 from the nvidia-pytriton wheel, CPU) serving the generated CPU repositories of
both demo models, checked through tritonclient over HTTP and gRPC: the same answers as the local Predictor, a
bounded concurrent load with dynamic batching, a reload under load, and bad inputs."""

import time

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from autotimm_deploy.demo.shapes import render_classification_sample
from autotimm_deploy.engines import load
from autotimm_deploy.errors import AutotimmError
from autotimm_deploy.serve.client import TritonModelClient, encode_image, run_load
from autotimm_deploy.serve.repository import TritonOptions, write_repository
from autotimm_deploy.serve.server import LocalTriton, group_processes

from .test_repository import detection_images

pytestmark = pytest.mark.system

OPTIONS = TritonOptions(network="python", max_queue_delay_us=2000)


@pytest.fixture(scope="module")
def served(demo_exports, tmp_path_factory):
    repo = tmp_path_factory.mktemp("triton") / "repo"
    for kind in ("detector", "classifier"):
        write_repository(demo_exports[kind], repo, OPTIONS)
    server = LocalTriton(repo).start()
    pid = server.proc.pid
    try:
        yield server, repo
    finally:
        server.stop()
        assert group_processes(pid) == [], "tritonserver or a Python stub outlived stop()"
        assert not server.workdir.exists()  # log, backend copy and the stubs' environment removed


@pytest.fixture(scope="module")
def expected(demo_exports):
    det, cls = load(demo_exports["detector"]), load(demo_exports["classifier"])
    images, cimgs = detection_images(), [render_classification_sample(i)[0] for i in range(6)]
    return {"det": det, "images": images, "det_results": det.predict(images), "cls": cls, "cimgs": cimgs,
            "cls_results": cls.predict(cimgs)}


def assert_same_detections(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert len(g.scores) == len(w.scores)
        np.testing.assert_allclose(g.boxes, w.boxes, atol=1e-3)  # pixels of the original image
        np.testing.assert_array_equal(g.labels, w.labels)
        np.testing.assert_allclose(g.scores, w.scores, atol=1e-5)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_detections_equal_the_local_predictor(served, expected, protocol):
    server, _ = served
    url = server.http_url if protocol == "http" else server.grpc_url
    names = expected["det"].info.class_names
    want = expected["det_results"]
    assert sum(len(w.scores) for w in want) >= 4  # the demo images have objects to compare
    encoded = TritonModelClient(url, "demo_detector", protocol)  # task and class names: read from the server
    assert (encoded.task, encoded.class_names) == ("detection", list(names))
    got = encoded.predict(expected["images"])  # one request of 4 encoded images of different sizes
    assert_same_detections(got, want)
    assert [(g.width, g.height) for g in got] == [(w.width, w.height) for w in want]
    assert [g.class_names for g in got] == [w.class_names for w in want]
    raw = TritonModelClient(url, "demo_detector_uint8", protocol)
    with pytest.raises(AutotimmError, match="differ from the model's own"):  # told other names: refused
        TritonModelClient(url, "demo_detector", protocol, class_names=names[::-1])
    for image, w in zip(expected["images"], want):  # uint8 HxWx3: one request per image size
        assert_same_detections(raw.predict([image]), [w])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_classifier_equals_the_local_predictor(served, expected, protocol):
    server, _ = served
    url = server.http_url if protocol == "http" else server.grpc_url
    client = TritonModelClient(url, "demo_classifier", protocol)
    assert client.task == "classification" and client.class_names == list(expected["cls"].info.class_names)
    assert [p.top(1)[0][0] for p in client.predict(expected["cimgs"])] == [w.top(1)[0][0] for w in
                                                                          expected["cls_results"]]
    out = client.infer_raw(expected["cimgs"])
    want = expected["cls_results"]
    np.testing.assert_allclose(out["probs"], np.stack([w.probs for w in want]), atol=1e-5)
    names = expected["cls"].info.class_names
    assert [[names[i] for i in row] for row in out["top_labels"]] == [[n for n, _ in w.top(4)] for w in want]
    if protocol == "http":  # Triton's classification extension reads the labels file of the ensemble
        import tritonclient.http as tc

        x = client._input(expected["cimgs"][:2])
        res = client.client.infer("demo_classifier", [x], outputs=[tc.InferRequestedOutput("probs", class_count=1)])
        top = [v.decode().split(":") for v in res.as_numpy("probs").reshape(-1)]
        assert [t[2] for t in top] == [w.top(1)[0][0] for w in want[:2]]


def _network_batches(client, model):
    stats = client.client.get_inference_statistics(model)["model_stats"][0]
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}


def test_concurrent_load_is_batched_and_every_answer_is_right(served, expected):
    server, _ = served
    images, want = expected["images"], expected["det_results"]
    probe = TritonModelClient(server.http_url, "demo_detector")
    before = _network_batches(probe, "demo_detector_network")

    def check(out, idx):
        for row, i in enumerate(idx):
            n = int(out["num_detections"][row, 0])
            if n != len(want[i].scores) or not np.array_equal(out["labels"][row, :n], want[i].labels):
                return f"image {i}: {n} detections, expected {len(want[i].scores)}"
        return None

    res = run_load(lambda: TritonModelClient(server.http_url, "demo_detector", timeout_s=60), images,
                   clients=8, requests=50, check=check)
    assert res.failures == [] and len(res.latencies_ms) == 400
    after = _network_batches(probe, "demo_detector_network")
    batched = {b: after[b] - before.get(b, 0) for b in after if b > 1 and after[b] > before.get(b, 0)}
    assert batched, f"no execution with a batch above 1: {after}"
    assert sum(b * n for b, n in batched.items()) > 100  # most of the 400 images went through batched executions


def test_reload_under_load_fails_no_request(served, expected, demo_exports):
    server, repo = served
    control = TritonModelClient(server.http_url, "demo_detector")
    reloaded = {}

    def reload():
        time.sleep(0.5)
        write_repository(demo_exports["detector"], repo, TritonOptions(network="python", max_queue_delay_us=1500))
        t0 = time.monotonic()
        control.client.load_model("demo_detector_network")  # a composing model: Triton reloads the ensembles too
        reloaded["seconds"] = time.monotonic() - t0
        reloaded["config"] = control.client.get_model_config("demo_detector_network")

    res = run_load(lambda: TritonModelClient(server.grpc_url, "demo_detector", "grpc", timeout_s=60),
                   expected["images"], clients=4, requests=40, during=reload)
    assert res.failures == [] and len(res.latencies_ms) == 160
    assert int(reloaded["config"]["dynamic_batching"]["max_queue_delay_microseconds"]) == 1500  # the new config serves
    log = server.log_path.read_text(errors="replace")
    assert log.count("successfully loaded 'demo_detector_network'") >= 2, reloaded
    assert_same_detections(control.predict(expected["images"]), expected["det_results"])


def test_bad_inputs_get_a_clear_error_and_the_server_keeps_serving(served, expected):
    import tritonclient.http as tc

    server, _ = served
    client = TritonModelClient(server.http_url, "demo_detector")
    raw = TritonModelClient(server.http_url, "demo_detector_uint8")
    good = encode_image(expected["images"][0])

    def request(model, data, dtype):
        x = tc.InferInput("image", list(data.shape), dtype)
        x.set_data_from_numpy(data)
        (client if model == "demo_detector" else raw).infer_raw(None, inputs=[x])

    cases = [
        ("demo_detector", np.array([[good], [b"\x89PNG\r\n junk"]], dtype=np.object_), "BYTES",
         "image 1: not a readable image"),
        ("demo_detector", np.array([[b""]], dtype=np.object_), "BYTES", "image 0: empty bytes"),
        ("demo_detector", np.zeros((0, 1), dtype=np.object_), "BYTES", "got 0"),
        ("demo_detector", np.zeros((1, 1), np.float32), "FP32", "data-type is 'FP32', but model 'demo_detector' expects 'BYTES'"),
        ("demo_detector_uint8", np.zeros((1, 8, 8, 4), np.uint8), "UINT8", "unexpected shape for input 'image'"),
        ("demo_detector_uint8", np.zeros((1, 0, 8, 3), np.uint8), "UINT8", "empty image batch"),
    ]
    for model, data, dtype, message in cases:
        with pytest.raises(InferenceServerException, match=message.replace("(", r"\(")):
            request(model, data, dtype)
        assert server.proc.poll() is None
        assert_same_detections(client.predict(expected["images"][:1]), expected["det_results"][:1])


def test_a_server_that_cannot_start_says_why_and_leaves_no_process(tmp_path):
    repo = tmp_path / "repo"
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text('name: "broken"\nbackend: "no_such_backend"\nmax_batch_size: 0\n')
    server = LocalTriton(repo, startup_timeout=120)
    pid = []
    server._started = lambda proc: pid.append(proc.pid)
    with pytest.raises(AutotimmError, match="tritonserver (exited with code|could not load a model)") as err:
        server.start()
    assert "no_such_backend" in str(err.value)
    assert server.proc is None and group_processes(pid[0]) == []
    assert server.log_path.exists() and str(server.log_path) in str(err.value)  # kept: the message names it


def test_a_model_that_fails_to_load_stops_the_start_at_once(tmp_path):
    """A Python model whose initialize raises: the start stops as soon as the log says so (not after the 180 s
    timeout), naming the model and its error, with progress lines meanwhile."""
    repo = tmp_path / "repo"
    (repo / "bad_model" / "1").mkdir(parents=True)
    (repo / "bad_model" / "config.pbtxt").write_text(
        'name: "bad_model"\nbackend: "python"\nmax_batch_size: 0\n'
        'input [{ name: "x", data_type: TYPE_FP32, dims: [1] }]\noutput [{ name: "y", data_type: TYPE_FP32, dims: [1] }]\n')
    (repo / "bad_model" / "1" / "model.py").write_text(
        "class TritonPythonModel:\n    def initialize(self, args):\n        raise RuntimeError('planted failure')\n")
    lines = []
    server = LocalTriton(repo, startup_timeout=180, progress=lines.append)
    start = time.monotonic()
    with pytest.raises(AutotimmError) as err:
        server.start()
    took = time.monotonic() - start
    assert took < 60, f"{took:.0f} s"
    assert "bad_model" in str(err.value) and "planted failure" in str(err.value)
    assert server.proc is None
