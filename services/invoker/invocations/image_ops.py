"""Image operations with Pillow: each reads its images through the context's images and
stores what it makes there, so edges carry image names, never pixels.

What a node makes is stored as an intermediate image; save_image and show_image store the
copies meant for the user.
"""

from __future__ import annotations

import io
from typing import Any, ClassVar, Literal

from PIL import Image, ImageFilter

from services.common.errors import InvalidArgumentError
from services.invoker.images.png_metadata import encode_png
from services.invoker.invocations.base import BaseInvocation, BaseOutput, InputField, OutputField
from services.invoker.invocations.context import InvocationContext
from services.invoker.invocations.fields import ImageRef

MAX_SIDE = 16384
DISPLAY_METADATA = {"display": True}
"""Metadata of an image show_image stored: front ends show these to the user."""

Channel = Literal["R", "G", "B", "A"]


class ImageWithSizeOutput(BaseOutput):
    output_type: ClassVar[str] = "image_with_size_output"
    image: ImageRef = OutputField(description="The image.")
    width: int = OutputField(description="Its width in pixels.")
    height: int = OutputField(description="Its height in pixels.")


async def load_image(context: InvocationContext, image: ImageRef) -> Image.Image:
    """The decoded pixels of a stored image."""
    with Image.open(io.BytesIO(await context.images.load_png(image))) as opened:
        opened.load()
        return opened.copy()


async def store_image(
    context: InvocationContext,
    image: Image.Image,
    *,
    is_intermediate: bool = True,
    metadata: dict[str, Any] | None = None,
) -> ImageWithSizeOutput:
    ref = await context.images.save_png(
        encode_png(image), is_intermediate=is_intermediate, metadata=metadata
    )
    return ImageWithSizeOutput(image=ref, width=image.width, height=image.height)


async def store_image_png(
    context: InvocationContext, png: bytes, width: int, height: int
) -> ImageWithSizeOutput:
    """Store a PNG the inference service made, as an intermediate image."""
    ref = await context.images.save_png(png)
    return ImageWithSizeOutput(image=ref, width=width, height=height)


class LoadImageInvocation(BaseInvocation):
    """A stored image, with its size."""

    invocation_type: ClassVar[str] = "load_image"
    category: ClassVar[str] = "image"
    image: ImageRef = InputField(description="The image to load.")

    async def invoke(self, context: InvocationContext) -> ImageWithSizeOutput:
        loaded = await load_image(context, self.image)
        return ImageWithSizeOutput(image=self.image, width=loaded.width, height=loaded.height)


class SaveImageInvocation(BaseInvocation):
    """Saves a copy of an image for the user (not intermediate)."""

    invocation_type: ClassVar[str] = "save_image"
    category: ClassVar[str] = "image"
    cacheable: ClassVar[bool] = False
    image: ImageRef = InputField(description="The image to save.")

    async def invoke(self, context: InvocationContext) -> ImageWithSizeOutput:
        loaded = await load_image(context, self.image)
        return await store_image(context, loaded, is_intermediate=False)


class ShowImageInvocation(BaseInvocation):
    """Saves a copy of an image for the user and marks it for display
    (its metadata says `display: true`)."""

    invocation_type: ClassVar[str] = "show_image"
    category: ClassVar[str] = "image"
    cacheable: ClassVar[bool] = False
    image: ImageRef = InputField(description="The image to show.")

    async def invoke(self, context: InvocationContext) -> ImageWithSizeOutput:
        loaded = await load_image(context, self.image)
        return await store_image(
            context, loaded, is_intermediate=False, metadata=dict(DISPLAY_METADATA)
        )


_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


class ResizeImageInvocation(BaseInvocation):
    """Resizes an image to width x height."""

    invocation_type: ClassVar[str] = "resize"
    category: ClassVar[str] = "image"
    image: ImageRef = InputField(description="The image to resize.")
    width: int = InputField(512, ge=1, le=MAX_SIDE, description="The new width.")
    height: int = InputField(512, ge=1, le=MAX_SIDE, description="The new height.")
    resample: Literal["nearest", "bilinear", "bicubic", "lanczos"] = InputField(
        "bicubic", description="How pixels are resampled."
    )

    async def invoke(self, context: InvocationContext) -> ImageWithSizeOutput:
        loaded = await load_image(context, self.image)
        size = (self.width, self.height)
        return await store_image(context, loaded.resize(size, _RESAMPLE[self.resample]))


class CropImageInvocation(BaseInvocation):
    """Crops a width x height box at (x, y); parts outside the image are transparent."""

    invocation_type: ClassVar[str] = "crop"
    category: ClassVar[str] = "image"
    image: ImageRef = InputField(description="The image to crop.")
    x: int = InputField(0, description="Left edge of the box.")
    y: int = InputField(0, description="Top edge of the box.")
    width: int = InputField(512, ge=1, le=MAX_SIDE, description="Width of the box.")
    height: int = InputField(512, ge=1, le=MAX_SIDE, description="Height of the box.")

    async def invoke(self, context: InvocationContext) -> ImageWithSizeOutput:
        loaded = await load_image(context, self.image)
        box = (self.x, self.y, self.x + self.width, self.y + self.height)
        inside = box[0] >= 0 and box[1] >= 0 and box[2] <= loaded.width
        inside = inside and box[3] <= loaded.height
        source = loaded if inside else loaded.convert("RGBA")
        return await store_image(context, source.crop(box))


class PasteImageInvocation(BaseInvocation):
    """Pastes an image onto a base image at (x, y), through the pasted image's alpha."""

    invocation_type: ClassVar[str] = "paste"
    category: ClassVar[str] = "image"
    base_image: ImageRef = InputField(description="The image pasted onto.")
    image: ImageRef = InputField(description="The image to paste.")
    x: int = InputField(0, description="Where the pasted image's left edge goes.")
    y: int = InputField(0, description="Where the pasted image's top edge goes.")

    async def invoke(self, context: InvocationContext) -> ImageWithSizeOutput:
        base = await load_image(context, self.base_image)
        pasted = await load_image(context, self.image)
        mask = pasted.getchannel("A") if "A" in pasted.getbands() else None
        result = base.copy()
        result.paste(pasted.convert(base.mode), (self.x, self.y), mask)
        return await store_image(context, result)


class BlendImagesInvocation(BaseInvocation):
    """Blends two images of one size: (1 - alpha) * a + alpha * b."""

    invocation_type: ClassVar[str] = "blend"
    category: ClassVar[str] = "image"
    image_a: ImageRef = InputField(description="The first image.")
    image_b: ImageRef = InputField(description="The second image, resized to the first's size.")
    alpha: float = InputField(0.5, ge=0, le=1, description="Weight of the second image.")

    async def invoke(self, context: InvocationContext) -> ImageWithSizeOutput:
        a = await load_image(context, self.image_a)
        b = await load_image(context, self.image_b)
        mode = "RGBA" if "A" in a.getbands() + b.getbands() else "RGB"
        b = b.convert(mode).resize(a.size, Image.Resampling.BICUBIC)
        return await store_image(context, Image.blend(a.convert(mode), b, self.alpha))


class ConvertImageInvocation(BaseInvocation):
    """Converts an image to another mode (L: grayscale, LA, RGB, RGBA)."""

    invocation_type: ClassVar[str] = "convert"
    category: ClassVar[str] = "image"
    image: ImageRef = InputField(description="The image to convert.")
    mode: Literal["L", "LA", "RGB", "RGBA"] = InputField("RGB", description="The new mode.")

    async def invoke(self, context: InvocationContext) -> ImageWithSizeOutput:
        loaded = await load_image(context, self.image)
        return await store_image(context, loaded.convert(self.mode))


class BlurImageInvocation(BaseInvocation):
    """Blurs an image."""

    invocation_type: ClassVar[str] = "blur"
    category: ClassVar[str] = "image"
    image: ImageRef = InputField(description="The image to blur.")
    radius: float = InputField(8.0, ge=0, le=256, description="Blur radius in pixels.")
    blur_type: Literal["gaussian", "box"] = InputField("gaussian", description="The kind of blur.")

    async def invoke(self, context: InvocationContext) -> ImageWithSizeOutput:
        loaded = await load_image(context, self.image)
        kind = ImageFilter.GaussianBlur if self.blur_type == "gaussian" else ImageFilter.BoxBlur
        return await store_image(context, loaded.filter(kind(self.radius)))


class ExtractChannelInvocation(BaseInvocation):
    """One channel of an image as a grayscale image (A of an opaque image is all 255)."""

    invocation_type: ClassVar[str] = "extract_channel"
    category: ClassVar[str] = "image"
    image: ImageRef = InputField(description="The image.")
    channel: Channel = InputField("R", description="The channel to extract.")

    async def invoke(self, context: InvocationContext) -> ImageWithSizeOutput:
        loaded = (await load_image(context, self.image)).convert("RGBA")
        return await store_image(context, loaded.getchannel(self.channel))


class MergeChannelsInvocation(BaseInvocation):
    """An RGB image (RGBA with `alpha`) from grayscale images of one size, one per channel."""

    invocation_type: ClassVar[str] = "merge_channels"
    category: ClassVar[str] = "image"
    red: ImageRef = InputField(description="The red channel.")
    green: ImageRef = InputField(description="The green channel.")
    blue: ImageRef = InputField(description="The blue channel.")
    alpha: ImageRef | None = InputField(None, description="The alpha channel; none: opaque.")

    async def invoke(self, context: InvocationContext) -> ImageWithSizeOutput:
        names = ["red", "green", "blue"] + (["alpha"] if self.alpha is not None else [])
        bands = [(await load_image(context, getattr(self, name))).convert("L") for name in names]
        for name, band in zip(names[1:], bands[1:], strict=True):
            if band.size != bands[0].size:
                raise InvalidArgumentError(
                    f"{name} is {band.width}x{band.height}, red is "
                    f"{bands[0].width}x{bands[0].height}: channels must have one size",
                    field=name,
                    reason="SIZE_MISMATCH",
                )
        return await store_image(context, Image.merge("RGBA" if len(bands) == 4 else "RGB", bands))
