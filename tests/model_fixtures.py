"""Tiny models with random weights, built (never downloaded) in every format Easel reads.

Diffusers folders are real: tiny pipelines (built by `clients.demo_models`, which also
makes `easel demo install`'s models) and components that diffusers and transformers save
and load. Single-file checkpoints of the original Stable Diffusion layout, LoRAs,
embeddings, adapters and upscalers are synthetic state dicts: the real key names with the
shapes that identify them (the text-conditioning widths, the UNet's input channels) and
small sizes elsewhere, which is what probing reads. Everything is seeded, so two builds
are byte-identical (but for the legacy-format pickle, which names its storages by memory
address), and `ModelZoo` builds each model on first use only.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import struct
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path

import torch
from diffusers import (
    ControlNetModel,
    T2IAdapter,
)
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from clients.demo_models import (
    SD_VAE_SCALING,
    SDXL_VAE_SCALING,
    UNET_BLOCKS,
    WIDTHS,
    build_sd_pipeline,
    esrgan_shapes,
    save_safetensors,
    seed_torch,
    small_randn,
    tiny_vae,
)

IMAGE_ENCODER_ID = "InvokeAI/ip_adapter_sd_image_encoder"
SDXL_IMAGE_ENCODER_ID = "InvokeAI/ip_adapter_sdxl_image_encoder"


# --- diffusers folders ------------------------------------------------------------------


def build_vae_diffusers(dest: Path, scaling_factor: float = SD_VAE_SCALING) -> Path:
    seed_torch()
    tiny_vae(scaling_factor).save_pretrained(dest)
    return dest


def build_controlnet_diffusers(dest: Path, base: str = "sd-1") -> Path:
    seed_torch()
    ControlNetModel(
        in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        block_out_channels=UNET_BLOCKS,
        layers_per_block=1,
        cross_attention_dim=WIDTHS[base],
        attention_head_dim=(2, 4),
        conditioning_embedding_out_channels=(16, 32),
    ).save_pretrained(dest)
    return dest


def build_clip_vision(dest: Path) -> Path:
    seed_torch()
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=16,
    )
    CLIPVisionModelWithProjection(config).save_pretrained(dest)
    return dest


def build_t2i_adapter(dest: Path, base: str = "sd-1") -> Path:
    seed_torch()
    if base == "sdxl":
        adapter = T2IAdapter(
            channels=[32, 64, 64, 64],
            num_res_blocks=1,
            downscale_factor=16,
            adapter_type="full_adapter_xl",
        )
    else:
        adapter = T2IAdapter(channels=[32, 64], num_res_blocks=1, adapter_type="full_adapter")
    adapter.save_pretrained(dest)
    return dest


# --- synthetic state dicts --------------------------------------------------------------


def save_torch(path: Path, content: object, *, legacy: bool = False) -> Path:
    """`torch.save` of `content`: zip format, or the pre-1.6 legacy format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(content, path, _use_new_zipfile_serialization=not legacy)
    return path


def tensors(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    seed_torch()
    return {key: small_randn(shape) for key, shape in shapes.items()}


def sd_checkpoint_shapes(base: str, in_channels: int = 4) -> dict[str, tuple[int, ...]]:
    """Original Stable Diffusion checkpoint keys (UNet, VAE, text encoder(s))."""
    unet = "model.diffusion_model."
    shapes: dict[str, tuple[int, ...]] = {
        f"{unet}input_blocks.0.0.weight": (32, in_channels, 3, 3),
        f"{unet}input_blocks.0.0.bias": (32,),
        f"{unet}out.2.weight": (4, 32, 3, 3),
        "first_stage_model.encoder.conv_in.weight": (32, 3, 3, 3),
        "first_stage_model.decoder.conv_in.weight": (32, 4, 3, 3),
    }
    attention = "transformer_blocks.0.attn2"
    if base in ("sd-1", "sd-2"):
        shapes[f"{unet}input_blocks.2.1.{attention}.to_k.weight"] = (32, WIDTHS[base])
        shapes[f"{unet}input_blocks.2.1.{attention}.to_v.weight"] = (32, WIDTHS[base])
    else:
        shapes[f"{unet}input_blocks.4.1.{attention}.to_k.weight"] = (64, WIDTHS[base])
        shapes[f"{unet}input_blocks.4.1.{attention}.to_v.weight"] = (64, WIDTHS[base])
    clip_l = "transformer.text_model.embeddings.token_embedding.weight"
    open_clip = "model.token_embedding.weight"
    if base == "sd-1":
        shapes[f"cond_stage_model.{clip_l}"] = (16, 768)
    elif base == "sd-2":
        shapes[f"cond_stage_model.{open_clip}"] = (16, 1024)
    elif base == "sdxl":
        shapes[f"conditioner.embedders.0.{clip_l}"] = (16, 768)
        shapes[f"conditioner.embedders.1.{open_clip}"] = (16, 1280)
    else:
        shapes[f"conditioner.embedders.0.{open_clip}"] = (16, 1280)
    return shapes


def vae_checkpoint_shapes() -> dict[str, tuple[int, ...]]:
    return {
        "encoder.conv_in.weight": (32, 3, 3, 3),
        "encoder.conv_out.weight": (8, 32, 3, 3),
        "quant_conv.weight": (8, 8, 1, 1),
        "post_quant_conv.weight": (4, 4, 1, 1),
        "decoder.conv_in.weight": (32, 4, 3, 3),
        "decoder.conv_out.weight": (3, 32, 3, 3),
    }


def kohya_lora_shapes(base: str) -> dict[str, tuple[int, ...]]:
    """A kohya LoRA: rank-4 down/up pairs on a UNet cross-attention and text encoder(s)."""
    unet_layer = (
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"
        if base == "sdxl"
        else "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    )
    text_layers = (
        {"lora_te1_text_model_encoder_layers_0_self_attn_k_proj": 768}
        | {"lora_te2_text_model_encoder_layers_0_self_attn_k_proj": 1280}
        if base == "sdxl"
        else {"lora_te_text_model_encoder_layers_0_self_attn_k_proj": WIDTHS[base]}
    )
    shapes: dict[str, tuple[int, ...]] = {}
    for layer, width in {unet_layer: WIDTHS[base], **text_layers}.items():
        shapes[f"{layer}.lora_down.weight"] = (4, width)
        shapes[f"{layer}.lora_up.weight"] = (32, 4)
        shapes[f"{layer}.alpha"] = ()
    return shapes


def loha_shapes(base: str) -> dict[str, tuple[int, ...]]:
    layer = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    width = WIDTHS[base]
    return {
        f"{layer}.hada_w1_a": (32, 4),
        f"{layer}.hada_w1_b": (4, width),
        f"{layer}.hada_w2_a": (32, 4),
        f"{layer}.hada_w2_b": (4, width),
        f"{layer}.alpha": (),
    }


def lokr_shapes(base: str) -> dict[str, tuple[int, ...]]:
    """LoKr: the layer's weight is kron(w1, w2), so its input width is the product."""
    layer = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"
    return {f"{layer}.lokr_w1": (4, 8), f"{layer}.lokr_w2": (16, WIDTHS[base] // 8)}


def peft_lora_shapes(base: str, prefix: str = "unet.") -> dict[str, tuple[int, ...]]:
    """A diffusers/PEFT LoRA (`lora_A` / `lora_B`)."""
    layer = f"{prefix}down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    return {f"{layer}.lora_A.weight": (4, WIDTHS[base]), f"{layer}.lora_B.weight": (64, 4)}


# --- hostile and broken files -----------------------------------------------------------


class _Payload:
    """Pickles as a call of `os.system`: what a malicious checkpoint smuggles in."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (self.command,)


class _ExecPayload:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (self.code,)


def write_malicious_pickles(dest: Path, marker: Path) -> dict[str, Path]:
    """Checkpoints that create `marker` when unpickled: a torch zip archive whose pickle
    calls `os.system`, a protocol-0 pickle naming `os.system` outright, and a plain pickle
    calling `builtins.exec`."""
    dest.mkdir(parents=True, exist_ok=True)
    command = f"touch {marker}"
    archive = save_torch(
        dest / "evil.ckpt",
        {"state_dict": tensors(sd_checkpoint_shapes("sd-1")), "callback": _Payload(command)},
    )
    plain = dest / "evil_os.pt"
    plain.write_bytes(b"cos\nsystem\n(V" + command.encode() + b"\ntR.")
    exec_pickle = dest / "evil_exec.bin"
    exec_pickle.write_bytes(pickle.dumps(_ExecPayload(f"open({str(marker)!r}, 'w').close()")))
    return {"archive": archive, "os_system": plain, "exec": exec_pickle}


def write_sparse_checkpoint(path: Path, size: int) -> Path:
    """An sd-1 checkpoint of about `size` bytes whose data is a hole: a real header, then
    the file extended (sparse, no disk used) over the tensor bytes it describes."""
    to_k = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
    conv_in = "model.diffusion_model.input_blocks.0.0.weight"
    rows = max(1, size // (768 * 4))
    header = {
        conv_in: {"dtype": "F32", "shape": [32, 4, 3, 3], "data_offsets": [0, 4608]},
        to_k: {"dtype": "F32", "shape": [rows, 768], "data_offsets": [4608, 4608 + rows * 3072]},
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as file:
        file.write(struct.pack("<Q", len(raw)) + raw)
        file.truncate(8 + len(raw) + 4608 + rows * 3072)
    return path


def write_truncated(path: Path) -> Path:
    """A safetensors checkpoint cut short, as an interrupted download leaves it."""
    save_safetensors(path, sd_checkpoint_shapes("sd-1"))
    with path.open("r+b") as file:
        file.truncate(path.stat().st_size - 1000)
    return path


# --- the zoo ----------------------------------------------------------------------------


class ModelZoo:
    """Every fixture model under one root, each built the first time it is asked for."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _file(self, name: str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    # main models
    @cached_property
    def sd1_diffusers(self) -> Path:
        return build_sd_pipeline(self.root / "sd1_diffusers", "sd-1")

    @cached_property
    def sd1_diffusers_fp16(self) -> Path:
        return build_sd_pipeline(self.root / "sd1_diffusers_fp16", "sd-1", fp16=True)

    @cached_property
    def sd1_inpaint_diffusers(self) -> Path:
        return build_sd_pipeline(self.root / "sd1_inpaint", "sd-1", inpaint=True)

    @cached_property
    def sd2_v_diffusers(self) -> Path:
        return build_sd_pipeline(self.root / "sd2_v", "sd-2", prediction_type="v_prediction")

    @cached_property
    def sdxl_diffusers(self) -> Path:
        return build_sd_pipeline(self.root / "sdxl_diffusers", "sdxl")

    @cached_property
    def sdxl_refiner_diffusers(self) -> Path:
        return build_sd_pipeline(self.root / "sdxl_refiner_diffusers", "sdxl-refiner")

    @cached_property
    def sd1_checkpoint(self) -> Path:
        return save_safetensors(self._file("sd1_model.safetensors"), sd_checkpoint_shapes("sd-1"))

    @cached_property
    def sd1_inpaint_checkpoint(self) -> Path:
        shapes = sd_checkpoint_shapes("sd-1", in_channels=9)
        return save_safetensors(self._file("sd1_inpaint.safetensors"), shapes)

    @cached_property
    def sd2_checkpoint(self) -> Path:
        return save_safetensors(self._file("sd2_768_v.safetensors"), sd_checkpoint_shapes("sd-2"))

    @cached_property
    def sd2_depth_checkpoint(self) -> Path:
        shapes = sd_checkpoint_shapes("sd-2", in_channels=5)
        return save_safetensors(self._file("sd2_depth.safetensors"), shapes)

    @cached_property
    def sdxl_checkpoint(self) -> Path:
        return save_safetensors(self._file("sdxl_base.safetensors"), sd_checkpoint_shapes("sdxl"))

    @cached_property
    def sdxl_refiner_checkpoint(self) -> Path:
        shapes = sd_checkpoint_shapes("sdxl-refiner")
        return save_safetensors(self._file("sdxl_refiner.safetensors"), shapes)

    @cached_property
    def sd1_ckpt(self) -> Path:
        """A training checkpoint pickled by torch.save (zip format)."""
        content = {"state_dict": tensors(sd_checkpoint_shapes("sd-1")), "global_step": 470000}
        return save_torch(self._file("sd1_pickled.ckpt"), content)

    @cached_property
    def sd2_base_ckpt(self) -> Path:
        """An sd-2 512 base checkpoint (epsilon, global_step 220000), legacy pickle format."""
        content = {"state_dict": tensors(sd_checkpoint_shapes("sd-2")), "global_step": 220000}
        return save_torch(self._file("sd2_base.ckpt"), content, legacy=True)

    @cached_property
    def sd2_v_ckpt(self) -> Path:
        content = {"state_dict": tensors(sd_checkpoint_shapes("sd-2")), "global_step": 110000}
        return save_torch(self._file("sd2_v.ckpt"), content)

    # VAEs
    @cached_property
    def vae_checkpoint(self) -> Path:
        return save_safetensors(self._file("vae-ft-mse.safetensors"), vae_checkpoint_shapes())

    @cached_property
    def sdxl_vae_checkpoint(self) -> Path:
        return save_safetensors(self._file("sdxl_vae.safetensors"), vae_checkpoint_shapes())

    @cached_property
    def vae_diffusers(self) -> Path:
        return build_vae_diffusers(self.root / "sd_vae", SD_VAE_SCALING)

    @cached_property
    def sdxl_vae_diffusers(self) -> Path:
        return build_vae_diffusers(self.root / "vae_fp16_fix", SDXL_VAE_SCALING)

    # LoRAs
    @cached_property
    def sd1_lora(self) -> Path:
        return save_safetensors(self._file("sd1_lora.safetensors"), kohya_lora_shapes("sd-1"))

    @cached_property
    def sdxl_lora(self) -> Path:
        return save_safetensors(self._file("sdxl_lora.safetensors"), kohya_lora_shapes("sdxl"))

    @cached_property
    def sd2_peft_lora(self) -> Path:
        return save_safetensors(self._file("sd2_peft_lora.safetensors"), peft_lora_shapes("sd-2"))

    @cached_property
    def sd1_loha(self) -> Path:
        return save_safetensors(self._file("sd1_loha.safetensors"), loha_shapes("sd-1"))

    @cached_property
    def sdxl_lokr(self) -> Path:
        return save_safetensors(self._file("sdxl_lokr.safetensors"), lokr_shapes("sdxl"))

    @cached_property
    def sd1_lora_pickle(self) -> Path:
        return save_torch(self._file("sd1_lora.pt"), tensors(kohya_lora_shapes("sd-1")))

    @cached_property
    def lora_diffusers(self) -> Path:
        folder = self.root / "lora_diffusers"
        save_safetensors(folder / "pytorch_lora_weights.safetensors", peft_lora_shapes("sd-1"))
        return folder

    # textual inversions
    @cached_property
    def sd1_embedding_pt(self) -> Path:
        """An A1111 embedding: `string_to_param` plus bookkeeping."""
        content = {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": tensors({"*": (2, 768)})["*"]},
            "name": "my_style",
            "step": 1000,
        }
        return save_torch(self._file("my_style.pt"), content)

    @cached_property
    def sd2_embedding(self) -> Path:
        return save_safetensors(self._file("sd2_embedding.safetensors"), {"emb_params": (2, 1024)})

    @cached_property
    def sdxl_embedding(self) -> Path:
        shapes = {"clip_l": (2, 768), "clip_g": (2, 1280)}
        return save_safetensors(self._file("sdxl_embedding.safetensors"), shapes)

    @cached_property
    def embedding_folder(self) -> Path:
        folder = self.root / "cat_toy"
        save_torch(folder / "learned_embeds.bin", {"<cat-toy>": tensors({"v": (768,)})["v"]})
        return folder

    # adapters and upscalers
    @cached_property
    def controlnet_diffusers(self) -> Path:
        return build_controlnet_diffusers(self.root / "controlnet_canny", "sd-1")

    @cached_property
    def controlnet_checkpoint(self) -> Path:
        """An original-layout (`control_model.`) sd-2 ControlNet."""
        block = "control_model.input_blocks.2.1.transformer_blocks.0.attn2"
        shapes = {
            "control_model.input_hint_block.0.weight": (16, 3, 3, 3),
            f"{block}.to_k.weight": (32, 1024),
            f"{block}.to_v.weight": (32, 1024),
            "control_model.zero_convs.0.0.weight": (32, 32, 1, 1),
        }
        return save_safetensors(self._file("control_sd2_depth.safetensors"), shapes)

    @cached_property
    def controlnet_single_file(self) -> Path:
        """The tiny diffusers ControlNet's own weights in one file (`controlnet_*` keys)."""
        weights = self.controlnet_diffusers / "diffusion_pytorch_model.safetensors"
        path = self._file("controlnet_sd1.safetensors")
        path.write_bytes(weights.read_bytes())
        return path

    @cached_property
    def ip_adapter(self) -> Path:
        folder = self.root / "ip_adapter_sd15"
        content = {
            "image_proj": tensors({"proj.weight": (4 * 768, 16), "norm.weight": (768,)}),
            "ip_adapter": tensors({"1.to_k_ip.weight": (32, 768), "1.to_v_ip.weight": (32, 768)}),
        }
        save_torch(folder / "ip_adapter.bin", content)
        (folder / "image_encoder.txt").write_text(IMAGE_ENCODER_ID + "\n")
        return folder

    @cached_property
    def sdxl_ip_adapter(self) -> Path:
        folder = self.root / "ip_adapter_sdxl"
        shapes = {
            "image_proj.proj.weight": (4 * 2048, 16),
            "ip_adapter.1.to_k_ip.weight": (64, 2048),
            "ip_adapter.1.to_v_ip.weight": (64, 2048),
        }
        save_safetensors(folder / "ip_adapter.safetensors", shapes)
        (folder / "image_encoder.txt").write_text(SDXL_IMAGE_ENCODER_ID)
        return folder

    @cached_property
    def clip_vision(self) -> Path:
        return build_clip_vision(self.root / "ip_adapter_sd_image_encoder")

    @cached_property
    def t2i_adapter(self) -> Path:
        return build_t2i_adapter(self.root / "t2i_canny_sd15", "sd-1")

    @cached_property
    def sdxl_t2i_adapter(self) -> Path:
        return build_t2i_adapter(self.root / "t2i_canny_sdxl", "sdxl")

    @cached_property
    def esrgan_x4(self) -> Path:
        return save_safetensors(self._file("RealESRGAN_x4plus.safetensors"), esrgan_shapes(4))

    @cached_property
    def esrgan_x2(self) -> Path:
        return save_torch(self._file("RealESRGAN_x2plus.pth"), tensors(esrgan_shapes(2)))

    @cached_property
    def esrgan_old_x4(self) -> Path:
        shapes = esrgan_shapes(4, old_layout=True)
        return save_torch(self._file("4x_ESRGAN_old.pth"), tensors(shapes))

    @cached_property
    def esrgan_old_x2(self) -> Path:
        shapes = esrgan_shapes(2, old_layout=True)
        return save_safetensors(self._file("2x_ESRGAN_old.safetensors"), shapes)

    # not models
    @cached_property
    def malicious_marker(self) -> Path:
        """The file the malicious pickles would create if anything ran them."""
        return self.root / "pwned"

    @cached_property
    def malicious(self) -> dict[str, Path]:
        return write_malicious_pickles(self.root / "malicious", self.malicious_marker)

    @cached_property
    def truncated(self) -> Path:
        return write_truncated(self._file("truncated.safetensors"))

    @cached_property
    def random_bytes(self) -> Path:
        path = self._file("noise/model.safetensors")
        path.write_bytes(random.Random(0).randbytes(4096))
        return path

    @cached_property
    def text_file(self) -> Path:
        path = self._file("notes.txt")
        path.write_text("not a model\n")
        return path

    @cached_property
    def unknown_weights(self) -> Path:
        """A valid safetensors file of no known kind."""
        shapes = {"encoder.layer.0.weight": (8, 8), "head.weight": (2, 8)}
        return save_safetensors(self._file("classifier.safetensors"), shapes)

    @cached_property
    def unknown_folder(self) -> Path:
        folder = self.root / "docs"
        folder.mkdir(exist_ok=True)
        (folder / "README.md").write_text("# not a model\n")
        return folder

    @cached_property
    def sparse_2g(self) -> Path:
        return write_sparse_checkpoint(self._file("sparse_2g.safetensors"), 2 * 1024**3)
