"""The artifacts ``autotimm-parity`` checks: ``.onnx`` files, ``.engine`` files (with their sidecars) and export
directories, each with what its metadata says (precision, top-k, the runtime's ArtifactInfo) and whether this
machine can run it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .. import layout
from ..errors import AutotimmError, ParityError

__all__ = ["Artifact", "resolve_artifacts"]

@dataclass
class Artifact:
    """One file to check, with what its metadata says."""

    path: Path
    kind: str  # onnx | engine
    precision: str  # fp32 | fp16 | int8
    info: Any  # engines.predictor.ArtifactInfo
    topk: Optional[int]
    source_sha256: Optional[str]
    runnable: bool = True
    why: str = ""  # why not runnable

    @property
    def label(self) -> str:
        return f"{self.kind.upper() if self.kind == 'onnx' else 'engine'} {self.precision.upper()}"

    def networks(self, providers: Sequence[str]) -> Dict[str, Any]:
        """The task's extra networks beside this artifact (runtime backends), as the runtime loads them."""
        from ..engines.backends import EngineBackend, OnnxRuntimeBackend
        from ..engines.predictor import _sibling_networks

        make = (lambda p: EngineBackend(p)) if self.kind == "engine" else (lambda p: OnnxRuntimeBackend(p, providers))
        return _sibling_networks(self.path, self.info, make)

    def runner(self, providers: Sequence[str]):
        from .runners import BackendRunner

        if self.kind == "engine":
            from ..engines.runner import EngineRunner

            return EngineRunner(self.path, name=self.path.name)
        from ..engines.backends import OnnxRuntimeBackend

        return BackendRunner(lambda: OnnxRuntimeBackend(self.path, providers), name=self.path.name)


def _topk(meta: Dict[str, str]) -> Optional[int]:
    v = meta.get("topk", "none")
    return None if v in ("none", "", None) else int(v)


def _onnx_artifact(path: Path) -> Artifact:
    import onnx

    from ..engines.predictor import ArtifactInfo

    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ParityError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    meta = {p.key: p.value for p in m.metadata_props}
    dims = m.graph.input[0].type.tensor_type.shape.dim
    b = dims[0].dim_value
    try:
        info = ArtifactInfo.from_metadata(meta, batch=(b, b) if b else (1, 1 << 30))
    except AutotimmError as exc:
        raise ParityError(f"{path}: {exc}") from None
    return Artifact(path, "onnx", meta.get("precision", "fp32"), info, _topk(meta), meta.get("source_sha256"))


def _engine_artifact(path: Path) -> Artifact:
    from ..engines.load import check_engine, engine_runnable
    from ..engines.predictor import _engine_info

    sidecar = check_engine(path)  # EngineCorrupt / EngineIncompatible: an input error, exit 2
    ok, why = engine_runnable(sidecar)
    meta = sidecar.get("model", {})
    return Artifact(path, "engine", sidecar.get("precision", "fp32"), _engine_info(sidecar), _topk(meta),
                    meta.get("source_sha256"), ok, "" if ok else why)


def resolve_artifacts(paths: Sequence[str | Path]) -> List[Artifact]:
    """``.onnx`` files, ``.engine`` files (with their sidecars) and export directories (their FP32/FP16
    ONNX and engine, from ``manifest.json``)."""
    out: List[Artifact] = []
    for p in map(Path, paths):
        if p.is_dir() or p.name == "manifest.json":
            man = p / "manifest.json" if p.is_dir() else p
            if not man.is_file():
                raise ParityError(f"{p}: a directory without manifest.json; pass .onnx/.engine files or an "
                                  "autotimm-export output directory")
            try:
                arts = json.loads(man.read_text())["artifacts"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ParityError(f"{man}: not an autotimm-export manifest ({exc})") from None
            files = [man.parent / a["file"] for a in arts if a.get("role") in layout.checked_roles()]
            out += resolve_artifacts(files)
        elif not p.is_file():
            raise ParityError(f"{p}: no such artifact file")
        elif p.suffix == ".onnx":
            out.append(_onnx_artifact(p))
        elif p.suffix == ".engine":
            out.append(_engine_artifact(p))
        else:
            raise ParityError(f"{p}: unknown artifact type {p.suffix!r}; expected .onnx, .engine or an export directory")
    if not out:
        raise ParityError("no artifacts to check")
    return out
