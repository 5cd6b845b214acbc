import os
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
