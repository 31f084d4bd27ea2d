"""LoRA models: loaded as their tensors, applied to a UNet and text encoders for one piece
of work, and removed afterwards with the cached weights exactly as they were.

A LoRA file is a set of layers, each a low-rank update of one weight: LoRA (`lora_down` /
`lora_up`, or PEFT's `lora_A` / `lora_B`), LoHa (`hada_w1_a` ...) and LoKr (`lokr_w1` ...),
named the kohya way (`lora_unet_down_blocks_0_..._to_k`, `lora_te1_...`; UNet names in the
original Stable Diffusion layout `lora_unet_input_blocks_4_1_...` too) or the diffusers /
PEFT way (`unet.down_blocks.0....to_k`). `applied_loras` adds each update to its weight
in a fresh tensor and keeps the original tensor object aside; leaving the block, however
it is left, puts every original tensor back, so the cache's weights are bit-identical.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import torch

from services.common.errors import FailedPreconditionError
from services.common.model_taxonomy import BaseModelType, ModelFormat, ModelType, SubModelType
from services.inference.loading.registry import Loaded, ModelLoader, register
from services.inference.loading.weights import (
    SAFETENSORS,
    WEIGHT_SUFFIXES,
    files_missing,
    read_state_dict,
    unreadable,
)
from services.inference.model_records import ModelRecord

log = structlog.get_logger(__name__)

LORA_INCOMPATIBLE = "LORA_INCOMPATIBLE"
_FACTOR_NAMES = (
    "lora_down.weight",
    "lora_up.weight",
    "lora_A.weight",
    "lora_B.weight",
    "hada_w1_a",
    "hada_w1_b",
    "hada_w2_a",
    "hada_w2_b",
    "lokr_w1",
    "lokr_w1_a",
    "lokr_w1_b",
    "lokr_w2",
    "lokr_w2_a",
    "lokr_w2_b",
    "alpha",
)
# kohya prefix -> the part it patches
_KOHYA_PARTS = {
    "lora_unet_": SubModelType.UNET,
    "lora_te_": SubModelType.TEXT_ENCODER,
    "lora_te1_": SubModelType.TEXT_ENCODER,
    "lora_te2_": SubModelType.TEXT_ENCODER_2,
}
_PEFT_PARTS = {
    "unet.": SubModelType.UNET,
    "text_encoder.": SubModelType.TEXT_ENCODER,
    "text_encoder_2.": SubModelType.TEXT_ENCODER_2,
}


@dataclass(frozen=True)
class LoraLayer:
    """One layer's update: the part it patches, the layer's name in that part's naming
    (kohya: underscores; PEFT: dots) and its factors."""

    part: SubModelType
    name: str
    factors: Mapping[str, torch.Tensor]

    def delta(self) -> torch.Tensor:
        """The full-rank update, in float32, before the LoRA's weight is applied."""
        f = {name: tensor.float() for name, tensor in self.factors.items()}
        if "lokr_w1" in f or "lokr_w1_a" in f:
            w1 = f["lokr_w1"] if "lokr_w1" in f else f["lokr_w1_a"] @ f["lokr_w1_b"]
            w2 = f["lokr_w2"] if "lokr_w2" in f else f["lokr_w2_a"] @ f["lokr_w2_b"]
            rank = f["lokr_w1_b"].shape[0] if "lokr_w1_b" in f else None
            return torch.kron(w1, w2) * self._scale(rank)
        if "hada_w1_a" in f:
            w1 = f["hada_w1_a"] @ f["hada_w1_b"]
            w2 = f["hada_w2_a"] @ f["hada_w2_b"]
            return w1 * w2 * self._scale(f["hada_w1_b"].shape[0])
        down = f.get("lora_down.weight", f.get("lora_A.weight"))
        up = f.get("lora_up.weight", f.get("lora_B.weight"))
        if down is None or up is None:
            raise ValueError(f"layer {self.name} has no complete pair of LoRA factors")
        product = up.flatten(1) @ down.flatten(1)
        if down.dim() == 4:  # a convolution: (out, in, kh, kw)
            product = product.reshape(up.shape[0], *down.shape[1:])
        return product * self._scale(down.shape[0])

    def _scale(self, rank: int | None) -> float:
        alpha = self.factors.get("alpha")
        if alpha is None or rank is None:
            return 1.0
        return float(alpha) / rank


@dataclass(frozen=True)
class LoraWeights:
    """A loaded LoRA: its layers, ready to be applied."""

    layers: tuple[LoraLayer, ...]

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            f"{layer.part}.{layer.name}.{factor}": tensor
            for layer in self.layers
            for factor, tensor in layer.factors.items()
        }


def parse_lora(state_dict: Mapping[str, torch.Tensor]) -> LoraWeights:
    """Group a LoRA file's tensors into layers; keys of no known form are ignored."""
    grouped: dict[tuple[SubModelType, str], dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        factor = next((name for name in _FACTOR_NAMES if key.endswith("." + name)), None)
        if factor is None:
            continue
        target = _part_of(key[: -len(factor) - 1])
        if target is not None:
            grouped.setdefault(target, {})[factor] = tensor
    return LoraWeights(tuple(LoraLayer(part, name, f) for (part, name), f in grouped.items()))


def _part_of(layer: str) -> tuple[SubModelType, str] | None:
    for prefix, part in (*_KOHYA_PARTS.items(), *_PEFT_PARTS.items()):
        if layer.startswith(prefix):
            return part, layer.removeprefix(prefix)
    return None


@register(base=BaseModelType.ANY, type=ModelType.LORA, format=ModelFormat.LYCORIS)
@register(base=BaseModelType.ANY, type=ModelType.LORA, format=ModelFormat.DIFFUSERS)
class LoraLoader(ModelLoader):
    """A LoRA file, or a diffusers LoRA folder (`pytorch_lora_weights.*`)."""

    def source(self, record: ModelRecord, submodel: SubModelType | None) -> Path:
        if not record.path.is_dir():
            return record.path
        names = [f"pytorch_lora_weights{suffix}" for suffix in (SAFETENSORS, ".bin")]
        found = [record.path / name for name in names if (record.path / name).is_file()]
        return found[0] if found else record.path / names[0]

    def load(self, record, submodel, options) -> Loaded:
        path = self.source(record, submodel)
        if not path.is_file():
            raise files_missing(path)
        if path.suffix not in WEIGHT_SUFFIXES:
            raise unreadable(path, "not a weight file")
        state_dict = read_state_dict(path)
        lora = parse_lora(
            {
                key: value.to(options.dtype) if value.is_floating_point() else value
                for key, value in state_dict.items()
            }
        )
        if not lora.layers:
            raise unreadable(path, "it has no LoRA layers")
        return Loaded(lora, path)


# Original-layout UNet block names (kohya, underscores) -> diffusers names, for UNets whose
# levels have `layers_per_block` resnets: the numbering of the LDM layout.
_RESNET_NAMES = {
    "in_layers_0": "norm1",
    "in_layers_2": "conv1",
    "emb_layers_1": "time_emb_proj",
    "out_layers_0": "norm2",
    "out_layers_3": "conv2",
    "skip_connection": "conv_shortcut",
}
_LDM_BLOCK = re.compile(
    r"^(input_blocks|output_blocks)_(\d+)_(\d+)_(.+)$|^middle_block_(\d+)_(.+)$"
)


def ldm_unet_name(name: str, layers_per_block: int) -> str | None:
    """The diffusers module name (underscored) of an original-layout UNet layer name."""
    match = _LDM_BLOCK.match(name)
    if match is None:
        return None
    if match[5] is not None:
        index, rest = int(match[5]), match[6]
        kind = "attentions_0" if index == 1 else f"resnets_{index // 2}"
        return f"mid_block_{kind}_{_resnet_rest(rest) if index != 1 else rest}"
    section, number, position, rest = match[1], int(match[2]), int(match[3]), match[4]
    if section == "input_blocks" and number == 0:
        return "conv_in"
    if section == "input_blocks":
        level, layer = divmod(number - 1, layers_per_block + 1)
        if layer == layers_per_block:  # the level's downsampler
            return f"down_blocks_{level}_downsamplers_0_conv" if rest == "op" else None
        kind = "resnets" if position == 0 else "attentions"
        block = f"down_blocks_{level}_{kind}_{layer}"
    else:
        level, layer = divmod(number, layers_per_block + 1)
        if position == 0:
            block = f"up_blocks_{level}_resnets_{layer}"
        elif rest.startswith("conv"):
            return f"up_blocks_{level}_upsamplers_0_{rest}"
        else:
            block = f"up_blocks_{level}_attentions_{layer}"
    return f"{block}_{_resnet_rest(rest) if 'resnets' in block else rest}"


def _resnet_rest(rest: str) -> str:
    return _RESNET_NAMES.get(rest, rest)


class _Targets:
    """A part's patchable modules by every name a LoRA may use for them."""

    def __init__(self, part: SubModelType, model: torch.nn.Module) -> None:
        self.part = part
        self.layers_per_block = getattr(getattr(model, "config", None), "layers_per_block", 1)
        self.modules: dict[str, torch.nn.Module] = {}
        for name, module in model.named_modules():
            if not isinstance(getattr(module, "weight", None), torch.nn.Parameter):
                continue
            for form in (name, "text_model." + name, name.removeprefix("text_model.")):
                self.modules.setdefault(form, module)
                self.modules.setdefault(form.replace(".", "_"), module)

    def find(self, name: str) -> torch.nn.Module | None:
        module = self.modules.get(name)
        if module is None and self.part is SubModelType.UNET:
            diffusers_name = ldm_unet_name(name, self.layers_per_block)
            module = self.modules.get(diffusers_name) if diffusers_name else None
        return module


@contextmanager
def applied_loras(
    models: Mapping[SubModelType, torch.nn.Module],
    loras: Sequence[tuple[LoraWeights, float]],
) -> Iterator[int]:
    """Apply each LoRA, scaled by its weight, to the parts in `models` (UNET,
    TEXT_ENCODER, TEXT_ENCODER_2) for the duration of the block; yields how many layers
    were patched. Layers of parts not given, or of names the model lacks, are skipped;
    a layer whose shape does not fit its weight is FAILED_PRECONDITION LORA_INCOMPATIBLE.
    Whatever happens inside, leaving the block restores every weight bit for bit.
    """
    targets = {part: _Targets(part, model) for part, model in models.items()}
    originals: dict[int, tuple[torch.nn.Parameter, torch.Tensor]] = {}
    patched = skipped = 0
    try:
        with torch.no_grad():
            for lora, scale in loras:
                for layer in lora.layers:
                    module = targets[layer.part].find(layer.name) if layer.part in targets else None
                    if module is None:
                        skipped += 1
                        continue
                    _patch(module.weight, layer, scale, originals)
                    patched += 1
        if skipped:
            log.debug("LoRA layers without a target skipped", skipped=skipped, patched=patched)
        yield patched
    finally:
        for parameter, original in originals.values():
            parameter.data = original


def _patch(
    parameter: torch.nn.Parameter,
    layer: LoraLayer,
    scale: float,
    originals: dict[int, tuple[torch.nn.Parameter, Any]],
) -> None:
    delta = layer.delta().to(parameter.device)
    if delta.numel() != parameter.numel():
        raise FailedPreconditionError(
            f"LoRA layer {layer.name} has shape {tuple(delta.shape)}, its target "
            f"{tuple(parameter.shape)}: the LoRA does not fit this model",
            reason=LORA_INCOMPATIBLE,
            metadata={"layer": layer.name},
        )
    originals.setdefault(id(parameter), (parameter, parameter.data))
    updated = parameter.data.float() + scale * delta.reshape(parameter.shape)
    parameter.data = updated.to(parameter.dtype)
