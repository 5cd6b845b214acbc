"""The model families autotimm-deploy deploys, each declared once (see :mod:`..family`).

- :data:`SEED_FCOS`, :data:`CLASSIFIER`: the seed's modules (``shared/seed/heads.md``): FCOS head with
  exp log-distances, max-pool P6/P7; ``ImageClassifier`` with softmax.
- :data:`AUTOTIMM_FCOS`, :data:`AUTOTIMM_YOLOX`, :data:`AUTOTIMM_CLASSIFIER`, :data:`AUTOTIMM_MULTILABEL`:
  models as the ``autotimm`` package builds them (conv P6/P7, ReLU·scale pixel distances, YOLOX head
  without centerness, AutoTimm's post-processing and eval preprocessing); modules in :mod:`.autotimm`.

Adding a family means one new module here that declares its :class:`~..family.Family` and its layers;
nothing in ``exporters/``, ``engines/``, ``parity/``, ``cli/`` or ``cpp/`` asks for a family's name.
"""

from ..._lazy import lazy_namespace
from .seed import BBOX_LOG_CLAMP, CLASSIFIER, SEED_FCOS

__all__ = ["SEED_FCOS", "CLASSIFIER", "AUTOTIMM_FCOS", "AUTOTIMM_YOLOX", "AUTOTIMM_CLASSIFIER",
           "AUTOTIMM_MULTILABEL", "BBOX_LOG_CLAMP", "FAMILIES"]

# AutoTimm's declarations live beside its layers (torch, timm): resolved on first use, so that reading an
# artifact's family (a runtime, a Triton pre-processing step) imports neither
_getattr, __dir__ = lazy_namespace(__name__, dict.fromkeys(
    ["AUTOTIMM_CLASSIFIER", "AUTOTIMM_FCOS", "AUTOTIMM_MULTILABEL", "AUTOTIMM_YOLOX"], "autotimm"), globals())


def __getattr__(name: str):
    if name == "FAMILIES":  #: every declared family, by name (documentation and tests; artifacts carry their own)
        from .autotimm import AUTOTIMM_CLASSIFIER, AUTOTIMM_FCOS, AUTOTIMM_MULTILABEL, AUTOTIMM_YOLOX

        families = {f.name: f for f in (SEED_FCOS, CLASSIFIER, AUTOTIMM_FCOS, AUTOTIMM_YOLOX, AUTOTIMM_CLASSIFIER,
                                        AUTOTIMM_MULTILABEL)}
        globals()["FAMILIES"] = families
        return families
    return _getattr(name)
