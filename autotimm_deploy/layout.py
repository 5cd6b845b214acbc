"""The export folder's layout, in one place: every file ``autotimm-export`` writes, its manifest role and its
precision.  Every stage (export, INT8, engines, runtimes, ``autotimm-parity``, Triton, the scripts) names files
through this module and nothing else spells them.

An export holds one *network* (``model``) or, for a task whose model runs in two graphs (instance segmentation:
the detector, then the mask head on the final boxes), a second one (``mask``); each network has its own ONNX
files and engine, named after it:

>>> onnx_file("fp16"), onnx_file("int8", cpu=True), onnx_file(raw=True), engine_file("fp16")
('model.fp16.onnx', 'model.int8-cpu.onnx', 'model.raw.onnx', 'model.fp16.engine')
>>> onnx_file("fp16", network="mask"), onnx_role("fp16", network="mask"), engine_role("mask")
('mask.fp16.onnx', 'mask-onnx-fp16', 'mask-engine')
>>> precision_of_role("onnx-int8-cpu"), network_of_role("mask-onnx"), is_network_role("parity-report")
('int8', 'mask', False)
"""

from __future__ import annotations

from typing import List, Optional, Sequence

__all__ = ["MANIFEST", "MAIN", "PRECISIONS", "onnx_file", "engine_file", "sidecar_file", "onnx_role", "engine_role",
           "precision_of_role", "network_of_role", "is_network_role", "checked_roles", "REPORTS", "CALIBRATION",
           "all_files", "written_files", "extra_engine_precision", "siblings"]

#: Written last: a folder with a manifest holds every file it lists, complete.
MANIFEST = "manifest.json"
#: The network every export has.
MAIN = "model"
PRECISIONS = ("fp32", "fp16", "int8")
#: Parity reports and Polygraphy's reproduction files (role -> file).
REPORTS = {"parity-report": "parity.json", "parity-report-md": "parity.md", "polygraphy-inputs": "inputs.json",
           "polygraphy-reference-outputs": "pytorch_outputs.json"}
#: ONNX Runtime's INT8 calibration cache (role, file).
CALIBRATION = ("int8-calibration-cache", "int8.calibration.json")


def _check(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def onnx_file(precision: str = "fp32", network: str = MAIN, raw: bool = False, cpu: bool = False) -> str:
    """``model.onnx`` (decode fused), ``model.raw.onnx`` (raw outputs), ``model.fp16.onnx``, ``model.int8.onnx``
    (Q/DQ for TensorRT) or ``model.int8-cpu.onnx`` (for ONNX Runtime's CPU kernels)."""
    _check(precision)
    if raw:
        return f"{network}.raw.onnx"
    if precision == "fp32":
        return f"{network}.onnx"
    return f"{network}.{precision}{'-cpu' if cpu else ''}.onnx"


def engine_file(precision: str = "fp32", network: str = MAIN) -> str:
    _check(precision)
    return f"{network}.engine" if precision == "fp32" else f"{network}.{precision}.engine"


def sidecar_file(engine: str) -> str:
    return engine + ".json"


def _prefix(network: str) -> str:
    return "" if network == MAIN else f"{network}-"


def onnx_role(precision: str = "fp32", network: str = MAIN, raw: bool = False, cpu: bool = False) -> str:
    _check(precision)
    if raw:
        return f"{_prefix(network)}onnx-raw"
    return _prefix(network) + ("onnx" if precision == "fp32" else f"onnx-{precision}{'-cpu' if cpu else ''}")


def engine_role(network: str = MAIN) -> str:
    return f"{_prefix(network)}engine"


_NETWORK_ROLES = ("onnx", "onnx-raw", "onnx-fp16", "onnx-int8", "onnx-int8-cpu", "engine")


def _split(role: str):
    """(network, role without the network's prefix), or (None, role) for a file that is not a network."""
    if role in _NETWORK_ROLES:
        return MAIN, role
    head, _, rest = role.partition("-")
    return (head, rest) if rest in _NETWORK_ROLES else (None, role)


def is_network_role(role: str) -> bool:
    """An ONNX graph or an engine (what runtimes load and parity checks), not a report or a sidecar."""
    return _split(role)[0] is not None


def network_of_role(role: str) -> Optional[str]:
    return _split(role)[0]


def precision_of_role(role: str) -> Optional[str]:
    net, base = _split(role)
    if net is None or base == "engine":  # an engine's precision is in its sidecar and manifest entry
        return None
    return next((p for p in ("fp16", "int8") if base.startswith(f"onnx-{p}")), "fp32")


def siblings(file: str, network: str) -> List[str]:
    """The files of ``network`` that go with ``file`` (a main network's ONNX or engine), best first: the same
    precision, then FP16, then FP32 (an INT8 export keeps its extra networks in FP16 or FP32).

    >>> siblings("model.int8-cpu.onnx", "mask"), siblings("model.fp16.engine", "mask")
    (['mask.onnx'], ['mask.fp16.engine', 'mask.engine'])
    """
    engine = file.endswith(".engine")
    precision = next((p for p in ("fp16", "int8") if f".{p}" in file), "fp32")
    order = [p for p in (precision, "fp16", "fp32") if p != "int8"]
    if precision == "int8" or (not engine and "-cpu" in file):
        order = ["fp32"]
    names = [engine_file(p, network) if engine else onnx_file(p, network) for p in order]
    return list(dict.fromkeys(names))


def checked_roles(network: str = MAIN) -> List[str]:
    """The roles ``autotimm-parity`` checks in an export folder: every precision's ONNX (decode fused) and the
    engine."""
    return [onnx_role("fp32", network), onnx_role("fp16", network), onnx_role("int8", network),
            onnx_role("int8", network, cpu=True), engine_role(network)]


def extra_engine_precision(engine_precision: str) -> str:
    """An extra network's engine precision: INT8 exports quantize the main network only (the extra networks keep
    FP16 where the export has it, else FP32)."""
    return "fp32" if engine_precision == "int8" else engine_precision


def written_files(extra_networks: Sequence[str] = (), fp16: bool = False, int8: bool = False,
                  engine_precision: Optional[str] = None, check: bool = True) -> List[str]:
    """The files an export with these settings writes (the manifest apart): the main network's raw, fused, FP16,
    INT8 ONNX and engine; an extra network's ONNX, FP16 ONNX and engine (it has no raw form and no INT8 form).

    >>> written_files(("mask",), fp16=True, engine_precision="fp16", check=False)[-4:]
    ['mask.onnx', 'mask.fp16.onnx', 'mask.fp16.engine', 'mask.fp16.engine.json']
    """
    out: List[str] = [onnx_file(raw=True), onnx_file()]
    if fp16:
        out.append(onnx_file("fp16"))
    if int8:
        out += [onnx_file("int8"), onnx_file("int8", cpu=True)]
    if engine_precision is not None:
        out += [engine_file(engine_precision), sidecar_file(engine_file(engine_precision))]
    for net in extra_networks:
        out.append(onnx_file(network=net))
        if fp16:
            out.append(onnx_file("fp16", net))
        if engine_precision is not None:
            engine = engine_file("fp16" if fp16 else "fp32", net)
            out += [engine, sidecar_file(engine)]
    if int8:
        out.append(CALIBRATION[1])
    if check:
        out += list(REPORTS.values())
    return out


def all_files(networks: Sequence[str] = (MAIN, "mask")) -> List[str]:
    """Every file an export of any settings may write (the manifest apart): what a re-export into the same
    folder removes when it does not write it again.

    >>> all_files(("model",))[:4]
    ['model.raw.onnx', 'model.onnx', 'model.fp16.onnx', 'model.int8.onnx']
    """
    out: List[str] = []
    for net in networks:
        out += [onnx_file(network=net, raw=True), onnx_file(network=net), onnx_file("fp16", net),
                onnx_file("int8", net), onnx_file("int8", net, cpu=True)]
        for p in PRECISIONS:
            out += [engine_file(p, net), sidecar_file(engine_file(p, net))]
    return out + [CALIBRATION[1], *REPORTS.values()]
