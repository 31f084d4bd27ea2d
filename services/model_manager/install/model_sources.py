"""Where a model is installed from: typed sources and the heuristic string forms.

The string forms are the reference's: a local path, an http(s) URL, or a HuggingFace
`repo_id[:variant[:subfolder-or-file]]` (`owner/name`, `owner/name:fp16`,
`owner/name:fp16:vae`, `owner/name::path/to/model.safetensors`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr

from services.common.errors import InvalidArgumentError
from services.common.model_taxonomy import ModelRepoVariant

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

SERVER_VARIANT = ModelRepoVariant.FP16
"""The variant of a repo source that names none. The model manager has no full-precision
mode, so half precision; a folder without fp16 files gives its unlabelled ones."""


class LocalModelSource(BaseModel):
    """A file or folder on this machine; `inplace` registers it where it is."""

    kind: Literal["local"] = "local"
    path: Path
    inplace: bool = False

    def __str__(self) -> str:
        return str(self.path)


class UrlModelSource(BaseModel):
    """A single model file at an http(s) URL."""

    kind: Literal["url"] = "url"
    url: str
    access_token: SecretStr | None = None

    def __str__(self) -> str:
        return self.url


class HuggingFaceModelSource(BaseModel):
    """A HuggingFace repository, or a folder or file inside it, in one variant."""

    kind: Literal["hugging_face"] = "hugging_face"
    repo_id: str
    variant: ModelRepoVariant | None = None
    subfolder: str = ""
    access_token: SecretStr | None = None

    def resolved(self) -> HuggingFaceModelSource:
        """This source with the variant the server takes when it names none."""
        return self if self.variant else self.model_copy(update={"variant": SERVER_VARIANT})

    def __str__(self) -> str:
        variant = self.variant.value if self.variant else ""
        if self.subfolder:
            return f"{self.repo_id}:{variant}:{self.subfolder}"
        return f"{self.repo_id}:{variant}" if variant else self.repo_id


ModelSource = Annotated[
    LocalModelSource | UrlModelSource | HuggingFaceModelSource, Field(discriminator="kind")
]


def parse_source(text: str, *, access_token: str = "", inplace: bool = False) -> ModelSource:
    """The typed source a heuristic source string stands for."""
    text = text.strip()
    token = SecretStr(access_token) if access_token else None
    if not text:
        raise _invalid(text, "a source is required")
    if text.startswith(("http://", "https://")):
        return UrlModelSource(url=text, access_token=token)
    if "://" in text:
        raise _invalid(text, "only http and https URLs, local paths and repo ids are sources")
    if text.startswith("/"):
        return LocalModelSource(path=Path(text), inplace=inplace)
    repo_id, _, rest = text.partition(":")
    variant_text, _, subfolder = rest.partition(":")
    if not _REPO_ID.match(repo_id):
        raise _invalid(text, f"{repo_id!r} is neither an absolute path nor an owner/name repo id")
    try:
        variant = ModelRepoVariant(variant_text) if variant_text else None
    except ValueError:
        known = ", ".join(v.value for v in ModelRepoVariant)
        raise _invalid(text, f"unknown variant {variant_text!r}; one of {known}") from None
    return HuggingFaceModelSource(
        repo_id=repo_id, variant=variant, subfolder=subfolder.strip("/"), access_token=token
    )


def _invalid(source: str, why: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"invalid model source {source!r}: {why}",
        field="heuristic_source",
        reason="INVALID_SOURCE",
        metadata={"source": source},
    )
