"""Serving: Triton Inference Server model repositories from an export (:mod:`.repository`), the Python-backend
steps they run (:mod:`.steps`, :mod:`.triton_model`), a local ``tritonserver`` (:mod:`.server`) and a client
(:mod:`.client`).  Needs the ``serve`` extra (``tritonclient``) only to validate configs and to talk to a server."""

from .._lazy import lazy_namespace

_EXPORTS = {
    **dict.fromkeys(["TritonOptions", "write_repository"], "repository"),
    **dict.fromkeys(["LocalTriton", "find_tritonserver"], "server"),
}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_namespace(__name__, _EXPORTS, globals())
