"""`easel gen`: the node command language, one line or a prompt."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clients.cli import output
from clients.cli.command_language.commands import fetch_commands
from clients.cli.command_language.repl import run_interactive
from clients.cli.command_language.runner import GenSession
from clients.cli.connection import client, current

HISTORY_FILE = Path(".easel_gen_history")
"""The prompt's line history, under the root."""


def gen(
    ctx: typer.Context,
    line: Annotated[
        str | None,
        typer.Argument(
            help='One line of node commands, quoted, e.g. \'txt2img --prompt "a cat" | '
            "upscale | show_image'; `help` for the language. Without it: a prompt.",
            show_default=False,
        ),
    ] = None,
    output_dir: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Folder the images are saved to (default: outputs/ under the root).",
            show_default=False,
        ),
    ] = None,
    viewer: Annotated[
        bool,
        typer.Option(
            help="Open show_image's images in the system viewer where there is a display "
            "(else a preview is drawn in the terminal)."
        ),
    ] = True,
) -> None:
    """Run node commands: each command adds a node (its options are the node's inputs),
    `|` feeds each command the outputs of the one before.

    The commands are the invoker's node types, custom ones included; `easel gen help`
    lists them and `easel gen 'help txt2img'` shows one. Images that save_image or
    show_image keep (else those of the last command) are saved and their paths printed.
    """
    settings = current(ctx).settings
    easel = client(ctx)
    session = GenSession(
        easel,
        fetch_commands(easel.invocations),
        output_dir or settings.root / "outputs",
        out=output.stdout(),
        err=output.stderr(),
        viewer=viewer,
    )
    if line is not None:
        session.run_line(line)
        return
    code = run_interactive(session, settings.root / HISTORY_FILE)
    if code:
        raise typer.Exit(code)
