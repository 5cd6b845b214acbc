"""autotimm-infer on inputs as users have them (issue 13, item 7): same-named files in different folders,
photo-sized images (readable boxes and labels), picture format, whole paths in the table, batched runs."""

import json

import numpy as np
import pytest
from PIL import Image

from autotimm_deploy.cli.export import main as export_main
from autotimm_deploy.cli.infer import main as infer_main
from autotimm_deploy.demo import demo_model_path
from autotimm_deploy.demo.shapes import SPLIT_SEEDS, render_detection_sample


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    out = tmp_path_factory.mktemp("infer") / "det"
    assert export_main([str(demo_model_path("detector")), "--out", str(out), "--engine", "none", "--no-check"]) == 0
    return out


def _sample(k, size=None):
    img = Image.fromarray(render_detection_sample(SPLIT_SEEDS["test"] + k, size=128)[0])
    return img.resize(size, Image.NEAREST) if size else img


def test_same_names_in_different_folders_get_their_own_pictures(export, tmp_path):
    for d, k in (("day1", 0), ("day2", 1)):
        (tmp_path / d).mkdir()
        _sample(k).save(tmp_path / d / "img.png")
    assert infer_main([str(export), str(tmp_path / "day1/img.png"), str(tmp_path / "day2/img.png"),
                       "--out", str(tmp_path / "o")]) == 0
    doc = json.loads((tmp_path / "o" / "detections.json").read_text())
    assert [r["picture"] for r in doc["images"]] == ["day1__img.png", "day2__img.png"]
    a, b = (np.asarray(Image.open(tmp_path / "o" / r["picture"])) for r in doc["images"])
    assert not np.array_equal(a, b)  # one did not overwrite the other


def test_pictures_of_photos_are_readable_and_keep_the_input_format(export, tmp_path):
    _sample(2, (6000, 4000)).save(tmp_path / "photo.jpg", quality=95)
    assert infer_main([str(export), str(tmp_path / "photo.jpg"), "--score-thr", "0.3", "--out", str(tmp_path / "o")]) == 0
    rec = json.loads((tmp_path / "o" / "detections.json").read_text())["images"][0]
    assert rec["picture"] == "photo.jpg" and len(rec["detections"]) >= 1
    pic = np.asarray(Image.open(tmp_path / "o" / "photo.jpg")).astype(int)
    x1, y1, x2, y2 = (round(v) for v in rec["detections"][0]["box"])
    col = pic[y1 + (y2 - y1) // 2, max(0, x1 - 20):x1 + 40]  # across the box's left edge, below the label
    colour = np.array([230, 25, 75, 60, 180, 75, 0, 130, 200, 245, 130, 48, 145, 30, 180, 70, 240, 240, 240, 50, 230,
                       210, 245, 60]).reshape(-1, 3)[rec["detections"][0]["label"] % 8]
    thick = int((np.abs(col - colour).max(axis=1) < 60).sum())
    assert thick >= 12  # 15 px at 6000 px (2 px before: invisible)
    label = pic[max(0, y1 - 60):y1 - 5, x1 + 5:x1 + 200]  # the filled label background above the box
    assert (np.abs(label - colour).max(axis=2) < 60).mean() > 0.3
    assert infer_main([str(export), str(tmp_path / "photo.jpg"), "--format", "png", "--no-draw",
                       "--out", str(tmp_path / "p")]) == 0
    assert not list((tmp_path / "p").glob("*.png"))  # --no-draw
    assert infer_main([str(export), str(tmp_path / "photo.jpg"), "--format", "png", "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "photo.png").exists()


def test_table_shows_whole_paths_and_images_run_in_batches(export, tmp_path, capsys, monkeypatch):
    from autotimm_deploy.engines.backends import OnnxRuntimeBackend

    deep = tmp_path / "a_rather_long_folder_name" / "with_another_level_inside"
    deep.mkdir(parents=True)
    paths = []
    for k in range(5):
        paths.append(deep / f"shapes_{k}.png")
        _sample(k).save(paths[-1])
    calls = []
    orig = OnnxRuntimeBackend.infer
    monkeypatch.setattr(OnnxRuntimeBackend, "infer", lambda self, feed: calls.append(len(feed["images"])) or orig(self, feed))
    assert infer_main([str(export), *map(str, paths), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert all(str(p) in out for p in paths)  # not cut from the left
    assert calls == [5]  # one run of 5 (the export takes batches up to 8), not 5 runs of 1
