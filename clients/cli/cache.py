"""`easel cache`: the inference service's model cache."""

from __future__ import annotations

from typing import Annotated

import typer

from clients.cli import output
from clients.cli.connection import all_pages, client
from easel.inference.v1 import model_cache_service_pb2 as pb
from easel.model_manager.v1 import model_pb2 as m

app = typer.Typer(help="The inference service's model cache: stats, clear.")


@app.command()
def stats(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show the cache's memory use, limits and counters, and the models it holds."""
    cache = client(ctx).model_cache
    current = cache.GetCacheStats(pb.GetCacheStatsRequest()).stats
    cached = all_pages(cache.ListCachedModels, pb.ListCachedModelsRequest(), "models")
    if as_json:
        output.print_json({"stats": current, "models": cached})
        return
    output.fields(
        [
            ("device", current.execution_device),
            (
                "RAM",
                f"{output.size(current.ram_used_bytes) or '0'} of "
                f"{output.size(current.ram_limit_bytes)}",
            ),
            (
                "VRAM",
                f"{output.size(current.vram_used_bytes) or '0'} of "
                f"{output.size(current.vram_limit_bytes)}"
                if current.vram_limit_bytes
                else "",
            ),
            ("models", f"{current.loaded_model_count} ({current.locked_model_count} in use)"),
            ("hits", str(current.hits)),
            ("misses", str(current.misses)),
            ("evictions", str(current.evictions)),
        ],
        title="Model cache",
    )
    if cached:
        columns = ["key", "part", "size", "device", "precision", "in use", "last used"]
        rows = [
            [
                model.key,
                output.label(m.SubModelType, model.submodel_type),
                output.size(model.size_bytes),
                model.device,
                model.precision,
                "yes" if model.locked else "",
                output.when(model.last_used_time),
            ]
            for model in cached
        ]
        output.table(columns, rows)


@app.command()
def clear(ctx: typer.Context) -> None:
    """Unload every model not in use from the cache."""
    cleared = client(ctx).model_cache.ClearCache(pb.ClearCacheRequest())
    kept = f"; {cleared.locked_count} in use kept" if cleared.locked_count else ""
    freed = output.size(cleared.freed_bytes) or "0 bytes"
    output.say(f"unloaded {output.count(cleared.unloaded_count, 'model')}, freed {freed}{kept}")
