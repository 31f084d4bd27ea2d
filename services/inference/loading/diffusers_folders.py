"""Loaders for diffusers folders: main models part by part, and standalone VAEs.

A main model's `model_index.json` names its parts and their classes; each part is its own
subfolder and its own cache entry. Every weight-bearing part is loaded with an explicit
dtype (a folder saved as fp16 says `dtype: float16` in its text encoder's config, which
would otherwise win) and with the weight files of the record's variant where that part
has them: a folder may carry fp16 files for some parts only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import diffusers
import transformers

from services.common.errors import FailedPreconditionError
from services.common.model_taxonomy import (
    BaseModelType,
    ModelFormat,
    ModelRepoVariant,
    ModelType,
    SubModelType,
)
from services.inference.loading.registry import Loaded, LoadOptions, ModelLoader, register
from services.inference.loading.weights import (
    choose_variant,
    files_missing,
    unreadable,
    variant_files,
)
from services.inference.model_records import ModelRecord

_LIBRARIES = {"diffusers": diffusers, "transformers": transformers}
_PART_NAMES = frozenset(part.value for part in SubModelType)
_WEIGHTLESS = (SubModelType.TOKENIZER, SubModelType.TOKENIZER_2, SubModelType.SCHEDULER)


def pipeline_components(folder: Path) -> dict[SubModelType, tuple[str, str]]:
    """The parts a pipeline folder's model_index.json names: part -> (library, class)."""
    index = folder / "model_index.json"
    if not index.is_file():
        raise files_missing(index)
    try:
        content = json.loads(index.read_text())
    except (OSError, ValueError) as error:
        raise unreadable(index, error) from error
    parts = {}
    for name, value in content.items():
        if name in _PART_NAMES and isinstance(value, list):
            library, class_name = value
            if library in _LIBRARIES and class_name:
                parts[SubModelType(name)] = (library, class_name)
    return parts


def component_class(library: str, class_name: str, path: Path) -> type:
    """The class a model_index.json names, from diffusers or transformers only."""
    cls = getattr(_LIBRARIES.get(library), class_name, None)
    if not isinstance(cls, type):
        raise unreadable(path, f"unknown component class {library}.{class_name}")
    return cls


def read_scheduler_config(folder: Path) -> dict[str, Any]:
    """A scheduler's configuration (scheduler_config.json) as a plain dict."""
    path = folder / "scheduler_config.json"
    if not path.is_file():
        raise files_missing(path)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise unreadable(path, error) from error


def load_pretrained(cls: type, folder: Path, options: LoadOptions, variant: str | None) -> Any:
    """`from_pretrained` of one weight-bearing part, offline, with an explicit dtype."""
    if not folder.is_dir():
        raise files_missing(folder)
    dtype_argument = "dtype" if issubclass(cls, transformers.PreTrainedModel) else "torch_dtype"
    try:
        model = cls.from_pretrained(
            folder, variant=variant, local_files_only=True, **{dtype_argument: options.dtype}
        )
    except (OSError, ValueError, RuntimeError) as error:
        raise unreadable(folder, error) from error
    return model.eval()


def has_vocabulary(folder: Path) -> bool:
    """Whether a tokenizer folder has its vocabulary: tokenizer.json, or BPE's vocab.json
    and merges.txt."""
    return (folder / "tokenizer.json").is_file() or (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    )


def load_weightless(cls: type, folder: Path) -> Any:
    """A tokenizer from its folder. Without its vocabulary files transformers would build
    an empty tokenizer that turns every prompt into unknown tokens: that is
    MODEL_FILES_MISSING instead."""
    if not has_vocabulary(folder):
        raise FailedPreconditionError(
            f"no tokenizer vocabulary (tokenizer.json, or vocab.json and merges.txt) in {folder}",
            reason="MODEL_FILES_MISSING",
            metadata={"path": str(folder)},
        )
    try:
        return cls.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, TypeError) as error:
        raise unreadable(folder, error) from error


def preferred_variant(record: ModelRecord) -> str | None:
    variant = record.repo_variant
    return variant.value if variant in (ModelRepoVariant.FP16, ModelRepoVariant.FP32) else None


@register(base=BaseModelType.SD_1, type=ModelType.MAIN, format=ModelFormat.DIFFUSERS)
@register(base=BaseModelType.SD_2, type=ModelType.MAIN, format=ModelFormat.DIFFUSERS)
@register(base=BaseModelType.SDXL, type=ModelType.MAIN, format=ModelFormat.DIFFUSERS)
@register(base=BaseModelType.SDXL_REFINER, type=ModelType.MAIN, format=ModelFormat.DIFFUSERS)
class DiffusersMainLoader(ModelLoader):
    """A Stable Diffusion pipeline folder. Tokenizers load as tokenizer objects and the
    scheduler as its configuration dict (generations build fresh schedulers from it)."""

    def submodels(self, record: ModelRecord) -> frozenset[SubModelType]:
        return frozenset(pipeline_components(record.path))

    def source(self, record: ModelRecord, submodel: SubModelType | None) -> Path:
        return record.path / str(submodel)

    def weight_files(self, record, submodel, options) -> list[Path]:
        folder = self.source(record, submodel)
        if submodel in _WEIGHTLESS or not folder.is_dir():
            return []
        return variant_files(folder, choose_variant(folder, preferred_variant(record)))

    def load(self, record, submodel, options) -> Loaded:
        assert submodel is not None
        folder = self.source(record, submodel)
        if submodel is SubModelType.SCHEDULER:
            return Loaded(read_scheduler_config(folder), folder)
        library, class_name = pipeline_components(record.path)[submodel]
        cls = component_class(library, class_name, record.path)
        if submodel in _WEIGHTLESS:
            if not folder.is_dir():
                raise files_missing(folder)
            return Loaded(load_weightless(cls, folder), folder)
        variant = choose_variant(folder, preferred_variant(record))
        return Loaded(load_pretrained(cls, folder, options, variant), folder)


@register(base=BaseModelType.SD_1, type=ModelType.VAE, format=ModelFormat.DIFFUSERS)
@register(base=BaseModelType.SD_2, type=ModelType.VAE, format=ModelFormat.DIFFUSERS)
@register(base=BaseModelType.SDXL, type=ModelType.VAE, format=ModelFormat.DIFFUSERS)
@register(base=BaseModelType.SDXL_REFINER, type=ModelType.VAE, format=ModelFormat.DIFFUSERS)
class DiffusersVaeLoader(ModelLoader):
    """A VAE folder (config.json names AutoencoderKL or AutoencoderTiny)."""

    def weight_files(self, record, submodel, options) -> list[Path]:
        if not record.path.is_dir():
            return []
        return variant_files(record.path, choose_variant(record.path, preferred_variant(record)))

    def load(self, record, submodel, options) -> Loaded:
        config = record.path / "config.json"
        if not config.is_file():
            raise files_missing(config)
        try:
            class_name = json.loads(config.read_text()).get("_class_name", "AutoencoderKL")
        except (OSError, ValueError) as error:
            raise unreadable(config, error) from error
        if class_name not in ("AutoencoderKL", "AutoencoderTiny"):
            raise unreadable(config, f"{class_name} is not a VAE class")
        cls = component_class("diffusers", class_name, config)
        variant = choose_variant(record.path, preferred_variant(record))
        return Loaded(load_pretrained(cls, record.path, options, variant), record.path)
