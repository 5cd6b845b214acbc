"""Annotated folders: COCO JSON, per-image JSON, CSV and class folders; malformed entries name file and entry."""

import json

import numpy as np
import pytest
from PIL import Image

from autotimm_deploy.parity.data import DatasetError, load_dataset

NAMES = ["rectangle", "ellipse", "triangle", "cross"]


def _img(path, w=40, h=30):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path)


def _coco(root, images=("a.png", "b.png"), anns=None, cats=None):
    for f in images:
        _img(root / f)
    coco = {"images": [{"id": 10 + i, "file_name": f} for i, f in enumerate(images)],
            "annotations": anns if anns is not None else [
                {"id": 1, "image_id": 10, "category_id": 7, "bbox": [1, 2, 10, 5]},
                {"id": 2, "image_id": 10, "category_id": 9, "bbox": [0, 0, 4, 4], "iscrowd": 1},
                {"id": 3, "image_id": 11, "category_id": 9, "bbox": [5, 5, 3, 3]}],
            "categories": cats if cats is not None else [{"id": 7, "name": "triangle"}, {"id": 9, "name": "rectangle"}]}
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


def test_coco_maps_categories_by_name_and_skips_crowd(tmp_path):
    ds = load_dataset(_coco(tmp_path), NAMES, "detection")
    assert ds.format == "coco" and [s.path.name for s in ds.samples] == ["a.png", "b.png"]
    assert ds.samples[0].boxes.tolist() == [[1, 2, 11, 7]] and ds.samples[0].labels.tolist() == [2]
    assert ds.samples[1].labels.tolist() == [0]


def test_coco_maps_by_id_when_names_are_not_class_names(tmp_path):
    ds = load_dataset(_coco(tmp_path, anns=[{"image_id": 10, "category_id": 3, "bbox": [0, 0, 2, 2]}],
                            cats=[{"id": 3, "name": "thing"}]), NAMES, "detection")
    assert ds.samples[0].labels.tolist() == [3] and len(ds.samples[1].boxes) == 0


def test_coco_lists_unannotated_images_on_disk_as_skipped(tmp_path):
    _coco(tmp_path)
    _img(tmp_path / "extra.png")
    assert load_dataset(tmp_path, NAMES, "detection").skipped == ["extra.png"]


def test_per_image_json_detection_and_classification(tmp_path):
    _img(tmp_path / "d" / "x.png")
    (tmp_path / "d" / "x.json").write_text(json.dumps({"boxes": [[1, 1, 5, 6], [2, 2, 9, 9]], "labels": ["cross", 1]}))
    ds = load_dataset(tmp_path / "d", NAMES, "detection")
    assert ds.format == "json" and ds.samples[0].labels.tolist() == [3, 1]
    _img(tmp_path / "c" / "y.png")
    (tmp_path / "c" / "y.json").write_text(json.dumps({"label": "ellipse"}))
    assert load_dataset(tmp_path / "c", NAMES, "classification").samples[0].label == 1


def test_csv_detection_with_an_empty_image_and_classification(tmp_path):
    for f in ("a.png", "b.png"):
        _img(tmp_path / "d" / f)
    (tmp_path / "d" / "annotations.csv").write_text("file,x1,y1,x2,y2,label\na.png,1,2,3,4,triangle\n"
                                                    "a.png,5,5,9,9,0\nb.png,,,,,\n")
    ds = load_dataset(tmp_path / "d", NAMES, "detection")
    assert ds.format == "csv" and ds.samples[0].labels.tolist() == [2, 0] and ds.samples[1].boxes.shape == (0, 4)
    _img(tmp_path / "c" / "a.png")
    (tmp_path / "c" / "annotations.csv").write_text("file,label\na.png,cross\n")
    assert load_dataset(tmp_path / "c", NAMES, "classification").samples[0].label == 3


def test_class_folders_and_unannotated_folders(tmp_path):
    _img(tmp_path / "c" / "ellipse" / "1.png")
    _img(tmp_path / "c" / "cross" / "2.png")
    ds = load_dataset(tmp_path / "c", NAMES, "classification")
    assert ds.format == "folders" and sorted(s.label for s in ds.samples) == [1, 3]
    _img(tmp_path / "u" / "1.png")
    ds = load_dataset(tmp_path / "u", NAMES, "detection", limit=1)
    assert ds.format == "none" and not ds.annotated and len(ds.samples) == 1


@pytest.mark.parametrize("edit, message", [
    (lambda r: (r / "annotations.json").write_text('{"images": [}'), "annotations.json: not valid JSON (line 1"),
    (lambda r: _coco(r, anns=[{"id": 4, "image_id": 99, "category_id": 7, "bbox": [0, 0, 1, 1]}]),
     "annotations[0] (id 4): image_id 99 is not in 'images'"),
    (lambda r: _coco(r, anns=[{"id": 5, "image_id": 10, "category_id": 8, "bbox": [0, 0, 1, 1]}]),
     "annotations[0] (id 5): category_id 8 is not in 'categories'"),
    (lambda r: _coco(r, anns=[{"id": 6, "image_id": 10, "category_id": 7, "bbox": [0, 0, 1]}]),
     "annotations[0] (id 6): bbox: a box must be 4 numbers [x, y, w, h]"),
    (lambda r: _coco(r, anns=[{"id": 6, "image_id": 10, "category_id": 7, "bbox": [0, "a", 1, 1]}]),
     "annotations[0] (id 6): bbox: box values must be numbers"),
    (lambda r: _coco(r, images=("a.png",)) and (r / "a.png").unlink(), "images[0]: image file 'a.png' not found"),
    (lambda r: _coco(r, cats=[{"id": 7, "name": "triangle"}, {"id": 9, "name": "dog"}]),
     "categories id 7 ('triangle'): not a class name, so its id: label 7 is out of range"),
])
def test_malformed_coco_names_file_and_entry(tmp_path, edit, message):
    _coco(tmp_path)
    edit(tmp_path)
    with pytest.raises(DatasetError, match=None) as exc:
        load_dataset(tmp_path, NAMES, "detection")
    assert message in str(exc.value) and str(tmp_path) in str(exc.value)


@pytest.mark.parametrize("text, message", [
    ("file,x1,y1\na.png,1,2\n", "line 1: header must be"),
    ("file,x1,y1,x2,y2,label\na.png,1,2,3\n", "line 2: expected 6 fields"),
    ("file,x1,y1,x2,y2,label\na.png,1,2,3,4,dog\n", "line 2: label: unknown class 'dog'"),
    ("file,x1,y1,x2,y2,label\na.png,5,2,3,4,0\n", "line 2: box: empty or inverted box"),
    ("file,x1,y1,x2,y2,label\nzz.png,1,2,3,4,0\n", "line 2: image file 'zz.png' not found"),
    ("file,label\na.png,0\n", "classification annotations for a detection model"),
])
def test_malformed_csv_names_line(tmp_path, text, message):
    _img(tmp_path / "a.png")
    (tmp_path / "annotations.csv").write_text(text)
    with pytest.raises(DatasetError) as exc:
        load_dataset(tmp_path, NAMES, "detection")
    assert f"{tmp_path / 'annotations.csv'}: " in str(exc.value) and message in str(exc.value)


def test_per_image_json_missing_for_one_image_and_bad_label(tmp_path):
    _img(tmp_path / "a.png")
    _img(tmp_path / "b.png")
    (tmp_path / "a.json").write_text(json.dumps({"label": 0}))
    with pytest.raises(DatasetError, match="b.json: missing"):
        load_dataset(tmp_path, NAMES, "classification")
    (tmp_path / "b.json").write_text(json.dumps({"label": 1}))
    (tmp_path / "a.json").write_text(json.dumps({"label": 9}))
    with pytest.raises(DatasetError, match=r"a.json: label: label 9 is out of range for 4 classes"):
        load_dataset(tmp_path, NAMES, "classification")


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(DatasetError, match="not a directory"):
        load_dataset(tmp_path / "nope", NAMES, "detection")
    with pytest.raises(DatasetError, match="no images"):
        load_dataset(tmp_path, NAMES, "detection")
