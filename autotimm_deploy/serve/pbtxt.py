"""Triton ``config.pbtxt`` as data: a nested dict written in protobuf text format, and checked against Triton's own
``ModelConfig`` schema (``tritonclient``'s ``model_config_pb2``) where ``tritonclient`` is installed.

>>> print(to_pbtxt({"name": "m", "max_batch_size": 8, "input": [{"name": "x", "data_type": Enum("TYPE_FP32"),
...                 "dims": [3, -1]}], "parameters": {"step": "network"}}))
name: "m"
max_batch_size: 8
input [
  {
    name: "x"
    data_type: TYPE_FP32
    dims: [ 3, -1 ]
  }
]
parameters {
  key: "step"
  value { string_value: "network" }
}
"""

from __future__ import annotations

import json
from typing import Any, Dict, List

from ..errors import AutotimmError

__all__ = ["Enum", "to_pbtxt", "validate_config", "DTYPES"]

#: numpy dtype name -> Triton data type
DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
          "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL", "bytes": "TYPE_STRING"}


class Enum(str):
    """An enum value: written bare (``KIND_CPU``), not quoted."""


def _scalar(v: Any) -> str:
    if isinstance(v, Enum):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))


def _lines(obj: Dict[str, Any], indent: int) -> List[str]:
    pad = "  " * indent
    out: List[str] = []
    for key, value in obj.items():
        if value is None:
            continue
        if key == "parameters":  # map<string, ModelParameter>
            for k, v in value.items():
                out += [f"{pad}parameters {{", f"{pad}  key: {json.dumps(k)}",
                        f"{pad}  value {{ string_value: {json.dumps(str(v))} }}", f"{pad}}}"]
        elif key.startswith("#"):
            out += [f"{pad}# {line}" if line else f"{pad}#" for line in str(value).splitlines()]
        elif isinstance(value, dict):
            out += [f"{pad}{key} {{"] + _lines(value, indent + 1) + [f"{pad}}}"]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            out.append(f"{pad}{key} [")
            for i, item in enumerate(value):
                comma = "," if i < len(value) - 1 else ""
                if len(item) <= 2 and not any(isinstance(v, (dict, list)) for v in item.values()):  # map entries
                    out.append(f"{pad}  {{ {' '.join(f'{k}: {_scalar(v)}' for k, v in item.items())} }}{comma}")
                else:
                    out += [f"{pad}  {{"] + _lines(item, indent + 2) + [f"{pad}  }}{comma}"]
            out.append(f"{pad}]")
        elif isinstance(value, list):
            out.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            out.append(f"{pad}{key}: {_scalar(value)}")
    return out


def to_pbtxt(config: Dict[str, Any]) -> str:
    """``config`` in protobuf text format: dicts are messages, lists of dicts repeated messages, ``parameters`` the
    string map, keys starting with ``#`` comments, :class:`Enum` values bare."""
    return "\n".join(_lines(config, 0))


def validate_config(text: str, where: str = "config.pbtxt"):
    """``text`` parsed into Triton's ``ModelConfig`` message (an unknown field, a wrong type or a bad enum is an
    :class:`~autotimm_deploy.errors.AutotimmError`); ``None`` when ``tritonclient`` is not installed."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return None
    msg = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as exc:
        raise AutotimmError(f"{where}: not a valid Triton ModelConfig: {exc}") from None
    return msg
