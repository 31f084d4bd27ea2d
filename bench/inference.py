"""The inference service against diffusers called in-process, on the tiny sd-1 pipeline of
the test fixtures: 64x64, 30 euler steps, guidance 7.5, one prompt and seed. Torch runs
on one thread on both sides (the service's `torch_threads`, `torch.set_num_threads` here),
and both read the model from the same warm page cache.

- generate_vs_diffusers: TextToImage through a real inference process (CreateGeneration,
  then WaitGeneration, which returns the PNG) / `StableDiffusionPipeline` called here with
  the same model, size, steps, scheduler and seed. Medians of interleaved runs after one
  warm-up each (the warm-up fills the service's model cache). Target: at most 1.05.
- cold_load_vs_from_pretrained: the cold load as a generation meets it /
  `StableDiffusionPipeline.from_pretrained` of the same folder here. The cold load is a
  TextToImage of COLD_STEPS step right after ClearCache less the same TextToImage with
  every part cached: the generation loads each part it uses (unet, vae, text encoder,
  tokenizer, scheduler) from one record lookup. Medians of interleaved runs. Target: at
  most 1.10. `inference_loads:` also has rpc_cold_load_vs_from_pretrained: the same five
  parts loaded after ClearCache with one ModelCacheService.LoadModel each, summed as the
  client sees them; each RPC adds its own fixed cost (the call, the model manager's record
  lookup: a few ms, large beside the tiny model's ~100 ms).
- cached_load_ms: LoadModel of the cached UNet, median as the client sees it. Target: < 10.
- progress_latency_ms: a GenerationProgress event's time (the server's clock) to its
  arrival at a WatchInferenceEvents subscriber (this host's same clock), median over the
  steps of one generation. Target: < 10.
- idle_rss_mb: the inference process's resident memory (VmRSS) once it reports SERVING,
  before any model is loaded.
Last line: `inference: generate_vs_diffusers=R cold_load_vs_from_pretrained=R
cached_load_ms=X progress_latency_ms=X idle_rss_mb=X`.
"""

from __future__ import annotations

import io
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import diffusers
import numpy as np
import torch
import transformers
from diffusers import StableDiffusionPipeline
from PIL import Image

from clients.sdk import EaselClient
from easel.inference.v1 import generation_service_pb2 as gen
from easel.inference.v1 import model_cache_service_pb2 as cache_pb
from easel.model_manager.v1 import model_pb2 as m
from easel.model_manager.v1 import model_record_service_pb2 as records_pb
from tests.model_fixtures import ModelZoo
from tests.processes import client_settings, start_service, suite_env, wait_serving

TORCH_THREADS = 1
SIZE = 64
STEPS = 30
CFG = 7.5
SEED = 1234
PROMPT = "a photo of a cat"
COLD_STEPS = 1
RUNS = 5
LOAD_RUNS = 15
CACHED_LOADS = 50
PARTS = (
    m.SUB_MODEL_TYPE_UNET,
    m.SUB_MODEL_TYPE_VAE,
    m.SUB_MODEL_TYPE_TEXT_ENCODER,
    m.SUB_MODEL_TYPE_TOKENIZER,
    m.SUB_MODEL_TYPE_SCHEDULER,
)
TERMINAL = ("generation_completed", "generation_error", "generation_cancelled")


def elapsed_s(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for process {pid}")


def register(
    client: EaselClient,
    folder: Path,
    name: str = "tiny-sd1",
    repo_variant: int = m.MODEL_REPO_VARIANT_DEFAULT,
) -> str:
    config = m.ModelConfig(
        name=name,
        base=m.BASE_MODEL_TYPE_SD_1,
        type=m.MODEL_TYPE_MAIN,
        format=m.MODEL_FORMAT_DIFFUSERS,
        repo_variant=repo_variant,
        path=str(folder),
    )
    return client.model_records.CreateModel(records_pb.CreateModelRequest(model=config)).model.key


def text_to_image(
    key: str, size: int = SIZE, steps: int = STEPS, session: str = ""
) -> gen.CreateGenerationRequest:
    return gen.CreateGenerationRequest(
        text_to_image=gen.TextToImage(
            model_key=key,
            positive_prompt=PROMPT,
            width=size,
            height=size,
            steps=steps,
            cfg_scale=CFG,
            scheduler="euler",
            seed=SEED,
        ),
        session_id=session,
    )


def generate_easel(client: EaselClient, request: gen.CreateGenerationRequest) -> bytes:
    """Create the generation and wait for it; its PNG."""
    created = client.generation.CreateGeneration(request).generation
    done = client.generation.WaitGeneration(gen.WaitGenerationRequest(id=created.id)).generation
    if done.status != gen.GENERATION_STATUS_COMPLETED:
        raise RuntimeError(f"generation ended {done.error_type}: {done.error}")
    return done.result.image.png


def generate_diffusers(
    pipe: StableDiffusionPipeline, size: int = SIZE, steps: int = STEPS
) -> Image.Image:
    generator = torch.Generator("cpu").manual_seed(SEED)
    return pipe(
        PROMPT,
        height=size,
        width=size,
        num_inference_steps=steps,
        guidance_scale=CFG,
        generator=generator,
    ).images[0]


def load_pipeline(folder: Path) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(
        folder, dtype=torch.float32, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def measure_generation(client: EaselClient, key: str, folder: Path) -> dict[str, object]:
    pipe = load_pipeline(folder)
    request = text_to_image(key)
    easel_png = generate_easel(client, request)
    reference = generate_diffusers(pipe)
    easel_s, diffusers_s = [], []
    for _ in range(RUNS):
        easel_s.append(elapsed_s(lambda: generate_easel(client, request)))
        diffusers_s.append(elapsed_s(lambda: generate_diffusers(pipe)))
    easel_pixels = np.asarray(Image.open(io.BytesIO(easel_png)).convert("RGB"))
    easel_ms = statistics.median(easel_s) * 1000
    diffusers_ms = statistics.median(diffusers_s) * 1000
    return {
        "easel_ms": round(easel_ms, 1),
        "diffusers_ms": round(diffusers_ms, 1),
        "generate_vs_diffusers": round(easel_ms / diffusers_ms, 3),
        "same_pixels": bool(np.array_equal(easel_pixels, np.asarray(reference))),
    }


def measure_loads(client: EaselClient, key: str, folder: Path) -> dict[str, float]:
    cache = client.model_cache
    short = text_to_image(key, steps=COLD_STEPS)

    def clear_cache() -> None:
        if cache.ClearCache(cache_pb.ClearCacheRequest()).locked_count:
            raise RuntimeError("a model stayed locked after its generation")

    def rpc_cold_load() -> None:
        for part in PARTS:
            loaded = cache.LoadModel(cache_pb.LoadModelRequest(key=key, submodel_type=part))
            if loaded.model.cache_hit:
                raise RuntimeError("a load after ClearCache hit the cache")

    load_pipeline(folder)  # every side once, so that none pays first imports
    clear_cache()
    rpc_cold_load()
    generate_easel(client, short)
    cold_s, warm_s, rpc_s, diffusers_s = [], [], [], []
    for _ in range(LOAD_RUNS):
        clear_cache()
        rpc_s.append(elapsed_s(rpc_cold_load))
        clear_cache()
        cold_s.append(elapsed_s(lambda: generate_easel(client, short)))
        warm_s.append(elapsed_s(lambda: generate_easel(client, short)))
        diffusers_s.append(elapsed_s(lambda: load_pipeline(folder)))

    unet = cache_pb.LoadModelRequest(key=key, submodel_type=m.SUB_MODEL_TYPE_UNET)
    cached_s = [elapsed_s(lambda: cache.LoadModel(unet)) for _ in range(CACHED_LOADS)]
    cold_ms = (statistics.median(cold_s) - statistics.median(warm_s)) * 1000
    rpc_ms = statistics.median(rpc_s) * 1000
    from_pretrained_ms = statistics.median(diffusers_s) * 1000
    return {
        "cold_load_ms": round(cold_ms, 1),
        "from_pretrained_ms": round(from_pretrained_ms, 1),
        "cold_load_vs_from_pretrained": round(cold_ms / from_pretrained_ms, 3),
        "rpc_cold_load_ms": round(rpc_ms, 1),
        "rpc_cold_load_vs_from_pretrained": round(rpc_ms / from_pretrained_ms, 3),
        "cached_load_ms": round(statistics.median(cached_s) * 1000, 2),
    }


def measure_progress_latency(client: EaselClient, key: str) -> float:
    """Median ms from each step's progress event to its arrival here. The watch names a
    CreateNoise of the same session made before it: its snapshot, which comes whatever
    that generation's state, shows that the subscription is live."""
    session = f"bench-{uuid.uuid4()}"
    noise = gen.CreateGenerationRequest(
        create_noise=gen.CreateNoise(seed=SEED, width=SIZE, height=SIZE), session_id=session
    )
    probe = client.generation.CreateGeneration(noise).generation.id
    request = gen.WatchInferenceEventsRequest(session_ids=[session], generation_ids=[probe])
    stream = client.generation.WatchInferenceEvents(request)
    try:
        next(stream)  # the probe's snapshot
        generation = client.generation.CreateGeneration(
            text_to_image(key, session=session)
        ).generation
        latencies_ms = []
        for response in stream:
            received = time.time()
            event = response.event
            if event.generation_id != generation.id:
                continue
            kind = event.WhichOneof("payload")
            if kind == "generation_progress":
                latencies_ms.append((received - event.time.ToNanoseconds() / 1e9) * 1000)
            elif kind in TERMINAL:
                break
    finally:
        stream.cancel()
    if len(latencies_ms) != STEPS:
        raise RuntimeError(f"{len(latencies_ms)} progress events for {STEPS} steps")
    return round(statistics.median(latencies_ms), 2)


def quiet_libraries() -> None:
    """No progress bars or advice from diffusers and transformers between the figures."""
    for library in (diffusers, transformers):
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()


def main() -> None:
    torch.set_num_threads(TORCH_THREADS)
    quiet_libraries()
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        folder = ModelZoo(root / "zoo").sd1_diffusers
        env = suite_env(root, EASEL_TORCH_THREADS=str(TORCH_THREADS))
        manager = start_service("model_manager", env, root)
        inference = start_service("inference", env, root)
        try:
            wait_serving(manager)
            wait_serving(inference)
            idle_rss_mb = rss_mb(inference.process.pid)
            with EaselClient(client_settings(env)) as client:
                key = register(client, folder)
                loads = measure_loads(client, key, folder)
                generation = measure_generation(client, key, folder)
                latency_ms = measure_progress_latency(client, key)
        finally:
            inference.stop()
            manager.stop()
    print("inference_loads: " + " ".join(f"{k}={v}" for k, v in loads.items()))
    print("inference_generation: " + " ".join(f"{k}={v}" for k, v in generation.items()))
    print(
        f"inference: generate_vs_diffusers={generation['generate_vs_diffusers']} "
        f"cold_load_vs_from_pretrained={loads['cold_load_vs_from_pretrained']} "
        f"cached_load_ms={loads['cached_load_ms']} progress_latency_ms={latency_ms} "
        f"idle_rss_mb={idle_rss_mb}"
    )


if __name__ == "__main__":
    main()
