"""The image nodes run directly against the real image library in a temporary root:
pixels they make, what they store (intermediate or for the user, with provenance), and
bad input refused naming the field."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from services.common import errors
from services.invoker.images.library import ImageLibrary, NewImage, open_image_library
from services.invoker.images.png_metadata import encode_png, read_provenance
from services.invoker.invocations import image_ops
from services.invoker.invocations.base import BaseInvocation
from services.invoker.invocations.context import InvocationContext
from services.invoker.invocations.fields import ImageRef
from services.invoker.sessions.context import NodeImages

GRAPH = {"nodes": {"node": {"type": "show_image"}}, "edges": []}


@pytest.fixture
async def library(tmp_path: Path) -> AsyncIterator[ImageLibrary]:
    opened = await open_image_library(tmp_path)
    yield opened
    await opened.close()


def context_for(library: ImageLibrary, node: BaseInvocation) -> InvocationContext:
    images = NodeImages(library, "session", "node", lambda: GRAPH, node)
    return InvocationContext(
        session_id="session",
        node_id="node",
        images=images,
        inference=None,  # type: ignore[arg-type]
        models=None,  # type: ignore[arg-type]
        progress=lambda step, total, message="": None,
    )


async def upload(library: ImageLibrary, image: Image.Image) -> ImageRef:
    async def chunks() -> AsyncIterator[bytes]:
        yield encode_png(image)

    record = await library.upload(NewImage(), chunks())
    return ImageRef(image_name=record.name)


async def run(library: ImageLibrary, node: BaseInvocation) -> tuple[Image.Image, ImageRef]:
    output = await node.invoke(context_for(library, node))
    png = await library.load_png(output.image.image_name)
    image = Image.open(io.BytesIO(png))
    assert (output.width, output.height) == image.size
    return image, output.image


def pixels(image: Image.Image) -> list:
    return [image.getpixel((x, y)) for y in range(image.height) for x in range(image.width)]


def halves(width: int = 8, height: int = 4) -> Image.Image:
    """Left half red, right half blue."""
    image = Image.new("RGB", (width, height), (255, 0, 0))
    image.paste((0, 0, 255), (width // 2, 0, width, height))
    return image


async def test_resize_crop_convert_and_blur_make_the_expected_pixels(library) -> None:
    source = await upload(library, halves())

    resized, _ = await run(
        library,
        image_ops.ResizeImageInvocation(image=source, width=4, height=2, resample="nearest"),
    )
    assert resized.size == (4, 2)
    assert [resized.getpixel((0, 0)), resized.getpixel((3, 1))] == [(255, 0, 0), (0, 0, 255)]

    cropped, _ = await run(
        library, image_ops.CropImageInvocation(image=source, x=3, y=1, width=2, height=2)
    )
    assert pixels(cropped) == [(255, 0, 0), (0, 0, 255)] * 2

    outside, _ = await run(
        library, image_ops.CropImageInvocation(image=source, x=6, y=0, width=4, height=1)
    )
    assert pixels(outside) == [(0, 0, 255, 255)] * 2 + [(0, 0, 0, 0)] * 2

    gray, _ = await run(library, image_ops.ConvertImageInvocation(image=source, mode="L"))
    assert gray.mode == "L"
    assert gray.getpixel((0, 0)) == 76

    blurred, _ = await run(library, image_ops.BlurImageInvocation(image=source, radius=2))
    left, right = blurred.getpixel((3, 2)), blurred.getpixel((4, 2))
    assert 0 < left[2] < 255
    assert 0 < right[0] < 255
    unblurred, _ = await run(library, image_ops.BlurImageInvocation(image=source, radius=0))
    assert pixels(unblurred) == pixels(halves())


async def test_paste_and_blend_combine_two_images(library) -> None:
    base = await upload(library, Image.new("RGB", (4, 4), (0, 0, 0)))
    dot = Image.new("RGBA", (2, 2), (255, 255, 255, 255))
    dot.putpixel((1, 1), (255, 255, 255, 0))  # transparent: the base shows through
    pasted, _ = await run(
        library,
        image_ops.PasteImageInvocation(base_image=base, image=await upload(library, dot), x=1, y=1),
    )
    white, black = (255, 255, 255), (0, 0, 0)
    assert [pasted.getpixel(xy) for xy in [(1, 1), (2, 1), (2, 2), (0, 0)]] == [
        white,
        white,
        black,
        black,
    ]

    red = await upload(library, Image.new("RGB", (4, 4), (200, 0, 0)))
    blue = await upload(library, Image.new("RGB", (2, 2), (0, 0, 100)))
    blended, _ = await run(
        library, image_ops.BlendImagesInvocation(image_a=red, image_b=blue, alpha=0.25)
    )
    assert blended.size == (4, 4)
    assert blended.getpixel((0, 0)) == (150, 0, 25)


async def test_channels_extract_and_merge_back_to_the_image(library) -> None:
    source_image = Image.new("RGB", (3, 2), (10, 20, 30))
    source = await upload(library, source_image)
    channels = {}
    for channel in "RGB":
        node = image_ops.ExtractChannelInvocation(image=source, channel=channel)
        extracted, channels[channel] = await run(library, node)
        assert extracted.mode == "L"
    alpha, _ = await run(library, image_ops.ExtractChannelInvocation(image=source, channel="A"))
    assert set(pixels(alpha)) == {255}

    merged, _ = await run(
        library,
        image_ops.MergeChannelsInvocation(
            red=channels["B"], green=channels["G"], blue=channels["R"]
        ),
    )
    assert merged.mode == "RGB"
    assert set(pixels(merged)) == {(30, 20, 10)}

    small = await upload(library, Image.new("L", (1, 1)))
    node = image_ops.MergeChannelsInvocation(red=channels["R"], green=small, blue=channels["B"])
    with pytest.raises(errors.InvalidArgumentError) as caught:
        await node.invoke(context_for(library, node))
    assert caught.value.reason == "SIZE_MISMATCH"
    assert caught.value.violations[0].field == "green"


async def test_ops_store_intermediates_and_save_and_show_store_for_the_user(library) -> None:
    source = await upload(library, halves())
    _, resized = await run(
        library, image_ops.ResizeImageInvocation(image=source, width=2, height=2)
    )
    saved_node = image_ops.SaveImageInvocation(image=resized)
    saved, saved_ref = await run(library, saved_node)
    _, shown_ref = await run(library, image_ops.ShowImageInvocation(image=resized))

    resized_record = await library.get(resized.image_name)
    saved_record = await library.get(saved_ref.image_name)
    shown_record = await library.get(shown_ref.image_name)
    assert resized_record.is_intermediate
    assert not saved_record.is_intermediate
    assert saved_record.metadata == {}
    assert not shown_record.is_intermediate
    assert shown_record.metadata == {"display": True}
    assert (saved_record.session_id, saved_record.node_id) == ("session", "node")
    assert saved.size == (2, 2)

    provenance = read_provenance(await library.load_png(saved_ref.image_name))
    assert provenance.graph == GRAPH
    assert provenance.node == {
        "id": "node",
        "run_id": "node",
        "type": "save_image",
        "inputs": {"image": {"image_name": resized.image_name}},
    }
    assert not image_ops.SaveImageInvocation.cacheable
    assert not image_ops.ShowImageInvocation.cacheable
    assert image_ops.ResizeImageInvocation.cacheable


async def test_load_image_gives_the_size_and_an_unknown_image_is_not_found(library) -> None:
    source = await upload(library, halves(6, 2))
    node = image_ops.LoadImageInvocation(image=source)
    output = await node.invoke(context_for(library, node))
    assert (output.image, output.width, output.height) == (source, 6, 2)

    missing = image_ops.LoadImageInvocation(image=ImageRef(image_name="missing.png"))
    with pytest.raises(errors.NotFoundError):
        await missing.invoke(context_for(library, missing))
