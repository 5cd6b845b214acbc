"""What a task is: the one place that knows what a kind of model (detector, classifier, segmentor, ...) outputs and
how every stage treats those outputs.  The export, graph surgery, FP16/INT8, engines, parity, runtimes, Triton and
``autotimm-infer`` are generic: they ask the model's task (``tasks.get(family.task)``) and never branch on its name.

A task is a subclass of :class:`Task` registered by name (:func:`autotimm_deploy.tasks.register`); its methods take
the model family's declaration (:class:`~autotimm_deploy.models.family.Family`), so that one task serves every family
of that task (the seed's FCOS, AutoTimm's FCOS and YOLOX heads, AutoTimm's YOLOXDetector are all detection).

Heavy libraries (torch, onnx-graphsurgeon, pycocotools, PIL) are imported inside the methods that need them, so that
a runtime or a Triton step that only post-processes loads none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import AutotimmError, ExportError

if TYPE_CHECKING:  # pragma: no cover
    import onnx

    from ..artifact import ArtifactInfo
    from ..datasets import Dataset, Labels
    from ..images import Letterbox
    from ..models.family import Family

__all__ = ["Task", "GraphInfo", "Agreement", "TritonTensor"]


@dataclass
class GraphInfo:
    """What graph surgery needs to know about the exported network besides its family."""

    strides: Tuple[int, ...]  # detectors' level strides; () otherwise
    num_classes: int
    static_hw: Optional[List[Tuple[int, int]]] = None  # per level (detectors) or of the head's output, when static


@dataclass
class Agreement:
    """The parity level between the tensors and the task metric (detections matched, pixels agreeing, ...): a
    verdict on what the task's post-processing makes of the outputs of both sides.  ``status`` is ``pass``,
    ``fail`` or ``skipped`` (nothing to compare: never a pass)."""

    level: str
    status: str
    message: str
    details: Dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status != "fail"


@dataclass(frozen=True)
class TritonTensor:
    """One output of a Triton ensemble: name, numpy dtype name, dims without the batch dimension."""

    name: str
    dtype: str
    dims: Tuple[int, ...]
    labels: bool = False  # Triton's classification extension reads labels.txt for it


class Task:
    """The interface every task implements; see the module docstring.  Class attributes declare the task; methods
    are called with the model family's declaration."""

    #: the name families declare (``Family.task``) and artifacts record (ONNX metadata ``task``)
    name: ClassVar[str] = ""
    #: output roles: (required, optional); one output per role
    roles: ClassVar[Tuple[Tuple[str, ...], Tuple[str, ...]]] = ((), ())
    #: roles with one output per FPN level (``<key>_p3``..)
    per_level_roles: ClassVar[Tuple[str, ...]] = ()
    #: what ``--decode`` may fuse into ``model.onnx`` (``raw`` first: the network's own outputs)
    decode_modes: ClassVar[Tuple[str, ...]] = ("raw",)
    default_decode: ClassVar[str] = "raw"
    #: the parity level between ``tensor`` and ``task`` (``None``: none)
    agreement_level: ClassVar[Optional[str]] = None
    #: task metric keys (fractions in [0, 1]); the first is the one the INT8 gate bounds
    metric_keys: ClassVar[Tuple[str, ...]] = ()
    metric_names: ClassVar[Dict[str, str]] = {}
    #: the field of the parity task rule (:class:`~autotimm_deploy.parity.thresholds.TaskRule`) that bounds the
    #: metric's drop, in points
    points_field: ClassVar[str] = ""
    #: autotimm-infer's output file and what one result is called
    results_file: ClassVar[str] = "results.json"
    #: the annotation formats :meth:`read_annotations` understands (for messages)
    annotation_formats: ClassVar[str] = ""
    #: extra networks this task's export writes besides ``model`` (instance segmentation: ``mask``)
    extra_networks: ClassVar[Tuple[str, ...]] = ()

    # -- the family ------------------------------------------------------------------------------
    def check_family(self, family: "Family") -> None:
        required, optional = self.roles
        roles = [o.role for o in family.outputs]
        missing = [r for r in required if roles.count(r) != 1]
        extra = [r for r in roles if r not in required + optional or roles.count(r) > 1]
        if missing or extra:
            raise AutotimmError(f"family {family.name}: a {self.name} family has one output of each role "
                                f"{', '.join(required)} (optional: {', '.join(optional) or 'none'}); got {roles}")

    def output_names(self, family: "Family", num_levels: int = 0) -> List[str]:
        """The raw-output contract of the exported network, in the order the model's forward returns them."""
        return family.output_names(num_levels)

    def convention(self, family: "Family") -> Dict[str, Any]:
        """Human- and machine-readable summary of how the outputs decode (ONNX metadata ``decoding_convention``)."""
        return {"name": family.convention}

    def output_axes(self, family: "Family", name: str, dynamic_batch: bool, dynamic_hw: bool) -> Dict[int, str]:
        """The symbolic dimensions of raw output ``name``: the batch, and with dynamic H/W its spatial dims."""
        axes = {0: "batch"} if dynamic_batch else {}
        if dynamic_hw and self.spatial_output(family, name):
            suffix = name.rsplit("_", 1)[1] if "_p" in name else name
            axes.update({2: f"height_{suffix}", 3: f"width_{suffix}"})
        return axes

    def spatial_output(self, family: "Family", name: str) -> bool:
        """Whether raw output ``name`` is a (B, C, h, w) map whose h, w follow the input's."""
        return False

    def flatten(self, family: "Family", forward) -> Tuple:
        """The model's forward result as a flat tuple in :meth:`output_names` order."""
        return tuple(forward) if isinstance(forward, (tuple, list)) else (forward,)

    def check_decode(self, decode: str, topk: Optional[int]) -> None:
        if decode not in self.decode_modes:
            raise ExportError(f"--decode {decode}: a {self.name} model exports {', '.join(self.decode_modes)}")
        if topk is not None:
            raise ExportError(f"--topk applies to detectors; a {self.name} model has no candidates to keep")

    # -- export ----------------------------------------------------------------------------------
    def fuse(self, raw: "onnx.ModelProto", decode: str, topk: Optional[int], family: "Family",
             info: GraphInfo) -> "onnx.ModelProto":
        """``model.onnx`` from ``model.raw.onnx``: the decode passes of ``decode`` (each a small graph edit), then
        constant folding."""
        from ..graph import fold_graph

        return fold_graph(raw)

    def reference(self, model, forward, image_hw: Tuple[int, int], decode: str,
                  topk: Optional[int]) -> "Dict[str, np.ndarray]":
        """What an export with ``decode`` must output, computed in PyTorch from the model's ``forward`` result: the
        oracle of every parity check (the model's own forward and this task's reference decoder, never the graph)."""
        raise NotImplementedError

    # -- extra networks (``extra_networks``) ---------------------------------------------------------
    def network(self, model, name: str):
        """The PyTorch module of extra network ``name``."""
        raise NotImplementedError(f"task {self.name} has no extra network {name!r}")

    def network_io(self, family: "Family", name: str):
        """(input names, output names, dynamic axes) of extra network ``name``."""
        raise NotImplementedError(f"task {self.name} has no extra network {name!r}")

    def network_feeds(self, model, main_reference, sizes, decode: str, seed: int = 0):
        """Example and parity inputs of the extra networks, made from the main network's PyTorch reference."""
        raise NotImplementedError(f"task {self.name} has no extra network")

    def network_reference(self, module, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        raise NotImplementedError(f"task {self.name} has no extra network")

    def network_dims(self, family: "Family", name: str, batch: Tuple[int, int, int]):
        raise NotImplementedError(f"task {self.name} has no extra network {name!r}")

    # -- runtime ---------------------------------------------------------------------------------
    def postprocess(self, outputs: Dict[str, np.ndarray], info: "ArtifactInfo", size: Tuple[int, int],
                    letterboxes: Sequence["Letterbox"], **params) -> List[Any]:
        """One result per image (in the original image's pixels) from a batch of the network's outputs; ``params``
        are the user's post-processing settings (None: the family's) and, for a task with extra networks, their
        runners (``networks={name: runner with infer(dict) -> dict}``)."""
        raise NotImplementedError

    def settings(self, family: "Family", **params) -> Dict[str, Any]:
        """The post-processing settings in effect (the user's ``params`` where given, else the family's), as
        recorded beside results; {} for a task without any."""
        return {}

    def summary(self, result) -> Tuple[int, str]:
        """autotimm-infer's table: a count and the top results as text."""
        raise NotImplementedError

    def draw(self, image, result, line_width: int, font) -> None:
        """Draw ``result`` on a PIL image (autotimm-infer's pictures)."""
        raise NotImplementedError

    # -- parity ----------------------------------------------------------------------------------
    def agreement(self, ref: Sequence[Dict[str, np.ndarray]], out: Sequence[Dict[str, np.ndarray]],
                  sizes: Sequence[Tuple[int, int]], info: "ArtifactInfo", rule, tolerances) -> Optional[Agreement]:
        """The agreement level on raw batches of both sides (``sizes``: each batch's network input H, W)."""
        return None

    def prediction_agreement(self, ref: Sequence[Any], out: Sequence[Any], rule) -> Dict[str, Any]:
        """A check of the artifact's results against PyTorch's that needs no annotations, part of the task level:
        ``{"passed", "message", "metrics"}``, or {} for a task without one."""
        return {}

    def metric(self, predictions: Sequence[Any], dataset: "Dataset", num_classes: int) -> Dict[str, float]:
        """The task metric of ``predictions`` (one result per sample, image pixels) on an annotated dataset
        (ValueError when it is undefined there)."""
        raise NotImplementedError

    def read_annotations(self, root, images, labels: "Labels", annotations=None) -> Optional["Dataset"]:
        """The dataset of an image folder in one of this task's annotation formats, or None when the folder holds
        none (an unannotated folder)."""
        return None

    # -- serving ---------------------------------------------------------------------------------
    def triton_outputs(self, num_classes: int, top_k: int) -> List[TritonTensor]:
        raise NotImplementedError

    def triton_arrays(self, results: Sequence[Any], top_k: int) -> Dict[str, np.ndarray]:
        """A batch of results as the ensemble's output tensors (padded to the batch's largest)."""
        raise NotImplementedError

    def from_triton(self, arrays: Dict[str, np.ndarray], index: int, width: int, height: int,
                    class_names: Sequence[str]) -> Any:
        """Result ``index`` of a batch of the ensemble's output tensors."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<task {self.name}>"
