"""The header of a `.safetensors` file: every tensor's name, dtype and shape, read without
touching the tensor data.

A safetensors file is an 8-byte little-endian header length, that many bytes of JSON, then
the raw tensor bytes. Probing needs only the JSON, so the cost is the same for a 1 MiB and
a 20 GiB file. The lengths in the header are checked against the file size, so a truncated
download is reported as corrupt here rather than when a loader trips over it.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import InvalidArgumentError

# The safetensors reference implementation refuses headers above 100 MB; so do we, before
# allocating anything a hostile length field asks for.
MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """What a probe needs to know about one tensor: its dtype (safetensors spelling, e.g.
    "F16") and shape."""

    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class SafetensorsHeader:
    """A parsed header: tensors by name and the free-form string `__metadata__`."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]


def corrupt(path: Path, why: str) -> InvalidArgumentError:
    """The MODEL_FILE_CORRUPT error for a weight file that is not what its format claims."""
    return InvalidArgumentError(
        f"{path} is not a readable model file: {why}",
        reason="MODEL_FILE_CORRUPT",
        metadata={"path": str(path)},
    )


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """Read and validate the header of the safetensors file at `path`.

    Raises MODEL_FILE_CORRUPT when the header is malformed or names bytes past the end of
    the file (a truncated file).
    """
    with path.open("rb") as file:
        file_size = path.stat().st_size
        prefix = file.read(8)
        if len(prefix) < 8:
            raise corrupt(path, "shorter than a safetensors header")
        (header_size,) = struct.unpack("<Q", prefix)
        if header_size > MAX_HEADER_BYTES or 8 + header_size > file_size:
            raise corrupt(path, f"header length {header_size} exceeds the file ({file_size} B)")
        raw = file.read(header_size)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise corrupt(path, "header is not JSON") from exc
    if not isinstance(header, dict):
        raise corrupt(path, "header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise corrupt(path, "__metadata__ is not an object")
    data_size = file_size - 8 - header_size
    tensors = {name: _tensor_info(path, name, entry, data_size) for name, entry in header.items()}
    return SafetensorsHeader(tensors=tensors, metadata={k: str(v) for k, v in metadata.items()})


def _tensor_info(path: Path, name: str, entry: object, data_size: int) -> TensorInfo:
    try:
        dtype = entry["dtype"]  # type: ignore[index]
        shape = tuple(int(dim) for dim in entry["shape"])  # type: ignore[index]
        begin, end = (int(offset) for offset in entry["data_offsets"])  # type: ignore[index]
    except (TypeError, KeyError, ValueError) as exc:
        raise corrupt(path, f"tensor {name!r} has a malformed entry") from exc
    if not isinstance(dtype, str) or any(dim < 0 for dim in shape):
        raise corrupt(path, f"tensor {name!r} has a malformed entry")
    if not 0 <= begin <= end <= data_size:
        raise corrupt(path, f"tensor {name!r} lies past the end of the file (truncated?)")
    return TensorInfo(dtype=dtype, shape=shape)
