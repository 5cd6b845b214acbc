"""Engine files are code: a corpus of damaged, foreign and mislabelled engines, each checked in a child process.

~50 truncations, ~200 single-byte flips, a file from another library version, one for another compute
capability, another library's claim, a random file, an ONNX file renamed .engine (with and without a
sidecar), a malformed sidecar, plus flips and truncations whose sidecar was rewritten to match (what
an attacker who controls both files would do).  Every case must end in a typed error and 0 crashes
may reach the caller.  Without a GPU everything up to deserialisation is tested (sidecar, size, SHA-256,
magic, version, targets, the child-process isolation and its crash/hang handling); the library's own
validity check and deserialisation need a GPU and run in the ``gpu``-marked test.
"""

import hashlib
import json
import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest

from autotimm_deploy.demo import demo_model_path
from autotimm_deploy.engines.library import gpu_info
from autotimm_deploy.engines.probe import CRASH_FOR_TESTS_ENV, probe_engines
from autotimm_deploy.engines.sidecar import sidecar_path
from autotimm_deploy.errors import EngineCorrupt, EngineIncompatible
from autotimm_deploy.exporters.pipeline import ExportOptions, export_model

N_TRUNC, N_FLIP, N_MATCHED = 50, 200, 30


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    out = tmp_path_factory.mktemp("engine")
    export_model(demo_model_path("classifier"), out, ExportOptions(engine="tensorrt-rtx", check=False), progress=None)
    return out / "model.engine"


def _write(dst: Path, data: bytes, sidecar: dict | None, match: bool = False) -> Path:
    dst.write_bytes(data)
    if sidecar is not None:
        side = json.loads(json.dumps(sidecar))
        if match:  # the sidecar rewritten to describe the damaged bytes
            side["engine"]["bytes"], side["engine"]["sha256"] = len(data), hashlib.sha256(data).hexdigest()
        sidecar_path(dst).write_text(json.dumps(side))
    return dst


def make_corpus(engine: Path, root: Path, seed: int = 0):
    """[(path, expected error class name, expected text, kind)]"""
    rng = random.Random(seed)
    data = engine.read_bytes()
    side = json.loads(sidecar_path(engine).read_text())
    no_gpu = gpu_info() is None
    cases = []
    lengths = sorted({0, 1, 3, 4, 8, 16, 64, 256, 4096} | {rng.randrange(5, len(data)) for _ in range(N_TRUNC)})[:N_TRUNC]
    for k, n in enumerate(lengths):
        cases.append((_write(root / f"trunc{k:03d}.engine", data[:n], side), "EngineCorrupt", "truncated", "truncation"))
    positions = [0, 1, 2, 3] + [rng.randrange(len(data)) for _ in range(N_FLIP - 4)]
    for k, i in enumerate(positions):
        b = bytearray(data)
        b[i] ^= 1 << rng.randrange(8)
        cases.append((_write(root / f"flip{k:03d}.engine", bytes(b), side), "EngineCorrupt", "does not match the sidecar",
                      "byte flip"))
    for k in range(N_MATCHED):  # sidecar rewritten to match: only the library can tell
        b = bytearray(data)
        if k % 3 == 0:
            b = b[: rng.randrange(64, len(b))]
        else:
            b[rng.randrange(4, len(b))] ^= 1 << rng.randrange(8)
        expect = ("EngineIncompatible", "no CUDA GPU") if no_gpu else (None, "")
        cases.append((_write(root / f"matched{k:03d}.engine", bytes(b), side, match=True), *expect, "matched sidecar"))
    other = json.loads(json.dumps(side))
    other["library"]["version"] = "1.0.0.0"
    cases.append((_write(root / "other_version.engine", data, other), "EngineIncompatible",
                  "built with tensorrt-rtx 1.0.0.0", "other library version"))
    other = json.loads(json.dumps(side))
    other["targets"] = {"compute_capabilities": ["SM75"]}
    cases.append((_write(root / "other_cc.engine", data, other), "EngineIncompatible",
                  "no CUDA GPU" if no_gpu else "not among the engine's targets SM75", "other compute capability"))
    other = json.loads(json.dumps(side))
    other["library"]["name"] = "tensorrt"
    cases.append((_write(root / "claims_tensorrt.engine", data, other), "EngineCorrupt",
                  "not a tensorrt engine (a tensorrt-rtx engine)", "other library"))
    rnd = bytes(rng.getrandbits(8) for _ in range(4096))
    cases.append((_write(root / "random.engine", rnd, side, match=True), "EngineCorrupt", "unknown content", "random file"))
    cases.append((_write(root / "random_no_sidecar.engine", rnd, None), "EngineIncompatible", "no sidecar", "random file"))
    onnx_bytes = (engine.parent / "model.onnx").read_bytes()
    cases.append((_write(root / "onnx_renamed.engine", onnx_bytes, side, match=True), "EngineCorrupt",
                  "probably an ONNX file", "ONNX renamed .engine"))
    cases.append((_write(root / "onnx_no_sidecar.engine", onnx_bytes, None), "EngineIncompatible", "no sidecar",
                  "ONNX renamed .engine"))
    bad = _write(root / "bad_sidecar.engine", data, None)
    sidecar_path(bad).write_text("{not json")
    cases.append((bad, "EngineCorrupt", "sidecar is not valid JSON", "malformed sidecar"))
    cases.append((root / "missing.engine", "EngineIncompatible", "no such engine file", "missing file"))
    return cases


def test_engine_corpus_every_case_is_a_typed_error_and_nothing_crashes(engine, tmp_path, reliability_record):
    cases = make_corpus(engine, tmp_path)
    start = time.time()
    results = probe_engines([c[0] for c in cases], timeout=120)
    seconds = time.time() - start
    by_kind: dict = {}
    for (path, etype, text, kind), res in zip(cases, results):
        assert not res.crashed, f"{path.name}: {res.message}"
        if etype is None:  # GPU, sidecar matched: the library decides; it must not crash, any verdict is typed
            assert res.ok or res.error_type in ("EngineCorrupt", "EngineIncompatible"), res.message
        else:
            assert (res.ok, res.error_type) == (False, etype), f"{path.name}: {res.error_type}: {res.message}"
            assert text in res.message and str(path) in res.message, f"{path.name}: {res.message}"
            err = res.error()
            assert isinstance(err, EngineCorrupt if etype == "EngineCorrupt" else EngineIncompatible)
        k = by_kind.setdefault(kind, {"cases": 0, "refused": 0, "crashed": 0, "library_checked": 0})
        k["cases"] += 1
        k["refused"] += not res.ok
        k["crashed"] += res.crashed
        k["library_checked"] += res.library_checked
    assert by_kind["truncation"]["cases"] == N_TRUNC and by_kind["byte flip"]["cases"] == N_FLIP
    assert sum(k["crashed"] for k in by_kind.values()) == 0
    reliability_record("engine_corpus", {
        "gpu": (gpu_info() or {}).get("name"), "cases": len(cases), "seconds": round(seconds, 1),
        "refused": sum(k["refused"] for k in by_kind.values()), "crashed": 0, "by_kind": by_kind,
        "library_reached": sum(k["library_checked"] for k in by_kind.values()),
        "note": ("no GPU: every check up to deserialisation ran; the library's validity check and deserialisation "
                 "were not reached" if gpu_info() is None else "GPU present: sidecar-matched cases reached the library"),
    })


def test_a_crash_or_hang_in_the_child_is_reported_and_the_next_file_still_checked(engine, tmp_path, monkeypatch,
                                                                                   reliability_record):
    """Positive controls: the child is made to die (SIGSEGV) or stop (SIGSTOP) on one file."""
    files = []
    for name in ("before", "crash-me", "after"):
        dst = tmp_path / f"{name}.engine"
        shutil.copy(engine, dst)
        shutil.copy(sidecar_path(engine), sidecar_path(dst))
        files.append(dst)
    monkeypatch.setenv(CRASH_FOR_TESTS_ENV, f"{int(signal.SIGSEGV)}:crash-me")
    res = probe_engines(files, timeout=60)
    assert [r.crashed for r in res] == [False, True, False]
    assert res[1].error_type == "EngineCorrupt" and "crashed the checking process (SIGSEGV)" in res[1].message
    assert isinstance(res[1].error(), EngineCorrupt)
    # the intact files get their normal verdict (here: cannot run without a GPU, or ok on a GPU)
    assert res[0].ok == res[2].ok and res[0].error_type == res[2].error_type
    monkeypatch.setenv(CRASH_FOR_TESTS_ENV, f"{int(signal.SIGSTOP)}:crash-me")
    start = time.time()
    hung = probe_engines(files[1:2], timeout=3)[0]
    assert hung.crashed and "did not finish within 3 s" in hung.message and time.time() - start < 30
    reliability_record("engine_child_controls", {"sigsegv_caught": True, "hang_caught_after_s": 3,
                                                 "following_file_checked": True})


def test_load_engine_refuses_before_deserialising_in_process(engine, tmp_path):
    from autotimm_deploy.engines.load import load_engine

    bad = tmp_path / "bad.engine"
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    shutil.copy(sidecar_path(engine), sidecar_path(bad))
    with pytest.raises(EngineCorrupt, match="does not match the sidecar"):
        load_engine(bad)


@pytest.mark.gpu
def test_engine_corpus_on_gpu_reaches_the_library_with_its_log(engine, tmp_path):  # pragma: no cover - needs a GPU
    cases = [c for c in make_corpus(engine, tmp_path) if c[3] == "matched sidecar"]
    results = probe_engines([c[0] for c in cases], timeout=120)
    assert not any(r.crashed for r in results)
    refused = [r for r in results if not r.ok]
    assert refused and all(r.library_checked and r.log for r in refused)
    assert os.environ.get(CRASH_FOR_TESTS_ENV) is None
