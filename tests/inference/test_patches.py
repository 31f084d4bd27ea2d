"""LoRA and textual inversion applied for one piece of work: they change what the model
computes, and leave the cached weights bit-identical afterwards, also after a failure."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.common.model_taxonomy import ModelFormat, ModelType, SubModelType
from services.inference.loading.lora import LoraWeights, applied_loras, ldm_unet_name
from services.inference.loading.textual_inversion import applied_embeddings
from tests.inference.conftest import record
from tests.inference.test_loaders import load
from tests.inference.zoo import EMBEDDING_TRIGGER

UNET, TEXT = SubModelType.UNET, SubModelType.TEXT_ENCODER


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def assert_bit_identical(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype, name
        assert torch.equal(after[name], tensor), name


def unet_output(unet: torch.nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 4, 768, generator=generator)
    with torch.no_grad():
        return unet(sample, 10, encoder_hidden_states=context).sample


def load_lora(path: Path, format: ModelFormat = ModelFormat.LYCORIS) -> LoraWeights:
    return load(record(Path(path), type=ModelType.LORA, format=format)).model


def load_embedding(path: Path, format: ModelFormat = ModelFormat.EMBEDDING_FILE):
    return load(record(path, type=ModelType.TEXTUAL_INVERSION, format=format)).model


@pytest.fixture
def parts(zoo):
    main = record(zoo.sd1_diffusers)
    return {part: load(main, part).model for part in (UNET, TEXT, SubModelType.TOKENIZER)}


@pytest.fixture
def lora(zoo) -> LoraWeights:
    return load_lora(zoo.tiny_lora)


def test_original_layout_names_map_to_diffusers_modules():
    assert ldm_unet_name("output_blocks_1_1_transformer_blocks_0_attn1_to_q", 1) == (
        "up_blocks_0_attentions_1_transformer_blocks_0_attn1_to_q"
    )
    assert ldm_unet_name("input_blocks_4_0_in_layers_2", 2) == "down_blocks_1_resnets_0_conv1"
    assert ldm_unet_name("middle_block_2_out_layers_3", 2) == "mid_block_resnets_1_conv2"


def test_a_lora_changes_the_output_and_is_removed_bit_for_bit(parts, lora):
    unet, encoder = parts[UNET], parts[TEXT]
    before_unet, before_encoder = snapshot(unet), snapshot(encoder)
    plain = unet_output(unet)
    with applied_loras({UNET: unet, TEXT: encoder}, [(lora, 0.8)]) as patched:
        assert patched == 3  # both UNet naming styles and the text encoder layer
        assert not torch.allclose(unet_output(unet), plain)
    assert_bit_identical(unet, before_unet)
    assert_bit_identical(encoder, before_encoder)
    assert torch.equal(unet_output(unet), plain)


def test_a_failure_inside_the_block_still_removes_the_lora(parts, lora):
    unet = parts[UNET]
    before = snapshot(unet)
    with (
        pytest.raises(RuntimeError, match="denoising failed"),
        applied_loras({UNET: unet}, [(lora, 1.0)]),
    ):
        raise RuntimeError("denoising failed")
    assert_bit_identical(unet, before)


def test_a_weight_of_zero_changes_nothing(parts, lora):
    unet = parts[UNET]
    plain = unet_output(unet)
    with applied_loras({UNET: unet}, [(lora, 0.0)]):
        assert torch.equal(unet_output(unet), plain)


def test_an_embedding_teaches_its_trigger_for_the_block_only(zoo, parts):
    tokenizer, encoder = parts[SubModelType.TOKENIZER], parts[TEXT]
    vectors = load_embedding(zoo.tiny_embedding)
    before = snapshot(encoder)
    vocabulary = len(tokenizer)
    prompt = f"a {EMBEDDING_TRIGGER} cat"
    with applied_embeddings(
        tokenizer, encoder, [(EMBEDDING_TRIGGER, vectors.vectors[TEXT])]
    ) as embedded:
        expanded = embedded.expand(prompt)
        assert expanded == f"a {EMBEDDING_TRIGGER} {EMBEDDING_TRIGGER}-1 cat"
        ids = embedded.tokenizer(expanded, return_tensors="pt").input_ids
        assert ids.max() >= vocabulary
        with torch.no_grad():
            rows = encoder.get_input_embeddings()(ids[0, 2:4])
        assert torch.equal(rows, vectors.vectors[TEXT])
    assert len(tokenizer) == vocabulary  # the cached tokenizer never learnt the token
    assert_bit_identical(encoder, before)
    assert encoder.get_input_embeddings().num_embeddings == vocabulary


def test_embedding_and_lora_files_of_every_format_load(zoo):
    a1111 = load_embedding(zoo.sd1_embedding_pt)
    assert a1111.vectors[TEXT].shape == (2, 768)
    sdxl = load_embedding(zoo.sdxl_embedding)
    assert set(sdxl.vectors) == {TEXT, SubModelType.TEXT_ENCODER_2}
    folder = load_embedding(zoo.embedding_folder, ModelFormat.EMBEDDING_FOLDER)
    assert folder.vectors[TEXT].shape == (1, 768)
    for path, layers in (
        (zoo.sd1_loha, 1),
        (zoo.sdxl_lokr, 1),
        (zoo.sdxl_lora, 3),
        (zoo.sd1_lora_pickle, 2),
    ):
        assert len(load_lora(path).layers) == layers
    peft = load_lora(zoo.lora_diffusers, ModelFormat.DIFFUSERS)
    assert [layer.part for layer in peft.layers] == [UNET]
    for lora in (zoo.sd1_loha, zoo.sdxl_lokr):
        for layer in load_lora(lora).layers:
            assert layer.delta().dim() == 2
