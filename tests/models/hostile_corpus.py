"""A corpus of hostile and broken model files, generated at test time (no binary blobs in the repo).

``make_corpus(out_dir)`` writes every case into ``out_dir`` and returns a list of :class:`Case`:
the file to load, the substrings the one-line refusal must contain (the offending global, or the
problem), and for code-execution payloads the *canary* file the payload would create if it ever ran.

Every payload here is built from scratch by this script, deterministically (fixed seeds, no clock):
the pickles that would execute code are assembled from pickle opcodes or ``__reduce__`` and only ever
touch their canary file inside ``out_dir``.  ``Case.live`` marks payloads that really do fire under an
unsafe loader; tests use it as a positive control (the canary *does* appear under
``torch.load(weights_only=False)`` in a scratch folder), so "the canary never appears" means something.

Run it by hand to look at the files::

    .venv/bin/python tests/models/hostile_corpus.py /tmp/corpus
"""

from __future__ import annotations

import argparse
import builtins
import io
import json
import marshal
import os
import pickle
import struct
import sys
import tarfile
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch

from autotimm_deploy.models.classifier import ImageClassifier
from autotimm_deploy.models.io import FORMAT_NAME, FORMAT_VERSION, save_model

__all__ = ["Case", "make_corpus", "CASE_NAMES", "POSIX_ONLY", "NOT_BYTE_STABLE"]

#: Every case, in the order ``make_corpus`` writes them (tests parametrize over these names).
CASE_NAMES = (
    "reduce_os_system", "reduce_builtins_exec", "marshal_functiontype", "torchscript", "pickled_module",
    "numpy_globals", "argparse_namespace", "setstate_out_of_bounds", "legacy_pickle_format", "legacy_tar_format",
    "truncated_zip", "storage_size_mismatch", "zip_bomb_member", "wrong_architecture", "non_tensor_state",
    "config_checkpoint_path", "config_hf_hub_backbone", "config_pretrained_download", "config_giant_model",
    "empty_file", "random_bytes", "onnx_as_pt", "safetensors_bad_json", "safetensors_header_past_eof",
    "safetensors_truncated_data", "directory", "dev_zero_symlink", "fifo",
)
#: Cases that need a POSIX file system (symlink to /dev/zero, mkfifo).
POSIX_ONLY = ("dev_zero_symlink", "fifo")
#: ``torch.jit.save`` output differs between processes (its generated code is not byte-stable), and the
#: payloads that name their canary embed ``out_dir``: these are byte-identical only for the same ``out_dir``
#: within one process.
NOT_BYTE_STABLE = ("torchscript",)


@dataclass
class Case:
    """One hostile or broken model file."""

    name: str
    path: Path
    expect: Tuple[str, ...]  # substrings the refusal message must contain
    what: str  # one line: what the file is
    canary: Optional[Path] = None  # a file the payload would create if it were executed
    live: bool = False  # the payload fires under torch.load(weights_only=False) (positive control)
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- helpers

def _header(task: str = "classification") -> dict:
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "task": task,
            "config": {"backbone": "test_resnet", "num_classes": 2}, "metadata": {}}


def _small_classifier(backbone: str = "test_resnet") -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(backbone, num_classes=2).eval()


def _torch_bytes(obj, **kwargs) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kwargs)
    return buf.getvalue()


class _Reduce:
    """Pickles as ``func(*args)``; callable itself so it can be the *func* of an outer ``_Reduce``."""

    def __init__(self, func, args, state=None) -> None:
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)

    def __call__(self, *a):  # pickle insists that a reduce function is callable; never called here
        raise AssertionError("not meant to be called")


def _rewrite_zip(data: bytes, replace: Callable[[str, bytes], Optional[Tuple[bytes, int]]]) -> bytes:
    """Copy a torch zip archive member by member; ``replace(name, data)`` may return (new data, compress_type)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            body = src.read(info)
            new = replace(info.filename, body)
            ctype = zipfile.ZIP_STORED
            if new is not None:
                body, ctype = new
            zi = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            zi.compress_type = ctype
            dst.writestr(zi, body)
    return out.getvalue()


def _member(suffix: str) -> Callable[[str], bool]:
    return lambda name: name.endswith(suffix)


# pickle opcodes (protocol 3), for payloads that ``pickle`` itself will not write
_PROTO3, _STOP, _MARK, _EMPTY_DICT, _EMPTY_TUPLE = b"\x80\x03", b".", b"(", b"}", b")"
_TUPLE1, _TUPLE2, _REDUCE, _SETITEMS = b"\x85", b"\x86", b"R", b"u"


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _unicode(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _binbytes(b: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(b)) + b


def _marshal_payload_pickle(canary: Path) -> bytes:
    """``{'format': ..., 'payload': types.FunctionType(marshal.loads(<code>), {})()}`` as raw pickle opcodes.

    ``pickle`` cannot write this itself (``types.FunctionType`` is ``builtins.function``, which it
    cannot look up by name), which is exactly why attackers hand-assemble it.
    """
    code = compile(f"open({str(canary)!r}, 'w').close()", "<payload>", "exec")
    return b"".join([
        _PROTO3, _EMPTY_DICT, _MARK,
        _unicode("format"), _unicode(FORMAT_NAME),
        _unicode("payload"),
        _global("types", "FunctionType"),
        _global("marshal", "loads"), _binbytes(marshal.dumps(code)), _TUPLE1, _REDUCE,  # the code object
        _EMPTY_DICT, _TUPLE2, _REDUCE,  # a function with empty globals
        _EMPTY_TUPLE, _REDUCE,  # ... called
        _SETITEMS, _STOP,
    ])


def _legacy_tar_bytes() -> bytes:
    """The pre-0.4 ``torch.save`` tar layout: members sys_info, pickle, storages, tensors (pickles each)."""
    members = {
        "sys_info": pickle.dumps({"protocol_version": 1000, "little_endian": True,
                                  "type_sizes": {"short": 2, "int": 4, "long": 8}}, protocol=2),
        "pickle": pickle.dumps(_header(), protocol=2),
        "storages": pickle.dumps(0, protocol=2),
        "tensors": pickle.dumps(0, protocol=2),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(body), 0, 0o644
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def _onnx_bytes() -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    model = helper.make_model(graph, producer_name="hostile-corpus", opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _safetensors_with_header(valid: bytes, header: bytes, declared_len: Optional[int] = None) -> bytes:
    n = int.from_bytes(valid[:8], "little")
    body = valid[8 + n:]
    return struct.pack("<Q", len(header) if declared_len is None else declared_len) + header + body


# --------------------------------------------------------------------------------------------- the corpus

def make_corpus(out_dir: str | os.PathLike) -> List[Case]:
    """Write every case into ``out_dir`` (created) and return them; deterministic for a given ``out_dir``."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    cases: List[Case] = []

    def add(name: str, suffix: str, data: Optional[bytes], expect, what: str, **kw) -> Path:
        path = d / f"{name}{suffix}"
        if data is not None:
            path.write_bytes(data)
        cases.append(Case(name, path, tuple(expect), what, **kw))
        return path

    model = _small_classifier()
    valid_pt = _torch_bytes({**_header(), "config": dict(model.config), "metadata": {"class_names": ["a", "b"]},
                             "state_dict": {k: v.contiguous() for k, v in model.state_dict().items()}})
    st_path = save_model(model, d / "_valid.safetensors")
    valid_st = st_path.read_bytes()
    st_path.unlink()

    # 1. __reduce__ -> os.system("touch canary")
    canary = d / "CANARY_reduce_os_system"
    system = f"{os.system.__module__}.system"  # posix.system (nt.system on Windows)
    add("reduce_os_system", ".pt",
        _torch_bytes({**_header(), "payload": _Reduce(os.system, (f"touch '{canary}'",))}),
        [system, "refused to load"], "__reduce__ calling os.system to create a canary file",
        canary=canary, live=os.name == "posix")

    # 2. __reduce__ -> builtins.exec(source)
    canary = d / "CANARY_reduce_exec"
    add("reduce_builtins_exec", ".pt",
        _torch_bytes({**_header(), "payload": _Reduce(builtins.exec, (f"open({str(canary)!r}, 'w').close()",))}),
        ["builtins.exec", "refused to load"], "__reduce__ calling builtins.exec on Python source",
        canary=canary, live=True)

    # 3. marshal.loads + types.FunctionType, hand-assembled pickle inside a real torch zip archive
    canary = d / "CANARY_marshal"
    payload = _marshal_payload_pickle(canary)
    add("marshal_functiontype", ".pt",
        _rewrite_zip(_torch_bytes({}), lambda n, b: (payload, zipfile.ZIP_STORED) if n.endswith("/data.pkl") else None),
        ["marshal.loads", "types.FunctionType", "refused to load"],
        "code object via marshal.loads wrapped by types.FunctionType and called", canary=canary, live=True)

    # 4. a TorchScript archive (holds code)
    path = d / "torchscript.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    add("torchscript", ".pt", None, ["TorchScript"], "torch.jit.save of a scripted module")

    # 5. a whole pickled nn.Module (torch.save(model))
    add("pickled_module", ".pt", _torch_bytes(model), ["refused to load", "ImageClassifier"],
        "torch.save(model): the module's classes are pickled by reference")

    # 6. numpy objects (not allowlisted)
    add("numpy_globals", ".pt",
        _torch_bytes({**_header(), "stats": np.arange(3, dtype=np.float32), "dtype": np.dtype("float32")}),
        ["refused to load", "numpy"], "numpy ndarray and dtype objects next to the state dict")

    # 7. argparse.Namespace (what many training scripts store as 'args'/'hparams')
    add("argparse_namespace", ".pt",
        _torch_bytes({**_header(), "args": argparse.Namespace(lr=0.1, epochs=3)}),
        ["refused to load", "argparse.Namespace"], "argparse.Namespace hyper-parameters")

    # 8. BUILD (__setstate__) on a tensor: Tensor.set_ to a size far beyond its storage (out-of-bounds read)
    store = torch.zeros(4).untyped_storage()
    evil = _Reduce(torch._utils._rebuild_tensor_v2, (store, 0, (4,), (1,), False, OrderedDict()),
                   state=(store, 0, (1 << 40,), (1,)))
    add("setstate_out_of_bounds", ".pt", _torch_bytes({**_header(), "state_dict": {"w": evil}}),
        ["damaged tensor data", "storage"], "BUILD opcode calling Tensor.set_ with a size beyond the storage (memory disclosure)")

    # 9. legacy (non-zip) torch serialisation
    add("legacy_pickle_format", ".pt", _torch_bytes(_header(), _use_new_zipfile_serialization=False),
        ["legacy"], "torch.save(..., _use_new_zipfile_serialization=False)")

    # 10. the real pre-0.4 tar format
    add("legacy_tar_format", ".pt", _legacy_tar_bytes(), ["legacy", "tar"],
        "pre-0.4 torch tar archive (sys_info/pickle/storages/tensors)")

    # 11. a valid model file cut at 60%
    add("truncated_zip", ".pt", valid_pt[: int(len(valid_pt) * 0.6)], ["truncated"],
        "a valid .pt model file cut at 60% of its length")

    # 12. a tensor storage shorter than the pickle says
    add("storage_size_mismatch", ".pt",
        _rewrite_zip(valid_pt, lambda n, b: (b[: len(b) // 2], zipfile.ZIP_STORED) if n.endswith("/data/0") else None),
        ["damaged tensor data", "record size"], "archive member data/0 holds half the bytes its tensor needs")

    # 13. a compressed (zip-bomb-like) storage: 64 MiB of zeros in a few dozen KiB
    add("zip_bomb_member", ".pt",
        _rewrite_zip(valid_pt, lambda n, b: (bytes(64 << 20), zipfile.ZIP_DEFLATED) if n.endswith("/data/0") else None),
        ["compressed", "data/0"], "archive member data/0 deflate-compressed to 1/1000 of 64 MiB")

    # 14. a valid file whose state dict is for another architecture than its config
    other = _small_classifier("test_efficientnet")
    add("wrong_architecture", ".pt",
        _torch_bytes({**_header(), "config": dict(model.config),
                      "state_dict": {k: v.contiguous() for k, v in other.state_dict().items()}}),
        ["state dict does not match its config", "test_resnet"], "test_efficientnet weights under a test_resnet config")

    # 15. a state dict value that is not a tensor
    bad_state = {k: v.contiguous() for k, v in model.state_dict().items()}
    first = next(iter(bad_state))
    bad_state[first] = [1.0, 2.0]
    add("non_tensor_state", ".pt", _torch_bytes({**_header(), "config": dict(model.config), "state_dict": bad_state}),
        ["not a tensor", first], "a state dict entry that is a list, not a tensor")

    # 15b-e. configs that would reach outside the file, or allocate without bound, while the model is built
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    add("config_checkpoint_path", ".pt",
        _torch_bytes({**_header(), "config": {**model.config, "backbone_kwargs": {"checkpoint_path": "/etc/passwd"}},
                      "state_dict": state}),
        ["checkpoint_path"], "backbone_kwargs telling timm to torch.load another file")
    add("config_hf_hub_backbone", ".pt",
        _torch_bytes({**_header(), "config": {**model.config, "backbone": "hf-hub:attacker/model"},
                      "state_dict": state}),
        ["unknown timm backbone", "hf-hub:attacker/model"], "a backbone name that timm would fetch from the Hub")
    add("config_pretrained_download", ".pt",
        _torch_bytes({**_header(), "config": {**model.config, "pretrained_backbone": True, "num_classes": 3},
                      "state_dict": state}),
        ["state dict does not match its config", "wrong shape"],
        "pretrained_backbone=True (a download) in an otherwise broken file: refused without any network access")
    add("config_giant_model", ".pt",
        _torch_bytes({**_header(), "config": {**model.config, "num_classes": 10 ** 11}, "state_dict": state}),
        ["state dict does not match its config", "100000000000"],
        "num_classes=1e11: a 10^13-parameter head if it were ever allocated")

    # 16. empty file
    add("empty_file", ".pt", b"", ["file is empty"], "zero bytes")

    # 17. random bytes
    add("random_bytes", ".pt", np.random.default_rng(0).bytes(4096), ["not a model file"], "4 KiB of random bytes")

    # 18. an ONNX file named .pt
    add("onnx_as_pt", ".pt", _onnx_bytes(), ["ONNX"], "an ONNX model saved under a .pt name")

    # 19. safetensors: header is not valid JSON
    n = int.from_bytes(valid_st[:8], "little")
    header = bytearray(valid_st[8:8 + n])
    header[len(header) // 2] = ord("\x00")
    add("safetensors_bad_json", ".safetensors", _safetensors_with_header(valid_st, bytes(header)),
        ["corrupt safetensors", "JSON"], "safetensors header with a NUL byte in the middle of its JSON")

    # 20. safetensors: header length points past the end of the file
    add("safetensors_header_past_eof", ".safetensors",
        _safetensors_with_header(valid_st, bytes(valid_st[8:8 + n]), declared_len=1 << 40),
        ["corrupt safetensors", "header length"], "safetensors header length field of 1 TiB")

    # 21. safetensors: tensor offsets past the end of the data
    add("safetensors_truncated_data", ".safetensors", valid_st[: 8 + n + (len(valid_st) - 8 - n) // 2],
        ["corrupt safetensors"], "a valid safetensors file with half of its tensor data cut off")

    # 22. a directory where a file should be
    path = d / "directory.pt"
    path.mkdir()
    add("directory", ".pt", None, ["is a directory"], "a directory named like a model file")

    if os.name == "posix":
        # 23. a symlink to /dev/zero: reading it would never end
        path = d / "dev_zero_symlink.pt"
        path.symlink_to("/dev/zero")
        add("dev_zero_symlink", ".pt", None, ["not a regular file"], "a symlink to /dev/zero (an endless read)")
        # 24. a FIFO: opening it would block forever
        path = d / "fifo.pt"
        os.mkfifo(path)
        add("fifo", ".pt", None, ["not a regular file"], "a named pipe (opening it blocks)")

    expected = [n for n in CASE_NAMES if os.name == "posix" or n not in POSIX_ONLY]
    assert [c.name for c in cases] == expected, "CASE_NAMES is out of date"
    return cases


if __name__ == "__main__":  # pragma: no cover - a manual tool
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "hostile_corpus")
    for c in make_corpus(out):
        print(f"{c.name:28} {c.path.name:36} {c.what}")
    print(json.dumps({"written": str(out)}))
