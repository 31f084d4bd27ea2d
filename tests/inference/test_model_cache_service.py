"""ModelCacheService over the wire: a real model manager and a real inference process,
models registered with the model manager, errors as the domain errors they stand for."""

from __future__ import annotations

from typing import Any

import pytest

from clients.sdk import EaselClient
from easel.inference.v1 import model_cache_service_pb2 as pb
from easel.model_manager.v1 import model_pb2 as m
from easel.model_manager.v1 import model_record_service_pb2 as records_pb
from services.common import errors
from tests.inference.test_model_cache import unet_bytes
from tests.processes import client_settings, wait_serving

UNET = m.SUB_MODEL_TYPE_UNET


def register(client: EaselClient, **fields: Any) -> str:
    config = m.ModelConfig(base=m.BASE_MODEL_TYPE_SD_1, **fields)
    return client.model_records.CreateModel(records_pb.CreateModelRequest(model=config)).model.key


def raised(error_type: type[errors.EaselError], call, request) -> errors.EaselError:
    with pytest.raises(error_type) as caught:
        call(request)
    return caught.value


@pytest.fixture
def suite(zoo, run_service, easel_env):
    """Both processes, the inference cache budgeted at about 1.4 tiny UNets."""
    assert zoo.sd1_mixed_variant.is_dir()  # built before any service starts
    easel_env["EASEL_MODEL_CACHE_RAM_BYTES"] = str(int(unet_bytes(zoo) * 1.4))
    manager = run_service("model_manager")
    wait_serving(manager)
    inference = run_service("inference")
    wait_serving(inference)
    with EaselClient(client_settings(easel_env)) as client:
        yield client, manager


def test_load_list_unload_and_clear(zoo, suite, tmp_path):
    client, _ = suite
    main = dict(
        type=m.MODEL_TYPE_MAIN,
        format=m.MODEL_FORMAT_DIFFUSERS,
        repo_variant=m.MODEL_REPO_VARIANT_DEFAULT,
    )
    first = register(client, name="a", path=str(zoo.sd1_diffusers), **main)
    second = register(client, name="b", path=str(zoo.sd1_mixed_variant), **main)
    cache = client.model_cache

    loaded = cache.LoadModel(pb.LoadModelRequest(key=first, submodel_type=UNET)).model
    assert (loaded.key, loaded.submodel_type, loaded.cache_hit) == (first, UNET, False)
    assert loaded.base == m.BASE_MODEL_TYPE_SD_1
    assert loaded.type == m.MODEL_TYPE_MAIN
    assert (loaded.device, loaded.precision) == ("cpu", "float32")
    assert loaded.path == str(zoo.sd1_diffusers / "unet")
    assert loaded.size_bytes == unet_bytes(zoo)
    again = cache.LoadModel(pb.LoadModelRequest(key=first, submodel_type=UNET)).model
    assert again.cache_hit
    assert again.load_duration.ToMilliseconds() < 1000

    cache.LoadModel(pb.LoadModelRequest(key=second, submodel_type=UNET))  # evicts the first
    stats = cache.GetCacheStats(pb.GetCacheStatsRequest()).stats
    assert (stats.hits, stats.misses, stats.evictions, stats.loaded_model_count) == (1, 2, 1, 1)
    assert stats.ram_used_bytes == unet_bytes(zoo)
    assert stats.execution_device == "cpu"
    assert stats.ram_limit_bytes == int(unet_bytes(zoo) * 1.4)
    assert stats.vram_limit_bytes == 0

    cache.LoadModel(pb.LoadModelRequest(key=second, submodel_type=m.SUB_MODEL_TYPE_TOKENIZER))
    listed = cache.ListCachedModels(pb.ListCachedModelsRequest(page_size=1))
    assert [(e.key, e.submodel_type) for e in listed.models] == [
        (second, m.SUB_MODEL_TYPE_TOKENIZER)
    ]
    rest = cache.ListCachedModels(
        pb.ListCachedModelsRequest(page_size=1, page_token=listed.next_page_token)
    )
    assert [(e.key, e.submodel_type, e.locked) for e in rest.models] == [(second, UNET, False)]
    assert rest.next_page_token == ""

    removed = cache.UnloadModel(pb.UnloadModelRequest(key=second))
    assert removed.unloaded_count == 2
    assert removed.freed_bytes == unet_bytes(zoo)
    error = raised(errors.NotFoundError, cache.UnloadModel, pb.UnloadModelRequest(key=second))
    assert error.reason == "MODEL_NOT_CACHED"
    cache.LoadModel(pb.LoadModelRequest(key=first, submodel_type=m.SUB_MODEL_TYPE_SCHEDULER))
    cleared = cache.ClearCache(pb.ClearCacheRequest())
    assert (cleared.unloaded_count, cleared.locked_count) == (1, 0)


def test_errors(zoo, suite, tmp_path):
    client, manager = suite
    cache = client.model_cache
    main = dict(type=m.MODEL_TYPE_MAIN, format=m.MODEL_FORMAT_DIFFUSERS)
    sd1 = register(client, name="sd1", path=str(zoo.sd1_diffusers), **main)
    gone = register(client, name="gone", path=str(tmp_path / "gone"), **main)
    controlnet = register(
        client,
        name="cn",
        type=m.MODEL_TYPE_CONTROLNET,
        format=m.MODEL_FORMAT_DIFFUSERS,
        path=str(zoo.controlnet_diffusers),
    )

    error = raised(
        errors.NotFoundError, cache.LoadModel, pb.LoadModelRequest(key="nope", submodel_type=UNET)
    )
    assert error.metadata.get("key") == "nope"
    for request, field in (
        (pb.LoadModelRequest(submodel_type=UNET), "key"),
        (pb.LoadModelRequest(key=sd1), "submodel_type"),
        (
            pb.LoadModelRequest(key=sd1, submodel_type=m.SUB_MODEL_TYPE_TEXT_ENCODER_2),
            "submodel_type",
        ),
        (pb.LoadModelRequest(key=sd1, submodel_type=99), "submodel_type"),
    ):
        error = raised(errors.InvalidArgumentError, cache.LoadModel, request)
        assert error.violations[0].field == field
    error = raised(
        errors.FailedPreconditionError,
        cache.LoadModel,
        pb.LoadModelRequest(key=gone, submodel_type=UNET),
    )
    assert error.reason == "MODEL_FILES_MISSING"
    error = raised(errors.UnimplementedError, cache.LoadModel, pb.LoadModelRequest(key=controlnet))
    assert error.reason == "NO_LOADER"
    # The text encoder alone is larger than this cache.
    too_big = pb.LoadModelRequest(key=sd1, submodel_type=m.SUB_MODEL_TYPE_TEXT_ENCODER)
    error = raised(errors.ResourceExhaustedError, cache.LoadModel, too_big)
    assert error.reason == "OUT_OF_MEMORY"
    raised(errors.InvalidArgumentError, cache.UnloadModel, pb.UnloadModelRequest())
    assert cache.GetCacheStats(pb.GetCacheStatsRequest()).stats.loaded_model_count == 0

    manager.stop()
    error = raised(
        errors.UnavailableError, cache.LoadModel, pb.LoadModelRequest(key=sd1, submodel_type=UNET)
    )
    assert error.reason == "MODEL_MANAGER_UNAVAILABLE"
    assert cache.GetCacheStats(pb.GetCacheStatsRequest()).stats.loaded_model_count == 0
