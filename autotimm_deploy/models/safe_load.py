"""Reading a torch archive without executing anything in it: the checks that need no unpickling, then
``torch.load(weights_only=True)``, and refusals that name the offending global or the damage.

Used for model files and AutoTimm (Lightning) checkpoints alike (:func:`.readers.load_model_file`).
"""

from __future__ import annotations

import io
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from ..errors import ModelFileError

__all__ = ["safe_torch_load"]

_MAX_LISTED = 8  # globals named in a refusal; a pickled whole module references dozens


def _pickle_globals(data: bytes) -> List[str]:
    """``module.name`` of every GLOBAL/INST/STACK_GLOBAL in a pickle, by disassembly (nothing is executed).

    A fallback for :func:`torch.serialization.get_unsafe_globals_in_checkpoint`, whose scanner gives up on
    opcodes ``torch.save`` never writes (hand-assembled payloads use exactly those).  STACK_GLOBAL's
    operands are the two strings pushed before it (directly or from the memo).
    """
    found: List[str] = []
    strings: List[Optional[str]] = []  # what each push put on the stack, where it was a string
    memo: Dict[int, Optional[str]] = {}
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", ".", 1))
            elif op.name == "STACK_GLOBAL":
                if len(strings) >= 2 and strings[-2] and strings[-1]:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                else:
                    found.append("<STACK_GLOBAL of a computed name>")
            elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(arg)] = strings[-1] if strings else None
            elif op.name == "MEMOIZE":
                memo[len(memo)] = strings[-1] if strings else None
            elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                strings.append(memo.get(int(arg)))
            else:
                strings.append(arg if isinstance(arg, str) and ("UNICODE" in op.name or "STRING" in op.name) else None)
    except Exception:  # truncated or malformed pickle: keep what was found before the damage
        pass
    return found


def _unsafe_globals(raw: bytes) -> List[str]:
    """The non-allowlisted globals a checkpoint references (torch's own scanner, else a disassembly)."""
    try:
        return sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(raw))))
    except Exception:
        pass
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            pkl = next((n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")), None)
            data = zf.read(pkl) if pkl else b""
    except (zipfile.BadZipFile, OSError, RuntimeError):
        return []
    try:
        from torch import _weights_only_unpickler as wou

        allowed = set(wou._get_allowed_globals()) | set(wou._get_user_allowed_globals())
    except Exception:  # private API moved: report every global the pickle names
        allowed = set()
    return sorted(set(_pickle_globals(data)) - allowed)


def _weights_only_reason(exc: BaseException) -> str:
    """The one line of a ``torch.load(weights_only=True)`` failure that names the problem.

    torch's own message starts with advice to re-run with ``weights_only=False``; never pass that on.
    """
    text = str(exc).strip()
    m = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if m:
        text = m.group(1)
    first = text.splitlines()[0].strip() if text else type(exc).__name__
    return first[:300]


def _looks_like_onnx(raw: bytes) -> bool:
    if raw[:1] != b"\x08":  # field 1 (ir_version), varint: every ONNX ModelProto starts like this
        return False
    try:
        import onnx

        m = onnx.ModelProto()
        m.ParseFromString(raw)
        return m.ir_version > 0 and len(m.graph.node) > 0
    except Exception:
        return False


def safe_torch_load(path: Path, raw: bytes) -> Any:
    """``torch.load(weights_only=True)`` of a torch zip archive's bytes, after the checks that need no
    unpickling (legacy formats, TorchScript, compressed or oversized members, damage); a refusal names
    the global or the problem.  Used for model files and for AutoTimm (Lightning) checkpoints alike."""
    if not zipfile.is_zipfile(io.BytesIO(raw)):
        if raw[:2] == b"\x80\x02" or raw[:1] == b"\x80":
            raise ModelFileError(
                f"{path}: legacy (non-zip) torch serialisation is not accepted; re-save the model with "
                "autotimm_deploy.save_model"
            )
        if len(raw) >= 262 and raw[257:262] == b"ustar":
            raise ModelFileError(
                f"{path}: legacy torch tar archive (written by torch < 0.4) is not accepted; load it once with the "
                "torch that wrote it, in a trusted environment, and re-save it with autotimm_deploy.save_model"
            )
        if raw[:4] == b"PK\x03\x04":
            raise ModelFileError(
                f"{path}: zip archive is truncated or damaged (no central directory at its end); "
                "copy or download the file again"
            )
        if _looks_like_onnx(raw):
            raise ModelFileError(
                f"{path}: this is an ONNX model, not a model file; autotimm-export takes the PyTorch model file "
                "written by autotimm_deploy.save_model (ONNX files are its output)"
            )
        raise ModelFileError(f"{path}: not a model file (not a torch zip archive nor safetensors)")
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
                raise ModelFileError(
                    f"{path}: this is a TorchScript archive, which holds code; autotimm-deploy only loads "
                    "model files written by autotimm_deploy.save_model"
                )
            # torch.save stores members uncompressed; a compressed one is foreign (and can be a zip bomb)
            packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
            if packed:
                raise ModelFileError(
                    f"{path}: archive member {packed[0]!r} is compressed, which torch.save never does; "
                    "refusing to decompress it (the file was not written by torch.save)"
                )
            declared = sum(i.file_size for i in infos)
            if declared > len(raw):
                raise ModelFileError(
                    f"{path}: archive members declare {declared} bytes, more than the file's {len(raw)} bytes "
                    "(damaged or forged archive)"
                )
            bad = zf.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, RuntimeError, EOFError) as exc:
        raise ModelFileError(f"{path}: damaged zip archive ({exc})") from None
    if bad is not None:
        raise ModelFileError(f"{path}: corrupt archive member {bad!r} (file damaged or truncated)")
    try:
        with warnings.catch_warnings():  # torch warns about unusual pickle protocols; the error says it all
            warnings.simplefilter("ignore")
            obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for unsafe globals, RuntimeError for storage errors
        unsafe = _unsafe_globals(raw)
        if not unsafe:
            m = re.search(r"GLOBAL (\S+) was not an allowed global", str(exc))
            unsafe = [m.group(1)] if m else []
        if unsafe:
            listed = ", ".join(unsafe[:_MAX_LISTED]) + (f" and {len(unsafe) - _MAX_LISTED} more"
                                                        if len(unsafe) > _MAX_LISTED else "")
            raise ModelFileError(
                f"{path}: refused to load: the file references code or objects that are not allowed "
                f"({listed}); model files and checkpoints may hold only tensors and plain data. "
                "Only load files you trust, and re-save them with autotimm_deploy.save_model."
            ) from None
        reason = _weights_only_reason(exc)
        if isinstance(exc, RuntimeError) and re.search(r"storage|record size|PytorchStreamReader", reason):
            raise ModelFileError(
                f"{path}: damaged tensor data (a tensor does not fit the bytes stored for it): {reason}"
            ) from None
        raise ModelFileError(f"{path}: could not read the model file safely: {reason}") from None
    return obj
