"""Registering fixture models in a running model manager, as tests and benchmarks do."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from clients.sdk import EaselClient
from easel.model_manager.v1 import model_pb2 as m
from easel.model_manager.v1 import model_record_service_pb2 as records_pb

if TYPE_CHECKING:
    from tests.model_fixtures import ModelZoo


def register_model(
    client: EaselClient, name: str, path: Path, base: int, type: int, **fields: Any
) -> str:
    """Record the model at `path` (left where it is) under `name`; return its key."""
    config = m.ModelConfig(name=name, path=str(path), base=base, type=type, **fields)
    return client.model_records.CreateModel(records_pb.CreateModelRequest(model=config)).model.key


def register_sd1(client: EaselClient, zoo: ModelZoo) -> str:
    """Record the zoo's tiny SD-1 pipeline as a main model; return its key."""
    return register_model(
        client,
        "sd1",
        zoo.sd1_diffusers,
        base=m.BASE_MODEL_TYPE_SD_1,
        type=m.MODEL_TYPE_MAIN,
        format=m.MODEL_FORMAT_DIFFUSERS,
        repo_variant=m.MODEL_REPO_VARIANT_DEFAULT,
    )


def register_upscaler(client: EaselClient, name: str, path: Path, scale: int) -> str:
    """Record the ESRGAN checkpoint at `path`, which enlarges `scale` times; return its key."""
    return register_model(
        client,
        name,
        path,
        base=m.BASE_MODEL_TYPE_ANY,
        type=m.MODEL_TYPE_UPSCALER,
        format=m.MODEL_FORMAT_CHECKPOINT,
        upscaler=m.UpscalerSettings(scale=scale),
    )
