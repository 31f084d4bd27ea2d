"""The heuristic source strings of the reference, parsed into typed sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.errors import InvalidArgumentError
from services.common.model_taxonomy import ModelRepoVariant
from services.model_manager.install.model_sources import (
    HuggingFaceModelSource,
    LocalModelSource,
    UrlModelSource,
    parse_source,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "/opt/models/sushi.safetensors",
            LocalModelSource(path=Path("/opt/models/sushi.safetensors")),
        ),
        (
            "https://example.com/m.safetensors",
            UrlModelSource(url="https://example.com/m.safetensors"),
        ),
        ("owner/name", HuggingFaceModelSource(repo_id="owner/name")),
        (
            "owner/name:fp32",
            HuggingFaceModelSource(repo_id="owner/name", variant=ModelRepoVariant.FP32),
        ),
        (
            "owner/name:fp16:vae",
            HuggingFaceModelSource(
                repo_id="owner/name", variant=ModelRepoVariant.FP16, subfolder="vae"
            ),
        ),
        ("owner/name::vae", HuggingFaceModelSource(repo_id="owner/name", subfolder="vae")),
        (
            "owner/name::path/to/model.safetensors",
            HuggingFaceModelSource(repo_id="owner/name", subfolder="path/to/model.safetensors"),
        ),
    ],
)
def test_string_forms(text, expected):
    assert parse_source(text) == expected
    assert parse_source(str(expected)) == expected  # the string form reads back the same


def test_tokens_and_inplace_go_where_they_belong():
    url = parse_source("https://example.com/m.bin", access_token="t0k")
    assert isinstance(url, UrlModelSource)
    assert url.access_token is not None
    assert url.access_token.get_secret_value() == "t0k"
    assert "t0k" not in repr(url)
    local = parse_source("/models/x", inplace=True)
    assert isinstance(local, LocalModelSource)
    assert local.inplace


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "ftp://example.com/x",
        "file:///etc/passwd",
        "relative/path/x.bin/y",
        "a:b",
        "owner/name:fp17",
    ],
)
def test_malformed_sources_are_refused(text):
    with pytest.raises(InvalidArgumentError) as caught:
        parse_source(text)
    assert caught.value.reason == "INVALID_SOURCE"
