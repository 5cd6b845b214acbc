"""Real AutoTimm checkpoints, built at test time (CPU, no downloads, a few seconds each).

``build_checkpoint(kind, out_dir, **overrides) -> Path`` constructs AutoTimm's own LightningModule for
``kind``, gives it deterministic non-degenerate weights, lets AutoTimm's ``AutoTrainer`` run one optimiser
step with a learning rate of 0 on AutoTimm's own data module (a tiny shapes split written by
``autotimm_deploy.demo.shapes``), and saves the checkpoint with ``trainer.save_checkpoint`` -- so the file
holds ``state_dict``, ``hyper_parameters`` and ``datamodule_hyper_parameters`` exactly as AutoTimm and
Lightning write them for users.

Kinds:

* ``"semantic_deeplab"`` / ``"semantic_fcn"``: ``SemanticSegmentor`` (head_type ``deeplabv3plus`` / ``fcn``),
  5 classes (0 = background, 1..4 = the shapes ``CLASSES``), ``SegmentationDataModule`` (png format);
* ``"instance"``: ``InstanceSegmentor`` (FCOS + mask head), 4 classes, ``InstanceSegmentationDataModule``
  (COCO mode, RLE masks);
* ``"yolox_detector"``: ``YOLOXDetector`` (``model_name="yolox-nano"``, CSPDarknet + PAFPN), 4 classes,
  ``DetectionDataModule`` (COCO json).

The timm backbone is ``test_efficientnet`` (``pretrained=False``); detectors use ``fpn_channels=64``,
``head_num_convs=1``; images are 128x128; ``lr=0.0``, ``seed=None``, ``deterministic=False``, ``compile_model=False``
unless overridden.  Weights (module init under ``torch.manual_seed(seed)``, the caller's RNG state restored):

* every BatchNorm/GroupNorm/LayerNorm gets random affine parameters (gamma ~ U(0.75, 1.25), beta ~ N(0, 0.1));
* every BatchNorm's running statistics are measured on ``N_CALIB`` rendered ``test`` images (one forward with
  only the BatchNorms in training mode) and then randomly perturbed.  Purely random statistics, as
  ``autotimm_deploy.parity.random_init.randomize_norms`` sets, make the activations of YOLOX's untrained
  CSPDarknet vanish in eval mode, so every image gave the same detections;
* detectors: the head's prediction convs get He-normal weights, the box-distance conv a bias of 1 and the
  per-level scales 2 x stride (boxes of tens of pixels, not the ~0 px of AutoTimm's std-0.01 init), and the
  classification bias is set so that ``pos_fraction`` (15 %) of the calibration images' locations score above
  the model's ``score_thresh`` (score = max_c sigmoid(cls) [x sigmoid(centerness) for FCOS]): about 20-60
  detections per image after NMS;
* segmentation: the classifier bias is centred (each class's mean logit on the calibration images
  subtracted), so several classes appear in every label map.

The step runs in training mode with BatchNorm momentum 0 (restored after), and the builder checks that every
tensor of the state dict is bit-identical after it (``num_batches_tracked`` does count the step), that
``trainer.global_step == 1``, and that ``predict()`` gives, on every calibration image, detections (5-100 per
image on average; instance: non-empty masks) or a label map with at least two classes; it raises otherwise.

``overrides`` go to the module's constructor (e.g. ``compile_model=True``, ``score_thresh=0.3``), except the
builder's own ``seed`` (weights, default 0), ``image_size`` (128), ``n_train`` / ``n_val`` (16 / 16),
``batch_size`` (8), ``pos_fraction`` (0.15), ``filename`` (default ``<kind>.ckpt`` / ``<kind>_compiled.ckpt``)
and ``dynamo`` (False).  ``compile_model=True`` stores the ``._orig_mod.`` state-dict keys users get; the
builder then runs with TorchDynamo disabled (``torch._dynamo.config.disable``), which changes no tensor or
hyperparameter of the checkpoint: really compiling (``dynamo=True``) takes ~85 s even for ``semantic_fcn`` on
2 CPU cores.  The data is written to ``out_dir/data/<kind>`` and kept (callers may evaluate on its ``val``
split).  Nothing is cached across calls.  The builder runs with one torch thread (restored after): on the shared
2-core machine two threads were up to 10x slower.  Build time: 0.4-5 s per checkpoint after the one-time ~7 s
import of AutoTimm (``last_build_seconds[kind]`` holds the latest).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from autotimm_deploy.demo.shapes import (
    CLASSES,
    SEGMENTATION_CLASSES,
    SPLIT_SEEDS,
    render_detection_sample,
    write_detection_split,
    write_instance_split,
    write_segmentation_split,
)

KINDS = ("semantic_deeplab", "semantic_fcn", "instance", "yolox_detector")
BACKBONE = "test_efficientnet"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # AutoTimm's default eval normalisation
N_CALIB = 8  # rendered test images: BatchNorm statistics, classification bias, the predict() check
_BUILDER_KEYS = ("seed", "image_size", "n_train", "n_val", "batch_size", "pos_fraction", "filename", "dynamo")

last_build_seconds: Dict[str, float] = {}  # kind -> wall seconds of the last build (for reports)


def calibration_images(n: int = N_CALIB, size: int = 128) -> torch.Tensor:
    """``n`` rendered ``test`` images, normalised as AutoTimm's eval transforms do: (n, 3, size, size) float32."""
    imgs = np.stack([render_detection_sample(SPLIT_SEEDS["test"] + k, size=size)[0] for k in range(n)])
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def _unwrap(m: torch.nn.Module) -> torch.nn.Module:
    return getattr(m, "_orig_mod", m)


def randomize_norm_affine(model: torch.nn.Module, seed: int) -> None:
    """Random affine parameters (gamma ~ U(0.75, 1.25), beta ~ N(0, 0.1)) for every BatchNorm/GroupNorm/LayerNorm
    (timm zero-initialises some gammas, AutoTimm's heads set gamma 1, beta 0: parity could not see those)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm)):
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.75)
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


@torch.no_grad()
def calibrate_batchnorm(model: torch.nn.Module, x: torch.Tensor, seed: int) -> None:
    """BatchNorm running statistics from one training-mode forward of ``x``, then randomly perturbed.

    Random statistics alone (as ``autotimm_deploy.parity.random_init.randomize_norms`` sets) make the
    activations of a deep untrained net (YOLOX's CSPDarknet with PyTorch's default conv init) vanish in eval
    mode: every image then gives the same outputs.  Statistics measured on real images keep each layer's
    activations at unit scale, as training would; the perturbation (mean +- 0.1 std, var x U(0.8, 1.25))
    keeps eval-mode normalisation from being an exact batch normalisation."""
    g = torch.Generator().manual_seed(seed + 2)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.training) for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, the running stats are that batch's
    model.eval()
    for m in bns:
        m.train()  # only the BatchNorms: dropout etc. stay off
    model(x)
    model.train(was_training)
    for m, (momentum, training) in zip(bns, saved):
        m.momentum = momentum
        m.train(training)
        m.num_batches_tracked.zero_()
        n = m.num_features
        m.running_mean.add_(torch.randn(n, generator=g) * 0.1 * m.running_var.sqrt())
        m.running_var.mul_(torch.rand(n, generator=g) * 0.45 + 0.8)


def _he(conv: torch.nn.Conv2d, g: torch.Generator, gain: float = 1.0) -> None:
    fan_in = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
    conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * gain * (2.0 / fan_in) ** 0.5)


def _spread_detection_head(head: torch.nn.Module, strides, seed: int) -> None:
    """He-normal prediction convs, box distances ~ 2 * stride * (1 +- 0.5) px, centerness around 0.5."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        _he(head.cls_pred, g)
        head.cls_pred.bias.zero_()
        _he(head.reg_pred, g, gain=0.35)
        head.reg_pred.bias.fill_(1.0)
        if hasattr(head, "centerness_pred"):
            _he(head.centerness_pred, g)
            head.centerness_pred.bias.zero_()
        for i, s in enumerate(head.scales):
            s.scale.fill_(2.0 * strides[min(i, len(strides) - 1)])


@torch.no_grad()
def _calibrate_cls_bias(model, kind: str, x: torch.Tensor, pos_fraction: float) -> float:
    """Set the classification bias so that ``pos_fraction`` of all locations of ``x`` score above the
    model's ``score_thresh`` (score = max_c sigmoid(cls_c) [* sigmoid(centerness) for FCOS])."""
    head = _unwrap(model.detection_head if kind == "instance" else model.head)
    head.cls_pred.bias.zero_()
    model.eval()
    outs = model(x)
    cls, ctr = outs[0], (outs[2] if kind == "instance" else None)
    t = float(model.score_thresh)
    need = []  # per location: the bias above which it passes the threshold
    for i, c in enumerate(cls):
        top = c.max(dim=1).values.flatten()
        if ctr is None:
            need.append(math.log(t / (1 - t)) - top)
        else:
            q = t / torch.sigmoid(ctr[i]).flatten()
            thr = torch.where(q < 1, torch.log(q / (1 - q).clamp(min=1e-12)), torch.full_like(q, float("inf")))
            need.append(thr - top)
    need = torch.cat(need)
    bias = float(torch.quantile(need[torch.isfinite(need)], pos_fraction))
    head.cls_pred.bias.fill_(bias)
    return bias


@torch.no_grad()
def _center_classifier_bias(model, x: torch.Tensor) -> None:
    """Segmentation: subtract each class's mean logit over ``x`` from the classifier bias, so every class
    wins somewhere (with the random init one class takes most pixels)."""
    head = _unwrap(model.head)
    model.eval()
    logits = model(x)
    classifier = head.classifier if hasattr(head, "classifier") else head.conv[-1]  # DeepLabV3+ / FCN
    classifier.bias.sub_(logits.mean(dim=(0, 2, 3)))


def _model_and_data(kind: str, data: Path, image_size: int, n_train: int, n_val: int, batch_size: int,
                    overrides: Dict[str, Any]):
    import autotimm
    from autotimm import FeatureBackboneConfig

    common = dict(lr=0.0, compile_model=False, seed=None, deterministic=False)
    dm_common = dict(image_size=image_size, batch_size=batch_size, num_workers=0)
    if kind.startswith("semantic_"):
        for split, n in (("train", n_train), ("val", n_val)):
            write_segmentation_split(data, split, n, size=image_size)
        head_type = "deeplabv3plus" if kind == "semantic_deeplab" else "fcn"
        kwargs = dict(common, backbone=FeatureBackboneConfig(model_name=BACKBONE, pretrained=False),
                      num_classes=len(SEGMENTATION_CLASSES), head_type=head_type)
        kwargs.update(overrides)
        dm = autotimm.SegmentationDataModule(data_dir=str(data), format="png", **dm_common)
        return autotimm.SemanticSegmentor(**kwargs), dm
    if kind == "instance":
        for split, n in (("train", n_train), ("val", n_val)):
            write_instance_split(data, split, n, size=image_size)
        kwargs = dict(common, backbone=FeatureBackboneConfig(model_name=BACKBONE, pretrained=False),
                      num_classes=len(CLASSES), fpn_channels=64, head_num_convs=1)
        kwargs.update(overrides)
        dm = autotimm.InstanceSegmentationDataModule(data_dir=str(data), **dm_common)
        return autotimm.InstanceSegmentor(**kwargs), dm
    if kind == "yolox_detector":
        for split, n in (("train", n_train), ("val", n_val)):
            write_detection_split(data / split, split, n, size=image_size)
        kwargs = dict(common, model_name="yolox-nano", num_classes=len(CLASSES))
        kwargs.update(overrides)
        dm = autotimm.DetectionDataModule(
            data_dir=str(data), train_images_dir=str(data / "train"), val_images_dir=str(data / "val"),
            train_ann_file=str(data / "train/annotations.json"), val_ann_file=str(data / "val/annotations.json"),
            pin_memory=False, **dm_common)
        return autotimm.YOLOXDetector(**kwargs), dm
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


@torch.no_grad()
def _check_predictions(model, kind: str, x: torch.Tensor) -> None:
    if kind.startswith("semantic_"):
        labels = model.predict(x)
        if any(int(torch.unique(m).numel()) < 2 for m in labels):
            raise RuntimeError(f"{kind}: constant label map on a calibration image")
        return
    preds = model.predict(x)
    counts = [len(p["scores"]) for p in preds]
    if min(counts) < 1 or not 5 <= sum(counts) / len(counts) <= 100:
        raise RuntimeError(f"{kind}: predict() gave {counts} detections on the calibration images")
    if kind == "instance" and any(int(p["masks"].flatten(1).any(1).sum()) == 0 for p in preds):
        raise RuntimeError(f"{kind}: every predicted mask is empty on some calibration image")


def build_checkpoint(kind: str, out_dir: Path, **overrides: Any) -> Path:
    """Build an AutoTimm checkpoint of ``kind`` (one of ``KINDS``) in ``out_dir``; returns the ``.ckpt`` path."""
    import autotimm

    t0 = time.perf_counter()
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    own = {k: overrides.pop(k) for k in _BUILDER_KEYS if k in overrides}
    seed = int(own.get("seed", 0))
    image_size = int(own.get("image_size", 128))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = out_dir / "data" / kind

    with torch.random.fork_rng(devices=[]):  # module init draws from the global RNG: seed it, restore after
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*deterministic=True has no effect.*")
            model, dm = _model_and_data(kind, data, image_size, int(own.get("n_train", 16)), int(own.get("n_val", 16)),
                                        int(own.get("batch_size", 8)), overrides)

    nodynamo = contextlib.nullcontext()
    if not own.get("dynamo", False) and any(hasattr(m, "_orig_mod") for m in model.children()):  # compile_model=True
        import torch._dynamo.config as dynamo_config

        nodynamo = dynamo_config.patch(disable=True)
    threads = torch.get_num_threads()
    # One intra-op thread: on a shared 2-core machine two threads run these tiny models up to 10x slower, and
    # the calibrated weights do not depend on the caller's thread count.
    torch.set_num_threads(1)
    try:
        with nodynamo:
            _set_weights_fit_and_check(model, dm, kind, seed, image_size, float(own.get("pos_fraction", 0.15)),
                                       out_dir)
            path = out_dir / own.get("filename", f"{kind}{'_compiled' if overrides.get('compile_model') else ''}.ckpt")
            model.trainer.save_checkpoint(str(path))
    finally:
        torch.set_num_threads(threads)
    last_build_seconds[kind] = time.perf_counter() - t0
    return path


def _set_weights_fit_and_check(model, dm, kind: str, seed: int, image_size: int, pos_fraction: float,
                               out_dir: Path) -> None:
    import autotimm

    x = calibration_images(size=image_size)
    randomize_norm_affine(model, seed)
    if kind.startswith("semantic_"):
        calibrate_batchnorm(model, x, seed)
        _center_classifier_bias(model, x)
    else:
        head = _unwrap(model.detection_head if kind == "instance" else model.head)
        _spread_detection_head(head, model.strides, seed)
        calibrate_batchnorm(model, x, seed)
        _calibrate_cls_bias(model, kind, x, pos_fraction)

    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0  # the zero-lr step must not move the running statistics either
    model.train()  # as a user's module starts training (the calibration left it in eval mode)
    trainer = autotimm.AutoTrainer(
        max_steps=1, max_epochs=1, accelerator="cpu", devices=1, logger=False, tuner_config=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=str(out_dir))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(does not have many workers|pin_memory|GPU available|"
                                                  "deterministic=True has no effect|no logger|max_steps).*")
        trainer.fit(model, datamodule=dm)
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    if trainer.global_step != 1:
        raise RuntimeError(f"{kind}: expected one optimiser step, got {trainer.global_step}")
    after = model.state_dict()
    changed = [k for k, v in before.items() if not k.endswith("num_batches_tracked") and not torch.equal(v, after[k])]
    if changed:
        raise RuntimeError(f"{kind}: the zero-lr step changed {len(changed)} tensors, e.g. {changed[:3]}")

    model.eval()
    _check_predictions(model, kind, x)


#: Written by AutoTimm into ``hyper_parameters``, not constructor arguments.
META_KEYS = ("backbone_name", "username", "timestamp", "batch_size")


def rebuild(path_or_ckpt):
    """AutoTimm's own LightningModule for a built checkpoint (a path or the loaded dict): constructed from its
    ``hyper_parameters`` with ``pretrained=False`` and compile off, the state dict loaded strictly (``._orig_mod``
    dropped, as torch.compile's wrapper adds it), in eval mode."""
    import autotimm

    ckpt = path_or_ckpt if isinstance(path_or_ckpt, dict) else torch.load(path_or_ckpt, map_location="cpu",
                                                                          weights_only=True)
    hp = {k: v for k, v in ckpt["hyper_parameters"].items() if k not in META_KEYS}
    hp.update(compile_model=False, compile_kwargs=None, seed=None, deterministic=False)
    if "model_name" in hp:
        cls = autotimm.YOLOXDetector
    else:
        hp["backbone"] = autotimm.FeatureBackboneConfig(model_name=hp["backbone"], pretrained=False)
        cls = autotimm.InstanceSegmentor if "mask_size" in hp else autotimm.SemanticSegmentor
    model = cls(**hp)
    model.load_state_dict({k.replace("._orig_mod", ""): v for k, v in ckpt["state_dict"].items()}, strict=True)
    return model.eval()
