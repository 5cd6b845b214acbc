"""The model-file reader registry (models/readers.py) and the AutoTimm class table (models/autotimm_ckpt.py,
``AUTOTIMM_CLASS`` of each family module): YOLOXDetector, SemanticSegmentor (both heads) and InstanceSegmentor
checkpoints written by real AutoTimm (tests/autotimm/builders.py) read by ``load_model_file`` into the right module
and family, with the thresholds the checkpoint records, and the same outputs as AutoTimm's own module."""

import dataclasses
from pathlib import Path

import pytest
import torch

from autotimm_deploy.errors import ModelFileError
from autotimm_deploy.models import io
from autotimm_deploy.models.classifier import ImageClassifier
from autotimm_deploy.models.families import AUTOTIMM_CLASSES, autotimm_classes
from autotimm_deploy.models.families.instance import AutotimmInstanceSegmentor
from autotimm_deploy.models.families.segmentation import AutotimmSegmentor
from autotimm_deploy.models.families.yolox_detector import AutotimmYoloxDetector
from autotimm_deploy.models.hparams import AutotimmClass, HParams
from autotimm_deploy.models.loaded import LoadedModel
from autotimm_deploy.models.readers import (
    Reader,
    find_reader,
    load_model_file,
    readers,
    register_reader,
    unregister_reader,
)

pytestmark = pytest.mark.slow

# -- the registry -------------------------------------------------------------------------------------------------

@pytest.fixture
def registry():
    """Readers a test registers are removed after it."""
    before = [r.name for r in readers()]
    yield
    for r in readers():
        if r.name not in before:
            unregister_reader(r.name)
    assert [r.name for r in readers()] == before


def test_default_readers_in_order():
    names = [r.name for r in readers()]
    assert names == ["autotimm-lightning", "autotimm-deploy"]
    assert all(r.description and "\n" not in r.description for r in readers())
    assert find_reader({"format": io.FORMAT_NAME}).name == "autotimm-deploy"
    assert find_reader({"state_dict": {}, "pytorch-lightning_version": "2.6.6"}).name == "autotimm-lightning"
    assert find_reader({"weights": torch.zeros(1)}) is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        readers()[0].name = "x"


def test_duplicate_reader_name_is_refused(registry):
    own = readers()[1]
    with pytest.raises(ValueError, match="reader named 'autotimm-deploy' is already registered"):
        register_reader(Reader("autotimm-deploy", "another", lambda obj: True, own.read), first=True)
    assert readers()[1] is own and len(readers()) == 2  # not replaced, nothing added
    with pytest.raises(TypeError, match="expects a Reader"):
        register_reader(object())
    with pytest.raises(KeyError, match="no model-file reader named 'nope'"):
        unregister_reader("nope")


def test_custom_reader_first_is_used(tmp_path, registry):
    torch.manual_seed(0)
    path = io.save_model(ImageClassifier("test_resnet", num_classes=2), tmp_path / "m.pt")
    seen = []

    def read(p, obj, digest, hparams_yaml):
        seen.append((p, digest, hparams_yaml))
        loaded = io.read_own_format(p, obj, digest)
        loaded.extra["read_by"] = "custom"
        return loaded

    custom = register_reader(Reader("custom", "own format, read first", io.is_own_format, read), first=True)
    assert readers()[0] is custom
    loaded = load_model_file(path)
    assert loaded.extra == {"read_by": "custom"} and seen == [(path, loaded.sha256, None)]
    unregister_reader("custom")
    assert load_model_file(path).extra == {}  # the built-in reader again


def test_custom_reader_last_reads_a_new_kind_of_file(tmp_path, registry):
    """A bare state dict is refused by the built-in readers (today's message); a reader registered after them can
    read it."""
    torch.manual_seed(0)
    model = ImageClassifier("test_resnet", num_classes=2)
    path = tmp_path / "bare.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ModelFileError, match="not an autotimm-deploy model file nor an AutoTimm checkpoint"):
        load_model_file(path)

    def read(p, obj, digest, hparams_yaml):
        m = ImageClassifier("test_resnet", num_classes=2)
        m.load_state_dict(obj)
        return LoadedModel(m.eval(), "classification", {}, {"class_names": ["a", "b"]}, digest, p)

    register_reader(Reader("bare-test-resnet", "a bare test_resnet state dict",
                           lambda obj: isinstance(obj, dict) and "head.fc.weight" in obj, read))
    loaded = load_model_file(path)
    assert torch.equal(loaded.model.head.fc.weight, model.head.fc.weight)


# -- the AutoTimm class table -------------------------------------------------------------------------------------

def test_autotimm_classes_in_matching_order():
    assert AUTOTIMM_CLASSES == ("instance", "segmentation", "yolox_detector", "autotimm")
    table = autotimm_classes()
    assert all(isinstance(c, AutotimmClass) for c in table)
    assert [(c.name, c.task) for c in table] == [
        ("InstanceSegmentor", "instance_segmentation"), ("SemanticSegmentor", "segmentation"),
        ("YOLOXDetector", "detection"), ("ObjectDetector", "detection"), ("ImageClassifier", "classification")]

    def first(hp, keys):
        h = HParams(Path("x.ckpt"), hp)
        return next(c.name for c in table if c.matches(h, dict.fromkeys(keys)))

    assert first({"detection_arch": "fcos", "roi_pool_size": 14}, ["fpn.a"]) == "InstanceSegmentor"
    assert first({"detection_arch": "fcos"}, ["fpn.a", "mask_head.b"]) == "InstanceSegmentor"
    assert first({"detection_arch": "fcos"}, ["fpn.a"]) == "ObjectDetector"
    assert first({"head_type": "fcn"}, ["head.conv.0.weight"]) == "SemanticSegmentor"
    assert first({"model_name": "yolox-s"}, ["neck.a"]) == "YOLOXDetector"
    assert first({"multi_label": False}, []) == "ImageClassifier"


def test_unknown_class_lists_all_five(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(1)}, "hyper_parameters": {"hidden": 3},
                "pytorch-lightning_version": "2.6.6"}, path)
    with pytest.raises(ModelFileError) as err:
        load_model_file(path)
    msg = str(err.value)
    assert "a Lightning checkpoint, but not one AutoTimm's" in msg and "hyper_parameters: ['hidden']" in msg
    for name in ("InstanceSegmentor", "SemanticSegmentor", "YOLOXDetector", "ObjectDetector", "ImageClassifier"):
        assert msg.count(name) == 2, name


def test_hparams_accessors():
    h = HParams(Path("m.ckpt"), {"a": 2, "b": True, "c": "x", "d": None, "s": (8, 16), "f": 1, "neg": -1})
    assert (h.int("a"), h.float("f"), h.str("c"), h.bool("b"), h.int("d", 7), h.strides("s")) == \
        (2, 1.0, "x", True, 7, [8, 16])
    assert h.int("neg", minimum=None) == -1 and h.strides("missing") == [8, 16, 32, 64, 128]
    for call, match in [(lambda: h.int("b"), "b=True must be a positive integer"),
                        (lambda: h.float("c"), "c='x' must be a number"),
                        (lambda: h.str("a"), "a=2 must be a string"),
                        (lambda: h.bool("c"), "c='x' must be true or false"),
                        (lambda: h.strides("d"), "d=None is not a list of positive integers"),
                        (lambda: h.str("model_name", required=True), "hyper_parameters has no 'model_name'"),
                        (lambda: h.backbone("c"), "backbone 'x' is not a model timm")]:
        with pytest.raises(ModelFileError, match=f"^m.ckpt: .*{match}"):
            call()


# -- checkpoints written by real AutoTimm -------------------------------------------------------------------------

#: kind -> (builder overrides, expected module, family name, post-processing (score, iou, max), mask threshold)
CASES = {
    "yolox_detector": (dict(score_thresh=0.02, nms_thresh=0.6, max_detections_per_image=60), AutotimmYoloxDetector,
                       "autotimm-yolox-detector", (0.02, 0.6, 60), None),
    "semantic_deeplab": (dict(), AutotimmSegmentor, "autotimm-segmentor", None, None),
    "semantic_fcn": (dict(compile_model=True), AutotimmSegmentor, "autotimm-segmentor", None, None),
    "instance": (dict(score_thresh=0.1, nms_thresh=0.45, max_detections_per_image=80, mask_threshold=0.4,
                      roi_pool_size=7, mask_size=14), AutotimmInstanceSegmentor, "autotimm-instance",
                 (0.1, 0.45, 80), 0.4),
}
TASK_CLASS = {"yolox_detector": "YOLOXDetector", "semantic_deeplab": "SemanticSegmentor",
              "semantic_fcn": "SemanticSegmentor", "instance": "InstanceSegmentor"}


@pytest.fixture(scope="module")
def built(tmp_path_factory, autotimm_builders):
    builders = autotimm_builders
    made = {}

    def get(kind: str) -> Path:
        if kind not in made:
            made[kind] = builders.build_checkpoint(kind, tmp_path_factory.mktemp(kind), **CASES[kind][0])
        return made[kind]

    return get


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for group in out for t in _flat(group)]


@pytest.mark.parametrize("kind", list(CASES))
def test_autotimm_checkpoint_reads_into_its_family(kind, built, tmp_path, autotimm_builders):
    overrides, module, family, post, mask_threshold = CASES[kind]
    path = built(kind)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    loaded = load_model_file(path)
    assert type(loaded.model) is module and not loaded.model.training
    assert loaded.family.name == family and loaded.task == loaded.family.task
    meta = loaded.metadata
    assert meta["autotimm"]["task_class"] == TASK_CLASS[kind] and meta["input_size"] == [128, 128]
    assert meta["autotimm"]["compiled"] is bool(overrides.get("compile_model"))
    assert meta["class_names"] == [f"class_{i}" for i in range(ckpt["hyper_parameters"]["num_classes"])]
    if post is not None:
        rule = loaded.family.postprocess
        assert (rule.score_thresh, rule.iou_thresh, rule.max_detections, rule.candidates) == (*post, "argmax")
    if kind.startswith("semantic_"):
        assert loaded.config["head_type"] == ckpt["hyper_parameters"]["head_type"]
        assert meta["autotimm"]["ignore_index"] == 255
    if kind == "instance":
        masks = loaded.family.masks
        assert (masks.threshold, masks.roi_size, masks.mask_size) == (mask_threshold, 7, 14)
        assert loaded.model.mask_stage().spec == masks

    ref = autotimm_builders.rebuild(ckpt)
    x = autotimm_builders.calibration_images(10)[8:]  # two images the builder never saw
    with torch.no_grad():
        ours, theirs = _flat(loaded.model(x)), _flat(ref(x))
        if kind == "instance":  # ours adds P3 (the mask head's input); the mask head itself
            p3 = ref.fpn(ref.backbone(x))[0]
            rois = torch.randn(3, 64, 7, 7)
            theirs += [p3, ref.mask_head(rois)]
            ours += [loaded.model.mask_head(rois)]
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-5), float((a - b).abs().max())


@pytest.mark.parametrize("kind, prefix", [("semantic_deeplab", "criterion."), ("instance", "mask_loss_fn."),
                                          ("yolox_detector", "val_metrics.")])
def test_loss_and_metric_entries_are_dropped(kind, prefix, built, tmp_path):
    ckpt = torch.load(built(kind), map_location="cpu", weights_only=True)
    ckpt["state_dict"][prefix + "weight"] = torch.ones(3)
    torch.save(ckpt, tmp_path / "extra.ckpt")
    assert type(load_model_file(tmp_path / "extra.ckpt").model) is CASES[kind][1]
    ckpt["state_dict"]["head.extra.weight"] = torch.ones(3)  # a key of no known kind is still an error
    torch.save(ckpt, tmp_path / "bad.ckpt")
    with pytest.raises(ModelFileError, match=r"1 unexpected \(e.g. \['head.extra.weight'\]\)"):
        load_model_file(tmp_path / "bad.ckpt")


def test_bad_autotimm_hyper_parameters(built, tmp_path):
    ckpt = torch.load(built("semantic_fcn"), map_location="cpu", weights_only=True)
    for change, match in [({"head_type": "pspnet"}, "unknown head_type 'pspnet'"),
                          ({"ignore_index": "none"}, "ignore_index='none' must be an integer"),
                          ({"backbone": "hf-hub:timm/x"}, "defined on the Hugging Face Hub")]:
        bad = {**ckpt, "hyper_parameters": {**ckpt["hyper_parameters"], **change}}
        torch.save(bad, tmp_path / "bad.ckpt")
        with pytest.raises(ModelFileError, match=match):
            load_model_file(tmp_path / "bad.ckpt")
    ckpt = torch.load(built("yolox_detector"), map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["model_name"] = "yolox-s"  # a known variant, but not the weights' one
    torch.save(ckpt, tmp_path / "s.ckpt")
    with pytest.raises(ModelFileError, match=r"state dict does not match an AutoTimm YOLOXDetector \('yolox-s'\)"):
        load_model_file(tmp_path / "s.ckpt")
