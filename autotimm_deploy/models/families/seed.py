"""The seed's families (``shared/seed/heads.md``); their modules are :mod:`autotimm_deploy.models.detector`
(FPN with max-pool P6/P7, :class:`~autotimm_deploy.models.heads.DetectionHead`) and
:mod:`autotimm_deploy.models.classifier`.

``BBOX_LOG_CLAMP = 10``: the regression output is a log-distance, ``exp(min(bbox, 10))`` pixels.
``exp(10) = 22026.5`` is far below the FP16 maximum (65504), so ``exp`` never overflows in FP16 and
``px + exp(.)`` stays finite for inputs up to ~43k pixels.  The clamp changes no clipped box for inputs
up to 22026 pixels per side: a distance beyond that already reaches past the image border on both
sides, and clipping maps it to the same border.
"""

from __future__ import annotations

from ..family import Family, Postprocess, Preprocess, RawOutput

__all__ = ["SEED_FCOS", "CLASSIFIER", "BBOX_LOG_CLAMP"]

BBOX_LOG_CLAMP = 10.0

SEED_FCOS = Family(
    name="seed-fcos",
    task="detection",
    convention="fcos-ltrb-exp-v1",
    outputs=(
        RawOutput("cls", "class_logits", "num_classes", "sigmoid", meaning="class logits"),
        RawOutput("bbox", "ltrb", "4", "exp", clamp_max=BBOX_LOG_CLAMP, meaning="log-distances l, t, r, b"),
        RawOutput("ctr", "centerness", "1", "sigmoid", meaning="centerness logit"),
    ),
    score=("cls", "ctr"),
    postprocess=Postprocess(candidates="per_class", pre_nms_top_k=1000, score_thresh=0.05, iou_thresh=0.6,
                            max_detections=100),
    preprocess=Preprocess(resize="letterbox", align="top-left", fill=None),
    description="seed FCOS: FPN with max-pool P6/P7, 3 subnets, exp(min(bbox, 10)) pixel distances",
)

CLASSIFIER = Family(
    name="classifier",
    task="classification",
    convention="logits-softmax-v1",
    outputs=(RawOutput("logits", "logits", "num_classes", "softmax", meaning="class logits"),),
    preprocess=Preprocess(resize="letterbox", align="top-left", fill=None),
    description="timm backbone + linear head, softmax probabilities",
)
