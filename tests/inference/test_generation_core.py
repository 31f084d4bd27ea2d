"""The denoising core on tiny random-weight pipelines: determinism, the building blocks
against the whole operations and against diffusers' own pipeline, image-to-image
strength, schedulers, progress, cancellation, validation and upscaling."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image

from services.common.errors import InvalidArgumentError
from services.inference.generation.conditioning import Conditioning, TextEncoder, encode_prompt
from services.inference.generation.denoise import (
    DenoiseCancelled,
    Progress,
    Sampling,
    StepHooks,
    denoise_latents,
)
from services.inference.generation.images import decode_png, encode_png
from services.inference.generation.noise import Noise, create_noise
from services.inference.generation.operations import (
    DiffusionModel,
    ImageToImageParams,
    TextToImageParams,
    check_denoise_range,
    image_to_image,
    text_to_image,
)
from services.inference.generation.schedulers import SCHEDULERS, make_scheduler
from services.inference.generation.upscale import check_scale, upscale
from services.inference.generation.vae import decode_latents, encode_image, vae_scale_factor
from tests.inference.images import gradient
from tests.model_fixtures import ModelZoo

SIZE = 64
STEPS = 4


def _load(pipeline_class: type, path: Path):
    pipe = pipeline_class.from_pretrained(path, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd_pipe(zoo: ModelZoo) -> StableDiffusionPipeline:
    return _load(StableDiffusionPipeline, zoo.sd1_diffusers)


@pytest.fixture(scope="module")
def sd(sd_pipe: StableDiffusionPipeline) -> DiffusionModel:
    return DiffusionModel(
        unet=sd_pipe.unet,
        vae=sd_pipe.vae,
        text_encoders=[TextEncoder(sd_pipe.tokenizer, sd_pipe.text_encoder)],
        scheduler_config=dict(sd_pipe.scheduler.config),
    )


def _t2i(**overrides: object) -> TextToImageParams:
    values: dict = {
        "positive_prompt": "a cat",
        "negative_prompt": "the",
        "width": SIZE,
        "height": SIZE,
        "steps": STEPS,
        "cfg_scale": 7.5,
        "scheduler": "euler",
        "seed": 42,
    }
    return TextToImageParams(**(values | overrides))


def _i2i(init: Image.Image, **overrides: object) -> ImageToImageParams:
    values: dict = {
        "positive_prompt": "a cat",
        "negative_prompt": "",
        "init_image": init,
        "width": SIZE,
        "height": SIZE,
        "steps": 10,
        "cfg_scale": 7.5,
        "scheduler": "euler",
        "seed": 7,
        "strength": 0.75,
    }
    return ImageToImageParams(**(values | overrides))


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


class _Counter:
    """Progress reports and UNet passes of one run."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.progress: list[Progress] = []
        self.unet_calls = 0
        self._handle = unet.register_forward_hook(self._count)

    def _count(self, *_args: object) -> None:
        self.unet_calls += 1

    def hooks(self, **kwargs: object) -> StepHooks:
        return StepHooks(on_progress=self.progress.append, **kwargs)

    def close(self) -> None:
        self._handle.remove()


@pytest.fixture
def counter(sd: DiffusionModel):
    counting = _Counter(sd.unet)
    yield counting
    counting.close()


# --- determinism ------------------------------------------------------------------------


def test_same_seed_gives_the_same_pixels_and_another_seed_others(sd: DiffusionModel) -> None:
    first = text_to_image(sd, _t2i(seed=1234))
    again = text_to_image(sd, _t2i(seed=1234))
    other = text_to_image(sd, _t2i(seed=1235))

    assert first.image.size == (SIZE, SIZE)
    assert first.seed == 1234
    assert np.array_equal(_pixels(first.image), _pixels(again.image))
    assert np.abs(_pixels(first.image) - _pixels(other.image)).mean() > 1


def test_noise_is_cpu_float32_and_the_same_for_a_seed() -> None:
    noise = create_noise(2**64 - 1, 8, 8)
    assert noise.latents.dtype is torch.float32
    assert noise.latents.device.type == "cpu"
    assert noise.latents.shape == (1, 4, 8, 8)
    assert torch.equal(noise.latents, create_noise(2**64 - 1, 8, 8).latents)
    assert not torch.equal(noise.latents, create_noise(0, 8, 8).latents)


# --- building blocks == whole operations == diffusers ------------------------------------


@pytest.mark.parametrize("scheduler", ["euler", "euler_a"])
def test_building_blocks_compose_to_text_to_image(sd: DiffusionModel, scheduler: str) -> None:
    """EncodePrompt x2, CreateNoise, DenoiseLatents, DecodeLatents give TextToImage's pixels,
    with the stochastic euler_a continuing the noise's seed as TextToImage does."""
    params = _t2i(scheduler=scheduler, seed=99)
    whole = text_to_image(sd, params)

    positive = encode_prompt(sd.text_encoders, params.positive_prompt)
    negative = encode_prompt(sd.text_encoders, params.negative_prompt)
    factor = vae_scale_factor(sd.vae)
    noise = create_noise(params.seed, SIZE // factor, SIZE // factor)
    step_range = check_denoise_range(STEPS, 0.0, 1.0, has_latents=False, field="denoise_latents")
    latents = denoise_latents(
        sd.unet,
        sd.scheduler_config,
        positive=positive,
        negative=negative,
        noise=Noise(noise.latents.clone(), noise.seed),
        step_range=step_range,
        sampling=Sampling(scheduler, params.cfg_scale),
    )
    blocks = decode_latents(sd.vae, latents)

    assert np.array_equal(_pixels(blocks), _pixels(whole.image))


@pytest.mark.parametrize(
    ("scheduler", "cfg_scale"), [("euler", 7.5), ("euler_a", 7.5), ("heun", 1.0), ("dpmpp_2m", 3.0)]
)
def test_text_to_image_equals_the_diffusers_pipeline(
    sd: DiffusionModel, sd_pipe: StableDiffusionPipeline, scheduler: str, cfg_scale: float
) -> None:
    ours = text_to_image(sd, _t2i(scheduler=scheduler, cfg_scale=cfg_scale, seed=5))

    sd_pipe.scheduler = make_scheduler(scheduler, sd.scheduler_config)
    theirs = sd_pipe(
        "a cat",
        negative_prompt="the",
        height=SIZE,
        width=SIZE,
        num_inference_steps=STEPS,
        guidance_scale=cfg_scale,
        generator=torch.Generator("cpu").manual_seed(5),
    ).images[0]

    assert np.abs(_pixels(ours.image) - _pixels(theirs)).max() <= 1


def test_sdxl_text_to_image_equals_the_diffusers_pipeline(zoo: ModelZoo) -> None:
    pipe = _load(StableDiffusionXLPipeline, zoo.sdxl_diffusers)
    model = DiffusionModel(
        unet=pipe.unet,
        vae=pipe.vae,
        text_encoders=[
            TextEncoder(pipe.tokenizer, pipe.text_encoder),
            TextEncoder(pipe.tokenizer_2, pipe.text_encoder_2),
        ],
        scheduler_config=dict(pipe.scheduler.config),
    )
    ours = text_to_image(model, _t2i(negative_prompt="", steps=3, seed=11))

    pipe.scheduler = make_scheduler("euler", model.scheduler_config)
    theirs = pipe(
        "a cat",
        negative_prompt="",
        height=SIZE,
        width=SIZE,
        num_inference_steps=3,
        guidance_scale=7.5,
        generator=torch.Generator("cpu").manual_seed(11),
    ).images[0]

    assert np.abs(_pixels(ours.image) - _pixels(theirs)).max() <= 1


# --- image to image -------------------------------------------------------------------


def test_image_to_image_runs_floor_steps_x_strength_and_stays_closer_at_low_strength(
    sd: DiffusionModel, counter: _Counter
) -> None:
    """Closeness is measured on the latents: this random VAE's decoder turns a latent
    change of 0.1 into a change of 40 levels, so pixels would compare only noise."""
    init = gradient(SIZE)
    full = image_to_image(sd, _i2i(init, strength=1.0), counter.hooks())
    full_steps = len(counter.progress)
    counter.progress.clear()
    light = image_to_image(sd, _i2i(init, strength=0.3), counter.hooks())

    assert full.image.size == light.image.size == (SIZE, SIZE)
    assert full_steps == 10
    assert [p.step for p in counter.progress] == [1, 2, 3]
    assert {p.total_steps for p in counter.progress} == {3}

    init_latents = encode_image(sd.vae, init)
    factor = vae_scale_factor(sd.vae)
    distances = {}
    for strength in (1.0, 0.3):
        latents = denoise_latents(
            sd.unet,
            sd.scheduler_config,
            positive=encode_prompt(sd.text_encoders, "a cat"),
            negative=encode_prompt(sd.text_encoders, ""),
            noise=create_noise(7, SIZE // factor, SIZE // factor),
            step_range=_i2i(init, strength=strength).check(),
            sampling=Sampling("euler", 7.5),
            latents=init_latents,
        )
        distances[strength] = (latents - init_latents).abs().mean().item()
    assert distances[0.3] < distances[1.0] / 5


def test_strength_0_7_of_10_steps_runs_7_and_denoise_latents_reproduces_it(
    sd: DiffusionModel, counter: _Counter
) -> None:
    """0.7 arrives as float32 0.699999988; the rounding rule still gives 7 steps, and the
    building blocks with denoising_start = 1 - strength reproduce the pixels."""
    strength = float(np.float32(0.7))
    assert strength < 0.7
    init = gradient(SIZE)
    params = _i2i(init, strength=strength, scheduler="euler_a")
    whole = image_to_image(sd, params, counter.hooks())

    assert [p.step for p in counter.progress] == list(range(1, 8))
    assert counter.unet_calls == 7

    start = float(np.float32(1 - 0.7))
    step_range = check_denoise_range(10, start, 1.0, has_latents=True, field="denoise_latents")
    factor = vae_scale_factor(sd.vae)
    latents = denoise_latents(
        sd.unet,
        sd.scheduler_config,
        positive=encode_prompt(sd.text_encoders, params.positive_prompt),
        negative=encode_prompt(sd.text_encoders, params.negative_prompt),
        noise=create_noise(params.seed, SIZE // factor, SIZE // factor),
        step_range=step_range,
        sampling=Sampling("euler_a", params.cfg_scale),
        latents=encode_image(sd.vae, init),
    )
    assert step_range.count == 7
    assert np.array_equal(_pixels(decode_latents(sd.vae, latents)), _pixels(whole.image))


def test_strength_0_is_invalid_and_names_the_field(sd: DiffusionModel) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        image_to_image(sd, _i2i(gradient(SIZE), strength=0.0))
    assert raised.value.violations[0].field == "image_to_image.strength"


def test_a_strength_that_runs_no_step_is_invalid() -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        _i2i(gradient(SIZE), steps=3, strength=0.3).check()
    assert raised.value.violations[0].field == "image_to_image.strength"


# --- schedulers, progress, previews, cancel -------------------------------------------


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_runs_and_reports_each_step(
    sd: DiffusionModel, counter: _Counter, name: str
) -> None:
    result = text_to_image(sd, _t2i(scheduler=name, steps=3, cfg_scale=1.0), counter.hooks())

    assert result.image.size == (SIZE, SIZE)
    assert [p.step for p in counter.progress] == [1, 2, 3]
    assert {p.total_steps for p in counter.progress} == {3}


def test_schedulers_keep_the_model_config_and_set_their_own_variant(sd: DiffusionModel) -> None:
    config = dict(sd.scheduler_config) | {
        "use_karras_sigmas": True,
        "prediction_type": "v_prediction",
    }
    euler = make_scheduler("euler", config)
    karras = make_scheduler("dpmpp_2m_karras", config)
    ddim = make_scheduler("ddim", config)

    assert type(euler).__name__ == "EulerDiscreteScheduler"
    assert euler.config.use_karras_sigmas is False
    assert euler.config.prediction_type == "v_prediction"
    assert karras.config.use_karras_sigmas is True
    assert karras.config.algorithm_type == "dpmsolver++"
    assert ddim.config.clip_sample is False


def test_previews_are_one_pixel_per_latent(sd: DiffusionModel, counter: _Counter) -> None:
    text_to_image(sd, _t2i(steps=2), counter.hooks(want_preview=True))

    factor = vae_scale_factor(sd.vae)
    assert len(counter.progress) == 2
    for progress in counter.progress:
        assert progress.preview is not None
        assert progress.preview.size == (SIZE // factor, SIZE // factor)
        assert progress.preview.mode == "RGB"


def test_cancel_stops_before_the_next_unet_pass(sd: DiffusionModel, counter: _Counter) -> None:
    def cancel_after_two() -> bool:
        return len(counter.progress) >= 2

    with pytest.raises(DenoiseCancelled) as raised:
        text_to_image(
            sd, _t2i(steps=20, cfg_scale=1.0), counter.hooks(should_cancel=cancel_after_two)
        )

    assert raised.value.steps_done == 2
    assert counter.unet_calls == 2


def test_split_ranges_meet_exactly_and_resume_where_the_first_stopped(sd: DiffusionModel) -> None:
    """[0, 0.8) then [0.8, 1): every step once, the same total as one range."""
    first = check_denoise_range(10, 0.0, 0.8, has_latents=False, field="d")
    second = check_denoise_range(10, 0.8, 1.0, has_latents=True, field="d")
    assert (first.first, first.stop, second.first, second.stop) == (0, 8, 8, 10)


# --- validation -----------------------------------------------------------------------


def _field(check: Callable[[], object]) -> str:
    with pytest.raises(InvalidArgumentError) as raised:
        check()
    return raised.value.violations[0].field


def test_bad_requests_name_their_field() -> None:
    assert _field(_t2i(width=60).check) == "text_to_image.width"
    assert _field(_t2i(height=8200).check) == "text_to_image.height"
    assert _field(_t2i(width=64, height=0).check) == "text_to_image.height"
    assert _field(_t2i(steps=0).check) == "text_to_image.steps"
    assert _field(_t2i(steps=1001).check) == "text_to_image.steps"
    assert _field(_t2i(scheduler="lcm", steps=51).check) == "text_to_image.steps"
    assert _field(_t2i(cfg_scale=0.5).check) == "text_to_image.cfg_scale"
    assert _field(_t2i(scheduler="k_euler_x").check) == "text_to_image.scheduler"
    assert _field(_i2i(gradient(SIZE).resize((60, 64)), width=0, height=0).check) == (
        "image_to_image.init_image_png"
    )
    assert _field(lambda: decode_png(b"GIF89a....", "image_to_image.init_image_png")) == (
        "image_to_image.init_image_png"
    )
    assert _field(
        lambda: decode_png(encode_png(gradient(SIZE))[:60], "encode_image.image_png")
    ) == ("encode_image.image_png")
    assert _field(lambda: check_denoise_range(10, 0.5, 1.0, has_latents=False, field="d")) == (
        "d.denoising_start"
    )
    assert _field(lambda: check_denoise_range(10, 0.5, 0.5, has_latents=True, field="d")) == (
        "d.denoising_end"
    )
    assert _field(lambda: check_denoise_range(10, 0.71, 0.75, has_latents=True, field="d")) == (
        "d.denoising_end"
    )
    assert _field(lambda: check_scale(0.0, "upscale.scale")) == "upscale.scale"


def test_conditioning_of_another_base_names_its_field(sd: DiffusionModel) -> None:
    fitting = encode_prompt(sd.text_encoders, "")
    foreign = Conditioning(torch.zeros(1, 77, 1024))
    factor = vae_scale_factor(sd.vae)
    for positive, negative, field in (
        (foreign, fitting, "positive_conditioning"),
        (fitting, foreign, "negative_conditioning"),
    ):
        with pytest.raises(InvalidArgumentError) as raised:
            denoise_latents(
                sd.unet,
                sd.scheduler_config,
                positive=positive,
                negative=negative,
                noise=create_noise(1, SIZE // factor, SIZE // factor),
                step_range=check_denoise_range(2, 0, 1, has_latents=False, field="d"),
                sampling=Sampling("euler", 7.5),
            )
        assert raised.value.violations[0].field == field
        assert raised.value.reason == "CONDITIONING_MISMATCH"


def test_unknown_scheduler_has_its_own_reason() -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        _t2i(scheduler="nope").check()
    assert raised.value.reason == "UNKNOWN_SCHEDULER"


def test_png_alpha_is_dropped() -> None:
    buffer = io.BytesIO()
    Image.new("RGBA", (16, 8), (10, 20, 30, 0)).save(buffer, format="PNG")
    image = decode_png(buffer.getvalue(), "f")
    assert image.mode == "RGB"
    assert image.size == (16, 8)
    assert image.getpixel((0, 0)) == (10, 20, 30)


# --- upscale --------------------------------------------------------------------------


def test_upscale_with_a_module_at_its_native_and_another_factor() -> None:
    torch.manual_seed(0)
    upscaler = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 3, padding=1), torch.nn.PixelShuffle(2))
    image = Image.new("RGB", (20, 10), (200, 100, 50))

    assert upscale(upscaler, image, None).size == (40, 20)
    assert upscale(upscaler, image, 2.0).size == (40, 20)
    assert upscale(upscaler, image, 3.0).size == (60, 30)
    assert upscale(upscaler, image, 0.55).size == (11, 6)


def test_an_upscaler_whose_output_would_pass_the_side_limit_is_refused_before_it_runs() -> None:
    class Doubler(torch.nn.Module):
        scale = 2

        def __init__(self) -> None:
            super().__init__()
            self.shuffle = torch.nn.Sequential(
                torch.nn.Conv2d(3, 12, 3, padding=1), torch.nn.PixelShuffle(2)
            )
            self.calls = 0

        def forward(self, tensor: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return self.shuffle(tensor)

    doubler = Doubler()
    assert upscale(doubler, Image.new("RGB", (4096, 2)), None).size == (8192, 4)
    with pytest.raises(InvalidArgumentError) as raised:
        upscale(doubler, Image.new("RGB", (4097, 2)), 1.0)
    assert raised.value.reason == "OUTPUT_TOO_LARGE"
    assert doubler.calls == 1
