"""Single-file checkpoints in the original Stable Diffusion layout, written from the tiny
diffusers pipelines of the model zoo, so a test can compare both loads weight for weight.

The key mapping is written out here (diffusers names -> original names) independently of
the loaders, which use diffusers' own conversion the other way.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def _resnet(rest: str) -> str:
    name, _, tail = rest.partition(".")
    return f"{_RESNET[name]}.{tail}"


def unet_to_original(weights: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    per_level = config["layers_per_block"] + 1
    attention_levels = {
        index for index, kind in enumerate(config["up_block_types"]) if kind.startswith("CrossAttn")
    }
    fixed = {
        "conv_in.": "input_blocks.0.0.",
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "add_embedding.linear_1.": "label_emb.0.0.",
        "add_embedding.linear_2.": "label_emb.0.2.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
    }
    result = {}
    for key, tensor in weights.items():
        new = next((key.replace(a, b, 1) for a, b in fixed.items() if key.startswith(a)), None)
        if new is None and (
            m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key)
        ):
            level, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = 1 + level * per_level + layer
            new = (
                f"input_blocks.{index}.0.{_resnet(rest)}"
                if kind == "resnets"
                else f"input_blocks.{index}.1.{rest}"
            )
        elif new is None and (
            m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key)
        ):
            new = f"input_blocks.{(int(m[1]) + 1) * per_level}.0.op.{m[2]}"
        elif new is None and (m := re.match(r"mid_block\.(resnets|attentions)\.(\d)\.(.+)", key)):
            if m[1] == "resnets":
                new = f"middle_block.{int(m[2]) * 2}.{_resnet(m[3])}"
            else:
                new = f"middle_block.1.{m[3]}"
        elif new is None and (
            m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key)
        ):
            level, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = level * per_level + layer
            new = (
                f"output_blocks.{index}.0.{_resnet(rest)}"
                if kind == "resnets"
                else f"output_blocks.{index}.1.{rest}"
            )
        elif new is None and (m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key)):
            level = int(m[1])
            position = 2 if level in attention_levels else 1
            new = f"output_blocks.{level * per_level + per_level - 1}.{position}.conv.{m[2]}"
        assert new is not None, key
        result["model.diffusion_model." + new] = tensor
    return result


def vae_to_original(weights: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    levels = len(config["block_out_channels"])
    result = {}
    for key, tensor in weights.items():
        new = key
        if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = (
                f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
            )
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            level = levels - 1 - int(m[1])
            new = f"decoder.up.{level}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            new = f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        elif m := re.match(
            r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key
        ):
            new = f"{m[1]}.mid.attn_1.{_VAE_ATTENTION[m[2]]}.{m[3]}"
            if m[2] != "group_norm" and m[3] == "weight":
                tensor = tensor.reshape(*tensor.shape, 1, 1)
        elif m := re.match(r"(encoder|decoder)\.conv_norm_out\.(.+)", key):
            new = f"{m[1]}.norm_out.{m[2]}"
        result[new] = tensor
    return result


def clip_to_original(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}text_model.{key.removeprefix('text_model.')}": t for key, t in weights.items()
    }


def write_sd1_checkpoint(pipeline: Path, dest: Path) -> Path:
    """The pipeline's UNet, VAE and text encoder in one file: `.safetensors`, or a
    training-style `{"state_dict": ...}` pickle for `.ckpt`."""
    unet_config = json.loads((pipeline / "unet" / "config.json").read_text())
    vae_config = json.loads((pipeline / "vae" / "config.json").read_text())
    tensors = {
        **unet_to_original(
            load_file(pipeline / "unet" / "diffusion_pytorch_model.safetensors"), unet_config
        ),
        **{
            "first_stage_model." + key: value
            for key, value in vae_to_original(
                load_file(pipeline / "vae" / "diffusion_pytorch_model.safetensors"), vae_config
            ).items()
        },
        **clip_to_original(
            load_file(pipeline / "text_encoder" / "model.safetensors"),
            "cond_stage_model.transformer.",
        ),
    }
    tensors = {key: value.contiguous() for key, value in tensors.items()}
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.suffix == ".safetensors":
        save_file(tensors, str(dest))
    else:
        torch.save({"state_dict": tensors, "global_step": 470000}, dest)
    return dest


def write_vae_checkpoint(vae_folder: Path, dest: Path) -> Path:
    config = json.loads((vae_folder / "config.json").read_text())
    weights = load_file(vae_folder / "diffusion_pytorch_model.safetensors")
    tensors = {key: value.contiguous() for key, value in vae_to_original(weights, config).items()}
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dest))
    return dest
