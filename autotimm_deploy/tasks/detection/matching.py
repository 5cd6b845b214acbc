"""Detections compared as detections: reference detections matched one-to-one to an artifact's by class and IoU
(:func:`match_detections`, giving a :class:`DetectionAgreement`), and top-k exports' candidates aligned by index
before the tensor comparison (:func:`align_topk`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

__all__ = ["FALLBACK_TOP_K", "MAX_TIE_FRACTION", "DetectionAgreement", "match_detections", "align_topk"]

#: Candidates per image compared when the model makes no detection above the detection threshold (an untrained or
#: low-confidence model): the best ones after NMS, whatever their score, so the check still measures something.
FALLBACK_TOP_K = 20


@dataclass
class DetectionAgreement:
    """Reference detections (score >= score_thr) matched by class and IoU >= iou_thr.  ``basis`` says what was
    compared: detections above the threshold, or (when there were none) the top-K candidates per image.  A check
    that compared nothing is ``not informative``: it neither passes nor fails."""

    reference: int
    candidate: int
    matched: int
    max_score_diff: float
    score_thr: float
    iou_thr: float
    min_match: float
    unmatched_best_iou: Optional[float] = None  # median IoU of unmatched references with their best same-class box
    basis: str = "threshold"  # threshold | top-k
    score_limit: float = float("inf")  # the largest score difference of a matched pair that passes

    @property
    def matched_fraction(self) -> Optional[float]:
        return self.matched / self.reference if self.reference else None

    @property
    def status(self) -> str:
        if not self.reference:
            return "not informative"
        ok = self.matched_fraction >= self.min_match and self.max_score_diff <= self.score_limit
        return "pass" if ok else "fail"

    @property
    def passed(self) -> bool:
        """Not failed (a check that compared nothing does not fail an export; it is shown as not informative)."""
        return self.status != "fail"

    def describe(self) -> str:
        what = (f"score >= {self.score_thr}" if self.basis == "threshold" else
                f"no detection scored >= {self.score_thr}: the top {FALLBACK_TOP_K} candidates per image")
        if not self.reference:
            return f"detections: not informative (nothing to compare: {what})"
        return f"detections {self.matched}/{self.reference} matched ({what})"


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


def match_detections(ref: Sequence[Dict[str, np.ndarray]], cand: Sequence[Dict[str, np.ndarray]],
                     score_thr: float = 0.3, iou_thr: float = 0.9, min_match: float = 0.99,
                     box_atol: float = 1e-2, score_limit: float = float("inf")) -> DetectionAgreement:
    """Greedy one-to-one matching of reference detections to candidate detections per image: same class and
    IoU >= ``iou_thr``, or every coordinate within ``box_atol`` pixels (the same box: a degenerate, zero-area
    box has no IoU, as untrained models with linear distances produce).  The agreement passes when at least
    ``min_match`` of the references match and no matched pair's scores differ by more than ``score_limit``."""
    n_ref = n_cand = matched = 0
    max_diff = 0.0
    best_unmatched: List[float] = []
    for r, c in zip(ref, cand):
        rk, ck = r["scores"] >= score_thr, c["scores"] >= score_thr
        rb, rs, rl = r["boxes"][rk], r["scores"][rk], r["labels"][rk]
        # candidates just under the threshold may still match a reference just above it
        cb, cs, cl = c["boxes"], c["scores"], c["labels"]
        n_ref += len(rb)
        n_cand += int(ck.sum())
        if len(rb) == 0:
            continue
        if len(cb) == 0:
            best_unmatched += [0.0] * len(rb)
            continue
        iou = _box_iou(rb, cb)
        iou[np.abs(rb[:, None, :] - cb[None, :, :]).max(-1) <= box_atol] = 1.0
        iou[rl[:, None] != cl[None, :]] = 0.0
        used = np.zeros(len(cb), dtype=bool)
        for i in np.argsort(-rs):
            cands = np.where(~used & (iou[i] >= iou_thr))[0]
            if len(cands):
                j = cands[np.argmax(iou[i, cands])]
                used[j] = True
                matched += 1
                max_diff = max(max_diff, abs(float(rs[i]) - float(cs[j])))
            else:
                best_unmatched.append(float(iou[i].max()))
    return DetectionAgreement(n_ref, n_cand, matched, max_diff, score_thr, iou_thr, min_match,
                              float(np.median(best_unmatched)) if best_unmatched else None, score_limit=score_limit)


#: At most this fraction of an image's top-k candidates may be boundary ties (see :func:`align_topk`).
MAX_TIE_FRACTION = 0.1


def align_topk(ref: Dict[str, np.ndarray], out: Dict[str, np.ndarray], score_atol: float) -> int:
    """Reorder ``out``'s top-k rows (in place) to ``ref``'s candidate order, matching by ``indices``.

    Rounding can swap candidates of near-equal score, or swap which one makes the cut at rank k.
    A reference candidate missing from ``out`` is a *boundary tie* when its reference score is within
    ``score_atol`` of the lowest score ``out`` kept: its reference row is used (and counted).  Any other
    missing candidate keeps ``out``'s row at that rank, so the tensor comparison fails on it.  Rounding swaps
    a few candidates at the cut, not many: when more than :data:`MAX_TIE_FRACTION` of an image's K are
    missing, none of them is a tie (another model's top-k is not a rounding of this one's).
    Returns the number of boundary ties.
    """
    r_idx, o_idx = np.asarray(ref["indices"]), np.asarray(out["indices"])
    if r_idx.shape != o_idx.shape:
        return 0
    boxes, scores, idx = np.array(out["boxes"]), np.array(out["scores"]), o_idx.copy()
    ties = 0
    for b in range(r_idx.shape[0]):
        pos = {int(i): k for k, i in enumerate(o_idx[b])}
        kth = float(np.asarray(out["scores"])[b].max(axis=-1).min()) if o_idx.shape[1] else 0.0
        missing = sum(int(i) not in pos for i in r_idx[b])
        allow = missing <= max(1, int(MAX_TIE_FRACTION * r_idx.shape[1]))
        for k, i in enumerate(r_idx[b]):
            j = pos.get(int(i))
            if j is not None:
                boxes[b, k], scores[b, k], idx[b, k] = out["boxes"][b, j], out["scores"][b, j], i
            elif allow and float(ref["scores"][b, k].max()) <= kth + score_atol:
                boxes[b, k], scores[b, k], idx[b, k] = ref["boxes"][b, k], ref["scores"][b, k], i
                ties += 1
    out["boxes"], out["scores"], out["indices"] = boxes, scores, idx
    return ties
