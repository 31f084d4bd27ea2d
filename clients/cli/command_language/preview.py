"""What `show_image` does on the client: open the system's image viewer where there is a
display, else draw a small preview in the terminal.

The terminal preview uses half-block characters: each cell is "▀" with the upper pixel as
its foreground colour and the lower one as its background, so a cell holds two pixels
and any terminal with colours shows the picture without a graphics protocol.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image
from rich.console import Console
from rich.style import Style
from rich.text import Text

PREVIEW_COLUMNS = 48
UPPER_HALF = "▀"


def has_display() -> bool:
    """Whether a system image viewer can be shown: macOS and Windows always, elsewhere an
    X11 or Wayland display."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def open_viewer(path: Path) -> bool:
    """Open `path` in the system's viewer without waiting for it; False when there is no
    viewer to open."""
    if sys.platform == "win32":
        os.startfile(path)  # type: ignore[attr-defined]
        return True
    opener = "open" if sys.platform == "darwin" else "xdg-open"
    if shutil.which(opener) is None:
        return False
    subprocess.Popen(
        [opener, str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return True


def half_block_preview(path: Path, columns: int = PREVIEW_COLUMNS) -> Text:
    """The image at `path` as rows of half blocks, `columns` cells wide at most."""
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    width = max(1, min(columns, image.width))
    height = max(2, round(image.height * width / image.width))
    height += height % 2
    pixels = image.resize((width, height), Image.Resampling.BILINEAR).load()
    preview = Text()
    for row in range(0, height, 2):
        for column in range(width):
            upper, lower = pixels[column, row], pixels[column, row + 1]
            preview.append(UPPER_HALF, Style(color=_hex(upper), bgcolor=_hex(lower)))
        preview.append("\n")
    return preview


def show(path: Path, console: Console, *, viewer: bool = True) -> str:
    """Show the image at `path`: in the viewer when allowed and there is a display, else
    as a terminal preview when `console` is a terminal. Returns how it was shown."""
    if viewer and has_display() and open_viewer(path):
        return "viewer"
    if console.is_terminal:
        console.print(half_block_preview(path, min(PREVIEW_COLUMNS, console.width)))
        return "terminal"
    return "none"


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)
