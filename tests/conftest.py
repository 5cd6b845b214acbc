import os
from pathlib import Path
import tempfile

import pytest
import torch

from autotimm_deploy.parity.random_init import randomize_norms

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# engines built by tests go to a fresh cache, never the user's ~/.cache/autotimm-deploy
os.environ["AUTOTIMM_DEPLOY_CACHE"] = tempfile.mkdtemp(prefix="autotimm-deploy-test-cache-")
torch.set_num_threads(2)


@pytest.fixture
def small_detector():
    from autotimm_deploy import ObjectDetector

    torch.manual_seed(0)
    return randomize_norms(ObjectDetector("test_resnet", num_classes=4, fpn_channels=32, num_convs=1))


@pytest.fixture
def small_classifier():
    from autotimm_deploy import ImageClassifier

    torch.manual_seed(0)
    return randomize_norms(ImageClassifier("test_resnet", num_classes=4))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip, with the reason, where no CUDA GPU is present; nothing else skips."""
    from autotimm_deploy.engines.library import gpu_info

    if gpu_info() is not None:
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU: torch.cuda.is_available() is False on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def reliability_record(tmp_path):
    """``record(name, figures)``: the reliability tests' measured figures, as JSON, into
    ``$AUTOTIMM_RELIABILITY_DIR`` (scripts/reliability_report.py renders docs/reliability.md from them)."""
    import json
    from pathlib import Path

    root = Path(os.environ.get("AUTOTIMM_RELIABILITY_DIR") or tmp_path)

    def record(name: str, figures: dict) -> None:
        root.mkdir(parents=True, exist_ok=True)
        (root / f"{name}.json").write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")

    return record


def _builders():
    """tests/autotimm/builders.py (real AutoTimm writes the checkpoints of the classes without stored fixtures),
    imported by path: the tests run with --import-mode=importlib."""
    import importlib.util
    import sys
    from pathlib import Path

    name = "autotimm_deploy_tests_autotimm_builders"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parent / "autotimm" / "builders.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


@pytest.fixture(scope="session")
def autotimm_builders():
    """The module tests/autotimm/builders.py."""
    return _builders()


@pytest.fixture(scope="session")
def autotimm_checkpoint(tmp_path_factory):
    """``autotimm_checkpoint(kind, compiled=False)``: a checkpoint real AutoTimm wrote for ``kind`` (builders.KINDS:
    semantic_deeplab, semantic_fcn, instance, yolox_detector), built once per session."""
    made = {}

    def get(kind: str, compiled: bool = False) -> Path:
        if (kind, compiled) not in made:
            out = tmp_path_factory.mktemp(f"ckpt-{kind}-{'compiled' if compiled else 'plain'}")
            # YOLOX: a confident, sparse model (AutoTimm's default threshold 0.01 leaves a random model's best scores
            # near 0.1, and dense overlapping boxes of near-equal score, where FP16 reorders NMS's choices): 3 % of
            # the locations score above 0.3
            extra = {"score_thresh": 0.3, "pos_fraction": 0.03} if kind == "yolox_detector" else {}
            made[kind, compiled] = _builders().build_checkpoint(kind, out, compile_model=compiled, **extra)
        return made[kind, compiled]

    return get


@pytest.fixture(scope="session")
def autotimm_rebuild():
    """``autotimm_rebuild(path)``: AutoTimm's own LightningModule for a built checkpoint (builders.rebuild)."""
    return _builders().rebuild
