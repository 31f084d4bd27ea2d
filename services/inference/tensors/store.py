"""Named tensors in memory under a byte budget, spilled to disk past it.

Building blocks (EncodePrompt, CreateNoise, DenoiseLatents, EncodeImage) leave their
results here and later generations take them by name, so tensors never cross the wire.

Memory is bounded: while the tensors in memory take more than the budget, the least
recently used one that no queued or running generation references (`pin`) is written to
disk and dropped from memory; using it again reads it back. A single tensor larger than
the whole budget is refused (RESOURCE_EXHAUSTED), so no one tensor can grow the process
without bound; only pinned tensors may together exceed the budget, and pins last no
longer than the generations holding them.

Spilled tensors live in `<root>/tensors/<process>/` as safetensors files (plain data,
no pickle), one folder per process, held by an advisory lock on its `.lock` file. The
store is not persistent: at start-up every folder whose lock no live process holds is
deleted, and `close` deletes the process's own.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import structlog
import torch
from safetensors.torch import load_file, save_file

from services.common.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)

log = structlog.get_logger(__name__)

SPILL_DIR = "tensors"
_LOCK_FILE = ".lock"


class TensorKind(StrEnum):
    """What a stored tensor holds."""

    LATENTS = "latents"
    CONDITIONING = "conditioning"
    NOISE = "noise"
    IMAGE = "image"


@dataclass(frozen=True)
class TensorInfo:
    """What clients see of a stored tensor; its shape and dtype are the first part's."""

    name: str
    kind: TensorKind
    shape: tuple[int, ...]
    dtype: str
    size_bytes: int
    create_time: datetime
    generation_id: str
    session_id: str
    seed: int | None = None
    """The seed noise was drawn from (noise only): stochastic schedulers continue it."""


@dataclass(frozen=True)
class StoredTensor:
    info: TensorInfo
    parts: Mapping[str, torch.Tensor]


@dataclass
class _Entry:
    info: TensorInfo
    parts: dict[str, torch.Tensor] | None  # None while spilled
    spill_file: Path | None = None  # written once; tensors never change
    pins: int = 0


def _own_memory(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU tensor owning exactly its bytes (a view would keep its whole base
    alive, uncounted)."""
    tensor = tensor.detach().to("cpu")
    if not tensor.is_contiguous() or tensor.untyped_storage().nbytes() != tensor.nbytes:
        tensor = tensor.clone(memory_format=torch.contiguous_format)
    return tensor


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class TensorStore:
    """Tensors by name under `budget_bytes` of memory; spills under `root/tensors/`."""

    def __init__(self, root: Path, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._lock = threading.RLock()
        self._resident_bytes = 0
        spill_root = root / SPILL_DIR
        spill_root.mkdir(parents=True, exist_ok=True)
        _delete_abandoned(spill_root)
        self._spill_dir, self._lock_fd = _claim_folder(spill_root)

    # --- reading ----------------------------------------------------------------------

    def info(self, name: str) -> TensorInfo:
        with self._lock:
            return self._entry(name).info

    def get(self, name: str) -> StoredTensor:
        """The tensor's parts, read back from disk if it was spilled; marks it used."""
        with self._lock:
            entry = self._entry(name)
            self._entries.move_to_end(name)
            parts = entry.parts
            if parts is None:
                assert entry.spill_file is not None
                parts = entry.parts = load_file(entry.spill_file)
                self._resident_bytes += entry.info.size_bytes
                self._make_room()
            return StoredTensor(entry.info, dict(parts))

    def list(self, kind: TensorKind | None = None, session_id: str = "") -> list[TensorInfo]:
        """Tensors newest first, optionally of one kind and one session."""
        with self._lock:
            infos = [entry.info for entry in self._entries.values()]
        return sorted(
            (
                info
                for info in infos
                if (kind is None or info.kind is kind)
                and (not session_id or info.session_id == session_id)
            ),
            key=lambda info: info.create_time,
            reverse=True,
        )

    def is_resident(self, name: str) -> bool:
        with self._lock:
            return self._entry(name).parts is not None

    @property
    def resident_bytes(self) -> int:
        """Bytes of the tensors now in memory."""
        with self._lock:
            return self._resident_bytes

    # --- writing ----------------------------------------------------------------------

    def put(
        self,
        parts: Mapping[str, torch.Tensor],
        *,
        kind: TensorKind,
        generation_id: str,
        session_id: str = "",
        seed: int | None = None,
    ) -> TensorInfo:
        """Store a new tensor (its parts, main one first) under a fresh name."""
        owned = {key: _own_memory(tensor) for key, tensor in parts.items()}
        main = next(iter(owned.values()))
        size = sum(tensor.nbytes for tensor in owned.values())
        if size > self.budget_bytes:
            raise ResourceExhaustedError(
                f"a tensor of {size} bytes exceeds the tensor store's whole budget "
                f"({self.budget_bytes} bytes, setting tensor_store_bytes)",
                reason="TENSOR_TOO_LARGE",
                metadata={"size_bytes": str(size), "budget_bytes": str(self.budget_bytes)},
            )
        info = TensorInfo(
            name=str(uuid.uuid4()),
            kind=kind,
            shape=tuple(main.shape),
            dtype=_dtype_name(main.dtype),
            size_bytes=size,
            create_time=datetime.now(UTC),
            generation_id=generation_id,
            session_id=session_id,
            seed=seed,
        )
        with self._lock:
            self._entries[info.name] = _Entry(info=info, parts=owned)
            self._resident_bytes += size
            self._make_room()
        return info

    def delete(self, name: str) -> int:
        """Remove a tensor; the bytes it took. A pinned tensor is FAILED_PRECONDITION."""
        with self._lock:
            entry = self._entry(name)
            if entry.pins:
                raise FailedPreconditionError(
                    f"tensor {name} is an input of a queued or running generation",
                    reason="TENSOR_IN_USE",
                    metadata={"name": name},
                )
            del self._entries[name]
            if entry.parts is not None:
                self._resident_bytes -= entry.info.size_bytes
            if entry.spill_file is not None:
                entry.spill_file.unlink(missing_ok=True)
            return entry.info.size_bytes

    # --- pins -------------------------------------------------------------------------

    def pin(self, names: Iterable[str]) -> None:
        """Keep these tensors in memory and undeletable until `unpin`; all or none (an
        unknown name is NOT_FOUND and pins nothing)."""
        names = list(names)
        with self._lock:
            entries = [self._entry(name) for name in names]
            for entry in entries:
                entry.pins += 1

    def unpin(self, names: Iterable[str]) -> None:
        with self._lock:
            for name in names:
                entry = self._entries.get(name)
                if entry is not None and entry.pins:
                    entry.pins -= 1
            self._make_room()

    # --- life -------------------------------------------------------------------------

    def close(self) -> None:
        """Delete this process's spill folder; the store is empty afterwards."""
        with self._lock:
            self._entries.clear()
            self._resident_bytes = 0
            shutil.rmtree(self._spill_dir, ignore_errors=True)
            os.close(self._lock_fd)

    # --- inside -----------------------------------------------------------------------

    def _entry(self, name: str) -> _Entry:
        if not name:
            raise InvalidArgumentError("a tensor name is required", field="name")
        entry = self._entries.get(name)
        if entry is None:
            raise NotFoundError(
                f"no tensor is named {name}",
                reason="TENSOR_NOT_FOUND",
                metadata={"name": name},
            )
        return entry

    def _make_room(self) -> None:
        """Spill least recently used unpinned tensors until the budget holds."""
        for name, entry in list(self._entries.items()):
            if self._resident_bytes <= self.budget_bytes:
                return
            if entry.parts is None or entry.pins:
                continue
            if entry.spill_file is None:
                entry.spill_file = self._write(name, entry.parts)
            entry.parts = None
            self._resident_bytes -= entry.info.size_bytes
            log.debug("tensor spilled", name=name, size_bytes=entry.info.size_bytes)

    def _write(self, name: str, parts: Mapping[str, torch.Tensor]) -> Path:
        path = self._spill_dir / f"{name}.safetensors"
        partial = path.with_suffix(".partial")
        save_file(dict(parts), str(partial))
        partial.replace(path)
        return path


def _try_lock(path: Path) -> int | None:
    """An open descriptor holding the exclusive lock on `path`, or None if a live process
    holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _delete_abandoned(spill_root: Path) -> None:
    """Delete the spill folders of processes that are gone (their lock is free)."""
    for folder in spill_root.iterdir():
        if not folder.is_dir():
            continue
        lock_path = folder / _LOCK_FILE
        fd = None
        if lock_path.exists():
            fd = _try_lock(lock_path)
            if fd is None:
                continue  # a live process's folder
        elif folder.name.startswith("."):
            continue  # being claimed by a process starting now
        shutil.rmtree(folder, ignore_errors=True)
        if fd is not None:
            os.close(fd)
        log.info("deleted spilled tensors of an earlier process", folder=str(folder))


def _claim_folder(spill_root: Path) -> tuple[Path, int]:
    """A fresh folder of this process with its lock held. The lock is taken before the
    folder can be seen as abandoned: a folder is made under a temporary name, locked,
    then renamed into place."""
    while True:
        name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        staging = spill_root / f".{name}"
        staging.mkdir()
        fd = _try_lock(staging / _LOCK_FILE)
        if fd is None:  # cannot happen for a fresh private folder; try another name
            shutil.rmtree(staging, ignore_errors=True)
            continue
        folder = spill_root / name
        staging.rename(folder)
        return folder, fd
