"""The model cache through the load service: budgets, eviction, locks, unloads, events and
the convert cache, on the tiny models."""

from __future__ import annotations

import pytest

from services.common.errors import (
    FailedPreconditionError,
    NotFoundError,
    ResourceExhaustedError,
    UnimplementedError,
)
from services.common.model_taxonomy import ModelFormat, ModelType, SubModelType
from services.inference.events import (
    EventContext,
    InferenceEvents,
    ModelLoadCompleted,
    ModelLoadFailed,
    ModelLoadStarted,
)
from services.inference.loading.weights import tensor_bytes
from services.inference.model_loads import build_model_loads
from services.inference.settings import InferenceSettings
from services.inference.torch_runtime import start_torch
from tests.inference.conftest import Records, record

UNET = SubModelType.UNET


def unet_bytes(zoo) -> int:
    from safetensors.torch import load_file

    weights = load_file(zoo.sd1_diffusers / "unet/diffusion_pytorch_model.safetensors")
    return sum(t.numel() * t.element_size() for t in weights.values())


def cached_keys(loads) -> list[tuple[str, SubModelType | None]]:
    return [entry.key for entry in loads.cache.entries()]


async def test_a_second_load_is_a_hit_and_events_say_so(zoo, make_loads):
    loads, records, events = make_loads()
    records.add(record(zoo.sd1_diffusers, key="sd1"))
    context = EventContext(generation_id="g1", session_id="s1")
    first = await loads.load("sd1", UNET, context)
    second = await loads.load("sd1", UNET)
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert second.entry is first.entry
    assert first.entry.size_bytes == tensor_bytes(first.entry.model) == unet_bytes(zoo)
    kinds = [type(event) for event in events]
    assert kinds == [ModelLoadStarted, ModelLoadCompleted] * 2
    assert events[0].context == context
    assert events[2].context == EventContext()
    assert events[1].load.path == str(zoo.sd1_diffusers / "unet")
    assert events[1].load.precision == "float32"
    assert events[1].size_bytes == first.entry.size_bytes
    assert (events[1].cache_hit, events[3].cache_hit) == (False, True)
    stats = loads.cache.stats()
    assert (stats.hits, stats.misses, stats.loaded_model_count) == (1, 1, 1)


async def test_a_budget_of_about_one_and_a_half_models_evicts_the_least_recently_used(
    zoo, make_loads
):
    loads, records, _ = make_loads(ram_bytes=int(unet_bytes(zoo) * 1.4))
    records.add(*(record(zoo.sd1_diffusers, key=key) for key in ("a", "b", "c")))
    await loads.load("a", UNET)
    await loads.load("b", UNET)  # a goes
    assert cached_keys(loads) == [("b", UNET)]
    await loads.load("c", UNET)
    assert cached_keys(loads) == [("c", UNET)]
    assert loads.cache.stats().evictions == 2
    assert loads.cache.stats().ram_used_bytes <= loads.cache.ram_limit_bytes


async def test_the_least_recently_used_goes_first(zoo, make_loads):
    loads, records, _ = make_loads(ram_bytes=int(unet_bytes(zoo) * 2.4))
    records.add(*(record(zoo.sd1_diffusers, key=key) for key in ("a", "b", "c")))
    await loads.load("a", UNET)
    await loads.load("b", UNET)
    await loads.load("a", UNET)  # a is now more recent than b
    await loads.load("c", UNET)
    assert cached_keys(loads) == [("c", UNET), ("a", UNET)]


async def test_a_locked_model_is_never_evicted(zoo, make_loads):
    loads, records, events = make_loads(ram_bytes=int(unet_bytes(zoo) * 1.4))
    records.add(record(zoo.sd1_diffusers, key="a"), record(zoo.sd1_diffusers, key="b"))
    loaded = await loads.load("a", UNET)
    with loaded as unet:
        assert loads.cache.stats().locked_model_count == 1
        with pytest.raises(ResourceExhaustedError) as caught:
            await loads.load("b", UNET)
        assert caught.value.reason == "OUT_OF_MEMORY"
        assert cached_keys(loads) == [("a", UNET)]
        assert unet is loaded.entry.model
        assert isinstance(events[-1], ModelLoadFailed)
    assert loads.cache.stats().locked_model_count == 0
    await loads.load("b", UNET)  # unlocked now: a makes way
    assert cached_keys(loads) == [("b", UNET)]


async def test_a_model_larger_than_the_cache_is_refused_before_it_is_read(zoo, make_loads):
    loads, records, _ = make_loads(ram_bytes=unet_bytes(zoo) // 2)
    records.add(record(zoo.sd1_diffusers, key="big"))
    with pytest.raises(ResourceExhaustedError) as caught:
        await loads.load("big", UNET)
    assert caught.value.reason == "OUT_OF_MEMORY"
    assert loads.cache.stats().loaded_model_count == 0


async def test_an_evicted_model_is_admitted_again_when_locked(zoo, make_loads):
    loads, records, _ = make_loads(ram_bytes=int(unet_bytes(zoo) * 1.4))
    records.add(record(zoo.sd1_diffusers, key="a"), record(zoo.sd1_diffusers, key="b"))
    a = await loads.load("a", UNET)
    await loads.load("b", UNET)
    with a:
        assert cached_keys(loads) == [("a", UNET)]


async def test_unloading_a_main_model_drops_all_its_parts(zoo, make_loads):
    loads, records, _ = make_loads()
    records.add(
        record(zoo.sd1_diffusers, key="sd1"),
        record(zoo.vae_diffusers, key="vae", type=ModelType.VAE),
    )
    for part in (UNET, SubModelType.TEXT_ENCODER, SubModelType.TOKENIZER):
        await loads.load("sd1", part)
    vae = await loads.load("vae")
    removed = loads.cache.unload("sd1")
    assert removed.count == 3
    assert removed.freed_bytes > 0
    assert cached_keys(loads) == [("vae", None)]
    with pytest.raises(NotFoundError):
        loads.cache.unload("sd1")
    with vae:
        with pytest.raises(FailedPreconditionError):
            loads.cache.unload("vae")
        cleared = loads.cache.clear()
        assert (cleared.count, cleared.locked_count) == (0, 1)
    assert loads.cache.clear().count == 1


async def test_load_failures_are_reported(zoo, make_loads, tmp_path):
    loads, records, events = make_loads()
    records.add(
        record(tmp_path / "gone", key="gone"),
        record(zoo.controlnet_diffusers, key="cn", type=ModelType.CONTROLNET),
    )
    with pytest.raises(FailedPreconditionError) as caught:
        await loads.load("gone", UNET)
    assert caught.value.reason == "MODEL_FILES_MISSING"
    with pytest.raises(UnimplementedError):
        await loads.load("cn")
    with pytest.raises(NotFoundError):
        await loads.load("unknown", UNET)
    failures = [event.error.reason for event in events if isinstance(event, ModelLoadFailed)]
    assert failures == ["MODEL_FILES_MISSING", "NO_LOADER"]


async def test_a_checkpoint_is_converted_once_and_again_when_it_changes(zoo, make_loads, tmp_path):
    loads, records, _ = make_loads()
    checkpoint = record(
        zoo.sd1_single_file,
        key="ckpt",
        format=ModelFormat.CHECKPOINT,
        config_path=str(zoo.sd1_diffusers),
        hash="blake3:aa",
    )
    records.add(checkpoint)
    converted = tmp_path / "models" / ".cache" / "convert" / "ckpt"
    unet = await loads.load("ckpt", UNET)
    assert unet.entry.path == converted / "unet"
    marker = converted / "easel-conversion.json"
    first = marker.read_text()
    inode = marker.stat().st_ino
    await loads.load("ckpt", SubModelType.TEXT_ENCODER)
    assert marker.stat().st_ino == inode  # not converted again
    from dataclasses import replace

    records.add(replace(checkpoint, hash="blake3:bb"))  # the file changed
    await loads.load("ckpt", SubModelType.VAE)
    assert marker.read_text() != first
    reloaded = await loads.load("ckpt", UNET)  # the cached UNet is stale: read again
    assert not reloaded.cache_hit


async def test_a_conversion_too_big_for_its_budget_loads_from_the_file(zoo, make_loads, tmp_path):
    loads, records, _ = make_loads(convert_bytes=1024)
    records.add(
        record(
            zoo.sd1_single_file,
            key="ckpt",
            format=ModelFormat.CHECKPOINT,
            config_path=str(zoo.sd1_diffusers),
        )
    )
    unet = await loads.load("ckpt", UNET)
    assert unet.entry.path == zoo.sd1_single_file
    assert not (tmp_path / "models" / ".cache" / "convert" / "ckpt").exists()


async def test_conversions_go_to_the_convert_cache_dir_when_one_is_set(zoo, tmp_path):
    settings = InferenceSettings(root=tmp_path, device="cpu", convert_cache_dir="worker/convert")
    records = Records(tmp_path / "models")
    loads = build_model_loads(settings, start_torch(settings), records, InferenceEvents())
    records.add(
        record(
            zoo.sd1_single_file,
            key="ckpt",
            format=ModelFormat.CHECKPOINT,
            config_path=str(zoo.sd1_diffusers),
        )
    )
    unet = await loads.load("ckpt", UNET)
    assert unet.entry.path == tmp_path / "worker" / "convert" / "ckpt" / "unet"
    assert not (tmp_path / "models" / ".cache").exists()
