"""Shipped demo models and the synthetic shapes dataset they were trained on."""

from __future__ import annotations

from pathlib import Path

__all__ = ["demo_model_path", "WEIGHTS_DIR"]

WEIGHTS_DIR = Path(__file__).parent / "weights"


def demo_model_path(kind: str = "detector") -> Path:
    """Path of the shipped demo model file: ``kind`` is "detector" or "classifier".

    >>> demo_model_path("detector").name
    'demo_detector.pt'
    """
    if kind not in ("detector", "classifier"):
        raise ValueError(f"kind must be 'detector' or 'classifier', got {kind!r}")
    return WEIGHTS_DIR / f"demo_{kind}.pt"
