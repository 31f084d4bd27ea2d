"""Tiny models built offline (never downloaded): the demo models `easel demo install`
installs, and the builders the test suite's model fixtures use.

Diffusers folders are real: tiny pipelines with random weights that diffusers and
transformers save and load, with a CLIP tokenizer written by hand. Upscalers are ESRGAN
state dicts with the real key names and tiny shapes. Everything is seeded, so two builds
are byte-identical. torch, diffusers and transformers are imported with this module:
import it only where they are installed (the `inference` extra).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

# Text-conditioning widths: what tells the bases apart.
WIDTHS = {"sd-1": 768, "sd-2": 1024, "sdxl": 2048, "sdxl-refiner": 1280}
SD_VAE_SCALING = 0.18215
SDXL_VAE_SCALING = 0.13025
UNET_BLOCKS = (32, 64)
# Four levels, so the VAE scales by 8 like every real SD-family VAE (64x64 -> 8x8 latents).
_VAE_BLOCKS = (32, 32, 64, 64)
_MERGES = ["t h", "th e</w>", "a n", "an d</w>", "c a", "ca t</w>", "p h", "ph o"]
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"


def seed_torch() -> None:
    """The same random weights on every build, made on one thread."""
    torch.manual_seed(0)
    torch.set_num_threads(1)


def small_randn(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape) * 0.02


# --- tokenizer and text encoders --------------------------------------------------------


def _byte_chars() -> list[str]:
    """CLIP's byte-level alphabet: each byte as a printable unicode character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def write_clip_tokenizer(dest: Path) -> Path:
    """A tiny CLIP BPE tokenizer by hand: every byte alone and as a word end (`</w>`), a
    few merges and the two special tokens."""
    dest.mkdir(parents=True, exist_ok=True)
    tokens = [*_byte_chars(), *(char + "</w>" for char in _byte_chars())]
    tokens += [merge.replace(" ", "") for merge in _MERGES] + [_BOS, _EOS]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    (dest / "vocab.json").write_text(json.dumps(vocab))
    (dest / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_MERGES) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": _BOS,
        "eos_token": _EOS,
        "unk_token": _EOS,
        "pad_token": _EOS,
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(config))
    return dest


def _tokenizer(dest: Path) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(write_clip_tokenizer(dest))


def _text_config(tokenizer: CLIPTokenizer, width: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


# --- diffusers folders ------------------------------------------------------------------


def _unet(width: int, in_channels: int = 4, *, time_ids: int = 0, upcast: bool = False):
    """A two-level UNet; `time_ids` > 0 adds sdxl's micro-conditioning (6 ids for the base
    model, 5 for the refiner) beside a 32-wide pooled text embedding."""
    extra = (
        {
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": time_ids * 8 + 32,
        }
        if time_ids
        else {}
    )
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=UNET_BLOCKS,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=width,
        attention_head_dim=(2, 4),
        use_linear_projection=width != WIDTHS["sd-1"],
        upcast_attention=upcast,
        **extra,
    )


def tiny_vae(scaling_factor: float) -> AutoencoderKL:
    """A four-level VAE with random weights (scales by 8, as real SD-family VAEs do)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(_VAE_BLOCKS),
        up_block_types=("UpDecoderBlock2D",) * len(_VAE_BLOCKS),
        block_out_channels=_VAE_BLOCKS,
        latent_channels=4,
        sample_size=64,
        scaling_factor=scaling_factor,
    )


def build_sd_pipeline(
    dest: Path,
    base: str = "sd-1",
    *,
    inpaint: bool = False,
    prediction_type: str = "epsilon",
    fp16: bool = False,
) -> Path:
    """A tiny Stable Diffusion pipeline folder (sd-1, sd-2, sdxl or sdxl-refiner) as
    `save_pretrained` writes it; `fp16` saves only the `*.fp16.*` weight files."""
    seed_torch()
    refiner = base == "sdxl-refiner"
    tokenizer = _tokenizer(dest / ("tokenizer_2" if refiner else "tokenizer"))
    scheduler = EulerDiscreteScheduler(prediction_type=prediction_type, steps_offset=1)
    if base in ("sdxl", "sdxl-refiner"):
        pipeline_class = StableDiffusionXLImg2ImgPipeline if refiner else StableDiffusionXLPipeline
        pipe = pipeline_class(
            vae=tiny_vae(SDXL_VAE_SCALING),
            text_encoder=None if refiner else CLIPTextModel(_text_config(tokenizer, 768)),
            text_encoder_2=CLIPTextModelWithProjection(_text_config(tokenizer, 1280)),
            tokenizer=None if refiner else tokenizer,
            tokenizer_2=tokenizer,
            unet=_unet(WIDTHS[base], time_ids=5 if refiner else 6),
            scheduler=scheduler,
            **({"requires_aesthetics_score": True} if refiner else {}),
        )
    else:
        pipeline_class = StableDiffusionInpaintPipeline if inpaint else StableDiffusionPipeline
        pipe = pipeline_class(
            vae=tiny_vae(SD_VAE_SCALING),
            text_encoder=CLIPTextModel(_text_config(tokenizer, WIDTHS[base])),
            tokenizer=tokenizer,
            unet=_unet(
                WIDTHS[base],
                9 if inpaint else 4,
                upcast=prediction_type == "v_prediction",
            ),
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    if fp16:
        pipe = pipe.to(torch.float16)
    pipe.save_pretrained(dest, variant="fp16" if fp16 else None, safe_serialization=True)
    if (dest / "tokenizer_2").is_dir() and not refiner:
        write_clip_tokenizer(dest / "tokenizer_2")  # its BPE files beside tokenizer.json
    return dest


# --- synthetic state dicts --------------------------------------------------------------


def save_safetensors(path: Path, shapes: Mapping[str, tuple[int, ...]]) -> Path:
    """A safetensors file of seeded random tensors with the given names and shapes."""
    seed_torch()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: small_randn(shape) for key, shape in shapes.items()}, str(path))
    return path


def esrgan_shapes(scale: int, *, old_layout: bool = False) -> dict[str, tuple[int, ...]]:
    """An RRDB ESRGAN (one block, 8 features): the new `conv_first`/`body` layout (x2 as
    RealESRGAN does it, pixel-unshuffled input and two upsamplers) or the old `model.N`."""
    nf, gc = 8, 4
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, out_ch: int, in_ch: int) -> None:
        shapes[f"{name}.weight"] = (out_ch, in_ch, 3, 3)
        shapes[f"{name}.bias"] = (out_ch,)

    if old_layout:
        conv("model.0", nf, 3)
        for rdb in (1, 2, 3):
            for index in range(1, 6):
                out_ch = nf if index == 5 else gc
                conv(f"model.1.sub.0.RDB{rdb}.conv{index}.0", out_ch, nf + (index - 1) * gc)
        conv("model.1.sub.1", nf, nf)
        convs = [3, 6, 8, 10] if scale == 4 else [3, 5, 7]
        for position in convs[:-1]:
            conv(f"model.{position}", nf, nf)
        conv(f"model.{convs[-1]}", 3, nf)
        return shapes
    conv("conv_first", nf, 3 if scale == 4 else 12)
    for rdb in (1, 2, 3):
        for index in range(1, 6):
            out_ch = nf if index == 5 else gc
            conv(f"body.0.rdb{rdb}.conv{index}", out_ch, nf + (index - 1) * gc)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        conv(name, nf, nf)
    conv("conv_last", 3, nf)
    return shapes


# --- the demo models --------------------------------------------------------------------


@dataclass(frozen=True)
class DemoModels:
    """Where `build_demo_models` wrote each model."""

    main: Path
    upscaler: Path


def nearest_esrgan_x2() -> dict[str, torch.Tensor]:
    """Weights of the x2 ESRGAN layout (`esrgan_shapes(2)`) that enlarge an image by
    nearest neighbour from one pixel of each 2x2 block: each colour passes from its first
    pixel-unshuffled channel through `conv_first`, the upsampling convolutions and
    `conv_last` unchanged, and the trunk adds nothing. Random weights would give a black
    image; these keep the picture, so the demo's upscaled result shows what was made."""
    weights = {key: torch.zeros(shape) for key, shape in esrgan_shapes(2).items()}
    unshuffled_per_colour = 4
    for colour in range(3):
        weights["conv_first.weight"][colour, colour * unshuffled_per_colour, 1, 1] = 1
        for name in ("conv_up1", "conv_up2", "conv_hr", "conv_last"):
            weights[f"{name}.weight"][colour, colour, 1, 1] = 1
    return weights


def build_demo_models(dest: Path) -> DemoModels:
    """A tiny sd-1 diffusers pipeline with random weights (its images are noise) and a
    tiny x2 ESRGAN upscaler under `dest`, made in seconds on a CPU."""
    upscaler = dest / "tiny-esrgan-x2.safetensors"
    upscaler.parent.mkdir(parents=True, exist_ok=True)
    save_file(nearest_esrgan_x2(), str(upscaler))
    return DemoModels(main=build_sd_pipeline(dest / "tiny-sd1", "sd-1"), upscaler=upscaler)
