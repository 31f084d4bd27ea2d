"""Registering fixture models in a running model manager, as tests and benchmarks do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clients.sdk import EaselClient
from easel.model_manager.v1 import model_pb2 as m
from easel.model_manager.v1 import model_record_service_pb2 as records_pb


def register_model(
    client: EaselClient, name: str, path: Path, base: int, type: int, **fields: Any
) -> str:
    """Record the model at `path` (left where it is) under `name`; return its key."""
    config = m.ModelConfig(name=name, path=str(path), base=base, type=type, **fields)
    return client.model_records.CreateModel(records_pb.CreateModelRequest(model=config)).model.key
