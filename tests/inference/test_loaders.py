"""Each loader on the tiny models: the right objects, dtypes and weights, offline."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from services.common.errors import FailedPreconditionError, InvalidArgumentError, UnimplementedError
from services.common.model_taxonomy import (
    BaseModelType,
    ModelFormat,
    ModelRepoVariant,
    ModelType,
    SubModelType,
)
from services.inference.loading.checkpoints import CONFIGS
from services.inference.loading.loaders import LOADERS
from services.inference.loading.registry import (
    DuplicateLoaderError,
    LoaderRegistry,
    LoadOptions,
    ModelLoader,
)
from services.inference.loading.weights import tensor_bytes
from tests.inference.conftest import record

WEIGHTS = {
    SubModelType.UNET: "unet/diffusion_pytorch_model.safetensors",
    SubModelType.VAE: "vae/diffusion_pytorch_model.safetensors",
    SubModelType.TEXT_ENCODER: "text_encoder/model.safetensors",
}


def load(model_record, submodel=None, dtype=torch.float32, root=Path("/")):
    loader = LOADERS.check_submodel(model_record, submodel)
    return loader.load(model_record, submodel, LoadOptions(dtype=dtype, root=root))


def assert_same_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert set(weights) <= set(state)
    for key, expected in weights.items():
        assert torch.equal(state[key], expected.to(state[key].dtype).reshape(state[key].shape)), key


def test_a_second_registration_of_a_kind_fails():
    registry = LoaderRegistry()

    class First(ModelLoader):
        def load(self, record, submodel, options):
            raise NotImplementedError

    registry.register(base=BaseModelType.SD_1, type=ModelType.VAE, format=ModelFormat.DIFFUSERS)(
        First
    )
    with pytest.raises(DuplicateLoaderError, match="First"):

        @registry.register(
            base=BaseModelType.SD_1, type=ModelType.VAE, format=ModelFormat.DIFFUSERS
        )
        class Second(First):
            pass


def test_no_loader_and_wrong_parts_are_refused(zoo):
    controlnet = record(zoo.controlnet_diffusers, type=ModelType.CONTROLNET)
    with pytest.raises(UnimplementedError) as caught:
        LOADERS.check_submodel(controlnet, None)
    assert caught.value.reason == "NO_LOADER"
    main = record(zoo.sd1_diffusers)
    with pytest.raises(InvalidArgumentError) as caught:
        LOADERS.check_submodel(main, None)
    assert caught.value.violations[0].field == "submodel_type"
    with pytest.raises(InvalidArgumentError):
        LOADERS.check_submodel(main, SubModelType.TEXT_ENCODER_2)
    with pytest.raises(InvalidArgumentError):
        LOADERS.check_submodel(
            record(zoo.tiny_lora, type=ModelType.LORA, format=ModelFormat.LYCORIS),
            SubModelType.UNET,
        )


def test_a_diffusers_main_model_loads_part_by_part(zoo):
    main = record(zoo.sd1_diffusers)
    assert LOADERS.loader_for(main).submodels(main) == {
        SubModelType.UNET,
        SubModelType.VAE,
        SubModelType.TEXT_ENCODER,
        SubModelType.TOKENIZER,
        SubModelType.SCHEDULER,
    }
    for part, file in WEIGHTS.items():
        loaded = load(main, part)
        assert loaded.path == zoo.sd1_diffusers / str(part)
        assert_same_weights(loaded.model, load_file(zoo.sd1_diffusers / file))
        estimate = LOADERS.loader_for(main).estimate_bytes(
            main, part, LoadOptions(torch.float32, Path("/"))
        )
        assert estimate <= tensor_bytes(loaded.model) <= estimate * 1.01
    assert load(main, SubModelType.TOKENIZER).model("a cat").input_ids[0] == 520  # BOS
    scheduler = load(main, SubModelType.SCHEDULER).model
    assert scheduler["_class_name"] == "EulerDiscreteScheduler"


def test_an_sdxl_folder_has_two_text_encoders(zoo):
    sdxl = record(zoo.sdxl_diffusers, base=BaseModelType.SDXL)
    encoder_2 = load(sdxl, SubModelType.TEXT_ENCODER_2).model
    assert type(encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert load(sdxl, SubModelType.TOKENIZER_2).model is not None


def test_fp16_folders_load_at_the_requested_precision(zoo):
    fp16 = record(zoo.sd1_diffusers_fp16, repo_variant=ModelRepoVariant.FP16)
    # The saved text encoder config says float16; the explicit dtype wins.
    encoder = load(fp16, SubModelType.TEXT_ENCODER).model
    assert encoder.dtype == torch.float32
    assert load(fp16, SubModelType.UNET, dtype=torch.float16).model.dtype == torch.float16
    assert load(fp16, SubModelType.UNET, dtype=torch.bfloat16).model.dtype == torch.bfloat16


def test_each_part_of_a_mixed_folder_loads_the_variant_it_has(zoo):
    mixed = record(zoo.sd1_mixed_variant, repo_variant=ModelRepoVariant.FP16)
    unet = load(mixed, SubModelType.UNET).model
    assert_same_weights(
        unet, load_file(zoo.sd1_mixed_variant / "unet/diffusion_pytorch_model.fp16.safetensors")
    )
    default = record(zoo.sd1_mixed_variant, repo_variant=ModelRepoVariant.DEFAULT)
    assert_same_weights(
        load(default, SubModelType.UNET).model,
        load_file(zoo.sd1_mixed_variant / WEIGHTS[SubModelType.UNET]),
    )
    # Only the VAE has fp16 files: it loads them, the other parts their default files.
    vae_only = record(zoo.sd1_fp16_vae_only, repo_variant=ModelRepoVariant.DEFAULT)
    vae = load(vae_only, SubModelType.VAE).model
    assert_same_weights(
        vae, load_file(zoo.sd1_diffusers_fp16 / "vae/diffusion_pytorch_model.fp16.safetensors")
    )
    encoder = load(vae_only, SubModelType.TEXT_ENCODER).model
    assert_same_weights(encoder, load_file(zoo.sd1_diffusers / WEIGHTS[SubModelType.TEXT_ENCODER]))


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_a_single_file_checkpoint_has_the_weights_of_its_folder(zoo, suffix, monkeypatch, options):
    path = zoo.sd1_single_file if suffix == ".safetensors" else zoo.sd1_single_file_ckpt

    def no_network(*args, **kwargs):
        raise AssertionError("a loader tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    checkpoint = record(path, format=ModelFormat.CHECKPOINT, config_path=str(zoo.sd1_diffusers))
    for part, file in WEIGHTS.items():
        loaded = load(checkpoint, part)
        assert loaded.path == path
        assert_same_weights(loaded.model, load_file(zoo.sd1_diffusers / file))
    assert load(checkpoint, SubModelType.TOKENIZER).model("a cat").input_ids[0] == 520


def test_a_checkpoint_takes_the_records_prediction_type(zoo):
    checkpoint = record(
        zoo.sd1_single_file,
        format=ModelFormat.CHECKPOINT,
        config_path=str(zoo.sd1_diffusers),
        prediction_type="v_prediction",
    )
    assert load(checkpoint, SubModelType.SCHEDULER).model["prediction_type"] == "v_prediction"


def test_a_record_config_path_resolves_against_the_root(zoo):
    relative = record(
        zoo.sd1_single_file, format=ModelFormat.CHECKPOINT, config_path=zoo.sd1_diffusers.name
    )
    unet = load(relative, SubModelType.UNET, root=zoo.sd1_diffusers.parent).model
    assert_same_weights(unet, load_file(zoo.sd1_diffusers / WEIGHTS[SubModelType.UNET]))


def test_the_shipped_configs_describe_the_real_architectures():
    """Parameter counts of the published models, from the configs alone (meta device)."""
    from diffusers import UNet2DConditionModel

    expected = {"sd-1": 859_520_964, "sd-2": 865_910_724, "sdxl": 2_567_463_684}
    for base, count in expected.items():
        config = UNet2DConditionModel.load_config(CONFIGS / base / "unet")
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(config)
        assert sum(p.numel() for p in unet.parameters()) == count, base
    index = json.loads((CONFIGS / "sdxl-refiner" / "model_index.json").read_text())
    assert "text_encoder" not in index  # the refiner has the second encoder only
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]


def test_vaes_load_from_a_folder_and_from_a_file(zoo):
    expected = load_file(zoo.vae_diffusers / "diffusion_pytorch_model.safetensors")
    folder = load(record(zoo.vae_diffusers, type=ModelType.VAE)).model
    assert_same_weights(folder, expected)
    single = load(
        record(zoo.vae_single_file, type=ModelType.VAE, format=ModelFormat.CHECKPOINT)
    ).model
    assert_same_weights(single, expected)
    assert single.config.scaling_factor == pytest.approx(0.18215)


@pytest.mark.parametrize(
    ("name", "scale"),
    [("esrgan_x4", 4), ("esrgan_x2", 2), ("esrgan_old_x4", 4), ("esrgan_old_x2", 2)],
)
def test_esrgan_upscalers_of_both_layouts(zoo, name, scale):
    upscaler = load(
        record(
            getattr(zoo, name),
            base=BaseModelType.ANY,
            type=ModelType.UPSCALER,
            format=ModelFormat.CHECKPOINT,
        )
    ).model
    assert upscaler.scale == scale
    with torch.no_grad():
        assert upscaler(torch.rand(1, 3, 8, 8)).shape == (1, 3, 8 * scale, 8 * scale)


def test_a_malicious_pickle_is_refused_without_running_it(zoo):
    evil = record(
        zoo.malicious["archive"], format=ModelFormat.CHECKPOINT, config_path=str(zoo.sd1_diffusers)
    )
    with pytest.raises(FailedPreconditionError) as caught:
        load(evil, SubModelType.UNET)
    assert caught.value.reason == "MODEL_UNREADABLE"
    assert not zoo.malicious_marker.exists()


def test_missing_and_broken_files_say_so(zoo, tmp_path):
    gone = record(tmp_path / "gone.safetensors", type=ModelType.VAE, format=ModelFormat.CHECKPOINT)
    with pytest.raises(FailedPreconditionError) as caught:
        load(gone)
    assert caught.value.reason == "MODEL_FILES_MISSING"
    truncated = record(zoo.truncated, type=ModelType.VAE, format=ModelFormat.CHECKPOINT)
    with pytest.raises(FailedPreconditionError) as caught:
        load(truncated)
    assert caught.value.reason == "MODEL_UNREADABLE"
