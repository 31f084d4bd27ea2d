"""Keys and shapes of a pickled torch archive (`.ckpt`, `.pt`, `.pth`, `.bin`), read
without torch and without running anything the file asks for.

Unpickling calls whatever globals the file names, so a pickle is code. This unpickler
admits only the globals a tensor archive needs (a subset of what
`torch.load(weights_only=True)` admits, so whatever passes here also loads there) and
substitutes small stand-ins for them: a tensor becomes a `TensorInfo`, a storage a
placeholder that remembers its dtype. Tensor data is never read: in the zip format only
`<archive>/data.pkl` is opened, in the legacy format the reading stops after the object
pickle, before the raw storages. Any other global is refused before it is called, naming
it (reason UNSAFE_PICKLE).
"""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from services.common.errors import EaselError, InvalidArgumentError
from services.model_manager.probe.safetensors_header import TensorInfo, corrupt

# torch dtype name -> safetensors dtype spelling, so both readers describe tensors alike.
_DTYPES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
    "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
}
# The legacy typed storage classes (`torch.HalfStorage`, ...) and the dtype each holds.
_STORAGE_DTYPES = {
    "DoubleStorage": "F64",
    "FloatStorage": "F32",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
}
# What `torch.save` writes first in its legacy (pre-1.6, non-zip) format.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


@dataclass(frozen=True, slots=True)
class _StorageType:
    """Stand-in for a storage class global; `dtype` is None for `UntypedStorage`."""

    dtype: str | None


@dataclass(frozen=True, slots=True)
class _Storage:
    """Stand-in for a storage the pickle refers to by persistent id; its bytes stay unread."""

    dtype: str | None


def _rebuild_tensor_v2(
    storage: _Storage, offset: int, size: tuple[int, ...], *_: Any
) -> TensorInfo:
    if storage.dtype is None:
        raise pickle.UnpicklingError("a v2 tensor on an untyped storage")
    return TensorInfo(dtype=storage.dtype, shape=tuple(size))


def _rebuild_tensor_v3(
    storage: _Storage, offset: int, size: tuple[int, ...], *rest: Any
) -> TensorInfo:
    # (..., stride, requires_grad, backward_hooks, dtype[, metadata])
    return TensorInfo(dtype=rest[3], shape=tuple(size))


def _encode(text: str, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for bytes, limited to str.encode."""
    return text.encode(encoding)


def _rebuild_parameter(data: TensorInfo, *_: Any) -> TensorInfo:
    return data


def _allowed_globals() -> dict[tuple[str, str], object]:
    allowed: dict[tuple[str, str], object] = {
        ("collections", "OrderedDict"): OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "bytearray"): bytearray,
        ("_codecs", "encode"): _encode,
        ("torch", "Size"): tuple,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch.storage", "UntypedStorage"): _StorageType(None),
    }
    allowed |= {("torch", name): dtype for name, dtype in _DTYPES.items()}
    allowed |= {("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()}
    return allowed


_ALLOWED = _allowed_globals()


class _TensorArchiveUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], path: Path) -> None:
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles (torch.save's default) spell `builtins` the Python 2 way.
        module = "builtins" if module == "__builtin__" else module
        try:
            return _ALLOWED[module, name]
        except KeyError:
            raise InvalidArgumentError(
                f"{self._path} is a pickle that references {module}.{name}, which a tensor "
                "archive never needs; refused as unsafe",
                reason="UNSAFE_PICKLE",
                metadata={"path": str(self._path), "global": f"{module}.{name}"},
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        # ("storage", storage type, key, location, numel[, view metadata])
        if not (isinstance(pid, tuple) and pid[:1] == ("storage",) and len(pid) >= 5):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        if not isinstance(pid[1], _StorageType):
            raise pickle.UnpicklingError("persistent id without a storage type")
        return _Storage(pid[1].dtype)


def scan_pickle(path: Path) -> object:
    """The object a torch archive holds, with every tensor replaced by its `TensorInfo`.

    Raises UNSAFE_PICKLE for a global outside the allowlist and MODEL_FILE_CORRUPT for a
    file that is neither a torch zip archive nor a readable pickle.
    """
    try:
        if zipfile.is_zipfile(path):
            return _scan_zip(path)
        with path.open("rb") as file:
            return _scan_legacy(lambda: _TensorArchiveUnpickler(file, path).load())
    except EaselError:
        raise
    except Exception as exc:  # hostile bytes can fail the unpickler in any way
        raise corrupt(path, f"cannot be read as a torch archive ({exc!r})") from exc


def _scan_zip(path: Path) -> object:
    with zipfile.ZipFile(path) as archive:
        # torch writes `<root>/data.pkl` (root: "archive" or the file's stem).
        names = archive.namelist()
        data_pkl = next((n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")), None)
        if data_pkl is None:
            raise corrupt(path, "a zip file without the data.pkl of a torch archive")
        with archive.open(data_pkl) as file:
            return _TensorArchiveUnpickler(file, path).load()


def _scan_legacy(load: Callable[[], object]) -> object:
    """Legacy torch files are four pickles (magic, protocol, system info, the object) then
    raw storages; anything else is a plain pickle whose first object is the content."""
    first = load()
    if first != _LEGACY_MAGIC:
        return first
    load()  # protocol version
    load()  # system info
    return load()
