"""Loaders for single-file checkpoints in the original Stable Diffusion layout.

A checkpoint holds weights but not the architecture: that comes from a diffusers
configuration folder. Easel ships one per base (`configs/<base>/`: model_index.json and
each part's config, no weights), so nothing is fetched from the Hub; a record's
`config_path` (absolute, or relative to the root) may name another: a diffusers
configuration folder, or an original-layout YAML file for the UNet and VAE. What the
checkpoint itself says wins where it can: the UNet's input channels (inpaint, depth), a
standalone VAE's block layout, the record's prediction type and attention upcast.

A tokenizer loads from its configuration folder when that has its vocabulary; otherwise
(the shipped configurations) it is CLIP's, built from the vocabulary Easel ships, provided
the checkpoint's text encoder embeds CLIP's 49408 tokens: any other count needs a
`config_path` whose tokenizer matches it (MODEL_FILES_MISSING until then). Tokenizers are
built at each load, never through the convert cache: they are cheap, and which one a
checkpoint gets follows its record's configuration.

A main checkpoint is converted once into a diffusers folder in the convert cache and
loaded from there (see `convert_cache` for why and how); without a convert cache, or when
the conversion would not fit its budget, each part is converted in memory when it is
loaded. Either way the conversion is diffusers' own key mapping, reading only the part's
tensors from a safetensors file. Pickled checkpoints go through
`torch.load(weights_only=True)`, never a full unpickle. Standalone VAE files, one module
each, are always read directly.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm

from services.common.errors import FailedPreconditionError
from services.common.model_taxonomy import BaseModelType, ModelFormat, ModelType, SubModelType
from services.inference.loading.clip_tokenizer import VOCAB_SIZE, clip_tokenizer
from services.inference.loading.diffusers_folders import (
    DiffusersMainLoader,
    component_class,
    has_vocabulary,
    load_weightless,
    pipeline_components,
    read_scheduler_config,
)
from services.inference.loading.registry import Loaded, LoadOptions, ModelLoader, register
from services.inference.loading.weights import (
    FILES_MISSING,
    SAFETENSORS,
    estimated_bytes,
    files_missing,
    read_state_dict,
    safetensors_header,
    unreadable,
)
from services.inference.model_records import ModelRecord

CONFIGS = Path(__file__).parent / "configs"
"""The diffusers configurations Easel ships, one folder per base."""

_UNET = "model.diffusion_model."
_VAE = "first_stage_model."
# Where each text encoder sits in a checkpoint, by base.
_TEXT_ENCODERS = {
    BaseModelType.SD_1: {SubModelType.TEXT_ENCODER: "cond_stage_model."},
    BaseModelType.SD_2: {SubModelType.TEXT_ENCODER: "cond_stage_model."},
    BaseModelType.SDXL: {
        SubModelType.TEXT_ENCODER: "conditioner.embedders.0.",
        SubModelType.TEXT_ENCODER_2: "conditioner.embedders.1.",
    },
    BaseModelType.SDXL_REFINER: {SubModelType.TEXT_ENCODER_2: "conditioner.embedders.0."},
}
# The text encoder each tokenizer feeds.
_TOKENIZERS = {
    SubModelType.TOKENIZER: SubModelType.TEXT_ENCODER,
    SubModelType.TOKENIZER_2: SubModelType.TEXT_ENCODER_2,
}
# The token embedding's key ends so in both layouts: CLIP's (`transformer.text_model.
# embeddings.token_embedding.weight`) and OpenCLIP's (`model.token_embedding.weight`).
_TOKEN_EMBEDDING = "token_embedding.weight"
_VAE_BLOCK = re.compile(r"encoder\.down\.(\d+)\.block\.(\d+)\.conv1\.weight$")


_FOLDER_LOADER = DiffusersMainLoader()


def shipped_config(base: BaseModelType) -> Path:
    return CONFIGS / str(base)


def part_prefix(base: BaseModelType, submodel: SubModelType) -> str | None:
    """Where a part's tensors sit in a checkpoint of `base`; None for weightless parts."""
    if submodel is SubModelType.UNET:
        return _UNET
    if submodel is SubModelType.VAE:
        return _VAE
    return _TEXT_ENCODERS.get(base, {}).get(submodel)


class _Configs:
    """The configuration a checkpoint record loads with: a diffusers folder, and the
    original YAML for the UNet and VAE when the record names one."""

    def __init__(self, record: ModelRecord, options: LoadOptions) -> None:
        self.original_yaml: Path | None = None
        self.folder = shipped_config(record.base)
        if record.config_path:
            path = Path(record.config_path).expanduser()
            path = path if path.is_absolute() else options.root / path
            if path.is_dir():
                self.folder = path
            elif path.is_file():
                self.original_yaml = path
            else:
                raise files_missing(path)


@register(base=BaseModelType.SD_1, type=ModelType.MAIN, format=ModelFormat.CHECKPOINT)
@register(base=BaseModelType.SD_2, type=ModelType.MAIN, format=ModelFormat.CHECKPOINT)
@register(base=BaseModelType.SDXL, type=ModelType.MAIN, format=ModelFormat.CHECKPOINT)
@register(base=BaseModelType.SDXL_REFINER, type=ModelType.MAIN, format=ModelFormat.CHECKPOINT)
class CheckpointMainLoader(ModelLoader):
    """A main model in one `.safetensors` or `.ckpt` file, loaded part by part like a
    diffusers folder: the parts and their classes are those of its configuration."""

    def submodels(self, record: ModelRecord) -> frozenset[SubModelType]:
        return frozenset(pipeline_components(shipped_config(record.base)))

    def weight_files(self, record, submodel, options) -> list[Path]:
        return [record.path] if part_prefix(record.base, submodel) and record.path.is_file() else []

    def estimate_bytes(self, record, submodel, options) -> int:
        prefix = part_prefix(record.base, submodel)
        if prefix is None or not record.path.is_file():
            return 0
        return estimated_bytes([record.path], options.dtype, prefixes=(prefix,))

    def load(self, record, submodel, options) -> Loaded:
        assert submodel is not None
        if options.convert_cache is not None and submodel not in _TOKENIZERS:
            folder = options.convert_cache.converted(
                record,
                record.path.stat().st_size,
                lambda dest: self._convert(record, dest, options),
            )
            if folder is not None:
                converted = replace(record, path=folder, format=ModelFormat.DIFFUSERS)
                return _FOLDER_LOADER.load(converted, submodel, options)
        return self._load_part(record, submodel, options, options.dtype)

    def _convert(self, record: ModelRecord, dest: Path, options: LoadOptions) -> None:
        """Write the checkpoint as a diffusers folder, each part in its stored dtype; the
        tokenizers stay out of it (they are built at each load)."""
        configs = _Configs(record, options)
        shutil.copy(configs.folder / "model_index.json", dest / "model_index.json")
        for part in pipeline_components(configs.folder):
            if part is SubModelType.SCHEDULER:
                (dest / str(part)).mkdir()
                config = self._load_part(record, part, options, None).model
                (dest / str(part) / "scheduler_config.json").write_text(json.dumps(config))
            elif part not in _TOKENIZERS:
                model = self._load_part(record, part, options, None).model
                model.save_pretrained(dest / str(part), safe_serialization=True)

    def _load_part(
        self,
        record: ModelRecord,
        submodel: SubModelType,
        options: LoadOptions,
        dtype: torch.dtype | None,
    ) -> Loaded:
        """One part straight from the file, as `dtype` (None: as the file stores it)."""
        configs = _Configs(record, options)
        folder = configs.folder
        if submodel is SubModelType.SCHEDULER:
            config = read_scheduler_config(folder / "scheduler")
            if record.prediction_type is not None:
                config["prediction_type"] = str(record.prediction_type)
            return Loaded(config, record.path)
        if submodel in _TOKENIZERS:
            return Loaded(self._tokenizer(record, submodel, folder), record.path)
        prefix = part_prefix(record.base, submodel)
        assert prefix is not None
        state_dict = read_state_dict(record.path, (prefix,))
        if not state_dict:
            raise unreadable(record.path, f"it has no {submodel} weights (keys {prefix}*)")
        if dtype is None:
            dtype = next(t.dtype for t in state_dict.values() if t.is_floating_point())
        try:
            model = self._build(record, submodel, state_dict, configs, dtype)
        except (ValueError, KeyError, RuntimeError) as error:
            raise unreadable(
                record.path, f"its {submodel} does not match its config: {error}"
            ) from error
        return Loaded(model.eval(), record.path)

    def _tokenizer(self, record: ModelRecord, submodel: SubModelType, folder: Path) -> Any:
        """The configuration's own tokenizer where it has its vocabulary, else CLIP's when
        the checkpoint's text encoder embeds exactly CLIP's tokens."""
        part_folder = folder / str(submodel)
        if not part_folder.is_dir():
            raise files_missing(part_folder)
        if has_vocabulary(part_folder):
            library, class_name = pipeline_components(folder)[submodel]
            return load_weightless(component_class(library, class_name, folder), part_folder)
        encoder = _TOKENIZERS[submodel]
        prefix = part_prefix(record.base, encoder)
        rows = None if prefix is None else _token_embedding_rows(record.path, prefix)
        if rows != VOCAB_SIZE:
            found = f"no {encoder} weights" if rows is None else f"a {encoder} of {rows} tokens"
            raise FailedPreconditionError(
                f"no tokenizer for {record.path}: it has {found}, CLIP's vocabulary has "
                f"{VOCAB_SIZE}; set the model's config_path to a diffusers folder of its base "
                f"whose {submodel} has its vocabulary (vocab.json and merges.txt)",
                reason=FILES_MISSING,
                metadata={"path": str(record.path)},
            )
        return clip_tokenizer(part_folder)

    def _build(
        self,
        record: ModelRecord,
        submodel: SubModelType,
        state_dict: dict[str, Any],
        configs: _Configs,
        dtype: torch.dtype,
    ) -> Any:
        source: dict[str, Any] = (
            {"original_config": str(configs.original_yaml)}
            if configs.original_yaml is not None
            else {"config": str(configs.folder), "subfolder": str(submodel)}
        )
        common = {"torch_dtype": dtype, "local_files_only": True}
        if submodel is SubModelType.UNET:
            overrides: dict[str, Any] = {}
            conv_in = state_dict.get(f"{_UNET}input_blocks.0.0.weight")
            if conv_in is not None:
                overrides["in_channels"] = conv_in.shape[1]
            if record.upcast_attention:
                overrides["upcast_attention"] = True
            return UNet2DConditionModel.from_single_file(
                state_dict, **source, **common, **overrides
            )
        if submodel is SubModelType.VAE:
            return AutoencoderKL.from_single_file(state_dict, **source, **common)
        library, class_name = pipeline_components(configs.folder)[submodel]
        cls = component_class(library, class_name, configs.folder)
        return create_diffusers_clip_model_from_ldm(
            cls,
            state_dict,
            subfolder=str(submodel),
            config=str(configs.folder),
            torch_dtype=dtype,
            local_files_only=True,
        )


def _token_embedding_rows(path: Path, prefix: str) -> int | None:
    """How many tokens the text encoder under `prefix` embeds (None: the file has none);
    a safetensors file answers from its header, without reading a tensor."""
    if not path.is_file():
        raise files_missing(path)
    if path.suffix == SAFETENSORS:
        shapes = {key: entry["shape"] for key, entry in safetensors_header(path).items()}
    else:
        shapes = {
            key: list(tensor.shape) for key, tensor in read_state_dict(path, (prefix,)).items()
        }
    for key, shape in shapes.items():
        if key.startswith(prefix) and key.endswith(_TOKEN_EMBEDDING) and shape:
            return shape[0]
    return None


@register(base=BaseModelType.SD_1, type=ModelType.VAE, format=ModelFormat.CHECKPOINT)
@register(base=BaseModelType.SD_2, type=ModelType.VAE, format=ModelFormat.CHECKPOINT)
@register(base=BaseModelType.SDXL, type=ModelType.VAE, format=ModelFormat.CHECKPOINT)
@register(base=BaseModelType.SDXL_REFINER, type=ModelType.VAE, format=ModelFormat.CHECKPOINT)
class CheckpointVaeLoader(ModelLoader):
    """A standalone VAE file (`encoder.*` / `decoder.*` keys, or a main checkpoint's
    `first_stage_model.*`). Its block layout is read from its own tensors; the base's
    shipped config supplies the rest (the latent scaling factor above all)."""

    def load(self, record, submodel, options) -> Loaded:
        state_dict = read_state_dict(record.path)
        state_dict = {key.removeprefix(_VAE): value for key, value in state_dict.items()}
        base_config = json.loads((shipped_config(record.base) / "vae" / "config.json").read_text())
        try:
            original = _original_vae_config(state_dict, base_config["scaling_factor"])
            model = AutoencoderKL.from_single_file(
                state_dict,
                original_config=original,
                torch_dtype=options.dtype,
                local_files_only=True,
            )
        except (ValueError, KeyError, IndexError, RuntimeError) as error:
            raise unreadable(record.path, f"not a VAE of a known layout: {error}") from error
        return Loaded(model.eval(), record.path)


def _original_vae_config(state_dict: dict[str, Any], scaling_factor: float) -> dict[str, Any]:
    """The original-layout config of a VAE, read off its tensors' shapes."""
    widths: dict[int, int] = {}
    blocks: set[int] = set()
    for key, tensor in state_dict.items():
        match = _VAE_BLOCK.match(key)
        if match:
            level, block = int(match[1]), int(match[2])
            widths[level] = tensor.shape[0]
            if level == 0:
                blocks.add(block)
    if not widths:
        raise KeyError("no encoder.down.N.block.M tensors")
    channels = widths[0]
    ddconfig = {
        "ch": channels,
        "ch_mult": [widths[level] // channels for level in sorted(widths)],
        "in_channels": state_dict["encoder.conv_in.weight"].shape[1],
        "out_ch": state_dict["decoder.conv_out.weight"].shape[0],
        "z_channels": state_dict["decoder.conv_in.weight"].shape[1],
        "num_res_blocks": len(blocks),
    }
    return {
        "model": {
            "params": {
                "scale_factor": scaling_factor,
                "first_stage_config": {"params": {"ddconfig": ddconfig}},
            }
        }
    }
