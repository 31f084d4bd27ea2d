"""`easel images`: the invoker's stored images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clients.cli import output
from clients.cli.connection import all_pages, client
from easel.invoker.v1 import image_service_pb2 as pb

app = typer.Typer(help="Stored images: list, get, delete.")

ImageOrigin = output.choices(pb.ImageOrigin)
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@app.command("list")
def list_images(
    ctx: typer.Context,
    session: Annotated[str | None, typer.Option(help="Only the images of this session.")] = None,
    origin: Annotated[ImageOrigin | None, typer.Option(help="Only images of this origin.")] = None,
    intermediate: Annotated[
        bool | None,
        typer.Option(
            "--intermediate/--final",
            help="Only intermediate images, or only final ones (default: both).",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=0, help="Most images shown; 0 for all.")] = 50,
    as_json: Json = False,
) -> None:
    """List the stored images, newest first."""
    request = pb.ListImagesRequest(
        session_id=session or "",
        origin=output.from_label(pb.ImageOrigin, origin) if origin else 0,
        is_intermediate=intermediate,
    )
    images = all_pages(client(ctx).images.ListImages, request, "images", limit)
    if as_json:
        output.print_json(images)
        return
    columns = ["name", "size", "origin", "session", "node", "created"]
    rows = [
        [
            image.name,
            f"{image.width}x{image.height}",
            output.label(pb.ImageOrigin, image.origin)
            + (" (intermediate)" if image.is_intermediate else ""),
            image.session_id,
            image.node_id,
            output.when(image.create_time),
        ]
        for image in images
    ]
    output.table(columns, rows, caption=output.count(len(images), "image"))


@app.command()
def get(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The image's name.")],
    out: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File or folder to save it to (default: this folder)."),
    ] = None,
    thumbnail: Annotated[bool, typer.Option(help="Save its thumbnail instead.")] = False,
    as_json: Json = False,
) -> None:
    """Save an image's PNG file and print where it went."""
    images = client(ctx).images
    record = images.GetImage(pb.GetImageRequest(name=name)).image
    request = pb.GetImageContentRequest(name=name, thumbnail=thumbnail)
    png = b"".join(part.chunk for part in images.GetImageContent(request))
    file_name = f"{Path(name).stem}.thumbnail.png" if thumbnail else name
    path = out if out is not None and not out.is_dir() else (out or Path.cwd()) / file_name
    path.write_bytes(png)
    if as_json:
        output.print_json({**output.message_dict(record), "path": str(path.resolve())})
    else:
        output.say(str(path))


@app.command()
def delete(
    ctx: typer.Context,
    names: Annotated[list[str], typer.Argument(help="Image names.", show_default=False)],
) -> None:
    """Delete images: their records, files and thumbnails."""
    for name in names:
        client(ctx).images.DeleteImage(pb.DeleteImageRequest(name=name))
        output.say(f"deleted {name}")
