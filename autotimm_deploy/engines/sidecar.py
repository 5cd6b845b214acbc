"""Engine sidecars (``<engine>.json``) and the build cache.

A sidecar records what an engine is and how it was made: library and version, precision, targets
(compute capabilities for TensorRT-RTX, the GPU for full TensorRT), optimisation profiles, I/O names,
dtypes and shapes, the source ONNX file's SHA-256, the engine's own SHA-256 and size, build time, and
the *cache key*: a SHA-256 over every input of the build (:data:`CACHE_KEY_FIELDS`).  Loading checks the
sidecar before the library ever sees the bytes (:mod:`autotimm_deploy.engines.load`).

:class:`EngineCache` stores ``<key>.engine`` + ``<key>.json`` in a folder; entries are read as bytes
and JSON, never unpickled, and a hit is used only if the stored engine's SHA-256 matches its sidecar.
Writes are crash-safe: temporary file + rename, the entry's old sidecar removed before its engine is
replaced and the new one written after it.  Temporary files left by a killed writer
(``.autotimm-tmp-*`` in ``engines/`` and ``timing/``) are removed when an :class:`EngineCache` is
opened, once they are older than :data:`TMP_MAX_AGE_S` (an hour), so that another process still
writing into the same cache is not disturbed.

>>> k1 = cache_key({"onnx_sha256": "ab", "library": "tensorrt-rtx", "library_version": "1.7",
...                 "precision": "fp16", "profiles": [], "targets": ["SM86"], "workspace_mib": None,
...                 "fp32_islands": None, "builder": {}})
>>> k2 = cache_key({"onnx_sha256": "ab", "library": "tensorrt-rtx", "library_version": "1.8",
...                 "precision": "fp16", "profiles": [], "targets": ["SM86"], "workspace_mib": None,
...                 "fp32_islands": None, "builder": {}})
>>> len(k1), k1 == k2
(64, False)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Optional, Tuple

from .. import _json as strict_json
from .._atomic import atomic_write_bytes, atomic_write_text, cleanup_tmp, remove_file
from ..errors import EngineCorrupt, EngineIncompatible

__all__ = ["SIDECAR_FORMAT", "CACHE_KEY_FIELDS", "sidecar_path", "cache_key", "read_sidecar", "write_sidecar",
           "write_engine", "EngineCache", "default_cache_dir", "TMP_MAX_AGE_S"]

SIDECAR_FORMAT = "autotimm-deploy-engine/1"
#: A cache's temporary files older than this (seconds) are a killed writer's leftovers and are removed.
TMP_MAX_AGE_S = 3600
# Everything that changes the engine; a change in any of them is a cache miss.
CACHE_KEY_FIELDS = ("onnx_sha256", "library", "library_version", "precision", "profiles", "targets",
                    "workspace_mib", "fp32_islands", "builder")


def sidecar_path(engine_path: str | Path) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def cache_key(fields: Dict) -> str:
    """SHA-256 of the canonical JSON of exactly :data:`CACHE_KEY_FIELDS` (a missing field is an error)."""
    missing = [f for f in CACHE_KEY_FIELDS if f not in fields]
    if missing:
        raise ValueError(f"cache key is missing {missing}")
    blob = json.dumps({f: fields[f] for f in CACHE_KEY_FIELDS}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def write_sidecar(engine_path: str | Path, sidecar: Dict) -> Path:
    path = sidecar_path(engine_path)
    atomic_write_text(path, strict_json.dumps(sidecar, indent=2, sort_keys=False) + "\n")
    return path


def write_engine(engine_path: str | Path, data: bytes, sidecar: Dict) -> None:
    """Write an engine and its sidecar, crash-safe: the stale sidecar goes before the engine is replaced
    and the new one is written after it, so a sidecar never sits next to an engine it does not describe
    (a crash in between leaves an engine without sidecar, which every reader refuses or treats as a miss)."""
    remove_file(sidecar_path(engine_path))
    atomic_write_bytes(engine_path, data)
    write_sidecar(engine_path, sidecar)


def read_sidecar(engine_path: str | Path) -> Dict:
    """The sidecar of ``engine_path``; a missing or malformed one is an :class:`EngineIncompatible`."""
    path = sidecar_path(engine_path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise EngineIncompatible(f"{engine_path}: no sidecar {path.name} next to it; engines are loaded only with the "
                                 "sidecar autotimm-export wrote (re-export to get one)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngineCorrupt(f"{path}: sidecar is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise EngineIncompatible(f"{path}: not an autotimm-deploy engine sidecar (format "
                                 f"{data.get('format') if isinstance(data, dict) else type(data).__name__!r}, "
                                 f"expected {SIDECAR_FORMAT!r})")
    return data


def default_cache_dir() -> Path:
    """``$AUTOTIMM_DEPLOY_CACHE``, else ``$XDG_CACHE_HOME/autotimm-deploy`` (``~/.cache/autotimm-deploy``)."""
    env = os.environ.get("AUTOTIMM_DEPLOY_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "autotimm-deploy"


class EngineCache:
    """Engines by cache key under ``root/engines`` (and full TensorRT timing caches under ``root/timing``).

    Opening a cache removes the temporary files killed writers left in it, once older than
    ``tmp_max_age_s`` (default :data:`TMP_MAX_AGE_S`, an hour: a concurrent writer's are younger).
    """

    def __init__(self, root: Optional[str | Path] = None, tmp_max_age_s: Optional[float] = TMP_MAX_AGE_S) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.removed_tmp = self.cleanup_tmp(tmp_max_age_s)

    def cleanup_tmp(self, max_age_s: Optional[float] = TMP_MAX_AGE_S) -> list:
        """Remove leftover temporary files older than ``max_age_s`` seconds (None: all); returns their paths."""
        return [p for sub in ("engines", "timing") for p in cleanup_tmp(self.root / sub, max_age_s)]

    def _paths(self, key: str) -> Tuple[Path, Path]:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"bad cache key {key!r}")
        e = self.root / "engines" / f"{key}.engine"
        return e, sidecar_path(e)

    def get(self, key: str) -> Optional[Tuple[bytes, Dict]]:
        """(engine bytes, sidecar) for ``key``, or None; a damaged entry counts as a miss."""
        engine, side = self._paths(key)
        try:
            data = engine.read_bytes()
            meta = json.loads(side.read_text())
        except (OSError, ValueError):
            return None
        if meta.get("cache_key") != key or meta.get("engine", {}).get("sha256") != hashlib.sha256(data).hexdigest():
            return None
        return data, meta

    def put(self, key: str, data: bytes, sidecar: Dict) -> None:
        write_engine(self._paths(key)[0], data, sidecar)

    def timing_cache_path(self, library: str, version: str, gpu: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in f"{library}-{version}-{gpu}")
        return self.root / "timing" / f"{safe}.cache"
