"""Real Easel processes on loopback for tests and benchmarks, each suite with its own root.

No port is picked beforehand (another process could take it in between): every service
binds port 0 and reports the port it got. `start_service` names a file for that with the
`address_file` setting, waits until the server has written its host:port there (it does
so once bound, before it builds anything), and records the address in the suite's
environment, so that services started later with the same environment, and clients made
from it, find the service there.
"""

from __future__ import annotations

import collections
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.channels import open_channel
from services.common.settings import CommonSettings

REPO = Path(__file__).resolve().parent.parent
SERVICE_MODULES = {
    "downloader": "services.downloader.main",
    "model_manager": "services.model_manager.main",
    "inference": "services.inference.main",
    "invoker": "services.invoker.main",
}
READY_TIMEOUT_S = 120.0

STARTED: list[ServiceProcess] = []
"""Every service started, so that the suite can stop those a test left running."""


def free_port() -> int:
    """A port nothing listens on now: for helpers that are not Easel services, and for
    addresses that must stay closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def address_key(name: str) -> str:
    return f"EASEL_{name.upper()}_ADDRESS"


def suite_env(root: Path, **overrides: str) -> dict[str, str]:
    """Environment for a test suite of processes: its own root, every service on port 0."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("EASEL_")}
    env.update(
        EASEL_ROOT=str(root),
        EASEL_LOG_FORMAT="json",
        EASEL_TORCH_THREADS="1",
        EASEL_SHUTDOWN_GRACE_S="2",
        **{address_key(name): "127.0.0.1:0" for name in SERVICE_MODULES},
    )
    env.update(overrides)
    return env


def client_settings(env: dict[str, str]) -> CommonSettings:
    """Settings a client of the suite `env` describes: its addresses and its token."""
    return CommonSettings(
        root=Path(env["EASEL_ROOT"]),
        auth_token=env.get("EASEL_AUTH_TOKEN"),
        **{f"{name}_address": env[address_key(name)] for name in SERVICE_MODULES},
    )


@dataclass
class ServiceProcess:
    """A service started as its own process, as `easel-<name>` would start it."""

    name: str
    address: str
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str]
    bound: bool = False
    """Whether it bound its address (and `address` is where it listens)."""
    started_at: float = field(default_factory=time.monotonic)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def channel(self) -> aio.Channel:
        """An asyncio channel to this service that sends its suite's token on every call."""
        return open_channel(self.address, client_settings(self.env))

    def sync_channel(self) -> grpc.Channel:
        """A blocking channel to this service that sends its suite's token on every call."""
        token = self.env.get("EASEL_AUTH_TOKEN")
        metadata = [("authorization", f"Bearer {token}")] if token else []
        return grpc.intercept_channel(grpc.insecure_channel(self.address), _AddMetadata(metadata))

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_service(
    name: str, env: dict[str, str], log_dir: Path, args: list[str] | None = None
) -> ServiceProcess:
    """Start the service `name` and return once it has bound its address (or has exited).

    The address it got is written into `env`. A process that neither binds nor exits in
    time is killed.
    """
    log_path, address_file = _unused_paths(log_dir, name)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", SERVICE_MODULES[name], *(args or [])],
            env={**env, "EASEL_ADDRESS_FILE": str(address_file)},
            cwd=REPO,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    service = ServiceProcess(name, env[address_key(name)], process, log_path, env)
    STARTED.append(service)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not address_file.exists():
        if process.poll() is not None:
            return service
        if time.monotonic() > deadline:
            service.stop()
            raise AssertionError(
                f"{name} did not bind within {READY_TIMEOUT_S} s:\n{service.log()}"
            )
        time.sleep(0.01)
    service.address, service.bound = address_file.read_text(), True
    env[address_key(name)] = service.address
    return service


def _unused_paths(log_dir: Path, name: str) -> tuple[Path, Path]:
    """A log file and an address file of their own for each process started in `log_dir`."""
    stem, number = name, 1
    while (log_dir / f"{stem}.log").exists():
        number += 1
        stem = f"{name}-{number}"
    return log_dir / f"{stem}.log", log_dir / f"{stem}.address"


def wait_serving(
    service: ServiceProcess,
    timeout: float = READY_TIMEOUT_S,
    credentials: grpc.ChannelCredentials | None = None,
    poll_s: float = 0.02,
) -> float:
    """Poll health until SERVING; return the seconds since the process started."""
    deadline = time.monotonic() + timeout
    # Retry a refused connection quickly instead of after gRPC's default 1 s backoff.
    options = [
        ("grpc.initial_reconnect_backoff_ms", 5),
        ("grpc.min_reconnect_backoff_ms", 5),
        ("grpc.max_reconnect_backoff_ms", 20),
    ]
    channel = (
        grpc.insecure_channel(service.address, options)
        if credentials is None
        else grpc.secure_channel(service.address, credentials, options)
    )
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if service.process.poll() is not None:
                raise AssertionError(f"{service.name} exited early:\n{service.log()}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.monotonic() - service.started_at
            except grpc.RpcError:
                pass
            time.sleep(poll_s)
    raise AssertionError(f"{service.name} not SERVING within {timeout} s:\n{service.log()}")


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class _AddMetadata(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, metadata: list[tuple[str, str]]) -> None:
        self._metadata = metadata

    def _intercept(self, continuation, details, request):
        details = _CallDetails(
            details.method,
            details.timeout,
            [*(details.metadata or ()), *self._metadata],
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )
        return continuation(details, request)

    intercept_unary_unary = _intercept
    intercept_unary_stream = _intercept
    intercept_stream_unary = _intercept
    intercept_stream_stream = _intercept
