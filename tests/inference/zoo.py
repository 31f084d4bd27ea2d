"""The model zoo with what inference tests need on top: real single-file checkpoints of
the tiny pipeline, a folder with fp16 files for some parts only, and a LoRA and an
embedding that fit the tiny sd-1 pipeline."""

from __future__ import annotations

import shutil
from functools import cached_property
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tests.inference.checkpoints import write_sd1_checkpoint, write_vae_checkpoint
from tests.model_fixtures import ModelZoo

# Layers of the tiny sd-1 pipeline a LoRA patches, each named as a different format does.
LORA_UNET_DIFFUSERS = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
LORA_UNET_ORIGINAL = "lora_unet_output_blocks_1_1_transformer_blocks_0_attn1_to_q"
LORA_TEXT = "lora_te_text_model_encoder_layers_0_self_attn_k_proj"
EMBEDDING_TRIGGER = "<tiny-style>"


class InferenceZoo(ModelZoo):
    @cached_property
    def sd1_single_file(self) -> Path:
        return write_sd1_checkpoint(self.sd1_diffusers, self.root / "sd1_tiny.safetensors")

    @cached_property
    def sd1_single_file_ckpt(self) -> Path:
        return write_sd1_checkpoint(self.sd1_diffusers, self.root / "sd1_tiny.ckpt")

    @cached_property
    def vae_single_file(self) -> Path:
        return write_vae_checkpoint(self.vae_diffusers, self.root / "tiny_vae.safetensors")

    @cached_property
    def sd1_mixed_variant(self) -> Path:
        """The sd-1 pipeline with both files for its UNet (the fp16 one rounded, so that
        a test tells them apart) and only the default file for every other part."""
        folder = self.root / "sd1_mixed"
        shutil.copytree(self.sd1_diffusers, folder)
        unet = folder / "unet"
        weights = load_file(unet / "diffusion_pytorch_model.safetensors")
        half = {key: value.half() for key, value in weights.items()}
        save_file(half, str(unet / "diffusion_pytorch_model.fp16.safetensors"))
        return folder

    @cached_property
    def sd1_fp16_vae_only(self) -> Path:
        """fp16 files for the VAE only: the default files everywhere else."""
        folder = self.root / "sd1_fp16_vae_only"
        shutil.copytree(self.sd1_diffusers, folder)
        shutil.rmtree(folder / "vae")
        shutil.copytree(self.sd1_diffusers_fp16 / "vae", folder / "vae")
        return folder

    @cached_property
    def tiny_lora(self) -> Path:
        """A rank-4 kohya LoRA on two UNet attention layers (one named the diffusers way,
        one the original way) and a text encoder layer of the tiny sd-1 pipeline."""
        generator = torch.Generator().manual_seed(1)
        shapes = {
            LORA_UNET_DIFFUSERS: (64, 768),
            LORA_UNET_ORIGINAL: (64, 64),
            LORA_TEXT: (768, 768),
        }
        tensors = {}
        for layer, (out_features, in_features) in shapes.items():
            tensors[f"{layer}.lora_down.weight"] = torch.randn(4, in_features, generator=generator)
            tensors[f"{layer}.lora_up.weight"] = torch.randn(out_features, 4, generator=generator)
            tensors[f"{layer}.alpha"] = torch.tensor(4.0)
        path = self.root / "tiny_lora.safetensors"
        save_file(tensors, str(path))
        return path

    @cached_property
    def tiny_embedding(self) -> Path:
        """Two 768-wide vectors, as an `emb_params` file."""
        generator = torch.Generator().manual_seed(2)
        path = self.root / "tiny_embedding.safetensors"
        save_file({"emb_params": torch.randn(2, 768, generator=generator)}, str(path))
        return path
