"""Exports of both demo models (FP32 + FP16 ONNX; the detector with its TensorRT-RTX engine, the classifier without
an engine), shared by the serving tests of a session."""

import pytest

from autotimm_deploy.demo import demo_model_path


@pytest.fixture(scope="session")
def demo_exports(tmp_path_factory):
    from autotimm_deploy.exporters.pipeline import ExportOptions, export_model

    root = tmp_path_factory.mktemp("serve-exports")
    out = {}
    for kind in ("detector", "classifier"):
        out[kind] = root / kind
        export_model(demo_model_path(kind), out[kind], ExportOptions(fp16=True, engine="auto" if kind == "detector" else "none"))
    return out
