"""The engine cache key covers every build input; each field changed alone is a miss; entries are never unpickled."""

import ast
import inspect

from autotimm_deploy.engines import sidecar
from autotimm_deploy.engines.sidecar import CACHE_KEY_FIELDS, cache_key

BASE = {"onnx_sha256": "a" * 64, "library": "tensorrt", "library_version": "10.9.0.34", "precision": "fp16",
        "profiles": [{"images": {"min": [1, 3, 64, 64], "opt": [4, 3, 128, 128], "max": [8, 3, 256, 256]}}],
        "targets": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "cuda_runtime": "13.0"},
        "workspace_mib": None, "fp32_islands": {"op_types": ["Exp", "InstanceNormalization"], "node_names": []},
        "builder": {"fp32_layers": [], "strongly_typed": False}}

# one change per build input the issue names (and the others the key holds)
CHANGES = {
    "ONNX hash": ("onnx_sha256", "b" * 64),
    "library": ("library", "tensorrt-rtx"),
    "library version": ("library_version", "10.9.0.35"),
    "CUDA version": ("targets", {**BASE["targets"], "cuda_runtime": "12.9"}),
    "GPU name": ("targets", {**BASE["targets"], "name": "NVIDIA H200"}),
    "compute capability": ("targets", {**BASE["targets"], "compute_capability": "8.9"}),
    "targets (ahead of time)": ("targets", ["SM86", "SM89"]),
    "precision": ("precision", "fp32"),
    "block list (FP32 ops)": ("fp32_islands", {"op_types": ["Exp"], "node_names": []}),
    "block list (FP32 nodes)": ("fp32_islands", {"op_types": ["Exp", "InstanceNormalization"], "node_names": ["/a"]}),
    "profile min": ("profiles", [{"images": {**BASE["profiles"][0]["images"], "min": [1, 3, 32, 32]}}]),
    "profile opt": ("profiles", [{"images": {**BASE["profiles"][0]["images"], "opt": [2, 3, 128, 128]}}]),
    "profile max": ("profiles", [{"images": {**BASE["profiles"][0]["images"], "max": [16, 3, 256, 256]}}]),
    "workspace": ("workspace_mib", 1024),
    "pinned FP32 layers": ("builder", {"fp32_layers": ["/x/Conv"], "strongly_typed": False}),
    "strongly typed": ("builder", {"fp32_layers": [], "strongly_typed": True}),
}


def test_each_field_changed_alone_misses(reliability_record):
    base = cache_key(BASE)
    keys = {label: cache_key({**BASE, field: value}) for label, (field, value) in CHANGES.items()}
    assert all(k != base for k in keys.values()), [label for label, k in keys.items() if k == base]
    assert len(set(keys.values())) == len(keys)  # and no two changes collide
    assert {field for field, _ in CHANGES.values()} == set(CACHE_KEY_FIELDS)  # every key field is exercised
    assert cache_key(dict(reversed(list(BASE.items())))) == base  # canonical: insertion order does not matter
    reliability_record("cache_key", {"fields": list(CACHE_KEY_FIELDS), "changes_tested": list(CHANGES),
                                     "misses": len(keys), "collisions": 0})


def test_cache_entries_are_read_as_bytes_and_json_never_unpickled():
    tree = ast.parse(inspect.getsource(sidecar))
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | \
            {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not names & {"pickle", "loads_pickle", "torch", "marshal", "dill", "joblib", "shelve"}
    assert {"read_bytes", "json"} <= names
