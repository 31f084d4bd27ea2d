"""PNG bytes in and out: checking uploads, and the text chunks that say how an image was made.

Every PNG a node saves carries two iTXt chunks (UTF-8, uncompressed, so any PNG reader or
`exiftool` shows them): `easel_graph`, the session's graph as JSON, and `easel_node`, the
node that saved it as JSON: its id, run id, type and every input value it ran with (the
format is image_service.proto's). With both, a picture alone is enough to make it again.
"""

from __future__ import annotations

import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from PIL import Image, PngImagePlugin

from services.common.errors import InvalidArgumentError, ResourceExhaustedError

GRAPH_CHUNK = "easel_graph"
NODE_CHUNK = "easel_node"
SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_CHUNK_TYPES = (b"tEXt", b"zTXt", b"iTXt")


@dataclass(frozen=True)
class Provenance:
    """How an image was made: the session's graph and the saving node with its inputs (None
    when a PNG does not say)."""

    graph: dict[str, Any] | None
    node: dict[str, Any] | None


def encode_png(image: Image.Image) -> bytes:
    """`image` as PNG bytes."""
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=PngImagePlugin.PngInfo())
    return out.getvalue()


def with_provenance(png: bytes, provenance: Provenance) -> bytes:
    """`png` (already decoded once, so known to be well-formed) with `provenance` in its
    `easel_graph`/`easel_node` chunks, right after the header.

    Earlier easel chunks (of an image a node read and passes on) are dropped; the pixels
    and every other chunk stay byte for byte, so nothing is decoded or compressed again.
    """
    chunks = list(_chunks(png))
    ours = [
        _itxt(key, value)
        for key, value in ((GRAPH_CHUNK, provenance.graph), (NODE_CHUNK, provenance.node))
        if value is not None
    ]
    kept = [raw for kind, data, raw in chunks[1:] if not _is_easel_text(kind, data)]
    return b"".join([SIGNATURE, chunks[0][2], *ours, *kept])


def read_provenance(png: bytes) -> Provenance:
    """The provenance chunks of PNG bytes; a chunk that is absent reads as None."""
    with Image.open(io.BytesIO(png)) as image:
        texts: dict[str, str] = dict(getattr(image, "text", {}))
    return Provenance(_json_chunk(texts, GRAPH_CHUNK), _json_chunk(texts, NODE_CHUNK))


def decode_png(data: bytes, *, max_pixels: int, field: str) -> Image.Image:
    """The fully decoded image of `data`, which must be a PNG of at most `max_pixels`.

    Anything else is InvalidArgumentError (INVALID_IMAGE) naming `field`; an image with too
    many pixels is refused from its header, before it is decompressed.
    """
    try:
        image = Image.open(io.BytesIO(data), formats=["PNG"])
    except Image.DecompressionBombError:
        raise _too_many_pixels(max_pixels) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise _invalid(field, f"is not a PNG image ({exc})") from None
    if image.width * image.height > max_pixels:
        raise _too_many_pixels(max_pixels)
    try:
        image.load()
    except (OSError, ValueError, SyntaxError) as exc:
        raise _invalid(field, f"is not a decodable PNG image ({exc})") from None
    return image


def _chunks(png: bytes) -> Iterator[tuple[bytes, bytes, bytes]]:
    """Each chunk's type, data and raw bytes, up to IEND (anything after it is dropped)."""
    position = len(SIGNATURE)
    while position < len(png):
        length = int.from_bytes(png[position : position + 4], "big")
        kind = png[position + 4 : position + 8]
        end = position + 12 + length
        yield kind, png[position + 8 : end - 4], png[position:end]
        if kind == b"IEND":
            return
        position = end


def _is_easel_text(kind: bytes, data: bytes) -> bool:
    keyword = data.split(b"\0", 1)[0]
    return kind in TEXT_CHUNK_TYPES and keyword in (GRAPH_CHUNK.encode(), NODE_CHUNK.encode())


def _itxt(key: str, value: dict[str, Any]) -> bytes:
    """An uncompressed iTXt chunk: keyword, flags, empty language and translated keyword."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    data = key.encode("latin-1") + b"\0\0\0\0\0" + text
    kind = b"iTXt"
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def _json_chunk(texts: dict[str, str], key: str) -> dict[str, Any] | None:
    if key not in texts:
        return None
    value = json.loads(texts[key])
    if not isinstance(value, dict):
        raise ValueError(f"the {key} chunk holds {type(value).__name__}, not a JSON object")
    return value


def _invalid(field: str, what: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"{field} {what}", field=field, reason="INVALID_IMAGE")


def _too_many_pixels(max_pixels: int) -> ResourceExhaustedError:
    return ResourceExhaustedError(
        f"the image has more than the server's limit of {max_pixels} pixels",
        reason="IMAGE_TOO_LARGE",
        metadata={"max_pixels": str(max_pixels)},
    )
