"""INT8 ONNX with explicit QuantizeLinear/DequantizeLinear, calibrated on the user's images.

The calibration and the Q/DQ placement are ONNX Runtime's (``onnxruntime.quantization.quantize_static``): it
runs on the CPU of any machine the exporter runs on, ships with the ONNX Runtime this toolkit already needs,
and writes standard ONNX Q/DQ, which the ONNX parsers of TensorRT and TensorRT-RTX import as explicit
quantization.  (NVIDIA ModelOpt's ONNX PTQ writes the same kind of graph, but pulls in a CUDA-first stack
for a calibration that ONNX Runtime does on CPU here.)  Nothing of the calibration maths is ours: this module
chooses what is quantized, feeds the images, and writes two forms from one calibration:

- ``model.int8.onnx``, the **TensorRT form**: INT8 activations and weights, symmetric (zero points 0),
  per-channel weights, per-tensor activations, biases left in FP32 (TensorRT quantizes them itself);
- ``model.int8-cpu.onnx``, the **CPU form** for ONNX Runtime: UINT8 asymmetric activations and INT8 symmetric
  per-channel weights (U8S8), which ONNX Runtime's CPU kernels run fastest on x86 without VNNI.

What stays in higher precision, as data (:func:`protected_nodes`): every node the FP32 islands match (the
fused decode, normalisation statistics, Exp: ``DEFAULT_ISLANDS``), and the layers that write the family's
raw head outputs (their values are the logits and distances the decode reads).  Only convolutions and matrix
products are quantized (``QUANTIZED_OPS``); everything else runs in FP32 between Q/DQ pairs.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import onnx

from ..errors import ExportError
from .onnx_export import set_metadata
from .options import CALIB_METHODS, Fp32Islands

__all__ = ["CALIB_METHODS", "DEFAULT_CALIB_METHOD", "DEFAULT_CALIB_COUNT", "Int8Form", "INT8_FORMS", "QUANTIZED_OPS",
           "CalibrationSet", "calibration_set", "calibrate", "protected_nodes", "quantizable_nodes", "quantize_int8"]

#: The default method: measured in docs/int8.md on the demo models (mAP / top-1 after quantization).
DEFAULT_CALIB_METHOD = "minmax"
#: Calibration images used by default (fewer when the folder holds fewer).
DEFAULT_CALIB_COUNT = 256
#: Op types whose inputs are quantized.
QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class Int8Form:
    """One INT8 graph written from the calibration: its file, its types, and the runtime it is meant for."""

    name: str
    file: str
    activations: str  # "int8" (symmetric) | "uint8" (asymmetric)
    quantize_bias: bool
    runtime: str

    def ort_options(self) -> Dict:
        from onnxruntime.quantization import QuantType

        act = QuantType.QInt8 if self.activations == "int8" else QuantType.QUInt8
        extra = {"ActivationSymmetric": self.activations == "int8", "WeightSymmetric": True,
                 "QuantizeBias": self.quantize_bias}
        return {"activation_type": act, "weight_type": QuantType.QInt8, "extra_options": extra}


INT8_FORMS: Tuple[Int8Form, ...] = (
    Int8Form("tensorrt", "model.int8.onnx", "int8", False, "TensorRT / TensorRT-RTX engines (explicit quantization)"),
    Int8Form("cpu", "model.int8-cpu.onnx", "uint8", True, "ONNX Runtime CPU (U8S8 QDQ kernels)"),
)


@dataclass
class CalibrationSet:
    """Preprocessed calibration batches (float32 NCHW, the runtime's letterbox and normalisation)."""

    root: str
    batches: List[np.ndarray]
    files: List[str]
    sha256: str  # of the file names and bytes, in order: part of the INT8 graphs' provenance

    @property
    def images(self) -> int:
        return sum(b.shape[0] for b in self.batches)


def calibration_set(folder: str | Path, task: str, class_names: Sequence[str], size: Tuple[int, int],
                    mean: Sequence[float], std: Sequence[float], preprocess, count: int = DEFAULT_CALIB_COUNT,
                    batch: int = 8, progress: Optional[Callable[[str], None]] = None) -> CalibrationSet:
    """The first ``count`` images of ``folder`` (sorted, any sub-folders; annotations are not needed), read and
    preprocessed exactly as the runtimes do (:func:`~autotimm_deploy.engines.images.letterbox_images`)."""
    from ..engines.images import letterbox_images, load_image
    from ..parity.data import DatasetError, load_dataset

    if count < 1:
        raise ExportError(f"--calib-count must be >= 1, got {count}")
    try:
        ds = load_dataset(folder, class_names, task, limit=count)
    except DatasetError as exc:
        raise ExportError(f"--calib: {exc}") from None
    digest = hashlib.sha256()
    batches: List[np.ndarray] = []
    files = [str(s.path) for s in ds.samples]
    say = progress or (lambda line: None)
    for start in range(0, len(files), batch):
        chunk = files[start:start + batch]
        imgs = []
        for f in chunk:
            data = Path(f).read_bytes()
            digest.update(Path(f).name.encode() + b"\0" + hashlib.sha256(data).digest())
            imgs.append(load_image(f))
        arr, _ = letterbox_images(imgs, size, mean, std, preprocess)
        batches.append(arr)
        say(f"      calibration images: {min(start + batch, len(files))}/{len(files)} read")
    return CalibrationSet(str(Path(folder)), batches, files, digest.hexdigest())


def _producer_chain(graph: onnx.GraphProto, tensor: str) -> List[str]:
    """The node writing ``tensor`` and, through elementwise ops with one data input (scale, ReLU), up to the
    first layer with weights: the layers whose output *is* the raw head output."""
    producer = {o: n for n in graph.node for o in n.output}
    names: List[str] = []
    t = tensor
    while t in producer:
        node = producer[t]
        names.append(node.name)
        if node.op_type in QUANTIZED_OPS or node.op_type not in ("Mul", "Relu", "Add", "Clip", "Identity"):
            break
        t = node.input[0]
    return names


def protected_nodes(model: onnx.ModelProto, raw_outputs: Sequence[str], islands: Fp32Islands) -> List[str]:
    """Nodes never quantized: the FP32 islands and the layers writing the raw head outputs."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    keep = [n.name for n in graph.nodes if islands.matches(n)]
    for t in raw_outputs:
        keep += _producer_chain(model.graph, t)
    return sorted(set(keep))


def quantizable_nodes(model: onnx.ModelProto, protected: Sequence[str]) -> List[str]:
    """The nodes that will get Q/DQ inputs, in graph order."""
    skip = set(protected)
    return [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS and n.name not in skip]


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over the calibration batches."""

    def __init__(self, calib: CalibrationSet, progress: Optional[Callable[[str], None]]) -> None:
        self.calib, self.progress = calib, progress
        self._it: Optional[Iterator] = None
        self._done = 0
        self._said = time.time()

    def get_next(self):
        if self._it is None:
            self._it = iter(self.calib.batches)
        batch = next(self._it, None)
        if batch is None:
            return None
        self._done += batch.shape[0]
        now = time.time()
        if self.progress is not None and (now - self._said > 2.0 or self._done == self.calib.images):
            self._said = now  # a line every ~2 s, and the last
            self.progress(f"      calibrating: {self._done}/{self.calib.images} images")
        return {"images": batch}

    def rewind(self) -> None:
        self._it, self._done = None, 0


#: ONNX Runtime calibrator settings per method.  Entropy and percentile need a fine histogram: with
#: ``quantize_static``'s own defaults, entropy has 128 bins for 128 quantized bins, so its search has one candidate
#: and it returns the min/max range (measured: the same graph as minmax); 2048 bins as in TensorRT's entropy
#: calibrator.  Ranges are kept asymmetric: the TensorRT form symmetrizes them when it quantizes, the CPU form
#: uses them as they are.
_CALIBRATORS = {"minmax": ("MinMax", {"symmetric": False}),
                "entropy": ("Entropy", {"symmetric": False, "num_bins": 2048, "num_quantized_bins": 128}),
                "percentile": ("Percentile", {"symmetric": False, "num_bins": 2048, "percentile": 99.999})}


def calibrate(fp32_path: str | Path, calib: CalibrationSet, method: str, cache_path: str | Path,
              progress: Optional[Callable[[str], None]] = None) -> None:
    """Run ONNX Runtime's calibrator for ``method`` on the calibration images and write the tensor ranges to
    ``cache_path`` (ONNX Runtime's calibration cache format, which :func:`quantize_int8` reads)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data

    if method not in CALIB_METHODS:
        raise ExportError(f"--calib-method must be one of {', '.join(CALIB_METHODS)}, got {method!r}")
    name, extra = _CALIBRATORS[method]
    with tempfile.TemporaryDirectory(prefix="autotimm-calib-") as tmp, _quiet():
        calibrator = create_calibrator(Path(fp32_path), list(QUANTIZED_OPS), str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=getattr(CalibrationMethod, name), extra_options=extra)
        calibrator.collect_data(_Reader(calib, progress))
        ranges = calibrator.compute_data()
        del calibrator
    save_tensors_data(ranges, cache_path)


class _quiet:
    """ONNX Runtime's quantization tools log advice on the root logger (run its CPU pre-processing: see
    docs/int8.md) and print progress of their own: both kept off the export's output."""

    def __enter__(self):
        import contextlib
        import io

        self.level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)
        self.out = contextlib.redirect_stdout(io.StringIO())
        self.out.__enter__()

    def __exit__(self, *exc):
        self.out.__exit__(*exc)
        logging.getLogger().setLevel(self.level)


def quantize_int8(fp32_path: str | Path, form: Int8Form, calib: Optional[CalibrationSet],
                  method: str, cache_path: str | Path, exclude: Sequence[str] = (),
                  progress: Optional[Callable[[str], None]] = None) -> onnx.ModelProto:
    """Quantize the FP32 ONNX at ``fp32_path`` in ``form`` and return the Q/DQ model.  The tensor ranges are computed
    once (``calib`` through ``method``) and kept in ``cache_path``; a later call with the same cache reuses
    them, so every form and every repair step shares one calibration.  ``exclude``: nodes kept in FP32.  The
    model's metadata is kept, with ``precision`` int8 and the form added."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    if method not in CALIB_METHODS:
        raise ExportError(f"--calib-method must be one of {', '.join(CALIB_METHODS)}, got {method!r}")
    model = onnx.load(str(fp32_path))
    nodes = quantizable_nodes(model, exclude)
    if not nodes:
        raise ExportError(f"{Path(fp32_path).name} has no convolution or matrix product left to quantize")
    if not Path(cache_path).is_file():
        if calib is None:
            raise ExportError("INT8 quantization needs calibration images or a calibration cache")
        calibrate(fp32_path, calib, method, cache_path, progress)
    with tempfile.TemporaryDirectory(prefix="autotimm-int8-") as tmp, _quiet():
        quantize_static(str(fp32_path), str(Path(tmp) / "q.onnx"), None, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_quantize=nodes, per_channel=True,
                        calibrate_method=getattr(CalibrationMethod, _CALIBRATORS[method][0]),
                        calibration_cache_path=str(cache_path), **form.ort_options())
        q = onnx.load(str(Path(tmp) / "q.onnx"))
    del q.metadata_props[:]
    q.metadata_props.extend(model.metadata_props)
    set_metadata(q, {"precision": "int8", "int8_form": form.name, "int8_runtime": form.runtime})
    return q
