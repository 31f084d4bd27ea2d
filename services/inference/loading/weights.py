"""Reading weight files safely, and measuring weights before and after they are loaded.

Pickled formats (`.ckpt`, `.pt`, `.pth`, `.bin`) go through `torch.load(weights_only=True)`,
which refuses to build anything but tensors and plain containers: never a full unpickle.
The safetensors header says every tensor's dtype and shape, so what a model will take in
memory is known before a byte of it is read; the model cache uses that to refuse a model
that cannot fit instead of running out of memory while loading it.
"""

from __future__ import annotations

import json
import pickle
import re
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from services.common.errors import FailedPreconditionError

SAFETENSORS = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
WEIGHT_SUFFIXES = (SAFETENSORS, *PICKLE_SUFFIXES)
UNREADABLE = "MODEL_UNREADABLE"
FILES_MISSING = "MODEL_FILES_MISSING"

_FLOAT_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
_OTHER_DTYPES = {"I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1}
_SHARD = re.compile(r"-\d{5}-of-\d{5}$")
# Keys training checkpoints keep their weights under, preferred first.
_WRAPPERS = ("state_dict", "params_ema", "params")
# What a damaged file or a pickle that weights_only refuses raises while being read.
_UNREADABLE_ERRORS = (
    OSError,
    RuntimeError,
    ValueError,
    EOFError,
    pickle.UnpicklingError,
    SafetensorError,
)


def unreadable(path: Path, why: object) -> FailedPreconditionError:
    return FailedPreconditionError(
        f"cannot read model file {path}: {why}", reason=UNREADABLE, metadata={"path": str(path)}
    )


def files_missing(path: Path) -> FailedPreconditionError:
    return FailedPreconditionError(
        f"model files missing on disk: {path}", reason=FILES_MISSING, metadata={"path": str(path)}
    )


def read_state_dict(path: Path, prefixes: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """The tensors of a weight file, on the CPU; only keys starting with one of `prefixes`
    when given (a safetensors file then reads nothing else).

    A pickled checkpoint's tensors may sit under a "state_dict" key (training checkpoints)
    or "params_ema" / "params" (Real-ESRGAN's); what `torch.load(weights_only=True)`
    refuses is MODEL_UNREADABLE.
    """
    wanted = tuple(prefixes)
    if not path.is_file():
        raise files_missing(path)
    try:
        if path.suffix == SAFETENSORS:
            with safe_open(str(path), framework="pt", device="cpu") as file:
                return {
                    key: file.get_tensor(key)
                    for key in file.keys()  # noqa: SIM118 - safe_open is no mapping
                    if not wanted or key.startswith(wanted)
                }
        content = _torch_load(path)
    except _UNREADABLE_ERRORS as error:
        raise unreadable(path, error) from error
    while isinstance(content, Mapping):
        wrapped = next((content[k] for k in _WRAPPERS if isinstance(content.get(k), Mapping)), None)
        if wrapped is None:
            break
        content = wrapped
    if not isinstance(content, Mapping):
        raise unreadable(path, "it holds no mapping of tensors")
    return {
        key: value
        for key, value in content.items()
        if isinstance(value, torch.Tensor) and (not wanted or key.startswith(wanted))
    }


def read_pickled(path: Path) -> Any:
    """Whatever a pickled file holds, restricted to tensors and plain containers."""
    if not path.is_file():
        raise files_missing(path)
    try:
        return _torch_load(path)
    except _UNREADABLE_ERRORS as error:
        raise unreadable(path, error) from error


def _torch_load(path: Path) -> Any:
    # mmap maps a zip-format file's storages instead of reading them all; the legacy
    # (pre-1.6) format cannot be mapped and is read whole.
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def safetensors_header(path: Path) -> dict[str, Any]:
    """The tensor table of a safetensors file (name -> dtype, shape, offsets)."""
    try:
        with path.open("rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(length))
    except (OSError, struct.error, ValueError) as error:
        raise unreadable(path, error) from error
    header.pop("__metadata__", None)
    return header


def estimated_bytes(files: Iterable[Path], dtype: torch.dtype, prefixes: Iterable[str] = ()) -> int:
    """What the weights in `files` (only keys starting with one of `prefixes`, when given)
    will take once loaded as `dtype`: floating tensors take `dtype`, the rest keep theirs.
    Exact for safetensors; a pickled file counts its size on disk."""
    wanted = tuple(prefixes)
    itemsize = torch.empty((), dtype=dtype).element_size()
    total = 0
    for path in files:
        if path.suffix != SAFETENSORS:
            total += path.stat().st_size if path.is_file() else 0
            continue
        for key, entry in safetensors_header(path).items():
            if wanted and not key.startswith(wanted):
                continue
            count = 1
            for dim in entry["shape"]:
                count *= dim
            stored = entry["dtype"]
            total += count * (itemsize if stored in _FLOAT_DTYPES else _OTHER_DTYPES.get(stored, 4))
    return total


def tensor_bytes(model: Any) -> int:
    """Bytes the tensors of a loaded model take: a module's parameters and buffers, or the
    tensors of a mapping (LoRA, embedding); 0 for what has none (tokenizer, scheduler)."""
    if isinstance(model, torch.nn.Module):
        tensors = [*model.parameters(), *model.buffers()]
    elif isinstance(model, Mapping):
        tensors = [value for value in model.values() if isinstance(value, torch.Tensor)]
    elif hasattr(model, "tensors"):
        return tensor_bytes(model.tensors)
    else:
        return 0
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def file_variant(path: Path) -> str | None:
    """The variant label of a diffusers weight file: "fp16" for
    `diffusion_pytorch_model.fp16.safetensors` (shards too), None for the unlabelled file."""
    stem = _SHARD.sub("", path.name.removesuffix(path.suffix))
    parts = stem.split(".")
    return parts[-1] if len(parts) > 1 else None


def choose_variant(folder: Path, preferred: str | None) -> str | None:
    """Which weight files of a diffusers folder to load: the preferred variant where the
    folder has it, else the unlabelled files, else whichever variant it has.

    A folder may hold fp16 files for some parts only; each part is decided on its own.
    """
    present = {file_variant(path) for path in weight_files(folder)}
    if preferred in present:
        return preferred
    if None in present or not present:
        return None
    return sorted(present)[0]


def variant_files(folder: Path, variant: str | None) -> list[Path]:
    """The weight files of `variant` in a diffusers folder, safetensors preferred."""
    files = [path for path in weight_files(folder) if file_variant(path) == variant]
    safetensors = [path for path in files if path.suffix == SAFETENSORS]
    return safetensors or files
