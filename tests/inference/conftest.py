"""Fixtures of the inference tests: torch pinned to one thread, the tiny models built once
per session, and model loading wired to records the test writes itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.common.errors import NotFoundError
from services.common.model_taxonomy import BaseModelType, ModelFormat, ModelRepoVariant, ModelType
from services.inference.events import InferenceEvents
from services.inference.loading.convert_cache import ConvertCache
from services.inference.loading.loaders import LOADERS
from services.inference.loading.registry import LoadOptions
from services.inference.model_cache import ModelCache
from services.inference.model_loads import ModelLoadService
from services.inference.model_records import ModelRecord
from tests.inference.zoo import InferenceZoo

torch.set_num_threads(1)

GiB = 1024**3


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> InferenceZoo:
    return InferenceZoo(Path(tmp_path_factory.mktemp("inference_zoo")))


def record(
    path: Path,
    *,
    key: str = "model",
    base: BaseModelType = BaseModelType.SD_1,
    type: ModelType = ModelType.MAIN,
    format: ModelFormat = ModelFormat.DIFFUSERS,
    **fields,
) -> ModelRecord:
    if format is ModelFormat.DIFFUSERS and type is ModelType.MAIN:
        fields.setdefault("repo_variant", ModelRepoVariant.DEFAULT)
    return ModelRecord(key=key, name=key, base=base, type=type, format=format, path=path, **fields)


class Records:
    """Records by key, as the model manager would answer them."""

    def __init__(self, models_dir: Path) -> None:
        self.by_key: dict[str, ModelRecord] = {}
        self._models_dir = models_dir

    def add(self, *records: ModelRecord) -> None:
        self.by_key.update((r.key, r) for r in records)

    async def get(self, key: str) -> ModelRecord:
        if key not in self.by_key:
            raise NotFoundError(f"no model {key}", reason="MODEL_NOT_FOUND")
        return self.by_key[key]

    async def models_dir(self) -> Path:
        return self._models_dir


@pytest.fixture
def options(tmp_path: Path) -> LoadOptions:
    return LoadOptions(dtype=torch.float32, root=tmp_path)


@pytest.fixture
def make_loads(tmp_path: Path):
    """A model load service over `Records` with a cache of the given RAM budget; the
    convert cache lives under the test's own models folder."""

    def make(
        ram_bytes: int = GiB, convert_bytes: int = GiB
    ) -> tuple[ModelLoadService, Records, list]:
        records = Records(tmp_path / "models")
        events = InferenceEvents()
        published: list = []
        events.publish = published.append  # type: ignore[method-assign]
        options = LoadOptions(
            dtype=torch.float32,
            root=tmp_path,
            convert_cache=ConvertCache(tmp_path / "models" / ".cache" / "convert", convert_bytes),
        )
        cache = ModelCache(ram_bytes, 0, "cpu")
        return (
            ModelLoadService(records, LOADERS, cache, options, events, convert_bytes),
            records,
            published,
        )

    return make
