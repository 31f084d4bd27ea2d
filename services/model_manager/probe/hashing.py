"""Content hashes of model files and folders, as "blake3:<hex>".

BLAKE3 is a tree hash: with `max_threads=AUTO` it hashes one file on every core, and
`update_mmap` feeds it straight from the page cache without copying through Python, so
hashing runs at about the speed of reading (reference/model-facts.md, "Hashing").

A folder's hash covers its weight files only (configs and READMEs are edited freely
without the weights changing): the BLAKE3 of the 32-byte digests of those files, taken in
sorted relative-path order, so the hash does not depend on the order the file system lists
them in.
"""

from __future__ import annotations

import os
from pathlib import Path

from blake3 import blake3

from services.common.errors import FailedPreconditionError
from services.common.model_taxonomy import HashAlgorithm

WEIGHT_SUFFIXES = frozenset(
    {".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".onnx", ".msgpack", ".gguf"}
)


def hash_model(path: Path) -> str:
    """The content hash of the model file or folder at `path`, with its algorithm prefix.

    Raises FAILED_PRECONDITION (MODEL_FILES_MISSING) when nothing is at `path`.
    """
    if path.is_dir():
        combined = blake3()
        for file in weight_files(path):
            combined.update(_file_digest(file))
        digest = combined.hexdigest()
    elif path.is_file():
        digest = _file_digest(path).hex()
    else:
        raise FailedPreconditionError(
            f"no model at {path}", reason="MODEL_FILES_MISSING", metadata={"path": str(path)}
        )
    return f"{HashAlgorithm.BLAKE3}:{digest}"


def weight_files(folder: Path) -> list[Path]:
    """The weight files below `folder` in sorted relative-path order (symlinked folders are
    not followed, so a link cannot pull outside files into the hash)."""
    found = [
        Path(root, name).relative_to(folder)
        for root, _dirs, names in os.walk(folder)
        for name in names
        if Path(name).suffix.lower() in WEIGHT_SUFFIXES
    ]
    return [folder / relative for relative in sorted(found, key=lambda p: p.as_posix())]


def _file_digest(path: Path) -> bytes:
    hasher = blake3(max_threads=blake3.AUTO)
    hasher.update_mmap(path)
    return hasher.digest()
