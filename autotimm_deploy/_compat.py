"""Runtime guards on the libraries autotimm-deploy depends on.

``torch.load(..., weights_only=True)`` is the only thing between a hostile ``.pt`` file and code
execution, and before torch 2.6.0 it could be bypassed (CVE-2025-32434, GHSA-53q9-r3pm-6pq6).  So
model files are never read on an older torch, whatever pip was told: :func:`check_torch_version`
raises :class:`~autotimm_deploy.errors.AutotimmError` there.  Pre-releases of 2.6.0 (``2.6.0a0``,
``2.6.0.dev20241201``) count as older, as in PEP 440 and as in the ``torch>=2.6`` requirement.

>>> parse_version("2.14.1+cu130")
((2, 14, 1), False)
>>> parse_version("2.6.0a0+ecf3bae40a")
((2, 6, 0), True)
>>> torch_version_ok("2.6.0"), torch_version_ok("2.5.1+cu124"), torch_version_ok("2.6.0rc1")
(True, False, False)
"""

from __future__ import annotations

import re
from typing import Optional, Tuple

from .errors import AutotimmError

__all__ = ["MIN_TORCH", "parse_version", "torch_version_ok", "check_torch_version", "toolchain_versions"]

#: The first torch release whose ``torch.load(weights_only=True)`` is not bypassable (CVE-2025-32434).
MIN_TORCH = (2, 6, 0)

_VERSION = re.compile(
    r"^\s*v?(?:\d+!)?(?P<release>\d+(?:\.\d+)*)"  # epoch (ignored), release
    r"(?P<rest>[^+]*)"  # pre-release / post-release / dev tags
    r"(?:\+\S*)?\s*$"  # local version (+cu130, +git1234): does not change the release
)
_POST_ONLY = re.compile(r"^[-_.]?(?:post|rev|r)[-_.]?\d*$", re.IGNORECASE)


def parse_version(text: str) -> Tuple[Tuple[int, ...], bool]:
    """``(release padded to 3 numbers, is_prerelease)`` of a PEP 440-ish version string.

    A post-release (``2.6.0.post1``) is not a pre-release; anything else after the release numbers
    (``a0``, ``rc1``, ``.dev2024``, ``b2``) is.  Raises ValueError where no release number leads.
    """
    m = _VERSION.match(str(text))
    if not m:
        raise ValueError(f"not a version string: {text!r}")
    release = tuple(int(p) for p in m.group("release").split("."))
    release = (release + (0, 0, 0))[: max(3, len(release))]
    rest = m.group("rest")
    return release, bool(rest) and not _POST_ONLY.match(rest)


def torch_version_ok(version: str, minimum: Tuple[int, ...] = MIN_TORCH) -> bool:
    """True where ``version`` is ``minimum`` or later (pre-releases of ``minimum`` are earlier)."""
    release, pre = parse_version(version)
    width = max(len(release), len(minimum))
    release = release + (0,) * (width - len(release))
    minimum = tuple(minimum) + (0,) * (width - len(minimum))
    return release > minimum or (release == minimum and not pre)


def check_torch_version(version: Optional[str] = None) -> None:
    """Raise :class:`AutotimmError` unless the torch in use (or ``version``) is at least :data:`MIN_TORCH`."""
    if version is None:
        import torch

        version = torch.__version__
    need = ".".join(map(str, MIN_TORCH))
    try:
        ok = torch_version_ok(str(version))
    except ValueError:
        raise AutotimmError(f"cannot tell which torch this is (torch.__version__ = {str(version)!r}); autotimm-deploy "
                            f"reads model files only with torch >= {need}") from None
    if not ok:
        raise AutotimmError(
            f"torch {version} is too old: torch.load(weights_only=True), which keeps model files from running code, "
            f"can be bypassed before torch {need} (CVE-2025-32434); install torch>={need}"
        )


#: Distributions whose versions shape the exported files (ONNX Runtime runs the FP16 overflow probes).
_TOOLCHAIN = (
    ("torch", ("torch",)),
    ("timm", ("timm",)),
    ("onnx", ("onnx",)),
    ("onnx_graphsurgeon", ("onnx-graphsurgeon", "onnx_graphsurgeon")),
    ("onnxruntime", ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino")),
    ("numpy", ("numpy",)),
)


def toolchain_versions() -> dict:
    """Versions of Python, autotimm-deploy and the libraries that shape an export (from package metadata,
    without importing them); a library that is not installed is ``None``.  Deterministic on one install."""
    import platform
    from importlib import metadata

    from . import __version__

    import torch

    out = {"autotimm_deploy": __version__, "python": platform.python_version()}
    for key, dists in _TOOLCHAIN:
        if key == "torch":  # the build tag (+cu130, +cpu) is only in torch.__version__
            out[key] = str(torch.__version__)
            continue
        out[key] = None
        for dist in dists:
            try:
                out[key] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out
