"""Values that name something stored elsewhere: an image in the invoker's store, a model
of the model manager, latents or conditioning in the inference service's tensor store.

Each is a small pydantic model whose JSON shape is the one FieldSchema.type documents
(e.g. an "image" is `{"image_name": ...}`); `type_name` is that type's name.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field


class Reference(BaseModel):
    """Base of the reference values; `type_name` is their FieldSchema type."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    type_name: ClassVar[str]


class ImageRef(Reference):
    """An image of the invoker's image store."""

    type_name: ClassVar[str] = "image"
    image_name: str = Field(min_length=1, description="Name of the image record.")


class ModelRef(Reference):
    """A model of the model manager."""

    type_name: ClassVar[str] = "model"
    key: str = Field(min_length=1, description="Model key.")


class LatentsRef(Reference):
    """Latents kept in the inference service's tensor store."""

    type_name: ClassVar[str] = "latents"
    latents_name: str = Field(min_length=1, description="Name in the tensor store.")


class ConditioningRef(Reference):
    """Prompt conditioning kept in the inference service's tensor store."""

    type_name: ClassVar[str] = "conditioning"
    conditioning_name: str = Field(min_length=1, description="Name in the tensor store.")
