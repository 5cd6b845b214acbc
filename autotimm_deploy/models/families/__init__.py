"""The model families autotimm-deploy deploys, each declared once (see :mod:`..family`).

- :data:`SEED_FCOS`, :data:`CLASSIFIER`: the seed's modules (``shared/seed/heads.md``): FCOS head with
  exp log-distances, max-pool P6/P7; ``ImageClassifier`` with softmax.
- :data:`AUTOTIMM_FCOS`, :data:`AUTOTIMM_YOLOX`, :data:`AUTOTIMM_CLASSIFIER`, :data:`AUTOTIMM_MULTILABEL`:
  models as the ``autotimm`` package builds them (conv P6/P7, ReLU·scale pixel distances, YOLOX head
  without centerness, AutoTimm's post-processing and eval preprocessing); modules in :mod:`.autotimm`.

Adding a family means one new module here that declares its :class:`~..family.Family` and its layers;
nothing in ``exporters/``, ``engines/``, ``parity/``, ``cli/`` or ``cpp/`` asks for a family's name.
"""

from .autotimm import AUTOTIMM_CLASSIFIER, AUTOTIMM_FCOS, AUTOTIMM_MULTILABEL, AUTOTIMM_YOLOX
from .seed import BBOX_LOG_CLAMP, CLASSIFIER, SEED_FCOS

#: Every declared family, by name (documentation and tests; artifacts carry their full declaration).
FAMILIES = {f.name: f for f in (SEED_FCOS, CLASSIFIER, AUTOTIMM_FCOS, AUTOTIMM_YOLOX, AUTOTIMM_CLASSIFIER,
                                AUTOTIMM_MULTILABEL)}

__all__ = ["SEED_FCOS", "CLASSIFIER", "AUTOTIMM_FCOS", "AUTOTIMM_YOLOX", "AUTOTIMM_CLASSIFIER",
           "AUTOTIMM_MULTILABEL", "BBOX_LOG_CLAMP", "FAMILIES"]
