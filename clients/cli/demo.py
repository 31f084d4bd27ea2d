"""`easel demo`: a first image with nothing downloaded.

`easel demo install` builds a tiny Stable Diffusion 1 pipeline and a tiny ESRGAN upscaler
with random weights (`clients.demo_models`), installs them through the model manager from
a folder under the root, and makes them the invoker's default main and upscaler models, so
`txt2img` and `upscale` find them without a model named, whatever else is installed. Their
images are noise: the point is to see every part work, offline, in seconds.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from clients.cli import output
from clients.cli.connection import client, current
from clients.cli.errors import CliError
from easel.invoker.v1 import invocation_service_pb2 as invocation_pb
from easel.model_manager.v1 import model_pb2
from easel.model_manager.v1 import model_record_service_pb2 as records_pb

demo_app = typer.Typer(help="A tiny demo model to try Easel offline.", no_args_is_help=True)

TRY_IT = (
    'easel gen \'txt2img --prompt "a cat eating sushi" --steps 20 --seed 1234 '
    "| upscale | show_image'"
)


@dataclass(frozen=True)
class DemoModel:
    name: str
    model_type: int
    description: str


DEMO_MODELS = (
    DemoModel(
        "easel-demo-sd1",
        model_pb2.MODEL_TYPE_MAIN,
        "Tiny SD-1 pipeline with random weights (easel demo install): its images are noise.",
    ),
    DemoModel(
        "easel-demo-esrgan-x2",
        model_pb2.MODEL_TYPE_UPSCALER,
        "Tiny x2 ESRGAN upscaler with random weights (easel demo install).",
    ),
)


@demo_app.command()
def install(ctx: typer.Context) -> None:
    """Build and install a tiny random-weight SD-1 model and a tiny x2 upscaler, and make
    them the default main and upscaler models. Offline; run again, it installs nothing
    new and makes them the defaults again."""
    settings = current(ctx).settings
    easel = client(ctx)
    keys = {demo.name: _installed_key(easel, demo) for demo in DEMO_MODELS}
    missing = [demo for demo in DEMO_MODELS if keys[demo.name] is None]
    if missing:
        settings.root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=".easel-demo-", dir=settings.root))
        try:
            with output.stderr().status("building the demo models (random weights)") as status:
                built = _build(folder)
                for demo in missing:
                    status.update(f"installing {demo.name}")
                    config = {"name": demo.name, "description": demo.description}
                    record = easel.install_model(str(built[demo.model_type]), config=config)
                    keys[demo.name] = record.key
                    output.say(f"installed {demo.name} as {record.key}")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    for demo in DEMO_MODELS:
        request = invocation_pb.SetDefaultModelRequest(
            model_type=demo.model_type, model_key=keys[demo.name]
        )
        easel.invocations.SetDefaultModel(request)
        kind = output.label(model_pb2.ModelType, demo.model_type)
        output.say(f"default {kind} model: {demo.name} ({keys[demo.name]})")
    output.say(f"try: {TRY_IT}")


def _installed_key(easel: Any, demo: DemoModel) -> str | None:
    request = records_pb.ListModelsRequest(name=demo.name, type=demo.model_type)
    models = easel.model_records.ListModels(request).models
    return models[0].key if models else None


def _build(folder: Path) -> dict[int, Path]:
    """Build both models into `folder`; torch and diffusers are imported only now."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from clients.demo_models import build_demo_models
    except ImportError as error:
        raise CliError(
            f"building the demo models needs torch and diffusers ({error})",
            hint="Run easel from the environment the services run in (`.venv/bin/easel`), "
            "where the inference extra is installed.",
        ) from error
    built = build_demo_models(folder)
    return {model_pb2.MODEL_TYPE_MAIN: built.main, model_pb2.MODEL_TYPE_UPSCALER: built.upscaler}
