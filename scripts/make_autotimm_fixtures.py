#!/usr/bin/env python
"""Write small checkpoint fixtures with the real AutoTimm package (CPU, no downloads).

    .venv/bin/python scripts/make_autotimm_fixtures.py [--out tests/fixtures/autotimm] [--only NAME]

The loaders in ``autotimm_deploy`` must read what AutoTimm itself writes, not a hand-made
imitation.  This script trains tiny AutoTimm models (timm's ``test_efficientnet`` backbone,
``pretrained=False``, so nothing is downloaded) on the synthetic shapes dataset of
``autotimm_deploy.demo.shapes`` with AutoTimm's own data modules and ``AutoTrainer``, and
keeps the checkpoints in the forms users have:

* ``*_full.ckpt``: the file the trainer's ``ModelCheckpoint`` wrote (state_dict,
  hyper_parameters, datamodule_hyper_parameters, loops, callbacks, optimizer and scheduler);
* ``*_weights.ckpt``: ``trainer.save_checkpoint(path, weights_only=True)``;
* ``*_compiled_*``: ``compile_model=True`` (AutoTimm's default), so the state-dict keys
  carry ``._orig_mod.`` after ``backbone``/``fpn``/``head``; ``*_plain_*``: no compile;
* ``fcos_logdir/``: the ``hparams.yaml`` of the Lightning log folder (tests add ``checkpoints/``) of
  ``fcos_compiled_full``.

Each fixture is evaluated on the first 64 ``val`` images with the model's own ``predict()``
(detectors) or logits (classifiers); figures, versions and sizes go to ``fixtures.json``.
Data is rendered into a temporary folder; only the fixtures are written to ``--out``.
YOLOX is trained with a custom ``reg_loss_fn`` (see ``PositiveGIoULoss``); everything else uses
AutoTimm's defaults apart from the sizes and learning rates set below.  About 22 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import timm
import torch
from pytorch_lightning.callbacks import LambdaCallback, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torchvision.ops import generalized_box_iou_loss

import autotimm
from autotimm import AutoTrainer, BackboneConfig, FeatureBackboneConfig, ImageClassifier, ObjectDetector
from autotimm.data.datamodule import ImageDataModule
from autotimm.data.detection_datamodule import DetectionDataModule
from autotimm.data.detection_dataset import detection_collate_fn
from autotimm.data.multilabel_datamodule import MultiLabelImageDataModule
from autotimm_deploy.demo.shapes import CLASSES, write_classification_split, write_detection_split

SEED = 42
BACKBONE = "test_efficientnet"
BATCH = 16  # every split size is a multiple of it: one batch shape, so no compile recompiles
N_TRAIN, N_VAL = 1024, 64
# fpn_channels=64, not 32: GroupNorm has 32 groups, and with 32 channels the 1x1 P7 map of a 128-pixel image
# leaves one value per group, so GroupNorm raises for a batch of one image.  One head conv keeps every
# full checkpoint (weights + AdamW state) under 5 MB.
DET = dict(task="detector", image_size=128, fpn_channels=64, head_num_convs=1, lr=2e-3, epochs=8)
CLS = dict(task="classifier", image_size=64, lr=3e-3, epochs=15)
FIXTURES = {
    "fcos_compiled_full": dict(DET, arch="fcos", compile=True, save="full", logdir="fcos_logdir"),
    "fcos_plain_weights": dict(DET, arch="fcos", compile=False, save="weights"),
    "yolox_compiled_weights": dict(DET, arch="yolox", compile=True, save="weights"),
    "yolox_plain_full": dict(DET, arch="yolox", compile=False, save="full"),
    "classifier_compiled_full": dict(CLS, compile=True, save="full"),
    "classifier_plain_weights": dict(CLS, compile=False, save="weights", head_dropout=0.1),
    "classifier_multilabel_plain_full": dict(CLS, task="multilabel", compile=False, save="full"),
}
MAX_BYTES = 5 * 1024 * 1024


class PositiveGIoULoss(nn.Module):
    """Training-only ``reg_loss_fn`` for YOLOX (no parameters, not a hyperparameter: the checkpoint is unchanged).

    AutoTimm 0.7.37's YOLOX head outputs unconstrained (l, t, r, b) distances, and both its default -log(IoU)
    loss and its GIoULoss go below zero for negative distances, so training turns the boxes inside out (mAP ~0).
    This is GIoU on the non-negative part plus a penalty on negative distances.
    Inputs are AutoTimm's point-relative boxes (-l, -t, r, b).
    """

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        dist = torch.cat([-pred[:, :2], pred[:, 2:]], dim=1)
        boxes = torch.cat([-dist[:, :2].clamp(min=0), dist[:, 2:].clamp(min=0)], dim=1)
        return generalized_box_iou_loss(boxes, target, reduction="sum") + torch.relu(-dist).sum()


def write_data(root: Path, task: str) -> Path:
    """Render the shapes splits in the layout the matching AutoTimm data module reads."""
    out = root / task
    if task == "detector":  # COCO json + images per split
        for split, n in (("train", N_TRAIN), ("val", N_VAL)):
            write_detection_split(out / split, split, n, size=128)
    elif task == "classifier":  # ImageFolder: <split>/<class>/<file>.png
        for split, n in (("train", N_TRAIN), ("val", N_VAL)):
            tmp = write_classification_split(out / f"_{split}", split, n, size=64)
            with open(tmp / "annotations.csv", newline="") as f:
                for row in csv.DictReader(f):
                    (out / split / row["label"]).mkdir(parents=True, exist_ok=True)
                    shutil.move(str(tmp / row["file"]), out / split / row["label"] / row["file"])
            shutil.rmtree(tmp)
    else:  # multi-label CSV: image path + one 0/1 column per class present in a detection image
        for split, n in (("train", N_TRAIN), ("val", N_VAL)):
            write_detection_split(out / split, split, n, size=64)
            coco = json.loads((out / split / "annotations.json").read_text())
            present = {im["id"]: set() for im in coco["images"]}
            for a in coco["annotations"]:
                present[a["image_id"]].add(a["category_id"])
            with open(out / f"{split}.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["image", *CLASSES])
                for im in coco["images"]:
                    flags = [int(c in present[im["id"]]) for c in range(len(CLASSES))]
                    w.writerow([f"{split}/{im['file_name']}", *flags])
    return out


def make_datamodule(spec: dict, data: Path) -> pl.LightningDataModule:
    common = dict(image_size=spec["image_size"], batch_size=BATCH, num_workers=0, pin_memory=False)
    if spec["task"] == "detector":
        return DetectionDataModule(
            data_dir=str(data), train_images_dir=str(data / "train"), val_images_dir=str(data / "val"),
            train_ann_file=str(data / "train/annotations.json"), val_ann_file=str(data / "val/annotations.json"),
            **common)
    if spec["task"] == "classifier":
        return ImageDataModule(data_dir=str(data), **common)
    return MultiLabelImageDataModule(train_csv=str(data / "train.csv"), val_csv=str(data / "val.csv"),
                                     image_dir=str(data), label_columns=list(CLASSES), **common)


def make_model(spec: dict) -> pl.LightningModule:
    common = dict(num_classes=len(CLASSES), lr=spec["lr"], compile_model=spec["compile"], seed=SEED)
    if spec["task"] == "detector":
        return ObjectDetector(backbone=FeatureBackboneConfig(model_name=BACKBONE, pretrained=False),
                              detection_arch=spec["arch"], fpn_channels=spec["fpn_channels"],
                              head_num_convs=spec["head_num_convs"],
                              reg_loss_fn=PositiveGIoULoss() if spec["arch"] == "yolox" else None, **common)
    return ImageClassifier(backbone=BackboneConfig(model_name=BACKBONE, pretrained=False),
                           multi_label=spec["task"] == "multilabel", head_dropout=spec.get("head_dropout", 0.0),
                           **common)


@torch.inference_mode()
def evaluate(model: pl.LightningModule, dm: pl.LightningDataModule, task: str) -> dict:
    """Detectors: AutoTimm's predict() + torchmetrics mAP; classifiers: top-1 / multi-label accuracy."""
    model.eval()
    ds = dm.val_dataset
    batches = [[ds[i] for i in range(k, min(k + BATCH, len(ds)))] for k in range(0, len(ds), BATCH)]
    if task == "detector":
        from torchmetrics.detection import MeanAveragePrecision

        metric, n_det, top = MeanAveragePrecision(box_format="xyxy", iou_type="bbox"), 0, []
        for b in batches:
            batch = detection_collate_fn(b)
            dets = model.predict(batch["image"])
            metric.update([{k: d[k] for k in ("boxes", "scores", "labels")} for d in dets],
                          [{"boxes": bx, "labels": lb} for bx, lb in zip(batch["boxes"], batch["labels"])])
            n_det += sum(len(d["scores"]) for d in dets)
            top += [float(d["scores"].max()) for d in dets if len(d["scores"])]
        m = metric.compute()
        return {"images": len(ds), "score_thresh": model.score_thresh, "detections": n_det,
                "images_with_detections": len(top), "mean_top_score": round(sum(top) / max(len(top), 1), 4),
                "map": round(float(m["map"]), 4), "map_50": round(float(m["map_50"]), 4)}
    correct = total = label_ok = 0
    for b in batches:
        x, y = torch.stack([s[0] for s in b]), torch.stack([torch.as_tensor(s[1]) for s in b])
        logits = model(x)
        if task == "multilabel":
            hits = (logits.sigmoid() > model.hparams.threshold).int() == y.int()
            correct, label_ok = correct + int(hits.all(dim=1).sum()), label_ok + int(hits.sum())
        else:
            correct += int((logits.argmax(dim=1) == y).sum())
        total += len(b)
    if task == "multilabel":
        return {"images": total, "exact_match": round(correct / total, 4),
                "label_accuracy": round(label_ok / total / len(CLASSES), 4)}
    return {"images": total, "top1": round(correct / total, 4)}


def describe(path: Path) -> dict:
    """Load with torch.load(weights_only=True) (must work) and print what is inside."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    sd = ckpt["state_dict"]
    print(f"  {path.name}: {path.stat().st_size / 1e6:.2f} MB, keys {sorted(ckpt)}")
    print(f"  hyper_parameters: {ckpt.get('hyper_parameters')}")
    if "datamodule_hyper_parameters" in ckpt:
        print(f"  datamodule_hyper_parameters: {ckpt['datamodule_hyper_parameters']}")
    print(f"  state_dict: {len(sd)} tensors, e.g. {list(sd)[:2] + list(sd)[-2:]}")
    return {"top_level_keys": sorted(ckpt), "state_dict_tensors": len(sd),
            "orig_mod_keys": sum("._orig_mod." in k for k in sd),
            "state_dict_key_examples": list(sd)[:2] + list(sd)[-2:]}


def build(name: str, spec: dict, data_root: Path, out: Path, work: Path) -> dict:
    print(f"\n=== {name}: {spec}", flush=True)
    data = data_root / spec["task"]
    if not data.exists():
        data = write_data(data_root, spec["task"])
    pl.seed_everything(SEED, workers=True)
    dm, model = make_datamodule(spec, data), make_model(spec)
    t0 = time.time()
    progress = LambdaCallback(on_train_epoch_end=lambda tr, _: print(
        f"  epoch {tr.current_epoch} step {tr.global_step} {time.time() - t0:.0f}s "
        + " ".join(f"{k}={float(v):.4f}" for k, v in sorted(tr.callback_metrics.items())
                   if k in ("train/loss", "val/loss", "val/map", "val/map_50")), flush=True))
    ckpt_cb = ModelCheckpoint(filename="{epoch}-{step}", save_top_k=1)  # no monitor: keeps the last epoch
    trainer = AutoTrainer(
        max_epochs=spec["epochs"], accelerator="cpu", devices=1, logger=CSVLogger(save_dir=str(work / name)),
        tuner_config=False, callbacks=[ckpt_cb, progress], default_root_dir=str(work / name), seed=SEED,
        num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=16)
    trainer.fit(model, datamodule=dm)
    train_s = time.time() - t0
    target = out / f"{name}.ckpt"
    if spec["save"] == "full":
        shutil.copyfile(ckpt_cb.best_model_path, target)
    else:
        trainer.save_checkpoint(str(target), weights_only=True)
    notes = []
    if target.stat().st_size > MAX_BYTES:  # never reached with these sizes; kept as the documented fallback
        ckpt = torch.load(target, map_location="cpu", weights_only=True)
        del ckpt["optimizer_states"]
        torch.save(ckpt, target)
        notes.append("optimizer_states removed to stay under 5 MB")
    if spec.get("logdir"):
        # the log folder's hparams.yaml; its checkpoints/<name> is the same file as the fixture, so it is not
        # stored twice: tests assemble <logdir>/checkpoints/<logdir_checkpoint> from the fixture
        logdir, src = out / spec["logdir"], Path(ckpt_cb.best_model_path).parents[1]
        shutil.rmtree(logdir, ignore_errors=True)
        logdir.mkdir(parents=True)
        shutil.copyfile(src / "hparams.yaml", logdir / "hparams.yaml")
        print(f"  hparams.yaml:\n{(logdir / 'hparams.yaml').read_text()}")
    t1 = time.time()
    result = evaluate(model, dm, "detector" if spec["task"] == "detector" else spec["task"])
    print(f"  trained {trainer.global_step} steps in {train_s:.0f}s; eval ({time.time() - t1:.0f}s): {result}",
          flush=True)
    info = describe(target)
    return {"file": target.name, "bytes": target.stat().st_size,
            "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
            **{k: v for k, v in spec.items() if k != "logdir"}, "logdir": spec.get("logdir"),
            "logdir_checkpoint": Path(ckpt_cb.best_model_path).name if spec.get("logdir") else None, "backbone": BACKBONE,
            "reg_loss_fn": "PositiveGIoULoss" if spec.get("arch") == "yolox" else None,
            "class_names": list(CLASSES) if spec["task"] == "multilabel" else list(dm.class_names),
            "batch_size": BATCH, "train_images": N_TRAIN, "steps": trainer.global_step,
            "train_seconds": round(train_s, 1), "eval": result, "notes": notes, **info}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests/fixtures/autotimm"))
    ap.add_argument("--only", choices=sorted(FIXTURES), action="append", help="rebuild only this fixture (repeatable)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message=".*(does not have many workers|deterministic=True has no effect).*")
    torch.set_flush_denormal(True)  # denormal floats made some CPU training epochs 10-20x slower
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / "fixtures.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"fixtures": {}}
    index["versions"] = {"autotimm": autotimm.__version__, "torch": torch.__version__, "timm": timm.__version__,
                         "pytorch_lightning": pl.__version__, "python": sys.version.split()[0]}
    index["command"] = "python scripts/make_autotimm_fixtures.py"
    t_all = time.time()
    with tempfile.TemporaryDirectory(prefix="autotimm_fixtures_") as tmp:
        for name in args.only or FIXTURES:
            index["fixtures"][name] = build(name, FIXTURES[name], Path(tmp) / "data", out, Path(tmp) / "runs")
            index["fixtures"] = {k: index["fixtures"][k] for k in FIXTURES if k in index["fixtures"]}
            index_path.write_text(json.dumps(index, indent=2) + "\n")
    print(f"\nall done in {time.time() - t_all:.0f}s -> {out}")


if __name__ == "__main__":
    main()
