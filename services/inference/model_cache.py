"""The model cache: loaded models in RAM within a byte budget, moved to the execution
device while work uses them.

Every entry is one model, or one part of a main model, keyed by (model key, part). The
RAM budget bounds the weights of all entries together, wherever they sit, so any entry can
always go back to RAM; past it the least recently used unlocked entries are evicted. A
model bigger than the whole budget, or than what locked entries leave, is refused with
RESOURCE_EXHAUSTED (OUT_OF_MEMORY) before it is read where its size is known beforehand,
and after measuring it otherwise: never an out-of-memory crash.

Work locks the entries it uses (`ModelCache.lock`, a context manager that returns the
model itself). A locked entry is on the execution device and is never evicted, unloaded
or moved. When the last lock goes, the entry stays on the device while unlocked resident
weights fit the VRAM budget; beyond it the least recently used go back to RAM, and they
also make way when a lock needs room on the device. On the CPU the execution device is
RAM itself and nothing moves.

Thread-safe: loads run in worker threads and work locks from its own thread.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import torch

from services.common.errors import (
    FailedPreconditionError,
    NotFoundError,
    ResourceExhaustedError,
)
from services.common.model_taxonomy import SubModelType
from services.inference.model_records import ModelRecord

log = structlog.get_logger(__name__)

OUT_OF_MEMORY = "OUT_OF_MEMORY"
CacheKey = tuple[str, SubModelType | None]


@dataclass(eq=False)
class CacheEntry:
    """One cached model (or part). `model` is the object work uses: a diffusers or
    transformers module, a tokenizer, a scheduler config dict, LoRA or embedding weights,
    an upscaler module."""

    record: ModelRecord
    submodel: SubModelType | None
    model: Any
    path: Path
    size_bytes: int
    dtype: torch.dtype | None
    device: str = "cpu"
    locks: int = 0
    last_used: float = field(default_factory=time.time)

    @property
    def key(self) -> CacheKey:
        return (self.record.key, self.submodel)

    @property
    def movable(self) -> bool:
        return isinstance(self.model, torch.nn.Module)


@dataclass(frozen=True)
class CacheStats:
    ram_used_bytes: int
    ram_limit_bytes: int
    vram_used_bytes: int
    vram_limit_bytes: int
    hits: int
    misses: int
    evictions: int
    loaded_model_count: int
    locked_model_count: int
    execution_device: str


@dataclass(frozen=True)
class Removed:
    """What an unload or clear removed, and what it left because it was locked."""

    count: int
    freed_bytes: int
    locked_count: int = 0


class ModelCache:
    """Cached models by (key, part), least recently used first.

    `execution_device` is where work runs ("cpu" or "cuda:N"); `vram_limit_bytes` only
    matters on CUDA.
    """

    def __init__(self, ram_limit_bytes: int, vram_limit_bytes: int, execution_device: str):
        self.ram_limit_bytes = ram_limit_bytes
        self.execution_device = execution_device
        self.on_cuda = execution_device.startswith("cuda")
        self.vram_limit_bytes = vram_limit_bytes if self.on_cuda else 0
        self._entries: OrderedDict[CacheKey, CacheEntry] = OrderedDict()
        self._mutex = threading.RLock()
        self._hits = self._misses = self._evictions = 0

    # --- lookup and admission ----------------------------------------------------------

    def get(self, key: str, submodel: SubModelType | None) -> CacheEntry | None:
        """The entry, marked most recently used and counted as a hit; None (a miss) when
        it is not cached."""
        with self._mutex:
            entry = self._entries.get((key, submodel))
            if entry is None:
                self._misses += 1
                return None
            self._hits += 1
            self._touch(entry)
            return entry

    def reserve(self, size_bytes: int, what: str) -> None:
        """Make room for `size_bytes` more, evicting least recently used unlocked entries;
        OUT_OF_MEMORY when even evicting all of them would not do."""
        with self._mutex:
            if size_bytes > self.ram_limit_bytes:
                raise _out_of_memory(
                    f"{what} needs {size_bytes} bytes, more than the whole model cache "
                    f"({self.ram_limit_bytes} bytes, setting model_cache_ram_bytes)",
                    size_bytes,
                    self.ram_limit_bytes,
                )
            locked = sum(e.size_bytes for e in self._entries.values() if e.locks)
            if locked + size_bytes > self.ram_limit_bytes:
                raise _out_of_memory(
                    f"{what} needs {size_bytes} bytes; locked models hold {locked} of the "
                    f"model cache's {self.ram_limit_bytes} bytes",
                    size_bytes,
                    self.ram_limit_bytes,
                )
            for entry in list(self._entries.values()):
                if self._used() + size_bytes <= self.ram_limit_bytes:
                    break
                if not entry.locks:
                    self._remove(entry)
                    self._evictions += 1
                    log.info("model evicted", key=entry.record.key, submodel=entry.submodel)

    def put(self, entry: CacheEntry) -> CacheEntry:
        """Admit a loaded entry (making room for it); an entry already cached under the
        same key (a concurrent load) is kept and returned instead."""
        with self._mutex:
            existing = self._entries.get(entry.key)
            if existing is not None:
                self._touch(existing)
                return existing
            self.reserve(entry.size_bytes, _describe(entry.key))
            self._entries[entry.key] = entry
            self._touch(entry)
            return entry

    # --- locking -----------------------------------------------------------------------

    @contextmanager
    def lock(self, entry: CacheEntry) -> Iterator[Any]:
        """Hold `entry` for a piece of work: it cannot be evicted, unloaded or moved, and
        sits on the execution device; yields the model. An entry that was evicted since it
        was loaded is admitted again first (OUT_OF_MEMORY when it no longer fits)."""
        with self._mutex:
            if self._entries.get(entry.key) is not entry:
                entry = self.put(entry)
            entry.locks += 1
            self._touch(entry)
            try:
                self._to_execution_device(entry)
            except BaseException:
                entry.locks -= 1
                raise
        try:
            yield entry.model
        finally:
            with self._mutex:
                entry.locks -= 1
                entry.last_used = time.time()
                self._trim_vram()

    def _to_execution_device(self, entry: CacheEntry) -> None:
        if not self.on_cuda or not entry.movable or entry.device == self.execution_device:
            return
        self._free_vram(entry.size_bytes)
        try:
            entry.model.to(self.execution_device)
        except torch.cuda.OutOfMemoryError as error:
            entry.model.to("cpu")
            raise _out_of_memory(
                f"{_describe(entry.key)} does not fit on {self.execution_device}: {error}",
                entry.size_bytes,
                self.vram_limit_bytes,
            ) from error
        entry.device = self.execution_device

    def _free_vram(self, needed: int) -> None:
        """Move unlocked resident entries to RAM, least recently used first, until the
        device has `needed` bytes free (or none is left to move)."""
        for other in list(self._entries.values()):
            if torch.cuda.mem_get_info(self.execution_device)[0] >= needed:
                return
            if other.device != "cpu" and not other.locks:
                self._to_ram(other)

    def _trim_vram(self) -> None:
        """Keep unlocked resident weights within the VRAM budget."""
        for entry in list(self._entries.values()):
            if self._unlocked_resident() <= self.vram_limit_bytes:
                return
            if entry.device != "cpu" and not entry.locks:
                self._to_ram(entry)

    def _to_ram(self, entry: CacheEntry) -> None:
        entry.model.to("cpu")
        entry.device = "cpu"

    # --- removal -------------------------------------------------------------------------

    def unload(self, key: str, submodel: SubModelType | None = None) -> Removed:
        """Remove `key`'s entry for `submodel`, or every entry of `key` when `submodel` is
        None (a main model and all its parts). NOT_FOUND when nothing matches;
        FAILED_PRECONDITION, removing nothing, when a match is locked."""
        with self._mutex:
            matches = [
                entry
                for entry in self._entries.values()
                if entry.record.key == key and submodel in (None, entry.submodel)
            ]
            if not matches:
                raise NotFoundError(
                    f"model {key}" + (f" part {submodel}" if submodel else "") + " is not cached",
                    reason="MODEL_NOT_CACHED",
                    metadata={"key": key},
                )
            locked = [entry for entry in matches if entry.locks]
            if locked:
                raise FailedPreconditionError(
                    f"model {key} is in use by work in progress",
                    reason="MODEL_LOCKED",
                    metadata={"key": key, "submodel": str(locked[0].submodel or "")},
                )
            for entry in matches:
                self._remove(entry)
            return Removed(len(matches), sum(entry.size_bytes for entry in matches))

    def clear(self) -> Removed:
        """Remove every unlocked entry."""
        with self._mutex:
            unlocked = [entry for entry in self._entries.values() if not entry.locks]
            for entry in unlocked:
                self._remove(entry)
            return Removed(
                len(unlocked),
                sum(entry.size_bytes for entry in unlocked),
                len(self._entries),
            )

    def _remove(self, entry: CacheEntry) -> None:
        del self._entries[entry.key]
        if entry.device != "cpu":
            self._to_ram(entry)  # frees its VRAM now, not when the last reference goes

    # --- reporting -----------------------------------------------------------------------

    def entries(self) -> list[CacheEntry]:
        """Every entry, most recently used first."""
        with self._mutex:
            return list(reversed(self._entries.values()))

    def stats(self) -> CacheStats:
        with self._mutex:
            return CacheStats(
                ram_used_bytes=self._used(),
                ram_limit_bytes=self.ram_limit_bytes,
                vram_used_bytes=sum(
                    e.size_bytes for e in self._entries.values() if e.device != "cpu"
                ),
                vram_limit_bytes=self.vram_limit_bytes,
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                loaded_model_count=len(self._entries),
                locked_model_count=sum(1 for e in self._entries.values() if e.locks),
                execution_device=self.execution_device,
            )

    def _used(self) -> int:
        return sum(entry.size_bytes for entry in self._entries.values())

    def _unlocked_resident(self) -> int:
        return sum(
            e.size_bytes for e in self._entries.values() if e.device != "cpu" and not e.locks
        )

    def _touch(self, entry: CacheEntry) -> None:
        entry.last_used = time.time()
        self._entries.move_to_end(entry.key)


def _describe(key: CacheKey) -> str:
    model, submodel = key
    return f"model {model}" + (f" part {submodel}" if submodel else "")


def _out_of_memory(message: str, needed: int, limit: int) -> ResourceExhaustedError:
    return ResourceExhaustedError(
        message,
        reason=OUT_OF_MEMORY,
        metadata={"needed_bytes": str(needed), "limit_bytes": str(limit)},
    )
