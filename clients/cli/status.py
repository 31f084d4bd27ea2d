"""`easel status`: where each service is and whether it serves (grpc.health.v1)."""

from __future__ import annotations

from typing import Annotated

import grpc
import typer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.cli import output
from clients.cli.connection import current
from clients.cli.errors import ServicesDownError
from services.common.call_options import channel_credentials

SERVICES = ("invoker", "model_manager", "downloader", "inference")


def status(
    ctx: typer.Context,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds to wait for each service's answer.")
    ] = 3.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show each service's address and health; exit 4 unless all are serving."""
    settings = current(ctx).settings
    credentials = channel_credentials(settings)
    channels, checks = [], {}
    try:
        for name in SERVICES:
            address = getattr(settings, f"{name}_address")
            channel = (
                grpc.insecure_channel(address)
                if credentials is None
                else grpc.secure_channel(address, credentials)
            )
            channels.append(channel)
            stub = health_pb2_grpc.HealthStub(channel)
            checks[name] = (address, stub.Check.future(health_pb2.HealthCheckRequest(), timeout))
        health = {name: (address, _health(check)) for name, (address, check) in checks.items()}
    finally:
        for channel in channels:
            channel.close()
    if as_json:
        output.print_json(
            [
                {"service": name, "address": address, "status": state}
                for name, (address, state) in health.items()
            ]
        )
    else:
        rows = [
            [name.replace("_", " "), address, state] for name, (address, state) in health.items()
        ]
        output.table(["service", "address", "health"], rows)
    down = [name for name, (_, state) in health.items() if state != "SERVING"]
    if down:
        raise ServicesDownError(
            f"not serving: {', '.join(down)}",
            hint="Start the services with `make run`, or check the addresses above.",
        )


def _health(check: grpc.Future) -> str:
    """SERVING, NOT_SERVING, ... or why the service did not answer."""
    try:
        reply = check.result()
    except grpc.RpcError as error:
        code = error.code()  # type: ignore[attr-defined]
        return "UNREACHABLE" if code == grpc.StatusCode.UNAVAILABLE else code.name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
