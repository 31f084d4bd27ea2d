"""The `easel` command: global options, the command groups, and how failures end it.

Every failure of a command, wherever it is raised, ends in `_Easel.invoke`: one place
turns it into a message, a hint and an exit code (`clients.cli.errors`), for the installed
script and for tests that run the app in-process alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from clients.cli import cache, downloads, images, models, queue, status
from clients.cli.connection import Connection
from clients.cli.demo import demo_app
from clients.cli.errors import exit_codes_help, report
from clients.cli.gen import gen


class _Easel(TyperGroup):
    """The top-level group: maps every error a command raises to its report and exit code."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):
            raise  # typer's own: usage errors (exit 2), --help, explicit exits
        except (Exception, KeyboardInterrupt) as error:
            connection = ctx.find_object(Connection)
            ctx.exit(report(error, debug=connection is not None and connection.debug))


app = typer.Typer(
    name="easel",
    cls=_Easel,
    epilog=exit_codes_help(),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _flag(name: str, value: object) -> list[str]:
    return [] if value is None else [f"--{name}", str(value)]


@app.callback()
def _connect(
    ctx: typer.Context,
    root: Annotated[
        Path | None,
        typer.Option(help="Root folder holding easel.yaml (default ~/easel)."),
    ] = None,
    invoker_address: Annotated[
        str | None,
        typer.Option(metavar="HOST:PORT", help="The invoker (default 127.0.0.1:50051)."),
    ] = None,
    model_manager_address: Annotated[
        str | None,
        typer.Option(metavar="HOST:PORT", help="The model manager (default 127.0.0.1:50052)."),
    ] = None,
    downloader_address: Annotated[
        str | None,
        typer.Option(metavar="HOST:PORT", help="The downloader (default 127.0.0.1:50053)."),
    ] = None,
    inference_address: Annotated[
        str | None,
        typer.Option(metavar="HOST:PORT", help="The inference service (default 127.0.0.1:50054)."),
    ] = None,
    auth_token: Annotated[
        str | None,
        typer.Option(help="Bearer token the services require (prefer EASEL_AUTH_TOKEN)."),
    ] = None,
    tls_ca_file: Annotated[
        Path | None,
        typer.Option(help="PEM roots to trust for services that serve TLS (turns TLS on)."),
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="Print the traceback of a failure.")
    ] = False,
) -> None:
    """Easel's command-line client: models, downloads, the queue, images and generation.

    Every setting is read as the services read it: the default, easel.yaml under the
    root, an EASEL_<NAME> environment variable, then the option given here.
    """
    flags = [
        *_flag("root", root),
        *_flag("invoker-address", invoker_address),
        *_flag("model-manager-address", model_manager_address),
        *_flag("downloader-address", downloader_address),
        *_flag("inference-address", inference_address),
        *_flag("auth-token", auth_token),
        *_flag("tls-ca-file", tls_ca_file),
    ]
    connection = Connection(flags, debug=debug)
    ctx.obj = connection
    ctx.call_on_close(connection.close)


app.add_typer(models.app, name="models")
app.add_typer(downloads.app, name="downloads")
app.add_typer(queue.app, name="queue")
app.add_typer(images.app, name="images")
app.add_typer(cache.app, name="cache")
app.command("status")(status.status)
app.command("gen")(gen)
app.add_typer(demo_app, name="demo")


def main() -> None:
    """The `easel` console script."""
    app(prog_name="easel")
