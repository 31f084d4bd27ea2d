"""The loader registry: which loader reads a model, by its base, type and format.

Loader modules register with the decorator `register(base=..., type=..., format=...)`,
stackable to cover several kinds with one class; a second registration of the same kind
raises at import, so two loaders can never silently compete (the process does not start).
A loader registered for base ANY serves every base that has no loader of its own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from services.common.errors import InvalidArgumentError, UnimplementedError
from services.common.model_taxonomy import BaseModelType, ModelFormat, ModelType, SubModelType
from services.inference.loading.weights import estimated_bytes
from services.inference.model_records import ModelRecord

if TYPE_CHECKING:
    from services.inference.loading.convert_cache import ConvertCache

LoaderKey = tuple[BaseModelType, ModelType, ModelFormat]
NO_LOADER = "NO_LOADER"


class DuplicateLoaderError(Exception):
    """Two loaders registered for the same base, type and format."""


@dataclass(frozen=True)
class LoadOptions:
    """How to load: the weights' data type, the root that relative config paths of
    records resolve against, and where checkpoints are converted (None: load them from
    their files each time)."""

    dtype: torch.dtype
    root: Path
    convert_cache: ConvertCache | None = None


@dataclass(frozen=True)
class Loaded:
    """What a loader produced: the model object and the files it came from."""

    model: Any
    path: Path


class ModelLoader(ABC):
    """Reads one kind of model from disk into a ready-to-use object on the CPU.

    Loaders are stateless; the model cache decides what stays in memory. A main model is
    loaded one part (`SubModelType`) at a time; every other model type has no parts.
    """

    def submodels(self, record: ModelRecord) -> frozenset[SubModelType]:
        """The parts of the model that can be loaded; empty for models without parts."""
        return frozenset()

    def source(self, record: ModelRecord, submodel: SubModelType | None) -> Path:
        """The file or folder a load of `submodel` reads."""
        return record.path

    def weight_files(
        self, record: ModelRecord, submodel: SubModelType | None, options: LoadOptions
    ) -> list[Path]:
        """The weight files a load reads, for the estimate of its size."""
        source = self.source(record, submodel)
        return [source] if source.is_file() else []

    def estimate_bytes(
        self, record: ModelRecord, submodel: SubModelType | None, options: LoadOptions
    ) -> int:
        """What the loaded weights will take, known before loading them."""
        return estimated_bytes(self.weight_files(record, submodel, options), options.dtype)

    @abstractmethod
    def load(
        self, record: ModelRecord, submodel: SubModelType | None, options: LoadOptions
    ) -> Loaded:
        """Read the model (or its part `submodel`) onto the CPU as `options.dtype`."""


L = TypeVar("L", bound=type[ModelLoader])


class LoaderRegistry:
    """Loaders by (base, type, format)."""

    def __init__(self) -> None:
        self._loaders: dict[LoaderKey, ModelLoader] = {}
        self._instances: dict[type[ModelLoader], ModelLoader] = {}

    def register(
        self, *, base: BaseModelType, type: ModelType, format: ModelFormat
    ) -> Callable[[L], L]:
        """Class decorator: the class loads models of this base, type and format."""
        key = (base, type, format)

        def decorate(cls: L) -> L:
            if key in self._loaders:
                other = self._loaders[key].__class__.__name__
                raise DuplicateLoaderError(
                    f"{cls.__name__} registers for {_describe(key)}, which {other} loads already"
                )
            self._loaders[key] = self._instances.setdefault(cls, cls())
            return cls

        return decorate

    def keys(self) -> list[LoaderKey]:
        return sorted(self._loaders)

    def loader_for(self, record: ModelRecord) -> ModelLoader:
        """The loader of a record's kind; UNIMPLEMENTED (NO_LOADER) when there is none."""
        for base in (record.base, BaseModelType.ANY):
            loader = self._loaders.get((base, record.type, record.format))
            if loader is not None:
                return loader
        key = (record.base, record.type, record.format)
        raise UnimplementedError(
            f"no loader for {_describe(key)} models (model {record.key})",
            reason=NO_LOADER,
            metadata={
                "key": record.key,
                "base": str(record.base),
                "type": str(record.type),
                "format": str(record.format),
            },
        )

    def check_submodel(self, record: ModelRecord, submodel: SubModelType | None) -> ModelLoader:
        """The loader, once `submodel` is known to suit the record: required for a model
        with parts and one of them, absent otherwise (INVALID_ARGUMENT `submodel_type`)."""
        loader = self.loader_for(record)
        parts = loader.submodels(record)
        if parts and submodel is None:
            raise InvalidArgumentError(
                f"model {record.key} is a {record.type} model: name the part to load",
                field="submodel_type",
            )
        if submodel is not None and submodel not in parts:
            raise InvalidArgumentError(
                f"model {record.key} has no part {submodel}"
                + (f"; it has {', '.join(sorted(parts))}" if parts else ""),
                field="submodel_type",
            )
        return loader


def _describe(key: LoaderKey) -> str:
    base, type_, format_ = key
    return f"{base} {type_} ({format_})"


LOADERS = LoaderRegistry()
register = LOADERS.register
