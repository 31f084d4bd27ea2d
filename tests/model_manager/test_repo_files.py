"""Choosing a model's files among a HuggingFace repo's (reference/model-facts.md)."""

from __future__ import annotations

from services.common.model_taxonomy import ModelRepoVariant
from services.model_manager.install.hf_repo import choose_files

PIPELINE = [
    "README.md",
    "model_index.json",
    "v1-inference.yaml",
    "sd-v1-5.ckpt",
    "feature_extractor/preprocessor_config.json",
    "safety_checker/config.json",
    "safety_checker/model.safetensors",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder/model.fp16.safetensors",
    "text_encoder/pytorch_model.bin",
    "text_encoder/flax_model.msgpack",
    "tokenizer/merges.txt",
    "tokenizer/vocab.json",
    "tokenizer/tokenizer_config.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors.index.json",
    "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
    "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.non_ema.safetensors",
    "unet/diffusion_pytorch_model.bin",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "onnx/unet/model.onnx",
    "openvino/unet/openvino_model.xml",
]
COMPONENTS = {"scheduler", "text_encoder", "tokenizer", "unet", "vae"}  # no safety checker


def test_default_variant_takes_plain_safetensors_and_every_shard():
    chosen = choose_files(PIPELINE, None, components=COMPONENTS)
    assert chosen == sorted(
        [
            "model_index.json",  # a pipeline's top level: its json configs, nothing else
            "scheduler/scheduler_config.json",
            "text_encoder/config.json",
            "text_encoder/model.safetensors",
            "tokenizer/merges.txt",
            "tokenizer/tokenizer_config.json",
            "tokenizer/vocab.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
            "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
            "unet/diffusion_pytorch_model.safetensors.index.json",
            "vae/config.json",
            "vae/diffusion_pytorch_model.safetensors",
        ]
    )


def test_fp16_takes_labelled_files_where_a_folder_has_them_else_plain_ones():
    chosen = choose_files(PIPELINE, ModelRepoVariant.FP16, components=COMPONENTS)
    weights = [path for path in chosen if path.endswith(".safetensors")]
    assert weights == [
        "text_encoder/model.fp16.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.safetensors",  # no fp16 file here: the default one
    ]


def test_bin_only_folders_keep_their_bin_and_subfolders_narrow():
    paths = ["vae/config.json", "vae/diffusion_pytorch_model.bin", "unet/x.safetensors"]
    assert choose_files([p for p in paths if p.startswith("vae/")], None, prefix="vae/") == [
        "vae/config.json",
        "vae/diffusion_pytorch_model.bin",
    ]


def test_exports_are_taken_only_when_asked_for():
    onnx = choose_files(PIPELINE, ModelRepoVariant.ONNX, components=None)
    assert "onnx/unet/model.onnx" in onnx
    assert not any(path.startswith("openvino/") for path in onnx)
    flax = choose_files(PIPELINE, ModelRepoVariant.FLAX, components=None)
    assert "text_encoder/flax_model.msgpack" in flax
