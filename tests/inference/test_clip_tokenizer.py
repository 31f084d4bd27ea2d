"""Single-file checkpoints get CLIP's tokenizer offline, built from the vocabulary Easel
ships, when their text encoders embed CLIP's 49408 tokens (and only then)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from services.common.errors import FailedPreconditionError
from services.common.model_taxonomy import BaseModelType, ModelFormat, SubModelType
from services.inference.loading.checkpoints import CONFIGS
from services.inference.loading.clip_tokenizer import VOCAB_SIZE, clip_tokenizer
from services.inference.loading.convert_cache import ConvertCache
from services.inference.loading.loaders import LOADERS
from services.inference.loading.registry import LoadOptions
from tests.inference.checkpoints import clip_to_original, unet_to_original, vae_to_original
from tests.inference.conftest import record

A_PHOTO_OF_A_CAT = [49406, 320, 1125, 539, 320, 2368, 49407]  # CLIP's own ids
EOS_ID, EXCLAMATION_ID = 49407, 0


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a tokenizer load tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize(
    ("config", "pad_id"),
    [
        ("sd-1/tokenizer", EOS_ID),
        ("sd-2/tokenizer", EXCLAMATION_ID),
        ("sdxl/tokenizer", EOS_ID),
        ("sdxl/tokenizer_2", EXCLAMATION_ID),
        ("sdxl-refiner/tokenizer_2", EXCLAMATION_ID),
    ],
)
def test_the_shipped_vocabulary_tokenizes_as_clip_does(config, pad_id):
    tokenizer = clip_tokenizer(CONFIGS / config)
    assert len(tokenizer) == VOCAB_SIZE
    assert tokenizer("a photo of a cat").input_ids == A_PHOTO_OF_A_CAT
    assert tokenizer("A  Photo of a CAT").input_ids == A_PHOTO_OF_A_CAT  # lower-cased
    padded = tokenizer("a photo of a cat", padding="max_length").input_ids
    assert len(padded) == tokenizer.model_max_length == 77
    assert padded[: len(A_PHOTO_OF_A_CAT)] == A_PHOTO_OF_A_CAT
    assert set(padded[len(A_PHOTO_OF_A_CAT) :]) == {pad_id}


def _text_encoder(projection: bool) -> dict[str, torch.Tensor]:
    """A text encoder with CLIP's vocabulary and a tiny width."""
    config = CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=8,
    )
    torch.manual_seed(0)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).state_dict()


def _open_clip(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIP text encoder in OpenCLIP's layout (sd-2, sdxl's second)."""
    names = {
        "self_attn.out_proj": "attn.out_proj",
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    out = {
        "token_embedding.weight": weights["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": weights["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": weights["text_model.final_layer_norm.weight"],
        "ln_final.bias": weights["text_model.final_layer_norm.bias"],
        "text_projection": weights["text_projection.weight"].T,
    }
    layer = "text_model.encoder.layers.0."
    for kind in ("weight", "bias"):
        out[f"transformer.resblocks.0.attn.in_proj_{kind}"] = torch.cat(
            [weights[f"{layer}self_attn.{p}_proj.{kind}"] for p in "qkv"]
        )
        for old, new in names.items():
            out[f"transformer.resblocks.0.{new}.{kind}"] = weights[f"{layer}{old}.{kind}"]
    return {prefix + key: value for key, value in out.items()}


def _write_checkpoint(pipeline: Path, dest: Path, encoders: dict[str, torch.Tensor]) -> Path:
    """The tiny pipeline's UNet and VAE with `encoders` (already under their keys)."""
    unet_config = json.loads((pipeline / "unet" / "config.json").read_text())
    vae_config = json.loads((pipeline / "vae" / "config.json").read_text())
    unet = load_file(pipeline / "unet" / "diffusion_pytorch_model.safetensors")
    vae = load_file(pipeline / "vae" / "diffusion_pytorch_model.safetensors")
    tensors = {
        **unet_to_original(unet, unet_config),
        **{f"first_stage_model.{k}": v for k, v in vae_to_original(vae, vae_config).items()},
        **encoders,
    }
    tensors = {key: value.contiguous() for key, value in tensors.items()}
    if dest.suffix == ".safetensors":
        save_file(tensors, str(dest))
    else:
        torch.save({"state_dict": tensors}, dest)
    return dest


@pytest.fixture(scope="module")
def clip_checkpoints(zoo, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clip_checkpoints")
    sd1 = clip_to_original(_text_encoder(False), "cond_stage_model.transformer.")
    sdxl = {
        **clip_to_original(_text_encoder(False), "conditioner.embedders.0.transformer."),
        **_open_clip(_text_encoder(True), "conditioner.embedders.1.model."),
    }
    return {
        "sd-1.safetensors": _write_checkpoint(zoo.sd1_diffusers, folder / "sd1.safetensors", sd1),
        "sd-1.ckpt": _write_checkpoint(zoo.sd1_diffusers, folder / "sd1.ckpt", sd1),
        "sdxl.safetensors": _write_checkpoint(
            zoo.sdxl_diffusers, folder / "sdxl.safetensors", sdxl
        ),
    }


@pytest.mark.parametrize(
    ("name", "base", "pads"),
    [
        ("sd-1.safetensors", BaseModelType.SD_1, {SubModelType.TOKENIZER: EOS_ID}),
        ("sd-1.ckpt", BaseModelType.SD_1, {SubModelType.TOKENIZER: EOS_ID}),
        (
            "sdxl.safetensors",
            BaseModelType.SDXL,
            {SubModelType.TOKENIZER: EOS_ID, SubModelType.TOKENIZER_2: EXCLAMATION_ID},
        ),
    ],
)
def test_a_checkpoint_loads_clips_tokenizer_offline(clip_checkpoints, name, base, pads, tmp_path):
    """No config_path: the shipped configuration, which has no vocabulary files. A
    tokenizer load converts nothing (tokenizers are built at each load)."""
    checkpoint = record(clip_checkpoints[name], base=base, format=ModelFormat.CHECKPOINT)
    convert = ConvertCache(tmp_path / "convert", 1024**3)
    options = LoadOptions(dtype=torch.float32, root=tmp_path, convert_cache=convert)
    loader = LOADERS.check_submodel(checkpoint, SubModelType.TOKENIZER)
    for part, pad_id in pads.items():
        loaded = loader.load(checkpoint, part, options)
        assert loaded.path == checkpoint.path
        tokenizer = loaded.model
        assert len(tokenizer) == VOCAB_SIZE
        assert tokenizer("a photo of a cat").input_ids == A_PHOTO_OF_A_CAT
        assert tokenizer.pad_token_id == pad_id
        assert tokenizer.model_max_length == 77
    assert not (tmp_path / "convert" / checkpoint.key).exists()


def test_a_text_encoder_of_another_vocabulary_gets_no_clip_tokenizer(zoo):
    """The tiny pipeline's text encoder embeds a handful of tokens: CLIP's ids would run
    past its embedding, so its tokenizer must come from a config_path folder."""
    checkpoint = record(zoo.sd1_single_file, format=ModelFormat.CHECKPOINT)
    loader = LOADERS.check_submodel(checkpoint, SubModelType.TOKENIZER)
    options = LoadOptions(dtype=torch.float32, root=Path("/"))
    with pytest.raises(FailedPreconditionError) as caught:
        loader.load(checkpoint, SubModelType.TOKENIZER, options)
    assert caught.value.reason == "MODEL_FILES_MISSING"
    encoder_config = zoo.sd1_diffusers / "text_encoder" / "config.json"
    rows = json.loads(encoder_config.read_text())["vocab_size"]
    assert f"text_encoder of {rows} tokens" in caught.value.message
    assert "config_path" in caught.value.message
    configured = record(
        zoo.sd1_single_file, format=ModelFormat.CHECKPOINT, config_path=str(zoo.sd1_diffusers)
    )
    tokenizer = loader.load(configured, SubModelType.TOKENIZER, options).model
    assert len(tokenizer) == rows


def test_a_folder_tokenizer_without_its_vocabulary_is_refused(zoo, tmp_path):
    """A diffusers folder gets no CLIP stand-in: without vocabulary files its tokenizer is
    MODEL_FILES_MISSING, never a silent empty tokenizer."""
    folder = tmp_path / "no_vocabulary"
    (folder / "tokenizer").mkdir(parents=True)
    (folder / "model_index.json").write_bytes((zoo.sd1_diffusers / "model_index.json").read_bytes())
    config = zoo.sd1_diffusers / "tokenizer" / "tokenizer_config.json"
    (folder / "tokenizer" / "tokenizer_config.json").write_bytes(config.read_bytes())
    main = record(folder)
    loader = LOADERS.check_submodel(main, SubModelType.TOKENIZER)
    with pytest.raises(FailedPreconditionError) as caught:
        loader.load(main, SubModelType.TOKENIZER, LoadOptions(torch.float32, tmp_path))
    assert caught.value.reason == "MODEL_FILES_MISSING"
    assert "vocab.json" in caught.value.message
