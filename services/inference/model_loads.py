"""Loading models by key: the model manager's record, the loader registry and the model
cache put together, with the ModelLoad* events.

This is what ModelCacheService.LoadModel calls:

    loaded = await model_loads.load(key, SubModelType.UNET, context)  # in the cache now
    with loaded.lock() as unet:   # (or `with loaded as unet:`) locked on the device
        ...

`load` returns once the model is in the cache; the lock moves it to the execution device
and keeps it from being evicted until the block ends. A cache hit costs a record lookup
and a dictionary access. A generation looks each model's record up once (`record`) and
loads its parts with `load_record`. Concurrent loads of the same model (or part) read it
once.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import structlog

from services.common.errors import (
    EaselError,
    InternalError,
    InvalidArgumentError,
    ResourceExhaustedError,
)
from services.common.keyed_locks import KeyedLocks
from services.common.model_taxonomy import SubModelType
from services.inference.events import (
    NO_CONTEXT,
    EventContext,
    InferenceEvents,
    ModelLoad,
    ModelLoadCompleted,
    ModelLoadFailed,
    ModelLoadStarted,
)
from services.inference.loading.convert_cache import ConvertCache
from services.inference.loading.registry import LoaderRegistry, LoadOptions, ModelLoader
from services.inference.loading.weights import files_missing, tensor_bytes
from services.inference.model_cache import OUT_OF_MEMORY, CacheEntry, ModelCache
from services.inference.model_records import ModelRecord
from services.inference.settings import InferenceSettings
from services.inference.torch_runtime import TorchRuntime, dtype_name

log = structlog.get_logger(__name__)


class ModelRecords(Protocol):
    """Where records come from (the model manager client, or a stand-in in tests)."""

    async def get(self, key: str) -> ModelRecord: ...

    async def models_dir(self) -> Path: ...


@dataclass
class LoadedModel:
    """A model (or part) in the cache, as one load found or put it there."""

    entry: CacheEntry
    cache: ModelCache
    cache_hit: bool
    duration_s: float
    _locks: list[ExitStack] = field(default_factory=list, repr=False)

    @property
    def record(self) -> ModelRecord:
        return self.entry.record

    @property
    def submodel(self) -> SubModelType | None:
        return self.entry.submodel

    @contextmanager
    def lock(self) -> Iterator[Any]:
        """Lock the model on the execution device for a piece of work; yields the model
        object (a module, tokenizer, scheduler config dict, LoRA or embedding weights)."""
        with self.cache.lock(self.entry) as model:
            yield model

    def __enter__(self) -> Any:
        stack = ExitStack()
        model = stack.enter_context(self.lock())
        self._locks.append(stack)
        return model

    def __exit__(self, *exc_info: object) -> None:
        self._locks.pop().close()


class ModelLoadService:
    """Loads models by key into the cache and reports each load on the event bus."""

    def __init__(
        self,
        records: ModelRecords,
        registry: LoaderRegistry,
        cache: ModelCache,
        options: LoadOptions,
        events: InferenceEvents,
        convert_cache_bytes: int,
    ) -> None:
        self.records = records
        self.registry = registry
        self.cache = cache
        self.options = options
        self._events = events
        self._convert_cache_bytes = convert_cache_bytes
        self._loading = KeyedLocks[tuple[str, SubModelType | None]]()

    async def load(
        self,
        key: str,
        submodel: SubModelType | None = None,
        context: EventContext = NO_CONTEXT,
    ) -> LoadedModel:
        """Find model `key` (part `submodel`) in the cache or load it there.

        Errors: INVALID_ARGUMENT an empty key, or a part the model does not have (a main
        model needs one, others take none); NOT_FOUND an unknown key; UNAVAILABLE the
        model manager is down; FAILED_PRECONDITION files missing (MODEL_FILES_MISSING) or
        unreadable (MODEL_UNREADABLE); UNIMPLEMENTED no loader (NO_LOADER);
        RESOURCE_EXHAUSTED the model does not fit (OUT_OF_MEMORY).
        """
        return await self.load_record(await self.record(key), submodel, context)

    async def record(self, key: str) -> ModelRecord:
        """The record of `key` as the model manager has it now. Errors: INVALID_ARGUMENT an
        empty key, NOT_FOUND an unknown one, UNAVAILABLE the model manager is down."""
        if not key:
            raise InvalidArgumentError("key is required", field="key")
        return await self.records.get(key)

    async def load_record(
        self,
        record: ModelRecord,
        submodel: SubModelType | None = None,
        context: EventContext = NO_CONTEXT,
    ) -> LoadedModel:
        """`load` for a record already looked up (one lookup can serve every part of a
        model); a cached entry read under another path or hash than `record`'s is read
        again."""
        if self.options.convert_cache is None:
            folder = await self.records.models_dir() / ".cache" / "convert"
            cache = ConvertCache(folder, self._convert_cache_bytes)
            self.options = replace(self.options, convert_cache=cache)
        started = time.perf_counter()
        try:
            loader = self.registry.check_submodel(record, submodel)
        except EaselError as error:
            self._events.publish(
                ModelLoadStarted(self._describe(record, submodel, None), context=context)
            )
            self._events.publish(ModelLoadFailed(record.key, submodel, error, context=context))
            raise
        self._events.publish(
            ModelLoadStarted(self._describe(record, submodel, loader), context=context)
        )
        try:
            async with self._loading.hold((record.key, submodel)):
                entry = self._cached(record, submodel)
                hit = entry is not None
                if entry is None:
                    entry = await asyncio.to_thread(self._read, record, submodel, loader)
        except EaselError as error:
            self._events.publish(ModelLoadFailed(record.key, submodel, error, context=context))
            raise
        except Exception as error:
            log.exception("model load failed", key=record.key, submodel=submodel)
            failure = InternalError(f"loading model {record.key} failed: {error}")
            self._events.publish(ModelLoadFailed(record.key, submodel, failure, context=context))
            raise failure from error
        duration = time.perf_counter() - started
        self._events.publish(
            ModelLoadCompleted(
                self._describe_entry(entry), entry.size_bytes, duration, hit, context=context
            )
        )
        return LoadedModel(entry, self.cache, hit, duration)

    def _cached(self, record: ModelRecord, submodel: SubModelType | None) -> CacheEntry | None:
        entry = self.cache.get(record.key, submodel)
        stale = entry is not None and (entry.record.path, entry.record.hash) != (
            record.path,
            record.hash,
        )
        if stale and entry is not None and not entry.locks:
            log.info("model changed on disk, reloading", key=record.key, submodel=submodel)
            self.cache.unload(record.key, submodel)
            return None
        return entry

    def _read(
        self, record: ModelRecord, submodel: SubModelType | None, loader: ModelLoader
    ) -> CacheEntry:
        """Read a model from disk into the cache (in a worker thread)."""
        source = loader.source(record, submodel)
        if not source.exists():
            raise files_missing(source)
        what = f"model {record.key}" + (f" part {submodel}" if submodel else "")
        self.cache.reserve(loader.estimate_bytes(record, submodel, self.options), what)
        try:
            loaded = loader.load(record, submodel, self.options)
        except MemoryError as error:
            raise ResourceExhaustedError(
                f"{what} does not fit in memory", reason=OUT_OF_MEMORY
            ) from error
        size = tensor_bytes(loaded.model)
        entry = CacheEntry(
            record=record,
            submodel=submodel,
            model=loaded.model,
            path=loaded.path,
            size_bytes=size,
            dtype=self.options.dtype if size else None,
        )
        log.info("model loaded", key=record.key, submodel=submodel, bytes=size)
        return self.cache.put(entry)

    def _describe(
        self, record: ModelRecord, submodel: SubModelType | None, loader: ModelLoader | None
    ) -> ModelLoad:
        path = loader.source(record, submodel) if loader else record.path
        return ModelLoad(
            model_key=record.key,
            submodel=submodel,
            hash=record.hash,
            path=str(path),
            device="cpu",
            precision=dtype_name(self.options.dtype),
        )

    def _describe_entry(self, entry: CacheEntry) -> ModelLoad:
        return ModelLoad(
            model_key=entry.record.key,
            submodel=entry.submodel,
            hash=entry.record.hash,
            path=str(entry.path),
            device=entry.device,
            precision=dtype_name(entry.dtype) if entry.dtype else "",
        )


def physical_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def build_model_loads(
    settings: InferenceSettings,
    runtime: TorchRuntime,
    records: ModelRecords,
    events: InferenceEvents,
) -> ModelLoadService:
    """The load service as the settings and the device make it (call once torch is in)."""
    import torch

    from services.inference.loading.loaders import LOADERS

    ram = settings.model_cache_ram_bytes
    if ram is None:
        ram = physical_memory_bytes() // 2
    vram = settings.model_cache_vram_bytes
    if vram is None:
        vram = (
            torch.cuda.get_device_properties(runtime.device).total_memory // 2
            if runtime.is_cuda
            else 0
        )
    cache = ModelCache(ram, vram, runtime.device)
    log.info("model cache ready", ram_limit_bytes=ram, vram_limit_bytes=cache.vram_limit_bytes)
    options = LoadOptions(dtype=runtime.dtype, root=Path(settings.root))
    if settings.convert_cache_dir is not None:
        convert_cache = ConvertCache(settings.convert_cache_dir, settings.convert_cache_bytes)
        options = replace(options, convert_cache=convert_cache)
    return ModelLoadService(records, LOADERS, cache, options, events, settings.convert_cache_bytes)
