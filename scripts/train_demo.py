#!/usr/bin/env python
"""Train the shipped demo models on the synthetic shapes dataset (2 CPU cores, under 15 minutes).

    python scripts/train_demo.py --out autotimm_deploy/demo/weights

Writes demo_detector.pt and demo_classifier.pt and prints their held-out accuracy
(detector mAP via pycocotools' COCOeval, classifier top-1), also saved as metrics.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from autotimm_deploy import save_model
from autotimm_deploy.demo.shapes import CLASSES
from autotimm_deploy.demo.train import (ClassifierTrainConfig, DetectorTrainConfig, MEAN, STD, evaluate_classifier,
                                        evaluate_detector, train_classifier, train_detector)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="autotimm_deploy/demo/weights")
    ap.add_argument("--det-steps", type=int, default=DetectorTrainConfig.steps)
    ap.add_argument("--cls-steps", type=int, default=ClassifierTrainConfig.steps)
    ap.add_argument("--only", choices=["detector", "classifier"], default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    metrics_path = out / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    if args.only in (None, "detector"):
        t = time.time()
        cfg = DetectorTrainConfig(steps=args.det_steps)
        det = train_detector(cfg)
        train_s = time.time() - t
        m = evaluate_detector(det, "val", 500, cfg.image_size)
        print(f"detector: {m} (train {train_s:.0f}s)")
        save_model(det, out / "demo_detector.pt", class_names=CLASSES, input_size=(cfg.image_size,) * 2,
                   mean=MEAN, std=STD)
        metrics["detector"] = {**m, "train_seconds": round(train_s, 1), "val_images": 500,
                               "config": {k: v for k, v in vars(cfg).items() if k != "size_ranges"}}
    if args.only in (None, "classifier"):
        t = time.time()
        ccfg = ClassifierTrainConfig(steps=args.cls_steps)
        clf = train_classifier(ccfg)
        train_s = time.time() - t
        acc = evaluate_classifier(clf, "val", 1000, ccfg.image_size)
        print(f"classifier: top1={acc:.4f} (train {train_s:.0f}s)")
        save_model(clf, out / "demo_classifier.pt", class_names=CLASSES, input_size=(ccfg.image_size,) * 2,
                   mean=MEAN, std=STD)
        metrics["classifier"] = {"top1": acc, "train_seconds": round(train_s, 1), "val_images": 1000,
                                 "config": vars(ccfg)}
    metrics["torch"] = torch.__version__
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")


if __name__ == "__main__":
    main()
