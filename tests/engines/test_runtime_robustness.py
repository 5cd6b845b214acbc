"""Runtime robustness: concurrent backends give the single-thread answers, and load/unload does not leak.

Threads: N threads, each with its OWN backend (``clone()`` or a new ``load()``), run K distinct inputs in
different orders, several rounds, released together by a barrier (the test checks that calls really
overlapped), and every output must equal the single-thread reference bit for bit.  ONNX Runtime CPU
sessions use a fixed intra-op thread count (``threads=1``) for ``infer``; the ``predict()`` path uses
``load()``'s default (intra-op threads = cores), which on this CPU is also bit-exact (MLAS splits the
work over output tiles, not over a reduction, so the thread count and scheduling do not change the
arithmetic).  PyTorch (eager, CPU) shares its intra-op pool between Python threads and is bit-exact too.

Sharing: ONE :class:`OnnxRuntimeBackend` used by N threads at once is also safe and bit-exact
(``InferenceSession.run`` is documented thread-safe; the backend's only mutable state is the
informational ``last_inference_s``).  An :class:`EngineBackend` must NOT be shared: its execution
context, stream and I/O buffers are per backend; give each thread its own (the GPU test does).

Load/unload: ``scripts/load_unload.py`` creates, runs and closes a backend n times in a fresh
interpreter and measures VmRSS after warm-up and at the end; growth must stay under its
``BUDGET_MIB``, and a deliberately leaking variant (a touched 64 KiB buffer kept per load) must fail
that same check (positive control).  n=1000 for the cheap targets here; the script runs 1000 for every
target (``python scripts/load_unload.py``, about 2 minutes on 2 cores).
"""

import importlib.util
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from autotimm_deploy.demo import demo_model_path
from autotimm_deploy.demo.shapes import SPLIT_SEEDS, render_detection_sample
from autotimm_deploy.engines import load
from autotimm_deploy.engines.backends import EngineBackend, OnnxRuntimeBackend, TorchBackend
from autotimm_deploy.exporters.pipeline import ExportOptions, export_model

CPU = ["CPUExecutionProvider"]
K = 8  # distinct inputs
THREAD_COUNTS = (4, 8)
ROUNDS = 3  # each thread runs the K inputs ROUNDS times, in a different order each round
SCORE_THRESH = 0.3

_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "load_unload.py"
_spec = importlib.util.spec_from_file_location("load_unload_script", _SCRIPT)
load_unload = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(load_unload)

_THREAD_FIGURES: dict = {}  # filled by the thread tests, recorded (cumulatively) by each of them


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("robustness-exports")
    for kind in ("classifier", "detector"):
        export_model(demo_model_path(kind), root / kind, ExportOptions(fp16=True, engine="none", check=False),
                     progress=None)
    return root


@pytest.fixture(scope="module")
def images():
    return [render_detection_sample(SPLIT_SEEDS["test"] + k, size=128)[0] for k in range(K)]


@pytest.fixture(scope="module")
def feeds(exports, images):
    """K distinct network inputs: the synthetic images letterboxed and normalised, one per feed."""
    p = load(exports / "detector" / "model.onnx", providers=CPU)
    batch, _ = p.preprocess(images, tuple(p.info.input_size))
    feeds = [batch[k:k + 1].copy() for k in range(K)]
    assert len({f.tobytes() for f in feeds}) == K
    return feeds


def _diff(got: dict, ref: dict) -> tuple:
    """(bit-exact?, max abs difference) of two output dicts."""
    assert list(got) == list(ref), (list(got), list(ref))
    exact, worst = True, 0.0
    for name in ref:
        a, b = np.asarray(got[name]), np.asarray(ref[name])
        assert a.shape == b.shape and a.dtype == b.dtype, (name, a.shape, b.shape, a.dtype, b.dtype)
        exact &= bool(np.array_equal(a, b))
        if a.size:
            worst = max(worst, float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()))
    return exact, worst


def run_concurrently(make, work, n_threads: int, rounds: int = ROUNDS, seed: int = 0) -> dict:
    """``n_threads`` threads; each calls ``make()`` (its own backend or predictor), waits at a barrier,
    then ``rounds`` times runs ``work(obj, k)`` for k in a thread- and round-specific permutation of
    range(K).  ``work`` returns (bit-exact?, max abs diff) against the reference for input k.  Counts
    the calls in flight at once (proof that the threads overlapped)."""
    barrier = threading.Barrier(n_threads, timeout=300)
    lock = threading.Lock()
    state = {"in_flight": 0, "max_in_flight": 0, "calls": 0, "exact": True, "max_abs_diff": 0.0, "bad": []}
    errors = []

    def worker(i: int) -> None:
        try:
            obj = make()
            barrier.wait()
            rng = np.random.default_rng([seed, i])
            for r in range(rounds):
                for k in rng.permutation(K):
                    with lock:
                        state["in_flight"] += 1
                        state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
                    try:
                        exact, diff = work(obj, int(k))
                    finally:
                        with lock:
                            state["in_flight"] -= 1
                    with lock:
                        state["calls"] += 1
                        state["exact"] &= exact
                        state["max_abs_diff"] = max(state["max_abs_diff"], diff)
                        if not exact:
                            state["bad"].append((i, r, int(k), diff))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append((i, exc))
            barrier.abort()

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,), name=f"robustness-{i}") for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    if errors:
        raise errors[0][1]
    assert state["calls"] == n_threads * rounds * K
    return {"threads": n_threads, "rounds": rounds, "inputs": K, "calls": state["calls"],
            "max_in_flight": state["max_in_flight"], "bit_exact": state["exact"],
            "max_abs_diff": state["max_abs_diff"], "mismatches": state["bad"][:5],
            "seconds": round(time.perf_counter() - start, 2)}


def _backend_factory(exports, variant: str):
    if variant == "onnx-fp32":
        return lambda: OnnxRuntimeBackend(exports / "detector" / "model.onnx", CPU, threads=1)
    if variant == "onnx-fp16":
        return lambda: OnnxRuntimeBackend(exports / "detector" / "model.fp16.onnx", CPU, threads=1)
    return lambda: TorchBackend(demo_model_path("detector"), decode_mode="boxes")


def _record_threads(reliability_record, key: str, figures: dict) -> None:
    _THREAD_FIGURES[key] = figures
    reliability_record("runtime_threads", dict(_THREAD_FIGURES))


@pytest.mark.parametrize("variant", ["onnx-fp32", "onnx-fp16", "pytorch"])
def test_threads_with_their_own_backend_match_the_single_thread_reference(exports, feeds, variant,
                                                                           reliability_record):
    make = _backend_factory(exports, variant)
    ref_backend = make()
    cast = [f.astype(ref_backend.input_dtype, copy=False) for f in feeds]
    reference = [ref_backend.infer({ref_backend.input_name: x}) for x in cast]  # single thread, in order
    assert set(reference[0]) == {"boxes", "scores"}  # decoded boxes from every backend
    assert (np.stack([r["scores"].max(axis=-1) for r in reference]) > SCORE_THRESH).sum() >= K  # real detections

    def work(backend, k):
        return _diff(backend.infer({backend.input_name: cast[k]}), reference[k])

    figures = {"backend": ref_backend.name, "runs": []}
    for n in THREAD_COUNTS:
        res = run_concurrently(lambda: ref_backend.clone(), work, n, seed=n)  # each thread: its own clone()
        figures["runs"].append(res)
        assert res["max_in_flight"] >= 2, res  # the threads really ran inferences at the same time
        # bit for bit: each session runs the same kernels on the same data; nothing is shared between them
        assert res["bit_exact"], f"{variant}: {res}"
    ref_backend.close()
    _record_threads(reliability_record, variant, figures)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_predict_in_threads_gives_the_reference_detections(exports, images, precision, reliability_record):
    """Each thread its own ``load(export dir)`` Predictor (default intra-op threads): detections equal."""
    make = lambda: load(exports / "detector", backend="onnxruntime", precision=precision, providers=CPU)
    ref_pred = make()
    assert ref_pred.source.endswith("model.fp16.onnx" if precision == "fp16" else "model.onnx")
    reference = [ref_pred.predict(im, score_thresh=SCORE_THRESH)[0] for im in images]
    assert sum(len(r.boxes) for r in reference) >= K

    def work(pred, k):
        got = pred.predict(images[k], score_thresh=SCORE_THRESH)[0]
        ref = reference[k]
        as_d = lambda d: {"boxes": d.boxes, "scores": d.scores, "labels": d.labels}
        return _diff(as_d(got), as_d(ref))

    res = run_concurrently(make, work, max(THREAD_COUNTS), seed=1)
    assert res["max_in_flight"] >= 2, res
    assert res["bit_exact"], res
    _record_threads(reliability_record, f"predict-{precision}", {"backend": ref_pred.backend.name, "runs": [res]})


def test_one_onnxruntime_backend_shared_by_threads_is_safe(exports, feeds, reliability_record):
    """ONNX Runtime's ``InferenceSession.run`` is thread-safe: one backend shared by 8 threads gives the
    reference outputs bit for bit.  (An EngineBackend is not shareable: one context and buffer set.)"""
    shared = OnnxRuntimeBackend(exports / "detector" / "model.onnx", CPU, threads=1)
    reference = [shared.infer({"images": x}) for x in feeds]

    def work(backend, k):
        return _diff(backend.infer({"images": feeds[k]}), reference[k])

    res = run_concurrently(lambda: shared, work, max(THREAD_COUNTS), seed=2)
    assert res["max_in_flight"] >= 2, res
    assert res["bit_exact"], res
    _record_threads(reliability_record, "onnx-fp32-shared-session", {"backend": shared.name, "runs": [res]})


@pytest.mark.gpu
def test_engine_threads_with_their_own_context_match_the_single_thread_reference(tmp_path, images, feeds,
                                                                                 reliability_record):
    """Each thread its own EngineBackend (own execution context, CUDA stream and buffers) on one engine."""
    from autotimm_deploy.engines import check_engine, engine_runnable

    out = tmp_path / "det"
    manifest = export_model(demo_model_path("detector"), out, ExportOptions(fp16=True, engine="auto", check=False),
                            progress=None)
    engine = out / next(a["file"] for a in manifest["artifacts"] if a["role"] == "engine")
    ok, why = engine_runnable(check_engine(engine))
    if not ok:  # e.g. an RTX engine on a data-centre GPU: not a target of the engine
        pytest.skip(f"engine cannot run on this GPU: {why}")
    ref_backend = EngineBackend(engine)
    cast = [f.astype(ref_backend.input_dtype, copy=False) for f in feeds]
    reference = [ref_backend.infer({ref_backend.input_name: x}) for x in cast]

    def work(backend, k):
        return _diff(backend.infer({backend.input_name: cast[k]}), reference[k])

    figures = {"backend": ref_backend.name, "runs": []}
    for n in THREAD_COUNTS:
        res = run_concurrently(lambda: EngineBackend(engine), work, n, seed=n)
        figures["runs"].append(res)
        assert res["max_in_flight"] >= 2, res
        # the same engine runs the same tactics in every context; TensorRT does not promise bit-identical
        # results for every tactic (a kernel with atomics may reorder a sum), so allow a last-bits change
        # in FP16 outputs (boxes in network pixels, scores in [0, 1]) and record whether it was exact
        assert res["max_abs_diff"] <= 1e-2, res

    ref_pred = load(engine)
    pred_ref = [ref_pred.predict(im, score_thresh=SCORE_THRESH)[0] for im in images]

    def work_predict(pred, k):
        got = pred.predict(images[k], score_thresh=SCORE_THRESH)[0]
        assert np.array_equal(got.labels, pred_ref[k].labels), k
        return _diff({"boxes": got.boxes, "scores": got.scores}, {"boxes": pred_ref[k].boxes,
                                                                   "scores": pred_ref[k].scores})

    res = run_concurrently(lambda: load(engine), work_predict, max(THREAD_COUNTS), seed=3)
    assert res["max_abs_diff"] <= 1e-2, res
    figures["runs"].append({"path": "predict", **res})
    for b in (ref_backend, ref_pred.backend):
        b.close()
    _record_threads(reliability_record, "tensorrt-engine", figures)


# --- load/unload ------------------------------------------------------------------------------------

#: (target, n) measured in ONE fresh interpreter, the leaking control last.  n=1000 where a load is
#: cheap; the detector session (~25 ms) and the Predictor path (``load()`` parses the ONNX metadata,
#: then predict; ~20-60 ms) run fewer here to keep this file near a minute; the script runs 1000 of each.
LOAD_UNLOAD_SPECS = [("ort-classifier", 1000), ("ort-detector", 300), ("predictor-classifier", 300),
                     ("predictor-detector", 150), ("leak-control", 1000)]
WARMUP = 50


def assert_within_budget(r: dict) -> None:
    """The check every target must pass: RSS growth from the end of warm-up to the end under the budget."""
    assert r["growth_kib"] < load_unload.BUDGET_MIB * 1024, (
        f"{r['target']}: RSS grew {r['growth_kib']} KiB over {r['iterations'] - r['warmup']} loads after "
        f"warm-up ({r['growth_per_iteration_kib']} KiB/load), budget {load_unload.BUDGET_MIB} MiB")


@pytest.fixture(scope="module")
def load_unload_results(exports):
    start = time.perf_counter()
    results = load_unload.measure(LOAD_UNLOAD_SPECS, exports, warmup=WARMUP, use_tracemalloc=True, timeout=600)
    return {r["target"]: r for r in results}, round(time.perf_counter() - start, 1)


def test_load_unload_memory_growth_stays_within_budget(load_unload_results, reliability_record):
    results, seconds = load_unload_results
    for target, n in LOAD_UNLOAD_SPECS:
        r = results[target]
        assert r["iterations"] == n and r["rss_start_kib"] > 0 and r["rss_end_kib"] > 0
        if target != "leak-control":
            assert_within_budget(r)
    reliability_record("load_unload", {
        "budget_mib": load_unload.BUDGET_MIB, "warmup": WARMUP, "subprocess_seconds": seconds,
        "rss_source": "VmRSS, /proc/self/status, after gc.collect()",
        "leak_control_kib_per_load": load_unload.LEAK_KIB,
        "leak_control_growth_kib": results["leak-control"]["growth_kib"],
        "targets": {t: {k: v for k, v in r.items() if k != "target"} for t, r in results.items()}})


def test_leaking_control_fails_the_same_check(load_unload_results):
    """Positive control: a loop that keeps a 64 KiB buffer per load must fail ``assert_within_budget``."""
    results, _ = load_unload_results
    control = results["leak-control"]
    with pytest.raises(AssertionError, match="leak-control: RSS grew"):
        assert_within_budget(control)
    # and by a wide margin, not by noise: at least 3/4 of what was leaked is visible in RSS
    leaked_kib = load_unload.LEAK_KIB * (control["iterations"] - control["warmup"])
    assert control["growth_kib"] >= 0.75 * leaked_kib, control


def test_load_unload_growth_measures_an_in_process_leak():
    """The harness itself (in this process, small n): a 256 KiB-per-call leak shows up as >= 3/4 of it.
    The leak is touched anonymous mmaps: always new resident pages, whereas malloc in this long-lived
    process could serve a numpy buffer from pages freed earlier (that case is the subprocess control's)."""
    import mmap

    keep = []

    def leak() -> None:
        m = mmap.mmap(-1, 256 * 1024)
        m.write(b"\x01" * len(m))
        keep.append(m)

    r = load_unload.load_unload_growth(leak, n=40, warmup=10)
    assert r["growth_kib"] >= 0.75 * 256 * 30, r
    with pytest.raises(ValueError):
        load_unload.load_unload_growth(lambda: None, n=5, warmup=5)
