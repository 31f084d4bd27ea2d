"""Easel on a CUDA GPU against the diffusers pipeline called directly, on an SD-1.5-sized
pipeline with random weights: the UNet, VAE and CLIP text encoder of the sd-1
configurations Easel ships for single-file checkpoints, CLIP's tokenizer, an euler
scheduler, saved as a diffusers folder of fp16 files and registered with a real model
manager. 512x512, 30 steps, and the prompt, seed, guidance and scheduler of
bench/inference.py, fp16 on both sides.

- easel_its: denoising steps per second of a whole TextToImage as the client sees it
  (CreateGeneration, then WaitGeneration, which returns the PNG); diffusers_its: the same
  of the pipeline call (the image as PIL). Medians of RUNS runs after one warm-up each
  (the warm-up loads the models). its_ratio = diffusers_its / easel_its, target at most
  1.03.
- vram_peak_mb: the most device memory the inference process held from its first load to
  its last run (CUDA context and allocator cache included: torch's own counters are per
  process), sampled every few milliseconds as the device's used memory above what was in
  use before it started. vram_budget_mb: its model cache's VRAM budget as GetCacheStats
  reports it (`model_cache_vram_bytes`, by default half the device's memory). The diffusers
  side's `torch.cuda.max_memory_allocated` is printed beside them.
Without CUDA it prints `inference_gpu: skipped=no_cuda` and exits 0.
Last line: `inference_gpu: easel_its=X diffusers_its=X its_ratio=R vram_peak_mb=X
vram_budget_mb=X`.
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import threading
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from bench.inference import (
    elapsed_s,
    generate_diffusers,
    generate_easel,
    quiet_libraries,
    register,
    text_to_image,
)
from clients.sdk import EaselClient
from easel.inference.v1 import model_cache_service_pb2 as cache_pb
from easel.model_manager.v1 import model_pb2 as m
from services.inference.loading.checkpoints import CONFIGS
from services.inference.loading.clip_tokenizer import clip_tokenizer
from tests.processes import client_settings, start_service, suite_env, wait_serving

SD1 = CONFIGS / "sd-1"
TORCH_THREADS = 1
SIZE = 512
STEPS = 30
RUNS = 3
SAMPLE_S = 0.005
MIB = 1024 * 1024


def build_pipeline(dest: Path) -> Path:
    """The SD-1.5 architecture with random weights, built on the GPU (faster than on the
    CPU), saved with `*.fp16.*` files."""
    torch.manual_seed(0)
    with torch.device("cuda"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD1 / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD1 / "vae"))
        text_encoder = CLIPTextModel(
            CLIPTextConfig.from_json_file(SD1 / "text_encoder" / "config.json")
        )
    scheduler = EulerDiscreteScheduler.from_config(
        EulerDiscreteScheduler.load_config(SD1 / "scheduler")
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(SD1 / "tokenizer"),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.to(torch.float16).save_pretrained(dest, variant="fp16", safe_serialization=True)
    del pipe, unet, vae, text_encoder
    gc.collect()
    torch.cuda.empty_cache()
    return dest


def device_used_bytes() -> int:
    free, total = torch.cuda.mem_get_info()
    return total - free


class PeakSampler:
    """The most device memory in use while it runs, sampled every SAMPLE_S seconds."""

    def __init__(self) -> None:
        self.peak = device_used_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.peak = max(self.peak, device_used_bytes())

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, device_used_bytes())


def generate_easel_s(client: EaselClient, key: str) -> float:
    return elapsed_s(lambda: generate_easel(client, text_to_image(key, SIZE, STEPS)))


def generate_diffusers_s(pipe: StableDiffusionPipeline) -> float:
    def generate() -> None:
        generate_diffusers(pipe, SIZE, STEPS)
        torch.cuda.synchronize()

    return elapsed_s(generate)


def measure_easel(root: Path, folder: Path) -> dict[str, float]:
    env = suite_env(
        root,
        EASEL_TORCH_THREADS=str(TORCH_THREADS),
        EASEL_DEVICE="cuda",
        EASEL_PRECISION="fp16",
    )
    before = device_used_bytes()
    manager = start_service("model_manager", env, root)
    inference = start_service("inference", env, root)
    try:
        wait_serving(manager)
        wait_serving(inference)
        with EaselClient(client_settings(env)) as client, PeakSampler() as sampler:
            key = register(client, folder, "sd15-random", m.MODEL_REPO_VARIANT_FP16)
            stats = client.model_cache.GetCacheStats(cache_pb.GetCacheStatsRequest()).stats
            generate_easel_s(client, key)
            seconds = statistics.median(generate_easel_s(client, key) for _ in range(RUNS))
    finally:
        inference.stop()
        manager.stop()
    return {
        "easel_its": round(STEPS / seconds, 2),
        "vram_peak_mb": round((sampler.peak - before) / MIB),
        "vram_budget_mb": round(stats.vram_limit_bytes / MIB),
    }


def measure_diffusers(folder: Path) -> dict[str, float]:
    pipe = StableDiffusionPipeline.from_pretrained(
        folder, variant="fp16", dtype=torch.float16, local_files_only=True
    ).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    generate_diffusers_s(pipe)
    torch.cuda.reset_peak_memory_stats()
    seconds = statistics.median(generate_diffusers_s(pipe) for _ in range(RUNS))
    return {
        "diffusers_its": round(STEPS / seconds, 2),
        "diffusers_max_allocated_mb": round(torch.cuda.max_memory_allocated() / MIB),
    }


def main() -> None:
    if not torch.cuda.is_available():
        print("inference_gpu: skipped=no_cuda")
        return
    torch.set_num_threads(TORCH_THREADS)
    quiet_libraries()
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        folder = build_pipeline(root / "sd15-random")
        easel = measure_easel(root, folder)
        reference = measure_diffusers(folder)
    ratio = round(reference["diffusers_its"] / easel["easel_its"], 3)
    print(f"device: {torch.cuda.get_device_name()}")
    print(
        f"inference_gpu_vram: diffusers_max_allocated_mb={reference['diffusers_max_allocated_mb']}"
    )
    print(
        f"inference_gpu: easel_its={easel['easel_its']} "
        f"diffusers_its={reference['diffusers_its']} its_ratio={ratio} "
        f"vram_peak_mb={easel['vram_peak_mb']} vram_budget_mb={easel['vram_budget_mb']}"
    )


if __name__ == "__main__":
    main()
