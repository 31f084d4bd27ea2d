"""The rule for a model input left empty: the default model of its type, so that graphs
like `txt2img | upscale | show_image` need no model key."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from services.common.errors import InvalidArgumentError
from services.common.model_taxonomy import ModelType


def default_model_key(
    field: str,
    model_type: ModelType,
    configured: Mapping[ModelType, str],
    installed: Sequence[str],
) -> str:
    """The key an empty model input `field` takes: the configured default for its type,
    else the only installed model of that type (`installed`: their keys).

    None configured and zero or several installed is MISSING_REQUIRED_INPUT naming the
    field, since choosing among several would make a graph's result depend on install order.
    """
    if model_type in configured:
        return configured[model_type]
    if len(installed) == 1:
        return installed[0]
    found = "none is installed" if not installed else f"{len(installed)} are installed"
    raise InvalidArgumentError(
        f"{field} needs a {model_type.value} model: no default is configured for "
        f"{model_type.value!r} and {found}",
        field=field,
        reason="MISSING_REQUIRED_INPUT",
        metadata={"field": field, "model_type": model_type.value},
    )
