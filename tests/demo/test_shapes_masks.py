"""Instance masks and class maps of the synthetic shapes dataset, and the splits written for AutoTimm's
semantic / instance segmentation data modules (read back with AutoTimm's own dataset classes and pycocotools)."""

import doctest
import json

import numpy as np
import pytest
from PIL import Image

from autotimm_deploy.demo import shapes
from autotimm_deploy.demo.shapes import (
    CLASSES,
    SEGMENTATION_CLASSES,
    SPLIT_SEEDS,
    render_detection_sample,
    render_instance_sample,
    render_segmentation_sample,
    write_instance_split,
    write_segmentation_split,
)

SEEDS = list(range(40)) + [SPLIT_SEEDS["val"] + k for k in range(5)] + [SPLIT_SEEDS["test"] + k for k in range(5)]


def test_doctests():
    assert doctest.testmod(shapes, raise_on_error=False).failed == 0


@pytest.mark.parametrize("size", [128, 64])
def test_image_and_boxes_identical_to_detection_renderer(size):
    for seed in SEEDS:
        img, boxes, labels = render_detection_sample(seed, size=size)
        img2, boxes2, labels2, masks = render_instance_sample(seed, size=size)
        img3, _ = render_segmentation_sample(seed, size=size)
        assert np.array_equal(img, img2) and np.array_equal(img, img3)
        assert np.array_equal(boxes, boxes2) and boxes2.dtype == np.float32
        assert np.array_equal(labels, labels2) and labels2.dtype == np.int64
        assert masks.shape == (len(boxes), size, size) and masks.dtype == bool


def test_masks_are_the_visible_pixels_of_each_shape():
    """Outside every mask the image is the background; inside mask i it is shape i's single colour; each mask
    lies in its box and the masks are disjoint (later shapes cover earlier ones)."""
    empty = 0
    for seed in SEEDS:
        img, boxes, labels, masks = render_instance_sample(seed)
        bg = shapes._background(np.random.default_rng(seed), 128)  # the renderer's first draw from the seed
        covered = masks.any(axis=0)
        assert np.array_equal(img[~covered], bg[~covered])
        assert masks.sum(axis=0).max() <= 1
        for box, mask in zip(boxes.astype(int), masks):
            if not mask.any():
                empty += 1
                continue
            px = img[mask]
            assert (px == px[0]).all()
            assert not (px == bg[mask]).all()
            ys, xs = np.nonzero(mask)
            assert box[0] <= xs.min() and xs.max() < box[2] and box[1] <= ys.min() and ys.max() < box[3]
            assert mask.sum() >= 0.2 * (box[2] - box[0]) * (box[3] - box[1])  # a shape, not a sliver
    assert empty <= 2


def test_semantic_mask_matches_instance_masks():
    for seed in SEEDS:
        _, _, labels, masks = render_instance_sample(seed)
        _, sem = render_segmentation_sample(seed)
        assert sem.dtype == np.uint8 and sem.shape == (128, 128)
        assert np.array_equal(sem > 0, masks.any(axis=0))
        for label, mask in zip(labels, masks):
            assert (sem[mask] == label + 1).all()
        assert sem.max() < len(SEGMENTATION_CLASSES) == len(CLASSES) + 1


def test_segmentation_split_reads_back_with_autotimm(tmp_path):
    from autotimm.data.segmentation_datamodule import SegmentationDataModule
    from autotimm.data.segmentation_dataset import SemanticSegmentationDataset

    root = write_segmentation_split(tmp_path, "val", 6, size=96)
    assert root == tmp_path
    assert sorted(p.name for p in (tmp_path / "val/images").iterdir()) == [f"{k:05d}.png" for k in range(6)]
    assert sorted(p.name for p in (tmp_path / "val/masks").iterdir()) == [f"{k:05d}.png" for k in range(6)]
    assert Image.open(tmp_path / "val/masks/00000.png").mode == "L"
    ds = SemanticSegmentationDataset(root, split="val", format="png")
    assert len(ds) == 6
    for k in range(6):
        img, sem = render_segmentation_sample(SPLIT_SEEDS["val"] + k, size=96)
        item = ds[k]
        assert np.array_equal((item["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), img)
        assert np.array_equal(item["mask"].numpy(), sem)
    dm = SegmentationDataModule(data_dir=str(root), format="png", image_size=96, batch_size=3, num_workers=0)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert tuple(batch["image"].shape) == (3, 3, 96, 96) and tuple(batch["mask"].shape) == (3, 96, 96)
    assert int(batch["mask"].max()) <= 4


def test_instance_split_reads_back_with_autotimm_and_pycocotools(tmp_path):
    from autotimm.data.instance_datamodule import InstanceSegmentationDataModule
    from autotimm.data.instance_dataset import COCOInstanceDataset
    from pycocotools.coco import COCO

    n = 8
    root = write_instance_split(tmp_path, "train", n)
    assert root == tmp_path
    ann_file = tmp_path / "annotations/instances_train.json"
    coco_json = json.loads(ann_file.read_text())
    assert [c["id"] for c in coco_json["categories"]] == list(range(len(CLASSES)))
    assert [c["name"] for c in coco_json["categories"]] == list(CLASSES)
    assert all(isinstance(a["segmentation"], dict) and isinstance(a["segmentation"]["counts"], str)
               and a["iscrowd"] == 0 for a in coco_json["annotations"])
    assert [a["id"] for a in coco_json["annotations"]] == list(range(1, len(coco_json["annotations"]) + 1))

    ds = COCOInstanceDataset(root, split="train")
    coco = COCO(str(ann_file))
    assert len(ds) == n and sorted(coco.getImgIds()) == list(range(n))
    for k in range(n):
        img, boxes, labels, masks = render_instance_sample(SPLIT_SEEDS["train"] + k)
        keep = masks.any(axis=(1, 2))
        item = ds[k]
        assert item["image_id"] == k
        assert np.array_equal((item["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), img)
        assert np.array_equal(item["boxes"].numpy(), boxes[keep])
        assert np.array_equal(item["labels"].numpy(), labels[keep])
        assert np.array_equal(item["masks"].numpy().astype(bool), masks[keep])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[k]))
        assert np.array_equal(np.stack([coco.annToMask(a) for a in anns]).astype(bool), masks[keep])
        assert [a["area"] for a in anns] == [int(m.sum()) for m in masks[keep]]
        assert [a["category_id"] for a in anns] == labels[keep].tolist()

    dm = InstanceSegmentationDataModule(data_dir=str(root), image_size=128, batch_size=4, num_workers=0)
    dm.setup("fit")
    assert dm.val_dataset is None  # no val split written
    batch = next(iter(dm.train_dataloader()))
    assert tuple(batch["image"].shape) == (4, 3, 128, 128)
    # the train loader's random augmentation may drop a box and keep its mask (AutoTimm 0.7.37: 2 of 40 seeds),
    # so mask and box counts are compared where AutoTimm transforms deterministically: a val split
    write_instance_split(tmp_path, "val", 4)
    dm = InstanceSegmentationDataModule(data_dir=str(root), image_size=128, batch_size=4, num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert tuple(batch["image"].shape) == (4, 3, 128, 128)
    assert [m.shape[0] for m in batch["masks"]] == [len(b) for b in batch["boxes"]]
    assert sum(len(b) for b in batch["boxes"]) > 0


def test_instance_masks_evaluate_with_cocoeval(tmp_path):
    """Ground truth as predictions: pycocotools' segm AP is 1, so the file works for mask AP."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    write_instance_split(tmp_path, "val", 5)
    gt = COCO(str(tmp_path / "annotations/instances_val.json"))
    results = []
    for k in range(5):
        _, _, labels, masks = render_instance_sample(SPLIT_SEEDS["val"] + k)
        for label, mask in zip(labels, masks):
            if mask.any():
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                results.append({"image_id": k, "category_id": int(label), "segmentation": rle, "score": 0.9})
    ev = COCOeval(gt, gt.loadRes(results), "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


def test_writers_reject_unknown_split(tmp_path):
    with pytest.raises(ValueError):
        write_segmentation_split(tmp_path, "dev", 1)
    with pytest.raises(ValueError):
        write_instance_split(tmp_path, "dev", 1)
