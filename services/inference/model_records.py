"""What inference knows of a model: its record in the model manager, as plain data.

The model vocabulary (base, type, format, ...) is the suite's shared one in
`services.common.model_taxonomy`; the wire types stay inside `model_records_client`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.model_taxonomy import (
    BaseModelType,
    ModelFormat,
    ModelRepoVariant,
    ModelType,
    ModelVariantType,
    SchedulerPredictionType,
)


@dataclass(frozen=True)
class ModelRecord:
    """One model's record, with its path made absolute.

    `path` is resolved against the model manager's `models_dir`; `config_path` (a main
    checkpoint's own configuration, absolute or relative to the root) is kept as recorded.
    Fields that only apply to one model type keep their neutral value for the others.
    """

    key: str
    name: str
    base: BaseModelType
    type: ModelType
    format: ModelFormat
    path: Path
    hash: str = ""
    repo_variant: ModelRepoVariant | None = None
    variant: ModelVariantType | None = None
    prediction_type: SchedulerPredictionType | None = None
    upcast_attention: bool = False
    config_path: str = ""
    upscale_factor: int = 0
