"""`easel models`: the model manager's records, installs, probes and sync."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from google.protobuf import json_format, struct_pb2

from clients.cli import output
from clients.cli.connection import all_pages, client
from clients.cli.errors import RunFailedError, reason_hint
from clients.sdk import EaselClient
from easel.invoker.v1 import invocation_service_pb2 as invocation_pb
from easel.model_manager.v1 import model_install_service_pb2 as install_pb
from easel.model_manager.v1 import model_pb2 as m
from easel.model_manager.v1 import model_record_service_pb2 as records_pb
from services.common.model_taxonomy import BaseModelType, ModelFormat, ModelType
from services.common.proto_enums import EnumMap

app = typer.Typer(
    help="Installed models: list, show, install, remove, probe, sync, and the defaults nodes use."
)

BASES = EnumMap(BaseModelType, m.BaseModelType)
TYPES = EnumMap(ModelType, m.ModelType)
FORMATS = EnumMap(ModelFormat, m.ModelFormat)

Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
BaseOption = Annotated[BaseModelType | None, typer.Option(help="Base model family.")]
TypeOption = Annotated[ModelType | None, typer.Option("--type", help="Model type.")]


def _string_form(enum: EnumMap, number: int) -> str:
    member = enum.from_pb(number)
    return "" if member is None else str(getattr(member, "value", member))


def _row(model: m.ModelConfig) -> list[str]:
    return [
        model.key,
        model.name,
        _string_form(BASES, model.base),
        _string_form(TYPES, model.type),
        _string_form(FORMATS, model.format),
        model.path,
    ]


def _show(model: m.ModelConfig, title: str) -> None:
    settings = model.WhichOneof("settings")
    values = (
        json_format.MessageToDict(getattr(model, settings), preserving_proto_field_name=True)
        if settings
        else {}
    )
    output.fields(
        [
            ("key", model.key),
            ("name", model.name),
            ("description", model.description),
            ("base", _string_form(BASES, model.base)),
            ("type", _string_form(TYPES, model.type)),
            ("format", _string_form(FORMATS, model.format)),
            ("variant", output.label(m.ModelRepoVariant, model.repo_variant)),
            ("path", model.path),
            ("hash", model.hash),
            ("source", model.source),
            ("tags", ", ".join(model.tags)),
            ("settings", ", ".join(f"{name}={value}" for name, value in values.items())),
            ("created", output.when(model.create_time)),
            ("updated", output.when(model.update_time)),
        ],
        title=title,
    )


def _local(path: str) -> str:
    """A path that exists here, made absolute (the services need absolute paths); other
    sources (URLs, repo ids, paths on the services' machine) as given."""
    local = Path(path).expanduser()
    return str(local.resolve()) if local.exists() else path


@app.command("list")
def list_models(
    ctx: typer.Context,
    base: BaseOption = None,
    model_type: TypeOption = None,
    name: Annotated[str | None, typer.Option(help="Exact name.")] = None,
    as_json: Json = False,
) -> None:
    """List the installed models, by name."""
    request = records_pb.ListModelsRequest(
        name=name or "", base=BASES.to_pb(base), type=TYPES.to_pb(model_type)
    )
    found = all_pages(client(ctx).model_records.ListModels, request, "models")
    if as_json:
        output.print_json(found)
        return
    columns = ["key", "name", "base", "type", "format", "path"]
    output.table(columns, map(_row, found), caption=output.count(len(found), "model"))


@app.command()
def show(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The model's key.")],
    as_json: Json = False,
) -> None:
    """Show one model's record."""
    model = client(ctx).model_records.GetModel(records_pb.GetModelRequest(key=key)).model
    if as_json:
        output.print_json(model)
    else:
        _show(model, title=model.name)


@app.command()
def install(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Argument(
            help="A local file or folder, an http(s) URL, or a HuggingFace "
            "repo_id:variant:subfolder (e.g. owner/name, owner/name:fp16:vae)."
        ),
    ],
    name: Annotated[str | None, typer.Option(help="Name of the model.")] = None,
    description: Annotated[str | None, typer.Option(help="Its description.")] = None,
    base: BaseOption = None,
    model_type: TypeOption = None,
    inplace: Annotated[
        bool, typer.Option(help="Register a local model where it is instead of copying it.")
    ] = False,
    access_token: Annotated[
        str | None, typer.Option(help="Token for a gated or private repo or URL.")
    ] = None,
    wait: Annotated[
        bool, typer.Option(help="Follow the install to its end with a progress bar.")
    ] = True,
    as_json: Json = False,
) -> None:
    """Install a model, following its download and install with a progress bar.

    Ctrl-C stops following; the install goes on in the model manager.
    """
    config = struct_pb2.Struct()
    overrides = {
        "name": name,
        "description": description,
        "base": base.value if base else None,
        "type": model_type.value if model_type else None,
    }
    config.update({field: value for field, value in overrides.items() if value is not None})
    request = install_pb.CreateInstallJobRequest(
        heuristic_source=_local(source),
        config=config,
        inplace=inplace,
        access_token=access_token or "",
    )
    job = client(ctx).model_install.CreateInstallJob(request).job
    if wait:
        job = _follow(client(ctx), job)
    if as_json:
        output.print_json(job)
    elif job.status == install_pb.INSTALL_STATUS_COMPLETED:
        model = job.config_out
        output.say(f"installed {model.name} as {model.key} at {model.path}")
    else:
        output.say(f"install job {job.id} is {output.label(install_pb.InstallStatus, job.status)}")
    if job.status == install_pb.INSTALL_STATUS_ERROR:
        raise RunFailedError(
            f"install of {job.source_string} failed: {job.error} ({job.error_type})",
            hint=reason_hint(job.error_type, {}),
        )
    if job.status == install_pb.INSTALL_STATUS_CANCELLED:
        raise RunFailedError(f"install of {job.source_string} was cancelled")


def _follow(easel: EaselClient, job: install_pb.InstallJob) -> install_pb.InstallJob:
    """Show the job's progress until it ends; return it as it ended."""
    watch = install_pb.WatchInstallJobsRequest(job_ids=[job.id])
    stream = easel.model_install.WatchInstallJobs(watch)
    try:
        with output.progress_bars() as bars:
            task = bars.add_task(job.source_string, total=None)
            for response in stream:
                event = response.event
                payload = event.WhichOneof("payload")
                if payload == "snapshot":
                    snapshot = event.snapshot.job
                    bars.update(task, completed=snapshot.bytes, total=snapshot.total_bytes or None)
                elif payload == "downloading":
                    done, total = event.downloading.bytes, event.downloading.total_bytes
                    bars.update(task, completed=done, total=total or None)
                elif payload == "running":
                    bars.update(task, description=f"installing {job.source_string}")
    finally:
        stream.cancel()
    request = install_pb.GetInstallJobRequest(id=job.id)
    return easel.model_install.GetInstallJob(request).job


@app.command()
def remove(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The model's key.")],
    keep_files: Annotated[
        bool, typer.Option(help="Remove the record only; leave the files on disk.")
    ] = False,
) -> None:
    """Remove a model: its record, and its files when they lie in the models folder."""
    mode = install_pb.UNINSTALL_MODE_UNREGISTER if keep_files else install_pb.UNINSTALL_MODE_DELETE
    request = install_pb.UninstallModelRequest(key=key, mode=mode)
    removed = client(ctx).model_install.UninstallModel(request)
    files = "deleted its files" if removed.files_deleted else "kept its files"
    output.say(f"removed {removed.model.name} ({removed.model.key}); {files} at {removed.path}")


@app.command()
def probe(
    ctx: typer.Context,
    path: Annotated[str, typer.Argument(help="The model file or folder.")],
    compute_hash: Annotated[
        bool, typer.Option("--hash", help="Compute its content hash (reads every byte).")
    ] = False,
    as_json: Json = False,
) -> None:
    """Say what the model at a path is, without installing it."""
    request = install_pb.ProbeModelRequest(path=_local(path), compute_hash=compute_hash)
    model = client(ctx).model_install.ProbeModel(request).model
    if as_json:
        output.print_json(model)
    else:
        _show(model, title=model.path)


@app.command()
def sync(
    ctx: typer.Context,
    remove_missing: Annotated[
        bool, typer.Option(help="Remove the records whose files are gone.")
    ] = False,
    register_new: Annotated[
        bool, typer.Option(help="Register the models found in the models folder without a record.")
    ] = False,
    dry_run: Annotated[bool, typer.Option(help="Change nothing; say what would be done.")] = False,
    as_json: Json = False,
) -> None:
    """Compare the records with the models folder: records whose files are gone, and
    models there that no record names."""
    request = install_pb.SyncModelsRequest(
        remove_missing=remove_missing, register_new=register_new, dry_run=dry_run
    )
    result = client(ctx).model_install.SyncModels(request)
    if as_json:
        output.print_json(result)
        return
    if not (result.missing or result.found or result.failed):
        output.say("the records and the models folder agree")
    columns = ["key", "name", "base", "type", "format", "path"]
    if result.missing:
        rows = [[*_row(item.model), "removed" if item.removed else ""] for item in result.missing]
        output.table([*columns, ""], rows, title="Records whose files are gone")
    if result.found:
        rows = [
            [*_row(item.model), "registered" if item.registered else ""] for item in result.found
        ]
        output.table([*columns, ""], rows, title="Models without a record")
    if result.failed:
        rows = [[item.path, item.error_type, item.error] for item in result.failed]
        output.table(["path", "reason", "error"], rows, title="Not recognised as models")


@app.command("default")
def set_default(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The model's key.")],
) -> None:
    """Make a model the default of its type: nodes whose model input is left empty use it."""
    easel = client(ctx)
    model = easel.model_records.GetModel(records_pb.GetModelRequest(key=key)).model
    request = invocation_pb.SetDefaultModelRequest(model_type=model.type, model_key=key)
    easel.invocations.SetDefaultModel(request)
    output.say(f"{model.name} ({key}) is the default {_string_form(TYPES, model.type)} model")


@app.command("clear-default")
def clear_default(
    ctx: typer.Context,
    model_type: Annotated[ModelType, typer.Argument(help="The model type.")],
) -> None:
    """Forget the default set for a model type: the invoker's `default_models` setting, or
    else the only installed model of the type, applies again."""
    request = invocation_pb.DeleteDefaultModelRequest(model_type=TYPES.to_pb(model_type))
    client(ctx).invocations.DeleteDefaultModel(request)
    output.say(f"no default {model_type.value} model is set")


@app.command("defaults")
def list_defaults(ctx: typer.Context, as_json: Json = False) -> None:
    """List the default model of each type that has one, and where it comes from."""
    defaults = list(
        client(ctx)
        .invocations.ListDefaultModels(invocation_pb.ListDefaultModelsRequest())
        .default_models
    )
    if as_json:
        output.print_json(defaults)
        return
    rows = [
        [
            _string_form(TYPES, default.model_type),
            default.model_key,
            output.label(invocation_pb.DefaultModelSource, default.source),
        ]
        for default in defaults
    ]
    output.table(["type", "key", "source"], rows, caption=output.count(len(rows), "default"))
