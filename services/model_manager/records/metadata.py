"""Model metadata (the reference's HuggingFaceMetadata), read back from a record.

The installer stores the hub's model-info response in the record's `source_api_response`,
as the reference does; metadata is derived from it when asked, so the record stays the
single place the information lives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.common.errors import NotFoundError
from services.model_manager.records.configs import AnyModelConfig


@dataclass(frozen=True)
class ModelMetadata:
    """What a repository says about a model: descriptive, never needed to run it."""

    repo_id: str
    name: str
    author: str
    tags: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    last_modified: datetime | None = None
    tag_dict: dict[str, Any] = field(default_factory=dict)


def metadata_from_api_response(response: dict[str, Any]) -> ModelMetadata:
    """Metadata from a HuggingFace model-info response (`GET /api/models/{repo_id}`)."""
    repo_id = str(response.get("id") or response.get("modelId") or "")
    modified = response.get("lastModified")
    return ModelMetadata(
        repo_id=repo_id,
        name=repo_id.rpartition("/")[2],
        author=str(response.get("author") or repo_id.partition("/")[0]),
        tags=[str(tag) for tag in response.get("tags", [])],
        files=sorted(str(s["rfilename"]) for s in response.get("siblings", [])),
        last_modified=datetime.fromisoformat(modified.replace("Z", "+00:00")) if modified else None,
        tag_dict=dict(response.get("cardData") or {}),
    )


def metadata_of(config: AnyModelConfig) -> ModelMetadata:
    if not config.source_api_response:
        raise NotFoundError(
            f"model {config.key} has no stored repository metadata",
            reason="MODEL_METADATA_NOT_FOUND",
            metadata={"key": config.key},
        )
    return metadata_from_api_response(json.loads(config.source_api_response))
