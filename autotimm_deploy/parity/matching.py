"""Detections compared as detections: moved to the detection task (:mod:`autotimm_deploy.tasks.detection.matching`),
which owns its parity agreement; kept so that existing imports work."""

from ..tasks.detection.matching import (FALLBACK_TOP_K, MAX_TIE_FRACTION, DetectionAgreement,  # noqa: F401
                                        align_topk, match_detections)

__all__ = ["FALLBACK_TOP_K", "MAX_TIE_FRACTION", "DetectionAgreement", "match_detections", "align_topk"]
